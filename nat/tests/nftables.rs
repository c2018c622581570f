//! The native nftables backend against a real kernel, each test in its own
//! network namespace from `weft_netns` (skipped without root). Nothing here
//! touches the host's own namespace: the backend runs on a thread inside the
//! namespace and `nft` only through `ip netns exec`.

#![allow(clippy::unwrap_used)] // tests may unwrap

use weft_nat::render::{self, NFT_TABLE};
use weft_nat::{Family, NatBackend, NatError, NftablesBackend, Options, RuleSet, SnatRules};
use weft_netns::{require_netns, Netns};

/// The seed's example: cluster 10.244.0.0/16, this node 10.244.0.0/24.
fn seed(options: Options) -> RuleSet {
    SnatRules::build(
        "10.244.0.0/16".parse().unwrap(),
        "10.244.0.0/24".parse().unwrap(),
        options,
    )
    .unwrap()
}

/// Runs blocking backend code on a thread inside the namespace.
fn inside<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    ns.run(move || async move { f() }).unwrap()
}

/// The seed's example in IPv6: cluster fc00::/48, this node fc00:0:0:1::/64.
fn seed6(options: Options) -> RuleSet {
    SnatRules::build(
        "fc00::/48".parse().unwrap(),
        "fc00:0:0:1::/64".parse().unwrap(),
        options,
    )
    .unwrap()
}

/// `nft list table ip flannel-ipv4` in the namespace, or None if missing.
fn list_table(ns: &Netns) -> Option<String> {
    list_table_of(ns, Family::V4)
}

/// `nft list table ip flannel-ipv4` / `ip6 flannel-ipv6`, or None if missing.
fn list_table_of(ns: &Netns, family: Family) -> Option<String> {
    let out = ns
        .exec_status(&[
            "nft",
            "list",
            "table",
            family.nft_family(),
            family.nft_table(),
        ])
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

fn nft(ns: &Netns, args: &[&str]) -> String {
    let mut full = vec!["nft"];
    full.extend_from_slice(args);
    ns.exec(&full).unwrap()
}

/// Applies `rules` and checks the kernel holds exactly them; returns the listing.
fn apply_and_check(ns: &Netns, rules: &RuleSet) -> String {
    let r = rules.clone();
    let family = rules.family;
    let (observed, expected) = inside(ns, move || {
        let mut b = NftablesBackend::new(family);
        let current = b.observe().unwrap();
        b.apply(&r, &current).unwrap();
        (b.observe().unwrap(), b.expected(&r))
    });
    assert_eq!(observed, expected);
    let listed = list_table_of(ns, family).unwrap();
    assert_eq!(
        listed,
        render::nft_table(rules),
        "nft prints something else than render.rs"
    );
    listed
}

#[test]
fn apply_lists_exactly_the_rendered_table_and_reconcile_is_then_a_no_op() {
    require_netns!();
    let ns = Netns::new("nft-apply").unwrap();
    let rules = seed(Options::default());

    let r = rules.clone();
    let (first, second, observed, expected) = inside(&ns, move || {
        let mut b = NftablesBackend::new(Family::V4);
        assert!(b.observe().unwrap().is_empty());
        let first = b.reconcile(&r).unwrap();
        let second = b.reconcile(&r).unwrap();
        (first, second, b.observe().unwrap(), b.expected(&r))
    });
    assert!(first, "the first reconcile writes");
    assert!(!second, "the second reconcile finds nothing to do");
    assert_eq!(observed, expected);
    assert_eq!(observed.0[0], "table ip flannel-ipv4");
    assert_eq!(observed.0[1], "chain postrtg nat postrouting 100 accept");
    assert!(observed
        .0
        .contains(&"chain forward filter forward 0 accept".to_string()));

    let listed = list_table(&ns).unwrap();
    assert_eq!(listed, render::nft_table(&rules));
    assert_eq!(
        listed.matches("masquerade fully-random comment").count(),
        2,
        "{listed}"
    );
    assert!(
        listed.contains(
            "meta mark & 0x00004000 == 0x00004000 return comment \"weft: marked by kube-proxy "
        ),
        "{listed}"
    );

    // A second apply of the same rules replaces the table without duplicates.
    assert_eq!(apply_and_check(&ns, &rules), listed);
}

#[test]
fn options_shape_the_table() {
    require_netns!();
    let ns = Netns::new("nft-options").unwrap();

    let plain = seed(Options {
        fully_random: false,
        ..Options::default()
    });
    let listed = apply_and_check(&ns, &plain);
    assert!(!listed.contains("fully-random"), "{listed}");
    assert_eq!(
        listed.matches(" masquerade comment \"weft: ").count(),
        2,
        "{listed}"
    );

    let no_forward = seed(Options {
        forward: false,
        ..Options::default()
    });
    let listed = apply_and_check(&ns, &no_forward);
    assert!(!listed.contains("chain forward"), "{listed}");
    assert!(listed.contains("chain postrtg"), "{listed}");

    let forward_only = seed(Options {
        masquerade: false,
        ..Options::default()
    });
    let listed = apply_and_check(&ns, &forward_only);
    assert!(!listed.contains("chain postrtg"), "{listed}");
    assert!(
        listed.contains(
            "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n"
        ),
        "{listed}"
    );
    assert_eq!(
        listed.matches(" accept comment \"weft: ").count(),
        2,
        "{listed}"
    );

    // Nothing wanted: the table goes away.
    let nothing = seed(Options {
        masquerade: false,
        forward: false,
        ..Options::default()
    });
    let observed = inside(&ns, move || {
        let mut b = NftablesBackend::new(Family::V4);
        assert!(b.reconcile(&nothing).unwrap());
        assert!(!b.reconcile(&nothing).unwrap());
        b.observe().unwrap()
    });
    assert!(observed.is_empty());
    assert_eq!(list_table(&ns), None);
}

#[test]
fn a_refused_batch_changes_nothing() {
    require_netns!();
    let ns = Netns::new("nft-atomic").unwrap();
    let a = seed(Options {
        fully_random: false,
        ..Options::default()
    });
    let listed_a = apply_and_check(&ns, &a);

    let b = seed(Options::default());
    let err = inside(&ns, move || {
        // 0x1000 is no valid NF_NAT_RANGE flag: the kernel refuses the rule (EINVAL).
        let mut backend = NftablesBackend::new(Family::V4).with_masq_flags_override(0x1000);
        let current = backend.observe().unwrap();
        backend.apply(&b, &current).unwrap_err()
    });
    eprintln!("refusal: {err}");
    match &err {
        NatError::Kernel { what, detail } => {
            assert!(what.contains("flannel-ipv4"), "{err}");
            assert!(detail.contains("Invalid argument"), "{err}");
            assert!(
                detail.contains("rule 5 of chain postrtg (\"pods to outside\")"),
                "{err}"
            );
            assert!(detail.contains("NEWRULE"), "{err}");
        }
        other => panic!("expected a kernel refusal, got {other:?}"),
    }
    assert_eq!(
        list_table(&ns).unwrap(),
        listed_a,
        "the refused batch left a trace"
    );
    let (observed, expected) = inside(&ns, move || {
        let mut backend = NftablesBackend::new(Family::V4);
        (backend.observe().unwrap(), backend.expected(&a))
    });
    assert_eq!(observed, expected);
}

#[test]
fn foreign_tables_survive_apply_and_remove() {
    require_netns!();
    let ns = Netns::new("nft-foreign").unwrap();
    nft(&ns, &["add", "table", "ip", "foreign"]);
    nft(
        &ns,
        &[
            "add",
            "chain",
            "ip",
            "foreign",
            "c",
            "{ type filter hook input priority 0; }",
        ],
    );
    nft(&ns, &["add", "rule", "ip", "foreign", "c", "accept"]);
    // Same name in other families: not ours to read or delete.
    nft(&ns, &["add", "table", "inet", NFT_TABLE]);
    nft(&ns, &["add", "chain", "inet", NFT_TABLE, "postrtg"]);
    nft(
        &ns,
        &["add", "rule", "inet", NFT_TABLE, "postrtg", "counter"],
    );
    let foreign = nft(&ns, &["list", "table", "ip", "foreign"]);
    let inet = nft(&ns, &["list", "table", "inet", NFT_TABLE]);

    let rules = seed(Options::default());
    apply_and_check(&ns, &rules);
    assert_eq!(nft(&ns, &["list", "table", "ip", "foreign"]), foreign);
    assert_eq!(nft(&ns, &["list", "table", "inet", NFT_TABLE]), inet);

    inside(&ns, || NftablesBackend::new(Family::V4).remove().unwrap());
    assert_eq!(list_table(&ns), None);
    assert_eq!(nft(&ns, &["list", "table", "ip", "foreign"]), foreign);
    assert_eq!(nft(&ns, &["list", "table", "inet", NFT_TABLE]), inet);
    assert!(foreign.contains("accept"), "{foreign}");
}

#[test]
fn a_foreign_rule_in_our_chain_is_seen_and_removed() {
    require_netns!();
    let ns = Netns::new("nft-drift").unwrap();
    let rules = seed(Options::default());
    let listed = apply_and_check(&ns, &rules);

    nft(&ns, &["add", "rule", "ip", NFT_TABLE, "postrtg", "counter"]);
    assert_ne!(list_table(&ns).unwrap(), listed);

    let r = rules.clone();
    let (drifted, expected, wrote, again) = inside(&ns, move || {
        let mut b = NftablesBackend::new(Family::V4);
        let drifted = b.observe().unwrap();
        let wrote = b.reconcile(&r).unwrap();
        let again = b.reconcile(&r).unwrap();
        (drifted, b.expected(&r), wrote, again)
    });
    assert_ne!(drifted, expected);
    assert!(
        drifted
            .0
            .contains(&"postrtg: foreign rule counter".to_string()),
        "{drifted:?}"
    );
    assert!(wrote && !again);
    assert_eq!(list_table(&ns).unwrap(), listed);

    // A rule of ours deleted by hand, or the whole table: also put back.
    let out = nft(&ns, &["-a", "list", "chain", "ip", NFT_TABLE, "forward"]);
    let handle = out
        .lines()
        .find(|l| l.contains("from cluster"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .to_string();
    nft(
        &ns,
        &[
            "delete", "rule", "ip", NFT_TABLE, "forward", "handle", &handle,
        ],
    );
    let r = rules.clone();
    assert!(inside(&ns, move || NftablesBackend::new(Family::V4)
        .reconcile(&r)
        .unwrap()));
    assert_eq!(list_table(&ns).unwrap(), listed);
    // A changed policy, and a chain someone added to our table.
    nft(
        &ns,
        &[
            "add",
            "chain",
            "ip",
            NFT_TABLE,
            "forward",
            "{ type filter hook forward priority 0; policy drop; }",
        ],
    );
    nft(&ns, &["add", "chain", "ip", NFT_TABLE, "extra"]);
    let r = rules.clone();
    let (drifted, wrote) = inside(&ns, move || {
        let mut b = NftablesBackend::new(Family::V4);
        (b.observe().unwrap(), b.reconcile(&r).unwrap())
    });
    assert!(
        drifted
            .0
            .contains(&"chain forward filter forward 0 drop".to_string()),
        "{drifted:?}"
    );
    assert_eq!(drifted.0.last().unwrap(), "chain extra", "{drifted:?}");
    assert!(wrote);
    assert_eq!(list_table(&ns).unwrap(), listed);
    nft(&ns, &["delete", "table", "ip", NFT_TABLE]);
    let r = rules.clone();
    assert!(inside(&ns, move || NftablesBackend::new(Family::V4)
        .reconcile(&r)
        .unwrap()));
    assert_eq!(list_table(&ns).unwrap(), listed);
}

#[test]
fn remove_deletes_its_own_familys_table_and_is_idempotent() {
    require_netns!();
    let ns = Netns::new("nft-remove").unwrap();
    let rules = seed(Options::default());
    let rules6 = seed6(Options::default());
    apply_and_check(&ns, &rules);
    apply_and_check(&ns, &rules6);
    let listed6 = list_table_of(&ns, Family::V6).unwrap();

    let observed = inside(&ns, || {
        let mut b = NftablesBackend::new(Family::V4);
        b.remove().unwrap();
        let observed = b.observe().unwrap();
        b.remove().unwrap();
        observed
    });
    assert!(observed.is_empty());
    let tables = nft(&ns, &["list", "tables"]);
    assert!(!tables.contains("flannel-ipv4"), "{tables}");
    assert_eq!(
        list_table_of(&ns, Family::V6).unwrap(),
        listed6,
        "the IPv4 backend leaves the IPv6 table"
    );

    // flannel's empty IPv6 table (its Init makes both): the IPv6 backend removes it.
    inside(&ns, || NftablesBackend::new(Family::V6).remove().unwrap());
    nft(&ns, &["add", "table", "ip6", "flannel-ipv6"]);
    let observed = inside(&ns, || {
        let mut b = NftablesBackend::new(Family::V6);
        b.remove().unwrap();
        let observed = b.observe().unwrap();
        b.remove().unwrap();
        observed
    });
    assert!(observed.is_empty());
    let tables = nft(&ns, &["list", "tables"]);
    assert!(!tables.contains("flannel-ipv6"), "{tables}");
}

#[test]
fn v6_apply_lists_the_golden_table_beside_the_v4_one() {
    require_netns!();
    let ns = Netns::new("nft-apply6").unwrap();
    let rules = seed(Options::default());
    let rules6 = seed6(Options::default());
    let listed = apply_and_check(&ns, &rules);

    let r = rules6.clone();
    let (first, second, observed) = inside(&ns, move || {
        let mut b = NftablesBackend::new(Family::V6);
        assert!(b.observe().unwrap().is_empty());
        (
            b.reconcile(&r).unwrap(),
            b.reconcile(&r).unwrap(),
            b.observe().unwrap(),
        )
    });
    assert!(first && !second, "writes once, then nothing");
    assert_eq!(observed.0[0], "table ip6 flannel-ipv6");
    let golden = std::fs::read_to_string(format!(
        "{}/tests/golden/seed6.nft",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    assert_eq!(list_table_of(&ns, Family::V6).unwrap(), golden);
    assert_eq!(
        list_table(&ns).unwrap(),
        listed,
        "the IPv4 table is untouched"
    );
    // The IPv4 backend sees its own table only, and has nothing to do.
    let r = rules.clone();
    assert!(!inside(&ns, move || NftablesBackend::new(Family::V4)
        .reconcile(&r)
        .unwrap()));

    // Drift in the v6 table (a foreign rule, a deleted chain) is seen and replaced.
    nft(
        &ns,
        &["add", "rule", "ip6", "flannel-ipv6", "postrtg", "counter"],
    );
    nft(&ns, &["delete", "chain", "ip6", "flannel-ipv6", "forward"]);
    let r = rules6.clone();
    let (drifted, wrote) = inside(&ns, move || {
        let mut b = NftablesBackend::new(Family::V6);
        (b.observe().unwrap(), b.reconcile(&r).unwrap())
    });
    assert!(
        drifted
            .0
            .contains(&"postrtg: foreign rule counter".to_string()),
        "{drifted:?}"
    );
    assert!(wrote);
    assert_eq!(list_table_of(&ns, Family::V6).unwrap(), golden);
    assert_eq!(list_table(&ns).unwrap(), listed);
}

#[test]
fn a_refused_v6_batch_changes_nothing() {
    require_netns!();
    let ns = Netns::new("nft-atomic6").unwrap();
    let a = seed6(Options {
        fully_random: false,
        ..Options::default()
    });
    let listed_a = apply_and_check(&ns, &a);
    let b = seed6(Options::default());
    let err = inside(&ns, move || {
        let mut backend = NftablesBackend::new(Family::V6).with_masq_flags_override(0x1000);
        let current = backend.observe().unwrap();
        backend.apply(&b, &current).unwrap_err()
    });
    match &err {
        NatError::Kernel { what, detail } => {
            assert!(what.contains("ip6 flannel-ipv6"), "{err}");
            assert!(detail.contains("Invalid argument"), "{err}");
        }
        other => panic!("expected a kernel refusal, got {other:?}"),
    }
    assert_eq!(list_table_of(&ns, Family::V6).unwrap(), listed_a);
}
