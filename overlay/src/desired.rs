//! The pure desired half: configuration + this node + leases → the state the
//! kernel should hold, and the leases that had to be skipped.

use crate::error::LeaseError;
use crate::model::{Lease, LocalNode, OverlayConfig, UnderlayFacts};
use crate::peers::Peers;
use crate::state::OverlayState;

/// The desired state, and every lease that was skipped with the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// What the kernel should hold.
    pub state: OverlayState,
    /// Leases that were not programmed, each naming its node and field.
    pub rejected: Vec<LeaseError>,
}

/// Computes the desired overlay state from scratch (the reconciler keeps it
/// current incrementally with [`Peers`]; this is the same computation at once).
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
    let mut peers = Peers::new(config.clone(), local.clone(), None);
    for lease in leases {
        peers.upsert(lease.clone());
    }
    peers.set_underlay(underlay.clone());
    Desired {
        state: OverlayState {
            device: peers.device(),
            entries: peers.entries().clone(),
        },
        rejected: peers.rejected(),
    }
}
