//! meter: usage metering with exact counts. The binary's roles are subcommands; this library holds
//! them so that tests and benchmarks drive the same code.

pub mod cli;
pub mod config;
pub mod server;
pub mod telemetry;
