//! The pure desired half: configuration + this node + leases → the state the
//! kernel should hold, and the leases that had to be skipped.

use std::collections::{BTreeMap, HashMap};

use ipnet::Ipv4Net;

use crate::backend::{self, Backend, PeerEntries};
use crate::error::{LeaseError, LeaseFault};
use crate::mac::MacAddr;
use crate::model::{Lease, LocalNode, OverlayConfig, UnderlayFacts};
use crate::state::{Entries, OverlayState};

/// The desired state, and every lease that was skipped with the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// What the kernel should hold.
    pub state: OverlayState,
    /// Leases that were not programmed, each naming its node and field.
    pub rejected: Vec<LeaseError>,
}

/// Computes the desired overlay state.
///
/// Leases are taken in the order given: when two overlap, or share a VTEP MAC,
/// the first keeps its place and the later one is rejected, so a newcomer with
/// bad data never displaces a working peer (callers pass the oldest first).
/// This node's own lease (same node name) is ignored.
pub fn desired(
    config: &OverlayConfig,
    local: &LocalNode,
    underlay: &UnderlayFacts,
    leases: &[Lease],
) -> Desired {
    let backend = backend::for_config(&config.backend);
    let mut out = Desired {
        state: OverlayState {
            device: backend.device(local, underlay, config.network),
            entries: Entries::default(),
        },
        rejected: Vec::new(),
    };
    let mut taken = Taken::default();
    let mut macs: HashMap<MacAddr, &str> = HashMap::new();
    let (mut routes, mut neighbours, mut fdb) = (Vec::new(), Vec::new(), Vec::new());
    for lease in leases.iter().filter(|l| l.node != local.name) {
        let checked = check(
            config,
            backend.as_ref(),
            local,
            underlay,
            lease,
            &taken,
            &macs,
        );
        match checked {
            Ok(peer) => {
                taken.insert(lease.subnet, &lease.node);
                routes.push((peer.route.dst, peer.route));
                if let Some(n) = peer.neighbour {
                    neighbours.push((n.ip, n));
                }
                if let Some(f) = peer.fdb {
                    macs.insert(f.mac, &lease.node);
                    fdb.push((f.mac, f));
                }
            }
            Err((field, reason)) => {
                tracing::warn!(node = %lease.node, field, %reason, "skipping peer");
                out.rejected.push(LeaseError {
                    node: lease.node.clone(),
                    field,
                    reason,
                });
            }
        }
    }
    // Keys are unique (subnets are disjoint, MACs distinct): bulk-build the maps.
    out.state.entries = Entries {
        routes: routes.into_iter().collect(),
        neighbours: neighbours.into_iter().collect(),
        fdb: fdb.into_iter().collect(),
    };
    out
}

/// The subnets accepted so far, by first address, for O(log n) overlap checks.
#[derive(Default)]
struct Taken<'a> {
    /// start → (end, subnet, node, order of acceptance)
    by_start: BTreeMap<u32, (u32, Ipv4Net, &'a str, usize)>,
}

impl<'a> Taken<'a> {
    fn insert(&mut self, subnet: Ipv4Net, node: &'a str) {
        let order = self.by_start.len();
        self.by_start.insert(
            u32::from(subnet.network()),
            (u32::from(subnet.broadcast()), subnet, node, order),
        );
    }

    /// The earliest-accepted subnet overlapping `subnet`. Accepted subnets are
    /// disjoint, so only the one starting just below and those starting inside
    /// can overlap.
    fn overlapping(&self, subnet: Ipv4Net) -> Option<(Ipv4Net, &'a str)> {
        let (start, end) = (u32::from(subnet.network()), u32::from(subnet.broadcast()));
        let below = self
            .by_start
            .range(..start)
            .next_back()
            .filter(|(_, (e, ..))| *e >= start);
        let inside = self.by_start.range(start..=end);
        below
            .into_iter()
            .chain(inside)
            .min_by_key(|(_, (.., order))| *order)
            .map(|(_, (_, net, node, _))| (*net, *node))
    }
}

fn check(
    config: &OverlayConfig,
    backend: &dyn Backend,
    local: &LocalNode,
    underlay: &UnderlayFacts,
    lease: &Lease,
    taken: &Taken<'_>,
    macs: &HashMap<MacAddr, &str>,
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
    if let Some((other_subnet, other)) = taken.overlapping(subnet) {
        return Err((
            "podCIDR",
            LeaseFault::OverlapsPeer {
                subnet,
                other: other.to_string(),
                other_subnet,
            },
        ));
    }
    let ip = lease.public_ip;
    if ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_broadcast()
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
    if let Some(f) = &peer.fdb {
        if let Some(other) = macs.get(&f.mac) {
            return Err((
                "backend-data.VtepMAC",
                LeaseFault::DuplicateMac {
                    mac: f.mac.to_string(),
                    other: (*other).to_string(),
                },
            ));
        }
    }
    Ok(peer)
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}
