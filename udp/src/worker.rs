//! The packet-moving threads: one per queue, moving both ways (TUN queue →
//! UDP socket and back). It reads each non-blocking descriptor in turn
//! while either has something, and sleeps in one `poll(2)` on both (100 ms
//! timeout for a lost device, woken at once by the stop eventfd) only when
//! both are empty. One thread for both directions means what one direction
//! makes the other do (a TCP segment written to the TUN makes the kernel
//! queue its ACK on the same queue) is picked up without waking another
//! thread: on a 2-core node the wake-ups, not the copies, were the cost.
//! Stopping, the thread reads both descriptors empty first: what the kernel
//! queued before the stop is forwarded, not dropped with the descriptor (a
//! successor that took over already has queues and sockets of its own, see
//! `ForwarderConfig::share_port`).
//!
//! All buffers are allocated when a thread starts; the packet path
//! allocates nothing.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tun_rs::{SyncDevice, VirtioNetHdr, VIRTIO_NET_HDR_LEN};

use crate::coalesce::{
    self, Train, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, MAX_HEADER, MAX_SEGMENTS,
    NEEDS_CSUM,
};
use crate::packet::{decrement_ttl, destination, IPV4_HEADER_LEN};
use crate::stats::{Counters, C};
use crate::table::PeerTable;

/// How long a thread waits in `poll` (and between looks for a lost device).
pub(crate) const POLL: Duration = Duration::from_millis(100);
/// Bytes of segment buffer TSO super-packets are split into.
const ARENA: usize = 256 * 1024;
/// Most segments one TSO super-packet is split into.
const MAX_SEGS: usize = 128;
/// Most UDP payload bytes in one GSO send (the kernel's limit is a 64 KiB
/// IP datagram).
const GSO_MAX_BYTES: usize = 65_000;
/// Most segments in one GSO send (the kernel's UDP_MAX_SEGMENTS).
const GSO_MAX_SEGS: usize = 64;
/// Size of a receive buffer: a GRO-coalesced datagram train fits.
const RX_BUF: usize = 96 * 1024;
/// Datagrams per `recvmmsg`.
const RX_BATCH: usize = quinn_udp::BATCH_SIZE;
/// Packets one receive batch is expected to hold at most (the list of
/// them grows past it only once, if ever).
const RX_PACKETS: usize = RX_BATCH * 64;

/// State shared by every thread of a forwarder.
pub(crate) struct Shared {
    pub table: ArcSwap<PeerTable>,
    /// Set by the first peer table: until then the threads leave packets
    /// queued in the kernel (a successor taking over must not drop what
    /// it cannot yet route).
    pub armed: AtomicBool,
    pub stop: AtomicBool,
    /// Made readable (never read) when `stop` is set: every `poll` returns.
    pub stop_fd: EventFd,
    pub device: String,
    pub offload: bool,
    pub port: u16,
    pub v6_socket: bool,
    pub counters: Vec<Counters>,
    /// The kernel data path's counters, if it runs.
    pub kernel: Option<crate::kernel_path::KernelStats>,
}

impl Shared {
    /// Every queue's counters and the kernel path's.
    pub fn stats(&self) -> crate::Stats {
        let mut s = crate::stats::sum(&self.counters);
        if let Some(k) = &self.kernel {
            let ((tp, tb), (rp, rb)) = k.read();
            s.kernel_tx_packets = tp;
            s.kernel_tx_bytes = tb;
            s.kernel_rx_packets = rp;
            s.kernel_rx_bytes = rb;
        }
        s
    }
}

/// What one thread works with.
pub(crate) struct Worker {
    pub shared: Arc<Shared>,
    pub sock: Arc<UdpSocket>,
    pub state: UdpSocketState,
    /// The queue's index, and its counters' in `shared.counters`.
    pub index: usize,
}

impl Worker {
    fn c(&self) -> &Counters {
        &self.shared.counters[self.index]
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }
}

/// Waits for the first peer table (see [`Shared::armed`]); false if the
/// forwarder was stopped first.
fn wait_for_table(w: &Worker) -> bool {
    while !w.shared.armed.load(Ordering::Acquire) {
        if w.stopping() {
            return false;
        }
        let mut fds = [PollFd::new(w.shared.stop_fd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(1u8));
    }
    true
}

/// Waits until `fd` has one of `events` (or an error), at most [`POLL`],
/// or until the forwarder is stopped.
fn wait(w: &Worker, fd: BorrowedFd<'_>, events: PollFlags) -> io::Result<PollFlags> {
    let mut fds = [
        PollFd::new(fd, events),
        PollFd::new(w.shared.stop_fd.as_fd(), PollFlags::POLLIN),
    ];
    match poll(&mut fds, PollTimeout::from(POLL.as_millis() as u16)) {
        Ok(_) => Ok(fds[0].revents().unwrap_or(PollFlags::empty())),
        Err(nix::errno::Errno::EINTR) => Ok(PollFlags::empty()),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------
// TX: TUN → UDP

/// The TUN-to-UDP direction's buffers, allocated once.
struct TxBufs {
    raw: Vec<u8>,
    arena: Vec<u8>,
    sizes: [usize; MAX_SEGS],
}

impl TxBufs {
    fn new() -> TxBufs {
        TxBufs {
            raw: vec![0u8; VIRTIO_NET_HDR_LEN + 65_535],
            arena: vec![0u8; ARENA],
            sizes: [0usize; MAX_SEGS],
        }
    }
}

/// Most TUN reads in a row before the socket gets its turn.
const TUN_BURST: usize = 16;

/// A queue's thread: forwards both ways until stopped, then drains.
pub(crate) fn queue_loop(w: Worker, dev: SyncDevice) {
    let mut tx = TxBufs::new();
    let mut rx = RxBufs::new();
    if !wait_for_table(&w) {
        return;
    }
    let mut dev = Some(dev);
    while !w.stopping() {
        let Some(d) = dev.as_ref() else {
            // Datagrams wait in the socket meanwhile (none can be
            // delivered without the device).
            dev = reattach(&w);
            continue;
        };
        let mut moved = 0;
        for _ in 0..TUN_BURST {
            match d.recv(&mut tx.raw) {
                Ok(n) => {
                    on_read(&w, &mut tx.raw[..n], &mut tx.arena, &mut tx.sizes);
                    moved += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    dev = lost(&w, e);
                    break;
                }
            }
        }
        let Some(d) = dev.as_ref() else { continue };
        match rx_batch(&w, &mut rx, d) {
            Ok(n) => moved += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::debug!(%error, "UDP receive failed");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if moved > 0 {
            continue;
        }
        match wait_either(&w, d) {
            Ok(rev)
                if rev
                    .intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL) =>
            {
                dev = lost(&w, io::Error::other(format!("poll: {rev:?}")));
            }
            Ok(_) => {}
            Err(e) => dev = lost(&w, e),
        }
    }
    final_drain(&w, &mut tx, &mut rx, dev.as_ref());
    // The descriptors close here, the moment the drain ends; the buffers
    // (megabytes, slow to give back) only after.
    drop(dev);
    drop(w);
    drop((tx, rx));
}

/// Waits until the TUN queue or the socket is readable, at most [`POLL`],
/// or until the forwarder is stopped: the TUN queue's events.
fn wait_either(w: &Worker, d: &SyncDevice) -> io::Result<PollFlags> {
    let mut fds = [
        PollFd::new(d.as_fd(), PollFlags::POLLIN),
        PollFd::new(w.sock.as_fd(), PollFlags::POLLIN),
        PollFd::new(w.shared.stop_fd.as_fd(), PollFlags::POLLIN),
    ];
    match poll(&mut fds, PollTimeout::from(POLL.as_millis() as u16)) {
        Ok(_) => Ok(fds[0].revents().unwrap_or(PollFlags::empty())),
        Err(nix::errno::Errno::EINTR) => Ok(PollFlags::empty()),
        Err(e) => Err(e.into()),
    }
}

/// The queue is unusable (device deleted: reads fail with EBADFD): forget
/// it; [`reattach`] brings it back.
fn lost(w: &Worker, error: io::Error) -> Option<SyncDevice> {
    w.c().add(C::DeviceLost, 1);
    tracing::warn!(
        device = %w.shared.device,
        queue = w.index,
        %error,
        "TUN queue lost; waiting for the device to come back"
    );
    None
}

/// Waits [`POLL`], then attaches a new queue if the device exists again.
fn reattach(w: &Worker) -> Option<SyncDevice> {
    std::thread::sleep(POLL);
    if w.stopping() || !crate::tun::exists(&w.shared.device) {
        return None;
    }
    match crate::tun::attach(&w.shared.device, w.shared.offload) {
        Ok(d) => {
            w.c().add(C::DeviceReattached, 1);
            tracing::info!(device = %w.shared.device, queue = w.index, "TUN queue re-attached");
            Some(d)
        }
        Err(error) => {
            tracing::debug!(device = %w.shared.device, queue = w.index, %error, "re-attach failed");
            None
        }
    }
}

/// One read from the TUN queue: a plain packet, or (with offload) a
/// virtio-net header and possibly a TSO/USO super-packet to split.
fn on_read(w: &Worker, buf: &mut [u8], arena: &mut [u8], sizes: &mut [usize; MAX_SEGS]) {
    if !w.shared.offload {
        forward_run(w, buf, buf.len(), 1);
        return;
    }
    if buf.len() <= VIRTIO_NET_HDR_LEN {
        w.c().add(C::TooShort, 1);
        return;
    }
    let Ok(hdr) = VirtioNetHdr::decode(&buf[..VIRTIO_NET_HDR_LEN]) else {
        w.c().add(C::BadOffload, 1);
        return;
    };
    let pkt = &mut buf[VIRTIO_NET_HDR_LEN..];
    if hdr.gso_type == GSO_NONE {
        if hdr.flags & NEEDS_CSUM != 0 && !finish_checksum(pkt, hdr.csum_start, hdr.csum_offset) {
            w.c().add(C::BadOffload, 1);
            return;
        }
        forward_run(w, pkt, pkt.len(), 1);
        return;
    }
    let Some((hdr_len, seg)) = segment_len(pkt, &hdr) else {
        w.c().add(C::BadOffload, 1);
        return;
    };
    let is_v6 = pkt.first().is_some_and(|b| b >> 4 == 6);
    let nslices = (ARENA / seg).min(MAX_SEGS);
    let split = {
        let mut chunks = arena.chunks_mut(seg);
        let mut slices: [&mut [u8]; MAX_SEGS] =
            std::array::from_fn(|_| chunks.next().unwrap_or_default());
        let mut h = hdr;
        h.hdr_len = hdr_len;
        tun_rs::gso_split(
            pkt,
            h,
            &mut slices[..nslices],
            &mut sizes[..nslices],
            0,
            is_v6,
        )
    };
    match split {
        Ok(k) => forward_segments(w, arena, seg, &sizes[..k]),
        Err(error) => {
            w.c().add(C::BadOffload, 1);
            tracing::debug!(%error, "cannot split a TUN super-packet");
        }
    }
}

/// Completes a partial checksum (virtio `NEEDS_CSUM`): the checksum over
/// `pkt[start..]`, seeded with the pseudo-header sum the kernel left at
/// `start + offset`. `false` if the offsets do not fit the packet.
fn finish_checksum(pkt: &mut [u8], start: u16, offset: u16) -> bool {
    let start = usize::from(start);
    let at = start + usize::from(offset);
    if at + 2 > pkt.len() || start > pkt.len() {
        return false;
    }
    let initial = u16::from_be_bytes([pkt[at], pkt[at + 1]]);
    pkt[at] = 0;
    pkt[at + 1] = 0;
    let sum = tun_rs::checksum(&pkt[start..], u64::from(initial));
    pkt[at..at + 2].copy_from_slice(&(!sum).to_be_bytes());
    true
}

/// The true header length (IP + TCP/UDP; the kernel's `hdr_len` is not
/// trusted, as in wireguard-go) and the length of every segment but the
/// last.
fn segment_len(pkt: &[u8], hdr: &VirtioNetHdr) -> Option<(u16, usize)> {
    if hdr.gso_size == 0 {
        return None;
    }
    let start = usize::from(hdr.csum_start);
    if start < IPV4_HEADER_LEN {
        return None;
    }
    let l4 = match hdr.gso_type & !GSO_ECN {
        GSO_TCPV4 | GSO_TCPV6 => {
            // TCP: data offset in the 13th byte.
            let off = *pkt.get(start + 12)?;
            let len = usize::from(off >> 4) * 4;
            if !(20..=60).contains(&len) {
                return None;
            }
            len
        }
        GSO_UDP_L4 => 8,
        _ => return None,
    };
    let hdr_len = start + l4;
    if pkt.len() < hdr_len {
        return None;
    }
    Some((
        u16::try_from(hdr_len).ok()?,
        hdr_len + usize::from(hdr.gso_size),
    ))
}

/// Forwards the segments `gso_split` left in `arena` (segment `i` at
/// `i * seg`, `sizes[i]` long; all `seg` long but maybe the last), grouping
/// consecutive segments to the same peer into GSO sends.
fn forward_segments(w: &Worker, arena: &mut [u8], seg: usize, sizes: &[usize]) {
    let table = w.shared.table.load();
    let max_segs = w.state.max_gso_segments().clamp(1, GSO_MAX_SEGS);
    // The run being collected: first segment, count, bytes, peer.
    let mut run: Option<(usize, usize, usize, IpAddr)> = None;
    for (i, &len) in sizes.iter().enumerate() {
        let off = i * seg;
        let Some(p) = arena.get_mut(off..off + len) else {
            break;
        };
        let peer = match route(w, &table, p) {
            Some(peer) => peer,
            None => {
                if let Some((first, n, bytes, peer)) = run.take() {
                    send(w, peer, &arena[first * seg..first * seg + bytes], seg, n);
                }
                continue;
            }
        };
        run = match run {
            Some((first, n, bytes, rpeer))
                if rpeer == peer && n < max_segs && bytes + len <= GSO_MAX_BYTES =>
            {
                Some((first, n + 1, bytes + len, peer))
            }
            Some((first, n, bytes, rpeer)) => {
                send(w, rpeer, &arena[first * seg..first * seg + bytes], seg, n);
                Some((i, 1, len, peer))
            }
            None => Some((i, 1, len, peer)),
        };
        if len < seg {
            // A short segment ends a GSO train.
            if let Some((first, n, bytes, peer)) = run.take() {
                send(w, peer, &arena[first * seg..first * seg + bytes], seg, n);
            }
        }
    }
    if let Some((first, n, bytes, peer)) = run {
        send(w, peer, &arena[first * seg..first * seg + bytes], seg, n);
    }
}

/// Forwards one packet (or `n` equal segments, `seg` each) read as is.
fn forward_run(w: &Worker, pkt: &mut [u8], seg: usize, n: usize) {
    let table = w.shared.table.load();
    if let Some(peer) = route(w, &table, pkt) {
        send(w, peer, pkt, seg, n);
    }
}

/// Checks, routes and TTL-decrements one packet; counts why not.
fn route(w: &Worker, table: &PeerTable, p: &mut [u8]) -> Option<IpAddr> {
    let dst = match destination(p) {
        Ok(d) => d,
        Err(r) => {
            w.c().add_reject(r);
            return None;
        }
    };
    let Some(peer) = table.lookup(dst) else {
        w.c().add(C::UnknownSubnet, 1);
        return None;
    };
    if !decrement_ttl(p) {
        w.c().add(C::TtlExpired, 1);
        return None;
    }
    Some(peer)
}

/// Sends `contents` (`n` segments of `seg` bytes, the last maybe shorter)
/// to `peer`'s port: one datagram per segment, with UDP GSO when `n > 1`.
/// Waits for socket buffer space rather than dropping.
fn send(w: &Worker, peer: IpAddr, contents: &[u8], seg: usize, n: usize) {
    let ip = match (peer, w.shared.v6_socket) {
        (IpAddr::V4(a), true) => IpAddr::V6(a.to_ipv6_mapped()),
        (IpAddr::V6(_), false) => {
            w.c().add(C::SendError, n as u64);
            return;
        }
        (ip, _) => ip,
    };
    let transmit = Transmit {
        destination: SocketAddr::new(ip, w.shared.port),
        ecn: None,
        contents,
        segment_size: (n > 1).then_some(seg),
        src_ip: None,
    };
    loop {
        match w.state.try_send((&*w.sock).into(), &transmit) {
            Ok(()) => {
                let c = w.c();
                c.add(C::TxPackets, n as u64);
                c.add(C::TxBytes, contents.len() as u64);
                c.add(C::TxSends, 1);
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if w.stopping() {
                    w.c().add(C::SendError, n as u64);
                    return;
                }
                let _ = wait(w, w.sock.as_fd(), PollFlags::POLLOUT);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                w.c().add(C::SendError, n as u64);
                tracing::debug!(%peer, segments = n, %error, "UDP send failed");
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// RX: UDP → TUN

/// The UDP-to-TUN direction's buffers, allocated once.
struct RxBufs {
    bufs: Vec<Vec<u8>>,
    metas: [RecvMeta; RX_BATCH],
    /// The packets of one batch to write: (buffer, offset, length).
    spans: Vec<(usize, usize, usize)>,
    /// The TUN's MTU as last read, and when (see [`RxBufs::mtu`]).
    mtu: (usize, Option<std::time::Instant>),
}

impl RxBufs {
    fn new() -> RxBufs {
        RxBufs {
            bufs: (0..RX_BATCH).map(|_| vec![0u8; RX_BUF]).collect(),
            metas: [RecvMeta::default(); RX_BATCH],
            spans: Vec::with_capacity(RX_PACKETS),
            mtu: (1500, None),
        }
    }

    /// The TUN's MTU: read when a packet longer than the last reading
    /// comes (a TCP super-packet, see [`coalesce::single_header`]), at most
    /// once a second (the reconciler may set it after the start).
    fn mtu(&mut self, d: &SyncDevice, longest: usize) -> usize {
        let (mtu, read) = self.mtu;
        let stale = read.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if longest > mtu && stale {
            if let Ok(m) = d.mtu() {
                self.mtu = (usize::from(m), Some(std::time::Instant::now()));
            }
        }
        self.mtu.0
    }
}

/// How long the last drain goes on after both descriptors were last found
/// empty. The stopping handle steered the port's datagrams to a
/// successor's sockets (`sock::steer_group_to`) and the TUN's packets to
/// its queues (`steer`), so nothing new arrives here but what the kernel
/// had in flight; without the TUN program (no `CAP_BPF`) a successor's
/// first writes move the TUN's flows to its own queues (the kernel steers
/// a flow to the queue that last wrote it) within this time.
const DRAIN_QUIET: Duration = Duration::from_millis(20);
/// The longest last drain.
const DRAIN_MAX: Duration = Duration::from_millis(500);

/// Stopping: reads both the TUN queue and the socket until both stayed
/// empty for [`DRAIN_QUIET`] (the descriptors close right after), so what
/// the kernel queued to either before the stop is forwarded.
fn final_drain(w: &Worker, tx: &mut TxBufs, rx: &mut RxBufs, dev: Option<&SyncDevice>) {
    let start = std::time::Instant::now();
    let mut last_moved = start;
    // Without a queue nothing can be delivered.
    let Some(d) = dev else { return };
    loop {
        let mut moved = 0;
        while let Ok(n) = d.recv(&mut tx.raw) {
            on_read(w, &mut tx.raw[..n], &mut tx.arena, &mut tx.sizes);
            moved += 1;
        }
        while let Ok(n) = rx_batch(w, rx, d) {
            moved += n;
        }
        let now = std::time::Instant::now();
        if moved > 0 {
            last_moved = now;
        }
        if now - last_moved >= DRAIN_QUIET || now - start >= DRAIN_MAX {
            break;
        }
        let _ = poll(
            &mut [
                PollFd::new(w.sock.as_fd(), PollFlags::POLLIN),
                PollFd::new(d.as_fd(), PollFlags::POLLIN),
            ],
            PollTimeout::from(1u8),
        );
    }
}

/// One `recvmmsg` batch from the socket, forwarded to the TUN queue: the
/// number of datagrams, or the receive's error (`WouldBlock` when empty).
fn rx_batch(w: &Worker, b: &mut RxBufs, d: &SyncDevice) -> io::Result<usize> {
    let RxBufs {
        bufs, metas, spans, ..
    } = b;
    let n = {
        let mut it = bufs.iter_mut();
        let mut iovs: [IoSliceMut<'_>; RX_BATCH] = std::array::from_fn(|_| {
            IoSliceMut::new(it.next().map(Vec::as_mut_slice).unwrap_or_default())
        });
        w.state.recv((&*w.sock).into(), &mut iovs, metas)?
    };
    let table = w.shared.table.load();
    spans.clear();
    for (i, (buf, meta)) in bufs.iter_mut().zip(metas.iter()).take(n).enumerate() {
        let len = meta.len.min(buf.len());
        let stride = if meta.stride == 0 { len } else { meta.stride }.max(1);
        if !table.is_peer(meta.addr.ip()) {
            w.c()
                .add(C::UnknownSender, len.div_ceil(stride).max(1) as u64);
            tracing::trace!(sender = %meta.addr, "datagram from an unknown sender");
            continue;
        }
        if len == 0 {
            w.c().add(C::TooShort, 1);
            continue;
        }
        for (k, seg) in buf[..len].chunks_mut(stride).enumerate() {
            if let Err(r) = destination(seg) {
                w.c().add_reject(r);
                continue;
            }
            if !decrement_ttl(seg) {
                w.c().add(C::TtlExpired, 1);
                continue;
            }
            spans.push((i, k * stride, seg.len()));
        }
    }
    if w.shared.offload {
        let longest = spans.iter().map(|s| s.2).max().unwrap_or(0);
        let mtu = b.mtu(d, longest);
        write_trains(w, d, &b.bufs, &b.spans, mtu);
    } else {
        for &(i, off, len) in spans.iter() {
            let pkt = &bufs[i][off..off + len];
            match d.send(pkt) {
                Ok(_) => {
                    w.c().add(C::RxPackets, 1);
                    w.c().add(C::RxBytes, len as u64);
                    w.c().add(C::RxWrites, 1);
                }
                Err(error) => {
                    w.c().add(C::TunWriteError, 1);
                    tracing::debug!(%error, "TUN write failed");
                }
            }
        }
    }
    Ok(n)
}

/// Writes a batch's packets to the TUN (with its virtio-net header), each
/// run of consecutive segments of one TCP flow as one GSO super-packet
/// gathered from where the segments lie (see [`coalesce`]): one `writev`
/// per run, no copy.
fn write_trains(
    w: &Worker,
    d: &SyncDevice,
    bufs: &[Vec<u8>],
    spans: &[(usize, usize, usize)],
    mtu: usize,
) {
    let at = |k: usize| {
        let (i, off, len) = spans[k];
        &bufs[i][off..off + len]
    };
    let mut header = [0u8; MAX_HEADER];
    let mut k = 0;
    while k < spans.len() {
        let head = at(k);
        let first = coalesce::segment(head).filter(|_| head.len() <= mtu);
        let Some(first) = first else {
            // Alone: not a TCP segment, or a whole super-packet.
            coalesce::single_header(head, mtu, &mut header[..VIRTIO_NET_HDR_LEN]);
            let iov = [
                IoSlice::new(&header[..VIRTIO_NET_HDR_LEN]),
                IoSlice::new(head),
            ];
            tun_write(w, d, &iov, 1, head.len());
            k += 1;
            continue;
        };
        let mut train = Train::start(first);
        let mut end = k + 1;
        while end < spans.len() {
            let p = at(end);
            match coalesce::segment(p) {
                Some(s) if train.accepts(head, &s, p) => train.push(&s),
                _ => break,
            }
            end += 1;
        }
        let h = coalesce::header(head, &train, &mut header);
        let hl = first.header_len();
        let mut iov: [IoSlice<'_>; MAX_SEGMENTS + 1] = std::array::from_fn(|_| IoSlice::new(&[]));
        iov[0] = IoSlice::new(&header[..h]);
        for (slot, m) in iov[1..].iter_mut().zip(k..end) {
            *slot = IoSlice::new(&at(m)[hl..]);
        }
        tun_write(
            w,
            d,
            &iov[..=end - k],
            end - k,
            train.count * hl + train.bytes,
        );
        k = end;
    }
}

/// One `writev` of `packets` packets (`bytes` bytes as received) to the TUN.
fn tun_write(w: &Worker, d: &SyncDevice, iov: &[IoSlice<'_>], packets: usize, bytes: usize) {
    match nix::sys::uio::writev(d.as_fd(), iov) {
        Ok(_) => {
            w.c().add(C::RxPackets, packets as u64);
            w.c().add(C::RxBytes, bytes as u64);
            w.c().add(C::RxWrites, 1);
        }
        Err(error) => {
            w.c().add(C::TunWriteError, packets as u64);
            tracing::debug!(%error, "TUN write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_completion_bounds() {
        let mut p = [0u8; 30];
        assert!(!finish_checksum(&mut p, 20, 16)); // offset past the end
        assert!(!finish_checksum(&mut p, 40, 0));
        assert!(finish_checksum(&mut p, 20, 6));
    }

    #[test]
    fn segment_lengths() {
        let mut pkt = vec![0u8; 20 + 32 + 1000];
        pkt[0] = 0x45;
        pkt[20 + 12] = 8 << 4; // 32-byte TCP header
        let hdr = VirtioNetHdr {
            flags: 1,
            gso_type: 1,
            hdr_len: 0,
            gso_size: 448,
            csum_start: 20,
            csum_offset: 16,
        };
        assert_eq!(segment_len(&pkt, &hdr), Some((52, 500)));
        let udp = VirtioNetHdr {
            gso_type: 5,
            csum_offset: 6,
            ..hdr
        };
        assert_eq!(segment_len(&pkt, &udp), Some((28, 476)));
        assert_eq!(
            segment_len(&pkt, &VirtioNetHdr { gso_size: 0, ..hdr }),
            None
        );
        assert_eq!(
            segment_len(&pkt, &VirtioNetHdr { gso_type: 3, ..hdr }),
            None
        );
        assert_eq!(segment_len(&pkt[..25], &hdr), None);
        pkt[20 + 12] = 2 << 4; // 8-byte TCP header: invalid
        assert_eq!(segment_len(&pkt, &hdr), None);
    }
}
