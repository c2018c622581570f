//! The VXLAN device: made as flannel makes `flannel.<VNI>`, and read back.

use std::net::IpAddr;

use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::LinkVxlan;

use super::{link_mtu, req, Kernel};
use crate::error::KernelError;
use crate::mac::MacAddr;
use crate::state::{ObservedDevice, VxlanDevice};

impl Kernel {
    pub(crate) async fn create_vxlan(&self, d: &VxlanDevice) -> Result<u32, KernelError> {
        let what = format!(
            "create {} (vxlan id {} local {} dstport {} dev #{})",
            d.name, d.vni, d.local, d.port, d.underlay
        );
        let mut builder = LinkVxlan::new(&d.name, d.vni)
            .dev(d.underlay)
            .local(d.local)
            .port(d.port)
            .learning(d.learning)
            .mtu(d.mtu);
        if let Some(mac) = d.mac {
            builder = builder.address(mac.octets().to_vec());
        }
        self.handle
            .link()
            .add(builder.up().build())
            .execute()
            .await
            .map_err(req(what))?;
        let link = self
            .link_by_name(&d.name)
            .await?
            .ok_or_else(|| KernelError::NoDevice(d.name.clone()))?;
        let ifindex = link.header.index;
        self.handle
            .address()
            .add(
                ifindex,
                IpAddr::V4(d.address.addr()),
                d.address.prefix_len(),
            )
            .replace()
            .execute()
            .await
            .map_err(req(format!("add address {}", d.address)))?;
        Ok(ifindex)
    }
}

/// A link as an [`ObservedDevice`] (VXLAN parameters when it is one).
pub(crate) fn observed_device(link: &LinkMessage) -> ObservedDevice {
    let mut dev = ObservedDevice {
        ifindex: link.header.index,
        is_vxlan: false,
        vni: None,
        local: None,
        port: None,
        underlay: None,
        learning: None,
        mtu: link_mtu(link),
        mac: None,
        up: link.header.flags.contains(LinkFlags::Up),
        addresses: Vec::new(),
    };
    for a in &link.attributes {
        match a {
            LinkAttribute::Address(b) => dev.mac = MacAddr::from_bytes(b),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(InfoKind::Vxlan) => dev.is_vxlan = true,
                        LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                            for v in attrs {
                                match v {
                                    InfoVxlan::Id(id) => dev.vni = Some(*id),
                                    InfoVxlan::Local(ip) => dev.local = Some(*ip),
                                    InfoVxlan::Port(p) => dev.port = Some(*p),
                                    InfoVxlan::Link(l) => dev.underlay = Some(*l),
                                    InfoVxlan::Learning(l) => dev.learning = Some(*l),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    dev
}
