//! Alerts raised by the SQLite store in the counters' transaction: each threshold once, never
//! early, not again on duplicates, replays or a reopened store.

use meter_schemas::Period;
use meter_store::contract::{MID_NOVEMBER, adv, meters, tokens};
use meter_store::{Allowances, SqliteStore, UsageStore, Watch};
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
