//! Masquerade flags for rustables batches.
//!
//! rustables 0.9's `Masquerade` expression carries no flags, so it cannot
//! express `masquerade fully-random`. weft builds every table, chain and rule
//! with rustables as it is, finalizes the batch, and then
//! [`add_masq_flags`] (or [`add_masq_flags_by_seq`]) appends one
//! `NFTA_MASQ_FLAGS` attribute inside each `masq` expression of the chosen
//! `NFT_MSG_NEWRULE` messages, fixing the four enclosing lengths (expression
//! data, list element, `NFTA_RULE_EXPRESSIONS`, `nlmsghdr`).
//! [`crate::nfnl::send_batch`] then sends the bytes.
//!
//! Layout (host-endian headers, 4-byte aligned):
//!
//! ```text
//! nlmsghdr(16) nfgenmsg(4) NFTA_RULE_TABLE NFTA_RULE_CHAIN
//!   NFTA_RULE_EXPRESSIONS(0x8004)
//!     NFTA_LIST_ELEM(0x8001) NFTA_EXPR_NAME(1)="masq" NFTA_EXPR_DATA(0x8002)=[]
//!                                                      + NFTA_MASQ_FLAGS(1)=u32 BE
//!   NFTA_RULE_USERDATA …
//! ```

use crate::nfnl::NFNL_SUBSYS_NFTABLES;
pub use crate::nlmsg::MalformedBatch;
use crate::nlmsg::{
    attrs, malformed, messages, read_u16, read_u32, NFGENMSG_LEN, NLA_F_NESTED, NLA_HDRLEN,
    NLMSG_HDRLEN,
};

/// `NF_NAT_RANGE_PROTO_RANDOM`: `masquerade random`.
pub const NF_NAT_RANGE_PROTO_RANDOM: u32 = 0x04;
/// `NF_NAT_RANGE_PERSISTENT`: `masquerade persistent`.
pub const NF_NAT_RANGE_PERSISTENT: u32 = 0x08;
/// `NF_NAT_RANGE_PROTO_RANDOM_FULLY`: `masquerade fully-random` (flannel's only flag).
pub const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE`.
pub const NFT_MSG_NEWRULE_TYPE: u16 = NFNL_SUBSYS_NFTABLES << 8 | 0x06;

const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_MASQ_FLAGS: u16 = 1;

fn bump_u16(buf: &mut [u8], at: usize, by: usize) -> Result<(), MalformedBatch> {
    let old = read_u16(buf, at).ok_or_else(|| malformed(at, "length outside the buffer"))?;
    let new = u16::try_from(usize::from(old) + by)
        .map_err(|_| malformed(at, "attribute would exceed 65535 bytes"))?;
    buf[at..at + 2].copy_from_slice(&new.to_ne_bytes());
    Ok(())
}

fn bump_u32(buf: &mut [u8], at: usize, by: usize) -> Result<(), MalformedBatch> {
    let old = read_u32(buf, at).ok_or_else(|| malformed(at, "length outside the buffer"))?;
    let new = u32::try_from(old as usize + by)
        .map_err(|_| malformed(at, "message would exceed 4 GiB"))?;
    buf[at..at + 4].copy_from_slice(&new.to_ne_bytes());
    Ok(())
}

/// `NFTA_MASQ_FLAGS` = `flags` (u32, big-endian): 8 bytes.
fn flags_attr(flags: u32) -> Vec<u8> {
    let mut a = Vec::with_capacity(8);
    a.extend_from_slice(&8u16.to_ne_bytes());
    a.extend_from_slice(&NFTA_MASQ_FLAGS.to_ne_bytes());
    a.extend_from_slice(&flags.to_be_bytes());
    a
}

/// Adds `NFTA_MASQ_FLAGS = flags` to every `masq` expression of every
/// `NFT_MSG_NEWRULE` message in the finalized batch. With `flags == 0` the
/// batch comes back unchanged (still checked).
pub fn add_masq_flags(batch: &[u8], flags: u32) -> Result<Vec<u8>, MalformedBatch> {
    add_masq_flags_by_seq(batch, |_| flags)
}

/// Like [`add_masq_flags`], with the flags chosen per `NFT_MSG_NEWRULE`
/// message by its sequence number (rustables numbers the batch-begin
/// message 0, then every `Batch::add` 1, 2, … in order). Rules for which
/// `flags_for` returns 0 are left as they are.
///
/// Every message header is checked, and every attribute of the rules that
/// are rewritten; a `masq` expression that already has flags is an error.
pub fn add_masq_flags_by_seq(
    batch: &[u8],
    flags_for: impl Fn(u32) -> u32,
) -> Result<Vec<u8>, MalformedBatch> {
    let mut out = batch.to_vec();
    // (position in `batch`, bytes to insert there); lengths are bumped in `out` at their original offsets.
    let mut inserts: Vec<(usize, Vec<u8>)> = Vec::new();
    for m in messages(batch)? {
        if m.ty != NFT_MSG_NEWRULE_TYPE {
            continue;
        }
        let flags = flags_for(m.seq);
        if flags == 0 {
            continue;
        }
        if m.len < NLMSG_HDRLEN + NFGENMSG_LEN {
            return Err(malformed(m.off, "NEWRULE message without nfgenmsg"));
        }
        for list in attrs(batch, m.off + NLMSG_HDRLEN + NFGENMSG_LEN, m.off + m.len)? {
            if list.kind() != NFTA_RULE_EXPRESSIONS {
                continue;
            }
            for elem in attrs(batch, list.off + NLA_HDRLEN, list.off + list.len)? {
                if elem.kind() != NFTA_LIST_ELEM {
                    return Err(malformed(
                        elem.off,
                        format!("attribute type {:#x} in NFTA_RULE_EXPRESSIONS", elem.ty),
                    ));
                }
                let inner = attrs(batch, elem.off + NLA_HDRLEN, elem.off + elem.len)?;
                let Some(name) = inner.iter().find(|a| a.kind() == NFTA_EXPR_NAME) else {
                    return Err(malformed(elem.off, "expression without NFTA_EXPR_NAME"));
                };
                let name_bytes = name.payload(batch);
                let name_bytes = name_bytes.strip_suffix(&[0]).unwrap_or(name_bytes);
                if name_bytes != b"masq" {
                    continue;
                }
                let mut added = flags_attr(flags);
                let (at, bump): (usize, Vec<(usize, bool)>) =
                    match inner.iter().find(|a| a.kind() == NFTA_EXPR_DATA) {
                        Some(data) => {
                            if data.len % 4 != 0 {
                                return Err(malformed(data.off, "unaligned NFTA_EXPR_DATA"));
                            }
                            let present = attrs(batch, data.off + NLA_HDRLEN, data.off + data.len)?;
                            if present.iter().any(|a| a.kind() == NFTA_MASQ_FLAGS) {
                                return Err(malformed(
                                    data.off,
                                    "masq expression already has NFTA_MASQ_FLAGS",
                                ));
                            }
                            (
                                data.off + data.len,
                                vec![
                                    (data.off, false),
                                    (elem.off, false),
                                    (list.off, false),
                                    (m.off, true),
                                ],
                            )
                        }
                        None => {
                            if elem.len % 4 != 0 {
                                return Err(malformed(elem.off, "unaligned expression"));
                            }
                            // No NFTA_EXPR_DATA at all: add one holding the flags.
                            let mut data = Vec::with_capacity(12);
                            data.extend_from_slice(&12u16.to_ne_bytes());
                            data.extend_from_slice(&(NFTA_EXPR_DATA | NLA_F_NESTED).to_ne_bytes());
                            data.append(&mut added);
                            added = data;
                            (
                                elem.off + elem.len,
                                vec![(elem.off, false), (list.off, false), (m.off, true)],
                            )
                        }
                    };
                for (len_at, is_nlmsg) in bump {
                    if is_nlmsg {
                        bump_u32(&mut out, len_at, added.len())?;
                    } else {
                        bump_u16(&mut out, len_at, added.len())?;
                    }
                }
                inserts.push((at, added));
            }
        }
    }
    if inserts.is_empty() {
        return Ok(out);
    }
    inserts.sort_by_key(|(at, _)| *at);
    let mut result =
        Vec::with_capacity(out.len() + inserts.iter().map(|(_, b)| b.len()).sum::<usize>());
    let mut from = 0;
    for (at, bytes) in inserts {
        result.extend_from_slice(&out[from..at]);
        result.extend_from_slice(&bytes);
        from = at;
    }
    result.extend_from_slice(&out[from..]);
    Ok(result)
}

/// The flags of every `masq` expression in the batch, in order, as
/// `(sequence number of the NEWRULE message, flags or None)`. For tests and
/// diagnostics.
pub fn masq_flags_in(batch: &[u8]) -> Result<Vec<(u32, Option<u32>)>, MalformedBatch> {
    let mut found = Vec::new();
    for m in messages(batch)? {
        if m.ty != NFT_MSG_NEWRULE_TYPE || m.len < NLMSG_HDRLEN + NFGENMSG_LEN {
            continue;
        }
        for list in attrs(batch, m.off + NLMSG_HDRLEN + NFGENMSG_LEN, m.off + m.len)? {
            if list.kind() != NFTA_RULE_EXPRESSIONS {
                continue;
            }
            for elem in attrs(batch, list.off + NLA_HDRLEN, list.off + list.len)? {
                let inner = attrs(batch, elem.off + NLA_HDRLEN, elem.off + elem.len)?;
                let is_masq = inner.iter().any(|a| {
                    let p = a.payload(batch);
                    a.kind() == NFTA_EXPR_NAME && p.strip_suffix(&[0]).unwrap_or(p) == b"masq"
                });
                if !is_masq {
                    continue;
                }
                let mut flags = None;
                if let Some(data) = inner.iter().find(|a| a.kind() == NFTA_EXPR_DATA) {
                    for a in attrs(batch, data.off + NLA_HDRLEN, data.off + data.len)? {
                        if a.kind() == NFTA_MASQ_FLAGS {
                            let p = a.payload(batch);
                            let v = <[u8; 4]>::try_from(p)
                                .map_err(|_| malformed(a.off, "NFTA_MASQ_FLAGS is not a u32"))?;
                            flags = Some(u32::from_be_bytes(v));
                        }
                    }
                }
                found.push((m.seq, flags));
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rustables::expr::{
        Cmp, CmpOp, HighLevelPayload, IPv4HeaderField, Immediate, NetworkHeaderField, VerdictKind,
    };
    use rustables::{Batch, Chain, MsgType, ProtocolFamily, Rule, Table};

    fn rule(chain: &Chain, masq: usize, userdata: bool) -> Rule {
        let mut r = Rule::new(chain)
            .unwrap()
            .with_expr(
                HighLevelPayload::Network(NetworkHeaderField::IPv4(IPv4HeaderField::Saddr)).build(),
            )
            .with_expr(Cmp::new(CmpOp::Eq, [10, 244, 0, 0]));
        for _ in 0..masq {
            r = r.masquerade();
        }
        if masq == 0 {
            r.add_expr(Immediate::new_verdict(VerdictKind::Return));
        }
        if userdata {
            r = r.with_userdata(b"\x00\x05weft\x00".to_vec());
        }
        r
    }

    /// Batch: begin(0) table(1) chain(2) rules(3..) end.
    fn batch(rules: &[(usize, bool)]) -> Vec<u8> {
        let mut b = Batch::new();
        let table = Table::new(ProtocolFamily::Ipv4).with_name("t");
        b.add(&table, MsgType::Add);
        let chain = Chain::new(&table).with_name("c");
        b.add(&chain, MsgType::Add);
        for (masq, userdata) in rules {
            b.add(&rule(&chain, *masq, *userdata), MsgType::Add);
        }
        b.finalize()
    }

    /// Removes every NFTA_MASQ_FLAGS attribute again, restoring lengths:
    /// must give rustables' bytes back.
    fn strip_flags(patched: &[u8]) -> Vec<u8> {
        let mut out = patched.to_vec();
        let mut removals = Vec::new();
        for m in messages(patched).unwrap() {
            if m.ty != NFT_MSG_NEWRULE_TYPE {
                continue;
            }
            for list in attrs(patched, m.off + 20, m.off + m.len).unwrap() {
                if list.kind() != NFTA_RULE_EXPRESSIONS {
                    continue;
                }
                for elem in attrs(patched, list.off + 4, list.off + list.len).unwrap() {
                    let inner = attrs(patched, elem.off + 4, elem.off + elem.len).unwrap();
                    if !inner
                        .iter()
                        .any(|a| a.kind() == NFTA_EXPR_NAME && a.payload(patched) == b"masq")
                    {
                        continue;
                    }
                    for data in inner {
                        if data.kind() != NFTA_EXPR_DATA {
                            continue;
                        }
                        for a in attrs(patched, data.off + 4, data.off + data.len).unwrap() {
                            if a.kind() == NFTA_MASQ_FLAGS {
                                removals.push(a.off);
                                for at in [data.off, elem.off, list.off] {
                                    let v = read_u16(&out, at).unwrap() - 8;
                                    out[at..at + 2].copy_from_slice(&v.to_ne_bytes());
                                }
                                let v = read_u32(&out, m.off).unwrap() - 8;
                                out[m.off..m.off + 4].copy_from_slice(&v.to_ne_bytes());
                            }
                        }
                    }
                }
            }
        }
        removals.sort_unstable();
        for at in removals.into_iter().rev() {
            out.drain(at..at + 8);
        }
        out
    }

    fn lengths_consistent(buf: &[u8]) {
        // Every level parses with exact lengths.
        for m in messages(buf).unwrap() {
            if m.ty != NFT_MSG_NEWRULE_TYPE {
                continue;
            }
            for list in attrs(buf, m.off + 20, m.off + m.len).unwrap() {
                if list.kind() != NFTA_RULE_EXPRESSIONS {
                    continue;
                }
                for elem in attrs(buf, list.off + 4, list.off + list.len).unwrap() {
                    for a in attrs(buf, elem.off + 4, elem.off + elem.len).unwrap() {
                        if a.kind() == NFTA_EXPR_DATA {
                            attrs(buf, a.off + 4, a.off + a.len).unwrap();
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn adds_eight_bytes_per_masq_expression() {
        let raw = batch(&[(0, true), (1, true), (2, false)]);
        let patched = add_masq_flags(&raw, NF_NAT_RANGE_PROTO_RANDOM_FULLY).unwrap();
        assert_eq!(patched.len(), raw.len() + 3 * 8);
        lengths_consistent(&patched);
        let before = messages(&raw).unwrap();
        let after = messages(&patched).unwrap();
        assert_eq!(before.len(), after.len());
        let grown: Vec<usize> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| a.len - b.len)
            .collect();
        // begin, table, chain, return rule, 1 masq, 2 masq, end
        assert_eq!(grown, vec![0, 0, 0, 0, 8, 16, 0]);
        assert_eq!(
            masq_flags_in(&raw).unwrap(),
            vec![(4, None), (5, None), (5, None)]
        );
        assert_eq!(
            masq_flags_in(&patched).unwrap(),
            vec![(4, Some(0x10)), (5, Some(0x10)), (5, Some(0x10))]
        );
        assert_eq!(strip_flags(&patched), raw);
    }

    #[test]
    fn exact_bytes_of_the_masq_expression() {
        let raw = batch(&[(1, false)]);
        // rustables writes "masq" without NUL and an empty nested data attribute.
        let needle: &[u8] = &[8, 0, 1, 0, b'm', b'a', b's', b'q', 4, 0, 2, 0x80];
        let at = raw.windows(needle.len()).position(|w| w == needle).unwrap();
        let patched = add_masq_flags(&raw, 0x10).unwrap();
        let want: &[u8] = &[
            8, 0, 1, 0, b'm', b'a', b's', b'q', 12, 0, 2, 0x80, 8, 0, 1, 0, 0, 0, 0, 0x10,
        ];
        assert_eq!(&patched[at..at + want.len()], want);
        // the list element grew from 16 to 24 bytes
        assert_eq!(read_u16(&raw, at - 4).unwrap(), 16);
        assert_eq!(read_u16(&patched, at - 4).unwrap(), 24);
        assert_eq!(
            read_u16(&patched, at - 2).unwrap(),
            NFTA_LIST_ELEM | NLA_F_NESTED
        );
    }

    #[test]
    fn per_rule_flags_by_sequence_number() {
        let raw = batch(&[(1, true), (1, true), (1, true)]);
        let patched = add_masq_flags_by_seq(&raw, |seq| if seq == 4 { 0x14 } else { 0 }).unwrap();
        assert_eq!(patched.len(), raw.len() + 8);
        assert_eq!(
            masq_flags_in(&patched).unwrap(),
            vec![(3, None), (4, Some(0x14)), (5, None)]
        );
        assert_eq!(strip_flags(&patched), raw);
    }

    #[test]
    fn zero_flags_and_no_masq_leave_the_batch_alone() {
        let raw = batch(&[(0, true), (1, true)]);
        assert_eq!(add_masq_flags(&raw, 0).unwrap(), raw);
        let plain = batch(&[(0, true), (0, false)]);
        assert_eq!(add_masq_flags(&plain, 0x10).unwrap(), plain);
        assert_eq!(add_masq_flags(&[], 0x10).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn flags_twice_is_an_error() {
        let raw = batch(&[(1, false)]);
        let once = add_masq_flags(&raw, 0x10).unwrap();
        let err = add_masq_flags(&once, 0x10).unwrap_err();
        assert!(err.reason.contains("already has"), "{err}");
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let raw = batch(&[(1, true), (0, false)]);
        // Truncations at every length.
        for cut in 1..raw.len() {
            let _ = add_masq_flags(&raw[..cut], 0x10);
            let _ = masq_flags_in(&raw[..cut]);
        }
        assert!(add_masq_flags(&raw[..raw.len() - 3], 0x10).is_err());
        assert!(add_masq_flags(&[1, 2, 3], 0x10).is_err());
        // Garbage in every single byte.
        for i in 0..raw.len() {
            for v in [0u8, 1, 3, 0x7f, 0xff] {
                let mut bad = raw.clone();
                bad[i] = v;
                let _ = add_masq_flags(&bad, 0x10);
                let _ = masq_flags_in(&bad);
            }
        }
        // An nlmsg_len beyond the buffer.
        let mut bad = raw.clone();
        bad[0..4].copy_from_slice(&(raw.len() as u32 + 4).to_ne_bytes());
        assert!(add_masq_flags(&bad, 0x10).is_err());
        // An nla_len of 2 inside the rule.
        let rules = messages(&raw).unwrap();
        let rule = rules.iter().find(|m| m.ty == NFT_MSG_NEWRULE_TYPE).unwrap();
        let mut bad = raw.clone();
        bad[rule.off + 20..rule.off + 22].copy_from_slice(&2u16.to_ne_bytes());
        assert!(add_masq_flags(&bad, 0x10).is_err());
    }

    #[test]
    fn masq_without_data_attribute_gets_one() {
        // Hand-made NEWRULE: nlmsghdr, nfgenmsg, expressions [ elem [ name "masq" ] ].
        let mut msg = Vec::new();
        let elem: Vec<u8> = [
            &12u16.to_ne_bytes()[..],
            &(1u16 | 0x8000).to_ne_bytes(),
            &8u16.to_ne_bytes(),
            &1u16.to_ne_bytes(),
            b"masq",
        ]
        .concat();
        let list: Vec<u8> = [
            &(4 + elem.len() as u16).to_ne_bytes()[..],
            &(4u16 | 0x8000).to_ne_bytes(),
            &elem,
        ]
        .concat();
        msg.extend_from_slice(&((20 + list.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&NFT_MSG_NEWRULE_TYPE.to_ne_bytes());
        msg.extend_from_slice(&0x0405u16.to_ne_bytes());
        msg.extend_from_slice(&7u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[2, 0, 0, 0]);
        msg.extend_from_slice(&list);
        let patched = add_masq_flags(&msg, 0x10).unwrap();
        assert_eq!(patched.len(), msg.len() + 12);
        assert_eq!(masq_flags_in(&patched).unwrap(), vec![(7, Some(0x10))]);
    }
}
