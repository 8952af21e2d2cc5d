//! Serving: the tonic server, its limits, health checking, reflection, metrics, and a
//! graceful drain.

mod admin;
pub mod admission;
mod auth;
pub mod convert;
mod deadline;
mod feed;
mod gate;
mod gate_state;
mod gates;
mod links;
mod status;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod transport;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use ridegate_adapters::shared::changes;
use ridegate_proto::pb::gate_server::GateServer;
use ridegate_proto::pb::gate_state_server::GateStateServer;
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
pub use status::RETRY_PUSHBACK;

/// The health-checking service name that reports whether the shared tier (Redis)
/// answers. The gate service keeps serving while it does not, with degraded answers.
pub const SHARED_STATE_SERVICE: &str = "ridegate.v1.SharedState";

use crate::app::App;
use crate::gate_state::mirror;
use crate::import::ImportFailed;
use crate::reload::Reloader;
use crate::stores::{LinkBackend, StatusSource};

/// The gRPC services of one built [`App`], each given only the parts it needs.
pub(crate) struct Services {
    /// `ridegate.v1.Gate`.
    gate: gate::GateService,
    /// `ridegate.v1.Links`, behind `authenticator`.
    links: links::LinkService,
    /// `ridegate.v1.HealthFeed` behind `authenticator`, when enabled.
    feed: Option<feed::FeedService>,
    /// `ridegate.v1.GateState`.
    gate_state: gate_state::GateStateService,
    /// Turns caller tokens into callers for Links and HealthFeed.
    authenticator: auth::Authenticator,
    /// Sheds gate calls that cannot be answered in time.
    admission: Arc<admission::Admission>,
}

impl Services {
    /// The services over `app`; `Taps` and `Follow` streams end once `draining` turns
    /// true.
    pub(crate) fn new(app: &App, draining: tokio::sync::watch::Receiver<bool>) -> Self {
        let deadlines = Deadlines {
            default_budget: app.config.deadline.default_budget,
            margin: app.config.deadline.margin,
        };
        let admission = Arc::new(admission::Admission::new(
            app.config.admission.clone(),
            deadlines,
            app.authorizer.metrics().clone(),
        ));
        admission.spawn_lag_probe();
        let gates = gates::GateAdmission::new(app.config.server.tls.mutual(), app.config.gates.clone());
        let gate = gate::GateService::new(
            app.authorizer.clone(),
            deadlines,
            app.config.server.stream_concurrency,
            draining.clone(),
            gates.clone(),
            admission.clone(),
        );
        let links = links::LinkService::new(
            app.links.clone(),
            app.pseudonymizer.clone(),
            app.link_rules,
            app.issuer_ids.clone(),
            app.clock.clone(),
        );
        let feed = app.config.health.feed_enabled.then(|| {
            feed::FeedService::new(
                app.status_source.clone(),
                app.status_reader.clone(),
                app.pseudonymizer.clone(),
                app.brake.clone(),
            )
        });
        let gate_state = gate_state::GateStateService::new(
            app.gate_state.clone(),
            app.authorizer.clone(),
            gates.clone(),
            draining,
            app.clock.clone(),
        );
        Self {
            gate,
            links,
            feed,
            gate_state,
            authenticator: auth::Authenticator::new(app.callers.clone(), app.clock.clone()),
            admission,
        }
    }
}

/// Serves `app` on an already-bound `listener` (and the admin endpoints on `admin`, if
/// given) until `shutdown` resolves, then drains: health checking and `/readyz` report
/// not serving, new calls are refused after `drain_delay`, in-flight calls and `Taps`
/// streams get `drain_grace` to finish, and the audit log and the durable store are
/// flushed. A start-up import into the shared tier runs meanwhile, `ridegate.v1.Gate`
/// NOT_SERVING until it lands; if it cannot land, the server drains and this returns its
/// [`ImportFailed`](crate::import::ImportFailed).
pub async fn serve(
    app: App,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    if app.import.is_some() {
        health_reporter.set_not_serving::<GateServer<gate::GateService>>().await;
    } else {
        health_reporter.set_serving::<GateServer<gate::GateService>>().await;
    }
    let (draining_tx, draining_rx) = tokio::sync::watch::channel(false);
    let services = Services::new(&app, draining_rx);
    let caches = app.caches();
    // From here on, each task gets only its parts.
    let App {
        config,
        links,
        status_source,
        shared,
        storage,
        exposition,
        audit,
        clock,
        import,
        tls,
        authorizer,
        callers,
        reload_trigger,
        gate_state,
        brake,
        ..
    } = app;
    let server_config = config.server.clone();
    // Keys and certificates rotate without a restart.
    let reloader = Reloader::new(
        config.clone(),
        tls.clone(),
        callers,
        authorizer.clone(),
        gate_state.clone(),
    )
    .spawn(reload_trigger, server_config.reload_interval);

    let taps = gate::TapsRoute::new(services.gate.clone(), server_config.max_tap_bytes);
    let gate = GateServer::new(services.gate)
        // Big enough that an oversize QR text reaches the verifier and gets a DENY with
        // CODE_OVERSIZE instead of a transport error; small, as every tap in flight may
        // hold this much.
        .max_decoding_message_size(server_config.max_tap_bytes);

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
        .add_service(reflection().build_v1alpha().context("reflection v1alpha")?)
        // Offline-capable gates follow their state and upload what they decided.
        .add_service(
            GateStateServer::new(services.gate_state).max_decoding_message_size(server_config.max_request_bytes),
        );
    // Links and HealthFeed answer only callers with a valid token.
    routes = routes.add_service(InterceptedService::new(
        LinksServer::new(services.links).max_decoding_message_size(server_config.max_request_bytes),
        services.authenticator.clone(),
    ));
    if let Some(feed) = services.feed {
        routes = routes.add_service(InterceptedService::new(
            HealthFeedServer::new(feed).max_decoding_message_size(server_config.max_request_bytes),
            services.authenticator,
        ));
    }
    // The shared tier: probe it every interval, report its state as the health of
    // `ridegate.v1.SharedState` (the gate service keeps serving, degraded, meanwhile),
    // and follow the change stream into this instance's caches.
    let importing_tier = shared.clone();
    let shared_tasks = shared.map(|tier| {
        let prober = {
            let (tier, reporter, every) = (tier.clone(), health_reporter.clone(), config.redis.probe_interval);
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
            let caches = caches.clone();
            changes::follow(tier.clone(), move |change| caches.apply_change(change))
        };
        // Offline gates' feed: a copy of the tier, kept by the change stream.
        let mirror = match (&gate_state, &links, &status_source) {
            (Some(feed), LinkBackend::Shared(links), StatusSource::Shared(health)) => Some(mirror::spawn(
                feed.clone(),
                mirror::Source {
                    tier,
                    links: links.clone(),
                    health: health.clone(),
                    second_card: config.links.second_card,
                },
            )),
            _ => None,
        };
        [Some(prober), Some(follower), mirror]
    });
    // The start-up import into the shared tier: Gate is ready once it lands; if it
    // cannot, the server drains and `serve` fails with the reason.
    let (import_failed_tx, import_failed_rx) = tokio::sync::oneshot::channel::<ImportFailed>();
    let importer = import.zip(importing_tier).map(|(import, tier)| {
        let (links, status_source, reporter) = (links.clone(), status_source.clone(), health_reporter.clone());
        let deadline = tokio::time::Instant::now() + config.redis.import_timeout;
        tokio::spawn(async move {
            match import.run(&tier, &links, &status_source, deadline).await {
                Ok(()) => {
                    tier.set_importing(false);
                    reporter.set_serving::<GateServer<gate::GateService>>().await;
                    tracing::info!("start-up import landed in the shared tier: serving");
                }
                Err(e) => {
                    tracing::error!(error = %e, "start-up import into the shared tier failed: stopping");
                    let _ = import_failed_tx.send(e);
                }
            }
        })
    });
    // The health platform's change feed, applied to the cache as changes happen.
    let platform_watch = status_source
        .platform()
        .filter(|_| config.health.platform.watch)
        .map(|remote| remote.clone().watch(move |event| caches.apply_platform_event(event)));
    // Single-journey ticket links stop resolving at the end of their day; sweep them
    // out of memory every hour.
    let sweeper = tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            every.tick().await;
            let removed = links.sweep_expired(clock.now());
            if removed > 0 {
                tracing::info!(removed, "expired ticket links swept");
            }
        }
    });
    let router = routes
        .into_axum_router()
        // Taps with a decoder that answers an undecodable tap in place (see gate.rs).
        .route_service("/ridegate.v1.Gate/Taps", taps)
        // At most `admission.max_in_flight` gate calls open, checked before a request
        // is read.
        .layer(axum::middleware::from_fn_with_state(
            services.admission.clone(),
            admission::cap_gate_calls,
        ))
        // An oversize request is RESOURCE_EXHAUSTED, not tonic's OUT_OF_RANGE.
        .layer(tower::util::MapResponseLayer::new(status::transport_headers));
    // Metrics and probes on their own listener, never on the gate port.
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(true);
    let admin_task = admin
        .map(|listener| admin::spawn(listener, admin::router(exposition, ready_rx, brake)))
        .transpose()?;

    let addr = listener.local_addr().context("listener address")?;
    // The drain runs while the server keeps serving: NOT_SERVING first, then (after
    // `drain_delay`) open streams are told to finish and tonic stops accepting.
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let import_failure = std::sync::Arc::new(parking_lot::Mutex::new(None));
    let drain = {
        let import_failure = import_failure.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                Ok(failed) = import_failed_rx => *import_failure.lock() = Some(failed),
            }
        }
    };
    // A shutdown stops an unfinished import first, so it cannot report SERVING again.
    let import_abort = importer.as_ref().map(tokio::task::JoinHandle::abort_handle);
    let drain = async move {
        drain.await;
        if let Some(import) = import_abort {
            import.abort();
        }
        tracing::info!(delay = ?server_config.drain_delay, "shutting down: draining");
        health_reporter.set_not_serving::<GateServer<gate::GateService>>().await;
        let _ = ready_tx.send(false);
        tokio::time::sleep(server_config.drain_delay).await;
        let _ = draining_tx.send(true);
        let _ = drained_tx.send(());
    };
    let transport = transport::Transport::new(&server_config, tls.clone(), authorizer.metrics().clone());
    let max_connections = transport.max_connections();
    // Taps predicted to be late are refused as they arrive, in the connection's task.
    let gatekeeper = {
        let admission = services.admission;
        move |request: &mut http::Request<transport::Peeked>| admission.at_arrival(request)
    };
    let server = transport.serve(listener, router, gatekeeper, drain);
    tracing::info!(%addr, feed = config.health.feed_enabled, tls = tls.is_some(), max_connections, "ridegate serving");

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
    reloader.abort();
    if let Some(task) = admin_task {
        task.abort();
    }
    for task in shared_tasks
        .into_iter()
        .flatten()
        .flatten()
        .chain(platform_watch)
        .chain(importer)
    {
        task.abort();
    }
    audit.close();
    // Used codes and retry records written behind the last taps.
    let flushed = match storage {
        Some(storage) => storage.flush().await.map_err(|e| {
            tracing::error!(
                error = &e as &dyn std::error::Error,
                "storage: the last writes could not be kept"
            );
        }),
        None => Ok(()),
    };
    // Gates resume without a snapshot after this restart, if every write was kept.
    if let (Some(feed), Ok(())) = (&gate_state, flushed) {
        feed.keep_mark();
    }
    tracing::info!("stopped");
    if let Some(failed) = import_failure.lock().take() {
        return Err(failed.into());
    }
    outcome
}
