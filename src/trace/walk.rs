//! The walk: the seed's "day in the life of a packet", hop by hop, over
//! whatever places were read. Each hop asks one namespace's kernel what a
//! person would ask (`ip route get`, `ip neigh get`, `bridge fdb`, `ip -d
//! link show`), holds the answer against what weftd wants where weftd
//! answers, and either names the next place or names the fault: the first
//! fault ends the walk, because the packet goes no further.

use std::net::IpAddr;

use ipnet::IpNet;
use weft_nat::{NatMode, Options as NatOptions, RuleSet, SnatRules, Verdict};
use weft_overlay::MacAddr;

use super::place::{LinkKind, NeighRow, Place, Reader, RouteLookup, POD_BRIDGE};
use super::show;
use super::{End, Hop, Step, Trace};

/// kube-proxy's mark is not on a packet the walk follows.
const NO_MARK: u32 = 0;

/// Walks a packet from `src` to `dst` through `places`. `networks` are the
/// cluster networks to assume where no weftd answers (from subnet.env).
pub async fn walk<R: Reader>(
    places: &[Place<R>],
    networks: &[IpNet],
    src: IpAddr,
    dst: IpAddr,
) -> Result<Trace, String> {
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(format!("{src} and {dst} are of different address families"));
    }
    let mut w = Walker {
        places,
        networks,
        src,
        dst,
        hops: Vec::new(),
    };
    let end = w.run().await?;
    Ok(Trace {
        src,
        dst,
        hops: w.hops,
        end,
    })
}

struct Walker<'a, R> {
    places: &'a [Place<R>],
    networks: &'a [IpNet],
    src: IpAddr,
    dst: IpAddr,
    hops: Vec<Hop>,
}

/// A hop that ended the walk.
struct Fault;

type Flow<T> = Result<T, Fault>;

impl<R: Reader> Walker<'_, R> {
    async fn run(&mut self) -> Result<End, String> {
        let (src, dst) = (self.src, self.dst);
        let src_node = self
            .find(|p| p.is_node() && p.holds(src))
            .or_else(|| self.find(|p| p.is_node() && p.hosts_pod_ip(src)));
        let Some(node) = src_node else {
            // Not sent from here: follow it from where it arrives, if that is here.
            let Some(dest) = self.dest_node(dst) else {
                return Err(format!(
                    "neither {src} nor {dst} is on a node read here (run weft trace on the source's node)"
                ));
            };
            let name = self.places[dest].node_name().to_string();
            self.note(
                Step::Arrival,
                dest,
                format!("{src} is not on a node read here: the walk starts where the packet arrives, on {name}"),
            );
            let arrived = match self.arrival_device(dest) {
                Ok(()) => self.deliver(dest).await,
                Err(f) => Err(f),
            };
            return Ok(arrived.unwrap_or(End::Dropped));
        };
        Ok(self.send(node).await.unwrap_or(End::Dropped))
    }

    /// Where a packet from another node comes in: the overlay device of
    /// the source's family (VXLAN or flannel0; host-gw has none), which
    /// must be up.
    fn arrival_device(&mut self, dest: usize) -> Flow<()> {
        let src = self.src;
        let device = self.places[dest]
            .links
            .iter()
            .filter(|l| match l.kind {
                LinkKind::Vxlan { local, .. } => local.is_none_or(|a| a.is_ipv4() == src.is_ipv4()),
                LinkKind::Tun => l.name.starts_with("flannel"),
                _ => false,
            })
            .min_by_key(|l| l.index)
            .cloned();
        let Some(device) = device else {
            return Ok(());
        };
        let lines = show::link(&self.places[dest], &device, true);
        self.hop(
            Step::Vtep,
            dest,
            format!("It comes in through {}", device.name),
            format!("ip -d link show {}", device.name),
            lines,
        );
        if !device.up {
            return Err(self.fault(format!(
                "{} is down: the packet is dropped here",
                device.name
            )));
        }
        Ok(())
    }

    fn find(&self, f: impl Fn(&Place<R>) -> bool) -> Option<usize> {
        self.places.iter().position(f)
    }

    /// The node `dst` lives on: its own address, or one of its pods'.
    fn dest_node(&self, dst: IpAddr) -> Option<usize> {
        self.find(|p| p.is_node() && p.holds(dst))
            .or_else(|| self.find(|p| p.is_node() && p.hosts_pod_ip(dst)))
    }

    /// The namespace of the pod holding `ip`, if it was read.
    fn pod(&self, ip: IpAddr) -> Option<usize> {
        self.find(|p| !p.is_node() && p.holds(ip))
    }

    fn push(&mut self, step: Step, at: usize, says: String, command: Option<String>) -> usize {
        self.hops.push(Hop {
            step,
            place: self.places[at].node_name().to_string(),
            says,
            command,
            output: Vec::new(),
            fault: None,
        });
        self.hops.len() - 1
    }

    fn note(&mut self, step: Step, at: usize, says: String) {
        self.push(step, at, says, None);
    }

    fn hop(&mut self, step: Step, at: usize, says: String, command: String, output: Vec<String>) {
        let i = self.push(step, at, says, Some(command));
        self.hops[i].output = output;
    }

    /// Marks the last hop as where the packet is lost.
    fn fault(&mut self, why: String) -> Fault {
        if let Some(h) = self.hops.last_mut() {
            h.fault = Some(why);
        }
        Fault
    }

    async fn route_hop(&mut self, step: Step, at: usize, says: String) -> RouteLookup {
        let r = self.places[at].reader.route_get(self.dst).await;
        let line = show::route(&self.places[at], self.dst, &r);
        self.hop(
            step,
            at,
            says,
            format!("ip route get {}", self.dst),
            vec![line],
        );
        r
    }

    async fn send(&mut self, node: usize) -> Flow<End> {
        let (src, dst) = (self.src, self.dst);
        let node_name = self.places[node].node_name().to_string();
        if !self.places[node].holds(src) {
            self.source_pod(node).await?;
        }
        let says = if self.places[node].holds(src) {
            format!("{node_name} (the source itself, host network) looks up the route")
        } else {
            format!(
                "The packet reaches {POD_BRIDGE} on {node_name}, where the lookup is done again"
            )
        };
        match self.route_hop(Step::NodeRoute, node, says).await {
            RouteLookup::Refused(_) => Err(self.fault(format!(
                "{node_name} has no route to {dst}: the packet is dropped here"
            ))),
            RouteLookup::Local { .. } => Ok(End::Delivered {
                place: node_name.clone(),
            }),
            RouteLookup::Unicast {
                via,
                dev,
                src: out_src,
            } => {
                let kind = self.places[node].link(dev).map(|l| l.kind.clone());
                let dev_name = self.places[node].link_name(dev);
                match kind {
                    Some(LinkKind::Bridge) if dev_name == POD_BRIDGE => {
                        self.deliver_on_bridge(node).await
                    }
                    Some(LinkKind::Vxlan { .. }) => match via {
                        Some(gw) => self.vxlan(node, gw, dev).await,
                        None => Err(self.fault(format!(
                            "the route to {dst} on {dev_name} has no gateway, so no neighbour names the VTEP: the packet is dropped here"
                        ))),
                    },
                    Some(LinkKind::Tun) => self.forwarder(node, dev).await,
                    _ if self.in_cluster(node, dst) => match via {
                        Some(gw) => self.direct(node, gw, dev).await,
                        None => Err(self.fault(format!(
                            "{dst} is sent out {dev_name} without a gateway, to no node: the packet is lost here"
                        ))),
                    },
                    _ => self.outside(node, dev, out_src).await,
                }
            }
        }
    }

    /// The source pod's own route and its way onto the bridge.
    async fn source_pod(&mut self, node: usize) -> Flow<()> {
        let (src, dst) = (self.src, self.dst);
        let node_name = self.places[node].node_name().to_string();
        let Some(pod) = self.pod(src) else {
            let gw = self.places[node]
                .link_named(POD_BRIDGE)
                .and_then(|b| b.addrs.iter().find(|a| a.contains(&src)).map(|a| a.addr()));
            let says = match gw {
                Some(gw) => format!(
                    "{src} is a pod of {node_name}; its namespace is not read here. weft-cni gives every pod `default via {gw} dev eth0`"
                ),
                None => format!("{src} is a pod of {node_name}; its namespace is not read here"),
            };
            self.note(Step::PodRoute, node, says);
            return self.source_bridge_by_tables(node).await;
        };
        let pod_name = self.places[pod].name.clone();
        let r = self
            .route_hop(
                Step::PodRoute,
                pod,
                "The pod looks up the next hop".to_string(),
            )
            .await;
        let RouteLookup::Unicast { dev, .. } = r else {
            return Err(self.fault(format!(
                "{pod_name} has no route to {dst}: the packet is dropped here"
            )));
        };
        let Some(peer) = self.places[pod].link(dev).and_then(|l| l.peer_index) else {
            return Ok(());
        };
        let Some(port) = self.places[node].link(peer).cloned() else {
            return Err(self.fault(format!(
                "{pod_name}'s {} has no peer on {node_name}: the packet goes nowhere",
                self.places[pod].link_name(dev)
            )));
        };
        let lines = show::link(&self.places[node], &port, false);
        self.hop(
            Step::Bridge,
            node,
            format!("It leaves through the pod's veth, a port of {POD_BRIDGE} on {node_name}"),
            format!("ip link show {}", port.name),
            lines,
        );
        let master = port.master.map(|m| self.places[node].link_name(m));
        if master.as_deref() != Some(POD_BRIDGE) {
            return Err(self.fault(format!(
                "{} is not a port of {POD_BRIDGE}: the packet is dropped here",
                port.name
            )));
        }
        if !port.up {
            return Err(self.fault(format!("{} is down: the packet is dropped here", port.name)));
        }
        Ok(())
    }

    /// Which port of the bridge the source pod hangs off, from the node's
    /// neighbour and FDB tables (when its namespace is not read).
    async fn source_bridge_by_tables(&mut self, node: usize) -> Flow<()> {
        let src = self.src;
        let Some(bridge) = self.places[node].link_named(POD_BRIDGE).map(|b| b.index) else {
            return Ok(());
        };
        let Some(mac) = self
            .neighbour_hop(node, src, bridge, Step::Bridge)
            .await?
            .and_then(|n| n.mac)
        else {
            return Ok(());
        };
        self.port_hop(node, mac, bridge, Step::Bridge)
            .await
            .map(|_| ())
    }

    /// `ip neigh get <ip> dev <dev>`; a FAILED entry is the fault.
    async fn neighbour_hop(
        &mut self,
        at: usize,
        ip: IpAddr,
        dev: u32,
        step: Step,
    ) -> Flow<Option<NeighRow>> {
        let dev_name = self.places[at].link_name(dev);
        let found = self.neighbour(at, ip, dev).await;
        let command = format!("ip neigh get {ip} dev {dev_name}");
        let who = self.places[at].node_name().to_string();
        match &found {
            Ok(Some(n)) => {
                let line = show::neighbour(&self.places[at], n);
                self.hop(
                    step,
                    at,
                    format!("{who}'s neighbour table gives {ip}'s MAC"),
                    command,
                    vec![line],
                );
                if n.state == "FAILED" || n.state == "INCOMPLETE" {
                    return Err(self.fault(format!(
                        "{ip} does not answer ARP/ND on {dev_name}: the packet is dropped here"
                    )));
                }
            }
            Ok(None) => self.hop(
                step,
                at,
                format!("{who} has no neighbour entry for {ip} yet: it resolves it with ARP/ND on {dev_name}"),
                command,
                vec![format!("(no entry for {ip} on {dev_name})")],
            ),
            Err(e) => self.hop(step, at, format!("{who}'s neighbour table could not be read"), command, vec![e.clone()]),
        }
        Ok(found.ok().flatten())
    }

    async fn neighbour(&self, at: usize, ip: IpAddr, dev: u32) -> Result<Option<NeighRow>, String> {
        let all = self.places[at].reader.neighbours(ip).await?;
        Ok(all.into_iter().find(|n| n.ip == ip && n.dev == dev))
    }

    /// `bridge fdb get <mac> br <bridge>`: the port a MAC was learnt on.
    async fn port_hop(
        &mut self,
        at: usize,
        mac: MacAddr,
        bridge: u32,
        step: Step,
    ) -> Flow<Option<u32>> {
        let fdb = self.places[at].reader.fdb().await;
        let row = fdb.as_ref().ok().and_then(|rows| {
            rows.iter()
                .find(|f| f.mac == mac && f.master == Some(bridge) && f.dev != bridge)
                .cloned()
        });
        let command = format!("bridge fdb get {mac} br {POD_BRIDGE}");
        match (row, fdb) {
            (Some(r), _) => {
                let line = show::fdb(&self.places[at], &r);
                let port = self.places[at].link_name(r.dev);
                self.hop(
                    step,
                    at,
                    format!("{POD_BRIDGE}'s forwarding table finds the pod's veth, {port}"),
                    command,
                    vec![line],
                );
                Ok(Some(r.dev))
            }
            (None, Ok(_)) => {
                self.hop(
                    step,
                    at,
                    format!(
                        "{POD_BRIDGE} has not learnt {mac} yet: it floods the frame to every port"
                    ),
                    command,
                    vec![format!("(no entry for {mac} on {POD_BRIDGE})")],
                );
                Ok(None)
            }
            (None, Err(e)) => {
                self.hop(
                    step,
                    at,
                    format!("{POD_BRIDGE}'s forwarding table could not be read"),
                    command,
                    vec![e],
                );
                Ok(None)
            }
        }
    }

    /// Whether `ip` is in the cluster network (weftd's, else subnet.env's,
    /// else a pod of a node read here).
    fn in_cluster(&self, node: usize, ip: IpAddr) -> bool {
        self.places[node].network_of(ip).is_some()
            || self.networks.iter().any(|n| n.contains(&ip))
            || self
                .places
                .iter()
                .any(|p| p.is_node() && p.hosts_pod_ip(ip))
    }

    /// The peer weftd on `node` has for `ip`'s subnet.
    fn peer_for(&self, node: usize, ip: IpAddr) -> Option<&crate::status::Peer> {
        let s = self.places[node].status.as_ref()?;
        s.families
            .iter()
            .flat_map(|f| &f.peers)
            .find(|p| p.subnet.contains(&ip))
    }

    /// VXLAN: the static neighbour, the FDB entry, the encapsulation and
    /// the destination's VTEP.
    async fn vxlan(&mut self, node: usize, gw: IpAddr, dev: u32) -> Flow<End> {
        let dst = self.dst;
        let dev_name = self.places[node].link_name(dev);
        let peer = self.peer_for(node, dst).cloned();
        // 1. The neighbour weft programmed.
        let found = self.neighbour(node, gw, dev).await;
        let command = format!("ip neigh get {gw} dev {dev_name}");
        let line = match &found {
            Ok(Some(n)) => show::neighbour(&self.places[node], n),
            Ok(None) => format!("(no entry for {gw} on {dev_name})"),
            Err(e) => e.clone(),
        };
        self.hop(
            Step::Neighbour,
            node,
            "The static neighbour weft programmed gives the next hop's MAC".to_string(),
            command,
            vec![line],
        );
        let Some(n) = found.ok().flatten().filter(|n| n.state == "PERMANENT") else {
            return Err(self.fault(format!(
                "no PERMANENT neighbour for {gw} on {dev_name}: the packet is dropped here"
            )));
        };
        let Some(mac) = n.mac else {
            return Err(self.fault(format!(
                "the neighbour for {gw} on {dev_name} has no MAC: the packet is dropped here"
            )));
        };
        if let Some(p) = &peer {
            if let Some(want) = p
                .vtep_mac
                .as_deref()
                .and_then(|m| m.parse::<MacAddr>().ok())
            {
                if want != mac {
                    return Err(self.fault(format!(
                        "the neighbour for {gw} on {dev_name} has lladdr {mac}, but {}'s VTEP MAC is {want}: {} drops the frame",
                        p.node, p.node
                    )));
                }
            }
        }
        // 2. The FDB entry: VTEP MAC → node address.
        let fdb = self.places[node].reader.fdb().await;
        let row = fdb.as_ref().ok().and_then(|rows| {
            rows.iter()
                .find(|f| f.dev == dev && f.mac == mac && f.own)
                .cloned()
        });
        let line = match (&row, &fdb) {
            (Some(r), _) => show::fdb(&self.places[node], r),
            (None, Ok(_)) => format!("(no entry for {mac} on {dev_name})"),
            (None, Err(e)) => e.clone(),
        };
        self.hop(
            Step::Fdb,
            node,
            format!("The FDB of {dev_name} gives the VTEP's address"),
            format!("bridge fdb show dev {dev_name} | grep {mac}"),
            vec![line],
        );
        let Some(to) = row.and_then(|r| r.dst) else {
            return Err(self.fault(format!(
                "no FDB entry for {mac} on {dev_name}: the packet is dropped here"
            )));
        };
        if let Some(p) = &peer {
            if p.public_ip != to {
                return Err(self.fault(format!(
                    "the FDB sends {mac} to {to}, but {} is at {}: the packet goes to the wrong host",
                    p.node, p.public_ip
                )));
            }
        }
        // 3. Encapsulation.
        let Some(link) = self.places[node].link(dev).cloned() else {
            return Err(self.fault(format!("{dev_name} vanished")));
        };
        let (vni, port) = match &link.kind {
            LinkKind::Vxlan { vni, port, .. } => (*vni, *port),
            _ => (None, None),
        };
        let lines = show::link(&self.places[node], &link, true);
        let vni_text = vni.map_or("?".to_string(), |v| v.to_string());
        let port_text = port.map_or("?".to_string(), |p| p.to_string());
        self.hop(
            Step::Encapsulation,
            node,
            format!(
                "It is VXLAN-encapsulated (VNI {vni_text}) and sent to {to}, UDP port {port_text}"
            ),
            format!("ip -d link show {dev_name}"),
            lines,
        );
        let Some(dest) = self.find(|p| p.is_node() && p.holds(to)) else {
            return Ok(End::LeavesNode {
                to,
                node: peer.map(|p| p.node),
                how: format!("VXLAN, VNI {vni_text}, UDP port {port_text}"),
            });
        };
        // 4. The destination's VTEP.
        let dest_name = self.places[dest].node_name().to_string();
        // The device of that VNI whose underlay address is of `to`'s family
        // (dual stack has flannel.1 and flannel-v6.1, both VNI 1).
        let vtep = self.places[dest]
            .links
            .iter()
            .filter(|l| matches!(l.kind, LinkKind::Vxlan { vni: v, .. } if v == vni))
            .max_by_key(|l| match l.kind {
                LinkKind::Vxlan { local: Some(a), .. } => a.is_ipv4() == to.is_ipv4(),
                _ => l.name == dev_name,
            })
            .cloned();
        let Some(vtep) = vtep else {
            self.note(
                Step::Vtep,
                dest,
                format!("{dest_name} has no VXLAN device with VNI {vni_text}"),
            );
            return Err(self.fault(format!(
                "{dest_name} has no VXLAN device with VNI {vni_text}: the packet is dropped here"
            )));
        };
        let lines = show::link(&self.places[dest], &vtep, true);
        self.hop(
            Step::Vtep,
            dest,
            format!(
                "It reaches {dest_name}, whose {} matches the VNI and the MAC",
                vtep.name
            ),
            format!("ip -d link show {}", vtep.name),
            lines,
        );
        if vtep.mac != Some(mac) {
            return Err(self.fault(format!(
                "{dest_name}'s {} has MAC {}, not {mac}: it drops the frame",
                vtep.name,
                vtep.mac.map_or("none".to_string(), |m| m.to_string())
            )));
        }
        if let LinkKind::Vxlan { port: p, .. } = vtep.kind {
            if p != port {
                return Err(self.fault(format!(
                    "{dest_name}'s {} listens on UDP port {}, not {port_text}: the packet is dropped here",
                    vtep.name,
                    p.map_or("?".to_string(), |p| p.to_string())
                )));
            }
        }
        self.deliver_decapsulated(dest, "Decapsulated, its destination is looked up")
            .await
    }

    /// UDP: flannel0, weft's forwarder on both ends.
    async fn forwarder(&mut self, node: usize, dev: u32) -> Flow<End> {
        let (src, dst) = (self.src, self.dst);
        let node_name = self.places[node].node_name().to_string();
        let Some(link) = self.places[node].link(dev).cloned() else {
            return Err(self.fault("the TUN device vanished".to_string()));
        };
        let lines = show::link(&self.places[node], &link, true);
        let taken = match &self.places[node].status {
            Some(st) if in_kernel(st, dst) => "where weft's kernel path takes it on its way out",
            _ => "the TUN device weft's forwarder reads",
        };
        self.hop(
            Step::Encapsulation,
            node,
            format!("The route sends it into {}, {taken}", link.name),
            format!("ip -d link show {}", link.name),
            lines,
        );
        if !link.up {
            return Err(self.fault(format!("{} is down: the packet is dropped here", link.name)));
        }
        let Some(status) = self.places[node].status.clone() else {
            return Err(self.fault(format!(
                "weftd does not answer on {node_name}: nothing reads {}, the packet is dropped here",
                link.name
            )));
        };
        let fam = status
            .families
            .iter()
            .find(|f| f.overlay.network.contains(&dst));
        let forward = fam.and_then(|f| {
            f.overlay
                .desired
                .forwards
                .values()
                .find(|fw| fw.subnet.contains(&dst))
                .copied()
        });
        let src_public = status
            .families
            .iter()
            .find(|f| f.public_ip.is_ipv4() == dst.is_ipv4())
            .map(|f| f.public_ip);
        let peer = self.peer_for(node, dst).cloned();
        let line = match (&forward, &peer) {
            (Some(f), Some(p)) => format!("peer {} subnet {} public-ip {}", p.node, f.subnet, f.to),
            (Some(f), None) => format!("subnet {} -> {}", f.subnet, f.to),
            (None, _) => format!("(no peer lease holds {dst})"),
        };
        let by = if in_kernel(&status, dst) {
            "weft's kernel path on {node} (a tc eBPF program on flannel0's egress)"
        } else {
            "weft's forwarder on {node}"
        }
        .replace("{node}", &node_name);
        self.hop(
            Step::Forwarder,
            node,
            format!("{by} finds {dst}'s subnet in its peer table and sends the packet, unchanged, as one UDP datagram"),
            "weft status".to_string(),
            vec![line],
        );
        let Some(forward) = forward else {
            return Err(self.fault(format!(
                "the forwarder on {node_name} holds no peer for {dst}: it drops the packet (counted as an unknown subnet)"
            )));
        };
        let to = forward.to;
        let Some(dest) = self.find(|p| p.is_node() && p.holds(to)) else {
            return Ok(End::LeavesNode {
                to,
                node: peer.map(|p| p.node),
                how: "UDP, weft's forwarder (Backend.Port)".to_string(),
            });
        };
        let dest_name = self.places[dest].node_name().to_string();
        let Some(dest_status) = self.places[dest].status.clone() else {
            self.note(
                Step::ForwarderPeer,
                dest,
                format!("The datagram reaches {dest_name}"),
            );
            return Err(self.fault(format!(
                "weftd does not answer on {dest_name}: nobody receives the datagram, it is dropped here"
            )));
        };
        let known = dest_status
            .families
            .iter()
            .flat_map(|f| &f.peers)
            .find(|p| Some(p.public_ip) == src_public);
        let line = match known {
            Some(p) => format!(
                "peer {} subnet {} public-ip {}",
                p.node, p.subnet, p.public_ip
            ),
            None => format!(
                "(no peer at {})",
                src_public.map_or("?".to_string(), |a| a.to_string())
            ),
        };
        let known = known.is_some();
        let heard = if in_kernel(&dest_status, dst) {
            "{dest}'s kernel path (a tc eBPF program on its underlay's ingress) hears a known peer and hands the packet to its flannel0"
        } else {
            "{dest}'s forwarder hears a known peer and writes the packet into its flannel0"
        }
        .replace("{dest}", &dest_name);
        self.hop(
            Step::ForwarderPeer,
            dest,
            heard,
            "weft status".to_string(),
            vec![line],
        );
        if !known {
            return Err(self.fault(format!(
                "{dest_name}'s forwarder does not know {} as a peer: it drops the datagram (counted as an unknown sender)",
                src_public.map_or(src.to_string(), |a| a.to_string())
            )));
        }
        self.deliver_decapsulated(dest, "Out of flannel0, its destination is looked up")
            .await
    }

    /// host-gw and DirectRouting: the next hop is the node itself.
    async fn direct(&mut self, node: usize, gw: IpAddr, dev: u32) -> Flow<End> {
        let dst = self.dst;
        let dev_name = self.places[node].link_name(dev);
        if let Some(p) = self.peer_for(node, dst).cloned() {
            if p.public_ip != gw {
                return Err(self.fault(format!(
                    "the route sends {dst} to {gw}, but {} (whose subnet holds it) is at {}: the packet goes to the wrong host",
                    p.node, p.public_ip
                )));
            }
        }
        self.neighbour_hop(node, gw, dev, Step::Neighbour).await?;
        if let Some(h) = self.hops.last_mut() {
            h.says = format!("No encapsulation: the next hop is {gw} on {dev_name}, the destination node itself; {}", h.says);
        }
        let Some(dest) = self.find(|p| p.is_node() && p.holds(gw)) else {
            return Ok(End::LeavesNode {
                to: gw,
                node: self.peer_for(node, dst).map(|p| p.node.clone()),
                how: format!("routed unencapsulated out {dev_name}"),
            });
        };
        self.deliver_decapsulated(
            dest,
            "It arrives unencapsulated; its destination is looked up",
        )
        .await
    }

    /// Outside the cluster: the SNAT rule it meets, and the address it
    /// leaves with.
    async fn outside(&mut self, node: usize, dev: u32, out_src: Option<IpAddr>) -> Flow<End> {
        let (src, dst) = (self.src, self.dst);
        let dev_name = self.places[node].link_name(dev);
        let network = self.places[node].network_for_family(dst).or_else(|| {
            self.networks
                .iter()
                .copied()
                .find(|n| n.addr().is_ipv4() == dst.is_ipv4())
        });
        let subnet = self.places[node].status.as_ref().and_then(|s| {
            s.families
                .iter()
                .map(|f| f.subnet)
                .find(|n| n.addr().is_ipv4() == dst.is_ipv4())
        });
        let subnet = subnet.or_else(|| {
            self.places[node]
                .link_named(POD_BRIDGE)
                .and_then(|b| b.addrs.iter().find(|a| a.addr().is_ipv4() == dst.is_ipv4()))
                .map(|a| a.trunc())
        });
        let mode = self.places[node].status.as_ref().and_then(|s| {
            s.families
                .iter()
                .find(|f| f.subnet.addr().is_ipv4() == dst.is_ipv4())
                .and_then(|f| f.nat_mode.parse::<NatMode>().ok())
        });
        let leaves_with = out_src.map_or("the interface's address".to_string(), |a| a.to_string());
        let (Some(network), Some(subnet)) = (network, subnet) else {
            self.note(
                Step::Snat,
                node,
                format!("{dst} leaves the cluster out {dev_name}; the cluster network is not known here (no weftd, no subnet file), so the SNAT rule is not looked up"),
            );
            return Ok(End::LeavesCluster {
                dev: dev_name,
                source: out_src,
            });
        };
        let rules = SnatRules::build(network, subnet, NatOptions::default()).map_err(|e| {
            let why = format!("flannel's rules cannot be built for {network}/{subnet}: {e}");
            self.note(Step::Snat, node, why.clone());
            self.fault(why)
        })?;
        let matched = rules.postrouting_match(src, dst, NO_MARK).copied();
        // weftd's own mode is the only one read when weftd names it.
        let asked_weftd = mode.is_some();
        let nat = self.places[node].reader.nat(dst, mode).await;
        let (mode, have) = match nat {
            Ok(Some((m, s))) => (Some(m), s.0),
            Ok(None) => (mode, Vec::new()),
            Err(e) => {
                self.note(
                    Step::Snat,
                    node,
                    format!("the NAT rules could not be read: {e}"),
                );
                return Ok(End::LeavesCluster {
                    dev: dev_name,
                    source: None,
                });
            }
        };
        let mode_name = mode.map_or("none".to_string(), |m| m.to_string());
        let command = mode.map_or("iptables -t nat -S FLANNEL-POSTRTG".to_string(), |m| {
            chain_command(m, dst)
        });
        let Some(rule) = matched else {
            self.hop(
                Step::Snat,
                node,
                format!("No flannel SNAT rule matches {src} -> {dst}: it leaves {dev_name} with source {src}"),
                command,
                vec!["(no rule matches)".to_string()],
            );
            return Ok(End::LeavesCluster {
                dev: dev_name,
                source: Some(src),
            });
        };
        let line = rule_text(mode, &rule);
        let present = have.is_empty()
            || [true, false].into_iter().any(|fully_random| {
                let mut r = rule;
                if let Verdict::Masquerade { .. } = r.verdict {
                    r.verdict = Verdict::Masquerade { fully_random };
                }
                mode.is_some_and(|m| have.contains(&snapshot_line(m, dst, r)))
            });
        let source = match rule.verdict {
            Verdict::Masquerade { .. } => out_src,
            _ => Some(src),
        };
        let says = match rule.verdict {
            Verdict::Masquerade { .. } => format!(
                "{dst} is outside the cluster: the packet meets flannel's SNAT rule ({mode_name}) and leaves {dev_name} masqueraded to {leaves_with}"
            ),
            _ => format!("It meets flannel's rule \"{}\" ({mode_name}): no SNAT, it leaves with source {src}", rule.label),
        };
        self.hop(Step::Snat, node, says, command, vec![line.clone()]);
        if have.is_empty() {
            if let Some(h) = self.hops.last_mut() {
                let holder = if asked_weftd {
                    format!("weftd's NAT mode ({mode_name}) holds no flannel SNAT rules")
                } else {
                    "No NAT mode holds flannel's SNAT rules".to_string()
                };
                h.says = format!(
                    "{holder} on this node (weftd runs without --ip-masq?): the packet leaves {dev_name} with its pod address {src}"
                );
                h.output = vec!["(no rules)".to_string()];
            }
            return Ok(End::LeavesCluster {
                dev: dev_name,
                source: Some(src),
            });
        }
        if !present {
            return Err(self.fault(format!(
                "the SNAT rule `{line}` is not in place: the packet leaves with its pod address {src} and replies cannot come back"
            )));
        }
        // In the lab the outside host may be read too.
        if let Some(there) = self.find(|p| !p.is_node() && p.holds(dst)) {
            let name = self.places[there].name.clone();
            let r = self
                .route_hop(Step::Arrival, there, format!("It arrives at {name}"))
                .await;
            if let RouteLookup::Local { .. } = r {
                return Ok(End::Delivered { place: name });
            }
        }
        Ok(End::LeavesCluster {
            dev: dev_name,
            source,
        })
    }

    /// The destination node: its lookup must point at the pod bridge.
    async fn deliver_decapsulated(&mut self, dest: usize, says: &str) -> Flow<End> {
        let dst = self.dst;
        let name = self.places[dest].node_name().to_string();
        match self
            .route_hop(Step::DecapRoute, dest, format!("{says} on {name}"))
            .await
        {
            RouteLookup::Local { .. } => Ok(End::Delivered { place: name }),
            RouteLookup::Unicast { dev, .. } if self.places[dest].link_name(dev) == POD_BRIDGE => {
                self.deliver_on_bridge(dest).await
            }
            RouteLookup::Unicast { dev, .. } => {
                let d = self.places[dest].link_name(dev);
                Err(self.fault(format!(
                    "{name} sends {dst} out {d}, not to its pods' bridge {POD_BRIDGE}: {dst} is not one of its pods"
                )))
            }
            RouteLookup::Refused(_) => Err(self.fault(format!(
                "{name} has no route to {dst}: the packet is dropped here"
            ))),
        }
    }

    /// From anywhere: the node `dst` lives on takes it from here.
    async fn deliver(&mut self, dest: usize) -> Flow<End> {
        self.deliver_decapsulated(dest, "Its destination is looked up")
            .await
    }

    /// The bridge's neighbour and forwarding tables, then the pod.
    async fn deliver_on_bridge(&mut self, node: usize) -> Flow<End> {
        let dst = self.dst;
        let Some(bridge) = self.places[node].link_named(POD_BRIDGE).map(|b| b.index) else {
            return Err(self.fault(format!(
                "no {POD_BRIDGE} on {}",
                self.places[node].node_name()
            )));
        };
        let pod = self.pod(dst);
        let n = self
            .neighbour_hop(node, dst, bridge, Step::PodNeighbour)
            .await?;
        let pod_mac = pod.and_then(|p| {
            self.places[p]
                .links
                .iter()
                .find(|l| l.addrs.iter().any(|a| a.addr() == dst))
                .and_then(|l| l.mac)
        });
        if let Some(mac) = n.as_ref().and_then(|n| n.mac).or(pod_mac) {
            self.port_hop(node, mac, bridge, Step::PodPort).await?;
        }
        let Some(pod) = pod else {
            return Ok(End::Delivered {
                place: format!("{dst} on {}", self.places[node].node_name()),
            });
        };
        let name = self.places[pod].name.clone();
        match self
            .route_hop(Step::Arrival, pod, format!("It arrives in {name}"))
            .await
        {
            RouteLookup::Local { .. } => Ok(End::Delivered { place: name }),
            _ => Err(self.fault(format!(
                "{dst} is not local in {name}: the packet is dropped there"
            ))),
        }
    }
}

/// The command that lists the postrouting chain in `mode`.
fn chain_command(mode: NatMode, dst: IpAddr) -> String {
    let family = weft_nat::Family::of(&IpNet::from(dst));
    match mode {
        NatMode::Nftables => format!(
            "nft list chain {} {} postrtg",
            family.nft_family(),
            family.nft_table()
        ),
        NatMode::IptablesLegacy | NatMode::IptablesNft => {
            let tool = match (dst.is_ipv4(), mode) {
                (true, NatMode::IptablesLegacy) => "iptables-legacy",
                (true, _) => "iptables-nft",
                (false, NatMode::IptablesLegacy) => "ip6tables-legacy",
                (false, _) => "ip6tables-nft",
            };
            format!("{tool} -t nat -S {}", weft_nat::render::POSTRTG_CHAIN)
        }
    }
}

/// The rule as the mode's tool prints it.
fn rule_text(mode: Option<NatMode>, r: &weft_nat::Rule) -> String {
    match mode {
        Some(NatMode::Nftables) => r.to_string(),
        _ => weft_nat::render::iptables_rule(r),
    }
}

/// The rule's line in the mode's canonical snapshot (the last line of a
/// rule set holding only it).
fn snapshot_line(mode: NatMode, dst: IpAddr, r: weft_nat::Rule) -> String {
    let family = weft_nat::Family::of(&IpNet::from(dst));
    let mut one = RuleSet::empty(family);
    one.postrouting.push(r);
    mode.backend(family)
        .expected(&one)
        .0
        .pop()
        .unwrap_or_default()
}

/// weftd's udp data plane for `dst`'s family carries known peers'
/// packets in the kernel (its kernel path is attached).
fn in_kernel(status: &crate::status::Status, dst: std::net::IpAddr) -> bool {
    status.families.iter().any(|f| {
        f.overlay.network.contains(&dst)
            && f.overlay
                .data_path
                .as_deref()
                .is_some_and(|d| d.starts_with(weft_overlay::backend::KERNEL_PATH))
    })
}
