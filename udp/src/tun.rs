//! The TUN device: creating it persistent, attaching queues to it.
//!
//! Everything acts on the network namespace of the calling thread.

use tun_rs::{DeviceBuilder, SyncDevice};

use crate::UdpError;

/// Longest interface name the kernel accepts (IFNAMSIZ − 1).
const MAX_NAME: usize = 15;

pub(crate) fn validate_name(name: &str) -> Result<(), UdpError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(UdpError::InvalidName(name.to_owned()))
    }
}

/// Whether a network device `name` exists in this thread's namespace.
pub(crate) fn exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

fn builder(name: &str, offload: bool) -> DeviceBuilder {
    DeviceBuilder::new()
        .name(name)
        // Never touch IFF_UP: the overlay reconciler owns the link state.
        .inherit_enable_state()
        .with(|b| {
            b.multi_queue(true).offload(offload);
        })
}

/// Creates the persistent TUN device `name` if missing; see the crate root.
pub fn ensure_tun(name: &str, offload: bool) -> Result<bool, UdpError> {
    validate_name(name)?;
    if exists(name) {
        tracing::debug!(device = name, "TUN device exists");
        return Ok(false);
    }
    let dev = builder(name, offload)
        .build_sync()
        .map_err(|source| UdpError::Tun {
            device: name.to_owned(),
            context: "cannot create the device",
            source,
        })?;
    dev.persist().map_err(|source| UdpError::Tun {
        device: name.to_owned(),
        context: "cannot make the device persistent (TUNSETPERSIST)",
        source,
    })?;
    tracing::info!(
        device = name,
        offload,
        "created persistent multi-queue TUN device"
    );
    Ok(true)
}

/// Attaches one more queue to the existing device `name`, non-blocking.
///
/// Checks first that the device exists, so that a missing device is not
/// silently created (TUNSETIFF would make a new, non-persistent one); the
/// window between the check and the attach is accepted.
pub(crate) fn attach(name: &str, offload: bool) -> Result<SyncDevice, UdpError> {
    if !exists(name) {
        return Err(UdpError::NoDevice(name.to_owned()));
    }
    let dev = builder(name, offload)
        .build_sync()
        .map_err(|source| UdpError::Tun {
            device: name.to_owned(),
            context: "cannot attach a queue (is it a multi-queue TUN device?)",
            source,
        })?;
    dev.set_nonblocking(true).map_err(|source| UdpError::Tun {
        device: name.to_owned(),
        context: "cannot make the queue non-blocking",
        source,
    })?;
    Ok(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("flannel0").is_ok());
        assert!(validate_name("a-b_c.d").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("0123456789abcdef").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name("..").is_err());
    }
}
