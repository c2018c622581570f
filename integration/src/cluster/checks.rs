//! The cluster's connectivity matrix: pod ↔ pod across nodes, hostNetwork
//! → pod, pod → ClusterIP Service with its endpoint on another node,
//! NodePort from the outside host, and pod → outside host (which must see
//! the node's address). Each probe is an HTTP GET with the machine's curl,
//! run in the source's network namespace; the answer names who served it.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use weft_netns::{Netns, NsTask};

use super::workload::{self, http_get, PodInfo, PodNet, NODE_PORT, SERVICE_PORT, WEB_PORT};
use super::{Cluster, OUTSIDE_IP};

/// The outside host's port that answers with the caller's address.
pub const ECHO_PORT: u16 = 8080;

/// One probe and its outcome.
#[derive(Debug, Clone)]
pub struct Check {
    /// Which path (e.g. `pod → ClusterIP`).
    pub kind: &'static str,
    /// From where to where.
    pub what: String,
    /// What was expected.
    pub expected: String,
    /// What came back (or the error).
    pub got: String,
}

impl Check {
    /// Whether it answered as expected.
    pub fn ok(&self) -> bool {
        self.got == self.expected
    }
}

/// Every probe of one run.
#[derive(Debug, Clone, Default)]
pub struct Matrix {
    /// In order.
    pub checks: Vec<Check>,
}

impl Matrix {
    /// Whether every probe passed.
    pub fn all_ok(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(Check::ok)
    }

    /// The failed probes.
    pub fn failures(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.ok()).collect()
    }

    /// One line per probe, grouped by kind.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut last = "";
        for c in &self.checks {
            if c.kind != last {
                out.push_str(&format!("  {}:\n", c.kind));
                last = c.kind;
            }
            let mark = if c.ok() { "ok  " } else { "FAIL" };
            let detail = if c.ok() {
                c.got.clone()
            } else {
                format!("expected {}, got {}", c.expected, c.got)
            };
            out.push_str(&format!("    {mark} {:<48} {detail}\n", c.what));
        }
        out
    }

    fn push(
        &mut self,
        kind: &'static str,
        what: String,
        expected: String,
        got: anyhow::Result<String>,
    ) {
        let got = got.unwrap_or_else(|e| format!("error: {e:#}"));
        self.checks.push(Check {
            kind,
            what,
            expected,
            got,
        });
    }
}

/// A server on the outside host that answers each HTTP request with the
/// address it came from; stops when dropped.
pub struct SourceEcho {
    stop: Arc<AtomicBool>,
    task: Option<NsTask<()>>,
}

impl SourceEcho {
    /// Listens on the outside host's address, port [`ECHO_PORT`].
    pub fn start(outside: &Netns) -> anyhow::Result<SourceEcho> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let task = outside.spawn_task(move || async move {
            let listener = match TcpListener::bind((OUTSIDE_IP, ECHO_PORT)) {
                Ok(l) => l,
                Err(e) => return drop(ready_tx.send(Err(e.to_string()))),
            };
            let _ = listener.set_nonblocking(true);
            let _ = ready_tx.send(Ok(()));
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf);
                        let body = format!("{}\n", peer.ip());
                        let _ = write!(
                            s,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(SourceEcho {
                stop,
                task: Some(task),
            }),
            Ok(Err(e)) => anyhow::bail!("outside echo server: {e}"),
            Err(_) => anyhow::bail!("outside echo server did not start"),
        }
    }
}

impl Drop for SourceEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            let _ = t.join();
        }
    }
}

fn curl_in_netns(ns: &Netns) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", ns.path().display()))
        .args(["--", "curl"]);
    c
}

/// A probe through a Service: kube-proxy on the source node may not have
/// seen the endpoint yet (it rejects a Service without one), so a refused
/// connection is retried for up to 5 s; the last outcome counts.
fn through_kube_proxy(mut probe: impl FnMut() -> anyhow::Result<String>) -> anyhow::Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = probe();
        if got.is_ok() || std::time::Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The web pods of the cluster's nodes, with a way into each.
pub fn web_pods(cluster: &Cluster) -> anyhow::Result<Vec<PodNet>> {
    let kubectl = cluster.kubectl()?;
    let pods = workload::wait_pods(
        kubectl,
        "app=web",
        cluster.nodes().len(),
        Duration::from_secs(120),
    )?;
    pods.iter()
        .map(|p| {
            let node = cluster.node(&p.node)?;
            PodNet::find(p, node.cgroup_root())
        })
        .collect()
}

/// Runs the whole matrix; see the module docs.
pub fn run(cluster: &Cluster) -> anyhow::Result<Matrix> {
    let kubectl = cluster.kubectl()?;
    let pods = web_pods(cluster)?;
    let mut m = Matrix::default();
    let by_node =
        |node: &str| -> Option<&PodInfo> { pods.iter().map(|p| &p.pod).find(|p| p.node == node) };
    for from in &pods {
        for to in &pods {
            if from.pod.node == to.pod.node {
                continue;
            }
            m.push(
                "pod → pod across nodes",
                format!("{} → {} ({})", from.pod.name, to.pod.name, to.pod.ip),
                to.pod.name.clone(),
                http_get(from.command("curl"), to.pod.ip, WEB_PORT),
            );
        }
    }
    for node in cluster.nodes() {
        for to in &pods {
            if to.pod.node == node.spec.name {
                continue;
            }
            m.push(
                "hostNetwork → pod",
                format!("{} → {} ({})", node.spec.name, to.pod.name, to.pod.ip),
                to.pod.name.clone(),
                http_get(curl_in_netns(&node.ns), to.pod.ip, WEB_PORT),
            );
        }
    }
    // Each node's Service, its address looked up once.
    let mut services = Vec::new();
    for node in cluster.nodes() {
        let service = format!("web-{}", node.spec.name);
        workload::wait_endpoints(kubectl, &service, 1, Duration::from_secs(60))?;
        let ip = workload::cluster_ip(kubectl, &service)?;
        services.push((node, service, ip));
    }
    for from in &pods {
        for (node, service, ip) in &services {
            if node.spec.name == from.pod.node {
                continue;
            }
            let (service, ip) = (service, *ip);
            let expected = by_node(&node.spec.name)
                .map(|p| p.name.clone())
                .unwrap_or_default();
            m.push(
                "pod → ClusterIP (endpoint on another node)",
                format!("{} → {service} ({ip}:{SERVICE_PORT})", from.pod.name),
                expected,
                through_kube_proxy(|| http_get(from.command("curl"), ip, SERVICE_PORT)),
            );
        }
    }
    let outside = cluster.outside()?;
    workload::wait_endpoints(kubectl, "web", pods.len(), Duration::from_secs(60))?;
    let names: Vec<String> = pods.iter().map(|p| p.pod.name.clone()).collect();
    for node in cluster.nodes() {
        let got = through_kube_proxy(|| http_get(curl_in_netns(outside), node.spec.ip, NODE_PORT));
        // Any web pod may answer: the NodePort spreads over all of them.
        let got = got.map(|name| {
            if names.contains(&name) {
                "a web pod".to_string()
            } else {
                name
            }
        });
        m.push(
            "outside → NodePort",
            format!("outside → {}:{NODE_PORT}", node.spec.ip),
            "a web pod".into(),
            got,
        );
    }
    let _echo = SourceEcho::start(outside).context("the outside host's echo server")?;
    for from in &pods {
        let node = cluster.node(&from.pod.node)?;
        m.push(
            "pod → outside (source seen by the outside host)",
            format!("{} → {OUTSIDE_IP}:{ECHO_PORT}", from.pod.name),
            node.spec.ip.to_string(),
            http_get(from.command("curl"), OUTSIDE_IP, ECHO_PORT),
        );
    }
    Ok(m)
}

/// The pod CIDR of each node, from the API.
pub fn pod_cidrs(cluster: &Cluster) -> anyhow::Result<Vec<(String, String)>> {
    let nodes = cluster.kubectl()?.json(&["get", "nodes"])?;
    Ok(nodes["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|n| {
            (
                n["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                n["spec"]["podCIDR"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect())
}

/// Packet counters of two rules on `node`, read with the iptables flavor
/// `save` (`iptables-legacy-save` or `iptables-nft-save`): kube-proxy's
/// MASQUERADE for its mark `0x4000` (in `KUBE-POSTROUTING`) and weft's
/// RETURN for that mark (first rule of `FLANNEL-POSTRTG`).
pub fn mark_counters(cluster: &Cluster, node: &str, save: &str) -> anyhow::Result<(u64, u64)> {
    let n = cluster.node(node)?;
    let text = n.ns.exec(&[save, "-c", "-t", "nat"])?;
    let packets = |chain: &str, needle: &str| -> anyhow::Result<u64> {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("-A {chain} ")) && l.contains(needle))
            .with_context(|| format!("{node}: no `{needle}` rule in {chain} ({save})"))?;
        // `[packets:bytes] -A …`
        line.strip_prefix('[')
            .and_then(|r| r.split(':').next())
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("{node}: no counters on {line}"))
    };
    Ok((
        packets("KUBE-POSTROUTING", "-j MASQUERADE")?,
        packets("FLANNEL-POSTRTG", "--mark 0x4000/0x4000")?,
    ))
}
