//! The overlay's reconcile loop.
//!
//! One task owns the kernel view. It wakes on a new input (leases or
//! configuration), on a netlink event (link, address, route, neighbour and FDB
//! groups), on a retry after a refused write, or on the slow resync tick; it
//! then brings the kernel to the desired state with the smallest plan.
//!
//! Work follows the change, not the cluster: the desired state is kept
//! current one lease at a time ([`Peers`]), and the keys a change (or a
//! kernel event) touched are the only ones diffed. The kernel view is a full
//! dump at start, after a socket overrun, after a link change and at every
//! resync tick, kept current in between by the applied plans and the
//! monitor's events; the underlay's and the device's facts are asked again
//! only when an event concerns them. So a change of one peer costs a few
//! lookups and its writes, and a restart on a programmed node costs no write
//! at all.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::backend::DataPlane;
use crate::diff::plan;
use crate::error::{KernelError, LeaseError};
use crate::family::Family;
use crate::kernel::monitor::Events;
use crate::kernel::{self, Kernel, Scope};
use crate::mac::MacAddr;
use crate::metrics::{plan_counts, Outcome, OverlayMetrics, SkipLabels};
use crate::model::{Lease, LocalNode, OverlayConfig};
use crate::peers::{Peers, Touched};
use crate::state::{Forward, Observed};

/// Everything the desired state is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Cluster configuration.
    pub config: OverlayConfig,
    /// This node.
    pub local: LocalNode,
    /// The other nodes' leases, oldest first.
    pub leases: Vec<Lease>,
}

/// Loop timing.
#[derive(Debug, Clone)]
pub struct Options {
    /// Full re-read of the kernel, whatever the events said.
    pub resync_every: Duration,
    /// First wait before retrying after a refused write (doubles up to 30 s).
    pub retry_after: Duration,
    /// A predecessor agent's data plane still runs: share what it holds
    /// (see [`Backend::data_plane`](crate::backend::Backend::data_plane)).
    pub taking_over: bool,
    /// Where to count (the agent registers them; by default nobody reads them).
    pub metrics: OverlayMetrics,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            resync_every: Duration::from_secs(30),
            retry_after: Duration::from_millis(200),
            taking_over: false,
            metrics: OverlayMetrics::default(),
        }
    }
}

/// The outcome of one reconcile.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The input generation this reconcile worked from.
    pub generation: u64,
    /// Kernel writes sent.
    pub writes: usize,
    /// The plan, summarised.
    pub plan: String,
    /// Whether the kernel view was re-read first.
    pub resynced: bool,
    /// Leases skipped for bad data.
    pub rejected: Vec<LeaseError>,
    /// Refused writes and failed reads.
    pub errors: Vec<Arc<KernelError>>,
    /// The device's MAC after the reconcile (what to publish).
    pub vtep_mac: Option<MacAddr>,
}

/// Counters since start.
#[derive(Debug, Default)]
pub struct Stats {
    /// Reconciles run.
    pub reconciles: AtomicU64,
    /// Kernel writes sent.
    pub writes: AtomicU64,
    /// Full kernel re-reads.
    pub resyncs: AtomicU64,
    /// Reconciles that ended with an error.
    pub failures: AtomicU64,
    /// Recomputations of every peer's entries (conflicts, new underlay or configuration).
    pub rebuilds: AtomicU64,
}

enum Command {
    ReconcileNow(oneshot::Sender<Report>),
    /// Stop reading and writing the kernel; keep the data plane running
    /// (see [`ReconcilerHandle::quiesce`]).
    Quiesce(oneshot::Sender<()>),
    /// Stop the data plane and end (see [`ReconcilerHandle::release`]).
    Release(oneshot::Sender<()>),
    /// See [`ReconcilerHandle::predecessor_gone`].
    PredecessorGone,
    /// See [`ReconcilerHandle::snapshot`].
    Snapshot(oneshot::Sender<Snapshot>),
    /// See [`ReconcilerHandle::pause`].
    Pause(bool, oneshot::Sender<()>),
}

/// What the reconciler wants, for `weft status` to hold against the kernel.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// The cluster network of this family.
    pub network: IpNet,
    /// The underlay interface.
    pub underlay: String,
    /// The overlay device, if the backend has one.
    pub device: Option<String>,
    /// The device's MAC (the VTEP MAC), as last seen.
    pub vtep_mac: Option<MacAddr>,
    /// Every peer's desired routes, neighbours, FDB entries and forwarder lines.
    pub desired: crate::state::Entries,
    /// Leases refused, each naming node and field.
    pub rejected: Vec<String>,
    /// Repairs paused ([`ReconcilerHandle::pause`]).
    pub paused: bool,
    /// How the backend's own data plane carries packets, if it has one
    /// ([`DataPlane::describe`](crate::backend::DataPlane::describe)).
    #[serde(default)]
    pub data_path: Option<String>,
}

/// A change of the input.
#[derive(Debug)]
enum Change {
    /// Everything anew.
    Replace(Input),
    /// Every lease anew (configuration and node kept).
    Leases(Vec<Lease>),
    /// One node's lease is new or changed.
    Upsert(Lease),
    /// One node's lease is gone.
    Remove(String),
}

/// The sending side of the input changes, numbered in the order sent.
struct Inbox {
    generation: u64,
    tx: mpsc::UnboundedSender<(u64, Change)>,
}

/// Controls a running [`Reconciler`] from anywhere.
#[derive(Clone)]
pub struct ReconcilerHandle {
    inbox: Arc<Mutex<Inbox>>,
    commands: mpsc::Sender<Command>,
    stats: Arc<Stats>,
    applied: watch::Receiver<(u64, Report)>,
    last: Arc<Mutex<Report>>,
}

impl ReconcilerHandle {
    fn send(&self, change: Change) -> u64 {
        let Ok(mut inbox) = self.inbox.lock() else {
            return 0;
        };
        inbox.generation += 1;
        let generation = inbox.generation;
        // A stopped reconciler drops the change; `wait_applied` then says so.
        let _ = inbox.tx.send((generation, change));
        generation
    }

    /// Handing the node over to a successor, step one: this reconciler
    /// stops reading and writing the kernel for good (the successor does
    /// both now); its data plane, if any, keeps forwarding until
    /// [`release`](Self::release). False if it had ended already.
    pub async fn quiesce(&self) -> bool {
        self.ask(Command::Quiesce).await
    }

    /// Handing over, step two: the data plane stops (forwarding what was
    /// queued to it first) and the reconciler ends.
    pub async fn release(&self) -> bool {
        self.ask(Command::Release).await
    }

    /// Taking over (started with [`Options::taking_over`]): the
    /// predecessor has released its data plane.
    pub async fn predecessor_gone(&self) {
        let _ = self.commands.send(Command::PredecessorGone).await;
    }

    /// The desired state as it is now (`None` if the reconciler ended).
    pub async fn snapshot(&self) -> Option<Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Snapshot(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Pauses (`true`) or resumes reconciling: while paused nothing is
    /// written, whatever the kernel or the leases say; what changed
    /// meanwhile is reconciled on resuming. For looking at drift (`weft
    /// debug pause`), never for normal operation.
    pub async fn pause(&self, paused: bool) -> bool {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Pause(paused, tx))
            .await
            .is_err()
        {
            return false;
        }
        rx.await.is_ok()
    }

    async fn ask(&self, command: fn(oneshot::Sender<()>) -> Command) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(command(tx)).await.is_err() {
            return false;
        }
        rx.await.is_ok()
    }

    /// Replaces the whole input; returns its generation number.
    pub fn update(&self, input: Input) -> u64 {
        self.send(Change::Replace(input))
    }

    /// Replaces only the leases; returns the generation number. Costs work
    /// for the leases that differ only.
    pub fn set_leases(&self, leases: Vec<Lease>) -> u64 {
        self.send(Change::Leases(leases))
    }

    /// One node's lease is new or changed; returns the generation number.
    pub fn upsert(&self, lease: Lease) -> u64 {
        self.send(Change::Upsert(lease))
    }

    /// One node's lease is gone; returns the generation number.
    pub fn remove(&self, node: &str) -> u64 {
        self.send(Change::Remove(node.to_string()))
    }

    /// Waits until input generation `generation` (or a later one) has been
    /// applied without error, and returns the report of the reconcile that
    /// applied it first (`None` if the reconciler stopped).
    pub async fn wait_applied(&self, generation: u64) -> Option<Report> {
        let mut rx = self.applied.clone();
        let seen = rx.wait_for(|(g, _)| *g >= generation).await.ok()?;
        Some(seen.1.clone())
    }

    /// Runs one reconcile now and returns its report (while paused, see
    /// [`ReconcilerHandle::pause`], none runs: the last report).
    pub async fn reconcile_now(&self) -> Option<Report> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::ReconcileNow(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Counters since start.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The last reconcile's report.
    pub fn last_report(&self) -> Report {
        self.last.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// The loop. Build it with [`Reconciler::start`] inside the network namespace
/// it programs, then `run()` it there.
pub struct Reconciler {
    kernel: Kernel,
    events: Events,
    inbox: mpsc::UnboundedReceiver<(u64, Change)>,
    /// The last input generation folded in.
    generation: u64,
    commands: mpsc::Receiver<Command>,
    options: Options,
    stats: Arc<Stats>,
    applied: watch::Sender<(u64, Report)>,
    last: Arc<Mutex<Report>>,
    scope: Option<Scope>,
    observed: Observed,
    /// The entries' view is current (else re-read them all).
    view_valid: bool,
    /// The underlay's and the device's facts are current (else ask again).
    facts_valid: bool,
    /// The desired state, kept current change by change.
    peers: Peers,
    /// Keys that may differ between the desired state and the view.
    pending: Touched,
    /// The backend's userspace data plane, if it has one, and the table it
    /// was last given.
    data_plane: Option<Box<dyn DataPlane>>,
    /// `None` until the first table is given (also an empty one: the
    /// forwarder waits for it).
    forwarded: Option<BTreeMap<IpNet, Forward>>,
    /// An input change came since the last reconcile (else the kernel, a
    /// resync or a retry woke it: what it writes is a drift repair).
    input_changed: bool,
    /// What the last pass wrote, by kind.
    written: Option<[(&'static str, usize); 4]>,
    skipped_series: Vec<SkipLabels>,
    /// Repairs paused ([`ReconcilerHandle::pause`]).
    paused: bool,
}

impl Reconciler {
    /// Opens the netlink connections (request and monitor) in the current
    /// network namespace; must be called on the tokio runtime that will run it.
    pub fn start(
        input: Input,
        options: Options,
    ) -> Result<(Reconciler, ReconcilerHandle), KernelError> {
        let kernel = Kernel::connect()?;
        let events = kernel::monitor::subscribe(input.config.network)?;
        let data_plane = input.config.backend.backend().data_plane(
            &input.local,
            input.config.network,
            options.taking_over,
        )?;
        if let Some(counters) = data_plane.as_ref().and_then(|dp| dp.counters()) {
            let family = Family::of_net(&input.config.network);
            options.metrics.add_data_plane(family, counters);
        }
        let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
        // Generation 1: placed once the first pass knows the underlay.
        let mut peers = Peers::new(input.config, input.local, None);
        peers.replace(input.leases);
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let (applied_tx, applied_rx) = watch::channel((0, Report::default()));
        let stats = Arc::new(Stats::default());
        let last = Arc::new(Mutex::new(Report::default()));
        let handle = ReconcilerHandle {
            inbox: Arc::new(Mutex::new(Inbox {
                generation: 1,
                tx: inbox_tx,
            })),
            commands: cmd_tx,
            stats: stats.clone(),
            applied: applied_rx,
            last: last.clone(),
        };
        let reconciler = Reconciler {
            kernel,
            events,
            inbox: inbox_rx,
            generation: 1,
            commands: cmd_rx,
            options,
            stats,
            applied: applied_tx,
            last,
            scope: None,
            observed: Observed::default(),
            view_valid: false,
            facts_valid: false,
            peers,
            pending: Touched::everything(),
            data_plane,
            forwarded: None,
            input_changed: true,
            written: None,
            skipped_series: Vec::new(),
            paused: false,
        };
        Ok((reconciler, handle))
    }

    /// Runs until every handle is dropped.
    pub async fn run(mut self) {
        let mut dirty = true;
        let mut retry_wait = self.options.retry_after;
        let mut retry_at: Option<Instant> = None;
        let mut resync = tokio::time::interval(self.options.resync_every);
        resync.tick().await;
        loop {
            if dirty && !self.paused {
                dirty = false;
                let report = self.reconcile().await;
                if report.errors.is_empty() {
                    retry_at = None;
                    retry_wait = self.options.retry_after;
                } else {
                    retry_at = Some(Instant::now() + retry_wait);
                    retry_wait = (retry_wait * 2).min(Duration::from_secs(30));
                }
            }
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                change = self.inbox.recv() => {
                    let Some(change) = change else { return };
                    self.fold(change);
                    self.drain_inbox();
                    dirty = true;
                }
                Some(cmd) = self.commands.recv() => match cmd {
                    Command::ReconcileNow(reply) => {
                        self.drain_events();
                        self.drain_inbox();
                        // Paused, nothing is written: the last report.
                        let report = if self.paused {
                            dirty = true;
                            self.last.lock().map(|r| r.clone()).unwrap_or_default()
                        } else {
                            self.reconcile().await
                        };
                        let _ = reply.send(report);
                    }
                    Command::Quiesce(reply) => {
                        tracing::info!("quiet: no more kernel reads or writes; the data plane runs on until released");
                        let _ = reply.send(());
                        return self.quiet().await;
                    }
                    Command::Release(reply) => {
                        self.data_plane = None;
                        let _ = reply.send(());
                        return;
                    }
                    Command::PredecessorGone => {
                        if let Some(dp) = &self.data_plane {
                            dp.predecessor_gone();
                        }
                    }
                    Command::Snapshot(reply) => {
                        let _ = reply.send(self.snapshot());
                    }
                    Command::Pause(paused, reply) => {
                        if self.paused != paused {
                            tracing::warn!(paused, "overlay repairs {}", if paused { "paused" } else { "resumed" });
                        }
                        self.paused = paused;
                        // Resuming: whatever was missed is looked at anew.
                        if !paused {
                            self.invalidate();
                            dirty = true;
                        }
                        let _ = reply.send(());
                    }
                },
                event = self.events.next() => {
                    let Some((msg, _)) = event else { return };
                    dirty |= self.on_event(msg);
                    dirty |= self.drain_events();
                }
                _ = resync.tick() => {
                    self.invalidate();
                    dirty = true;
                }
                _ = retry => {
                    self.invalidate();
                    dirty = true;
                }
            }
        }
    }

    /// After [`ReconcilerHandle::quiesce`]: only the data plane runs, until
    /// released or every handle is dropped.
    async fn quiet(mut self) {
        // The kernel's news is not read any more.
        self.events = futures::channel::mpsc::unbounded().1;
        while let Some(cmd) = self.commands.recv().await {
            match cmd {
                Command::Release(reply) => {
                    self.data_plane = None;
                    let _ = reply.send(());
                    return;
                }
                Command::Quiesce(reply) => {
                    let _ = reply.send(());
                }
                // Nothing is reconciled any more: the last report.
                Command::ReconcileNow(reply) => {
                    let last = self.last.lock().map(|r| r.clone()).unwrap_or_default();
                    let _ = reply.send(last);
                }
                Command::PredecessorGone | Command::Pause(..) => {}
                Command::Snapshot(reply) => {
                    let _ = reply.send(self.snapshot());
                }
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        let config = self.peers.config();
        Snapshot {
            network: config.network,
            underlay: self.peers.local().underlay.clone(),
            device: config.backend.device_name(config.network),
            vtep_mac: self.observed.device.as_ref().and_then(|d| d.mac),
            desired: self.peers.entries().clone(),
            rejected: self
                .peers
                .rejected()
                .iter()
                .map(|e| e.to_string())
                .collect(),
            paused: self.paused,
            data_path: self.data_plane.as_ref().and_then(|dp| dp.describe()),
        }
    }

    /// Handles every event already queued; true if any concerned weft.
    fn drain_events(&mut self) -> bool {
        let mut dirty = false;
        while let Ok((msg, _)) = self.events.try_recv() {
            dirty |= self.on_event(msg);
        }
        dirty
    }

    /// Folds every input change already queued.
    fn drain_inbox(&mut self) {
        while let Ok(change) = self.inbox.try_recv() {
            self.fold(change);
        }
    }

    /// Folds one input change into the desired state.
    fn fold(&mut self, (generation, change): (u64, Change)) {
        self.generation = self.generation.max(generation);
        self.input_changed = true;
        let touched = match change {
            Change::Replace(input) => {
                let mut t = self.peers.set_node(input.config, input.local);
                t.merge(self.peers.replace(input.leases));
                // Another device name or underlay: ask the kernel again.
                self.facts_valid = false;
                t
            }
            Change::Leases(leases) => self.peers.replace(leases),
            Change::Upsert(lease) => self.peers.upsert(lease),
            Change::Remove(node) => self.peers.remove(&node),
        };
        self.pending.merge(touched);
    }

    /// Forgets the kernel view: the next pass reads everything again.
    fn invalidate(&mut self) {
        self.view_valid = false;
        self.facts_valid = false;
    }

    /// Folds one kernel event into the view; true when a reconcile is due.
    fn on_event(&mut self, msg: NetlinkMessage<RouteNetlinkMessage>) -> bool {
        let Some(scope) = self.scope else {
            return true;
        };
        let entries = &mut self.observed.entries;
        let pending = &mut self.pending;
        match msg.payload {
            NetlinkPayload::Overrun(_) => {
                tracing::warn!("netlink monitor overrun: re-reading the kernel");
                self.view_valid = false;
                self.facts_valid = false;
                true
            }
            NetlinkPayload::InnerMessage(m) => match m {
                RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => {
                    // By index, or by name: a device of the underlay's or the
                    // overlay's name may be a new one (deleted and made again).
                    let name = kernel::link_name(&l);
                    let ours = Some(l.header.index) == scope.overlay
                        || l.header.index == scope.underlay
                        || name == Some(self.peers.local().underlay.as_str())
                        || self
                            .peers
                            .config()
                            .backend
                            .device_name(self.peers.config().network)
                            .is_some_and(|n| name == Some(n.as_str()));
                    if ours {
                        // A device going down or away takes its routes with it, silently.
                        self.view_valid = false;
                        self.facts_valid = false;
                    }
                    ours
                }
                RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
                    let ours =
                        Some(a.header.index) == scope.overlay || a.header.index == scope.underlay;
                    if ours {
                        self.facts_valid = false;
                    }
                    ours
                }
                RouteNetlinkMessage::NewRoute(r) => match kernel::route_of(&r, &scope) {
                    Some(route) => {
                        let changed = entries.routes.insert(route.dst, route) != Some(route);
                        if changed {
                            pending.routes.insert(route.dst);
                        }
                        changed
                    }
                    None => forget_route(entries, pending, &r),
                },
                RouteNetlinkMessage::DelRoute(r) => forget_route(entries, pending, &r),
                RouteNetlinkMessage::NewNeighbour(n) => {
                    if let Some(nb) = kernel::neighbour_of(&n, &scope) {
                        let changed = entries.neighbours.insert(nb.ip, nb) != Some(nb);
                        if changed {
                            pending.neighbours.insert(nb.ip);
                        }
                        changed
                    } else if let Some(f) = kernel::fdb_of(&n, &scope) {
                        let changed = entries.fdb.insert(f.mac, f) != Some(f);
                        if changed {
                            pending.fdb.insert(f.mac);
                        }
                        changed
                    } else {
                        forget_neighbour(entries, pending, &n, &scope)
                    }
                }
                RouteNetlinkMessage::DelNeighbour(n) => {
                    forget_neighbour(entries, pending, &n, &scope)
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// One pass: observe, compute, diff, apply.
    async fn reconcile(&mut self) -> Report {
        self.stats.reconciles.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation;
        let began = Instant::now();
        self.written = None;
        let mut report = match self.pass().await {
            Ok(r) => r,
            Err(e) => Report {
                errors: vec![Arc::new(e)],
                ..Report::default()
            },
        };
        report.vtep_mac = self.observed.device.as_ref().and_then(|d| d.mac);
        if let Some(mac) = report.vtep_mac {
            self.peers.keep_vtep_mac(mac);
        }
        report.generation = generation;
        if report.errors.is_empty() {
            // The first clean reconcile of a generation is the one that applied it.
            self.applied.send_if_modified(|(g, r)| {
                let newer = generation > *g;
                if newer {
                    *g = generation;
                    *r = report.clone();
                }
                newer
            });
        } else {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            self.invalidate();
            for e in &report.errors {
                tracing::error!(error = %e, "overlay reconcile");
            }
        }
        if let Ok(mut last) = self.last.lock() {
            *last = report.clone();
        }
        let family = Family::of_net(&self.peers.config().network);
        self.options.metrics.record(
            family,
            Outcome {
                took: began.elapsed(),
                clean: report.errors.is_empty(),
                applied: self.written,
                drift: !self.input_changed,
                held: &self.observed.entries,
                rejected: &report.rejected,
                skipped_before: &mut self.skipped_series,
            },
        );
        if report.errors.is_empty() {
            self.input_changed = false;
        }
        report
    }

    async fn pass(&mut self) -> Result<Report, KernelError> {
        let mut report = Report::default();
        let config = self.peers.config();
        let device_name = config.backend.device_name(config.network);
        if !self.facts_valid {
            let underlay = self.kernel.underlay(&self.peers.local().underlay).await?;
            self.observed.device = match &device_name {
                Some(name) => self.kernel.device(name).await?,
                None => None,
            };
            let touched = self.peers.set_underlay(underlay);
            self.pending.merge(touched);
            self.facts_valid = true;
        }
        let Some(underlay_ifindex) = self.peers.underlay().map(|u| u.ifindex) else {
            return Ok(report);
        };
        let scope = Scope {
            network: self.peers.config().network,
            overlay: self.observed.device.as_ref().map(|d| d.ifindex),
            underlay: underlay_ifindex,
        };
        if !self.view_valid || self.scope != Some(scope) {
            self.observed.entries = self.kernel.entries(&scope).await?;
            self.view_valid = true;
            self.pending = Touched::everything();
            report.resynced = true;
            self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
        }
        self.scope = Some(scope);
        self.stats
            .rebuilds
            .store(self.peers.rebuilds(), Ordering::Relaxed);
        report.rejected = self.peers.rejected();
        self.feed_data_plane();
        let want_device = self.peers.device();
        let plan = plan(
            want_device.as_ref(),
            self.peers.entries(),
            &self.observed,
            &self.pending,
        );
        report.plan = plan.to_string();
        if plan.is_empty() {
            self.pending = Touched::default();
            return Ok(report);
        }
        let (after, applied) = self.kernel.apply(&plan, &scope).await;
        report.writes = applied.writes;
        self.written = Some(plan_counts(&plan));
        self.stats
            .writes
            .fetch_add(applied.writes as u64, Ordering::Relaxed);
        tracing::info!(plan = %report.plan, writes = applied.writes, errors = applied.errors.len(), "overlay applied");
        report.errors = applied.errors.into_iter().map(Arc::new).collect();
        if report.errors.is_empty() {
            plan.apply_to(&mut self.observed.entries);
            self.pending = Touched::default();
            if after != scope {
                // A new device: read it back (its MAC, its index).
                self.observed.device = match &device_name {
                    Some(name) => self.kernel.device(name).await?,
                    None => None,
                };
            } else if !plan.device.is_empty() {
                // Its MTU, MAC, addresses or state changed: read them back.
                self.facts_valid = false;
            }
            self.scope = Some(after);
        }
        Ok(report)
    }
}

impl Reconciler {
    /// Gives the data plane the peers' table when it changed (a peer removed
    /// stops being forwarded to at once: the table is swapped whole).
    fn feed_data_plane(&mut self) {
        let Some(dp) = &self.data_plane else {
            return;
        };
        let want = &self.peers.entries().forwards;
        if self.forwarded.as_ref() != Some(want) {
            let table: Vec<Forward> = want.values().copied().collect();
            dp.set_peers(&table);
            self.forwarded = Some(want.clone());
        }
    }
}

/// Drops a route from the view when an event says it went away or became
/// something weft does not manage.
fn forget_route(
    entries: &mut crate::state::Entries,
    pending: &mut Touched,
    r: &netlink_packet_route::route::RouteMessage,
) -> bool {
    let Some(dst) = kernel::route_dst(r) else {
        return false;
    };
    let gone = entries.routes.remove(&dst).is_some();
    if gone {
        pending.routes.insert(dst);
    }
    gone
}

/// Drops a neighbour or FDB entry on the overlay device from the view when an
/// event says it changed into something weft does not manage or went away.
fn forget_neighbour(
    entries: &mut crate::state::Entries,
    pending: &mut Touched,
    n: &NeighbourMessage,
    scope: &Scope,
) -> bool {
    if Some(n.header.ifindex) != scope.overlay {
        return false;
    }
    let mut ip: Option<IpAddr> = None;
    let mut mac: Option<MacAddr> = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(d) => ip = kernel::observe::neighbour_ip(d),
            NeighbourAttribute::LinkLayerAddress(b) => mac = MacAddr::from_bytes(b),
            _ => {}
        }
    }
    match n.header.family {
        AddressFamily::Inet | AddressFamily::Inet6 => ip.is_some_and(|ip| {
            let gone = entries.neighbours.remove(&ip).is_some();
            if gone {
                pending.neighbours.insert(ip);
            }
            gone
        }),
        AddressFamily::Bridge => mac.is_some_and(|m| {
            let gone = entries.fdb.remove(&m).is_some();
            if gone {
                pending.fdb.insert(m);
            }
            gone
        }),
        _ => false,
    }
}
