//! End to end over the matrix backend × NAT mode: the lab (real weftd on
//! three nodes, the real kube-apiserver where ../shared/kube has it, pods
//! through weft-cni, an outside host), asserting the seed's tables on every
//! node, NAT rules in the chosen mode, and full connectivity.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use weft_integration::flannel_node::device;
use weft_integration::lab::{ApiChoice, Backend, Binaries, IpFamily, Lab, LabSpec};
use weft_integration::pinger::Pinger;
use weft_integration::seed_nodes;
use weft_integration::topology::{cluster_network, NodeSpec};
use weft_integration::weftd::scrape;
use weft_integration::witness::KernelWitness;
use weft_nat::NatMode;
use weft_netns::{require_netns, Netns};
use weft_overlay::Family;

fn binaries() -> Binaries {
    Binaries {
        weftd: PathBuf::from(env!("CARGO_BIN_EXE_weftd")),
        weft_cni: PathBuf::from(env!("CARGO_BIN_EXE_weft-cni")),
        reference_plugins: PathBuf::from("/usr/lib/cni"),
    }
}

/// The seed's tables on every node, for this backend and every family of
/// the lab (weft's routes carry protocol 119; a flannel-made node's carry
/// none; IPv6 has the same tables on `flannel-v6.1`).
fn assert_tables(lab: &Lab, backend: Backend) {
    for &family in lab.families() {
        assert_tables_of(lab, backend, family);
    }
}

fn assert_tables_of(lab: &Lab, backend: Backend, family: Family) {
    let (flag, device) = match family {
        Family::V4 => ("-4", "flannel.1"),
        Family::V6 => ("-6", "flannel-v6.1"),
    };
    for n in &lab.nodes {
        let routes = match n.agent {
            Some(_) => n.ns.ip(&[flag, "route", "show", "proto", "119"]).unwrap(),
            None => n.ns.ip(&[flag, "route", "show"]).unwrap(),
        };
        let neigh =
            n.ns.ip(&[flag, "neigh", "show", "nud", "permanent"])
                .unwrap();
        let fdb =
            n.ns.exec(&["bridge", "fdb", "show", "dev", device])
                .unwrap_or_default();
        for o in lab.nodes.iter().filter(|o| o.spec.name != n.spec.name) {
            let subnet = o.spec.subnet_of(family);
            let (dst, gw, peer) = (
                subnet.to_string(),
                subnet.network().to_string(),
                o.spec.ip_of(family),
            );
            let at = format!("{} ({family})", n.spec.name);
            match backend {
                Backend::Vxlan => {
                    // `ip -6` shows the metric (1024) before `onlink`.
                    let head = format!("{dst} via {gw} dev {device} ");
                    assert!(
                        routes
                            .lines()
                            .any(|l| l.starts_with(&head) && l.contains(" onlink")),
                        "{at}: {routes}"
                    );
                    assert!(
                        neigh.contains(&format!("{gw} dev {device} lladdr")),
                        "{at}: {neigh}"
                    );
                    assert!(
                        fdb.contains(&format!("dst {peer} self permanent")),
                        "{at}: {fdb}"
                    );
                }
                Backend::HostGw | Backend::VxlanDirect => {
                    assert!(
                        routes.contains(&format!("{dst} via {peer} dev eth0")),
                        "{at}: {routes}"
                    );
                }
                Backend::Udp => {
                    // No route of its own: the forwarder's table has the peer.
                    assert!(!routes.contains(&dst), "{at}: {routes}");
                }
            }
        }
        if backend == Backend::Udp {
            assert_flannel0(n, &routes);
        }
    }
}

/// flannel's udp device: a TUN `flannel0`, MTU underlay − 28, the subnet's
/// network address with the cluster's prefix, the cluster network routed
/// into it (weft's route, `proto 119`).
fn assert_flannel0(n: &weft_integration::lab::LabNode, routes: &str) {
    let at = &n.spec.name;
    assert!(
        routes.contains("10.244.0.0/16 dev flannel0"),
        "{at}: {routes}"
    );
    let link = n.ns.ip_json(&["-d", "link", "show", "flannel0"]).unwrap();
    let link = &link[0];
    assert_eq!(link["mtu"], 1472, "{at}: {link:#}");
    assert_eq!(link["linkinfo"]["info_kind"], "tun", "{at}: {link:#}");
    let addr = n.ns.ip(&["-4", "addr", "show", "dev", "flannel0"]).unwrap();
    assert!(
        addr.contains(&format!("inet {}/16", n.spec.subnet.network())),
        "{at}: {addr}"
    );
}

/// The node's NAT rules of `family` as the mode lists them (both iptables
/// tables, or the nftables table).
fn nat_listing(ns: &Netns, nat: NatMode, family: Family) -> String {
    let v6 = family == Family::V6;
    match nat {
        NatMode::IptablesLegacy => ns
            .exec(&[if v6 {
                "ip6tables-legacy-save"
            } else {
                "iptables-legacy-save"
            }])
            .unwrap(),
        NatMode::IptablesNft => ns
            .exec(&[if v6 {
                "ip6tables-nft-save"
            } else {
                "iptables-nft-save"
            }])
            .unwrap(),
        NatMode::Nftables => ns
            .exec(&if v6 {
                ["nft", "list", "table", "ip6", "flannel-ipv6"]
            } else {
                ["nft", "list", "table", "ip", "flannel-ipv4"]
            })
            .unwrap(),
    }
}

fn assert_nat(lab: &Lab, nat: NatMode) {
    for &family in lab.families() {
        for n in &lab.nodes {
            let listing = nat_listing(&n.ns, nat, family);
            let random = if nat == NatMode::Nftables {
                "masquerade fully-random"
            } else {
                "--random-fully"
            };
            let at = format!("{} ({family}, {nat})", n.spec.name);
            assert!(listing.contains(random), "{at}: {listing}");
            assert!(
                listing.contains(&n.spec.subnet_of(family).to_string()),
                "{at}: {listing}"
            );
        }
    }
}

/// Against the real kube-apiserver where ../shared/kube has it (CI), else
/// the embedded Node API server; the output says which.
fn combination(backend: Backend, nat: NatMode) {
    combination_with(backend, nat, ApiChoice::Auto, IpFamily::Ipv4);
}

fn combination_with(backend: Backend, nat: NatMode, api: ApiChoice, ip_family: IpFamily) {
    let spec = LabSpec {
        nodes: &seed_nodes(),
        flannel: &[],
        backend,
        nat,
        api,
        ip_family,
    };
    let mut lab = Lab::start_with(&spec, &binaries()).unwrap();
    for i in 0..lab.nodes.len() {
        for k in 1..=2 {
            lab.add_pod(i, &format!("p{}{k}", i + 1)).unwrap();
        }
    }
    let t = lab.wait_for_overlay(Duration::from_secs(20)).unwrap();
    let what = format!("{backend:?} × {nat} × {ip_family}");
    eprintln!(
        "{what}: converged {:.0} ms after the last pod ({})",
        t.as_secs_f64() * 1e3,
        lab.api.describe()
    );
    assert_tables(&lab, backend);
    assert_nat(&lab, nat);
    assert_full_matrix(&lab, &what);
    for c in lab.outside_checks().unwrap() {
        assert!(c.masqueraded(), "{what}: {c:?}");
        assert!(c.kept_source(), "{what}: {c:?}");
    }
    for &family in ip_family.families() {
        assert_trace(&lab, backend, family, &what);
    }
}

/// `weft trace --json` over the lab's namespaces, as JSON, asserting it
/// exits 0 (no fault).
fn trace_json(lab: &Lab, src: IpAddr, dst: IpAddr, want_code: i32) -> Value {
    let out = lab.trace(src, dst, &["--json"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(want_code),
        "weft trace {src} {dst}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("weft trace --json: {e}: {text}"))
}

/// The hops' steps, and each step's output joined.
fn hops(j: &Value) -> (Vec<String>, Vec<String>) {
    let hops = j["hops"].as_array().cloned().unwrap_or_default();
    let steps = hops
        .iter()
        .map(|h| h["step"].as_str().unwrap_or("").to_string())
        .collect();
    let outputs = hops
        .iter()
        .map(|h| {
            h["output"]
                .as_array()
                .map(|o| {
                    o.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default()
        })
        .collect();
    (steps, outputs)
}

/// `weft trace` from the first pod of node 1 to the first pod of node 3
/// lists the seed's hops with the values the kernel holds: the pod's route
/// via its gateway, the node's lookup, the VTEP's neighbour and FDB entry
/// (VXLAN), the node as next hop (host-gw, DirectRouting) or both
/// forwarders (udp), the destination's lookup into cni0, the pod's veth,
/// the pod; and to the outside host, flannel's SNAT rule.
fn assert_trace(lab: &Lab, backend: Backend, family: Family, what: &str) {
    let (a, c) = (&lab.nodes[0], &lab.nodes[2]);
    let src = a.pods[0].ip_of(family).unwrap();
    let dst = c.pods[0].ip_of(family).unwrap();
    let j = trace_json(lab, src, dst, 0);
    let (steps, out) = hops(&j);
    let at = |step: &str| -> &str {
        let i = steps.iter().position(|s| s == step);
        i.map_or("", |i| out[i].as_str())
    };
    let want: &[&str] = match backend {
        Backend::Vxlan => &[
            "pod-route",
            "bridge",
            "node-route",
            "neighbour",
            "fdb",
            "encapsulation",
            "vtep",
            "decap-route",
            "pod-neighbour",
            "pod-port",
            "arrival",
        ],
        Backend::HostGw | Backend::VxlanDirect => &[
            "pod-route",
            "bridge",
            "node-route",
            "neighbour",
            "decap-route",
            "pod-neighbour",
            "pod-port",
            "arrival",
        ],
        Backend::Udp => &[
            "pod-route",
            "bridge",
            "node-route",
            "encapsulation",
            "forwarder",
            "forwarder-peer",
            "decap-route",
            "pod-neighbour",
            "pod-port",
            "arrival",
        ],
    };
    assert_eq!(steps, want, "{what}: {j:#}");
    let (a_net, c_net) = (a.spec.subnet_of(family), c.spec.subnet_of(family));
    assert_eq!(
        at("pod-route"),
        format!("{dst} via {} dev eth0 src {src}", a.spec.gateway_of(family)),
        "{what}"
    );
    let device = match family {
        Family::V4 => "flannel.1",
        Family::V6 => "flannel-v6.1",
    };
    match backend {
        Backend::Vxlan => {
            let (_, mac) = vtep(&c.ns, device).unwrap();
            assert_eq!(
                at("node-route"),
                format!(
                    "{dst} via {} dev {device} src {}",
                    c_net.network(),
                    a_net.network()
                ),
                "{what}"
            );
            assert_eq!(
                at("neighbour"),
                format!("{} dev {device} lladdr {mac} PERMANENT", c_net.network()),
                "{what}"
            );
            assert_eq!(
                at("fdb"),
                format!(
                    "{mac} dev {device} dst {} self permanent",
                    c.spec.ip_of(family)
                ),
                "{what}"
            );
            assert!(
                at("vtep").contains(&format!("link/ether {mac}")),
                "{what}: {j:#}"
            );
        }
        Backend::HostGw | Backend::VxlanDirect => {
            assert!(
                at("node-route").starts_with(&format!("{dst} via {} dev ", c.spec.ip_of(family))),
                "{what}: {j:#}"
            );
        }
        Backend::Udp => {
            assert_eq!(
                at("node-route"),
                format!("{dst} dev flannel0 src {}", a_net.network()),
                "{what}"
            );
            assert!(at("forwarder").ends_with(&format!("public-ip {}", c.spec.ip_of(family))));
            assert!(at("forwarder-peer").ends_with(&format!("public-ip {}", a.spec.ip_of(family))));
        }
    }
    assert_eq!(
        at("decap-route"),
        format!("{dst} dev cni0 src {}", c.spec.gateway_of(family)),
        "{what}"
    );
    assert!(at("pod-port").ends_with(" master cni0"), "{what}: {j:#}");
    assert_eq!(
        at("arrival"),
        format!("local {dst} dev lo src {dst}"),
        "{what}"
    );
    assert_eq!(j["end"]["end"], "delivered", "{what}: {j:#}");

    // To the outside host: flannel's masquerade rule, leaving with node 1's address.
    let outside = weft_integration::lab::outside_ip(family);
    let j = trace_json(lab, src, outside, 0);
    let (steps, out) = hops(&j);
    assert_eq!(
        &steps[steps.len() - 2..],
        ["snat", "arrival"],
        "{what}: {j:#}"
    );
    let snat = &out[steps.len() - 2];
    assert!(snat.to_lowercase().contains("masquerade"), "{what}: {snat}");
    let says = j["hops"][steps.len() - 2]["says"].as_str().unwrap_or("");
    assert!(
        says.contains(&format!("masqueraded to {}", a.spec.ip_of(family))),
        "{what}: {says}"
    );
}

fn all_backends(nat: NatMode) {
    for backend in [
        Backend::Vxlan,
        Backend::HostGw,
        Backend::VxlanDirect,
        Backend::Udp,
    ] {
        combination(backend, nat);
    }
}

/// Dual-stack and IPv6-only pods, every backend, in one NAT mode.
fn every_backend_beyond_ipv4(nat: NatMode) {
    for ip_family in [IpFamily::Dual, IpFamily::Ipv6] {
        for backend in [Backend::Vxlan, Backend::HostGw, Backend::VxlanDirect] {
            combination_with(backend, nat, ApiChoice::Auto, ip_family);
        }
    }
}

/// The lab where ../shared/kube is absent: weft's embedded Node API server.
#[test]
fn the_lab_with_the_embedded_api_server() {
    require_netns!();
    combination_with(
        Backend::Vxlan,
        NatMode::Nftables,
        ApiChoice::Embedded,
        IpFamily::Ipv4,
    );
}

#[test]
fn dual_stack_and_ipv6_only_with_iptables_legacy() {
    require_netns!();
    every_backend_beyond_ipv4(NatMode::IptablesLegacy);
}

#[test]
fn dual_stack_and_ipv6_only_with_iptables_nft() {
    require_netns!();
    every_backend_beyond_ipv4(NatMode::IptablesNft);
}

#[test]
fn dual_stack_and_ipv6_only_with_nftables() {
    require_netns!();
    every_backend_beyond_ipv4(NatMode::Nftables);
}

#[test]
fn every_backend_with_iptables_legacy() {
    require_netns!();
    all_backends(NatMode::IptablesLegacy);
}

#[test]
fn every_backend_with_iptables_nft() {
    require_netns!();
    all_backends(NatMode::IptablesNft);
}

#[test]
fn every_backend_with_nftables() {
    require_netns!();
    all_backends(NatMode::Nftables);
}

/// The seed's nodes (those named in `flannel` set up as flannel would),
/// one pod per node named `<prefix><node number>`, once every node routes
/// to every other.
fn seed_lab(flannel: &[&str], backend: Backend, nat: NatMode, prefix: &str) -> Lab {
    seed_lab_of(flannel, backend, nat, IpFamily::Ipv4, prefix)
}

/// [`seed_lab`] with pods of `ip_family`.
fn seed_lab_of(
    flannel: &[&str],
    backend: Backend,
    nat: NatMode,
    ip_family: IpFamily,
    prefix: &str,
) -> Lab {
    let spec = LabSpec {
        nodes: &seed_nodes(),
        flannel,
        backend,
        nat,
        api: ApiChoice::Auto,
        ip_family,
    };
    let mut lab = Lab::start_with(&spec, &binaries()).unwrap();
    for i in 0..lab.nodes.len() {
        lab.add_pod(i, &format!("{prefix}{}", i + 1)).unwrap();
    }
    lab.wait_for_overlay(Duration::from_secs(20)).unwrap();
    lab
}

#[test]
fn restarting_weftd_under_traffic_loses_no_packet() {
    require_netns!();
    let mut lab = seed_lab(&[], Backend::Vxlan, NatMode::IptablesNft, "r");
    // 400 pings 10 ms apart from a pod on node 1 to a pod on node 3 while
    // both nodes' weftd restart.
    let mut ping = Pinger::start(&lab.nodes[0].pods[0].ns, lab.nodes[2].pods[0].ip, 400).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    lab.restart_agent(2).unwrap();
    lab.restart_agent(0).unwrap();
    assert!(
        ping.running(),
        "the ping ended before the restarts were done"
    );
    let summary = ping.finish().unwrap();
    eprintln!("{}", summary.text);
    assert_eq!(
        summary.lost(),
        0,
        "packets lost during the restarts:\n{}",
        summary.text
    );
}

/// Dual-stack: weftd restarted on a node writes nothing in either family
/// (both devices kept with their MACs), and restarts under pings in both
/// families lose nothing.
#[test]
fn a_dual_stack_restart_writes_nothing_and_loses_nothing() {
    require_netns!();
    let mut lab = seed_lab_of(&[], Backend::Vxlan, NatMode::Nftables, IpFamily::Dual, "d");
    let node = 2;
    let devices: Vec<_> = [Family::V4, Family::V6]
        .iter()
        .map(|f| vtep(&lab.nodes[node].ns, device(*f)).unwrap())
        .collect();
    let witnesses = [
        KernelWitness::start(&lab.nodes[node].ns).unwrap(),
        KernelWitness::start_v6(&lab.nodes[node].ns).unwrap(),
        KernelWitness::start_fdb(&lab.nodes[node].ns).unwrap(),
    ];
    lab.restart_agent(node).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for w in witnesses {
        let seen = w.changes().unwrap();
        assert!(
            seen.is_empty(),
            "the kernel changed during the restart:\n{seen}"
        );
    }
    for (f, before) in [Family::V4, Family::V6].iter().zip(&devices) {
        assert_eq!(vtep(&lab.nodes[node].ns, device(*f)).as_ref(), Some(before));
    }
    let mut pings: Vec<Pinger> = [Family::V4, Family::V6]
        .iter()
        .map(|f| {
            let to = lab.nodes[2].pods[0].ip_of(*f).unwrap();
            Pinger::start(&lab.nodes[0].pods[0].ns, to, 400).unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    lab.restart_agent(2).unwrap();
    lab.restart_agent(0).unwrap();
    for p in &mut pings {
        assert!(p.running(), "the ping ended before the restarts were done");
    }
    for p in pings {
        let summary = p.finish().unwrap();
        eprintln!("{}", summary.text);
        assert_eq!(
            summary.lost(),
            0,
            "lost during the restarts:\n{}",
            summary.text
        );
    }
}

/// The node the mixed and migration tests set up the way flannel does.
const FLANNEL_NODE: usize = 2;

/// A lab whose worker2 flanneld and flannel's CNI plugin set up (no weftd
/// there), with one pod per node, once every node routes to every other.
fn mixed_lab(backend: Backend, nat: NatMode, ip_family: IpFamily) -> Lab {
    let flannel = seed_nodes()[FLANNEL_NODE].name.clone();
    let lab = seed_lab_of(&[&flannel], backend, nat, ip_family, "m");
    assert!(lab.nodes[FLANNEL_NODE].agent.is_none());
    lab
}

fn assert_full_matrix(lab: &Lab, what: &str) {
    for &family in lab.families() {
        assert_full_matrix_of(lab, family, what);
    }
}

fn assert_full_matrix_of(lab: &Lab, family: Family, what: &str) {
    let matrix = lab.ping_matrix_of(family);
    assert!(
        matrix.iter().flatten().all(|ok| *ok),
        "{what}: {family} pod ping matrix {matrix:?}"
    );
}

#[test]
fn flannel_and_weft_nodes_share_a_cluster() {
    require_netns!();
    for (backend, nat) in [
        (Backend::Vxlan, NatMode::IptablesNft),
        (Backend::HostGw, NatMode::IptablesLegacy),
        (Backend::VxlanDirect, NatMode::Nftables),
    ] {
        let lab = mixed_lab(backend, nat, IpFamily::Ipv4);
        // The weft nodes programmed the flannel node from flannel's
        // annotations, the flannel node the weft nodes from weft's.
        assert_tables(&lab, backend);
        assert_nat(&lab, nat);
        assert_full_matrix(&lab, &format!("mixed {backend:?} × {nat}"));
        for c in lab.outside_checks().unwrap() {
            assert!(
                c.masqueraded() && c.kept_source(),
                "mixed {backend:?} × {nat}: {c:?}"
            );
        }
        eprintln!("mixed {backend:?} × {nat}: flannel node and weft nodes reach each other");
    }
}

/// No two objects of an `ip -j`/`bridge -j` listing share `key`.
fn assert_unique(listing: &serde_json::Value, key: &str, what: &str) {
    let keys = listing
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o[key].as_str());
    assert!(repeated(keys).is_empty(), "{what} twice: {listing:#}");
}

/// Counts of the lines that occur more than once.
fn repeated<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<(&'a str, usize)> {
    let mut seen = std::collections::BTreeMap::new();
    for i in items {
        *seen.entry(i).or_insert(0) += 1;
    }
    seen.into_iter().filter(|(_, n)| *n > 1).collect()
}

/// No route, neighbour, FDB entry or NAT rule twice on `ns`, and exactly
/// flannel's rule set in the mode `nat` (none in the other modes), for
/// every family of `families`.
fn assert_no_duplicates(ns: &Netns, nat: NatMode, families: &[Family]) {
    for &family in families {
        assert_no_duplicates_of(ns, nat, family);
    }
    if nat != NatMode::Nftables {
        let tables = ns.exec(&["nft", "list", "tables"]).unwrap();
        assert!(!tables.contains("flannel-ipv"), "{tables}");
    }
}

fn assert_no_duplicates_of(ns: &Netns, nat: NatMode, family: Family) {
    let (flag, device) = match family {
        Family::V4 => ("-4", "flannel.1"),
        Family::V6 => ("-6", "flannel-v6.1"),
    };
    let cluster = cluster_network(family).to_string();
    let routes = ns
        .ip_json(&[flag, "route", "show", "root", &cluster])
        .unwrap();
    // This node's own subnet and the two peers' at least.
    assert!(
        routes.as_array().is_some_and(|r| r.len() >= 3),
        "{family}: {routes:#}"
    );
    assert_unique(&routes, "dst", "routes");
    let neigh = ns
        .ip_json(&[flag, "neigh", "show", "nud", "permanent"])
        .unwrap();
    assert_unique(&neigh, "dst", "neighbours");
    let fdb = ns
        .exec(&["bridge", "-j", "fdb", "show", "dev", device])
        .unwrap_or_else(|_| "[]".into());
    assert_unique(
        &serde_json::from_str(&fdb).unwrap_or_default(),
        "mac",
        "FDB entries",
    );

    let listing = nat_listing(ns, nat, family);
    let rules: Vec<&str> = listing
        .lines()
        .map(str::trim)
        .filter(|l| match nat {
            NatMode::Nftables => {
                !l.starts_with("type ")
                    && !l.starts_with("comment ")
                    && (l.contains(" return") || l.contains(" accept") || l.contains(" masquerade"))
            }
            _ => l.starts_with("-A ") && l.contains("FLANNEL") || l.contains("flanneld"),
        })
        .collect();
    assert!(
        repeated(rules.iter().copied()).is_empty(),
        "{family}: rules twice:\n{listing}"
    );
    // flannel's set: six SNAT and two forward rules, plus the two jumps in iptables.
    let want = if nat == NatMode::Nftables { 8 } else { 10 };
    assert_eq!(rules.len(), want, "{nat} {family}:\n{listing}");
    for other in [NatMode::IptablesLegacy, NatMode::IptablesNft] {
        if other != nat {
            let save = nat_listing(ns, other, family);
            assert!(
                !save.contains("FLANNEL"),
                "{other} ({family}) still has rules:\n{save}"
            );
        }
    }
}

/// `ip -j link show <device>`'s index and MAC, if the device exists.
fn vtep(ns: &Netns, device: &str) -> Option<(u64, String)> {
    let l = ns.ip_json(&["link", "show", device]).ok()?;
    let l = l.get(0)?;
    Some((l["ifindex"].as_u64()?, l["address"].as_str()?.to_string()))
}

fn take_over(backend: Backend, nat: NatMode) {
    take_over_of(backend, nat, IpFamily::Ipv4);
}

/// weftd takes over a flannel-made node of a lab of `ip_family` while a
/// pod pings a pod on it every 10 ms in each family.
fn take_over_of(backend: Backend, nat: NatMode, ip_family: IpFamily) {
    let what = format!("{backend:?} × {nat} × {ip_family}");
    let mut lab = mixed_lab(backend, nat, ip_family);
    let families = lab.families();
    assert_full_matrix(&lab, &format!("before the takeover, {what}"));
    let node = FLANNEL_NODE;
    let ns = lab.nodes[node].ns.name().to_string();
    let devices: Vec<_> = families
        .iter()
        .map(|f| vtep(&lab.nodes[node].ns, device(*f)))
        .collect();
    let subnet_env_path = lab
        .path()
        .join(&lab.nodes[node].spec.name)
        .join("subnet.env");
    let subnet_env = std::fs::read_to_string(&subnet_env_path).unwrap();
    // Flannel's own state is clean to begin with, its routes untagged.
    assert_no_duplicates(&lab.nodes[node].ns, nat, families);
    let flannel_routes = |ns: &Netns, family: Family| {
        let flag = if family == Family::V4 { "-4" } else { "-6" };
        let cluster = cluster_network(family).to_string();
        ns.ip(&[flag, "route", "show", "root", &cluster, "proto", "boot"])
            .unwrap()
    };
    for &family in families {
        assert_eq!(
            flannel_routes(&lab.nodes[node].ns, family).lines().count(),
            2,
            "flannel's two {family} peer routes"
        );
    }

    // A pod on control-plane pings worker2's pod through the switch every
    // 10 ms in each family while weftd takes worker2 over.
    let mut pings: Vec<(Family, Pinger)> = families
        .iter()
        .map(|&f| {
            let to = lab.nodes[node].pods[0].ip_of(f).unwrap();
            (f, Pinger::start(&lab.nodes[0].pods[0].ns, to, 600).unwrap())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let t0 = std::time::Instant::now();
    lab.take_over(node).unwrap();
    let took = t0.elapsed();
    for (family, ping) in &mut pings {
        assert!(
            ping.running(),
            "{family}: the ping ended before weftd was ready ({took:?}): the test proves nothing"
        );
    }
    for (family, ping) in pings {
        let summary = ping.finish().unwrap();
        eprintln!(
            "takeover {what} in {ns}: weftd ready after {:.0} ms; {family}: {} pings sent, {} received",
            took.as_secs_f64() * 1e3,
            summary.sent,
            summary.received
        );
        assert!(
            summary.lost() <= 1,
            "{what}: {family}: {} packets lost:\n{}",
            summary.lost(),
            summary.text
        );
    }

    let n = &lab.nodes[node];
    // weftd adopted flannel.1 (and flannel-v6.1: same device, same MAC),
    // owns the routes now, left subnet.env as flannel wrote it, and
    // nothing is there twice.
    for (f, before) in families.iter().zip(&devices) {
        assert_eq!(
            &vtep(&n.ns, device(*f)),
            before,
            "{} was recreated or changed",
            device(*f)
        );
    }
    assert_no_duplicates(&n.ns, nat, families);
    let now = std::fs::read_to_string(&subnet_env_path).unwrap();
    if families.contains(&Family::V6) && backend != Backend::HostGw {
        // flannel writes the underlay's MTU − 50 though the kernel caps
        // flannel-v6.1 at − 70; weft writes what the device has. Every
        // other line stays as flannel wrote it.
        let other = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with("FLANNEL_MTU="))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(other(&now), other(&subnet_env));
        assert!(now.contains("FLANNEL_MTU=1430\n"), "{now}");
    } else {
        assert_eq!(now, subnet_env);
    }
    for &family in families {
        let t0 = std::time::Instant::now();
        loop {
            let boot = flannel_routes(&n.ns, family);
            if boot.trim().is_empty() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "flannel's {family} routes not adopted: {boot}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_tables(&lab, backend);
    assert_full_matrix(&lab, &format!("after the takeover, {what}"));
    // The pod flannel's CNI plugin made is deleted by weft-cni from
    // flannel's saved delegate config.
    let pod = lab.nodes[node].pods[0].name.clone();
    lab.delete_pod(node, &pod).unwrap();
    let ipam = lab
        .path()
        .join(&lab.nodes[node].spec.name)
        .join("cni-ipam/cbr0");
    let reserved: Vec<String> = std::fs::read_dir(&ipam)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert!(
        reserved.is_empty(),
        "host-local still holds the deleted pod's addresses: {reserved:?}"
    );
}

/// flannel's dual-stack, from a node flannel made to weft: the mixed
/// cluster in both families, then the takeover under pings in both.
#[test]
fn weftd_takes_over_a_dual_stack_flannel_node() {
    require_netns!();
    let lab = mixed_lab(Backend::Vxlan, NatMode::IptablesNft, IpFamily::Dual);
    assert_tables(&lab, Backend::Vxlan);
    assert_nat(&lab, NatMode::IptablesNft);
    assert_full_matrix(&lab, "mixed dual-stack");
    for c in lab.outside_checks().unwrap() {
        assert!(
            c.masqueraded() && c.kept_source(),
            "mixed dual-stack: {c:?}"
        );
    }
    drop(lab);
    take_over_of(Backend::Vxlan, NatMode::IptablesNft, IpFamily::Dual);
    take_over_of(Backend::HostGw, NatMode::Nftables, IpFamily::Dual);
}

#[test]
fn weftd_takes_over_a_flannel_node_iptables_legacy() {
    require_netns!();
    take_over(Backend::Vxlan, NatMode::IptablesLegacy);
}

#[test]
fn weftd_takes_over_a_flannel_node_iptables_nft() {
    require_netns!();
    take_over(Backend::Vxlan, NatMode::IptablesNft);
    take_over(Backend::HostGw, NatMode::IptablesNft);
}

#[test]
fn weftd_takes_over_a_flannel_node_nftables() {
    require_netns!();
    take_over(Backend::Vxlan, NatMode::Nftables);
}

#[test]
fn nodes_added_and_removed_at_run_time() {
    require_netns!();
    let mut lab = seed_lab(&[], Backend::Vxlan, NatMode::Nftables, "a");
    let worker3 = NodeSpec {
        name: "worker3".into(),
        ip: "172.18.0.5".parse().unwrap(),
        subnet: "10.244.3.0/24".parse().unwrap(),
    };
    let t0 = std::time::Instant::now();
    let i = lab.add_node(&worker3).unwrap();
    let ready = t0.elapsed();
    lab.wait_for_overlay(Duration::from_secs(20)).unwrap();
    eprintln!(
        "worker3 added: its weftd ready {:.0} ms and every node routing to it {:.0} ms after the Node was created",
        ready.as_secs_f64() * 1e3,
        t0.elapsed().as_secs_f64() * 1e3
    );
    lab.add_pod(i, "a4").unwrap();
    assert_tables(&lab, Backend::Vxlan);
    assert_full_matrix(&lab, "with worker3");

    let t0 = std::time::Instant::now();
    lab.remove_node(i).unwrap();
    let gone = |n: &weft_integration::lab::LabNode| {
        let routes = n.ns.ip(&["route", "show"]).unwrap();
        let neigh = n.ns.ip(&["neigh", "show", "dev", "flannel.1"]).unwrap();
        let fdb =
            n.ns.exec(&["bridge", "fdb", "show", "dev", "flannel.1"])
                .unwrap();
        !routes.contains("10.244.3.0/24")
            && !neigh.contains("10.244.3.0")
            && !fdb.contains("172.18.0.5")
    };
    while !lab.nodes.iter().all(gone) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "worker3's route, neighbour or FDB entry is still there"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "worker3 removed: its route, neighbour and FDB entry gone everywhere {:.0} ms after the Node was deleted (weftd stopped meanwhile)",
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert_tables(&lab, Backend::Vxlan);
    assert_full_matrix(&lab, "after worker3 left");
}

/// Waits until `ok` holds on `ns` (up to 5 s); the time it took.
fn repaired(what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = std::time::Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{what} was not repaired within 5 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    t0.elapsed()
}

/// `weft status` (the CLI, in the node's namespace, talking to weftd over
/// its agent socket and reading the kernel itself): agrees with the kernel;
/// with repairs paused, a neighbour deleted and an FDB entry pointed
/// elsewhere are named as drift with their peer; resumed, both are put
/// back and the status is clean again.
#[test]
fn weft_status_agrees_with_the_kernel_and_names_drift() {
    require_netns!();
    let lab = seed_lab(&[], Backend::Vxlan, NatMode::IptablesNft, "s");
    let node = &lab.nodes[2];
    let weft = env!("CARGO_BIN_EXE_weft");
    let status = || -> (i32, Value) {
        let out = node.ns.exec_status(&[weft, "status", "--json"]).unwrap();
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "weft status --json: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), json)
    };
    let findings = |j: &Value| -> Vec<Value> {
        j["kernel"][0]["findings"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let (code, j) = status();
    assert_eq!(code, 0, "{j:#}");
    assert_eq!(j["drift"], false);
    assert_eq!(j["status"]["node"], "worker2");
    assert_eq!(j["status"]["families"][0]["nat_mode"], "iptables-nft");
    assert_eq!(
        j["status"]["families"][0]["peers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let all = findings(&j);
    assert_eq!(all.len(), 6, "2 peers × route, neighbour, FDB entry: {j:#}");
    assert!(all.iter().all(|f| f["state"] == "ok"), "{j:#}");
    let text = node.ns.exec(&[weft, "status"]).unwrap();
    println!("{text}");
    assert!(text.contains("drift: none (6 objects as wanted)"), "{text}");
    assert!(text.contains("NAT: iptables-nft"), "{text}");

    // Repairs paused: the drift stays, and is named.
    node.ns.exec(&[weft, "debug", "pause"]).unwrap();
    let peer = &lab.nodes[0];
    let gw = peer.spec.subnet.network().to_string();
    let mac = j["status"]["families"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == "control-plane")
        .and_then(|p| p["vtep_mac"].as_str())
        .unwrap()
        .to_string();
    // weft trace from this node's pod to the peer's names the broken hop.
    let (src, dst) = (node.pods[0].ip, peer.pods[0].ip);
    let fault_of = |j: &Value| -> (String, String) {
        let hops = j["hops"].as_array().unwrap();
        let last = hops.last().unwrap();
        assert_eq!(j["end"]["end"], "dropped", "{j:#}");
        (
            last["step"].as_str().unwrap().to_string(),
            last["fault"].as_str().unwrap().to_string(),
        )
    };
    node.ns
        .exec(&["bridge", "fdb", "del", &mac, "dev", "flannel.1", "self"])
        .unwrap();
    let (step, fault) = fault_of(&trace_json(&lab, src, dst, 2));
    assert_eq!(step, "fdb");
    assert_eq!(
        fault,
        format!("no FDB entry for {mac} on flannel.1: the packet is dropped here")
    );
    let text = lab.trace(src, dst, &[]).unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    println!("{text}");
    assert!(
        text.contains("=> FAULT at hop 5 on worker2: no FDB entry"),
        "{text}"
    );
    node.ns
        .exec(&[
            "bridge",
            "fdb",
            "replace",
            &mac,
            "dev",
            "flannel.1",
            "dst",
            "172.18.0.99",
            "self",
            "permanent",
        ])
        .unwrap();
    let (step, fault) = fault_of(&trace_json(&lab, src, dst, 2));
    assert_eq!(step, "fdb");
    assert_eq!(
        fault,
        format!(
            "the FDB sends {mac} to 172.18.0.99, but control-plane is at {}: the packet goes to the wrong host",
            peer.spec.ip
        )
    );
    node.ns
        .ip(&["neigh", "del", &gw, "dev", "flannel.1"])
        .unwrap();
    let (step, fault) = fault_of(&trace_json(&lab, src, dst, 2));
    assert_eq!(step, "neighbour");
    assert_eq!(
        fault,
        format!("no PERMANENT neighbour for {gw} on flannel.1: the packet is dropped here")
    );
    let (code, j) = status();
    assert_eq!(code, 2, "drift exits 2: {j:#}");
    let bad: Vec<Value> = findings(&j)
        .into_iter()
        .filter(|f| f["state"] != "ok")
        .collect();
    assert_eq!(bad.len(), 2, "{j:#}");
    let neigh = bad.iter().find(|f| f["kind"] == "neighbour").unwrap();
    assert_eq!(neigh["state"], "missing");
    assert_eq!(neigh["node"], "control-plane");
    let fdb = bad.iter().find(|f| f["kind"] == "fdb").unwrap();
    assert_eq!(fdb["state"], "differs");
    assert_eq!(fdb["node"], "control-plane");
    assert!(
        fdb["kernel"].as_str().unwrap().contains("dst 172.18.0.99"),
        "{fdb}"
    );
    let text = node.ns.exec_status(&[weft, "status"]).unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    println!("{text}");
    assert!(text.contains("REPAIRS PAUSED"), "{text}");
    assert!(
        text.contains(&format!("neighbour {gw} on flannel.1 missing")),
        "{text}"
    );

    // Resumed: put back, clean again.
    node.ns.exec(&[weft, "debug", "resume"]).unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let (code, j) = status();
        if code == 0 {
            assert!(findings(&j).iter().all(|f| f["state"] == "ok"));
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "not repaired after resuming: {j:#}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let j = trace_json(&lab, src, dst, 0);
    assert_eq!(j["end"]["end"], "delivered", "{j:#}");
}

/// `/metrics` parses as Prometheus text and tells what weftd does: the
/// objects it holds, its reconciles, the NAT mode's applies; a route and a
/// NAT rule deleted by hand show up as drift repairs once put back.
#[test]
fn metrics_parse_and_count_what_weftd_repairs() {
    require_netns!();
    let lab = seed_lab(&[], Backend::Vxlan, NatMode::IptablesNft, "m");
    let ns = &lab.nodes[2].ns;
    let labels4 = [("family", "ipv4")];
    let before = scrape(ns, 8081).unwrap();
    let m = &before;
    assert_eq!(m.value("weft_ready", &[]), Some(1.0), "{}", m.text);
    assert_eq!(
        m.value("weft_build_info", &[("backend", "vxlan")]),
        Some(1.0),
        "{}",
        m.text
    );
    for kind in ["route", "neighbour", "fdb"] {
        assert_eq!(
            m.value(
                "weft_overlay_objects",
                &[("family", "ipv4"), ("kind", kind)]
            ),
            Some(2.0),
            "{kind}: two peers\n{}",
            m.text
        );
    }
    assert!(
        m.histogram_count("weft_overlay_reconcile_duration_seconds", &labels4) >= Some(1.0),
        "{}",
        m.text
    );
    assert!(
        m.value(
            "weft_overlay_reconciles_total",
            &[("family", "ipv4"), ("result", "ok")]
        ) >= Some(1.0)
    );
    let nat = [("family", "ipv4"), ("mode", "iptables-nft")];
    assert!(
        m.value("weft_nat_applies_total", &nat) >= Some(1.0),
        "{}",
        m.text
    );
    assert!(m.value("weft_nat_last_success_timestamp_seconds", &nat) > Some(1.7e9));
    assert_eq!(m.value("weft_nodes_skipped", &labels4), Some(0.0));
    let drift = |m: &weft_integration::weftd::Metrics, kind: &str| {
        m.value(
            "weft_overlay_drift_repairs_total",
            &[("family", "ipv4"), ("kind", kind)],
        )
        .unwrap_or(0.0)
    };

    // A route deleted by hand, put back: one drift repair of a route.
    let peer = lab.nodes[0].spec.subnet.to_string();
    ns.ip(&["route", "del", &peer]).unwrap();
    repaired("the route", || {
        ns.ip(&["route", "show", &peer])
            .unwrap_or_default()
            .contains("flannel.1")
    });
    std::thread::sleep(Duration::from_millis(50));
    let after = scrape(ns, 8081).unwrap();
    assert_eq!(
        drift(&after, "route") - drift(&before, "route"),
        1.0,
        "{}",
        after.text
    );
    assert_eq!(drift(&after, "fdb"), drift(&before, "fdb"));
    // The NAT rules flushed by hand, put back.
    ns.exec(&["iptables-nft", "-t", "nat", "-F", "FLANNEL-POSTRTG"])
        .unwrap();
    let nat_drift = |m: &weft_integration::weftd::Metrics| {
        m.value("weft_nat_drift_repairs_total", &nat).unwrap_or(0.0)
    };
    let t0 = std::time::Instant::now();
    loop {
        let now = scrape(ns, 8081).unwrap();
        if nat_drift(&now) > nat_drift(&after) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no NAT drift repair counted:\n{}",
            now.text
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// udp: flannel0, its address, its state and the network's route are put
/// back when someone breaks them (the forwarder re-attaches to a remade
/// device), a restart writes nothing, and a node added at run time is in
/// every forwarder's table.
#[test]
fn udp_repairs_itself_restarts_without_writes_and_follows_nodes() {
    require_netns!();
    let mut lab = seed_lab(&[], Backend::Udp, NatMode::IptablesNft, "u");
    let node = 2;
    let route = || {
        lab.nodes[node]
            .ns
            .ip(&["route", "show", "10.244.0.0/16"])
            .unwrap_or_default()
            .contains("dev flannel0 proto 119")
    };
    let ns = &lab.nodes[node].ns;
    ns.ip(&["route", "del", "10.244.0.0/16", "dev", "flannel0"])
        .unwrap();
    let t_route = repaired("the network route", route);
    let address = format!("{}/16", lab.nodes[node].spec.subnet.network());
    ns.ip(&["addr", "del", &address, "dev", "flannel0"])
        .unwrap();
    let t_addr = repaired("flannel0's address", || {
        ns.ip(&["-4", "addr", "show", "dev", "flannel0"])
            .unwrap_or_default()
            .contains(&address)
    });
    ns.ip(&["link", "set", "flannel0", "down"]).unwrap();
    let t_up = repaired("flannel0 up", || {
        ns.ip(&["link", "show", "flannel0"])
            .unwrap_or_default()
            .contains(",UP")
    });
    ns.ip(&["link", "del", "flannel0"]).unwrap();
    let t_dev = repaired("flannel0 and its route", || {
        route() && ns.ip(&["link", "show", "flannel0"]).is_ok()
    });
    eprintln!(
        "udp repaired: route {:.1} ms, address {:.1} ms, up {:.1} ms, device {:.1} ms",
        t_route.as_secs_f64() * 1e3,
        t_addr.as_secs_f64() * 1e3,
        t_up.as_secs_f64() * 1e3,
        t_dev.as_secs_f64() * 1e3
    );
    assert_tables(&lab, Backend::Udp);
    // The forwarder attached to the remade device: traffic flows again.
    let t0 = std::time::Instant::now();
    while !lab.ping_matrix().iter().flatten().all(|ok| *ok) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no traffic through the remade flannel0"
        );
    }

    // A restart: the persistent device, its address and route stay; weft
    // writes nothing (link events of the queues detaching and attaching
    // are the kernel's, not writes: only addresses and routes are watched).
    let witness =
        KernelWitness::start_with_args(&lab.nodes[node].ns, &["-4", "monitor", "address", "route"])
            .unwrap();
    lab.restart_agent(node).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let seen = witness.changes().unwrap();
    assert!(
        seen.is_empty(),
        "the kernel changed during the restart:\n{seen}"
    );
    assert_full_matrix(&lab, "udp after a restart");

    // A rolling restart with maxSurge (--take-over), of this node and of
    // node 0, under 10 ms pings from a pod on node 0 to one here: each old
    // forwarder drains into its successor, not one ping is lost, and
    // neither node's addresses or routes are written.
    let witnesses: Vec<KernelWitness> = [0, node]
        .iter()
        .map(|&i| {
            KernelWitness::start_with_args(&lab.nodes[i].ns, &["-4", "monitor", "address", "route"])
                .unwrap()
        })
        .collect();
    let mut ping =
        Pinger::start(&lab.nodes[0].pods[0].ns, lab.nodes[node].pods[0].ip, 400).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let took_here = lab.restart_agent_handing_over(node).unwrap();
    let took_0 = lab.restart_agent_handing_over(0).unwrap();
    assert!(
        ping.running(),
        "the ping ended before the hand-overs were done: the test proves nothing"
    );
    let summary = ping.finish().unwrap();
    eprintln!(
        "udp hand-over restarts ({:.0} ms, {:.0} ms) under 10 ms pings: {}",
        took_here.as_secs_f64() * 1e3,
        took_0.as_secs_f64() * 1e3,
        summary
            .text
            .lines()
            .find(|l| l.contains("transmitted"))
            .unwrap_or_default()
    );
    assert_eq!(
        summary.lost(),
        0,
        "pings lost across the hand-overs: {}",
        summary.text
    );
    for w in witnesses {
        let seen = w.changes().unwrap();
        assert!(
            seen.is_empty(),
            "the kernel changed during a hand-over:\n{seen}"
        );
    }
    assert_full_matrix(&lab, "udp after the hand-overs");

    // The data plane's counters in /metrics: what it carried (known peers'
    // packets by the kernel path where weftd could attach it, as root in
    // the lab; else all by the forwarder), and a datagram from the outside
    // host (no peer) dropped by the forwarder as from an unknown sender.
    let ns = &lab.nodes[node].ns;
    let m = scrape(ns, 8081).unwrap();
    let packets = |m: &weft_integration::weftd::Metrics, direction: &str| {
        [
            "weft_forwarder_packets_total",
            "weft_kernel_path_packets_total",
        ]
        .iter()
        .map(|name| {
            m.value(name, &[("family", "ipv4"), ("direction", direction)])
                .unwrap_or(0.0)
        })
        .sum::<f64>()
    };
    assert!(
        packets(&m, "tx") > 0.0 && packets(&m, "rx") > 0.0,
        "{}",
        m.text
    );
    let unknown = |m: &weft_integration::weftd::Metrics| {
        m.value(
            "weft_forwarder_drops_total",
            &[("family", "ipv4"), ("reason", "unknown_sender")],
        )
    };
    let before = unknown(&m).expect("every drop reason is exported");
    let node_ip = lab.nodes[node].spec.ip.to_string();
    lab.outside
        .exec(&[
            "bash",
            "-c",
            &format!("printf 'not from a peer' > /dev/udp/{node_ip}/8285"),
        ])
        .unwrap();
    let t0 = std::time::Instant::now();
    while unknown(&scrape(ns, 8081).unwrap()) <= Some(before) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the datagram from the outside host was not counted as dropped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // weft status names the data path: the kernel path, whose received
    // super-packets stay in the kernel (by the receive engine on kernels
    // up to 6.18), as weftd runs as root in the lab.
    let weft = env!("CARGO_BIN_EXE_weft");
    let text = ns.exec(&[weft, "status"]).unwrap();
    assert!(text.contains("data path: kernel path: tc eBPF"), "{text}");
    assert!(
        text.contains("super-packets unframed by weft-udp-rx")
            || text.contains("super-packets unframed in tc"),
        "{text}"
    );

    // A node joining: every forwarder learns its subnet.
    let worker3 = NodeSpec {
        name: "worker3".into(),
        ip: "172.18.0.5".parse().unwrap(),
        subnet: "10.244.3.0/24".parse().unwrap(),
    };
    let i = lab.add_node(&worker3).unwrap();
    lab.wait_for_overlay(Duration::from_secs(20)).unwrap();
    lab.add_pod(i, "u4").unwrap();
    assert_tables(&lab, Backend::Udp);
    assert_full_matrix(&lab, "udp with worker3");
    lab.remove_node(i).unwrap();
    assert_full_matrix(&lab, "udp after worker3 left");
}
