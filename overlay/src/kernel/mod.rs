//! The kernel half: the only code of the overlay that speaks rtnetlink, one
//! module per job.
//!
//! - [`observe`]: the underlay's facts, the device, and dumps of the objects
//!   weft manages, classified into the overlay's vocabulary (also the
//!   monitor's events);
//! - [`apply`]: a [`Plan`](crate::Plan) with many requests in flight on one
//!   socket;
//! - one module per device kind ([`vxlan`]): creating and reading it;
//! - [`monitor`]: the multicast subscription the reconciler listens to.

pub mod apply;
pub mod monitor;
pub mod observe;
pub mod tun;
pub mod vxlan;

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::AddressFamily;
use rtnetlink::Handle;

use crate::error::KernelError;

pub use apply::{show_route, Applied};
pub use observe::{fdb_of, neighbour_of, route_dst, route_of};

const ENODEV: i32 = 19;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

/// Which kernel objects belong to the overlay: the context in which netlink
/// messages are classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// The cluster network: only routes inside it can be weft's.
    pub network: IpNet,
    /// The overlay device's index, if it exists.
    pub overlay: Option<u32>,
    /// The underlay interface's index.
    pub underlay: u32,
}

/// A netlink connection in the network namespace it was opened in.
#[derive(Clone)]
pub struct Kernel {
    handle: Handle,
}

impl Kernel {
    /// Opens a connection in the current network namespace. Its driver task
    /// runs on the current tokio runtime (a current-thread runtime is fastest).
    pub fn connect() -> Result<Kernel, KernelError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(KernelError::Socket)?;
        tokio::spawn(conn);
        Ok(Kernel { handle })
    }

    /// Every neighbour (Inet) or FDB entry (Bridge) the kernel has.
    pub(crate) async fn neighbour_dump(
        &self,
        family: AddressFamily,
        what: &str,
    ) -> Result<Vec<NeighbourMessage>, KernelError> {
        dump_neighbours(&self.handle, family)
            .await
            .map_err(req(what))
    }

    /// The index of the device just made as `name`, once it has `address`
    /// (the device's one address in the cluster network).
    pub(crate) async fn address_new_device(
        &self,
        name: &str,
        address: ipnet::IpNet,
    ) -> Result<u32, KernelError> {
        let link = self
            .link_by_name(name)
            .await?
            .ok_or_else(|| KernelError::NoDevice(name.to_string()))?;
        let ifindex = link.header.index;
        self.handle
            .address()
            .add(ifindex, address.addr(), address.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(req(format!("add address {address}")))?;
        Ok(ifindex)
    }

    pub(crate) async fn link_by_name(
        &self,
        name: &str,
    ) -> Result<Option<LinkMessage>, KernelError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(KernelError::Request {
                what: format!("get link {name}"),
                source: e,
            }),
        }
    }

    pub(crate) async fn addresses(&self, ifindex: u32) -> Result<Vec<IpNet>, KernelError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute()
            .try_collect()
            .await
            .map_err(req(format!("dump addresses of #{ifindex}")))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == ifindex)
            .filter_map(address_of)
            .collect())
    }
}

pub(crate) fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    let what = what.into();
    move |source| KernelError::Request { what, source }
}

/// An `ip route get <dst>` request: a route message naming `dst` alone
/// (a full-length prefix), which the kernel answers with the one route it
/// would use.
pub fn lookup_message(dst: IpAddr) -> netlink_packet_route::route::RouteMessage {
    use rtnetlink::RouteMessageBuilder;
    use std::net::{Ipv4Addr, Ipv6Addr};
    match dst {
        IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(v4, 32)
            .build(),
        IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(v6, 128)
            .build(),
    }
}

/// Every neighbour (`Inet`, `Inet6`) or FDB entry (`Bridge`) in the
/// namespace of `handle`'s connection.
pub async fn dump_neighbours(
    handle: &Handle,
    family: AddressFamily,
) -> Result<Vec<NeighbourMessage>, rtnetlink::Error> {
    handle
        .neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await
}

/// The errno of a netlink error reply, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A delete of something already gone is not a failure.
pub(crate) fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(ENOENT | ESRCH | ENODEV))
}

/// An address message's address with its prefix (either family).
pub fn address_of(m: &AddressMessage) -> Option<IpNet> {
    let mut local: Option<IpAddr> = None;
    let mut address: Option<IpAddr> = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    IpNet::new(local.or(address)?, m.header.prefix_len).ok()
}

/// The netlink family of an address.
pub fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// A link's MTU (0 if it has none).
pub fn link_mtu(link: &LinkMessage) -> u32 {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(0)
}

/// The name in a link message, if any (for monitor events).
pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}
