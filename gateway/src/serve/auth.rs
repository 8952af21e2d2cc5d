//! Caller authentication for the non-gate services: an interceptor that turns the
//! `authorization: Bearer <token>` header into a [`Caller`] in the request's extensions,
//! or rejects the call with UNAUTHENTICATED before the service sees it.

use std::sync::Arc;

use arc_swap::ArcSwap;
use ridegate_adapters::caller::{Caller, CallerError, CallerVerifier};
use ridegate_core::clock::Clock;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Why a call was not authenticated; `super::status` maps each to its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum AuthError {
    /// No `authorization` header.
    #[error("missing caller token: send authorization: Bearer <token>")]
    MissingToken,
    /// A header that is not `Bearer <token>`.
    #[error("the authorization header must be: Bearer <token>")]
    NotBearer,
    /// The token was refused (its messages are written for the caller).
    #[error(transparent)]
    Refused(#[from] CallerError),
    /// A service that needs a caller is not behind the interceptor: a wiring fault.
    #[error("caller authentication is not wired")]
    NotWired,
}

/// Verifies bearer tokens.
#[derive(Clone)]
pub(super) struct Authenticator {
    /// Swapped whole when the caller key set is reloaded.
    verifier: Arc<ArcSwap<CallerVerifier>>,
    clock: Clock,
}

impl Authenticator {
    /// An authenticator over `verifier`, judging token times by `clock`.
    pub(super) fn new(verifier: Arc<ArcSwap<CallerVerifier>>, clock: Clock) -> Self {
        Self { verifier, clock }
    }

    fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller, AuthError> {
        let header = request.metadata().get("authorization").ok_or(AuthError::MissingToken)?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(AuthError::NotBearer)?;
        Ok(self.verifier.load().verify(token.trim(), self.clock.now())?)
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.authenticate(&request)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller the interceptor authenticated.
pub(super) fn caller<T>(request: &Request<T>) -> Result<Caller, AuthError> {
    // Every service that calls this is wrapped by the interceptor; a missing caller is
    // a wiring fault, reported as such rather than trusted.
    request.extensions().get::<Caller>().cloned().ok_or(AuthError::NotWired)
}
