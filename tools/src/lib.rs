//! meter's tools for operators and developers, each a `meter` subcommand: the admin API from the
//! command line (`meter subscriptions`, `meter period`), the load generator (`meter loadgen`)
//! and a local Kafka-protocol broker (`meter dev kafka`).

pub mod admin;
pub mod dev;
pub mod loadgen;
