//! What tells the NAT loop that the kernel's rules may have changed.
//!
//! Each backend says how its rules announce changes
//! ([`NatBackend::change_signal`](crate::NatBackend::change_signal)); the
//! loop waits on that file descriptor and never asks which mode it runs:
//!
//! - nf_tables (native nftables and iptables-nft) sends a netlink
//!   notification for every change: [`NfTablesEvents`], which counts only
//!   changes in its loop's family (`ip` or `ip6`), so the IPv4 and IPv6
//!   loops of a dual-stack node do not wake each other.
//! - iptables-legacy sends none, but every iptables command that changes
//!   (or lists) rules holds the xtables lock file while it works and closes
//!   it once its change is committed: [`XtablesLockWatch`] is an inotify
//!   watch for that close, so a hand-made `iptables -F` wakes the loop
//!   (after the flush, not before it) without weft ever polling with a fork.
//!   (`iptables-save` does not take the lock; a program writing the tables
//!   without the lock is caught by the resync.) `ip6tables` uses the same
//!   file: a change of the other family costs a look, never a write.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use netlink_sys::Socket;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::error::NatError;
use crate::family::Family;
use crate::nfnl::NFNL_SUBSYS_NFTABLES;
use crate::nlmsg;

/// `NETLINK_NETFILTER`.
const NETLINK_NETFILTER: isize = 12;
/// `NFNLGRP_NFTABLES`: every nf_tables change (also iptables-nft's).
const NFNLGRP_NFTABLES: u32 = 7;

/// A source of "the rules may have changed" signals.
pub trait ChangeSignal: Send {
    /// Readable when a signal is pending.
    fn fd(&self) -> BorrowedFd<'_>;

    /// Consumes every pending signal; true if there was any (or some were
    /// lost: then a look is due as well).
    fn drain(&mut self) -> bool;

    /// Called after each reconcile: a signal that can lose its source
    /// (a watched file deleted) sets itself up again here.
    fn refresh(&mut self) {}
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> NatError {
    let context = context.to_string();
    move |source| NatError::Io { context, source }
}

/// A socket on the nf_tables notification group, counting the changes of
/// one family.
pub struct NfTablesEvents {
    socket: Socket,
    family: Family,
    buf: Vec<u8>,
}

/// Whether `buf` (one datagram of nf_tables notifications) tells of a
/// change in `family`: a table, chain, rule, set or element message whose
/// `nfgenmsg` carries that family. Unreadable input counts as a change
/// (better one look too many than a missed repair). The generation message
/// that closes every transaction has no family and does not count alone.
pub(crate) fn has_family(buf: &[u8], family: Family) -> bool {
    let Ok(msgs) = nlmsg::messages(buf) else {
        return true;
    };
    msgs.iter().any(|m| {
        m.ty >> 8 == NFNL_SUBSYS_NFTABLES
            && m.len >= 20
            && buf.get(m.off + 16) == Some(&family.nfproto())
    })
}

impl NfTablesEvents {
    /// Joins the group in the current network namespace; only changes in
    /// `family` count.
    pub fn open(family: Family) -> Result<NfTablesEvents, NatError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io("netfilter netlink socket"))?;
        socket.bind_auto().map_err(io("bind netfilter socket"))?;
        socket
            .add_membership(NFNLGRP_NFTABLES)
            .map_err(io("join NFNLGRP_NFTABLES"))?;
        socket
            .set_non_blocking(true)
            .map_err(io("non-blocking netfilter socket"))?;
        let _ = socket.set_rx_buf_sz(1 << 20);
        Ok(NfTablesEvents {
            socket,
            family,
            buf: vec![0; 1 << 16],
        })
    }
}

impl ChangeSignal for NfTablesEvents {
    fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    fn drain(&mut self) -> bool {
        let mut seen = false;
        loop {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(0) => return seen,
                Ok(n) => {
                    // A datagram larger than the buffer arrives cut short:
                    // `has_family` then counts it as a change.
                    let got = self.buf.get(..n).unwrap_or(&self.buf[..]);
                    seen |= has_family(got, self.family);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return seen,
                // An overrun (ENOBUFS): notifications were lost.
                Err(_) => return true,
            }
        }
    }
}

/// An inotify watch on the xtables lock file (see the module docs).
pub struct XtablesLockWatch {
    inotify: Inotify,
    path: PathBuf,
    /// False once the file was deleted (the kernel drops the watch).
    watching: bool,
}

impl XtablesLockWatch {
    /// The lock file iptables uses: `$XTABLES_LOCKFILE`, else `/run/xtables.lock`.
    pub fn lock_path() -> PathBuf {
        std::env::var_os("XTABLES_LOCKFILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/xtables.lock"))
    }

    /// Watches the lock file (it exists once any iptables command ran,
    /// weft's own first write included).
    pub fn open() -> Result<XtablesLockWatch, NatError> {
        Self::open_at(Self::lock_path())
    }

    /// Watches the lock file at `path`.
    pub fn open_at(path: PathBuf) -> Result<XtablesLockWatch, NatError> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| io("inotify")(e.into()))?;
        inotify
            .add_watch(&path, AddWatchFlags::IN_CLOSE)
            .map_err(|e| io(&format!("watch {}", path.display()))(e.into()))?;
        Ok(XtablesLockWatch {
            inotify,
            path,
            watching: true,
        })
    }
}

impl ChangeSignal for XtablesLockWatch {
    fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    fn drain(&mut self) -> bool {
        let mut seen = false;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            if events
                .iter()
                .any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED))
            {
                self.watching = false;
            }
            seen = true;
        }
        seen
    }

    fn refresh(&mut self) {
        // The lock file was deleted (the next iptables command makes it
        // again): watch the new one; until then the resync covers.
        if !self.watching {
            self.watching = self
                .inotify
                .add_watch(&self.path, AddWatchFlags::IN_CLOSE)
                .is_ok();
        }
    }
}

/// What [`wait`] saw of each file descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// Data to read.
    Readable,
    /// An error or hang-up: it will never become quiet again.
    Broken,
}

/// Waits until one of `fds` is readable (or broken) or `timeout` passes;
/// the index and state of each that is.
pub fn wait(fds: &[BorrowedFd<'_>], timeout: std::time::Duration) -> Vec<(usize, Ready)> {
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    match poll(&mut polled, PollTimeout::from(ms)) {
        Ok(n) if n > 0 => polled
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let r = p.revents()?;
                if r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL)
                    && !r.contains(PollFlags::POLLIN)
                {
                    Some((i, Ready::Broken))
                } else if r.contains(PollFlags::POLLIN) {
                    Some((i, Ready::Readable))
                } else {
                    None
                }
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// One nf_tables message of type `msg` whose nfgenmsg carries `family`.
    fn notification(msg: u16, family: u8) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | msg).to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(&[family, 0, 0, 0]);
        m
    }

    /// A loop wakes for changes of its own family only; the generation
    /// message (no family) does not count alone; garbage counts.
    #[test]
    fn notifications_count_for_their_family_only() {
        let v6_rule = notification(0x06, 10);
        let v4_chain = notification(0x03, 2);
        let newgen = notification(0x0f, 0);
        assert!(has_family(&v6_rule, Family::V6));
        assert!(!has_family(&v6_rule, Family::V4));
        assert!(has_family(
            &[v4_chain.clone(), newgen.clone()].concat(),
            Family::V4
        ));
        assert!(!has_family(
            &[v4_chain, newgen.clone()].concat(),
            Family::V6
        ));
        assert!(!has_family(&newgen, Family::V4));
        assert!(
            has_family(&[1, 2, 3], Family::V6),
            "unreadable: a look is due"
        );
    }

    /// Closing the lock file (a command done with its change) signals,
    /// opening it (the change still to come) does not; a deleted and
    /// recreated file is watched again after `refresh`.
    #[test]
    fn the_lock_watch_signals_closes_and_survives_a_recreated_file() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("xtables.lock");
        std::fs::write(&lock, "").unwrap();
        let mut watch = XtablesLockWatch::open_at(lock.clone()).unwrap();
        assert!(!watch.drain(), "nothing yet");
        let held = std::fs::File::open(&lock).unwrap();
        assert!(!watch.drain(), "opening is not yet a change");
        drop(held);
        assert!(watch.drain(), "closing is a signal");
        std::fs::remove_file(&lock).unwrap();
        watch.drain();
        watch.refresh();
        std::fs::write(&lock, "").unwrap();
        watch.drain();
        watch.refresh();
        drop(std::fs::File::open(&lock).unwrap());
        assert!(watch.drain(), "the recreated file is watched");
    }
}
