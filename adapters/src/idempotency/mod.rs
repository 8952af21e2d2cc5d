//! Idempotency records: the answer given to a request, kept for a while so a gate that
//! retries (same gate id, same request id) gets the same answer again — whichever
//! instance the retry reaches.
//!
//! One operation does both halves: the decision is made, then recorded unless an answer
//! for the request is already held, in which case that earlier answer is returned and
//! given instead. A retry costs a decision that is thrown away; a first request costs
//! one write and no read.
//!
//! Each answer is kept with the fingerprint of the tap it answered ([`Kept::tap`]): the
//! caller gives the earlier answer only to a tap with the same fingerprint, so a gate
//! that reuses a request id for another rider gets a fresh decision, never someone
//! else's answer.

mod memory;
mod redis;

use std::future::Future;

pub use memory::{MemoryIdempotency, RequestIds};
pub use redis::RedisIdempotency;

use crate::ids::{RequestKey, TapFingerprint};
use crate::shared::SharedError;
use ridegate_core::model::{Answer, UnixMillis};

/// The record store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("idempotency store unavailable")]
pub struct IdempotencyError(#[from] pub SharedError);

/// An answer kept for a request, and the fingerprint of the tap it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// The answer given.
    pub answer: Answer,
    /// What the tap asked.
    pub tap: TapFingerprint,
}

impl Kept {
    /// The stored form: the answer's 22 bytes, then the fingerprint's 8.
    pub fn to_bytes(&self) -> [u8; 30] {
        let mut out = [0u8; 30];
        out[..22].copy_from_slice(&self.answer.to_bytes());
        out[22..].copy_from_slice(&self.tap.0);
        out
    }

    /// A record from [`Kept::to_bytes`]; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (answer, tap) = (bytes.get(..22)?, bytes.get(22..)?);
        Some(Self {
            answer: Answer::from_bytes(answer)?,
            tap: TapFingerprint(tap.try_into().ok()?),
        })
    }
}

/// Keeps answers by request.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Keeps `kept` for `request` until `until`, unless a record is already kept: then
    /// returns that one (whatever tap it answered).
    fn record(
        &self,
        request: RequestKey,
        kept: Kept,
        until: UnixMillis,
        now: UnixMillis,
    ) -> impl Future<Output = Result<Option<Kept>, IdempotencyError>> + Send;
}
