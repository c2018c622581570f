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
//! - a userspace data plane's counters (the UDP backend's forwarder), read
//!   at each scrape: `weft_forwarder_packets_total{direction}`,
//!   `weft_forwarder_bytes_total{direction}` (`tx`: to peers, `rx`: from
//!   them), `weft_forwarder_drops_total{reason}`

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as Metric;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::backend::DataPlaneCounters;
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
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
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
    data_planes: DataPlanes,
}

/// The data planes' counters, read at each scrape.
#[derive(Clone, Default)]
struct DataPlanes(Arc<Mutex<Vec<(&'static str, DataPlaneCounters)>>>);

impl std::fmt::Debug for DataPlanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataPlanes")
    }
}

impl Collector for DataPlanes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let planes = match self.0.lock() {
            Ok(p) => p.clone(),
            Err(_) => return Ok(()),
        };
        if planes.is_empty() {
            return Ok(());
        }
        let stats: Vec<_> = planes.iter().map(|(f, read)| (*f, read())).collect();
        for (name, help, pick) in [
            (
                "weft_forwarder_packets",
                "Packets the userspace data plane carried: tx to peers, rx from them",
                (|s: &crate::backend::DataPlaneStats| (s.tx_packets, s.rx_packets))
                    as fn(&crate::backend::DataPlaneStats) -> (u64, u64),
            ),
            ("weft_forwarder_bytes", "Bytes of those packets", |s| {
                (s.tx_bytes, s.rx_bytes)
            }),
            (
                "weft_kernel_path_packets",
                "Packets the data plane's kernel path carried (the udp backend's tc eBPF programs): tx to peers, rx from them",
                |s| s.kernel_packets,
            ),
            ("weft_kernel_path_bytes", "Bytes of those packets", |s| {
                s.kernel_bytes
            }),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (family, s) in &stats {
                let (tx, rx) = pick(s);
                for (direction, v) in [("tx", tx), ("rx", rx)] {
                    let labels = [("family", *family), ("direction", direction)];
                    ConstCounter::new(v).encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        let mut metric = encoder.encode_descriptor(
            "weft_forwarder_drops",
            "Packets the userspace data plane dropped, by reason",
            None,
            MetricType::Counter,
        )?;
        for (family, s) in &stats {
            for (reason, v) in &s.drops {
                let labels = [("family", *family), ("reason", *reason)];
                ConstCounter::new(*v).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
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
            data_planes: DataPlanes::default(),
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
        registry.register_collector(Box::new(self.data_planes.clone()));
    }

    /// A data plane of `family` to read at each scrape (replacing the one
    /// of that family before, if any).
    pub(crate) fn add_data_plane(&self, family: Family, counters: DataPlaneCounters) {
        if let Ok(mut planes) = self.data_planes.0.lock() {
            let f = family_label(family);
            planes.retain(|(g, _)| *g != f);
            planes.push((f, counters));
        }
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
        // The refused leases as they are now, counted by series (a fixed
        // one's series disappears).
        let mut now: BTreeMap<SkipLabels, i64> = BTreeMap::new();
        for e in outcome.rejected {
            let labels = SkipLabels {
                family: f,
                field: e.field,
                reason: e.reason.kind(),
            };
            *now.entry(labels).or_default() += 1;
        }
        for gone in outcome
            .skipped_before
            .iter()
            .filter(|l| !now.contains_key(l))
        {
            self.skipped.remove(gone);
        }
        for (labels, n) in &now {
            self.skipped.get_or_create(labels).set(*n);
        }
        *outcome.skipped_before = now.into_keys().collect();
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
