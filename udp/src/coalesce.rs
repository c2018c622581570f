//! Coalescing received TCP segments into one GSO super-packet for the TUN
//! without copying them: consecutive segments of one flow (as a UDP GRO
//! train delivers them) become one header — a virtio-net header, the first
//! segment's IP and TCP headers with the lengths of the whole — followed by
//! every segment's payload where it lies in the receive buffer, written
//! with one `writev`. The kernel builds the skb from those pieces (its one
//! copy) and segments it again only if it must.
//!
//! The rules are the kernel's TCP GRO rules (`tcp_gro_receive`): same
//! addresses, ports, IP header fields that must not change, TCP header
//! length and options; the same ACK number; only ACK (and PSH, which ends
//! the train) set; each sequence number where the previous payload ended;
//! equal payload sizes but for a shorter last one. Anything else — other
//! protocols, IP options or fragments, IPv6 extension headers, pure ACKs —
//! is written alone, behind a zero virtio-net header, as it came.
//!
//! Pure functions over byte slices; they never panic, whatever the input.

use crate::packet::{IPV4_HEADER_LEN, IPV6_HEADER_LEN};

/// Bytes of a virtio-net header (`struct virtio_net_hdr`), as the TUN
/// device with `IFF_VNET_HDR` reads it.
pub const VNET_HDR_LEN: usize = tun_rs::VIRTIO_NET_HDR_LEN;
/// The longest header [`header`] writes: virtio-net + IPv6 + TCP with
/// every option.
pub const MAX_HEADER: usize = VNET_HDR_LEN + IPV6_HEADER_LEN + 60;
/// Most segments in one super-packet.
pub const MAX_SEGMENTS: usize = 64;

const PROTO_TCP: u8 = 6;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
/// virtio-net header: `flags` bit for a partial checksum, and the
/// `gso_type` values (the TUN's side of the offloads, both directions).
pub(crate) const NEEDS_CSUM: u8 = 1;
pub(crate) const GSO_NONE: u8 = 0;
pub(crate) const GSO_TCPV4: u8 = 1;
pub(crate) const GSO_TCPV6: u8 = 4;
pub(crate) const GSO_UDP_L4: u8 = 5;
pub(crate) const GSO_ECN: u8 = 0x80;
/// The TCP checksum's offset in the TCP header.
const TCP_CSUM: usize = 16;
const PROTO_UDP: u8 = 17;
/// The UDP checksum's offset in the UDP header.
const UDP_CSUM: usize = 6;

/// The virtio-net header for a packet written alone: zero, unless its TCP
/// or UDP checksum field holds only the pseudo-header sum, as a sender's
/// kernel leaves it for the device to complete (`CHECKSUM_PARTIAL`). Such
/// a packet reaches the forwarder when the sender framed it in the kernel
/// (weft's kernel data path, or a kernel tunnel) and nothing on the way
/// completed the checksum — a veth underlay, or virtual NICs that pass
/// checksum offload through. Written as it came, the kernel would find
/// the checksum wrong and drop it; marked `NEEDS_CSUM`, it is what it was
/// on the sender: a packet whose checksum the device completes. A full
/// checksum equals the pseudo-header sum once in 65536 packets; such a
/// packet is then taken as partial (and completed wrongly, should a
/// device have to complete it: one retransmission).
///
/// Such a sender may also have framed a whole TCP super-packet (TSO) as
/// one datagram, which a veth underlay passes on whole. A TCP packet with a
/// partial checksum longer than `mtu` (the TUN's) is therefore written as
/// the super-packet it is: segmentation offload with segments that fit
/// `mtu`, which the kernel cuts only where it must.
pub fn single_header(pkt: &[u8], mtu: usize, out: &mut [u8]) {
    let Some(hdr) = out.get_mut(..VNET_HDR_LEN) else {
        return;
    };
    hdr.fill(0);
    let Some((l4, csum)) = partial_checksum(pkt) else {
        return;
    };
    let v = |x: usize| (x as u16).to_ne_bytes();
    hdr[0] = NEEDS_CSUM;
    hdr[1] = GSO_NONE;
    hdr[6..8].copy_from_slice(&v(l4));
    hdr[8..10].copy_from_slice(&v(csum));
    if csum == TCP_CSUM && pkt.len() > mtu {
        let tcp_len = pkt.get(l4 + 12).map_or(0, |b| usize::from(b >> 4) * 4);
        let headers = l4 + tcp_len;
        if tcp_len >= 20 && pkt.len() > headers && mtu > headers {
            hdr[1] = if l4 == IPV6_HEADER_LEN {
                GSO_TCPV6
            } else {
                GSO_TCPV4
            };
            hdr[2..4].copy_from_slice(&v(headers));
            hdr[4..6].copy_from_slice(&v(mtu - headers));
        }
    }
}

/// An IP packet without options or extension headers, not a fragment,
/// whose header's length field matches the bytes: what both coalescing
/// and checksum completion work on.
struct PlainIp {
    v6: bool,
    /// Where the L4 header starts.
    l4: usize,
    /// The L4 protocol (IPv4 protocol, IPv6 next header).
    proto: u8,
}

impl PlainIp {
    fn parse(pkt: &[u8]) -> Option<PlainIp> {
        let (v6, l4, proto, total) = match pkt.first()? >> 4 {
            4 => {
                if pkt.first()? & 0x0f != 5 || pkt.len() < IPV4_HEADER_LEN {
                    return None;
                }
                // MF set or a fragment offset: a fragment.
                if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
                    return None;
                }
                let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
                (false, IPV4_HEADER_LEN, pkt[9], total)
            }
            6 => {
                if pkt.len() < IPV6_HEADER_LEN {
                    return None;
                }
                let payload = usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
                (true, IPV6_HEADER_LEN, pkt[6], IPV6_HEADER_LEN + payload)
            }
            _ => return None,
        };
        (total == pkt.len()).then_some(PlainIp { v6, l4, proto })
    }

    /// The source and destination addresses, as the pseudo-header sums them.
    fn addresses<'a>(&self, pkt: &'a [u8]) -> &'a [u8] {
        if self.v6 {
            &pkt[8..40]
        } else {
            &pkt[12..20]
        }
    }
}

/// Where the L4 header starts and its checksum's offset in it, if `pkt` is
/// an unfragmented TCP or UDP packet whose checksum field holds just the
/// pseudo-header sum.
fn partial_checksum(pkt: &[u8]) -> Option<(usize, usize)> {
    let ip = PlainIp::parse(pkt)?;
    let csum = match ip.proto {
        PROTO_TCP => TCP_CSUM,
        PROTO_UDP => UDP_CSUM,
        _ => return None,
    };
    let l4 = ip.l4;
    if pkt.len() < l4 + csum + 2 {
        return None;
    }
    let l4_len = (pkt.len() - l4) as u64;
    let pseudo = tun_rs::checksum(ip.addresses(pkt), u64::from(ip.proto) + l4_len);
    let field = u16::from_be_bytes([pkt[l4 + csum], pkt[l4 + csum + 1]]);
    // UDP's zero means "no checksum": nothing to complete.
    (field == pseudo && !(ip.proto == PROTO_UDP && field == 0)).then_some((l4, csum))
}

/// A TCP segment that may join a super-packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// IP header length.
    pub ip_len: usize,
    /// TCP header length.
    pub tcp_len: usize,
    /// Payload length.
    pub payload: usize,
    /// Sequence number.
    pub seq: u32,
    /// TCP flags.
    pub flags: u8,
}

impl Segment {
    /// Where the payload starts.
    pub fn header_len(&self) -> usize {
        self.ip_len + self.tcp_len
    }
}

/// `pkt` as a segment that may be coalesced; `None` for anything to be
/// written alone.
pub fn segment(pkt: &[u8]) -> Option<Segment> {
    let ip = PlainIp::parse(pkt)?;
    if ip.proto != PROTO_TCP {
        return None;
    }
    let (v6, ip_len) = (ip.v6, ip.l4);
    let tcp = pkt.get(ip_len..)?;
    let tcp_len = usize::from(*tcp.get(12)? >> 4) * 4;
    if tcp_len < 20 || tcp.len() < tcp_len {
        return None;
    }
    let flags = tcp[13];
    if flags & !(TCP_ACK | TCP_PSH) != 0 || flags & TCP_ACK == 0 {
        return None;
    }
    let payload = tcp.len() - tcp_len;
    if payload == 0 {
        return None;
    }
    Some(Segment {
        v6,
        ip_len,
        tcp_len,
        payload,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        flags,
    })
}

/// A super-packet being collected: its first segment and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Train {
    /// The first segment.
    pub first: Segment,
    /// Segments so far.
    pub count: usize,
    /// Payload bytes so far.
    pub bytes: usize,
    /// The sequence number the next segment must have.
    pub next_seq: u32,
    /// The last segment was shorter than the first, or had PSH: nothing
    /// may follow.
    pub closed: bool,
    /// PSH on the last segment.
    pub psh: bool,
}

impl Train {
    /// A train of one.
    pub fn start(s: Segment) -> Train {
        Train {
            first: s,
            count: 1,
            bytes: s.payload,
            next_seq: s.seq.wrapping_add(s.payload as u32),
            closed: s.flags & TCP_PSH != 0,
            psh: s.flags & TCP_PSH != 0,
        }
    }

    /// Whether `s` (the packet `pkt`) may join the train headed by `head`.
    pub fn accepts(&self, head: &[u8], s: &Segment, pkt: &[u8]) -> bool {
        let f = &self.first;
        if self.closed
            || self.count >= MAX_SEGMENTS
            || s.v6 != f.v6
            || s.ip_len != f.ip_len
            || s.tcp_len != f.tcp_len
            || s.seq != self.next_seq
            || s.payload > f.payload
            || f.header_len() + self.bytes + s.payload > usize::from(u16::MAX)
        {
            return false;
        }
        let same = |a: std::ops::Range<usize>| head.get(a.clone()) == pkt.get(a);
        let ip_same = if f.v6 {
            // Version, traffic class, flow label; hop limit; addresses.
            same(0..4) && same(7..40)
        } else {
            // TOS; flags (DF); TTL and protocol; addresses.
            same(1..2) && same(6..7) && same(8..10) && same(12..20)
        };
        let t = f.ip_len;
        ip_same
            // Ports; ACK number; options.
            && same(t..t + 4)
            && same(t + 8..t + 12)
            && same(t + 20..t + f.tcp_len)
    }

    /// Adds `s` (after [`accepts`](Self::accepts) said yes).
    pub fn push(&mut self, s: &Segment) {
        self.count += 1;
        self.bytes += s.payload;
        self.next_seq = s.seq.wrapping_add(s.payload as u32);
        self.psh = s.flags & TCP_PSH != 0;
        self.closed = self.psh || s.payload < self.first.payload;
    }
}

/// Writes into `out` the header of `train`, headed by `head`: for one
/// segment the packet's own headers behind [`single_header`]'s; for
/// more, a virtio-net header asking the kernel for TCP segmentation
/// offload (`NEEDS_CSUM`, gso_size = the first payload), the IP header with
/// the whole length (and, IPv4, its checksum again), the TCP header with
/// PSH if the last segment had it and the pseudo-header sum the kernel
/// completes. Returns the header's length; the payloads follow it.
pub fn header(head: &[u8], train: &Train, out: &mut [u8; MAX_HEADER]) -> usize {
    let f = &train.first;
    let hl = f.header_len();
    let len = VNET_HDR_LEN + hl;
    out[VNET_HDR_LEN..len].copy_from_slice(&head[..hl]);
    if train.count == 1 {
        // (A train's packets are no longer than the TUN's MTU.)
        single_header(head, usize::MAX, &mut out[..VNET_HDR_LEN]);
        return len;
    }
    out[..VNET_HDR_LEN].fill(0);
    let ip = VNET_HDR_LEN;
    let tcp = ip + f.ip_len;
    let tcp_total = f.tcp_len + train.bytes;
    // virtio_net_hdr (little endian, as the TUN reads it on every
    // architecture weft builds for with TUNSETVNETLE unset: host order).
    let v = |x: usize| (x as u16).to_ne_bytes();
    out[0] = NEEDS_CSUM;
    out[1] = if f.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
    out[2..4].copy_from_slice(&v(hl));
    out[4..6].copy_from_slice(&v(f.payload));
    out[6..8].copy_from_slice(&v(f.ip_len));
    out[8..10].copy_from_slice(&v(TCP_CSUM));
    // The pseudo-header: protocol and TCP length, then the addresses.
    let proto_len = u64::from(PROTO_TCP) + tcp_total as u64;
    let pseudo = if f.v6 {
        out[ip + 4..ip + 6].copy_from_slice(&(tcp_total as u16).to_be_bytes());
        tun_rs::checksum(&out[ip + 8..ip + 40], proto_len)
    } else {
        out[ip + 2..ip + 4].copy_from_slice(&((f.ip_len + tcp_total) as u16).to_be_bytes());
        out[ip + 10..ip + 12].fill(0);
        let c = !tun_rs::checksum(&out[ip..ip + IPV4_HEADER_LEN], 0);
        out[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        tun_rs::checksum(&out[ip + 12..ip + 20], proto_len)
    };
    if train.psh {
        out[tcp + 13] |= TCP_PSH;
    }
    out[tcp + TCP_CSUM..tcp + TCP_CSUM + 2].copy_from_slice(&pseudo.to_be_bytes());
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP segment with a valid checksum.
    pub(crate) fn tcp_packet(v6: bool, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let opts = [1u8, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]; // NOP NOP TS
        let tcp_len = 20 + opts.len();
        let ip_len = if v6 { 40 } else { 20 };
        let total = ip_len + tcp_len + payload.len();
        let mut p = vec![0u8; total];
        if v6 {
            p[0] = 0x60;
            p[4..6].copy_from_slice(&((tcp_len + payload.len()) as u16).to_be_bytes());
            p[6] = PROTO_TCP;
            p[7] = 63;
            p[8..24].copy_from_slice(&[0xfc, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2]);
            p[24..40].copy_from_slice(&[0xfc, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2]);
        } else {
            p[0] = 0x45;
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[6] = 0x40; // DF
            p[8] = 63;
            p[9] = PROTO_TCP;
            p[12..16].copy_from_slice(&[10, 244, 1, 2]);
            p[16..20].copy_from_slice(&[10, 244, 2, 2]);
            let c = !tun_rs::checksum(&p[..20], 0);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let t = ip_len;
        p[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
        p[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
        p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        p[t + 8..t + 12].copy_from_slice(&777u32.to_be_bytes());
        p[t + 12] = ((tcp_len / 4) as u8) << 4;
        p[t + 13] = flags;
        p[t + 14..t + 16].copy_from_slice(&500u16.to_be_bytes());
        p[t + 20..t + tcp_len].copy_from_slice(&opts);
        p[t + tcp_len..].copy_from_slice(payload);
        let seg_len = (tcp_len + payload.len()) as u64;
        let pseudo = if v6 {
            u64::from(tun_rs::checksum(&p[8..40], 0)) + u64::from(PROTO_TCP) + seg_len
        } else {
            u64::from(tun_rs::checksum(&p[12..20], 0)) + u64::from(PROTO_TCP) + seg_len
        };
        let c = !tun_rs::checksum(&p[t..], pseudo);
        p[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn payload(i: usize, n: usize) -> Vec<u8> {
        (0..n).map(|k| (i * 31 + k * 7) as u8).collect()
    }

    /// Collects `pkts` into trains as the RX path does; each train's bytes
    /// as written (header + payloads).
    fn coalesce(pkts: &[Vec<u8>]) -> Vec<(Train, Vec<u8>)> {
        let mut out: Vec<(Train, usize, Vec<usize>)> = Vec::new();
        for (i, p) in pkts.iter().enumerate() {
            let s = segment(p);
            if let (Some(s), Some((t, head, members))) = (s, out.last_mut()) {
                if t.accepts(&pkts[*head], &s, p) {
                    t.push(&s);
                    members.push(i);
                    continue;
                }
            }
            let t = s.map_or(
                Train {
                    first: Segment {
                        v6: false,
                        ip_len: 0,
                        tcp_len: p.len(),
                        payload: 0,
                        seq: 0,
                        flags: 0,
                    },
                    count: 1,
                    bytes: 0,
                    next_seq: 0,
                    closed: true,
                    psh: false,
                },
                Train::start,
            );
            out.push((t, i, vec![i]));
        }
        out.into_iter()
            .map(|(t, head, members)| {
                let mut h = [0u8; MAX_HEADER];
                let n = header(&pkts[head], &t, &mut h);
                let mut bytes = h[..n].to_vec();
                for m in members {
                    bytes.extend_from_slice(&pkts[m][t.first.header_len()..]);
                }
                (t, bytes)
            })
            .collect()
    }

    /// Segments a written super-packet as the kernel would (tun-rs' split,
    /// which fills in every checksum), or returns a single packet as is.
    fn resegment(written: &[u8], v6: bool) -> Vec<Vec<u8>> {
        let hdr = tun_rs::VirtioNetHdr::decode(&written[..VNET_HDR_LEN]).unwrap();
        let mut pkt = written[VNET_HDR_LEN..].to_vec();
        if hdr.gso_type == 0 {
            return vec![pkt];
        }
        let mut bufs = vec![vec![0u8; 2000]; 64];
        let mut sizes = vec![0usize; 64];
        let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        let n = tun_rs::gso_split(&mut pkt, hdr, &mut slices, &mut sizes, 0, v6).unwrap();
        (0..n).map(|i| slices[i][..sizes[i]].to_vec()).collect()
    }

    fn round_trip(v6: bool) {
        let mss = 1000;
        let mut pkts: Vec<Vec<u8>> = (0..5)
            .map(|i| tcp_packet(v6, 1000 + (i * mss) as u32, TCP_ACK, &payload(i, mss)))
            .collect();
        // A shorter last one with PSH.
        pkts.push(tcp_packet(
            v6,
            1000 + (5 * mss) as u32,
            TCP_ACK | TCP_PSH,
            &payload(5, 300),
        ));
        let out = coalesce(&pkts);
        assert_eq!(out.len(), 1, "one train");
        assert_eq!(out[0].0.count, 6);
        let back = resegment(&out[0].1, v6);
        assert_eq!(back.len(), 6);
        for (i, (got, want)) in back.iter().zip(&pkts).enumerate() {
            if v6 {
                assert_eq!(got, want, "segment {i}");
            } else {
                // The kernel's split gives IPv4 ids of its own; all else is equal.
                assert_eq!(got[..4], want[..4], "segment {i}");
                assert_eq!(got[6..10], want[6..10], "segment {i}");
                assert_eq!(got[12..], want[12..], "segment {i}");
            }
        }
    }

    #[test]
    fn a_partial_checksum_is_marked_for_the_kernel_to_complete() {
        for v6 in [false, true] {
            let full = tcp_packet(v6, 7, TCP_ACK, b"some payload");
            let mut out = [0xffu8; VNET_HDR_LEN];
            single_header(&full, 1500, &mut out);
            assert_eq!(out, [0u8; VNET_HDR_LEN], "a full checksum is left alone");
            // What a sender's kernel leaves in the field: the pseudo-header sum.
            let ip = if v6 { 40 } else { 20 };
            let addrs = if v6 { &full[8..40] } else { &full[12..20] };
            let pseudo = tun_rs::checksum(addrs, u64::from(PROTO_TCP) + (full.len() - ip) as u64);
            let mut partial = full.clone();
            partial[ip + TCP_CSUM..ip + TCP_CSUM + 2].copy_from_slice(&pseudo.to_be_bytes());
            single_header(&partial, 1500, &mut out);
            let hdr = tun_rs::VirtioNetHdr::decode(&out).unwrap();
            assert_eq!((hdr.flags, hdr.gso_type), (NEEDS_CSUM, GSO_NONE));
            assert_eq!(
                (hdr.csum_start as usize, hdr.csum_offset as usize),
                (ip, TCP_CSUM)
            );
            // Completed as the kernel would, it is the full checksum again.
            let completed = !tun_rs::checksum(&partial[ip..], 0);
            assert_eq!(
                completed.to_be_bytes(),
                [full[ip + TCP_CSUM], full[ip + TCP_CSUM + 1]]
            );
            // Longer than the MTU: a super-packet, cut into segments that fit.
            let headers = ip + 32;
            single_header(&partial, headers + 8, &mut out);
            let hdr = tun_rs::VirtioNetHdr::decode(&out).unwrap();
            assert_eq!(hdr.gso_type, if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
            assert_eq!((hdr.hdr_len as usize, hdr.gso_size as usize), (headers, 8));
            // Anything else is left alone.
            for junk in [&[][..], &[0x45u8; 19][..], &partial[..partial.len() - 1]] {
                single_header(junk, 1500, &mut out);
                assert_eq!(out, [0u8; VNET_HDR_LEN]);
            }
        }
    }

    #[test]
    fn a_train_resegments_into_the_same_packets_v4() {
        round_trip(false);
    }

    #[test]
    fn a_train_resegments_into_the_same_packets_v6() {
        round_trip(true);
    }

    /// The checksum field of a super-packet holds the pseudo-header sum, so
    /// the kernel (or a NIC) completing it over the TCP header and payload
    /// gets the checksum computed from scratch.
    #[test]
    fn the_partial_checksum_completes_to_the_right_one() {
        for v6 in [false, true] {
            let pkts: Vec<Vec<u8>> = (0..3)
                .map(|i| tcp_packet(v6, 50 + (i * 700) as u32, TCP_ACK, &payload(i, 700)))
                .collect();
            let (t, written) = coalesce(&pkts).remove(0);
            assert_eq!(t.count, 3);
            let pkt = &written[VNET_HDR_LEN..];
            let ip_len = t.first.ip_len;
            let tcp = &pkt[ip_len..];
            // The kernel: checksum over csum_start.. with the field as left.
            let completed = !tun_rs::checksum(tcp, 0);
            // From scratch: the field zeroed, the pseudo-header added.
            let mut zeroed = tcp.to_vec();
            zeroed[TCP_CSUM..TCP_CSUM + 2].fill(0);
            let addrs = if v6 { &pkt[8..40] } else { &pkt[12..20] };
            let pseudo =
                u64::from(tun_rs::checksum(addrs, 0)) + u64::from(PROTO_TCP) + tcp.len() as u64;
            let scratch = !tun_rs::checksum(&zeroed, pseudo);
            assert_eq!(completed, scratch, "v6: {v6}");
            if !v6 {
                assert_eq!(
                    tun_rs::checksum(&pkt[..20], 0),
                    0xffff,
                    "the IPv4 header checksum"
                );
            }
        }
    }

    #[test]
    fn what_breaks_a_train() {
        let p = |seq: u32, flags: u8, n: usize| tcp_packet(false, seq, flags, &payload(0, n));
        // A gap in the sequence.
        assert_eq!(
            coalesce(&[p(0, TCP_ACK, 100), p(200, TCP_ACK, 100)]).len(),
            2
        );
        // PSH ends it; a shorter one ends it.
        assert_eq!(
            coalesce(&[p(0, TCP_ACK | TCP_PSH, 100), p(100, TCP_ACK, 100)]).len(),
            2
        );
        assert_eq!(
            coalesce(&[p(0, TCP_ACK, 100), p(100, TCP_ACK, 50), p(150, TCP_ACK, 50)]).len(),
            2
        );
        // A longer one cannot follow.
        assert_eq!(
            coalesce(&[p(0, TCP_ACK, 100), p(100, TCP_ACK, 200)]).len(),
            2
        );
        // FIN, SYN, RST, URG, pure ACKs: alone.
        for flags in [TCP_ACK | 0x01, 0x02, TCP_ACK | 0x04, TCP_ACK | 0x20] {
            assert!(segment(&p(0, flags, 100)).is_none(), "{flags:#x}");
        }
        assert!(segment(&p(0, TCP_ACK, 0)).is_none());
        // Another ACK number, another port, another address, other options.
        let a = p(0, TCP_ACK, 100);
        let mut b = p(100, TCP_ACK, 100);
        b[20 + 11] ^= 1;
        assert_eq!(coalesce(&[a.clone(), b]).len(), 2);
        let mut b = p(100, TCP_ACK, 100);
        b[20 + 1] ^= 1;
        assert_eq!(coalesce(&[a.clone(), b]).len(), 2);
        let mut b = p(100, TCP_ACK, 100);
        b[19] ^= 1;
        assert_eq!(coalesce(&[a.clone(), b]).len(), 2);
        let mut b = p(100, TCP_ACK, 100);
        b[20 + 31] ^= 1; // the timestamp
        assert_eq!(coalesce(&[a.clone(), b]).len(), 2);
        // IPv4 fragments and options, UDP: alone.
        let mut f = a.clone();
        f[6] |= 0x20;
        assert!(segment(&f).is_none());
        let mut o = a.clone();
        o[0] = 0x46;
        assert!(segment(&o).is_none());
        let mut u = a.clone();
        u[9] = 17;
        assert!(segment(&u).is_none());
        // A truncated one.
        assert!(segment(&a[..a.len() - 1]).is_none());
        // At most MAX_SEGMENTS.
        let many: Vec<_> = (0..MAX_SEGMENTS + 1)
            .map(|i| p(i as u32 * 10, TCP_ACK, 10))
            .collect();
        assert_eq!(coalesce(&many).len(), 2);
    }

    #[test]
    fn a_lone_packet_is_written_as_it_came() {
        let a = tcp_packet(false, 0, TCP_ACK | 0x01, &payload(0, 10));
        let out = coalesce(std::slice::from_ref(&a));
        assert_eq!(&out[0].1[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
        assert_eq!(&out[0].1[VNET_HDR_LEN..], &a[..]);
        let one = tcp_packet(false, 0, TCP_ACK, &payload(0, 10));
        let out = coalesce(std::slice::from_ref(&one));
        assert_eq!(&out[0].1[VNET_HDR_LEN..], &one[..]);
    }

    proptest::proptest! {
        /// Whatever the bytes, nothing panics.
        #[test]
        fn never_panics(a in proptest::collection::vec(proptest::num::u8::ANY, 0..120),
                        b in proptest::collection::vec(proptest::num::u8::ANY, 0..120)) {
            if let Some(s) = segment(&a) {
                let t = Train::start(s);
                if let Some(s2) = segment(&b) {
                    let _ = t.accepts(&a, &s2, &b);
                }
                let mut h = [0u8; MAX_HEADER];
                let _ = header(&a, &t, &mut h);
            }
        }
    }
}
