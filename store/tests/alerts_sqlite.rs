//! Alerts raised by the SQLite store in the counters' transaction: each threshold once, never
//! early, not again on duplicates, replays or a reopened store.

use meter_schemas::Period;
use meter_store::contract::{MID_NOVEMBER, adv, login, meters, tokens};
use meter_store::{Allowances, LimitQuery, SqliteStore, UsageStore, Watch};
use rust_decimal::Decimal;
use std::sync::Arc;

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

fn open(dir: &std::path::Path) -> SqliteStore {
    let s = SqliteStore::open(&dir.join("usage.db"), meter_sqlite::Durability::Normal).unwrap();
    s.set_allowances(Arc::new(Ten));
    s.checkpoint("c").unwrap();
    s
}

#[tokio::test]
async fn each_threshold_fires_once_and_never_early() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
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
    assert_eq!(alerts[0].id, meter_store::alerts::alert_id("a", "agent_invocations", "2026-11", 80));
    // A replay of everything, then 4 more: 90% and 100% once each.
    let all: Vec<_> = (0..7).chain([8]).map(ev).collect();
    s.apply("c", &m, &all, &adv(10, 18)).unwrap();
    assert_eq!(s.alerts(None, 0, 100).await.unwrap().len(), 1, "a replay changes nothing");
    drop(s);
    let s = open(dir.path());
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
    let suggestion = meter_store::Suggestion {
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
#[tokio::test]
async fn limit_states_read_ids_values_and_uniques_per_tenant_and_period() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
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
