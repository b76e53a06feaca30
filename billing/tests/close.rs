//! The close against a real SQLite usage store and ledger, with the clock given: one tenant's
//! subscription ending and the next starting in one period (usage billed once), a backdated
//! overlap refused, late events adjusted once and then no more.

use meter_billing::{Close, Error, Ledger, Sources, close};
use meter_rater::pricebook::SAMPLE;
use meter_rater::{Command, Cycle, LineKind, PriceBook, Setup};
use meter_schemas::Period;
use meter_store::contract::{adv, meters, tokens};
use meter_store::{SqliteStore, UsageStore};
use std::sync::Arc;

const METERS: &[&str] =
    &["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"];

fn at(rfc3339: &str) -> i64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).unwrap();
    (t.unix_timestamp_nanos() / 1000) as i64
}

fn p(s: &str) -> Period {
    s.parse().unwrap()
}

struct World {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    ledger: Ledger,
    sources: Sources,
    offset: u64,
}

impl World {
    fn new() -> Self {
        Self::with_book(SAMPLE)
    }

    /// On the price book `book` (TOML).
    fn with_book(book: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(SqliteStore::open(&dir.path().join("usage.db"), meter_sqlite::Durability::Normal).unwrap());
        store.checkpoint("c").unwrap();
        let ledger = Ledger::open(&dir.path().join("billing.db")).unwrap();
        let book = Arc::new(PriceBook::parse(book, METERS, &["active_users"]).unwrap());
        // Parts of two tenants with a subscription: every close here is made and recorded in
        // several parts, through the ledger's and the store's reads by range.
        let sources = Sources { tenants_a_part: 2, ..meter_billing::testing::one_store(store.clone(), book) };
        World { _dir: dir, store, ledger, sources, offset: 0 }
    }

    /// Counts an invocation of `n` tokens for `tenant` at `time`, and moves the watermark to `watermark`.
    fn count(&mut self, tenant: &str, n: i64, time: &str, watermark: &str) {
        let id = format!("e{}", self.offset);
        let ev = tokens(tenant, &id, n, at(time));
        self.store.apply("c", &meters(), &[ev], &adv(self.offset, self.offset + 1)).unwrap();
        self.offset += 1;
        self.store.advance_watermark("c", &[0], at(watermark)).unwrap();
    }

    /// Closes `period` at `now`, and reads the close back whole.
    async fn close(&self, period: &str, now: &str) -> Result<Close, Error> {
        let closed = close(&self.ledger, p(period), &self.sources, at(now), &|_| {}).await?;
        Ok(self.ledger.close_of(closed.header.period).await?.expect("the close is recorded"))
    }

    async fn subscribe(&self, tenant: &str, plan: &str, renew: bool, when: &str) -> Result<String, Error> {
        let setup = Setup { plan: plan.into(), cycle: Cycle::Monthly, term_years: 1, auto_renew: renew, trial: false };
        let list = self.sources.book.for_period(Period::containing(at(when))).unwrap();
        Ok(self.ledger.create(tenant, setup, at(when), "k", list).await?.id)
    }
}

fn usage_lines(c: &Close) -> Vec<(String, String, String)> {
    c.invoices
        .iter()
        .flat_map(|i| i.lines.iter().map(move |l| (i.subscription.clone(), l)))
        .filter(|(_, l)| l.kind == LineKind::Overage && l.meter.as_deref() == Some("agent_tokens"))
        .map(|(s, l)| (s, l.lineage.meters.get("agent_tokens").unwrap().to_string(), l.amount.to_string()))
        .collect()
}

#[tokio::test]
async fn usage_is_billed_once_across_two_subscriptions_and_late_events_are_adjusted_once() {
    let mut w = World::new();
    let first = w.subscribe("a", "starter", false, "2026-09-15T00:00:00Z").await.unwrap();
    // The first expires on October 15; a second may start after that, never overlapping it.
    let early = w.subscribe("a", "professional", true, "2026-10-10T00:00:00Z").await.unwrap_err();
    assert!(early.to_string().contains("already has subscription"), "{early}");
    let second = w.subscribe("a", "professional", true, "2026-10-20T00:00:00Z").await.unwrap();
    let backdated = w.subscribe("a", "starter", true, "2026-10-17T00:00:00Z").await.unwrap_err();
    assert!(backdated.to_string().contains(&second), "a start before the second's overlaps it: {backdated}");

    w.count("a", 60_000_000, "2026-10-05T00:00:00Z", "2026-11-02T00:00:00Z");
    let oct = w.close("2026-10", "2026-11-02T00:00:00Z").await.unwrap();
    assert!(!oct.complete, "closed before October's lateness window ended");
    // 60M tokens: 10M over Professional's 50M, 3 a million; never also on Starter's invoice.
    assert_eq!(usage_lines(&oct), [(second.clone(), "60000000".into(), "30.00".into())]);
    assert!(oct.invoices.iter().all(|i| i.subscription != first), "the first has nothing to bill in October");

    // No change may be dated inside a closed period.
    let list = w.sources.book.for_period(p("2026-10")).unwrap().clone();
    let refused = w.ledger.apply(&second, Command::Cancel, at("2026-10-25T00:00:00Z"), "k", list).await.unwrap_err();
    assert!(matches!(refused, Error::Closed(_)), "{refused}");

    // 20M late tokens for October, then November closes: one adjustment of 20 packages at 3.
    w.count("a", 20_000_000, "2026-10-28T00:00:00Z", "2026-12-10T00:00:00Z");
    let nov = w.close("2026-11", "2026-12-10T00:00:00Z").await.unwrap();
    let adj: Vec<_> = nov.invoices.iter().flat_map(|i| &i.lines).filter(|l| l.kind == LineKind::Adjustment).collect();
    assert_eq!(adj.len(), 1, "{:#?}", nov.invoices);
    assert_eq!(adj[0].amount.to_string(), "60.00");
    assert!(nov.revisions.contains_key(&p("2026-10")));
    assert_eq!(w.ledger.close_of(p("2026-10")).await.unwrap().unwrap(), oct, "October itself is never rewritten");

    // November's close saw October settled: December rates it no more.
    w.store.advance_watermark("c", &[0], at("2027-01-05T00:00:00Z")).unwrap();
    let dec = w.close("2026-12", "2027-01-10T00:00:00Z").await.unwrap();
    assert!(dec.revisions.is_empty(), "{:?}", dec.revisions.keys().collect::<Vec<_>>());
    assert!(dec.invoices.iter().flat_map(|i| &i.lines).all(|l| l.kind != LineKind::Adjustment));

    // Periods close in order, and a close needs the period ended and counted.
    let e = w.close("2026-09", "2027-01-10T00:00:00Z").await.unwrap_err();
    assert!(e.to_string().contains("periods close in order"), "{e}");
    let e = w.close("2027-01", "2027-01-10T00:00:00Z").await.unwrap_err();
    assert!(e.to_string().contains("is open until"), "{e}");
    let e = w.close("2027-01", "2027-02-10T00:00:00Z").await.unwrap_err();
    assert!(e.to_string().contains("events are counted up to 2027-01-05"), "{e}");
}

/// `close` as JSON without the ids each world draws anew (subscriptions', invoices', lines' and
/// the inputs' hashes that name them), its invoices in the order of what is left of them.
fn without_ids(close: &Close) -> String {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                for key in ["id", "subscription", "inputs_hash"] {
                    m.remove(key);
                }
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(close).unwrap();
    strip(&mut v);
    if let Some(serde_json::Value::Array(invoices)) = v.get_mut("invoices") {
        invoices.sort_by_key(|i| i.to_string());
    }
    v.to_string()
}

/// A close made a part at a time, through the ledger's and the store's reads by range, records
/// byte for byte what a close made in one part records: tenants in every order of their bytes,
/// one with two subscriptions, usage without a subscription before, between and after them,
/// and late events adjusted on the next close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_made_in_parts_records_what_one_part_records() {
    let mut made = Vec::new();
    for tenants_a_part in [1, 2, 3, 5_000] {
        let mut w = World::new();
        w.sources.tenants_a_part = tenants_a_part;
        for (i, tenant) in ["é", "b", "a", "B", "ab"].iter().enumerate() {
            w.subscribe(tenant, "starter", false, &format!("2026-09-1{i}T00:00:00Z")).await.unwrap();
        }
        w.subscribe("a", "professional", true, "2026-10-20T00:00:00Z").await.unwrap();
        for (tenant, n) in [("A", 5), ("a", 60_000_000), ("aa", 7), ("b", 6_000_000), ("é", 1), ("zz", 9)] {
            w.count(tenant, n, "2026-10-05T00:00:00Z", "2026-11-02T00:00:00Z");
        }
        let oct = w.close("2026-10", "2026-11-02T00:00:00Z").await.unwrap();
        w.count("b", 20_000_000, "2026-10-28T00:00:00Z", "2026-12-10T00:00:00Z");
        w.count("aa", 1, "2026-10-29T00:00:00Z", "2026-12-10T00:00:00Z");
        let nov = w.close("2026-11", "2026-12-10T00:00:00Z").await.unwrap();
        made.push((tenants_a_part, without_ids(&oct), without_ids(&nov)));
        let tenants: Vec<&str> = oct.report.iter().map(|r| r.tenant.as_str()).collect();
        assert!(tenants.is_sorted() && tenants.contains(&"A") && tenants.contains(&"zz"), "{tenants:?}");
        assert!(nov.invoices.iter().flat_map(|i| &i.lines).any(|l| l.kind == LineKind::Adjustment));
    }
    let (_, oct, nov) = made.pop().unwrap();
    for (n, o, v) in made {
        assert_eq!(o, oct, "October in parts of {n} tenants");
        assert_eq!(v, nov, "November in parts of {n} tenants");
    }
}

/// When prices change currency, a late event of a period billed in the old one is adjusted on an
/// invoice of its own in that currency, beside the subscription's invoice in the new one, with
/// an id of its own (so both are in the tenant's history and pushed); the close records both,
/// and what it returns reads back byte for byte, as does closing again.
#[tokio::test]
async fn a_close_with_invoices_in_two_currencies_for_one_subscription_reads_back_the_same() {
    let list = &SAMPLE[SAMPLE.find("\n[[list]]").unwrap()..];
    let eur = list
        .replace("version = \"2026-01\"", "version = \"2026-11\"")
        .replace("effective = 2026-01-01", "effective = 2026-11-01")
        .replace("currency = \"USD\"", "currency = \"EUR\"");
    let mut w = World::with_book(&format!("{SAMPLE}\n{eur}"));
    let sub = w.subscribe("a", "professional", true, "2026-10-01T00:00:00Z").await.unwrap();
    w.count("a", 60_000_000, "2026-10-05T00:00:00Z", "2026-11-02T00:00:00Z");
    w.close("2026-10", "2026-11-02T00:00:00Z").await.unwrap();
    w.count("a", 20_000_000, "2026-10-28T00:00:00Z", "2026-12-10T00:00:00Z");
    let nov = w.close("2026-11", "2026-12-10T00:00:00Z").await.unwrap();
    let mine: Vec<_> = nov.invoices.iter().filter(|i| i.subscription == sub).collect();
    let currencies: Vec<_> = mine.iter().map(|i| i.currency.code()).collect();
    assert_eq!(currencies, ["EUR", "USD"], "{:#?}", nov.invoices);
    assert!(mine[1].lines.iter().all(|l| l.kind == LineKind::Adjustment), "{:#?}", mine[1]);
    assert_eq!(mine[1].id, format!("{}_usd", mine[0].id));
    let history: Vec<_> =
        w.ledger.invoices_of("a").await.unwrap().into_iter().filter(|i| i.period == p("2026-11")).collect();
    assert_eq!(history.len(), 2, "both in the tenant's history: {history:#?}");
    let pushes = w.ledger.operations(None, Some(p("2026-11"))).await.unwrap();
    let pushed: std::collections::BTreeSet<_> = pushes.iter().map(|o| o.subject.as_str()).collect();
    assert!(pushed.contains(mine[0].id.as_str()) && pushed.contains(mine[1].id.as_str()), "{pushed:?}");
    // Byte for byte (a decimal's scale too, which `==` does not compare).
    let json = |c: &Close| serde_json::to_string(c).unwrap();
    assert_eq!(json(&w.ledger.close_of(p("2026-11")).await.unwrap().unwrap()), json(&nov));
    assert_eq!(json(&w.close("2026-11", "2026-12-11T00:00:00Z").await.unwrap()), json(&nov));
}

/// One close at a time: while another process holds the close lease, a close is refused with
/// a conflict naming it and changes nothing; once that lease is given back or runs out, the
/// close runs, gives the lease back, and closing again returns what was recorded.
#[tokio::test]
async fn a_close_while_another_runs_is_refused_naming_it() {
    let mut w = World::new();
    w.subscribe("a", "starter", true, "2026-10-01T00:00:00Z").await.unwrap();
    w.count("a", 5, "2026-10-05T00:00:00Z", "2026-11-02T00:00:00Z");
    let now = meter_schemas::period::now_us();
    assert_eq!(w.ledger.lease_close("host-b-42-7", p("2026-10"), now + 60_000_000, now).await.unwrap(), None);
    let e = w.close("2026-10", "2026-11-02T00:00:00Z").await.unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "{e}");
    assert!(e.to_string().contains("host-b-42-7") && e.to_string().contains("2026-10"), "{e}");
    assert!(w.ledger.close_of(p("2026-10")).await.unwrap().is_none(), "nothing recorded");
    w.ledger.release_close("host-b-42-7").await.unwrap();
    // A holder that died: its lease ran out.
    assert_eq!(w.ledger.lease_close("host-c-43-8", p("2026-10"), now - 1, now - 10).await.unwrap(), None);
    let oct = w.close("2026-10", "2026-11-02T00:00:00Z").await.unwrap();
    let now = meter_schemas::period::now_us();
    assert_eq!(w.ledger.lease_close("host-d", p("2026-11"), now + 1_000, now).await.unwrap(), None, "given back");
    assert_eq!(w.close("2026-10", "2026-11-03T00:00:00Z").await.unwrap(), oct, "the recorded close, lease or not");
}

/// A close that stalls past its lease while another process takes the close over stops before
/// it freezes or records anything, naming who took over; the lease stays with the new holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_that_lost_its_lease_records_nothing() {
    let mut w = World::new();
    w.subscribe("a", "starter", true, "2026-10-01T00:00:00Z").await.unwrap();
    w.count("a", 5, "2026-10-05T00:00:00Z", "2026-11-02T00:00:00Z");
    let ledger = w.ledger.clone();
    let stall = move |p: meter_billing::Progress| {
        if p == meter_billing::Progress::Totals {
            tokio::task::block_in_place(|| {
                // Seen from another process a minute from now, this close's lease ran out.
                let later = meter_schemas::period::now_us() + 60_000_000;
                let took = tokio::runtime::Handle::current()
                    .block_on(ledger.lease_close("host-b-42-7", p_oct(), later + 30_000_000, later))
                    .unwrap();
                assert_eq!(took, None, "host-b takes the lease over");
                // This close stalls past its next renewal, which finds the lease gone.
                std::thread::sleep(meter_billing::close::CLOSE_LEASE / 3 + std::time::Duration::from_secs(1));
            });
        }
    };
    let e = close(&w.ledger, p("2026-10"), &w.sources, at("2026-11-02T00:00:00Z"), &stall).await.unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "{e}");
    assert!(e.to_string().contains("took over") && e.to_string().contains("host-b-42-7"), "{e}");
    assert!(w.ledger.close_of(p("2026-10")).await.unwrap().is_none(), "nothing recorded");
    let now = meter_schemas::period::now_us();
    let holder = w.ledger.lease_close("host-c", p("2026-10"), now + 1_000, now).await.unwrap();
    assert_eq!(holder.map(|h| h.holder).as_deref(), Some("host-b-42-7"), "the lease is not given away by the loser");
}

fn p_oct() -> Period {
    p("2026-10")
}
