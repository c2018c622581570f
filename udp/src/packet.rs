//! What the forwarder needs to know about an IP packet: is it one, and where
//! does it go; plus flannel's TTL decrement.
//!
//! Pure functions over byte slices; they never panic, whatever the input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Length of an IPv4 header without options: nothing shorter is an IP packet.
pub const IPV4_HEADER_LEN: usize = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;

/// Why a buffer is not forwarded as an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Shorter than the IP header its version announces (or than 20 bytes).
    TooShort,
    /// Not an IPv4 or IPv6 packet (other version nibble, or an IPv4 header
    /// whose lengths contradict each other).
    NotIp,
}

/// The packet's destination address, after checking that the buffer holds
/// an IPv4 or IPv6 packet: version 4 with a header length of at least 20
/// bytes and a total length between the header length and the buffer's
/// length, or version 6 with the fixed header and its payload inside the
/// buffer. Trailing bytes after the packet are tolerated (as the kernel
/// does).
pub fn destination(packet: &[u8]) -> Result<IpAddr, Reject> {
    let Some(&first) = packet.first() else {
        return Err(Reject::TooShort);
    };
    if packet.len() < IPV4_HEADER_LEN {
        return Err(Reject::TooShort);
    }
    match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < IPV4_HEADER_LEN {
                return Err(Reject::NotIp);
            }
            if packet.len() < ihl {
                return Err(Reject::TooShort);
            }
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            if total < ihl {
                return Err(Reject::NotIp);
            }
            if total > packet.len() {
                return Err(Reject::TooShort);
            }
            let d = [packet[16], packet[17], packet[18], packet[19]];
            Ok(IpAddr::V4(Ipv4Addr::from(d)))
        }
        6 => {
            if packet.len() < IPV6_HEADER_LEN {
                return Err(Reject::TooShort);
            }
            let payload = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            if IPV6_HEADER_LEN + payload > packet.len() {
                return Err(Reject::TooShort);
            }
            let mut d = [0u8; 16];
            d.copy_from_slice(&packet[24..40]);
            Ok(IpAddr::V6(Ipv6Addr::from(d)))
        }
        _ => Err(Reject::NotIp),
    }
}

/// Decrements the IPv4 TTL (patching the header checksum incrementally,
/// RFC 1624) or the IPv6 hop limit, as flannel's proxy does on each side.
/// Returns `false` (leaving the packet as it was) when the TTL is 1 or 0,
/// i.e. the packet must be discarded. Call only on packets that
/// [`destination`] accepted; anything shorter is left alone (`false`).
pub fn decrement_ttl(packet: &mut [u8]) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= IPV4_HEADER_LEN => {
            let ttl = packet[8];
            if ttl <= 1 {
                return false;
            }
            let old = u16::from_be_bytes([ttl, packet[9]]);
            let new = old - 0x0100;
            packet[8] = ttl - 1;
            let check = u16::from_be_bytes([packet[10], packet[11]]);
            // HC' = ~(~HC + ~m + m')
            let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
            sum = (sum & 0xffff) + (sum >> 16);
            sum = (sum & 0xffff) + (sum >> 16);
            let [hi, lo] = (!(sum as u16)).to_be_bytes();
            packet[10] = hi;
            packet[11] = lo;
            true
        }
        Some(6) if packet.len() >= IPV6_HEADER_LEN => {
            let hops = packet[7];
            if hops <= 1 {
                return false;
            }
            packet[7] = hops - 1;
            true
        }
        _ => false,
    }
}

/// The IPv4 header checksum as a sender computes it (checksum field taken
/// as zero); for tests and for checking [`decrement_ttl`].
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for (i, pair) in header.chunks(2).enumerate() {
        if i == 5 {
            continue; // the checksum field itself
        }
        let word = match pair {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An ICMP echo request 10.244.1.2 -> 10.244.2.2, 84 bytes (ping's default).
    pub(crate) fn icmp_v4(ttl: u8) -> Vec<u8> {
        let mut p = vec![0u8; 84];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&84u16.to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = ttl;
        p[9] = 1; // ICMP
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 2]);
        let c = ipv4_header_checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20] = 8; // echo request
        p
    }

    fn v6(payload: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40 + usize::from(payload)];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&payload.to_be_bytes());
        p[6] = 58;
        p[7] = 64;
        p[8..24].copy_from_slice(&"fc00:0:0:1::2".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fc00:0:0:2::2".parse::<Ipv6Addr>().unwrap().octets());
        p
    }

    #[test]
    fn ipv4_destination() {
        assert_eq!(destination(&icmp_v4(64)), Ok(IpAddr::from([10, 244, 2, 2])));
        // Trailing bytes (Ethernet padding, say) are fine.
        let mut padded = icmp_v4(64);
        padded.extend_from_slice(&[0; 6]);
        assert!(destination(&padded).is_ok());
    }

    #[test]
    fn ipv6_destination() {
        assert_eq!(
            destination(&v6(8)),
            Ok("fc00:0:0:2::2".parse::<IpAddr>().unwrap())
        );
    }

    #[test]
    fn too_short() {
        assert_eq!(destination(&[]), Err(Reject::TooShort));
        assert_eq!(destination(&[0x45; 19]), Err(Reject::TooShort));
        assert_eq!(destination(&icmp_v4(64)[..40]), Err(Reject::TooShort)); // total 84
        assert_eq!(destination(&v6(8)[..39]), Err(Reject::TooShort));
        assert_eq!(destination(&v6(8)[..44]), Err(Reject::TooShort)); // payload 8
        let mut opts = icmp_v4(64);
        opts[0] = 0x4f; // 60-byte header in a ... 84-byte packet: fine
        assert!(destination(&opts).is_ok());
        assert_eq!(destination(&opts[..30]), Err(Reject::TooShort));
    }

    #[test]
    fn not_ip() {
        assert_eq!(destination(&[0u8; 64]), Err(Reject::NotIp));
        assert_eq!(
            destination(b"XYZ: this is no IP packet at all"),
            Err(Reject::NotIp)
        );
        let mut bad_ihl = icmp_v4(64);
        bad_ihl[0] = 0x44;
        assert_eq!(destination(&bad_ihl), Err(Reject::NotIp));
        let mut bad_total = icmp_v4(64);
        bad_total[2..4].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(destination(&bad_total), Err(Reject::NotIp));
    }

    #[test]
    fn ttl_decrement_matches_full_checksum() {
        let mut p = icmp_v4(64);
        assert!(decrement_ttl(&mut p));
        assert_eq!(p[8], 63);
        assert_eq!(
            u16::from_be_bytes([p[10], p[11]]),
            ipv4_header_checksum(&p[..20])
        );
        let mut one = icmp_v4(1);
        assert!(!decrement_ttl(&mut one));
        assert_eq!(one, icmp_v4(1));
        let mut p6 = v6(0);
        assert!(decrement_ttl(&mut p6));
        assert_eq!(p6[7], 63);
        assert!(!decrement_ttl(&mut [0x45u8; 10]));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = destination(&bytes);
            let mut b = bytes.clone();
            let _ = decrement_ttl(&mut b);
        }

        #[test]
        fn random_v4_headers_never_panic(
            first in any::<u8>(), total in any::<u16>(), len in 0usize..120,
        ) {
            let mut p = icmp_v4(64);
            p[0] = (first & 0x0f) | 0x40;
            p[2..4].copy_from_slice(&total.to_be_bytes());
            p.truncate(len.min(p.len()));
            if let Ok(IpAddr::V4(d)) = destination(&p) {
                prop_assert_eq!(d, Ipv4Addr::new(10, 244, 2, 2));
            }
        }

        #[test]
        fn incremental_checksum_is_right(ttl in 2u8.., id in any::<u16>(), proto in any::<u8>()) {
            let mut p = icmp_v4(ttl);
            p[4..6].copy_from_slice(&id.to_be_bytes());
            p[9] = proto;
            let c = ipv4_header_checksum(&p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            prop_assert!(decrement_ttl(&mut p));
            prop_assert_eq!(u16::from_be_bytes([p[10], p[11]]), ipv4_header_checksum(&p[..20]));
        }
    }
}
