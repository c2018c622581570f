//! What a cluster operator does to weft, under traffic, with what it costs
//! measured: a rolling update of the DaemonSet, a weft pod deleted, a node
//! joining and leaving, and pod churn checked for leaks on every node.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::deploy::{self, DAEMONSET, NAMESPACE};
use super::node::NodeSpec;
use super::workload::{self, http_get, WEB_PORT};
use super::{checks, image, wait_for, Cluster};
use crate::pinger::{PingSummary, Pinger};

/// Pings every 10 ms between web pods while `change` runs: from each
/// node's pod to the next node's. Returns the change's result and each
/// ping's counts, labelled.
pub fn under_ping<T>(
    cluster: &Cluster,
    change: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Vec<(String, PingSummary)>)> {
    let pods = checks::web_pods(cluster)?;
    if pods.len() < 2 {
        bail!("pinging needs web pods on two nodes");
    }
    let mut pingers = Vec::new();
    for (i, from) in pods.iter().enumerate() {
        let to = &pods[(i + 1) % pods.len()];
        // Long enough for any change; stopped when it is done.
        let p = Pinger::start_with(from.command("ping"), to.pod.ip, 100_000)?;
        pingers.push((format!("{} → {}", from.pod.name, to.pod.name), p));
    }
    // Warm up: the first replies prove the path before anything changes.
    std::thread::sleep(Duration::from_millis(500));
    let result = change();
    std::thread::sleep(Duration::from_millis(500));
    let mut summaries = Vec::new();
    for (label, mut p) in pingers {
        if !p.running() {
            bail!("ping {label} ended before the change was done");
        }
        summaries.push((label, p.stop()?));
    }
    Ok((result?, summaries))
}

/// The DaemonSet's pods' images, by node.
pub fn images_by_node(cluster: &Cluster) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(deploy::weft_pods(cluster.kubectl()?)?
        .into_iter()
        .map(|p| (p.node, p.image))
        .collect())
}

/// Rolls weft's DaemonSet to a new tag of its image (same binaries, so
/// only the rollout is measured): imports it everywhere, sets it, waits
/// for the rollout. Returns how long the rollout took.
pub fn rolling_update(
    cluster: &Cluster,
    reference: &str,
    bin_dir: &std::path::Path,
) -> anyhow::Result<Duration> {
    let next = image::weft_image(reference, bin_dir)?;
    cluster.import_everywhere(&next)?;
    let kubectl = cluster.kubectl()?;
    let began = Instant::now();
    let set = [
        format!("kube-flannel={reference}"),
        format!("install-cni-plugin={reference}"),
        format!("install-cni={reference}"),
    ];
    let mut args = vec!["-n", NAMESPACE, "set", "image", "daemonset", DAEMONSET];
    args.extend(set.iter().map(String::as_str));
    kubectl.run(&args)?;
    deploy::wait_rollout(kubectl, Duration::from_secs(240))?;
    let took = began.elapsed();
    // The rollout is done once every new pod is available; the old ones
    // are deleted right after.
    let t0 = Instant::now();
    loop {
        let pods = deploy::weft_pods(kubectl)?;
        let new = pods.iter().filter(|p| p.image == reference).count();
        if new == pods.len() && new == cluster.nodes().len() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let images = images_by_node(cluster)?;
            bail!("after the rollout weft's pods run {images:?}, not {reference} everywhere");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The manifests' maxSurge and --take-over: each new weftd took its node
    // over from the old one, which was still running.
    for pod in deploy::weft_pods(kubectl)? {
        let log = kubectl.run(&["-n", NAMESPACE, "logs", &pod.name, "-c", "kube-flannel"])?;
        if !log.contains("took the node over") {
            bail!(
                "weft's new pod on {} did not take the node over from the old one:\n{log}",
                pod.node
            );
        }
    }
    Ok(took)
}

/// Deletes weft's pod on `node` and waits until the DaemonSet's new pod
/// there is ready. Returns how long that took.
pub fn delete_weft_pod(cluster: &Cluster, node: &str) -> anyhow::Result<Duration> {
    let kubectl = cluster.kubectl()?;
    let old = deploy::weft_pods(kubectl)?
        .into_iter()
        .find(|p| p.node == node)
        .with_context(|| format!("no weft pod on {node}"))?;
    let began = Instant::now();
    kubectl.run(&["-n", NAMESPACE, "delete", "pod", &old.name, "--wait=true"])?;
    wait_for(
        &format!("a new ready weft pod on {node}"),
        Duration::from_secs(120),
        || {
            Ok(deploy::weft_pods(kubectl)?
                .iter()
                .any(|p| p.node == node && p.name != old.name && p.ready))
        },
    )?;
    Ok(began.elapsed())
}

/// The route to `cidr` in `node`'s main table, if any.
fn route_to(cluster: &Cluster, node: &str, cidr: &str) -> anyhow::Result<String> {
    Ok(cluster
        .node(node)?
        .ns
        .ip(&["route", "show", cidr])?
        .trim()
        .to_string())
}

/// What a node joining and leaving cost.
#[derive(Debug, Clone)]
pub struct JoinLeave {
    /// Node started → Ready (weft's pod running there).
    pub ready: Duration,
    /// Its web pod reached from every other node's pod and back.
    pub reached: bool,
    /// Node deleted → its routes gone from every other node.
    pub routes_gone: Duration,
}

/// A node joins at run time (kubelet registers, the DaemonSet lands, its
/// pod is reached from every other pod and reaches them); then it leaves
/// (stopped, Node deleted) and its route disappears from every node.
pub fn join_and_leave(cluster: &mut Cluster, spec: NodeSpec) -> anyhow::Result<JoinLeave> {
    let name = spec.name.clone();
    let began = Instant::now();
    cluster.add_node(spec)?;
    let kubectl = cluster.kubectl()?.clone();
    wait_for(
        &format!("{name} Ready with weft's pod"),
        Duration::from_secs(120),
        || {
            let node = kubectl.json(&["get", "node", &name])?;
            let pod_ready = deploy::weft_pods(&kubectl)?
                .iter()
                .any(|p| p.node == name && p.ready);
            Ok(deploy::is_ready(&node) && pod_ready)
        },
    )?;
    let ready = began.elapsed();
    let image = cluster.images().workload.reference.clone();
    workload::create_web(&kubectl, std::slice::from_ref(&name), &image)?;
    let pods = checks::web_pods(cluster)?;
    let newcomer = pods
        .iter()
        .find(|p| p.pod.node == name)
        .context("no web pod on the new node")?;
    let cidr = checks::pod_cidrs(cluster)?
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| c)
        .filter(|c| !c.is_empty())
        .context("the new node has no podCIDR")?;
    let mut reached = true;
    for other in pods.iter().filter(|p| p.pod.node != name) {
        let there = http_get(other.command("curl"), newcomer.pod.ip, WEB_PORT);
        let back = http_get(newcomer.command("curl"), other.pod.ip, WEB_PORT);
        let ok = there.as_deref().ok() == Some(newcomer.pod.name.as_str())
            && back.as_deref().ok() == Some(other.pod.name.as_str());
        if !ok {
            eprintln!(
                "{} ↔ {}: there {there:?}, back {back:?}",
                other.pod.name, newcomer.pod.name
            );
        }
        reached &= ok;
    }
    kubectl.run(&["delete", "pod", &format!("web-{name}"), "--wait=false"])?;
    kubectl.run(&["delete", "service", &format!("web-{name}")])?;
    let others: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.spec.name.clone())
        .filter(|n| *n != name)
        .collect();
    for o in &others {
        if route_to(cluster, o, &cidr)?.is_empty() {
            bail!("{o} had no route to {name}'s {cidr} before it left");
        }
    }
    let t = Instant::now();
    cluster.remove_node(&name)?;
    wait_for(
        &format!("{name}'s route {cidr} gone everywhere"),
        Duration::from_secs(30),
        || {
            for o in &others {
                if !route_to(cluster, o, &cidr)?.is_empty() {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    Ok(JoinLeave {
        ready,
        reached,
        routes_gone: t.elapsed(),
    })
}

/// What a node holds for its pods: host-local reservations, weft-cni's
/// saved files, veth interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// IPs reserved in host-local's directory for network `cbr0`.
    pub reservations: Vec<Ipv4Addr>,
    /// Files under weft-cni's data dir (one per pod sandbox).
    pub saved: Vec<String>,
    /// veth interfaces in the node.
    pub veths: usize,
}

/// Reads [`PodState`] of every node.
pub fn pod_state(cluster: &Cluster) -> anyhow::Result<BTreeMap<String, PodState>> {
    let mut out = BTreeMap::new();
    for n in cluster.nodes() {
        let list = |path: &str| -> Vec<String> {
            let Some(dir) = n.host_path(path) else {
                return Vec::new();
            };
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names
        };
        let reservations = list("/var/lib/cni/networks/cbr0")
            .iter()
            .filter_map(|f| f.parse().ok())
            .collect();
        let saved = list("/var/lib/cni/flannel")
            .into_iter()
            .filter(|f| !f.starts_with('.'))
            .collect();
        let veths =
            n.ns.ip(&["-o", "link", "show", "type", "veth"])?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count();
        out.insert(
            n.spec.name.clone(),
            PodState {
                reservations,
                saved,
                veths,
            },
        );
    }
    Ok(out)
}

/// What pod churn left.
#[derive(Debug, Clone)]
pub struct Churn {
    /// Pods created and deleted.
    pub pods: usize,
    /// Created → all running.
    pub up: Duration,
    /// Deleted → every node back to its state before.
    pub cleaned: Duration,
    /// Per node, what differs from before (empty: nothing leaked).
    pub leaks: Vec<String>,
}

/// Creates `count` pods across the nodes, waits until they run, deletes
/// them, and compares every node's [`PodState`] with what it was before.
pub fn churn(cluster: &Cluster, count: usize) -> anyhow::Result<Churn> {
    let kubectl = cluster.kubectl()?;
    let before = pod_state(cluster)?;
    let nodes: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.spec.name.clone())
        .collect();
    let yaml =
        workload::sleepers_yaml("churn", count, &nodes, &cluster.images().workload.reference);
    let began = Instant::now();
    kubectl.run_with_input(&["apply", "-f", "-"], Some(&yaml))?;
    workload::wait_pods(kubectl, "app=churn", count, Duration::from_secs(300))?;
    let up = began.elapsed();
    let during = pod_state(cluster)?;
    let added: usize = during
        .iter()
        .map(|(n, s)| s.saved.len().saturating_sub(before[n].saved.len()))
        .sum();
    if added != count {
        bail!("{count} pods running but {added} new saved files under weft-cni's data dir");
    }
    let t = Instant::now();
    kubectl.run(&[
        "delete",
        "pods",
        "-l",
        "app=churn",
        "--wait=true",
        "--timeout=300s",
    ])?;
    let mut after = BTreeMap::new();
    let settled = wait_for(
        "every node back to its pods' state",
        Duration::from_secs(60),
        || {
            after = pod_state(cluster)?;
            Ok(after == before)
        },
    );
    let cleaned = t.elapsed();
    let mut leaks = Vec::new();
    if settled.is_err() {
        for (n, b) in &before {
            if let Some(a) = after.get(n) {
                if a != b {
                    leaks.push(format!("{n}: before {b:?}, after {a:?}"));
                }
            }
        }
    }
    Ok(Churn {
        pods: count,
        up,
        cleaned,
        leaks,
    })
}
