//! The pure desired half: configuration + this node + leases → the state the
//! kernel should hold, and the leases that had to be skipped.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use crate::backend::{self, Backend};
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
    let mut taken: Vec<(Ipv4Net, &str)> = Vec::new();
    let mut macs: BTreeMap<MacAddr, &str> = BTreeMap::new();
    for lease in leases.iter().filter(|l| l.node != local.name) {
        match check_and_add(
            config,
            backend.as_ref(),
            local,
            underlay,
            lease,
            &taken,
            &mut macs,
            &mut out.state.entries,
        ) {
            Ok(()) => taken.push((lease.subnet, lease.node.as_str())),
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
    out
}

#[allow(clippy::too_many_arguments)]
fn check_and_add<'a>(
    config: &OverlayConfig,
    backend: &dyn Backend,
    local: &LocalNode,
    underlay: &UnderlayFacts,
    lease: &'a Lease,
    taken: &[(Ipv4Net, &str)],
    macs: &mut BTreeMap<MacAddr, &'a str>,
    out: &mut Entries,
) -> Result<(), (&'static str, LeaseFault)> {
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
    if let Some((other_subnet, other)) = taken.iter().find(|(s, _)| overlaps(*s, subnet)) {
        return Err((
            "podCIDR",
            LeaseFault::OverlapsPeer {
                subnet,
                other: (*other).to_string(),
                other_subnet: *other_subnet,
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
    let mut mine = Entries::default();
    backend.peer(lease, underlay, &mut mine)?;
    for mac in mine.fdb.keys() {
        if let Some(other) = macs.get(mac) {
            return Err((
                "backend-data.VtepMAC",
                LeaseFault::DuplicateMac {
                    mac: mac.to_string(),
                    other: (*other).to_string(),
                },
            ));
        }
    }
    for mac in mine.fdb.keys() {
        macs.insert(*mac, lease.node.as_str());
    }
    out.routes.append(&mut mine.routes);
    out.neighbours.append(&mut mine.neighbours);
    out.fdb.append(&mut mine.fdb);
    Ok(())
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}
