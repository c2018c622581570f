//! The trace's kernel half: the only code of `weft trace` that reads the
//! kernel. Each namespace gets its own netlink socket, opened while the
//! calling thread is inside it (a socket stays in the namespace it was
//! made in); weftd's agent socket and the NAT rules are read the same way,
//! entering the namespace for the call and leaving it at once. Nothing is
//! ever written.

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use netlink_packet_route::AddressFamily;
use nix::sched::{setns, CloneFlags};
use rtnetlink::Handle;
use weft_nat::{NatMode, Snapshot as NatSnapshot};
use weft_overlay::kernel::observe::neighbour_fields;
use weft_overlay::kernel::{address_of, dump_neighbours, errno, link_name};
use weft_overlay::MacAddr;

use super::place::{FdbRow, LinkKind, LinkRow, NeighRow, Place, Reader, RouteLookup};
use crate::agent::instance;
use crate::status::Status;

/// The calling thread, moved into a network namespace until dropped.
struct Inside {
    home: File,
}

impl Inside {
    /// Enters `ns` (`None`: stays where it is).
    fn enter(ns: Option<&Path>) -> Result<Option<Inside>, String> {
        let Some(ns) = ns else {
            return Ok(None);
        };
        let home = File::open("/proc/thread-self/ns/net")
            .map_err(|e| format!("own network namespace: {e}"))?;
        let target = File::open(ns).map_err(|e| format!("{}: {e}", ns.display()))?;
        setns(&target, CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("entering {}: {e}", ns.display()))?;
        Ok(Some(Inside { home }))
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.home, CloneFlags::CLONE_NEWNET) {
            // Staying in another namespace would make every later read lie.
            eprintln!("weft: cannot return to the own network namespace: {e}");
            std::process::abort();
        }
    }
}

/// One namespace's kernel.
pub struct NsKernel {
    ns: Option<PathBuf>,
    handle: Handle,
}

/// Reads the namespace at `ns` (`None`: the calling thread's own) into a
/// [`Place`]: its links with their addresses and weftd's status, with a
/// reader for the rest. Call it on a tokio runtime.
pub async fn open(ns: Option<&Path>, name: &str) -> Result<Place<NsKernel>, String> {
    let (conn, handle, status) = {
        let _inside = Inside::enter(ns)?;
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| format!("netlink socket in {name}: {e}"))?;
        let status = instance::ask(instance::STATUS)
            .ok()
            .flatten()
            .and_then(|a| serde_json::from_str::<Status>(&a).ok());
        (conn, handle, status)
    };
    tokio::spawn(conn);
    let kernel = NsKernel {
        ns: ns.map(Path::to_path_buf),
        handle,
    };
    let links = kernel
        .links()
        .await
        .map_err(|e| format!("links of {name}: {e}"))?;
    Ok(Place {
        name: name.to_string(),
        links,
        status,
        reader: kernel,
    })
}

impl NsKernel {
    /// Every neighbour (Inet, Inet6) or FDB entry (Bridge) of the namespace.
    async fn neighbour_dump(
        &self,
        family: AddressFamily,
        what: &str,
    ) -> Result<Vec<NeighbourMessage>, String> {
        dump_neighbours(&self.handle, family)
            .await
            .map_err(|e| format!("{what}: {e}"))
    }

    async fn links(&self) -> Result<Vec<LinkRow>, rtnetlink::Error> {
        let msgs: Vec<LinkMessage> = self.handle.link().get().execute().try_collect().await?;
        let addrs: Vec<AddressMessage> =
            self.handle.address().get().execute().try_collect().await?;
        Ok(msgs
            .iter()
            .map(|m| {
                let mut row = link_row(m);
                row.addrs = addrs
                    .iter()
                    .filter(|a| a.header.index == row.index)
                    .filter_map(address_of)
                    .collect();
                row
            })
            .collect())
    }
}

fn link_row(m: &LinkMessage) -> LinkRow {
    let mut row = LinkRow {
        index: m.header.index,
        name: link_name(m).unwrap_or_default().to_string(),
        kind: LinkKind::Other(String::new()),
        mac: None,
        mtu: weft_overlay::kernel::link_mtu(m),
        up: m.header.flags.contains(LinkFlags::Up),
        master: None,
        peer_index: None,
        addrs: Vec::new(),
    };
    if m.header.flags.contains(LinkFlags::Loopback) {
        row.kind = LinkKind::Loopback;
    }
    for a in &m.attributes {
        match a {
            LinkAttribute::Address(b) => {
                row.mac = MacAddr::from_bytes(b).filter(|m| m.octets() != [0; 6]);
            }
            LinkAttribute::Controller(i) => row.master = Some(*i),
            LinkAttribute::Link(i) => row.peer_index = Some(*i),
            LinkAttribute::LinkInfo(infos) => row.kind = kind_of(infos, row.kind.clone()),
            _ => {}
        }
    }
    row
}

fn kind_of(infos: &[LinkInfo], otherwise: LinkKind) -> LinkKind {
    let Some(kind) = infos.iter().find_map(|i| match i {
        LinkInfo::Kind(k) => Some(k),
        _ => None,
    }) else {
        return otherwise;
    };
    match kind {
        InfoKind::Vxlan => {
            let p = weft_overlay::kernel::vxlan::params(infos).unwrap_or_default();
            LinkKind::Vxlan {
                vni: p.vni,
                port: p.port,
                local: p.local,
            }
        }
        InfoKind::Tun => LinkKind::Tun,
        InfoKind::Bridge => LinkKind::Bridge,
        InfoKind::Veth => LinkKind::Veth,
        other => LinkKind::Other(format!("{other:?}").to_lowercase()),
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

/// The kernel's words for an errno, without Rust's "(os error N)".
fn words(code: i32) -> String {
    let text = std::io::Error::from_raw_os_error(code).to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

fn state_name(s: NeighbourState) -> String {
    match s {
        NeighbourState::Incomplete => "INCOMPLETE",
        NeighbourState::Reachable => "REACHABLE",
        NeighbourState::Stale => "STALE",
        NeighbourState::Delay => "DELAY",
        NeighbourState::Probe => "PROBE",
        NeighbourState::Failed => "FAILED",
        NeighbourState::Noarp => "NOARP",
        NeighbourState::Permanent => "PERMANENT",
        NeighbourState::None => "NONE",
        _ => "?",
    }
    .to_string()
}

impl Reader for NsKernel {
    async fn route_get(&self, dst: IpAddr) -> RouteLookup {
        let msg = weft_overlay::kernel::lookup_message(dst);
        let answer = self.handle.route().get(msg).execute().try_next().await;
        let msg = match answer {
            Ok(Some(m)) => m,
            Ok(None) => return RouteLookup::Refused("no answer".to_string()),
            Err(e) => return RouteLookup::Refused(errno(&e).map_or_else(|| e.to_string(), words)),
        };
        let (mut via, mut dev, mut src) = (None, 0, None);
        for a in &msg.attributes {
            match a {
                RouteAttribute::Gateway(g) => via = route_ip(g),
                RouteAttribute::Oif(i) => dev = *i,
                RouteAttribute::PrefSource(s) => src = route_ip(s),
                _ => {}
            }
        }
        match msg.header.kind {
            RouteType::Local => RouteLookup::Local { dev, src },
            RouteType::Unicast => RouteLookup::Unicast { via, dev, src },
            RouteType::Unreachable => RouteLookup::Refused(words(113)),
            RouteType::BlackHole => RouteLookup::Refused("blackhole route".to_string()),
            RouteType::Prohibit => RouteLookup::Refused(words(13)),
            other => RouteLookup::Refused(format!("{other:?} route")),
        }
    }

    async fn neighbours(&self, family_of: IpAddr) -> Result<Vec<NeighRow>, String> {
        let family = match family_of {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        Ok(self
            .neighbour_dump(family, "neighbour dump")
            .await?
            .iter()
            .filter_map(|m| {
                let f = neighbour_fields(m);
                Some(NeighRow {
                    ip: f.ip?,
                    dev: m.header.ifindex,
                    mac: f.mac,
                    state: state_name(m.header.state),
                })
            })
            .collect())
    }

    async fn fdb(&self) -> Result<Vec<FdbRow>, String> {
        Ok(self
            .neighbour_dump(AddressFamily::Bridge, "fdb dump")
            .await?
            .iter()
            .filter_map(|m| {
                let f = neighbour_fields(m);
                Some(FdbRow {
                    mac: f.mac?,
                    dev: m.header.ifindex,
                    dst: f.ip,
                    master: f.master,
                    own: m.header.flags.contains(NeighbourFlags::Own),
                    permanent: m.header.state == NeighbourState::Permanent,
                })
            })
            .collect())
    }

    async fn nat(
        &self,
        family_of: IpAddr,
        mode: Option<NatMode>,
    ) -> Result<Option<(NatMode, NatSnapshot)>, String> {
        let family = weft_nat::Family::of(&ipnet::IpNet::from(family_of));
        let _inside = Inside::enter(self.ns.as_deref())?;
        let modes = match mode {
            Some(m) => vec![m],
            None => vec![
                NatMode::Nftables,
                NatMode::IptablesNft,
                NatMode::IptablesLegacy,
            ],
        };
        let mut last_error = None;
        for m in &modes {
            match m.backend(family).observe() {
                Ok(s) if !s.is_empty() => return Ok(Some((*m, s))),
                Ok(_) => {}
                Err(e) => last_error = Some(format!("{m}: {e}")),
            }
        }
        match (mode, last_error) {
            (Some(_), Some(e)) => Err(e),
            _ => Ok(None),
        }
    }
}
