//! The agent section of `just bench`: a Node added to the Kubernetes API →
//! its route, neighbour and FDB entry programmed on another node by the real
//! `weftd`, timed by an independent netlink monitor in that node.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use ipnet::Ipv4Net;
use serde_json::json;

use crate::bench::{ms, KernelEvent, Monitor, Samples};
use crate::kube_api::RealApiServer;
use crate::node_api::NodeApi;
use crate::topology::{seed_nodes, Cluster, CLUSTER};
use crate::weftd::{net_conf, Weftd};

const PREFIX: &str = "flannel.alpha.coreos.com";
const API_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);

enum Api {
    Real(RealApiServer),
    Embedded(NodeApi),
}

impl Api {
    fn create(&self, name: &str, subnet: Ipv4Net, ip: Ipv4Addr, mac: &str) -> anyhow::Result<()> {
        let data = format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#);
        let ip_s = ip.to_string();
        let ann = [
            (format!("{PREFIX}/backend-data"), data.as_str()),
            (format!("{PREFIX}/backend-type"), "vxlan"),
            (format!("{PREFIX}/kube-subnet-manager"), "true"),
            (format!("{PREFIX}/public-ip"), ip_s.as_str()),
        ];
        match self {
            Api::Real(r) => {
                let refs: Vec<(&str, &str)> = ann.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                r.create_node(name, &subnet.to_string(), ip, &refs)
            }
            Api::Embedded(e) => {
                let map: serde_json::Map<String, serde_json::Value> =
                    ann.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                e.create_node(json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "annotations": map},
                    "spec": {"podCIDR": subnet.to_string(), "podCIDRs": [subnet.to_string()]}
                }))
            }
        }
    }

    fn delete(&self, name: &str) -> anyhow::Result<()> {
        match self {
            Api::Real(r) => r.delete_node(name),
            Api::Embedded(e) => e.delete_node(name),
        }
    }
}

/// Prints the agent section: `events` Node additions (each removed again).
pub fn run(weftd: &Path, events: usize) -> anyhow::Result<()> {
    let specs = seed_nodes();
    let me = specs.last().context("no nodes")?.clone();
    let cluster = Cluster::new(std::slice::from_ref(&me))?;
    cluster.switch.add_addr("br0", &format!("{API_IP}/16"))?;
    let dir = tempfile::tempdir()?;
    let (api, kubeconfig, which) = if RealApiServer::locate().is_ok() {
        let r = RealApiServer::start(&cluster.switch, API_IP, 6443)?;
        r.grant_flannel_role()?;
        let kc = r.agent_kubeconfig();
        (Api::Real(r), kc, "the real kube-apiserver v1.32")
    } else {
        let (tx, rx) = std::sync::mpsc::channel();
        cluster
            .switch
            .spawn_task(move || async move {
                let _ = tx.send(NodeApi::start((API_IP, 0).into()));
            })?
            .join()?;
        let e = rx.recv()??;
        let kc = dir.path().join("kubeconfig");
        e.write_kubeconfig(&kc)?;
        (
            Api::Embedded(e),
            kc,
            "weft's embedded Node API server (no ../shared/kube here)",
        )
    };
    let node = cluster.node(&me.name).context("no node")?;
    match &api {
        Api::Real(r) => r.create_node(&me.name, &me.subnet.to_string(), me.ip, &[])?,
        Api::Embedded(e) => e.create_node(json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": me.name},
            "spec": {"podCIDR": me.subnet.to_string(), "podCIDRs": [me.subnet.to_string()]}
        }))?,
    }
    let mut agent = Weftd::start(
        weftd,
        &node.ns,
        &me.name,
        &kubeconfig,
        &net_conf(CLUSTER, r#"{"Type":"vxlan"}"#, false),
        &dir.path().join(&me.name),
        &[],
    )?;
    agent.wait_ready(Duration::from_secs(60))?;
    let monitor = Monitor::start(&node.ns)?;
    let (mut from_request, mut removal) = (Samples::default(), Samples::default());
    for i in 0..events {
        let n = u8::try_from(i % 200).unwrap_or(0);
        let subnet = Ipv4Net::new(Ipv4Addr::new(10, 244, 10 + n, 0), 24)?;
        let ip = Ipv4Addr::new(172, 18, 1, n + 1);
        let mac = [0x02, 0, 0, 1, 0, n];
        let mac_s = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let name = format!("bench-peer-{i}");
        let added = [
            KernelEvent::Route(true, subnet.into()),
            KernelEvent::Neighbour(true, subnet.network()),
            KernelEvent::Fdb(true, mac),
        ];
        monitor.drain();
        let t0 = Instant::now();
        api.create(&name, subnet, ip, &mac_s)?;
        let done = monitor.wait_for(&added, Duration::from_secs(10))?;
        from_request.push(done.saturating_duration_since(t0));
        let removed = [
            KernelEvent::Route(false, subnet.into()),
            KernelEvent::Neighbour(false, subnet.network()),
            KernelEvent::Fdb(false, mac),
        ];
        let t0 = Instant::now();
        api.delete(&name)?;
        let done = monitor.wait_for(&removed, Duration::from_secs(10))?;
        removal.push(done.saturating_duration_since(t0));
    }
    monitor.stop()?;
    let running = agent.is_running();
    drop(agent);
    println!("agent: Node added in the API -> route, neighbour and FDB entry on another node ({events} events, {which})");
    println!(
        "  Node created -> programmed p50 {}  p99 {}  max {}   (goal < 10 ms)",
        ms(from_request.median()),
        ms(from_request.percentile(99.0)),
        ms(from_request.max())
    );
    println!(
        "  Node deleted -> removed    p50 {}  p99 {}  max {}",
        ms(removal.median()),
        ms(removal.percentile(99.0)),
        ms(removal.max())
    );
    if !running {
        anyhow::bail!("weftd died during the benchmark");
    }
    Ok(())
}
