//! The one place where errors become gRPC statuses. Deny, assist and "not linked" are
//! answers, never statuses; statuses are for requests ridegate cannot understand or
//! carry out.
//!
//! Every service returns typed errors and converts them here. A failure inside
//! ridegate (Redis, the platform, I/O) never reaches the caller as text: the caller gets
//! a fixed message saying what to do, and the full error, with its chain of causes, is
//! logged (never with rider data).

use std::error::Error;

use ridegate_adapters::link::LinkError;
use tonic::{Code, Status};

use super::admission::Overloaded;
use super::auth::AuthError;
use super::convert::{BatchTooLarge, InvalidRequest};
use super::feed::FeedDenied;
use super::gate::TapRefused;
use super::gates::GateRefused;
use crate::linking::LinkDenied;

/// What a Links caller is told when the link store cannot answer.
const LINK_STORE_UNAVAILABLE: &str = "the link store is unavailable, retry";
/// What a caller is told when ridegate itself is at fault.
const INTERNAL: &str = "internal error in ridegate; it has been logged";

/// How tonic's status for a message over the size limit begins (it says OUT_OF_RANGE).
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: ";

/// A status from the transport as ridegate reports it: a message over the size limit is
/// RESOURCE_EXHAUSTED, gRPC's code for it, not tonic's OUT_OF_RANGE.
pub(super) fn transport(status: Status) -> Status {
    match status.message().strip_prefix(TONIC_TOO_LARGE) {
        Some(sizes) if status.code() == Code::OutOfRange => {
            Status::resource_exhausted(format!("request message too large: {sizes}"))
        }
        _ => status,
    }
}

/// [`transport`] on a finished HTTP response: a unary call refused by the decoder is
/// answered in the response's headers (a trailers-only response), before any service
/// sees it. Layered over the whole server.
pub(super) fn transport_headers<B>(mut response: http::Response<B>) -> http::Response<B> {
    let refused_too_large = response.headers().get("grpc-status").is_some_and(|v| v == "11");
    if refused_too_large && let Some(status) = Status::from_header_map(response.headers()) {
        let mapped = transport(status);
        if mapped.code() == Code::ResourceExhausted {
            let headers = response.headers_mut();
            headers.remove("grpc-message");
            if mapped.add_header(headers).is_err() {
                tracing::error!("an oversize request's status could not be rewritten");
            }
        }
    }
    response
}

impl From<InvalidRequest> for Status {
    fn from(e: InvalidRequest) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<TapRefused> for Status {
    fn from(e: TapRefused) -> Self {
        match e {
            TapRefused::Invalid(e) => e.into(),
            TapRefused::Gate(e) => e.into(),
            TapRefused::Overloaded(e) => e.into(),
        }
    }
}

/// The gRPC metadata key of the retry hint: gRPC's own retry pushback (gRFC A6), in
/// milliseconds.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// The retry hint a status carries, in milliseconds; 0 if none.
pub(super) fn retry_pushback(status: &Status) -> u32 {
    status
        .metadata()
        .get(RETRY_PUSHBACK)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0)
}

/// Overloaded: RESOURCE_EXHAUSTED, with the retry hint in the metadata.
impl From<Overloaded> for Status {
    fn from(e: Overloaded) -> Self {
        let mut status = Status::resource_exhausted(e.to_string());
        let ms = u64::try_from(e.retry_after.as_millis()).unwrap_or(u64::MAX);
        status.metadata_mut().insert(RETRY_PUSHBACK, ms.into());
        status
    }
}

/// A gate without its certificate is not authenticated; a gate speaking for another,
/// or from a place the registry does not have it, is not permitted.
impl From<GateRefused> for Status {
    fn from(e: GateRefused) -> Self {
        match e {
            GateRefused::NoCertificate => Status::unauthenticated(e.to_string()),
            GateRefused::NotAGate
            | GateRefused::OtherGate { .. }
            | GateRefused::Unregistered(_)
            | GateRefused::OtherPlace { .. } => Status::permission_denied(e.to_string()),
        }
    }
}

impl From<BatchTooLarge> for Status {
    fn from(e: BatchTooLarge) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::MissingToken | AuthError::NotBearer | AuthError::Refused(_) => {
                Status::unauthenticated(e.to_string())
            }
            AuthError::NotWired => internal(&e),
        }
    }
}

impl From<FeedDenied> for Status {
    fn from(e: FeedDenied) -> Self {
        match e {
            FeedDenied::Auth(e) => e.into(),
            FeedDenied::NotPublisher => Status::permission_denied(e.to_string()),
            FeedDenied::BatchTooLarge { .. } => Status::invalid_argument(e.to_string()),
        }
    }
}

impl From<LinkDenied> for Status {
    fn from(e: LinkDenied) -> Self {
        match e {
            LinkDenied::Invalid { .. } => Status::invalid_argument(e.to_string()),
            LinkDenied::Forbidden(message) => Status::permission_denied(message),
            LinkDenied::Precondition(message) => Status::failed_precondition(message),
            LinkDenied::NotFound(message) => Status::not_found(message),
            LinkDenied::Store(e) => link_store(e),
        }
    }
}

/// The store's refusals are answers for the caller; its failures are not.
fn link_store(e: LinkError) -> Status {
    match e {
        LinkError::LinkedToAnother => Status::already_exists(e.to_string()),
        LinkError::SecondCard { .. } => Status::failed_precondition(e.to_string()),
        LinkError::Unavailable(_) | LinkError::Storage(_) => {
            tracing::warn!(error = &e as &dyn Error, "link store unavailable: call refused");
            Status::unavailable(LINK_STORE_UNAVAILABLE)
        }
        LinkError::Unreadable(_) => internal(&e),
    }
}

/// INTERNAL with a fixed message; the error itself goes to the log, for an operator.
fn internal(e: &(dyn Error + 'static)) -> Status {
    tracing::error!(error = e, "internal error: call failed");
    Status::internal(INTERNAL)
}

#[cfg(test)]
mod tests {
    use ridegate_adapters::caller::CallerError;
    use ridegate_adapters::shared::SharedError;
    use tonic::Code;

    use super::*;

    /// A failure whose text (a host name here) must never reach a caller.
    fn shared_failure() -> SharedError {
        let io = std::io::Error::other("secret-host:6379 connection reset");
        SharedError::Connection(redis::RedisError::from(io))
    }

    #[test]
    fn each_link_outcome_maps_to_its_code() {
        let cases: [(LinkDenied, Code); 8] = [
            (
                LinkDenied::Invalid {
                    field: "card.number",
                    message: "must be 16 digits".into(),
                },
                Code::InvalidArgument,
            ),
            (LinkDenied::Forbidden("not yours".into()), Code::PermissionDenied),
            (LinkDenied::Precondition("suspended"), Code::FailedPrecondition),
            (LinkDenied::NotFound("not linked"), Code::NotFound),
            (LinkDenied::Store(LinkError::LinkedToAnother), Code::AlreadyExists),
            (
                LinkDenied::Store(LinkError::SecondCard {
                    class: "NFC card",
                    masked: "****1111".into(),
                }),
                Code::FailedPrecondition,
            ),
            (
                LinkDenied::Store(LinkError::Unavailable(SharedError::Timeout)),
                Code::Unavailable,
            ),
            (LinkDenied::Store(LinkError::Unreadable("a card slot")), Code::Internal),
        ];
        for (denied, code) in cases {
            let shown = format!("{denied:?}");
            assert_eq!(Status::from(denied).code(), code, "{shown}");
        }
    }

    #[test]
    fn a_store_failure_reaches_the_caller_without_its_internal_text() {
        let status = Status::from(LinkDenied::Store(LinkError::Unavailable(shared_failure())));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), LINK_STORE_UNAVAILABLE);
        assert!(!status.message().contains("secret-host"));
        let status = Status::from(LinkDenied::Store(LinkError::Unreadable("a card slot")));
        assert_eq!(status.message(), INTERNAL);
    }

    #[test]
    fn authentication_failures_are_unauthenticated_and_wiring_faults_internal() {
        for e in [
            AuthError::MissingToken,
            AuthError::NotBearer,
            AuthError::Refused(CallerError::UnknownKey),
        ] {
            let message = e.to_string();
            let status = Status::from(e);
            assert_eq!(status.code(), Code::Unauthenticated);
            assert_eq!(status.message(), message, "token problems are explained to the caller");
        }
        let status = Status::from(AuthError::NotWired);
        assert_eq!((status.code(), status.message()), (Code::Internal, INTERNAL));
    }

    #[test]
    fn gate_refusals_map_to_their_codes() {
        assert_eq!(Status::from(GateRefused::NoCertificate).code(), Code::Unauthenticated);
        let other = GateRefused::OtherGate {
            certified: "G2".into(),
            claimed: "G1".into(),
        };
        for e in [
            GateRefused::NotAGate,
            other,
            GateRefused::Unregistered("G9".into()),
            GateRefused::OtherPlace {
                field: "gate.station_id",
                gate: "G1".into(),
            },
        ] {
            assert_eq!(Status::from(TapRefused::Gate(e)).code(), Code::PermissionDenied);
        }
    }

    #[test]
    fn feed_refusals_map_to_their_codes() {
        let too_large = BatchTooLarge { got: 3, limit: 2 };
        let status = Status::from(FeedDenied::BatchTooLarge { sequence: 7, too_large });
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "batch 7: batch of 3 items is larger than the limit of 2"
        );
        assert_eq!(Status::from(FeedDenied::NotPublisher).code(), Code::PermissionDenied);
        assert_eq!(
            Status::from(FeedDenied::Auth(AuthError::MissingToken)).code(),
            Code::Unauthenticated
        );
        assert_eq!(Status::from(too_large).code(), Code::InvalidArgument);
    }
}
