//! The admin listener, apart from the gate port: `GET /metrics` (Prometheus text),
//! `/readyz` (200 while serving, 503 once draining, so a load balancer moves traffic
//! away), `/livez` (200 while the process runs), `GET /brake` (the mass-deny brake's
//! state) and `POST /brake/confirm` (an operator lets held changes through). Operators' tools only: it is bound
//! to loopback unless configured otherwise, and never shares the gate port.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::brake::MassDenyBrake;
use crate::metrics::Exposition;

/// The admin routes over `exposition`; `/readyz` follows `ready`.
pub(super) fn router(
    exposition: Arc<Exposition>,
    ready: tokio::sync::watch::Receiver<bool>,
    brake: Arc<MassDenyBrake>,
) -> axum::Router {
    use axum::routing::{get, post};
    let confirm = brake.clone();
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let exposition = exposition.clone();
                async move { metrics_page(&exposition) }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = *ready.borrow();
                async move {
                    if ready {
                        (http::StatusCode::OK, "ready\n")
                    } else {
                        (http::StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                    }
                }
            }),
        )
        .route("/livez", get(|| async { "live\n" }))
        .route(
            "/brake",
            get(move || {
                let status = brake.status();
                async move { format!("engaged={} held={}\n", status.engaged, status.held) }
            }),
        )
        .route(
            "/brake/confirm",
            post(move || {
                let before = confirm.confirm();
                async move { format!("confirmed: was engaged={} held={}\n", before.engaged, before.held) }
            }),
        )
}

/// Serves `router` on `listener` until the task is aborted.
pub(super) fn spawn(listener: TcpListener, router: axum::Router) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let addr = listener.local_addr().context("admin listener address")?;
    tracing::info!(%addr, "admin endpoints: /metrics, /readyz, /livez");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "the admin listener failed");
        }
    }))
}

/// `GET /metrics`: the page with its content type, or a bare 500 if it cannot be
/// rendered.
fn metrics_page(exposition: &Exposition) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match exposition.render() {
        Ok(text) => ([(http::header::CONTENT_TYPE, Exposition::CONTENT_TYPE)], text).into_response(),
        Err(_) => {
            tracing::error!("the metrics page could not be rendered");
            http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
