//! The webhooks' state contract against Postgres (`METER_TEST_POSTGRES`, or a private cluster),
//! and dispatchers on several hosts claiming from one queue.

use meter_postgres::testing::{fresh_database, shared_url};
use meter_postgres::{MAX_CONNECTIONS, Pg, PgUrl};
use meter_webhooks::{PgWebhooks, WebhookStore};
use std::sync::Arc;

fn database() -> PgUrl {
    let url = fresh_database(&shared_url());
    PgWebhooks::migrate(&Pg::connect(&url, 1).unwrap()).unwrap();
    url
}

/// A process's view of the tables at `url`: a pool of its own, as on another host.
fn host(url: &PgUrl) -> PgWebhooks {
    PgWebhooks::open(Arc::new(Pg::connect(url, MAX_CONNECTIONS).unwrap())).unwrap()
}

fn store() -> Arc<dyn WebhookStore> {
    Arc::new(host(&database()))
}

meter_webhooks::webhooks_contract!(store());

/// Three hosts' dispatchers claim from one queue: no delivery twice, none left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_never_claim_one_delivery_twice() {
    let url = database();
    let first = host(&url);
    meter_webhooks::contract::concurrent_claimers_never_share_a_delivery(Arc::new(first)).await;
    let hosts: Vec<Arc<dyn WebhookStore>> = (0..3).map(|_| Arc::new(host(&url)) as Arc<dyn WebhookStore>).collect();
    // Everything was claimed until 10,000 µs; at 20,000 it is due again, for every host at once.
    let mut all = meter_webhooks::contract::claim_everything(&hosts, 6, 5, 20_000, 90_000).await;
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!((all.len(), n), (200, 200));
}

/// A loop that must run once for every host: of three hosts' leases of one name, one is held,
/// and it stays with its holder while renewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_holds_a_single_runners_lease() {
    use meter_webhooks::{Settings, Webhooks};
    let url = database();
    let leases: Vec<_> = (0..3)
        .map(|_| Arc::new(Webhooks::new(Arc::new(host(&url)), Settings::default()).unwrap()).single_runner("advisor"))
        .collect();
    let mut holders = Vec::new();
    for (i, l) in leases.iter().enumerate() {
        if l.held().await {
            holders.push(i);
        }
    }
    assert_eq!(holders, [0]);
    for _ in 0..3 {
        assert!(leases[0].held().await, "renewed by its holder");
        assert!(!leases[1].held().await && !leases[2].held().await);
    }
}
