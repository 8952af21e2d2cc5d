//! Keys and certificates that rotate without a restart: the gate port's certificate,
//! key and client CA, the caller key set and its revocations file, and the issuers' key
//! sets are read again on SIGHUP and when their files change (checked every
//! `server.reload_interval`).
//!
//! Each is built and validated in full before it replaces the one in use (an
//! `ArcSwap`), so a reload that fails keeps the old set and logs why; connections
//! already open keep the TLS session they have, and a tap being decided finishes with
//! the keys it started with.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use futures::{Stream, StreamExt as _};
use ridegate_adapters::caller::CallerVerifier;
use ridegate_adapters::credential::ride_code::RideCodeVerifier;

use crate::authorize::Authorizer;
use crate::config::{Config, ConfigError};
use crate::gate_state::GateStateFeed;
use crate::serve::tls::TlsState;

/// Something that asks for a reload (SIGHUP, in `ridegate serve`).
pub type ReloadTrigger = Pin<Box<dyn Stream<Item = ()> + Send>>;

/// Why a key set could not be reloaded; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// A file could not be read or parsed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A key was refused (a bad point, a missing `kid`, a duplicate `kid`).
    #[error("{field}: {message}")]
    Key {
        /// `callers` or `issuers`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Reloads what can rotate.
pub(crate) struct Reloader {
    config: Config,
    tls: Option<Arc<TlsState>>,
    callers: Arc<ArcSwap<CallerVerifier>>,
    authorizer: Arc<Authorizer>,
    /// The gate state feed, which hands issuer keys to gates.
    gate_state: Option<Arc<GateStateFeed>>,
    /// The key-set files, and their modification times when last loaded.
    key_files: Vec<PathBuf>,
    loaded: parking_lot::Mutex<Vec<Option<SystemTime>>>,
}

fn stamps(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}

impl Reloader {
    /// A reloader for what `config` names, swapping into `tls`, `callers`,
    /// `authorizer` and `gate_state`.
    pub(crate) fn new(
        config: Config,
        tls: Option<Arc<TlsState>>,
        callers: Arc<ArcSwap<CallerVerifier>>,
        authorizer: Arc<Authorizer>,
        gate_state: Option<Arc<GateStateFeed>>,
    ) -> Self {
        let key_files: Vec<PathBuf> = config
            .callers
            .jwks_file
            .iter()
            .chain(&config.callers.revocations_file)
            .chain(
                config
                    .issuers
                    .values()
                    .filter(|i| i.enabled)
                    .filter_map(|i| i.jwks_file.as_ref()),
            )
            .cloned()
            .collect();
        let loaded = parking_lot::Mutex::new(stamps(&key_files));
        Self {
            config,
            tls,
            callers,
            authorizer,
            gate_state,
            key_files,
            loaded,
        }
    }

    /// Builds and swaps in the caller and issuer key sets; on any error, neither.
    fn reload_keys(&self) -> Result<(usize, usize), KeysError> {
        *self.loaded.lock() = stamps(&self.key_files);
        let callers =
            CallerVerifier::new(&self.config.caller_keys()?, self.config.caller_settings()?).map_err(|e| {
                KeysError::Key {
                    field: "callers",
                    message: e.to_string(),
                }
            })?;
        let specs = self.config.issuer_specs()?;
        let issuer_keys = specs.iter().map(|s| s.keys.len()).sum();
        let issuers = RideCodeVerifier::new(&specs, self.config.ride_codes).map_err(|e| KeysError::Key {
            field: "issuers",
            message: e.to_string(),
        })?;
        let caller_keys = callers.key_count();
        self.callers.store(Arc::new(callers));
        self.authorizer.replace_verifier(issuers);
        if let Some(feed) = &self.gate_state {
            feed.replace_issuers(specs);
        }
        Ok((caller_keys, issuer_keys))
    }

    fn keys(&self, why: &'static str) {
        match self.reload_keys() {
            Ok((caller_keys, issuer_keys)) => {
                tracing::info!(why, caller_keys, issuer_keys, "key sets reloaded");
            }
            Err(e) => tracing::error!(why, error = %e, "key sets not reloaded: keeping the ones in use"),
        }
    }

    fn tls(&self, tls: &TlsState, why: &'static str) {
        match tls.reload() {
            Ok(()) => tracing::info!(why, "TLS certificate, key and client CA reloaded"),
            Err(e) => tracing::error!(why, error = %e, "TLS not reloaded: keeping the certificate and CA in use"),
        }
    }

    /// Reloads everything (SIGHUP).
    pub(crate) fn all(&self) {
        if let Some(tls) = &self.tls {
            self.tls(tls, "signal");
        }
        self.keys("signal");
    }

    /// Reloads what changed on disk since it was last loaded.
    pub(crate) fn changed(&self) {
        if let Some(tls) = self.tls.as_ref().filter(|tls| tls.changed()) {
            self.tls(tls, "file changed");
        }
        if *self.loaded.lock() != stamps(&self.key_files) {
            self.keys("file changed");
        }
    }

    /// Reloads on each `trigger` and, every `every` (unless zero), what changed; until
    /// the task is aborted.
    pub(crate) fn spawn(self, trigger: Option<ReloadTrigger>, every: Duration) -> tokio::task::JoinHandle<()> {
        let mut trigger = trigger.unwrap_or_else(|| Box::pin(futures::stream::pending()));
        tokio::spawn(async move {
            let mut tick = (!every.is_zero()).then(|| {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick
            });
            loop {
                let polled = async {
                    match tick.as_mut() {
                        Some(tick) => {
                            tick.tick().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    asked = trigger.next() => match asked {
                        Some(()) => self.all(),
                        None => trigger = Box::pin(futures::stream::pending()),
                    },
                    () = polled => self.changed(),
                }
            }
        })
    }
}
