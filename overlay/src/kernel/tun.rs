//! The TUN device (the UDP backend's `flannel0`): made persistent through
//! `/dev/net/tun` (TUN devices cannot be made over rtnetlink), so it, its
//! address and its route outlive a restarted agent; then set like any link.

use super::{req, Kernel};
use crate::error::KernelError;
use crate::state::TunDevice;

impl Kernel {
    pub(crate) async fn create_tun(&self, d: &TunDevice) -> Result<u32, KernelError> {
        weft_udp::ensure_tun(&d.name, d.offload).map_err(|e| KernelError::Tun {
            device: d.name.clone(),
            reason: e.to_string(),
        })?;
        let ifindex = self.address_new_device(&d.name, d.address).await?;
        let set = rtnetlink::LinkUnspec::new_with_index(ifindex)
            .mtu(d.mtu)
            .up()
            .build();
        self.handle
            .link()
            .set(set)
            .execute()
            .await
            .map_err(req(format!("set {} mtu {} up", d.name, d.mtu)))?;
        Ok(ifindex)
    }
}
