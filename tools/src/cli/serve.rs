//! `ridegate serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use ridegate::App;
use ridegate::config::{Config, LogFormat};
use ridegate_core::clock::Clock;

use super::{Failure, runtime, shutdown_signal, write_ready_file};

/// Flags override environment variables, which override the config file.
#[derive(Debug, clap::Args)]
pub(super) struct ServeArgs {
    /// TOML configuration file (see deploy/ridegate.example.toml).
    #[arg(long, env = "RIDEGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on for gRPC [default: 127.0.0.1:50061].
    #[arg(long, env = "RIDEGATE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address for /metrics, /readyz and /livez [default: 127.0.0.1:9464]; never the
    /// gRPC port.
    #[arg(long, env = "RIDEGATE_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// TLS on the gRPC port: the server's certificate chain (PEM).
    #[arg(long, env = "RIDEGATE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS on the gRPC port: the server's private key (PEM).
    #[arg(long, env = "RIDEGATE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: the operator's CA for client certificates (PEM); each gate may then
    /// speak only for the gate id its certificate names.
    #[arg(long, env = "RIDEGATE_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// JSON-lines links file to import at start-up.
    #[arg(long, env = "RIDEGATE_LINKS")]
    links: Option<PathBuf>,
    /// JSON-lines health-status file to load at start-up.
    #[arg(long, env = "RIDEGATE_HEALTH")]
    health: Option<PathBuf>,
    /// Audit output: `-` for stdout, or a file to append to.
    #[arg(long, env = "RIDEGATE_AUDIT")]
    audit: Option<String>,
    /// Serve ridegate.v1.HealthFeed so statuses can be pushed at run time.
    #[arg(long, env = "RIDEGATE_HEALTH_FEED")]
    health_feed: Option<bool>,
    /// The health-code platform, `http://host:port`: statuses come from it (a
    /// `health.file` in the configuration file is then not loaded).
    #[arg(long, env = "RIDEGATE_HEALTH_PLATFORM", conflicts_with = "health")]
    health_platform: Option<String>,
    /// Redis server for the shared tier: `redis://host:port` (`rediss://` for TLS).
    #[arg(long, env = "RIDEGATE_REDIS")]
    redis: Option<String>,
    /// Redis Cluster seed nodes for the shared tier, comma-separated.
    #[arg(long, env = "RIDEGATE_REDIS_CLUSTER", value_delimiter = ',')]
    redis_cluster: Option<Vec<String>>,
    /// Data directory where state is kept across restarts when there is no Redis
    /// [default: ridegate-data].
    #[arg(long, env = "RIDEGATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Keep everything in memory: nothing survives a restart.
    #[arg(
        long,
        env = "RIDEGATE_EPHEMERAL",
        conflicts_with = "data_dir",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    ephemeral: Option<bool>,
    /// Log format.
    #[arg(long, env = "RIDEGATE_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `ridegate=debug`.
    #[arg(long, env = "RIDEGATE_LOG")]
    log: Option<String>,
    /// Once listening, write `{"addr": "<ip:port>"}` to this file (for scripts and
    /// tests that listen on port 0).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

impl ServeArgs {
    /// The configuration: file (or defaults), then environment, then flags.
    fn config(&self) -> Result<Config, Failure> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path).map_err(Failure::usage)?,
            None => Config::default(),
        };
        if let Ok(secret) = std::env::var("RIDEGATE_IDENTITY_SECRET") {
            config.identity.secret = secret;
            config.identity.secret_file = None;
        }
        if let Some(file) = std::env::var_os("RIDEGATE_IDENTITY_SECRET_FILE") {
            config.identity.secret_file = Some(PathBuf::from(file));
            config.identity.secret.clear();
        }
        if let Some(listen) = self.listen {
            config.server.listen = listen;
        }
        if let Some(admin) = self.admin_listen {
            config.server.admin_listen = admin;
        }
        if let Some(cert) = &self.tls_cert {
            config.server.tls.cert = Some(cert.clone());
        }
        if let Some(key) = &self.tls_key {
            config.server.tls.key = Some(key.clone());
        }
        if let Some(ca) = &self.tls_client_ca {
            config.server.tls.client_ca = Some(ca.clone());
        }
        if let Ok(password) = std::env::var("RIDEGATE_REDIS_PASSWORD") {
            config.redis.password = password;
        }
        if let Some(url) = &self.redis {
            config.redis.url.clone_from(url);
            config.redis.cluster.clear();
        }
        if let Some(seeds) = &self.redis_cluster {
            config.redis.cluster.clone_from(seeds);
            config.redis.url.clear();
        }
        if let Some(links) = &self.links {
            config.links.file = Some(links.clone());
        }
        if let Some(health) = &self.health {
            config.health.file = Some(health.clone());
        }
        if let Some(url) = &self.health_platform {
            config.health.platform.url.clone_from(url);
            config.health.file = None;
        }
        if let Some(audit) = &self.audit {
            config.audit.path.clone_from(audit);
        }
        if let Some(feed) = self.health_feed {
            config.health.feed_enabled = feed;
        }
        if let Some(dir) = &self.data_dir {
            config.storage.data_dir.clone_from(dir);
            config.storage.ephemeral = false;
        }
        if let Some(ephemeral) = self.ephemeral {
            config.storage.ephemeral = ephemeral;
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        if let Some(filter) = &self.log {
            config.log.filter.clone_from(filter);
        }
        config
            .validate()
            .map_err(|e| Failure::usage(anyhow::anyhow!("invalid configuration: {e}")))?;
        Ok(config)
    }
}

/// Runs `ridegate serve`.
pub(super) fn run(args: ServeArgs) -> Result<(), Failure> {
    let config = args.config()?;
    ridegate::telemetry::init(&config.log)
        .map_err(|e| Failure::usage(anyhow::anyhow!("invalid configuration: {e}")))?;
    let rt = runtime()?;
    rt.block_on(async {
        let (listen, admin_listen) = (config.server.listen, config.server.admin_listen);
        let app = App::build(config, Clock::System)
            .await
            .map_err(|e| Failure::usage(e.context("invalid configuration")))?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))
            .map_err(Failure::runtime)?;
        let admin = tokio::net::TcpListener::bind(admin_listen)
            .await
            .with_context(|| format!("cannot listen on {admin_listen} (server.admin_listen)"))
            .map_err(Failure::runtime)?;
        let shutdown = shutdown_signal()?;
        // Installed before readiness is announced, like the stop signals: a SIGHUP
        // right after start-up reloads instead of killing the process.
        #[cfg(unix)]
        let app = {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hangup = signal(SignalKind::hangup()).map_err(Failure::runtime)?;
            app.reload_on(Box::pin(futures::stream::poll_fn(move |cx| hangup.poll_recv(cx))))
        };
        if let Some(path) = &args.ready_file {
            let addr = listener.local_addr().map_err(Failure::runtime)?;
            let admin = admin.local_addr().map_err(Failure::runtime)?;
            write_ready_file(path, addr, Some(admin)).map_err(Failure::runtime)?;
        }
        ridegate::serve(app, listener, Some(admin), shutdown)
            .await
            .map_err(Failure::runtime)
    })
}
