//! The one place where errors become gRPC statuses. Deny, assist and "not linked" are
//! answers, never statuses; statuses are for requests ridegate cannot understand.

use tonic::Status;

use super::convert::InvalidRequest;
use crate::linking::LinkDenied;

impl From<InvalidRequest> for Status {
    fn from(e: InvalidRequest) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

/// A batch larger than a service accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("batch of {got} items is larger than the limit of {limit}")]
pub struct BatchTooLarge {
    /// Items sent.
    pub got: usize,
    /// Items accepted per call.
    pub limit: usize,
}

impl From<BatchTooLarge> for Status {
    fn from(e: BatchTooLarge) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<LinkDenied> for Status {
    fn from(e: LinkDenied) -> Self {
        let message = e.to_string();
        match e {
            LinkDenied::Invalid { .. } => Status::invalid_argument(message),
            LinkDenied::Forbidden(_) => Status::permission_denied(message),
            LinkDenied::Precondition(_) => Status::failed_precondition(message),
            LinkDenied::Conflict(_) => Status::already_exists(message),
            LinkDenied::NotFound(_) => Status::not_found(message),
            LinkDenied::Unavailable(_) => Status::unavailable(message),
        }
    }
}
