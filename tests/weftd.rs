//! The real `weftd` binary in three node namespaces, against the real
//! kube-apiserver from ../shared/kube (skipped where it is absent) and
//! against weft's embedded Node API server (always; also for faults).
//! Each agent runs with only flannel's ClusterRole (real server).

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use weft_integration::pinger::Pinger;
use weft_integration::topology::CLUSTER;
use weft_integration::weftd::{health_status, net_conf, Weftd};
use weft_integration::witness::KernelWitness;
use weft_netns::require_netns;

mod common;

use common::*;

fn runtime_changes(lab: &mut Lab) {
    // A node joins: every agent programs it; then it leaves.
    let ann = fake_peer_annotations("172.18.0.50", "02:00:00:00:00:50");
    let refs: Vec<(&str, &str)> = ann.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    lab.api.create_node(
        "joiner",
        "10.244.9.0/24",
        Ipv4Addr::new(172, 18, 0, 50),
        &refs,
    );
    let t = wait_until(
        "joiner programmed everywhere",
        Duration::from_secs(10),
        || has_peer_everywhere(lab, "10.244.9.0/24"),
    );
    eprintln!(
        "node added -> programmed on every node in {:.0} ms",
        t.as_secs_f64() * 1e3
    );
    for n in &lab.cluster.nodes {
        assert!(n
            .ns
            .exec(&["bridge", "fdb", "show", "dev", "flannel.1"])
            .unwrap()
            .contains("02:00:00:00:00:50 dst 172.18.0.50 self permanent"));
    }
    lab.api.delete_node("joiner");
    let t = wait_until("joiner removed everywhere", Duration::from_secs(10), || {
        has_peer_nowhere(lab, "10.244.9.0/24")
    });
    eprintln!(
        "node deleted -> removed from every node in {:.0} ms",
        t.as_secs_f64() * 1e3
    );
    for n in &lab.cluster.nodes {
        assert!(!n
            .ns
            .exec(&["bridge", "fdb", "show", "dev", "flannel.1"])
            .unwrap()
            .contains("02:00:00:00:00:50"));
        assert!(!json(&n.ns, &["neigh", "show", "dev", "flannel.1"])
            .iter()
            .any(|x| x["dst"] == "10.244.9.0"));
    }

    // Garbage annotations: skipped, named in the log, the rest keeps working.
    let garbage = [
        (format!("{PREFIX}/backend-data"), "{{{not json".to_string()),
        (format!("{PREFIX}/backend-type"), "vxlan".to_string()),
        (format!("{PREFIX}/kube-subnet-manager"), "true".to_string()),
        (format!("{PREFIX}/public-ip"), "172.18.0.66".to_string()),
    ];
    let refs: Vec<(&str, &str)> = garbage
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    lab.api.create_node(
        "garbage",
        "10.244.66.0/24",
        Ipv4Addr::new(172, 18, 0, 66),
        &refs,
    );
    wait_until(
        "the garbage node named in every log",
        Duration::from_secs(10),
        || {
            lab.agents.iter().all(|a| {
                a.log()
                    .lines()
                    .any(|l| l.contains("garbage") && l.contains("backend-data"))
            })
        },
    );
    assert!(has_peer_nowhere(lab, "10.244.66.0/24"));
    assert!(converged(lab));
    lab.api.delete_node("garbage");

    // Restart on worker2: SIGTERM leaves everything, the new one writes nothing.
    let w2 = lab.cluster.node("worker2").unwrap();
    let idx = lab.agents.iter().position(|a| a.node == "worker2").unwrap();
    let before = (
        overlay_routes(&w2.ns),
        w2.ns.ip(&["neigh", "show", "dev", "flannel.1"]).unwrap(),
    );
    let old = lab.agents.remove(idx);
    let status = old.stop().unwrap();
    assert!(status.success(), "weftd exits 0 on SIGTERM: {status}");
    assert_eq!(
        before,
        (
            overlay_routes(&w2.ns),
            w2.ns.ip(&["neigh", "show", "dev", "flannel.1"]).unwrap()
        ),
        "stopping leaves the data plane"
    );
    let witness = KernelWitness::start(&w2.ns).unwrap();
    let spec = w2.spec.clone();
    let mut again = start_weftd(lab, &spec);
    again.wait_ready(Duration::from_secs(30)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let seen = witness.changes().unwrap();
    assert!(
        seen.is_empty(),
        "the kernel changed during the restart:\n{seen}"
    );
    lab.agents.push(again);
}

#[test]
fn weftd_against_the_real_apiserver() {
    require_netns!();
    let Some(mut lab) = lab(true) else { return };
    check_converged_cluster(&lab);
    runtime_changes(&mut lab);
    check_converged_cluster(&lab);
}

#[test]
fn weftd_against_the_embedded_api_server() {
    require_netns!();
    let mut lab = lab(false).unwrap();
    check_converged_cluster(&lab);
    runtime_changes(&mut lab);
    check_converged_cluster(&lab);
}

/// Everything each node's kernel holds of the overlay.
#[test]
fn weftd_rides_out_a_60_second_api_outage() {
    require_netns!();
    let mut lab = lab(false).unwrap();
    check_converged_cluster(&lab);
    let before = kernel_state(&lab);
    let Api::Embedded(api, _) = &lab.api else {
        unreachable!()
    };
    // The API goes away (every request 503, watches cut), forgets its history
    // (the agents' next watch gets 410 and must list again), and a node joins
    // meanwhile.
    // Pods ping across nodes for the whole outage.
    let outage = Duration::from_secs(
        std::env::var("WEFT_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let from = &lab.cluster.node("control-plane").unwrap().pod;
    let to = lab.cluster.node("worker2").unwrap().spec.pod_ip();
    let pings = u32::try_from(outage.as_millis() / 10).unwrap() + 500;
    let pinger = Pinger::start(from, to, pings).unwrap();
    api.set_unavailable(true);
    api.compact();
    let ann = fake_peer_annotations("172.18.0.77", "02:00:00:00:00:77");
    let refs: Vec<(&str, &str)> = ann.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    lab.api.create_node(
        "late",
        "10.244.77.0/24",
        Ipv4Addr::new(172, 18, 0, 77),
        &refs,
    );
    let t0 = Instant::now();
    while t0.elapsed() < outage {
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(
            kernel_state(&lab),
            before,
            "the kernel changed during the outage"
        );
        assert!(
            lab.agents.iter_mut().all(|a| a.is_running()),
            "an agent died during the outage"
        );
    }
    let Api::Embedded(api, _) = &lab.api else {
        unreachable!()
    };
    api.set_unavailable(false);
    let t = wait_until(
        "the node added during the outage",
        Duration::from_secs(60),
        || has_peer_everywhere(&lab, "10.244.77.0/24"),
    );
    eprintln!(
        "after a {outage:?} outage, caught up in {:.1} s",
        t.as_secs_f64()
    );
    for a in &lab.agents {
        eprintln!(
            "--- {} ---\n{}",
            a.node,
            a.log()
                .lines()
                .rev()
                .take(12)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(
        t < Duration::from_secs(10),
        "the agents' retry delay is capped at 5 s"
    );
    let summary = pinger.finish().unwrap();
    eprintln!(
        "pings across nodes during and after the outage: {} sent, {} lost",
        summary.sent,
        summary.lost()
    );
    assert_eq!(summary.lost(), 0, "{}", summary.text);
    assert!(summary.sent >= u64::from(pings) - 5, "{}", summary.text);
    assert!(lab
        .agents
        .iter()
        .all(|a| a.log().contains("the Kubernetes API answers again")));
    for n in &lab.cluster.nodes {
        let fdb =
            n.ns.exec(&["bridge", "fdb", "show", "dev", "flannel.1"])
                .unwrap();
        assert!(
            fdb.contains("02:00:00:00:00:77 dst 172.18.0.77 self permanent"),
            "{fdb}"
        );
    }
}

#[test]
fn readyz_is_503_until_the_node_exists() {
    require_netns!();
    let mut lab = lab(false).unwrap();
    // An agent whose Node is not (yet) in the API: alive, not ready. (In
    // worker2's namespace, whose own agent is stopped first: one agent per
    // network namespace.)
    let idx = lab.agents.iter().position(|a| a.node == "worker2").unwrap();
    lab.agents.remove(idx).stop().unwrap();
    let ns = &lab.cluster.node("worker2").unwrap().ns;
    let _ghost = Weftd::start(
        Path::new(env!("CARGO_BIN_EXE_weftd")),
        ns,
        "ghost",
        &lab.api.kubeconfig(),
        &net_conf(CLUSTER, r#"{"Type":"vxlan"}"#, false),
        &lab.dir.path().join("ghost"),
        &["--healthz-port=8479"],
    )
    .unwrap();
    wait_until("ghost's health server", Duration::from_secs(10), || {
        health_status(ns, 8479, "/healthz") == "200"
    });
    assert_eq!(health_status(ns, 8479, "/readyz"), "503");
}

/// The subnet file cannot be written (its path is a directory): weftd
/// keeps the data plane, says why once, stays not ready, and retries on its
/// own until the path is usable — then writes the file and turns ready,
/// without any Node event to wake it.
#[test]
fn an_unwritable_subnet_file_is_retried_until_it_works() {
    require_netns!();
    let lab = lab(false).unwrap();
    let mut agents = lab.agents;
    let pos = agents.iter().position(|a| a.node == "worker2").unwrap();
    agents.remove(pos).stop().unwrap();
    let ns = &lab.cluster.node("worker2").unwrap().ns;
    let dir = lab.dir.path().join("worker2-again");
    std::fs::create_dir_all(dir.join("subnet.env")).unwrap();
    let mut agent = Weftd::start(
        Path::new(env!("CARGO_BIN_EXE_weftd")),
        ns,
        "worker2",
        &lab.api.kubeconfig(),
        &net_conf(CLUSTER, r#"{"Type":"vxlan"}"#, false),
        &dir,
        &["--healthz-port=8472"],
    )
    .unwrap();
    wait_until(
        "the failure in weftd's log",
        Duration::from_secs(30),
        || agent.log().contains("writing the subnet file"),
    );
    assert_eq!(health_status(ns, 8472, "/readyz"), "503");
    let peers = overlay_routes(ns);
    assert_eq!(
        peers.len(),
        2,
        "the data plane is in place meanwhile: {peers:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let log = agent.log();
    assert_eq!(
        log.matches("retrying with backoff").count(),
        1,
        "logged once per failure streak:\n{log}"
    );
    std::fs::remove_dir(dir.join("subnet.env")).unwrap();
    let t = wait_until(
        "the subnet file written by a retry",
        Duration::from_secs(40),
        || {
            std::fs::read_to_string(dir.join("subnet.env"))
                .is_ok_and(|s| s.contains("FLANNEL_SUBNET"))
        },
    );
    eprintln!(
        "subnet file written {:.0} ms after its path became usable",
        t.as_secs_f64() * 1e3
    );
    wait_until("/readyz 200", Duration::from_secs(10), || {
        health_status(ns, 8472, "/readyz") == "200"
    });
    assert!(agent.log().contains("succeeded after retrying"));
    assert!(agent.is_running());
}
