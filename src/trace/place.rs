//! What the walk reads: the places a packet passes (network namespaces —
//! nodes and pods) and, for each, the kernel's answers as plain data. The
//! walk only sees the [`Reader`] trait, so it is tested against a made-up
//! cluster without root; `kernel.rs` answers it from netlink.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;
use weft_nat::{NatMode, Snapshot as NatSnapshot};
use weft_overlay::MacAddr;

use crate::status::Status;

/// The bridge weft-cni's pods hang off (flannel's `cni0`).
pub const POD_BRIDGE: &str = "cni0";

/// The kind of a link, as far as the walk cares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LinkKind {
    /// A VXLAN device.
    Vxlan {
        /// Its VNI.
        vni: Option<u32>,
        /// Its UDP port.
        port: Option<u16>,
        /// Its local (source) address.
        local: Option<IpAddr>,
    },
    /// A TUN device (the UDP backend's `flannel0`).
    Tun,
    /// A bridge.
    Bridge,
    /// One end of a veth pair.
    Veth,
    /// The loopback device.
    Loopback,
    /// Anything else (the underlay's NIC, a dummy …), by its kind name.
    Other(String),
}

/// One link with its addresses.
#[derive(Debug, Clone, Serialize)]
pub struct LinkRow {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: LinkKind,
    /// Its MAC, if it has one.
    pub mac: Option<MacAddr>,
    /// Its MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// The bridge it is a port of (index).
    pub master: Option<u32>,
    /// Its peer's index in the other namespace (a veth's `@ifN`).
    pub peer_index: Option<u32>,
    /// Its addresses.
    pub addrs: Vec<IpNet>,
}

/// What a route lookup (`ip route get`) answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum RouteLookup {
    /// The packet goes out `dev`, to `via` if set.
    Unicast {
        /// The gateway.
        via: Option<IpAddr>,
        /// The outgoing device's index.
        dev: u32,
        /// The source address the kernel picks.
        src: Option<IpAddr>,
    },
    /// The address is this namespace's own.
    Local {
        /// The device (normally `lo`).
        dev: u32,
        /// The source address.
        src: Option<IpAddr>,
    },
    /// The kernel refuses: no route, unreachable, blackhole …; its words.
    Refused(String),
}

/// A neighbour entry (`ip neigh`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NeighRow {
    /// Its address.
    pub ip: IpAddr,
    /// Its device's index.
    pub dev: u32,
    /// Its link-layer address, if resolved.
    pub mac: Option<MacAddr>,
    /// Its state as `ip` prints it (`PERMANENT`, `REACHABLE`, `STALE` …).
    pub state: String,
}

/// An FDB entry (`bridge fdb`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FdbRow {
    /// The MAC.
    pub mac: MacAddr,
    /// The device (a VXLAN device, or a bridge's port).
    pub dev: u32,
    /// The remote address (VXLAN).
    pub dst: Option<IpAddr>,
    /// The bridge it belongs to, for a port's entry.
    pub master: Option<u32>,
    /// `self`: the device's own table (VXLAN), not its bridge's.
    pub own: bool,
    /// `permanent`.
    pub permanent: bool,
}

/// What the walk asks one namespace's kernel. Errors are the kernel's (or
/// the tool's) words.
#[allow(async_fn_in_trait)]
pub trait Reader {
    /// `ip route get <dst>`.
    async fn route_get(&self, dst: IpAddr) -> RouteLookup;
    /// Every neighbour of `dst`'s family.
    async fn neighbours(&self, family_of: IpAddr) -> Result<Vec<NeighRow>, String>;
    /// Every FDB entry.
    async fn fdb(&self) -> Result<Vec<FdbRow>, String>;
    /// The NAT rules in place for `family_of`'s family: `mode` if given,
    /// else the first mode that holds any. `None`: no mode holds any.
    async fn nat(
        &self,
        family_of: IpAddr,
        mode: Option<NatMode>,
    ) -> Result<Option<(NatMode, NatSnapshot)>, String>;
}

/// One network namespace on the path.
pub struct Place<R> {
    /// Its name (the namespace's, or the node's).
    pub name: String,
    /// Its links.
    pub links: Vec<LinkRow>,
    /// What weftd says, if a weftd answers in it.
    pub status: Option<Status>,
    /// Its kernel.
    pub reader: R,
}

impl<R> Place<R> {
    /// The link of that index.
    pub fn link(&self, index: u32) -> Option<&LinkRow> {
        self.links.iter().find(|l| l.index == index)
    }

    /// The link of that name.
    pub fn link_named(&self, name: &str) -> Option<&LinkRow> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The name of link `index`, or `if<index>`.
    pub fn link_name(&self, index: u32) -> String {
        self.link(index)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("if{index}"))
    }

    /// Whether one of its links (not `lo`) holds `ip`.
    pub fn holds(&self, ip: IpAddr) -> bool {
        self.links
            .iter()
            .filter(|l| l.kind != LinkKind::Loopback)
            .any(|l| l.addrs.iter().any(|a| a.addr() == ip))
    }

    /// A node: weftd answers here, or it has the pod bridge or a flannel
    /// device.
    pub fn is_node(&self) -> bool {
        self.status.is_some()
            || self
                .links
                .iter()
                .any(|l| l.name == POD_BRIDGE || l.name.starts_with("flannel"))
    }

    /// Whether `ip` is in this node's pod subnet (weftd's lease, or the
    /// pod bridge's network).
    pub fn hosts_pod_ip(&self, ip: IpAddr) -> bool {
        if let Some(s) = &self.status {
            if s.families.iter().any(|f| f.subnet.contains(&ip)) {
                return true;
            }
        }
        self.link_named(POD_BRIDGE)
            .is_some_and(|b| b.addrs.iter().any(|a| a.trunc().contains(&ip)))
    }

    /// The cluster network holding `ip`, as weftd has it.
    pub fn network_of(&self, ip: IpAddr) -> Option<IpNet> {
        let s = self.status.as_ref()?;
        s.families
            .iter()
            .map(|f| f.overlay.network)
            .find(|n| n.contains(&ip))
    }

    /// The cluster network of `ip`'s family, as weftd has it.
    pub fn network_for_family(&self, ip: IpAddr) -> Option<IpNet> {
        let s = self.status.as_ref()?;
        s.families
            .iter()
            .map(|f| f.overlay.network)
            .find(|n| n.addr().is_ipv4() == ip.is_ipv4())
    }

    /// The node's name: weftd's, else the place's.
    pub fn node_name(&self) -> &str {
        self.status.as_ref().map_or(self.name.as_str(), |s| &s.node)
    }
}
