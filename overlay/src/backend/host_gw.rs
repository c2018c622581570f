//! host-gw: a plain route to each peer's subnet via the peer's node IP, on the
//! underlay interface. Every node must share one L2 network.

use ipnet::Ipv4Net;

use super::{Backend, PeerEntries};
use crate::error::LeaseFault;
use crate::model::{Lease, LocalNode, UnderlayFacts};
use crate::state::VxlanDevice;

/// The host-gw backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostGw;

impl Backend for HostGw {
    fn kind(&self) -> &'static str {
        "host-gw"
    }

    fn device(&self, _: &LocalNode, _: &UnderlayFacts, _: Ipv4Net) -> Option<VxlanDevice> {
        None
    }

    fn peer(
        &self,
        lease: &Lease,
        underlay: &UnderlayFacts,
    ) -> Result<PeerEntries, (&'static str, LeaseFault)> {
        if !underlay.is_on_link(lease.public_ip) {
            return Err(("public-ip", LeaseFault::NotOnLink(lease.public_ip)));
        }
        Ok(PeerEntries::direct(lease))
    }
}
