//! The usage-store contract against ClickHouse (a private server, or `METER_TEST_CLICKHOUSE`),
//! and what only the ClickHouse store does: schema versions, roll-ups and retention.

use meter_store::contract::Harness;
use meter_store::testing::{fresh_database, shared_http};
use meter_store::{ClickHouseStore, ClickHouseUrl, UsageStore};
use std::sync::Arc;

struct ClickHouse(ClickHouseUrl);

#[async_trait::async_trait]
impl Harness for ClickHouse {
    async fn open(&self) -> Arc<dyn UsageStore> {
        Arc::new(ClickHouseStore::open(&self.0).await.unwrap())
    }
}

fn clickhouse() -> ClickHouse {
    let url = fresh_database(&shared_http());
    let migrate = url.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(ClickHouseStore::migrate(&migrate)).unwrap();
    })
    .join()
    .unwrap();
    ClickHouse(url)
}

meter_store::store_contract!(clickhouse());

fn migrated(url: &ClickHouseUrl) -> u32 {
    let url = url.clone();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(ClickHouseStore::migrate(&url))
    })
    .join()
    .unwrap()
    .unwrap()
}

/// `meter serve` refuses a database without meter's schema, or with a newer one; migrating is
/// idempotent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_is_refused_until_migrated_and_a_newer_schema_always() {
    let url = fresh_database(&shared_http());
    let err = ClickHouseStore::open(&url).await.err().expect("no schema yet").to_string();
    assert!(err.contains("schema version 0") && err.contains("meter migrate --store"), "{err}");
    assert_eq!(migrated(&url), meter_store::CLICKHOUSE_SCHEMA_VERSION);
    assert_eq!(migrated(&url), meter_store::CLICKHOUSE_SCHEMA_VERSION, "migrating again changes nothing");
    assert!(ClickHouseStore::open(&url).await.is_ok());
    let raw = reqwest_free_query(&url, "INSERT INTO schema_versions (version, what) VALUES (99, 'from the future')");
    assert_eq!(raw, "");
    let err = ClickHouseStore::open(&url).await.err().expect("a newer schema").to_string();
    assert!(err.contains("version 99, newer than this meter's"), "{err}");
    let wrong = ClickHouseUrl::parse("clickhouse://127.0.0.1:1/x-y").unwrap_err();
    assert!(wrong.contains("letters, digits and underscores"), "{wrong}");
    assert!(ClickHouseUrl::parse("clickhouse://host/db").unwrap_err().contains("HOST:PORT"));
    assert!(ClickHouseUrl::parse("clickhouse://host:8123").unwrap_err().contains("needs a database"));
    let with_user = ClickHouseUrl::parse("clickhouse://meter@host:8123/usage").unwrap();
    assert_eq!((with_user.user.as_deref(), with_user.http.as_str()), (Some("meter"), "http://host:8123"));
}

/// A database at schema version 1 holding events (as an older meter left it) is upgraded in
/// place: its events still count, they have no breakdown (the columns they lack read as empty),
/// and events written after the upgrade have one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_with_events_is_upgraded_in_place() {
    use meter_store::contract::{MID_NOVEMBER, adv, metered, meters};
    let url = fresh_database(&shared_http());
    let at_one = url.clone();
    let v = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(ClickHouseStore::migrate_up_to(&at_one, 1))
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(v, 1);
    // A row as version 1 wrote it: no group columns.
    let t = MID_NOVEMBER;
    let old = format!(
        "INSERT INTO events (tenant, id, time_us, rank, meters, kinds, values, texts) VALUES \
         ('a', 'old', {t}, {rank}, ['agent_invocations', 'agent_tokens'], [0, 1], [1, 10], ['', ''])",
        rank = u64::MAX
    );
    assert_eq!(reqwest_free_query(&url, &old), "");
    assert_eq!(migrated(&url), meter_store::CLICKHOUSE_SCHEMA_VERSION);
    let s: Arc<dyn UsageStore> = Arc::new(ClickHouseStore::open(&url).await.unwrap());
    let new = vec![metered(
        1,
        "a",
        "new",
        "agent.invocation",
        serde_json::json!({"model": "m", "input_tokens": 5, "output_tokens": 0}),
        t,
    )];
    let store = s.clone();
    tokio::task::spawn_blocking(move || store.apply("c", &meters(), &new, &adv(0, 2)).unwrap()).await.unwrap();
    let nov = "2026-11".parse().unwrap();
    let usage = s.usage("a", nov, meter_store::Coverage { consumer: "c", partition: 0 }).await.unwrap();
    let tokens_total = usage.meters["agent_tokens"].period.value.unwrap();
    assert_eq!(tokens_total, rust_decimal::Decimal::from(15), "the old event and the new one");
    let by = s.breakdown("a", nov).await.unwrap();
    assert_eq!(by["agent_tokens"]["model"].len(), 1, "{by:?}");
    assert_eq!(by["agent_tokens"]["model"]["m"], rust_decimal::Decimal::from(5), "only the new event has a model");
}

/// A statement sent over plain HTTP, outside the store (what an operator would type).
fn reqwest_free_query(url: &ClickHouseUrl, sql: &str) -> String {
    use std::io::{Read, Write};
    let host = url.http.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    let body = sql.as_bytes();
    write!(s, "POST /?database={} HTTP/1.0\r\nContent-Length: {}\r\n\r\n", url.database, body.len()).unwrap();
    s.write_all(body).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    answer.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}

/// Days past the watermark and the lateness window are rolled up into `daily`; every answer
/// stays the same, including unique users across a rolled and an open day, and a late copy of
/// an event in a rolled day changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_up_days_answer_as_the_raw_events_did() {
    use meter_store::contract::{MID_NOVEMBER, adv, at, expected_november, meters, november, the_log, tokens};
    let url = fresh_database(&shared_http());
    migrated(&url);
    let store = ClickHouseStore::open(&url).await.unwrap();
    let m = meters();
    let mut next = 0;
    for batch in the_log() {
        let to = batch.last().unwrap().offset + 1;
        store.apply("c", &m, &batch, &adv(next, to)).unwrap();
        next = to;
    }
    assert_eq!(november(&store).await, expected_november());
    let day = 86_400_000_000;
    let lateness = day;
    // Nothing is rolled up before every partition has a watermark.
    assert!(store.roll_up("c", 2, lateness).await.unwrap() < 0);
    // The watermark passed the end of Nov 15 plus the lateness window: Nov 15 and before seal.
    let nov16 = (MID_NOVEMBER / day + 1) * day;
    store.advance_watermark("c", &[0, 1], nov16 + lateness).unwrap();
    assert_eq!(store.roll_up("c", 2, lateness).await.unwrap(), nov16 / day);
    assert_eq!(november(&store).await, expected_november(), "the same answers from the rollups");
    assert_eq!(store.roll_up("c", 2, lateness).await.unwrap(), nov16 / day, "rolling up again changes nothing");
    assert_eq!(november(&store).await, expected_november());
    // A roll-up that died before marking its days left rows of another version: never read.
    let nov15 = nov16 / day - 1;
    reqwest_free_query(
        &url,
        &format!(
            "INSERT INTO daily SELECT tenant, meter, day, kind, n, sum, uniques, max, latest_value, latest_us, latest_id,
             version + 1 FROM daily WHERE day = {nov15}"
        ),
    );
    assert_eq!(november(&store).await, expected_november(), "unmarked rollup rows are not read");
    // Two roll-ups of the same day at once both mark it: the higher version alone is read.
    reqwest_free_query(
        &url,
        &format!("INSERT INTO rolled_days SELECT day, version + 1 FROM rolled_days WHERE day = {nov15}"),
    );
    assert_eq!(november(&store).await, expected_november(), "one version of a day is read");
    // A later copy of an event of Nov 15 (a producer retry) with a later time does not count.
    store.apply("c", &m, &[at(8, tokens("a", "t1", 10, nov16 + 3_600_000_000))], &adv(8, 9)).unwrap();
    assert_eq!(november(&store).await, expected_november());
    // All of November seals; the answers still hold.
    store.advance_watermark("c", &[0, 1], nov16 + 20 * day).unwrap();
    store.roll_up("c", 2, lateness).await.unwrap();
    assert_eq!(november(&store).await, expected_november());
}

/// Retention drops whole months of raw events; newer months stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_months_of_raw_events_past_it() {
    use meter_store::contract::{MID_NOVEMBER, adv, at, meters, tokens};
    let url = fresh_database(&shared_http());
    migrated(&url);
    let store = ClickHouseStore::open(&url).await.unwrap();
    let october = MID_NOVEMBER - 30 * 86_400_000_000;
    let events = vec![at(0, tokens("a", "old", 1, october)), at(1, tokens("a", "new", 2, MID_NOVEMBER))];
    store.apply("c", &meters(), &events, &adv(0, 2)).unwrap();
    let nov: meter_schemas::Period = "2026-11".parse().unwrap();
    assert_eq!(store.expire(nov.start_us() - 1).await.unwrap(), Vec::<String>::new(), "October ends after that");
    assert_eq!(store.expire(nov.start_us()).await.unwrap(), vec!["2026-10".to_string()]);
    let oct = store.period_totals("2026-10".parse().unwrap()).await.unwrap();
    assert!(oct.is_empty(), "{oct:?}");
    let kept = store.period_totals(nov).await.unwrap();
    assert_eq!(kept["a"]["agent_tokens"].value.map(|v| v.to_string()).as_deref(), Some("2"));
}
