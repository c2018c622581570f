//! Overlay state: what the kernel should hold (desired) and what it holds
//! (observed), in one vocabulary so the two can be diffed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::mac::MacAddr;

/// The route protocol number weft writes on its routes (`ip route` shows
/// `proto 119`; `/etc/iproute2/rt_protos.d/weft.conf` can name it). Routes with
/// another protocol are never deleted, except flannel's leftovers on the
/// overlay device, which weft adopts.
pub const ROUTE_PROTOCOL: u8 = 119;
/// `RTPROT_KERNEL`: routes the kernel made for an address; never weft's.
pub const RTPROT_KERNEL: u8 = 2;

/// The device a route leaves through, relative to the overlay.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Dev {
    /// The VXLAN device `flannel.<VNI>`.
    Overlay,
    /// The underlay interface (host-gw and DirectRouting routes).
    Underlay,
    /// Any other interface, by index (only ever observed, never desired).
    Other(u32),
}

/// A route to another node's pod subnet.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Route {
    /// The remote pod subnet.
    pub dst: IpNet,
    /// The gateway: the subnet's network address (VXLAN) or the node's IP (direct).
    pub via: IpAddr,
    /// The outgoing device.
    pub dev: Dev,
    /// `onlink`: the gateway is not on any connected network (VXLAN).
    pub onlink: bool,
    /// The route protocol; [`ROUTE_PROTOCOL`] for every route weft wants.
    pub protocol: u8,
}

/// A PERMANENT neighbour on the overlay device: remote subnet's network address → VTEP MAC.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Neighbour {
    /// The remote subnet's network address (the route's gateway).
    pub ip: IpAddr,
    /// The remote VTEP MAC.
    pub mac: MacAddr,
}

/// A VXLAN forwarding entry on the overlay device: VTEP MAC → node IP (`self permanent`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct FdbEntry {
    /// The remote VTEP MAC.
    pub mac: MacAddr,
    /// The remote node's underlay address.
    pub dst: IpAddr,
}

/// A peer subnet a userspace forwarder sends to the peer's node (the UDP
/// backend): not a kernel object, the forwarder's table.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Forward {
    /// The peer's pod subnet.
    pub subnet: IpNet,
    /// The peer's node address.
    pub to: IpAddr,
}

/// Per-peer kernel objects, keyed the way the kernel keys them (and the
/// forwarder's table, keyed by subnet).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entries {
    /// Routes by destination.
    pub routes: BTreeMap<IpNet, Route>,
    /// Neighbours on the overlay device by IP.
    pub neighbours: BTreeMap<IpAddr, Neighbour>,
    /// FDB entries on the overlay device by MAC.
    pub fdb: BTreeMap<MacAddr, FdbEntry>,
    /// A userspace forwarder's peers by subnet (the UDP backend).
    pub forwards: BTreeMap<IpNet, Forward>,
}

impl Entries {
    /// Number of kernel objects in the three kernel tables.
    pub fn len(&self) -> usize {
        self.routes.len() + self.neighbours.len() + self.fdb.len()
    }

    /// True when all three kernel tables are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a route (replacing any with the same destination).
    pub fn put_route(&mut self, r: Route) {
        self.routes.insert(r.dst, r);
    }

    /// Records a neighbour.
    pub fn put_neighbour(&mut self, n: Neighbour) {
        self.neighbours.insert(n.ip, n);
    }

    /// Records an FDB entry.
    pub fn put_fdb(&mut self, f: FdbEntry) {
        self.fdb.insert(f.mac, f);
    }

    /// Records a forwarder entry.
    pub fn put_forward(&mut self, f: Forward) {
        self.forwards.insert(f.subnet, f);
    }

    /// Forgets everything that lives on the overlay device (it is gone or being recreated).
    pub fn forget_overlay(&mut self) {
        self.neighbours.clear();
        self.fdb.clear();
        self.routes.retain(|_, r| r.dev != Dev::Overlay);
    }
}

/// The device a backend needs, by kind (one module per kind in `kernel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A VXLAN device (`flannel.<VNI>`).
    Vxlan(VxlanDevice),
    /// A TUN device (`flannel0`, the UDP backend's).
    Tun(TunDevice),
}

impl DeviceSpec {
    /// The device's name.
    pub fn name(&self) -> &str {
        match self {
            DeviceSpec::Vxlan(v) => &v.name,
            DeviceSpec::Tun(t) => &t.name,
        }
    }

    /// What every kind has: MTU, MAC to keep, address, cluster network.
    pub fn link(&self) -> LinkSpec {
        match self {
            DeviceSpec::Vxlan(v) => LinkSpec {
                mtu: v.mtu,
                mac: v.mac,
                address: v.address,
                network: v.network,
            },
            DeviceSpec::Tun(t) => LinkSpec {
                mtu: t.mtu,
                mac: None,
                address: t.address,
                network: t.network,
            },
        }
    }

    /// The VXLAN device, if this is one.
    pub fn vxlan(&self) -> Option<&VxlanDevice> {
        match self {
            DeviceSpec::Vxlan(v) => Some(v),
            DeviceSpec::Tun(_) => None,
        }
    }

    /// The VXLAN device, if this is one, to change.
    pub fn vxlan_mut(&mut self) -> Option<&mut VxlanDevice> {
        match self {
            DeviceSpec::Vxlan(v) => Some(v),
            DeviceSpec::Tun(_) => None,
        }
    }
}

/// The link-level settings every device kind has, fixed in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSpec {
    /// MTU.
    pub mtu: u32,
    /// The MAC to keep, if any.
    pub mac: Option<MacAddr>,
    /// The one address inside the cluster network.
    pub address: IpNet,
    /// The cluster network: other addresses inside it are stale.
    pub network: IpNet,
}

/// The UDP backend's TUN device as weft wants it (flannel's `flannel0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunDevice {
    /// `flannel0`.
    pub name: String,
    /// Underlay MTU − 28 (IPv4 + UDP headers).
    pub mtu: u32,
    /// The own subnet's network address with the cluster network's
    /// prefix (`10.244.1.0/16`): the kernel routes the network into it.
    pub address: IpNet,
    /// The cluster network.
    pub network: IpNet,
    /// Made with the virtio-net header, for segmentation offloads.
    pub offload: bool,
}

/// The VXLAN device as weft wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    /// `flannel.<VNI>`.
    pub name: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// Source address of the encapsulated packets: this node's IP.
    pub local: IpAddr,
    /// UDP destination port.
    pub port: u16,
    /// Underlay interface index.
    pub underlay: u32,
    /// Source-MAC learning (flannel: off).
    pub learning: bool,
    /// Device MTU (underlay MTU − 50).
    pub mtu: u32,
    /// The MAC to keep, if one is known; `None`: whatever the device has.
    pub mac: Option<MacAddr>,
    /// The own subnet's network address as /32.
    pub address: IpNet,
    /// The cluster network: other addresses inside it on the device are stale and removed.
    pub network: IpNet,
}

/// The backend's device as the kernel has it: what every link has, and
/// its kind with that kind's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedDevice {
    /// Interface index.
    pub ifindex: u32,
    /// What kind of device it is.
    pub kind: ObservedKind,
    /// MTU.
    pub mtu: u32,
    /// MAC address.
    pub mac: Option<MacAddr>,
    /// Administratively up.
    pub up: bool,
    /// Its IPv4 addresses.
    pub addresses: Vec<IpNet>,
}

/// The kind of an observed device (one variant per kind weft makes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObservedKind {
    /// A VXLAN device.
    Vxlan(VxlanParams),
    /// A TUN device.
    Tun,
    /// Anything else (a device of the configured name weft did not make).
    Other,
}

/// A VXLAN device's parameters as the kernel reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanParams {
    /// VNI.
    pub vni: Option<u32>,
    /// Source address.
    pub local: Option<IpAddr>,
    /// UDP port.
    pub port: Option<u16>,
    /// Underlay interface index.
    pub underlay: Option<u32>,
    /// Learning flag.
    pub learning: Option<bool>,
}

impl ObservedDevice {
    /// Its VXLAN parameters, if it is a VXLAN device.
    pub fn vxlan(&self) -> Option<&VxlanParams> {
        match &self.kind {
            ObservedKind::Vxlan(v) => Some(v),
            ObservedKind::Tun | ObservedKind::Other => None,
        }
    }

    /// The same, to change (tests).
    pub fn vxlan_mut(&mut self) -> Option<&mut VxlanParams> {
        match &mut self.kind {
            ObservedKind::Vxlan(v) => Some(v),
            ObservedKind::Tun | ObservedKind::Other => None,
        }
    }
}

/// Everything weft wants the kernel to hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayState {
    /// The backend's device (none for host-gw).
    pub device: Option<DeviceSpec>,
    /// Routes, neighbours and FDB entries for the other nodes.
    pub entries: Entries,
}

/// What the kernel holds of weft's (and adoptable) objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The device of the configured name, if any.
    pub device: Option<ObservedDevice>,
    /// Managed routes and the overlay device's neighbours and FDB entries.
    pub entries: Entries,
}
