//! `just bench scale`: the real `weftd` against the real kube-apiserver with
//! thousands of real-sized Nodes (labels, 40 images, conditions, addresses,
//! nodeInfo), every figure measured in one run:
//!
//! - (ii) weftd running while every Node arrives as fast as the API takes
//!   them: the lag from the last creation to the last route programmed;
//! - (iii) weftd's resident memory, peak (`VmHWM`, the initial arrival
//!   included) and steady (`VmRSS` after it settled);
//! - (v) one Node change at that size → kernel updated (p50, p99);
//! - (vi) the API requests weftd made, from the API server's audit log;
//! - (vii) weftd restarted on the programmed node: time to ready, writes;
//! - (i) weftd started on a fresh node of the populated cluster: time to
//!   full programming, against `ip -batch` + `bridge -batch` of the same
//!   objects;
//! - (iv) weftd's CPU at idle in each NAT mode (its children included).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use weft_netns::Netns;

use crate::bench::{self, ms, peer_events, Monitor, Peer, Samples};
use crate::kube_api::{ApiOptions, RealApiServer};
use crate::topology::{Cluster, NodeSpec};
use crate::weftd::{health_status, net_conf, Weftd};
use crate::witness::KernelWitness;

const PREFIX: &str = "flannel.alpha.coreos.com";
/// The restarted weftd's health port.
const HEALTH_PORT: u16 = 8491;
const HEALTH: &str = "--healthz-port=8491";
const API_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
/// Creations in flight at once.
const IN_FLIGHT: usize = 32;

/// What to run.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Peer Nodes.
    pub nodes: usize,
    /// One-change events to time.
    pub events: usize,
    /// Seconds of idle CPU measured per NAT mode.
    pub idle_secs: u64,
}

/// A Node as a real cluster has it (≈ 12 KB of JSON): the body to create
/// and the status to patch.
fn real_sized(p: Peer) -> (Value, Value) {
    let name = p.lease().node;
    let images: Vec<Value> = (0..40)
        .map(|i| {
            json!({"names": [format!("registry.example/team/app-{i}@sha256:{:064x}", u64::from(p.i) * 100 + i),
                             format!("registry.example/team/app-{i}:v1.{i}")],
                   "sizeBytes": 123_456_789})
        })
        .collect();
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                       "topology.kubernetes.io/zone": format!("zone-{}", p.i % 3), "node.kubernetes.io/instance-type": "m5.large"},
            "annotations": {
                format!("{PREFIX}/backend-data"): format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, p.mac()),
                format!("{PREFIX}/backend-type"): "vxlan",
                format!("{PREFIX}/kube-subnet-manager"): "true",
                format!("{PREFIX}/public-ip"): p.public_ip().to_string(),
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true"
            }
        },
        "spec": {"podCIDR": p.subnet().to_string(), "podCIDRs": [p.subnet().to_string()],
                 "providerID": format!("aws:///zone/i-{:016x}", p.i)}
    });
    let status = json!({"status": {
        "addresses": [{"type": "InternalIP", "address": p.public_ip().to_string()}, {"type": "Hostname", "address": name}],
        "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"},
        "allocatable": {"cpu": "2", "memory": "7Gi", "pods": "110", "ephemeral-storage": "90Gi"},
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
             "lastHeartbeatTime": "2026-12-01T10:00:00Z", "lastTransitionTime": "2026-12-01T10:00:00Z"},
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "message": "kubelet has sufficient memory available",
             "lastHeartbeatTime": "2026-12-01T10:00:00Z", "lastTransitionTime": "2026-12-01T10:00:00Z"},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "message": "kubelet has no disk pressure",
             "lastHeartbeatTime": "2026-12-01T10:00:00Z", "lastTransitionTime": "2026-12-01T10:00:00Z"}
        ],
        "images": images,
        "nodeInfo": {"machineID": format!("{:032x}", p.i), "systemUUID": format!("{:032x}", p.i), "bootID": format!("{:032x}", p.i),
                     "kernelVersion": "6.1.0-27-amd64", "osImage": "Debian GNU/Linux 12 (bookworm)", "containerRuntimeVersion": "containerd://1.7.24",
                     "kubeletVersion": "v1.32.13", "kubeProxyVersion": "v1.32.13", "operatingSystem": "linux", "architecture": "amd64"}
    }});
    (node, status)
}

/// Creates (and gives a status to) every peer's Node, `IN_FLIGHT` at a
/// time; returns when the last one is in.
fn create_all(api: &RealApiServer, peers: &[Peer]) -> anyhow::Result<()> {
    let bodies: Vec<(String, Value, Value)> = peers
        .iter()
        .map(|&p| {
            let (n, s) = real_sized(p);
            (p.lease().node, n, s)
        })
        .collect();
    api.admin(move |client| async move {
        let nodes = Api::<Node>::all(client);
        futures::stream::iter(bodies)
            .map(|(name, body, status)| {
                let nodes = nodes.clone();
                async move {
                    let node: Node = serde_json::from_value(body)?;
                    nodes
                        .create(&PostParams::default(), &node)
                        .await
                        .with_context(|| format!("create {name}"))?;
                    nodes
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await
                        .with_context(|| format!("status of {name}"))?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    })
}

fn create_one(api: &RealApiServer, p: Peer) -> anyhow::Result<()> {
    create_all(api, &[p])
}

/// weft's routes in `ns` (protocol 119).
fn routes(ns: &Netns) -> anyhow::Result<usize> {
    Ok(ns
        .ip(&["-4", "route", "show", "proto", "119"])?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count())
}

fn wait_routes(ns: &Netns, want: usize, timeout: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if routes(ns)? >= want {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!(
                "{want} routes not programmed after {timeout:?} ({} so far)",
                routes(ns)?
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// CPU ticks used by `pid` and its waited-for children.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("bad stat")?;
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14-17 of stat (utime stime cutime cstime) are 11..=14 after ")".
    Ok(f.get(11..15).map(|v| v.iter().sum()).unwrap_or(0))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Prints the scale section.
pub fn run(weftd: &Path, opts: &ScaleOptions) -> anyhow::Result<()> {
    let me = NodeSpec {
        name: "scale-node".into(),
        ip: Ipv4Addr::new(172, 18, 0, 2),
        subnet: "10.200.0.0/24".parse()?,
    };
    let fresh = NodeSpec {
        name: "fresh-node".into(),
        ip: Ipv4Addr::new(172, 18, 0, 3),
        subnet: "10.200.1.0/24".parse()?,
    };
    let cluster = Cluster::new(&[me.clone(), fresh.clone()])?;
    cluster.switch.add_addr("br0", &format!("{API_IP}/16"))?;
    let dir = tempfile::tempdir()?;
    let api = RealApiServer::start_with(
        &cluster.switch,
        API_IP,
        6443,
        &ApiOptions::default().audited(dir.path())?,
    )?;
    api.grant_flannel_role()?;
    let kubeconfig = api.agent_kubeconfig();
    let network = bench::CLUSTER;
    let conf = net_conf(network, r#"{"Type":"vxlan"}"#, false);
    let peers = bench::peers(1, opts.nodes);
    api.create_node(&me.name, &me.subnet.to_string(), me.ip, &[])?;
    api.create_node(&fresh.name, &fresh.subnet.to_string(), fresh.ip, &[])?;
    let node = cluster.node(&me.name).context("no node")?;
    let start = |ns: &Netns, name: &str, sub: &str, extra: &[&str]| {
        Weftd::start(
            weftd,
            ns,
            name,
            &kubeconfig,
            &conf,
            &dir.path().join(sub),
            extra,
        )
    };
    let mut agent = start(&node.ns, &me.name, "me", &[])?;
    agent.wait_ready(Duration::from_secs(60))?;
    let pid = agent.pid().context("weftd has no pid")?;
    println!(
        "scale: {} real-sized Nodes (labels, 40 images, conditions, addresses, nodeInfo) through the real kube-apiserver",
        opts.nodes
    );

    // (ii) every Node arriving while weftd runs.
    let t0 = Instant::now();
    create_all(&api, &peers)?;
    let created = Instant::now();
    let done = wait_routes(&node.ns, opts.nodes, Duration::from_secs(300))?;
    println!(
        "  (ii) {} Nodes created in {:.1} s ({:.0}/s); every route programmed {} after the last creation",
        opts.nodes,
        created.duration_since(t0).as_secs_f64(),
        opts.nodes as f64 / created.duration_since(t0).as_secs_f64(),
        ms(done.saturating_duration_since(created))
    );

    // (iii) memory.
    std::thread::sleep(Duration::from_secs(10));
    let (rss, peak) = memory(pid)?;
    println!(
        "  (iii) weftd's memory: steady {} (goal < 30 MiB), peak {} (goal < 50 MiB)",
        mib(rss),
        mib(peak)
    );

    // (v) one change at this size.
    let monitor = Monitor::start(&node.ns)?;
    let mut one = Samples::default();
    let extra = Peer {
        i: u32::try_from(opts.nodes + 1)?,
    };
    for _ in 0..opts.events {
        monitor.drain();
        let t = Instant::now();
        create_one(&api, extra)?;
        let at = monitor.wait_for(&peer_events(extra, true), Duration::from_secs(10))?;
        one.push(at.saturating_duration_since(t));
        let t = Instant::now();
        api.delete_node(&extra.lease().node)?;
        let at = monitor.wait_for(&peer_events(extra, false), Duration::from_secs(10))?;
        one.push(at.saturating_duration_since(t));
    }
    monitor.stop()?;
    println!(
        "  (v) one Node added or deleted in the API -> kernel updated ({} changes at {} peers): p50 {}, p99 {}, max {}",
        one.0.len(),
        opts.nodes,
        ms(one.median()),
        ms(one.percentile(99.0)),
        ms(one.max())
    );

    // (vi) what weftd asked of the API.
    let requests = api.agent_requests()?;
    let listed: Vec<String> = requests.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
    println!(
        "  (vi) weftd's API requests (audit log): {}",
        listed.join(", ")
    );

    // (vii) restart on the programmed node.
    agent.stop()?;
    let witness = KernelWitness::start(&node.ns)?;
    let t = Instant::now();
    let agent = start(&node.ns, &me.name, "me", &[HEALTH])?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while health_status(&node.ns, HEALTH_PORT, "/readyz") != "200" {
        if Instant::now() > deadline {
            bail!("the restarted weftd is not ready after 120 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready = t.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let writes = witness.changes()?;
    // ARP entries of the underlay (the API server's address) come and go
    // on their own; weft's objects are on flannel.1.
    let weft_writes: Vec<&str> = writes
        .lines()
        .filter(|l| l.contains("flannel.1") || l.contains("proto 119"))
        .collect();
    println!(
        "  (vii) restart on the programmed node: /readyz 200 after {} (process start included), kernel writes: {} (goal 0){}",
        ms(ready),
        weft_writes.len(),
        if weft_writes.is_empty() { String::new() } else { format!(": {weft_writes:?}") }
    );

    // (i) a fresh node joining the populated cluster.
    let fresh_node = cluster.node(&fresh.name).context("no fresh node")?;
    let t = Instant::now();
    let fresh_agent = start(&fresh_node.ns, &fresh.name, "fresh", &[])?;
    // Its peers: every synthetic Node plus scale-node.
    let done = wait_routes(&fresh_node.ns, opts.nodes + 1, Duration::from_secs(300))?;
    let weft_cold = done.saturating_duration_since(t);
    fresh_agent.stop()?;
    let reference = ip_batch_time(&peers)?;
    println!(
        "  (i) weftd started on a fresh node of the populated cluster: every route, neighbour and FDB entry in {} (process start, list and device included); ip -batch + bridge -batch of the same {} peers: {} -> {:.2}×",
        ms(weft_cold),
        opts.nodes,
        ms(reference),
        weft_cold.as_secs_f64() / reference.as_secs_f64().max(1e-9)
    );

    // (iv) idle CPU per NAT mode.
    agent.stop()?;
    for mode in ["iptables-legacy", "iptables-nft", "nftables"] {
        let flag = format!("--nat-mode={mode}");
        let mut a = start(&node.ns, &me.name, "me", &[flag.as_str()])?;
        a.wait_ready(Duration::from_secs(120))?;
        std::thread::sleep(Duration::from_secs(3));
        let pid = a.pid().context("no pid")?;
        let before = cpu_ticks(pid)?;
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(opts.idle_secs));
        let used = cpu_ticks(pid)?.saturating_sub(before);
        let secs = t.elapsed().as_secs_f64();
        // /proc/<pid>/stat counts in USER_HZ, 100 on Linux's architectures.
        let tick = 100.0;
        println!(
            "  (iv) idle CPU over {:.0} s, {mode}: {:.2} % of a core (goal < 0.5 %)",
            secs,
            100.0 * used as f64 / tick / secs
        );
        a.stop()?;
    }
    Ok(())
}

/// `ip -batch` + `bridge -batch` of the peers' objects into a fresh
/// namespace with flannel.1 made by iproute2, as the reference.
fn ip_batch_time(peers: &[Peer]) -> anyhow::Result<Duration> {
    let ns = bench::node_namespace("scale-ref")?;
    bench::create_device_with_ip(&ns)?;
    let (ip, bridge) = bench::batch_files(peers);
    let dir = tempfile::tempdir()?;
    let (ipf, brf) = (dir.path().join("ip.batch"), dir.path().join("bridge.batch"));
    std::fs::write(&ipf, ip)?;
    std::fs::write(&brf, bridge)?;
    let t = Instant::now();
    bench::run_n(&ns, "ip", &["-batch", &ipf.to_string_lossy()])?;
    bench::run_n(&ns, "bridge", &["-batch", &brf.to_string_lossy()])?;
    Ok(t.elapsed())
}
