//! The real `weftd` binary in three node namespaces, against the real
//! kube-apiserver from ../shared/kube (skipped where it is absent) and
//! against weft's embedded Node API server (always; also for faults).
//! Each agent runs with only flannel's ClusterRole (real server).

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_integration::kube_api::RealApiServer;
use weft_integration::node_api::NodeApi;
use weft_integration::topology::CLUSTER;
use weft_integration::weftd::{health_status, net_conf, Weftd};
use weft_integration::witness::KernelWitness;
use weft_integration::{seed_nodes, Cluster, NodeSpec};
use weft_netns::{require_netns, Netns};

const PREFIX: &str = "flannel.alpha.coreos.com";
const API_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);

/// Either API server, behind the few calls the tests need.
enum Api {
    Real(RealApiServer),
    Embedded(NodeApi, PathBuf),
}

impl Api {
    fn kubeconfig(&self) -> PathBuf {
        match self {
            Api::Real(r) => r.agent_kubeconfig(),
            Api::Embedded(_, kc) => kc.clone(),
        }
    }

    fn create_node(&self, name: &str, cidr: &str, ip: Ipv4Addr, annotations: &[(&str, &str)]) {
        match self {
            Api::Real(r) => r.create_node(name, cidr, ip, annotations).unwrap(),
            Api::Embedded(e, _) => {
                let ann: serde_json::Map<String, Value> = annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), Value::from(*v)))
                    .collect();
                e.create_node(serde_json::json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "annotations": ann},
                    "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
                    "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}]}
                }))
                .unwrap()
            }
        }
    }

    fn delete_node(&self, name: &str) {
        match self {
            Api::Real(r) => r.delete_node(name).unwrap(),
            Api::Embedded(e, _) => e.delete_node(name).unwrap(),
        }
    }

    fn node(&self, name: &str) -> Option<Value> {
        match self {
            Api::Real(r) => r.node(name).unwrap(),
            Api::Embedded(e, _) => e.node(name),
        }
    }
}

/// A cluster of namespaces, an API server on the switch (172.18.0.1) and weftd on every node.
struct Lab {
    agents: Vec<Weftd>,
    api: Api,
    cluster: Cluster,
    dir: tempfile::TempDir,
}

fn start_real(switch: &Netns) -> Option<Api> {
    if let Err(reason) = RealApiServer::locate() {
        eprintln!("SKIPPED: no real kube-apiserver: {reason}");
        return None;
    }
    let r = RealApiServer::start(switch, API_IP, 6443).unwrap();
    // The agents get exactly flannel's rights, nothing more.
    r.grant_flannel_role().unwrap();
    Some(Api::Real(r))
}

fn start_embedded(switch: &Netns, dir: &Path) -> Api {
    let (tx, rx) = std::sync::mpsc::channel();
    // The server thread must start inside the switch namespace to listen there.
    let task = switch
        .spawn_task(move || async move {
            let api = NodeApi::start((API_IP, 0).into());
            let _ = tx.send(api);
        })
        .unwrap();
    let api = rx.recv().unwrap().unwrap();
    task.join().unwrap();
    let kc = dir.join("kubeconfig-embedded");
    api.write_kubeconfig(&kc).unwrap();
    Api::Embedded(api, kc)
}

fn lab(real: bool) -> Option<Lab> {
    let specs = seed_nodes();
    let cluster = Cluster::new(&specs).unwrap();
    cluster
        .switch
        .add_addr("br0", &format!("{API_IP}/16"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let api = if real {
        start_real(&cluster.switch)?
    } else {
        start_embedded(&cluster.switch, dir.path())
    };
    for s in &specs {
        api.create_node(&s.name, &s.subnet.to_string(), s.ip, &[]);
    }
    let mut lab = Lab {
        agents: Vec::new(),
        api,
        cluster,
        dir,
    };
    for n in &lab.cluster.nodes {
        let agent = start_weftd(&lab, &n.spec);
        lab.agents.push(agent);
    }
    for a in &mut lab.agents {
        let t = a.wait_ready(Duration::from_secs(60)).unwrap();
        eprintln!(
            "weftd on {} ready after {:.0} ms",
            a.node,
            t.as_secs_f64() * 1e3
        );
    }
    Some(lab)
}

/// The health port every agent serves in its own namespace.
const HEALTHZ: &str = "--healthz-port=8471";

fn start_weftd(lab: &Lab, spec: &NodeSpec) -> Weftd {
    let node = lab.cluster.node(&spec.name).unwrap();
    let mut extra = vec![HEALTHZ];
    // With the embedded server, one agent finds its node as flannel's manifest
    // has it: through its pod (POD_NAME, POD_NAMESPACE -> spec.nodeName).
    if let (Api::Embedded(api, _), "worker") = (&lab.api, spec.name.as_str()) {
        api.add_pod("kube-flannel", "kube-flannel-ds-x7k2p", "worker");
        extra.push("--pod=kube-flannel/kube-flannel-ds-x7k2p");
    }
    Weftd::start(
        Path::new(env!("CARGO_BIN_EXE_weftd")),
        &node.ns,
        &spec.name,
        &lab.api.kubeconfig(),
        &net_conf(CLUSTER, r#"{"Type":"vxlan"}"#, false),
        &lab.dir.path().join(&spec.name),
        &extra,
    )
    .unwrap()
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < timeout, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

fn json(ns: &Netns, args: &[&str]) -> Vec<Value> {
    ns.ip_json(args)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn flannel1_mac(ns: &Netns) -> String {
    json(ns, &["link", "show", "flannel.1"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Routes into the cluster network that are not the kernel's own (`dst via dev`).
fn overlay_routes(ns: &Netns) -> Vec<String> {
    let mut v: Vec<String> = json(ns, &["route", "show", "root", CLUSTER])
        .into_iter()
        .filter(|r| r["protocol"] != "kernel")
        .map(|r| {
            format!(
                "{} via {} dev {}",
                r["dst"].as_str().unwrap_or(""),
                r["gateway"].as_str().unwrap_or(""),
                r["dev"].as_str().unwrap_or("")
            )
        })
        .collect();
    v.sort();
    v
}

/// The seed's tables on `me`, for peers `others`, with the MACs they published.
fn assert_tables(lab: &Lab, me: &NodeSpec, others: &[&NodeSpec]) {
    let ns = &lab.cluster.node(&me.name).unwrap().ns;
    let mut want: Vec<String> = others
        .iter()
        .map(|o| format!("{} via {} dev flannel.1", o.subnet, o.subnet.network()))
        .collect();
    want.sort();
    assert_eq!(overlay_routes(ns), want, "routes on {}", me.name);
    for o in others {
        let mac = flannel1_mac(&lab.cluster.node(&o.name).unwrap().ns);
        let neigh = json(
            ns,
            &["neigh", "show", "dev", "flannel.1", "nud", "permanent"],
        );
        assert!(
            neigh
                .iter()
                .any(|n| n["dst"] == o.subnet.network().to_string() && n["lladdr"] == mac),
            "{}: neighbour for {}: {neigh:?}",
            me.name,
            o.name
        );
        let fdb = ns
            .exec(&["bridge", "fdb", "show", "dev", "flannel.1"])
            .unwrap();
        assert!(
            fdb.contains(&format!("{mac} dst {} self permanent", o.ip)),
            "{}: fdb for {}: {fdb}",
            me.name,
            o.name
        );
    }
}

fn converged(lab: &Lab) -> bool {
    let specs: Vec<&NodeSpec> = lab.cluster.nodes.iter().map(|n| &n.spec).collect();
    specs
        .iter()
        .all(|me| overlay_routes(&lab.cluster.node(&me.name).unwrap().ns).len() == specs.len() - 1)
}

fn annotations(lab: &Lab, name: &str) -> BTreeMap<String, String> {
    let node = lab.api.node(name).unwrap();
    serde_json::from_value(node["metadata"]["annotations"].clone()).unwrap_or_default()
}

/// Everything the seed shows, on every node, and what the API holds.
fn check_converged_cluster(lab: &Lab) {
    let t = wait_until("overlay on every node", Duration::from_secs(20), || {
        converged(lab)
    });
    eprintln!(
        "cluster converged {:.0} ms after the last agent was ready",
        t.as_secs_f64() * 1e3
    );
    let specs: Vec<&NodeSpec> = lab.cluster.nodes.iter().map(|n| &n.spec).collect();
    for me in &specs {
        let others: Vec<&NodeSpec> = specs
            .iter()
            .copied()
            .filter(|o| o.name != me.name)
            .collect();
        assert_tables(lab, me, &others);
        // Exactly flannel's four annotations.
        let ns = &lab.cluster.node(&me.name).unwrap().ns;
        let ann: BTreeMap<String, String> = annotations(lab, &me.name)
            .into_iter()
            .filter(|(k, _)| k.starts_with(PREFIX))
            .collect();
        let want = BTreeMap::from([
            (
                format!("{PREFIX}/backend-data"),
                format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, flannel1_mac(ns)),
            ),
            (format!("{PREFIX}/backend-type"), "vxlan".to_string()),
            (format!("{PREFIX}/kube-subnet-manager"), "true".to_string()),
            (format!("{PREFIX}/public-ip"), me.ip.to_string()),
        ]);
        assert_eq!(ann, want, "annotations of {}", me.name);
        assert_eq!(health_status(ns, 8471, "/healthz"), "200");
        assert_eq!(health_status(ns, 8471, "/readyz"), "200");
        let node = lab.api.node(&me.name).unwrap();
        let conds = node["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            conds.iter().any(|c| c["type"] == "NetworkUnavailable"
                && c["status"] == "False"
                && c["reason"] == "FlannelIsUp"),
            "{}: {conds:?}",
            me.name
        );
        // subnet.env as flannel writes it.
        let agent = lab.agents.iter().find(|a| a.node == me.name).unwrap();
        assert_eq!(
            agent.subnet_env().unwrap(),
            format!(
                "FLANNEL_NETWORK={CLUSTER}\nFLANNEL_SUBNET={}/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
                Ipv4Addr::from(u32::from(me.subnet.network()) + 1)
            )
        );
    }
    // Pods reach each other across nodes.
    for a in &lab.cluster.nodes {
        for b in &lab.cluster.nodes {
            let ok = a
                .pod
                .exec_status(&["ping", "-c1", "-W2", "-q", &b.spec.pod_ip().to_string()])
                .unwrap()
                .status
                .success();
            assert!(
                ok,
                "pod on {} cannot reach pod on {}",
                a.spec.name, b.spec.name
            );
        }
    }
}

/// A peer that exists only in the API (a node weft does not run on), as flannel would annotate it.
fn fake_peer_annotations(ip: &str, mac: &str) -> Vec<(String, String)> {
    vec![
        (
            format!("{PREFIX}/backend-data"),
            format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
        ),
        (format!("{PREFIX}/backend-type"), "vxlan".into()),
        (format!("{PREFIX}/kube-subnet-manager"), "true".into()),
        (format!("{PREFIX}/public-ip"), ip.into()),
    ]
}

fn has_peer_everywhere(lab: &Lab, subnet: &str) -> bool {
    lab.cluster
        .nodes
        .iter()
        .all(|n| overlay_routes(&n.ns).iter().any(|r| r.starts_with(subnet)))
}

fn has_peer_nowhere(lab: &Lab, subnet: &str) -> bool {
    lab.cluster
        .nodes
        .iter()
        .all(|n| !overlay_routes(&n.ns).iter().any(|r| r.starts_with(subnet)))
}

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
fn kernel_state(lab: &Lab) -> Vec<(Vec<String>, String, String)> {
    lab.cluster
        .nodes
        .iter()
        .map(|n| {
            (
                overlay_routes(&n.ns),
                n.ns.ip(&["neigh", "show", "dev", "flannel.1", "nud", "permanent"])
                    .unwrap(),
                n.ns.exec(&["bridge", "fdb", "show", "dev", "flannel.1"])
                    .unwrap(),
            )
        })
        .collect()
}

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
    let outage = Duration::from_secs(
        std::env::var("WEFT_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
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
    let lab = lab(false).unwrap();
    // An agent whose Node is not (yet) in the API: alive, not ready.
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
