//! Reading weft's nftables table back: chain and rule dumps of one family
//! (`ip` or `ip6`; rustables' listings ask with `AF_UNSPEC`) parsed into
//! [`DumpedChain`]s and [`DumpedRule`]s, enough to compare with what weft
//! wants and to tell weft's rules (by their comment) from anyone else's.

use std::io;

use crate::error::NatError;
use crate::family::Family;
use crate::nfnl::{self, Dump, NFNL_SUBSYS_NFTABLES};
use crate::nftables::{hook_name, UDATA_RULE_COMMENT};
use crate::nlmsg::{self, align4, messages, Attr, MalformedBatch};

/// A rule as the kernel dumps it: enough to tell weft's rules from others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DumpedRule {
    pub(crate) chain: String,
    pub(crate) exprs: Vec<String>,
    pub(crate) userdata: Option<Vec<u8>>,
}

impl DumpedRule {
    /// The rule's comment, or `foreign rule <expression names>`.
    pub(crate) fn text(&self) -> String {
        if let Some(comment) = self.userdata.as_deref().and_then(udata_comment) {
            return comment;
        }
        format!("foreign rule {}", self.exprs.join(" "))
    }
}

/// A chain as the kernel dumps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DumpedChain {
    pub(crate) name: String,
    pub(crate) kind: Option<String>,
    /// Hook number and priority.
    pub(crate) hook: Option<(u32, i32)>,
    pub(crate) policy: Option<u32>,
}

impl DumpedChain {
    /// `chain <name> [<type>] [<hook> <priority>] [<policy>]`, as
    /// [`ChainSpec::line`] renders a wanted chain.
    pub(crate) fn line(&self) -> String {
        let mut s = format!("chain {}", self.name);
        if let Some(kind) = &self.kind {
            s.push_str(&format!(" {kind}"));
        }
        if let Some((hook, priority)) = self.hook {
            s.push_str(&format!(" {} {priority}", hook_name(hook)));
        }
        match self.policy {
            None => {}
            Some(NF_ACCEPT) => s.push_str(" accept"),
            Some(NF_DROP) => s.push_str(" drop"),
            Some(p) => s.push_str(&format!(" policy {p}")),
        }
        s
    }
}

const NFT_MSG_NEWCHAIN: u16 = 0x03;
pub(crate) const NFT_MSG_GETCHAIN: u16 = 0x04;
const NFT_MSG_NEWRULE: u16 = 0x06;
pub(crate) const NFT_MSG_GETRULE: u16 = 0x07;
pub(crate) const NF_DROP: u32 = 0;
pub(crate) const NF_ACCEPT: u32 = 1;
/// `NFTA_RULE_TABLE` and `NFTA_CHAIN_TABLE`.
const NFTA_TABLE_ATTR: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_EXPR_NAME: u16 = 1;

/// A dump request (`NLM_F_DUMP`) for `family` (`ip` or `ip6`), with a table
/// attribute when `table` is given (the kernel filters rules by it; chains
/// are filtered here).
pub(crate) fn dump_request(msg: u16, family: Family, table: Option<&str>) -> Vec<u8> {
    let attr_len = table.map_or(0, |t| 4 + t.len() + 1);
    let len = 16 + 4 + align4(attr_len);
    let mut req = Vec::with_capacity(len);
    req.extend_from_slice(&(len as u32).to_ne_bytes());
    req.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | msg).to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req.extend_from_slice(&flags.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id
    req.extend_from_slice(&[family.nfproto(), 0, 0, 0]); // nfgenmsg: family, version 0, res_id 0
    if let Some(table) = table {
        req.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        req.extend_from_slice(&NFTA_TABLE_ATTR.to_ne_bytes());
        req.extend_from_slice(table.as_bytes());
        req.push(0);
    }
    req.resize(len, 0);
    req
}

/// The replies to a dump of `msg` objects of `<family> <table>` (every
/// table of the family without one); `None` if a change interrupted the
/// dump, nothing if the table is gone.
pub(crate) fn dump(
    msg: u16,
    family: Family,
    table: Option<&str>,
    what: &str,
) -> Result<Option<Vec<u8>>, NatError> {
    match nfnl::dump(what, &dump_request(msg, family, table))? {
        Dump::Interrupted => Ok(None),
        Dump::Refused(errno) if errno == libc::ENOENT => Ok(Some(Vec::new())),
        Dump::Refused(errno) => Err(NatError::Kernel {
            what: what.to_string(),
            detail: io::Error::from_raw_os_error(errno).to_string(),
        }),
        Dump::Messages(bytes) => Ok(Some(bytes)),
    }
}

/// The name of every chain of `family`, in any table, by one dump; `None`
/// if a change interrupted it.
pub(crate) fn chain_names(family: Family, what: &str) -> Result<Option<Vec<String>>, NatError> {
    let Some(buf) = dump(NFT_MSG_GETCHAIN, family, None, what)? else {
        return Ok(None);
    };
    let mut names = Vec::new();
    for attrs in objects_of(&buf, NFT_MSG_NEWCHAIN, family, None).map_err(NatError::from)? {
        names.extend(
            attrs
                .iter()
                .filter(|a| a.kind() == NFTA_CHAIN_NAME)
                .map(|a| attr_string(&buf, a)),
        );
    }
    Ok(Some(names))
}

/// Whether table `<family> <table>` exists with at least one chain, by one
/// chain dump; `None` if a change interrupted it.
pub(crate) fn table_has_chains(
    family: Family,
    table: &str,
    what: &str,
) -> Result<Option<bool>, NatError> {
    let Some(buf) = dump(NFT_MSG_GETCHAIN, family, Some(table), what)? else {
        return Ok(None);
    };
    let chains = objects_of(&buf, NFT_MSG_NEWCHAIN, family, Some(table)).map_err(NatError::from)?;
    Ok(Some(!chains.is_empty()))
}

fn attr_string(buf: &[u8], a: &Attr) -> String {
    let p = a.payload(buf);
    String::from_utf8_lossy(p.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

fn attr_be32(buf: &[u8], a: &Attr) -> Option<u32> {
    <[u8; 4]>::try_from(a.payload(buf))
        .ok()
        .map(u32::from_be_bytes)
}

/// The attributes of every `msg` message of `family` and table `table`
/// (any table without one) in `buf` (a dump's replies; a batch has the same
/// layout).
fn objects_of(
    buf: &[u8],
    msg: u16,
    family: Family,
    table: Option<&str>,
) -> Result<Vec<Vec<Attr>>, MalformedBatch> {
    let mut out = Vec::new();
    for m in messages(buf)? {
        if m.ty != NFNL_SUBSYS_NFTABLES << 8 | msg || m.len < 20 {
            continue;
        }
        if buf.get(m.off + 16) != Some(&family.nfproto()) {
            continue;
        }
        let attrs = nlmsg::attrs(buf, m.off + 20, m.off + m.len)?;
        let in_table = table.is_none_or(|table| {
            attrs
                .iter()
                .any(|a| a.kind() == NFTA_TABLE_ATTR && attr_string(buf, a) == table)
        });
        if in_table {
            out.push(attrs);
        }
    }
    Ok(out)
}

/// The chains of `<family> <table>` in `buf`, in kernel order.
pub(crate) fn parse_chains(
    buf: &[u8],
    family: Family,
    table: &str,
) -> Result<Vec<DumpedChain>, MalformedBatch> {
    let mut chains = Vec::new();
    for attrs in objects_of(buf, NFT_MSG_NEWCHAIN, family, Some(table))? {
        let mut chain = DumpedChain {
            name: String::new(),
            kind: None,
            hook: None,
            policy: None,
        };
        for a in attrs {
            match a.kind() {
                NFTA_CHAIN_NAME => chain.name = attr_string(buf, &a),
                NFTA_CHAIN_TYPE => chain.kind = Some(attr_string(buf, &a)),
                NFTA_CHAIN_POLICY => chain.policy = attr_be32(buf, &a),
                NFTA_CHAIN_HOOK => {
                    let mut num = None;
                    let mut priority = None;
                    for h in nlmsg::attrs(buf, a.off + 4, a.off + a.len)? {
                        match h.kind() {
                            NFTA_HOOK_HOOKNUM => num = attr_be32(buf, &h),
                            NFTA_HOOK_PRIORITY => priority = attr_be32(buf, &h).map(|p| p as i32),
                            _ => {}
                        }
                    }
                    if let (Some(num), Some(priority)) = (num, priority) {
                        chain.hook = Some((num, priority));
                    }
                }
                _ => {}
            }
        }
        chains.push(chain);
    }
    Ok(chains)
}

/// The rules of `<family> <table>` in `buf`, in kernel order.
pub(crate) fn parse_rules(
    buf: &[u8],
    family: Family,
    table: &str,
) -> Result<Vec<DumpedRule>, MalformedBatch> {
    let mut rules = Vec::new();
    for attrs in objects_of(buf, NFT_MSG_NEWRULE, family, Some(table))? {
        let mut rule = DumpedRule {
            chain: String::new(),
            exprs: Vec::new(),
            userdata: None,
        };
        for a in attrs {
            match a.kind() {
                NFTA_RULE_CHAIN => rule.chain = attr_string(buf, &a),
                NFTA_RULE_USERDATA => rule.userdata = Some(a.payload(buf).to_vec()),
                NFTA_RULE_EXPRESSIONS => {
                    for elem in nlmsg::attrs(buf, a.off + 4, a.off + a.len)? {
                        let inner = nlmsg::attrs(buf, elem.off + 4, elem.off + elem.len)?;
                        let name = inner.iter().find(|x| x.kind() == NFTA_EXPR_NAME);
                        rule.exprs
                            .push(name.map_or_else(|| "?".to_string(), |x| attr_string(buf, x)));
                    }
                }
                _ => {}
            }
        }
        rules.push(rule);
    }
    Ok(rules)
}

/// The comment in nft's rule user data (TLVs: type u8, length u8, value).
pub(crate) fn udata_comment(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while let [ty, len, tail @ ..] = rest {
        let value = tail.get(..usize::from(*len))?;
        if *ty == UDATA_RULE_COMMENT {
            let value = value.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        rest = &tail[usize::from(*len)..];
    }
    None
}
