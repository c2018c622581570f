//! Pure tests of the rule set and its renderings, against golden files.

#![allow(clippy::unwrap_used)] // tests may unwrap

use weft_nat::render::{iptables_restore, nft_table};
use weft_nat::rules::{Addr, Chain, Options, RuleError, SnatRules, Verdict};

/// A postrouting rule's matches and verdict.
type Shape = (Option<(u32, u32)>, Addr, Addr, Verdict);

fn build(options: Options) -> weft_nat::RuleSet {
    SnatRules::build(
        "10.244.0.0/16".parse().unwrap(),
        "10.244.0.0/24".parse().unwrap(),
        options,
    )
    .unwrap()
}

fn golden(name: &str, got: &str) {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("WEFT_BLESS").is_some() {
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (WEFT_BLESS=1 writes it)"));
    assert_eq!(got, want, "{name} differs from the golden file");
}

#[test]
fn seed_example_as_iptables_restore() {
    golden(
        "seed.iptables",
        &iptables_restore(&build(Options::default())),
    );
}

#[test]
fn seed_example_as_nft() {
    golden("seed.nft", &nft_table(&build(Options::default())));
}

#[test]
fn seed_order_and_semantics() {
    let r = build(Options::default());
    let c: ipnet::Ipv4Net = "10.244.0.0/16".parse().unwrap();
    let p: ipnet::Ipv4Net = "10.244.0.0/24".parse().unwrap();
    let masq = Verdict::Masquerade { fully_random: true };
    let got: Vec<Shape> = r
        .postrouting
        .iter()
        .map(|r| (r.mark, r.src, r.dst, r.verdict))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                Some((0x4000, 0x4000)),
                Addr::Any,
                Addr::Any,
                Verdict::Return
            ),
            (None, Addr::In(p), Addr::In(c), Verdict::Return),
            (None, Addr::In(c), Addr::In(p), Verdict::Return),
            // iptables semantics (! -s C), not flannel's nftables bug (saddr != P).
            (None, Addr::NotIn(c), Addr::In(p), Verdict::Return),
            (
                None,
                Addr::In(c),
                Addr::NotIn("224.0.0.0/4".parse().unwrap()),
                masq
            ),
            (None, Addr::NotIn(c), Addr::In(c), masq),
        ]
    );
    assert!(r.postrouting.iter().all(|r| r.chain == Chain::Postrouting));
    assert_eq!(r.forward.len(), 2);
    assert!(r
        .forward
        .iter()
        .all(|r| r.chain == Chain::Forward && r.verdict == Verdict::Accept));
}

#[test]
fn options_change_what_is_emitted() {
    let no_random = build(Options {
        fully_random: false,
        ..Options::default()
    });
    let text = iptables_restore(&no_random);
    assert!(
        !text.contains("--random-fully") && text.matches("-j MASQUERADE\n").count() == 2,
        "{text}"
    );
    assert!(!nft_table(&no_random).contains("fully-random"));

    let no_forward = build(Options {
        forward: false,
        ..Options::default()
    });
    assert!(no_forward.forward.is_empty());
    assert!(!iptables_restore(&no_forward).contains("*filter"));
    assert!(!nft_table(&no_forward).contains("chain forward"));

    let no_masq = build(Options {
        masquerade: false,
        ..Options::default()
    });
    assert!(no_masq.postrouting.is_empty());
    assert_eq!(no_masq.forward.len(), 2);
    assert!(!iptables_restore(&no_masq).contains("*nat"));
    assert!(!nft_table(&no_masq).contains("postrtg"));
}

#[test]
fn bad_input_names_the_field() {
    let c = "10.244.0.0/16".parse().unwrap();
    let e = SnatRules::build(c, "10.99.0.0/24".parse().unwrap(), Options::default()).unwrap_err();
    assert!(matches!(e, RuleError::SubnetOutsideNetwork { .. }));
    assert!(e.to_string().starts_with("podCIDR:"), "{e}");
    let e = SnatRules::build(
        "10.244.0.5/16".parse().unwrap(),
        "10.244.0.0/24".parse().unwrap(),
        Options::default(),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("Network:"), "{e}");
    let e = SnatRules::build(c, "10.244.0.7/24".parse().unwrap(), Options::default()).unwrap_err();
    assert!(e.to_string().starts_with("podCIDR:"), "{e}");
    let e = SnatRules::build(
        "224.0.0.0/8".parse().unwrap(),
        "224.1.0.0/24".parse().unwrap(),
        Options::default(),
    )
    .unwrap_err();
    assert!(matches!(e, RuleError::MulticastNetwork(_)));
}
