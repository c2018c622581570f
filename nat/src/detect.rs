//! Which NAT mode this host uses.
//!
//! `EnableNFTables` in `net-conf.json` selects native nftables, and an explicit
//! mode overrides everything. Otherwise weft follows the host, as Kubernetes'
//! iptables-wrapper does: where kube-proxy runs in nftables mode (its table
//! `ip kube-proxy` exists) and no iptables flavor holds a rule, native
//! nftables; else the flavor holding kubelet's or kube-proxy's hint chains
//! wins; else the one holding more rules; on a tie (a fresh host)
//! iptables-nft where its binaries work, iptables-legacy otherwise.

use std::time::Duration;

use crate::command::run;
use crate::{nft_dump, NatMode};

/// kube-proxy's table in nftables mode (`ip kube-proxy`).
pub const KUBE_PROXY_TABLE: &str = "kube-proxy";

/// The chosen mode and why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The mode.
    pub mode: NatMode,
    /// Why it was chosen.
    pub reason: String,
}

/// What one iptables flavor shows on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlavorFacts {
    /// Its binaries run.
    pub works: bool,
    /// Rules (`-A` lines) in its tables.
    pub rules: usize,
    /// It holds `KUBE-IPTABLES-HINT` or `KUBE-KUBELET-CANARY`.
    pub kube_hint: bool,
    /// Rules that are neither kubelet's own (`KUBE-FIREWALL`, its canary)
    /// nor flannel's/weft's (`FLANNEL-*`): kube-proxy's, Docker's, the
    /// administrator's.
    pub others: usize,
}

/// Decides from the facts (pure). `kube_proxy_nftables`: kube-proxy's
/// nftables table is present.
pub fn choose(
    enable_nftables: bool,
    forced: Option<NatMode>,
    legacy: &FlavorFacts,
    nft: &FlavorFacts,
    kube_proxy_nftables: bool,
) -> Detection {
    let pick = |mode: NatMode, reason: String| Detection { mode, reason };
    if let Some(mode) = forced {
        return pick(mode, "set explicitly".into());
    }
    if enable_nftables {
        return pick(
            NatMode::Nftables,
            "EnableNFTables is true in net-conf.json".into(),
        );
    }
    match (legacy.works, nft.works) {
        (false, false) => {
            return pick(
                NatMode::Nftables,
                "no working iptables binaries; using native nftables".into(),
            )
        }
        (true, false) => {
            return pick(
                NatMode::IptablesLegacy,
                "only iptables-legacy works here".into(),
            )
        }
        (false, true) => return pick(NatMode::IptablesNft, "only iptables-nft works here".into()),
        (true, true) => {}
    }
    if kube_proxy_nftables && legacy.others == 0 && nft.others == 0 {
        return pick(
            NatMode::Nftables,
            "kube-proxy runs in nftables mode (table ip kube-proxy) and no iptables flavor \
             holds rules other than kubelet's and flannel's"
                .into(),
        );
    }
    match (legacy.kube_hint, nft.kube_hint) {
        (true, false) => {
            return pick(
                NatMode::IptablesLegacy,
                "kubelet's hint chains are in iptables-legacy".into(),
            )
        }
        (false, true) => {
            return pick(
                NatMode::IptablesNft,
                "kubelet's hint chains are in iptables-nft".into(),
            )
        }
        _ => {}
    }
    if legacy.rules > nft.rules {
        pick(
            NatMode::IptablesLegacy,
            format!(
                "the host's rules are in iptables-legacy ({} rules vs {} in iptables-nft)",
                legacy.rules, nft.rules
            ),
        )
    } else if nft.rules > 0 {
        pick(
            NatMode::IptablesNft,
            format!(
                "the host's rules are in iptables-nft ({} rules vs {} in iptables-legacy)",
                nft.rules, legacy.rules
            ),
        )
    } else {
        pick(
            NatMode::IptablesNft,
            "no iptables rules yet; iptables-nft is the default of current distributions".into(),
        )
    }
}

/// Reads one flavor's facts: one `*-save`, plus the `iptables` crate's chain probe for the hint chains.
pub fn facts(mode: NatMode) -> FlavorFacts {
    let (save, cmd) = match mode {
        NatMode::IptablesLegacy => ("iptables-legacy-save", "iptables-legacy"),
        _ => ("iptables-nft-save", "iptables-nft"),
    };
    let Ok(text) = run(save, &[], None, Duration::from_secs(10), mode) else {
        return FlavorFacts::default();
    };
    let rules = text.lines().filter(|l| l.starts_with("-A ")).count();
    let others = text
        .lines()
        .filter(|l| l.starts_with("-A ") && !kubelet_or_flannel(l))
        .count();
    let kube_hint = match iptables::new(false) {
        Ok(mut ipt) => {
            ipt.cmd = cmd;
            ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"]
                .iter()
                .any(|c| ipt.chain_exists("mangle", c).unwrap_or(false))
        }
        Err(_) => text.contains(":KUBE-IPTABLES-HINT") || text.contains(":KUBE-KUBELET-CANARY"),
    };
    FlavorFacts {
        works: true,
        rules,
        kube_hint,
        others,
    }
}

/// Whether an `-A` line of `*-save` is kubelet's own (its localnet
/// firewall and canary) or flannel's/weft's.
fn kubelet_or_flannel(line: &str) -> bool {
    let mut words = line.split_whitespace().skip(1);
    let chain = words.next().unwrap_or_default();
    let own =
        |c: &str| c.starts_with("FLANNEL-") || c == "KUBE-FIREWALL" || c == "KUBE-KUBELET-CANARY";
    if own(chain) {
        return true;
    }
    let target = line
        .split(" -j ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next());
    target.is_some_and(own)
}

/// Detects the mode on this host (in the current network namespace).
pub fn detect(enable_nftables: bool, forced: Option<NatMode>) -> Detection {
    if forced.is_some() || enable_nftables {
        return choose(
            enable_nftables,
            forced,
            &FlavorFacts::default(),
            &FlavorFacts::default(),
            false,
        );
    }
    choose(
        false,
        None,
        &facts(NatMode::IptablesLegacy),
        &facts(NatMode::IptablesNft),
        kube_proxy_nftables(),
    )
}

/// Whether kube-proxy's nftables table exists here (false if it cannot be
/// read: then the iptables facts decide).
pub fn kube_proxy_nftables() -> bool {
    matches!(
        nft_dump::ip_table_has_chains(KUBE_PROXY_TABLE, "kube-proxy's nftables table"),
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(works: bool, rules: usize, kube_hint: bool) -> FlavorFacts {
        FlavorFacts {
            works,
            rules,
            kube_hint,
            others: rules,
        }
    }

    #[test]
    fn kubelet_and_flannel_rules_are_not_others() {
        for own in [
            "-A INPUT -j KUBE-FIREWALL",
            "-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -j DROP",
            "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD",
            "-A FLANNEL-POSTRTG -s 10.244.0.0/16 -j MASQUERADE --random-fully",
        ] {
            assert!(kubelet_or_flannel(own), "{own}");
        }
        for other in [
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A DOCKER -j RETURN",
        ] {
            assert!(!kubelet_or_flannel(other), "{other}");
        }
    }

    #[test]
    fn explicit_and_net_conf_win() {
        assert_eq!(
            choose(
                true,
                Some(NatMode::IptablesLegacy),
                &f(true, 0, false),
                &f(true, 9, true),
                false
            )
            .mode,
            NatMode::IptablesLegacy
        );
        assert_eq!(
            choose(true, None, &f(true, 50, true), &f(true, 0, false), false).mode,
            NatMode::Nftables
        );
    }

    #[test]
    fn kube_proxy_in_nftables_mode_means_nftables() {
        assert_eq!(
            choose(false, None, &f(true, 0, false), &f(true, 0, true), true).mode,
            NatMode::Nftables,
            "kubelet's empty hint chains do not outweigh kube-proxy's nftables table"
        );
        let kubelet_only = FlavorFacts {
            works: true,
            rules: 3,
            kube_hint: true,
            others: 0,
        };
        assert_eq!(
            choose(false, None, &f(true, 0, false), &kubelet_only, true).mode,
            NatMode::Nftables,
            "kubelet's own KUBE-FIREWALL rules do not count"
        );
        assert_eq!(
            choose(false, None, &f(true, 0, false), &f(true, 3, true), true).mode,
            NatMode::IptablesNft,
            "iptables rules in use keep weft on iptables"
        );
    }

    #[test]
    fn follows_the_host() {
        assert_eq!(
            choose(false, None, &f(true, 30, false), &f(true, 2, false), false).mode,
            NatMode::IptablesLegacy
        );
        assert_eq!(
            choose(false, None, &f(true, 0, false), &f(true, 2, false), false).mode,
            NatMode::IptablesNft
        );
        assert_eq!(
            choose(false, None, &f(true, 1, true), &f(true, 90, false), false).mode,
            NatMode::IptablesLegacy,
            "hint chains beat counts"
        );
        assert_eq!(
            choose(false, None, &f(true, 0, false), &f(true, 0, false), false).mode,
            NatMode::IptablesNft
        );
        assert_eq!(
            choose(false, None, &f(true, 0, false), &f(false, 0, false), false).mode,
            NatMode::IptablesLegacy
        );
        let d = choose(false, None, &f(true, 30, false), &f(true, 2, false), false);
        assert!(d.reason.contains("30 rules"), "{}", d.reason);
    }
}
