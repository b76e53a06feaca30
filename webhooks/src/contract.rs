//! Contract tests of the webhooks' state port ([`WebhookStore`]): each body is written once and
//! run against every backend. A backend's test file calls
//! [`webhooks_contract!`](crate::webhooks_contract) with a factory of empty stores.

use crate::store::{Attempted, Queued, StoredEndpoint, WebhookStore};
use crate::{Endpoint, Error};
use std::collections::HashMap;
use std::sync::Arc;

async fn add(s: &dyn WebhookStore, id: &str, tenant: Option<&str>, by_admin: bool, at: i64) {
    let endpoint = Endpoint {
        id: id.into(),
        url: format!("https://hooks.example/{id}"),
        tenant: tenant.map(str::to_string),
        created_at: meter_schemas::period::format_time(at),
    };
    s.insert_endpoint(StoredEndpoint { endpoint, created_us: at, secret: format!("secret-{id}"), by_admin })
        .await
        .unwrap();
}

fn alert(id: &str, tenant: &str) -> Queued {
    Queued { alert_id: id.into(), tenant: tenant.into(), body: format!("{{\"id\":\"{id}\"}}") }
}

fn ids(endpoints: &[Endpoint]) -> Vec<&str> {
    endpoints.iter().map(|e| e.id.as_str()).collect()
}

/// A tenant sees and removes only the endpoints it registered itself; removing one drops its
/// deliveries not yet made.
pub async fn endpoints_are_scoped_to_who_registered_them(s: Arc<dyn WebhookStore>) {
    add(&*s, "all", None, true, 1).await;
    add(&*s, "own", Some("t"), false, 2).await;
    add(&*s, "for-t", Some("t"), true, 3).await;
    add(&*s, "other", Some("u"), false, 4).await;
    assert_eq!(ids(&s.endpoints(None).await.unwrap()), ["all", "own", "for-t", "other"]);
    assert_eq!(ids(&s.endpoints(Some("t".into())).await.unwrap()), ["own"]);
    let e = s.remove_endpoint("for-t".into(), Some("t".into())).await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "an admin's endpoint is not the tenant's: {e}");
    let e = s.remove_endpoint("other".into(), Some("t".into())).await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "another tenant's: {e}");
    s.queue(vec![alert("a1", "t")], Some(1), 10).await.unwrap();
    assert_eq!(s.deliveries(Some("t".into()), None, 10).await.unwrap().len(), 1, "own endpoint's only");
    assert_eq!(s.deliveries(None, None, 10).await.unwrap().len(), 3, "all, own and for-t");
    s.remove_endpoint("own".into(), Some("t".into())).await.unwrap();
    assert_eq!(ids(&s.endpoints(Some("t".into())).await.unwrap()), Vec::<&str>::new());
    assert_eq!(s.deliveries(None, None, 10).await.unwrap().len(), 2, "its pending delivery is gone");
}

/// An alert is queued once per endpoint that wants it, however often it is queued; the cursor
/// moves with the queue and never back.
pub async fn an_alert_is_queued_once_per_endpoint(s: Arc<dyn WebhookStore>) {
    add(&*s, "all", None, true, 1).await;
    add(&*s, "t1", Some("t"), false, 2).await;
    add(&*s, "u1", Some("u"), false, 3).await;
    assert_eq!(s.cursor("alerts".into()).await.unwrap(), 0);
    s.queue(vec![alert("a1", "t"), alert("a2", "u")], Some(7), 10).await.unwrap();
    s.queue(vec![alert("a1", "t")], Some(5), 11).await.unwrap();
    let mut queued: Vec<(String, String)> =
        s.deliveries(None, None, 10).await.unwrap().into_iter().map(|d| (d.alert_id, d.endpoint_id)).collect();
    queued.sort();
    let want = [("a1", "all"), ("a1", "t1"), ("a2", "all"), ("a2", "u1")];
    assert_eq!(queued, want.map(|(a, e)| (a.to_string(), e.to_string())));
    assert_eq!(s.cursor("alerts".into()).await.unwrap(), 7, "never moved back");
    // A billing notice is queued the same way, once, and leaves the alerts' cursor alone.
    s.queue(vec![alert("billing.payment_failed:in_1:0", "u")], None, 12).await.unwrap();
    s.queue(vec![alert("billing.payment_failed:in_1:0", "u")], None, 13).await.unwrap();
    assert_eq!(s.deliveries(Some("u".into()), None, 10).await.unwrap().len(), 2, "a2 and the notice, once");
    assert_eq!(s.cursor("alerts".into()).await.unwrap(), 7);
    s.move_cursor("kafka".into(), 9).await.unwrap();
    s.move_cursor("kafka".into(), 3).await.unwrap();
    assert_eq!(s.cursor("kafka".into()).await.unwrap(), 9);
}

/// A claim takes due deliveries, at most so many per endpoint, and hides them until it runs
/// out; outcomes are recorded; only a dead delivery is retried, by whoever may see it.
pub async fn deliveries_are_claimed_recorded_and_retried(s: Arc<dyn WebhookStore>) {
    add(&*s, "e1", Some("t"), false, 1).await;
    add(&*s, "e2", Some("u"), false, 2).await;
    s.queue((0..5).map(|i| alert(&format!("t{i}"), "t")).collect(), Some(5), 100).await.unwrap();
    s.queue(vec![alert("u0", "u")], Some(6), 200).await.unwrap();
    assert!(s.claim(10, 2, HashMap::new(), 99, 1_000).await.unwrap().is_empty(), "nothing due yet");
    let claimed = s.claim(10, 2, HashMap::new(), 300, 1_000).await.unwrap();
    let per: Vec<&str> = claimed.iter().map(|d| d.endpoint_id.as_str()).collect();
    assert_eq!(per, ["e1", "e1", "e2"], "oldest first, two per endpoint");
    assert_eq!(claimed[0].secret, "secret-e1");
    let busy = HashMap::from([("e1".to_string(), 2)]);
    assert!(s.claim(10, 2, busy, 300, 1_000).await.unwrap().is_empty(), "claimed ones wait; e1 is full");
    let again = s.claim(1, 2, HashMap::new(), 300, 1_000).await.unwrap();
    assert_eq!(again.len(), 1, "room 1");
    let (d0, d1, d2) = (claimed[0].id, claimed[1].id, claimed[2].id);
    s.record(d0, Attempted::Delivered { attempts: 1, first_us: 300, at_us: 310 }).await.unwrap();
    let failed = Attempted::Failed { attempts: 1, first_us: 300, next_us: 5_000, dead: false, error: "500".into() };
    s.record(d1, failed).await.unwrap();
    let dead = Attempted::Failed { attempts: 9, first_us: 300, next_us: 5_000, dead: true, error: "gone".into() };
    s.record(d2, dead).await.unwrap();
    let all = s.deliveries(None, None, 10).await.unwrap();
    let state = |id: u64| all.iter().find(|d| d.id == id).unwrap().clone();
    assert_eq!((state(d0).state.as_str(), state(d0).attempts), ("delivered", 1));
    assert_eq!((state(d1).state.as_str(), state(d1).last_error.as_deref()), ("pending", Some("500")));
    assert!(state(d1).next_attempt.is_some());
    assert_eq!((state(d2).state.as_str(), state(d2).attempts), ("dead", 9));
    assert_eq!(s.deliveries(None, Some("dead".into()), 10).await.unwrap().len(), 1);
    let e = s.retry(d1, None, 400).await.unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "only a dead one: {e}");
    let e = s.retry(d2, Some("t".into()), 400).await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "another tenant's: {e}");
    s.retry(d2, Some("u".into()), 400).await.unwrap();
    let retried = s.claim(10, 2, HashMap::new(), 400, 2_000).await.unwrap();
    let retried = retried.iter().find(|d| d.id == d2).unwrap();
    assert_eq!((retried.attempts, retried.first_us), (0, None), "a fresh retry window");
}

/// A lease is held by one holder until it runs out; its holder renews it.
pub async fn a_lease_has_one_holder_until_it_runs_out(s: Arc<dyn WebhookStore>) {
    assert!(s.lease("kafka".into(), "a".into(), 100, 0).await.unwrap());
    assert!(!s.lease("kafka".into(), "b".into(), 150, 50).await.unwrap(), "a holds it until 100");
    assert!(s.lease("kafka".into(), "a".into(), 200, 60).await.unwrap(), "renewed");
    assert!(!s.lease("kafka".into(), "b".into(), 250, 150).await.unwrap());
    assert!(s.lease("kafka".into(), "b".into(), 400, 201).await.unwrap(), "taken over once it ran out");
    assert!(s.lease("other".into(), "a".into(), 400, 201).await.unwrap(), "leases are by name");
}

/// Dispatchers claiming at the same moment never share a delivery, and between them claim
/// every one that is due.
pub async fn concurrent_claimers_never_share_a_delivery(s: Arc<dyn WebhookStore>) {
    for e in 0..4 {
        add(&*s, &format!("e{e}"), Some("t"), false, e).await;
    }
    s.queue((0..50).map(|i| alert(&format!("a{i}"), "t")).collect(), Some(50), 100).await.unwrap();
    let mut all = claim_everything(std::slice::from_ref(&s), 6, 7, 200, 10_000).await;
    let claimed = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), claimed, "a delivery claimed twice");
    assert_eq!(claimed, 200, "every due delivery claimed: 50 alerts × 4 endpoints");
}

/// `claimers` dispatchers, spread over `stores` (hosts), each claiming `room` at a time at
/// `now_us` until nothing is due; every delivery id each got.
pub async fn claim_everything(
    stores: &[Arc<dyn WebhookStore>],
    claimers: usize,
    room: usize,
    now_us: i64,
    until_us: i64,
) -> Vec<u64> {
    let tasks: Vec<_> = stores
        .iter()
        .cycle()
        .take(claimers)
        .map(|s| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = s.claim(room, 100, HashMap::new(), now_us, until_us).await.unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got.into_iter().map(|d| d.id));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Expands to one test per contract body, for a backend given by a factory of empty stores.
#[macro_export]
macro_rules! webhooks_contract {
    ($store:expr) => {
        $crate::webhooks_contract!(@t $store; endpoints_are_scoped_to_who_registered_them,
            an_alert_is_queued_once_per_endpoint, deliveries_are_claimed_recorded_and_retried,
            a_lease_has_one_holder_until_it_runs_out, concurrent_claimers_never_share_a_delivery);
    };
    (@t $store:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::contract::$name($store).await;
            }
        )*
    };
}
