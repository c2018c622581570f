//! The kernel half: the only module that speaks rtnetlink.
//!
//! It reads the underlay's facts, the overlay device and the objects weft
//! manages, turns netlink messages into the overlay's vocabulary (also for the
//! monitor's events), and applies a [`Plan`] with many requests in flight on
//! one socket.

use std::net::{IpAddr, Ipv4Addr};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{AddressMessageBuilder, Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::diff::{DeviceOp, Plan};
use crate::error::KernelError;
use crate::mac::MacAddr;
use crate::model::UnderlayFacts;
use crate::state::{
    Dev, Entries, FdbEntry, Neighbour, ObservedDevice, Route, VxlanDevice, ROUTE_PROTOCOL,
    RTPROT_KERNEL,
};

/// Requests in flight at once on the socket.
const WINDOW: usize = 512;
const ENODEV: i32 = 19;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

/// Which kernel objects belong to the overlay: the context in which netlink
/// messages are classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// The cluster network: only routes inside it can be weft's.
    pub network: Ipv4Net,
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

/// What an apply did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Requests sent.
    pub writes: usize,
    /// Requests the kernel refused (the rest were applied).
    pub errors: Vec<KernelError>,
}

impl Kernel {
    /// Opens a connection in the current network namespace. Its driver task
    /// runs on the current tokio runtime (a current-thread runtime is fastest).
    pub fn connect() -> Result<Kernel, KernelError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(KernelError::Socket)?;
        tokio::spawn(conn);
        Ok(Kernel { handle })
    }

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
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(msg) = routes.try_next().await.map_err(req("dump routes"))? {
            if let Some(r) = route_of(&msg, scope) {
                out.put_route(r);
            }
        }
        if scope.overlay.is_some() {
            for msg in self
                .neighbour_dump(AddressFamily::Inet, "dump neighbours")
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

    /// Applies a plan: device changes first, one by one; then every entry
    /// change pipelined, in the order route deletes, neighbour and FDB
    /// upserts, route upserts, neighbour and FDB deletes. A refused request is
    /// reported and the others still go through. Returns the scope as it is
    /// afterwards (the device may be new).
    pub async fn apply(&self, plan: &Plan, scope: &Scope) -> (Scope, Applied) {
        let mut applied = Applied::default();
        let mut scope = *scope;
        for op in &plan.device {
            applied.writes += 1;
            match self.device_op(op, scope.overlay).await {
                Ok(Some(ifindex)) => scope.overlay = Some(ifindex),
                Ok(None) => {}
                Err(e) => applied.errors.push(e),
            }
        }
        let mut ops: Vec<(String, BoxFuture<'_, Result<(), rtnetlink::Error>>)> = Vec::new();
        let overlay = scope.overlay;
        let needs_overlay = !plan.neighbours.is_empty()
            || !plan.fdb.is_empty()
            || plan
                .routes
                .add
                .iter()
                .chain(&plan.routes.replace)
                .any(|r| r.dev == Dev::Overlay);
        if needs_overlay && overlay.is_none() {
            applied.errors.push(KernelError::NoDevice("overlay".into()));
            return (scope, applied);
        }
        let ov = overlay.unwrap_or(0);
        for r in &plan.routes.delete {
            ops.push((
                format!("delete {}", show_route(r)),
                self.route_del(r, &scope),
            ));
        }
        for n in plan.neighbours.add.iter().chain(&plan.neighbours.replace) {
            ops.push((
                format!("neighbour {} lladdr {}", n.ip, n.mac),
                self.neighbour_put(n, ov),
            ));
        }
        for f in plan.fdb.add.iter().chain(&plan.fdb.replace) {
            ops.push((format!("fdb {} dst {}", f.mac, f.dst), self.fdb_put(f, ov)));
        }
        for r in plan.routes.add.iter().chain(&plan.routes.replace) {
            ops.push((show_route(r), self.route_put(r, &scope)));
        }
        for n in &plan.neighbours.delete {
            ops.push((
                format!("delete neighbour {}", n.ip),
                self.neighbour_del(n, ov),
            ));
        }
        for f in &plan.fdb.delete {
            ops.push((
                format!("delete fdb {} dst {}", f.mac, f.dst),
                self.fdb_del(f, ov),
            ));
        }
        applied.writes += ops.len();
        let mut results = futures::stream::iter(
            ops.into_iter()
                .map(|(what, fut)| fut.map(move |r| (what, r))),
        )
        .buffer_unordered(WINDOW);
        while let Some((what, result)) = results.next().await {
            if let Err(source) = result {
                if !is_gone(&source) || !what.starts_with("delete") {
                    applied.errors.push(KernelError::Request { what, source });
                }
            }
        }
        (scope, applied)
    }

    async fn device_op(
        &self,
        op: &DeviceOp,
        overlay: Option<u32>,
    ) -> Result<Option<u32>, KernelError> {
        let idx = || overlay.ok_or_else(|| KernelError::NoDevice("overlay".into()));
        match op {
            DeviceOp::Create(d) => self.create_device(d).await.map(Some),
            DeviceOp::Recreate {
                ifindex,
                device,
                why,
            } => {
                tracing::warn!(device = %device.name, %why, "recreating the VXLAN device");
                self.handle
                    .link()
                    .del(*ifindex)
                    .execute()
                    .await
                    .map_err(req(format!("delete device {}", device.name)))?;
                self.create_device(device).await.map(Some)
            }
            DeviceOp::SetMtu(mtu) => {
                let msg = LinkUnspec::new_with_index(idx()?).mtu(*mtu).build();
                self.set_link(msg, format!("set mtu {mtu}")).await
            }
            DeviceOp::SetMac(mac) => {
                let msg = LinkUnspec::new_with_index(idx()?)
                    .address(mac.octets().to_vec())
                    .build();
                self.set_link(msg, format!("set address {mac}")).await
            }
            DeviceOp::SetUp => {
                let msg = LinkUnspec::new_with_index(idx()?).up().build();
                self.set_link(msg, "set up".into()).await
            }
            DeviceOp::AddAddress(a) => {
                self.handle
                    .address()
                    .add(idx()?, IpAddr::V4(a.addr()), a.prefix_len())
                    .replace()
                    .execute()
                    .await
                    .map_err(req(format!("add address {a}")))?;
                Ok(None)
            }
            DeviceOp::DelAddress(a) => {
                let msg = AddressMessageBuilder::<Ipv4Addr>::new()
                    .index(idx()?)
                    .address(a.addr(), a.prefix_len())
                    .build();
                self.handle
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(req(format!("delete address {a}")))?;
                Ok(None)
            }
        }
    }

    /// One `RTM_NEWLINK` change to an existing link.
    async fn set_link(&self, msg: LinkMessage, what: String) -> Result<Option<u32>, KernelError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(req(what))?;
        Ok(None)
    }

    async fn create_device(&self, d: &VxlanDevice) -> Result<u32, KernelError> {
        let what = format!(
            "create {} (vxlan id {} local {} dstport {} dev #{})",
            d.name, d.vni, d.local, d.port, d.underlay
        );
        let mut builder = LinkVxlan::new(&d.name, d.vni)
            .dev(d.underlay)
            .local(d.local)
            .port(d.port)
            .learning(d.learning)
            .mtu(d.mtu);
        if let Some(mac) = d.mac {
            builder = builder.address(mac.octets().to_vec());
        }
        self.handle
            .link()
            .add(builder.up().build())
            .execute()
            .await
            .map_err(req(what))?;
        let link = self
            .link_by_name(&d.name)
            .await?
            .ok_or_else(|| KernelError::NoDevice(d.name.clone()))?;
        let ifindex = link.header.index;
        self.handle
            .address()
            .add(
                ifindex,
                IpAddr::V4(d.address.addr()),
                d.address.prefix_len(),
            )
            .replace()
            .execute()
            .await
            .map_err(req(format!("add address {}", d.address)))?;
        Ok(ifindex)
    }

    fn route_put(&self, r: &Route, scope: &Scope) -> BoxFuture<'_, Result<(), rtnetlink::Error>> {
        let msg = route_message(r, scope);
        self.handle.route().add(msg).replace().execute().boxed()
    }

    fn route_del(&self, r: &Route, scope: &Scope) -> BoxFuture<'_, Result<(), rtnetlink::Error>> {
        let msg = route_message(r, scope);
        self.handle.route().del(msg).execute().boxed()
    }

    fn neighbour_put(
        &self,
        n: &Neighbour,
        dev: u32,
    ) -> BoxFuture<'_, Result<(), rtnetlink::Error>> {
        self.handle
            .neighbours()
            .add(dev, IpAddr::V4(n.ip))
            .link_layer_address(&n.mac.octets())
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .boxed()
    }

    fn neighbour_del(
        &self,
        n: &Neighbour,
        dev: u32,
    ) -> BoxFuture<'_, Result<(), rtnetlink::Error>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = dev;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                n.ip,
            )));
        self.handle.neighbours().del(msg).execute().boxed()
    }

    fn fdb_put(&self, f: &FdbEntry, dev: u32) -> BoxFuture<'_, Result<(), rtnetlink::Error>> {
        self.handle
            .neighbours()
            .add_bridge(dev, &f.mac.octets())
            .flags(NeighbourFlags::Own)
            .destination(IpAddr::V4(f.dst))
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .boxed()
    }

    fn fdb_del(&self, f: &FdbEntry, dev: u32) -> BoxFuture<'_, Result<(), rtnetlink::Error>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = dev;
        msg.header.flags = NeighbourFlags::Own;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(
            f.mac.octets().to_vec(),
        ));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                f.dst,
            )));
        self.handle.neighbours().del(msg).execute().boxed()
    }

    /// Every neighbour (Inet) or FDB entry (Bridge) the kernel has.
    async fn neighbour_dump(
        &self,
        family: AddressFamily,
        what: &str,
    ) -> Result<Vec<NeighbourMessage>, KernelError> {
        self.handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(req(what))
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, KernelError> {
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

    async fn addresses(&self, ifindex: u32) -> Result<Vec<Ipv4Net>, KernelError> {
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

fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    let what = what.into();
    move |source| KernelError::Request { what, source }
}

/// The errno of a netlink error reply, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A delete of something already gone is not a failure.
fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(ENOENT | ESRCH | ENODEV))
}

/// The route as `ip route` would print it, for logs and errors.
pub fn show_route(r: &Route) -> String {
    let dev = match r.dev {
        Dev::Overlay => "overlay".to_string(),
        Dev::Underlay => "underlay".to_string(),
        Dev::Other(i) => format!("#{i}"),
    };
    format!(
        "route {} via {} dev {}{}",
        r.dst,
        r.via,
        dev,
        if r.onlink { " onlink" } else { "" }
    )
}

fn route_message(r: &Route, scope: &Scope) -> RouteMessage {
    let oif = match r.dev {
        Dev::Overlay => scope.overlay.unwrap_or(0),
        Dev::Underlay => scope.underlay,
        Dev::Other(i) => i,
    };
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix_len())
        .gateway(r.via)
        .output_interface(oif)
        .protocol(RouteProtocol::from(r.protocol));
    if r.onlink {
        b = b.onlink();
    }
    b.build()
}

/// A route message as a managed [`Route`], or `None` when it is not weft's to manage:
/// outside the main table or the cluster network, or neither tagged with weft's
/// protocol nor a flannel leftover on the overlay device.
pub fn route_of(msg: &RouteMessage, scope: &Scope) -> Option<Route> {
    let h = &msg.header;
    if h.address_family != AddressFamily::Inet || h.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(h.table);
    let (mut dst, mut via, mut oif, mut priority) = (None, None, None, 0);
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => via = Some(*ip),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => priority = *p,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || priority != 0 {
        return None;
    }
    let dst = Ipv4Net::new(dst?, h.destination_prefix_length).ok()?;
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
        via: via.unwrap_or(Ipv4Addr::UNSPECIFIED),
        dev,
        onlink: h.flags.contains(RouteFlags::Onlink),
        protocol,
    })
}

/// The destination of an IPv4 route message, whoever owns the route.
pub fn route_dst(r: &RouteMessage) -> Option<Ipv4Net> {
    if r.header.address_family != AddressFamily::Inet {
        return None;
    }
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
            Ipv4Net::new(*ip, r.header.destination_prefix_length).ok()
        }
        _ => None,
    })
}

/// A PERMANENT IPv4 neighbour on the overlay device.
pub fn neighbour_of(msg: &NeighbourMessage, scope: &Scope) -> Option<Neighbour> {
    let h = &msg.header;
    if h.family != AddressFamily::Inet
        || Some(h.ifindex) != scope.overlay
        || h.state != NeighbourState::Permanent
    {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => ip = Some(*v),
            NeighbourAttribute::LinkLayerAddress(b) => mac = MacAddr::from_bytes(b),
            _ => {}
        }
    }
    Some(Neighbour { ip: ip?, mac: mac? })
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
    let mut dst = None;
    let mut mac = None;
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => dst = Some(*v),
            // AF_BRIDGE dumps carry NDA_DST as raw bytes (the parser cannot tell the family).
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                dst = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            NeighbourAttribute::LinkLayerAddress(b) => mac = MacAddr::from_bytes(b),
            _ => {}
        }
    }
    let mac = mac.filter(MacAddr::is_unicast)?;
    Some(FdbEntry { mac, dst: dst? })
}

fn address_of(m: &AddressMessage) -> Option<Ipv4Net> {
    let mut local = None;
    let mut address = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
            AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
            _ => {}
        }
    }
    Ipv4Net::new(local.or(address)?, m.header.prefix_len).ok()
}

fn link_mtu(link: &LinkMessage) -> u32 {
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

fn observed_device(link: &LinkMessage) -> ObservedDevice {
    let mut dev = ObservedDevice {
        ifindex: link.header.index,
        is_vxlan: false,
        vni: None,
        local: None,
        port: None,
        underlay: None,
        learning: None,
        mtu: link_mtu(link),
        mac: None,
        up: link.header.flags.contains(LinkFlags::Up),
        addresses: Vec::new(),
    };
    for a in &link.attributes {
        match a {
            LinkAttribute::Address(b) => dev.mac = MacAddr::from_bytes(b),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(InfoKind::Vxlan) => dev.is_vxlan = true,
                        LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                            for v in attrs {
                                match v {
                                    InfoVxlan::Id(id) => dev.vni = Some(*id),
                                    InfoVxlan::Local(ip) => dev.local = Some(*ip),
                                    InfoVxlan::Port(p) => dev.port = Some(*p),
                                    InfoVxlan::Link(l) => dev.underlay = Some(*l),
                                    InfoVxlan::Learning(l) => dev.learning = Some(*l),
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
    dev
}

/// A network interface with its IPv4 addresses (for choosing the underlay).
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
    /// IPv4 addresses with prefix, in the kernel's order.
    pub addresses: Vec<Ipv4Net>,
}

impl Kernel {
    /// Every interface with its IPv4 addresses.
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

    /// The interface index of the main table's IPv4 default route, if any.
    pub async fn default_route_interface(&self) -> Result<Option<u32>, KernelError> {
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(msg) = routes.try_next().await.map_err(req("dump routes"))? {
            let main = msg.header.table == RouteHeader::RT_TABLE_MAIN
                || msg
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Table(254)));
            if msg.header.address_family == AddressFamily::Inet
                && msg.header.destination_prefix_length == 0
                && main
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
        dst: Ipv4Addr,
    ) -> Result<Option<(u32, Option<Ipv4Addr>)>, KernelError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        let mut answer = self.handle.route().get(msg).execute();
        match answer.try_next().await {
            Ok(Some(r)) => {
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                let src = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => Some(*ip),
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
