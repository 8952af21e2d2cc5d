//! Contracts for everything outside ridegate's decision — credential verification, the
//! link store, the health-code source, single-use guards, idempotency records and the
//! audit sink, the durable embedded store — and their implementations.
//!
//! Each outside system is a folder: `mod.rs` holds the trait, its types and its error;
//! `memory.rs` the embedded implementation. Nothing here depends on the gateway, and
//! nothing here sees wire (protobuf) types.

#![forbid(unsafe_code)]

pub mod audit;
pub mod caller;
pub mod credential;
mod expiring;
pub mod health;
pub mod idempotency;
pub mod ids;
pub mod lines;
pub mod link;
pub mod observe;
pub mod replay;
pub mod settings;
pub mod shared;
pub mod storage;
#[cfg(feature = "test-util")]
pub mod test_util;
