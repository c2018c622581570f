//! Keeps the NAT rules in place.
//!
//! A dedicated thread (the backends block) owns the backend. At start it
//! removes what the other modes hold of weft's and flannel's rules (a node
//! switched from iptables to nftables, or legacy to nft, keeps no stale
//! copy), then reconciles: observe, and apply only when the kernel differs.
//! It reconciles again when the rules change, on every nf_tables netlink
//! notification (iptables-nft and native nftables: a flushed chain, a
//! deleted table or jump is back within milliseconds), on a cheap poll for
//! iptables-legacy (which sends no notifications), and on a slow resync.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netlink_sys::Socket;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::NatError;
use crate::rules::RuleSet;
use crate::{NatBackend, NatMode};

/// `NETLINK_NETFILTER`.
const NETLINK_NETFILTER: isize = 12;
/// `NFNLGRP_NFTABLES`: every nf_tables change (also iptables-nft's).
const NFNLGRP_NFTABLES: u32 = 7;

/// Loop timing.
#[derive(Debug, Clone, Copy)]
pub struct LoopOptions {
    /// How often iptables-legacy is re-read (it has no change notifications).
    pub poll: Duration,
    /// Full re-check in every mode (flanneld's `--iptables-resync`).
    pub resync: Duration,
}

impl Default for LoopOptions {
    fn default() -> Self {
        LoopOptions {
            poll: Duration::from_millis(200),
            resync: Duration::from_secs(5),
        }
    }
}

/// Counters since start.
#[derive(Debug, Default)]
pub struct NatStats {
    /// Reads of the kernel's rules.
    pub observes: AtomicU64,
    /// Transactions written.
    pub applies: AtomicU64,
    /// Reconciles that failed.
    pub failures: AtomicU64,
    /// The last failure.
    pub last_error: Mutex<Option<String>>,
}

enum Command {
    Update(RuleSet),
    ReconcileNow(mpsc::Sender<Result<bool, String>>),
    Stop,
}

/// Controls the NAT loop; dropping it stops the loop (the rules stay).
pub struct ReconcilerHandle {
    tx: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<NatStats>,
    mode: NatMode,
}

impl ReconcilerHandle {
    /// The mode the loop programs.
    pub fn mode(&self) -> NatMode {
        self.mode
    }

    /// Replaces the desired rules.
    pub fn update(&self, rules: RuleSet) {
        let _ = self.tx.send(Command::Update(rules));
    }

    /// Reconciles now; whether it wrote.
    pub fn reconcile_now(&self) -> Result<bool, String> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Command::ReconcileNow(tx))
            .map_err(|_| "the NAT loop has stopped".to_string())?;
        rx.recv()
            .map_err(|_| "the NAT loop has stopped".to_string())?
    }

    /// Counters.
    pub fn stats(&self) -> &NatStats {
        &self.stats
    }

    /// Stops the loop and waits for it. The rules stay in place.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.tx.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ReconcilerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The NAT reconcile loop.
pub struct Reconciler;

impl Reconciler {
    /// Starts the loop on a thread of its own, in the calling thread's network
    /// namespace. The first reconcile happens before this returns, so the
    /// caller knows the rules are in place (or why not).
    pub fn spawn(
        mode: NatMode,
        rules: RuleSet,
        options: LoopOptions,
    ) -> Result<ReconcilerHandle, NatError> {
        let (tx, rx) = mpsc::channel();
        let (first_tx, first_rx) = mpsc::channel();
        let stats = Arc::new(NatStats::default());
        let loop_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name(format!("nat:{mode}"))
            .spawn(move || run(mode, rules, options, rx, first_tx, loop_stats))
            .map_err(|e| NatError::Io {
                context: "cannot start the NAT thread".into(),
                source: e,
            })?;
        let handle = ReconcilerHandle {
            tx,
            thread: Some(thread),
            stats,
            mode,
        };
        match first_rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(NatError::Kernel {
                what: "the NAT loop".into(),
                detail: "stopped at start".into(),
            }),
        }
    }
}

/// Removes weft's and flannel's rules of every mode but `keep`.
pub fn remove_other_modes(keep: NatMode) {
    for other in NatMode::ALL.into_iter().filter(|m| *m != keep) {
        match other.backend().remove() {
            Ok(()) => {}
            Err(NatError::MissingBinary { .. }) => {}
            Err(e) => {
                tracing::warn!(mode = %other, error = %e, "cannot remove the other mode's rules")
            }
        }
    }
}

fn run(
    mode: NatMode,
    mut rules: RuleSet,
    options: LoopOptions,
    rx: mpsc::Receiver<Command>,
    first: mpsc::Sender<Result<(), NatError>>,
    stats: Arc<NatStats>,
) {
    let mut backend = mode.backend();
    remove_other_modes(mode);
    let mut events = match mode {
        NatMode::IptablesLegacy => None,
        _ => match NfEvents::open() {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(error = %e, "no nf_tables notifications; polling instead");
                None
            }
        },
    };
    let first_result = reconcile(backend.as_mut(), &rules, &stats);
    let _ = first.send(first_result.map(|_| ()));
    let mut last_check = Instant::now();
    loop {
        let mut dirty = false;
        // Wait for a command, an event, or the poll/resync period.
        let wait = match &events {
            Some(_) => Duration::from_millis(20),
            None => options.poll,
        };
        let command = match rx.recv_timeout(wait) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        match command {
            Some(Command::Stop) => return,
            Some(Command::Update(r)) => {
                rules = r;
                dirty = true;
            }
            Some(Command::ReconcileNow(reply)) => {
                let r = reconcile(backend.as_mut(), &rules, &stats).map_err(|e| e.to_string());
                last_check = Instant::now();
                let _ = reply.send(r);
            }
            None => {}
        }
        match &mut events {
            Some(ev) => dirty |= ev.changed(),
            None => dirty = true,
        }
        if last_check.elapsed() >= options.resync {
            dirty = true;
        }
        if dirty {
            last_check = Instant::now();
            let _ = reconcile(backend.as_mut(), &rules, &stats);
        }
    }
}

fn reconcile(
    backend: &mut dyn NatBackend,
    rules: &RuleSet,
    stats: &NatStats,
) -> Result<bool, NatError> {
    stats.observes.fetch_add(1, Ordering::Relaxed);
    match backend.reconcile(rules) {
        Ok(wrote) => {
            if wrote {
                stats.applies.fetch_add(1, Ordering::Relaxed);
                tracing::info!(mode = %backend.mode(), "NAT rules written");
            }
            Ok(wrote)
        }
        Err(e) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(mode = %backend.mode(), error = %e, "NAT reconcile failed; the previous rules stay");
            if let Ok(mut last) = stats.last_error.lock() {
                *last = Some(e.to_string());
            }
            Err(e)
        }
    }
}

/// A socket on the nf_tables notification group.
struct NfEvents {
    socket: Socket,
    buf: Vec<u8>,
}

impl NfEvents {
    fn open() -> Result<NfEvents, NatError> {
        let io = |context: &str| {
            let context = context.to_string();
            move |source| NatError::Io { context, source }
        };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io("netfilter netlink socket"))?;
        socket.bind_auto().map_err(io("bind netfilter socket"))?;
        socket
            .add_membership(NFNLGRP_NFTABLES)
            .map_err(io("join NFNLGRP_NFTABLES"))?;
        socket
            .set_non_blocking(true)
            .map_err(io("non-blocking netfilter socket"))?;
        let _ = socket.set_rx_buf_sz(1 << 20);
        Ok(NfEvents {
            socket,
            buf: vec![0; 1 << 16],
        })
    }

    /// True if any notification arrived (or was lost to an overrun); drains them all.
    fn changed(&mut self) -> bool {
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
            return false;
        }
        loop {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return true,
            }
        }
    }
}
