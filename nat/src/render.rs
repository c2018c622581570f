//! Renders a rule set as `iptables-restore` input and as `nft` text, in the
//! exact form `iptables-save` and `nft list` print, so what the kernel holds
//! can be compared line by line with what weft wants. Both families render
//! alike: `ip6tables-save` prints the same chains and comments as
//! `iptables-save`, and nft's `ip6` table the same chains with `ip6 saddr`.

use crate::family::Family;
use crate::rules::{Addr, Chain, Rule, RuleSet, Verdict};

/// flannel's iptables chain for SNAT (nat table).
pub const POSTRTG_CHAIN: &str = "FLANNEL-POSTRTG";
/// flannel's iptables chain for forward accepts (filter table).
pub const FWD_CHAIN: &str = "FLANNEL-FWD";
/// flannel's comment on its SNAT rules.
pub const MASQ_COMMENT: &str = "flanneld masq";
/// flannel's comment on its forward rules.
pub const FWD_COMMENT: &str = "flanneld forward";
/// flannel's IPv4 nftables table (family `ip`).
pub const NFT_TABLE: &str = "flannel-ipv4";
/// flannel's IPv6 nftables table (family `ip6`).
pub const NFT_TABLE6: &str = "flannel-ipv6";
/// flannel's nftables SNAT chain.
pub const NFT_POSTRTG: &str = "postrtg";
/// flannel's nftables forward chain.
pub const NFT_FORWARD: &str = "forward";

/// The iptables table and chain of a rule.
pub fn iptables_place(chain: Chain) -> (&'static str, &'static str, &'static str) {
    match chain {
        Chain::Postrouting => ("nat", "POSTROUTING", POSTRTG_CHAIN),
        Chain::Forward => ("filter", "FORWARD", FWD_CHAIN),
    }
}

/// The jump rule from the built-in chain, as `iptables-save` prints it.
pub fn iptables_jump(chain: Chain) -> String {
    let (_, builtin, ours) = iptables_place(chain);
    let comment = match chain {
        Chain::Postrouting => MASQ_COMMENT,
        Chain::Forward => FWD_COMMENT,
    };
    format!("-A {builtin} -m comment --comment \"{comment}\" -j {ours}")
}

fn ipt_addr(flag: &str, a: Addr) -> String {
    match a {
        Addr::Any => String::new(),
        Addr::In(n) => format!(" -{flag} {n}"),
        Addr::NotIn(n) => format!(" ! -{flag} {n}"),
    }
}

/// One rule as `iptables-save` prints it (`-A FLANNEL-POSTRTG …`).
pub fn iptables_rule(r: &Rule) -> String {
    let (_, _, chain) = iptables_place(r.chain);
    let mut s = format!("-A {chain}");
    s.push_str(&ipt_addr("s", r.src));
    s.push_str(&ipt_addr("d", r.dst));
    if let Some((value, mask)) = r.mark {
        s.push_str(&format!(" -m mark --mark {value:#x}/{mask:#x}"));
    }
    let comment = match r.chain {
        Chain::Postrouting => MASQ_COMMENT,
        Chain::Forward => FWD_COMMENT,
    };
    s.push_str(&format!(" -m comment --comment \"{comment}\""));
    s.push_str(match r.verdict {
        Verdict::Return => " -j RETURN",
        Verdict::Accept => " -j ACCEPT",
        Verdict::Masquerade { fully_random: true } => " -j MASQUERADE --random-fully",
        Verdict::Masquerade {
            fully_random: false,
        } => " -j MASQUERADE",
    });
    s
}

/// `iptables-restore --noflush` input that replaces the bodies of weft's
/// chains (creating them if needed) in one transaction per table. Chains with
/// no rules (the option is off) are left out: removing them is the caller's job.
pub fn iptables_restore(rules: &RuleSet) -> String {
    let mut out = String::new();
    for (chain, list) in rules.chains() {
        if list.is_empty() {
            continue;
        }
        let (table, _, name) = iptables_place(chain);
        out.push_str(&format!("*{table}\n:{name} - [0:0]\n"));
        for r in list {
            out.push_str(&iptables_rule(r));
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// `ip saddr 10.0.0.0/8 `, `ip6 daddr != ff00::/8 `: the keyword is the
/// network's family's.
fn nft_addr(dir: &str, a: Addr) -> String {
    match a {
        Addr::Any => String::new(),
        Addr::In(n) => format!("{} {dir} {n} ", Family::of(&n).nft_family()),
        Addr::NotIn(n) => format!("{} {dir} != {n} ", Family::of(&n).nft_family()),
    }
}

/// One rule as `nft list` prints it (without its comment).
pub fn nft_rule(r: &Rule) -> String {
    let mut s = String::new();
    if let Some((value, mask)) = r.mark {
        s.push_str(&format!("meta mark & {mask:#010x} == {value:#010x} "));
    }
    s.push_str(&nft_addr("saddr", r.src));
    s.push_str(&nft_addr("daddr", r.dst));
    s.push_str(match r.verdict {
        Verdict::Return => "return",
        Verdict::Accept => "accept",
        Verdict::Masquerade { fully_random: true } => "masquerade fully-random",
        Verdict::Masquerade {
            fully_random: false,
        } => "masquerade",
    });
    s
}

/// The comment weft puts on an nftables rule: what it is for, and a
/// fingerprint of its exact text (flags included). Reading the rules back,
/// weft compares these comments: a rule someone changed or added has none of
/// them, and rustables cannot show masquerade flags.
pub fn nft_comment(r: &Rule) -> String {
    // FNV-1a, 32 bits: stable across builds and platforms.
    let hash = nft_rule(r).bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("weft: {} {hash:08x}", r.label)
}

/// The whole table as `nft list table ip flannel-ipv4` (or `ip6
/// flannel-ipv6`) prints it.
pub fn nft_table(rules: &RuleSet) -> String {
    let family = rules.family;
    let mut out = format!("table {} {} {{\n", family.nft_family(), family.nft_table());
    let chains = [
        (
            NFT_POSTRTG,
            "type nat hook postrouting priority srcnat; policy accept;",
            &rules.postrouting,
        ),
        (
            NFT_FORWARD,
            "type filter hook forward priority filter; policy accept;",
            &rules.forward,
        ),
    ];
    let mut first = true;
    for (name, head, list) in chains {
        if list.is_empty() {
            continue;
        }
        if !first {
            out.push('\n');
        }
        first = false;
        out.push_str(&format!("\tchain {name} {{\n\t\t{head}\n"));
        for r in list {
            out.push_str(&format!(
                "\t\t{} comment \"{}\"\n",
                nft_rule(r),
                nft_comment(r)
            ));
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    out
}
