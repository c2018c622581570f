//! The pure rule set: flannel's SNAT and forward rules, typed.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::family::Family;

/// kube-proxy's masquerade mark: packets it marks are left to it.
pub const KUBE_PROXY_MARK: u32 = 0x4000;

/// Which chain a rule belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Chain {
    /// NAT, postrouting hook (`FLANNEL-POSTRTG` / `postrtg`).
    Postrouting,
    /// Filter, forward hook (`FLANNEL-FWD` / `forward`).
    Forward,
}

/// An address match on source or destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Addr {
    /// No match on this address.
    Any,
    /// Inside the network.
    In(IpNet),
    /// Outside the network.
    NotIn(IpNet),
}

/// What a matching packet gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Leave the chain (no NAT).
    Return,
    /// Source NAT to the outgoing interface's address.
    Masquerade {
        /// `--random-fully` / `fully-random`: fully randomised source ports (avoids conntrack races, flannel #1004).
        fully_random: bool,
    },
    /// Accept (forward rules).
    Accept,
}

/// One rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Its chain.
    pub chain: Chain,
    /// `-m mark --mark value/mask`.
    pub mark: Option<(u32, u32)>,
    /// Source match.
    pub src: Addr,
    /// Destination match.
    pub dst: Addr,
    /// The verdict.
    pub verdict: Verdict,
    /// What the rule is for, in words (nftables comments).
    pub label: &'static str,
}

/// What the rule set contains, as flanneld's flags set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// `--ip-masq`: the SNAT rules.
    pub masquerade: bool,
    /// Not `--ip-masq-fully-random-disable`.
    pub fully_random: bool,
    /// `--iptables-forward-rules`: accept forwarding to and from the cluster network.
    pub forward: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            masquerade: true,
            fully_random: true,
            forward: true,
        }
    }
}

/// The complete desired rule set for one node in one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// The family of every address in it (and of the tables it goes to).
    pub family: Family,
    /// Postrouting (SNAT) rules in order; empty when masquerading is off.
    pub postrouting: Vec<Rule>,
    /// Forward-accept rules in order; empty when forward rules are off.
    pub forward: Vec<Rule>,
}

/// Why a rule set cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A network has host bits set.
    #[error("{field}: {net} is not a network address (host bits set)")]
    NotANetwork {
        /// `Network` or `podCIDR`.
        field: &'static str,
        /// The value.
        net: IpNet,
    },
    /// The node's subnet and the cluster network are of different families.
    #[error("podCIDR: {subnet} is {} but the cluster network {network} is {}", Family::of(.subnet), Family::of(.network))]
    FamilyMismatch {
        /// The node's subnet.
        subnet: IpNet,
        /// The cluster network.
        network: IpNet,
    },
    /// The node's subnet is not inside the cluster network.
    #[error("podCIDR: {subnet} is not inside the cluster network {network}")]
    SubnetOutsideNetwork {
        /// The node's subnet.
        subnet: IpNet,
        /// The cluster network.
        network: IpNet,
    },
    /// The cluster network is multicast space.
    #[error("Network: {0} overlaps the multicast range {range}", range = Family::of(.0).multicast())]
    MulticastNetwork(IpNet),
}

/// Builds flannel's rule set.
pub struct SnatRules;

impl SnatRules {
    /// The rules for cluster network `network` and this node's pod subnet
    /// `subnet`, in flannel v0.28's order:
    ///
    /// 1. kube-proxy's mark → RETURN (its own masquerade handles those);
    /// 2. own pods → cluster: RETURN (pod ↔ pod is never masqueraded);
    /// 3. cluster → own pods: RETURN;
    /// 4. outside → own pods: RETURN (keeps the client's address);
    /// 5. cluster → anything but multicast: MASQUERADE (pods to the outside);
    /// 6. outside → cluster: MASQUERADE (to other nodes' pods, so replies come back);
    ///
    /// then the forward accepts `-s network` and `-d network`. flannel's
    /// nftables mode writes rule 4 as `saddr != subnet`, which makes rule 6
    /// unreachable; weft uses the iptables semantics everywhere.
    ///
    /// Both networks must be of one family, which the rule set then has;
    /// "multicast" is `224.0.0.0/4` for IPv4 and `ff00::/8` for IPv6.
    pub fn build(network: IpNet, subnet: IpNet, options: Options) -> Result<RuleSet, RuleError> {
        let family = Family::of(&network);
        if Family::of(&subnet) != family {
            return Err(RuleError::FamilyMismatch { subnet, network });
        }
        if network.trunc() != network {
            return Err(RuleError::NotANetwork {
                field: "Network",
                net: network,
            });
        }
        if subnet.trunc() != subnet {
            return Err(RuleError::NotANetwork {
                field: "podCIDR",
                net: subnet,
            });
        }
        if !network.contains(&subnet) {
            return Err(RuleError::SubnetOutsideNetwork { subnet, network });
        }
        let multicast = family.multicast();
        if network.contains(&multicast.network()) || multicast.contains(&network.network()) {
            return Err(RuleError::MulticastNetwork(network));
        }
        let masq = Verdict::Masquerade {
            fully_random: options.fully_random,
        };
        let post = |mark, src, dst, verdict, label| Rule {
            chain: Chain::Postrouting,
            mark,
            src,
            dst,
            verdict,
            label,
        };
        let postrouting = if options.masquerade {
            let kube_proxy = Some((KUBE_PROXY_MARK, KUBE_PROXY_MARK));
            vec![
                post(
                    kube_proxy,
                    Addr::Any,
                    Addr::Any,
                    Verdict::Return,
                    "marked by kube-proxy",
                ),
                post(
                    None,
                    Addr::In(subnet),
                    Addr::In(network),
                    Verdict::Return,
                    "own pods to cluster",
                ),
                post(
                    None,
                    Addr::In(network),
                    Addr::In(subnet),
                    Verdict::Return,
                    "cluster to own pods",
                ),
                post(
                    None,
                    Addr::NotIn(network),
                    Addr::In(subnet),
                    Verdict::Return,
                    "outside to own pods",
                ),
                post(
                    None,
                    Addr::In(network),
                    Addr::NotIn(multicast),
                    masq,
                    "pods to outside",
                ),
                post(
                    None,
                    Addr::NotIn(network),
                    Addr::In(network),
                    masq,
                    "outside to other pods",
                ),
            ]
        } else {
            Vec::new()
        };
        let fwd = |src, dst, label| Rule {
            chain: Chain::Forward,
            mark: None,
            src,
            dst,
            verdict: Verdict::Accept,
            label,
        };
        let forward = if options.forward {
            vec![
                fwd(Addr::In(network), Addr::Any, "from cluster"),
                fwd(Addr::Any, Addr::In(network), "to cluster"),
            ]
        } else {
            Vec::new()
        };
        Ok(RuleSet {
            family,
            postrouting,
            forward,
        })
    }
}

impl RuleSet {
    /// A rule set of `family` without any rule: everything of weft's in
    /// that family is to go.
    pub fn empty(family: Family) -> RuleSet {
        RuleSet {
            family,
            postrouting: Vec::new(),
            forward: Vec::new(),
        }
    }

    /// Its address family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Whether it holds no rule at all.
    pub fn is_empty(&self) -> bool {
        self.postrouting.is_empty() && self.forward.is_empty()
    }

    /// Each chain with its rules (an empty list when the option is off),
    /// postrouting first.
    pub fn chains(&self) -> [(Chain, &[Rule]); 2] {
        [
            (Chain::Postrouting, &self.postrouting),
            (Chain::Forward, &self.forward),
        ]
    }

    /// Every rule, postrouting first.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.postrouting.iter().chain(&self.forward)
    }

    /// The first postrouting rule a packet from `src` to `dst` carrying
    /// `mark` matches, as the kernel walks the chain; `None` when it runs
    /// off the end (no NAT).
    pub fn postrouting_match(&self, src: IpAddr, dst: IpAddr, mark: u32) -> Option<&Rule> {
        self.postrouting.iter().find(|r| {
            r.mark.is_none_or(|(value, mask)| mark & mask == value)
                && r.src.matches(src)
                && r.dst.matches(dst)
        })
    }
}

impl Addr {
    /// Whether `ip` passes this match.
    pub fn matches(self, ip: IpAddr) -> bool {
        match self {
            Addr::Any => true,
            Addr::In(net) => net.contains(&ip),
            Addr::NotIn(net) => !net.contains(&ip),
        }
    }
}

impl fmt::Display for Rule {
    /// The rule in nft syntax, as `nft list ruleset` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::render::nft_rule(self))
    }
}
