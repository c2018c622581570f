//! The desired per-peer state, kept current one lease at a time.
//!
//! [`Peers`] holds every other node's lease and what it contributes to the
//! kernel (a route, and with VXLAN a neighbour and an FDB entry). A changed,
//! new or removed lease costs O(log n): its old contribution is withdrawn,
//! the new one checked against indexes of the accepted subnets and VTEP MACs,
//! and the keys it touched are returned for the diff to look at.
//!
//! The result is always what a computation from scratch gives when the
//! leases are taken in the order they were first seen (oldest first, so a
//! newcomer with bad data never displaces a working peer). Where a change
//! could alter which of two conflicting leases wins (a lease overlapping an
//! *older* accepted one is rejected; one overlapping only *newer* ones, or
//! the removal of the lease that blocked another), the set is rebuilt from
//! scratch in that order. That only happens while the cluster holds
//! conflicting leases, which is bad input.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::backend::{Backend, BackendConfig, PeerEntries};
use crate::error::{LeaseError, LeaseFault};
use crate::mac::MacAddr;
use crate::model::{Lease, LocalNode, OverlayConfig, UnderlayFacts};
use crate::state::{DeviceSpec, Entries};

/// Keys of the per-peer tables that may differ from what the kernel holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Every key (after a rebuild, a re-read of the kernel, a new device).
    pub all: bool,
    /// Route destinations.
    pub routes: BTreeSet<IpNet>,
    /// Neighbour addresses on the overlay device.
    pub neighbours: BTreeSet<IpAddr>,
    /// FDB MACs on the overlay device.
    pub fdb: BTreeSet<MacAddr>,
}

impl Touched {
    /// Every key.
    pub fn everything() -> Touched {
        Touched {
            all: true,
            ..Touched::default()
        }
    }

    /// True when nothing needs looking at.
    pub fn is_empty(&self) -> bool {
        !self.all && self.routes.is_empty() && self.neighbours.is_empty() && self.fdb.is_empty()
    }

    /// Adds `other`'s keys.
    pub fn merge(&mut self, other: Touched) {
        if self.all || other.all {
            *self = Touched::everything();
            return;
        }
        self.routes.extend(other.routes);
        self.neighbours.extend(other.neighbours);
        self.fdb.extend(other.fdb);
    }

    /// The keys of one peer's entries.
    fn add_peer(&mut self, peer: &PeerEntries) {
        if let Some(r) = &peer.route {
            self.routes.insert(r.dst);
        }
        if let Some(n) = &peer.neighbour {
            self.neighbours.insert(n.ip);
        }
        if let Some(f) = &peer.fdb {
            self.fdb.insert(f.mac);
        }
    }
}

/// One other node: its lease, when it was first seen, and what it got.
#[derive(Debug, Clone)]
struct Peer {
    seq: u64,
    lease: Lease,
    accepted: Option<PeerEntries>,
}

/// An accepted subnet, indexed by its first address.
#[derive(Debug, Clone)]
struct Claim {
    end: u128,
    subnet: IpNet,
    node: Arc<str>,
    seq: u64,
}

/// The other nodes' leases and the kernel entries they need (see the module docs).
pub struct Peers {
    config: OverlayConfig,
    local: LocalNode,
    underlay: Option<UnderlayFacts>,
    backend: BackendConfig,
    peers: HashMap<Arc<str>, Peer>,
    next_seq: u64,
    /// Accepted subnets by first address (they are disjoint).
    taken: BTreeMap<u128, Claim>,
    /// Accepted VTEP MACs → node.
    macs: HashMap<MacAddr, Arc<str>>,
    entries: Entries,
    rejected: BTreeMap<String, LeaseError>,
    /// Rejected for a conflict: node → the node it conflicts with.
    blocked: BTreeMap<String, String>,
    rebuilds: u64,
}

/// Why a lease cannot be placed without a rebuild.
struct NeedsRebuild;

impl Peers {
    /// A set for this configuration and node; `underlay`: `None` until the
    /// kernel has been asked (leases are then only recorded, and placed by
    /// [`set_underlay`](Self::set_underlay)).
    pub fn new(config: OverlayConfig, local: LocalNode, underlay: Option<UnderlayFacts>) -> Peers {
        let backend = config.backend.clone();
        let mut peers = Peers {
            config,
            local,
            underlay,
            backend,
            peers: HashMap::new(),
            next_seq: 0,
            taken: BTreeMap::new(),
            macs: HashMap::new(),
            entries: Entries::default(),
            rejected: BTreeMap::new(),
            blocked: BTreeMap::new(),
            rebuilds: 0,
        };
        peers.put_device_routes();
        peers
    }

    /// The desired per-peer entries.
    pub fn entries(&self) -> &Entries {
        &self.entries
    }

    /// The device the backend needs (none for host-gw, or before the underlay is known).
    pub fn device(&self) -> Option<DeviceSpec> {
        let underlay = self.underlay.as_ref()?;
        self.backend
            .backend()
            .device(&self.local, underlay, self.config.network)
    }

    /// Keeps `mac` as the VTEP MAC from now on when none was given: a device
    /// made again (its underlay went away and came back, someone deleted
    /// it) gets the MAC the peers already know.
    pub fn keep_vtep_mac(&mut self, mac: MacAddr) {
        if self.local.vtep_mac.is_none() {
            self.local.vtep_mac = Some(mac);
        }
    }

    /// The underlay facts the entries were computed for.
    pub fn underlay(&self) -> Option<&UnderlayFacts> {
        self.underlay.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &OverlayConfig {
        &self.config
    }

    /// This node.
    pub fn local(&self) -> &LocalNode {
        &self.local
    }

    /// The leases not programmed, oldest first, each naming its node and field.
    pub fn rejected(&self) -> Vec<LeaseError> {
        let mut out: Vec<(u64, LeaseError)> = self
            .rejected
            .iter()
            .map(|(node, e)| {
                (
                    self.peers.get(node.as_str()).map_or(0, |p| p.seq),
                    e.clone(),
                )
            })
            .collect();
        out.sort_by_key(|(seq, _)| *seq);
        out.into_iter().map(|(_, e)| e).collect()
    }

    /// Number of leases held (accepted or not).
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// True when no lease is held.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Full rebuilds so far (conflicts, new underlay or configuration).
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// The leases, oldest first.
    pub fn leases(&self) -> Vec<Lease> {
        let mut all: Vec<&Peer> = self.peers.values().collect();
        all.sort_by_key(|p| p.seq);
        all.into_iter().map(|p| p.lease.clone()).collect()
    }

    /// New underlay facts: everything is recomputed when they differ.
    pub fn set_underlay(&mut self, underlay: UnderlayFacts) -> Touched {
        if self.underlay.as_ref() == Some(&underlay) {
            return Touched::default();
        }
        self.underlay = Some(underlay);
        self.rebuild()
    }

    /// New configuration or node: everything is recomputed when they differ.
    pub fn set_node(&mut self, config: OverlayConfig, mut local: LocalNode) -> Touched {
        if local.vtep_mac.is_none() {
            local.vtep_mac = self.local.vtep_mac;
        }
        if self.config == config && self.local == local {
            return Touched::default();
        }
        self.backend = config.backend.clone();
        self.config = config;
        self.local = local;
        self.rebuild()
    }

    /// Replaces every lease: those gone are removed, the others upserted in
    /// the order given (new ones are younger than every lease held).
    pub fn replace(&mut self, leases: Vec<Lease>) -> Touched {
        let keep: BTreeSet<&str> = leases.iter().map(|l| l.node.as_str()).collect();
        let gone: Vec<Arc<str>> = self
            .peers
            .keys()
            .filter(|n| !keep.contains(&***n))
            .cloned()
            .collect();
        let mut touched = Touched::default();
        for node in gone {
            touched.merge(self.remove(&node));
        }
        for lease in leases {
            touched.merge(self.upsert(lease));
        }
        touched
    }

    /// A node's lease is new or changed.
    pub fn upsert(&mut self, lease: Lease) -> Touched {
        let mut touched = Touched::default();
        if lease.node == self.local.name {
            return touched;
        }
        let seq = match self.peers.get(lease.node.as_str()) {
            Some(p) if p.lease == lease => return touched,
            Some(p) => p.seq,
            None => {
                self.next_seq += 1;
                self.next_seq
            }
        };
        let node: Arc<str> = match self.peers.get_key_value(lease.node.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(lease.node.as_str()),
        };
        let unblocks = self.withdraw(&node, &mut touched);
        self.peers.insert(
            node.clone(),
            Peer {
                seq,
                lease,
                accepted: None,
            },
        );
        if unblocks || self.place(&node, false, &mut touched).is_err() {
            return self.rebuild();
        }
        touched
    }

    /// A node is gone (or no longer has a lease).
    pub fn remove(&mut self, node: &str) -> Touched {
        let mut touched = Touched::default();
        let unblocks = self.withdraw(node, &mut touched);
        self.peers.remove(node);
        if unblocks {
            return self.rebuild();
        }
        touched
    }

    /// Recomputes everything from the leases, oldest first.
    fn rebuild(&mut self) -> Touched {
        self.rebuilds += 1;
        self.taken.clear();
        self.macs.clear();
        self.entries = Entries::default();
        self.put_device_routes();
        self.rejected.clear();
        self.blocked.clear();
        let mut order: Vec<(u64, Arc<str>)> = self
            .peers
            .iter_mut()
            .map(|(node, p)| {
                p.accepted = None;
                (p.seq, node.clone())
            })
            .collect();
        order.sort_unstable();
        let mut ignored = Touched::default();
        for (_, node) in order {
            // In seq order every conflict is with an older lease: never a rebuild.
            let _ = self.place(&node, true, &mut ignored);
        }
        Touched::everything()
    }

    /// The routes the backend's device needs (kept through every rebuild).
    fn put_device_routes(&mut self) {
        for r in self
            .backend
            .backend()
            .device_routes(&self.local, self.config.network)
        {
            self.entries.put_route(r);
        }
    }

    /// Takes a node's accepted entries out of the indexes and the desired
    /// entries (the peer itself stays); true when that may let a lease that
    /// conflicted with it in (a rebuild is then due).
    fn withdraw(&mut self, node: &str, touched: &mut Touched) -> bool {
        self.rejected.remove(node);
        self.blocked.remove(node);
        let Some(peer) = self.peers.get_mut(node) else {
            return false;
        };
        let Some(entries) = peer.accepted.take() else {
            return false;
        };
        self.taken.remove(&span(peer.lease.subnet).0);
        if let Some(r) = &entries.route {
            self.entries.routes.remove(&r.dst);
        }
        if let Some(f) = &entries.forward {
            self.entries.forwards.remove(&f.subnet);
        }
        if let Some(n) = &entries.neighbour {
            self.entries.neighbours.remove(&n.ip);
        }
        if let Some(f) = &entries.fdb {
            self.entries.fdb.remove(&f.mac);
            self.macs.remove(&f.mac);
        }
        touched.add_peer(&entries);
        self.blocked.values().any(|by| by == node)
    }

    /// Checks a held, unplaced lease and records the outcome. `Err` when it
    /// conflicts only with younger leases (outside a rebuild): the order then
    /// decides, and only a rebuild applies it.
    fn place(
        &mut self,
        node: &str,
        rebuilding: bool,
        touched: &mut Touched,
    ) -> Result<(), NeedsRebuild> {
        let Some(underlay) = self.underlay.as_ref() else {
            return Ok(());
        };
        let Some((key, peer)) = self.peers.get_key_value(node) else {
            return Ok(());
        };
        let (seq, lease, key) = (peer.seq, &peer.lease, key.clone());
        let checked = check(
            &self.config,
            self.backend.backend(),
            &self.local,
            underlay,
            lease,
            &self.taken,
            &self.macs,
        );
        match checked {
            Ok(entries) => {
                // A younger lease rejected for a conflict may now conflict
                // with this one first: the order decides its reason.
                let reorders = !rebuilding
                    && self.blocked.keys().any(|b| {
                        self.peers
                            .get(b.as_str())
                            .is_some_and(|p| p.seq > seq && overlaps(p.lease.subnet, lease.subnet))
                    });
                if reorders {
                    return Err(NeedsRebuild);
                }
                let (start, end) = span(lease.subnet);
                self.taken.insert(
                    start,
                    Claim {
                        end,
                        subnet: lease.subnet,
                        node: key.clone(),
                        seq,
                    },
                );
                if let Some(r) = entries.route {
                    self.entries.put_route(r);
                }
                if let Some(f) = entries.forward {
                    self.entries.put_forward(f);
                }
                if let Some(n) = entries.neighbour {
                    self.entries.put_neighbour(n);
                }
                if let Some(f) = entries.fdb {
                    self.macs.insert(f.mac, key);
                    self.entries.put_fdb(f);
                }
                touched.add_peer(&entries);
                if let Some(p) = self.peers.get_mut(node) {
                    p.accepted = Some(entries);
                }
                Ok(())
            }
            Err((field, reason)) => {
                let other = match &reason {
                    LeaseFault::OverlapsPeer { other, .. }
                    | LeaseFault::DuplicateMac { other, .. } => Some(other.clone()),
                    _ => None,
                };
                if let Some(other) = other {
                    let older = self.peers.get(other.as_str()).is_some_and(|o| o.seq < seq);
                    if !older && !rebuilding {
                        return Err(NeedsRebuild);
                    }
                    self.blocked.insert(node.to_string(), other);
                }
                tracing::warn!(node, field, %reason, "skipping peer");
                self.rejected.insert(
                    node.to_string(),
                    LeaseError {
                        node: node.to_string(),
                        field,
                        reason,
                    },
                );
                Ok(())
            }
        }
    }
}

/// The earliest-accepted subnet overlapping `subnet`. Accepted subnets are
/// disjoint, so only the one starting just below and those starting inside
/// can overlap.
fn overlapping(taken: &BTreeMap<u128, Claim>, subnet: IpNet) -> Option<&Claim> {
    let (start, end) = span(subnet);
    let below = taken
        .range(..start)
        .next_back()
        .filter(|(_, c)| c.end >= start);
    let inside = taken.range(start..=end);
    below
        .into_iter()
        .chain(inside)
        .map(|(_, c)| c)
        .min_by_key(|c| c.seq)
}

/// Checks one lease: first its own data (so a lease's fault does not depend
/// on the others), then the conflicts with the accepted ones.
fn check(
    config: &OverlayConfig,
    backend: &dyn Backend,
    local: &LocalNode,
    underlay: &UnderlayFacts,
    lease: &Lease,
    taken: &BTreeMap<u128, Claim>,
    macs: &HashMap<MacAddr, Arc<str>>,
) -> Result<PeerEntries, (&'static str, LeaseFault)> {
    let subnet = lease.subnet.trunc();
    if subnet != lease.subnet {
        return Err(("podCIDR", LeaseFault::NotANetwork(lease.subnet)));
    }
    if !config.network.contains(&subnet) {
        return Err((
            "podCIDR",
            LeaseFault::OutsideNetwork {
                subnet,
                network: config.network,
            },
        ));
    }
    if overlaps(subnet, local.subnet) {
        return Err((
            "podCIDR",
            LeaseFault::OverlapsOwn {
                subnet,
                own: local.subnet,
            },
        ));
    }
    let ip = lease.public_ip;
    if ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
        || ip == local.public_ip
    {
        return Err(("public-ip", LeaseFault::BadPublicIp(ip)));
    }
    if !lease.backend_type.eq_ignore_ascii_case(backend.kind()) {
        return Err((
            "backend-type",
            LeaseFault::BackendMismatch {
                expected: backend.kind(),
                found: lease.backend_type.clone(),
            },
        ));
    }
    let peer = backend.peer(lease, underlay)?;
    if let Some(claim) = overlapping(taken, subnet) {
        return Err((
            "podCIDR",
            LeaseFault::OverlapsPeer {
                subnet,
                other: claim.node.to_string(),
                other_subnet: claim.subnet,
            },
        ));
    }
    if let Some(f) = &peer.fdb {
        if let Some(other) = macs.get(&f.mac) {
            return Err((
                "backend-data.VtepMAC",
                LeaseFault::DuplicateMac {
                    mac: f.mac.to_string(),
                    other: other.to_string(),
                },
            ));
        }
    }
    Ok(peer)
}

/// A subnet's first and last address in one number space for both
/// families (IPv4 as IPv4-mapped IPv6), for the ordered overlap index.
fn span(net: IpNet) -> (u128, u128) {
    match net {
        IpNet::V4(n) => (
            u128::from(n.network().to_ipv6_mapped()),
            u128::from(n.broadcast().to_ipv6_mapped()),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::backend::VxlanConfig;

    fn lease(i: u32) -> Lease {
        Lease {
            node: format!("node-{i}"),
            subnet: ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(0x0af4_0000 + (i << 8)), 24)
                .unwrap()
                .into(),
            public_ip: std::net::Ipv4Addr::from(0xac12_0000 + i).into(),
            backend_type: "vxlan".into(),
            backend_data: format!(
                r#"{{"VNI":1,"VtepMAC":"02:00:00:00:{:02x}:{:02x}"}}"#,
                i >> 8,
                i & 0xff
            ),
        }
    }

    fn peers() -> Peers {
        Peers::new(
            OverlayConfig {
                network: "10.244.0.0/16".parse().unwrap(),
                backend: BackendConfig::from(VxlanConfig::default()),
            },
            LocalNode {
                name: "self".into(),
                subnet: "10.244.0.0/24".parse().unwrap(),
                public_ip: "172.18.0.0".parse().unwrap(),
                underlay: "eth0".into(),
                vtep_mac: None,
            },
            Some(UnderlayFacts {
                ifindex: 2,
                mtu: 1500,
                networks: vec![],
            }),
        )
    }

    #[test]
    fn changes_without_conflicts_never_rebuild_and_touch_one_peer() {
        let mut p = peers();
        for i in 1..200 {
            let t = p.upsert(lease(i));
            assert!(!t.all);
            assert_eq!((t.routes.len(), t.neighbours.len(), t.fdb.len()), (1, 1, 1));
        }
        let mut moved = lease(7);
        moved.public_ip = "172.18.9.9".parse().unwrap();
        let t = p.upsert(moved);
        assert_eq!((t.routes.len(), t.neighbours.len(), t.fdb.len()), (1, 1, 1));
        assert!(
            p.upsert(lease(8)).is_empty(),
            "an unchanged lease touches nothing"
        );
        assert_eq!(p.remove("node-9").routes.len(), 1);
        assert_eq!(p.rebuilds(), 0);
        assert_eq!(p.entries().routes.len(), 198);
    }

    #[test]
    fn removing_the_lease_that_blocked_another_lets_it_in() {
        let mut p = peers();
        p.upsert(lease(1));
        let mut twin = lease(1);
        twin.node = "twin".into();
        twin.backend_data = r#"{"VNI":1,"VtepMAC":"02:00:00:00:99:99"}"#.into();
        p.upsert(twin);
        assert_eq!(p.rejected().len(), 1);
        assert_eq!(p.rejected()[0].node, "twin");
        assert!(p.remove("node-1").all);
        assert!(p.rejected().is_empty());
        assert_eq!(p.entries().routes.len(), 1);
    }
}
