//! The inputs of the overlay: the cluster's configuration, this node, and the
//! other nodes' leases.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::backend::BackendConfig;
use crate::mac::MacAddr;

/// One other node's claim on the cluster network: what flannel calls a lease,
/// and publishes in Node annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Kubernetes Node name, used in every error about this lease.
    pub node: String,
    /// The node's pod subnet (`spec.podCIDR`).
    pub subnet: IpNet,
    /// The node's underlay address (`public-ip` annotation).
    pub public_ip: IpAddr,
    /// The `backend-type` annotation (`vxlan`, `host-gw`).
    pub backend_type: String,
    /// The `backend-data` annotation, raw JSON as published (`{"VNI":1,"VtepMAC":"…"}`).
    pub backend_data: String,
}

/// The cluster-wide overlay configuration (from flannel's `net-conf.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayConfig {
    /// The cluster network (`Network`), which every pod subnet lies in.
    pub network: IpNet,
    /// Which data plane carries pod traffic between nodes.
    pub backend: BackendConfig,
}

/// This node, as the overlay needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNode {
    /// Kubernetes Node name.
    pub name: String,
    /// This node's pod subnet.
    pub subnet: IpNet,
    /// This node's underlay address (VXLAN source address).
    pub public_ip: IpAddr,
    /// The underlay interface's name (`eth0`).
    pub underlay: String,
    /// The VTEP MAC to keep (from this node's own annotation after a restart, flannel #1795);
    /// `None` lets the kernel choose one when the device is created.
    pub vtep_mac: Option<MacAddr>,
}

/// What the kernel says about the underlay interface: the facts the desired
/// state depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayFacts {
    /// Interface index of the underlay device.
    pub ifindex: u32,
    /// Its MTU.
    pub mtu: u32,
    /// The networks of its IPv4 addresses: peers inside them are on the same L2 network.
    pub networks: Vec<IpNet>,
}

impl UnderlayFacts {
    /// True when `ip` lies on one of the underlay's connected networks.
    pub fn is_on_link(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(&ip))
    }
}
