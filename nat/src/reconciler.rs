//! Keeps the NAT rules of one address family in place.
//!
//! A dedicated thread (the backends block) owns the backend. At start it
//! removes what the other modes hold of weft's and flannel's rules in its
//! family (a node switched from iptables to nftables, or legacy to nft,
//! keeps no stale copy), then reconciles: observe, and apply only when the
//! kernel differs. It reconciles again when the rules change, when the
//! backend's change signal fires (see [`crate::signal`]: nf_tables
//! notifications, or the xtables lock file closed by an iptables-legacy
//! command, so a flushed
//! chain, a deleted table or jump is back within milliseconds), and on the
//! slow resync. Between those it sleeps in one `poll`: no timer wakes it,
//! and no command is forked to look.
//!
//! A dual-stack node runs two loops, one per family (the rule set says
//! which); each touches only its family's chains or table, so they may even
//! run in different modes.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::error::NatError;
use crate::family::Family;
use crate::metrics::{NatMetrics, Outcome};
use crate::rules::RuleSet;
use crate::signal::{self, ChangeSignal, Ready};
use crate::{NatBackend, NatMode};

/// Loop timing.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    /// How often the rules are re-read where the backend's change signal
    /// cannot be had (a fallback; every mode normally has one).
    pub poll: Duration,
    /// Full re-check in every mode (flanneld's `--iptables-resync`).
    pub resync: Duration,
    /// Where to count (the agent registers them).
    pub metrics: NatMetrics,
}

impl Default for LoopOptions {
    fn default() -> Self {
        LoopOptions {
            poll: Duration::from_millis(200),
            resync: Duration::from_secs(5),
            metrics: NatMetrics::default(),
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
    /// The current failure streak's last error (`None` while it works).
    pub last_error: Mutex<Option<Arc<NatError>>>,
}

enum Command {
    Update(RuleSet),
    ReconcileNow(mpsc::Sender<Result<bool, NatError>>),
    Stop,
}

/// Controls the NAT loop; dropping it stops the loop (the rules stay).
pub struct ReconcilerHandle {
    tx: mpsc::Sender<Command>,
    /// Wakes the loop's `poll` after a command is sent.
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<NatStats>,
    mode: NatMode,
    family: Family,
}

impl ReconcilerHandle {
    /// The mode the loop programs.
    pub fn mode(&self) -> NatMode {
        self.mode
    }

    /// The address family the loop programs.
    pub fn family(&self) -> Family {
        self.family
    }

    fn send(&self, command: Command) -> Result<(), NatError> {
        self.tx.send(command).map_err(|_| NatError::Stopped)?;
        let _ = self.wake.write(1);
        Ok(())
    }

    /// Replaces the desired rules. Rules of the other family are refused
    /// (logged; the loop keeps the rules it has).
    pub fn update(&self, rules: RuleSet) {
        if rules.family != self.family {
            tracing::error!(family = %self.family, rules = %rules.family, "NAT rules of the other family refused");
            return;
        }
        let _ = self.send(Command::Update(rules));
    }

    /// Reconciles now; whether it wrote.
    pub fn reconcile_now(&self) -> Result<bool, NatError> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::ReconcileNow(tx))?;
        rx.recv().map_err(|_| NatError::Stopped)?
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
        let _ = self.send(Command::Stop);
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
    /// namespace, in the family of `rules` (one loop per enabled family).
    /// The first reconcile happens before this returns, so the caller knows
    /// the rules are in place (or why not).
    pub fn spawn(
        mode: NatMode,
        rules: RuleSet,
        options: LoopOptions,
    ) -> Result<ReconcilerHandle, NatError> {
        let family = rules.family;
        let (tx, rx) = mpsc::channel();
        let (first_tx, first_rx) = mpsc::channel();
        let stats = Arc::new(NatStats::default());
        let loop_stats = stats.clone();
        let wake = Arc::new(
            EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).map_err(|e| {
                NatError::Io {
                    context: "cannot make the NAT loop's eventfd".into(),
                    source: e.into(),
                }
            })?,
        );
        let loop_wake = wake.clone();
        let inbox = Inbox {
            rx,
            wake: loop_wake,
        };
        let thread = std::thread::Builder::new()
            .name(format!("nat:{mode}:{}", family.nft_family()))
            .spawn(move || run(mode, rules, options, inbox, first_tx, loop_stats))
            .map_err(|e| NatError::Io {
                context: "cannot start the NAT thread".into(),
                source: e,
            })?;
        let handle = ReconcilerHandle {
            tx,
            wake,
            thread: Some(thread),
            stats,
            mode,
            family,
        };
        match first_rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(NatError::Stopped),
        }
    }
}

/// Removes weft's and flannel's rules of `family` in every mode but `keep`.
pub fn remove_other_modes(keep: NatMode, family: Family) {
    remove_modes(NatMode::ALL.into_iter().filter(|m| *m != keep), family);
}

/// Removes weft's and flannel's rules of `family` in every mode: for a
/// family the node does not (or no longer) use, e.g. flannel's
/// `ip6 flannel-ipv6` table on an IPv4-only node. Failures are logged.
pub fn remove_family(family: Family) {
    remove_modes(NatMode::ALL.into_iter(), family);
}

fn remove_modes(modes: impl Iterator<Item = NatMode>, family: Family) {
    for mode in modes {
        match mode.backend(family).remove() {
            Ok(()) => {}
            Err(NatError::MissingBinary { .. }) => {}
            Err(e) => {
                tracing::warn!(%mode, %family, error = %e, "cannot remove the other mode's rules")
            }
        }
    }
}

/// The loop's commands and what wakes it for them.
struct Inbox {
    rx: mpsc::Receiver<Command>,
    wake: Arc<EventFd>,
}

fn run(
    mode: NatMode,
    mut rules: RuleSet,
    options: LoopOptions,
    inbox: Inbox,
    first: mpsc::Sender<Result<(), NatError>>,
    stats: Arc<NatStats>,
) {
    let family = rules.family;
    let mut backend = mode.backend(family);
    remove_other_modes(mode, family);
    let counting = |repair| Counting {
        stats: &stats,
        metrics: &options.metrics,
        repair,
    };
    let first_result = reconcile(backend.as_mut(), &rules, counting(false));
    let _ = first.send(first_result.map(|_| ()));
    // Opened after the first write: iptables' lock file exists by then.
    let mut signal: Option<Box<dyn ChangeSignal>> = match backend.change_signal() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(%mode, %family, error = %e, poll = ?options.poll, "no change signal for the NAT rules; polling instead");
            None
        }
    };
    let mut next_resync = Instant::now() + options.resync;
    let mut broken = 0;
    // New rules to put in place: the write that follows is no repair.
    let mut updated = false;
    loop {
        let left = next_resync.saturating_duration_since(Instant::now());
        let timeout = match &signal {
            Some(_) => left,
            None => left.min(options.poll),
        };
        let ready = {
            let mut fds = vec![inbox.wake.as_fd()];
            if let Some(s) = &signal {
                fds.push(s.fd());
            }
            signal::wait(&fds, timeout)
        };
        let is = |i: usize| ready.iter().any(|(j, _)| *j == i);
        let mut dirty = signal.is_none() && ready.is_empty();
        if ready.contains(&(1, Ready::Broken)) {
            // An error on the signal: a netlink overrun clears when read (and
            // means changes were missed); one that stays would make the loop
            // spin, so after a few in a row it polls instead.
            broken += 1;
            dirty = true;
            if let Some(s) = signal.as_mut() {
                s.drain();
            }
            if broken >= 3 {
                tracing::warn!(%mode, %family, poll = ?options.poll, "the NAT change signal keeps failing; polling instead");
                signal = None;
            }
        } else {
            broken = 0;
        }
        if is(0) {
            let _ = inbox.wake.read();
            loop {
                match inbox.rx.try_recv() {
                    Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return,
                    Ok(Command::Update(r)) => {
                        rules = r;
                        dirty = true;
                        updated = true;
                    }
                    Ok(Command::ReconcileNow(reply)) => {
                        let r = reconcile(backend.as_mut(), &rules, counting(!updated));
                        updated = false;
                        refresh(&mut signal);
                        next_resync = Instant::now() + options.resync;
                        let _ = reply.send(r);
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
        }
        if ready.contains(&(1, Ready::Readable)) {
            if let Some(s) = signal.as_mut() {
                dirty |= s.drain();
            }
        }
        if Instant::now() >= next_resync {
            dirty = true;
        }
        if dirty {
            let _ = reconcile(backend.as_mut(), &rules, counting(!updated));
            updated = false;
            refresh(&mut signal);
            next_resync = Instant::now() + options.resync;
        }
    }
}

/// After a reconcile: a signal that lost its source sets itself up again.
/// What the reconcile's own write caused is deliberately not drained: that
/// would also swallow a change someone else made meanwhile (the IPv4 and
/// IPv6 loops of a dual-stack node share iptables' lock file and wake each
/// other); it costs one more look, which finds nothing to write.
fn refresh(signal: &mut Option<Box<dyn ChangeSignal>>) {
    if let Some(s) = signal.as_mut() {
        s.refresh();
    }
}

/// Where a reconcile reports to, and whether a write now is a repair.
struct Counting<'a> {
    stats: &'a NatStats,
    metrics: &'a NatMetrics,
    repair: bool,
}

fn reconcile(
    backend: &mut dyn NatBackend,
    rules: &RuleSet,
    counting: Counting<'_>,
) -> Result<bool, NatError> {
    let stats = counting.stats;
    stats.observes.fetch_add(1, Ordering::Relaxed);
    let began = Instant::now();
    let result = backend.reconcile(rules);
    counting.metrics.record(
        backend.family(),
        backend.mode(),
        Outcome {
            took: began.elapsed(),
            wrote: result.as_ref().ok().copied(),
            repair: counting.repair,
        },
    );
    let Ok(mut last) = stats.last_error.lock() else {
        return result;
    };
    match &result {
        Ok(wrote) => {
            if *wrote {
                stats.applies.fetch_add(1, Ordering::Relaxed);
                tracing::info!(mode = %backend.mode(), family = %backend.family(), "NAT rules written");
            }
            if last.take().is_some() {
                tracing::info!(mode = %backend.mode(), family = %backend.family(), "NAT reconcile works again");
            }
        }
        Err(e) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            // Once per failure streak; retried on every signal and resync.
            if last.is_none() {
                tracing::error!(mode = %backend.mode(), family = %backend.family(), error = %e, "NAT reconcile failed; the previous rules stay, retrying");
            } else {
                tracing::debug!(mode = %backend.mode(), family = %backend.family(), error = %e, "NAT reconcile still failing");
            }
        }
    }
    match result {
        Ok(wrote) => Ok(wrote),
        Err(e) => {
            let e = Arc::new(e);
            *last = Some(e.clone());
            Err(NatError::Failing(e))
        }
    }
}
