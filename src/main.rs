//! The `meter` binary: parses arguments and hands over to the library.

use clap::Parser;
use meter::cli::{Cli, Command, ServeArgs};
use meter::server::Roles;

// glibc's malloc was a tenth of ingest's CPU under load (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    huge_pages_off();
    let cli = Cli::parse();
    meter::telemetry::init_logs();
    match cli.command {
        Command::Serve(args) => serve(args, Roles::ALL),
        Command::Ingest(args) => serve(args, Roles::INGEST),
        Command::Aggregate(args) => serve(args, Roles::AGGREGATE),
        Command::Sink(args) => serve(args, Roles::SINK),
        Command::Sync(meter::cli::SyncArgs { command: Some(command), .. }) => {
            tokio::runtime::Runtime::new()?.block_on(meter_tools::admin::sync(command))
        }
        Command::Sync(args) => serve(args.serve, Roles::SYNC),
        Command::Migrate(args) => tokio::runtime::Runtime::new()?.block_on(meter::cli::migrate(args)),
        Command::Keys(command) => meter::cli::keys(command),
        Command::Subscriptions(command) => {
            tokio::runtime::Runtime::new()?.block_on(meter_tools::admin::subscriptions(command))
        }
        Command::Period(command) => tokio::runtime::Runtime::new()?.block_on(meter_tools::admin::period(command)),
        Command::Loadgen(args) => tokio::runtime::Runtime::new()?.block_on(meter_tools::loadgen::run(args)),
        Command::Dev(meter::cli::DevCommand::Kafka(args)) => {
            meter_tools::dev::kafka(args, meter::server::shutdown_signal())
        }
        Command::Dev(meter::cli::DevCommand::HttpBaseline(args)) => tokio::runtime::Runtime::new()?
            .block_on(meter_tools::baseline::http_baseline(args, meter::server::shutdown_signal())),
    }
}

/// Transparent huge pages off for this process and what it starts, unless `MIMALLOC_ALLOW_THP`
/// is set (to 1 to keep them). mimalloc advises them on its arenas (`MADV_HUGEPAGE`), so the first
/// touch of any of their 2 MiB faulted in a huge page, zeroed whole: a fresh aggregator spent
/// about 0.35 of its first second's CPU in the kernel's `clear_page_erms`, its first batches
/// taking 150-270 ms where later ones take 4-7, and the event-to-counter p99 of a 20-second run
/// was that start (BENCHMARKS.md, "Huge pages off").
fn huge_pages_off() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none()
        && let Err(e) = nix::sys::prctl::set_thp_disable(true)
    {
        eprintln!("meter: could not turn transparent huge pages off ({e}); going on with them");
    }
}

fn serve(args: ServeArgs, roles: Roles) -> anyhow::Result<()> {
    let config = args.config.load(args.listen)?;
    tokio::runtime::Runtime::new()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        meter::server::run_roles(listener, config, roles, meter::server::shutdown_signal()).await
    })
}
