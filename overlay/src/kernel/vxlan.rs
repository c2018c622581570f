//! The VXLAN device: made as flannel makes `flannel.<VNI>`, and read back.

use std::net::IpAddr;

use netlink_packet_route::link::{InfoData, InfoVxlan, LinkInfo};
use rtnetlink::LinkVxlan;

use super::{req, Kernel};
use crate::error::KernelError;
use crate::state::{VxlanDevice, VxlanParams};

impl Kernel {
    pub(crate) async fn create_vxlan(&self, d: &VxlanDevice) -> Result<u32, KernelError> {
        let what = format!(
            "create {} (vxlan id {} local {} dstport {} dev #{})",
            d.name, d.vni, d.local, d.port, d.underlay
        );
        let mut builder = LinkVxlan::new(&d.name, d.vni).dev(d.underlay);
        builder = match d.local {
            IpAddr::V4(v4) => builder.local(v4),
            IpAddr::V6(v6) => builder.local6(v6),
        };
        builder = builder.port(d.port).learning(d.learning).mtu(d.mtu);
        if let Some(mac) = d.mac {
            builder = builder.address(mac.octets().to_vec());
        }
        self.handle
            .link()
            .add(builder.up().build())
            .execute()
            .await
            .map_err(req(what))?;
        self.address_new_device(&d.name, d.address).await
    }
}

/// The VXLAN parameters in a link's info data (`None` if it carries none).
pub fn params(infos: &[LinkInfo]) -> Option<VxlanParams> {
    let attrs = infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(attrs)) => Some(attrs),
        _ => None,
    })?;
    let mut p = VxlanParams::default();
    for v in attrs {
        match v {
            InfoVxlan::Id(id) => p.vni = Some(*id),
            InfoVxlan::Local(ip) => p.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => p.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Port(port) => p.port = Some(*port),
            InfoVxlan::Link(l) => p.underlay = Some(*l),
            InfoVxlan::Learning(l) => p.learning = Some(*l),
            _ => {}
        }
    }
    Some(p)
}
