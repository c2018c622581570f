//! iptables-legacy and iptables-nft: flannel's chains `FLANNEL-POSTRTG` (nat)
//! and `FLANNEL-FWD` (filter), jumped to from `POSTROUTING` and `FORWARD`.
//! One backend works in one family: `iptables-*` for IPv4, `ip6tables-*`
//! (the same chains, comments and layout) for IPv6.
//!
//! Reading is one `iptables-*-save` (skipped when weft's chains certainly
//! do not exist: see `certainly_absent`); writing is one
//! `iptables-*-restore --noflush -w`: the chain bodies are declared (which
//! empties them) and refilled, missing jump rules appended, duplicates and
//! chains of a switched-off option removed — all in one transaction per
//! table, never rule by rule.

use std::time::Duration;

use crate::command::{run, run_writer};
use crate::error::NatError;
use crate::family::Family;
use crate::nft_dump;
use crate::render::{self, iptables_jump, iptables_place};
use crate::rules::{Chain, RuleSet};
use crate::{NatBackend, NatMode, Snapshot};

/// Which iptables binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `iptables-legacy*`.
    Legacy,
    /// `iptables-nft*`.
    Nft,
}

/// The iptables backend of one flavor and family.
#[derive(Debug, Clone)]
pub struct IptablesBackend {
    flavor: Flavor,
    family: Family,
    timeout: Duration,
    /// A line appended to every restore payload (tests of atomicity only).
    poison: Option<String>,
    /// The last observation found something of weft's.
    chains_seen: bool,
}

impl IptablesBackend {
    /// `flavor` in `family`.
    pub fn new(flavor: Flavor, family: Family) -> Self {
        IptablesBackend {
            flavor,
            family,
            timeout: Duration::from_secs(10),
            poison: None,
            chains_seen: false,
        }
    }

    /// `iptables-legacy` (IPv4) or `ip6tables-legacy` (IPv6).
    pub fn legacy(family: Family) -> Self {
        Self::new(Flavor::Legacy, family)
    }

    /// `iptables-nft` (IPv4) or `ip6tables-nft` (IPv6).
    pub fn nft(family: Family) -> Self {
        Self::new(Flavor::Nft, family)
    }

    /// A backend whose restores carry one rule the kernel refuses, to show
    /// that a failed apply leaves the previous rules in place. Tests only.
    #[doc(hidden)]
    pub fn with_bad_line_for_tests(mode: NatMode, family: Family) -> Self {
        let flavor = if mode == NatMode::IptablesLegacy {
            Flavor::Legacy
        } else {
            Flavor::Nft
        };
        let mut b = Self::new(flavor, family);
        b.poison = Some("-A FLANNEL-POSTRTG -j NO-SUCH-TARGET".into());
        b
    }

    /// The flavor's binary of this family: `binary("-save")` is
    /// `iptables-legacy-save`, `ip6tables-nft-save`, ….
    pub fn binary(&self, tool: &str) -> String {
        binary(self.flavor, self.family, tool)
    }

    /// Whether none of weft's (or flannel's) chains can exist, known without
    /// running a process: for iptables-legacy, no table at all of this
    /// family has been instantiated in this network namespace
    /// (`ip_tables_names` or `ip6_tables_names`); for iptables-nft, one
    /// netlink dump finds no chain of that name in any table of family `ip`
    /// (or `ip6`). (A jump
    /// needs its target chain, so no jump can exist either.) `false` when unsure: then
    /// `iptables-save` is read. True on a fresh node before anything made
    /// rules, and for the flavor a host does not use. Must be called from a
    /// thread in the namespace to look at.
    pub fn certainly_absent(&self) -> bool {
        match self.flavor {
            Flavor::Legacy => {
                // The calling thread's namespace (weft's loop thread may have
                // setns'd). No such file: ip_tables is not even loaded.
                let names = match self.family {
                    Family::V4 => "/proc/thread-self/net/ip_tables_names",
                    Family::V6 => "/proc/thread-self/net/ip6_tables_names",
                };
                match std::fs::read_to_string(names) {
                    Ok(names) => names.trim().is_empty(),
                    Err(e) => {
                        e.kind() == std::io::ErrorKind::NotFound
                            && std::path::Path::new("/proc/thread-self/net").is_dir()
                    }
                }
            }
            Flavor::Nft => matches!(
                nft_dump::chain_names(
                    self.family,
                    &format!("reading the chains of family {}", self.family.nft_family())
                ),
                Ok(Some(names)) if !names.iter().any(|n| OUR_CHAINS.contains(&n.as_str()))
            ),
        }
    }

    /// The `iptables-save` output of the nat and filter tables.
    pub fn save(&self) -> Result<String, NatError> {
        run(&self.binary("-save"), &[], None, self.timeout, self.mode())
    }

    fn restore(&self, payload: &str) -> Result<(), NatError> {
        let poisoned;
        let payload = match &self.poison {
            Some(line) => {
                poisoned = payload.replacen("COMMIT\n", &format!("{line}\nCOMMIT\n"), 1);
                poisoned.as_str()
            }
            None => payload,
        };
        tracing::debug!(mode = %self.mode(), family = %self.family, %payload, "iptables-restore");
        run_writer(
            &self.binary("-restore"),
            &["--noflush", "-w", "5"],
            payload,
            self.timeout,
            self.mode(),
        )
    }
}

/// The binary of `flavor` in `family` with `tool` appended (`""`, `-save`,
/// `-restore`).
pub(crate) fn binary(flavor: Flavor, family: Family, tool: &str) -> String {
    let flavor = match flavor {
        Flavor::Legacy => "legacy",
        Flavor::Nft => "nft",
    };
    format!("{}-{flavor}{tool}", family.iptables())
}

/// weft's (and flannel's) chain names.
const OUR_CHAINS: [&str; 2] = [render::POSTRTG_CHAIN, render::FWD_CHAIN];

/// What `iptables-save` shows of weft's chains, per table.
#[derive(Debug, Default)]
struct Seen {
    /// (table, chain) declared.
    chains: Vec<(String, String)>,
    /// (table, line) jump rules into weft's chains.
    jumps: Vec<(String, String)>,
    /// (table, line) rules inside weft's chains, in order.
    rules: Vec<(String, String)>,
}

fn parse_save(save: &str) -> Seen {
    let mut seen = Seen::default();
    let mut table = String::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if OUR_CHAINS.contains(&name) {
                seen.chains.push((table.clone(), name.to_string()));
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split_whitespace().next().unwrap_or_default();
            if OUR_CHAINS.contains(&chain) {
                seen.rules.push((table.clone(), line.to_string()));
            } else if OUR_CHAINS
                .iter()
                .any(|c| line.ends_with(&format!("-j {c}")))
            {
                seen.jumps.push((table.clone(), line.to_string()));
            }
        }
    }
    seen
}

impl Seen {
    /// Back from the canonical lines of [`Seen::snapshot`].
    fn from_snapshot(snapshot: &Snapshot) -> Seen {
        let mut seen = Seen::default();
        for line in &snapshot.0 {
            let Some((table, rest)) = line.split_once(' ') else {
                continue;
            };
            if let Some(name) = rest.strip_prefix(':') {
                seen.chains.push((table.to_string(), name.to_string()));
            } else {
                let chain = rest
                    .strip_prefix("-A ")
                    .and_then(|r| r.split_whitespace().next());
                if chain.is_some_and(|c| OUR_CHAINS.contains(&c)) {
                    seen.rules.push((table.to_string(), rest.to_string()));
                } else {
                    seen.jumps.push((table.to_string(), rest.to_string()));
                }
            }
        }
        seen
    }

    /// Canonical lines: per chain of ours, its declaration, its jumps, its body.
    fn snapshot(&self) -> Snapshot {
        let mut lines = Vec::new();
        for chain in [Chain::Postrouting, Chain::Forward] {
            let (table, builtin, name) = iptables_place(chain);
            if self.chains.iter().any(|(t, c)| t == table && c == name) {
                lines.push(format!("{table} :{name}"));
            }
            for (t, j) in &self.jumps {
                if t == table
                    && j.starts_with(&format!("-A {builtin} "))
                    && j.ends_with(&format!("-j {name}"))
                {
                    lines.push(format!("{t} {j}"));
                }
            }
            for (t, r) in &self.rules {
                if t == table && r.starts_with(&format!("-A {name} ")) {
                    lines.push(format!("{t} {r}"));
                }
            }
        }
        // Jumps from elsewhere (another chain, another table) are ours to remove too.
        for (t, j) in &self.jumps {
            let known = [Chain::Postrouting, Chain::Forward].into_iter().any(|c| {
                let (table, builtin, name) = iptables_place(c);
                t == table
                    && j.starts_with(&format!("-A {builtin} "))
                    && j.ends_with(&format!("-j {name}"))
            });
            if !known {
                lines.push(format!("{t} {j}"));
            }
        }
        Snapshot(lines)
    }
}

/// The restore payload that turns `seen` into `rules`.
fn payload(rules: &RuleSet, seen: &Seen) -> String {
    let mut out = String::new();
    for (chain, list) in rules.chains() {
        let (table, builtin, name) = iptables_place(chain);
        let jump = iptables_jump(chain);
        let jumps: Vec<&String> = seen
            .jumps
            .iter()
            .filter(|(t, _)| t == table)
            .map(|(_, j)| j)
            .collect();
        let declared = seen.chains.iter().any(|(t, c)| t == table && c == name);
        let mut body = String::new();
        if list.is_empty() {
            // Switched off: remove jumps, then the chain.
            for j in &jumps {
                body.push_str(&format!("-D{}\n", &j[2..]));
            }
            if declared {
                body.push_str(&format!("-F {name}\n-X {name}\n"));
            }
        } else {
            body.push_str(&format!(":{name} - [0:0]\n"));
            for r in list {
                body.push_str(&render::iptables_rule(r));
                body.push('\n');
            }
            // Keep exactly one well-formed jump from the built-in chain.
            let mut kept = false;
            for j in &jumps {
                if **j == jump && !kept {
                    kept = true;
                } else {
                    body.push_str(&format!("-D{}\n", &j[2..]));
                }
            }
            if !kept {
                body.push_str(&jump);
                body.push('\n');
            }
        }
        if !body.is_empty() {
            out.push_str(&format!("*{table}\n{body}COMMIT\n"));
        }
        let _ = builtin;
    }
    out
}

impl NatBackend for IptablesBackend {
    fn mode(&self) -> NatMode {
        match self.flavor {
            Flavor::Legacy => NatMode::IptablesLegacy,
            Flavor::Nft => NatMode::IptablesNft,
        }
    }

    fn family(&self) -> Family {
        self.family
    }

    fn change_signal(&self) -> Result<Box<dyn crate::signal::ChangeSignal>, NatError> {
        Ok(match self.flavor {
            // x_tables sends nothing; its commands (of both families) open the lock file.
            Flavor::Legacy => Box::new(crate::signal::XtablesLockWatch::open()?),
            Flavor::Nft => Box::new(crate::signal::NfTablesEvents::open(self.family)?),
        })
    }

    fn observe(&mut self) -> Result<Snapshot, NatError> {
        // Where the last look found weft's chains, the check could only say
        // "not sure": go straight to iptables-save (the loop's steady state).
        if !self.chains_seen && self.certainly_absent() {
            return Ok(Seen::default().snapshot());
        }
        let snapshot = parse_save(&self.save()?).snapshot();
        self.chains_seen = !snapshot.is_empty();
        Ok(snapshot)
    }

    fn expected(&self, rules: &RuleSet) -> Snapshot {
        let mut lines = Vec::new();
        for (chain, list) in rules.chains() {
            if list.is_empty() {
                continue;
            }
            let (table, _, name) = iptables_place(chain);
            lines.push(format!("{table} :{name}"));
            lines.push(format!("{table} {}", iptables_jump(chain)));
            for r in list {
                lines.push(format!("{table} {}", render::iptables_rule(r)));
            }
        }
        Snapshot(lines)
    }

    fn apply(&mut self, rules: &RuleSet, current: &Snapshot) -> Result<(), NatError> {
        crate::error::ensure_family(self.family, rules)?;
        // The observation says which chains and jump rules exist; no second read.
        let seen = Seen::from_snapshot(current);
        let payload = payload(rules, &seen);
        if payload.is_empty() {
            return Ok(());
        }
        self.restore(&payload)
    }

    fn remove(&mut self) -> Result<(), NatError> {
        if self.certainly_absent() {
            return Ok(());
        }
        let seen = parse_save(&self.save()?);
        let payload = payload(&RuleSet::empty(self.family), &seen);
        if payload.is_empty() {
            return Ok(());
        }
        self.restore(&payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Options, SnatRules};

    fn seed() -> RuleSet {
        SnatRules::build(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.0.0/24".parse().unwrap(),
            Options::default(),
        )
        .unwrap()
    }

    const FOREIGN: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-POSTROUTING - [0:0]\n-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\nCOMMIT\n";

    #[test]
    fn cold_payload_creates_chains_bodies_and_jumps() {
        let p = payload(&seed(), &parse_save(FOREIGN));
        assert!(
            p.starts_with("*nat\n:FLANNEL-POSTRTG - [0:0]\n-A FLANNEL-POSTRTG -m mark"),
            "{p}"
        );
        assert!(p.contains("-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\nCOMMIT\n*filter\n"));
        assert!(p.ends_with(
            "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\nCOMMIT\n"
        ));
        assert!(
            !p.contains("KUBE"),
            "foreign rules are never in the payload"
        );
    }

    #[test]
    fn observed_equal_to_expected_after_a_restore_of_the_payload() {
        // What iptables-save prints after the cold payload was restored.
        let rules = seed();
        let mut save = String::from("*nat\n:POSTROUTING ACCEPT [0:0]\n:FLANNEL-POSTRTG - [0:0]\n");
        save.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
        save.push_str(&format!("{}\n", iptables_jump(Chain::Postrouting)));
        for r in &rules.postrouting {
            save.push_str(&format!("{}\n", render::iptables_rule(r)));
        }
        save.push_str("COMMIT\n*filter\n:FORWARD ACCEPT [0:0]\n:FLANNEL-FWD - [0:0]\n");
        save.push_str(&format!("{}\n", iptables_jump(Chain::Forward)));
        for r in &rules.forward {
            save.push_str(&format!("{}\n", render::iptables_rule(r)));
        }
        save.push_str("COMMIT\n");
        let backend = IptablesBackend::legacy(Family::V4);
        let snapshot = parse_save(&save).snapshot();
        assert_eq!(snapshot, backend.expected(&rules));
        let back = Seen::from_snapshot(&snapshot);
        let again = parse_save(&save);
        assert_eq!((back.chains, back.rules), (again.chains, again.rules));
        assert_eq!(
            back.jumps.len(),
            2,
            "the foreign KUBE jump is not in the snapshot"
        );
        // Present jumps are kept, not duplicated.
        let p = payload(&rules, &parse_save(&save));
        assert_eq!(p.matches("-j FLANNEL-POSTRTG").count(), 0, "{p}");
    }

    #[test]
    fn binaries_by_flavor_and_family() {
        assert_eq!(
            IptablesBackend::legacy(Family::V4).binary("-save"),
            "iptables-legacy-save"
        );
        assert_eq!(
            IptablesBackend::nft(Family::V6).binary("-restore"),
            "ip6tables-nft-restore"
        );
        assert_eq!(
            IptablesBackend::legacy(Family::V6).binary(""),
            "ip6tables-legacy"
        );
    }

    #[test]
    fn v6_payload_is_the_v4_layout_with_v6_networks() {
        let rules = SnatRules::build(
            "fc00::/48".parse().unwrap(),
            "fc00:0:0:1::/64".parse().unwrap(),
            Options::default(),
        )
        .unwrap();
        let p = payload(&rules, &parse_save(""));
        assert!(p.contains("\n-A FLANNEL-POSTRTG -s fc00::/48 ! -d ff00::/8 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully\n"), "{p}");
        assert!(p.contains("-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\nCOMMIT\n*filter\n"), "{p}");
        let v4 = payload(&seed(), &parse_save(""));
        let shape = |text: &str| -> Vec<String> {
            text.lines()
                .map(|l| {
                    l.split(' ')
                        .map(|w| {
                            if w.contains('/') && !w.starts_with("0x") {
                                "NET"
                            } else {
                                w
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        };
        assert_eq!(shape(&p), shape(&v4), "same chains, order and matches");
        let mut b = IptablesBackend::legacy(Family::V4);
        let e = b.apply(&rules, &Snapshot::default()).unwrap_err();
        assert!(matches!(e, NatError::WrongFamily { .. }), "{e}");
    }

    #[test]
    fn duplicate_jumps_are_removed_and_switched_off_chains_deleted() {
        let save = format!(
            "*nat\n:FLANNEL-POSTRTG - [0:0]\n{j}\n{j}\nCOMMIT\n*filter\n:FLANNEL-FWD - [0:0]\n{f}\n-A FLANNEL-FWD -s 10.244.0.0/16 -j ACCEPT\nCOMMIT\n",
            j = iptables_jump(Chain::Postrouting),
            f = iptables_jump(Chain::Forward)
        );
        let rules = SnatRules::build(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.0.0/24".parse().unwrap(),
            Options {
                forward: false,
                ..Options::default()
            },
        )
        .unwrap();
        let p = payload(&rules, &parse_save(&save));
        assert_eq!(
            p.matches("-D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG")
                .count(),
            1,
            "{p}"
        );
        assert!(p.contains("*filter\n-D FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n-F FLANNEL-FWD\n-X FLANNEL-FWD\nCOMMIT\n"), "{p}");
    }
}

/// Render → parse round trips over random rule sets (proptest): what weft
/// writes, read back from an `iptables-save` that also holds other owners'
/// chains and rules, is exactly what it expects — so a reconcile after an
/// apply finds nothing to do, and nothing foreign is taken for weft's.
#[cfg(test)]
mod properties {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::rules::Options;
    use crate::SnatRules;
    use ipnet::{IpNet, Ipv4Net, Ipv6Net};
    use proptest::prelude::*;

    /// flanneld's three switches.
    fn options() -> impl Strategy<Value = Options> {
        any::<(bool, bool, bool)>().prop_map(|(masquerade, fully_random, forward)| Options {
            masquerade,
            fully_random,
            forward,
        })
    }

    /// An IPv6 cluster network (/16 to /64 in fc00::/7, never multicast) and
    /// a node subnet in it (up to 24 bits longer).
    fn inputs_v6() -> impl Strategy<Value = (IpNet, IpNet, Options)> {
        (
            0xfc00u16..=0xfdff,
            any::<u128>(),
            16u8..=64,
            1u8..=24,
            any::<u128>(),
            options(),
        )
            .prop_map(|(first, bits, len, extra, pick, options)| {
                let base = (u128::from(first) << 112) | (bits >> 16);
                let network = Ipv6Net::new(base.into(), len).unwrap().trunc();
                let sub_len = len + extra;
                let subnets = 1u128 << extra;
                let offset = (pick % subnets) << (128 - u32::from(sub_len));
                let subnet =
                    Ipv6Net::new((u128::from(network.network()) + offset).into(), sub_len).unwrap();
                (network.into(), subnet.into(), options)
            })
    }

    /// A cluster network of either family with a node subnet in it.
    fn inputs() -> impl Strategy<Value = (IpNet, IpNet, Options)> {
        prop_oneof![inputs_v4(), inputs_v6()]
    }

    /// A cluster network (/8 to /20, never multicast) and a node subnet in it.
    fn inputs_v4() -> impl Strategy<Value = (IpNet, IpNet, Options)> {
        (
            1u8..200,
            8u8..=20,
            any::<u32>(),
            21u8..=28,
            any::<(bool, bool, bool)>(),
        )
            .prop_map(
                |(first, len, pick, sub_len, (masquerade, fully_random, forward))| {
                    let network = Ipv4Net::new(std::net::Ipv4Addr::new(first, 17, 0, 0), len)
                        .unwrap()
                        .trunc();
                    let subnets = 1u32 << (sub_len - len);
                    let offset = (pick % subnets) << (32 - sub_len);
                    let subnet = Ipv4Net::new(
                        std::net::Ipv4Addr::from(u32::from(network.network()) + offset),
                        sub_len,
                    )
                    .unwrap();
                    (
                        network.into(),
                        subnet.into(),
                        Options {
                            masquerade,
                            fully_random,
                            forward,
                        },
                    )
                },
            )
    }

    /// What `iptables-save` prints after weft's apply, with kube-proxy's and
    /// Docker's chains around weft's.
    fn save_text(rules: &RuleSet) -> String {
        let mut out = String::new();
        for (chain, list) in rules.chains() {
            let (table, _, name) = iptables_place(chain);
            out.push_str(&format!(
                "*{table}\n:KUBE-POSTROUTING - [0:0]\n:DOCKER - [0:0]\n"
            ));
            if !list.is_empty() {
                out.push_str(&format!(":{name} - [0:0]\n"));
                out.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
                out.push_str(&iptables_jump(chain));
                out.push('\n');
                for r in list {
                    out.push_str(&render::iptables_rule(r));
                    out.push('\n');
                }
            }
            out.push_str("-A DOCKER -j RETURN\nCOMMIT\n");
        }
        out
    }

    proptest! {
        #[test]
        fn what_weft_writes_reads_back_as_expected((network, subnet, options) in inputs()) {
            let rules = SnatRules::build(network, subnet, options).unwrap();
            let backend = IptablesBackend::nft(rules.family);
            let seen = parse_save(&save_text(&rules)).snapshot();
            prop_assert_eq!(&seen, &backend.expected(&rules));
            // The canonical lines round-trip on their own too.
            prop_assert_eq!(Seen::from_snapshot(&seen).snapshot(), seen);
        }
    }
}
