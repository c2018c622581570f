//! Applying a plan: device operations first, one by one; then every entry
//! request pipelined on one socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteMessage, RouteProtocol};
use netlink_packet_route::AddressFamily;
use rtnetlink::{AddressMessageBuilder, LinkUnspec, RouteMessageBuilder};

use super::{is_gone, req, Kernel, Scope};
use crate::diff::{DeviceOp, Plan};
use crate::error::KernelError;
use crate::state::{Dev, DeviceSpec, FdbEntry, Neighbour, Route};

/// Requests in flight at once on the socket.
const WINDOW: usize = 512;

/// What an apply did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Requests sent.
    pub writes: usize,
    /// Requests the kernel refused (the rest were applied).
    pub errors: Vec<KernelError>,
}

impl Kernel {
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
                tracing::warn!(device = %device.name(), %why, "recreating the device");
                self.handle
                    .link()
                    .del(*ifindex)
                    .execute()
                    .await
                    .map_err(req(format!("delete device {}", device.name())))?;
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
                    .add(idx()?, a.addr(), a.prefix_len())
                    .replace()
                    .execute()
                    .await
                    .map_err(req(format!("add address {a}")))?;
                Ok(None)
            }
            DeviceOp::DelAddress(a) => {
                let msg = match a {
                    IpNet::V4(v4) => AddressMessageBuilder::<Ipv4Addr>::new()
                        .index(idx()?)
                        .address(v4.addr(), v4.prefix_len())
                        .build(),
                    IpNet::V6(v6) => AddressMessageBuilder::<Ipv6Addr>::new()
                        .index(idx()?)
                        .address(v6.addr(), v6.prefix_len())
                        .build(),
                };
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

    /// Creates the device a backend needs; its index.
    async fn create_device(&self, d: &DeviceSpec) -> Result<u32, KernelError> {
        match d {
            DeviceSpec::Vxlan(v) => self.create_vxlan(v).await,
            DeviceSpec::Tun(t) => self.create_tun(t).await,
        }
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
            .add(dev, n.ip)
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
        msg.header.family = match n.ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.ifindex = dev;
        msg.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(n.ip)));
        self.handle.neighbours().del(msg).execute().boxed()
    }

    fn fdb_put(&self, f: &FdbEntry, dev: u32) -> BoxFuture<'_, Result<(), rtnetlink::Error>> {
        self.handle
            .neighbours()
            .add_bridge(dev, &f.mac.octets())
            .flags(NeighbourFlags::Own)
            .destination(f.dst)
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
            .push(NeighbourAttribute::Destination(neighbour_address(f.dst)));
        self.handle.neighbours().del(msg).execute().boxed()
    }
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
    let protocol = RouteProtocol::from(r.protocol);
    // One family per route (weft never mixes them; a mixed one is sent
    // without its gateway, and the kernel refuses it by name).
    // An unspecified gateway: a device route (the UDP backend's network
    // route into flannel0).
    let gateway = (!r.via.is_unspecified()).then_some(r.via);
    match (r.dst, gateway) {
        (IpNet::V4(dst), via) => {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.network(), dst.prefix_len())
                .output_interface(oif)
                .protocol(protocol);
            if let Some(IpAddr::V4(gw)) = via {
                b = b.gateway(gw);
            }
            if r.onlink {
                b = b.onlink();
            }
            b.build()
        }
        (IpNet::V6(dst), via) => {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(dst.network(), dst.prefix_len())
                .output_interface(oif)
                .protocol(protocol);
            if let Some(IpAddr::V6(gw)) = via {
                b = b.gateway(gw);
            }
            if r.onlink {
                b = b.onlink();
            }
            b.build()
        }
    }
}

/// An address as a neighbour message's destination.
fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}
