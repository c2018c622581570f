//! What the UDP forwarder does with a datagram from the network: any bytes
//! give a destination or a reject (counted by the forwarder), never a
//! panic; a packet whose TTL is decremented keeps a valid IPv4 header
//! checksum when it had one; the peer table's longest-prefix lookup agrees
//! with a plain search over the same peers; two packets cut from the bytes
//! go through the receive side's coalescing (segment, join, header)
//! without a panic, and a joined pair's header carries their lengths.
#![no_main]
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use libfuzzer_sys::fuzz_target;
use weft_udp::coalesce::{header, segment, Train, MAX_HEADER, VNET_HDR_LEN};
use weft_udp::packet::{decrement_ttl, destination, ipv4_header_checksum};
use weft_udp::PeerTable;

fuzz_target!(|data: &[u8]| {
    let accepted = destination(data);
    let mut packet = data.to_vec();
    if let (Ok(_), Some(4)) = (&accepted, data.first().map(|b| b >> 4)) {
        let ihl = usize::from(data[0] & 0x0f) * 4;
        let header = &data[..ihl];
        let valid = u16::from_be_bytes([header[10], header[11]]) == ipv4_header_checksum(header);
        if decrement_ttl(&mut packet) {
            assert_eq!(packet[8], data[8] - 1);
            if valid {
                let h = &packet[..ihl];
                assert_eq!(
                    u16::from_be_bytes([h[10], h[11]]),
                    ipv4_header_checksum(h),
                    "the incremental checksum update broke a valid header"
                );
            }
        } else {
            assert_eq!(packet, data, "a refused decrement changed the packet");
        }
    } else if accepted.is_ok() {
        let _ = decrement_ttl(&mut packet);
    }

    // Peers from the bytes: (subnet, node) pairs, then a lookup.
    let mut peers: Vec<(IpNet, IpAddr)> = Vec::new();
    for chunk in data.chunks_exact(6).take(64) {
        let base = Ipv4Addr::new(10, chunk[0], chunk[1], chunk[2]);
        let Ok(net) = Ipv4Net::new(base, 8 + chunk[3] % 25) else {
            continue;
        };
        peers.push((net.trunc().into(), IpAddr::V4(Ipv4Addr::new(172, 18, chunk[4], chunk[5]))));
    }
    let table = PeerTable::new(&peers);
    if let Some(last) = data.get(data.len().saturating_sub(3)..).filter(|t| t.len() == 3) {
        let dst = IpAddr::V4(Ipv4Addr::new(10, last[0], last[1], last[2]));
        // The longest prefix holding dst; among equal ones the table keeps
        // one of them, so only the prefix length is compared.
        let best = peers
            .iter()
            .filter(|(n, _)| n.contains(&dst))
            .map(|(n, _)| n.prefix_len())
            .max();
        let found = table.lookup(dst);
        assert_eq!(found.is_some(), best.is_some(), "lookup of {dst} in {peers:?}");
        if let Some(to) = found {
            assert!(
                peers
                    .iter()
                    .any(|(n, t)| *t == to && n.contains(&dst) && Some(n.prefix_len()) == best),
                "lookup of {dst} gave {to}, not a longest match in {peers:?}"
            );
        }
    }

    // Coalescing: the bytes cut in two packets.
    if let Some((&cut, rest)) = data.split_first() {
        let (a, b) = rest.split_at(usize::from(cut).min(rest.len()));
        if let Some(sa) = segment(a) {
            let mut train = Train::start(sa);
            if let Some(sb) = segment(b) {
                if train.accepts(a, &sb, b) {
                    train.push(&sb);
                }
            }
            let mut out = [0u8; MAX_HEADER];
            let n = header(a, &train, &mut out);
            assert_eq!(n, VNET_HDR_LEN + sa.header_len());
            if train.count == 2 && !sa.v6 {
                let total = usize::from(u16::from_be_bytes([out[VNET_HDR_LEN + 2], out[VNET_HDR_LEN + 3]]));
                assert_eq!(total, sa.header_len() + train.bytes);
            }
        }
    }
});
