//! The address family a rule set, a backend or a loop works in.
//!
//! flannel keeps the families apart: `iptables` and `ip6tables` with the
//! same chains, nftables tables `ip flannel-ipv4` and `ip6 flannel-ipv6` with
//! the same chains. Everything that differs between the two is here, as
//! values, so the rest of the crate serves both with one code path.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4: `iptables`, nftables family `ip`.
    V4,
    /// IPv6: `ip6tables`, nftables family `ip6`.
    V6,
}

/// IPv4 multicast, checked at compile time.
const MULTICAST_V4: IpNet = IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4));
/// IPv6 multicast, checked at compile time.
const MULTICAST_V6: IpNet = IpNet::V6(Ipv6Net::new_assert(
    Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
    8,
));

/// `NFPROTO_IPV4`.
const NFPROTO_IPV4: u8 = 2;
/// `NFPROTO_IPV6`.
const NFPROTO_IPV6: u8 = 10;

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of a network.
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    /// `IPv4` or `IPv6`, for messages and logs.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The multicast range, never masqueraded: `224.0.0.0/4` or `ff00::/8`.
    pub fn multicast(self) -> IpNet {
        match self {
            Family::V4 => MULTICAST_V4,
            Family::V6 => MULTICAST_V6,
        }
    }

    /// The longest prefix of an address of this family (32 or 128).
    pub fn max_prefix_len(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The iptables command of this family: `iptables` or `ip6tables`
    /// (flavors and tools append `-legacy`, `-nft`, `-save`, `-restore`).
    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The nftables family keyword, as in `table ip …` and `ip saddr`:
    /// `ip` or `ip6`.
    pub fn nft_family(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// flannel's nftables table of this family: `flannel-ipv4` or `flannel-ipv6`.
    pub fn nft_table(self) -> &'static str {
        match self {
            Family::V4 => crate::render::NFT_TABLE,
            Family::V6 => crate::render::NFT_TABLE6,
        }
    }

    /// The netfilter protocol number (`NFPROTO_IPV4` / `NFPROTO_IPV6`) that
    /// nfnetlink messages carry in their header.
    pub(crate) fn nfproto(self) -> u8 {
        match self {
            Family::V4 => NFPROTO_IPV4,
            Family::V6 => NFPROTO_IPV6,
        }
    }

    /// The same family as rustables names it.
    pub(crate) fn protocol_family(self) -> rustables::ProtocolFamily {
        match self {
            Family::V4 => rustables::ProtocolFamily::Ipv4,
            Family::V6 => rustables::ProtocolFamily::Ipv6,
        }
    }

    /// The bytes of an address of this family, network order.
    pub(crate) fn octets(addr: IpAddr) -> Vec<u8> {
        match addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_and_ranges() {
        let v4: IpNet = "10.244.0.0/16".parse().unwrap();
        let v6: IpNet = "fc00::/48".parse().unwrap();
        assert_eq!(Family::of(&v4), Family::V4);
        assert_eq!(Family::of(&v6), Family::V6);
        assert_eq!(Family::V4.multicast().to_string(), "224.0.0.0/4");
        assert_eq!(Family::V6.multicast().to_string(), "ff00::/8");
        assert_eq!(
            (Family::V6.iptables(), Family::V6.nft_family()),
            ("ip6tables", "ip6")
        );
        assert_eq!(Family::V6.nft_table(), "flannel-ipv6");
        assert_eq!(Family::V4.to_string(), "IPv4");
        assert_eq!(Family::octets("fc00::1".parse().unwrap()).len(), 16);
    }
}
