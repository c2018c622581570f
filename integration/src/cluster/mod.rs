//! A real Kubernetes cluster on one machine, for `just cluster` and the
//! cluster end-to-end tests: the control plane (kube-apiserver + etcd,
//! kube-controller-manager, kube-scheduler) on a switch namespace, N nodes
//! each running containerd, kubelet and kube-proxy in their own network,
//! mount and UTS namespaces, and an outside host. Images are made locally
//! (`image`) and imported into every node's containerd; weft is deployed
//! from `manifests/` through the API, as a user does it.
//!
//! Everything lives in namespaces, cgroups and a state directory that the
//! cluster creates, and is removed on drop, on Ctrl-C (see
//! [`install_interrupt_handler`]) or by the next run's sweep when a run
//! died hard.

pub mod bins;
pub mod checks;
pub mod control;
pub mod deploy;
pub mod image;
pub mod node;
mod pki;
mod proc;
mod reap;
pub mod scenario;
mod sweep;
pub mod workload;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use weft_netns::{Netns, Switch};

pub use bins::KubeBins;
pub use control::{ControlPlane, Kubectl};
pub use image::OciArchive;
pub use node::{ClusterNode, Firewall, NodeContext, NodeSpec, ProxyMode};
pub use proc::wait_for;
pub use sweep::{
    install_interrupt_handler, sweep_dir, sweep_stale, wait_for_interrupt, STATE_PREFIX,
};

/// The switch's address, where the API server listens.
pub const API_IP: Ipv4Addr = Ipv4Addr::new(172, 20, 0, 1);
/// The switch network's prefix length.
pub const PREFIX: u8 = 24;
/// The outside host's address.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(172, 20, 0, 100);
/// The image reference of weft's manifests.
pub const MANIFEST_IMAGE: &str = "localhost/weft:0.1.0";

/// The address of the `n`th node (1-based).
pub fn node_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 20, 0, 10 + n)
}

/// The default nodes: node1 with iptables-legacy and kube-proxy in
/// iptables mode, node2 with iptables-nft and kube-proxy in iptables mode,
/// node3 with kube-proxy in nftables mode; more nodes like node2.
pub fn default_nodes(count: u8) -> Vec<NodeSpec> {
    (1..=count)
        .map(|n| {
            let (firewall, proxy) = match n {
                1 => (Firewall::Legacy, ProxyMode::Iptables),
                3 => (Firewall::Nft, ProxyMode::Nftables),
                _ => (Firewall::Nft, ProxyMode::Iptables),
            };
            NodeSpec {
                name: format!("node{n}"),
                ip: node_ip(n),
                firewall,
                proxy,
            }
        })
        .collect()
}

/// What to build.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The nodes.
    pub nodes: Vec<NodeSpec>,
    /// `--kube-dir`: where the Kubernetes binaries are (default
    /// `../shared/kube`).
    pub kube_dir: Option<PathBuf>,
    /// Where weftd and weft-cni were built (e.g. `target/release`).
    pub weft_bin_dir: PathBuf,
    /// weft's image reference.
    pub weft_image: String,
}

/// The images every node has.
#[derive(Debug, Clone)]
pub struct Images {
    /// The sandbox ("pause") image.
    pub pause: OciArchive,
    /// The workload image (busybox).
    pub workload: OciArchive,
    /// weft's image.
    pub weft: OciArchive,
}

impl Images {
    /// Builds (or takes from the cache) the three images.
    pub fn build(weft_reference: &str, bin_dir: &Path) -> anyhow::Result<Images> {
        Ok(Images {
            pause: image::pause_image().context("the pause image")?,
            workload: image::workload_image().context("the workload image")?,
            weft: image::weft_image(weft_reference, bin_dir).context("weft's image")?,
        })
    }
}

/// How long a cluster phase took.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Images built or taken from the cache.
    pub images: Duration,
    /// The control plane up.
    pub control_plane: Duration,
    /// Nodes started (containerd with images, kubelet, kube-proxy).
    pub nodes: Duration,
}

/// A running cluster; see the module docs. Dropping it removes everything.
pub struct Cluster {
    nodes: Vec<ClusterNode>,
    outside: Option<Netns>,
    control: Option<ControlPlane>,
    switch: Option<Switch>,
    images: Images,
    bins: KubeBins,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    unique: String,
    /// How long each phase took.
    pub timings: Timings,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir_path)
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

impl Cluster {
    /// Builds the images, starts the control plane, the outside host and
    /// the nodes. Nodes are NotReady until weft's DaemonSet installs the
    /// CNI configuration ([`deploy`]).
    pub fn up(spec: &ClusterSpec) -> anyhow::Result<Cluster> {
        if let Err(reason) = weft_netns::available() {
            bail!("cannot create network namespaces: {reason}");
        }
        sweep::sweep_stale();
        let bins = KubeBins::locate(spec.kube_dir.as_deref())?;
        let t0 = Instant::now();
        let images = Images::build(&spec.weft_image, &spec.weft_bin_dir)?;
        let images_time = t0.elapsed();
        let unique = weft_netns::prefix().trim_end_matches('-').to_string();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{STATE_PREFIX}{}-", std::process::id()))
            .tempdir()
            .context("cannot create the cluster's directory")?;
        let dir_path = dir.path().canonicalize()?;
        sweep::register(&dir_path, &unique);
        let mut cluster = Cluster {
            nodes: Vec::new(),
            outside: None,
            control: None,
            switch: None,
            images,
            bins,
            dir: Some(dir),
            dir_path,
            unique,
            timings: Timings {
                images: images_time,
                ..Timings::default()
            },
        };
        let t1 = Instant::now();
        let switch = Switch::new("switch")?;
        switch
            .netns()
            .add_addr(Switch::BRIDGE, &format!("{API_IP}/{PREFIX}"))?;
        let control = ControlPlane::start(
            switch.netns(),
            API_IP,
            &cluster.bins,
            &cluster.dir_path.join("control-plane"),
        )?;
        cluster.control = Some(control);
        let outside = Netns::new("outside")?;
        switch.attach(&outside, "eth0", &format!("{OUTSIDE_IP}/{PREFIX}"))?;
        cluster.outside = Some(outside);
        cluster.switch = Some(switch);
        cluster.grant_node_rights()?;
        cluster.timings.control_plane = t1.elapsed();
        let t2 = Instant::now();
        for node in &spec.nodes {
            cluster.add_node(node.clone())?;
        }
        cluster.timings.nodes = t2.elapsed();
        Ok(cluster)
    }

    /// kubelets authenticate as `system:node:<name>` (group `system:nodes`)
    /// and are authorised by the Node authorizer; nothing else is needed.
    /// kube-proxy, the controller-manager and the scheduler use their
    /// built-in bindings. This only waits for the API to have them.
    fn grant_node_rights(&self) -> anyhow::Result<()> {
        let kubectl = self.kubectl()?;
        wait_for(
            "the built-in RBAC bindings",
            Duration::from_secs(30),
            || {
                Ok(kubectl
                    .run(&["get", "clusterrolebinding", "system:node-proxier"])
                    .is_ok())
            },
        )
        .map(drop)
    }

    /// Starts one more node (it joins the running cluster).
    pub fn add_node(&mut self, spec: NodeSpec) -> anyhow::Result<&ClusterNode> {
        let control = self.control.as_ref().context("no control plane")?;
        let switch = self.switch.as_ref().context("no switch")?;
        let images = [
            self.images.pause.clone(),
            self.images.workload.clone(),
            self.images.weft.clone(),
        ];
        let ctx = NodeContext {
            bins: &self.bins,
            api_url: control.url(),
            pki: control.pki_dir(),
            gateway: API_IP,
            prefix: PREFIX,
            images: &images,
            pause: &self.images.pause.reference,
            unique: &self.unique,
        };
        let node = ClusterNode::start(spec, switch, &self.dir_path.join("nodes"), &ctx)?;
        self.nodes.push(node);
        self.nodes.last().context("node list empty")
    }

    /// Stops a node and deletes its Node object.
    pub fn remove_node(&mut self, name: &str) -> anyhow::Result<()> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.spec.name == name)
            .with_context(|| format!("no node {name}"))?;
        let mut node = self.nodes.remove(i);
        node.stop();
        drop(node);
        self.kubectl()?
            .run(&["delete", "node", name, "--wait=true"])
            .map(drop)
    }

    /// `kubectl` as admin.
    pub fn kubectl(&self) -> anyhow::Result<&Kubectl> {
        Ok(self.control.as_ref().context("no control plane")?.kubectl())
    }

    /// The nodes.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// One node by name.
    pub fn node(&self, name: &str) -> anyhow::Result<&ClusterNode> {
        self.nodes
            .iter()
            .find(|n| n.spec.name == name)
            .with_context(|| format!("no node {name}"))
    }

    /// The outside host.
    pub fn outside(&self) -> anyhow::Result<&Netns> {
        self.outside.as_ref().context("no outside host")
    }

    /// The switch namespace (API server, controller-manager, scheduler).
    pub fn switch(&self) -> anyhow::Result<&Netns> {
        Ok(self.switch.as_ref().context("no switch")?.netns())
    }

    /// The images every node has.
    pub fn images(&self) -> &Images {
        &self.images
    }

    /// The cluster's state directory.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// Fails with the last log lines of any component that exited.
    pub fn check_processes(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.control.as_mut() {
            c.check()?;
        }
        for n in &mut self.nodes {
            n.check()?;
        }
        Ok(())
    }

    /// Applies weft's `manifest` with `image` and waits until its pods run
    /// on every node and every node is Ready; how long that took.
    pub fn deploy_weft(&self, manifest: deploy::Manifest, image: &str) -> anyhow::Result<Duration> {
        let began = Instant::now();
        let kubectl = self.kubectl()?;
        deploy::apply(kubectl, manifest, image)?;
        wait_for(
            "weft's DaemonSet scheduled",
            Duration::from_secs(60),
            || {
                let pods = deploy::weft_pods(kubectl)?;
                Ok(pods.len() == self.nodes.len())
            },
        )?;
        deploy::wait_rollout(kubectl, Duration::from_secs(180))?;
        deploy::wait_nodes_ready(kubectl, Duration::from_secs(120))?;
        Ok(began.elapsed())
    }

    /// What a person looks at when something is wrong: nodes, pods,
    /// recent events, the DaemonSet, and the last lines of each node
    /// component's log.
    pub fn diagnose(&self) -> String {
        let mut out = String::new();
        if let Ok(k) = self.kubectl() {
            for args in [
                &["get", "nodes", "-o", "wide"][..],
                &["get", "pods", "-A", "-o", "wide"][..],
                &["-n", deploy::NAMESPACE, "describe", "ds", deploy::DAEMONSET][..],
                &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
            ] {
                out.push_str(&format!("$ kubectl {}\n", args.join(" ")));
                match k.run(args) {
                    Ok(text) => out.push_str(&tail(&text, 40)),
                    Err(e) => out.push_str(&format!("{e:#}\n")),
                }
            }
        }
        if let Some(c) = &self.control {
            for log in ["controller-manager.log", "scheduler.log"] {
                let text = std::fs::read_to_string(c.dir().join(log)).unwrap_or_default();
                out.push_str(&format!("--- {log}\n{}", tail(&text, 12)));
            }
        }
        for n in &self.nodes {
            for log in ["containerd.log", "kubelet.log", "kube-proxy.log"] {
                let text = std::fs::read_to_string(n.dir().join(log)).unwrap_or_default();
                out.push_str(&format!("--- {} {log}\n{}", n.spec.name, tail(&text, 12)));
            }
        }
        out
    }

    /// The NAT mode weft chose on `node` and why, from its log.
    pub fn nat_mode(&self, node: &str) -> anyhow::Result<String> {
        let log = deploy::weft_log(self.kubectl()?, node)?;
        log.lines()
            .rev()
            .find(|l| l.contains("NAT mode"))
            .map(str::to_string)
            .with_context(|| format!("weft's log on {node} names no NAT mode"))
    }

    /// Imports `image` into every node.
    pub fn import_everywhere(&self, image: &OciArchive) -> anyhow::Result<()> {
        for n in &self.nodes {
            n.import(image)
                .with_context(|| format!("import on {}", n.spec.name))?;
        }
        Ok(())
    }

    /// Removes everything (also on drop): kubelets first, then each node,
    /// the outside host, the control plane, the switch, the directory.
    pub fn down(mut self) {
        self.teardown();
    }

    fn teardown(&mut self) {
        for n in &mut self.nodes {
            n.stop_kubelet();
        }
        for mut n in self.nodes.drain(..) {
            n.stop();
        }
        self.outside = None;
        self.control = None;
        self.switch = None;
        sweep::unregister(&self.dir_path);
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}
