//! weftd's start-up and main loop: the seed's three steps, then both
//! subsystems kept reconciled.
//!
//! 1. Read `net-conf.json`, find this Node, start watching all Nodes and wait
//!    for the first full list (so the overlay starts from the whole cluster
//!    and a restart never flushes a working route).
//! 2. Choose the underlay, run the overlay reconciler (it creates or adopts
//!    `flannel.<VNI>` and programs every peer), publish the VTEP MAC and the
//!    node IP in flannel's annotations.
//! 3. Put the NAT rules in place, write `subnet.env`, report ready, set
//!    `NetworkUnavailable=False`; then follow the Nodes until told to stop.
//!    Stopping leaves the data plane as it is.
//!
//! With `--take-over` a weftd already running on the node hands it over
//! (see [`instance`] and [`handover`]).

mod handover;
pub mod host;
pub mod iface;
pub mod instance;
pub mod retry;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use regex::Regex;
use tokio::sync::mpsc;
use weft_nat::reconciler::LoopOptions;
use weft_nat::{Options as NatOptions, SnatRules};
use weft_overlay::reconciler::{Input, Options as OverlayOptions};
use weft_overlay::{Family, LocalNode, PerFamily, Reconciler, ReconcilerHandle};

use crate::config::{Flags, NatModeChoice, NetConf};
use crate::health::{self, Readiness};
use crate::metrics::Metrics;
use crate::subnet::annotations::{pod_cidr, Published};
use crate::subnet::index::{NodeIndex, PeerChange};
use crate::subnet::kube::{self as kube_sm, NodeClient};
use crate::subnet::Annotations;
use crate::subnet_env::{FamilyLines, SubnetEnv};
use instance::AgentRequest;
use weft_overlay::metrics::{family_label, FamilyLabel};

/// Why the agent stopped (or did not start). Each variant names what is
/// at fault; nothing is folded into text on the way up.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// flanneld's default subnet manager (etcd) was asked for.
    #[error("weft only has the Kubernetes subnet manager: pass --kube-subnet-mgr (flanneld's default, etcd, is not supported)")]
    NoKubeSubnetMgr,
    /// `net-conf.json`.
    #[error(transparent)]
    NetConf(#[from] crate::config::net_conf::NetConfError),
    /// `--kube-annotation-prefix`.
    #[error(transparent)]
    Prefix(#[from] crate::subnet::annotations::BadPrefix),
    /// An `--iface-regex` that does not compile.
    #[error("--iface-regex {regex:?}: {source}")]
    IfaceRegex {
        /// The expression.
        regex: String,
        /// Why.
        #[source]
        source: regex::Error,
    },
    /// `--iface-can-reach` names an address without a route.
    #[error("--iface-can-reach {0}: no route to it")]
    NoRouteTo(std::net::IpAddr),
    /// No interface fits `--iface`/`--iface-regex`/the default route.
    #[error("no underlay interface: {0}")]
    Underlay(String),
    /// The NAT rule set cannot be built from the cluster network and subnet.
    #[error(transparent)]
    Rules(#[from] weft_nat::rules::RuleError),
    /// The Kubernetes API.
    #[error(transparent)]
    Kube(#[from] kube_sm::KubeError),
    /// A kernel request.
    #[error(transparent)]
    Kernel(#[from] weft_overlay::KernelError),
    /// NAT.
    #[error(transparent)]
    Nat(#[from] weft_nat::NatError),
    /// The overlay loop ended before programming the node.
    #[error("the overlay loop stopped")]
    OverlayStopped,
    /// The backend's device came up without the MAC its backend-data needs.
    #[error("the overlay device has no MAC address to publish")]
    NoVtepMac,
    /// The Node watch ended.
    #[error("the Node watch stopped")]
    WatchStopped,
    /// This Node is not in the API.
    #[error("node {node} does not exist in the Kubernetes API (waited {waited:?})")]
    NoSuchNode {
        /// Its name.
        node: String,
        /// How long it was waited for.
        waited: Duration,
    },
    /// This Node's pod subnet of an enabled family is unusable.
    #[error("node {node}: {field}: {reason} (net-conf.json enables {family})")]
    PodCidr {
        /// Its name.
        node: String,
        /// The family.
        family: Family,
        /// `spec.podCIDR` or `spec.podCIDRs`.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// This Node's pod subnet lies outside the cluster network.
    #[error("node {node}: spec.podCIDRs: {subnet} is not inside the cluster network {network} of net-conf.json")]
    OutsideNetwork {
        /// Its name.
        node: String,
        /// Its pod subnet.
        subnet: IpNet,
        /// `Network` or `IPv6Network` of net-conf.json.
        network: IpNet,
    },
    /// Another agent runs on this node.
    #[error(transparent)]
    Instance(#[from] instance::InstanceError),
    /// Writing the subnet file.
    #[error("cannot write {path}: {source}")]
    SubnetFile {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// How long to wait for this Node to appear in the API (flannel: 30 s).
const OWN_NODE_WAIT: Duration = Duration::from_secs(30);

/// Runs the agent until `shutdown` resolves. `client`: a connected kube client;
/// `env`: the process environment (`NODE_NAME`, `POD_NAME`, `POD_NAMESPACE`).
pub async fn run(
    flags: Flags,
    client: Client,
    env: HashMap<String, String>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    // The overlay's netlink futures stay on this thread: run them on a LocalSet.
    tokio::task::LocalSet::new()
        .run_until(agent(flags, client, env, shutdown))
        .await
}

async fn agent(
    flags: Flags,
    client: Client,
    env: HashMap<String, String>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    // 0. One agent per node: before anything is read or changed. With
    //    --take-over, the running one falls quiet and hands the node over
    //    once this one is ready.
    let (take_over_tx, mut take_over_rx) = mpsc::channel(1);
    let (mut instance_task, mut predecessor) =
        handover::claim(flags.take_over, take_over_tx.clone()).await?;

    // 1. Configuration and the cluster.
    let settings = Settings::load(&flags)?;
    let metrics = Metrics::new(settings.conf.backend.kind());
    let ready = Readiness::default();
    let health_task = serve_health(&flags, &ready, &metrics);
    let mut cluster = Cluster::join(&client, &env, &settings, &metrics).await?;
    cluster.count_skipped(&metrics);

    // 2. The underlay, one overlay per family from the whole cluster at
    //    once, and what the other nodes need to reach this one.
    let host = host::Host::connect()?;
    let underlay = choose_underlay(&flags, &settings, &host, &cluster).await?;
    let mut overlays: PerFamily<ReconcilerHandle> = PerFamily::default();
    let mut overlay_tasks = Vec::new();
    for (family, _) in cluster.subnets.iter() {
        let input = overlay_input(&settings, &cluster, &underlay, family)?;
        let options = OverlayOptions {
            taking_over: predecessor.is_some(),
            metrics: metrics.overlay.clone(),
            ..OverlayOptions::default()
        };
        let (reconciler, handle) = Reconciler::start(input, options)?;
        overlay_tasks.push(tokio::task::spawn_local(reconciler.run()));
        overlays.set(family, Some(handle));
    }
    let mut published = Vec::new();
    for (family, overlay) in overlays.iter() {
        // The first clean reconcile (a refused write is retried with
        // backoff, logged by the loop, until it goes through).
        let first = overlay
            .wait_applied(1)
            .await
            .ok_or(AgentError::OverlayStopped)?;
        tracing::info!(%family, writes = first.writes, plan = %first.plan, "overlay in place");
        published.push(published_family(
            &flags,
            &settings,
            &cluster,
            &underlay,
            family,
            first.vtep_mac,
        )?);
    }
    let wanted = settings
        .annotations
        .published(settings.conf.backend.kind(), &published);
    let mut jobs = Jobs::default();
    jobs.publish.record(counted(
        &metrics,
        "publish",
        publish(&cluster, &cluster.own, &wanted).await,
    ));

    // 3. NAT, then the subnet file, then ready. Writes to the API and the
    //    subnet file are retried until they succeed; the data plane stays.
    let (nat, nat_reasons) = start_nat(&flags, &settings.conf, &cluster.subnets, &metrics)?;
    let subnet_env = subnet_env(&flags, &settings.conf, &cluster.subnets, underlay.mtu);
    if jobs
        .subnet_env
        .record(write_subnet_env(&flags, &subnet_env))
    {
        become_ready(&ready, &flags, &subnet_env, &nat, &metrics);
    }
    if flags.set_node_network_unavailable {
        jobs.available.record(counted(
            &metrics,
            "set_network_available",
            set_available(&cluster).await,
        ));
    }
    if let Some(p) = predecessor.take() {
        instance_task = Some(handover::complete(p, &overlays, take_over_tx).await?);
    }

    // Follow the cluster until told to stop: each Node event costs work for
    // that Node only.
    tokio::pin!(shutdown);
    loop {
        let retry_at = retry::next_due(jobs.all());
        tokio::select! {
            _ = &mut shutdown => break,
            Some(request) = take_over_rx.recv() => match request {
                AgentRequest::TakeOver(request) => {
                    let running = handover::Running {
                        overlays,
                        overlay_tasks,
                        nat,
                        health: health_task,
                        instance: instance_task,
                    };
                    return handover::hand_over(request, running, shutdown).await;
                }
                AgentRequest::Status(reply) => {
                    let here = StatusSources {
                        settings: &settings,
                        cluster: &cluster,
                        underlay: &underlay,
                        nat: &nat,
                        nat_reasons: &nat_reasons,
                        ready: ready.is_ready(),
                    };
                    let status = here.status(&overlays).await;
                    let _ = reply.send(serde_json::to_string(&status).unwrap_or_default());
                }
                AgentRequest::Pause(paused, reply) => {
                    for (_, overlay) in overlays.iter() {
                        overlay.pause(paused).await;
                    }
                    let _ = reply.send(());
                }
            },
            event = cluster.events.recv() => {
                let Some(event) = event else {
                    return Err(AgentError::WatchStopped);
                };
                let own_before = cluster.index.own();
                let changes = cluster.fold(event);
                cluster.count_skipped(&metrics);
                for change in changes {
                    let family = change.family();
                    let Some(overlay) = overlays.get(family) else {
                        continue;
                    };
                    let generation = match change {
                        PeerChange::Upsert(lease) => overlay.upsert(lease),
                        PeerChange::Remove { node, .. } => overlay.remove(&node),
                    };
                    tracing::debug!(%family, generation, peers = cluster.index.peers(), "peers changed");
                }
                let own_now = cluster.index.own();
                // Changed, or back (deleted and registered again).
                let own_changed = match (&own_before, &own_now) {
                    (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                    (None, Some(_)) => true,
                    (_, None) => false,
                };
                if let (true, Some(own)) = (own_changed, own_now) {
                    // Restores the annotations if someone removed them.
                    jobs.publish.record(counted(
                        &metrics,
                        "publish",
                        publish(&cluster, &own, &wanted).await,
                    ));
                }
            }
            _ = sleep_until(retry_at), if retry_at.is_some() => {
                let now = tokio::time::Instant::now();
                if jobs.publish.is_due(now) {
                    let own = cluster.own_now();
                    jobs.publish.record(counted(
                        &metrics,
                        "publish",
                        publish(&cluster, &own, &wanted).await,
                    ));
                }
                if jobs.subnet_env.is_due(now)
                    && jobs.subnet_env.record(write_subnet_env(&flags, &subnet_env))
                {
                    become_ready(&ready, &flags, &subnet_env, &nat, &metrics);
                }
                if jobs.available.is_due(now) {
                    jobs.available.record(counted(
                        &metrics,
                        "set_network_available",
                        set_available(&cluster).await,
                    ));
                }
            }
        }
    }
    tracing::info!("stopping; routes, neighbours, FDB entries and NAT rules stay in place");
    // A successor asking now finds no one to ask, and the name soon free.
    if let Some(t) = instance_task.take() {
        t.abort();
    }
    drop(overlays);
    for task in overlay_tasks {
        let _ = task.await;
    }
    for n in nat {
        n.stop();
    }
    Ok(())
}

/// What `weft status` is told, from where the agent keeps it.
struct StatusSources<'a> {
    settings: &'a Settings,
    cluster: &'a Cluster,
    underlay: &'a iface::Underlay,
    nat: &'a [weft_nat::ReconcilerHandle],
    nat_reasons: &'a PerFamily<String>,
    ready: bool,
}

impl StatusSources<'_> {
    async fn status(&self, overlays: &PerFamily<ReconcilerHandle>) -> crate::status::Status {
        use crate::status::{vtep_mac_of, FamilyStatus, Peer, SkippedNode, Status};
        let own = self.cluster.own_now();
        let mut families = Vec::new();
        for (family, overlay) in overlays.iter() {
            let (Some(subnet), Some(snapshot)) =
                (self.cluster.subnets.get(family), overlay.snapshot().await)
            else {
                continue;
            };
            let public_ip = self
                .underlay
                .ips
                .get(family)
                .map(|ip| kube_sm::advertised_ip(&own, &self.settings.annotations, *ip));
            let Some(public_ip) = public_ip else {
                continue;
            };
            let nat_mode = self
                .nat
                .iter()
                .find(|n| n.family() == nat_family(family))
                .map(|n| n.mode().to_string())
                .unwrap_or_default();
            let peers = self
                .cluster
                .index
                .leases(family)
                .into_iter()
                .map(|l| Peer {
                    vtep_mac: vtep_mac_of(&l.backend_data),
                    node: l.node,
                    subnet: l.subnet,
                    public_ip: l.public_ip,
                })
                .collect();
            families.push(FamilyStatus {
                family: family.to_string(),
                subnet: *subnet,
                public_ip,
                nat_mode,
                nat_reason: self.nat_reasons.get(family).cloned().unwrap_or_default(),
                peers,
                overlay: snapshot,
            });
        }
        Status {
            node: self.cluster.name.clone(),
            backend: self.settings.conf.backend.kind().to_string(),
            pid: std::process::id(),
            ready: self.ready,
            families,
            skipped: self
                .cluster
                .index
                .skipped_nodes()
                .into_iter()
                .map(|(node, family, reason)| SkippedNode {
                    node,
                    family: family.to_string(),
                    reason,
                })
                .collect(),
            waiting: self.cluster.index.waiting().cloned().collect(),
        }
    }
}

/// What the flags and `net-conf.json` say, checked.
struct Settings {
    conf: NetConf,
    annotations: Annotations,
    iface_regex: Vec<Regex>,
}

impl Settings {
    fn load(flags: &Flags) -> Result<Settings, AgentError> {
        if !flags.kube_subnet_mgr {
            return Err(AgentError::NoKubeSubnetMgr);
        }
        let conf = NetConf::load(&flags.net_config_path)?;
        for note in &conf.ignored {
            tracing::warn!(%note, "net-conf.json field ignored");
        }
        let annotations = Annotations::new(&flags.kube_annotation_prefix)?;
        let iface_regex = flags
            .iface_regex
            .iter()
            .map(|r| {
                Regex::new(r).map_err(|source| AgentError::IfaceRegex {
                    regex: r.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Settings {
            conf,
            annotations,
            iface_regex,
        })
    }
}

/// `/healthz` and `/readyz` on `--healthz-ip:--healthz-port` (off with port 0).
fn serve_health(
    flags: &Flags,
    ready: &Readiness,
    metrics: &Metrics,
) -> Option<tokio::task::JoinHandle<()>> {
    if flags.healthz_port == 0 {
        return None;
    }
    let addr = SocketAddr::new(flags.healthz_ip, flags.healthz_port);
    let (r, m) = (ready.clone(), metrics.clone());
    Some(tokio::spawn(async move {
        if let Err(e) = health::serve(addr, r, m).await {
            tracing::error!(%addr, error = %e, "health server failed");
        }
    }))
}

/// This node in the cluster: its Node, its subnet, and the followed index
/// of every Node (the single source of the peers).
struct Cluster {
    name: String,
    nodes: NodeClient,
    events: mpsc::UnboundedReceiver<NodeEvent>,
    index: NodeIndex,
    own: Arc<Node>,
    /// This node's pod subnet of each enabled family.
    subnets: PerFamily<IpNet>,
}

impl Cluster {
    /// Finds this Node, starts watching all Nodes and waits for the first
    /// full list (so the overlay starts from the whole cluster); checks that
    /// the podCIDR lies in the cluster network.
    async fn join(
        client: &Client,
        env: &HashMap<String, String>,
        settings: &Settings,
        metrics: &Metrics,
    ) -> Result<Cluster, AgentError> {
        let conf = &settings.conf;
        let name = kube_sm::node_name(client, env).await?;
        let networks: Vec<String> = conf.networks().map(|n| n.to_string()).collect();
        tracing::info!(node = %name, ?networks, backend = conf.backend.kind(), "starting");
        let nodes = NodeClient::new(client.clone(), &name);
        let (tx, mut events) = mpsc::unbounded_channel();
        tokio::spawn(follow_nodes(
            nodes.api().clone(),
            tx,
            settings.annotations.clone(),
            metrics.clone(),
        ));
        let families: Vec<Family> = conf.networks().map(|n| Family::of_net(&n)).collect();
        let mut index = NodeIndex::new(&name, settings.annotations.clone(), &families);
        let own = wait_for_own_node(&mut events, &mut index, &name).await?;
        let subnets = own_subnets(conf, &name, &own)?;
        Ok(Cluster {
            name,
            nodes,
            events,
            index,
            own,
            subnets,
        })
    }

    /// This Node as last seen (as at start while the watch has it not).
    fn own_now(&self) -> Arc<Node> {
        self.index.own().unwrap_or_else(|| self.own.clone())
    }

    /// `weft_nodes_skipped`, per family, as the index has it now.
    fn count_skipped(&self, metrics: &Metrics) {
        for family in self.subnets.iter().map(|(f, _)| f) {
            let n = self.index.skipped(family);
            metrics
                .nodes_skipped
                .get_or_create(&FamilyLabel {
                    family: family_label(family),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Folds one watch event into the index: what the overlay must hear.
    fn fold(&mut self, event: NodeEvent) -> Vec<PeerChange> {
        fold(&mut self.index, event)
    }
}

/// Folds one watch event into `index`: what the overlays must hear.
fn fold(index: &mut NodeIndex, event: NodeEvent) -> Vec<PeerChange> {
    match event {
        NodeEvent::Listed(nodes) => index.listed(nodes),
        NodeEvent::Applied(node) => index.applied(node),
        NodeEvent::Deleted(node) => index.deleted(&node),
    }
}

/// This node's pod subnet of each enabled family, inside its cluster
/// network. A subnet of a family net-conf.json does not enable is named
/// in the log and left alone (flanneld refuses to start there; the other
/// family still works).
fn own_subnets(conf: &NetConf, name: &str, own: &Node) -> Result<PerFamily<IpNet>, AgentError> {
    let mut subnets = PerFamily::default();
    for family in Family::ALL {
        let Some(network) = conf.network(family) else {
            if let Ok(subnet) = pod_cidr(own, family) {
                tracing::warn!(
                    node = %name,
                    field = "spec.podCIDRs",
                    %subnet,
                    "an {family} pod subnet, but net-conf.json does not enable {family} \
                     ({}): this node's {family} pods get no overlay",
                    match family {
                        Family::V4 => "EnableIPv4 is false",
                        Family::V6 => "no EnableIPv6/IPv6Network",
                    }
                );
            }
            continue;
        };
        let subnet = pod_cidr(own, family).map_err(|e| AgentError::PodCidr {
            node: name.to_string(),
            family,
            field: e.field(),
            reason: e.to_string(),
        })?;
        if !network.contains(&subnet) {
            return Err(AgentError::OutsideNetwork {
                node: name.to_string(),
                subnet,
                network,
            });
        }
        subnets.set(family, Some(subnet));
    }
    Ok(subnets)
}

/// The underlay as flanneld chooses it: one interface, with an address
/// of each enabled family.
async fn choose_underlay(
    flags: &Flags,
    settings: &Settings,
    host: &host::Host,
    cluster: &Cluster,
) -> Result<iface::Underlay, AgentError> {
    let families: Vec<Family> = cluster.subnets.iter().map(|(f, _)| f).collect();
    let can_reach = match flags.iface_can_reach {
        Some(ip) => Some(host.route_to(ip).await?.ok_or(AgentError::NoRouteTo(ip))?),
        None => None,
    };
    let mut public_ip = PerFamily::default();
    let mut default_route = PerFamily::default();
    for &family in &families {
        public_ip.set(
            family,
            public_ip_flag(flags, settings, &cluster.own, family),
        );
        default_route.set(family, host.default_route_interface(family).await?);
    }
    let req = iface::Request {
        families: &families,
        iface: &flags.iface,
        iface_regex: &settings.iface_regex,
        can_reach,
        public_ip,
        default_route,
    };
    let underlay = iface::choose(&req, &host.interfaces().await?).map_err(AgentError::Underlay)?;
    let ips: Vec<String> = underlay.ips.iter().map(|(_, ip)| ip.to_string()).collect();
    tracing::info!(iface = %underlay.name, ?ips, mtu = underlay.mtu, "underlay chosen");
    Ok(underlay)
}

/// `--public-ip` / `--public-ipv6`, else the `node-public-ip(v6)` annotation.
fn public_ip_flag(
    flags: &Flags,
    settings: &Settings,
    own: &Node,
    family: Family,
) -> Option<IpAddr> {
    let flag = match family {
        Family::V4 => flags.public_ip.map(IpAddr::V4),
        Family::V6 => flags.public_ipv6.map(IpAddr::V6),
    };
    flag.or_else(|| kube_sm::node_public_ip(own, &settings.annotations, family))
}

/// One family's overlay input: this node (keeping the VTEP MAC it
/// published before) and every usable peer of the family in the index.
fn overlay_input(
    settings: &Settings,
    cluster: &Cluster,
    underlay: &iface::Underlay,
    family: Family,
) -> Result<Input, AgentError> {
    let missing = || AgentError::Underlay(format!("no {family} address on {}", underlay.name));
    let network = settings.conf.network(family).ok_or_else(missing)?;
    let subnet = *cluster.subnets.get(family).ok_or_else(missing)?;
    let public_ip = underlay.ip(family).ok_or_else(missing)?;
    // What this node published before (the VTEP MAC): the backend says
    // what of it to keep.
    let vtep_mac = kube_sm::own_backend_data(&cluster.own, &settings.annotations, family)
        .and_then(|data| settings.conf.backend.backend().restore_mac(data));
    Ok(Input {
        config: weft_overlay::OverlayConfig {
            network,
            backend: settings.conf.backend.clone(),
        },
        local: LocalNode {
            name: cluster.name.clone(),
            subnet,
            public_ip,
            underlay: underlay.name.clone(),
            vtep_mac,
        },
        leases: cluster.index.leases(family),
    })
}

/// One family's part of flannel's annotations for this node: the backend
/// data with that family's VTEP MAC, and the advertised address (the
/// flag, else the underlay's, unless the user overwrote it).
fn published_family(
    flags: &Flags,
    settings: &Settings,
    cluster: &Cluster,
    underlay: &iface::Underlay,
    family: Family,
    vtep_mac: Option<weft_overlay::MacAddr>,
) -> Result<Published, AgentError> {
    let backend_data = settings
        .conf
        .backend
        .backend()
        .backend_data(vtep_mac)
        .ok_or(AgentError::NoVtepMac)?;
    let detected = public_ip_flag(flags, settings, &cluster.own, family)
        .or_else(|| underlay.ip(family))
        .ok_or_else(|| AgentError::Underlay(format!("no {family} address on {}", underlay.name)))?;
    Ok(Published {
        backend_data,
        public_ip: kube_sm::advertised_ip(&cluster.own, &settings.annotations, detected),
    })
}

/// Patches `wanted` onto this node where `own` (its last known state)
/// differs.
async fn publish(
    cluster: &Cluster,
    own: &Node,
    wanted: &BTreeMap<String, String>,
) -> Result<(), kube_sm::KubeError> {
    if cluster.nodes.publish(own, wanted).await? {
        tracing::info!(node = %cluster.name, annotations = ?wanted, "annotations published");
    }
    Ok(())
}

/// `NetworkUnavailable=False` on this node.
async fn set_available(cluster: &Cluster) -> Result<(), kube_sm::KubeError> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let own = cluster.own_now();
    cluster
        .nodes
        .set_network_available(&own, &now)
        .await
        .map(drop)
}

/// The agent's retried jobs.
struct Jobs {
    publish: retry::Retry,
    available: retry::Retry,
    subnet_env: retry::Retry,
}

impl Default for Jobs {
    fn default() -> Jobs {
        Jobs {
            publish: retry::Retry::new("publishing this node's annotations"),
            available: retry::Retry::new("setting NetworkUnavailable=False"),
            subnet_env: retry::Retry::new("writing the subnet file"),
        }
    }
}

impl Jobs {
    fn all(&self) -> [&retry::Retry; 3] {
        [&self.publish, &self.available, &self.subnet_env]
    }
}

/// Sleeps until `at` (forever without one; the caller guards the branch).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The subnet file is in place: `/readyz` turns 200.
fn become_ready(
    ready: &Readiness,
    flags: &Flags,
    env: &SubnetEnv,
    nat: &[weft_nat::ReconcilerHandle],
    metrics: &Metrics,
) {
    ready.set_ready();
    metrics.ready.set(1);
    let subnets: Vec<String> = env.families.iter().map(|l| l.subnet.to_string()).collect();
    let nat: Vec<String> = nat.iter().map(|n| n.mode().to_string()).collect();
    tracing::info!(subnet_file = %flags.subnet_file.display(), ?subnets, mtu = env.mtu, ?nat, "ready");
}

/// The NAT crate's name for `family`.
fn nat_family(family: Family) -> weft_nat::Family {
    match family {
        Family::V4 => weft_nat::Family::V4,
        Family::V6 => weft_nat::Family::V6,
    }
}

/// Detects (or takes the forced) NAT mode and starts the NAT loop of each
/// enabled family, which returns once flannel's rules are in place.
fn start_nat(
    flags: &Flags,
    conf: &NetConf,
    subnets: &PerFamily<IpNet>,
    metrics: &Metrics,
) -> Result<(Vec<weft_nat::ReconcilerHandle>, PerFamily<String>), AgentError> {
    let mut loops = Vec::new();
    let mut reasons = PerFamily::default();
    for family in Family::ALL {
        let nat_family = nat_family(family);
        let (Some(network), Some(subnet)) = (conf.network(family), subnets.get(family)) else {
            // A family this node does not run: flannel's rules of it, left
            // from before, go.
            weft_nat::reconciler::remove_family(nat_family);
            continue;
        };
        let forced = match flags.nat_mode {
            NatModeChoice::Forced(m) => Some(m),
            NatModeChoice::Auto => None,
        };
        let mode = weft_nat::detect(nat_family, conf.enable_nftables, forced);
        tracing::info!(%family, mode = %mode.mode, reason = %mode.reason, "NAT mode");
        reasons.set(family, Some(mode.reason.clone()));
        let rules = SnatRules::build(
            network,
            *subnet,
            NatOptions {
                masquerade: flags.ip_masq,
                fully_random: !flags.ip_masq_fully_random_disable,
                forward: flags.iptables_forward_rules,
            },
        )?;
        loops.push(weft_nat::Reconciler::spawn(
            mode.mode,
            rules,
            LoopOptions {
                resync: Duration::from_secs(flags.iptables_resync.max(1)),
                metrics: metrics.nat.clone(),
                ..LoopOptions::default()
            },
        )?);
    }
    Ok((loops, reasons))
}

/// What `subnet.env` says: each family's network and subnet, and the
/// overlay devices' MTU.
fn subnet_env(
    flags: &Flags,
    conf: &NetConf,
    subnets: &PerFamily<IpNet>,
    underlay_mtu: u32,
) -> SubnetEnv {
    SubnetEnv {
        families: subnets
            .iter()
            .filter_map(|(family, subnet)| {
                conf.network(family).map(|network| FamilyLines {
                    network,
                    subnet: *subnet,
                })
            })
            .collect(),
        // One MTU for every family's pods: the smallest device's (an IPv6
        // VTEP costs 20 bytes more than an IPv4 one).
        mtu: subnets
            .iter()
            .map(|(family, _)| conf.backend.backend().mtu(underlay_mtu, family))
            .min()
            .unwrap_or(underlay_mtu),
        ipmasq: flags.ip_masq,
    }
}

/// Writes `subnet.env` (only if its content differs).
fn write_subnet_env(flags: &Flags, env: &SubnetEnv) -> Result<(), AgentError> {
    env.write(&flags.subnet_file)
        .map(drop)
        .map_err(|source| AgentError::SubnetFile {
            path: flags.subnet_file.display().to_string(),
            source,
        })
}

/// What the Node watch reports, each Node cut down to what weft reads
/// (see `subnet::projection`).
enum NodeEvent {
    /// A full list: the first, or after the watch was lost.
    Listed(Vec<Node>),
    /// A Node added or modified.
    Applied(Node),
    /// A Node deleted.
    Deleted(Node),
}

/// Drives the Node watch and sends its events to the agent; ends when the
/// agent is gone.
async fn follow_nodes(
    api: kube::Api<Node>,
    tx: mpsc::UnboundedSender<NodeEvent>,
    annotations: Annotations,
    metrics: Metrics,
) {
    let nodes = watcher(api, watcher::Config::default())
        .modify(move |node| crate::subnet::projection::project(node, &annotations));
    futures::pin_mut!(nodes);
    let mut backoff = ApiBackoff::default();
    let mut failing = false;
    let mut listing: Vec<Node> = Vec::new();
    let mut lists = 0u64;
    while let Some(event) = nodes.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                metrics.api_error("watch");
                if !failing {
                    tracing::warn!(error = %e, "Node watch failed; keeping the last known peers and retrying");
                    failing = true;
                }
                // The server answered that our place in its history is gone
                // (a restarted API server's watch cache starts anew): list
                // again at once, there is nothing to wait for.
                if !is_expired(&e) {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                continue;
            }
        };
        backoff.reset();
        if failing {
            tracing::info!("the Kubernetes API answers again");
            failing = false;
        }
        let sent = match event {
            watcher::Event::Init => {
                lists += 1;
                if lists > 1 {
                    metrics.watch_restarts.inc();
                }
                listing.clear();
                Ok(())
            }
            watcher::Event::InitApply(node) => {
                listing.push(node);
                Ok(())
            }
            watcher::Event::InitDone => tx.send(NodeEvent::Listed(std::mem::take(&mut listing))),
            watcher::Event::Apply(node) => tx.send(NodeEvent::Applied(node)),
            watcher::Event::Delete(node) => tx.send(NodeEvent::Deleted(node)),
        };
        if sent.is_err() {
            return;
        }
    }
}

/// `result`, a failed API request of `operation` counted.
fn counted<T, E>(metrics: &Metrics, operation: &'static str, result: Result<T, E>) -> Result<T, E> {
    if result.is_err() {
        metrics.api_error(operation);
    }
    result
}

/// `410 Gone` in the watch: the resourceVersion is too old to resume from.
fn is_expired(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(status) if status.code == 410)
}

/// Retry delays for the Node watch: 200 ms doubling to 5 s, back to 200 ms
/// after a success. (kube's default grows to 30 s: after an API outage the
/// agent would see the cluster again up to half a minute late.)
#[derive(Debug, Clone, Copy)]
struct ApiBackoff {
    next: Duration,
}

impl Default for ApiBackoff {
    fn default() -> Self {
        ApiBackoff { next: Self::FIRST }
    }
}

impl ApiBackoff {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);

    /// The delay before the next attempt (doubling up to [`Self::MAX`]).
    fn next_delay(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        now
    }

    /// After a success: the next failure waits [`Self::FIRST`] again.
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Waits for the first full list, then (up to [`OWN_NODE_WAIT`]) for this
/// Node, folding every event into the index meanwhile.
async fn wait_for_own_node(
    events: &mut mpsc::UnboundedReceiver<NodeEvent>,
    index: &mut NodeIndex,
    name: &str,
) -> Result<Arc<Node>, AgentError> {
    let stopped = || AgentError::WatchStopped;
    loop {
        let event = events.recv().await.ok_or_else(stopped)?;
        let listed = matches!(event, NodeEvent::Listed(_));
        fold(index, event);
        if listed {
            break;
        }
    }
    let deadline = tokio::time::Instant::now() + OWN_NODE_WAIT;
    loop {
        if let Some(n) = index.own() {
            return Ok(n);
        }
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| AgentError::NoSuchNode {
                node: name.to_string(),
                waited: OWN_NODE_WAIT,
            })?
            .ok_or_else(stopped)?;
        fold(index, event);
    }
}
