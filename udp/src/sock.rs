//! The UDP sockets: a `SO_REUSEPORT` group on one address, one per queue.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::UdpError;

/// Socket buffer size asked for (with `SO_*BUFFORCE` when allowed, else
/// capped by the namespace's `rmem_max`/`wmem_max`).
const BUFFER: usize = 4 << 20;

fn socket(addr: SocketAddr, reuse_port: bool) -> Result<Socket, UdpError> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(
        |source| UdpError::Socket {
            context: "cannot create",
            source,
        },
    )?;
    if addr.is_ipv6() {
        // A [::] socket serves IPv4 peers too (as mapped addresses).
        let _ = s.set_only_v6(false);
    }
    if reuse_port {
        s.set_reuse_port(true).map_err(|source| UdpError::Socket {
            context: "cannot set SO_REUSEPORT",
            source,
        })?;
    }
    Ok(s)
}

fn bind(s: &Socket, addr: SocketAddr) -> Result<(), UdpError> {
    s.bind(&addr.into()).map_err(|source| {
        if source.kind() == io::ErrorKind::AddrInUse {
            UdpError::PortInUse(addr.port())
        } else {
            UdpError::Bind { addr, source }
        }
    })
}

/// How long the first socket of a group may find the port still held
/// after the probe (which found it free) was closed.
const PROBE_LINGER: Duration = Duration::from_secs(1);

/// Binds the group's first socket right after the probe was closed. The
/// probe may still hold the port for a moment: a process forked by another
/// thread (weftd runs iptables; tests run ping) holds a copy of every
/// descriptor until its `exec` closes them. The probe found the port free,
/// so "in use" is retried for up to [`PROBE_LINGER`].
fn bind_after_probe(s: &Socket, addr: SocketAddr) -> Result<(), UdpError> {
    let end = Instant::now() + PROBE_LINGER;
    loop {
        match bind(s, addr) {
            Err(UdpError::PortInUse(_)) if Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(2));
            }
            other => return other,
        }
    }
}

fn buffers(s: &Socket) {
    use nix::sys::socket::{setsockopt, sockopt};
    let n = BUFFER;
    if setsockopt(s, sockopt::RcvBufForce, &n).is_err() {
        let _ = s.set_recv_buffer_size(n);
    }
    if setsockopt(s, sockopt::SndBufForce, &n).is_err() {
        let _ = s.set_send_buffer_size(n);
    }
}

/// Binds `n` non-blocking sockets to `addr` with `SO_REUSEPORT`.
///
/// First (unless `share`) a plain socket (no `SO_REUSEPORT`) is bound and
/// closed, so that a port someone else holds — even in a reuse-port group
/// of their own — is reported as [`UdpError::PortInUse`] instead of being
/// silently shared.
pub(crate) fn bind_group(
    addr: SocketAddr,
    n: usize,
    share: bool,
) -> Result<Vec<UdpSocket>, UdpError> {
    let probed = addr.port() != 0 && !share;
    if probed {
        let probe = socket(addr, false)?;
        bind(&probe, addr)?;
    }
    let mut out: Vec<UdpSocket> = Vec::with_capacity(n);
    let mut at = addr;
    for _ in 0..n.max(1) {
        let s = socket(at, true)?;
        if probed && out.is_empty() {
            bind_after_probe(&s, at)?;
        } else {
            bind(&s, at)?;
        }
        if let Some(local) = s.local_addr().ok().and_then(|a| a.as_socket()) {
            at = SocketAddr::new(addr.ip(), local.port());
        }
        buffers(&s);
        s.set_nonblocking(true).map_err(|source| UdpError::Socket {
            context: "cannot make non-blocking",
            source,
        })?;
        out.push(s.into());
    }
    Ok(out)
}

/// Makes the reuse-port group of `sock` deliver every datagram to the group's
/// socket number `index` (in the order they joined, holes filled by the
/// last), or — when the group has no such socket — spread them by the
/// kernel's hash as without a program. A forwarder that stops steers to
/// the first socket of a successor that joined after its own `n` sockets,
/// so that its own sockets get nothing more while they are drained.
pub(crate) fn steer_group_to(sock: &UdpSocket, index: u32) -> io::Result<()> {
    use nix::libc::{BPF_K, BPF_RET};
    // One classic BPF instruction: return `index`.
    attach_to_group(sock, &mut [cbpf(BPF_RET | BPF_K, index)])
}

/// One classic BPF instruction without a branch.
fn cbpf(code: u32, k: u32) -> nix::libc::sock_filter {
    nix::libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// Sets `program` as the reuse-port group's socket chooser (it returns the
/// socket's number), replacing the one before.
fn attach_to_group(sock: &UdpSocket, program: &mut [nix::libc::sock_filter]) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    let len = u16::try_from(program.len()).map_err(|_| io::Error::other("program too long"))?;
    let fprog = nix::libc::sock_fprog {
        len,
        filter: program.as_mut_ptr(),
    };
    setsockopt(sock, sockopt::AttachReusePortCbpf, &fprog).map_err(io::Error::from)
}

/// No socket is number `u32::MAX`: the kernel's hash again.
pub(crate) const NO_STEERING: u32 = u32::MAX;

/// Makes the reuse-port group of `sock` spread datagrams over its first
/// `n` sockets by the flow of the packet they carry. Left to itself the
/// kernel hashes the datagram's own addresses and ports, which are the
/// same for everything between two nodes (port 8285 to port 8285): one
/// socket, one thread would receive all of it. The program hashes the
/// inner IPv4 packet's addresses and the first 4 bytes after its header
/// (TCP's and UDP's ports), so each flow stays on one socket (in order)
/// and flows spread. Anything shorter, or IPv6, lands on socket 0.
pub(crate) fn spread_group(sock: &UdpSocket, n: u32) -> io::Result<()> {
    use nix::libc::{
        sock_filter, BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_LDX,
        BPF_MEM, BPF_MISC, BPF_MOD, BPF_MUL, BPF_RET, BPF_RSH, BPF_ST, BPF_TAX, BPF_W, BPF_X,
        BPF_XOR,
    };
    let op = cbpf;
    // The offsets are into the UDP payload: the inner packet.
    let mut program = [
        // Not IPv4 with a 20-byte header: socket 0.
        op(BPF_LD | BPF_B | BPF_ABS, 0),
        sock_filter {
            code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
            jt: 1,
            jf: 0,
            k: 0x45,
        },
        op(BPF_RET | BPF_K, 0),
        // A = src ^ dst ^ ports
        op(BPF_LD | BPF_W | BPF_ABS, 12),
        op(BPF_ST, 0),
        op(BPF_LD | BPF_W | BPF_ABS, 16),
        op(BPF_LDX | BPF_W | BPF_MEM, 0),
        op(BPF_ALU | BPF_XOR | BPF_X, 0),
        op(BPF_ST, 0),
        op(BPF_LD | BPF_W | BPF_ABS, 20),
        op(BPF_LDX | BPF_W | BPF_MEM, 0),
        op(BPF_ALU | BPF_XOR | BPF_X, 0),
        // Fold the high half (the source port) into the low one, then mix
        // the low bits upwards and take the high half: a client's ports
        // often differ only above the lowest bit (Linux's connect hands
        // out even ones), which a plain modulo would not see.
        op(BPF_MISC | BPF_TAX, 0),
        op(BPF_ALU | BPF_RSH | BPF_K, 16),
        op(BPF_ALU | BPF_XOR | BPF_X, 0),
        op(BPF_ALU | BPF_MUL | BPF_K, 0x9e37_79b1),
        op(BPF_ALU | BPF_RSH | BPF_K, 16),
        op(BPF_ALU | BPF_MOD | BPF_K, n.max(1)),
        op(BPF_RET | BPF_A, 0),
    ];
    attach_to_group(sock, &mut program)
}
