//! Helpers for `weft-bench`: sample statistics, commands in a namespace, the
//! synthetic cluster of the overlay benchmark, a kernel-state check and an
//! independent netlink monitor.
//!
//! Everything here acts only inside kit namespaces: commands go through
//! `ip -n` / `bridge -n`, netlink code runs on a thread that entered the
//! namespace ([`Netns::spawn_task`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::MulticastGroup;
use weft_netns::{Netns, NsTask};
use weft_overlay::{BackendConfig, Family, Input, Lease, LocalNode, OverlayConfig, VxlanConfig};

// ---------------------------------------------------------------------------
// Statistics

/// Durations of repeated measurements.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<Duration>);

impl Samples {
    /// Adds one measurement.
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    fn sorted(&self) -> Vec<Duration> {
        let mut v = self.0.clone();
        v.sort();
        v
    }

    /// The median (the mean of the two middle values for an even count).
    pub fn median(&self) -> Duration {
        let v = self.sorted();
        match v.len() {
            0 => Duration::ZERO,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2,
        }
    }

    /// The `p`-th percentile (0–100), nearest rank.
    pub fn percentile(&self, p: f64) -> Duration {
        let v = self.sorted();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }

    /// The largest value.
    pub fn max(&self) -> Duration {
        self.0.iter().copied().max().unwrap_or_default()
    }

    /// Every value in seconds, space-separated, in measurement order.
    pub fn list_secs(&self) -> String {
        self.0
            .iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A duration in milliseconds with one decimal (two below 1 ms).
pub fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v < 1.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.1} ms")
    }
}

// ---------------------------------------------------------------------------
// Commands inside a namespace

/// Runs `program -n <ns> args…` (iproute2's `ip`/`bridge`), failing loudly on
/// a nonzero exit or anything on stderr; returns stdout.
pub fn run_n(ns: &Netns, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .arg("-n")
        .arg(ns.name())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !stderr.trim().is_empty() {
        bail!(
            "`{program} -n {} {}` failed ({}): {}",
            ns.name(),
            args.join(" "),
            out.status,
            stderr.trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`run_n`] but parses the JSON output (`-j` is added).
pub fn json_n(ns: &Netns, program: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = run_n(ns, program, &full)?;
    if out.trim().is_empty() {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_str(&out).with_context(|| format!("{program} -j {}: bad JSON", args.join(" ")))
}

// ---------------------------------------------------------------------------
// The synthetic cluster of the overlay benchmark

/// The cluster network of the benchmark: /24 pod subnets inside a /8.
pub const CLUSTER: &str = "10.0.0.0/8";
/// This node's pod subnet.
pub const LOCAL_SUBNET: &str = "10.0.0.0/24";
/// This node's underlay address (on `eth0`).
pub const LOCAL_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
/// The underlay's prefix length.
pub const UNDERLAY_PREFIX: u8 = 16;
/// The VXLAN device.
pub const DEVICE: &str = "flannel.1";
/// The IPv6 cluster network of the dual-stack benchmark: /64 pod subnets inside a /48.
pub const CLUSTER6: &str = "fc00::/48";
/// This node's IPv6 pod subnet.
pub const LOCAL_SUBNET6: &str = "fc00::/64";
/// This node's IPv6 underlay address (on `eth0`, next to [`LOCAL_IP`]).
pub const LOCAL_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 2);
/// The IPv6 underlay's prefix length.
pub const UNDERLAY6_PREFIX: u8 = 64;
/// The IPv6 VXLAN device.
pub const DEVICE6: &str = "flannel-v6.1";

/// The VXLAN device of a family.
pub fn device(fam: Family) -> &'static str {
    match fam {
        Family::V4 => DEVICE,
        Family::V6 => DEVICE6,
    }
}

/// What one peer needs in one family: the route `subnet via gateway dev
/// <device> onlink`, the neighbour `gateway → mac`, the FDB entry `mac dst
/// public_ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerObjects {
    /// The pod subnet.
    pub subnet: IpNet,
    /// The subnet's network address.
    pub gateway: IpAddr,
    /// The underlay address.
    pub public_ip: IpAddr,
    /// The VTEP MAC.
    pub mac: String,
}

/// One synthetic peer node, number `i` (1 ≤ i < 65536).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its number.
    pub i: u32,
}

impl Peer {
    fn hi(self) -> u8 {
        (self.i >> 8) as u8
    }

    fn lo(self) -> u8 {
        (self.i & 0xff) as u8
    }

    /// `10.<hi>.<lo>.0/24`.
    pub fn subnet(self) -> Ipv4Net {
        Ipv4Net::new(Ipv4Addr::new(10, self.hi(), self.lo(), 0), 24).unwrap_or_default()
    }

    /// The subnet's network address (route gateway, neighbour).
    pub fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.hi(), self.lo(), 0)
    }

    /// `172.18.<1+hi>.<lo>`: on the underlay /16, never this node's.
    pub fn public_ip(self) -> Ipv4Addr {
        Ipv4Addr::new(172, 18, 1 + self.hi(), self.lo())
    }

    /// `02:00:00:00:<hi>:<lo>` (locally administered unicast).
    pub fn mac(self) -> String {
        format!("02:00:00:00:{:02x}:{:02x}", self.hi(), self.lo())
    }

    /// The MAC as bytes.
    pub fn mac_bytes(self) -> [u8; 6] {
        [2, 0, 0, 0, self.hi(), self.lo()]
    }

    /// The peer's lease as weft reads it from its Node.
    pub fn lease(self) -> Lease {
        self.lease_of(Family::V4)
    }

    /// `fc00:0:0:<i>::/64`.
    pub fn subnet6(self) -> Ipv6Net {
        let i = u16::try_from(self.i).unwrap_or_default();
        Ipv6Net::new(Ipv6Addr::new(0xfc00, 0, 0, i, 0, 0, 0, 0), 64).unwrap_or_default()
    }

    /// `fd00:18::1:<i>`: on the underlay /64, never this node's.
    pub fn public_ip6(self) -> Ipv6Addr {
        let i = u16::try_from(self.i).unwrap_or_default();
        Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 1, i)
    }

    /// `02:00:00:06:<hi>:<lo>`: the IPv6 device's own MAC, as flannel gives
    /// `flannel-v6.1` one of its own.
    pub fn mac6(self) -> String {
        format!("02:00:00:06:{:02x}:{:02x}", self.hi(), self.lo())
    }

    /// The peer's objects in a family.
    pub fn objects(self, fam: Family) -> PeerObjects {
        match fam {
            Family::V4 => PeerObjects {
                subnet: self.subnet().into(),
                gateway: self.gateway().into(),
                public_ip: self.public_ip().into(),
                mac: self.mac(),
            },
            Family::V6 => PeerObjects {
                subnet: self.subnet6().into(),
                gateway: self.subnet6().network().into(),
                public_ip: self.public_ip6().into(),
                mac: self.mac6(),
            },
        }
    }

    /// The peer's lease in a family (`backend-data` or `backend-v6-data`,
    /// `public-ip` or `public-ipv6`), as weft's agent hands it to that
    /// family's reconciler.
    pub fn lease_of(self, fam: Family) -> Lease {
        let o = self.objects(fam);
        Lease {
            node: format!("node-{}", self.i),
            subnet: o.subnet,
            public_ip: o.public_ip,
            backend_type: "vxlan".into(),
            backend_data: format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, o.mac),
        }
    }
}

/// Peers `first..first+count`.
pub fn peers(first: u32, count: usize) -> Vec<Peer> {
    (first..).take(count).map(|i| Peer { i }).collect()
}

/// The reconciler input for this node with these peers (VXLAN, flannel's defaults).
pub fn overlay_input(peers: &[Peer]) -> anyhow::Result<Input> {
    overlay_input_of(peers, Family::V4)
}

/// The input of this node's reconciler of a family with these peers.
pub fn overlay_input_of(peers: &[Peer], fam: Family) -> anyhow::Result<Input> {
    let (network, subnet, public_ip): (IpNet, IpNet, IpAddr) = match fam {
        Family::V4 => (CLUSTER.parse()?, LOCAL_SUBNET.parse()?, LOCAL_IP.into()),
        Family::V6 => (CLUSTER6.parse()?, LOCAL_SUBNET6.parse()?, LOCAL_IP6.into()),
    };
    Ok(Input {
        config: OverlayConfig {
            network,
            backend: BackendConfig::from(VxlanConfig::default()),
        },
        local: LocalNode {
            name: "bench-node".into(),
            subnet,
            public_ip,
            underlay: "eth0".into(),
            vtep_mac: None,
        },
        leases: peers.iter().map(|p| p.lease_of(fam)).collect(),
    })
}

/// A fresh node namespace: a veth `eth0` (its peer `ul0` stays in the same
/// namespace and only gives `eth0` a carrier) with 172.18.0.2/16, both up.
pub fn node_namespace(role: &str) -> anyhow::Result<Netns> {
    let ns = Netns::new(role)?;
    ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "ul0"])?;
    ns.link_up("ul0")?;
    ns.link_up("eth0")?;
    ns.add_addr("eth0", &format!("{LOCAL_IP}/{UNDERLAY_PREFIX}"))?;
    Ok(ns)
}

/// Creates `flannel.1` the way flannel does, with iproute2 (the reference side).
pub fn create_device_with_ip(ns: &Netns) -> anyhow::Result<()> {
    crate::flannel_node::add_device(ns, LOCAL_IP, &[], "10.0.0.0/32")
}

/// Gives a [`node_namespace`] its IPv6 underlay address too
/// ([`LOCAL_IP6`], usable at once: no duplicate address detection).
pub fn add_ipv6_underlay(ns: &Netns) -> anyhow::Result<()> {
    let cidr = format!("{LOCAL_IP6}/{UNDERLAY6_PREFIX}");
    ns.ip(&["-6", "addr", "add", &cidr, "dev", "eth0", "nodad"])?;
    Ok(())
}

/// Creates `flannel-v6.1` the way flannel does, with iproute2 (the
/// reference side of the dual-stack benchmark): VTEP on [`LOCAL_IP6`], the
/// subnet's network address as /128, up.
pub fn create_device6_with_ip(ns: &Netns) -> anyhow::Result<()> {
    crate::flannel_node::add_device_of(ns, Family::V6, LOCAL_IP6.into(), &[], "fc00::/128")
}

/// The `ip -batch` file (neighbours, then routes) and the `bridge -batch`
/// file (FDB entries) holding exactly the objects weft programs for `peers`.
pub fn batch_files(peers: &[Peer]) -> (String, String) {
    batch_files_of(peers, &[Family::V4])
}

/// [`batch_files`] for the given families, one after the other (each
/// family's neighbours, then its routes).
pub fn batch_files_of(peers: &[Peer], families: &[Family]) -> (String, String) {
    let mut ip = String::new();
    let mut bridge = String::new();
    for &fam in families {
        let dev = device(fam);
        for p in peers {
            let o = p.objects(fam);
            let _ = writeln!(
                ip,
                "neigh replace {} dev {dev} lladdr {} nud permanent",
                o.gateway, o.mac
            );
        }
        for p in peers {
            let o = p.objects(fam);
            let _ = writeln!(
                ip,
                "route replace {} via {} dev {dev} onlink proto 119",
                o.subnet, o.gateway
            );
            let _ = writeln!(
                bridge,
                "fdb replace {} dev {dev} dst {} self permanent",
                o.mac, o.public_ip
            );
        }
    }
    (ip, bridge)
}

/// Checks that the kernel holds exactly the routes, PERMANENT neighbours and
/// FDB entries of `peers` on `flannel.1`, nothing missing, nothing else.
pub fn verify_overlay(ns: &Netns, peers: &[Peer]) -> anyhow::Result<()> {
    verify_family(ns, peers, Family::V4).map(drop)
}

/// [`verify_overlay`] for a family's device (`flannel.1`, `flannel-v6.1`);
/// the kernel's own routes of the device's addresses are not counted.
/// Returns how many objects it checked.
pub fn verify_family(ns: &Netns, peers: &[Peer], fam: Family) -> anyhow::Result<usize> {
    let s = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let has = |v: &serde_json::Value, k: &str, want: &str| {
        v.get(k)
            .and_then(|x| x.as_array())
            .is_some_and(|a| a.iter().any(|f| f.as_str() == Some(want)))
    };
    let dev = device(fam);
    let flag = match fam {
        Family::V4 => "-4",
        Family::V6 => "-6",
    };
    let objects: Vec<PeerObjects> = peers.iter().map(|p| p.objects(fam)).collect();

    let routes = json_n(ns, "ip", &[flag, "route", "show", "dev", dev])?;
    let routes: Vec<&serde_json::Value> = array(&routes)
        .iter()
        .filter(|r| s(r, "protocol").as_deref() != Some("kernel"))
        .collect();
    let got: BTreeSet<String> = routes
        .iter()
        .map(|r| {
            format!(
                "{} via {} onlink={} proto {}",
                s(r, "dst").unwrap_or_default(),
                s(r, "gateway").unwrap_or_default(),
                has(r, "flags", "onlink"),
                s(r, "protocol").unwrap_or_default()
            )
        })
        .collect();
    let want: BTreeSet<String> = objects
        .iter()
        .map(|o| format!("{} via {} onlink=true proto 119", o.subnet, o.gateway))
        .collect();
    compare("routes", &want, &got, routes.len())?;

    let neigh = json_n(ns, "ip", &[flag, "neigh", "show", "dev", dev])?;
    let got: BTreeSet<String> = array(&neigh)
        .iter()
        .map(|n| {
            format!(
                "{} lladdr {} permanent={}",
                s(n, "dst").unwrap_or_default(),
                s(n, "lladdr").unwrap_or_default(),
                has(n, "state", "PERMANENT")
            )
        })
        .collect();
    let want: BTreeSet<String> = objects
        .iter()
        .map(|o| format!("{} lladdr {} permanent=true", o.gateway, o.mac))
        .collect();
    compare("neighbours", &want, &got, array(&neigh).len())?;

    let fdb = json_n(ns, "bridge", &["fdb", "show", "dev", dev])?;
    let got: BTreeSet<String> = array(&fdb)
        .iter()
        .map(|f| {
            format!(
                "{} dst {} self={} {}",
                s(f, "mac").unwrap_or_default(),
                s(f, "dst").unwrap_or_default(),
                has(f, "flags", "self"),
                s(f, "state").unwrap_or_default()
            )
        })
        .collect();
    let want: BTreeSet<String> = objects
        .iter()
        .map(|o| format!("{} dst {} self=true permanent", o.mac, o.public_ip))
        .collect();
    compare("fdb entries", &want, &got, array(&fdb).len())?;
    Ok(3 * objects.len())
}

fn array(v: &serde_json::Value) -> &[serde_json::Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn compare(
    what: &str,
    want: &BTreeSet<String>,
    got: &BTreeSet<String>,
    raw: usize,
) -> anyhow::Result<()> {
    if want == got && raw == want.len() {
        return Ok(());
    }
    let missing: Vec<_> = want.difference(got).take(3).collect();
    let extra: Vec<_> = got.difference(want).take(3).collect();
    bail!(
        "kernel check failed for {what}: want {}, kernel has {raw} ({} distinct); \
         missing e.g. {missing:?}; unexpected e.g. {extra:?}",
        want.len(),
        got.len()
    )
}

// ---------------------------------------------------------------------------
// An independent kernel monitor

/// A kernel change seen on the route/neighbour multicast groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEvent {
    /// RTM_NEWROUTE (`true`) / RTM_DELROUTE (`false`) for a destination.
    Route(bool, ipnet::IpNet),
    /// RTM_NEWNEIGH / RTM_DELNEIGH for an IPv4 neighbour.
    Neighbour(bool, Ipv4Addr),
    /// RTM_NEWNEIGH / RTM_DELNEIGH for an FDB (AF_BRIDGE) entry.
    Fdb(bool, [u8; 6]),
    /// The monitor's socket overran: events were lost.
    Overrun,
}

/// A netlink monitor of its own (not weft's) in a namespace, timestamping
/// every route and neighbour event as it arrives.
pub struct Monitor {
    /// The events with their arrival time.
    pub events: mpsc::Receiver<(Instant, KernelEvent)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<NsTask<anyhow::Result<()>>>,
}

impl Monitor {
    /// Subscribes, in `ns`, to IPv4 route and neighbour events; returns once
    /// the subscription is in place.
    pub fn start(ns: &Netns) -> anyhow::Result<Monitor> {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = ns.spawn_task(move || async move {
            let (conn, _handle, mut messages) = match rtnetlink::new_multicast_connection(&[
                MulticastGroup::Ipv4Route,
                MulticastGroup::Neigh,
            ]) {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return Ok(());
                }
            };
            tokio::spawn(conn);
            let _ = ready_tx.send(Ok(()));
            loop {
                tokio::select! {
                    _ = &mut stop_rx => return Ok(()),
                    m = messages.next() => {
                        let Some((msg, _)) = m else { return Ok(()) };
                        let at = Instant::now();
                        let event = match msg.payload {
                            NetlinkPayload::Overrun(_) => Some(KernelEvent::Overrun),
                            NetlinkPayload::InnerMessage(m) => classify(m),
                            _ => None,
                        };
                        if let Some(e) = event {
                            if tx.send((at, e)).is_err() {
                                return Ok(());
                            }
                        }
                    }
                }
            }
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the monitor did not start")??;
        Ok(Monitor {
            events: rx,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    /// Forgets every event received so far.
    pub fn drain(&self) {
        while self.events.try_recv().is_ok() {}
    }

    /// Waits until every event in `want` has arrived (others are skipped) and
    /// returns when the last of them arrived.
    pub fn wait_for(&self, want: &[KernelEvent], timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<KernelEvent> = want.to_vec();
        let mut last: Option<Instant> = None;
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, event) = self
                .events
                .recv_timeout(left)
                .with_context(|| format!("the kernel never reported {pending:?}"))?;
            if event == KernelEvent::Overrun {
                bail!("the benchmark's netlink monitor overran");
            }
            if let Some(pos) = pending.iter().position(|e| *e == event) {
                pending.swap_remove(pos);
                last = Some(last.map_or(at, |l| l.max(at)));
            }
        }
        last.context("no events wanted")
    }

    /// Stops the monitor and joins its thread.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.join()??;
        }
        Ok(())
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn classify(m: RouteNetlinkMessage) -> Option<KernelEvent> {
    match m {
        RouteNetlinkMessage::NewRoute(r) => {
            weft_overlay::kernel::route_dst(&r).map(|d| KernelEvent::Route(true, d))
        }
        RouteNetlinkMessage::DelRoute(r) => {
            weft_overlay::kernel::route_dst(&r).map(|d| KernelEvent::Route(false, d))
        }
        RouteNetlinkMessage::NewNeighbour(n) => neighbour_event(true, &n),
        RouteNetlinkMessage::DelNeighbour(n) => neighbour_event(false, &n),
        _ => None,
    }
}

fn neighbour_event(new: bool, n: &NeighbourMessage) -> Option<KernelEvent> {
    match n.header.family {
        AddressFamily::Inet => n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                Some(KernelEvent::Neighbour(new, *ip))
            }
            _ => None,
        }),
        AddressFamily::Bridge => n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(b) => <[u8; 6]>::try_from(b.as_slice())
                .ok()
                .map(|m| KernelEvent::Fdb(new, m)),
            _ => None,
        }),
        _ => None,
    }
}

/// The three kernel events that say peer `p` was added (`true`) or removed.
pub fn peer_events(p: Peer, added: bool) -> [KernelEvent; 3] {
    [
        KernelEvent::Route(added, p.subnet().into()),
        KernelEvent::Neighbour(added, p.gateway()),
        KernelEvent::Fdb(added, p.mac_bytes()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s = Samples((1..=200).map(Duration::from_millis).collect());
        assert_eq!(s.median(), Duration::from_micros(100_500));
        assert_eq!(s.percentile(50.0), Duration::from_millis(100));
        assert_eq!(s.percentile(99.0), Duration::from_millis(198));
        assert_eq!(s.max(), Duration::from_millis(200));
    }

    #[test]
    fn peers_are_distinct_and_valid() {
        let ps = peers(1, 5100);
        let subnets: BTreeSet<_> = ps.iter().map(|p| p.subnet()).collect();
        let ips: BTreeSet<_> = ps.iter().map(|p| p.public_ip()).collect();
        let macs: BTreeSet<_> = ps.iter().map(|p| p.mac()).collect();
        assert_eq!((subnets.len(), ips.len(), macs.len()), (5100, 5100, 5100));
        assert!(!ips.contains(&LOCAL_IP));
        let local: Ipv4Net = LOCAL_SUBNET.parse().unwrap();
        assert!(!subnets.contains(&local));
        assert_eq!(ps[0].subnet().to_string(), "10.0.1.0/24");
        assert_eq!(ps[0].mac(), "02:00:00:00:00:01");
    }

    #[test]
    fn ipv6_peers_are_distinct_and_valid() {
        let ps = peers(1, 5100);
        let subnets: BTreeSet<_> = ps.iter().map(|p| p.subnet6()).collect();
        let ips: BTreeSet<_> = ps.iter().map(|p| p.public_ip6()).collect();
        let macs: BTreeSet<_> = ps
            .iter()
            .map(|p| p.mac6())
            .chain(ps.iter().map(|p| p.mac()))
            .collect();
        assert_eq!((subnets.len(), ips.len(), macs.len()), (5100, 5100, 10200));
        assert!(!ips.contains(&LOCAL_IP6));
        let local: Ipv6Net = LOCAL_SUBNET6.parse().unwrap();
        let cluster: Ipv6Net = CLUSTER6.parse().unwrap();
        assert!(!subnets.contains(&local));
        assert!(subnets.iter().all(|s| cluster.contains(s)));
        let underlay = Ipv6Net::new(LOCAL_IP6, UNDERLAY6_PREFIX).unwrap();
        assert!(ips.iter().all(|ip| underlay.contains(ip)));
        assert_eq!(ps[0].subnet6().to_string(), "fc00:0:0:1::/64");
        assert_eq!(ps[0].public_ip6().to_string(), "fd00:18::1:1");
    }

    #[test]
    fn dual_stack_batch_files_hold_both_families() {
        let (ip, bridge) = batch_files_of(&peers(1, 1), &[Family::V4, Family::V6]);
        assert_eq!(
            ip,
            "neigh replace 10.0.1.0 dev flannel.1 lladdr 02:00:00:00:00:01 nud permanent\n\
             route replace 10.0.1.0/24 via 10.0.1.0 dev flannel.1 onlink proto 119\n\
             neigh replace fc00:0:0:1:: dev flannel-v6.1 lladdr 02:00:00:06:00:01 nud permanent\n\
             route replace fc00:0:0:1::/64 via fc00:0:0:1:: dev flannel-v6.1 onlink proto 119\n"
        );
        assert_eq!(
            bridge,
            "fdb replace 02:00:00:00:00:01 dev flannel.1 dst 172.18.1.1 self permanent\n\
             fdb replace 02:00:00:06:00:01 dev flannel-v6.1 dst fd00:18::1:1 self permanent\n"
        );
    }

    #[test]
    fn batch_files_hold_every_object() {
        let (ip, bridge) = batch_files(&peers(1, 2));
        assert_eq!(
            ip,
            "neigh replace 10.0.1.0 dev flannel.1 lladdr 02:00:00:00:00:01 nud permanent\n\
             neigh replace 10.0.2.0 dev flannel.1 lladdr 02:00:00:00:00:02 nud permanent\n\
             route replace 10.0.1.0/24 via 10.0.1.0 dev flannel.1 onlink proto 119\n\
             route replace 10.0.2.0/24 via 10.0.2.0 dev flannel.1 onlink proto 119\n"
        );
        assert_eq!(
            bridge,
            "fdb replace 02:00:00:00:00:01 dev flannel.1 dst 172.18.1.1 self permanent\n\
             fdb replace 02:00:00:00:00:02 dev flannel.1 dst 172.18.1.2 self permanent\n"
        );
    }
}
