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

#![allow(unsafe_code)] // two system calls with no safe wrapper: bpf(2) and one ioctl

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::libc;

/// `TUNSETSTEERINGEBPF`: `_IOR('T', 224, int)` (its number differs
/// between architectures; nix encodes it for the one built for).
const TUNSETSTEERINGEBPF: nix::sys::ioctl::ioctl_num_type =
    nix::request_code_read!(b'T', 224, std::mem::size_of::<libc::c_int>());
/// `BPF_PROG_LOAD`.
const BPF_PROG_LOAD: libc::c_int = 5;
/// `BPF_PROG_TYPE_SOCKET_FILTER`.
const SOCKET_FILTER: u32 = 1;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// dst_reg (low 4 bits), src_reg (high 4 bits).
    regs: u8,
    off: i16,
    imm: i32,
}

/// The first fields of `union bpf_attr` for `BPF_PROG_LOAD`, padded with
/// the zeroes the kernel expects for the fields not given.
#[repr(C, align(8))]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    rest: [u8; 64],
}

/// The instructions of a program that returns `index`.
fn constant(index: u32) -> [Insn; 2] {
    [
        // BPF_ALU64 | BPF_MOV | BPF_K: r0 = imm
        Insn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: index as i32,
        },
        // BPF_JMP | BPF_EXIT
        Insn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ]
}

/// Loads a steering program that always answers queue `index`.
fn load(index: u32) -> io::Result<OwnedFd> {
    let insns = constant(index);
    let license = c"GPL";
    let attr = ProgLoad {
        prog_type: SOCKET_FILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        rest: [0; 64],
    };
    // SAFETY: `attr` is a valid, fully initialised prefix of `union
    // bpf_attr` for BPF_PROG_LOAD with its size passed; the pointers in it
    // (instructions, license) outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoad,
            std::mem::size_of::<ProgLoad>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf returned a bad descriptor"))?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        let p = constant(3);
        assert_eq!((p[0].code, p[0].imm), (0xb7, 3));
        assert_eq!(p[1].code, 0x95);
        // The kernel rejects a non-zero byte past the fields it knows, and
        // an attribute larger than a page.
        assert_eq!(std::mem::size_of::<ProgLoad>() % 8, 0);
        assert!(std::mem::size_of::<ProgLoad>() < 4096);
    }
}
