//! Pure tests of the rule set and its renderings, against golden files.

#![allow(clippy::unwrap_used)] // tests may unwrap

use ipnet::IpNet;
use weft_nat::render::{iptables_restore, nft_table};
use weft_nat::rules::{Addr, Chain, Options, RuleError, SnatRules, Verdict};
use weft_nat::Family;

/// A postrouting rule's matches and verdict.
type Shape = (Option<(u32, u32)>, Addr, Addr, Verdict);

/// The seed's example: cluster 10.244.0.0/16, this node 10.244.0.0/24.
const SEED: (&str, &str) = ("10.244.0.0/16", "10.244.0.0/24");
/// The same in IPv6: cluster fc00::/48, this node fc00:0:0:1::/64.
const SEED6: (&str, &str) = ("fc00::/48", "fc00:0:0:1::/64");

fn build_for((network, subnet): (&str, &str), options: Options) -> weft_nat::RuleSet {
    SnatRules::build(network.parse().unwrap(), subnet.parse().unwrap(), options).unwrap()
}

fn build(options: Options) -> weft_nat::RuleSet {
    build_for(SEED, options)
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
fn seed_v6_as_ip6tables_restore() {
    golden(
        "seed6.iptables",
        &iptables_restore(&build_for(SEED6, Options::default())),
    );
}

#[test]
fn seed_v6_as_nft() {
    golden(
        "seed6.nft",
        &nft_table(&build_for(SEED6, Options::default())),
    );
}

#[test]
fn seed_order_and_semantics() {
    order_and_semantics(SEED, "224.0.0.0/4");
}

#[test]
fn seed_v6_order_and_semantics() {
    order_and_semantics(SEED6, "ff00::/8");
}

/// flannel's order, for either family: the multicast exclusion is the family's.
fn order_and_semantics(seed: (&str, &str), multicast: &str) {
    let r = build_for(seed, Options::default());
    let c: IpNet = seed.0.parse().unwrap();
    let p: IpNet = seed.1.parse().unwrap();
    assert_eq!(r.family, Family::of(&c));
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
                Addr::NotIn(multicast.parse().unwrap()),
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

#[test]
fn v6_options_change_what_is_emitted() {
    let no_random = build_for(
        SEED6,
        Options {
            fully_random: false,
            ..Options::default()
        },
    );
    let text = iptables_restore(&no_random);
    assert!(
        !text.contains("--random-fully") && text.matches("-j MASQUERADE\n").count() == 2,
        "{text}"
    );
    let no_forward = build_for(
        SEED6,
        Options {
            forward: false,
            ..Options::default()
        },
    );
    assert!(!iptables_restore(&no_forward).contains("*filter"));
    let nft = nft_table(&no_forward);
    assert!(nft.starts_with("table ip6 flannel-ipv6 {\n"), "{nft}");
    assert!(
        !nft.contains("chain forward") && !nft.contains("ip saddr"),
        "{nft}"
    );
}

#[test]
fn a_family_mismatch_is_refused_naming_both() {
    for (network, subnet) in [
        ("10.244.0.0/16", "fc00:0:0:1::/64"),
        ("fc00::/48", "10.244.0.0/24"),
    ] {
        let e = SnatRules::build(
            network.parse().unwrap(),
            subnet.parse().unwrap(),
            Options::default(),
        )
        .unwrap_err();
        assert!(
            matches!(e, RuleError::FamilyMismatch { .. }),
            "{network} {subnet}: {e:?}"
        );
        let text = e.to_string();
        assert!(text.starts_with("podCIDR:"), "{text}");
        assert!(
            text.contains(network) && text.contains(subnet),
            "names both: {text}"
        );
        assert!(text.contains("IPv4") && text.contains("IPv6"), "{text}");
    }
}

#[test]
fn bad_v6_input_names_the_field() {
    let c: IpNet = "fc00::/48".parse().unwrap();
    let e =
        SnatRules::build(c, "fd00:0:0:1::/64".parse().unwrap(), Options::default()).unwrap_err();
    assert!(matches!(e, RuleError::SubnetOutsideNetwork { .. }), "{e}");
    let e = SnatRules::build(
        "fc00::5/48".parse().unwrap(),
        "fc00:0:0:1::/64".parse().unwrap(),
        Options::default(),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("Network:"), "{e}");
    let e =
        SnatRules::build(c, "fc00:0:0:1::7/64".parse().unwrap(), Options::default()).unwrap_err();
    assert!(e.to_string().starts_with("podCIDR:"), "{e}");
    let e = SnatRules::build(
        "ff02::/16".parse().unwrap(),
        "ff02::/64".parse().unwrap(),
        Options::default(),
    )
    .unwrap_err();
    assert!(matches!(e, RuleError::MulticastNetwork(_)), "{e}");
    assert!(e.to_string().contains("ff00::/8"), "{e}");
    // The whole v6 space contains multicast: refused too.
    let e = SnatRules::build(
        "::/0".parse().unwrap(),
        "fc00::/64".parse().unwrap(),
        Options::default(),
    )
    .unwrap_err();
    assert!(matches!(e, RuleError::MulticastNetwork(_)), "{e}");
}

/// The rule a packet meets first, as the kernel walks FLANNEL-POSTRTG: the
/// seed's four cases plus kube-proxy's mark, in both families.
#[test]
fn packets_meet_the_rule_the_kernel_would_apply() {
    let set = build(Options::default());
    let label = |src: &str, dst: &str, mark: u32| {
        set.postrouting_match(src.parse().unwrap(), dst.parse().unwrap(), mark)
            .map(|r| r.label)
    };
    // Own pod to another node's pod: no NAT.
    assert_eq!(
        label("10.244.0.5", "10.244.2.7", 0),
        Some("own pods to cluster")
    );
    // Own pod to the outside: masqueraded.
    assert_eq!(
        label("10.244.0.5", "172.18.0.100", 0),
        Some("pods to outside")
    );
    // But not to multicast.
    assert_eq!(label("10.244.0.5", "239.1.1.1", 0), None);
    // Outside to an own pod: no NAT; to another node's pod: masqueraded.
    assert_eq!(
        label("172.18.0.100", "10.244.0.9", 0),
        Some("outside to own pods")
    );
    assert_eq!(
        label("172.18.0.100", "10.244.3.9", 0),
        Some("outside to other pods")
    );
    // kube-proxy's mark wins over everything.
    assert_eq!(
        label("10.244.0.5", "172.18.0.100", 0x4000),
        Some("marked by kube-proxy")
    );
    // Host to host: nothing of flannel's.
    assert_eq!(label("172.18.0.2", "172.18.0.3", 0), None);
    // Without --ip-masq there is nothing to meet.
    let off = build(Options {
        masquerade: false,
        ..Options::default()
    });
    assert!(off
        .postrouting_match("10.244.0.5".parse().unwrap(), "1.1.1.1".parse().unwrap(), 0)
        .is_none());
    let six = build_for(SEED6, Options::default());
    let m = six
        .postrouting_match(
            "fc00:0:0:1::5".parse().unwrap(),
            "fd00:18::100".parse().unwrap(),
            0,
        )
        .unwrap();
    assert!(matches!(m.verdict, Verdict::Masquerade { .. }));
}
