//! `/healthz` (the process runs) and `/readyz` (device, rules and subnet.env
//! are in place), as flanneld serves them, and `/metrics` (weft's own,
//! Prometheus text, see [`crate::metrics`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// Readiness, shared between the agent and the server.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the node ready.
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the node is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The media type of `/metrics`: Prometheus text format 0.0.4.
pub const METRICS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The router: `/healthz` always 200, `/readyz` 200 once ready, else 503,
/// `/metrics`.
pub fn router(ready: Readiness, metrics: Metrics) -> Router {
    let metrics_route = get(move || {
        let m = metrics.clone();
        async move { ([(header::CONTENT_TYPE, METRICS_TEXT)], m.encode()) }
    });
    Router::new()
        .route("/metrics", metrics_route)
        .route("/healthz", get(|| async { "weftd is running\n" }))
        .route(
            "/readyz",
            get(|State(r): State<Readiness>| async move {
                if r.is_ready() {
                    (StatusCode::OK, "weftd is ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "weftd is not ready\n")
                }
            }),
        )
        .with_state(ready)
}

/// How long [`serve`] retries a port still in use (a predecessor handing
/// the node over lets it go when it falls quiet).
const BIND_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves until the process ends.
pub async fn serve(addr: SocketAddr, ready: Readiness, metrics: Metrics) -> std::io::Result<()> {
    let deadline = tokio::time::Instant::now() + BIND_WAIT;
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => break other?,
        }
    };
    tracing::info!(%addr, "health server listening");
    axum::serve(listener, router(ready, metrics)).await
}
