//! Masquerade flags for rustables batches, and the sender for such batches.
//!
//! rustables 0.9's `Masquerade` expression carries no flags, so it cannot
//! express `masquerade fully-random`. weft builds every table, chain and rule
//! with rustables as it is, finalizes the batch, and then
//! [`add_masq_flags`] (or [`add_masq_flags_by_seq`]) appends one
//! `NFTA_MASQ_FLAGS` attribute inside each `masq` expression of the chosen
//! `NFT_MSG_NEWRULE` messages, fixing the four enclosing lengths (expression
//! data, list element, `NFTA_RULE_EXPRESSIONS`, `nlmsghdr`). [`send_batch`]
//! then sends the bytes on a `NETLINK_NETFILTER` socket and checks every
//! acknowledgement, never waiting more than [`ACK_TIMEOUT`]. The module also
//! does the small family-`ip` dumps the nftables backend reads chains and
//! rules with (rustables' listings ask with `AF_UNSPEC`).
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

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{setsockopt, sockopt};

use crate::error::NatError;

/// `NF_NAT_RANGE_PROTO_RANDOM`: `masquerade random`.
pub const NF_NAT_RANGE_PROTO_RANDOM: u32 = 0x04;
/// `NF_NAT_RANGE_PERSISTENT`: `masquerade persistent`.
pub const NF_NAT_RANGE_PERSISTENT: u32 = 0x08;
/// `NF_NAT_RANGE_PROTO_RANDOM_FULLY`: `masquerade fully-random` (flannel's only flag).
pub const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;

/// How long [`send_batch`] waits for the kernel's acknowledgements. The
/// kernel answers inside the `send` call, so this only matters when a
/// message was malformed (the kernel then answers nothing at all).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLA_F_NESTED: u16 = 0x8000;

const NLMSG_ERROR: u16 = 2;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 0x0a;
/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE`.
pub const NFT_MSG_NEWRULE_TYPE: u16 = NFNL_SUBSYS_NFTABLES << 8 | 0x06;

const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_MASQ_FLAGS: u16 = 1;

/// A batch that does not have the netlink layout it should: weft built it
/// wrongly, so it must not reach the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed nftables batch at byte {offset}: {reason}")]
pub struct MalformedBatch {
    /// Where in the batch.
    pub offset: usize,
    /// What is wrong there.
    pub reason: String,
}

impl From<MalformedBatch> for NatError {
    fn from(e: MalformedBatch) -> Self {
        NatError::Io {
            context: "preparing the nftables batch".into(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

fn malformed(offset: usize, reason: impl Into<String>) -> MalformedBatch {
    MalformedBatch {
        offset,
        reason: reason.into(),
    }
}

pub(crate) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes([*buf.get(at)?, *buf.get(at + 1)?]))
}

pub(crate) fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes([
        *buf.get(at)?,
        *buf.get(at + 1)?,
        *buf.get(at + 2)?,
        *buf.get(at + 3)?,
    ]))
}

/// One netlink message inside a buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Msg {
    pub(crate) off: usize,
    pub(crate) len: usize,
    pub(crate) ty: u16,
    pub(crate) flags: u16,
    pub(crate) seq: u32,
}

/// Splits `buf` into netlink messages, checking every length.
pub(crate) fn messages(buf: &[u8]) -> Result<Vec<Msg>, MalformedBatch> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        if buf.len() - off < NLMSG_HDRLEN {
            return Err(malformed(
                off,
                format!(
                    "{} trailing bytes, too short for a nlmsghdr",
                    buf.len() - off
                ),
            ));
        }
        let len = read_u32(buf, off).ok_or_else(|| malformed(off, "truncated nlmsghdr"))? as usize;
        if len < NLMSG_HDRLEN || len > buf.len() - off {
            return Err(malformed(
                off,
                format!(
                    "nlmsg_len {len} does not fit (bytes left: {})",
                    buf.len() - off
                ),
            ));
        }
        let ty = read_u16(buf, off + 4).ok_or_else(|| malformed(off, "truncated nlmsghdr"))?;
        let flags = read_u16(buf, off + 6).ok_or_else(|| malformed(off, "truncated nlmsghdr"))?;
        let seq = read_u32(buf, off + 8).ok_or_else(|| malformed(off, "truncated nlmsghdr"))?;
        out.push(Msg {
            off,
            len,
            ty,
            flags,
            seq,
        });
        // The last message may lack its padding; any other must be padded.
        off = (off + align4(len)).min(buf.len());
    }
    Ok(out)
}

/// One netlink attribute: `off` is its header, `len` its `nla_len`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attr {
    pub(crate) off: usize,
    pub(crate) len: usize,
    pub(crate) ty: u16,
}

impl Attr {
    pub(crate) fn kind(&self) -> u16 {
        self.ty & NLA_TYPE_MASK
    }

    pub(crate) fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.off + NLA_HDRLEN..self.off + self.len)
            .unwrap_or_default()
    }
}

/// The attributes in `buf[start..end]`, checking every length.
pub(crate) fn attrs(buf: &[u8], start: usize, end: usize) -> Result<Vec<Attr>, MalformedBatch> {
    if end > buf.len() || start > end {
        return Err(malformed(
            start,
            format!("attribute area {start}..{end} outside the buffer"),
        ));
    }
    let mut out = Vec::new();
    let mut off = start;
    while off < end {
        if end - off < NLA_HDRLEN {
            return Err(malformed(
                off,
                format!("{} trailing bytes, too short for an attribute", end - off),
            ));
        }
        let len = read_u16(buf, off).ok_or_else(|| malformed(off, "truncated attribute"))? as usize;
        let ty = read_u16(buf, off + 2).ok_or_else(|| malformed(off, "truncated attribute"))?;
        if len < NLA_HDRLEN || len > end - off {
            return Err(malformed(
                off,
                format!("nla_len {len} does not fit (bytes left: {})", end - off),
            ));
        }
        out.push(Attr { off, len, ty });
        off = (off + align4(len)).min(end);
    }
    Ok(out)
}

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

/// A readable name for an nfnetlink message type.
pub fn msg_type_name(ty: u16) -> String {
    match ty {
        NFNL_MSG_BATCH_BEGIN => return "BATCH_BEGIN".into(),
        NFNL_MSG_BATCH_END => return "BATCH_END".into(),
        _ => {}
    }
    if ty >> 8 != NFNL_SUBSYS_NFTABLES {
        return format!("type {ty:#06x}");
    }
    let name = match ty & 0xff {
        0x00 => "NEWTABLE",
        0x01 => "GETTABLE",
        0x02 => "DELTABLE",
        0x03 => "NEWCHAIN",
        0x04 => "GETCHAIN",
        0x05 => "DELCHAIN",
        0x06 => "NEWRULE",
        0x07 => "GETRULE",
        0x08 => "DELRULE",
        0x09 => "NEWSET",
        0x0b => "DELSET",
        0x0c => "NEWSETELEM",
        0x0e => "DELSETELEM",
        _ => return format!("nftables message {:#04x}", ty & 0xff),
    };
    name.into()
}

/// Sends a finalized batch in one `send` and checks the acknowledgements.
/// See [`send_batch_with`].
pub fn send_batch(bytes: &[u8]) -> Result<(), NatError> {
    send_batch_with("the nftables batch", bytes, &|_| None)
}

/// Sends a finalized (and possibly patched) batch on a fresh
/// `NETLINK_NETFILTER` socket in the calling thread's network namespace,
/// in one `send`, and reads the replies until every message that asked for
/// an acknowledgement has one, at most [`ACK_TIMEOUT`].
///
/// The kernel applies the batch as one transaction: when any message is
/// refused nothing changes. The first refusal is returned as
/// [`NatError::Kernel`] with `what` and, in `detail`, the refused message
/// (`describe(seq)` if it knows it, its type and sequence number), the errno
/// and, when the kernel sent extended-ack data, the offending attribute's
/// offset.
pub fn send_batch_with(
    what: &str,
    bytes: &[u8],
    describe: &dyn Fn(u32) -> Option<String>,
) -> Result<(), NatError> {
    let msgs = messages(bytes)?;
    if msgs.is_empty() {
        return Ok(());
    }
    let kinds: BTreeMap<u32, u16> = msgs.iter().map(|m| (m.seq, m.ty)).collect();
    let mut pending: BTreeSet<u32> = msgs
        .iter()
        .filter(|m| {
            m.flags & NLM_F_ACK != 0 && m.ty != NFNL_MSG_BATCH_BEGIN && m.ty != NFNL_MSG_BATCH_END
        })
        .map(|m| m.seq)
        .collect();
    let kernel = |detail: String| NatError::Kernel {
        what: what.to_string(),
        detail,
    };
    let io_err = |context: &str, source: io::Error| NatError::Io {
        context: format!("{context} (for {what})"),
        source,
    };

    let sock = netfilter_socket(what)?;
    // Short acks (no copy of each request) and the offending attribute's offset.
    // Both exist since Linux 4.12; without them errors are only less detailed.
    let _ = sock.set_cap_ack(true);
    let _ = sock.set_ext_ack(true);
    // A batch larger than the send buffer fails with EMSGSIZE, and many
    // acks can overrun the receive buffer: size both for this batch.
    let sndbuf = bytes.len() + 64 * 1024;
    if setsockopt(&sock, sockopt::SndBufForce, &sndbuf).is_err() {
        let _ = setsockopt(&sock, sockopt::SndBuf, &sndbuf);
    }
    let rcvbuf = (msgs.len() * 1024).max(256 * 1024);
    if setsockopt(&sock, sockopt::RcvBufForce, &rcvbuf).is_err() {
        let _ = setsockopt(&sock, sockopt::RcvBuf, &rcvbuf);
    }

    let sent = sock.send(bytes, 0).map_err(|e| {
        kernel(format!(
            "sending the {}-byte batch ({} messages) failed: {e}",
            bytes.len(),
            msgs.len()
        ))
    })?;
    if sent != bytes.len() {
        return Err(kernel(format!(
            "short send: {sent} of {} bytes",
            bytes.len()
        )));
    }

    let deadline = Instant::now() + ACK_TIMEOUT;
    let mut buf: Vec<u8> = Vec::with_capacity(128 * 1024);
    loop {
        buf.clear();
        match sock.recv(&mut buf, libc::MSG_DONTWAIT) {
            Ok(_) => {
                if let Some(refusal) = check_replies(&buf, &mut pending) {
                    let desc = describe(refusal.seq);
                    let kind = kinds.get(&refusal.seq).map(|t| msg_type_name(*t));
                    return Err(kernel(refusal.detail(desc, kind)));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Everything the kernel had to say was queued before `send`
                // returned: once drained, all acks are in or none will come.
                if pending.is_empty() {
                    return Ok(());
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let seqs: Vec<String> = pending.iter().map(|s| s.to_string()).collect();
                    return Err(kernel(format!(
                        "no acknowledgement within {:?} for message(s) with sequence number {} (a malformed message gets no reply); the batch was probably not applied",
                        ACK_TIMEOUT,
                        seqs.join(", ")
                    )));
                }
                let ms = u16::try_from(left.as_millis().clamp(1, 100)).unwrap_or(100);
                let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(ms)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        return Err(io_err("waiting for nftables acknowledgements", e.into()))
                    }
                }
            }
            Err(e) => {
                return Err(kernel(format!(
                "reading acknowledgements failed: {e}; the batch may or may not have been applied"
            )))
            }
        }
    }
}

/// What a netfilter dump returned.
pub(crate) enum Dump {
    /// The reply messages, concatenated (each datagram holds whole messages).
    Messages(Vec<u8>),
    /// The ruleset changed during the dump (`NLM_F_DUMP_INTR`): ask again.
    Interrupted,
    /// The kernel answered the request with this errno (e.g. ENOENT).
    Refused(i32),
}

const NLMSG_DONE: u16 = 3;
const NLM_F_MULTI: u16 = 0x02;
const NLM_F_DUMP_INTR: u16 = 0x10;

/// A bound `NETLINK_NETFILTER` socket; errors say what it was for.
fn netfilter_socket(what: &str) -> Result<Socket, NatError> {
    let io_err = |context: &str, source: io::Error| NatError::Io {
        context: format!("{context} (for {what})"),
        source,
    };
    let mut sock = Socket::new(NETLINK_NETFILTER)
        .map_err(|e| io_err("opening a NETLINK_NETFILTER socket", e))?;
    sock.bind_auto()
        .map_err(|e| io_err("binding the NETLINK_NETFILTER socket", e))?;
    Ok(sock)
}

/// Sends one dump request (`NLM_F_DUMP`) on a fresh `NETLINK_NETFILTER`
/// socket and collects the replies until `NLMSG_DONE`, at most
/// [`ACK_TIMEOUT`] between two datagrams.
pub(crate) fn dump(what: &str, request: &[u8]) -> Result<Dump, NatError> {
    let kernel = |detail: String| NatError::Kernel {
        what: what.to_string(),
        detail,
    };
    let io_err = |context: &str, source: io::Error| NatError::Io {
        context: format!("{context} (for {what})"),
        source,
    };
    let sock = netfilter_socket(what)?;
    let _ = sock.set_ext_ack(true);
    let sent = sock
        .send(request, 0)
        .map_err(|e| kernel(format!("sending the dump request failed: {e}")))?;
    if sent != request.len() {
        return Err(kernel(format!(
            "short send: {sent} of {} bytes",
            request.len()
        )));
    }
    let mut out = Vec::new();
    let mut interrupted = false;
    let mut buf: Vec<u8> = Vec::with_capacity(128 * 1024);
    loop {
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(ACK_TIMEOUT.as_millis()).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => return Err(kernel(format!("no reply within {ACK_TIMEOUT:?}"))),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io_err("waiting for a netfilter dump", e.into())),
        }
        buf.clear();
        match sock.recv(&mut buf, libc::MSG_DONTWAIT) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(kernel(format!("reading the dump failed: {e}"))),
        }
        let msgs = messages(&buf).map_err(|e| kernel(format!("unreadable reply: {e}")))?;
        for m in msgs {
            if m.flags & NLM_F_DUMP_INTR != 0 {
                interrupted = true;
            }
            match m.ty {
                NLMSG_DONE => {
                    return Ok(if interrupted {
                        Dump::Interrupted
                    } else {
                        Dump::Messages(out)
                    })
                }
                NLMSG_ERROR => {
                    let code = read_u32(&buf, m.off + NLMSG_HDRLEN).unwrap_or(0) as i32;
                    if code != 0 {
                        return Ok(Dump::Refused(code.saturating_abs()));
                    }
                    // An ack without error ends a request that was no dump.
                    return Ok(Dump::Messages(out));
                }
                _ => {
                    out.extend_from_slice(&buf[m.off..m.off + m.len]);
                    // Keep messages 4-byte aligned in `out`.
                    out.resize(align4(out.len()), 0);
                    if m.flags & NLM_F_MULTI == 0 {
                        return Ok(Dump::Messages(out));
                    }
                }
            }
        }
    }
}

/// The kernel's refusal of one message.
struct Refusal {
    seq: u32,
    errno: i32,
    attr_offset: Option<u32>,
    message: Option<String>,
}

impl Refusal {
    fn detail(&self, desc: Option<String>, kind: Option<String>) -> String {
        let err = io::Error::from_raw_os_error(self.errno);
        let kind = kind.unwrap_or_else(|| "message".into());
        let mut s = match desc {
            Some(d) => format!("{d} ({kind}, sequence number {}): {err}", self.seq),
            None => format!("{kind} with sequence number {}: {err}", self.seq),
        };
        if let Some(m) = &self.message {
            s.push_str(&format!(" ({m})"));
        }
        if let Some(off) = self.attr_offset {
            s.push_str(&format!(
                "; offending attribute at byte {off} of the message"
            ));
        }
        s
    }
}

/// Reads the NLMSG_ERROR replies in `buf`, removing acknowledged sequence
/// numbers from `pending`; returns the first refusal.
fn check_replies(buf: &[u8], pending: &mut BTreeSet<u32>) -> Option<Refusal> {
    // A reply the kernel cut short is not ours to judge; skip what does not parse.
    let msgs = messages(buf).unwrap_or_default();
    for m in msgs {
        if m.ty != NLMSG_ERROR || m.len < NLMSG_HDRLEN + 4 {
            continue;
        }
        let Some(code) = read_u32(buf, m.off + NLMSG_HDRLEN) else {
            continue;
        };
        let errno = (code as i32).saturating_abs();
        pending.remove(&m.seq);
        if errno == 0 {
            continue;
        }
        let mut refusal = Refusal {
            seq: m.seq,
            errno,
            attr_offset: None,
            message: None,
        };
        if m.flags & NLM_F_ACK_TLVS != 0 {
            // error code, then the request's header (or the whole request).
            let inner = m.off + NLMSG_HDRLEN + 4;
            let inner_len = if m.flags & NLM_F_CAPPED != 0 {
                NLMSG_HDRLEN
            } else {
                read_u32(buf, inner).map_or(NLMSG_HDRLEN, |l| align4(l as usize))
            };
            if let Ok(tlvs) = attrs(buf, inner + inner_len, m.off + m.len) {
                for a in tlvs {
                    let p = a.payload(buf);
                    match a.kind() {
                        NLMSGERR_ATTR_MSG => {
                            let p = p.strip_suffix(&[0]).unwrap_or(p);
                            refusal.message = Some(String::from_utf8_lossy(p).into_owned());
                        }
                        NLMSGERR_ATTR_OFFS => {
                            refusal.attr_offset =
                                <[u8; 4]>::try_from(p).ok().map(u32::from_ne_bytes);
                        }
                        _ => {}
                    }
                }
            }
        }
        return Some(refusal);
    }
    None
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

    #[test]
    fn replies_are_matched_by_sequence_number() {
        fn err_reply(seq: u32, errno: i32, offset: Option<u32>) -> Vec<u8> {
            let mut body = Vec::new();
            body.extend_from_slice(&(-errno).to_ne_bytes());
            body.extend_from_slice(&[0u8; 16]);
            let mut flags = NLM_F_CAPPED;
            if let Some(off) = offset {
                flags |= NLM_F_ACK_TLVS;
                body.extend_from_slice(&8u16.to_ne_bytes());
                body.extend_from_slice(&NLMSGERR_ATTR_OFFS.to_ne_bytes());
                body.extend_from_slice(&off.to_ne_bytes());
            }
            let mut m = Vec::new();
            m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
            m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m.extend_from_slice(&flags.to_ne_bytes());
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&body);
            m
        }
        let mut pending: BTreeSet<u32> = [1, 2, 3].into();
        let ok = [err_reply(1, 0, None), err_reply(2, 0, None)].concat();
        assert!(check_replies(&ok, &mut pending).is_none());
        assert_eq!(pending, [3].into());
        let refused = check_replies(&err_reply(3, libc::EINVAL, Some(64)), &mut pending).unwrap();
        assert_eq!(
            (refused.seq, refused.errno, refused.attr_offset),
            (3, libc::EINVAL, Some(64))
        );
        let text = refused.detail(Some("rule x".into()), Some("NEWRULE".into()));
        assert!(
            text.contains("rule x (NEWRULE, sequence number 3)"),
            "{text}"
        );
        assert!(text.contains("os error 22"), "{text}");
        assert!(text.contains("byte 64"), "{text}");
        assert!(pending.is_empty());
    }

    #[test]
    fn type_names() {
        assert_eq!(msg_type_name(NFT_MSG_NEWRULE_TYPE), "NEWRULE");
        assert_eq!(msg_type_name(0x0a02), "DELTABLE");
        assert_eq!(msg_type_name(NFNL_MSG_BATCH_BEGIN), "BATCH_BEGIN");
    }
}
