//! The test workload, made through the API: one web pod per node (busybox
//! `httpd` on 8080 answering its own name), a Service per node whose only
//! endpoint is that node's pod, and a NodePort Service over all of them;
//! and a way into a pod's network namespace (through its cgroup) for
//! probes run with the machine's tools.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};

use super::control::Kubectl;
use super::wait_for;

/// The web pods' port.
pub const WEB_PORT: u16 = 8080;
/// The Services' port.
pub const SERVICE_PORT: u16 = 80;
/// The NodePort of Service `web`.
pub const NODE_PORT: u16 = 30080;

/// A pod of the workload.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// Its name.
    pub name: String,
    /// Its node.
    pub node: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its uid (names its cgroup).
    pub uid: String,
}

/// The web pod and its Service for `node`, as YAML.
pub fn web_yaml(node: &str, image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web-{node}
  namespace: default
  labels: {{app: web, node: {node}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {image}
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "mkdir -p /www && echo $POD_NAME > /www/index.html && exec httpd -f -p {WEB_PORT} -h /www"]
    env:
    - name: POD_NAME
      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
    ports: [{{containerPort: {WEB_PORT}}}]
---
apiVersion: v1
kind: Service
metadata:
  name: web-{node}
  namespace: default
spec:
  selector: {{app: web, node: {node}}}
  ports: [{{port: {SERVICE_PORT}, targetPort: {WEB_PORT}}}]
"#
    )
}

/// Service `web`: every web pod, NodePort [`NODE_PORT`].
pub fn node_port_yaml() -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: {SERVICE_PORT}, targetPort: {WEB_PORT}, nodePort: {NODE_PORT}}}]
"#
    )
}

/// `count` sleeping pods named `<prefix>-<i>`, spread over `nodes` in turn.
pub fn sleepers_yaml(prefix: &str, count: usize, nodes: &[String], image: &str) -> String {
    let mut y = String::new();
    for i in 0..count {
        let node = &nodes[i % nodes.len().max(1)];
        let _ = write!(
            y,
            r#"---
apiVersion: v1
kind: Pod
metadata:
  name: {prefix}-{i}
  namespace: default
  labels: {{app: {prefix}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  containers:
  - name: sleep
    image: {image}
    imagePullPolicy: Never
    command: ["/bin/sleep", "3600"]
"#
        );
    }
    y
}

/// Creates the web pods and Services for `nodes`.
pub fn create_web(kubectl: &Kubectl, nodes: &[String], image: &str) -> anyhow::Result<()> {
    let mut y = String::new();
    for n in nodes {
        y.push_str("---\n");
        y.push_str(&web_yaml(n, image));
    }
    y.push_str("---\n");
    y.push_str(&node_port_yaml());
    kubectl
        .run_with_input(&["apply", "-f", "-"], Some(&y))
        .map(drop)
}

/// Waits until the pods labelled `selector` are `count` and all Running
/// with an address; returns them.
pub fn wait_pods(
    kubectl: &Kubectl,
    selector: &str,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<PodInfo>> {
    let mut found = Vec::new();
    wait_for(&format!("{count} running pods {selector}"), timeout, || {
        found = pods(kubectl, selector)?;
        Ok(found.len() == count)
    })?;
    Ok(found)
}

/// The Running pods labelled `selector` that have an address.
pub fn pods(kubectl: &Kubectl, selector: &str) -> anyhow::Result<Vec<PodInfo>> {
    let list = kubectl.json(&["get", "pods", "-n", "default", "-l", selector])?;
    let mut out = Vec::new();
    for p in list["items"].as_array().cloned().unwrap_or_default() {
        if p["status"]["phase"] != "Running" || p["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let Some(ip) = p["status"]["podIP"].as_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        out.push(PodInfo {
            name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
            node: p["spec"]["nodeName"].as_str().unwrap_or_default().into(),
            ip,
            uid: p["metadata"]["uid"].as_str().unwrap_or_default().into(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A Service's cluster IP.
pub fn cluster_ip(kubectl: &Kubectl, service: &str) -> anyhow::Result<Ipv4Addr> {
    let s = kubectl.json(&["get", "service", "-n", "default", service])?;
    s["spec"]["clusterIP"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .with_context(|| format!("service {service} has no cluster IP"))
}

/// Waits until Service `service` has `count` ready endpoints.
pub fn wait_endpoints(
    kubectl: &Kubectl,
    service: &str,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_for(&format!("{count} endpoints of {service}"), timeout, || {
        let e = kubectl.json(&["get", "endpoints", "-n", "default", service])?;
        let ready: usize = e["subsets"]
            .as_array()
            .map(|ss| {
                ss.iter()
                    .map(|s| s["addresses"].as_array().map_or(0, Vec::len))
                    .sum()
            })
            .unwrap_or(0);
        Ok(ready == count)
    })
    .map(drop)
}

/// A pod's network namespace, reached through a process in its cgroup.
#[derive(Debug, Clone)]
pub struct PodNet {
    /// The pod.
    pub pod: PodInfo,
    netns: PathBuf,
}

impl PodNet {
    /// Finds a process of `pod` in the node cgroup `cgroup_root` (the
    /// cgroup kubelet names `pod<uid>`) and takes its network namespace.
    pub fn find(pod: &PodInfo, cgroup_root: &str) -> anyhow::Result<PodNet> {
        let pid = pod_pid(cgroup_root, &pod.uid)
            .with_context(|| format!("no process of pod {} found", pod.name))?;
        Ok(PodNet {
            pod: pod.clone(),
            netns: PathBuf::from(format!("/proc/{pid}/ns/net")),
        })
    }

    /// `program` run in the pod's network namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(program);
        c
    }
}

fn pod_pid(cgroup_root: &str, uid: &str) -> Option<u32> {
    let dir_name = format!("pod{uid}");
    let base = PathBuf::from("/sys/fs/cgroup/pids").join(cgroup_root);
    let base = if base.is_dir() {
        base
    } else {
        PathBuf::from("/sys/fs/cgroup").join(cgroup_root)
    };
    find_dir(&base, &dir_name, 4).and_then(|d| first_pid(&d))
}

fn find_dir(dir: &std::path::Path, name: &str, depth: u8) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if e.file_name().to_string_lossy() == name {
            return Some(e.path());
        }
        if depth > 0 {
            if let Some(found) = find_dir(&e.path(), name, depth - 1) {
                return Some(found);
            }
        }
    }
    None
}

/// The first pid in the pod's cgroup tree (its sandbox or a container).
fn first_pid(dir: &std::path::Path) -> Option<u32> {
    let own = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    if let Some(pid) = own.lines().find_map(|l| l.trim().parse().ok()) {
        return Some(pid);
    }
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| first_pid(&e.path()))
}

/// `GET http://<ip>:<port>/` with `curl` (a command running curl in some
/// namespace; 3 s); the body, trimmed.
pub fn http_get(mut curl: Command, ip: Ipv4Addr, port: u16) -> anyhow::Result<String> {
    let out = curl
        .args(["-sS", "--max-time", "3"])
        .arg(format!("http://{ip}:{port}/"))
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run curl")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
