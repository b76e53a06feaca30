//! `meter dev kafka`: librdkafka's mock cluster as a local Kafka-protocol broker, for development
//! and tests.

use clap::Args;
use std::net::SocketAddr;

/// `meter dev kafka`.
#[derive(Debug, Args)]
pub struct DevKafkaArgs {
    /// Partitions of the events topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Topic to create.
    #[arg(long, default_value = "usage.events")]
    pub topic: String,
    /// The alerts topic to create (the mock cluster cannot create topics when asked).
    #[arg(long, default_value = "usage.alerts")]
    pub alerts_topic: String,
    /// Brokers in the mock cluster.
    #[arg(long, default_value_t = 1)]
    pub brokers: u32,
    /// Also accept bootstrap connections here. The mock broker listens on a port of its own choosing
    /// on 127.0.0.1; this forwards to it, and metadata still names that port, so clients must run
    /// on this machine.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

/// Runs the mock cluster until `shutdown` resolves. Prints `kafka bootstrap: HOST:PORT` on stdout.
#[allow(clippy::print_stdout)]
pub fn kafka(args: DevKafkaArgs, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let cluster = rdkafka::mocking::MockCluster::new(args.brokers as i32)?;
    cluster.create_topic(&args.topic, args.partitions as i32, args.brokers.min(3) as i32)?;
    cluster.create_topic(&args.alerts_topic, args.partitions as i32, args.brokers.min(3) as i32)?;
    let bootstrap = cluster.bootstrap_servers();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        if let Some(addr) = args.listen {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let target = bootstrap.split(',').next().unwrap_or_default().to_string();
            tokio::spawn(forward(listener, target));
            println!("kafka bootstrap: {addr} (forwarded to {bootstrap})");
        } else {
            println!("kafka bootstrap: {bootstrap}");
        }
        tracing::info!(%bootstrap, topic = %args.topic, partitions = args.partitions, "mock Kafka cluster running");
        shutdown.await;
        anyhow::Ok(())
    })?;
    drop(cluster);
    Ok(())
}

async fn forward(listener: tokio::net::TcpListener, target: String) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        let target = target.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}
