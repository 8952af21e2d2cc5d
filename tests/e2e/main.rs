//! End-to-end tests: the real `ridegate` binary on a free loopback port, driven over
//! gRPC (and HTTP for metrics) exactly as gates, apps and operators drive it.

#![allow(clippy::unwrap_used)] // a test or benchmark that cannot set itself up should stop loudly

mod adversary;
mod bad_input;
mod cli;
mod durable;
mod feed;
mod gate;
mod links;
mod load;
mod offline;
mod operations;
mod overload;
mod platform;
mod rotation;
mod shared;
mod tls;
