//! Caller authentication for the non-gate services: an interceptor that turns the
//! `authorization: Bearer <token>` header into a [`Caller`] in the request's extensions,
//! or rejects the call with UNAUTHENTICATED before the service sees it.

use std::sync::Arc;

use ridegate_adapters::caller::{Caller, CallerVerifier};
use ridegate_core::clock::Clock;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Verifies bearer tokens.
#[derive(Clone)]
pub(super) struct Authenticator {
    verifier: Arc<CallerVerifier>,
    clock: Clock,
}

impl Authenticator {
    /// An authenticator over `verifier`, judging token times by `clock`.
    pub(super) fn new(verifier: Arc<CallerVerifier>, clock: Clock) -> Self {
        Self { verifier, clock }
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing caller token: send authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("the authorization header must be: Bearer <token>"))?;
        let caller = self
            .verifier
            .verify(token.trim(), self.clock.now())
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller the interceptor authenticated.
pub(super) fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    // Every service that calls this is wrapped by the interceptor; a missing caller is
    // a wiring fault, reported as such rather than trusted.
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("caller authentication is not wired"))
}
