//! The NAT loops' Prometheus metrics, beside them: one set for the
//! process, registered once by the agent, shared by the loops of both
//! families (labels `family`, `mode`).
//!
//! - `weft_nat_reconcile_duration_seconds` (histogram) and
//!   `weft_nat_reconciles_total{result="ok"|"error"}`
//! - `weft_nat_applies_total`: transactions written (the first, rule
//!   updates, repairs)
//! - `weft_nat_drift_repairs_total`: writes that put back what someone
//!   else changed (not the first, not after a rule update)
//! - `weft_nat_last_success_timestamp_seconds`

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as Metric;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::family::Family;
use crate::NatMode;

/// `family`, `mode`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoopLabels {
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// `iptables-legacy`, `iptables-nft` or `nftables`.
    pub mode: &'static str,
}

/// `family`, `mode`, `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// The NAT mode.
    pub mode: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

type Histograms = Metric<LoopLabels, Histogram, fn() -> Histogram>;

fn reconcile_histogram() -> Histogram {
    // 100 µs … ~26 s (an iptables-restore under a busy xtables lock).
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

/// The NAT loops' metrics (clones count into the same series).
#[derive(Clone, Debug)]
pub struct NatMetrics {
    reconcile_seconds: Histograms,
    reconciles: Metric<ResultLabels, Counter>,
    applies: Metric<LoopLabels, Counter>,
    drift_repairs: Metric<LoopLabels, Counter>,
    last_success: Metric<LoopLabels, Gauge<f64, AtomicU64>>,
}

impl Default for NatMetrics {
    fn default() -> Self {
        NatMetrics {
            reconcile_seconds: Histograms::new_with_constructor(reconcile_histogram),
            reconciles: Metric::default(),
            applies: Metric::default(),
            drift_repairs: Metric::default(),
            last_success: Metric::default(),
        }
    }
}

/// One reconcile, as [`NatMetrics::record`] is told it.
pub(crate) struct Outcome {
    pub took: Duration,
    /// `Some(wrote)` when it worked.
    pub wrote: Option<bool>,
    /// A write now repairs drift (not the first, not a rule update).
    pub repair: bool,
}

impl NatMetrics {
    /// Registers every series under `weft_nat_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("weft_nat");
        r.register_with_unit(
            "reconcile_duration",
            "How long one NAT reconcile took (reading the rules, writing a transaction)",
            Unit::Seconds,
            self.reconcile_seconds.clone(),
        );
        r.register(
            "reconciles",
            "NAT reconciles, by outcome",
            self.reconciles.clone(),
        );
        r.register(
            "applies",
            "NAT transactions written (flannel's rules put in place)",
            self.applies.clone(),
        );
        r.register(
            "drift_repairs",
            "NAT transactions that put back rules someone else changed",
            self.drift_repairs.clone(),
        );
        r.register_with_unit(
            "last_success_timestamp",
            "When the last clean NAT reconcile ended (Unix time)",
            Unit::Seconds,
            self.last_success.clone(),
        );
    }

    pub(crate) fn record(&self, family: Family, mode: NatMode, outcome: Outcome) {
        let family = match family {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        };
        let labels = LoopLabels {
            family,
            mode: mode.name(),
        };
        self.reconcile_seconds
            .get_or_create(&labels)
            .observe(outcome.took.as_secs_f64());
        let result = if outcome.wrote.is_some() {
            "ok"
        } else {
            "error"
        };
        self.reconciles
            .get_or_create(&ResultLabels {
                family,
                mode: mode.name(),
                result,
            })
            .inc();
        if outcome.wrote == Some(true) {
            self.applies.get_or_create(&labels).inc();
            if outcome.repair {
                self.drift_repairs.get_or_create(&labels).inc();
            }
        }
        if outcome.wrote.is_some() {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.last_success.get_or_create(&labels).set(now);
        }
    }
}
