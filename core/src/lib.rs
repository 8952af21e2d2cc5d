//! ridegate's domain and its whole gate decision, pure.
//!
//! - [`model`]: times, health statuses, verdicts, reasons, modes and the answer a gate
//!   is given;
//! - [`credential`]: what a rider can present, validated for shape, and what it is
//!   linked by;
//! - [`clock`]: wall-clock time, injectable;
//! - [`decision`]: the rules ([`decision::Rules`], which configuration deserializes
//!   into) and [`decision::Rules::decide`], one pure function from the facts about a
//!   tap to its outcome;
//! - [`gate_state`]: the entry an offline gate keeps per linked credential.
//!
//! No runtime, no wire types, no I/O: the server, a gate-side library and a replay tool
//! all link this crate and reach the same answer from the same facts.

#![forbid(unsafe_code)]

pub mod clock;
pub mod credential;
pub mod decision;
pub mod gate_state;
pub mod model;
