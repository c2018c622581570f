//! The peer table: pod subnet → node public IP, and the set of public IPs
//! allowed to send to us.
//!
//! Built once per [`set_peers`](crate::ForwarderHandle::set_peers) call and
//! never changed afterwards: the forwarder swaps whole tables atomically.
//! Lookups are `O(k · log n)` with `k` the number of distinct prefix
//! lengths (one in a flannel cluster: every node leases a `/24` or such):
//! per prefix length a sorted vector of network addresses, searched from
//! the longest prefix down, so the most specific subnet wins if subnets
//! ever overlap.

use std::net::IpAddr;

use ipnet::IpNet;

/// The subnets of one prefix length and their nodes, sorted by network
/// address.
#[derive(Debug, Clone)]
struct Level<A> {
    prefix: u8,
    mask: A,
    entries: Vec<(A, IpAddr)>,
}

/// An immutable routing table for the forwarder.
#[derive(Debug, Clone, Default)]
pub struct PeerTable {
    v4: Vec<Level<u32>>,
    v6: Vec<Level<u128>>,
    senders: Vec<IpAddr>,
    len: usize,
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// Groups `(network, prefix, node)` triples into levels, longest prefix
/// first; for a subnet given twice the last one wins.
fn levels<A: Copy + Ord>(mut items: Vec<(u8, A, IpAddr)>, mask: impl Fn(u8) -> A) -> Vec<Level<A>> {
    // Stable sort after reversing keeps the *last* duplicate first, and
    // dedup keeps the first of a run.
    items.reverse();
    items.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    items.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    let mut out: Vec<Level<A>> = Vec::new();
    for (prefix, net, node) in items {
        match out.last_mut() {
            Some(level) if level.prefix == prefix => level.entries.push((net, node)),
            _ => out.push(Level {
                prefix,
                mask: mask(prefix),
                entries: vec![(net, node)],
            }),
        }
    }
    out
}

impl PeerTable {
    /// Builds the table from `(pod subnet, node public IP)` pairs. Host bits
    /// of a subnet are ignored; IPv4-mapped IPv6 public IPs are taken as
    /// IPv4.
    pub fn new(peers: &[(IpNet, IpAddr)]) -> PeerTable {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut senders = Vec::with_capacity(peers.len());
        for (net, node) in peers {
            let node = node.to_canonical();
            senders.push(node);
            match net.trunc() {
                IpNet::V4(n) => v4.push((n.prefix_len(), u32::from(n.network()), node)),
                IpNet::V6(n) => v6.push((n.prefix_len(), u128::from(n.network()), node)),
            }
        }
        senders.sort();
        senders.dedup();
        let v4 = levels(v4, mask32);
        let v6 = levels(v6, mask128);
        let len = v4.iter().map(|l| l.entries.len()).sum::<usize>()
            + v6.iter().map(|l| l.entries.len()).sum::<usize>();
        PeerTable {
            v4,
            v6,
            senders,
            len,
        }
    }

    /// The public IP of the node whose subnet holds `dst` (the longest
    /// matching prefix), if any.
    pub fn lookup(&self, dst: IpAddr) -> Option<IpAddr> {
        match dst {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }
    }

    /// Whether `src` is some peer's public IP (IPv4-mapped IPv6 counts as
    /// IPv4).
    pub fn is_peer(&self, src: IpAddr) -> bool {
        self.senders.binary_search(&src.to_canonical()).is_ok()
    }

    /// Number of distinct subnets.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no subnet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn find<A>(levels: &[Level<A>], addr: A) -> Option<IpAddr>
where
    A: Copy + Ord + std::ops::BitAnd<Output = A>,
{
    levels.iter().find_map(|level| {
        let key = addr & level.mask;
        level
            .entries
            .binary_search_by(|(net, _)| net.cmp(&key))
            .ok()
            .map(|i| level.entries[i].1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn finds_the_containing_subnet() {
        let t = PeerTable::new(&[
            (net("10.244.1.0/24"), ip("172.18.0.3")),
            (net("10.244.2.0/24"), ip("172.18.0.4")),
            (net("fc00:0:0:1::/64"), ip("fd00:18::3")),
        ]);
        assert_eq!(t.len(), 3);
        assert_eq!(t.lookup(ip("10.244.1.0")), Some(ip("172.18.0.3")));
        assert_eq!(t.lookup(ip("10.244.1.255")), Some(ip("172.18.0.3")));
        assert_eq!(t.lookup(ip("10.244.2.7")), Some(ip("172.18.0.4")));
        assert_eq!(t.lookup(ip("10.244.3.7")), None);
        assert_eq!(t.lookup(ip("10.245.1.7")), None);
        assert_eq!(t.lookup(ip("fc00:0:0:1::9")), Some(ip("fd00:18::3")));
        assert_eq!(t.lookup(ip("fc00:0:0:2::9")), None);
        assert!(t.is_peer(ip("172.18.0.4")));
        assert!(t.is_peer(ip("::ffff:172.18.0.4")));
        assert!(!t.is_peer(ip("172.18.0.9")));
    }

    #[test]
    fn longest_prefix_wins_and_last_duplicate_wins() {
        let t = PeerTable::new(&[
            (net("10.244.0.0/16"), ip("172.18.0.1")),
            (net("10.244.5.0/24"), ip("172.18.0.5")),
            (net("10.244.5.128/25"), ip("172.18.0.6")),
            (net("10.244.7.9/24"), ip("172.18.0.7")), // host bits ignored
            (net("10.244.7.0/24"), ip("172.18.0.8")), // same subnet again
            (net("0.0.0.0/0"), ip("172.18.0.254")),
        ]);
        assert_eq!(t.lookup(ip("10.244.5.1")), Some(ip("172.18.0.5")));
        assert_eq!(t.lookup(ip("10.244.5.200")), Some(ip("172.18.0.6")));
        assert_eq!(t.lookup(ip("10.244.9.1")), Some(ip("172.18.0.1")));
        assert_eq!(t.lookup(ip("10.244.7.1")), Some(ip("172.18.0.8")));
        assert_eq!(t.lookup(ip("192.0.2.1")), Some(ip("172.18.0.254")));
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn empty_table() {
        let t = PeerTable::new(&[]);
        assert!(t.is_empty());
        assert_eq!(t.lookup(ip("10.0.0.1")), None);
        assert!(!t.is_peer(ip("10.0.0.1")));
    }

    #[test]
    fn many_peers() {
        let peers: Vec<(IpNet, IpAddr)> = (0..5000u32)
            .map(|i| {
                let n = Ipv4Addr::from((10 << 24) | (i << 8));
                let node = Ipv4Addr::from((172 << 24) | (16 << 16) | i);
                (IpNet::new(n.into(), 24).unwrap(), node.into())
            })
            .collect();
        let t = PeerTable::new(&peers);
        for (i, (n, node)) in peers.iter().enumerate() {
            let IpAddr::V4(a) = n.network() else {
                unreachable!()
            };
            let inside = Ipv4Addr::from(u32::from(a) + (i as u32 % 256));
            assert_eq!(t.lookup(inside.into()), Some(*node));
            assert!(t.is_peer(*node));
        }
    }

    proptest! {
        /// The table agrees with a linear scan for the longest match.
        #[test]
        fn agrees_with_linear_scan(
            subnets in proptest::collection::vec((any::<u32>(), 8u8..=32), 0..40),
            probes in proptest::collection::vec(any::<u32>(), 0..40),
        ) {
            let peers: Vec<(IpNet, IpAddr)> = subnets
                .iter()
                .enumerate()
                .map(|(i, (a, p))| {
                    let n = IpNet::new(Ipv4Addr::from(*a).into(), *p).unwrap().trunc();
                    (n, IpAddr::from([192, 0, 2, i as u8]))
                })
                .collect();
            let t = PeerTable::new(&peers);
            let mut all_probes: Vec<u32> = probes;
            all_probes.extend(subnets.iter().map(|(a, _)| *a));
            for probe in all_probes {
                let addr = IpAddr::from(Ipv4Addr::from(probe));
                // Linear: longest prefix, last one given among equals.
                let best = peers
                    .iter()
                    .enumerate()
                    .filter(|(_, (n, _))| n.contains(&addr))
                    .max_by_key(|(i, (n, _))| (n.prefix_len(), *i))
                    .map(|(_, (_, node))| *node);
                prop_assert_eq!(t.lookup(addr), best);
            }
        }
    }
}
