//! Errors of the overlay: bad leases (data) and kernel refusals.

use std::net::IpAddr;

use ipnet::IpNet;

/// A peer that cannot be programmed, naming the node and the field at fault.
/// The peer is skipped; every other peer is still programmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node {node}: {field}: {reason}")]
pub struct LeaseError {
    /// The Kubernetes Node the lease came from.
    pub node: String,
    /// The field at fault, with flannel's annotation names (`podCIDR`, `public-ip`,
    /// `backend-type`, `backend-data`, `backend-data.VtepMAC`, `backend-data.VNI`).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: LeaseFault,
}

/// What is wrong with a lease field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseFault {
    /// The subnet is not inside the cluster network.
    #[error("subnet {subnet} is outside the cluster network {network}")]
    OutsideNetwork {
        /// The lease's subnet.
        subnet: IpNet,
        /// The cluster network.
        network: IpNet,
    },
    /// The subnet overlaps this node's own subnet.
    #[error("subnet {subnet} overlaps this node's own subnet {own}")]
    OverlapsOwn {
        /// The lease's subnet.
        subnet: IpNet,
        /// This node's subnet.
        own: IpNet,
    },
    /// The subnet overlaps a subnet another node already holds.
    #[error("subnet {subnet} overlaps {other_subnet} of node {other}")]
    OverlapsPeer {
        /// The lease's subnet.
        subnet: IpNet,
        /// The node that holds the overlapping subnet first.
        other: String,
        /// Its subnet.
        other_subnet: IpNet,
    },
    /// The VTEP MAC is already used by another node.
    #[error("VTEP MAC {mac} is already used by node {other}")]
    DuplicateMac {
        /// The MAC.
        mac: String,
        /// The node that has it first.
        other: String,
    },
    /// The node runs another backend than this one.
    #[error("backend {found:?} differs from this cluster's {expected:?}")]
    BackendMismatch {
        /// This node's backend.
        expected: &'static str,
        /// The lease's backend.
        found: String,
    },
    /// The subnet has host bits set (`10.244.1.5/24`).
    #[error("{0} is not a network address (host bits set)")]
    NotANetwork(IpNet),
    /// The public IP cannot be a node address.
    #[error("{0} cannot be a node address")]
    BadPublicIp(IpAddr),
    /// The backend data is not what the backend needs.
    #[error("{0}")]
    BadBackendData(String),
    /// The VNI differs from this node's.
    #[error("VNI {found} differs from this node's VNI {expected}")]
    VniMismatch {
        /// This node's VNI.
        expected: u32,
        /// The lease's VNI.
        found: u64,
    },
    /// host-gw needs every node on the same L2 network.
    #[error("{0} is not on this node's underlay network, which host-gw requires")]
    NotOnLink(IpAddr),
}

impl LeaseFault {
    /// A short, stable name of the fault (a metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            LeaseFault::OutsideNetwork { .. } => "outside_network",
            LeaseFault::OverlapsOwn { .. } => "overlaps_own_subnet",
            LeaseFault::OverlapsPeer { .. } => "overlaps_peer_subnet",
            LeaseFault::DuplicateMac { .. } => "duplicate_mac",
            LeaseFault::BackendMismatch { .. } => "backend_mismatch",
            LeaseFault::NotANetwork(_) => "not_a_network",
            LeaseFault::BadPublicIp(_) => "bad_public_ip",
            LeaseFault::BadBackendData(_) => "bad_backend_data",
            LeaseFault::VniMismatch { .. } => "vni_mismatch",
            LeaseFault::NotOnLink(_) => "not_on_link",
        }
    }
}

/// A kernel request that failed, with what it was for.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Opening the netlink socket failed.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// A netlink request was refused.
    #[error("{what}: {source}")]
    Request {
        /// Which object, e.g. `route 10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink`.
        what: String,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// The underlay interface does not exist.
    #[error("underlay interface {0:?} not found")]
    NoUnderlay(String),
    /// The underlay interface has an unusable MTU.
    #[error("underlay interface {name:?} reports MTU {mtu}, too small for VXLAN")]
    BadUnderlayMtu {
        /// Interface name.
        name: String,
        /// Its MTU.
        mtu: u32,
    },
    /// The overlay device vanished while it was being programmed.
    #[error("overlay device {0:?} is missing")]
    NoDevice(String),
    /// A TUN device could not be made.
    #[error("cannot make TUN device {device}: {reason}")]
    Tun {
        /// Its name.
        device: String,
        /// Why.
        reason: String,
    },
}
