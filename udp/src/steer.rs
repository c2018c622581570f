//! Steering a multi-queue TUN device's packets to one queue while a
//! forwarder hands over to a successor.
//!
//! Left to itself the kernel picks a TUN queue per flow: the queue that
//! last wrote a packet of the flow, or else by hash over every attached
//! queue. While a predecessor's queues are still attached, a flow can be
//! picked for one of them at any time (a new flow by hash, or a flow whose
//! queue was renumbered when another queue closed), and what a queue holds
//! when it closes is lost. With a steering program on the device
//! (`TUNSETSTEERINGEBPF`) the kernel asks the program instead: a stopping
//! forwarder installs one that names the first queue attached after its
//! own, its successor's, so that its own queues get nothing new while it
//! reads them empty; the successor removes the program once it has taken
//! over (and any forwarder that starts alone removes a leftover one).
//!
//! The program is two eBPF instructions, `r0 = index; exit`, loaded as a
//! socket filter (what the ioctl asks for). Loading needs `CAP_BPF` or
//! `CAP_SYS_ADMIN`; without, the hand-over falls back to the kernel's own
//! choice and the drain's quiet period.

#![allow(unsafe_code)] // one ioctl with no safe wrapper

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::libc;

use crate::bpf::asm::{Asm, Insn, R0};
use crate::bpf::{self, ProgType};

/// `TUNSETSTEERINGEBPF`: `_IOR('T', 224, int)` (its number differs
/// between architectures; nix encodes it for the one built for).
const TUNSETSTEERINGEBPF: nix::sys::ioctl::ioctl_num_type =
    nix::request_code_read!(b'T', 224, std::mem::size_of::<libc::c_int>());

/// The instructions of a program that returns `index`.
fn constant(index: u32) -> Vec<Insn> {
    let mut a = Asm::new();
    a.mov_imm(R0, index as i32);
    a.exit();
    // No jumps: nothing to resolve.
    a.finish().unwrap_or_default()
}

/// Loads a steering program that always answers queue `index`.
fn load(index: u32) -> io::Result<OwnedFd> {
    bpf::prog_load(ProgType::SocketFilter, "weft_tun_steer", &constant(index)).map_err(|e| e.source)
}

/// Sets (`Some(program)`) or removes (`None`) the steering program of the
/// device that `queue` (any of its queues) belongs to.
fn set(queue: &impl AsRawFd, program: Option<&OwnedFd>) -> io::Result<()> {
    let fd: libc::c_int = program.map_or(-1, AsRawFd::as_raw_fd);
    // SAFETY: TUNSETSTEERINGEBPF reads one int through the pointer, which
    // points at `fd` for the duration of the call.
    let r = unsafe {
        libc::ioctl(
            queue.as_raw_fd(),
            TUNSETSTEERINGEBPF,
            &fd as *const libc::c_int,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the device send every packet to its queue number `index` (queue
/// numbers run in attach order; a queue that closes is replaced by the
/// last one, and a number past the end wraps around).
pub(crate) fn steer_to(queue: &impl AsRawFd, index: u32) -> io::Result<()> {
    let program = load(index)?;
    // The device keeps its own reference to the program.
    set(queue, Some(&program))
}

/// Gives the choice of queue back to the kernel.
pub(crate) fn release(queue: &impl AsRawFd) -> io::Result<()> {
    set(queue, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn ioctl_number() {
        // linux/if_tun.h on the asm-generic architectures.
        assert_eq!(TUNSETSTEERINGEBPF, 0x8004_54e0);
    }

    #[test]
    fn program_layout() {
        let p = constant(3);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].code, p[0].imm), (0xb7, 3));
        assert_eq!(p[1].code, 0x95);
    }
}
