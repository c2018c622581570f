//! Faults, with the real weftd in the lab's namespaces (the seed's three
//! nodes and weft's embedded API server, whose faults the tests switch on).
//! Each test prints the times it measured.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use ipnet::Ipv4Net;
use serde_json::Value;
use weft_integration::kube_api::ApiOptions;
use weft_integration::pinger::Pinger;
use weft_integration::topology::CLUSTER;
use weft_integration::weftd::scrape;
use weft_integration::weftd::{health_status, net_conf, Weftd};
use weft_integration::witness::KernelWitness;
use weft_netns::{require_netns, Netns};

/// Takes the agent of `node` out of the lab.
fn take_agent(lab: &mut Lab, node: &str) -> Weftd {
    let idx = lab.agents.iter().position(|a| a.node == node).unwrap();
    lab.agents.remove(idx)
}

/// A fake peer that exists only in the API.
fn add_fake_peer(lab: &Lab, name: &str, subnet: &str, ip: &str, mac: &str) {
    let ann = fake_peer_annotations(ip, mac);
    let refs: Vec<(&str, &str)> = ann.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    lab.api
        .create_node(name, subnet, ip.parse().unwrap(), &refs);
}

fn embedded(lab: &Lab) -> &weft_integration::node_api::NodeApi {
    match &lab.api {
        Api::Embedded(api, _) => api,
        Api::Real(_) => panic!("this test needs the embedded API server"),
    }
}

/// Waits for `/readyz` 200 from the agent in `ns` (the lab's health port;
/// its subnet file may be left from before, so it cannot tell).
fn wait_readyz(ns: &Netns, timeout: Duration) -> Duration {
    wait_until("/readyz 200", timeout, || {
        health_status(ns, 8471, "/readyz") == "200"
    })
}

fn fdb(ns: &Netns) -> String {
    ns.exec(&["bridge", "fdb", "show", "dev", "flannel.1"])
        .unwrap()
}

/// A second weftd on a node where one runs exits at once with an error that
/// names the first, and changes nothing: not the kernel, not the files.
#[test]
fn a_second_weftd_on_the_same_node_refuses_and_changes_nothing() {
    require_netns!();
    let lab = lab(false).unwrap();
    check_converged_cluster(&lab);
    let first = lab.agents.iter().find(|a| a.node == "worker").unwrap();
    let first_pid = first.pid().unwrap();
    let ns = &lab.cluster.node("worker").unwrap().ns;
    let witness = KernelWitness::start(ns).unwrap();
    let dir = lab.dir.path().join("worker-second");
    embedded(&lab).clear_requests();
    let t0 = Instant::now();
    let mut second = Weftd::start(
        Path::new(env!("CARGO_BIN_EXE_weftd")),
        ns,
        "worker",
        &lab.api.kubeconfig(),
        &net_conf(CLUSTER, r#"{"Type":"vxlan"}"#, false),
        &dir,
        &["--healthz-port=8473"],
    )
    .unwrap();
    let status = second
        .wait_exit(Duration::from_secs(10))
        .unwrap()
        .expect("the second weftd keeps running");
    eprintln!(
        "second weftd refused in {:.0} ms: {status}",
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert!(!status.success());
    let log = second.log();
    assert!(
        log.contains(&format!(
            "another weftd (pid {first_pid}) already runs in this network namespace"
        )),
        "{log}"
    );
    assert!(second.subnet_env().is_none(), "it wrote a subnet file");
    let seen = witness.changes().unwrap();
    assert!(seen.is_empty(), "the kernel changed:\n{seen}");
    let requests = embedded(&lab).requests();
    assert!(requests.is_empty(), "API requests meanwhile: {requests:?}");
    check_converged_cluster(&lab);
}

/// The underlay goes away (the kernel deletes `flannel.1` with it) and
/// comes back: weftd makes `flannel.1` again on the new interface, with the
/// MAC the peers know, and reprograms every peer.
#[test]
fn the_underlay_deleted_and_recreated_gets_flannel1_and_its_peers_back() {
    require_netns!();
    let lab = lab(false).unwrap();
    check_converged_cluster(&lab);
    let node = lab.cluster.node("worker").unwrap();
    let mac = json(&node.ns, &["link", "show", "flannel.1"])[0]["address"].clone();
    let eth0_mac = json(&node.ns, &["link", "show", "eth0"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    node.ns.ip(&["link", "del", "eth0"]).unwrap();
    wait_until("flannel.1 gone with eth0", Duration::from_secs(5), || {
        json(&node.ns, &["link", "show"])
            .iter()
            .all(|l| l["ifname"] != "flannel.1")
    });
    // Long enough for the retry backoff to have grown past seconds: the
    // return must be noticed by its own event.
    std::thread::sleep(Duration::from_secs(7));
    let agent = lab.agents.iter().find(|a| a.node == "worker").unwrap();
    assert!(agent.log().contains("overlay reconcile"), "{}", agent.log());
    lab.cluster
        .switch
        .attach(&node.ns, "eth0", &format!("{}/16", node.spec.ip))
        .unwrap();
    let back = Instant::now();
    // The same NIC comes back with its MAC (the other nodes' ARP caches
    // still hold it).
    node.ns
        .ip(&["link", "set", "eth0", "address", &eth0_mac])
        .unwrap();
    wait_until(
        "flannel.1 and both peers back",
        Duration::from_secs(10),
        || {
            overlay_routes(&node.ns).len() == 2
                && json(
                    &node.ns,
                    &["neigh", "show", "dev", "flannel.1", "nud", "permanent"],
                )
                .len()
                    == 2
                && fdb(&node.ns).matches("self permanent").count() == 2
        },
    );
    let took = back.elapsed();
    eprintln!(
        "underlay back -> flannel.1 and its peers programmed in {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    let link = &json(&node.ns, &["-d", "link", "show", "flannel.1"])[0];
    assert_eq!(link["address"], mac, "flannel.1 keeps the MAC peers know");
    assert_eq!(link["linkinfo"]["info_data"]["link"], "eth0");
    assert!(took < Duration::from_secs(1), "{took:?}");
    check_converged_cluster(&lab);
}

/// Nodes deleted while weftd was stopped: their route, neighbour and FDB
/// entry are gone when it is ready again.
#[test]
fn nodes_deleted_while_weftd_is_down_are_removed_at_start() {
    require_netns!();
    let mut lab = lab(false).unwrap();
    add_fake_peer(
        &lab,
        "leaver",
        "10.244.40.0/24",
        "172.18.0.40",
        "02:00:00:00:00:40",
    );
    wait_until("leaver programmed", Duration::from_secs(10), || {
        has_peer_everywhere(&lab, "10.244.40.0/24")
    });
    let stopped = take_agent(&mut lab, "worker2");
    stopped.stop().unwrap();
    lab.api.delete_node("leaver");
    wait_until(
        "leaver gone on the running nodes",
        Duration::from_secs(10),
        || {
            ["control-plane", "worker"].iter().all(|n| {
                !overlay_routes(&lab.cluster.node(n).unwrap().ns)
                    .iter()
                    .any(|r| r.starts_with("10.244.40.0/24"))
            })
        },
    );
    let ns = &lab.cluster.node("worker2").unwrap().ns;
    assert!(
        overlay_routes(ns)
            .iter()
            .any(|r| r.starts_with("10.244.40.0/24")),
        "still there while weftd is down"
    );
    let spec = lab.cluster.node("worker2").unwrap().spec.clone();
    let again = start_weftd(&lab, &spec);
    let t = wait_readyz(ns, Duration::from_secs(30));
    eprintln!("weftd ready again after {:.0} ms", t.as_secs_f64() * 1e3);
    assert!(!overlay_routes(ns)
        .iter()
        .any(|r| r.starts_with("10.244.40.0/24")));
    assert!(!json(ns, &["neigh", "show", "dev", "flannel.1"])
        .iter()
        .any(|n| n["dst"] == "10.244.40.0"));
    assert!(!fdb(ns).contains("02:00:00:00:00:40"));
    lab.agents.push(again);
    check_converged_cluster(&lab);
}

/// A peer's public IP changes: its FDB entry is rewritten in place (no
/// delete, one entry for its MAC), and nothing else changes.
#[test]
fn a_peer_public_ip_change_replaces_its_fdb_entry_in_place() {
    require_netns!();
    let lab = lab(false).unwrap();
    add_fake_peer(
        &lab,
        "mover",
        "10.244.41.0/24",
        "172.18.0.41",
        "02:00:00:00:00:41",
    );
    wait_until("mover programmed", Duration::from_secs(10), || {
        has_peer_everywhere(&lab, "10.244.41.0/24")
    });
    let ns = &lab.cluster.node("worker").unwrap().ns;
    let mut fdb_monitor = ns
        .command(&["bridge", "monitor", "fdb"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let witness = KernelWitness::start(ns).unwrap();
    let key = format!("{PREFIX}/public-ip");
    let t0 = Instant::now();
    embedded(&lab)
        .update_node("mover", |n| {
            n["metadata"]["annotations"][key.as_str()] = Value::from("172.18.0.42");
        })
        .unwrap();
    wait_until("the FDB entry moved", Duration::from_secs(10), || {
        fdb(ns).contains("02:00:00:00:00:41 dst 172.18.0.42 self permanent")
    });
    eprintln!(
        "public IP changed -> FDB entry rewritten in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    std::thread::sleep(Duration::from_millis(300));
    let _ = fdb_monitor.kill();
    let fdb_events =
        String::from_utf8_lossy(&fdb_monitor.wait_with_output().unwrap().stdout).to_string();
    let seen = witness.changes().unwrap();
    assert_eq!(
        fdb(ns).matches("02:00:00:00:00:41").count(),
        1,
        "{}",
        fdb(ns)
    );
    assert!(
        !fdb_events.lines().any(|l| l.starts_with("Deleted")),
        "the entry was deleted, not replaced:\n{fdb_events}"
    );
    assert!(
        fdb_events.contains("02:00:00:00:00:41 dev flannel.1 dst 172.18.0.42"),
        "{fdb_events}"
    );
    assert!(seen.is_empty(), "routes or neighbours changed too:\n{seen}");
}

/// Creates a node once the API is back; how long until every agent has it.
fn node_created_after_the_restart(lab: &Lab, timeout: Duration) -> Duration {
    add_fake_peer(
        lab,
        "after",
        "10.244.42.0/24",
        "172.18.0.43",
        "02:00:00:00:00:43",
    );
    wait_until("a node created after the restart", timeout, || {
        has_peer_everywhere(lab, "10.244.42.0/24")
    })
}

/// The API server restarts with its state kept (etcd survives): every
/// watch is cut and requests fail for a while. The agents resume their
/// watches from where they were — no list — while pods keep pinging.
#[test]
fn the_api_server_restarting_resumes_the_watches_without_a_relist() {
    require_netns!();
    let lab = lab(false).unwrap();
    check_converged_cluster(&lab);
    let api = embedded(&lab);
    let from = &lab.cluster.node("control-plane").unwrap().pod;
    let to = lab.cluster.node("worker2").unwrap().spec.pod_ip();
    let pinger = Pinger::start(from, to, 800).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    api.clear_requests();
    api.set_unavailable(true);
    std::thread::sleep(Duration::from_secs(3));
    api.set_unavailable(false);
    let back = Instant::now();
    let t = node_created_after_the_restart(&lab, Duration::from_secs(15));
    eprintln!(
        "API back -> a new node programmed everywhere in {:.0} ms",
        back.elapsed().as_secs_f64() * 1e3
    );
    let _ = t;
    let requests = api.requests();
    let lists: Vec<String> = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path() == "/api/v1/nodes" && !r.is_watch())
        .map(|r| r.uri.clone())
        .collect();
    let watches = requests
        .iter()
        .filter(|r| r.path() == "/api/v1/nodes" && r.is_watch())
        .count();
    eprintln!(
        "requests for Nodes after the restart: {} lists, {watches} watches",
        lists.len()
    );
    assert!(lists.is_empty(), "the agents listed again: {lists:?}");
    assert!(watches >= lab.agents.len());
    let summary = pinger.finish().unwrap();
    eprintln!("pings: {} sent, {} lost", summary.sent, summary.lost());
    assert_eq!(summary.lost(), 0, "{}", summary.text);
}

/// The `i`-th of the many fake peers: a /30 in 10.244.128.0/17.
fn many_subnet(i: u32) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::from(0x0af4_8000 + (i << 2)), 30).unwrap()
}

/// Every entry `weftd` programs on `flannel.1`, keyed as the kernel keys
/// them, failing on any key seen twice.
fn flannel1_entries(ns: &Netns) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    fn unique(items: Vec<String>, what: &str) -> BTreeSet<String> {
        let n = items.len();
        let set: BTreeSet<String> = items.into_iter().collect();
        assert_eq!(set.len(), n, "{what} twice");
        set
    }
    let routes = json(ns, &["route", "show", "dev", "flannel.1"])
        .iter()
        .filter(|r| r["protocol"] != "kernel")
        .map(|r| {
            format!(
                "{} via {}",
                r["dst"].as_str().unwrap(),
                r["gateway"].as_str().unwrap_or("")
            )
        })
        .collect();
    let neigh = json(
        ns,
        &["neigh", "show", "dev", "flannel.1", "nud", "permanent"],
    )
    .iter()
    .map(|n| {
        format!(
            "{} {}",
            n["dst"].as_str().unwrap(),
            n["lladdr"].as_str().unwrap_or("")
        )
    })
    .collect();
    let fdb_entries = fdb(ns)
        .lines()
        .filter(|l| l.contains(" dst "))
        .map(str::to_string)
        .collect();
    (
        unique(routes, "a route"),
        unique(neigh, "a neighbour"),
        unique(fdb_entries, "an FDB entry"),
    )
}

/// weftd is SIGKILLed while it programs 5,000 peers, then started again:
/// the node ends with exactly the desired state — every peer once, nothing
/// twice — and what is not weft's (a route, a neighbour) untouched.
#[test]
fn sigkill_while_programming_5000_peers_then_restart_gives_exactly_the_desired_state() {
    require_netns!();
    const PEERS: u32 = 5000;
    let mut lab = lab(false).unwrap();
    check_converged_cluster(&lab);
    take_agent(&mut lab, "worker2").stop().unwrap();
    let ns = &lab.cluster.node("worker2").unwrap().ns;
    // A fresh node: no flannel.1, and things that are not weft's.
    ns.ip(&["link", "del", "flannel.1"]).unwrap();
    ns.ip(&[
        "route",
        "add",
        "192.0.2.0/24",
        "via",
        "172.18.0.1",
        "proto",
        "static",
    ])
    .unwrap();
    ns.ip(&[
        "neigh",
        "add",
        "172.18.0.200",
        "lladdr",
        "02:00:00:00:02:00",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])
    .unwrap();
    let foreign = (
        ns.ip(&["route", "show", "192.0.2.0/24"]).unwrap(),
        ns.ip(&["neigh", "show", "172.18.0.200"]).unwrap(),
    );
    let api = embedded(&lab);
    let t0 = Instant::now();
    for i in 0..PEERS {
        let ip = Ipv4Addr::from(0xac13_0000 + i + 1).to_string();
        let mac = format!("02:01:00:00:{:02x}:{:02x}", i >> 8, i & 0xff);
        let ann = fake_peer_annotations(&ip, &mac);
        let subnet = many_subnet(i).to_string();
        api.create_node(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": format!("many-{i}"), "annotations": ann.into_iter().map(|(k, v)| (k, Value::from(v))).collect::<serde_json::Map<String, Value>>()},
            "spec": {"podCIDR": subnet, "podCIDRs": [subnet]},
        }))
        .unwrap();
    }
    eprintln!(
        "{PEERS} Nodes created in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let spec = lab.cluster.node("worker2").unwrap().spec.clone();
    let started = Instant::now();
    let victim = start_weftd(&lab, &spec);
    // Kill it once flannel.1 exists and some, not all, peers are in.
    let mut count = 0;
    while started.elapsed() < Duration::from_secs(60) {
        let out = ns
            .exec(&["ip", "-o", "route", "show", "dev", "flannel.1"])
            .unwrap_or_default();
        count = out.lines().count();
        if count > 50 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    victim.kill().unwrap();
    let at_kill = ns
        .exec(&["ip", "-o", "route", "show", "dev", "flannel.1"])
        .unwrap_or_default()
        .lines()
        .count();
    eprintln!(
        "SIGKILL {:.0} ms after start, with {at_kill} of {} routes in (saw {count})",
        started.elapsed().as_secs_f64() * 1e3,
        PEERS + 2
    );
    let restarted = Instant::now();
    let again = start_weftd(&lab, &spec);
    let t = wait_readyz(ns, Duration::from_secs(120));
    eprintln!(
        "restarted weftd ready after {:.0} ms",
        t.as_secs_f64() * 1e3
    );
    wait_until("every peer programmed", Duration::from_secs(30), || {
        json(ns, &["route", "show", "dev", "flannel.1"]).len() >= (PEERS + 2) as usize
    });
    eprintln!(
        "exactly the desired state {:.0} ms after the restart",
        restarted.elapsed().as_secs_f64() * 1e3
    );
    let (routes, neighbours, fdb_entries) = flannel1_entries(ns);
    let mut want_routes: BTreeSet<String> = (0..PEERS)
        .map(|i| {
            let s = many_subnet(i);
            format!("{s} via {}", s.network())
        })
        .collect();
    for o in ["control-plane", "worker"] {
        let s = lab.cluster.node(o).unwrap().spec.subnet;
        want_routes.insert(format!("{s} via {}", s.network()));
    }
    assert_eq!(routes, want_routes);
    assert_eq!(neighbours.len(), (PEERS + 2) as usize);
    assert_eq!(fdb_entries.len(), (PEERS + 2) as usize);
    for i in [0, PEERS / 2, PEERS - 1] {
        let ip = Ipv4Addr::from(0xac13_0000 + i + 1);
        let mac = format!("02:01:00:00:{:02x}:{:02x}", i >> 8, i & 0xff);
        assert!(neighbours.contains(&format!("{} {mac}", many_subnet(i).network())));
        assert!(fdb_entries
            .iter()
            .any(|f| f.starts_with(&format!("{mac} dst {ip} self permanent"))));
    }
    assert_eq!(
        foreign,
        (
            ns.ip(&["route", "show", "192.0.2.0/24"]).unwrap(),
            ns.ip(&["neigh", "show", "172.18.0.200"]).unwrap(),
        ),
        "what is not weft's was touched"
    );
    lab.agents.push(again);
}

/// The same with the real kube-apiserver: it is stopped (SIGTERM) and
/// started again on the same etcd. Its watch cache starts anew, so a watch
/// from before is answered `410 Gone` and every client must list once (as
/// client-go's do). The audit log shows what the agents asked: one list
/// each, at once (no backoff on a 410), then their watches — no repeated
/// lists; pods ping throughout.
#[test]
fn the_real_api_server_restarting_on_the_same_etcd_costs_one_list_per_agent() {
    require_netns!();
    let policy = tempfile::tempdir().unwrap();
    let options = ApiOptions::default().audited(policy.path()).unwrap();
    let Some(lab) = lab_with(Some(options)) else {
        return;
    };
    check_converged_cluster(&lab);
    let Api::Real(real) = &lab.api else {
        unreachable!()
    };
    let from = &lab.cluster.node("control-plane").unwrap().pod;
    let to = lab.cluster.node("worker2").unwrap().spec.pod_ip();
    let pinger = Pinger::start(from, to, 2500).unwrap();
    let before = real.agent_requests().unwrap();
    let worker_ns = &lab.cluster.node("worker").unwrap().ns;
    let watch_errors = |m: &weft_integration::weftd::Metrics| {
        m.value("weft_api_errors_total", &[("operation", "watch")])
            .unwrap_or(0.0)
    };
    let metrics_before = scrape(worker_ns, 8471).unwrap();
    let t0 = Instant::now();
    real.restart_apiserver(&lab.cluster.switch, Duration::from_secs(2))
        .unwrap();
    eprintln!(
        "kube-apiserver stopped and answering again after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let t = node_created_after_the_restart(&lab, Duration::from_secs(30));
    // Within the agents' capped backoff (5 s) of the API's return.
    assert!(t < Duration::from_secs(7), "{t:?}");
    eprintln!(
        "a node created after the restart programmed everywhere in {:.0} ms",
        t.as_secs_f64() * 1e3
    );
    let after = real.agent_requests().unwrap();
    for a in &lab.agents {
        let log = a.log();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        eprintln!(
            "--- {} ---\n{}",
            a.node,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    // The outage is in weftd's metrics: failed watch requests; the watch
    // resumed (at most one list, as the audit log says below).
    let metrics_after = scrape(worker_ns, 8471).unwrap();
    assert!(
        watch_errors(&metrics_after) > watch_errors(&metrics_before),
        "{}",
        metrics_after.text
    );
    let restarts = |m: &weft_integration::weftd::Metrics| {
        m.value("weft_api_watch_restarts_total", &[]).unwrap_or(0.0)
    };
    assert!(restarts(&metrics_after) - restarts(&metrics_before) <= 1.0);
    let delta = |k: &str| after.get(k).unwrap_or(&0) - before.get(k).unwrap_or(&0);
    eprintln!(
        "the agents' requests since the restart: list nodes ×{}, watch nodes ×{}",
        delta("list nodes"),
        delta("watch nodes")
    );
    assert!(
        delta("list nodes") <= lab.agents.len(),
        "more than one list per agent: {after:?}"
    );
    assert!(delta("watch nodes") >= lab.agents.len(), "{after:?}");
    let summary = pinger.finish().unwrap();
    eprintln!("pings: {} sent, {} lost", summary.sent, summary.lost());
    assert_eq!(summary.lost(), 0, "{}", summary.text);
}
