//! Counters: one cache-line-aligned block per worker thread (each written by
//! its thread only, so no contended atomics on the packet path), summed
//! into a [`Stats`] on demand.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the forwarder has done since it started.
///
/// "tx" is TUN → UDP (packets leaving this node), "rx" is UDP → TUN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// IP packets sent as datagrams to peers.
    pub tx_packets: u64,
    /// Bytes of those packets (= UDP payload bytes).
    pub tx_bytes: u64,
    /// `sendmsg` calls that carried them (fewer than packets with UDP GSO).
    pub tx_sends: u64,
    /// IP packets written to the TUN device.
    pub rx_packets: u64,
    /// Bytes of those packets.
    pub rx_bytes: u64,
    /// TUN writes that carried them (fewer than packets when segments of a
    /// flow are coalesced into one super-packet).
    pub rx_writes: u64,
    /// Dropped: read from the TUN, destination in no peer's subnet.
    pub drop_unknown_subnet: u64,
    /// Dropped: shorter than the IP header it announces (or 20 bytes).
    pub drop_too_short: u64,
    /// Dropped: not an IPv4/IPv6 packet.
    pub drop_not_ip: u64,
    /// Dropped: a datagram from an address that is no peer's public IP.
    pub drop_unknown_sender: u64,
    /// Dropped: the UDP send failed.
    pub drop_send_error: u64,
    /// Dropped: TTL (hop limit) would reach zero (flannel decrements it on
    /// both sides).
    pub drop_ttl_expired: u64,
    /// Dropped: the write to the TUN device failed (or it was gone).
    pub drop_tun_write_error: u64,
    /// Dropped: the TUN device handed over a packet it could not be split
    /// (bad offload header).
    pub drop_bad_offload: u64,
    /// Times a queue lost its TUN device (deleted, or unreadable).
    pub device_lost: u64,
    /// Times a queue re-attached to the device afterwards.
    pub device_reattached: u64,
    /// IP packets the kernel data path sent to peers (not in `tx_packets`;
    /// a TSO super-packet counts as its segments).
    pub kernel_tx_packets: u64,
    /// Bytes of those packets.
    pub kernel_tx_bytes: u64,
    /// IP packets the kernel data path received from peers and handed to
    /// the device (not in `rx_packets`).
    pub kernel_rx_packets: u64,
    /// Bytes of those packets.
    pub kernel_rx_bytes: u64,
}

impl Stats {
    /// Each drop counter with a short name of its reason (a metric label).
    pub fn drops_by_reason(&self) -> [(&'static str, u64); 8] {
        [
            ("unknown_subnet", self.drop_unknown_subnet),
            ("too_short", self.drop_too_short),
            ("not_ip", self.drop_not_ip),
            ("unknown_sender", self.drop_unknown_sender),
            ("send_error", self.drop_send_error),
            ("ttl_expired", self.drop_ttl_expired),
            ("tun_write_error", self.drop_tun_write_error),
            ("bad_offload", self.drop_bad_offload),
        ]
    }

    /// Every drop counter summed.
    pub fn drops(&self) -> u64 {
        self.drop_unknown_subnet
            + self.drop_too_short
            + self.drop_not_ip
            + self.drop_unknown_sender
            + self.drop_send_error
            + self.drop_ttl_expired
            + self.drop_tun_write_error
            + self.drop_bad_offload
    }
}

/// Index of each counter in [`Counters`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum C {
    TxPackets,
    TxBytes,
    TxSends,
    RxPackets,
    RxBytes,
    RxWrites,
    UnknownSubnet,
    TooShort,
    NotIp,
    UnknownSender,
    SendError,
    TtlExpired,
    TunWriteError,
    BadOffload,
    DeviceLost,
    DeviceReattached,
}

const N: usize = C::DeviceReattached as usize + 1;

/// One worker's counters. Single writer: `add` is a plain load + store.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Counters([AtomicU64; N]);

impl Counters {
    pub(crate) fn add(&self, c: C, n: u64) {
        let a = &self.0[c as usize];
        a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    fn get(&self, c: C) -> u64 {
        self.0[c as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn add_reject(&self, r: crate::packet::Reject) {
        match r {
            crate::packet::Reject::TooShort => self.add(C::TooShort, 1),
            crate::packet::Reject::NotIp => self.add(C::NotIp, 1),
        }
    }
}

/// Sums every worker's counters.
pub(crate) fn sum<'a>(all: impl IntoIterator<Item = &'a Counters>) -> Stats {
    let mut s = Stats::default();
    for c in all {
        s.tx_packets += c.get(C::TxPackets);
        s.tx_bytes += c.get(C::TxBytes);
        s.tx_sends += c.get(C::TxSends);
        s.rx_packets += c.get(C::RxPackets);
        s.rx_bytes += c.get(C::RxBytes);
        s.rx_writes += c.get(C::RxWrites);
        s.drop_unknown_subnet += c.get(C::UnknownSubnet);
        s.drop_too_short += c.get(C::TooShort);
        s.drop_not_ip += c.get(C::NotIp);
        s.drop_unknown_sender += c.get(C::UnknownSender);
        s.drop_send_error += c.get(C::SendError);
        s.drop_ttl_expired += c.get(C::TtlExpired);
        s.drop_tun_write_error += c.get(C::TunWriteError);
        s.drop_bad_offload += c.get(C::BadOffload);
        s.device_lost += c.get(C::DeviceLost);
        s.device_reattached += c.get(C::DeviceReattached);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_workers() {
        let a = Counters::default();
        let b = Counters::default();
        a.add(C::TxPackets, 3);
        b.add(C::TxPackets, 4);
        a.add_reject(crate::packet::Reject::TooShort);
        b.add_reject(crate::packet::Reject::NotIp);
        b.add(C::UnknownSender, 2);
        let s = sum([&a, &b]);
        assert_eq!(s.tx_packets, 7);
        assert_eq!(s.drop_too_short, 1);
        assert_eq!(s.drop_not_ip, 1);
        assert_eq!(s.drop_unknown_sender, 2);
        assert_eq!(s.drops(), 4);
    }
}
