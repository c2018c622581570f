//! Native nftables backend: table `ip flannel-ipv4` (IPv4) or `ip6
//! flannel-ipv6` (IPv6) with chains `postrtg` (nat, postrouting, srcnat) and
//! `forward` (filter, forward, filter), as flannel's `EnableNFTables` mode
//! has them. One backend programs one family's table and never touches the
//! other's.
//!
//! Every write is one netlink batch built with rustables: add the table
//! (creating it if missing), delete it, add it again (so it is empty), add the
//! chains and every rule. The kernel applies the batch as one transaction: on
//! any refusal the previous table stays as it was. rustables cannot express
//! masquerade flags, so `fully-random` is added to the finalized batch by
//! [`crate::masq_flags`] (which also sends it).
//!
//! Every rule carries nft's comment (`comment "weft: … 1a2b3c4d"`, see
//! [`render::nft_comment`]), a fingerprint of its exact text. Reading back,
//! weft compares the table, the chains (type, hook, priority, policy) and the
//! comments of the rules in order; a rule without a comment shows up as a
//! foreign rule with its expression names.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::io;
use std::time::Instant;

use rustables::error::{DecodeError, QueryError};
use rustables::expr::{
    Bitwise, Cmp, CmpOp, HighLevelPayload, IPv4HeaderField, IPv6HeaderField, Immediate, Masquerade,
    Meta, MetaType, NetworkHeaderField, VerdictKind,
};
use rustables::{
    list_tables, Batch, Chain, ChainPolicy, ChainType, Hook, HookClass, MsgType, ProtocolFamily,
    Rule, Table,
};

use crate::error::NatError;
use crate::family::Family;
use crate::masq_flags::{self, NF_NAT_RANGE_PROTO_RANDOM_FULLY};
use crate::nfnl;
use crate::nft_dump::{dump, parse_chains, parse_rules, NFT_MSG_GETCHAIN, NFT_MSG_GETRULE};
use crate::render::{self, NFT_FORWARD, NFT_POSTRTG};
use crate::rules::{self, Addr, RuleSet, Verdict};
use crate::{NatBackend, NatMode, Snapshot};

/// `NFTNL_UDATA_RULE_COMMENT`: the user-data TLV nft prints as `comment "…"`.
pub(crate) const UDATA_RULE_COMMENT: u8 = 0;

/// How a chain is hooked.
#[derive(Debug, Clone, Copy)]
struct ChainSpec {
    name: &'static str,
    kind: ChainType,
    hook: HookClass,
    priority: i32,
}

/// `type nat hook postrouting priority srcnat; policy accept;`
const POSTRTG: ChainSpec = ChainSpec {
    name: NFT_POSTRTG,
    kind: ChainType::Nat,
    hook: HookClass::PostRouting,
    priority: 100,
};
/// `type filter hook forward priority filter; policy accept;`
const FORWARD: ChainSpec = ChainSpec {
    name: NFT_FORWARD,
    kind: ChainType::Filter,
    hook: HookClass::Forward,
    priority: 0,
};

impl ChainSpec {
    /// The snapshot line, as [`DumpedChain::line`] prints an observed chain.
    fn line(&self) -> String {
        format!(
            "chain {} {} {} {} accept",
            self.name,
            chain_type_name(self.kind),
            hook_name(self.hook as u32),
            self.priority
        )
    }
}

fn chain_type_name(t: ChainType) -> &'static str {
    match t {
        ChainType::Filter => "filter",
        ChainType::Route => "route",
        ChainType::Nat => "nat",
    }
}

pub(crate) fn hook_name(hook: u32) -> String {
    match hook {
        0 => "prerouting".into(),
        1 => "input".into(),
        2 => "forward".into(),
        3 => "output".into(),
        4 => "postrouting".into(),
        n => format!("hook{n}"),
    }
}

/// Native nftables in one family, through rustables and one netlink batch
/// per write.
#[derive(Debug, Clone)]
pub struct NftablesBackend {
    family: Family,
    masq_flags_override: Option<u32>,
}

/// A finalized, patched batch and what each message is, by sequence number.
struct Built {
    bytes: Vec<u8>,
    what: BTreeMap<u32, String>,
}

/// Numbers messages as rustables does: batch-begin is 0, then 1, 2, … per `add`.
struct Numbered {
    batch: Batch,
    next: u32,
    what: BTreeMap<u32, String>,
}

impl Numbered {
    fn new() -> Self {
        Numbered {
            batch: Batch::new(),
            next: 1,
            what: BTreeMap::new(),
        }
    }

    /// Records the next message's description and returns its sequence number.
    fn note(&mut self, what: String) -> u32 {
        let seq = self.next;
        self.what.insert(seq, what);
        self.next += 1;
        seq
    }
}

impl NftablesBackend {
    /// The backend for `family`'s table (it holds no state: every call reads
    /// the kernel).
    pub fn new(family: Family) -> Self {
        NftablesBackend {
            family,
            masq_flags_override: None,
        }
    }

    /// `ip flannel-ipv4` or `ip6 flannel-ipv6`, as nft names the table.
    fn table_name(&self) -> String {
        format!("{} {}", self.family.nft_family(), self.family.nft_table())
    }

    /// Test hook: puts `flags` on every masquerade expression instead of the
    /// rule's own (e.g. `0x1000`, which the kernel refuses with EINVAL, to
    /// check that a refused batch changes nothing).
    #[doc(hidden)]
    pub fn with_masq_flags_override(mut self, flags: u32) -> Self {
        self.masq_flags_override = Some(flags);
        self
    }

    /// The masquerade flags of a rule's verdict.
    fn masq_flags(&self, verdict: Verdict) -> u32 {
        match verdict {
            Verdict::Masquerade { fully_random } => {
                self.masq_flags_override.unwrap_or(if fully_random {
                    NF_NAT_RANGE_PROTO_RANDOM_FULLY
                } else {
                    0
                })
            }
            Verdict::Return | Verdict::Accept => 0,
        }
    }

    /// The whole replacing batch for `rules` (which must not be empty).
    /// The batch for `rules`. `fresh`: the table does not exist, so it is
    /// only added (emptying an existing table costs the kernel a grace period,
    /// ~10 ms, which a cold start does not need to pay).
    fn build(&self, rules: &RuleSet, fresh: bool) -> Result<Built, NatError> {
        let mut b = Numbered::new();
        let mut flags: BTreeMap<u32, u32> = BTreeMap::new();
        let name = self.table_name();
        let table = Table::new(self.family.protocol_family()).with_name(self.family.nft_table());
        b.note(format!("add table {name}"));
        b.batch.add(&table, MsgType::Add);
        if !fresh {
            b.note(format!("delete table {name}"));
            b.batch.add(&table, MsgType::Del);
            b.note(format!("add table {name} (again, empty)"));
            b.batch.add(&table, MsgType::Add);
        }
        for (spec, list) in [(POSTRTG, &rules.postrouting), (FORWARD, &rules.forward)] {
            if list.is_empty() {
                continue;
            }
            let chain = Chain::new(&table)
                .with_name(spec.name)
                .with_type(spec.kind)
                .with_hook(Hook::new(spec.hook, spec.priority))
                .with_policy(ChainPolicy::Accept);
            b.note(format!("add chain {}", spec.name));
            b.batch.add(&chain, MsgType::Add);
            for (i, r) in list.iter().enumerate() {
                let label = format!("rule {} of chain {} ({:?})", i + 1, spec.name, r.label);
                let rule = nft_rule(&chain, r).map_err(|detail| NatError::Io {
                    context: format!("building {label}"),
                    source: io::Error::new(io::ErrorKind::InvalidInput, detail),
                })?;
                let seq = b.note(label);
                b.batch.add(&rule, MsgType::Add);
                let f = self.masq_flags(r.verdict);
                if f != 0 {
                    flags.insert(seq, f);
                }
            }
        }
        let raw = b.batch.finalize();
        let bytes =
            masq_flags::add_masq_flags_by_seq(&raw, |seq| flags.get(&seq).copied().unwrap_or(0))?;
        Ok(Built {
            bytes,
            what: b.what,
        })
    }

    /// Deletes those of `tables` that exist, in one batch.
    fn delete_tables(&self, tables: &[(ProtocolFamily, &str)]) -> Result<(), NatError> {
        let present = list_tables().map_err(|e| query_error("listing nftables tables", &e))?;
        let mut b = Numbered::new();
        let mut names = Vec::new();
        for (family, name) in tables {
            if !present.iter().any(|t| table_is(t, *family, name)) {
                continue;
            }
            let fam = family_name(*family);
            names.push(format!("{fam} {name}"));
            let table = Table::new(*family).with_name(*name);
            // Adding first makes the delete succeed even if someone removed
            // the table since it was listed.
            b.note(format!("add table {fam} {name}"));
            b.batch.add(&table, MsgType::Add);
            b.note(format!("delete table {fam} {name}"));
            b.batch.add(&table, MsgType::Del);
        }
        if names.is_empty() {
            return Ok(());
        }
        let what = format!("deleting nftables table(s) {}", names.join(", "));
        nfnl::send_batch_with(&what, &b.batch.finalize(), &|seq| b.what.get(&seq).cloned())?;
        tracing::debug!(tables = %names.join(", "), "nftables tables deleted");
        Ok(())
    }

    fn observe_once(&self) -> Result<Snapshot, ObserveError> {
        let (family, name) = (self.family, self.family.nft_table());
        let tables = list_tables().map_err(ObserveError::Query)?;
        let Some(table) = tables
            .iter()
            .find(|t| table_is(t, family.protocol_family(), name))
        else {
            return Ok(Snapshot::default());
        };
        let mut head = format!("table {}", self.table_name());
        if let Some(flags) = table.get_flags().filter(|f| **f != 0) {
            head.push_str(&format!(" flags {flags:#x}"));
        }
        // Chains and rules by our own dumps for the family: rustables asks
        // with AF_UNSPEC, for which the kernel dumps the rules of the first
        // table of that name in any family and stops (an `inet
        // flannel-ipv4` would hide ours), and it reads policy drop as accept.
        let what = format!("listing nftables table {}", self.table_name());
        let Some(chain_bytes) =
            dump(NFT_MSG_GETCHAIN, family, Some(name), &what).map_err(ObserveError::Nat)?
        else {
            return Err(ObserveError::Interrupted);
        };
        let Some(rule_bytes) =
            dump(NFT_MSG_GETRULE, family, Some(name), &what).map_err(ObserveError::Nat)?
        else {
            return Err(ObserveError::Interrupted);
        };
        let chains = parse_chains(&chain_bytes, family, name).map_err(|e| {
            ObserveError::Nat(NatError::Kernel {
                what: what.clone(),
                detail: format!("unreadable chain dump: {e}"),
            })
        })?;
        let rules = parse_rules(&rule_bytes, family, name);
        let mut blocks: Vec<((u8, String), Vec<String>)> = Vec::new();
        for chain in chains {
            let name = chain.name.clone();
            let mut block = vec![chain.line()];
            match &rules {
                Ok(rules) => {
                    for r in rules.iter().filter(|r| r.chain == name) {
                        block.push(format!("{name}: {}", r.text()));
                    }
                }
                // Not something weft wrote: show it, so the table is rewritten.
                Err(e) => block.push(format!("{name}: unreadable rules ({e})")),
            }
            let rank = match name.as_str() {
                NFT_POSTRTG => 0,
                NFT_FORWARD => 1,
                _ => 2,
            };
            blocks.push(((rank, name), block));
        }
        blocks.sort_by(|a, b| a.0.cmp(&b.0));
        let mut lines = vec![head];
        lines.extend(blocks.into_iter().flat_map(|(_, block)| block));
        Ok(Snapshot(lines))
    }
}

impl NatBackend for NftablesBackend {
    fn mode(&self) -> NatMode {
        NatMode::Nftables
    }

    fn family(&self) -> Family {
        self.family
    }

    fn change_signal(&self) -> Result<Box<dyn crate::signal::ChangeSignal>, NatError> {
        Ok(Box::new(crate::signal::NfTablesEvents::open(self.family)?))
    }

    fn observe(&mut self) -> Result<Snapshot, NatError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.observe_once() {
                Ok(s) => return Ok(s),
                // The ruleset changed during the dump: read again.
                Err(ObserveError::Query(QueryError::ProcessNetlinkError(
                    DecodeError::ConcurrentGenerationUpdate,
                )))
                | Err(ObserveError::Interrupted)
                    if attempt < 5 => {}
                Err(ObserveError::Query(e)) => {
                    return Err(query_error(
                        &format!("reading nftables table {}", self.table_name()),
                        &e,
                    ))
                }
                Err(ObserveError::Interrupted) => {
                    return Err(NatError::Kernel {
                        what: format!("reading nftables table {}", self.table_name()),
                        detail: "the ruleset kept changing during 5 dumps".into(),
                    })
                }
                Err(ObserveError::Nat(e)) => return Err(e),
            }
        }
    }

    fn expected(&self, rules: &RuleSet) -> Snapshot {
        if rules.is_empty() {
            return Snapshot::default();
        }
        let mut lines = vec![format!("table {}", self.table_name())];
        for (spec, list) in [(POSTRTG, &rules.postrouting), (FORWARD, &rules.forward)] {
            if list.is_empty() {
                continue;
            }
            lines.push(spec.line());
            lines.extend(
                list.iter()
                    .map(|r| format!("{}: {}", spec.name, render::nft_comment(r))),
            );
        }
        Snapshot(lines)
    }

    fn apply(&mut self, rules: &RuleSet, current: &Snapshot) -> Result<(), NatError> {
        crate::error::ensure_family(self.family, rules)?;
        if rules.is_empty() {
            return self.remove();
        }
        let start = Instant::now();
        // An empty observation means no table: then nothing needs emptying. Should
        // one appear in the microseconds since, the next reconcile sees the
        // difference and replaces the table as a whole.
        let built = self.build(rules, current.is_empty())?;
        let table = self.table_name();
        let what = format!("the nftables batch for table {table}");
        nfnl::send_batch_with(&what, &built.bytes, &|seq| built.what.get(&seq).cloned())?;
        tracing::debug!(
            %table,
            bytes = built.bytes.len(),
            rules = rules.postrouting.len() + rules.forward.len(),
            elapsed = ?start.elapsed(),
            "nftables table replaced"
        );
        Ok(())
    }

    fn remove(&mut self) -> Result<(), NatError> {
        self.delete_tables(&[(self.family.protocol_family(), self.family.nft_table())])
    }
}

fn family_name(f: ProtocolFamily) -> &'static str {
    match f {
        ProtocolFamily::Ipv4 => "ip",
        ProtocolFamily::Ipv6 => "ip6",
        ProtocolFamily::Inet => "inet",
        ProtocolFamily::Arp => "arp",
        ProtocolFamily::Bridge => "bridge",
        ProtocolFamily::NetDev => "netdev",
        ProtocolFamily::DecNet => "decnet",
        ProtocolFamily::Unspec => "unspec",
    }
}

/// Whether a table listed by rustables is `family name`: its dump covers
/// every family and the family getter is not public, so compare with a copy
/// built in the wanted family.
fn table_is(t: &Table, family: ProtocolFamily, name: &str) -> bool {
    let mut probe = Table::new(family).with_name(name);
    if let Some(f) = t.get_flags() {
        probe.set_flags(*f);
    }
    if let Some(u) = t.get_userdata() {
        probe.set_userdata(u.clone());
    }
    probe == *t
}

/// Why one observation failed.
enum ObserveError {
    /// rustables' table listing failed.
    Query(QueryError),
    /// Our chain or rule dump failed.
    Nat(NatError),
    /// The ruleset changed during a dump.
    Interrupted,
}

/// nft's user data for `comment "<text>"`.
fn udata_for_comment(text: &str) -> Result<Vec<u8>, String> {
    let len = u8::try_from(text.len() + 1)
        .map_err(|_| format!("comment {text:?} is longer than 254 bytes"))?;
    let mut u = Vec::with_capacity(text.len() + 3);
    u.push(UDATA_RULE_COMMENT);
    u.push(len);
    u.extend_from_slice(text.as_bytes());
    u.push(0);
    Ok(u)
}

/// Which address of the network header a match reads.
#[derive(Debug, Clone, Copy)]
enum Direction {
    Source,
    Destination,
}

/// The header field of `direction` in `family`'s header: IPv4 saddr at
/// offset 12 and daddr at 16 (4 bytes each), IPv6 saddr at 8 and daddr at
/// 24 (16 bytes each).
fn header_field(family: Family, direction: Direction) -> NetworkHeaderField {
    match (family, direction) {
        (Family::V4, Direction::Source) => NetworkHeaderField::IPv4(IPv4HeaderField::Saddr),
        (Family::V4, Direction::Destination) => NetworkHeaderField::IPv4(IPv4HeaderField::Daddr),
        (Family::V6, Direction::Source) => NetworkHeaderField::IPv6(IPv6HeaderField::Saddr),
        (Family::V6, Direction::Destination) => NetworkHeaderField::IPv6(IPv6HeaderField::Daddr),
    }
}

/// `ip[6] saddr|daddr [!=] network/prefix`: payload of the whole address,
/// bitwise with the netmask (unless a host prefix), cmp with the network.
fn add_addr(rule: &mut Rule, direction: Direction, addr: Addr) -> Result<(), String> {
    let (net, op) = match addr {
        Addr::Any => return Ok(()),
        Addr::In(n) => (n, CmpOp::Eq),
        Addr::NotIn(n) => (n, CmpOp::Neq),
    };
    let family = Family::of(&net);
    rule.add_expr(HighLevelPayload::Network(header_field(family, direction)).build());
    if net.prefix_len() < family.max_prefix_len() {
        let mask = Family::octets(net.netmask());
        let xor = vec![0u8; mask.len()];
        rule.add_expr(Bitwise::new(mask, xor).map_err(|e| e.to_string())?);
    }
    rule.add_expr(Cmp::new(op, Family::octets(net.network())));
    Ok(())
}

/// One rule as rustables builds it, with its comment (masquerade flags are
/// added to the finalized batch).
fn nft_rule(chain: &Chain, r: &rules::Rule) -> Result<Rule, String> {
    let mut rule = Rule::new(chain).map_err(|e| e.to_string())?;
    if let Some((value, mask)) = r.mark {
        // `meta mark & mask == value`: the mark register is host-endian.
        rule.add_expr(Meta::new(MetaType::Mark));
        rule.add_expr(
            Bitwise::new(mask.to_ne_bytes(), 0u32.to_ne_bytes()).map_err(|e| e.to_string())?,
        );
        rule.add_expr(Cmp::new(CmpOp::Eq, (value & mask).to_ne_bytes()));
    }
    add_addr(&mut rule, Direction::Source, r.src)?;
    add_addr(&mut rule, Direction::Destination, r.dst)?;
    match r.verdict {
        Verdict::Return => rule.add_expr(Immediate::new_verdict(VerdictKind::Return)),
        Verdict::Accept => rule.add_expr(Immediate::new_verdict(VerdictKind::Accept)),
        Verdict::Masquerade { .. } => rule.add_expr(Masquerade::default()),
    }
    Ok(rule.with_userdata(udata_for_comment(&render::nft_comment(r))?))
}

/// A rustables error as [`NatError::Kernel`], with its causes and errno.
fn query_error(what: &str, e: &QueryError) -> NatError {
    let detail = match e {
        QueryError::NetlinkError(err) => {
            io::Error::from_raw_os_error(err.error.saturating_abs()).to_string()
        }
        other => {
            let mut s = other.to_string();
            let mut source = other.source();
            while let Some(cause) = source {
                s.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            s
        }
    };
    NatError::Kernel {
        what: what.to_string(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::masq_flags::masq_flags_in;
    use crate::nft_dump::{dump_request, udata_comment, DumpedChain, DumpedRule, NF_DROP};
    use crate::render::{NFT_TABLE, NFT_TABLE6};
    use crate::rules::{Options, SnatRules};
    use ipnet::IpNet;

    fn rules(options: Options) -> RuleSet {
        SnatRules::build(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.0.0/24".parse().unwrap(),
            options,
        )
        .unwrap()
    }

    #[test]
    fn batch_carries_fully_random_on_masquerade_rules_only() {
        let set = rules(Options::default());
        let built = NftablesBackend::new(Family::V4).build(&set, false).unwrap();
        // begin 0, tables 1-3, chain postrtg 4, rules 5-10, chain forward 11, rules 12-13.
        assert_eq!(
            masq_flags_in(&built.bytes).unwrap(),
            vec![(9, Some(0x10)), (10, Some(0x10))]
        );
        assert_eq!(
            built.what.get(&9).unwrap(),
            "rule 5 of chain postrtg (\"pods to outside\")"
        );
        assert_eq!(
            built.what.get(&12).unwrap(),
            "rule 1 of chain forward (\"from cluster\")"
        );
        assert_eq!(built.what.len(), 13);

        let plain = rules(Options {
            fully_random: false,
            ..Options::default()
        });
        let built = NftablesBackend::new(Family::V4)
            .build(&plain, false)
            .unwrap();
        assert_eq!(
            masq_flags_in(&built.bytes).unwrap(),
            vec![(9, None), (10, None)]
        );

        let forced = NftablesBackend::new(Family::V4)
            .with_masq_flags_override(0x1000)
            .build(&plain, false)
            .unwrap();
        assert_eq!(
            masq_flags_in(&forced.bytes).unwrap(),
            vec![(9, Some(0x1000)), (10, Some(0x1000))]
        );
    }

    #[test]
    fn comments_round_trip_through_user_data() {
        let set = rules(Options::default());
        for r in set.rules() {
            let text = render::nft_comment(r);
            let u = udata_for_comment(&text).unwrap();
            assert_eq!(u[0], 0);
            assert_eq!(usize::from(u[1]), text.len() + 1);
            assert_eq!(*u.last().unwrap(), 0);
            assert_eq!(udata_comment(&u).unwrap(), text);
        }
        // Another TLV first, then the comment.
        assert_eq!(
            udata_comment(&[1, 1, 7, 0, 3, b'a', b'b', 0]).unwrap(),
            "ab"
        );
        assert_eq!(udata_comment(&[1, 5, 7]), None);
        assert_eq!(udata_comment(&[]), None);
        assert!(udata_for_comment(&"x".repeat(300)).is_err());
    }

    #[test]
    fn expected_snapshot() {
        let b = NftablesBackend::new(Family::V4);
        let set = rules(Options::default());
        let s = b.expected(&set);
        assert_eq!(s.0[0], "table ip flannel-ipv4");
        assert_eq!(s.0[1], "chain postrtg nat postrouting 100 accept");
        assert!(
            s.0[2].starts_with("postrtg: weft: marked by kube-proxy "),
            "{}",
            s.0[2]
        );
        assert_eq!(s.0[8], "chain forward filter forward 0 accept");
        assert_eq!(s.0.len(), 11);
        let none = rules(Options {
            masquerade: false,
            forward: false,
            ..Options::default()
        });
        assert!(b.expected(&none).is_empty());
        let fwd_only = rules(Options {
            masquerade: false,
            ..Options::default()
        });
        assert_eq!(
            b.expected(&fwd_only).0[1],
            "chain forward filter forward 0 accept"
        );
    }

    #[test]
    fn family_probes() {
        let t = Table::new(ProtocolFamily::Ipv4)
            .with_name(NFT_TABLE)
            .with_flags(0u32);
        assert!(table_is(&t, ProtocolFamily::Ipv4, NFT_TABLE));
        assert!(!table_is(&t, ProtocolFamily::Inet, NFT_TABLE));
        assert!(!table_is(&t, ProtocolFamily::Ipv4, "other"));
    }

    #[test]
    fn chains_parse_back_from_netlink_messages() {
        let set = rules(Options::default());
        let built = NftablesBackend::new(Family::V4).build(&set, false).unwrap();
        let chains = parse_chains(&built.bytes, Family::V4, NFT_TABLE).unwrap();
        let lines: Vec<String> = chains.iter().map(DumpedChain::line).collect();
        assert_eq!(lines, [POSTRTG.line(), FORWARD.line()]);
        assert_eq!(lines[0], "chain postrtg nat postrouting 100 accept");
        let regular = DumpedChain {
            name: "x".into(),
            kind: None,
            hook: None,
            policy: None,
        };
        assert_eq!(regular.line(), "chain x");
        let dropping = DumpedChain {
            policy: Some(NF_DROP),
            hook: Some((2, -5)),
            ..regular
        };
        assert_eq!(dropping.line(), "chain x forward -5 drop");
        assert!(parse_chains(&built.bytes, Family::V4, "other")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn rules_parse_back_from_netlink_messages() {
        // A batch's NEWRULE messages have the layout of a dump's replies.
        let set = rules(Options::default());
        let built = NftablesBackend::new(Family::V4).build(&set, false).unwrap();
        let parsed = parse_rules(&built.bytes, Family::V4, NFT_TABLE).unwrap();
        assert_eq!(parsed.len(), 8);
        let texts: Vec<String> = parsed
            .iter()
            .map(|r| format!("{}: {}", r.chain, r.text()))
            .collect();
        assert_eq!(
            texts,
            NftablesBackend::new(Family::V4)
                .expected(&set)
                .0
                .into_iter()
                .filter(|l| !l.starts_with("chain ") && !l.starts_with("table "))
                .collect::<Vec<_>>()
        );
        assert_eq!(parsed[0].exprs, ["meta", "bitwise", "cmp", "immediate"]);
        assert_eq!(
            parsed[4].exprs,
            ["payload", "bitwise", "cmp", "payload", "bitwise", "cmp", "masq"]
        );
        assert!(parse_rules(&built.bytes, Family::V4, "other")
            .unwrap()
            .is_empty());

        let foreign = DumpedRule {
            chain: "postrtg".into(),
            exprs: vec!["counter".into()],
            userdata: None,
        };
        assert_eq!(foreign.text(), "foreign rule counter");
        let junk = DumpedRule {
            userdata: Some(vec![9, 200]),
            ..foreign
        };
        assert_eq!(junk.text(), "foreign rule counter");
    }

    fn rules6(options: Options) -> RuleSet {
        SnatRules::build(
            "fc00::/48".parse().unwrap(),
            "fc00:0:0:1::/64".parse().unwrap(),
            options,
        )
        .unwrap()
    }

    #[test]
    fn a_v6_batch_is_of_family_ip6_only_and_parses_back() {
        let set = rules6(Options::default());
        let backend = NftablesBackend::new(Family::V6);
        let built = backend.build(&set, false).unwrap();
        assert_eq!(
            built.what.get(&1).unwrap(),
            "add table ip6 flannel-ipv6",
            "{:?}",
            built.what
        );
        // Every object message carries NFPROTO_IPV6 in its nfgenmsg.
        let msgs = crate::nlmsg::messages(&built.bytes).unwrap();
        let families: std::collections::BTreeSet<u8> = msgs
            .iter()
            .filter(|m| m.ty >> 8 == crate::nfnl::NFNL_SUBSYS_NFTABLES)
            .map(|m| built.bytes[m.off + 16])
            .collect();
        assert_eq!(families, [10].into());
        let chains = parse_chains(&built.bytes, Family::V6, NFT_TABLE6).unwrap();
        assert_eq!(
            chains.iter().map(DumpedChain::line).collect::<Vec<_>>(),
            [POSTRTG.line(), FORWARD.line()]
        );
        let parsed = parse_rules(&built.bytes, Family::V6, NFT_TABLE6).unwrap();
        let texts: Vec<String> = parsed
            .iter()
            .map(|r| format!("{}: {}", r.chain, r.text()))
            .collect();
        let expected = backend.expected(&set);
        assert_eq!(expected.0[0], "table ip6 flannel-ipv6");
        assert_eq!(
            texts,
            expected
                .0
                .iter()
                .filter(|l| !l.starts_with("chain ") && !l.starts_with("table "))
                .cloned()
                .collect::<Vec<_>>()
        );
        // The same masks and compares as v4: payload, bitwise, cmp per address.
        assert_eq!(
            parsed[4].exprs,
            ["payload", "bitwise", "cmp", "payload", "bitwise", "cmp", "masq"]
        );
        assert_eq!(
            masq_flags_in(&built.bytes).unwrap(),
            vec![(9, Some(0x10)), (10, Some(0x10))]
        );
        // Nothing of it is seen as family ip, nor the v4 table's.
        assert!(parse_rules(&built.bytes, Family::V4, NFT_TABLE6)
            .unwrap()
            .is_empty());
        assert!(parse_chains(&built.bytes, Family::V4, NFT_TABLE6)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn v6_address_matches_read_the_ipv6_header() {
        // payload offset 8 (saddr) / 24 (daddr), 16 bytes; a /64 mask; the network.
        let set = rules6(Options::default());
        let exprs = |addr: Addr, dir: Direction| {
            let chain =
                Chain::new(&Table::new(ProtocolFamily::Ipv6).with_name(NFT_TABLE6)).with_name("c");
            let mut rule = Rule::new(&chain).unwrap();
            add_addr(&mut rule, dir, addr).unwrap();
            format!("{:?}", rule.get_expressions())
        };
        let own = set.postrouting[1].src;
        let text = exprs(own, Direction::Source);
        assert!(
            text.contains("offset: Some(8)") && text.contains("len: Some(16)"),
            "{text}"
        );
        let mask = [[0xffu8; 8], [0u8; 8]].concat();
        assert!(text.contains(&format!("{mask:?}")), "the /64 mask: {text}");
        let text = exprs(own, Direction::Destination);
        assert!(text.contains("offset: Some(24)"), "{text}");
        let host: IpNet = "fc00::1/128".parse().unwrap();
        let text = exprs(Addr::In(host), Direction::Source);
        assert!(
            !text.contains("Bitwise"),
            "a host prefix needs no mask: {text}"
        );
    }

    #[test]
    fn a_rule_set_of_the_other_family_is_refused() {
        let mut b = NftablesBackend::new(Family::V4);
        let e = b
            .apply(&rules6(Options::default()), &Snapshot::default())
            .unwrap_err();
        assert!(
            matches!(
                e,
                NatError::WrongFamily {
                    backend: Family::V4,
                    rules: Family::V6
                }
            ),
            "{e}"
        );
        let e = b.reconcile(&rules6(Options::default())).unwrap_err();
        assert!(matches!(e, NatError::WrongFamily { .. }), "{e}");
    }

    #[test]
    fn dump_request_layout() {
        let req = dump_request(NFT_MSG_GETRULE, Family::V4, Some(NFT_TABLE));
        assert_eq!(req.len(), 16 + 4 + 4 + 16);
        assert_eq!(
            u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize,
            req.len()
        );
        assert_eq!(u16::from_ne_bytes(req[4..6].try_into().unwrap()), 0x0a07);
        assert_eq!(req[16], 2);
        assert_eq!(u16::from_ne_bytes(req[20..22].try_into().unwrap()), 4 + 13);
        assert_eq!(&req[24..37], b"flannel-ipv4\0");
    }
}
