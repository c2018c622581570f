//! Backends: how pod traffic crosses between nodes. Each backend owns its
//! whole story in one file:
//!
//! - the parsing of its `Backend` section of `net-conf.json`,
//! - the device it needs ([`DeviceSpec`], or none),
//! - the MTU pods get over it, given the underlay's,
//! - the `backend-data` this node publishes, and what it restores from its
//!   own published one after a restart (the VTEP MAC),
//! - the kernel entries one peer needs.
//!
//! The agent, the configuration and the reconciler only see the [`Backend`]
//! trait (through [`BackendConfig`]). Adding a backend is one file here that
//! implements it, plus its line in [`REGISTRY`].

mod host_gw;
mod section;
mod udp;
mod vxlan;

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use ipnet::IpNet;
use serde_json::Value;

pub use host_gw::HostGw;
pub use section::{Section, SectionError};
pub use udp::{UdpConfig, DEFAULT_UDP_PORT, KERNEL_PATH, TUN_DEVICE, UDP_OVERHEAD};
pub use vxlan::{
    VxlanBackendData, VxlanConfig, DEFAULT_VNI, DEFAULT_VXLAN_PORT, VXLAN6_HEADROOM, VXLAN_OVERHEAD,
};

use crate::error::LeaseFault;
use crate::family::Family;
use crate::mac::MacAddr;
use crate::model::{Lease, LocalNode, UnderlayFacts};
use crate::state::{DeviceSpec, FdbEntry, Forward, Neighbour, Route};

/// A data plane for pod traffic between nodes (see the module docs).
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// The `backend-type` this backend publishes and accepts (`vxlan`).
    fn kind(&self) -> &'static str;

    /// Whether it carries pods of `family` (flannel: only vxlan, host-gw
    /// and wireguard do IPv6).
    fn supports(&self, _family: Family) -> bool {
        true
    }

    /// The name of the device it makes for the cluster network's family
    /// (`flannel.1`, `flannel-v6.1`), if any: the kernel is watched for a
    /// device of that name.
    fn device_name(&self, network: IpNet) -> Option<String>;

    /// The device this node needs, if any.
    fn device(
        &self,
        local: &LocalNode,
        underlay: &UnderlayFacts,
        network: IpNet,
    ) -> Option<DeviceSpec>;

    /// The MTU pods of `family` get (`FLANNEL_MTU`), given the underlay's
    /// (the family's own encapsulation overhead, if any).
    fn mtu(&self, underlay_mtu: u32, family: Family) -> u32;

    /// The `backend-data` annotation to publish, given the MAC the device
    /// has; `None` while it cannot be told yet (no device MAC).
    fn backend_data(&self, device_mac: Option<MacAddr>) -> Option<String>;

    /// The MAC to keep from this node's own published `backend-data` (so
    /// the peers' entries stay valid across restarts, flannel #1795).
    fn restore_mac(&self, own_backend_data: &str) -> Option<MacAddr>;

    /// Routes the device itself needs, whatever the peers (the UDP
    /// backend's route of the whole cluster network into `flannel0`).
    fn device_routes(&self, _local: &LocalNode, _network: IpNet) -> Vec<Route> {
        Vec::new()
    }

    /// A userspace data plane to run beside the kernel's, fed the
    /// peers' [`Forward`] entries (the UDP backend's forwarder); `None` for
    /// backends the kernel carries alone. `taking_over`: a predecessor's
    /// data plane still runs (it stops once this agent is ready), so what
    /// it holds (a port) is shared, not refused.
    fn data_plane(
        &self,
        _local: &LocalNode,
        _network: IpNet,
        _taking_over: bool,
    ) -> Result<Option<Box<dyn DataPlane>>, crate::error::KernelError> {
        Ok(None)
    }

    /// What one peer needs. An `Err` names the field at fault.
    fn peer(
        &self,
        lease: &Lease,
        underlay: &UnderlayFacts,
    ) -> Result<PeerEntries, (&'static str, LeaseFault)>;

    /// For comparing configurations.
    fn as_any(&self) -> &dyn Any;

    /// The same backend with the same configuration.
    fn same(&self, other: &dyn Backend) -> bool;
}

/// A backend's userspace data plane (see [`Backend::data_plane`]). Dropping
/// it stops it.
pub trait DataPlane: Send {
    /// The whole table of peers, replacing the last one.
    fn set_peers(&self, peers: &[Forward]);

    /// Started `taking_over`: the predecessor's data plane has stopped now,
    /// whatever was shared with it is this one's alone.
    fn predecessor_gone(&self) {}

    /// Its counters, readable from any thread for as long as wanted.
    fn counters(&self) -> Option<DataPlaneCounters> {
        None
    }

    /// How it carries packets now, in a line for `weft status`.
    fn describe(&self) -> Option<String> {
        None
    }
}

/// Reads a data plane's counters (see [`DataPlane::counters`]).
pub type DataPlaneCounters = std::sync::Arc<dyn Fn() -> DataPlaneStats + Send + Sync>;

/// What a userspace data plane has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataPlaneStats {
    /// Packets sent to peers.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Packets received from peers and delivered.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Packets dropped, by reason.
    pub drops: Vec<(&'static str, u64)>,
    /// Packets the data plane's kernel part carried (e.g. the udp
    /// backend's tc programs), not in the counts above: tx, rx.
    pub kernel_packets: (u64, u64),
    /// Their bytes: tx, rx.
    pub kernel_bytes: (u64, u64),
}

/// `same` for a backend whose configuration is its value.
fn same_as<T: PartialEq + 'static>(me: &T, other: &dyn Backend) -> bool {
    other.as_any().downcast_ref::<T>() == Some(me)
}

/// The configured backend: what `net-conf.json`'s `Backend` section says.
#[derive(Clone)]
pub struct BackendConfig(Arc<dyn Backend>);

impl BackendConfig {
    /// Wraps a backend.
    pub fn new(backend: impl Backend) -> BackendConfig {
        BackendConfig(Arc::new(backend))
    }

    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        self.0.as_ref()
    }

    /// The `backend-type` this backend publishes and accepts.
    pub fn kind(&self) -> &'static str {
        self.0.kind()
    }

    /// The overlay device's name for the network's family, if this backend has one.
    pub fn device_name(&self, network: IpNet) -> Option<String> {
        self.0.device_name(network)
    }
}

impl PartialEq for BackendConfig {
    fn eq(&self, other: &Self) -> bool {
        self.0.same(other.0.as_ref())
    }
}

impl Eq for BackendConfig {}

impl fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One backend weft has: its `Type` and how its section is read.
pub struct Registration {
    /// `Backend.Type` (matched case-insensitively).
    pub kind: &'static str,
    /// Reads the section; fields it does not use go to `ignored`.
    pub parse: fn(&Section<'_>, &mut Vec<String>) -> Result<BackendConfig, SectionError>,
}

/// Every backend weft has.
pub const REGISTRY: &[Registration] = &[
    vxlan::REGISTRATION,
    host_gw::REGISTRATION,
    udp::REGISTRATION,
];

/// flannel's backends that weft does not have (refused by name).
const FLANNEL_ONLY: &[&str] = &[
    "ipip",
    "wireguard",
    "ipsec",
    "alloc",
    "extension",
    "tencent-vpc",
    "alivpc",
    "aws-vpc",
    "gce",
];

/// Reads `net-conf.json`'s `Backend` section (`None`: absent, vxlan as
/// flannel's manifests use, said in `ignored`).
pub fn parse(
    section: Option<&Value>,
    ignored: &mut Vec<String>,
) -> Result<BackendConfig, SectionError> {
    let obj = match section {
        None | Some(Value::Null) => {
            ignored.push("Backend: missing; weft uses vxlan (flannel's code would fall back to udp, which weft does not support)".into());
            return Ok(BackendConfig::from(VxlanConfig::default()));
        }
        Some(Value::Object(o)) => o,
        Some(v) => {
            return Err(SectionError {
                field: "Backend".into(),
                reason: format!("{v} is not an object"),
            })
        }
    };
    let section = Section::new(obj, "Backend");
    let names = || {
        REGISTRY
            .iter()
            .map(|r| r.kind)
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let kind = section
        .string("Type")?
        .ok_or_else(|| section.error("Type", format!("missing ({})", names())))?
        .to_ascii_lowercase();
    if let Some(r) = REGISTRY.iter().find(|r| r.kind == kind) {
        let config = (r.parse)(&section, ignored)?;
        return Ok(config);
    }
    if FLANNEL_ONLY.contains(&kind.as_str()) {
        return Err(section.error(
            "Type",
            format!(
                "{kind:?} is a flannel backend that weft does not support (use {})",
                names()
            ),
        ));
    }
    Err(section.error("Type", format!("{kind:?} is not a backend ({})", names())))
}

/// Reports the section's fields that `known` does not list as ignored.
fn report_unknown(section: &Section<'_>, kind: &str, known: &[&str], ignored: &mut Vec<String>) {
    for k in section.unknown(known) {
        ignored.push(format!("Backend.{k}: not used by the {kind} backend"));
    }
}

/// What one peer needs: a route, and with VXLAN encapsulation a neighbour
/// and an FDB entry; or, with a userspace forwarder (UDP), an entry in its
/// table instead of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerEntries {
    /// The route to the peer's subnet.
    pub route: Option<Route>,
    /// The PERMANENT neighbour for the route's gateway (VXLAN only).
    pub neighbour: Option<Neighbour>,
    /// The FDB entry for the peer's VTEP (VXLAN only).
    pub fdb: Option<FdbEntry>,
    /// The forwarder's entry (UDP only).
    pub forward: Option<Forward>,
}

impl PeerEntries {
    /// A plain route to the peer's subnet via its node IP on the underlay
    /// (host-gw, and VXLAN DirectRouting for peers on the same L2 network).
    pub fn direct(lease: &Lease) -> PeerEntries {
        PeerEntries {
            route: Some(Route {
                dst: lease.subnet,
                via: lease.public_ip,
                dev: crate::state::Dev::Underlay,
                onlink: false,
                protocol: crate::state::ROUTE_PROTOCOL,
            }),
            neighbour: None,
            fdb: None,
            forward: None,
        }
    }
}
