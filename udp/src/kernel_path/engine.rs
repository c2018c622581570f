//! The receive engine: a VXLAN device that only this node's receive program
//! feeds, so that the kernel's own tunnel code unframes the TCP
//! super-packets a veth underlay hands over whole.
//!
//! Why: a super-packet unframed in tc keeps its UDP tunnel marks on kernels
//! without `BPF_F_ADJ_ROOM_DECAP_L4_UDP` (up to 6.18 at least), and every
//! device on its way to a pod without offloads for tunnels (a bridge,
//! `cni0`) then cuts it up in software. The kernel's VXLAN receive clears
//! those marks. So the receive program reframes such a super-packet as
//! VXLAN, addressed to this device's port and MAC, and hands it to the
//! stack; the VXLAN code unframes it, and the engine's own ingress program
//! puts the inner packet into `flannel0`'s ingress, where every other
//! received packet enters.
//!
//! The device has no address and learns nothing. What it takes is guarded
//! by its MAC address, a random one the kernel chose that is never
//! published: a frame for another MAC is not for this host and is dropped,
//! also while no weftd runs. The device stays across restarts (a restart
//! writes nothing), and is made anew when it is gone or not what it should
//! be. This is the kernel path's one netlink module: the engine's requests,
//! and the link and address events its watcher waits for.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVxlan, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

/// The engine device's name.
pub(crate) const NAME: &str = "weft-udp-rx";
/// Its VXLAN network identifier (only its port tells it from others).
pub(crate) const VNI: u32 = 1;

/// The engine as it is in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Engine {
    /// Interface number.
    pub index: u32,
    /// Its MAC address: the destination the receive program writes.
    pub mac: [u8; 6],
    /// Its UDP port.
    pub port: u16,
}

/// The engine's UDP port for a `Backend.Port`: the next one (the one
/// before for 65535).
pub(crate) fn port_for(backend_port: u16) -> u16 {
    backend_port.checked_add(1).unwrap_or(backend_port - 1)
}

/// What a link dump says about the device called [`NAME`].
#[derive(Debug, Default)]
struct Found {
    index: u32,
    up: bool,
    mac: Option<[u8; 6]>,
    vxlan: bool,
    vni: Option<u32>,
    port: Option<u16>,
    learning: Option<bool>,
}

impl Found {
    fn is(&self, port: u16) -> bool {
        self.vxlan
            && self.vni == Some(VNI)
            && self.port == Some(port)
            && self.learning == Some(false)
    }
}

/// Makes sure the engine exists for `port`, up; writes only what is
/// missing. Returns it.
pub(crate) fn ensure(port: u16) -> io::Result<Engine> {
    let sock = socket()?;
    if let Some(found) = find(&sock)? {
        if found.is(port) {
            if !found.up {
                set_up(&sock, found.index)?;
            }
            if let Some(mac) = found.mac {
                return Ok(Engine {
                    index: found.index,
                    mac,
                    port,
                });
            }
        }
        // Not ours as it should be: made anew.
        delete(&sock, found.index)?;
    }
    create(&sock, port)?;
    let found = find(&sock)?
        .filter(|f| f.is(port) && f.up)
        .ok_or_else(|| io::Error::other(format!("{NAME} is not as made")))?;
    let mac = found
        .mac
        .ok_or_else(|| io::Error::other(format!("{NAME} has no MAC address")))?;
    Ok(Engine {
        index: found.index,
        mac,
        port,
    })
}

/// `RTMGRP_LINK`: links made, changed, deleted.
const GROUP_LINK: u32 = 1;
/// `RTMGRP_IPV4_IFADDR`: IPv4 addresses added and removed.
const GROUP_IPV4_ADDRESS: u32 = 0x10;

/// A socket that receives an event whenever a link or an IPv4 address
/// changes, in the calling thread's network namespace; non-blocking.
pub(crate) fn link_events() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind(&netlink_sys::SocketAddr::new(
        0,
        GROUP_LINK | GROUP_IPV4_ADDRESS,
    ))?;
    sock.set_non_blocking(true)?;
    Ok(sock)
}

/// Reads every event waiting (or the overflow error that says some were
/// lost: the watcher then looks anyway).
pub(crate) fn drain(events: &Socket) {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        match events.recv(&mut buf, 0) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn socket() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    Ok(sock)
}

/// Sends one request and reads its replies up to the ACK (or `NLMSG_DONE`);
/// returns the messages before it.
fn request(
    sock: &Socket,
    message: RouteNetlinkMessage,
    flags: u16,
) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(message));
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut out = Vec::new();
    loop {
        let (reply, _) = sock.recv_from_full()?;
        let mut at = 0;
        while at < reply.len() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[at..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(out),
                        Some(_) => Err(e.to_io()),
                    }
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += (len + 3) & !3;
        }
    }
}

fn find(sock: &Socket) -> io::Result<Option<Found>> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(NAME.into()));
    let replies = match request(sock, RouteNetlinkMessage::GetLink(msg), 0) {
        Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => return Ok(None),
        r => r?,
    };
    Ok(replies.into_iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(link) => Some(found(&link)),
        _ => None,
    }))
}

fn found(link: &LinkMessage) -> Found {
    let mut f = Found {
        index: link.header.index,
        up: link.header.flags.contains(LinkFlags::Up),
        ..Found::default()
    };
    for attr in &link.attributes {
        match attr {
            LinkAttribute::Address(mac) => f.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(InfoKind::Vxlan) => f.vxlan = true,
                        LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                            for a in attrs {
                                match a {
                                    InfoVxlan::Id(v) => f.vni = Some(*v),
                                    InfoVxlan::Port(p) => f.port = Some(*p),
                                    InfoVxlan::Learning(l) => f.learning = Some(*l),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    f
}

/// Makes the engine: down first, so that it never gets an IPv6 link-local
/// address (which would spell out its MAC), then up.
fn create(sock: &Socket, port: u16) -> io::Result<()> {
    let what = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot make {NAME} (vxlan dstport {port}): {e}"),
        )
    };
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(NAME.into()));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Vxlan),
        LinkInfo::Data(InfoData::Vxlan(vec![
            InfoVxlan::Id(VNI),
            InfoVxlan::Port(port),
            InfoVxlan::Learning(false),
        ])),
    ]));
    request(
        sock,
        RouteNetlinkMessage::NewLink(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .map_err(what)?;
    let index = find(sock)?
        .map(|f| f.index)
        .ok_or_else(|| what(io::Error::other("gone right after it was made")))?;
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )]));
    // A kernel without IPv6 has nothing to turn off.
    if let Err(error) = request(sock, RouteNetlinkMessage::SetLink(msg), 0) {
        tracing::debug!(%error, "no IPv6 address generation setting on {NAME}");
    }
    set_up(sock, index).map_err(what)
}

fn set_up(sock: &Socket, index: u32) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    request(sock, RouteNetlinkMessage::SetLink(msg), 0)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot set {NAME} up: {e}")))?;
    Ok(())
}

fn delete(sock: &Socket, index: u32) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    match request(sock, RouteNetlinkMessage::DelLink(msg), 0) {
        Err(e) if e.raw_os_error() != Some(nix::libc::ENODEV) => Err(io::Error::new(
            e.kind(),
            format!("cannot remove {NAME}: {e}"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_next_to_the_backends() {
        assert_eq!(port_for(8285), 8286);
        assert_eq!(port_for(65535), 65534);
    }
}
