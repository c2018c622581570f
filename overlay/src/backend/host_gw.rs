//! host-gw: a plain route to each peer's subnet via the peer's node IP, on the
//! underlay interface. Every node must share one L2 network. No device, no
//! encapsulation: pods get the underlay's MTU, and the published
//! `backend-data` is `null`, as flannel's.

use std::any::Any;

use ipnet::IpNet;

use super::{
    report_unknown, same_as, Backend, BackendConfig, PeerEntries, Registration, Section,
    SectionError,
};
use crate::error::LeaseFault;
use crate::family::Family;
use crate::mac::MacAddr;
use crate::model::{Lease, LocalNode, UnderlayFacts};
use crate::state::DeviceSpec;

/// The host-gw backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostGw;

/// `"Type": "host-gw"`.
pub(super) const REGISTRATION: Registration = Registration {
    kind: "host-gw",
    parse,
};

fn parse(section: &Section<'_>, ignored: &mut Vec<String>) -> Result<BackendConfig, SectionError> {
    report_unknown(section, "host-gw", &["Type"], ignored);
    Ok(BackendConfig::from(HostGw))
}

impl From<HostGw> for BackendConfig {
    fn from(b: HostGw) -> BackendConfig {
        BackendConfig::new(b)
    }
}

impl Backend for HostGw {
    fn kind(&self) -> &'static str {
        "host-gw"
    }

    fn device_name(&self, _: IpNet) -> Option<String> {
        None
    }

    fn device(&self, _: &LocalNode, _: &UnderlayFacts, _: IpNet) -> Option<DeviceSpec> {
        None
    }

    fn mtu(&self, underlay_mtu: u32, _: Family) -> u32 {
        underlay_mtu
    }

    fn backend_data(&self, _: Option<MacAddr>) -> Option<String> {
        Some("null".into())
    }

    fn restore_mac(&self, _: &str) -> Option<MacAddr> {
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

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn same(&self, other: &dyn Backend) -> bool {
        same_as(self, other)
    }
}
