//! The host's interfaces and routes, as the agent needs them to choose the
//! underlay the way flanneld does (`--iface`, `--iface-regex`,
//! `--iface-can-reach`, the default route). The agent's only rtnetlink
//! user; the overlay's kernel module knows nothing of it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};
use weft_overlay::kernel::{address_of, errno, link_mtu, link_name};
use weft_overlay::{Family, KernelError};

fn req(what: &str) -> impl FnOnce(rtnetlink::Error) -> KernelError + '_ {
    move |source| KernelError::Request {
        what: what.to_string(),
        source,
    }
}

/// A netlink connection for the host's queries.
pub struct Host {
    handle: Handle,
}

impl Host {
    /// Opens a connection in the current network namespace (its driver runs
    /// on the current tokio runtime).
    pub fn connect() -> Result<Host, KernelError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(KernelError::Socket)?;
        tokio::spawn(conn);
        Ok(Host { handle })
    }
}

/// A network interface with its addresses (for choosing the underlay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// Index.
    pub index: u32,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Addresses with prefix, of both families, in the kernel's order.
    pub addresses: Vec<IpNet>,
}

impl Host {
    /// Every interface with its addresses.
    pub async fn interfaces(&self) -> Result<Vec<Interface>, KernelError> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(req("dump links"))?;
        let addrs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(req("dump addresses"))?;
        Ok(links
            .iter()
            .map(|l| Interface {
                name: link_name(l).unwrap_or_default().to_string(),
                index: l.header.index,
                mtu: link_mtu(l),
                up: l.header.flags.contains(LinkFlags::Up),
                addresses: addrs
                    .iter()
                    .filter(|a| a.header.index == l.header.index)
                    .filter_map(address_of)
                    .collect(),
            })
            .collect())
    }

    /// The interface index of the main table's default route of `family`
    /// (`0.0.0.0/0`, `::/0`), if any.
    pub async fn default_route_interface(
        &self,
        family: Family,
    ) -> Result<Option<u32>, KernelError> {
        let (query, af) = match family {
            Family::V4 => (
                RouteMessageBuilder::<Ipv4Addr>::new().build(),
                AddressFamily::Inet,
            ),
            Family::V6 => (
                RouteMessageBuilder::<Ipv6Addr>::new().build(),
                AddressFamily::Inet6,
            ),
        };
        let mut routes = self.handle.route().get(query).execute();
        while let Some(msg) = routes.try_next().await.map_err(req("dump routes"))? {
            let main = msg.header.table == RouteHeader::RT_TABLE_MAIN
                || msg
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Table(254)));
            if msg.header.address_family == af && msg.header.destination_prefix_length == 0 && main
            {
                if let Some(oif) = msg.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                }) {
                    return Ok(Some(oif));
                }
            }
        }
        Ok(None)
    }

    /// `ip route get <dst>`: the outgoing interface and the preferred source address.
    pub async fn route_to(
        &self,
        dst: IpAddr,
    ) -> Result<Option<(u32, Option<IpAddr>)>, KernelError> {
        let msg = weft_overlay::kernel::lookup_message(dst);
        let mut answer = self.handle.route().get(msg).execute();
        match answer.try_next().await {
            Ok(Some(r)) => {
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                let src = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
                    RouteAttribute::PrefSource(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
                    _ => None,
                });
                Ok(oif.map(|o| (o, src)))
            }
            Ok(None) => Ok(None),
            Err(e) if errno(&e).is_some() => Ok(None),
            Err(e) => Err(KernelError::Request {
                what: format!("route get {dst}"),
                source: e,
            }),
        }
    }
}
