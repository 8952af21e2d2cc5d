//! Serving: the tonic server, its limits, health checking, reflection, metrics, and a
//! graceful drain.

mod auth;
mod convert;
mod deadline;
mod feed;
mod gate;
mod links;
mod status;
pub mod transport;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use ridegate_adapters::shared::changes;
use ridegate_proto::pb::gate_server::GateServer;
use ridegate_proto::pb::health_feed_server::HealthFeedServer;
use ridegate_proto::pb::links_server::LinksServer;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;

pub use convert::InvalidRequest;
pub use deadline::{Deadlines, grpc_timeout};
pub use feed::MAX_UPDATES;
pub use links::MAX_BATCH_ROWS;

/// The health-checking service name that reports whether the shared tier (Redis)
/// answers. The gate service keeps serving while it does not, with degraded answers.
pub const SHARED_STATE_SERVICE: &str = "ridegate.v1.SharedState";

use crate::app::App;

/// Serves `app` on an already-bound `listener` until `shutdown` resolves, then drains:
/// health checking reports NOT_SERVING, new calls are refused after `drain_delay`,
/// in-flight calls and `Taps` streams get `drain_grace` to finish, and the audit log is
/// flushed.
pub async fn serve(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Arc::new(app);
    let server_config = app.config.server.clone();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<GateServer<gate::GateService>>().await;
    let (draining_tx, draining_rx) = tokio::sync::watch::channel(false);

    let deadlines = Deadlines {
        default_budget: app.config.deadline.default_budget,
        margin: app.config.deadline.margin,
    };
    let gate = GateServer::new(gate::GateService::new(
        app.authorizer.clone(),
        deadlines,
        server_config.stream_concurrency,
        draining_rx,
    ))
    // Big enough that an oversize QR text reaches the verifier and gets a DENY with
    // CODE_OVERSIZE instead of a transport error.
    .max_decoding_message_size(server_config.max_request_bytes);

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ridegate_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let mut routes = Routes::new(gate)
        // grpc.health.v1, for load balancers and `grpc_health_probe`.
        .add_service(health_service)
        // Server reflection (v1 and v1alpha): grpcurl and ghz work without .proto files.
        .add_service(reflection().build_v1().context("reflection v1")?)
        .add_service(reflection().build_v1alpha().context("reflection v1alpha")?);
    // Links and HealthFeed answer only callers with a valid token.
    let authenticator = auth::Authenticator::new(app.callers.clone(), app.clock.clone());
    let links = links::LinkService::new(
        app.links.clone(),
        app.pseudonymizer.clone(),
        app.link_rules,
        app.issuer_ids.clone(),
        app.clock.clone(),
    );
    routes = routes.add_service(InterceptedService::new(
        LinksServer::new(links).max_decoding_message_size(server_config.max_request_bytes),
        authenticator.clone(),
    ));
    if app.config.health.feed_enabled {
        let feed = feed::FeedService::new(app.statuses.clone(), app.health.clone(), app.pseudonymizer.clone());
        routes = routes.add_service(InterceptedService::new(
            HealthFeedServer::new(feed).max_decoding_message_size(server_config.max_request_bytes),
            authenticator,
        ));
    }
    // The shared tier: probe it every interval, report its state as the health of
    // `ridegate.v1.SharedState` (the gate service keeps serving, degraded, meanwhile),
    // and follow the change stream into this instance's caches.
    let shared_tasks = app.shared.clone().map(|tier| {
        let prober = {
            let (tier, reporter, every) = (tier.clone(), health_reporter.clone(), app.config.redis.probe_interval);
            tokio::spawn(async move {
                let mut reported = None;
                loop {
                    // Probe even while up: an idle instance notices an outage (and
                    // reconnects after it) before a tap has to.
                    let up = tier.probe().await;
                    if reported != Some(up) {
                        let status = if up {
                            ServingStatus::Serving
                        } else {
                            ServingStatus::NotServing
                        };
                        reporter.set_service_status(SHARED_STATE_SERVICE, status).await;
                        reported = Some(up);
                    }
                    tokio::time::sleep(every).await;
                }
            })
        };
        let follower = {
            let app = app.clone();
            changes::follow(tier, move |change| app.apply_change(change))
        };
        [prober, follower]
    });
    // The health platform's change feed, applied to the cache as changes happen.
    let platform_watch = app
        .statuses
        .platform()
        .filter(|_| app.config.health.platform.watch)
        .map(|remote| {
            let app = app.clone();
            remote.clone().watch(move |event| app.apply_platform_event(event))
        });
    // Single-journey ticket links stop resolving at the end of their day; sweep them
    // out of memory every hour.
    let sweeper = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
            loop {
                every.tick().await;
                let removed = app.sweep_links();
                if removed > 0 {
                    tracing::info!(removed, "expired ticket links swept");
                }
            }
        })
    };
    let metrics_app = app.clone();
    let router = routes.into_axum_router().route(
        "/metrics",
        axum::routing::get(move || {
            let app = metrics_app.clone();
            async move { app.render_metrics() }
        }),
    );

    let addr = listener.local_addr().context("listener address")?;
    // The drain runs while the server keeps serving: NOT_SERVING first, then (after
    // `drain_delay`) open streams are told to finish and tonic stops accepting.
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let drain = async move {
        shutdown.await;
        tracing::info!(delay = ?server_config.drain_delay, "shutting down: draining");
        health_reporter.set_not_serving::<GateServer<gate::GateService>>().await;
        tokio::time::sleep(server_config.drain_delay).await;
        let _ = draining_tx.send(true);
        let _ = drained_tx.send(());
    };
    let server = transport::server(&server_config)
        .add_routes(Routes::from(router))
        .serve_with_incoming_shutdown(transport::incoming(listener, &server_config), drain);
    tracing::info!(%addr, feed = app.config.health.feed_enabled, "ridegate serving");

    let grace_expired = async {
        if drained_rx.await.is_ok() {
            tokio::time::sleep(server_config.drain_grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let outcome = tokio::select! {
        result = server => result.context("server failed"),
        () = grace_expired => {
            tracing::warn!(grace = ?server_config.drain_grace, "drain grace expired; closing remaining connections");
            Ok(())
        }
    };
    sweeper.abort();
    for task in shared_tasks.into_iter().flatten().chain(platform_watch) {
        task.abort();
    }
    app.audit.close();
    tracing::info!("stopped");
    outcome
}
