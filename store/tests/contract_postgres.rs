//! The usage-store and live-counter contracts against Postgres (`METER_TEST_POSTGRES`, or a
//! private cluster), and what several hosts sharing the live counters need.

use meter_postgres::testing::{fresh_database, shared_url};
use meter_postgres::{MAX_CONNECTIONS, Pg, PgUrl};
use meter_sqlite::dedup::Settings;
use meter_store::contract::{Harness, LiveHarness};
use meter_store::{LiveStore, PgStore, UsageStore};
use std::sync::Arc;
use std::time::Duration;

/// A migrated database; each `open` is a process of its own (a pool of its own).
struct Postgres(PgUrl);

impl Postgres {
    fn open_store(&self) -> PgStore {
        PgStore::open(Arc::new(Pg::connect(&self.0, MAX_CONNECTIONS).unwrap())).unwrap()
    }
}

#[async_trait::async_trait]
impl Harness for Postgres {
    async fn open(&self) -> Arc<dyn UsageStore> {
        Arc::new(self.open_store())
    }
}

#[async_trait::async_trait]
impl LiveHarness for Postgres {
    async fn open_live(&self) -> Arc<dyn LiveStore> {
        Arc::new(self.open_store())
    }

    async fn open_live_keeping(&self, horizon: Duration) -> Arc<dyn LiveStore> {
        let pg = Arc::new(Pg::connect(&self.0, MAX_CONNECTIONS).unwrap());
        Arc::new(PgStore::open_with(pg, Settings::new(horizon.as_micros() as i64)).unwrap())
    }
}

fn postgres() -> Postgres {
    let url = fresh_database(&shared_url());
    PgStore::migrate(&Pg::connect(&url, 1).unwrap()).unwrap();
    Postgres(url)
}

/// A fresh database at this build's schema, on a pool of two connections.
fn migrated() -> Arc<Pg> {
    let pg = Arc::new(Pg::connect(&fresh_database(&shared_url()), 2).unwrap());
    PgStore::migrate(&pg).unwrap();
    pg
}

meter_store::store_contract!(postgres());
meter_store::live_contract!(postgres());

#[test]
fn an_unmigrated_database_is_refused() {
    let url = fresh_database(&shared_url());
    let e = PgStore::open(Arc::new(Pg::connect(&url, 1).unwrap())).err().unwrap().to_string();
    assert!(e.contains("store schema version 0") && e.contains("run `meter migrate --state"), "{e}");
}

/// A store readies itself as it opens: the arrival partitions of now and the next are there
/// before any batch, and the batch's statements are prepared on the connection that the pool
/// hands out next.
#[test]
fn an_opened_store_is_ready_for_its_first_batch() {
    let pg = migrated();
    let _store = PgStore::open(pg.clone()).unwrap();
    let parts: i64 = pg.query_one("SELECT count(*) FROM seen_parts", &[]).unwrap().get(0);
    assert_eq!(parts, 2, "the partition of now and the next");
    let prepared: Vec<String> =
        pg.query("SELECT statement FROM pg_prepared_statements", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    for start in ["UPDATE tallies t SET value", "INSERT INTO uniques", "UPDATE checkpoints c SET next_offset"] {
        assert!(prepared.iter().any(|p| p.starts_with(start)), "{start}… is not prepared: {prepared:?}");
    }
}

/// The arrival partitions a store makes are found through the hash index on `tenant:id` and have
/// no primary key (schema version 6); a lookup shaped as the store's (`SEEN_OF_TENANT`, the batch's)
/// goes through that index, never a scan of the partition.
#[test]
fn new_partitions_have_only_the_hash_index_and_lookups_use_it() {
    let pg = migrated();
    let _store = PgStore::open(pg.clone()).unwrap();
    let indexes: Vec<String> = pg
        .query("SELECT i.indexdef FROM seen_parts p JOIN pg_indexes i ON i.tablename = p.name ORDER BY p.from_us", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(indexes.len(), 2, "one index on each of the two partitions: {indexes:?}");
    assert!(
        indexes.iter().all(|d| d.contains("USING hash") && d.contains("(tenant || ':'::text) || id")),
        "{indexes:?}"
    );
    let newest: String = pg.query_one("SELECT max(name) FROM seen_parts", &[]).unwrap().get(0);
    let from: i64 = pg.query_one("SELECT max(from_us) FROM seen_parts", &[]).unwrap().get(0);
    pg.execute("INSERT INTO seen_ids SELECT 'a', 'id-' || n, $1 FROM generate_series(1, 20000) n", &[&from]).unwrap();
    pg.execute("ANALYZE seen_ids", &[]).unwrap();
    let plan: Vec<String> = pg
        .query(
            "EXPLAIN SELECT x.id FROM unnest($2::text[]) AS x(id)
             JOIN LATERAL (
                 SELECT 1 FROM seen_ids s WHERE (s.tenant || ':' || s.id) = ($1::text || ':' || x.id) AND s.tenant = $1 AND s.id = x.id
                 LIMIT 1
             ) f ON true",
            &[&"a", &vec!["id-1", "id-2"]],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(plan.iter().any(|l| l.contains(&format!("Index Scan using {newest}_expr_idx"))), "{plan:#?}");
}

/// After the upgrade to schema version 6, a process of an older build still running cannot
/// write an id where no primary key would refuse a copy: its statements name `seen`, which is
/// gone, so its batches fail (and are tried again until it is replaced) rather than count twice.
#[test]
fn an_older_builds_id_insert_fails_after_the_upgrade() {
    let pg = migrated();
    let _store = PgStore::open(pg.clone()).unwrap();
    let e = pg
        .execute("INSERT INTO seen (tenant, id, arrived_us) SELECT 'a', 'x', 1 ON CONFLICT DO NOTHING", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("relation \"seen\" does not exist"), "{e}");
}

/// A partition made before schema version 6 keeps its primary key beside the hash index, and can
/// be the one batches write to after the upgrade: an id counted there before it stays counted,
/// and the batch's new ids go in beside it.
#[test]
fn a_partition_from_before_the_hash_index_still_counts_each_id_once() {
    use meter_store::contract::{MID_NOVEMBER, adv, meters, tokens};
    let url = fresh_database(&shared_url());
    let pg = Arc::new(Pg::connect(&url, 2).unwrap());
    meter_postgres::migrate(&pg, meter_store::PG_COMPONENT, &meter_store::PG_MIGRATIONS[..5]).unwrap();
    // The partition of now as a schema-5 store made it, with an id counted in it.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    let (from, to) = (now - 3_600_000_000, now + 86_400_000_000);
    pg.execute(
        &format!(
            "CREATE TABLE seen_{from} PARTITION OF seen (PRIMARY KEY (tenant, id)) FOR VALUES FROM ({from}) TO ({to})"
        ),
        &[],
    )
    .unwrap();
    pg.execute(
        "INSERT INTO seen_parts (name, from_us, to_us) VALUES ($1, $2, $3)",
        &[&format!("seen_{from}"), &from, &to],
    )
    .unwrap();
    pg.execute("INSERT INTO seen (tenant, id, arrived_us) VALUES ('a', 'old-1', $1)", &[&(from + 1)]).unwrap();
    PgStore::migrate(&pg).unwrap();
    let s = PgStore::open(pg.clone()).unwrap();
    s.checkpoint("c").unwrap();
    let batch = [tokens("a", "old-1", 1, MID_NOVEMBER), tokens("a", "new-1", 1, MID_NOVEMBER)];
    let applied = s.apply("c", &meters(), &batch, &adv(0, 2)).unwrap();
    assert_eq!((applied.counted, applied.duplicates), (1, 1), "only new-1 is new");
    let again = [tokens("a", "new-1", 1, MID_NOVEMBER), tokens("a", "new-2", 1, MID_NOVEMBER)];
    let applied = s.apply("c", &meters(), &again, &adv(2, 4)).unwrap();
    assert_eq!((applied.counted, applied.duplicates), (1, 1), "only new-2 is new");
    let holding: Vec<String> = pg
        .query("SELECT tableoid::regclass::text FROM seen_ids WHERE tenant = 'a' ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(holding, vec![format!("seen_{from}"); 3], "every id in the schema-5 partition, once");
}

/// An upgrade keeps the ids counted before it: they become the oldest arrival partition.
#[test]
fn the_ids_counted_before_the_arrival_partitions_stay_counted() {
    use meter_store::contract::{MID_NOVEMBER, adv, meters, tokens};
    let url = fresh_database(&shared_url());
    let pg = Arc::new(Pg::connect(&url, 2).unwrap());
    let before = &meter_store::PG_MIGRATIONS[..3];
    meter_postgres::migrate(&pg, meter_store::PG_COMPONENT, before).unwrap();
    pg.execute("INSERT INTO seen (tenant, id) VALUES ('a', 'old-1'), ('a', 'old-2')", &[]).unwrap();
    PgStore::migrate(&pg).unwrap();
    let s = PgStore::open(pg.clone()).unwrap();
    s.checkpoint("c").unwrap();
    let batch = [tokens("a", "old-1", 1, MID_NOVEMBER), tokens("a", "new-1", 1, MID_NOVEMBER)];
    assert_eq!(s.apply("c", &meters(), &batch, &adv(0, 2)).unwrap().counted, 1);
    let parts: Vec<String> =
        pg.query("SELECT name FROM seen_parts ORDER BY from_us", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(parts.len(), 3, "the old ids, the partition of now and the next: {parts:?}");
    assert_eq!(parts[0], "seen_legacy");
}

/// A batch looks its ids up in the partition it writes to and those before it, and in a later
/// one when it holds any: an id already counted in the next partition, by a host whose clock ran
/// ahead, or in the partition of now, stays counted once.
#[test]
fn an_id_counted_in_any_partition_stays_counted() {
    use meter_store::contract::{MID_NOVEMBER, adv, meters, tokens};
    let pg = migrated();
    let s = PgStore::open(pg.clone()).unwrap();
    s.checkpoint("c").unwrap();
    let first = [tokens("a", "now-1", 1, MID_NOVEMBER)];
    assert_eq!(s.apply("c", &meters(), &first, &adv(0, 1)).unwrap().counted, 1);
    let next: i64 = pg.query_one("SELECT max(from_us) FROM seen_parts", &[]).unwrap().get(0);
    pg.execute("INSERT INTO seen_ids (tenant, id, arrived_us) VALUES ('a', 'ahead-1', $1)", &[&next]).unwrap();
    let batch = [
        tokens("a", "ahead-1", 1, MID_NOVEMBER),
        tokens("a", "now-1", 1, MID_NOVEMBER),
        tokens("a", "new-1", 1, MID_NOVEMBER),
    ];
    let applied = s.apply("c", &meters(), &batch, &adv(1, 4)).unwrap();
    assert_eq!((applied.counted, applied.duplicates), (1, 2), "only new-1 is new");
}

/// The dedup horizon of the tests that wait for a partition to be sealed: partitions 4 s wide,
/// sealed a quarter of a second after their last arrival, dropped 16 s after it (room enough on
/// a loaded machine).
const HORIZON: Duration = Duration::from_secs(16);

/// A store keeping ids for `horizon` on `pg`: arrival partitions a quarter of it wide, each
/// sealed a sixteenth of that after its last arrival.
fn keeping(pg: &Arc<Pg>, horizon: Duration) -> PgStore {
    PgStore::open_with(pg.clone(), Settings::new(horizon.as_micros() as i64)).unwrap()
}

/// Applies one-event batches to `s` (each a new id, from offset `*next` of consumer "c") until
/// the partition holding id `a:first` is sealed and its filter kept; answers the partition.
fn until_sealed_and_filtered(pg: &Pg, s: &PgStore, next: &mut u64) -> String {
    use meter_store::contract::{MID_NOVEMBER, adv, meters, tokens};
    let holding: String =
        pg.query_one("SELECT tableoid::regclass::text FROM seen_ids WHERE id = 'first'", &[]).unwrap().get(0);
    let started = std::time::Instant::now();
    loop {
        let done: bool = pg
            .query_one("SELECT sealed AND filter IS NOT NULL FROM seen_parts WHERE name = $1", &[&holding])
            .unwrap()
            .get(0);
        if done {
            return holding;
        }
        assert!(started.elapsed() < Duration::from_secs(12), "{holding} not sealed and filtered in 12 s");
        let tick = [tokens("a", &format!("tick-{next}"), 1, MID_NOVEMBER)];
        s.apply("c", &meters(), &tick, &adv(*next, *next + 1)).unwrap();
        *next += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A partition past its last arrival is sealed: no id goes in any more, from any host, and the
/// filter built of its ids then keeps each of them counted once, in the process that sealed it
/// (which reads the filter when it next makes room, or asks the partition until then) and in a
/// new one, which reads it as it opens, while new ids still count.
#[test]
fn a_sealed_partition_takes_no_ids_and_its_filter_keeps_them_counted() {
    use meter_store::contract::{MID_NOVEMBER, adv, meters, tokens};
    let pg = migrated();
    let s = keeping(&pg, HORIZON);
    s.checkpoint("c").unwrap();
    let first: Vec<_> = ["first", "b-1", "b-2"].iter().map(|id| tokens("a", id, 1, MID_NOVEMBER)).collect();
    assert_eq!(s.apply("c", &meters(), &first, &adv(0, 3)).unwrap().counted, 3);
    let mut next = 3;
    let sealed = until_sealed_and_filtered(&pg, &s, &mut next);
    let refused = pg.execute(&format!("INSERT INTO {sealed} (tenant, id, arrived_us) SELECT 'a', 'late', from_us FROM seen_parts WHERE name = '{sealed}'"), &[]);
    assert!(refused.unwrap_err().is_code("23514"), "the sealed partition refuses a row");
    let kept: Option<Vec<u8>> =
        pg.query_one("SELECT filter FROM seen_parts WHERE name = $1", &[&sealed]).unwrap().get(0);
    assert!(kept.is_some_and(|f| !f.is_empty()), "a filter was built");
    for store in [&s, &keeping(&pg, HORIZON)] {
        store.checkpoint("c").unwrap();
        let again = [
            tokens("a", "first", 1, MID_NOVEMBER),
            tokens("a", "b-2", 1, MID_NOVEMBER),
            tokens("a", &format!("new-{next}"), 1, MID_NOVEMBER),
        ];
        let applied = store.apply("c", &meters(), &again, &adv(next, next + 3)).unwrap();
        assert_eq!((applied.counted, applied.duplicates), (1, 2), "only the new id counts");
        next += 3;
    }
}

/// A sealed partition with a filter is not asked about an id its filter says it does not hold:
/// with a filter of other ids put in its place, an id counted there is counted again (which is
/// what the lookup saves; a real filter holds every id of its partition).
#[test]
fn a_sealed_partition_is_asked_only_about_the_ids_its_filter_may_hold() {
    use meter_sqlite::dedup::{GROUP_PART, Parted, fingerprint};
    use meter_store::contract::{MID_NOVEMBER, adv, meters, tokens};
    let pg = migrated();
    let s = keeping(&pg, HORIZON);
    s.checkpoint("c").unwrap();
    let first: Vec<_> = ["first", "b-1"].iter().map(|id| tokens("a", id, 1, MID_NOVEMBER)).collect();
    assert_eq!(s.apply("c", &meters(), &first, &adv(0, 2)).unwrap().counted, 2);
    let mut next = 2;
    let sealed = until_sealed_and_filtered(&pg, &s, &mut next);
    let other = Parted::of(&[fingerprint("a", "b-1")], GROUP_PART).unwrap().encode();
    pg.execute("UPDATE seen_parts SET filter = $2 WHERE name = $1", &[&sealed, &other]).unwrap();
    let reading = keeping(&pg, HORIZON);
    reading.checkpoint("c").unwrap();
    let again = [tokens("a", "first", 1, MID_NOVEMBER), tokens("a", "b-1", 1, MID_NOVEMBER)];
    let applied = reading.apply("c", &meters(), &again, &adv(next, next + 2)).unwrap();
    assert_eq!(
        (applied.counted, applied.duplicates),
        (1, 1),
        "\"first\" is not in the filter, so its partition is not asked; \"b-1\" is, and it is found"
    );
}

/// A sealed partition without a usable filter (the table kept from before the partitions, one
/// too large for a filter, one whose filter cannot be read) is asked about every id, and so is every partition before it, filtered
/// or not, while the newer sealed ones with filters are asked only about the ids their filters
/// may hold: here the newest's filter is of other ids, so an id counted there counts again (what
/// the lookup saves; a real filter holds every id of its partition).
#[test]
fn a_sealed_partition_without_a_filter_is_asked_about_every_id() {
    use meter_sqlite::dedup::{GROUP_PART, Parted, fingerprint};
    use meter_store::contract::{MID_NOVEMBER, adv, meters, tokens};
    let pg = migrated();
    // Four sealed partitions before the partition of now, as the default horizon makes them.
    let width = Settings::new(meter_schemas::envelope::DEDUP_HORIZON_US).bucket_us();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    let current = now - now.rem_euclid(width);
    let mut names = Vec::new();
    for (k, id) in [(4, "in-oldest"), (3, "in-unreadable"), (2, "in-older"), (1, "in-newer")] {
        let from = current - k * width;
        let name = PgStore::make_partition(&pg, (from, from + width)).unwrap();
        pg.execute("INSERT INTO seen_ids (tenant, id, arrived_us) VALUES ('a', $1, $2)", &[&id, &from]).unwrap();
        PgStore::seal_partition(&pg, &name).unwrap();
        names.push(name);
    }
    // Filtered, unreadable (not a filter's format), unusable (none could be built), filtered (of
    // another id).
    pg.execute("UPDATE seen_parts SET filter = '\\x07ff'::bytea WHERE name = $1", &[&names[1]]).unwrap();
    pg.execute("UPDATE seen_parts SET filter = ''::bytea WHERE name = $1", &[&names[2]]).unwrap();
    assert_eq!(PgStore::build_filters(&pg).unwrap(), 2, "the oldest's and the newest's filters");
    let other = Parted::of(&[fingerprint("a", "elsewhere")], GROUP_PART).unwrap().encode();
    pg.execute("UPDATE seen_parts SET filter = $2 WHERE name = $1", &[&names[3], &other]).unwrap();
    let s = PgStore::open(pg.clone()).unwrap();
    s.checkpoint("c").unwrap();
    let batch = [
        tokens("a", "in-oldest", 1, MID_NOVEMBER),
        tokens("a", "in-unreadable", 1, MID_NOVEMBER),
        tokens("a", "in-older", 1, MID_NOVEMBER),
        tokens("a", "in-newer", 1, MID_NOVEMBER),
        tokens("a", "new-1", 1, MID_NOVEMBER),
    ];
    let applied = s.apply("c", &meters(), &batch, &adv(0, 5)).unwrap();
    assert_eq!(
        (applied.counted, applied.duplicates),
        (2, 3),
        "the first three found (their partitions asked), in-newer not (its filter says no), new-1 new"
    );
}

/// A filter built a range of its parts at a time (a sealed partition too large to hold every
/// fingerprint of at once is read once per range) is the filter built in one pass, byte for byte.
#[test]
fn a_filter_built_in_passes_is_the_filter_built_at_once() {
    use meter_sqlite::dedup::{Parted, fingerprint};
    let pg = migrated();
    let _store = PgStore::open(pg.clone()).unwrap();
    let (name, from): (String, i64) = pg
        .query_one("SELECT name, from_us FROM seen_parts ORDER BY from_us LIMIT 1", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    pg.execute("INSERT INTO seen_ids SELECT 't' || (n % 7), 'id-' || n, $1 FROM generate_series(1, 5000) n", &[&from])
        .unwrap();
    PgStore::seal_partition(&pg, &name).unwrap();
    // 5,000 ids in parts of about 256: 32 parts, read in 6 passes of 6 parts (the last of 2).
    assert_eq!(PgStore::build_filters_in(&pg, (256, 1000)).unwrap(), 1);
    let kept: Vec<u8> = pg.query_one("SELECT filter FROM seen_parts WHERE name = $1", &[&name]).unwrap().get(0);
    let mut fps: Vec<u64> = (1..=5000).map(|n| fingerprint(&format!("t{}", n % 7), &format!("id-{n}"))).collect();
    fps.sort_unstable();
    let whole = Parted::of(&fps, 256).unwrap();
    assert_eq!(kept, whole.encode(), "the same filter");
    let read = Parted::decode(&kept).unwrap().unwrap();
    assert!(fps.iter().all(|&fp| read.contains(fp)), "every id of the partition is in it");
}

/// A batch stamped within a partition that another host sealed since this process last read
/// the partitions fails once, whole, and goes to the next partition when tried again.
#[test]
fn a_batch_whose_partition_was_sealed_meanwhile_goes_to_the_next() {
    use meter_store::contract::{MID_NOVEMBER, adv, meters, tokens};
    let pg = migrated();
    let s = PgStore::open(pg.clone()).unwrap();
    s.checkpoint("c").unwrap();
    let before = [tokens("a", "0", 1, MID_NOVEMBER)];
    assert_eq!(s.apply("c", &meters(), &before, &adv(0, 1)).unwrap().counted, 1, "the partitions are known");
    let now: String = pg.query_one("SELECT name FROM seen_parts ORDER BY from_us LIMIT 1", &[]).unwrap().get(0);
    let next: i64 = pg.query_one("SELECT max(from_us) FROM seen_parts", &[]).unwrap().get(0);
    PgStore::seal_partition(&pg, &now).unwrap();
    let batch = [tokens("a", "1", 1, MID_NOVEMBER), tokens("a", "2", 1, MID_NOVEMBER)];
    let e = s.apply("c", &meters(), &batch, &adv(1, 3)).unwrap_err().to_string();
    assert!(e.contains(&format!("{now}_sealed")), "{e}");
    let applied = s.apply("c", &meters(), &batch, &adv(1, 3)).unwrap();
    assert_eq!(applied.counted, 2);
    let arrived: Vec<i64> = pg
        .query("SELECT arrived_us FROM seen_ids WHERE tenant = 'a' AND id <> '0'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(arrived, vec![next, next], "stamped at the start of the next partition");
}

/// A batch over two log partitions, one of which another owner moved: fenced, naming that
/// partition and where it stands, and none of it is kept (its ids count when it is applied from
/// where the partitions stand). The batch's id insert is sent behind the fence without waiting.
#[test]
fn a_batch_fenced_on_one_of_its_partitions_keeps_nothing() {
    use meter_store::contract::{MID_NOVEMBER, meters, tokens};
    use meter_store::{Advance, Progress};
    let h = postgres();
    let (owner, stale) = (h.open_store(), h.open_store());
    owner.checkpoint("c").unwrap();
    stale.checkpoint("c").unwrap();
    let moves = |moves: &[(u32, u64, u64)]| Progress {
        partitions: moves.iter().map(|&(partition, from, to)| Advance { partition, from, to }).collect(),
        watermark_us: None,
    };
    owner.apply("c", &meters(), &[tokens("b", "b-1", 1, MID_NOVEMBER)], &moves(&[(1, 0, 3)])).unwrap();
    let batch = [tokens("a", "a-1", 1, MID_NOVEMBER), tokens("b", "b-2", 1, MID_NOVEMBER)];
    let fenced = stale.apply("c", &meters(), &batch, &moves(&[(0, 0, 1), (1, 0, 1)]));
    assert!(matches!(fenced, Err(meter_store::Error::Fenced { partition: 1, stored: 3, from: 0 })), "{fenced:?}");
    let applied = stale.apply("c", &meters(), &batch, &moves(&[(0, 0, 1), (1, 3, 4)])).unwrap();
    assert_eq!((applied.counted, applied.duplicates), (2, 0), "nothing of the fenced batch was kept");
    assert_eq!(stale.checkpoint("c").unwrap().positions, vec![(0, 1), (1, 4)]);
}

/// Two hosts applying a batch from the same offset at once (an owner and a stale one after a
/// rebalance): one commits, the other is fenced and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_owners_commit_once() {
    use meter_store::contract::{MID_NOVEMBER, adv, meters, tokens};
    let h = postgres();
    for round in 0..5u64 {
        let hosts: Vec<PgStore> = (0..2).map(|_| h.open_store()).collect();
        for s in &hosts {
            s.checkpoint("c").unwrap();
        }
        let from = round * 10;
        let batch: Vec<_> =
            (0..10).map(|i| tokens("acme", &format!("r{round}-{i}"), 1, MID_NOVEMBER + i as i64)).collect();
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> =
                hosts.iter().map(|st| s.spawn(|| st.apply("c", &meters(), &batch, &adv(from, from + 10)))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "{results:?}");
        assert!(results.iter().any(|r| matches!(r, Err(meter_store::Error::Fenced { .. }))), "{results:?}");
    }
    let s = h.open_store();
    assert_eq!(s.checkpoint("c").unwrap().positions, vec![(0, 50)]);
    let usage = s
        .usage("acme", "2026-11".parse().unwrap(), meter_store::Coverage { consumer: "c", partition: 0 })
        .await
        .unwrap();
    assert_eq!(usage.meters["agent_invocations"].period.value, Some(50.into()), "each event once");
}

/// Hosts raising alerts at once while a reader follows `seq`: the reader, reading after the last
/// `seq` it saw, misses none (seqs appear in commit order).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alerts_appear_in_seq_order_across_hosts() {
    use meter_store::contract::{MID_NOVEMBER, meters, tokens};
    use meter_store::{Advance, Allowances, Progress, Watch};
    struct One;
    impl Allowances for One {
        fn watch(&self, _: &str, _: &str, _: meter_schemas::Period) -> Option<Watch> {
            Some(Watch { included: 1.into(), percents: vec![100], plan: "p".into() })
        }
    }
    let h = postgres();
    let writers: Vec<_> = (0..4u32)
        .map(|p| {
            let s = h.open_store();
            s.set_allowances(Arc::new(One));
            s.checkpoint("c").unwrap();
            std::thread::spawn(move || {
                for i in 0..25u64 {
                    // One new tenant per batch: one alert each.
                    let ev = tokens(&format!("t{p}-{i}"), "e", 1, MID_NOVEMBER);
                    let progress =
                        Progress { partitions: vec![Advance { partition: p, from: i, to: i + 1 }], watermark_us: None };
                    s.apply("c", &meters(), &[ev], &progress).unwrap();
                }
            })
        })
        .collect();
    let reader = h.open_store();
    let (mut after, mut seen) = (0, Vec::new());
    while seen.len() < 100 * 2 {
        let got = reader.alerts(None, after, 1000).await.unwrap();
        if let Some(last) = got.last() {
            after = last.seq;
        }
        seen.extend(got.into_iter().map(|a| a.seq));
        if writers.iter().all(|w| w.is_finished()) && reader.alerts(None, after, 1).await.unwrap().is_empty() {
            break;
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    seen.extend(reader.alerts(None, after, 1000).await.unwrap().into_iter().map(|a| a.seq));
    // Each batch counts a tenant's agent invocation and its tokens: two watched meters.
    assert_eq!(seen, (1..=200).collect::<Vec<u64>>());
}

/// The store rewrites the counters it has cached by their rows' ids. A row replaced under it
/// (deleted and inserted again by hand: a new id, another value) is never overwritten from its
/// cache: the batch fails naming the table and changes nothing, the store forgets what it cached,
/// and the batch tried again adds to the rows as they are now. Only a row that is gone is seen:
/// an id given to another key (a restore of the table alone) is not.
#[test]
fn a_counter_replaced_under_the_store_is_read_again() {
    use meter_store::contract::{MID_NOVEMBER, adv, metered, meters};
    let keys = [
        ("tallies", "tenant, meter, bucket", "value"),
        ("breakdowns", "tenant, period, meter, property, value", "amount"),
    ];
    for (replaced_tables, first_refused) in [(&keys[1..], "breakdowns"), (&keys[..], "tallies")] {
        let url = fresh_database(&shared_url());
        let pg = Arc::new(Pg::connect(&url, 2).unwrap());
        PgStore::migrate(&pg).unwrap();
        let s = PgStore::open(pg.clone()).unwrap();
        s.checkpoint("c").unwrap();
        let call = |offset: u64, id: &str, tokens: u32| {
            let props = serde_json::json!({"model": "m1", "input_tokens": tokens, "output_tokens": 0});
            metered(offset, "a", id, "agent.invocation", props, MID_NOVEMBER)
        };
        s.apply("c", &meters(), &[call(0, "a-1", 1)], &adv(0, 1)).unwrap();
        for (table, key, column) in replaced_tables {
            pg.execute(&format!("CREATE TABLE kept_{table} AS SELECT * FROM {table} WHERE tenant = 'a'"), &[]).unwrap();
            pg.execute(&format!("DELETE FROM {table} WHERE tenant = 'a'"), &[]).unwrap();
            pg.execute(
                &format!("INSERT INTO {table} ({key}, {column}) SELECT {key}, {column} + 10 FROM kept_{table}"),
                &[],
            )
            .unwrap();
        }
        let read = || {
            let q = |sql: &str| pg.query_one(sql, &[]).unwrap().get::<_, String>(0);
            let tokens = q(
                "SELECT value::text FROM tallies WHERE tenant = 'a' AND meter = 'agent_tokens' AND bucket = '2026-11'",
            );
            let model =
                q("SELECT amount::text FROM breakdowns WHERE tenant = 'a' AND meter = 'agent_tokens' AND value = 'm1'");
            (tokens.parse::<u32>().unwrap(), model.parse::<u32>().unwrap())
        };
        let before = read();
        let replaced = s.apply("c", &meters(), &[call(1, "a-2", 2)], &adv(1, 2));
        assert!(
            matches!(&replaced, Err(meter_store::Error::Replaced { table, .. }) if *table == first_refused),
            "a batch over replaced rows of {first_refused} is refused: {replaced:?}"
        );
        assert_eq!(read(), before, "the refused batch changed nothing");
        assert_eq!(s.apply("c", &meters(), &[call(1, "a-2", 2)], &adv(1, 2)).unwrap().counted, 1);
        assert_eq!(read(), (before.0 + 2, before.1 + 2), "added to the rows as they are now");
    }
}

/// Counters written before their rows had ids are given ids by the upgrade, and a batch after it
/// adds to them.
#[test]
fn counters_from_before_row_ids_are_added_to() {
    use meter_store::contract::{MID_NOVEMBER, adv, metered, meters};
    let url = fresh_database(&shared_url());
    let pg = Arc::new(Pg::connect(&url, 2).unwrap());
    meter_postgres::migrate(&pg, meter_store::PG_COMPONENT, &meter_store::PG_MIGRATIONS[..4]).unwrap();
    pg.execute("INSERT INTO tallies (tenant, meter, bucket, value) VALUES ('a', 'agent_tokens', '2026-11', 5)", &[])
        .unwrap();
    pg.execute(
        "INSERT INTO breakdowns (tenant, period, meter, property, value, amount)
         VALUES ('a', '2026-11', 'agent_tokens', 'model', 'm1', 5)",
        &[],
    )
    .unwrap();
    PgStore::migrate(&pg).unwrap();
    let s = PgStore::open(pg.clone()).unwrap();
    s.checkpoint("c").unwrap();
    let props = serde_json::json!({"model": "m1", "input_tokens": 2, "output_tokens": 0});
    for (offset, id) in [(0, "a-1"), (1, "a-2")] {
        let batch = [metered(offset, "a", id, "agent.invocation", props.clone(), MID_NOVEMBER)];
        assert_eq!(s.apply("c", &meters(), &batch, &adv(offset, offset + 1)).unwrap().counted, 1);
    }
    let q = |sql: &str| pg.query_one(sql, &[]).unwrap().get::<_, String>(0);
    assert_eq!(
        q("SELECT value::text FROM tallies WHERE tenant = 'a' AND meter = 'agent_tokens' AND bucket = '2026-11'"),
        "9"
    );
    assert_eq!(q("SELECT amount::text FROM breakdowns WHERE tenant = 'a' AND value = 'm1'"), "9");
    let without: i64 = pg.query_one("SELECT count(*) FROM tallies WHERE id IS NULL", &[]).unwrap().get(0);
    assert_eq!(without, 0);
}

/// A failed batch drops every counter the store cached, not only those it took: a batch of
/// another tenant whose rows were replaced too then reads them from the table and goes through
/// at its first try.
#[test]
fn a_failed_batch_drops_every_cached_counter() {
    use meter_store::contract::{MID_NOVEMBER, adv, meters, tokens};
    let pg = migrated();
    let s = PgStore::open(pg.clone()).unwrap();
    s.checkpoint("c").unwrap();
    let both = [tokens("a", "a-1", 1, MID_NOVEMBER), tokens("b", "b-1", 1, MID_NOVEMBER)];
    s.apply("c", &meters(), &both, &adv(0, 2)).unwrap();
    pg.execute("CREATE TABLE kept AS SELECT * FROM tallies", &[]).unwrap();
    pg.execute("DELETE FROM tallies", &[]).unwrap();
    pg.execute("INSERT INTO tallies (tenant, meter, bucket, value) SELECT tenant, meter, bucket, value FROM kept", &[])
        .unwrap();
    let a = s.apply("c", &meters(), &[tokens("a", "a-2", 1, MID_NOVEMBER)], &adv(2, 3));
    assert!(matches!(a, Err(meter_store::Error::Replaced { table: "tallies", .. })), "{a:?}");
    let b = s.apply("c", &meters(), &[tokens("b", "b-2", 2, MID_NOVEMBER)], &adv(2, 3));
    assert_eq!(b.unwrap().counted, 1, "b's counters were read again, not rewritten by their old ids");
    let value: String = pg
        .query_one(
            "SELECT value::text FROM tallies WHERE tenant = 'b' AND meter = 'agent_tokens' AND bucket = '2026-11'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(value, "3");
}
