//! The lab the weftd tests share: three node namespaces (the seed's), an
//! API server on the switch (the real kube-apiserver or weft's embedded
//! one) and the real weftd on every node, with the checks they assert.

#![allow(dead_code)] // each test file uses a part
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_integration::kube_api::{ApiOptions, RealApiServer};
use weft_integration::node_api::NodeApi;
use weft_integration::topology::CLUSTER;
use weft_integration::weftd::{health_status, net_conf, Weftd};
use weft_integration::{seed_nodes, Cluster, NodeSpec};
use weft_netns::Netns;

pub const PREFIX: &str = "flannel.alpha.coreos.com";
pub const API_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);

/// Either API server, behind the few calls the tests need.
pub enum Api {
    Real(RealApiServer),
    Embedded(NodeApi, PathBuf),
}

impl Api {
    pub fn kubeconfig(&self) -> PathBuf {
        match self {
            Api::Real(r) => r.agent_kubeconfig(),
            Api::Embedded(_, kc) => kc.clone(),
        }
    }

    pub fn create_node(&self, name: &str, cidr: &str, ip: Ipv4Addr, annotations: &[(&str, &str)]) {
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

    pub fn delete_node(&self, name: &str) {
        match self {
            Api::Real(r) => r.delete_node(name).unwrap(),
            Api::Embedded(e, _) => e.delete_node(name).unwrap(),
        }
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        match self {
            Api::Real(r) => r.node(name).unwrap(),
            Api::Embedded(e, _) => e.node(name),
        }
    }
}

/// A cluster of namespaces, an API server on the switch (172.18.0.1) and weftd on every node.
pub struct Lab {
    pub agents: Vec<Weftd>,
    pub api: Api,
    pub cluster: Cluster,
    pub dir: tempfile::TempDir,
}

pub fn start_real(switch: &Netns, options: &ApiOptions) -> Option<Api> {
    if let Err(reason) = RealApiServer::locate() {
        eprintln!("SKIPPED: no real kube-apiserver: {reason}");
        return None;
    }
    let r = RealApiServer::start_with(switch, API_IP, 6443, options).unwrap();
    // The agents get exactly flannel's rights, nothing more.
    r.grant_flannel_role().unwrap();
    Some(Api::Real(r))
}

pub fn start_embedded(switch: &Netns, dir: &Path) -> Api {
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

/// The lab with the real API server (`true`; `None` where it is absent) or
/// the embedded one.
pub fn lab(real: bool) -> Option<Lab> {
    lab_with(real.then(ApiOptions::default))
}

/// The lab with the real API server started with these options, or (`None`)
/// the embedded one.
pub fn lab_with(real: Option<ApiOptions>) -> Option<Lab> {
    let specs = seed_nodes();
    let cluster = Cluster::new(&specs).unwrap();
    cluster
        .switch
        .add_addr("br0", &format!("{API_IP}/16"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let api = if let Some(options) = &real {
        start_real(&cluster.switch, options)?
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
pub const HEALTHZ: &str = "--healthz-port=8471";

pub fn start_weftd(lab: &Lab, spec: &NodeSpec) -> Weftd {
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

pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < timeout, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

pub fn json(ns: &Netns, args: &[&str]) -> Vec<Value> {
    ns.ip_json(args)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

pub fn flannel1_mac(ns: &Netns) -> String {
    json(ns, &["link", "show", "flannel.1"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Routes into the cluster network that are not the kernel's own (`dst via dev`).
pub fn overlay_routes(ns: &Netns) -> Vec<String> {
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
pub fn assert_tables(lab: &Lab, me: &NodeSpec, others: &[&NodeSpec]) {
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

pub fn converged(lab: &Lab) -> bool {
    let specs: Vec<&NodeSpec> = lab.cluster.nodes.iter().map(|n| &n.spec).collect();
    specs
        .iter()
        .all(|me| overlay_routes(&lab.cluster.node(&me.name).unwrap().ns).len() == specs.len() - 1)
}

pub fn annotations(lab: &Lab, name: &str) -> BTreeMap<String, String> {
    let node = lab.api.node(name).unwrap();
    serde_json::from_value(node["metadata"]["annotations"].clone()).unwrap_or_default()
}

/// Everything the seed shows, on every node, and what the API holds.
pub fn check_converged_cluster(lab: &Lab) {
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
pub fn fake_peer_annotations(ip: &str, mac: &str) -> Vec<(String, String)> {
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

pub fn has_peer_everywhere(lab: &Lab, subnet: &str) -> bool {
    lab.cluster
        .nodes
        .iter()
        .all(|n| overlay_routes(&n.ns).iter().any(|r| r.starts_with(subnet)))
}

pub fn has_peer_nowhere(lab: &Lab, subnet: &str) -> bool {
    lab.cluster
        .nodes
        .iter()
        .all(|n| !overlay_routes(&n.ns).iter().any(|r| r.starts_with(subnet)))
}

pub fn kernel_state(lab: &Lab) -> Vec<(Vec<String>, String, String)> {
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
