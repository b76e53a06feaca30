//! The `meter` binary: parses arguments and hands over to the library.

use clap::Parser;
use meter::cli::{Cli, Command};

// glibc's malloc was a tenth of ingest's CPU under load (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    meter::telemetry::init_logs();
    match cli.command {
        Command::Serve(args) => {
            let config = args.config.load(args.listen)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(config.listen).await?;
                meter::server::run(listener, config, meter::server::shutdown_signal()).await
            })
        }
        Command::Keys(command) => meter::cli::keys(command),
        Command::Loadgen(args) => tokio::runtime::Runtime::new()?.block_on(meter::loadgen::run(args)),
        Command::Dev(meter::cli::DevCommand::Kafka(args)) => meter::dev::kafka(args),
    }
}
