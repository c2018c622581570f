//! udp: flannel's UDP backend. A TUN device `flannel0` (the own subnet's
//! network address with the cluster network's prefix, MTU = underlay − 28)
//! takes the whole cluster network; a userspace forwarder (`weft-udp`)
//! sends each IP packet, unchanged, as one UDP datagram to the peer node's
//! address on `Backend.Port` (8285), flannel's wire format, and writes what
//! it receives from known peers back into the device. Where weftd may load
//! eBPF (`CAP_BPF`, Linux 6.6), `weft-udp`'s kernel path carries known
//! peers' packets in the same framing without leaving the kernel, and the
//! forwarder the rest. The kernel holds no per-peer route or neighbour:
//! each peer is a line of the forwarder's table (and of the kernel path's
//! maps). IPv4 only, as flannel's. `backend-data` is `null`.

use std::any::Any;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use super::{
    report_unknown, same_as, Backend, BackendConfig, DataPlane, DataPlaneCounters, DataPlaneStats,
    PeerEntries, Registration, Section, SectionError,
};
use crate::error::{KernelError, LeaseFault};
use crate::family::Family;
use crate::mac::MacAddr;
use crate::model::{Lease, LocalNode, UnderlayFacts};
use crate::state::{Dev, DeviceSpec, Forward, Route, TunDevice, ROUTE_PROTOCOL};

/// flannel's UDP port.
pub const DEFAULT_UDP_PORT: u16 = 8285;
/// What the encapsulation costs over IPv4: the outer IP (20) and UDP (8) headers.
pub const UDP_OVERHEAD: u32 = 28;
/// flannel's TUN device.
pub const TUN_DEVICE: &str = "flannel0";
/// [`DataPlane::describe`] with the kernel path attached.
pub const KERNEL_PATH: &str =
    "kernel path: tc eBPF programs on flannel0's egress and the underlay's ingress carry known peers' IPv4 packets; the forwarder the rest";
/// [`DataPlane::describe`] without it.
pub const FORWARDER_ONLY: &str = "forwarder: every packet through weft's userspace forwarder";

/// The udp backend: `Backend.Port`, and weft's `Backend.KernelPath`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpConfig {
    /// `Port` (default 8285).
    pub port: u16,
    /// `KernelPath` (weft's; default true): carry known peers' packets in
    /// the kernel where weftd may (see [`KERNEL_PATH`]); false keeps every
    /// packet in the forwarder, as flannel's proxy. flannel ignores the
    /// field, so a net-conf.json with it still serves flannel's nodes.
    pub kernel_path: bool,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            port: DEFAULT_UDP_PORT,
            kernel_path: true,
        }
    }
}

/// `"Type": "udp"`.
pub(super) const REGISTRATION: Registration = Registration { kind: "udp", parse };

fn parse(b: &Section<'_>, ignored: &mut Vec<String>) -> Result<BackendConfig, SectionError> {
    let mut c = UdpConfig::default();
    if let Some(port) = b.port("Port", DEFAULT_UDP_PORT)? {
        c.port = port;
    }
    c.kernel_path = b.boolean("KernelPath", true)?;
    report_unknown(b, "udp", &["Type", "Port", "KernelPath"], ignored);
    Ok(BackendConfig::from(c))
}

impl From<UdpConfig> for BackendConfig {
    fn from(b: UdpConfig) -> BackendConfig {
        BackendConfig::new(b)
    }
}

impl Backend for UdpConfig {
    fn kind(&self) -> &'static str {
        "udp"
    }

    fn supports(&self, family: Family) -> bool {
        family == Family::V4
    }

    fn device_name(&self, _: IpNet) -> Option<String> {
        Some(TUN_DEVICE.to_string())
    }

    fn device(
        &self,
        local: &LocalNode,
        underlay: &UnderlayFacts,
        network: IpNet,
    ) -> Option<DeviceSpec> {
        Some(DeviceSpec::Tun(TunDevice {
            name: TUN_DEVICE.to_string(),
            mtu: self.mtu(underlay.mtu, Family::of_net(&network)),
            address: IpNet::new(local.subnet.network(), network.prefix_len()).unwrap_or(network),
            network,
            offload: true,
        }))
    }

    fn mtu(&self, underlay_mtu: u32, family: Family) -> u32 {
        let overhead = match family {
            Family::V4 => UDP_OVERHEAD,
            Family::V6 => UDP_OVERHEAD + 20,
        };
        underlay_mtu.saturating_sub(overhead)
    }

    fn backend_data(&self, _: Option<MacAddr>) -> Option<String> {
        Some("null".into())
    }

    fn restore_mac(&self, _: &str) -> Option<MacAddr> {
        None
    }

    fn device_routes(&self, _: &LocalNode, network: IpNet) -> Vec<Route> {
        let none = match network {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        vec![Route {
            dst: network,
            via: none,
            dev: Dev::Overlay,
            onlink: false,
            protocol: ROUTE_PROTOCOL,
        }]
    }

    fn data_plane(
        &self,
        local: &LocalNode,
        _network: IpNet,
        taking_over: bool,
    ) -> Result<Option<Box<dyn DataPlane>>, KernelError> {
        let config = weft_udp::ForwarderConfig {
            device: TUN_DEVICE.to_string(),
            bind: SocketAddr::new(local.public_ip, self.port),
            queues: 0,
            offload: true,
            share_port: taking_over,
            kernel_path: self.kernel_path,
        };
        let tun_error = |e: weft_udp::UdpError| KernelError::Tun {
            device: TUN_DEVICE.to_string(),
            reason: e.to_string(),
        };
        // The forwarder attaches to the device: make it first (persistent;
        // the reconciler sets its MTU, address, state and route, and makes
        // it again if someone deletes it, the forwarder then re-attaches).
        weft_udp::ensure_tun(TUN_DEVICE, config.offload).map_err(tun_error)?;
        let forwarder = weft_udp::Forwarder::start(config).map_err(tun_error)?;
        Ok(Some(Box::new(Forwarder(Some(forwarder)))))
    }

    fn peer(
        &self,
        lease: &Lease,
        _: &UnderlayFacts,
    ) -> Result<PeerEntries, (&'static str, LeaseFault)> {
        Ok(PeerEntries {
            route: None,
            neighbour: None,
            fdb: None,
            forward: Some(Forward {
                subnet: lease.subnet,
                to: lease.public_ip,
            }),
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn same(&self, other: &dyn Backend) -> bool {
        same_as(self, other)
    }
}

/// The forwarder as the reconciler's data plane; stopped when dropped.
struct Forwarder(Option<weft_udp::ForwarderHandle>);

impl DataPlane for Forwarder {
    fn set_peers(&self, peers: &[Forward]) {
        if let Some(f) = &self.0 {
            let table: Vec<(IpNet, IpAddr)> = peers.iter().map(|p| (p.subnet, p.to)).collect();
            f.set_peers(&table);
        }
    }

    fn predecessor_gone(&self) {
        if let Some(f) = &self.0 {
            f.took_over();
        }
    }

    fn describe(&self) -> Option<String> {
        let f = self.0.as_ref()?;
        Some(match f.kernel_path() {
            Ok(()) => match f.super_packets() {
                Ok(how) => format!("{KERNEL_PATH}; super-packets {how}"),
                Err(why) => format!("{KERNEL_PATH}; super-packets through the forwarder ({why})"),
            },
            Err(why) => format!("{FORWARDER_ONLY} (kernel path not in use: {why})"),
        })
    }

    fn counters(&self) -> Option<DataPlaneCounters> {
        let reader = self.0.as_ref()?.stats_reader();
        Some(std::sync::Arc::new(move || {
            let s = reader.read();
            DataPlaneStats {
                tx_packets: s.tx_packets,
                tx_bytes: s.tx_bytes,
                rx_packets: s.rx_packets,
                rx_bytes: s.rx_bytes,
                drops: s.drops_by_reason().to_vec(),
                kernel_packets: (s.kernel_tx_packets, s.kernel_rx_packets),
                kernel_bytes: (s.kernel_tx_bytes, s.kernel_rx_bytes),
            }
        }))
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f.stop();
        }
    }
}
