//! What tells the NAT loop that the kernel's rules may have changed.
//!
//! Each backend says how its rules announce changes
//! ([`NatBackend::change_signal`](crate::NatBackend::change_signal)); the
//! loop waits on that file descriptor and never asks which mode it runs:
//!
//! - nf_tables (native nftables and iptables-nft) sends a netlink
//!   notification for every change: [`NfTablesEvents`].
//! - iptables-legacy sends none, but every iptables command that changes
//!   (or lists) rules holds the xtables lock file while it works and closes
//!   it once its change is committed: [`XtablesLockWatch`] is an inotify
//!   watch for that close, so a hand-made `iptables -F` wakes the loop
//!   (after the flush, not before it) without weft ever polling with a fork.
//!   (`iptables-save` does not take the lock; a program writing the tables
//!   without the lock is caught by the resync.)

use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use netlink_sys::Socket;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::error::NatError;

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

/// A socket on the nf_tables notification group.
pub struct NfTablesEvents {
    socket: Socket,
    buf: Vec<u8>,
}

impl NfTablesEvents {
    /// Joins the group in the current network namespace.
    pub fn open() -> Result<NfTablesEvents, NatError> {
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
                Ok(_) => seen = true,
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
