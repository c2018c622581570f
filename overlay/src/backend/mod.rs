//! Backends: how a peer's lease becomes routes, neighbours and FDB entries.
//! One file per backend, behind one small trait.

mod host_gw;
mod vxlan;

pub use host_gw::HostGw;
pub use vxlan::{Vxlan, VxlanBackendData};

use crate::error::LeaseFault;
use crate::model::{BackendConfig, Lease, LocalNode, UnderlayFacts};
use crate::state::{FdbEntry, Neighbour, Route, VxlanDevice};

/// A data plane for pod traffic between nodes.
pub trait Backend {
    /// The `backend-type` this backend publishes and accepts.
    fn kind(&self) -> &'static str;

    /// The device this backend needs on this node, if any.
    fn device(
        &self,
        local: &LocalNode,
        underlay: &UnderlayFacts,
        network: ipnet::Ipv4Net,
    ) -> Option<VxlanDevice>;

    /// What one peer needs. An `Err` names the field at fault.
    fn peer(
        &self,
        lease: &Lease,
        underlay: &UnderlayFacts,
    ) -> Result<PeerEntries, (&'static str, LeaseFault)>;
}

/// The backend for a configuration.
pub fn for_config(config: &BackendConfig) -> Box<dyn Backend + Send + Sync> {
    match config {
        BackendConfig::Vxlan(v) => Box::new(Vxlan::new(v.clone())),
        BackendConfig::HostGw => Box::new(HostGw),
    }
}

/// The kernel objects one peer needs: a route, and with VXLAN encapsulation
/// a neighbour and an FDB entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerEntries {
    /// The route to the peer's subnet.
    pub route: Route,
    /// The PERMANENT neighbour for the route's gateway (VXLAN only).
    pub neighbour: Option<Neighbour>,
    /// The FDB entry for the peer's VTEP (VXLAN only).
    pub fdb: Option<FdbEntry>,
}

impl PeerEntries {
    /// A plain route to the peer's subnet via its node IP on the underlay
    /// (host-gw, and VXLAN DirectRouting for peers on the same L2 network).
    pub fn direct(lease: &Lease) -> PeerEntries {
        PeerEntries {
            route: Route {
                dst: lease.subnet,
                via: lease.public_ip,
                dev: crate::state::Dev::Underlay,
                onlink: false,
                protocol: crate::state::ROUTE_PROTOCOL,
            },
            neighbour: None,
            fdb: None,
        }
    }
}
