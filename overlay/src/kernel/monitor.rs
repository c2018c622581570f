//! The monitor: a multicast subscription to link, address and route events
//! of the cluster network's family and to neighbour (also FDB) events,
//! which the reconciler folds into its view.

use futures::channel::mpsc::UnboundedReceiver;
use ipnet::IpNet;
use netlink_packet_core::NetlinkMessage;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;

use crate::error::KernelError;

/// The events, as they arrive.
pub type Events = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, netlink_sys::SocketAddr)>;

/// Subscribes in the current network namespace, for `network`'s family;
/// the connection's driver runs on the current tokio runtime.
pub fn subscribe(network: IpNet) -> Result<Events, KernelError> {
    let (address, route) = match network {
        IpNet::V4(_) => (MulticastGroup::Ipv4Ifaddr, MulticastGroup::Ipv4Route),
        IpNet::V6(_) => (MulticastGroup::Ipv6Ifaddr, MulticastGroup::Ipv6Route),
    };
    let (mut conn, _handle, events) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        address,
        route,
        MulticastGroup::Neigh,
    ])
    .map_err(KernelError::Socket)?;
    // A bigger buffer makes overruns (and the full re-read they cost) rare.
    let _ = netlink_sys::AsyncSocket::socket_mut(conn.socket_mut()).set_rx_buf_sz(8 * 1024 * 1024);
    tokio::spawn(conn);
    Ok(events)
}
