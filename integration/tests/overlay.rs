//! The overlay in network namespaces (root): three nodes as the seed draws
//! them, programmed by weft's reconciler, checked through `ip -j` and
//! `bridge -j`, and by pinging pods across nodes.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::future::Future;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_integration::topology::CLUSTER;
use weft_integration::witness::KernelWitness;
use weft_integration::{seed_nodes, Cluster, Node, NodeSpec, OverlayAgent};
use weft_netns::{require_netns, Netns};
use weft_overlay::reconciler::{Input, Options};
use weft_overlay::{BackendConfig, Lease, LocalNode, MacAddr, OverlayConfig, VxlanConfig};

/// The seed's VTEP MACs: control-plane's and worker's are the ones it prints.
fn mac_of(name: &str) -> MacAddr {
    match name {
        "control-plane" => "5a:11:99:ab:8c:22",
        "worker" => "ce:0a:4f:22:a4:2a",
        _ => "0a:58:0a:f4:02:00",
    }
    .parse()
    .unwrap()
}

fn vxlan(direct_routing: bool) -> OverlayConfig {
    OverlayConfig {
        network: CLUSTER.parse().unwrap(),
        backend: BackendConfig::from(VxlanConfig {
            direct_routing,
            ..VxlanConfig::default()
        }),
    }
}

fn lease(spec: &NodeSpec, config: &OverlayConfig) -> Lease {
    Lease {
        node: spec.name.clone(),
        subnet: spec.subnet.into(),
        public_ip: spec.ip.into(),
        backend_type: config.backend.kind().into(),
        backend_data: format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, mac_of(&spec.name)),
    }
}

fn input(me: &NodeSpec, specs: &[NodeSpec], config: &OverlayConfig) -> Input {
    Input {
        config: config.clone(),
        local: LocalNode {
            name: me.name.clone(),
            subnet: me.subnet.into(),
            public_ip: me.ip.into(),
            underlay: "eth0".into(),
            vtep_mac: Some(mac_of(&me.name)),
        },
        leases: specs.iter().map(|s| lease(s, config)).collect(),
    }
}

fn start(node: &Node, specs: &[NodeSpec], config: &OverlayConfig) -> OverlayAgent {
    let agent = OverlayAgent::start(
        &node.ns,
        input(&node.spec, specs, config),
        Options::default(),
    )
    .unwrap();
    let first = block(agent.handle.wait_applied(1)).unwrap();
    assert!(first.errors.is_empty(), "{first:?}");
    agent
}

/// An agent on every node of `cluster`, each past its first clean reconcile.
fn start_all(cluster: &Cluster, specs: &[NodeSpec], config: &OverlayConfig) -> Vec<OverlayAgent> {
    cluster
        .nodes
        .iter()
        .map(|n| start(n, specs, config))
        .collect()
}

/// Runs a future to completion on a throwaway runtime, failing after 20 s.
fn block<T>(fut: impl Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), fut)
            .await
            .expect("timed out")
    })
}

/// Polls until `ok` holds; the time it took, or a panic after 5 s.
fn wait_until(what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{what}: not back after 5 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    t0.elapsed()
}

fn json(ns: &Netns, args: &[&str]) -> Vec<Value> {
    match ns.ip_json(args).unwrap() {
        Value::Array(v) => v,
        other => panic!("not an array: {other}"),
    }
}

fn bridge_fdb(ns: &Netns) -> Vec<Value> {
    let out = ns
        .exec(&["bridge", "-j", "fdb", "show", "dev", "flannel.1"])
        .unwrap();
    let v: Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).unwrap();
    v.as_array().cloned().unwrap_or_default()
}

fn routes_in_cluster(ns: &Netns) -> Vec<Value> {
    json(ns, &["route", "show", "root", CLUSTER])
        .into_iter()
        .filter(|r| r["protocol"] != "kernel")
        .collect()
}

fn permanent_neighbours(ns: &Netns) -> Vec<Value> {
    json(
        ns,
        &["neigh", "show", "dev", "flannel.1", "nud", "permanent"],
    )
}

fn self_fdb(ns: &Netns) -> Vec<Value> {
    bridge_fdb(ns)
        .into_iter()
        .filter(|f| {
            f["flags"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "self"))
        })
        .collect()
}

fn has_flag(v: &Value, flag: &str) -> bool {
    v["flags"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == flag))
}

/// Asserts the seed's "routing table", "static ARP entries" and "VXLAN forwarding database" on worker2.
fn assert_seed_tables(worker2: &Netns) {
    let routes = routes_in_cluster(worker2);
    assert_eq!(routes.len(), 2, "{routes:#?}");
    for (r, n) in routes.iter().zip(["10.244.0.0", "10.244.1.0"]) {
        // 10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink (proto 119: weft's tag)
        assert_eq!(r["dst"], format!("{n}/24"));
        assert_eq!(r["gateway"], n);
        assert_eq!(r["dev"], "flannel.1");
        assert!(has_flag(r, "onlink"), "{r}");
        assert_eq!(r["protocol"], "119");
    }
    let neigh = permanent_neighbours(worker2);
    let mut got: Vec<(String, String)> = neigh
        .iter()
        .map(|n| {
            (
                n["dst"].as_str().unwrap().into(),
                n["lladdr"].as_str().unwrap().into(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("10.244.0.0".into(), "5a:11:99:ab:8c:22".into()),
            ("10.244.1.0".into(), "ce:0a:4f:22:a4:2a".into())
        ],
        "{neigh:#?}"
    );
    let mut fdb: Vec<(String, String, bool)> = self_fdb(worker2)
        .iter()
        .map(|f| {
            (
                f["mac"].as_str().unwrap().into(),
                f["dst"].as_str().unwrap().into(),
                f["state"] == "permanent",
            )
        })
        .collect();
    fdb.sort();
    assert_eq!(
        fdb,
        vec![
            ("5a:11:99:ab:8c:22".into(), "172.18.0.3".into(), true),
            ("ce:0a:4f:22:a4:2a".into(), "172.18.0.4".into(), true)
        ]
    );
}

fn ping(from: &Netns, to: Ipv4Addr) -> bool {
    from.exec_status(&["ping", "-c1", "-W2", "-q", &to.to_string()])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Every pod reaches every other pod, and every node every pod.
fn assert_full_connectivity(cluster: &Cluster) {
    let mut failures = Vec::new();
    for a in &cluster.nodes {
        for b in &cluster.nodes {
            if !ping(&a.pod, b.spec.pod_ip()) {
                failures.push(format!("pod {} -> pod {}", a.spec.name, b.spec.pod_ip()));
            }
            if !ping(&a.ns, b.spec.pod_ip()) {
                failures.push(format!("node {} -> pod {}", a.spec.name, b.spec.pod_ip()));
            }
        }
    }
    assert!(failures.is_empty(), "unreachable: {failures:?}");
}

fn tx_packets(ns: &Netns, dev: &str) -> u64 {
    let v = json(ns, &["-s", "link", "show", dev]);
    v[0]["stats64"]["tx"]["packets"].as_u64().unwrap()
}

#[test]
fn vxlan_converges_to_the_seed_tables_and_pods_reach_each_other() {
    require_netns!();
    let specs = seed_nodes();
    let cluster = Cluster::new(&specs).unwrap();
    let config = vxlan(false);
    let agents = start_all(&cluster, &specs, &config);
    for a in &agents {
        let r = a.handle.last_report();
        assert!(r.rejected.is_empty(), "{r:?}");
    }
    let worker2 = &cluster.node("worker2").unwrap().ns;
    assert_seed_tables(worker2);

    // flannel.1 as flannel makes it.
    let link = &json(worker2, &["-d", "link", "show", "flannel.1"])[0];
    assert_eq!(link["mtu"], 1450);
    assert_eq!(link["address"], "0a:58:0a:f4:02:00");
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(info["id"], 1);
    assert_eq!(info["local"], "172.18.0.2");
    assert_eq!(info["port"], 8472);
    assert_eq!(info["learning"], false);
    assert_eq!(info["link"], "eth0");
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    let addrs = &json(worker2, &["-4", "addr", "show", "dev", "flannel.1"])[0]["addr_info"];
    assert_eq!(addrs.as_array().unwrap().len(), 1);
    assert_eq!(
        (addrs[0]["local"].as_str(), addrs[0]["prefixlen"].as_u64()),
        (Some("10.244.2.0"), Some(32))
    );

    assert_full_connectivity(&cluster);
    for a in agents {
        a.stop().unwrap();
    }
}

#[test]
fn host_gw_routes_via_node_ips_and_pods_reach_each_other() {
    require_netns!();
    let specs = seed_nodes();
    let cluster = Cluster::new(&specs).unwrap();
    let config = OverlayConfig {
        network: CLUSTER.parse().unwrap(),
        backend: BackendConfig::from(weft_overlay::HostGw),
    };
    let agents = start_all(&cluster, &specs, &config);
    let worker2 = &cluster.node("worker2").unwrap().ns;
    let routes = routes_in_cluster(worker2);
    let got: Vec<(String, String, String)> = routes
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap().into(),
                r["gateway"].as_str().unwrap().into(),
                r["dev"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("10.244.0.0/24".into(), "172.18.0.3".into(), "eth0".into()),
            ("10.244.1.0/24".into(), "172.18.0.4".into(), "eth0".into())
        ]
    );
    assert!(
        json(worker2, &["link", "show"])
            .iter()
            .all(|l| l["ifname"] != "flannel.1"),
        "host-gw makes no device"
    );
    assert_full_connectivity(&cluster);
    drop(agents);
}

#[test]
fn direct_routing_bypasses_the_overlay_on_one_l2_network() {
    require_netns!();
    let specs = seed_nodes();
    let cluster = Cluster::new(&specs).unwrap();
    let config = vxlan(true);
    let agents = start_all(&cluster, &specs, &config);
    let worker2 = &cluster.node("worker2").unwrap().ns;
    let routes = routes_in_cluster(worker2);
    assert_eq!(routes.len(), 2);
    for r in &routes {
        assert_eq!(r["dev"], "eth0", "same-L2 peers get plain routes: {r}");
    }
    assert!(permanent_neighbours(worker2).is_empty() && self_fdb(worker2).is_empty());
    let before: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| tx_packets(&n.ns, "flannel.1"))
        .collect();
    assert_full_connectivity(&cluster);
    let after: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| tx_packets(&n.ns, "flannel.1"))
        .collect();
    assert_eq!(before, after, "flannel.1 carried no packet");
    drop(agents);
}

#[test]
fn deleted_objects_come_back_within_a_second() {
    require_netns!();
    let specs = seed_nodes();
    let cluster = Cluster::new(&specs).unwrap();
    let config = vxlan(false);
    let agents = start_all(&cluster, &specs, &config);
    let w2 = &cluster.node("worker2").unwrap().ns;
    let route_back = || {
        routes_in_cluster(w2)
            .iter()
            .any(|r| r["dst"] == "10.244.0.0/24" && r["dev"] == "flannel.1")
    };
    let neigh_back = || {
        permanent_neighbours(w2)
            .iter()
            .any(|n| n["dst"] == "10.244.0.0")
    };
    let fdb_back = || self_fdb(w2).iter().any(|f| f["mac"] == "5a:11:99:ab:8c:22");
    let all_back =
        || route_back() && neigh_back() && fdb_back() && routes_in_cluster(w2).len() == 2;

    let mut times = Vec::new();
    w2.ip(&["route", "del", "10.244.0.0/24"]).unwrap();
    times.push(("route", wait_until("route", route_back)));
    w2.ip(&["neigh", "del", "10.244.0.0", "dev", "flannel.1"])
        .unwrap();
    times.push(("neighbour", wait_until("neighbour", neigh_back)));
    w2.exec(&[
        "bridge",
        "fdb",
        "del",
        "5a:11:99:ab:8c:22",
        "dev",
        "flannel.1",
        "dst",
        "172.18.0.3",
        "self",
    ])
    .unwrap();
    times.push(("fdb entry", wait_until("fdb", fdb_back)));
    w2.ip(&["link", "set", "flannel.1", "down"]).unwrap();
    times.push((
        "device down",
        wait_until("device up with its routes", all_back),
    ));
    w2.ip(&["link", "del", "flannel.1"]).unwrap();
    times.push(("device", wait_until("device and all entries", all_back)));
    for (what, t) in &times {
        eprintln!(
            "self-repair: deleted {what} back in {:.1} ms",
            t.as_secs_f64() * 1e3
        );
        assert!(*t < Duration::from_secs(1), "{what} took {t:?}");
    }
    assert_seed_tables(w2);
    assert!(ping(
        &cluster.node("worker2").unwrap().pod,
        specs[0].pod_ip()
    ));
    drop(agents);
}

#[test]
fn reconciling_again_and_restarting_send_no_writes() {
    require_netns!();
    let specs = seed_nodes();
    let cluster = Cluster::new(&specs).unwrap();
    let node = cluster.node("worker2").unwrap();
    let config = vxlan(false);
    let agent = start(node, &specs, &config);
    assert_eq!(block(agent.handle.reconcile_now()).unwrap().writes, 0);
    let before = (
        node.ns.ip(&["route"]).unwrap(),
        node.ns.ip(&["-d", "link", "show", "flannel.1"]).unwrap(),
    );
    agent.stop().unwrap();

    // An independent witness: `ip monitor` prints every change the kernel makes.
    let witness = KernelWitness::start(&node.ns).unwrap();
    let again = OverlayAgent::start(
        &node.ns,
        input(&node.spec, &specs, &config),
        Options::default(),
    )
    .unwrap();
    let first = block(again.handle.wait_applied(1)).unwrap();
    let seen = witness.changes().unwrap();
    assert!(
        seen.is_empty(),
        "the kernel changed during the restart:\n{seen}"
    );
    assert!(first.resynced && first.errors.is_empty());
    assert_eq!(
        first.writes, 0,
        "a restart on a programmed node writes nothing: {}",
        first.plan
    );
    assert_eq!(
        again
            .handle
            .stats()
            .writes
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(block(again.handle.reconcile_now()).unwrap().writes, 0);
    let after = (
        node.ns.ip(&["route"]).unwrap(),
        node.ns.ip(&["-d", "link", "show", "flannel.1"]).unwrap(),
    );
    assert_eq!(before, after, "nothing was flushed or recreated");
    assert_seed_tables(&node.ns);
}

#[test]
fn removed_and_changed_peers_are_updated_in_place() {
    require_netns!();
    let specs = seed_nodes();
    let cluster = Cluster::new(&specs).unwrap();
    let node = cluster.node("worker2").unwrap();
    let config = vxlan(false);
    let agent = start(node, &specs, &config);
    let w2 = &node.ns;

    // Changed VTEP MAC and node IP of worker.
    let mut leases = input(&node.spec, &specs, &config).leases;
    leases[1].backend_data = r#"{"VNI":1,"VtepMAC":"02:12:34:56:78:9a"}"#.into();
    leases[1].public_ip = "172.18.0.44".parse().unwrap();
    let g = agent.handle.set_leases(leases.clone());
    let r = block(agent.handle.wait_applied(g)).unwrap();
    assert_eq!(
        r.writes, 3,
        "neighbour replaced, new FDB entry, old FDB entry deleted: {}",
        r.plan
    );
    let neigh = permanent_neighbours(w2);
    assert!(
        neigh
            .iter()
            .any(|n| n["dst"] == "10.244.1.0" && n["lladdr"] == "02:12:34:56:78:9a"),
        "{neigh:?}"
    );
    assert_eq!(neigh.len(), 2);
    let fdb = self_fdb(w2);
    assert!(
        fdb.iter()
            .any(|f| f["mac"] == "02:12:34:56:78:9a" && f["dst"] == "172.18.0.44"),
        "{fdb:?}"
    );
    assert!(
        !fdb.iter().any(|f| f["mac"] == "ce:0a:4f:22:a4:2a"),
        "old MAC gone: {fdb:?}"
    );

    // Changed node IP only: the FDB entry is rewritten in place.
    leases[1].public_ip = "172.18.0.45".parse().unwrap();
    let g = agent.handle.set_leases(leases.clone());
    let r = block(agent.handle.wait_applied(g)).unwrap();
    assert_eq!(r.writes, 1, "{}", r.plan);
    assert!(self_fdb(w2)
        .iter()
        .any(|f| f["mac"] == "02:12:34:56:78:9a" && f["dst"] == "172.18.0.45"));
    assert_eq!(self_fdb(w2).len(), 2);

    // control-plane leaves the cluster.
    leases.remove(0);
    let g = agent.handle.set_leases(leases);
    let r = block(agent.handle.wait_applied(g)).unwrap();
    assert_eq!(r.writes, 3, "{}", r.plan);
    assert!(!routes_in_cluster(w2)
        .iter()
        .any(|r| r["dst"] == "10.244.0.0/24"));
    assert!(!permanent_neighbours(w2)
        .iter()
        .any(|n| n["dst"] == "10.244.0.0"));
    assert!(!self_fdb(w2).iter().any(|f| f["mac"] == "5a:11:99:ab:8c:22"));
    assert_eq!(
        (
            routes_in_cluster(w2).len(),
            permanent_neighbours(w2).len(),
            self_fdb(w2).len()
        ),
        (1, 1, 1)
    );
}

#[test]
fn bad_leases_are_skipped_and_the_rest_is_programmed() {
    require_netns!();
    let specs = seed_nodes();
    let cluster = Cluster::new(&specs).unwrap();
    let node = cluster.node("worker2").unwrap();
    let config = vxlan(false);
    let mut inp = input(&node.spec, &specs, &config);
    let good = inp.leases[0].clone();
    inp.leases.push(Lease {
        node: "bad-mac".into(),
        subnet: "10.244.5.0/24".parse().unwrap(),
        backend_data: r#"{"VNI":1,"VtepMAC":"5a:11:99:zz:8c:22"}"#.into(),
        ..good.clone()
    });
    inp.leases.push(Lease {
        node: "outside".into(),
        subnet: "10.99.0.0/24".parse().unwrap(),
        backend_data: r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:06"}"#.into(),
        ..good.clone()
    });
    inp.leases.push(Lease {
        node: "same-as-own".into(),
        subnet: node.spec.subnet.into(),
        backend_data: r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:07"}"#.into(),
        ..good.clone()
    });
    inp.leases.push(Lease {
        node: "overlap".into(),
        subnet: "10.244.0.0/23".parse().unwrap(),
        backend_data: r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:08"}"#.into(),
        ..good
    });
    let agent = OverlayAgent::start(&node.ns, inp, Options::default()).unwrap();
    let r = block(agent.handle.wait_applied(1)).unwrap();
    let got: Vec<(String, &str)> = r
        .rejected
        .iter()
        .map(|e| (e.node.clone(), e.field))
        .collect();
    assert_eq!(
        got,
        vec![
            ("bad-mac".into(), "backend-data.VtepMAC"),
            ("outside".into(), "podCIDR"),
            ("same-as-own".into(), "podCIDR"),
            ("overlap".into(), "podCIDR")
        ]
    );
    assert!(r.errors.is_empty());
    assert_seed_tables(&node.ns);
}

#[test]
fn foreign_routes_survive_and_flannel_state_is_adopted() {
    require_netns!();
    let specs = seed_nodes();
    let cluster = Cluster::new(&specs).unwrap();
    let node = cluster.node("worker2").unwrap();
    let w2 = &node.ns;
    // What flannel leaves on a node: its device, an untagged onlink route, neighbour and FDB entry.
    for cmd in [
        "link add flannel.1 type vxlan id 1 local 172.18.0.2 dev eth0 dstport 8472 nolearning",
        "link set flannel.1 address 0a:58:0a:f4:02:00 mtu 1450 up",
        "addr add 10.244.2.0/32 dev flannel.1",
        "route add 10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink",
        "neigh add 10.244.0.0 dev flannel.1 lladdr 5a:11:99:ab:8c:22 nud permanent",
        // Someone else's routes: inside the cluster network on the underlay, and outside it.
        "route add 10.244.99.0/24 via 172.18.0.50 dev eth0 proto static",
        "route add 192.168.77.0/24 via 172.18.0.50 dev eth0",
    ] {
        w2.ip(&cmd.split(' ').collect::<Vec<_>>()).unwrap();
    }
    w2.exec(&[
        "bridge",
        "fdb",
        "add",
        "5a:11:99:ab:8c:22",
        "dev",
        "flannel.1",
        "dst",
        "172.18.0.3",
        "self",
        "permanent",
    ])
    .unwrap();
    let ifindex = w2.ifindex("flannel.1").unwrap();

    let agent = OverlayAgent::start(
        &node.ns,
        input(&node.spec, &specs, &vxlan(false)),
        Options::default(),
    )
    .unwrap();
    let r = block(agent.handle.wait_applied(1)).unwrap();
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(
        w2.ifindex("flannel.1").unwrap(),
        ifindex,
        "flannel's device is kept, not recreated"
    );
    let routes = routes_in_cluster(w2);
    assert_eq!(
        routes
            .iter()
            .filter(|r| r["dst"] == "10.244.0.0/24")
            .count(),
        1,
        "adopted, not duplicated: {routes:#?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "10.244.99.0/24" && r["protocol"] == "static"),
        "foreign route kept"
    );
    assert!(
        json(w2, &["route", "show", "192.168.77.0/24"]).len() == 1,
        "foreign route kept"
    );
    assert_eq!(permanent_neighbours(w2).len(), 2);
    assert_eq!(self_fdb(w2).len(), 2);
    // weft's own routes plus the foreign one.
    assert_eq!(routes.len(), 3);
    assert_eq!(block(agent.handle.reconcile_now()).unwrap().writes, 0);
}
