//! The kernel data path: flannel's UDP framing done by two tc eBPF
//! programs (see [`programs`]), so that the packets of known peers never
//! leave the kernel. The user-space forwarder stays beside it and handles
//! whatever the programs pass on (IPv6 inside, unknown subnets and
//! senders, expiring TTLs), and everything while the path is not attached.
//!
//! It needs `CAP_BPF` (or `CAP_SYS_ADMIN`) with `CAP_NET_ADMIN`, tcx
//! links (Linux 6.6) and `bpf_redirect_neigh` (5.10), an Ethernet underlay
//! and a specific public IPv4 address; [`KernelPath::start`] says which is
//! missing, and the forwarder then carries everything as before.
//!
//! The programs are attached as links held by this process: they go when
//! it stops or dies, and the device's packets fall back to the TUN queues
//! (a successor's forwarder, or its own kernel path, takes them). A thread
//! woken by the kernel's link and IPv4 address events (and every second
//! anyway) looks whether `flannel0`, the underlay or the receive engine
//! was made again (new interface numbers) and attaches the programs anew.

pub(crate) mod engine;
pub(crate) mod programs;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use nix::ifaddrs::InterfaceAddress;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::bpf::{self, MapType, ProgType, TcxHook, NO_PREALLOC};
use programs::{EngineParams, ReceiveParams, SendParams, STAT_RX, STAT_TX};

/// Most peers (subnets, public IPs) the maps hold.
const MAX_PEERS: u32 = 65_536;
/// Flows the receive program remembers as sending super-packets to the
/// forwarder (an LRU: the oldest is forgotten first).
const MAX_FLOWS: u32 = 4096;
/// How often the devices' numbers are checked without an event: a safety
/// net (and a retry of an attach that failed); link and address events
/// wake the watcher at once.
const WATCH: Duration = Duration::from_secs(1);

/// Why the kernel data path is not in use.
#[derive(Debug, thiserror::Error)]
pub enum KernelPathError {
    /// Bound to no specific IPv4 address: the outer source is unknown.
    #[error("the forwarder is not bound to a specific IPv4 address")]
    NoAddress,
    /// No device holds the public address, or it is not Ethernet.
    #[error("no Ethernet device holds {0}")]
    NoUnderlay(Ipv4Addr),
    /// The TUN device is missing.
    #[error("device {0} does not exist")]
    NoDevice(String),
    /// A map could not be made (`EPERM`: no `CAP_BPF`).
    #[error("cannot make eBPF map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// A program was refused.
    #[error(transparent)]
    Load(#[from] bpf::LoadError),
    /// The program could not be assembled (a bug).
    #[error("cannot assemble an eBPF program: {0}")]
    Asm(#[from] bpf::asm::AsmError),
    /// Attaching failed (`EINVAL`: a kernel without tcx, before 6.6).
    #[error("cannot attach to {device}'s tc {hook}: {source}")]
    Attach {
        /// The device.
        device: String,
        /// "ingress" or "egress".
        hook: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The watcher's wake-up could not be made.
    #[error("cannot make the kernel path watcher's eventfd: {0}")]
    Watcher(io::Error),
    /// A map update failed.
    #[error("cannot update eBPF map {name}: {source}")]
    Update {
        /// The map.
        name: &'static str,
        /// The cause.
        source: io::Error,
    },
}

/// The per-CPU counters of the programs; readable after they stopped.
#[derive(Debug, Clone)]
pub(crate) struct KernelStats {
    map: Arc<OwnedFd>,
    cpus: usize,
}

impl KernelStats {
    /// (packets, bytes) sent and received by the programs.
    pub(crate) fn read(&self) -> ((u64, u64), (u64, u64)) {
        let one = |key: u32| {
            let mut buf = vec![0u8; 16 * self.cpus];
            if bpf::map_lookup(&self.map, &key.to_ne_bytes(), &mut buf).is_err() {
                return (0, 0);
            }
            buf.chunks_exact(16).fold((0u64, 0u64), |(p, b), c| {
                let mut pk = [0u8; 8];
                let mut by = [0u8; 8];
                pk.copy_from_slice(&c[..8]);
                by.copy_from_slice(&c[8..]);
                (
                    p.wrapping_add(u64::from_ne_bytes(pk)),
                    b.wrapping_add(u64::from_ne_bytes(by)),
                )
            })
        };
        (one(STAT_TX), one(STAT_RX))
    }
}

/// A value of the `routes` map: where a subnet's packets go.
fn route_value(peer: Ipv4Addr, local: Ipv4Addr) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..4].copy_from_slice(&peer.octets());
    v[4..8].copy_from_slice(&local.octets());
    v[8..12].copy_from_slice(&header_sum(peer, local).to_ne_bytes());
    v
}

/// The sum of the outer IPv4 header's 16-bit words that do not depend on
/// the packet (all but the length and the checksum): version/IHL 0x4500,
/// ID 0, DF 0x4000, TTL 64 / UDP 0x4011, the two addresses. The send
/// program adds the length and folds.
pub(crate) fn header_sum(peer: Ipv4Addr, local: Ipv4Addr) -> u32 {
    let words = |ip: Ipv4Addr| {
        let o = ip.octets();
        u32::from(u16::from_be_bytes([o[0], o[1]])) + u32::from(u16::from_be_bytes([o[2], o[3]]))
    };
    0x4500 + 0x4000 + 0x4011 + words(peer) + words(local)
}

fn lpm_key(net: Ipv4Net) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&u32::from(net.prefix_len()).to_ne_bytes());
    k[4..].copy_from_slice(&net.network().octets());
    k
}

/// What the maps hold.
#[derive(Debug, Default)]
struct Installed {
    routes: BTreeMap<Ipv4Net, Ipv4Addr>,
    sources: BTreeSet<Ipv4Addr>,
}

/// The links of one attachment, and the device numbers they were made for.
struct Attached {
    tun: u32,
    underlay: u32,
    /// The receive engine's number, if super-packets go through it.
    engine: Option<u32>,
    _links: Vec<OwnedFd>,
}

struct Inner {
    routes: OwnedFd,
    sources: OwnedFd,
    flows: OwnedFd,
    stats: Arc<OwnedFd>,
    device: String,
    port: u16,
    local: Ipv4Addr,
    installed: Mutex<Installed>,
    attached: Mutex<Option<Attached>>,
    stop: AtomicBool,
    /// Wakes the watcher to stop.
    wake: EventFd,
    /// Why the path was given up for good (its maps could not be written:
    /// they may hold a peer that is gone, so the programs went).
    failed: std::sync::OnceLock<String>,
    /// The last attach error, said once (the watcher retries on every
    /// event, and every second).
    last_error: Mutex<Option<String>>,
    /// Why the receive engine is not in use, said once.
    engine_error: Mutex<Option<String>>,
    /// The kernel clears a super-packet's tunnel marks in tc: no engine.
    decap_l4_udp: bool,
}

/// The running kernel data path; detached when dropped.
pub(crate) struct KernelPath {
    inner: Arc<Inner>,
    watcher: Option<JoinHandle<()>>,
    stats: KernelStats,
}

impl std::fmt::Debug for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelPath")
            .field("device", &self.inner.device)
            .field("local", &self.inner.local)
            .finish_non_exhaustive()
    }
}

/// The node's interfaces and their addresses (one `getifaddrs`).
fn interfaces() -> Vec<InterfaceAddress> {
    nix::ifaddrs::getifaddrs().map_or_else(|_| Vec::new(), Iterator::collect)
}

/// The Ethernet device holding `ip`, by interface number.
fn underlay_of(addrs: &[InterfaceAddress], ip: Ipv4Addr) -> Option<u32> {
    let name = addrs.iter().find_map(|a| {
        let sin = a.address.as_ref()?.as_sockaddr_in()?;
        (sin.ip() == ip).then(|| a.interface_name.clone())
    })?;
    let ethernet = addrs.iter().any(|a| {
        a.interface_name == name
            && a.address
                .as_ref()
                .and_then(|s| s.as_link_addr())
                .is_some_and(|l| l.hatype() == nix::libc::ARPHRD_ETHER)
    });
    if !ethernet {
        return None;
    }
    nix::net::if_::if_nametoindex(name.as_str()).ok()
}

fn index_of(device: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(device).ok()
}

/// `device` exists and is up.
fn is_up(addrs: &[InterfaceAddress], device: &str) -> bool {
    addrs.iter().any(|a| {
        a.interface_name == device && a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
    })
}

impl Inner {
    /// The receive engine, made if missing; `None` (said once) if it cannot
    /// be: the forwarder then takes the super-packets.
    fn engine(&self) -> Option<engine::Engine> {
        if self.decap_l4_udp {
            return None;
        }
        let mut said = self
            .engine_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match engine::ensure(engine::port_for(self.port)) {
            Ok(e) => {
                *said = None;
                Some(e)
            }
            Err(error) => {
                let text = error.to_string();
                if said.as_deref() != Some(text.as_str()) {
                    tracing::warn!(%error, "no UDP receive engine: the forwarder unframes super-packets");
                    *said = Some(text);
                }
                None
            }
        }
    }

    /// Loads the programs for these device numbers and attaches them.
    fn attach(&self, tun: u32, underlay: u32) -> Result<Attached, KernelPathError> {
        let send = programs::send(SendParams {
            routes: self.routes.as_raw_fd(),
            stats: self.stats.as_raw_fd(),
            underlay,
            port: self.port,
        })?;
        let engine = self.engine();
        let receive = programs::receive(ReceiveParams {
            sources: self.sources.as_raw_fd(),
            flows: self.flows.as_raw_fd(),
            stats: self.stats.as_raw_fd(),
            tun,
            port: self.port,
            local: self.local,
            decap_l4_udp: self.decap_l4_udp,
            engine: engine.map(|e| EngineParams {
                port: e.port,
                vni: engine::VNI,
                mac: e.mac,
            }),
        })?;
        let send = bpf::prog_load(ProgType::SchedCls, "weft_udp_send", &send)?;
        let receive = bpf::prog_load(ProgType::SchedCls, "weft_udp_recv", &receive)?;
        let attach = |prog: &OwnedFd, index: u32, hook: TcxHook, device: String| {
            bpf::tcx_attach(prog, index, hook).map_err(|source| KernelPathError::Attach {
                device,
                hook: match hook {
                    TcxHook::Ingress => "ingress",
                    TcxHook::Egress => "egress",
                },
                source,
            })
        };
        let mut links = Vec::with_capacity(3);
        // The engine's program first: nothing is reframed for it before.
        if let Some(e) = engine {
            let guard = programs::engine_ingress(tun)?;
            let guard = bpf::prog_load(ProgType::SchedCls, "weft_udp_engine", &guard)?;
            links.push(attach(
                &guard,
                e.index,
                TcxHook::Ingress,
                engine::NAME.to_owned(),
            )?);
        }
        links.push(attach(&send, tun, TcxHook::Egress, self.device.clone())?);
        links.push(attach(
            &receive,
            underlay,
            TcxHook::Ingress,
            format!("interface {underlay}"),
        )?);
        Ok(Attached {
            tun,
            underlay,
            engine: engine.map(|e| e.index),
            _links: links,
        })
    }

    /// Attaches anew if a device was made again; detaches if one is gone.
    fn check(&self) {
        if self.failed.get().is_some() {
            return;
        }
        let addrs = interfaces();
        let now = (index_of(&self.device), underlay_of(&addrs, self.local));
        let mut attached = self.attached.lock().unwrap_or_else(PoisonError::into_inner);
        let current = attached.as_ref().map(|a| (Some(a.tun), Some(a.underlay)));
        // An engine in use that is gone, was made again or was set down is
        // made (or set up) anew.
        let engine_moved = attached
            .as_ref()
            .and_then(|a| a.engine)
            .is_some_and(|e| index_of(engine::NAME) != Some(e) || !is_up(&addrs, engine::NAME));
        if current == Some(now) && !engine_moved {
            return;
        }
        // Drop the old links first: a device made again has new numbers.
        *attached = None;
        if let (Some(tun), Some(underlay)) = now {
            match self.attach(tun, underlay) {
                Ok(a) => {
                    tracing::info!(device = %self.device, tun, underlay, "UDP kernel data path attached again");
                    *attached = Some(a);
                    *self
                        .last_error
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = None;
                }
                Err(error) => {
                    let text = error.to_string();
                    let mut last = self
                        .last_error
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    if last.as_deref() != Some(text.as_str()) {
                        tracing::warn!(%error, "cannot attach the UDP kernel data path again (retrying on every link event, and every second)");
                        *last = Some(text);
                    }
                }
            }
        }
    }
}

/// Whether `bpf_skb_adjust_room` knows `BPF_F_ADJ_ROOM_DECAP_L4_UDP`
/// (newer than 6.18): a probe program run once on a sample datagram.
fn kernel_decaps_in_tc() -> bool {
    let known = programs::decap_probe()
        .ok()
        .and_then(|insns| bpf::prog_load(ProgType::SchedCls, "weft_udp_probe", &insns).ok())
        .and_then(|prog| bpf::prog_test_run(&prog, &programs::probe_packet()).ok());
    tracing::debug!(?known, "BPF_F_ADJ_ROOM_DECAP_L4_UDP probed");
    known == Some(0)
}

impl KernelPath {
    /// Makes the maps, loads and attaches the programs, in the calling
    /// thread's network namespace.
    pub(crate) fn start(
        device: &str,
        local: IpAddr,
        port: u16,
    ) -> Result<KernelPath, KernelPathError> {
        let local = match local {
            IpAddr::V4(ip) if !ip.is_unspecified() => ip,
            _ => return Err(KernelPathError::NoAddress),
        };
        let underlay =
            underlay_of(&interfaces(), local).ok_or(KernelPathError::NoUnderlay(local))?;
        let tun = index_of(device).ok_or_else(|| KernelPathError::NoDevice(device.to_owned()))?;
        let map = |name: &'static str, kind, key, value, max, flags| {
            bpf::map_create(kind, name, key, value, max, flags)
                .map_err(|source| KernelPathError::Map { name, source })
        };
        let routes = map(
            "weft_udp_routes",
            MapType::LpmTrie,
            8,
            16,
            MAX_PEERS,
            NO_PREALLOC,
        )?;
        let sources = map(
            "weft_udp_peers",
            MapType::Hash,
            4,
            4,
            MAX_PEERS,
            NO_PREALLOC,
        )?;
        let flows = map("weft_udp_flows", MapType::LruHash, 12, 8, MAX_FLOWS, 0)?;
        let stats = Arc::new(map("weft_udp_stats", MapType::PercpuArray, 4, 16, 2, 0)?);
        let cpus = bpf::possible_cpus().map_err(|source| KernelPathError::Map {
            name: "weft_udp_stats",
            source,
        })?;
        let inner = Arc::new(Inner {
            routes,
            sources,
            flows,
            stats: stats.clone(),
            device: device.to_owned(),
            port,
            local,
            installed: Mutex::default(),
            attached: Mutex::new(None),
            stop: AtomicBool::new(false),
            wake: EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(|e| KernelPathError::Watcher(e.into()))?,
            failed: std::sync::OnceLock::new(),
            last_error: Mutex::new(None),
            engine_error: Mutex::new(None),
            decap_l4_udp: kernel_decaps_in_tc(),
        });
        let first = inner.attach(tun, underlay)?;
        *inner
            .attached
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(first);
        let watched = inner.clone();
        let events = engine::link_events()
            .map_err(|error| tracing::warn!(%error, "no link events: the kernel path looks at its devices every 100 ms"))
            .ok();
        let watcher = std::thread::Builder::new()
            .name("weft-udp-kpath".into())
            .spawn(move || watch(&watched, events.as_ref()))
            .ok();
        tracing::info!(device, %local, underlay, port, "UDP kernel data path attached");
        Ok(KernelPath {
            inner,
            watcher,
            stats: KernelStats { map: stats, cpus },
        })
    }

    /// The programs' counters.
    pub(crate) fn stats(&self) -> KernelStats {
        self.stats.clone()
    }

    /// Makes the maps hold `peers` (IPv4 subnets of IPv4 peers; others are
    /// left to the forwarder). Only what changed is written: updates
    /// first, removals after, so a peer whose subnet moves is never
    /// missing in between.
    ///
    /// If a write fails the maps may still send to a peer that is gone: the
    /// programs are then detached for good (see [`KernelPath::failed`]) and
    /// the forwarder, whose table is exact, carries everything.
    pub(crate) fn set_peers(&self, peers: &[(IpNet, IpAddr)]) -> Result<(), KernelPathError> {
        if self.failed().is_some() {
            return Ok(());
        }
        let r = self.write_peers(peers);
        if let Err(error) = &r {
            let _ = self
                .inner
                .failed
                .set(format!("its maps could not be written ({error}): detached"));
            *self
                .inner
                .attached
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
        r
    }

    /// How received TCP super-packets (what a veth underlay hands over
    /// whole) are unframed: `Ok` where they stay in the kernel (in tc, or
    /// by the receive engine), `Err` with the reason where the forwarder
    /// takes them.
    pub(crate) fn super_packets(&self) -> Result<String, String> {
        if self.inner.decap_l4_udp {
            return Ok("unframed in tc (BPF_F_ADJ_ROOM_DECAP_L4_UDP)".to_owned());
        }
        let attached = self
            .inner
            .attached
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match attached.as_ref().map(|a| a.engine) {
            Some(Some(_)) => Ok(format!(
                "unframed by {} (VXLAN, UDP port {})",
                engine::NAME,
                engine::port_for(self.inner.port)
            )),
            Some(None) => Err(format!(
                "no receive engine: {}",
                self.inner
                    .engine_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
                    .unwrap_or_else(|| "not made".to_owned())
            )),
            None => Err("the kernel path is not attached".to_owned()),
        }
    }

    /// Why the path was given up while running, if it was.
    pub(crate) fn failed(&self) -> Option<&str> {
        self.inner.failed.get().map(String::as_str)
    }

    fn write_peers(&self, peers: &[(IpNet, IpAddr)]) -> Result<(), KernelPathError> {
        let want: BTreeMap<Ipv4Net, Ipv4Addr> = peers
            .iter()
            .filter_map(|(net, ip)| match (net, ip) {
                (IpNet::V4(n), IpAddr::V4(ip)) => Some((n.trunc(), *ip)),
                _ => None,
            })
            .collect();
        let want_sources: BTreeSet<Ipv4Addr> = want.values().copied().collect();
        let inner = &self.inner;
        let mut have = inner
            .installed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let update =
            |name: &'static str, source: io::Error| KernelPathError::Update { name, source };
        for ip in want_sources.difference(&have.sources) {
            bpf::map_update(&inner.sources, &ip.octets(), &[1, 0, 0, 0])
                .map_err(|e| update("weft_udp_peers", e))?;
        }
        for (net, ip) in &want {
            if have.routes.get(net) != Some(ip) {
                bpf::map_update(
                    &inner.routes,
                    &lpm_key(*net),
                    &route_value(*ip, inner.local),
                )
                .map_err(|e| update("weft_udp_routes", e))?;
            }
        }
        // An element already gone is what a removal wants.
        let remove = |map: &OwnedFd, key: &[u8]| match bpf::map_delete(map, key) {
            Err(e) if e.raw_os_error() != Some(nix::libc::ENOENT) => Err(e),
            _ => Ok(()),
        };
        for net in have.routes.keys().filter(|n| !want.contains_key(n)) {
            remove(&inner.routes, &lpm_key(*net)).map_err(|e| update("weft_udp_routes", e))?;
        }
        for ip in have.sources.difference(&want_sources) {
            remove(&inner.sources, &ip.octets()).map_err(|e| update("weft_udp_peers", e))?;
        }
        have.routes = want;
        have.sources = want_sources;
        Ok(())
    }
}

/// The watcher: attaches anew when a device, the engine or the public
/// address changed (a link or address event; every [`WATCH`] anyway, and
/// every 100 ms without events), until stopped.
fn watch(inner: &Inner, events: Option<&netlink_sys::Socket>) {
    let every = if events.is_some() {
        WATCH
    } else {
        Duration::from_millis(100)
    };
    let ms = u16::try_from(every.as_millis()).unwrap_or(u16::MAX);
    while !inner.stop.load(Ordering::Relaxed) {
        match events {
            Some(events) => {
                let mut fds = [
                    PollFd::new(events.as_fd(), PollFlags::POLLIN),
                    PollFd::new(inner.wake.as_fd(), PollFlags::POLLIN),
                ];
                let _ = poll(&mut fds, PollTimeout::from(ms));
                engine::drain(events);
            }
            None => std::thread::park_timeout(every),
        }
        if !inner.stop.load(Ordering::Relaxed) {
            inner.check();
        }
    }
}

impl Drop for KernelPath {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.watcher.take() {
            let _ = self.inner.wake.write(1);
            w.thread().unpark();
            let _ = w.join();
        }
        // Closing the links detaches the programs.
        *self
            .inner
            .attached
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        tracing::info!(device = %self.inner.device, "UDP kernel data path detached");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum(words: &[u16]) -> u16 {
        let mut s: u32 = words.iter().map(|&w| u32::from(w)).sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn header_sum_gives_the_header_checksum() {
        let peer = Ipv4Addr::new(172, 18, 0, 3);
        let local = Ipv4Addr::new(172, 18, 0, 2);
        let len: u32 = 1500;
        // What the send program computes: the sum plus the length, folded
        // twice, complemented.
        let mut s = header_sum(peer, local) + len;
        for _ in 0..2 {
            s = (s & 0xffff) + (s >> 16);
        }
        let program = (s ^ 0xffff) as u16;
        // The textbook checksum of the whole header.
        let expect = checksum(&[
            0x4500, len as u16, 0, 0x4000, 0x4011, 0xac12, 0x0003, 0xac12, 0x0002,
        ]);
        assert_eq!(program, expect);
        // And with addresses whose sum carries.
        let peer = Ipv4Addr::new(255, 255, 255, 254);
        let mut s = header_sum(peer, peer) + 65535;
        for _ in 0..2 {
            s = (s & 0xffff) + (s >> 16);
        }
        let expect = checksum(&[
            0x4500, 65535, 0, 0x4000, 0x4011, 0xffff, 0xfffe, 0xffff, 0xfffe,
        ]);
        assert_eq!((s ^ 0xffff) as u16, expect);
    }

    #[test]
    fn map_keys_and_values() {
        let k = lpm_key("10.244.3.0/24".parse().unwrap());
        assert_eq!(&k[..4], &24u32.to_ne_bytes());
        assert_eq!(&k[4..], &[10, 244, 3, 0]);
        let v = route_value(Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(5, 6, 7, 8));
        assert_eq!(&v[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
