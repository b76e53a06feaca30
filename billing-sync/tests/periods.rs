//! Where each month stands for finance (`status::periods`), over a ledger with closes of August
//! and October 2026 (September skipped: closing October first left it unclosable), on 15
//! December 2026.

use meter_billing::Ledger;
use meter_billing::ledger::contract::{a_close, book};
use meter_billing_sync::status::periods;

const DAY: i64 = 86_400_000_000;

#[tokio::test]
async fn each_month_says_where_it_stands() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&dir.path().join("billing.db")).unwrap();
    let book = book();
    let list = book.version("2026-01").unwrap();
    let lateness = DAY;
    let aug: meter_schemas::Period = "2026-08".parse().unwrap();
    let oct: meter_schemas::Period = "2026-10".parse().unwrap();
    // August closed well after its end; October closed one hour after its end (events can come).
    let august = meter_billing::Close { watermark_us: aug.end_us() + 2 * DAY, ..a_close("2026-08", &[]) };
    let october = meter_billing::Close { watermark_us: oct.end_us() + 3_600_000_000, ..a_close("2026-10", &[]) };
    ledger.record(august, list).await.unwrap();
    ledger.record(october, list).await.unwrap();
    let now = "2026-12".parse::<meter_schemas::Period>().unwrap().start_us() + 14 * DAY;
    let states = |w: Option<i64>| {
        let ledger = ledger.clone();
        async move {
            let all = periods(&ledger, w, lateness, now).await.unwrap();
            all.into_iter().map(|p| (p.period, p.state)).collect::<Vec<_>>()
        }
    };
    let nov_end = "2026-12".parse::<meter_schemas::Period>().unwrap().start_us();
    // The history counted past November's end: November is the one to close next.
    let want = |nov: &'static str| {
        vec![
            ("2026-12".to_string(), "open"),
            ("2026-11".to_string(), nov),
            ("2026-10".to_string(), "closed"),
            ("2026-09".to_string(), "not_closed"),
            ("2026-08".to_string(), "synced"),
        ]
    };
    assert_eq!(states(Some(nov_end + 1)).await, want("closable"));
    // Not yet past its end: it has ended, and waits.
    assert_eq!(states(Some(nov_end - 1)).await, want("ended"));
    assert_eq!(states(None).await, want("ended"));
    // A later close revising October, past its lateness, makes it complete.
    let december = meter_billing::Close { watermark_us: oct.end_us() + 2 * DAY, ..a_close("2026-11", &["2026-10"]) };
    ledger.record(december, list).await.unwrap();
    let after = states(Some(nov_end + 1)).await;
    assert_eq!(after[2], ("2026-10".to_string(), "synced"), "{after:?}");

    // Before any close: this month and the one before it.
    let empty = Ledger::open(&dir.path().join("empty.db")).unwrap();
    let fresh = periods(&empty, Some(nov_end + 1), lateness, now).await.unwrap();
    let fresh: Vec<_> = fresh.into_iter().map(|p| (p.period, p.state)).collect();
    assert_eq!(fresh, [("2026-12".to_string(), "open"), ("2026-11".to_string(), "closable")]);
}
