//! `/healthz` (the process runs) and `/readyz` (device, rules and subnet.env
//! are in place), as flanneld serves them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

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

/// The router: `/healthz` always 200, `/readyz` 200 once ready, else 503.
pub fn router(ready: Readiness) -> Router {
    Router::new()
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

/// Serves until the process ends.
pub async fn serve(addr: SocketAddr, ready: Readiness) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "health server listening");
    axum::serve(listener, router(ready)).await
}
