//! Reading and checking netlink messages and attributes in a byte buffer:
//! the layout every nfnetlink batch, reply and dump shares (host-endian
//! headers, 4-byte aligned). Used by the masquerade-flags patcher, the
//! netfilter socket and the nftables dump parser; nothing here does I/O.

use std::io;

use crate::error::NatError;

/// `sizeof(struct nlmsghdr)`.
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct nfgenmsg)`.
pub(crate) const NFGENMSG_LEN: usize = 4;
/// `sizeof(struct nlattr)`.
pub(crate) const NLA_HDRLEN: usize = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;
/// The attribute holds attributes.
pub(crate) const NLA_F_NESTED: u16 = 0x8000;

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

pub(crate) fn malformed(offset: usize, reason: impl Into<String>) -> MalformedBatch {
    MalformedBatch {
        offset,
        reason: reason.into(),
    }
}

pub(crate) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

pub(crate) fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
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
