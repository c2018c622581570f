//! NAT in network namespaces (root), for each of the three modes: the rules
//! the kernel shows, no write when nothing changed, atomic failure, foreign
//! rules kept, drift repaired within a second, mode switches, and packets:
//! the source address a listener sees.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::time::{Duration, Instant};

use weft_nat::reconciler::{LoopOptions, Reconciler};
use weft_nat::render::{iptables_jump, iptables_rule};
use weft_nat::rules::Chain;
use weft_nat::{
    IptablesBackend, NatBackend, NatMode, NftablesBackend, Options, RuleSet, SnatRules,
};
use weft_netns::{require_netns, veth, Netns, Switch};

const CLUSTER: &str = "10.244.0.0/16";
const SUBNET: &str = "10.244.0.0/24";

fn rules(options: Options) -> RuleSet {
    SnatRules::build(CLUSTER.parse().unwrap(), SUBNET.parse().unwrap(), options).unwrap()
}

/// The kernel's view of a mode, as its own tool prints it.
fn listing(ns: &Netns, mode: NatMode) -> String {
    match mode {
        NatMode::IptablesLegacy => ns.exec(&["iptables-legacy-save"]).unwrap(),
        NatMode::IptablesNft => ns.exec(&["iptables-nft-save"]).unwrap(),
        NatMode::Nftables => ns.exec(&["nft", "list", "ruleset"]).unwrap(),
    }
}

/// Runs a backend operation inside the namespace.
fn with_backend<T: Send + 'static>(
    ns: &Netns,
    mode: NatMode,
    f: impl FnOnce(&mut dyn NatBackend) -> T + Send + 'static,
) -> T {
    ns.run(move || async move {
        let mut b = mode.backend();
        f(b.as_mut())
    })
    .unwrap()
}

fn assert_rules_listed(ns: &Netns, mode: NatMode, r: &RuleSet) {
    let text = listing(ns, mode);
    match mode {
        NatMode::Nftables => {
            let table = ns
                .exec(&["nft", "list", "table", "ip", "flannel-ipv4"])
                .unwrap();
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

fn rules_and_idempotence(mode: NatMode) {
    let ns = Netns::new(&format!("nat-{}", mode.name())).unwrap();
    let r = rules(Options::default());
    let r2 = r.clone();
    let wrote = with_backend(&ns, mode, move |b| {
        (b.reconcile(&r2).unwrap(), b.reconcile(&r2).unwrap())
    });
    assert_eq!(
        wrote,
        (true, false),
        "first reconcile writes, second sends nothing"
    );
    assert_rules_listed(&ns, mode, &r);
    eprintln!("{mode}: kernel shows\n{}", listing(&ns, mode));
}

#[test]
fn legacy_rules_and_idempotence() {
    require_netns!();
    rules_and_idempotence(NatMode::IptablesLegacy);
}

#[test]
fn iptables_nft_rules_and_idempotence() {
    require_netns!();
    rules_and_idempotence(NatMode::IptablesNft);
}

#[test]
fn nftables_rules_and_idempotence() {
    require_netns!();
    rules_and_idempotence(NatMode::Nftables);
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
                    IptablesBackend::legacy()
                } else {
                    IptablesBackend::nft()
                };
                b.reconcile(&g).unwrap();
                let mut bad = IptablesBackend::with_bad_line_for_tests(mode);
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
            NftablesBackend::new().reconcile(&g).unwrap();
            let other = SnatRules::build(
                "10.244.0.0/16".parse().unwrap(),
                "10.244.7.0/24".parse().unwrap(),
                Options::default(),
            )
            .unwrap();
            NftablesBackend::new()
                .with_masq_flags_override(0x1000)
                .reconcile(&other)
                .unwrap_err()
                .to_string()
        })
        .unwrap();
    assert!(!err.is_empty());
    assert_rules_listed(&ns, NatMode::Nftables, &good);
}

/// Polls until the mode's listing satisfies `ok`; panics after 5 s.
fn wait_until(ns: &Netns, mode: NatMode, what: &str, ok: impl Fn(&str) -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        if ok(&listing(ns, mode)) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{mode}: {what} not repaired after 5 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn drift_is_repaired(mode: NatMode) {
    let ns = Netns::new(&format!("nat-drift-{}", mode.name())).unwrap();
    let r = rules(Options::default());
    let rr = r.clone();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let task = ns
        .spawn_task(move || async move {
            let handle = Reconciler::spawn(mode, rr, LoopOptions::default()).unwrap();
            let _ = rx.recv();
            let applies = handle
                .stats()
                .applies
                .load(std::sync::atomic::Ordering::Relaxed);
            handle.stop();
            applies
        })
        .unwrap();
    let full = |t: &str| match mode {
        NatMode::Nftables => {
            t.contains("masquerade fully-random")
                && t.contains("chain forward")
                && t.matches("comment \"weft:").count() == 8
        }
        _ => {
            t.matches("--comment \"flanneld masq\"").count() == 7
                && t.matches("--comment \"flanneld forward\"").count() == 3
                && t.contains(&iptables_jump(Chain::Postrouting))
        }
    };
    wait_until(&ns, mode, "initial rules", full);
    let breakages: Vec<(&str, Vec<&str>)> = match mode {
        NatMode::Nftables => vec![
            (
                "flushed chain",
                vec!["nft", "flush", "chain", "ip", "flannel-ipv4", "postrtg"],
            ),
            (
                "deleted table",
                vec!["nft", "delete", "table", "ip", "flannel-ipv4"],
            ),
            (
                "deleted chain",
                vec!["nft", "delete", "chain", "ip", "flannel-ipv4", "forward"],
            ),
        ],
        _ => {
            let tool = if mode == NatMode::IptablesLegacy {
                "iptables-legacy"
            } else {
                "iptables-nft"
            };
            vec![
                (
                    "flushed chain",
                    vec![tool, "-t", "nat", "-F", "FLANNEL-POSTRTG"],
                ),
                (
                    "deleted jump rule",
                    vec![
                        tool,
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
                    ],
                ),
                (
                    "deleted rule",
                    vec![
                        tool,
                        "-t",
                        "filter",
                        "-D",
                        "FLANNEL-FWD",
                        "-s",
                        CLUSTER,
                        "-m",
                        "comment",
                        "--comment",
                        "flanneld forward",
                        "-j",
                        "ACCEPT",
                    ],
                ),
            ]
        }
    };
    for (what, cmd) in breakages {
        ns.exec(&cmd).unwrap();
        let t = wait_until(&ns, mode, what, full);
        eprintln!("{mode}: {what} repaired in {:.0} ms", t.as_secs_f64() * 1e3);
        assert!(t < Duration::from_secs(1), "{mode}: {what} took {t:?}");
    }
    tx.send(()).unwrap();
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
    drift_is_repaired(NatMode::IptablesLegacy);
}

#[test]
fn iptables_nft_drift_is_repaired_within_a_second() {
    require_netns!();
    drift_is_repaired(NatMode::IptablesNft);
}

#[test]
fn nftables_drift_is_repaired_within_a_second() {
    require_netns!();
    drift_is_repaired(NatMode::Nftables);
}

#[test]
fn switching_mode_leaves_no_rule_of_the_old_mode() {
    require_netns!();
    let ns = Netns::new("nat-switch").unwrap();
    let r = rules(Options::default());
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
            let text = listing(&ns, other);
            // iptables-nft's chains live in nf_tables too: in `nft list ruleset`
            // only weft's own table belongs to the nftables mode.
            let marker = if other == NatMode::Nftables {
                "flannel-ipv4"
            } else {
                "FLANNEL-"
            };
            assert!(
                !text.contains(marker),
                "{from} -> {to}: {other} still has\n{text}"
            );
        }
    }
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

const NODE_IP: &str = "172.18.0.2";
const REMOTE_IP: &str = "172.18.0.3";
const OUTSIDE_IP: &str = "172.18.0.100";
const POD_IP: &str = "10.244.0.2";
const REMOTE_POD_IP: &str = "10.244.1.2";

fn packet_lab() -> PacketLab {
    let switch = Switch::new("nat-sw").unwrap();
    let node = Netns::new("nat-node").unwrap();
    let pod = Netns::new("nat-pod").unwrap();
    let remote = Netns::new("nat-remote").unwrap();
    let outside = Netns::new("nat-out").unwrap();
    switch
        .attach(&node, "eth0", &format!("{NODE_IP}/16"))
        .unwrap();
    switch
        .attach(&remote, "eth0", &format!("{REMOTE_IP}/16"))
        .unwrap();
    switch
        .attach(&outside, "eth0", &format!("{OUTSIDE_IP}/16"))
        .unwrap();
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
    node.add_bridge("cni0").unwrap();
    node.add_addr("cni0", "10.244.0.1/24").unwrap();
    veth(&node, "veth0", &pod, "eth0").unwrap();
    node.set_master("veth0", "cni0").unwrap();
    pod.add_addr("eth0", &format!("{POD_IP}/24")).unwrap();
    pod.ip(&["route", "add", "default", "via", "10.244.0.1"])
        .unwrap();
    // The remote node: its pod's address on a bridge, routes between the two pod subnets (host-gw style).
    remote.add_bridge("cni0").unwrap();
    remote
        .add_addr("cni0", &format!("{REMOTE_POD_IP}/24"))
        .unwrap();
    remote
        .ip(&["route", "add", SUBNET, "via", NODE_IP])
        .unwrap();
    node.ip(&["route", "add", "10.244.1.0/24", "via", REMOTE_IP])
        .unwrap();
    // The outside host knows the way to the node's pods (for outside -> pod), nothing else of the cluster.
    outside
        .ip(&["route", "add", SUBNET, "via", NODE_IP])
        .unwrap();
    outside
        .ip(&["route", "add", "10.244.1.0/24", "via", NODE_IP])
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

fn packets_show_each_behaviour(mode: NatMode) {
    let lab = packet_lab();
    let r = rules(Options::default());
    with_backend(&lab.node, mode, move |b| {
        b.reconcile(&r).unwrap();
    });
    // pod -> outside: masqueraded to the node's address.
    assert_eq!(
        seen_source(&lab.outside, OUTSIDE_IP, &lab.pod, OUTSIDE_IP).as_deref(),
        Some(NODE_IP),
        "{mode}: pod -> outside"
    );
    // pod -> remote pod: the pod's own address.
    assert_eq!(
        seen_source(&lab.remote, REMOTE_POD_IP, &lab.pod, REMOTE_POD_IP).as_deref(),
        Some(POD_IP),
        "{mode}: pod -> remote pod"
    );
    // outside -> own pod: the outside's address.
    assert_eq!(
        seen_source(&lab.pod, POD_IP, &lab.outside, POD_IP).as_deref(),
        Some(OUTSIDE_IP),
        "{mode}: outside -> pod"
    );
    // outside -> another node's pod through this node: masqueraded (the seed's fourth rule).
    assert_eq!(
        seen_source(&lab.remote, REMOTE_POD_IP, &lab.outside, REMOTE_POD_IP).as_deref(),
        Some(NODE_IP),
        "{mode}: outside -> remote pod"
    );
    let _ = &lab.node;
}

#[test]
fn packets_legacy() {
    require_netns!();
    packets_show_each_behaviour(NatMode::IptablesLegacy);
}

#[test]
fn packets_iptables_nft() {
    require_netns!();
    packets_show_each_behaviour(NatMode::IptablesNft);
}

#[test]
fn packets_nftables() {
    require_netns!();
    packets_show_each_behaviour(NatMode::Nftables);
}

#[test]
fn without_rules_pod_traffic_to_the_outside_is_not_masqueraded() {
    require_netns!();
    // The control: the same lab without weft's rules shows the pod's own address
    // (so the packet tests above really measure the rules).
    let lab = packet_lab();
    lab.outside
        .ip(&["route", "add", "10.244.0.0/16", "via", NODE_IP])
        .ok();
    assert_eq!(
        seen_source(&lab.outside, OUTSIDE_IP, &lab.pod, OUTSIDE_IP).as_deref(),
        Some(POD_IP)
    );
}

/// The save-less fast path: `certainly_absent` is true only where no chain
/// of weft's can exist, and observing there equals what iptables-save says.
#[test]
fn chains_known_absent_without_iptables_save() {
    require_netns!();
    for (mode, tool) in [
        (NatMode::IptablesLegacy, "iptables-legacy"),
        (NatMode::IptablesNft, "iptables-nft"),
    ] {
        let absent = |ns: &Netns| {
            ns.run(move || async move {
                let b = if mode == NatMode::IptablesLegacy {
                    IptablesBackend::legacy()
                } else {
                    IptablesBackend::nft()
                };
                b.certainly_absent()
            })
            .unwrap()
        };
        let ns = Netns::new("absent").unwrap();
        assert!(absent(&ns), "{mode}: a fresh namespace");
        // A foreign chain: nft still knows for sure, legacy no longer does.
        ns.exec(&[tool, "-t", "nat", "-N", "KUBE-POSTROUTING"])
            .unwrap();
        assert_eq!(
            absent(&ns),
            mode == NatMode::IptablesNft,
            "{mode}: a foreign chain"
        );
        // One of weft's chain names anywhere: not absent.
        ns.exec(&[tool, "-t", "mangle", "-N", "FLANNEL-FWD"])
            .unwrap();
        assert!(!absent(&ns), "{mode}: FLANNEL-FWD in mangle");
        ns.exec(&[tool, "-t", "mangle", "-X", "FLANNEL-FWD"])
            .unwrap();
        // weft's rules in place: not absent; and observing matches them.
        let r = rules(Options::default());
        let wrote = with_backend(&ns, mode, move |b| b.reconcile(&r).unwrap());
        assert!(wrote);
        assert!(!absent(&ns), "{mode}: weft's rules");
        let r = rules(Options::default());
        assert!(!with_backend(&ns, mode, move |b| b.reconcile(&r).unwrap()));
    }
}
