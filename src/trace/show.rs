//! Kernel rows printed the way `ip` and `bridge` print them (the fields a
//! person reads; the walk's results are netlink reads, not tool output).

use std::net::IpAddr;

use super::place::{FdbRow, LinkKind, LinkRow, NeighRow, Place, RouteLookup};

/// `ip route get <dst>`'s line.
pub fn route<R>(p: &Place<R>, dst: IpAddr, r: &RouteLookup) -> String {
    let src = |s: &Option<IpAddr>| s.map(|s| format!(" src {s}")).unwrap_or_default();
    match r {
        RouteLookup::Unicast { via, dev, src: s } => {
            let via = via.map(|v| format!(" via {v}")).unwrap_or_default();
            format!("{dst}{via} dev {}{}", p.link_name(*dev), src(s))
        }
        RouteLookup::Local { dev, src: s } => {
            format!("local {dst} dev {}{}", p.link_name(*dev), src(s))
        }
        RouteLookup::Refused(why) => format!("RTNETLINK answers: {why}"),
    }
}

/// `ip neigh`'s line.
pub fn neighbour<R>(p: &Place<R>, n: &NeighRow) -> String {
    let lladdr = n.mac.map(|m| format!(" lladdr {m}")).unwrap_or_default();
    format!("{} dev {}{lladdr} {}", n.ip, p.link_name(n.dev), n.state)
}

/// `bridge fdb`'s line.
pub fn fdb<R>(p: &Place<R>, f: &FdbRow) -> String {
    let mut s = format!("{} dev {}", f.mac, p.link_name(f.dev));
    if let Some(dst) = f.dst {
        s.push_str(&format!(" dst {dst}"));
    }
    if let Some(m) = f.master {
        s.push_str(&format!(" master {}", p.link_name(m)));
    }
    if f.own {
        s.push_str(" self");
    }
    if f.permanent {
        s.push_str(" permanent");
    }
    s
}

/// `ip [-d] link show <dev>`'s lines.
pub fn link<R>(p: &Place<R>, l: &LinkRow, details: bool) -> Vec<String> {
    let mut flags = Vec::new();
    if l.kind == LinkKind::Tun {
        flags.push("POINTOPOINT");
    }
    if l.up {
        flags.push("UP");
    }
    let peer = l.peer_index.map(|i| format!("@if{i}")).unwrap_or_default();
    let mut first = format!(
        "{}: {}{peer}: <{}> mtu {}",
        l.index,
        l.name,
        flags.join(","),
        l.mtu
    );
    if let Some(m) = l.master {
        first.push_str(&format!(" master {}", p.link_name(m)));
    }
    first.push_str(if l.up { " state UP" } else { " state DOWN" });
    let mut out = vec![first];
    match l.mac {
        Some(mac) => out.push(format!("    link/ether {mac}")),
        None if l.kind == LinkKind::Tun => out.push("    link/none".to_string()),
        None => {}
    }
    if details {
        match &l.kind {
            LinkKind::Vxlan { vni, port, local } => {
                let mut d = String::from("    vxlan");
                if let Some(v) = vni {
                    d.push_str(&format!(" id {v}"));
                }
                if let Some(a) = local {
                    d.push_str(&format!(" local {a}"));
                }
                if let Some(port) = port {
                    d.push_str(&format!(" dstport {port}"));
                }
                out.push(d);
            }
            LinkKind::Tun => out.push("    tun type tun".to_string()),
            LinkKind::Bridge => out.push("    bridge".to_string()),
            LinkKind::Veth => out.push("    veth".to_string()),
            LinkKind::Loopback | LinkKind::Other(_) => {}
        }
    }
    out
}
