//! Which NAT mode this host uses, per address family.
//!
//! `EnableNFTables` in `net-conf.json` selects native nftables, and an explicit
//! mode overrides everything. Otherwise weft follows the host, as Kubernetes'
//! iptables-wrapper does: where kube-proxy runs in nftables mode (its table
//! `ip kube-proxy`, or `ip6 kube-proxy` for IPv6, exists) and no iptables
//! flavor holds a rule, native nftables; else the flavor holding kubelet's
//! or kube-proxy's hint chains wins; else the one holding more rules; on a
//! tie (a fresh host) iptables-nft where its binaries work, iptables-legacy
//! otherwise. For IPv6 the facts are the `ip6tables` flavors': kubelet and
//! kube-proxy keep each family in its own tool.

use std::time::Duration;

use crate::command::run;
use crate::family::Family;
use crate::iptables::{binary, Flavor};
use crate::{nft_dump, NatMode};

/// kube-proxy's table in nftables mode (`ip kube-proxy`, `ip6 kube-proxy`).
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

/// Decides from one family's facts (pure). `kube_proxy_nftables`:
/// kube-proxy's nftables table of that family is present. The reasons name
/// the family's tools (`ip6tables-legacy`, `table ip6 kube-proxy`).
pub fn choose(
    family: Family,
    enable_nftables: bool,
    forced: Option<NatMode>,
    legacy: &FlavorFacts,
    nft: &FlavorFacts,
    kube_proxy_nftables: bool,
) -> Detection {
    let pick = |mode: NatMode, reason: String| Detection { mode, reason };
    let (legacy_tool, nft_tool) = (
        binary(Flavor::Legacy, family, ""),
        binary(Flavor::Nft, family, ""),
    );
    let kube_proxy_table = format!("table {} {KUBE_PROXY_TABLE}", family.nft_family());
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
                format!(
                    "no working {} binaries; using native nftables",
                    family.iptables()
                ),
            )
        }
        (true, false) => {
            return pick(
                NatMode::IptablesLegacy,
                format!("only {legacy_tool} works here"),
            )
        }
        (false, true) => return pick(NatMode::IptablesNft, format!("only {nft_tool} works here")),
        (true, true) => {}
    }
    if kube_proxy_nftables && legacy.others == 0 && nft.others == 0 {
        return pick(
            NatMode::Nftables,
            format!(
                "kube-proxy runs in nftables mode ({kube_proxy_table}) and no {} flavor \
                 holds rules other than kubelet's and flannel's",
                family.iptables()
            ),
        );
    }
    match (legacy.kube_hint, nft.kube_hint) {
        (true, false) => {
            return pick(
                NatMode::IptablesLegacy,
                format!("kubelet's hint chains are in {legacy_tool}"),
            )
        }
        (false, true) => {
            return pick(
                NatMode::IptablesNft,
                format!("kubelet's hint chains are in {nft_tool}"),
            )
        }
        _ => {}
    }
    if legacy.rules > nft.rules {
        pick(
            NatMode::IptablesLegacy,
            format!(
                "the host's rules are in {legacy_tool} ({} rules vs {} in {nft_tool})",
                legacy.rules, nft.rules
            ),
        )
    } else if nft.rules > 0 {
        pick(
            NatMode::IptablesNft,
            format!(
                "the host's rules are in {nft_tool} ({} rules vs {} in {legacy_tool})",
                nft.rules, legacy.rules
            ),
        )
    } else {
        pick(
            NatMode::IptablesNft,
            format!(
                "no {} rules yet; {nft_tool} is the default of current distributions",
                family.iptables()
            ),
        )
    }
}

/// Reads one flavor's facts in `family` (`iptables-*` or `ip6tables-*`):
/// one `*-save`, plus the `iptables` crate's chain probe for the hint chains.
pub fn facts(mode: NatMode, family: Family) -> FlavorFacts {
    let flavor = match mode {
        NatMode::IptablesLegacy => Flavor::Legacy,
        _ => Flavor::Nft,
    };
    let cmd: &'static str = match (flavor, family) {
        (Flavor::Legacy, Family::V4) => "iptables-legacy",
        (Flavor::Nft, Family::V4) => "iptables-nft",
        (Flavor::Legacy, Family::V6) => "ip6tables-legacy",
        (Flavor::Nft, Family::V6) => "ip6tables-nft",
    };
    let save = binary(flavor, family, "-save");
    let Ok(text) = run(&save, &[], None, Duration::from_secs(10), mode) else {
        return FlavorFacts::default();
    };
    let rules = text.lines().filter(|l| l.starts_with("-A ")).count();
    let others = text
        .lines()
        .filter(|l| l.starts_with("-A ") && !kubelet_or_flannel(l))
        .count();
    let kube_hint = match iptables::new(family == Family::V6) {
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

/// Detects the mode of `family` on this host (in the current network
/// namespace), from that family's tools and tables only.
pub fn detect(family: Family, enable_nftables: bool, forced: Option<NatMode>) -> Detection {
    let detection = if forced.is_some() || enable_nftables {
        choose(
            family,
            enable_nftables,
            forced,
            &FlavorFacts::default(),
            &FlavorFacts::default(),
            false,
        )
    } else {
        choose(
            family,
            false,
            None,
            &facts(NatMode::IptablesLegacy, family),
            &facts(NatMode::IptablesNft, family),
            kube_proxy_nftables(family),
        )
    };
    tracing::debug!(%family, mode = %detection.mode, reason = %detection.reason, "NAT mode detected");
    detection
}

/// Whether kube-proxy's nftables table of `family` exists here (false if it
/// cannot be read: then the iptables facts decide).
pub fn kube_proxy_nftables(family: Family) -> bool {
    matches!(
        nft_dump::table_has_chains(family, KUBE_PROXY_TABLE, "kube-proxy's nftables table"),
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
                Family::V4,
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
            choose(
                Family::V4,
                true,
                None,
                &f(true, 50, true),
                &f(true, 0, false),
                false
            )
            .mode,
            NatMode::Nftables
        );
    }

    #[test]
    fn kube_proxy_in_nftables_mode_means_nftables() {
        assert_eq!(
            choose(
                Family::V4,
                false,
                None,
                &f(true, 0, false),
                &f(true, 0, true),
                true
            )
            .mode,
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
            choose(
                Family::V4,
                false,
                None,
                &f(true, 0, false),
                &kubelet_only,
                true
            )
            .mode,
            NatMode::Nftables,
            "kubelet's own KUBE-FIREWALL rules do not count"
        );
        assert_eq!(
            choose(
                Family::V4,
                false,
                None,
                &f(true, 0, false),
                &f(true, 3, true),
                true
            )
            .mode,
            NatMode::IptablesNft,
            "iptables rules in use keep weft on iptables"
        );
    }

    #[test]
    fn follows_the_host() {
        assert_eq!(
            choose(
                Family::V4,
                false,
                None,
                &f(true, 30, false),
                &f(true, 2, false),
                false
            )
            .mode,
            NatMode::IptablesLegacy
        );
        assert_eq!(
            choose(
                Family::V4,
                false,
                None,
                &f(true, 0, false),
                &f(true, 2, false),
                false
            )
            .mode,
            NatMode::IptablesNft
        );
        assert_eq!(
            choose(
                Family::V4,
                false,
                None,
                &f(true, 1, true),
                &f(true, 90, false),
                false
            )
            .mode,
            NatMode::IptablesLegacy,
            "hint chains beat counts"
        );
        assert_eq!(
            choose(
                Family::V4,
                false,
                None,
                &f(true, 0, false),
                &f(true, 0, false),
                false
            )
            .mode,
            NatMode::IptablesNft
        );
        assert_eq!(
            choose(
                Family::V4,
                false,
                None,
                &f(true, 0, false),
                &f(false, 0, false),
                false
            )
            .mode,
            NatMode::IptablesLegacy
        );
        let d = choose(
            Family::V4,
            false,
            None,
            &f(true, 30, false),
            &f(true, 2, false),
            false,
        );
        assert!(d.reason.contains("30 rules"), "{}", d.reason);
    }

    #[test]
    fn v6_reasons_name_the_v6_tools_and_table() {
        let d = choose(
            Family::V6,
            false,
            None,
            &f(true, 30, false),
            &f(true, 2, false),
            false,
        );
        assert_eq!(d.mode, NatMode::IptablesLegacy);
        assert!(
            d.reason
                .contains("ip6tables-legacy (30 rules vs 2 in ip6tables-nft)"),
            "{}",
            d.reason
        );
        let d = choose(
            Family::V6,
            false,
            None,
            &f(true, 0, false),
            &f(true, 0, true),
            true,
        );
        assert_eq!(d.mode, NatMode::Nftables);
        assert!(d.reason.contains("table ip6 kube-proxy"), "{}", d.reason);
        let d = choose(
            Family::V6,
            false,
            None,
            &f(true, 0, true),
            &f(true, 0, false),
            false,
        );
        assert_eq!(d.mode, NatMode::IptablesLegacy);
        assert!(d.reason.contains("in ip6tables-legacy"), "{}", d.reason);
    }
}
