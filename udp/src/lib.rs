//! weft's UDP backend data plane: flannel's `udp` backend, compatible on the
//! wire, made fast.
//!
//! flannel's wire format: every IP packet the kernel routes into the TUN
//! device `flannel0` is sent, as the **whole payload** of one UDP datagram
//! (no header of any kind), from port `Backend.Port` (8285) to the same port
//! on the public IP of the node whose pod subnet holds the destination; each
//! datagram received is written to the TUN as one IP packet. Like flannel's
//! proxy, the forwarder decrements the inner TTL (hop limit) on both sides.
//!
//! What makes it fast:
//! - a multi-queue TUN (`IFF_MULTI_QUEUE`): one queue, one `SO_REUSEPORT`
//!   socket and one thread per queue, moving packets both ways (so the
//!   ACKs a TCP segment written to the TUN causes are read by the thread
//!   that wrote it, without waking another);
//! - with `offload`, `IFF_VNET_HDR` + `TUNSETOFFLOAD` (TSO/USO): the kernel
//!   hands over up to 64 KiB TCP super-packets, split here into MTU-sized IP
//!   packets (each its own datagram, flannel's framing) and sent with one
//!   `sendmsg` using UDP GSO (`UDP_SEGMENT`); received datagrams come in
//!   `recvmmsg` batches with UDP GRO, and each run of consecutive segments
//!   of one TCP flow is written to the TUN as one GSO super-packet with a
//!   single `writev` gathering the payloads where they were received (no
//!   copy; see [`coalesce`], the kernel's GRO rules);
//! - preallocated buffers per thread, no allocation per packet;
//! - the peer table is an immutable [`PeerTable`] behind an `ArcSwap`:
//!   [`ForwarderHandle::set_peers`] swaps it whole, readers never block.
//!
//! Beside it, where the process may load eBPF, the kernel path
//! (`kernel_path`, [`ForwarderConfig::kernel_path`]) frames and unframes
//! known peers' IPv4 packets in tc programs on the device's egress and the
//! underlay's ingress, the same bytes on the wire; whatever they pass on,
//! the forwarder handles. TCP super-packets that arrive whole (a veth
//! underlay) are unframed by the kernel's VXLAN code in a receive engine,
//! a device only the receive program feeds, where tc cannot clear their
//! tunnel marks. Received flows spread over the forwarder's
//! sockets by the inner flow (a reuse-port program), as everything between
//! two nodes is one UDP 4-tuple.
//!
//! Drops are counted, never panicked on: unknown subnet, too short, not IP,
//! unknown sender (a datagram whose source is no peer's public IP — nobody
//! outside the cluster may inject packets into pods), TTL expired, send and
//! TUN write errors. See [`Stats`].
//!
//! The forwarder does not configure the device (MTU, address, up, route):
//! the overlay reconciler does, after [`ensure_tun`]. If the device
//! vanishes the queues notice, the forwarder keeps running and re-attaches
//! when the device exists again (looking every 100 ms).
//!
//! Everything acts in the network namespace of the thread that calls
//! [`ensure_tun`] / [`Forwarder::start`] (the forwarder's threads inherit
//! it).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use nix::sys::eventfd::{EfdFlags, EventFd};
use quinn_udp::UdpSocketState;

mod bpf;
pub mod coalesce;
mod kernel_path;
pub mod packet;
mod sock;
mod stats;
mod steer;
pub mod table;
mod tun;
mod worker;

pub use packet::Reject;
pub use stats::Stats;
pub use table::PeerTable;
pub use tun::ensure_tun;

use stats::Counters;
use worker::{Shared, Worker};

/// flannel's default `Backend.Port` for the UDP backend.
pub const DEFAULT_PORT: u16 = 8285;
/// flannel's TUN device name.
pub const DEFAULT_DEVICE: &str = "flannel0";
/// Bytes the UDP encapsulation adds (IPv4 + UDP headers): the TUN MTU is the
/// underlay's minus this.
pub const UDP_OVERHEAD: u32 = 28;

/// Errors of the forwarder.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    /// Another socket holds the UDP port.
    #[error("UDP port {0} is already in use")]
    PortInUse(u16),
    /// Binding the UDP socket failed otherwise.
    #[error("cannot bind a UDP socket to {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Setting up a UDP socket failed.
    #[error("UDP socket: {context}: {source}")]
    Socket {
        /// What was being done.
        context: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The TUN device does not exist (create it with [`ensure_tun`]).
    #[error("TUN device {0} does not exist")]
    NoDevice(String),
    /// Not a valid interface name.
    #[error("invalid network device name {0:?}")]
    InvalidName(String),
    /// A TUN operation failed.
    #[error("TUN device {device}: {context}: {source}")]
    Tun {
        /// The device.
        device: String,
        /// What was being done.
        context: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// A worker thread could not be started.
    #[error("cannot start a forwarder thread: {0}")]
    Thread(std::io::Error),
}

/// How to run a forwarder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwarderConfig {
    /// The TUN device, e.g. `flannel0`; it must exist ([`ensure_tun`]).
    pub device: String,
    /// Where to bind: the node's public IP (or unspecified) and
    /// `Backend.Port`. Port 0 picks one (tests).
    pub bind: SocketAddr,
    /// TUN queues (each with a socket and a thread); 0 = one per CPU.
    pub queues: usize,
    /// Use `IFF_VNET_HDR`/`TUNSETOFFLOAD` (TSO/USO) on the TUN and UDP
    /// GSO/GRO on the sockets where the kernel has them.
    pub offload: bool,
    /// Join the port's `SO_REUSEPORT` group even though another socket holds
    /// it: only while taking over from a predecessor's forwarder, which
    /// stops once this one runs (else a taken port is [`UdpError::PortInUse`]).
    pub share_port: bool,
    /// Also carry known peers' IPv4 packets in the kernel: two tc eBPF
    /// programs that frame and unframe them (see
    /// [`ForwarderHandle::kernel_path`]). Needs a specific IPv4 `bind`
    /// address on an Ethernet device, `CAP_BPF` and Linux 6.6; without,
    /// everything goes through the forwarder, as with `false`.
    pub kernel_path: bool,
}

impl ForwarderConfig {
    /// flannel's defaults: `flannel0`, `0.0.0.0:8285`, one queue per CPU,
    /// offloads on.
    pub fn flannel_defaults() -> ForwarderConfig {
        ForwarderConfig {
            device: DEFAULT_DEVICE.to_owned(),
            bind: SocketAddr::new(IpAddr::from([0, 0, 0, 0]), DEFAULT_PORT),
            queues: 0,
            offload: true,
            share_port: false,
            kernel_path: true,
        }
    }
}

/// The forwarder; see [`Forwarder::start`].
#[derive(Debug)]
pub struct Forwarder;

impl Forwarder {
    /// Binds the sockets, attaches the queues and starts the threads, in the
    /// calling thread's network namespace. Packets stay queued in the
    /// kernel until the first [`ForwarderHandle::set_peers`].
    ///
    /// Errors: [`UdpError::PortInUse`] if the port is taken,
    /// [`UdpError::NoDevice`] if the device is missing, [`UdpError::Tun`] if
    /// it cannot be attached (e.g. not a multi-queue TUN device).
    pub fn start(cfg: ForwarderConfig) -> Result<ForwarderHandle, UdpError> {
        tun::validate_name(&cfg.device)?;
        let queues = match cfg.queues {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .min(256);
        if !tun::exists(&cfg.device) {
            return Err(UdpError::NoDevice(cfg.device));
        }
        let sockets = sock::bind_group(cfg.bind, queues, cfg.share_port)?;
        let port = sockets
            .first()
            .and_then(|s| s.local_addr().ok())
            .map_or(cfg.bind.port(), |a| a.port());
        let kernel = if cfg.kernel_path {
            match kernel_path::KernelPath::start(&cfg.device, cfg.bind.ip(), port) {
                Ok(k) => Ok(k),
                Err(error) => {
                    tracing::info!(%error, "UDP kernel data path not in use: the forwarder carries every packet");
                    Err(error.to_string())
                }
            }
        } else {
            Err("turned off".to_owned())
        };
        let mut devices = Vec::with_capacity(queues);
        for _ in 0..queues {
            devices.push(tun::attach(&cfg.device, cfg.offload)?);
        }
        // A handle on the device for its steering program (see `steer`).
        let steer_queue = devices
            .first()
            .and_then(|d| std::os::fd::AsFd::as_fd(d).try_clone_to_owned().ok());
        if let (Some(q), false) = (&steer_queue, cfg.share_port) {
            // Alone on the device: a program a predecessor left (it stopped
            // with no successor, or was killed mid hand-over) goes.
            if let Err(error) = steer::release(q) {
                tracing::debug!(%error, "cannot clear the TUN device's steering program");
            }
        }
        let shared = Arc::new(Shared {
            table: ArcSwap::from_pointee(PeerTable::default()),
            armed: Default::default(),
            stop: Default::default(),
            stop_fd: EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(|e| UdpError::Thread(e.into()))?,
            device: cfg.device.clone(),
            offload: cfg.offload,
            port,
            v6_socket: cfg.bind.is_ipv6(),
            counters: (0..queues).map(|_| Counters::default()).collect(),
            kernel: kernel.as_ref().ok().map(kernel_path::KernelPath::stats),
        });
        let mut handle = ForwarderHandle {
            shared: shared.clone(),
            threads: Vec::with_capacity(queues),
            local: SocketAddr::new(cfg.bind.ip(), port),
            first_socket: None,
            sockets: sockets.len(),
            steer_queue,
            kernel,
        };
        for (index, (sock, dev)) in sockets.into_iter().zip(devices).enumerate() {
            let state = UdpSocketState::new((&sock).into()).map_err(|source| UdpError::Socket {
                context: "cannot configure GSO/GRO",
                source,
            })?;
            if !cfg.offload || handle.kernel.is_ok() {
                // Plain one-datagram-per-packet receive. With the kernel
                // path, GRO would merge known peers' datagrams into trains
                // before its receive program sees them, which it then has
                // to leave to the forwarder.
                let _ = nix::sys::socket::setsockopt(
                    &sock,
                    nix::sys::socket::sockopt::UdpGroSegment,
                    &false,
                );
            }
            let sock = Arc::new(sock);
            if handle.first_socket.is_none() {
                handle.first_socket = Some(sock.clone());
            }
            let w = Worker {
                shared: shared.clone(),
                sock,
                state,
                index,
            };
            let t = std::thread::Builder::new()
                .name(format!("weft-udp-{index}"))
                .spawn(move || worker::queue_loop(w, dev))
                .map_err(UdpError::Thread)?;
            handle.threads.push(t);
        }
        if !cfg.share_port {
            // Alone in the group: its datagrams spread by flow (a successor
            // does the same once it has taken over).
            handle.took_over_port();
        }
        tracing::info!(
            device = %cfg.device,
            bind = %handle.local,
            queues,
            offload = cfg.offload,
            kernel_path = handle.kernel.is_ok(),
            "UDP forwarder started"
        );
        Ok(handle)
    }
}

/// See [`ForwarderHandle::stats_reader`]; after the forwarder stopped it
/// keeps giving the final counters.
#[derive(Clone)]
pub struct StatsReader(Arc<Shared>);

impl StatsReader {
    /// Counters since the start.
    pub fn read(&self) -> Stats {
        self.0.stats()
    }
}

impl std::fmt::Debug for StatsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StatsReader").field(&self.0.device).finish()
    }
}

/// A running forwarder. Dropping it stops it too.
#[derive(Debug)]
pub struct ForwarderHandle {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    local: SocketAddr,
    /// One of the sockets (for the group's steering program) and how many.
    first_socket: Option<Arc<UdpSocket>>,
    sockets: usize,
    /// A duplicate of the first TUN queue's descriptor, to set and clear
    /// the device's steering program with. (If the device was deleted and
    /// made again since, it names the old one: steering then fails, and a
    /// hand-over falls back to the drain's quiet period.)
    steer_queue: Option<std::os::fd::OwnedFd>,
    /// The kernel data path, or why it is not in use.
    kernel: Result<kernel_path::KernelPath, String>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("device", &self.device)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl ForwarderHandle {
    /// Replaces the whole peer table: `(pod subnet, node public IP)` pairs.
    /// Takes effect for the next batch each thread handles; packet threads
    /// never wait for it.
    pub fn set_peers(&self, peers: &[(IpNet, IpAddr)]) {
        let table = PeerTable::new(peers);
        tracing::debug!(subnets = table.len(), "peer table replaced");
        self.shared.table.store(Arc::new(table));
        self.shared.armed.store(true, Ordering::Release);
        if let Ok(k) = &self.kernel {
            if let Err(error) = k.set_peers(peers) {
                tracing::warn!(%error, "UDP kernel data path given up: the forwarder carries every packet");
            }
        }
    }

    /// `Ok(())` while known peers' IPv4 packets are carried in the kernel
    /// (tc eBPF programs on the device's egress and the underlay's
    /// ingress; see [`ForwarderConfig::kernel_path`]), else why not.
    pub fn kernel_path(&self) -> Result<(), &str> {
        match &self.kernel {
            Ok(k) => k.failed().map_or(Ok(()), Err),
            Err(why) => Err(why),
        }
    }

    /// How the kernel path unframes received TCP super-packets (what a
    /// veth underlay hands over whole): `Ok` where they stay in the kernel
    /// (in tc, or by the receive engine `weft-udp-rx`), else why the
    /// forwarder takes them.
    pub fn super_packets(&self) -> Result<String, String> {
        match &self.kernel {
            Ok(k) => k.super_packets(),
            Err(why) => Err(why.clone()),
        }
    }

    /// The table in use.
    pub fn peers(&self) -> Arc<PeerTable> {
        self.shared.table.load_full()
    }

    /// Counters since the start.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Counters since the start per queue, in the order the queues were
    /// attached (how evenly the kernel spreads flows over them).
    pub fn queue_stats(&self) -> Vec<Stats> {
        self.shared
            .counters
            .iter()
            .map(|c| stats::sum(std::iter::once(c)))
            .collect()
    }

    /// A reader of the counters that can be kept (and read from any
    /// thread) apart from the handle, e.g. by a metrics scrape.
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader(self.shared.clone())
    }

    /// After a take-over ([`ForwarderConfig::share_port`]), once the
    /// predecessor has stopped: the port's datagrams are spread over this
    /// forwarder's sockets by flow again (the predecessor steered them all
    /// to one socket of its successor while it drained).
    pub fn took_over(&self) {
        self.took_over_port();
        // Likewise the TUN's packets (the predecessor steered them all to
        // this forwarder's first queue).
        if let Some(q) = &self.steer_queue {
            if let Err(error) = steer::release(q) {
                tracing::warn!(%error, "cannot clear the TUN device's steering program");
            }
        }
    }

    /// The port's datagrams spread over this forwarder's sockets by the flow
    /// they carry ([`sock::spread_group`]).
    fn took_over_port(&self) {
        if let Some(s) = &self.first_socket {
            let n = u32::try_from(self.sockets).unwrap_or(1);
            if let Err(error) = sock::spread_group(s, n) {
                tracing::warn!(%error, "cannot set the port's reuse-port steering");
            }
        }
    }

    /// The bound address (with the port actually bound).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops the threads and closes the queues and sockets, once each
    /// thread has forwarded what was queued to it. The device stays (it is
    /// persistent). Returns the final counters.
    pub fn stop(self) -> Stats {
        let shared = self.shared.clone();
        drop(self);
        shared.stats()
    }
}

impl Drop for ForwarderHandle {
    fn drop(&mut self) {
        // The programs first: the device's packets go to the TUN queues
        // (or a successor's programs) again, and are drained below.
        self.kernel = Err("stopped".to_owned());
        // A successor that joined the port's group sits right after this
        // forwarder's sockets: from now on it gets every datagram, and ours
        // are drained empty before they close. Without one, nothing changes.
        if let Some(s) = self.first_socket.take() {
            let index = u32::try_from(self.sockets).unwrap_or(sock::NO_STEERING);
            if let Err(error) = sock::steer_group_to(&s, index) {
                tracing::debug!(%error, "cannot steer the port's datagrams to a successor");
            }
        }
        // The same for the TUN: a successor's queues were attached after
        // ours, so its first is number `sockets` (one queue per socket).
        // Without one, the number wraps to one of ours, which are closing.
        if let Some(q) = self.steer_queue.take() {
            let index = u32::try_from(self.sockets).unwrap_or(0);
            if let Err(error) = steer::steer_to(&q, index) {
                tracing::debug!(%error, "cannot steer the TUN's packets to a successor");
            }
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = self.shared.stop_fd.write(1);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a UDP forwarder thread panicked");
            }
        }
        tracing::info!(device = %self.shared.device, "UDP forwarder stopped");
    }
}
