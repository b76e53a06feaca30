//! meter's tools for operators and developers, each a `meter` subcommand: the admin API from the
//! command line (`meter subscriptions`, `meter period`), the load generator (`meter loadgen`),
//! a local Kafka-protocol broker (`meter dev kafka`) and the HTTP
//! baseline that benches/kafka.sh measures `meter ingest` against (`meter dev http-baseline`).

pub mod admin;
pub mod baseline;
pub mod dev;
pub mod loadgen;
