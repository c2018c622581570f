//! The overlay reconciler's Prometheus metrics, beside it (as kube-rs
//! controllers keep theirs): one set for the process, registered once by
//! the agent, shared by the reconcilers of both families (each labels its
//! samples with `family`).
//!
//! - `weft_overlay_reconcile_duration_seconds` (histogram) and
//!   `weft_overlay_reconciles_total{result="ok"|"error"}`
//! - `weft_overlay_objects{kind}`: what weft holds in the kernel after the
//!   last clean reconcile (`route`, `neighbour`, `fdb`; `forward`: the UDP
//!   forwarder's peers)
//! - `weft_overlay_writes_total{kind}`: kernel writes (`device` included)
//! - `weft_overlay_drift_repairs_total{kind}`: writes that put back what
//!   someone else changed (a reconcile woken by the kernel, not by a lease)
//! - `weft_overlay_peers_skipped{field,reason}`: leases the reconciler
//!   refuses, by the field at fault and why
//! - `weft_overlay_last_success_timestamp_seconds`

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as Metric;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::diff::Plan;
use crate::error::LeaseError;
use crate::family::Family;
use crate::state::Entries;

/// `family`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabel {
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
}

/// `family`, `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// `family`, `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// `device`, `route`, `neighbour`, `fdb` or `forward`.
    pub kind: &'static str,
}

/// `family`, `field`, `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// The lease field at fault (flannel's annotation names).
    pub field: &'static str,
    /// [`crate::LeaseFault::kind`].
    pub reason: &'static str,
}

type Histograms = Metric<FamilyLabel, Histogram, fn() -> Histogram>;

fn reconcile_histogram() -> Histogram {
    // 100 µs … ~26 s.
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

/// The overlay's metrics (cheap to clone: every clone counts into the same
/// series).
#[derive(Clone, Debug)]
pub struct OverlayMetrics {
    reconcile_seconds: Histograms,
    reconciles: Metric<ResultLabels, Counter>,
    objects: Metric<KindLabels, Gauge>,
    writes: Metric<KindLabels, Counter>,
    drift_repairs: Metric<KindLabels, Counter>,
    skipped: Metric<SkipLabels, Gauge>,
    last_success: Metric<FamilyLabel, Gauge<f64, AtomicU64>>,
}

impl Default for OverlayMetrics {
    fn default() -> Self {
        OverlayMetrics {
            reconcile_seconds: Histograms::new_with_constructor(reconcile_histogram),
            reconciles: Metric::default(),
            objects: Metric::default(),
            writes: Metric::default(),
            drift_repairs: Metric::default(),
            skipped: Metric::default(),
            last_success: Metric::default(),
        }
    }
}

/// The label value of a family.
pub fn family_label(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

impl OverlayMetrics {
    /// Registers every series under `weft_overlay_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("weft_overlay");
        r.register_with_unit(
            "reconcile_duration",
            "How long one overlay reconcile took (kernel reads and writes included)",
            Unit::Seconds,
            self.reconcile_seconds.clone(),
        );
        r.register(
            "reconciles",
            "Overlay reconciles, by outcome",
            self.reconciles.clone(),
        );
        r.register(
            "objects",
            "Kernel objects weft holds for the overlay after the last clean reconcile, by kind",
            self.objects.clone(),
        );
        r.register(
            "writes",
            "Kernel writes of the overlay, by kind",
            self.writes.clone(),
        );
        r.register(
            "drift_repairs",
            "Overlay writes that put back what someone else changed in the kernel, by kind",
            self.drift_repairs.clone(),
        );
        r.register(
            "peers_skipped",
            "Peers whose lease the overlay refuses, by field and reason",
            self.skipped.clone(),
        );
        r.register_with_unit(
            "last_success_timestamp",
            "When the last clean overlay reconcile ended (Unix time)",
            Unit::Seconds,
            self.last_success.clone(),
        );
    }

    /// One reconcile of `family`: how long, whether clean, what it
    /// wrote, whether the kernel (not
    /// the input) woke it, and what weft holds afterwards.
    pub(crate) fn record(&self, family: Family, outcome: Outcome<'_>) {
        let f = family_label(family);
        self.reconcile_seconds
            .get_or_create(&FamilyLabel { family: f })
            .observe(outcome.took.as_secs_f64());
        let result = if outcome.clean { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabels { family: f, result })
            .inc();
        if let Some(counts) = outcome.applied {
            for (kind, n) in counts {
                if n == 0 {
                    continue;
                }
                let labels = KindLabels { family: f, kind };
                self.writes.get_or_create(&labels).inc_by(n as u64);
                if outcome.drift {
                    self.drift_repairs.get_or_create(&labels).inc_by(n as u64);
                }
            }
        }
        if outcome.clean {
            for (kind, n) in [
                ("route", outcome.held.routes.len()),
                ("neighbour", outcome.held.neighbours.len()),
                ("fdb", outcome.held.fdb.len()),
                ("forward", outcome.held.forwards.len()),
            ] {
                self.objects
                    .get_or_create(&KindLabels { family: f, kind })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.last_success
                .get_or_create(&FamilyLabel { family: f })
                .set(now);
        }
        // The refused leases as they are now (a fixed one disappears).
        let mut now: Vec<SkipLabels> = Vec::new();
        for e in outcome.rejected {
            let labels = SkipLabels {
                family: f,
                field: e.field,
                reason: e.reason.kind(),
            };
            if !now.contains(&labels) {
                now.push(labels);
            }
        }
        for gone in outcome.skipped_before.iter().filter(|l| !now.contains(l)) {
            self.skipped.remove(gone);
        }
        for labels in &now {
            let n = outcome
                .rejected
                .iter()
                .filter(|e| e.field == labels.field && e.reason.kind() == labels.reason)
                .count();
            self.skipped
                .get_or_create(labels)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        *outcome.skipped_before = now;
    }
}

/// What [`OverlayMetrics::record`] is told of one reconcile.
pub(crate) struct Outcome<'a> {
    pub took: Duration,
    pub clean: bool,
    /// What was written, by kind ([`plan_counts`]); `None`: nothing.
    pub applied: Option<[(&'static str, usize); 4]>,
    pub drift: bool,
    pub held: &'a Entries,
    pub rejected: &'a [LeaseError],
    /// The skipped series this reconciler set last time (updated).
    pub skipped_before: &'a mut Vec<SkipLabels>,
}

/// A plan's writes by kind.
pub(crate) fn plan_counts(plan: &Plan) -> [(&'static str, usize); 4] {
    [
        ("device", plan.device.len()),
        ("route", plan.routes.len()),
        ("neighbour", plan.neighbours.len()),
        ("fdb", plan.fdb.len()),
    ]
}
