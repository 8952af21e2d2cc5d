//! The `ridegate` command line and the tools around the server: the demo, key and code
//! minting, the health-code platform simulator, and the load-testing tools (`load`,
//! `load-setup` and the `baseline` server). `ridegate serve` runs the server library
//! (package `ridegate`), which links none of this.

#![forbid(unsafe_code)]

pub mod baseline;
pub mod cli;
pub mod drill;
pub mod healthsim;
pub mod load;
pub mod population;
