//! weftd's Prometheus metrics, served as `/metrics` on the health server
//! (Prometheus text format 0.0.4, which every scraper reads). The overlay and NAT subsystems keep theirs beside
//! their reconcilers ([`weft_overlay::OverlayMetrics`],
//! [`weft_nat::metrics::NatMetrics`]); the agent adds its own:
//!
//! - `weft_build_info{version,backend}` (1)
//! - `weft_ready`: 1 once the device, the NAT rules and `subnet.env` are in
//!   place — what the CNI plugin needs to wire pods
//! - `weft_api_watch_restarts_total`: full re-lists of the Node watch after
//!   the first (a restarted API server, an expired resourceVersion)
//! - `weft_api_errors_total{operation}`: failed API requests (`watch`,
//!   `publish`, `set_network_available`)
//! - `weft_nodes_skipped{family}`: Nodes whose flannel annotations or pod
//!   CIDR are unusable (or not there yet), as the log names them

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as Metric;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use weft_nat::metrics::NatMetrics;
use weft_overlay::metrics::FamilyLabel;
use weft_overlay::OverlayMetrics;

/// `version`, `backend`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    backend: String,
}

/// `operation`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    /// `watch`, `publish` or `set_network_available`.
    pub operation: &'static str,
}

/// Every metric of the process, and the registry that serves them.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// The overlay reconcilers'.
    pub overlay: OverlayMetrics,
    /// The NAT loops'.
    pub nat: NatMetrics,
    /// See the module docs.
    pub ready: Gauge,
    /// See the module docs.
    pub watch_restarts: Counter,
    /// See the module docs.
    pub api_errors: Metric<OperationLabel, Counter>,
    /// See the module docs.
    pub nodes_skipped: Metric<FamilyLabel, Gauge>,
}

impl Metrics {
    /// A registry with every series; `backend`: net-conf.json's type.
    pub fn new(backend: &str) -> Metrics {
        let mut registry = Registry::default();
        let overlay = OverlayMetrics::default();
        overlay.register(&mut registry);
        let nat = NatMetrics::default();
        nat.register(&mut registry);
        let build = Metric::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                backend: backend.to_string(),
            })
            .set(1);
        let ready = Gauge::default();
        let watch_restarts = Counter::default();
        let api_errors = Metric::<OperationLabel, Counter>::default();
        let nodes_skipped = Metric::<FamilyLabel, Gauge>::default();
        let r = registry.sub_registry_with_prefix("weft");
        r.register("build_info", "weftd's version and backend", build);
        r.register(
            "ready",
            "1 once the overlay device, the NAT rules and subnet.env are in place (pods can be wired)",
            ready.clone(),
        );
        r.register(
            "api_watch_restarts",
            "Full re-lists of the Node watch after the first",
            watch_restarts.clone(),
        );
        r.register(
            "api_errors",
            "Failed Kubernetes API requests, by operation",
            api_errors.clone(),
        );
        r.register(
            "nodes_skipped",
            "Nodes whose flannel annotations or pod CIDR are unusable or not there yet",
            nodes_skipped.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            overlay,
            nat,
            ready,
            watch_restarts,
            api_errors,
            nodes_skipped,
        }
    }

    /// Counts a failed API request.
    pub fn api_error(&self, operation: &'static str) {
        self.api_errors
            .get_or_create(&OperationLabel { operation })
            .inc();
    }

    /// Every series in Prometheus text format 0.0.4.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (A family with no series yet — the overlay's before its first
    /// reconcile — is left out of the text by prometheus-client; the lab
    /// test reads them all from a running weftd.)
    #[test]
    fn every_family_is_there_once_with_its_type() {
        let m = Metrics::new("vxlan");
        m.ready.set(1);
        m.api_error("watch");
        m.nodes_skipped
            .get_or_create(&FamilyLabel { family: "ipv4" })
            .set(0);
        let text = m.encode();
        for (name, kind) in [
            ("weft_build_info", "gauge"),
            ("weft_ready", "gauge"),
            ("weft_api_watch_restarts_total", "counter"),
            ("weft_api_errors_total", "counter"),
            ("weft_nodes_skipped", "gauge"),
        ] {
            let line = format!("# TYPE {name} {kind}\n");
            assert_eq!(text.matches(&line).count(), 1, "{line}in\n{text}");
        }
        assert!(text.contains("weft_build_info{version=\""), "{text}");
        assert!(
            text.contains("weft_api_errors_total{operation=\"watch\"} 1\n"),
            "{text}"
        );
    }
}
