//! The `meter` command line: one binary, every role a subcommand.

use crate::config::{Config, Overrides};
use clap::{Args, Parser, Subcommand};
use meter_auth::Role;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Usage metering: exact counts of tenants' usage events.
#[derive(Debug, Parser)]
#[command(name = "meter", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run ingest, aggregator and the API in one process.
    Serve(ServeArgs),
    /// Run the write API (stateless; any number of processes) on a Kafka log.
    Ingest(ServeArgs),
    /// Run an aggregator, one member of the consumer group sharing the Kafka log's partitions.
    Aggregate(ServeArgs),
    /// Run the sink that fills the ClickHouse store from the Kafka log (its own consumer group).
    Sink(ServeArgs),
    /// Run the sync outbox's worker: closed invoices to Stripe (`[stripe] api_key`), exactly once;
    /// or, with a subcommand, ask a running meter about the sync.
    Sync(SyncArgs),
    /// Create or upgrade the schemas: the shared state on Postgres (`--state`) and the usage store on ClickHouse (SQLite upgrades itself).
    Migrate(ConfigArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage subscriptions through a running meter's admin API.
    #[command(subcommand)]
    Subscriptions(meter_tools::admin::SubscriptionsCommand),
    /// Close a billing period and export its drafts, through a running meter's admin API.
    #[command(subcommand)]
    Period(meter_tools::admin::PeriodCommand),
    /// Send generated events to a running meter and report events/s and latency.
    Loadgen(meter_tools::loadgen::LoadgenArgs),
    /// Local stand-ins for development and tests.
    #[command(subcommand)]
    Dev(DevCommand),
}

/// `meter dev …`.
#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Run librdkafka's mock cluster as a local Kafka broker and print its bootstrap address.
    Kafka(meter_tools::dev::DevKafkaArgs),
    /// Serve the least HTTP ingest to Kafka can do (parse and produce; no key, no validation),
    /// the baseline benches/kafka.sh measures `meter ingest` against.
    HttpBaseline(meter_tools::baseline::HttpBaselineArgs),
}

/// Where configuration comes from.
#[derive(Debug, Args, Clone)]
pub struct ConfigArgs {
    /// TOML configuration file (defaults, then this file, then METER__* env, then flags).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the embedded backends' files.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Event log: `sqlite`, `sqlite://PATH` or `kafka://HOST:PORT[,HOST:PORT]`.
    #[arg(long, value_name = "URL")]
    pub log: Option<String>,
    /// Usage store: `sqlite`, `sqlite://PATH` or `clickhouse://[USER@]HOST:PORT/DATABASE`.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Shared state (keys, live counters, ledger, webhooks): `sqlite` or
    /// `postgres://USER[:PASSWORD]@HOST:PORT/DATABASE`.
    #[arg(long, value_name = "URL")]
    pub state: Option<crate::config::StateUrl>,
}

impl ConfigArgs {
    /// Loads the layered configuration.
    pub fn load(&self, listen: Option<SocketAddr>) -> anyhow::Result<Config> {
        let overrides = Overrides {
            listen,
            data_dir: self.data_dir.clone(),
            log_url: self.log.clone(),
            store_url: self.store.clone(),
            state_url: self.state.clone(),
        };
        Ok(Config::load(self.config.as_deref(), &overrides)?)
    }
}

/// `meter serve`, `meter ingest` and `meter aggregate`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

/// `meter sync`: the role, or one of its subcommands.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SyncArgs {
    /// A question to a running meter instead of running the role.
    #[command(subcommand)]
    pub command: Option<meter_tools::admin::SyncCommand>,
    /// The role's settings.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// `meter keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it once.
    Create {
        /// Configuration.
        #[command(flatten)]
        config: ConfigArgs,
        /// ingest, read or admin.
        #[arg(long)]
        role: Role,
        /// Tenant the key is limited to (required for read keys; an ingest key without one is a
        /// service key that must name the tenant of every event).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List keys (never their secrets).
    List {
        /// Configuration.
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Revoke a key by id.
    Revoke {
        /// Configuration.
        #[command(flatten)]
        config: ConfigArgs,
        /// Key id, as `keys list` shows it.
        id: String,
    },
}

/// Runs a `keys` subcommand.
#[allow(clippy::print_stdout)]
pub fn keys(command: KeysCommand) -> anyhow::Result<()> {
    let open = |c: &ConfigArgs| -> anyhow::Result<_> {
        let config = c.load(None)?;
        Ok(crate::server::State::keys(&config)?.0)
    };
    match command {
        KeysCommand::Create { config, role, tenant } => {
            let key = open(&config)?.create(role, tenant.as_deref())?;
            eprintln!(
                "created {} ({role}{}); the key is shown only this once:",
                key.id,
                tenant.map(|t| format!(", tenant {t}")).unwrap_or_default()
            );
            println!("{}", key.secret);
        }
        KeysCommand::List { config } => {
            for k in open(&config)?.list()? {
                println!(
                    "{}\t{}\t{}\tcreated {}{}",
                    k.id,
                    k.role,
                    k.tenant.as_deref().unwrap_or("*"),
                    k.created_at,
                    k.revoked_at.map(|r| format!("\trevoked {r}")).unwrap_or_default()
                );
            }
        }
        KeysCommand::Revoke { config, id } => {
            if !open(&config)?.revoke(&id)? {
                anyhow::bail!("no active key with id {id}");
            }
            eprintln!("revoked {id}");
        }
    }
    Ok(())
}

/// `meter migrate`: brings the configured store's schema to this meter's version.
pub async fn migrate(args: ConfigArgs) -> anyhow::Result<()> {
    let config = args.load(None)?;
    let postgres = matches!(config.state_backend()?, crate::config::StateBackend::Postgres(_));
    if postgres {
        let config = config.clone();
        let done = tokio::task::spawn_blocking(move || crate::server::State::migrate(&config)).await??;
        eprintln!("meter: {done}");
    }
    match config.store_backend()? {
        crate::config::StoreBackend::ClickHouse(url) => {
            let version = meter_store::ClickHouseStore::migrate(&url).await?;
            eprintln!("meter: ClickHouse database {:?} at {} is at schema version {version}", url.database, url.http);
        }
        // With the state on Postgres, the live counters (the history too, without ClickHouse) are there.
        crate::config::StoreBackend::Sqlite(_) if postgres => {}
        crate::config::StoreBackend::Sqlite(path) => {
            std::fs::create_dir_all(path.parent().unwrap_or(std::path::Path::new(".")))?;
            meter_store::SqliteStore::open_with(&path, config.store.durability, config.dedup()?)?;
            eprintln!("meter: SQLite store {} is migrated", path.display());
        }
    }
    Ok(())
}
