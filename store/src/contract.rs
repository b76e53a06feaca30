//! Contract tests of the usage-store port: each body is written once and run against every backend
//! through [`Harness`]. A backend's test file calls [`store_contract!`](crate::store_contract).

use crate::{Advance, Applied, Checkpoint, Coverage, Error, Metered, Progress, UsageStore};
use meter_schemas::{Catalog, Contribution, MeterDef, Period};
use rust_decimal::Decimal;
use std::sync::Arc;

/// Opens a backend for a test; `open` again must reach the same data.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    /// Opens (or reopens) the store under test.
    async fn open(&self) -> Arc<dyn UsageStore>;
}

/// 2026-11-15T12:00:00Z in microseconds.
pub const MID_NOVEMBER: i64 = 1_794_744_000_000_000;

fn meters() -> Vec<MeterDef> {
    Catalog::new(vec![]).unwrap().meters().to_vec()
}

fn index(name: &str) -> usize {
    meters().iter().position(|m| m.name == name).unwrap()
}

fn login(tenant: &str, id: &str, user: &str, time_us: i64) -> Metered {
    Metered {
        tenant: tenant.into(),
        id: id.into(),
        time_us,
        contributions: vec![(index("active_users"), Contribution::Unique(user.into()))],
    }
}

fn tokens(tenant: &str, id: &str, n: i64, time_us: i64) -> Metered {
    Metered {
        tenant: tenant.into(),
        id: id.into(),
        time_us,
        contributions: vec![
            (index("agent_invocations"), Contribution::Count),
            (index("agent_tokens"), Contribution::Sum(Decimal::from(n))),
        ],
    }
}

/// Partition 0 moves from `from` to `to`.
fn adv(from: u64, to: u64) -> Progress {
    Progress { partitions: vec![Advance { partition: 0, from, to }], watermark_us: None }
}

fn on(partition: u32) -> Coverage<'static> {
    Coverage { consumer: "c", partition }
}

async fn value(store: &dyn UsageStore, tenant: &str, meter: &str, period: &str) -> Option<String> {
    let usage = store.usage(tenant, period.parse().unwrap(), on(0)).await.unwrap();
    usage.meters.get(meter).and_then(|m| m.period.value).map(|v| v.normalize().to_string())
}

/// Each event counts once, whether repeated within a batch or across batches.
pub async fn each_event_counts_once(h: &dyn Harness) {
    let s = h.open().await;
    let m = meters();
    let batch =
        vec![tokens("a", "1", 10, MID_NOVEMBER), tokens("a", "2", 5, MID_NOVEMBER), tokens("a", "1", 10, MID_NOVEMBER)];
    assert_eq!(s.apply("c", &m, &batch, &adv(0, 3)).unwrap(), Applied { counted: 2, duplicates: 1 });
    assert_eq!(s.apply("c", &m, &batch, &adv(3, 3)).unwrap(), Applied { counted: 0, duplicates: 3 });
    assert_eq!(value(&*s, "a", "agent_tokens", "2026-11").await.as_deref(), Some("15"));
    assert_eq!(value(&*s, "a", "agent_invocations", "2026-11").await.as_deref(), Some("2"));
    // The same id under another tenant is another event, and tenants never see each other.
    s.apply("c", &m, &[tokens("b", "1", 7, MID_NOVEMBER)], &adv(3, 4)).unwrap();
    assert_eq!(value(&*s, "b", "agent_tokens", "2026-11").await.as_deref(), Some("7"));
    assert_eq!(value(&*s, "a", "agent_tokens", "2026-11").await.as_deref(), Some("15"));
}

/// The checkpoint is stored with the tallies and survives a reopen; so do the tallies and the
/// dedup state.
pub async fn checkpoint_moves_with_the_tallies(h: &dyn Harness) {
    let s = h.open().await;
    assert_eq!(s.checkpoint("c").unwrap(), Checkpoint::default());
    let progress = Progress {
        partitions: vec![Advance { partition: 0, from: 0, to: 5 }, Advance { partition: 3, from: 0, to: 9 }],
        watermark_us: Some(MID_NOVEMBER),
    };
    s.apply("c", &meters(), &[tokens("a", "1", 1, MID_NOVEMBER)], &progress).unwrap();
    drop(s);
    let s = h.open().await;
    assert_eq!(s.checkpoint("c").unwrap(), Checkpoint { positions: vec![(0, 5), (3, 9)] });
    // One store serves one consumer group.
    let other = s.checkpoint("other");
    assert!(matches!(&other, Err(Error::OtherConsumer { found, .. }) if found == "c"), "{other:?}");
    let stay = Progress {
        partitions: vec![Advance { partition: 0, from: 5, to: 5 }, Advance { partition: 3, from: 9, to: 9 }],
        watermark_us: None,
    };
    let again = s.apply("c", &meters(), &[tokens("a", "1", 1, MID_NOVEMBER)], &stay).unwrap();
    assert_eq!(again, Applied { counted: 0, duplicates: 1 });
    let nov = "2026-11".parse().unwrap();
    assert_eq!(
        s.usage("a", nov, on(0)).await.unwrap().watermark_us,
        Some(MID_NOVEMBER),
        "a batch without one keeps it"
    );
    assert_eq!(s.usage("a", nov, on(3)).await.unwrap().watermark_us, Some(MID_NOVEMBER));
    assert_eq!(s.usage("a", nov, on(1)).await.unwrap().watermark_us, None, "partition 1 was never read");
}

/// Watermarks are per partition and never move back.
pub async fn watermarks_are_per_partition_and_never_move_back(h: &dyn Harness) {
    let s = h.open().await;
    let nov: Period = "2026-11".parse().unwrap();
    s.advance_watermark("c", &[0, 1], MID_NOVEMBER).unwrap();
    s.advance_watermark("c", &[1, 2], MID_NOVEMBER - 1).unwrap();
    let at = |p| s.usage("a", nov, on(p));
    assert_eq!(at(0).await.unwrap().watermark_us, Some(MID_NOVEMBER));
    assert_eq!(at(1).await.unwrap().watermark_us, Some(MID_NOVEMBER), "never moves back");
    assert_eq!(at(2).await.unwrap().watermark_us, Some(MID_NOVEMBER - 1));
    assert_eq!(at(3).await.unwrap().watermark_us, None, "partition 3 was never read");
    let theirs = s.usage("a", nov, Coverage { consumer: "other", partition: 0 }).await.unwrap();
    assert_eq!(theirs.watermark_us, None, "another consumer's watermark is not ours");
    // Advancing a watermark does not move an offset.
    s.apply("c", &meters(), &[tokens("a", "1", 1, MID_NOVEMBER)], &adv(0, 1)).unwrap();
    assert_eq!(s.checkpoint("c").unwrap().positions, vec![(0, 1), (1, 0), (2, 0)]);
}

/// Two consumers (two handles on the same data, as two processes would be) that both think they
/// own a partition: the one whose checkpoint is stale is refused, changes nothing, and after
/// resuming from the checkpoint it counts on top of what the other one counted.
pub async fn a_stale_owner_is_fenced_and_resumes_exactly(h: &dyn Harness) {
    let (one, two) = (h.open().await, h.open().await);
    let m = meters();
    one.checkpoint("c").unwrap();
    one.apply("c", &m, &[tokens("a", "1", 10, MID_NOVEMBER)], &adv(0, 1)).unwrap();
    assert_eq!(value(&*one, "a", "agent_tokens", "2026-11").await.as_deref(), Some("10"));
    // The partition moves to `two`, which resumes from the checkpoint and counts on.
    assert_eq!(two.checkpoint("c").unwrap().positions, vec![(0, 1)]);
    two.apply("c", &m, &[tokens("a", "2", 5, MID_NOVEMBER)], &adv(1, 2)).unwrap();
    // `one` still holds a batch it read from offset 1.
    let stale = one.apply("c", &m, &[tokens("a", "3", 7, MID_NOVEMBER)], &adv(1, 2));
    assert!(matches!(stale, Err(Error::Fenced { partition: 0, stored: 2, from: 1 })), "{stale:?}");
    assert_eq!(value(&*one, "a", "agent_tokens", "2026-11").await.as_deref(), Some("15"));
    // It gets the partition back, resumes, and adds to the total `two` left (not to its own).
    assert_eq!(one.checkpoint("c").unwrap().positions, vec![(0, 2)]);
    one.apply("c", &m, &[tokens("a", "3", 7, MID_NOVEMBER)], &adv(2, 3)).unwrap();
    assert_eq!(value(&*two, "a", "agent_tokens", "2026-11").await.as_deref(), Some("22"));
    assert_eq!(value(&*one, "a", "agent_invocations", "2026-11").await.as_deref(), Some("3"));
}

/// A batch that fails changes nothing: not the tallies, the dedup state or the checkpoint.
pub async fn a_failed_batch_changes_nothing(h: &dyn Harness) {
    let s = h.open().await;
    let m = meters();
    s.apply("c", &m, &[tokens("a", "ok", 1, MID_NOVEMBER)], &adv(0, 1)).unwrap();
    let huge = |id: &str| Metered {
        tenant: "a".into(),
        id: id.into(),
        time_us: MID_NOVEMBER,
        contributions: vec![(index("agent_tokens"), Contribution::Sum(Decimal::MAX))],
    };
    assert!(s.apply("c", &m, &[huge("x"), huge("y")], &adv(1, 3)).is_err());
    assert_eq!(s.checkpoint("c").unwrap().positions, vec![(0, 1)]);
    assert_eq!(value(&*s, "a", "agent_tokens", "2026-11").await.as_deref(), Some("1"));
    // "x" was not marked as seen by the failed batch.
    let retry = s.apply("c", &m, &[tokens("a", "x", 2, MID_NOVEMBER)], &adv(1, 3)).unwrap();
    assert_eq!(retry.counted, 1);
    assert_eq!(value(&*s, "a", "agent_tokens", "2026-11").await.as_deref(), Some("3"));
}

/// Unique counts are per period and per day; events at the last microsecond of a month and the
/// first of the next land in one period each.
pub async fn uniques_and_period_boundaries(h: &dyn Harness) {
    let s = h.open().await;
    let nov: Period = "2026-11".parse().unwrap();
    let last = nov.end_us() - 1;
    let first = nov.end_us();
    let batch = vec![
        login("a", "1", "ann", MID_NOVEMBER),
        login("a", "2", "ann", MID_NOVEMBER + 86_400_000_000),
        login("a", "3", "bob", last),
        login("a", "4", "ann", first),
    ];
    s.apply("c", &meters(), &batch, &adv(0, 4)).unwrap();
    assert_eq!(value(&*s, "a", "active_users", "2026-11").await.as_deref(), Some("2"));
    assert_eq!(value(&*s, "a", "active_users", "2026-12").await.as_deref(), Some("1"));
    let usage = s.usage("a", nov, on(0)).await.unwrap();
    let days = &usage.meters["active_users"].days;
    let day_values: Vec<(String, String)> =
        days.iter().map(|(d, t)| (d.clone(), t.value.unwrap().to_string())).collect();
    assert_eq!(
        day_values,
        vec![
            ("2026-11-15".to_string(), "1".to_string()),
            ("2026-11-16".to_string(), "1".to_string()),
            ("2026-11-30".to_string(), "1".to_string()),
        ]
    );
}

/// `max` and `latest` give the same answer whatever order the events arrive in.
pub async fn max_and_latest_ignore_arrival_order(h: &dyn Harness) {
    let s = h.open().await;
    let mut m = meters();
    let custom = |name: &str, agg: &str| -> MeterDef {
        serde_json::from_value(serde_json::json!({"name": name, "event": "gauge", "aggregation": agg, "property": "v"}))
            .unwrap()
    };
    m.push(custom("g_max", "max"));
    m.push(custom("g_latest", "latest"));
    let (imax, ilatest) = (m.len() - 2, m.len() - 1);
    let ev = |tenant: &str, id: &str, v: i64, t: i64| Metered {
        tenant: tenant.into(),
        id: id.into(),
        time_us: t,
        contributions: vec![
            (imax, Contribution::Max(Decimal::from(v))),
            (ilatest, Contribution::Latest(Decimal::from(v))),
        ],
    };
    let items = [("1", 5, MID_NOVEMBER + 2), ("2", 9, MID_NOVEMBER), ("3", 7, MID_NOVEMBER + 1)];
    for (i, (id, v, t)) in items.iter().enumerate() {
        s.apply("c", &m, &[ev("fwd", id, *v, *t)], &adv(i as u64, i as u64 + 1)).unwrap();
    }
    for (i, (id, v, t)) in items.iter().rev().enumerate() {
        s.apply("c", &m, &[ev("rev", id, *v, *t)], &adv(3 + i as u64, 4 + i as u64)).unwrap();
    }
    for tenant in ["fwd", "rev"] {
        assert_eq!(value(&*s, tenant, "g_max", "2026-11").await.as_deref(), Some("9"));
        assert_eq!(value(&*s, tenant, "g_latest", "2026-11").await.as_deref(), Some("5"));
    }
}

/// Expands to one `#[tokio::test]` per contract body, for a backend given by a harness factory.
#[macro_export]
macro_rules! store_contract {
    ($harness:expr) => {
        $crate::store_contract!(@t $harness; each_event_counts_once, checkpoint_moves_with_the_tallies,
            watermarks_are_per_partition_and_never_move_back, a_stale_owner_is_fenced_and_resumes_exactly,
            a_failed_batch_changes_nothing, uniques_and_period_boundaries, max_and_latest_ignore_arrival_order);
    };
    (@t $harness:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let h = $harness;
                $crate::contract::$name(&h).await;
            }
        )*
    };
}
