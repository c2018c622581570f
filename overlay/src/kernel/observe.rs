//! Observing: the underlay's facts, the device, and every route, neighbour
//! and FDB entry weft manages — and the classification of netlink messages
//! (dumps and monitor events alike) into the overlay's vocabulary. Nothing
//! outside the [`Scope`] is ever observed, so nothing else is ever deleted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use super::{family_of, link_mtu, req, Kernel, Scope};
use crate::error::KernelError;
use crate::mac::MacAddr;
use crate::model::UnderlayFacts;
use crate::state::{
    Dev, Entries, FdbEntry, Neighbour, ObservedDevice, ObservedKind, Route, ROUTE_PROTOCOL,
    RTPROT_KERNEL,
};

impl Kernel {
    /// The underlay interface's index, MTU and connected IPv4 networks.
    pub async fn underlay(&self, name: &str) -> Result<UnderlayFacts, KernelError> {
        let link = self
            .link_by_name(name)
            .await?
            .ok_or_else(|| KernelError::NoUnderlay(name.to_string()))?;
        let ifindex = link.header.index;
        let mtu = link_mtu(&link);
        let networks = self
            .addresses(ifindex)
            .await?
            .into_iter()
            .map(|a| a.trunc())
            .collect();
        Ok(UnderlayFacts {
            ifindex,
            mtu,
            networks,
        })
    }

    /// The device of that name as the kernel has it, if it exists.
    pub async fn device(&self, name: &str) -> Result<Option<ObservedDevice>, KernelError> {
        let Some(link) = self.link_by_name(name).await? else {
            return Ok(None);
        };
        let mut dev = observed_device(&link);
        dev.addresses = self.addresses(dev.ifindex).await?;
        Ok(Some(dev))
    }

    /// Every route, neighbour and FDB entry in the scope.
    pub async fn entries(&self, scope: &Scope) -> Result<Entries, KernelError> {
        let mut out = Entries::default();
        let dump = match scope.network {
            IpNet::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            IpNet::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let mut routes = self.handle.route().get(dump).execute();
        while let Some(msg) = routes.try_next().await.map_err(req("dump routes"))? {
            if let Some(r) = route_of(&msg, scope) {
                out.put_route(r);
            }
        }
        if scope.overlay.is_some() {
            for msg in self
                .neighbour_dump(family_of(scope.network.addr()), "dump neighbours")
                .await?
            {
                if let Some(n) = neighbour_of(&msg, scope) {
                    out.put_neighbour(n);
                }
            }
            for msg in self
                .neighbour_dump(AddressFamily::Bridge, "dump fdb")
                .await?
            {
                if let Some(f) = fdb_of(&msg, scope) {
                    out.put_fdb(f);
                }
            }
        }
        Ok(out)
    }
}

/// A link as an [`ObservedDevice`]: what every link has, and its kind with
/// that kind's parameters (each kind's module reads its own).
fn observed_device(link: &LinkMessage) -> ObservedDevice {
    let mut dev = ObservedDevice {
        ifindex: link.header.index,
        kind: ObservedKind::Other,
        mtu: link_mtu(link),
        mac: None,
        up: link.header.flags.contains(LinkFlags::Up),
        addresses: Vec::new(),
    };
    for a in &link.attributes {
        match a {
            LinkAttribute::Address(b) => dev.mac = MacAddr::from_bytes(b),
            LinkAttribute::LinkInfo(infos) if infos.contains(&LinkInfo::Kind(InfoKind::Vxlan)) => {
                dev.kind = ObservedKind::Vxlan(super::vxlan::params(infos).unwrap_or_default());
            }
            LinkAttribute::LinkInfo(infos) if infos.contains(&LinkInfo::Kind(InfoKind::Tun)) => {
                dev.kind = ObservedKind::Tun;
            }
            _ => {}
        }
    }
    dev
}

/// A route message as a managed [`Route`], or `None` when it is not weft's to manage:
/// outside the main table or the cluster network, or neither tagged with weft's
/// protocol nor a flannel leftover on the overlay device.
pub fn route_of(msg: &RouteMessage, scope: &Scope) -> Option<Route> {
    let h = &msg.header;
    if h.address_family != family_of(scope.network.addr()) || h.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(h.table);
    let (mut dst, mut via, mut oif, mut priority) = (None, None, None, 0);
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_address(d),
            RouteAttribute::Gateway(g) => via = route_address(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => priority = *p,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || priority != default_metric(scope.network) {
        return None;
    }
    let dst = IpNet::new(dst?, h.destination_prefix_length).ok()?;
    if !scope.network.contains(&dst) {
        return None;
    }
    let protocol = u8::from(h.protocol);
    let oif = oif?;
    let dev = if Some(oif) == scope.overlay {
        Dev::Overlay
    } else if oif == scope.underlay {
        Dev::Underlay
    } else {
        Dev::Other(oif)
    };
    let ours = protocol == ROUTE_PROTOCOL || (dev == Dev::Overlay && protocol != RTPROT_KERNEL);
    if !ours {
        return None;
    }
    Some(Route {
        dst,
        via: via.unwrap_or(match dst {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }),
        dev,
        onlink: h.flags.contains(RouteFlags::Onlink),
        protocol,
    })
}

/// The metric the kernel gives a route that names none, as weft's and
/// flannel's do: 0 in IPv4, 1024 in IPv6 (`IP6_RT_PRIO_USER`; an IPv6 route
/// always has one). A route with another metric is someone else's.
pub fn default_metric(network: IpNet) -> u32 {
    match network {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1024,
    }
}

/// An address of a route attribute (either family).
fn route_address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// The destination of a route message, whoever owns the route.
pub fn route_dst(r: &RouteMessage) -> Option<IpNet> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => {
            IpNet::new(route_address(d)?, r.header.destination_prefix_length).ok()
        }
        _ => None,
    })
}

/// The address of a neighbour message's destination (either family; raw
/// bytes as AF_BRIDGE dumps carry them).
pub fn neighbour_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v) => Some(IpAddr::V4(*v)),
        NeighbourAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

/// A PERMANENT neighbour of the scope's family on the overlay device.
pub fn neighbour_of(msg: &NeighbourMessage, scope: &Scope) -> Option<Neighbour> {
    let h = &msg.header;
    if h.family != family_of(scope.network.addr())
        || Some(h.ifindex) != scope.overlay
        || h.state != NeighbourState::Permanent
    {
        return None;
    }
    let f = neighbour_fields(msg);
    Some(Neighbour {
        ip: f.ip?,
        mac: f.mac?,
    })
}

/// A `self` FDB entry with a unicast MAC and a destination on the overlay device.
pub fn fdb_of(msg: &NeighbourMessage, scope: &Scope) -> Option<FdbEntry> {
    let h = &msg.header;
    if h.family != AddressFamily::Bridge
        || Some(h.ifindex) != scope.overlay
        || !h.flags.contains(NeighbourFlags::Own)
    {
        return None;
    }
    let f = neighbour_fields(msg);
    let mac = f.mac.filter(MacAddr::is_unicast)?;
    Some(FdbEntry { mac, dst: f.ip? })
}

/// What a neighbour or FDB message names, whatever its header says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NeighbourFields {
    /// `NDA_DST`: the neighbour's address, or an FDB entry's remote.
    pub ip: Option<IpAddr>,
    /// `NDA_LLADDR`: the link-layer address.
    pub mac: Option<MacAddr>,
    /// `NDA_MASTER`: the bridge an FDB entry belongs to.
    pub master: Option<u32>,
}

/// The addresses and bridge a neighbour or FDB message carries (AF_BRIDGE
/// dumps carry `NDA_DST` as raw bytes: [`neighbour_ip`] reads either).
pub fn neighbour_fields(msg: &NeighbourMessage) -> NeighbourFields {
    let mut f = NeighbourFields::default();
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::Destination(d) => f.ip = neighbour_ip(d),
            NeighbourAttribute::LinkLayerAddress(b) => f.mac = MacAddr::from_bytes(b),
            NeighbourAttribute::Controller(i) => f.master = Some(*i),
            _ => {}
        }
    }
    f
}
