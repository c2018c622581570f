//! The `NETLINK_NETFILTER` socket: sending a finalized nftables batch and
//! checking every acknowledgement (never waiting more than [`ACK_TIMEOUT`]),
//! and the small per-family (`ip`, `ip6`) dumps the nftables backend reads
//! chains and rules with (rustables' listings ask with `AF_UNSPEC`).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{setsockopt, sockopt};

use crate::error::NatError;
use crate::nlmsg::{align4, attrs, messages, read_u32, NLMSG_HDRLEN};

/// How long [`send_batch`] waits for the kernel's acknowledgements. The
/// kernel answers inside the `send` call, so this only matters when a
/// message was malformed (the kernel then answers nothing at all).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);

const NLMSG_ERROR: u16 = 2;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
/// The nftables subsystem of nfnetlink (the high byte of its message types).
pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 0x0a;

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
    let (kernel, io_err) = (kernel_error(what), io_error(what));

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

/// A kernel refusal or failure, saying what it was for.
fn kernel_error(what: &str) -> impl Fn(String) -> NatError + '_ {
    move |detail| NatError::Kernel {
        what: what.to_string(),
        detail,
    }
}

/// An I/O error with its context, saying what it was for.
fn io_error(what: &str) -> impl Fn(&str, io::Error) -> NatError + '_ {
    move |context, source| NatError::Io {
        context: format!("{context} (for {what})"),
        source,
    }
}

/// A bound `NETLINK_NETFILTER` socket; errors say what it was for.
fn netfilter_socket(what: &str) -> Result<Socket, NatError> {
    let io_err = io_error(what);
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
    let (kernel, io_err) = (kernel_error(what), io_error(what));
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
    use super::*;
    use crate::masq_flags::NFT_MSG_NEWRULE_TYPE;

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
