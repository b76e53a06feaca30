//! Contract tests of the usage-store port: each body is written once and run against every backend
//! through [`Harness`]. A backend's test file calls [`store_contract!`](crate::store_contract);
//! a backend of the live counters also [`live_contract!`](crate::live_contract), through
//! [`LiveHarness`].

use crate::{
    Advance, Allowances, Applied, Checkpoint, Coverage, Error, LimitQuery, LiveStore, Metered, Progress, Totals,
    UsageStore, Watch,
};
use meter_schemas::{Catalog, Contribution, MeterDef, Period};
use rust_decimal::Decimal;
use std::sync::Arc;

/// Opens a backend for a test; `open` again must reach the same data.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    /// Opens (or reopens) the store under test.
    async fn open(&self) -> Arc<dyn UsageStore>;
}

/// Opens a backend of the live counters for a test; `open_live` again must reach the same data.
#[async_trait::async_trait]
pub trait LiveHarness: Send + Sync {
    /// Opens (or reopens) the store under test.
    async fn open_live(&self) -> Arc<dyn LiveStore>;

    /// Opens (or reopens) the store under test, keeping counted ids for `horizon`.
    async fn open_live_keeping(&self, horizon: std::time::Duration) -> Arc<dyn LiveStore>;
}

/// Tenant `a`'s agent invocations are watched at 80, 90 and 100 % of 10.
struct Ten;

impl Allowances for Ten {
    fn watch(&self, tenant: &str, meter: &str, _: Period) -> Option<Watch> {
        (tenant == "a" && meter == "agent_invocations").then(|| Watch {
            included: Decimal::from(10),
            percents: vec![80, 90, 100],
            plan: "starter".into(),
        })
    }
}

async fn open_live(h: &dyn LiveHarness) -> Arc<dyn LiveStore> {
    let s = h.open_live().await;
    s.set_allowances(Arc::new(Ten));
    s.checkpoint("c").unwrap();
    s
}

/// 2026-11-15T12:00:00Z in microseconds.
pub const MID_NOVEMBER: i64 = 1_794_744_000_000_000;

/// The default meters.
pub fn meters() -> Vec<MeterDef> {
    Catalog::new(vec![]).unwrap().meters().to_vec()
}

fn index(name: &str) -> usize {
    meters().iter().position(|m| m.name == name).unwrap()
}

/// A login of `user` (the unique-count meter `active_users`).
pub fn login(tenant: &str, id: &str, user: &str, time_us: i64) -> Metered {
    Metered {
        tenant: tenant.into(),
        id: id.into(),
        offset: 0,
        time_us,
        contributions: vec![(index("active_users"), Contribution::Unique(user.into()))],
        groups: vec![],
    }
}

/// An agent invocation of `n` tokens.
pub fn tokens(tenant: &str, id: &str, n: i64, time_us: i64) -> Metered {
    Metered {
        tenant: tenant.into(),
        id: id.into(),
        offset: 0,
        time_us,
        contributions: vec![
            (index("agent_invocations"), Contribution::Count),
            (index("agent_tokens"), Contribution::Sum(Decimal::from(n))),
        ],
        groups: vec![],
    }
}

/// An event of `code` with `properties` as the aggregator meters it (its contributions and its
/// group values from the default catalog), at log offset `offset`.
pub fn metered(
    offset: u64,
    tenant: &str,
    id: &str,
    code: &str,
    properties: serde_json::Value,
    time_us: i64,
) -> Metered {
    let catalog = Catalog::new(vec![]).unwrap();
    let event = meter_schemas::Event {
        tenant: tenant.into(),
        id: id.into(),
        code: code.into(),
        time_us,
        implicit_time: false,
        subscription: None,
        source: None,
        properties: properties.as_object().cloned().unwrap_or_default(),
    };
    let (contributions, _) = catalog.contributions(&event);
    let groups = catalog.groups(&contributions, &event);
    Metered { tenant: tenant.into(), id: id.into(), offset, time_us, contributions, groups }
}

/// Partition 0 moves from `from` to `to`.
pub fn adv(from: u64, to: u64) -> Progress {
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
    let first = s.apply("c", &m, &batch, &adv(0, 3)).unwrap();
    let again = s.apply("c", &m, &batch, &adv(3, 3)).unwrap();
    if s.deduplicates_at_write() {
        assert_eq!(first, Applied { counted: 2, duplicates: 1 });
        assert_eq!(again, Applied { counted: 0, duplicates: 3 });
    }
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
    if s.deduplicates_at_write() {
        assert_eq!(again, Applied { counted: 0, duplicates: 1 });
    }
    assert_eq!(value(&*s, "a", "agent_tokens", "2026-11").await.as_deref(), Some("1"));
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
    // Over every partition: the slowest one's, and none while one was never read.
    assert_eq!(s.watermark("c", 3).await.unwrap(), Some(MID_NOVEMBER - 1));
    assert_eq!(s.watermark("c", 2).await.unwrap(), Some(MID_NOVEMBER));
    assert_eq!(s.watermark("c", 4).await.unwrap(), None);
    assert_eq!(s.watermark("other", 1).await.unwrap(), None);
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
        offset: 1,
        time_us: MID_NOVEMBER,
        contributions: vec![(index("agent_tokens"), Contribution::Sum(Decimal::MAX))],
        groups: vec![],
    };
    assert!(s.apply("c", &m, &[huge("x"), huge("y")], &adv(1, 3)).is_err());
    assert_eq!(s.checkpoint("c").unwrap().positions, vec![(0, 1)]);
    assert_eq!(value(&*s, "a", "agent_tokens", "2026-11").await.as_deref(), Some("1"));
    // "x" was not marked as seen by the failed batch.
    let retry = s.apply("c", &m, &[tokens("a", "x", 2, MID_NOVEMBER)], &adv(1, 3)).unwrap();
    assert_eq!(retry.counted, 1);
    assert_eq!(value(&*s, "a", "agent_tokens", "2026-11").await.as_deref(), Some("3"));
    // A batch that added to a counter before it failed leaves the counter as stored: the next
    // batch, with no new checkpoint read between them, adds to the stored value.
    let (p, q) = (tokens("a", "p", 5, MID_NOVEMBER), huge("q"));
    assert!(s.apply("c", &m, &[at(3, p), at(4, q)], &adv(3, 5)).is_err());
    s.apply("c", &m, &[at(3, tokens("a", "r", 4, MID_NOVEMBER))], &adv(3, 4)).unwrap();
    assert_eq!(value(&*s, "a", "agent_tokens", "2026-11").await.as_deref(), Some("7"));
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
        offset: 0,
        time_us: t,
        contributions: vec![
            (imax, Contribution::Max(Decimal::from(v))),
            (ilatest, Contribution::Latest(Decimal::from(v))),
        ],
        groups: vec![],
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

/// `ev` at log offset `offset`.
pub fn at(offset: u64, mut ev: Metered) -> Metered {
    ev.offset = offset;
    ev
}

/// A broken-down meter's period total by each value of its `group_by` properties: each event
/// once (copies in one batch and across batches), in its own period and tenant; an event without
/// the property under `""`; the values add up to the meter's total.
pub async fn breakdown_by_group_values(h: &dyn Harness) {
    use serde_json::json;
    let s = h.open().await;
    let m = meters();
    let day = 86_400_000_000;
    let december = 1_796_083_200_000_000; // 2026-12-01T00:00:00Z
    let inv = |o, t: &str, id: &str, model: Option<&str>, n: u64, time| {
        let mut p = json!({"input_tokens": n, "output_tokens": 0});
        if let Some(model) = model {
            p["model"] = json!(model);
        }
        metered(o, t, id, "agent.invocation", p, time)
    };
    let call = |o, id: &str, route: &str| {
        metered(o, "a", id, "api.call", json!({"route": route, "method": "GET", "status": 200}), MID_NOVEMBER)
    };
    let first = vec![
        inv(0, "a", "i1", Some("gpt"), 10, MID_NOVEMBER),
        inv(1, "a", "i2", Some("claude"), 5, MID_NOVEMBER + day),
        inv(2, "a", "i1", Some("gpt"), 10, MID_NOVEMBER),
        inv(3, "a", "i3", Some("gpt"), 7, december - 1),
        inv(4, "a", "i4", None, 3, MID_NOVEMBER),
        inv(5, "a", "i5", Some("gpt"), 100, december),
        inv(6, "b", "i1", Some("gpt"), 1, MID_NOVEMBER),
        call(7, "c1", "/v1/orders"),
        call(8, "c2", "/v1/orders"),
        call(9, "c3", "/v1/users"),
    ];
    s.apply("c", &m, &first, &adv(0, 10)).unwrap();
    let second = vec![
        inv(10, "a", "i2", Some("claude"), 5, MID_NOVEMBER + day),
        inv(11, "a", "i6", Some("claude"), 2, MID_NOVEMBER),
    ];
    s.apply("c", &m, &second, &adv(10, 12)).unwrap();
    let flat = |b: crate::Breakdown| -> Vec<String> {
        b.into_iter()
            .flat_map(|(meter, by)| {
                by.into_iter().flat_map(move |(p, values)| {
                    let meter = meter.clone();
                    values.into_iter().map(move |(v, a)| format!("{meter} {p} {v:?} {}", a.normalize()))
                })
            })
            .collect()
    };
    let nov: Period = "2026-11".parse().unwrap();
    assert_eq!(
        flat(s.breakdown("a", nov).await.unwrap()),
        vec![
            "agent_tokens model \"\" 3",
            "agent_tokens model \"claude\" 7",
            "agent_tokens model \"gpt\" 17",
            "api_calls route \"/v1/orders\" 2",
            "api_calls route \"/v1/users\" 1",
        ]
    );
    assert_eq!(value(&*s, "a", "agent_tokens", "2026-11").await.as_deref(), Some("27"), "3 + 7 + 17");
    assert_eq!(
        flat(s.breakdown("a", "2026-12".parse().unwrap()).await.unwrap()),
        vec!["agent_tokens model \"gpt\" 100"]
    );
    assert_eq!(flat(s.breakdown("b", nov).await.unwrap()), vec!["agent_tokens model \"gpt\" 1"]);
    assert!(s.breakdown("nobody", nov).await.unwrap().is_empty());
}

/// Everything a store answers about November for tenants `a` and `b`, as text: period values,
/// daily values, the daily series and the period close, so that two answers compare whole.
pub async fn november(s: &dyn UsageStore) -> Vec<String> {
    let nov: Period = "2026-11".parse().unwrap();
    let mut out = Vec::new();
    for tenant in ["a", "b"] {
        let usage = s.usage(tenant, nov, on(0)).await.unwrap();
        for (meter, t) in &usage.meters {
            out.push(format!("{tenant} {meter} period {}", t.period.value.unwrap().normalize()));
            for (day, d) in &t.days {
                out.push(format!("{tenant} {meter} {day} {}", d.value.unwrap().normalize()));
            }
        }
        let series = s.daily(tenant, nov.first_day(), nov.next().first_day()).await.unwrap();
        for (meter, days) in &series {
            for (day, d) in days {
                out.push(format!("{tenant} {meter} series {day} {}", d.value.unwrap().normalize()));
            }
        }
    }
    for (tenant, meters) in s.period_totals(nov).await.unwrap() {
        for (meter, t) in meters {
            out.push(format!("close {tenant} {meter} {}", t.value.unwrap().normalize()));
        }
    }
    out
}

/// The log these tests replay: 3 batches over 2 tenants, with a retried event and a login seen
/// twice.
pub fn the_log() -> Vec<Vec<Metered>> {
    let day = 86_400_000_000;
    vec![
        vec![
            at(0, tokens("a", "t1", 10, MID_NOVEMBER)),
            at(1, tokens("a", "t2", 5, MID_NOVEMBER + day)),
            at(2, login("a", "l1", "ann", MID_NOVEMBER)),
        ],
        vec![
            at(3, tokens("a", "t1", 10, MID_NOVEMBER)),
            at(4, login("a", "l2", "ann", MID_NOVEMBER + day)),
            at(5, tokens("b", "t1", 7, MID_NOVEMBER)),
        ],
        vec![at(6, login("b", "l1", "bob", MID_NOVEMBER)), at(7, tokens("b", "t3", 1, MID_NOVEMBER + 2 * day))],
    ]
}

/// What [`november`] answers once [`the_log`] is counted.
pub fn expected_november() -> Vec<&'static str> {
    vec![
        "a active_users period 1",
        "a active_users 2026-11-15 1",
        "a active_users 2026-11-16 1",
        "a agent_invocations period 2",
        "a agent_invocations 2026-11-15 1",
        "a agent_invocations 2026-11-16 1",
        "a agent_tokens period 15",
        "a agent_tokens 2026-11-15 10",
        "a agent_tokens 2026-11-16 5",
        "a active_users series 2026-11-15 1",
        "a active_users series 2026-11-16 1",
        "a agent_invocations series 2026-11-15 1",
        "a agent_invocations series 2026-11-16 1",
        "a agent_tokens series 2026-11-15 10",
        "a agent_tokens series 2026-11-16 5",
        "b active_users period 1",
        "b active_users 2026-11-15 1",
        "b agent_invocations period 2",
        "b agent_invocations 2026-11-15 1",
        "b agent_invocations 2026-11-17 1",
        "b agent_tokens period 8",
        "b agent_tokens 2026-11-15 7",
        "b agent_tokens 2026-11-17 1",
        "b active_users series 2026-11-15 1",
        "b agent_invocations series 2026-11-15 1",
        "b agent_invocations series 2026-11-17 1",
        "b agent_tokens series 2026-11-15 7",
        "b agent_tokens series 2026-11-17 1",
        "close a active_users 1",
        "close a agent_invocations 2",
        "close a agent_tokens 15",
        "close b active_users 1",
        "close b agent_invocations 2",
        "close b agent_tokens 8",
    ]
}

/// A batch sent again after its answer was lost (stored, but the sender never heard) changes
/// no total, no daily value and no period close.
pub async fn a_batch_inserted_twice_changes_nothing(h: &dyn Harness) {
    let s = h.open().await;
    let m = meters();
    let log = the_log();
    let mut next = 0;
    for batch in &log {
        let to = batch.last().unwrap().offset + 1;
        s.apply("c", &m, batch, &adv(next, to)).unwrap();
        // The same batch again, as a sink whose answer was lost sends it: the checkpoint moved.
        s.apply("c", &m, batch, &Progress::default()).unwrap();
        next = to;
    }
    assert_eq!(november(&*s).await, expected_november());
    assert_eq!(s.checkpoint("c").unwrap().positions, vec![(0, 8)]);
}

/// The whole log stored once with its checkpoint lost (a crash between the events and the
/// checkpoint), then replayed from offset 0, then replayed again: totals stay exact.
pub async fn a_replay_of_the_whole_log_from_offset_0_changes_nothing(h: &dyn Harness) {
    let s = h.open().await;
    let m = meters();
    let log = the_log();
    for batch in &log {
        s.apply("c", &m, batch, &Progress::default()).unwrap();
    }
    assert_eq!(s.checkpoint("c").unwrap().positions, vec![], "no checkpoint was written");
    let mut next = 0;
    for batch in &log {
        let to = batch.last().unwrap().offset + 1;
        s.apply("c", &m, batch, &adv(next, to)).unwrap();
        next = to;
    }
    let everything: Vec<Metered> = log.into_iter().flatten().collect();
    s.apply("c", &m, &everything, &Progress::default()).unwrap();
    assert_eq!(november(&*s).await, expected_november());
    assert_eq!(s.checkpoint("c").unwrap().positions, vec![(0, 8)]);
}

/// Copies of one id with different times (a retry that let ingest fill in the time, or a
/// sender reusing an id): the first copy in the log counts, wholly, and no other, whether the
/// copies share a batch or not and whatever period their times fall in.
pub async fn the_first_copy_of_an_id_counts_whatever_its_time(h: &dyn Harness) {
    let s = h.open().await;
    let m = meters();
    let nov: Period = "2026-11".parse().unwrap();
    let last_minute = nov.end_us() - 60_000_000;
    let batch = vec![at(0, tokens("a", "x", 10, last_minute)), at(1, tokens("a", "x", 7, nov.end_us() + 1))];
    s.apply("c", &m, &batch, &adv(0, 2)).unwrap();
    s.apply("c", &m, &[at(2, tokens("a", "x", 3, MID_NOVEMBER))], &adv(2, 3)).unwrap();
    // A replay of the first two, as the ClickHouse sink may do after a crash.
    s.apply("c", &m, &batch, &Progress::default()).unwrap();
    assert_eq!(value(&*s, "a", "agent_tokens", "2026-11").await.as_deref(), Some("10"));
    assert_eq!(value(&*s, "a", "agent_invocations", "2026-11").await.as_deref(), Some("1"));
    assert_eq!(value(&*s, "a", "agent_tokens", "2026-12").await, None, "the later copy is not counted in December");
    let series = s.daily("a", nov.first_day(), nov.next().next().first_day()).await.unwrap();
    let days: Vec<(&String, String)> =
        series["agent_tokens"].iter().map(|(d, t)| (d, t.value.unwrap().normalize().to_string())).collect();
    assert_eq!(days, vec![(&"2026-11-30".to_string(), "10".to_string())]);
    let close = s.period_totals(nov).await.unwrap();
    assert_eq!(close["a"]["agent_tokens"].value.map(|v| v.normalize().to_string()).as_deref(), Some("10"));
    assert!(s.period_totals(nov.next()).await.unwrap().is_empty());
}

/// Alerts are raised in the counters' transaction: each threshold once, never early, not again on
/// duplicates, replays or a reopened store; suggestions once per tier and period.
pub async fn each_threshold_fires_once_and_never_early(h: &dyn LiveHarness) {
    let s = open_live(h).await;
    let m = meters();
    let ev = |i: u64| tokens("a", &format!("e{i}"), 1, MID_NOVEMBER - i as i64);
    let batch: Vec<_> = (0..7).map(ev).collect();
    s.apply("c", &m, &batch, &adv(0, 7)).unwrap();
    assert!(s.alerts(None, 0, 100).await.unwrap().is_empty(), "7 of 10 is below 80%");
    // The 8th (arriving out of order, with duplicates of earlier ones) reaches 80%.
    let batch = vec![ev(3), ev(8), ev(1)];
    s.apply("c", &m, &batch, &adv(7, 10)).unwrap();
    let alerts = s.alerts(None, 0, 100).await.unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (alerts[0].percent, alerts[0].value.as_deref(), alerts[0].threshold.as_deref()),
        (Some(80), Some("8"), Some("8"))
    );
    assert_eq!(alerts[0].id, crate::alerts::alert_id("a", "agent_invocations", "2026-11", 80));
    // A replay of everything, then 4 more: 90% and 100% once each.
    let all: Vec<_> = (0..7).chain([8]).map(ev).collect();
    s.apply("c", &m, &all, &adv(10, 18)).unwrap();
    assert_eq!(s.alerts(None, 0, 100).await.unwrap().len(), 1, "a replay changes nothing");
    drop(s);
    let s = open_live(h).await;
    let more: Vec<_> = [7, 9, 10, 11, 12].into_iter().map(ev).collect();
    s.apply("c", &m, &more, &adv(18, 23)).unwrap();
    let alerts = s.alerts(None, 0, 100).await.unwrap();
    let fired: Vec<_> = alerts.iter().map(|a| (a.percent.unwrap(), a.value.as_deref().unwrap(), a.seq)).collect();
    assert_eq!(fired, [(80, "8", 1), (90, "13", 2), (100, "13", 3)]);
    assert_eq!(s.alerts(Some("a"), 1, 100).await.unwrap().len(), 2, "after seq 1");
    assert!(s.alerts(Some("b"), 0, 100).await.unwrap().is_empty());
    // Tokens are not watched; days are not periods.
    assert!(alerts.iter().all(|a| a.meter.as_deref() == Some("agent_invocations") && a.period == "2026-11"));
    // A suggestion is raised once per tier and period.
    let suggestion = crate::Suggestion {
        tenant: "a".into(),
        period: "2026-11".into(),
        plan: "starter".into(),
        suggested_plan: "professional".into(),
        saving: Decimal::from(15000),
    };
    assert!(s.suggest(suggestion.clone()).unwrap());
    assert!(!s.suggest(suggestion).unwrap(), "once per tier and period");
    let new = s.alerts(Some("a"), 3, 10).await.unwrap();
    assert_eq!(new.len(), 1);
    let a = &new[0];
    assert_eq!(
        (a.kind.as_str(), a.suggested_plan.as_deref(), a.saving.as_deref()),
        ("upgrade_suggested", Some("professional"), Some("15000"))
    );
    assert_eq!((a.meter.as_deref(), a.percent), (None, None));
}

/// A hard-limit check reads counted ids, period values and counted unique values of several
/// tenants at once; other tenants, periods and meters do not leak in.
pub async fn limit_states_read_ids_values_and_uniques_per_tenant_and_period(h: &dyn LiveHarness) {
    let s = open_live(h).await;
    let m = meters();
    let batch = vec![
        tokens("a", "t1", 5, MID_NOVEMBER),
        tokens("a", "t2", 7, MID_NOVEMBER),
        tokens("b", "t3", 1, MID_NOVEMBER),
        // October: another period.
        tokens("a", "t4", 100, MID_NOVEMBER - 30 * 86_400_000_000),
        login("a", "l1", "ann", MID_NOVEMBER),
        login("a", "l2", "bob", MID_NOVEMBER),
    ];
    s.apply("c", &m, &batch, &adv(0, 6)).unwrap();
    let q = |tenant: &str, ids: &[&str], meters: Vec<(&str, Vec<&str>)>| LimitQuery {
        tenant: tenant.into(),
        bucket: "2026-11".into(),
        ids: ids.iter().map(|s| s.to_string()).collect(),
        meters: meters.into_iter().map(|(m, v)| (m.to_string(), v.into_iter().map(String::from).collect())).collect(),
    };
    let snapshot = s
        .limit_states(vec![
            q("a", &["t1", "t3", "t4", "l2", "new"], vec![("agent_invocations", vec![]), ("agent_tokens", vec![])]),
            q("a", &[], vec![("active_users", vec!["ann", "cy"])]),
            q("b", &["t1", "t3"], vec![("agent_tokens", vec![]), ("api_calls", vec![])]),
            q("nobody", &["t1"], vec![("agent_tokens", vec![])]),
        ])
        .await
        .unwrap();
    assert_eq!(snapshot.progress, 6, "partition 0 counted up to offset 6");
    let states = snapshot.states;
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<std::collections::HashSet<_>>();
    assert_eq!(states[0].counted, set(&["t1", "t4", "l2"]), "ids are per tenant, not per period");
    assert_eq!(states[0].values["agent_invocations"], Decimal::from(2), "October's is not November's");
    assert_eq!(states[0].values["agent_tokens"], Decimal::from(12));
    assert!(states[0].known.is_empty());
    assert_eq!(states[1].values["active_users"], Decimal::from(2));
    assert_eq!(states[1].known["active_users"], set(&["ann"]));
    assert_eq!(states[2].counted, set(&["t3"]));
    assert_eq!(states[2].values.len(), 1, "nothing counted for api_calls: {:?}", states[2].values);
    assert_eq!(states[2].values["agent_tokens"], Decimal::from(1));
    assert_eq!(states[3], Default::default());
}

/// Expands to one `#[tokio::test]` per contract body of the live counters' port, for a backend
/// given by a [`LiveHarness`] factory.
///
/// (The dedup horizon's body sleeps past a short horizon: about eight seconds.)
#[macro_export]
macro_rules! live_contract {
    ($harness:expr) => {
        $crate::live_contract!(@t $harness; each_threshold_fires_once_and_never_early,
            limit_states_read_ids_values_and_uniques_per_tenant_and_period,
            counted_ids_are_kept_for_the_dedup_horizon_then_dropped);
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

/// An id counted stays a duplicate while it is younger than the dedup horizon, across the
/// arrival generations that open meanwhile and across a reopen; a horizon later its state is
/// dropped (ingest refuses such a resend as late before it reaches the store), so it counts again.
pub async fn counted_ids_are_kept_for_the_dedup_horizon_then_dropped(h: &dyn LiveHarness) {
    let horizon = std::time::Duration::from_secs(4);
    let m = meters();
    let s = h.open_live_keeping(horizon).await;
    s.checkpoint("c").unwrap();
    let counted = |s: &Arc<dyn LiveStore>, from: u64, ids: &[&str]| {
        let batch: Vec<Metered> = ids.iter().map(|id| tokens("a", id, 1, MID_NOVEMBER)).collect();
        s.apply("c", &m, &batch, &adv(from, from + ids.len() as u64)).unwrap().counted
    };
    assert_eq!(counted(&s, 0, &["1", "2"]), 2);
    // Past a quarter of the horizon: a new generation is open.
    tokio::time::sleep(horizon / 3).await;
    assert_eq!(counted(&s, 2, &["1", "3"]), 1, "an id younger than the horizon is a duplicate");
    drop(s);
    let s = h.open_live_keeping(horizon).await;
    s.checkpoint("c").unwrap();
    assert_eq!(counted(&s, 4, &["2", "3", "4"]), 1, "and stays one after a reopen");
    // Ids "1" and "2" arrived more than a horizon (and a generation) ago.
    tokio::time::sleep(horizon + horizon / 2).await;
    assert_eq!(counted(&s, 7, &["5"]), 1);
    assert_eq!(counted(&s, 8, &["1", "2"]), 2, "an id older than the horizon is no longer kept");
    assert_eq!(value(&*s, "a", "agent_invocations", "2026-11").await.as_deref(), Some("7"));
}

/// `positions` reads where a consumer stands, as its checkpoint says, and changes nothing: a
/// store holding another consumer's checkpoints still answers (empty), unlike `checkpoint`.
pub async fn positions_read_where_a_consumer_stands(h: &dyn Harness) {
    let s = h.open().await;
    assert_eq!(s.positions("c").await.unwrap(), vec![]);
    s.checkpoint("c").unwrap();
    let m = meters();
    let progress = Progress {
        partitions: vec![Advance { partition: 3, from: 0, to: 5 }, Advance { partition: 1, from: 0, to: 2 }],
        watermark_us: None,
    };
    s.apply("c", &m, &[at(1, tokens("a", "1", 1, MID_NOVEMBER))], &progress).unwrap();
    assert_eq!(s.positions("c").await.unwrap(), vec![(1, 2), (3, 5)]);
    assert_eq!(s.positions("another").await.unwrap(), vec![]);
    assert_eq!(s.checkpoint("c").unwrap().positions, vec![(1, 2), (3, 5)]);
}

/// A close reads the period's totals a range of tenants at a time: those after one tenant up to
/// another, included, in the order of their bytes (as Rust orders strings), whatever the
/// backend's collation; the ranges together are every tenant's totals, once.
pub async fn period_totals_read_a_range_of_tenants_in_byte_order(h: &dyn Harness) {
    let s = h.open().await;
    let m = meters();
    let nov: Period = "2026-11".parse().unwrap();
    // Byte order: "B" < "a" < "a b" < "ab" < "é".
    let tenants = ["é", "a", "B", "ab", "a b"];
    let batch: Vec<Metered> = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| at(i as u64, tokens(t, &format!("e{i}"), 10 + i as i64, MID_NOVEMBER)))
        .collect();
    s.apply("c", &m, &batch, &adv(0, batch.len() as u64)).unwrap();
    // And one in December, which no range of November reads.
    s.apply("c", &m, &[at(5, tokens("a", "late", 1, nov.end_us() + 1))], &adv(5, 6)).unwrap();
    let whole = s.period_totals(nov).await.unwrap();
    let keys = |t: &Totals| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&whole), ["B", "a", "a b", "ab", "é"]);
    assert_eq!(s.period_totals_in(nov, None, None).await.unwrap(), whole);
    let range =
        async |after: Option<&str>, upto: Option<&str>| keys(&s.period_totals_in(nov, after, upto).await.unwrap());
    assert_eq!(range(None, Some("a")).await, ["B", "a"]);
    assert_eq!(range(Some("a"), Some("ab")).await, ["a b", "ab"]);
    assert_eq!(range(Some("ab"), None).await, ["é"]);
    assert_eq!(range(Some("B"), Some("B")).await, Vec::<String>::new());
    assert_eq!(range(Some("é"), None).await, Vec::<String>::new());
    assert_eq!(range(None, Some("A")).await, Vec::<String>::new());
    let mut pieces = Totals::new();
    for (after, upto) in [(None, Some("a")), (Some("a"), Some("ab")), (Some("ab"), None)] {
        pieces.extend(s.period_totals_in(nov, after, upto).await.unwrap());
    }
    assert_eq!(pieces, whole, "the ranges together");
    assert_eq!(whole["a"]["agent_tokens"].value.map(|v| v.normalize().to_string()).as_deref(), Some("11"));
}

/// Expands to one `#[tokio::test]` per contract body, for a backend given by a harness factory.
#[macro_export]
macro_rules! store_contract {
    ($harness:expr) => {
        $crate::store_contract!(@t $harness; each_event_counts_once, checkpoint_moves_with_the_tallies,
            watermarks_are_per_partition_and_never_move_back, a_stale_owner_is_fenced_and_resumes_exactly,
            a_failed_batch_changes_nothing, uniques_and_period_boundaries, max_and_latest_ignore_arrival_order,
            a_batch_inserted_twice_changes_nothing, a_replay_of_the_whole_log_from_offset_0_changes_nothing,
            the_first_copy_of_an_id_counts_whatever_its_time, breakdown_by_group_values,
            positions_read_where_a_consumer_stands, period_totals_read_a_range_of_tenants_in_byte_order);
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
