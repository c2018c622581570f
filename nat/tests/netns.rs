//! NAT in network namespaces (root), for each of the three modes and both
//! address families: the rules the kernel shows (against the golden files),
//! no write when nothing changed, atomic failure, foreign rules kept, drift
//! repaired within a second, mode switches, IPv4 and IPv6 loops side by
//! side, per-family detection, and packets: the source address a listener
//! sees.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::time::{Duration, Instant};

use weft_nat::iptables::Flavor;
use weft_nat::reconciler::{LoopOptions, Reconciler};
use weft_nat::render::{iptables_jump, iptables_rule};
use weft_nat::rules::Chain;
use weft_nat::{
    Family, IptablesBackend, NatBackend, NatMode, NftablesBackend, Options, RuleSet, SnatRules,
};
use weft_netns::{require_netns, veth, Netns, Switch};

const CLUSTER: &str = "10.244.0.0/16";
const SUBNET: &str = "10.244.0.0/24";
/// The IPv6 seed (as in the golden files `seed6.*`).
const CLUSTER6: &str = "fc00::/48";
const SUBNET6: &str = "fc00:0:0:1::/64";

/// The cluster network and node subnet of the seed in `family`.
fn seed_nets(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::V4 => (CLUSTER, SUBNET),
        Family::V6 => (CLUSTER6, SUBNET6),
    }
}

fn rules(options: Options) -> RuleSet {
    rules_in(Family::V4, options)
}

fn rules_in(family: Family, options: Options) -> RuleSet {
    let (cluster, subnet) = seed_nets(family);
    SnatRules::build(cluster.parse().unwrap(), subnet.parse().unwrap(), options).unwrap()
}

/// The iptables tool of a mode in a family (`ip6tables-legacy`, …).
fn tool(mode: NatMode, family: Family) -> String {
    let flavor = if mode == NatMode::IptablesLegacy {
        Flavor::Legacy
    } else {
        Flavor::Nft
    };
    IptablesBackend::new(flavor, family).binary("")
}

/// The kernel's view of a mode, as its own tool prints it.
fn listing(ns: &Netns, mode: NatMode) -> String {
    listing_in(ns, mode, Family::V4)
}

/// The kernel's view of a mode in a family: `ip6tables-*-save` for IPv6;
/// nftables' whole ruleset either way.
fn listing_in(ns: &Netns, mode: NatMode, family: Family) -> String {
    match mode {
        NatMode::Nftables => ns.exec(&["nft", "list", "ruleset"]).unwrap(),
        _ => ns.exec(&[&format!("{}-save", tool(mode, family))]).unwrap(),
    }
}

/// The golden file's text (`tests/golden/<name>`).
fn golden(name: &str) -> String {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What an `iptables-save` shows of weft's chains, as restore input in the
/// golden files' layout: per table (nat, then filter) the chain's
/// declaration, its rules, `COMMIT`.
fn chains_of_save(save: &str) -> String {
    let mut out = String::new();
    for table in ["nat", "filter"] {
        let mut in_table = false;
        let mut body = String::new();
        for line in save.lines() {
            if let Some(t) = line.strip_prefix('*') {
                in_table = t == table;
            } else if in_table && (line.starts_with(":FLANNEL-") || line.starts_with("-A FLANNEL-"))
            {
                body.push_str(line);
                body.push('\n');
            }
        }
        if !body.is_empty() {
            out.push_str(&format!("*{table}\n{body}COMMIT\n"));
        }
    }
    out
}

/// The nft table of `family`, as `nft list table` prints it (None if absent).
fn nft_table_listed(ns: &Netns, family: Family) -> Option<String> {
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

/// Runs a backend operation inside the namespace.
fn with_backend<T: Send + 'static>(
    ns: &Netns,
    mode: NatMode,
    f: impl FnOnce(&mut dyn NatBackend) -> T + Send + 'static,
) -> T {
    with_backend_in(ns, mode, Family::V4, f)
}

/// Runs an operation of `mode`'s backend in `family` inside the namespace.
fn with_backend_in<T: Send + 'static>(
    ns: &Netns,
    mode: NatMode,
    family: Family,
    f: impl FnOnce(&mut dyn NatBackend) -> T + Send + 'static,
) -> T {
    ns.run(move || async move {
        let mut b = mode.backend(family);
        f(b.as_mut())
    })
    .unwrap()
}

/// The kernel holds exactly `r` (of its family) in `mode`: each rule once,
/// one jump per chain.
fn assert_rules_listed(ns: &Netns, mode: NatMode, r: &RuleSet) {
    let family = r.family;
    let text = listing_in(ns, mode, family);
    match mode {
        NatMode::Nftables => {
            let table = nft_table_listed(ns, family).expect("weft's table");
            assert_eq!(table, weft_nat::render::nft_table(r));
            assert!(table.contains("masquerade fully-random"), "{table}");
        }
        _ => {
            for rule in r.rules() {
                assert!(
                    text.contains(&format!("{}\n", iptables_rule(rule))),
                    "missing {}\n{text}",
                    iptables_rule(rule)
                );
            }
            assert_eq!(
                text.matches(&iptables_jump(Chain::Postrouting)).count(),
                1,
                "{text}"
            );
            assert_eq!(
                text.matches(&iptables_jump(Chain::Forward)).count(),
                1,
                "{text}"
            );
            assert!(text.contains("-j MASQUERADE --random-fully"), "{text}");
        }
    }
}

/// The seed's rules in a fresh namespace: the kernel's own tool prints
/// exactly the golden file, a second reconcile writes nothing, and a
/// second backend (a restart) finds nothing to do either.
fn rules_and_idempotence(mode: NatMode, family: Family) {
    let ns = Netns::new(&format!("nat-{}-{}", mode.name(), family.nft_family())).unwrap();
    let r = rules_in(family, Options::default());
    let r2 = r.clone();
    let wrote = with_backend_in(&ns, mode, family, move |b| {
        (b.reconcile(&r2).unwrap(), b.reconcile(&r2).unwrap())
    });
    assert_eq!(
        wrote,
        (true, false),
        "first reconcile writes, second sends nothing"
    );
    assert_rules_listed(&ns, mode, &r);
    let golden_name = match family {
        Family::V4 => "seed",
        Family::V6 => "seed6",
    };
    match mode {
        NatMode::Nftables => assert_eq!(
            nft_table_listed(&ns, family).unwrap(),
            golden(&format!("{golden_name}.nft")),
            "nft list table {} {}",
            family.nft_family(),
            family.nft_table()
        ),
        _ => assert_eq!(
            chains_of_save(&listing_in(&ns, mode, family)),
            golden(&format!("{golden_name}.iptables")),
            "{}-save",
            tool(mode, family)
        ),
    }
    let r2 = r.clone();
    assert!(
        !with_backend_in(&ns, mode, family, move |b| b.reconcile(&r2).unwrap()),
        "{mode} {family}: a new backend re-running the apply writes nothing"
    );
    eprintln!(
        "{mode} {family}: kernel shows\n{}",
        listing_in(&ns, mode, family)
    );
}

#[test]
fn legacy_rules_and_idempotence() {
    require_netns!();
    rules_and_idempotence(NatMode::IptablesLegacy, Family::V4);
}

#[test]
fn iptables_nft_rules_and_idempotence() {
    require_netns!();
    rules_and_idempotence(NatMode::IptablesNft, Family::V4);
}

#[test]
fn nftables_rules_and_idempotence() {
    require_netns!();
    rules_and_idempotence(NatMode::Nftables, Family::V4);
}

#[test]
fn legacy_v6_rules_and_idempotence() {
    require_netns!();
    rules_and_idempotence(NatMode::IptablesLegacy, Family::V6);
}

#[test]
fn iptables_nft_v6_rules_and_idempotence() {
    require_netns!();
    rules_and_idempotence(NatMode::IptablesNft, Family::V6);
}

#[test]
fn nftables_v6_rules_and_idempotence() {
    require_netns!();
    rules_and_idempotence(NatMode::Nftables, Family::V6);
}

fn foreign_rules_survive(mode: NatMode) {
    let ns = Netns::new(&format!("nat-foreign-{}", mode.name())).unwrap();
    let (tool, marker): (&[&str], &str) = match mode {
        NatMode::IptablesLegacy => (
            &["iptables-legacy"],
            "-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE",
        ),
        NatMode::IptablesNft => (
            &["iptables-nft"],
            "-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE",
        ),
        NatMode::Nftables => (&[], "table ip foreign"),
    };
    if mode == NatMode::Nftables {
        ns.exec(&["nft", "add", "table", "ip", "foreign"]).unwrap();
        ns.exec(&[
            "nft",
            "add",
            "chain",
            "ip",
            "foreign",
            "post",
            "{ type nat hook postrouting priority 50; }",
        ])
        .unwrap();
        ns.exec(&[
            "nft",
            "add",
            "rule",
            "ip",
            "foreign",
            "post",
            "ip",
            "saddr",
            "192.0.2.0/24",
            "masquerade",
        ])
        .unwrap();
    } else {
        let mut args = tool.to_vec();
        args.extend([
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            "192.0.2.0/24",
            "-j",
            "MASQUERADE",
        ]);
        ns.exec(&args).unwrap();
        let mut args = tool.to_vec();
        args.extend(["-t", "filter", "-N", "USER-CHAIN"]);
        ns.exec(&args).unwrap();
    }
    let r = rules(Options::default());
    with_backend(&ns, mode, move |b| {
        b.reconcile(&r).unwrap();
        b.remove().unwrap();
        b.remove().unwrap();
    });
    let text = listing(&ns, mode);
    assert!(text.contains(marker), "foreign rule gone:\n{text}");
    assert!(
        !text.contains("FLANNEL") && !text.contains("flannel-ipv4"),
        "remove() left rules:\n{text}"
    );
    if mode != NatMode::Nftables {
        assert!(text.contains(":USER-CHAIN"), "{text}");
    }
}

#[test]
fn foreign_rules_survive_every_mode() {
    require_netns!();
    for mode in NatMode::ALL {
        foreign_rules_survive(mode);
    }
}

#[test]
fn a_failing_apply_leaves_the_old_rules() {
    require_netns!();
    for mode in [NatMode::IptablesLegacy, NatMode::IptablesNft] {
        let ns = Netns::new("nat-fail").unwrap();
        let good = rules(Options::default());
        let g = good.clone();
        let err = ns
            .run(move || async move {
                let mut b = if mode == NatMode::IptablesLegacy {
                    IptablesBackend::legacy(Family::V4)
                } else {
                    IptablesBackend::nft(Family::V4)
                };
                b.reconcile(&g).unwrap();
                let mut bad = IptablesBackend::with_bad_line_for_tests(mode, Family::V4);
                let other = SnatRules::build(
                    "10.244.0.0/16".parse().unwrap(),
                    "10.244.7.0/24".parse().unwrap(),
                    Options::default(),
                )
                .unwrap();
                bad.reconcile(&other).unwrap_err().to_string()
            })
            .unwrap();
        assert!(err.contains("restore"), "{err}");
        assert_rules_listed(&ns, mode, &good);
        assert!(!listing(&ns, mode).contains("10.244.7.0/24"));
    }
    let ns = Netns::new("nat-fail-nft").unwrap();
    let good = rules(Options::default());
    let g = good.clone();
    let err = ns
        .run(move || async move {
            NftablesBackend::new(Family::V4).reconcile(&g).unwrap();
            let other = SnatRules::build(
                "10.244.0.0/16".parse().unwrap(),
                "10.244.7.0/24".parse().unwrap(),
                Options::default(),
            )
            .unwrap();
            NftablesBackend::new(Family::V4)
                .with_masq_flags_override(0x1000)
                .reconcile(&other)
                .unwrap_err()
                .to_string()
        })
        .unwrap();
    assert!(!err.is_empty());
    assert_rules_listed(&ns, NatMode::Nftables, &good);
}

/// Polls until `ok` holds; panics after 5 s. How long it took.
fn wait_until(what: &str, ok: impl Fn() -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        if ok() {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{what} not repaired after 5 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the kernel holds exactly `r` in `mode` (its family's chains or
/// table, each jump once), as the mode's own tool prints it.
fn intact(ns: &Netns, mode: NatMode, r: &RuleSet) -> bool {
    match mode {
        NatMode::Nftables => {
            nft_table_listed(ns, r.family).as_deref() == Some(&weft_nat::render::nft_table(r))
        }
        _ => {
            let save = listing_in(ns, mode, r.family);
            chains_of_save(&save) == weft_nat::render::iptables_restore(r)
                && save.matches(&iptables_jump(Chain::Postrouting)).count() == 1
                && save.matches(&iptables_jump(Chain::Forward)).count() == 1
        }
    }
}

/// Commands that break weft's rules of `family` in `mode`, by hand: a
/// flushed chain, a deleted jump or table, a deleted rule or chain.
fn breakages(mode: NatMode, family: Family) -> Vec<(&'static str, Vec<String>)> {
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (fam, table) = (family.nft_family(), family.nft_table());
    match mode {
        NatMode::Nftables => vec![
            (
                "flushed chain",
                words(&["nft", "flush", "chain", fam, table, "postrtg"]),
            ),
            (
                "deleted table",
                words(&["nft", "delete", "table", fam, table]),
            ),
            (
                "deleted chain",
                words(&["nft", "delete", "chain", fam, table, "forward"]),
            ),
        ],
        _ => {
            let tool = tool(mode, family);
            let (cluster, _) = seed_nets(family);
            vec![
                (
                    "flushed chain",
                    words(&[&tool, "-t", "nat", "-F", "FLANNEL-POSTRTG"]),
                ),
                (
                    "deleted jump rule",
                    words(&[
                        &tool,
                        "-t",
                        "nat",
                        "-D",
                        "POSTROUTING",
                        "-m",
                        "comment",
                        "--comment",
                        "flanneld masq",
                        "-j",
                        "FLANNEL-POSTRTG",
                    ]),
                ),
                (
                    "deleted rule",
                    words(&[
                        &tool,
                        "-t",
                        "filter",
                        "-D",
                        "FLANNEL-FWD",
                        "-s",
                        cluster,
                        "-m",
                        "comment",
                        "--comment",
                        "flanneld forward",
                        "-j",
                        "ACCEPT",
                    ]),
                ),
            ]
        }
    }
}

/// Runs `cmd` in the namespace.
fn run_cmd(ns: &Netns, cmd: &[String]) {
    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    ns.exec(&args).unwrap();
}

/// A loop of `mode` for `r`, running in the namespace until the returned
/// sender is used; the task then yields the loop's apply count.
fn spawn_loop(
    ns: &Netns,
    mode: NatMode,
    r: RuleSet,
) -> (std::sync::mpsc::Sender<()>, weft_netns::NsTask<u64>) {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let task = ns
        .spawn_task(move || async move {
            let handle = Reconciler::spawn(mode, r, LoopOptions::default()).unwrap();
            let _ = rx.recv();
            // What the loop has left to do: nothing, once everything is repaired.
            let wrote = handle.reconcile_now().unwrap();
            assert!(!wrote, "{mode}: a reconcile after the repairs wrote");
            // Quiet: looking causes no signal, so the loop does not spin
            // (other tests' iptables commands may wake it a few times).
            let observes = || {
                handle
                    .stats()
                    .observes
                    .load(std::sync::atomic::Ordering::Relaxed)
            };
            let before = observes();
            std::thread::sleep(Duration::from_millis(300));
            let looks = observes() - before;
            assert!(looks < 20, "{mode}: {looks} looks in 300 ms of quiet");
            let applies = handle
                .stats()
                .applies
                .load(std::sync::atomic::Ordering::Relaxed);
            handle.stop();
            applies
        })
        .unwrap();
    (tx, task)
}

fn drift_is_repaired(mode: NatMode, family: Family) {
    let ns = Netns::new(&format!(
        "nat-drift-{}-{}",
        mode.name(),
        family.nft_family()
    ))
    .unwrap();
    let r = rules_in(family, Options::default());
    let (stop, task) = spawn_loop(&ns, mode, r.clone());
    wait_until(&format!("{mode} {family}: initial rules"), || {
        intact(&ns, mode, &r)
    });
    for (what, cmd) in breakages(mode, family) {
        run_cmd(&ns, &cmd);
        let t = wait_until(&format!("{mode} {family}: {what}"), || {
            intact(&ns, mode, &r)
        });
        eprintln!(
            "{mode} {family}: {what} repaired in {:.0} ms",
            t.as_secs_f64() * 1e3
        );
        assert!(
            t < Duration::from_secs(1),
            "{mode} {family}: {what} took {t:?}"
        );
    }
    stop.send(()).unwrap();
    let applies = task.join().unwrap();
    assert_eq!(
        applies, 4,
        "one apply at start and one per breakage, none for our own events"
    );
    assert_rules_listed(&ns, mode, &r);
}

#[test]
fn legacy_drift_is_repaired_within_a_second() {
    require_netns!();
    drift_is_repaired(NatMode::IptablesLegacy, Family::V4);
}

#[test]
fn iptables_nft_drift_is_repaired_within_a_second() {
    require_netns!();
    drift_is_repaired(NatMode::IptablesNft, Family::V4);
}

#[test]
fn nftables_drift_is_repaired_within_a_second() {
    require_netns!();
    drift_is_repaired(NatMode::Nftables, Family::V4);
}

#[test]
fn legacy_v6_drift_is_repaired_within_a_second() {
    require_netns!();
    drift_is_repaired(NatMode::IptablesLegacy, Family::V6);
}

#[test]
fn iptables_nft_v6_drift_is_repaired_within_a_second() {
    require_netns!();
    drift_is_repaired(NatMode::IptablesNft, Family::V6);
}

#[test]
fn nftables_v6_drift_is_repaired_within_a_second() {
    require_netns!();
    drift_is_repaired(NatMode::Nftables, Family::V6);
}

fn switching_mode_leaves_no_rule_of_the_old_mode(family: Family) {
    let ns = Netns::new(&format!("nat-switch-{}", family.nft_family())).unwrap();
    let r = rules_in(family, Options::default());
    for (from, to) in [
        (NatMode::IptablesLegacy, NatMode::IptablesNft),
        (NatMode::IptablesNft, NatMode::Nftables),
        (NatMode::Nftables, NatMode::IptablesLegacy),
    ] {
        let rr = r.clone();
        ns.run(move || async move {
            Reconciler::spawn(from, rr.clone(), LoopOptions::default())
                .unwrap()
                .stop();
            Reconciler::spawn(to, rr, LoopOptions::default())
                .unwrap()
                .stop();
        })
        .unwrap();
        assert_rules_listed(&ns, to, &r);
        for other in NatMode::ALL.into_iter().filter(|m| *m != to) {
            let text = listing_in(&ns, other, family);
            // iptables-nft's chains live in nf_tables too: in `nft list ruleset`
            // only weft's own table belongs to the nftables mode.
            let marker = if other == NatMode::Nftables {
                family.nft_table()
            } else {
                "FLANNEL-"
            };
            assert!(
                !text.contains(marker),
                "{family} {from} -> {to}: {other} still has\n{text}"
            );
        }
    }
}

#[test]
fn switching_mode_leaves_no_rule_of_the_old_mode_v4() {
    require_netns!();
    switching_mode_leaves_no_rule_of_the_old_mode(Family::V4);
}

#[test]
fn switching_mode_leaves_no_rule_of_the_old_mode_v6() {
    require_netns!();
    switching_mode_leaves_no_rule_of_the_old_mode(Family::V6);
}

/// An IPv4 and an IPv6 loop of `modes` in one namespace (a dual-stack
/// node): both rule sets in place; breaking one family's rules is repaired
/// by that family's loop alone, the other's rules stay and its loop writes
/// nothing; at the end both loops find nothing to do.
fn loops_side_by_side(v4_mode: NatMode, v6_mode: NatMode) {
    let ns = Netns::new("nat-dual").unwrap();
    let r4 = rules_in(Family::V4, Options::default());
    let r6 = rules_in(Family::V6, Options::default());
    let (stop4, task4) = spawn_loop(&ns, v4_mode, r4.clone());
    let (stop6, task6) = spawn_loop(&ns, v6_mode, r6.clone());
    let both = || intact(&ns, v4_mode, &r4) && intact(&ns, v6_mode, &r6);
    wait_until("both families' rules", both);
    let mut repairs = 0;
    for (family, mode, r) in [(Family::V6, v6_mode, &r6), (Family::V4, v4_mode, &r4)] {
        // Each family's first breakage (a flushed chain) and a deleted rule or table.
        for (what, cmd) in breakages(mode, family).into_iter().take(2) {
            run_cmd(&ns, &cmd);
            let t = wait_until(&format!("{mode} {family}: {what}"), || intact(&ns, mode, r));
            repairs += 1;
            assert!(
                t < Duration::from_secs(1),
                "{mode} {family}: {what} took {t:?}"
            );
            assert!(both(), "{family}'s {what} disturbed the other family");
        }
    }
    assert_eq!(repairs, 4);
    // Let a resync pass: still nothing to write on either side.
    std::thread::sleep(Duration::from_millis(300));
    stop4.send(()).unwrap();
    stop6.send(()).unwrap();
    let (applies4, applies6) = (task4.join().unwrap(), task6.join().unwrap());
    assert_eq!(
        (applies4, applies6),
        (3, 3),
        "each loop: its first apply and its own family's two repairs, nothing for the other's"
    );
    assert!(both());
}

#[test]
fn v4_and_v6_loops_side_by_side_legacy() {
    require_netns!();
    loops_side_by_side(NatMode::IptablesLegacy, NatMode::IptablesLegacy);
}

#[test]
fn v4_and_v6_loops_side_by_side_iptables_nft() {
    require_netns!();
    loops_side_by_side(NatMode::IptablesNft, NatMode::IptablesNft);
}

#[test]
fn v4_and_v6_loops_side_by_side_nftables() {
    require_netns!();
    loops_side_by_side(NatMode::Nftables, NatMode::Nftables);
}

/// Detection per family may choose different modes: each loop removes the
/// other modes of its own family only, never the other family's rules.
#[test]
fn v4_and_v6_loops_in_different_modes() {
    require_netns!();
    loops_side_by_side(NatMode::Nftables, NatMode::IptablesLegacy);
    loops_side_by_side(NatMode::IptablesNft, NatMode::Nftables);
}

/// `remove` and `remove_family` take one family's rules and leave the
/// other's, in every mode.
#[test]
fn removal_is_per_family() {
    require_netns!();
    for mode in NatMode::ALL {
        let ns = Netns::new(&format!("nat-rm-{}", mode.name())).unwrap();
        let r4 = rules_in(Family::V4, Options::default());
        let r6 = rules_in(Family::V6, Options::default());
        for r in [r4.clone(), r6.clone()] {
            assert!(with_backend_in(&ns, mode, r.family, move |b| b
                .reconcile(&r)
                .unwrap()));
        }
        with_backend_in(&ns, mode, Family::V6, |b| b.remove().unwrap());
        assert!(intact(&ns, mode, &r4), "{mode}: v6 removal took v4 rules");
        let v6 = with_backend_in(&ns, mode, Family::V6, |b| b.observe().unwrap());
        assert!(v6.is_empty(), "{mode}: {v6:?}");
        if mode == NatMode::Nftables {
            assert_eq!(nft_table_listed(&ns, Family::V6), None);
        } else {
            let save = listing_in(&ns, mode, Family::V6);
            assert!(!save.contains("FLANNEL"), "{save}");
        }
        // A family the node no longer uses: every mode's rules of it go.
        let r = r6.clone();
        assert!(with_backend_in(&ns, mode, Family::V6, move |b| b
            .reconcile(&r)
            .unwrap()));
        ns.run(|| async { weft_nat::reconciler::remove_family(Family::V6) })
            .unwrap();
        let v6 = with_backend_in(&ns, mode, Family::V6, |b| b.observe().unwrap());
        assert!(v6.is_empty(), "{mode}: remove_family left {v6:?}");
        assert!(
            intact(&ns, mode, &r4),
            "{mode}: remove_family(V6) took v4 rules"
        );
    }
}

/// Mode detection reads the family's own tools and tables: rules in
/// ip6tables-legacy or kube-proxy's `ip6` table decide for IPv6 only.
#[test]
fn detection_is_per_family() {
    require_netns!();
    let detect = |ns: &Netns, family: Family| {
        ns.run(move || async move { weft_nat::detect(family, false, None) })
            .unwrap()
    };
    let ns = Netns::new("nat-detect").unwrap();
    for family in Family::ALL {
        let d = detect(&ns, family);
        assert_eq!(d.mode, NatMode::IptablesNft, "{family} fresh: {}", d.reason);
    }
    // kubelet's hint chain in ip6tables-legacy: IPv6 follows it, IPv4 does not.
    ns.exec(&[
        "ip6tables-legacy",
        "-t",
        "mangle",
        "-N",
        "KUBE-IPTABLES-HINT",
    ])
    .unwrap();
    ns.exec(&[
        "ip6tables-legacy",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "fd00::/64",
        "-j",
        "MASQUERADE",
    ])
    .unwrap();
    let d6 = detect(&ns, Family::V6);
    assert_eq!(d6.mode, NatMode::IptablesLegacy, "{}", d6.reason);
    assert!(d6.reason.contains("ip6tables-legacy"), "{}", d6.reason);
    let d4 = detect(&ns, Family::V4);
    assert_eq!(d4.mode, NatMode::IptablesNft, "{}", d4.reason);

    // kube-proxy in nftables mode for IPv6 only (table ip6 kube-proxy).
    let ns = Netns::new("nat-detect-kp").unwrap();
    ns.exec(&["nft", "add", "table", "ip6", "kube-proxy"])
        .unwrap();
    ns.exec(&["nft", "add", "chain", "ip6", "kube-proxy", "services"])
        .unwrap();
    let d6 = detect(&ns, Family::V6);
    assert_eq!(d6.mode, NatMode::Nftables, "{}", d6.reason);
    assert!(d6.reason.contains("table ip6 kube-proxy"), "{}", d6.reason);
    let d4 = detect(&ns, Family::V4);
    assert_eq!(d4.mode, NatMode::IptablesNft, "{}", d4.reason);
}

/// The packet test's namespaces: a node with a pod behind `cni0`, a remote node
/// holding a remote pod's address, and an outside host, on one switch.
struct PacketLab {
    node: Netns,
    pod: Netns,
    remote: Netns,
    outside: Netns,
    _switch: Switch,
}

/// The packet lab's addresses in one family: the underlay, this node's
/// pods (the seed's subnet), another node's pods, and the prefixes of both.
struct LabAddrs {
    node: &'static str,
    remote: &'static str,
    outside: &'static str,
    /// The underlay's prefix length.
    underlay_len: u8,
    pod: &'static str,
    cni0: &'static str,
    remote_pod: &'static str,
    /// The other node's pod subnet.
    remote_subnet: &'static str,
    /// The pod subnets' prefix length.
    subnet_len: u8,
}

const LAB_V4: LabAddrs = LabAddrs {
    node: "172.18.0.2",
    remote: "172.18.0.3",
    outside: "172.18.0.100",
    underlay_len: 16,
    pod: "10.244.0.2",
    cni0: "10.244.0.1",
    remote_pod: "10.244.1.2",
    remote_subnet: "10.244.1.0/24",
    subnet_len: 24,
};

const LAB_V6: LabAddrs = LabAddrs {
    node: "fd18::2",
    remote: "fd18::3",
    outside: "fd18::100",
    underlay_len: 64,
    pod: "fc00:0:0:1::2",
    cni0: "fc00:0:0:1::1",
    remote_pod: "fc00:0:0:2::2",
    remote_subnet: "fc00:0:0:2::/64",
    subnet_len: 64,
};

fn lab_addrs(family: Family) -> &'static LabAddrs {
    match family {
        Family::V4 => &LAB_V4,
        Family::V6 => &LAB_V6,
    }
}

fn packet_lab_in(family: Family) -> PacketLab {
    let a = lab_addrs(family);
    let (_, subnet) = seed_nets(family);
    let switch = Switch::new("nat-sw").unwrap();
    let node = Netns::new("nat-node").unwrap();
    let pod = Netns::new("nat-pod").unwrap();
    let remote = Netns::new("nat-remote").unwrap();
    let outside = Netns::new("nat-out").unwrap();
    if family == Family::V6 {
        // Addresses usable at once (no duplicate address detection), and no
        // redirects taken: traffic routed through the node keeps going there.
        for ns in [&node, &pod, &remote, &outside] {
            for key in [
                "net.ipv6.conf.default.accept_dad",
                "net.ipv6.conf.all.accept_dad",
                "net.ipv6.conf.default.accept_redirects",
                "net.ipv6.conf.all.accept_redirects",
            ] {
                ns.sysctl(key, "0").unwrap();
            }
        }
    }
    for (ns, ip) in [(&node, a.node), (&remote, a.remote), (&outside, a.outside)] {
        switch
            .attach(ns, "eth0", &format!("{ip}/{}", a.underlay_len))
            .unwrap();
    }
    match family {
        Family::V4 => {
            node.sysctl("net.ipv4.ip_forward", "1").unwrap();
            // No ICMP redirects: traffic routed through the node must keep going through it.
            for key in [
                "net.ipv4.conf.all.send_redirects",
                "net.ipv4.conf.eth0.send_redirects",
            ] {
                node.sysctl(key, "0").unwrap();
            }
            outside
                .sysctl("net.ipv4.conf.all.accept_redirects", "0")
                .unwrap();
        }
        Family::V6 => node.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap(),
    }
    node.add_bridge("cni0").unwrap();
    node.add_addr("cni0", &format!("{}/{}", a.cni0, a.subnet_len))
        .unwrap();
    veth(&node, "veth0", &pod, "eth0").unwrap();
    node.set_master("veth0", "cni0").unwrap();
    pod.add_addr("eth0", &format!("{}/{}", a.pod, a.subnet_len))
        .unwrap();
    pod.ip(&["route", "add", "default", "via", a.cni0]).unwrap();
    // The remote node: its pod's address on a bridge, routes between the two pod subnets (host-gw style).
    remote.add_bridge("cni0").unwrap();
    remote
        .add_addr("cni0", &format!("{}/{}", a.remote_pod, a.subnet_len))
        .unwrap();
    remote.ip(&["route", "add", subnet, "via", a.node]).unwrap();
    node.ip(&["route", "add", a.remote_subnet, "via", a.remote])
        .unwrap();
    // The outside host knows the way to the node's pods (for outside -> pod), nothing else of the cluster.
    outside
        .ip(&["route", "add", subnet, "via", a.node])
        .unwrap();
    outside
        .ip(&["route", "add", a.remote_subnet, "via", a.node])
        .unwrap();
    PacketLab {
        node,
        pod,
        remote,
        outside,
        _switch: switch,
    }
}

/// The source address a listener in `listener_ns` sees when `from` connects to `to_ip`.
fn seen_source(
    listener_ns: &Netns,
    listen_ip: &'static str,
    from: &Netns,
    to_ip: &'static str,
) -> Option<String> {
    weft_netns::probe::seen_source(
        listener_ns,
        listen_ip.parse().unwrap(),
        from,
        to_ip.parse().unwrap(),
    )
    .unwrap()
    .map(|ip| ip.to_string())
}

fn packets_show_each_behaviour(mode: NatMode, family: Family) {
    let lab = packet_lab_in(family);
    let a = lab_addrs(family);
    let r = rules_in(family, Options::default());
    with_backend_in(&lab.node, mode, family, move |b| {
        b.reconcile(&r).unwrap();
    });
    // pod -> outside: masqueraded to the node's address.
    assert_eq!(
        seen_source(&lab.outside, a.outside, &lab.pod, a.outside).as_deref(),
        Some(a.node),
        "{mode} {family}: pod -> outside"
    );
    // pod -> remote pod: the pod's own address.
    assert_eq!(
        seen_source(&lab.remote, a.remote_pod, &lab.pod, a.remote_pod).as_deref(),
        Some(a.pod),
        "{mode} {family}: pod -> remote pod"
    );
    // outside -> own pod: the outside's address.
    assert_eq!(
        seen_source(&lab.pod, a.pod, &lab.outside, a.pod).as_deref(),
        Some(a.outside),
        "{mode} {family}: outside -> pod"
    );
    // outside -> another node's pod through this node: masqueraded (the seed's fourth rule).
    assert_eq!(
        seen_source(&lab.remote, a.remote_pod, &lab.outside, a.remote_pod).as_deref(),
        Some(a.node),
        "{mode} {family}: outside -> remote pod"
    );
    let _ = &lab.node;
}

#[test]
fn packets_legacy() {
    require_netns!();
    packets_show_each_behaviour(NatMode::IptablesLegacy, Family::V4);
}

#[test]
fn packets_iptables_nft() {
    require_netns!();
    packets_show_each_behaviour(NatMode::IptablesNft, Family::V4);
}

#[test]
fn packets_nftables() {
    require_netns!();
    packets_show_each_behaviour(NatMode::Nftables, Family::V4);
}

#[test]
fn packets_v6_legacy() {
    require_netns!();
    packets_show_each_behaviour(NatMode::IptablesLegacy, Family::V6);
}

#[test]
fn packets_v6_iptables_nft() {
    require_netns!();
    packets_show_each_behaviour(NatMode::IptablesNft, Family::V6);
}

#[test]
fn packets_v6_nftables() {
    require_netns!();
    packets_show_each_behaviour(NatMode::Nftables, Family::V6);
}

#[test]
fn without_rules_pod_traffic_to_the_outside_is_not_masqueraded() {
    require_netns!();
    // The control: the same lab without weft's rules shows the pod's own address
    // (so the packet tests above really measure the rules).
    for family in Family::ALL {
        let lab = packet_lab_in(family);
        let a = lab_addrs(family);
        let (cluster, _) = seed_nets(family);
        lab.outside
            .ip(&["route", "add", cluster, "via", a.node])
            .ok();
        assert_eq!(
            seen_source(&lab.outside, a.outside, &lab.pod, a.outside).as_deref(),
            Some(a.pod),
            "{family}"
        );
    }
}

/// The save-less fast path: `certainly_absent` is true only where no chain
/// of weft's can exist, and observing there equals what iptables-save says.
#[test]
fn chains_known_absent_without_iptables_save() {
    require_netns!();
    for family in Family::ALL {
        for mode in [NatMode::IptablesLegacy, NatMode::IptablesNft] {
            chains_known_absent(mode, family);
        }
    }
}

fn chains_known_absent(mode: NatMode, family: Family) {
    let tool = tool(mode, family);
    let tool = tool.as_str();
    let absent = |ns: &Netns, family: Family| {
        ns.run(move || async move {
            let b = if mode == NatMode::IptablesLegacy {
                IptablesBackend::legacy(family)
            } else {
                IptablesBackend::nft(family)
            };
            b.certainly_absent()
        })
        .unwrap()
    };
    let ns = Netns::new("absent").unwrap();
    assert!(absent(&ns, family), "{mode} {family}: a fresh namespace");
    // A foreign chain: nft still knows for sure, legacy no longer does.
    ns.exec(&[tool, "-t", "nat", "-N", "KUBE-POSTROUTING"])
        .unwrap();
    assert_eq!(
        absent(&ns, family),
        mode == NatMode::IptablesNft,
        "{mode} {family}: a foreign chain"
    );
    // One of weft's chain names anywhere: not absent.
    ns.exec(&[tool, "-t", "mangle", "-N", "FLANNEL-FWD"])
        .unwrap();
    assert!(
        !absent(&ns, family),
        "{mode} {family}: FLANNEL-FWD in mangle"
    );
    ns.exec(&[tool, "-t", "mangle", "-X", "FLANNEL-FWD"])
        .unwrap();
    // weft's rules in place: not absent; and observing matches them.
    let r = rules_in(family, Options::default());
    let wrote = with_backend_in(&ns, mode, family, move |b| b.reconcile(&r).unwrap());
    assert!(wrote);
    assert!(!absent(&ns, family), "{mode} {family}: weft's rules");
    let r = rules_in(family, Options::default());
    assert!(!with_backend_in(&ns, mode, family, move |b| b
        .reconcile(&r)
        .unwrap()));
    // The other family's tables know nothing of them.
    let other = Family::ALL.into_iter().find(|f| *f != family).unwrap();
    assert!(
        absent(&ns, other),
        "{mode}: {family}'s chains are not {other}'s"
    );
}
