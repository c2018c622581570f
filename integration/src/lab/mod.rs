//! The full lab: an underlay switch, three nodes running the real `weftd`,
//! a Kubernetes API (the real kube-apiserver where ../shared/kube has it,
//! else weft's embedded Node API server), pods created through `weft-cni`
//! with a flannel conflist, and an outside host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use weft_nat::NatMode;
use weft_netns::probe::seen_source;
use weft_netns::{Netns, Switch};
use weft_overlay::Family;

mod api;
mod cni;

pub use api::{Api, ApiChoice};
use cni::{cni, pod_conf, result_ips, save_private};

use crate::flannel_node::{peer_of, FlannelNode, Peer};
use crate::kube_api::RealApiServer;
use crate::node_api::NodeApi;
use crate::topology::{cluster_network, NodeSpec};
use crate::weftd::{health_status, net_conf_families, Weftd};

/// The API server's address on the switch.
pub const API_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
/// The outside host's address.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 100);
/// The outside host's IPv6 address.
pub const OUTSIDE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x100);

/// The outside host's address of `family`.
pub fn outside_ip(family: Family) -> IpAddr {
    match family {
        Family::V4 => OUTSIDE_IP.into(),
        Family::V6 => OUTSIDE_IP6.into(),
    }
}

/// The lab's pod network: IPv4 (flannel's default), IPv6 only, or dual-stack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IpFamily {
    /// IPv4 only.
    #[default]
    Ipv4,
    /// IPv6 only (`EnableIPv4: false`); the underlay keeps its IPv4
    /// addresses for the API server.
    Ipv6,
    /// Both.
    Dual,
}

impl IpFamily {
    /// Every choice.
    pub const ALL: [IpFamily; 3] = [IpFamily::Ipv4, IpFamily::Ipv6, IpFamily::Dual];

    /// Its families, IPv4 first.
    pub fn families(self) -> &'static [Family] {
        match self {
            IpFamily::Ipv4 => &[Family::V4],
            IpFamily::Ipv6 => &[Family::V6],
            IpFamily::Dual => &[Family::V4, Family::V6],
        }
    }

    /// `ipv4`, `ipv6`, `dual`, as `--ip-family` spells it.
    pub fn name(self) -> &'static str {
        match self {
            IpFamily::Ipv4 => "ipv4",
            IpFamily::Ipv6 => "ipv6",
            IpFamily::Dual => "dual",
        }
    }
}

impl std::fmt::Display for IpFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for IpFamily {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IpFamily::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown IP family {s:?} (want ipv4, ipv6 or dual)"))
    }
}

/// The data plane between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// VXLAN (flannel's default).
    Vxlan,
    /// host-gw.
    HostGw,
    /// VXLAN with DirectRouting.
    VxlanDirect,
    /// UDP: flannel0 and weft's forwarder.
    Udp,
}

impl Backend {
    /// net-conf.json's Backend object.
    pub fn json(self) -> &'static str {
        match self {
            Backend::Vxlan => r#"{"Type":"vxlan"}"#,
            Backend::HostGw => r#"{"Type":"host-gw"}"#,
            Backend::VxlanDirect => r#"{"Type":"vxlan","DirectRouting":true}"#,
            Backend::Udp => r#"{"Type":"udp"}"#,
        }
    }

    /// Whether every peer has a route of its own (not UDP: one route of the
    /// whole network into flannel0, the forwarder picks the peer).
    pub fn routes_per_peer(self) -> bool {
        self != Backend::Udp
    }
}

/// What a lab is made of.
#[derive(Debug, Clone, Copy)]
pub struct LabSpec<'a> {
    /// The nodes.
    pub nodes: &'a [NodeSpec],
    /// The names of the nodes set up as flannel would, without weftd.
    pub flannel: &'a [&'a str],
    /// The backend.
    pub backend: Backend,
    /// The NAT mode.
    pub nat: NatMode,
    /// The Kubernetes API.
    pub api: ApiChoice,
    /// The pod network's address families.
    pub ip_family: IpFamily,
}

/// A pod created through the CNI plugin.
pub struct Pod {
    /// Its namespace.
    pub ns: Netns,
    /// Its name.
    pub name: String,
    /// Its first address (IPv4 where the lab has it), from the CNI result.
    pub ip: IpAddr,
    /// Its addresses, one per family of the lab, IPv4 first.
    pub ips: Vec<IpAddr>,
}

impl Pod {
    /// Its address of `family`.
    pub fn ip_of(&self, family: Family) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| Family::of_addr(ip) == family)
    }
}

/// One node of the lab.
pub struct LabNode {
    /// Its spec.
    pub spec: NodeSpec,
    /// Its namespace.
    pub ns: Netns,
    /// weftd (`None` on a node whose data plane flannel made).
    pub agent: Option<Weftd>,
    /// What flannel made on this node, until weftd takes it over.
    pub flannel: Option<FlannelNode>,
    /// Its pods.
    pub pods: Vec<Pod>,
}

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// weftd.
    pub weftd: PathBuf,
    /// weft-cni (installed into the lab's CNI directory as `flannel`).
    pub weft_cni: PathBuf,
    /// The reference plugins (bridge, host-local, portmap, loopback).
    pub reference_plugins: PathBuf,
}

/// The running lab. Dropping it stops everything and deletes every namespace.
pub struct Lab {
    /// The nodes.
    pub nodes: Vec<LabNode>,
    /// The outside host.
    pub outside: Netns,
    /// The API server.
    pub api: Api,
    /// The underlay switch.
    pub switch: Switch,
    /// The lab's files (configs, logs, CNI state).
    pub dir: tempfile::TempDir,
    cni_bin: PathBuf,
    weftd: PathBuf,
    net_conf: String,
    backend: Backend,
    nat: NatMode,
    families: &'static [Family],
}

impl Lab {
    /// Builds the lab and waits until every agent is ready.
    pub fn start(
        specs: &[NodeSpec],
        backend: Backend,
        nat: NatMode,
        bins: &Binaries,
    ) -> anyhow::Result<Lab> {
        Self::start_mixed(specs, &[], backend, nat, bins)
    }

    /// Builds the lab with the nodes named in `flannel` set up the way
    /// flanneld would have set them up (see [`FlannelNode`]: annotations,
    /// device, peers, NAT rules and subnet.env, no weftd) and weftd on the
    /// others; returns once every weftd is ready and every flannel node
    /// knows every peer.
    pub fn start_mixed(
        specs: &[NodeSpec],
        flannel: &[&str],
        backend: Backend,
        nat: NatMode,
        bins: &Binaries,
    ) -> anyhow::Result<Lab> {
        Self::start_with(
            &LabSpec {
                nodes: specs,
                flannel,
                backend,
                nat,
                api: ApiChoice::Auto,
                ip_family: IpFamily::Ipv4,
            },
            bins,
        )
    }

    /// Builds the lab `spec` describes; see [`start_mixed`](Self::start_mixed).
    pub fn start_with(spec: &LabSpec<'_>, bins: &Binaries) -> anyhow::Result<Lab> {
        let LabSpec {
            nodes: specs,
            flannel,
            backend,
            nat,
            api,
            ip_family,
        } = *spec;
        let families = ip_family.families();
        if backend == Backend::Udp && ip_family != IpFamily::Ipv4 {
            bail!("the udp backend carries IPv4 only (as flannel's): --ip-family ipv4");
        }
        if backend == Backend::Udp && !flannel.is_empty() {
            bail!("no flannel-made udp node: flannel's udp proxy is C code weft cannot run here");
        }
        let switch = Switch::new("lab-sw")?;
        switch.add_addr("br0", &format!("{API_IP}/16"))?;
        let dir = tempfile::Builder::new().prefix("weft-lab-").tempdir()?;
        let real = match api {
            ApiChoice::Auto => RealApiServer::locate().is_ok(),
            ApiChoice::Real => {
                RealApiServer::locate()
                    .map_err(|e| anyhow::anyhow!("no real kube-apiserver: {e}"))?;
                true
            }
            ApiChoice::Embedded => false,
        };
        let api = if real {
            let r = RealApiServer::start(&switch, API_IP, 6443)?;
            r.grant_flannel_role()?;
            Api::Real(r)
        } else {
            let (tx, rx) = std::sync::mpsc::channel();
            switch
                .spawn_task(move || async move { tx.send(NodeApi::start((API_IP, 0).into())) })?
                .join()??;
            let e = rx.recv()??;
            let kc = dir.path().join("kubeconfig");
            e.write_kubeconfig(&kc)?;
            Api::Embedded(e, kc)
        };
        // The CNI directory a runtime would have: flannel (= weft-cni) beside the reference plugins.
        let cni_bin = dir.path().join("cni-bin");
        std::fs::create_dir_all(&cni_bin)?;
        std::os::unix::fs::symlink(&bins.weft_cni, cni_bin.join("flannel"))?;
        for p in ["bridge", "host-local", "portmap", "loopback"] {
            std::os::unix::fs::symlink(bins.reference_plugins.join(p), cni_bin.join(p))?;
        }
        let outside = Netns::new("lab-out")?;
        switch.attach(&outside, "eth0", &format!("{OUTSIDE_IP}/16"))?;
        if families.contains(&Family::V6) {
            add_addr6(&outside, OUTSIDE_IP6)?;
        }
        let networks: Vec<ipnet::IpNet> = families.iter().map(|f| cluster_network(*f)).collect();
        let mut lab = Lab {
            weftd: bins.weftd.clone(),
            net_conf: net_conf_families(&networks, backend.json(), nat == NatMode::Nftables),
            backend,
            nat,
            families,
            nodes: Vec::new(),
            outside,
            api,
            switch,
            dir,
            cni_bin,
        };
        for s in specs {
            if flannel.contains(&s.name.as_str()) {
                lab.add_flannel_node(s)?;
            } else {
                lab.join_node(s)?;
            }
        }
        for n in &mut lab.nodes {
            if let Some(a) = n.agent.as_mut() {
                a.wait_ready(Duration::from_secs(60))?;
            }
        }
        lab.teach_flannel_nodes(Duration::from_secs(30))?;
        Ok(lab)
    }

    /// The namespace of a new node on the switch, with forwarding on, and
    /// the outside host's route to its pods (a router would have one).
    fn node_namespace(&self, s: &NodeSpec) -> anyhow::Result<Netns> {
        let role: String = s
            .name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .collect();
        let ns = Netns::new(&format!("lab-{role}"))?;
        self.switch.attach(&ns, "eth0", &format!("{}/16", s.ip))?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        if self.families.contains(&Family::V6) {
            add_addr6(&ns, s.ip6())?;
            ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        }
        for &family in self.families {
            self.outside.ip(&[
                "route",
                "replace",
                &s.subnet_of(family).to_string(),
                "via",
                &s.ip_of(family).to_string(),
            ])?;
        }
        Ok(ns)
    }

    /// Creates the Node in the API, its namespace, and starts weftd there
    /// (without waiting for it); returns the node's index.
    fn join_node(&mut self, s: &NodeSpec) -> anyhow::Result<usize> {
        self.api.create_node(s, self.families)?;
        let ns = self.node_namespace(s)?;
        self.nodes.push(LabNode {
            spec: s.clone(),
            ns,
            agent: None,
            flannel: None,
            pods: Vec::new(),
        });
        let i = self.nodes.len() - 1;
        self.launch_agent(i)?;
        Ok(i)
    }

    /// Starts weftd on node `i` with the lab's net-conf.json and NAT mode,
    /// its files under `<lab>/<node name>/` (without waiting for it).
    fn launch_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let agent = self.start_agent(i, &[])?;
        let n = self.nodes.get_mut(i).context("no such node")?;
        n.agent = Some(agent);
        Ok(())
    }

    fn start_agent(&self, i: usize, extra: &[&str]) -> anyhow::Result<Weftd> {
        let n = self.nodes.get(i).context("no such node")?;
        let mode = format!("--nat-mode={}", self.nat);
        let mut args = vec![mode.as_str(), "--healthz-port=8081"];
        args.extend_from_slice(extra);
        Weftd::start(
            &self.weftd,
            &n.ns,
            &n.spec.name,
            &self.api.kubeconfig(),
            &self.net_conf,
            &self.dir.path().join(&n.spec.name),
            &args,
        )
    }

    /// A node as flanneld leaves it: its Node annotated as flannel does,
    /// `flannel.1`, the NAT rules of the lab's mode and subnet.env (peers
    /// come with [`teach_flannel_nodes`](Self::teach_flannel_nodes)).
    fn add_flannel_node(&mut self, s: &NodeSpec) -> anyhow::Result<usize> {
        let f = FlannelNode::new(s, self.backend, self.families)?;
        self.api.create_node(s, self.families)?;
        self.api.annotate_node(&s.name, &f.annotations())?;
        let ns = self.node_namespace(s)?;
        let subnet_file = self.dir.path().join(&s.name).join("subnet.env");
        f.set_up(&ns, self.nat, &subnet_file)?;
        self.nodes.push(LabNode {
            spec: s.clone(),
            ns,
            agent: None,
            flannel: Some(f),
            pods: Vec::new(),
        });
        Ok(self.nodes.len() - 1)
    }

    /// Does for every flannel-made node what flanneld's watch would: waits
    /// until every other node has published flannel's annotations, then
    /// programs it as a peer.
    fn teach_flannel_nodes(&self, timeout: Duration) -> anyhow::Result<()> {
        if self.nodes.iter().all(|n| n.flannel.is_none()) {
            return Ok(());
        }
        let names: Vec<&str> = self.nodes.iter().map(|n| n.spec.name.as_str()).collect();
        let t0 = std::time::Instant::now();
        let peers = loop {
            let nodes = self.api.nodes(&names)?;
            let peers: Vec<Peer> = self
                .families
                .iter()
                .flat_map(|f| nodes.iter().filter_map(|n| peer_of(n, *f)))
                .collect();
            if peers.len() == names.len() * self.families.len() {
                break peers;
            }
            if t0.elapsed() > timeout {
                bail!(
                    "not every node published flannel's annotations within {timeout:?}: {peers:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for n in &self.nodes {
            if let Some(f) = &n.flannel {
                f.add_peers(&n.ns, &peers)?;
            }
        }
        Ok(())
    }

    /// Adds a node at run time: the Node in the API, its namespace, weftd;
    /// returns its index once weftd is ready.
    pub fn add_node(&mut self, s: &NodeSpec) -> anyhow::Result<usize> {
        let i = self.join_node(s)?;
        if let Some(a) = self.nodes[i].agent.as_mut() {
            a.wait_ready(Duration::from_secs(60))?;
        }
        Ok(i)
    }

    /// Removes a node at run time, as a cluster operator does: deletes the
    /// Node from the API, stops its weftd, and deletes its namespace and
    /// its pods'.
    pub fn remove_node(&mut self, node: usize) -> anyhow::Result<()> {
        if node >= self.nodes.len() {
            bail!("no node {node}");
        }
        let n = self.nodes.remove(node);
        self.api.delete_node(&n.spec.name)?;
        for &family in self.families {
            let _ = self
                .outside
                .ip(&["route", "del", &n.spec.subnet_of(family).to_string()]);
        }
        if let Some(agent) = n.agent {
            agent.stop()?;
        }
        Ok(())
    }

    /// Migration: starts weftd on a node whose data plane flannel made, with
    /// the same net-conf.json, subnet file and flags, and returns once it
    /// is ready.
    pub fn take_over(&mut self, node: usize) -> anyhow::Result<()> {
        let n = self.nodes.get_mut(node).context("no such node")?;
        if n.agent.is_some() {
            bail!("{} already runs weftd", n.spec.name);
        }
        self.launch_agent(node)?;
        self.nodes[node].flannel = None;
        wait_readyz(&mut self.nodes[node])
    }

    /// Creates a pod on node `node` through the CNI plugin, as a container runtime does.
    pub fn add_pod(&mut self, node: usize, name: &str) -> anyhow::Result<IpAddr> {
        let n = self.nodes.get_mut(node).context("no such node")?;
        let ns = Netns::new(name)?;
        let base = self.dir.path().join(&n.spec.name);
        let conf = pod_conf(&base);
        let result = match &n.flannel {
            // What flannel's CNI plugin does: save the delegate under
            // dataDir/<containerID> (0600), then run bridge with it.
            Some(f) => {
                let delegate = f.delegate(&base.join("cni-ipam"));
                save_private(&base.join("cni-flannel"), name, &delegate.to_string())?;
                cni(&n.ns, &self.cni_bin, "bridge", "ADD", name, &ns, &delegate)?
            }
            None => cni(&n.ns, &self.cni_bin, "flannel", "ADD", name, &ns, &conf)?,
        };
        let ips = result_ips(&result);
        for &family in self.families {
            if !ips.iter().any(|ip| Family::of_addr(ip) == family) {
                bail!("no {family} address in the CNI result {result}");
            }
        }
        let ip = *ips.first().context("no address in the CNI result")?;
        if self.families.contains(&Family::V6) {
            // The bridge's IPv6 gateway address goes through duplicate
            // address detection (about a second) when the node's first pod
            // is made; until then it answers no neighbour solicitation.
            wait_dad(&n.ns, "cni0")?;
            wait_dad(&ns, "eth0")?;
        }
        n.pods.push(Pod {
            ns,
            name: name.to_string(),
            ip,
            ips,
        });
        Ok(ip)
    }

    /// Deletes pod `name` of node `node` through the CNI plugin (weft-cni as
    /// `flannel`, whoever created the pod), as a container runtime does.
    pub fn delete_pod(&mut self, node: usize, name: &str) -> anyhow::Result<()> {
        let n = self.nodes.get_mut(node).context("no such node")?;
        let i = n
            .pods
            .iter()
            .position(|p| p.name == name)
            .with_context(|| format!("no pod {name} on {}", n.spec.name))?;
        let base = self.dir.path().join(&n.spec.name);
        cni(
            &n.ns,
            &self.cni_bin,
            "flannel",
            "DEL",
            name,
            &n.pods[i].ns,
            &pod_conf(&base),
        )?;
        n.pods.remove(i);
        Ok(())
    }

    /// The lab's files.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Stops weftd on node `node` (SIGTERM) and starts it again; returns once
    /// the new one is ready.
    pub fn restart_agent(&mut self, node: usize) -> anyhow::Result<()> {
        let n = self.nodes.get_mut(node).context("no such node")?;
        if let Some(old) = n.agent.take() {
            let status = old.stop()?;
            if !status.success() {
                bail!("weftd on {} exited with {status}", n.spec.name);
            }
        }
        self.launch_agent(node)?;
        wait_readyz(&mut self.nodes[node])
    }

    /// A rolling restart with `maxSurge`: a new weftd with `--take-over`
    /// starts beside the running one, which falls quiet, and hands the node
    /// over once the new one is ready; then the old one is stopped (it must
    /// exit cleanly). Returns how long the hand-over took.
    pub fn restart_agent_handing_over(&mut self, node: usize) -> anyhow::Result<Duration> {
        const TOOK: &str = "took the node over";
        let t0 = std::time::Instant::now();
        let before = {
            let n = self.nodes.get(node).context("no such node")?;
            let old = n.agent.as_ref().context("no weftd runs there")?;
            old.log().matches(TOOK).count()
        };
        let mut new = self.start_agent(node, &["--take-over"])?;
        let n = self.nodes.get_mut(node).context("no such node")?;
        // Both write to the node's log: the new one says when it has the node.
        while new.log().matches(TOOK).count() == before {
            if !new.is_running() {
                bail!(
                    "the new weftd on {} exited:\n{}",
                    n.spec.name,
                    new.log_digest(20)
                );
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the new weftd on {} did not take the node over in 60 s:\n{}",
                    n.spec.name,
                    new.log_digest(20)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let took = t0.elapsed();
        let old = n.agent.replace(new).context("no weftd runs there")?;
        let status = old.stop()?;
        if !status.success() {
            bail!("the old weftd on {} exited with {status}", n.spec.name);
        }
        wait_readyz(n)?;
        Ok(took)
    }

    /// Waits until every node routes to every other node's pod subnet.
    pub fn wait_for_overlay(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let t0 = std::time::Instant::now();
        loop {
            // flannel-made nodes are programmed when the lab starts.
            let done = self.nodes.iter().filter(|n| n.agent.is_some()).all(|n| {
                self.families.iter().all(|&family| {
                    let flag = match family {
                        Family::V4 => "-4",
                        Family::V6 => "-6",
                    };
                    let routes =
                        n.ns.ip(&[flag, "route", "show", "proto", "119"])
                            .unwrap_or_default();
                    if !self.backend.routes_per_peer() {
                        // One route of the network into flannel0.
                        return routes
                            .contains(&format!("{} dev flannel0", cluster_network(family)));
                    }
                    self.nodes
                        .iter()
                        .filter(|o| o.spec.name != n.spec.name)
                        .all(|o| routes.contains(&o.spec.subnet_of(family).to_string()))
                })
            });
            if done {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                let mut why = String::new();
                for n in self.nodes.iter() {
                    if let Some(a) = &n.agent {
                        let routes =
                            n.ns.ip(&["route", "show", "proto", "119"])
                                .unwrap_or_default();
                        let routes6 =
                            n.ns.ip(&["-6", "route", "show", "proto", "119"])
                                .unwrap_or_default();
                        why += &format!(
                            "\n-- {}: routes:\n{routes}{routes6}-- its log:\n{}",
                            n.spec.name,
                            a.log_digest(8)
                        );
                    }
                }
                bail!("the overlay did not converge within {timeout:?}:{why}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pod network's families, IPv4 first.
    pub fn families(&self) -> &'static [Family] {
        self.families
    }

    /// Every pod with its node.
    pub fn pods(&self) -> Vec<(&Pod, &NodeSpec)> {
        self.nodes
            .iter()
            .flat_map(|n| n.pods.iter().map(move |p| (p, &n.spec)))
            .collect()
    }

    /// `ping` from every pod to every pod over every family of the lab (a
    /// cell is true when each family's ping answered): rows and columns in
    /// [`pods`](Self::pods) order.
    pub fn ping_matrix(&self) -> Vec<Vec<bool>> {
        let per_family: Vec<Vec<Vec<bool>>> = self
            .families
            .iter()
            .map(|f| self.ping_matrix_of(*f))
            .collect();
        let n = self.pods().len();
        (0..n)
            .map(|i| (0..n).map(|j| per_family.iter().all(|m| m[i][j])).collect())
            .collect()
    }

    /// Every namespace a packet can pass: the nodes, their pods, the
    /// outside host.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut out = Vec::new();
        for n in &self.nodes {
            out.push(&n.ns);
            out.extend(n.pods.iter().map(|p| &p.ns));
        }
        out.push(&self.outside);
        out
    }

    /// The `weft` CLI beside weftd.
    pub fn weft_bin(&self) -> PathBuf {
        self.weftd.with_file_name("weft")
    }

    /// `weft trace <src> <dst> <args…>` over every namespace of the lab
    /// (the `weft` beside weftd), run from the host's namespace: it enters
    /// each one to read it and writes nothing.
    pub fn trace(
        &self,
        src: IpAddr,
        dst: IpAddr,
        args: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        let weft = self.weft_bin();
        let mut cmd = std::process::Command::new(&weft);
        cmd.arg("trace").arg(src.to_string()).arg(dst.to_string());
        for ns in self.namespaces() {
            cmd.arg("--netns").arg(ns.name());
        }
        cmd.args(args);
        cmd.output()
            .with_context(|| format!("running {}", weft.display()))
    }

    /// `ping` from every pod to every pod's `family` address.
    pub fn ping_matrix_of(&self, family: Family) -> Vec<Vec<bool>> {
        let pods = self.pods();
        pods.iter()
            .map(|(from, _)| {
                pods.iter()
                    .map(|(to, _)| to.ip_of(family).is_some_and(|ip| ping(&from.ns, ip)))
                    .collect()
            })
            .collect()
    }

    /// For every pod and family: the source address the outside host saw
    /// when the pod connected (should be the pod's node: masqueraded), and
    /// the one the pod saw when the outside connected (should be the
    /// outside's own).
    pub fn outside_checks(&self) -> anyhow::Result<Vec<OutsideCheck>> {
        let mut out = Vec::new();
        for &family in self.families {
            out.extend(self.outside_checks_of(family)?);
        }
        Ok(out)
    }

    /// [`outside_checks`](Self::outside_checks) for one family.
    pub fn outside_checks_of(&self, family: Family) -> anyhow::Result<Vec<OutsideCheck>> {
        let mut out = Vec::new();
        let outside = outside_ip(family);
        for (pod, node) in self.pods() {
            let Some(pod_ip) = pod.ip_of(family) else {
                continue;
            };
            let to_outside = seen_source(&self.outside, outside, &pod.ns, outside)?;
            let from_outside = seen_source(&pod.ns, pod_ip, &self.outside, pod_ip)?;
            out.push(OutsideCheck {
                pod: pod.name.clone(),
                family,
                node_ip: node.ip_of(family),
                to_outside,
                from_outside,
            });
        }
        Ok(out)
    }
}

/// What the outside host and a pod saw of each other.
#[derive(Debug, Clone)]
pub struct OutsideCheck {
    /// The pod.
    pub pod: String,
    /// The family checked.
    pub family: Family,
    /// Its node's address of that family.
    pub node_ip: IpAddr,
    /// Source address the outside saw from the pod (want: the node's).
    pub to_outside: Option<std::net::IpAddr>,
    /// Source address the pod saw from the outside (want: the outside's).
    pub from_outside: Option<std::net::IpAddr>,
}

impl OutsideCheck {
    /// Pod → outside was masqueraded to the node's address.
    pub fn masqueraded(&self) -> bool {
        self.to_outside == Some(self.node_ip)
    }

    /// Outside → pod kept the outside's address.
    pub fn kept_source(&self) -> bool {
        self.from_outside == Some(outside_ip(self.family))
    }
}

/// Waits until weftd on `n` answers /readyz with 200 (subnet.env may be
/// there from before, so it is not the sign).
fn wait_readyz(n: &mut LabNode) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    while health_status(&n.ns, 8081, "/readyz") != "200" {
        if let Some(a) = n.agent.as_mut() {
            if !a.is_running() {
                bail!("weftd on {} exited:\n{}", n.spec.name, a.log());
            }
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let log = n
                .agent
                .as_ref()
                .map(|a| a.log_digest(20))
                .unwrap_or_default();
            bail!(
                "weftd on {} not ready after 60 s; its log:\n{log}",
                n.spec.name
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Adds an IPv6 address to `eth0` without duplicate address detection (a
/// tentative address cannot be used for seconds), on the underlay's /64.
fn add_addr6(ns: &Netns, ip: Ipv6Addr) -> anyhow::Result<()> {
    ns.ip(&["addr", "add", &format!("{ip}/64"), "dev", "eth0", "nodad"])?;
    Ok(())
}

/// Waits (up to 5 s) until no IPv6 address on `dev` is tentative.
fn wait_dad(ns: &Netns, dev: &str) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    loop {
        let tentative = ns.ip(&["-6", "addr", "show", "dev", dev, "tentative"])?;
        if tentative.trim().is_empty() {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(5) {
            bail!(
                "{dev} in {}: addresses still tentative after 5 s: {tentative}",
                ns.name()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ping(ns: &Netns, ip: IpAddr) -> bool {
    ns.exec_status(&["ping", "-c1", "-W2", "-q", &ip.to_string()])
        .map(|o| o.status.success())
        .unwrap_or(false)
}
