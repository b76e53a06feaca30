//! The live counters in Postgres (`--state postgres://…`): the tables of component `store`,
//! shared by the aggregators of every host.
//!
//! A batch, its dedup rows, its tallies, the alerts it raises and its checkpoint commit in one
//! transaction. The checkpoint moves first, by a compare-and-set on the offsets the batch
//! started from: the rows it updates stay locked until the commit, so a stale owner after a
//! rebalance waits, then finds the offsets moved and commits nothing ([`Error::Fenced`]).
//! A tenant's events are in one partition, so only that partition's owner writes the tenant's
//! tallies: as on SQLite, the batch folds its events into the tallies in Rust with
//! [`Tally::add`] (the one rule for every aggregation kind), reading only the tallies it has not
//! cached since the partition was assigned to it ([`UsageStore::checkpoint`] drops the cache).
//! Alert ids are handed out under an advisory lock, so that their `seq` is in commit order and a
//! reader past one alert never misses an earlier one.

use crate::alerts::{Alert, Allowances, Reached, Suggestion, suggestion_id, thresholds};
use crate::counters::{Cache, Counter, GroupKey, GroupRef, Key, KeyRef};
use crate::limits::{LimitQuery, LimitSnapshot, LimitState};
use crate::{
    Applied, Breakdown, Checkpoint, Coverage, Date, Error, LiveStore, MeterTallies, Metered, PeriodUsage, Progress,
    Series, Totals, UsageStore,
};
use async_trait::async_trait;
use hashbrown::hash_table::{Entry, HashTable};
use hashbrown::{HashMap, HashSet};
use meter_postgres::deadpool_postgres::{Object, Transaction};
use meter_postgres::tokio_postgres::binary_copy::BinaryCopyInWriter;
use meter_postgres::tokio_postgres::types::Type;
use meter_postgres::tokio_postgres::{IsolationLevel, Row};
use meter_postgres::{Pg, lock_key};
use meter_schemas::period::{DAY_US, day_of, format_day, format_time, now_us};
use meter_schemas::{Contribution, MeterDef, Period, Tally};
use meter_sqlite::dedup;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// The component's name in `meter_schema_versions`.
pub const COMPONENT: &str = "store";

/// The `store` component's migrations, in order (version N is the N-th).
pub const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE tallies (
        tenant text COLLATE \"C\" NOT NULL, meter text COLLATE \"C\" NOT NULL, bucket text COLLATE \"C\" NOT NULL,
        value numeric, latest_us bigint, latest_id text COLLATE \"C\",
        PRIMARY KEY (tenant, meter, bucket)
    );
    CREATE INDEX tallies_by_bucket ON tallies (bucket);
    CREATE TABLE uniques (
        tenant text COLLATE \"C\" NOT NULL, meter text COLLATE \"C\" NOT NULL, bucket text COLLATE \"C\" NOT NULL,
        value text COLLATE \"C\" NOT NULL,
        PRIMARY KEY (tenant, meter, bucket, value)
    );
    CREATE TABLE seen (tenant text COLLATE \"C\" NOT NULL, id text COLLATE \"C\" NOT NULL, PRIMARY KEY (tenant, id));
    CREATE TABLE checkpoints (
        consumer text COLLATE \"C\" NOT NULL, partition integer NOT NULL, next_offset bigint NOT NULL,
        watermark_us bigint,
        PRIMARY KEY (consumer, partition)
    );
    CREATE TABLE breakdowns (
        tenant text COLLATE \"C\" NOT NULL, period text COLLATE \"C\" NOT NULL, meter text COLLATE \"C\" NOT NULL,
        property text COLLATE \"C\" NOT NULL, value text COLLATE \"C\" NOT NULL, amount numeric NOT NULL,
        PRIMARY KEY (tenant, period, meter, property, value)
    );
    CREATE TABLE alerts (
        seq bigint PRIMARY KEY, id text COLLATE \"C\" NOT NULL UNIQUE,
        tenant text COLLATE \"C\" NOT NULL, meter text NOT NULL, period text NOT NULL, percent integer NOT NULL,
        threshold text NOT NULL, included text NOT NULL, value text NOT NULL, plan text NOT NULL,
        raised_us bigint NOT NULL, kind text NOT NULL DEFAULT 'usage_threshold', suggested_plan text, saving text
    );
    CREATE INDEX alerts_by_tenant ON alerts (tenant, seq);
",
    "
    -- Accepted events held against their tenant's hard limits until counted, for every host.
    CREATE TABLE limit_holds (
        tenant text COLLATE \"C\" NOT NULL, bucket text COLLATE \"C\" NOT NULL, id text COLLATE \"C\" NOT NULL,
        adds text NOT NULL, accepted_progress bigint NOT NULL, created_us bigint NOT NULL,
        PRIMARY KEY (tenant, bucket, id)
    );
",
    "
    -- Tallies and breakdown amounts are updated in place at every batch: room on each page lets
    -- Postgres keep the new version beside the old one without touching the indexes (HOT).
    ALTER TABLE tallies SET (fillfactor = 50);
    ALTER TABLE breakdowns SET (fillfactor = 50);
",
    "
    -- The ids counted, in arrival partitions (one per quarter of `ingest.dedup_horizon`): recent
    -- inserts stay on the newest partition's pages, and a partition a horizon old is dropped whole.
    -- The ids kept before become the oldest partition, dropped a horizon after this upgrade (when
    -- there are none, as on a new database, the old table goes now).
    ALTER TABLE seen RENAME TO seen_legacy;
    ALTER TABLE seen_legacy RENAME CONSTRAINT seen_pkey TO seen_legacy_pkey;
    ALTER TABLE seen_legacy ADD COLUMN arrived_us bigint NOT NULL DEFAULT 0;
    CREATE TABLE seen (
        tenant text COLLATE \"C\" NOT NULL, id text COLLATE \"C\" NOT NULL, arrived_us bigint NOT NULL
    ) PARTITION BY RANGE (arrived_us);
    -- Each partition's range; `to_us` plus the horizon is when it is dropped.
    CREATE TABLE seen_parts (name text COLLATE \"C\" PRIMARY KEY, from_us bigint NOT NULL, to_us bigint NOT NULL);
    DO $$
    DECLARE upgraded bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    BEGIN
        IF EXISTS (SELECT 1 FROM seen_legacy) THEN
            EXECUTE format('ALTER TABLE seen ATTACH PARTITION seen_legacy FOR VALUES FROM (MINVALUE) TO (%s)', upgraded);
            INSERT INTO seen_parts VALUES ('seen_legacy', -9223372036854775808, upgraded);
        ELSE
            DROP TABLE seen_legacy;
        END IF;
    END $$;
",
    "
    -- A batch rewrites the counters it has cached by their rows' ids: one int8 index probe a row,
    -- and one number sent for its key, rather than a probe on three or five text columns and the
    -- text of each. An id is never changed. Rewriting both tables takes a lock on each until the
    -- migration commits: aggregators and usage reads wait for it.
    ALTER TABLE tallies ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY (CACHE 1000);
    CREATE UNIQUE INDEX tallies_by_id ON tallies (id);
    ALTER TABLE breakdowns ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY (CACHE 1000);
    CREATE UNIQUE INDEX breakdowns_by_id ON breakdowns (id);
",
    "
    -- The ids counted are looked up through a hash of their key, and partitions made from now on
    -- have no primary key: a batch looks its ids up before it inserts them, and the checkpoint's
    -- fence already puts a tenant's writers one after the other, so a B-tree kept sorted for
    -- uniqueness is work no lookup needs (BENCHMARKS.md, `benches/seen_floor.sh`). The index is
    -- built on every partition there is (those keep their primary key) and made on each new one;
    -- building it holds the batches and hard-limit checks of this schema's processes meanwhile.
    -- The table is renamed: a process of an older build, still running through an upgrade, relied
    -- on the primary key of the partition it writes to, which new partitions lack, so its
    -- statements must fail (its batches are tried again until it is replaced) rather than count
    -- an id twice.
    ALTER TABLE seen RENAME TO seen_ids;
    CREATE INDEX seen_by_key ON seen_ids USING hash ((tenant || ':' || id));
",
    "
    -- A partition past its arrivals is sealed: a constraint no row meets refuses every insert
    -- into it from then on, whichever host or build sends it (`NOT VALID`: the rows it holds
    -- stay, and the planner, which only trusts valid constraints, never skips the partition for
    -- it). A filter of its ids is then built once (`meter_sqlite::dedup::Parted`; an empty one
    -- when none could be built) and kept here, and each process asks a sealed partition only
    -- about the ids its filter may hold.
    ALTER TABLE seen_parts ADD COLUMN sealed boolean NOT NULL DEFAULT false, ADD COLUMN filter bytea;
",
];

/// Most tallies kept in memory; past it the cache starts over (the database has every value).
const CACHE_ENTRIES: usize = 500_000;

/// Serialises the writers of alerts, so that `seq` (the last one's plus one, with no gaps) is in
/// commit order.
const ALERTS: &str = "store:alerts";

/// The statements a batch prepares once on each connection (kept in its cache, keyed by their
/// text), named once so that [`PgStore::warm`] prepares the very same ones ahead of the first.
mod sql {
    pub const FENCE_CREATE: &str = "INSERT INTO checkpoints (consumer, partition, next_offset)
             SELECT $1, p, 0 FROM unnest($2::int4[]) AS p ON CONFLICT DO NOTHING";
    pub const FENCE_MOVE: &str =
        "UPDATE checkpoints c SET next_offset = x.to_, watermark_us = GREATEST(c.watermark_us, $5::int8)
             FROM unnest($2::int4[], $3::int8[], $4::int8[]) AS x(p, from_, to_)
             WHERE c.consumer = $1 AND c.partition = x.p AND c.next_offset = x.from_
             RETURNING c.partition";
    pub const FENCE_STAND: &str =
        "SELECT partition, next_offset FROM checkpoints WHERE consumer = $1 AND partition = ANY($2)";
    pub const UNIQUES_INSERT: &str = "INSERT INTO uniques (tenant, meter, bucket, value)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                     ON CONFLICT DO NOTHING RETURNING tenant, meter, bucket, value";
    pub const TALLIES_LOAD: &str = "SELECT t.tenant, t.meter, t.bucket, t.value::text, t.latest_us, t.latest_id, t.id
                 FROM tallies t JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(tenant, meter, bucket)
                   ON t.tenant = k.tenant AND t.meter = k.meter AND t.bucket = k.bucket";
    pub const GROUPS_LOAD: &str = "SELECT b.tenant, b.period, b.meter, b.property, b.value, b.amount::text, b.id
                 FROM breakdowns b
                 JOIN unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS k(t, p, m, pr, v)
                   ON b.tenant = k.t AND b.period = k.p AND b.meter = k.m AND b.property = k.pr AND b.value = k.v";
    pub const TALLIES_INSERT: &str = "INSERT INTO tallies (tenant, meter, bucket, value, latest_us, latest_id)
         SELECT tenant, meter, bucket, value, latest_us, latest_id
         FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::int8[], $6::text[])
              AS k(tenant, meter, bucket, value, latest_us, latest_id)
         ON CONFLICT (tenant, meter, bucket) DO UPDATE
         SET value = excluded.value, latest_us = excluded.latest_us, latest_id = excluded.latest_id
         RETURNING tenant, meter, bucket, id";
    pub const TALLIES_UPDATE: &str =
        "UPDATE tallies t SET value = k.value, latest_us = k.latest_us, latest_id = k.latest_id
         FROM unnest($1::int8[], $2::numeric[], $3::int8[], $4::text[]) AS k(id, value, latest_us, latest_id)
         WHERE t.id = k.id";
    pub const GROUPS_INSERT: &str = "INSERT INTO breakdowns (tenant, period, meter, property, value, amount)
         SELECT t, p, m, pr, v, a
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::numeric[]) AS k(t, p, m, pr, v, a)
         ON CONFLICT (tenant, period, meter, property, value) DO UPDATE SET amount = excluded.amount
         RETURNING tenant, period, meter, property, value, id";
    pub const GROUPS_UPDATE: &str =
        "UPDATE breakdowns b SET amount = k.a FROM unnest($1::int8[], $2::numeric[]) AS k(id, a) WHERE b.id = k.id";
    pub const ALERT_LOCK: &str = "SELECT pg_advisory_xact_lock($1)";
    pub const ALERT_INSERT: &str =
        "INSERT INTO alerts (seq, id, tenant, meter, period, percent, threshold, included, value, plan, raised_us)
             SELECT (SELECT coalesce(max(seq), 0) FROM alerts) + row_number() OVER (ORDER BY n),
                    id, tenant, meter, period, percent, threshold, included, value, plan, $10
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::text[], $7::text[],
                         $8::text[], $9::text[]) WITH ORDINALITY
                  AS a(id, tenant, meter, period, percent, threshold, included, value, plan, n)
             WHERE NOT EXISTS (SELECT 1 FROM alerts x WHERE x.id = a.id)";

    /// Every one of them.
    pub const APPLY: &[&str] = &[
        FENCE_CREATE,
        FENCE_MOVE,
        FENCE_STAND,
        UNIQUES_INSERT,
        TALLIES_LOAD,
        GROUPS_LOAD,
        TALLIES_INSERT,
        TALLIES_UPDATE,
        GROUPS_INSERT,
        GROUPS_UPDATE,
        ALERT_LOCK,
        ALERT_INSERT,
    ];
}

/// `JOIN LATERAL` of the id `TENANT`, `ID` (SQL expressions of the query around it) to one row of
/// `seen_ids` holding it, if any: looked up through the hash index on `tenant:id` (a partition made
/// since schema 6 has no other), each match checked on both columns, once however many rows hold
/// it, in the partitions whose arrivals are below `BELOW` and either below `BEFORE` or from
/// `FROM` (a range the planner prunes partitions with). The one spelling of that lookup, so that
/// every caller's expression is the index's.
macro_rules! seen_lateral {
    ($tenant:literal, $id:literal, $before:literal, $from:literal, $below:literal) => {
        concat!(
            " JOIN LATERAL (SELECT 1 FROM seen_ids s WHERE (s.tenant || ':' || s.id) = (",
            $tenant,
            " || ':' || ",
            $id,
            ") AND s.tenant = ",
            $tenant,
            " AND s.id = ",
            $id,
            " AND (s.arrived_us < ",
            $before,
            " OR s.arrived_us >= ",
            $from,
            ") AND s.arrived_us < ",
            $below,
            " LIMIT 1) f ON true"
        )
    };
}

/// Which of the ids `$2` of tenant `$1` are counted.
const SEEN_OF_TENANT: &str = concat!(
    "SELECT x.id FROM unnest($2::text[]) AS x(id)",
    seen_lateral!("$1::text", "x.id", "-9223372036854775808", "-9223372036854775808", "9223372036854775807")
);

/// Serialises the creation and dropping of `seen_ids`'s arrival partitions, on every host.
const SEEN_PARTS: &str = "store:seen-parts";

/// The live counters in Postgres.
pub struct PgStore {
    pg: Arc<Pg>,
    /// Held by the batch being applied, from its first statement to its commit.
    applying: Mutex<()>,
    /// The committed tallies, added to in place by each batch (emptied when one fails).
    cache: Mutex<Cache<Key>>,
    /// The committed breakdown amounts, as `cache`.
    group_cache: Mutex<Cache<GroupKey>>,
    allowances: RwLock<Option<Arc<dyn Allowances>>>,
    /// Ids of alerts known to be raised, so that a counter above its thresholds costs no write.
    raised: Mutex<std::collections::HashSet<String>>,
    /// Counts writes of this process that raised an alert; other hosts' dispatchers poll.
    alerted: tokio::sync::watch::Sender<u64>,
    /// How long counted ids are kept, and how wide an arrival partition of `seen_ids` is.
    dedup: dedup::Settings,
    /// When (µs) the next batch makes room first ([`PgStore::make_room`]): a partition's width
    /// before the end of the newest one, when the oldest open one is due to be sealed, or soon
    /// while a sealed one's filter is still to be read; `i64::MIN` when a batch found its
    /// partition sealed.
    room_at: AtomicI64,
    /// The arrival partitions as `make_room` last read them, by `from`. A partition's range never
    /// changes, and once sealed it takes no more ids, so the one a batch writes to is found here
    /// when this process has read it (else every partition is looked up), and a sealed one's
    /// filter stays true until the partition is dropped.
    parts: Mutex<Arc<Vec<Part>>>,
    /// Whether this process is building a sealed partition's filter ([`PgStore::build_filter`]).
    building: Arc<std::sync::atomic::AtomicBool>,
    /// When (µs) this process may start building a filter again after a failed build.
    build_after: Arc<AtomicI64>,
}

/// An arrival partition of `seen_ids`.
struct Part {
    name: String,
    from: i64,
    to: i64,
    sealed: bool,
    filter: Filter,
}

/// What this process knows of a partition's filter.
#[derive(Clone)]
enum Filter {
    /// None yet: the partition is open, or its filter is still to be built or read.
    Pending,
    /// None will be: none could be built or read, and the partition is always asked.
    Unusable,
    /// Its ids' filter, read once: the partition is asked only about the ids it may hold.
    Built(Arc<dedup::Parted>),
}

/// When a batch arrives: the time it is stamped with, and the range of the partition that time
/// falls in, when this process knows it. `None` is always safe: the batch's ids are then looked
/// up in every partition, the one they go to included. The partitions as the process knows
/// them, whose filters spare the lookup of most ids the sealed ones.
struct Arrival {
    at_us: i64,
    part: Option<(i64, i64)>,
    parts: Arc<Vec<Part>>,
}

/// How long after its last arrival a partition is sealed (a sixteenth of its width, at most a
/// minute): past it, a batch stamped with an earlier time (a host whose clock is behind, a batch
/// slow to commit) goes to the next partition, or fails once and is tried again when this
/// process had not yet read that it is sealed. Also how often a process reads whether a sealed
/// partition's filter is ready.
fn seal_after(width_us: i64) -> i64 {
    (width_us / 16).clamp(1, 60_000_000)
}

impl PgStore {
    /// The tables on `pg`, refused unless `meter migrate` has brought them to this build's version;
    /// counted ids are kept for the default horizon.
    pub fn open(pg: Arc<Pg>) -> Result<Self, Error> {
        Self::open_with(pg, dedup::Settings::new(meter_schemas::envelope::DEDUP_HORIZON_US))
    }

    /// As [`PgStore::open`], keeping counted ids as `dedup` says (a horizon at least the lateness
    /// window plus `ingest.max_future`; the configuration checks it).
    pub fn open_with(pg: Arc<Pg>, dedup: dedup::Settings) -> Result<Self, Error> {
        meter_postgres::check(&pg, COMPONENT, MIGRATIONS.len() as i64)?;
        let store = Self {
            pg,
            applying: Mutex::new(()),
            cache: Mutex::default(),
            group_cache: Mutex::default(),
            allowances: RwLock::new(None),
            raised: Mutex::new(std::collections::HashSet::new()),
            alerted: tokio::sync::watch::Sender::new(0),
            dedup,
            room_at: AtomicI64::new(i64::MIN),
            parts: Mutex::default(),
            building: Arc::default(),
            build_after: Arc::default(),
        };
        store.warm();
        Ok(store)
    }

    /// Readies a fresh process for its first batch, which otherwise waited for both: makes the
    /// arrival partitions of `seen_ids` for now and the next, and prepares the batch's statements
    /// on a connection (the pool hands out the one given back last, so the first batch gets
    /// it). A failure is only logged: the first batch does both itself.
    fn warm(&self) {
        let started = std::time::Instant::now();
        let warmed = self.pg.block(async {
            let mut client = self.pg.client().await?;
            self.make_room(&mut client, now_us()).await?;
            for statement in sql::APPLY {
                client.prepare_cached(statement).await?;
            }
            Ok::<_, Error>(())
        });
        match warmed {
            Ok(()) => tracing::debug!(took = ?started.elapsed(), "live counters ready for the first batch"),
            Err(e) => tracing::warn!(error = %e, "readying the live counters failed; the first batch does it"),
        }
    }

    /// The arrival time of a batch committed now, making room for it first when it is due: a
    /// time in the oldest partition still open, and whether its ids need a sealed partition.
    async fn arrival(&self, client: &mut Object) -> Arrival {
        let now = now_us();
        if now >= self.room_at.load(Ordering::Relaxed) {
            // A failure leaves the partition `now` falls in, when there is one, to the batch;
            // when there is none, the batch fails and is tried again.
            if let Err(e) = self.make_room(client, now).await {
                // Not at every batch: each attempt may wait a second for the lock on `seen_ids`,
                // and batches queue behind it meanwhile.
                let retry = seal_after(self.dedup.bucket_us()).min(MAKE_ROOM_RETRY_US);
                self.room_at.store(now.saturating_add(retry), Ordering::Relaxed);
                tracing::warn!(error = %e, "making room for the ids counted failed; trying again in a few seconds");
            }
        }
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // A sealed partition takes no more ids: a batch stamped within one (this host's clock is
        // behind the one that sealed it) goes to the oldest open one after it.
        let part = parts.iter().find(|p| p.to > now && !p.sealed).map(|p| (p.from, p.to));
        let at_us = part.map_or(now, |(from, _)| now.max(from));
        let part = part.filter(|(from, to)| (*from..*to).contains(&at_us));
        Arrival { at_us, part, parts }
    }

    /// Makes the arrival partitions of `seen_ids` for `now` and the next one, seals those whose
    /// last arrival is past ([`seal_after`]) and drops those whose last arrival is a horizon old:
    /// in one transaction, one host at a time. Then reads the filters of sealed partitions it
    /// has not read, and starts building one that no host has built ([`PgStore::build_filter`]).
    async fn make_room(&self, client: &mut Object, now: i64) -> Result<(), Error> {
        let width = self.dedup.bucket_us();
        let tx = client.transaction().await?;
        // Changing the partitions waits for the batches in flight; never for long.
        tx.batch_execute("SET LOCAL lock_timeout = '1s'").await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(SEEN_PARTS)]).await?;
        let names = async |sql: &str, at: i64| -> Result<Vec<String>, Error> {
            Ok(tx.query(sql, &[&at]).await?.iter().map(|r| r.get(0)).collect())
        };
        let sealing = names(
            "SELECT name FROM seen_parts WHERE NOT sealed AND to_us <= $1 ORDER BY from_us",
            now - seal_after(width),
        )
        .await?;
        let old = names("SELECT name FROM seen_parts WHERE to_us <= $1 ORDER BY from_us", now - self.dedup.horizon_us)
            .await?;
        let current = now - now.rem_euclid(width);
        let newest: Option<i64> = tx.query_one("SELECT max(to_us) FROM seen_parts", &[]).await?.get(0);
        // Partitions are contiguous: after a pause, the first new one reaches back to the last.
        let mut to = newest.unwrap_or(current);
        let mut new = Vec::new();
        while to < current + 2 * width {
            let from = to;
            to = (from + width).max(current + width);
            new.push((from, to));
        }
        if !(sealing.is_empty() && old.is_empty() && new.is_empty()) {
            // Every change locks `seen_ids` first (a partition made or dropped takes that lock
            // anyway), waiting for the batches and hard-limit checks in flight, which lock it
            // before its partitions: a lock taken on a partition first would wait for a lookup
            // that waits for it. Only the parent: a partition's own readers (a filter's build, a
            // read at a time; autovacuum) do not hold it. Sealing then waits for no batch:
            // `CHECK (false)` refuses every later insert into the partition, so the filter built
            // after it holds every id.
            tx.batch_execute("LOCK TABLE ONLY seen_ids IN ACCESS EXCLUSIVE MODE").await?;
        }
        for name in &sealing {
            seal(&tx, name).await?;
        }
        for &(from, to) in &new {
            create_part(&tx, from, to).await?;
        }
        for name in &old {
            tx.execute("DELETE FROM seen_parts WHERE name = $1", &[name]).await?;
            tx.batch_execute(&format!("DROP TABLE IF EXISTS {name}")).await?;
        }
        let rows = tx
            .query("SELECT name, from_us, to_us, sealed, filter IS NOT NULL FROM seen_parts ORDER BY from_us", &[])
            .await?;
        tx.commit().await?;
        if !sealing.is_empty() {
            tracing::info!(sealed = sealing.len(), "sealed the arrival partitions of counted ids past their arrivals");
        }
        if !old.is_empty() {
            tracing::info!(dropped = old.len(), "dropped the ids counted more than a dedup horizon ago");
        }

        // The filters known already are kept; those built since are read, once each.
        let known = self.parts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut parts = Vec::with_capacity(rows.len());
        let mut unbuilt = None;
        for r in &rows {
            let (name, from, to, sealed, built): (String, i64, i64, bool, bool) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            let filter = match known.iter().find(|p| p.name == name).map(|p| &p.filter) {
                Some(f @ (Filter::Built(_) | Filter::Unusable)) => f.clone(),
                _ if sealed && built => read_filter(client, &name).await,
                _ => Filter::Pending,
            };
            if sealed && !built {
                unbuilt.get_or_insert(name.clone());
            }
            parts.push(Part { name, from, to, sealed, filter });
        }
        if let Some(name) = unbuilt {
            self.build_filter(name);
        }
        let recheck = seal_after(width);
        let room_at = parts
            .iter()
            .filter_map(|p| match (p.sealed, &p.filter) {
                (false, _) => Some(p.to + recheck),
                (true, Filter::Pending) => Some(now + recheck),
                (true, _) => None,
            })
            .chain([to - width])
            .min()
            .unwrap_or(i64::MAX);
        *self.parts.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(parts);
        self.room_at.store(room_at, Ordering::Relaxed);
        Ok(())
    }

    /// Starts building the filter of the ids of sealed partition `name` and keeping it in
    /// `seen_parts` (an empty one when none can be built: the partition is then always asked),
    /// unless this process is building one already, or one failed here less than
    /// [`FILTER_RETRY_US`] ago; the next batch to make room reads it. The reads and writes run on
    /// the pool's runtime, the fingerprints, sorting and filters on blocking threads, so that the
    /// batches' statements are not held. One host builds a filter at a time (a lock on its
    /// name); a host that dies building it leaves it to the next that makes room.
    fn build_filter(&self, name: String) {
        use std::sync::atomic::Ordering::SeqCst;
        if now_us() < self.build_after.load(SeqCst) || self.building.swap(true, SeqCst) {
            return;
        }
        /// Lets the next build start however this one ends; after a panic, a retry delay later.
        struct Done(Arc<std::sync::atomic::AtomicBool>, Arc<AtomicI64>);
        impl Drop for Done {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.1.store(now_us().saturating_add(FILTER_RETRY_US), SeqCst);
                }
                self.0.store(false, SeqCst);
            }
        }
        let after = self.build_after.clone();
        let (pg, done) = (self.pg.clone(), Done(self.building.clone(), after.clone()));
        // On the pool's runtime: `make_room` runs inside `Pg::block`.
        tokio::spawn(async move {
            let _done = done;
            let started = std::time::Instant::now();
            match filter_of_partition(&pg, &name, (dedup::GROUP_PART, FILTER_PASS_IDS)).await {
                Ok(Some(ids)) => {
                    tracing::info!(partition = %name, ids, took = ?started.elapsed(), "built the filter of a sealed partition of counted ids")
                }
                Ok(None) => tracing::debug!(partition = %name, "another host builds the filter of a sealed partition"),
                Err(e) => {
                    after.store(now_us().saturating_add(FILTER_RETRY_US), SeqCst);
                    tracing::warn!(partition = %name, error = %e, "building the filter of a sealed partition of counted ids failed; it is tried again in a minute")
                }
            }
        });
    }

    /// Builds, here and now, the filter of every sealed arrival partition on `pg` that has none
    /// yet (batches build them in the background, one at a time), for processes that open the
    /// store after it; answers how many were built. For tools and benchmarks.
    pub fn build_filters(pg: &Pg) -> Result<usize, Error> {
        Self::build_filters_in(pg, (dedup::GROUP_PART, FILTER_PASS_IDS))
    }

    /// As [`PgStore::build_filters`], each filter in parts of about `part_ids` ids, its build
    /// reading the partition once for about each `pass_ids` of them (so that tests see several).
    #[doc(hidden)]
    pub fn build_filters_in(pg: &Pg, (part_ids, pass_ids): (usize, usize)) -> Result<usize, Error> {
        pg.block(async {
            let names: Vec<String> = pg
                .client()
                .await?
                .query("SELECT name FROM seen_parts WHERE sealed AND filter IS NULL ORDER BY from_us", &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut built = 0;
            for name in &names {
                built += usize::from(filter_of_partition(pg, name, (part_ids, pass_ids)).await?.is_some());
            }
            Ok(built)
        })
    }

    /// Makes arrival partition `[from, to)` of `seen_ids` as making room does, for tests and
    /// benchmarks that need partitions of the past; answers its name.
    #[doc(hidden)]
    pub fn make_partition(pg: &Pg, (from, to): (i64, i64)) -> Result<String, Error> {
        pg.block(async {
            let mut client = pg.client().await?;
            let tx = client.transaction().await?;
            let name = create_part(&tx, from, to).await?;
            tx.commit().await?;
            Ok(name)
        })
    }

    /// Seals arrival partition `name` as making room does, for tests and benchmarks.
    #[doc(hidden)]
    pub fn seal_partition(pg: &Pg, name: &str) -> Result<(), Error> {
        pg.block(async {
            let mut client = pg.client().await?;
            let tx = client.transaction().await?;
            seal(&tx, name).await?;
            Ok(tx.commit().await?)
        })
    }

    /// Creates or upgrades the tables (`meter migrate`).
    pub fn migrate(pg: &Pg) -> Result<i64, Error> {
        Ok(meter_postgres::migrate(pg, COMPONENT, MIGRATIONS)?)
    }

    /// Counts `new` alerts of `kind` just committed and wakes this process's subscribers.
    fn announce(&self, kind: &'static str, new: usize) {
        if new > 0 {
            metrics::counter!(crate::alerts::metric::RAISED, "kind" => kind).increment(new as u64);
            self.alerted.send_modify(|n| *n += 1);
        }
    }

    fn allowances(&self) -> Option<Arc<dyn Allowances>> {
        self.allowances.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Drops the cached counters: the next batch reads those it adds to from the table.
    fn forget(&self) {
        Cache::lock(&self.cache).clear();
        Cache::lock(&self.group_cache).clear();
    }

    fn known(&self) -> std::collections::HashSet<String> {
        self.raised.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl From<meter_postgres::tokio_postgres::Error> for Error {
    fn from(e: meter_postgres::tokio_postgres::Error) -> Self {
        Error::Postgres(e.into())
    }
}

fn decimal(text: Option<&str>, what: &str) -> Result<Option<Decimal>, Error> {
    text.map(|t| Decimal::from_str(t).map_err(|_| Error::Unreadable(format!("{what} {t:?}")))).transpose()
}

/// A tally from `value::text, latest_us, latest_id` at column `first`.
fn tally(r: &Row, first: usize) -> Result<Tally, Error> {
    let value = decimal(r.get(first), "tally value")?;
    let latest_us: Option<i64> = r.get(first + 1);
    let latest_id: Option<String> = r.get(first + 2);
    Ok(Tally { value, latest: latest_us.zip(latest_id) })
}

/// Writes `reached` alerts not raised before (under the alerts' lock); returns the ids now
/// known to be raised and how many were raised now.
async fn raise(tx: &Transaction<'_>, reached: Vec<Reached>) -> Result<(Vec<String>, usize), Error> {
    if reached.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let lock = tx.prepare_cached(sql::ALERT_LOCK).await?;
    let insert = tx.prepare_cached(sql::ALERT_INSERT).await?;
    let col = |f: fn(&Reached) -> &str| reached.iter().map(f).collect::<Vec<_>>();
    let (ids, tenants, meters, periods) = (col(|r| &r.id), col(|r| &r.tenant), col(|r| &r.meter), col(|r| &r.period));
    let (thresholds, included, values, plans) =
        (col(|r| &r.threshold), col(|r| &r.included), col(|r| &r.value), col(|r| &r.plan));
    let percents: Vec<i32> = reached.iter().map(|r| r.percent as i32).collect();
    let (key, now) = (lock_key(ALERTS), now_us());
    // The lock, then the insert behind it, in one round trip (Postgres runs them in order; the
    // lock's error, if any, is the cause).
    let (locked, new) = tokio::join!(biased; async { tx.execute(&lock, &[&key]).await }, async {
        tx.execute(
            &insert,
            &[&ids, &tenants, &meters, &periods, &percents, &thresholds, &included, &values, &plans, &now],
        )
        .await
    });
    locked?;
    Ok((reached.into_iter().map(|r| r.id).collect(), new? as usize))
}

/// Moves every partition of `progress` from its `from` to its `to`, or fails with
/// [`Error::Fenced`] naming the first partition that is elsewhere; the rows stay locked until
/// the transaction ends. `then`'s first statement is sent behind the fence's without waiting for
/// them (one round trip for all; Postgres runs them in order); its later ones follow its replies. A fenced batch's
/// `then` has run too, holding the checkpoint rows until the caller rolls the transaction back.
async fn fenced<T>(
    tx: &Transaction<'_>,
    consumer: &str,
    progress: &Progress,
    then: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let parts: Vec<i32> = progress.partitions.iter().map(|a| a.partition as i32).collect();
    let from: Vec<i64> = progress.partitions.iter().map(|a| a.from as i64).collect();
    let to: Vec<i64> = progress.partitions.iter().map(|a| a.to as i64).collect();
    let create = tx.prepare_cached(sql::FENCE_CREATE).await?;
    let cas = tx.prepare_cached(sql::FENCE_MOVE).await?;
    // Where each partition stands after the move (this transaction's offsets where it moved,
    // the other owner's where it did not): read behind the move, so after any wait for its rows.
    let stand = tx.prepare_cached(sql::FENCE_STAND).await?;
    // Each query is sent at its first poll, and `biased` polls in order: create, move, stand,
    // then. Postgres runs them in that order, each with a snapshot taken when it starts, so
    // `then` sees what the owner before this one committed (never merge it into the move's
    // statement: a statement's snapshot is taken before its waits). Once one fails, the ones
    // behind it fail with "current transaction is aborted": the results are read in order, so
    // the error returned is the cause, and a fenced batch is `Fenced` whatever `then` did.
    let (created, moved, stood, out) = tokio::join!(
        biased;
        async { tx.execute(&create, &[&consumer, &parts]).await },
        async { tx.query(&cas, &[&consumer, &parts, &from, &to, &progress.watermark_us]).await },
        async { tx.query(&stand, &[&consumer, &parts]).await },
        then,
    );
    created?;
    let moved = moved?;
    let stood = stood?;
    if moved.len() == parts.len() {
        return out;
    }
    let moved: HashSet<i32> = moved.iter().map(|r| r.get(0)).collect();
    let a = progress.partitions.iter().find(|a| !moved.contains(&(a.partition as i32))).expect("a partition not moved");
    let stored: i64 = stood
        .iter()
        .find(|r| r.get::<_, i32>(0) == a.partition as i32)
        .map(|r| r.get(1))
        .ok_or_else(|| Error::Unreadable(format!("partition {} has no checkpoint row", a.partition)))?;
    Err(Error::Fenced { partition: a.partition, stored: stored as u64, from: a.from })
}

/// What a batch changes, folded in Rust (added to the cached counters in place) before it is
/// written.
struct Folded {
    applied: Applied,
    /// The tallies the batch added to.
    tallies: Writes<Key>,
    /// The breakdown amounts the batch added to.
    groups: Writes<GroupKey>,
    /// The alert thresholds its tallies reached.
    reached: Vec<Reached>,
}

/// The counters a batch touched, as its statements send them: those with a row rewritten by its
/// id, the others (no row yet) inserted, in key order, and given their new rows' ids once written.
struct Writes<K> {
    ids: Vec<i64>,
    values: Vec<Option<Decimal>>,
    /// Each rewritten tally's latest value's time and id (`latest` meters); none for breakdowns.
    latest_us: Vec<Option<i64>>,
    latest_id: Vec<Option<String>>,
    new: Vec<(K, Tally)>,
}

impl<K: std::hash::Hash + Eq + Ord + Clone> Writes<K> {
    /// The counters this batch touched in `cache`, copied out (a key only when its row is new),
    /// with their latest values when `latest` (tallies; a breakdown keeps an amount only).
    fn of(cache: &mut Cache<K>, latest: bool) -> Result<Self, Error> {
        let mut w = Writes {
            ids: Vec::new(),
            values: Vec::new(),
            latest_us: Vec::new(),
            latest_id: Vec::new(),
            new: Vec::new(),
        };
        cache.write_touched(|key, c| {
            match c.id {
                Some(id) if latest => {
                    w.ids.push(id);
                    w.values.push(c.tally.value);
                    w.latest_us.push(c.tally.latest.as_ref().map(|l| l.0));
                    w.latest_id.push(c.tally.latest.as_ref().map(|l| l.1.clone()));
                }
                Some(id) => {
                    w.ids.push(id);
                    w.values.push(Some(c.tally.value.unwrap_or_default()));
                }
                None => w.new.push((key.clone(), c.tally.clone())),
            }
            Ok(())
        })?;
        Ok(w)
    }
}

/// Makes arrival partition `[from, to)` of `seen_ids` and records it; answers its name.
async fn create_part(tx: &Transaction<'_>, from: i64, to: i64) -> Result<String, Error> {
    let name = format!("seen_{from}");
    tx.batch_execute(&format!("CREATE TABLE {name} PARTITION OF seen_ids FOR VALUES FROM ({from}) TO ({to})")).await?;
    tx.execute("INSERT INTO seen_parts (name, from_us, to_us) VALUES ($1, $2, $3)", &[&name, &from, &to]).await?;
    Ok(name)
}

/// Seals arrival partition `name`: no insert into it succeeds once `tx` commits (`NOT VALID`: its
/// rows stay, and the planner never skips it for the constraint).
async fn seal(tx: &Transaction<'_>, name: &str) -> Result<(), Error> {
    tx.execute("UPDATE seen_parts SET sealed = true WHERE name = $1", &[&name]).await?;
    tx.batch_execute(&format!("ALTER TABLE {name} ADD CONSTRAINT {name}_sealed CHECK (false) NOT VALID")).await?;
    Ok(())
}

/// Pages of a partition a filter's build reads at a time (about 55,000 ids), each read a
/// statement of its own: a lock on `seen_ids` is held for one read (milliseconds), never for the
/// whole build, which would keep a host making room waiting until it times out.
const FILTER_SCAN_PAGES: i64 = 512;

/// Ids at most in a sealed partition that gets a filter: a larger one is always asked. Each
/// process keeps a filter in memory, about 1.1 bytes an id (110 MB at the limit).
const FILTER_MAX_IDS: i64 = 100_000_000;

/// Fingerprints a filter's build holds at once, about (8 bytes each: 128 MB): a larger partition
/// is read once for each this many of its ids, each pass keeping those of a range of the
/// filter's parts.
const FILTER_PASS_IDS: usize = 1 << 24;

/// How long after a failed build of a filter a process starts none (µs).
const FILTER_RETRY_US: i64 = 60_000_000;

/// How long after a failure to make room a process tries again at most (µs).
const MAKE_ROOM_RETRY_US: i64 = 5_000_000;

/// Reads the ids of sealed partition `name`, builds their filter and keeps it in `seen_parts`
/// (an empty one when none can be built, or the partition holds more than [`FILTER_MAX_IDS`]),
/// unless one is kept already, in parts of about `part_ids` ids and passes of about `pass_ids`;
/// answers how many ids, or none when another host is building it or has built it. The
/// connection that holds the lock is taken out
/// of the pool, so that the lock held while building goes with it however the build ends.
async fn filter_of_partition(
    pg: &Pg,
    name: &str,
    (part_ids, pass_ids): (usize, usize),
) -> Result<Option<usize>, Error> {
    let pooled = pg.client().await?;
    let key = lock_key(&format!("store:seen-filter:{name}"));
    if !pooled.query_one("SELECT pg_try_advisory_lock($1)", &[&key]).await?.get::<_, bool>(0) {
        return Ok(None);
    }
    let client = Object::take(pooled);
    let pending: Option<bool> = client
        .query_opt("SELECT filter IS NULL FROM seen_parts WHERE name = $1 AND sealed", &[&name])
        .await?
        .map(|r| r.get(0));
    if pending != Some(true) {
        return Ok(None);
    }
    // Read by ranges of pages (a sealed partition does not change): counted, then read once a
    // pass.
    let pages: i64 = client
        .query_one("SELECT pg_relation_size($1::text::regclass) / current_setting('block_size')::int8", &[&name])
        .await?
        .get(0);
    let ranges: Vec<(String, String)> = (0..pages)
        .step_by(FILTER_SCAN_PAGES as usize)
        .map(|p| (format!("({p},0)"), format!("({},0)", p + FILTER_SCAN_PAGES)))
        .collect();
    let within = "WHERE ctid >= $1::text::tid AND ctid < $2::text::tid";
    let count = client.prepare(&format!("SELECT count(*) FROM {name} {within}")).await?;
    let scan = client.prepare(&format!("SELECT tenant, id FROM {name} {within}")).await?;
    let mut ids = 0i64;
    for (from, to) in &ranges {
        ids += client.query_one(&count, &[from, to]).await?.get::<_, i64>(0);
    }
    let failed = |e: tokio::task::JoinError| Error::Unreadable(format!("building the filter of {name}: {e}"));
    let filter = match ids > FILTER_MAX_IDS {
        true => {
            tracing::warn!(partition = %name, ids, max = FILTER_MAX_IDS, "a sealed partition of counted ids holds too many for a filter; it is always asked");
            Vec::new()
        }
        false => {
            let ids = ids as usize;
            let mut build = dedup::Parted::build(ids, part_ids);
            let parts = build.parts();
            let per_pass = (parts * pass_ids / ids.max(1)).clamp(1, parts);
            let mut built = true;
            for lo in (0..parts).step_by(per_pass) {
                let hi = (lo + per_pass).min(parts);
                let expected = ids * (hi - lo) / parts;
                let mut fps: Vec<u64> = Vec::with_capacity(expected + expected / 8);
                for (from, to) in &ranges {
                    let rows = client.query(&scan, &[from, to]).await?;
                    let (range, parting) = (lo..hi, build.parting());
                    fps = tokio::task::spawn_blocking(move || {
                        let read = rows.iter().map(|r| dedup::fingerprint(r.get(0), r.get(1)));
                        fps.extend(read.filter(|&fp| range.contains(&parting.part(fp))));
                        fps
                    })
                    .await
                    .map_err(failed)?;
                }
                let added;
                (build, added) = tokio::task::spawn_blocking(move || {
                    fps.sort_unstable();
                    fps.dedup();
                    let added = build.add(&fps, hi);
                    (build, added)
                })
                .await
                .map_err(failed)?;
                if !added {
                    built = false;
                    break;
                }
            }
            tokio::task::spawn_blocking(move || {
                build.finish().filter(|_| built).map(|f| f.encode()).unwrap_or_default()
            })
            .await
            .map_err(failed)?
        }
    };
    client
        .execute("UPDATE seen_parts SET filter = $2 WHERE name = $1 AND sealed AND filter IS NULL", &[&name, &filter])
        .await?;
    Ok(Some(ids as usize))
}

/// The filter kept for sealed partition `name`: unusable (always asked) when none could be
/// built or it cannot be decoded; pending (read again soon) when it cannot be read now.
async fn read_filter(client: &Object, name: &str) -> Filter {
    let blob: Option<Vec<u8>> = match client.query_opt("SELECT filter FROM seen_parts WHERE name = $1", &[&name]).await
    {
        Ok(Some(r)) => r.get(0),
        Ok(None) => return Filter::Pending,
        Err(e) => {
            tracing::warn!(partition = %name, error = %e, "reading the filter of a sealed partition of counted ids failed; read again soon");
            return Filter::Pending;
        }
    };
    let Some(blob) = blob else { return Filter::Pending };
    // Up to about 110 MB checked and copied: off the pool's runtime thread.
    let decoded = match tokio::task::spawn_blocking(move || dedup::Parted::decode(&blob).map_err(str::to_string)).await
    {
        Ok(decoded) => decoded,
        Err(e) => Err(e.to_string()),
    };
    match decoded {
        Ok(Some(f)) => Filter::Built(Arc::new(f)),
        Ok(None) => Filter::Unusable,
        Err(why) => {
            tracing::warn!(partition = %name, %why, "the filter of a sealed partition of counted ids cannot be read; the partition is always asked");
            Filter::Unusable
        }
    }
}

/// Which of the ids `tenants`, `ids` (one of each per id) are counted in the partitions whose
/// arrivals are below `below` and either below `before` or from `from`: as `(tenant, id)` rows.
async fn seen_among(
    tx: &Transaction<'_>,
    tenants: &[&str],
    ids: &[&str],
    (before, from, below): (i64, i64, i64),
) -> Result<Vec<Row>, Error> {
    Ok(tx
        .query_typed(
            concat!(
                "SELECT x.tenant, x.id FROM unnest($1::text[], $2::text[]) AS x(tenant, id)",
                seen_lateral!("x.tenant", "x.id", "$3", "$4", "$5")
            ),
            &[
                (&tenants, Type::TEXT_ARRAY),
                (&ids, Type::TEXT_ARRAY),
                (&before, Type::INT8),
                (&from, Type::INT8),
                (&below, Type::INT8),
            ],
        )
        .await?)
}

impl PgStore {
    /// Inserts the first copy of each `(tenant, id)` of `events` never counted before; answers,
    /// for each event, whether it is one of those (counted).
    ///
    /// Called behind the fence ([`fenced`]): a `(tenant, id)` is only ever in one partition of
    /// the log (partitions are by tenant), whose owners' batches the fence's row locks put one
    /// after the other, so no other transaction writes one of this batch's ids while it runs, and
    /// what earlier owners wrote is in every statement's snapshot here. The ids are looked up
    /// first, through `seen_ids`'s hash index on `tenant:id` (each match checked on both columns),
    /// and those not found go in with a binary `COPY` (the server writes the table's rows a page
    /// at a time, where an `INSERT` writes and logs each row alone; index entries one by one
    /// either way). Measured alone, a lookup and a plain `INSERT` were a quarter less of the
    /// server's time an id than `INSERT … ON CONFLICT DO NOTHING` on a primary key, whose
    /// speculative insert looks up and writes each id twice, and the hash index, with no primary
    /// key beside it, a quarter less again (`benches/seen_floor.sh`); `COPY` is a fifth less
    /// again (BENCHMARKS.md). Partitions made before the hash index keep their primary key, which
    /// would refuse a duplicate id there (the batch fails whole and is applied again); newer ones
    /// have nothing to refuse one, so the fence is what keeps an id counted once.
    async fn insert_ids(
        &self,
        tx: &Transaction<'_>,
        events: &[Metered],
        arrival: &Arrival,
    ) -> Result<Vec<bool>, Error> {
        let key = |i: u32| {
            let e = &events[i as usize];
            (e.tenant.as_str(), e.id.as_str())
        };
        // The batch's first copy of each id, in the batch's order (a hash index has no order to
        // keep): one hash of each event's key, compared on a match.
        let hasher = hashbrown::DefaultHashBuilder::default();
        let hash = |i: u32| hasher.hash_one(key(i));
        let mut kept: HashTable<u32> = HashTable::with_capacity(events.len());
        let mut firsts: Vec<u32> = Vec::with_capacity(events.len());
        for i in 0..events.len() as u32 {
            if let Entry::Vacant(v) = kept.entry(hash(i), |&j| key(j) == key(i), |&j| hash(j)) {
                v.insert(i);
                firsts.push(i);
            }
        }
        let mut counted = vec![false; events.len()];
        if firsts.is_empty() {
            return Ok(counted);
        }
        // Each id is looked up by its key (a lateral `LIMIT 1`, never a hash join over all the ids
        // kept). The lookups are unnamed, so planned at each batch for the partitions as they
        // are now (a plan cached while the newest partition was small would scan it whole for
        // every id once it is not), and sent with their parameters' types, with no round trip to
        // prepare them. Partitions after the one this batch writes to hold ids only if a host's
        // clock ran ahead of this one's: they are looked in only then (a lookup in an empty
        // partition still costs each id an index descent), which one query says.
        let below = match arrival.part {
            Some((_, to)) => {
                let later: bool = tx
                    .query_typed_one(
                        "SELECT EXISTS (SELECT 1 FROM seen_ids WHERE arrived_us >= $1)",
                        &[(&to, Type::INT8)],
                    )
                    .await?
                    .get(0);
                if later { i64::MAX } else { to }
            }
            None => i64::MAX,
        };
        // A sealed partition takes no more ids, so its filter stays true: the newest run of
        // sealed partitions with a filter is asked only about the ids the filters may hold
        // (those counted there, and a few in a thousand others), in a lookup of every partition
        // sent with the one of the other ids, which asks every partition but those (a range the
        // planner prunes them with). Each partition asked costs each id an index descent
        // (BENCHMARKS.md). Partitions before the run (one without a filter, as the table kept
        // from before the partitions, or one too large) are asked about every id.
        let parts = &arrival.parts;
        let built = |p: &Part| matches!(p.filter, Filter::Built(_));
        let run = match parts.iter().rposition(built) {
            Some(last) => parts[..=last].iter().rposition(|p| !built(p)).map_or(0, |i| i + 1)..last + 1,
            None => 0..0,
        };
        let filters: Vec<&dedup::Parted> = parts[run.clone()]
            .iter()
            .filter_map(|p| match &p.filter {
                Filter::Built(f) => Some(&**f),
                Filter::Pending | Filter::Unusable => None,
            })
            .collect();
        let (before, from) = match run.is_empty() {
            true => (i64::MIN, i64::MIN),
            false => (parts[run.start].from, parts[run.end - 1].to),
        };
        let (mut tenants, mut ids) = (Vec::with_capacity(firsts.len()), Vec::with_capacity(firsts.len()));
        let (mut maybe_tenants, mut maybe_ids) = (Vec::new(), Vec::new());
        for &i in &firsts {
            let (tenant, id) = key(i);
            let fp = (!filters.is_empty()).then(|| dedup::fingerprint(tenant, id));
            match fp.is_some_and(|fp| filters.iter().any(|f| f.contains(fp))) {
                true => (maybe_tenants.push(tenant), maybe_ids.push(id)),
                false => (tenants.push(tenant), ids.push(id)),
            };
        }
        let (found, found_maybe) = match maybe_ids.is_empty() {
            true => (seen_among(tx, &tenants, &ids, (before, from, below)).await?, Vec::new()),
            false => tokio::try_join!(
                seen_among(tx, &tenants, &ids, (before, from, below)),
                seen_among(tx, &maybe_tenants, &maybe_ids, (i64::MIN, i64::MIN, below))
            )?,
        };
        if !found.is_empty() || !found_maybe.is_empty() {
            let found: HashSet<(&str, &str)> = found.iter().chain(&found_maybe).map(|r| (r.get(0), r.get(1))).collect();
            firsts.retain(|&i| !found.contains(&key(i)));
        }
        if !firsts.is_empty() {
            let copied = async {
                // Prepared once a connection (an unprepared `COPY` is prepared, and closed, at
                // each batch: a round trip more).
                let copy =
                    tx.prepare_cached("COPY seen_ids (tenant, id, arrived_us) FROM STDIN (FORMAT binary)").await?;
                let rows = BinaryCopyInWriter::new(tx.copy_in(&copy).await?, &[Type::TEXT, Type::TEXT, Type::INT8]);
                let mut rows = std::pin::pin!(rows);
                for &i in &firsts {
                    let (tenant, id) = key(i);
                    rows.as_mut().write(&[&tenant, &id, &arrival.at_us]).await?;
                }
                rows.finish().await?;
                Ok::<_, Error>(())
            };
            if let Err(e) = copied.await {
                // The partition was sealed since this process last read them: the batch is
                // tried again in the next one, after reading them again.
                if matches!(&e, Error::Postgres(p) if p.is_code("23514")) {
                    self.room_at.store(i64::MIN, Ordering::Relaxed);
                }
                return Err(e);
            }
        }
        for i in firsts {
            counted[i as usize] = true;
        }
        Ok(counted)
    }

    /// Folds the events of `events` that `counted` marks into the cached tallies, inside `tx`,
    /// and notes the thresholds they reach under `allowances`.
    ///
    /// Two passes over the batch, in the same order: the first finds each counter's place in the
    /// caches (a counter the caches lack is read, with the others, in one query), the second adds
    /// to the counters by those places, hashing no key again.
    async fn fold(
        &self,
        tx: &Transaction<'_>,
        meters: &[MeterDef],
        events: &[Metered],
        counted: &[bool],
        allowances: Option<&dyn Allowances>,
    ) -> Result<Folded, Error> {
        let counted: Vec<&Metered> = events.iter().zip(counted).filter(|(_, c)| **c).map(|(e, _)| e).collect();
        let applied = Applied { counted: counted.len(), duplicates: events.len() - counted.len() };

        // Each counted event's buckets, its period and its day, formatted once per day of the batch.
        let mut day_index: HashMap<i64, usize> = HashMap::new();
        let mut day_names: Vec<[String; 2]> = Vec::new();
        let at: Vec<usize> = counted
            .iter()
            .map(|e| {
                *day_index.entry(e.time_us.div_euclid(DAY_US)).or_insert_with(|| {
                    day_names.push([Period::containing(e.time_us).to_string(), format_day(day_of(e.time_us))]);
                    day_names.len() - 1
                })
            })
            .collect();
        let meter = |m: usize| meters.get(m).ok_or(Error::UnknownMeter(m));

        // Unique values, each bucket's distinct ones once, and which of them are new (not in the
        // table before this batch): only a value's first new sighting adds to its counter.
        let mut unique_index: HashMap<(&str, &str, &str, &str), usize> = HashMap::new();
        let mut unique_keys: Vec<(&str, &str, &str, &str)> = Vec::new();
        // For each unique contribution and bucket, in the passes' order, its value's place.
        let mut unique_at: Vec<usize> = Vec::new();
        for (e, &d) in counted.iter().zip(&at) {
            for (m, c) in &e.contributions {
                if let Contribution::Unique(v) = c {
                    let meter = meter(*m)?.name.as_str();
                    for bucket in &day_names[d] {
                        let key = (e.tenant.as_str(), meter, bucket.as_str(), v.as_str());
                        unique_at.push(*unique_index.entry(key).or_insert_with(|| {
                            unique_keys.push(key);
                            unique_keys.len() - 1
                        }));
                    }
                }
            }
        }
        let mut unique_new = vec![false; unique_keys.len()];
        if !unique_keys.is_empty() {
            let col = |i: usize| unique_keys.iter().map(|k| [k.0, k.1, k.2, k.3][i]).collect::<Vec<_>>();
            let insert = tx.prepare_cached(sql::UNIQUES_INSERT).await?;
            let rows = tx.query(&insert, &[&col(0), &col(1), &col(2), &col(3)]).await?;
            for r in &rows {
                let key: (&str, &str, &str, &str) = (r.get(0), r.get(1), r.get(2), r.get(3));
                let at = unique_index.get(&key).ok_or_else(|| Error::Unreadable("unique value not sent".into()))?;
                unique_new[*at] = true;
            }
        }

        // Pass 1: the places of the tallies and breakdown amounts the batch adds to; those the
        // caches lacked are read from the table, in one query each (sent together). Pass 2 adds
        // to every one in place. A key is copied only when the cache does not have it.
        let (mut slots, mut group_slots) = (Vec::new(), Vec::new());
        let (mut missing, mut missing_groups) = (Vec::new(), Vec::new());
        {
            let mut cache = Cache::lock(&self.cache);
            let mut group_cache = Cache::lock(&self.group_cache);
            cache.begin(CACHE_ENTRIES);
            group_cache.begin(CACHE_ENTRIES);
            for (e, &d) in counted.iter().zip(&at) {
                let [period, _] = &day_names[d];
                for (m, _) in &e.contributions {
                    let meter = &meter(*m)?.name;
                    for bucket in &day_names[d] {
                        let (at, new) = cache.slot(&KeyRef(&e.tenant, meter, bucket));
                        slots.push(at);
                        if new {
                            missing.push(at);
                        }
                    }
                }
                for (m, values) in &e.groups {
                    let def = meter(*m)?;
                    if !e.contributions.iter().any(|(i, _)| i == m) {
                        continue;
                    }
                    for (property, value) in def.group_by.iter().zip(values) {
                        let (at, new) = group_cache.slot(&GroupRef(&e.tenant, period, &def.name, property, value));
                        group_slots.push(at);
                        if new {
                            missing_groups.push(at);
                        }
                    }
                }
            }
        }
        // Both reads at once, their results in the order sent (the first error is the cause);
        // each fills its counters' places (a key with no row stays empty, with no id: inserted
        // rather than updated).
        let (t, g) = tokio::join!(
            biased;
            self.load_tallies(tx, &missing),
            self.load_groups(tx, &missing_groups)
        );
        let (t, g) = (t?, g?);

        // The places stay put from pass 1 to here: nothing else changes the caches while a batch
        // holds `PgStore::applying` (a checkpoint read, which empties them, comes from the same
        // loop as the batches, never during one).
        let mut cache = Cache::lock(&self.cache);
        let mut group_cache = Cache::lock(&self.group_cache);
        // A stored counter with no place would leave its empty stand-in to be inserted over it.
        let unplaced = || Error::Unreadable("counter (a stored one the batch did not ask for)".into());
        for (key, counter) in t {
            if !cache.load(&key, counter) {
                return Err(unplaced());
            }
        }
        for (key, counter) in g {
            if !group_cache.load(&key, counter) {
                return Err(unplaced());
            }
        }
        let (mut slots, mut group_slots, mut unique_at) =
            (slots.into_iter(), group_slots.into_iter(), unique_at.into_iter());
        let lost = || Error::Unreadable("counter place (the passes of a batch's fold disagree)".into());
        for (e, &d) in counted.iter().zip(&at) {
            for (_, c) in &e.contributions {
                for _ in &day_names[d] {
                    let place = slots.next().ok_or_else(lost)?;
                    if let Contribution::Unique(_) = c {
                        let u = unique_at.next().ok_or_else(lost)?;
                        if !std::mem::take(&mut unique_new[u]) {
                            continue;
                        }
                    }
                    cache.at(place).add(c, e.time_us, &e.id)?;
                }
            }
            for (m, values) in &e.groups {
                let def = meter(*m)?;
                let Some((_, c)) = e.contributions.iter().find(|(i, _)| i == m) else { continue };
                for _ in def.group_by.iter().zip(values) {
                    group_cache.at(group_slots.next().ok_or_else(lost)?).add(c, e.time_us, &e.id)?;
                }
            }
        }
        if slots.next().is_some() || group_slots.next().is_some() || unique_at.next().is_some() {
            return Err(lost());
        }
        let reached = match allowances {
            Some(a) => {
                let known = self.raised.lock().unwrap_or_else(|e| e.into_inner());
                cache.touched().flat_map(|((t, m, b), c)| thresholds(a, (t, m, b), &c.tally, &known)).collect()
            }
            None => Vec::new(),
        };
        Ok(Folded {
            applied,
            tallies: Writes::of(&mut cache, true)?,
            groups: Writes::of(&mut group_cache, false)?,
            reached,
        })
    }

    /// The stored tallies of the keys at `places` in the cache (those [`Cache::slot`] found
    /// missing), with their rows' ids; a key with no row is left out.
    async fn load_tallies(&self, tx: &Transaction<'_>, places: &[usize]) -> Result<Vec<(Key, Counter)>, Error> {
        if places.is_empty() {
            return Ok(Vec::new());
        }
        let (tenants, meters, buckets) = {
            let cache = Cache::lock(&self.cache);
            let keys = places.iter().map(|&at| cache.key_at(at));
            let (mut t, mut m, mut b) = (Vec::new(), Vec::new(), Vec::new());
            for k in keys {
                t.push(k.0.clone());
                m.push(k.1.clone());
                b.push(k.2.clone());
            }
            (t, m, b)
        };
        let load = tx.prepare_cached(sql::TALLIES_LOAD).await?;
        let rows = tx.query(&load, &[&tenants, &meters, &buckets]).await?;
        rows.iter()
            .map(|r| Ok(((r.get(0), r.get(1), r.get(2)), Counter { tally: tally(r, 3)?, id: Some(r.get(6)) })))
            .collect()
    }

    /// The stored breakdown amounts of the keys at `places` in the group cache, as
    /// [`PgStore::load_tallies`].
    async fn load_groups(&self, tx: &Transaction<'_>, places: &[usize]) -> Result<Vec<(GroupKey, Counter)>, Error> {
        let mut out = Vec::with_capacity(places.len());
        if places.is_empty() {
            return Ok(out);
        }
        let cols: [Vec<String>; 5] = {
            let cache = Cache::lock(&self.group_cache);
            let mut cols: [Vec<String>; 5] = Default::default();
            for &at in places {
                let k = cache.key_at(at);
                for (col, v) in cols.iter_mut().zip([&k.0, &k.1, &k.2, &k.3, &k.4]) {
                    col.push(v.clone());
                }
            }
            cols
        };
        let load = tx.prepare_cached(sql::GROUPS_LOAD).await?;
        let rows = tx.query(&load, &[&cols[0], &cols[1], &cols[2], &cols[3], &cols[4]]).await?;
        for r in rows {
            let amount = decimal(r.get(5), "breakdown amount")?;
            let counter = Counter { tally: Tally { value: amount, latest: None }, id: Some(r.get(6)) };
            out.push(((r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)), counter));
        }
        Ok(out)
    }
}

/// A read-only transaction reading one snapshot (REPEATABLE READ).
async fn snapshot(c: &mut Object) -> Result<Transaction<'_>, Error> {
    Ok(c.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?)
}

/// Empties the store's caches when dropped before its batch `committed`.
struct ForgetUnlessCommitted<'a> {
    store: &'a PgStore,
    committed: bool,
}

impl Drop for ForgetUnlessCommitted<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.store.forget();
        }
    }
}

/// Writes the folded tallies and breakdown amounts: those with a row's id are updated in place
/// by it (an `UPDATE` joined to the batch on the id; cheaper than an upsert's speculative
/// insert), the others inserted. The four statements are sent at once, without waiting for each
/// other's answer. Answers the new rows' ids.
async fn save(tx: &Transaction<'_>, folded: &Folded) -> Result<(Vec<(Key, i64)>, Vec<(GroupKey, i64)>), Error> {
    let (a, b, c, d) = tokio::join!(
        biased;
        update_tallies(tx, &folded.tallies),
        insert_tallies(tx, &folded.tallies.new),
        update_groups(tx, &folded.groups),
        insert_groups(tx, &folded.groups.new),
    );
    // Read in the order sent: the first error is the cause (the others say the transaction is
    // aborted).
    let (tallies, groups) = (a.and(b), c.and(d));
    Ok((tallies?, groups?))
}

/// Keeps each new row's id with its cached counter.
fn give_ids<K: std::hash::Hash + Eq>(cache: &Mutex<Cache<K>>, ids: Vec<(K, i64)>) {
    let mut cache = Cache::lock(cache);
    for (key, id) in ids {
        if let Some(counter) = cache.get_mut(&key) {
            counter.id = Some(id);
        }
    }
}

/// `Replaced` unless the update found a row for each of the `sent` ids it was given.
fn all_updated(table: &'static str, updated: u64, sent: usize) -> Result<(), Error> {
    if updated as usize == sent {
        return Ok(());
    }
    Err(Error::Replaced { table, missing: sent.saturating_sub(updated as usize), of: sent })
}

/// Rewrites the folded tallies that have a row by its id.
async fn update_tallies(tx: &Transaction<'_>, w: &Writes<Key>) -> Result<(), Error> {
    if w.ids.is_empty() {
        return Ok(());
    }
    let statement = tx.prepare_cached(sql::TALLIES_UPDATE).await?;
    let n = tx.execute(&statement, &[&w.ids, &w.values, &w.latest_us, &w.latest_id]).await?;
    all_updated("tallies", n, w.ids.len())
}

/// Inserts the folded tallies that have no row yet; answers their new rows' ids.
async fn insert_tallies(tx: &Transaction<'_>, rows: &[(Key, Tally)]) -> Result<Vec<(Key, i64)>, Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let tenants: Vec<&str> = rows.iter().map(|(k, _)| k.0.as_str()).collect();
    let meters: Vec<&str> = rows.iter().map(|(k, _)| k.1.as_str()).collect();
    let buckets: Vec<&str> = rows.iter().map(|(k, _)| k.2.as_str()).collect();
    let values: Vec<Option<Decimal>> = rows.iter().map(|(_, t)| t.value).collect();
    let latest_us: Vec<Option<i64>> = rows.iter().map(|(_, t)| t.latest.as_ref().map(|l| l.0)).collect();
    let latest_id: Vec<Option<&str>> = rows.iter().map(|(_, t)| t.latest.as_ref().map(|l| l.1.as_str())).collect();
    let statement = tx.prepare_cached(sql::TALLIES_INSERT).await?;
    let written = tx.query(&statement, &[&tenants, &meters, &buckets, &values, &latest_us, &latest_id]).await?;
    Ok(written.iter().map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3))).collect())
}

/// Rewrites the folded breakdown amounts that have a row by its id.
async fn update_groups(tx: &Transaction<'_>, w: &Writes<GroupKey>) -> Result<(), Error> {
    if w.ids.is_empty() {
        return Ok(());
    }
    let statement = tx.prepare_cached(sql::GROUPS_UPDATE).await?;
    let n = tx.execute(&statement, &[&w.ids, &w.values]).await?;
    all_updated("breakdowns", n, w.ids.len())
}

/// Inserts the folded breakdown amounts that have no row yet; answers their new rows' ids.
async fn insert_groups(tx: &Transaction<'_>, rows: &[(GroupKey, Tally)]) -> Result<Vec<(GroupKey, i64)>, Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let col = |i: usize| rows.iter().map(|(k, _)| [&k.0, &k.1, &k.2, &k.3, &k.4][i].as_str()).collect::<Vec<_>>();
    let amounts: Vec<Decimal> = rows.iter().map(|(_, t)| t.value.unwrap_or_default()).collect();
    let statement = tx.prepare_cached(sql::GROUPS_INSERT).await?;
    let written = tx.query(&statement, &[&col(0), &col(1), &col(2), &col(3), &col(4), &amounts]).await?;
    Ok(written.iter().map(|r| ((r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)), r.get(5))).collect())
}

#[async_trait]
impl UsageStore for PgStore {
    fn checkpoint(&self, consumer: &str) -> Result<Checkpoint, Error> {
        self.forget();
        let other = self.pg.query_opt("SELECT consumer FROM checkpoints WHERE consumer <> $1 LIMIT 1", &[&consumer])?;
        if let Some(other) = other {
            return Err(Error::OtherConsumer { found: other.get(0), asked: consumer.to_string() });
        }
        let rows = self.pg.query(
            "SELECT partition, next_offset FROM checkpoints WHERE consumer = $1 ORDER BY partition",
            &[&consumer],
        )?;
        let positions = rows.iter().map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1) as u64)).collect();
        Ok(Checkpoint { positions })
    }

    fn apply(
        &self,
        consumer: &str,
        meters: &[MeterDef],
        events: &[Metered],
        progress: &Progress,
    ) -> Result<Applied, Error> {
        let allowances = self.allowances();
        // One batch at a time (its fold lets go of the caches while it reads what they lack), and
        // the caches emptied unless it commits: its counters are added to in place, so a batch
        // that fails or panics anywhere leaves them as the database never had them; or what
        // failed was the cache (a row replaced under it, or another owner's writes after a
        // fence): the next batch reads its counters from the table.
        let _one = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        let mut uncommitted = ForgetUnlessCommitted { store: self, committed: false };
        let written = self.pg.block(async {
            let mut client = self.pg.client().await?;
            let arrived = self.arrival(&mut client).await;
            let tx = client.transaction().await?;
            let counted = fenced(&tx, consumer, progress, self.insert_ids(&tx, events, &arrived)).await?;
            let folded = self.fold(&tx, meters, events, &counted, allowances.as_deref()).await?;
            let (tally_ids, group_ids) = save(&tx, &folded).await?;
            give_ids(&self.cache, tally_ids);
            give_ids(&self.group_cache, group_ids);
            let (raised, new) = raise(&tx, folded.reached).await?;
            tx.commit().await?;
            Ok::<_, Error>((folded.applied, raised, new))
        });
        let (applied, raised, new_alerts) = written?;
        uncommitted.committed = true;
        self.raised.lock().unwrap_or_else(|e| e.into_inner()).extend(raised);
        self.announce("usage_threshold", new_alerts);
        Ok(applied)
    }

    fn advance_watermark(&self, consumer: &str, partitions: &[u32], watermark_us: i64) -> Result<(), Error> {
        let parts: Vec<i32> = partitions.iter().map(|p| *p as i32).collect();
        self.pg.execute(
            "INSERT INTO checkpoints AS c (consumer, partition, next_offset, watermark_us)
             SELECT $1, p, 0, $3 FROM unnest($2::int4[]) AS p
             ON CONFLICT (consumer, partition) DO UPDATE SET watermark_us = GREATEST(c.watermark_us, excluded.watermark_us)",
            &[&consumer, &parts, &watermark_us],
        )?;
        Ok(())
    }

    async fn usage(&self, tenant: &str, period: Period, coverage: Coverage<'_>) -> Result<PeriodUsage, Error> {
        let tenant = tenant.to_string();
        let (consumer, partition) = (coverage.consumer.to_string(), coverage.partition as i32);
        let (from, to) = (period.to_string(), period.next().to_string());
        self.pg
            .with(async move |mut c| {
                // One snapshot for the tallies and the watermark.
                let tx = snapshot(&mut c).await?;
                let rows = tx
                    .query(
                        "SELECT meter, bucket, value::text, latest_us, latest_id FROM tallies
                     WHERE tenant = $1 AND bucket >= $2 AND bucket < $3",
                        &[&tenant, &from, &to],
                    )
                    .await?;
                let watermark_us: Option<i64> = tx
                    .query_opt(
                        "SELECT watermark_us FROM checkpoints WHERE consumer = $1 AND partition = $2",
                        &[&consumer, &partition],
                    )
                    .await?
                    .and_then(|r| r.get(0));
                tx.commit().await?;
                let mut usage = PeriodUsage { meters: Default::default(), watermark_us };
                for r in &rows {
                    let (meter, bucket): (String, String) = (r.get(0), r.get(1));
                    let entry: &mut MeterTallies = usage.meters.entry(meter).or_default();
                    if bucket.len() == 7 {
                        entry.period = tally(r, 2)?;
                    } else {
                        entry.days.insert(bucket, tally(r, 2)?);
                    }
                }
                Ok(usage)
            })
            .await
    }

    async fn daily(&self, tenant: &str, from: Date, to: Date) -> Result<Series, Error> {
        let args = [tenant.to_string(), format_day(from), format_day(to)];
        self.pg
            .with(async move |c| {
                let rows = c
                    .query(
                        "SELECT meter, bucket, value::text, latest_us, latest_id FROM tallies
                     WHERE tenant = $1 AND bucket >= $2 AND bucket < $3 AND length(bucket) = 10",
                        &[&args[0], &args[1], &args[2]],
                    )
                    .await?;
                nest(&rows)
            })
            .await
    }

    async fn period_totals_in(&self, period: Period, after: Option<&str>, upto: Option<&str>) -> Result<Totals, Error> {
        let bucket = period.to_string();
        let (after, upto) = (after.map(str::to_string), upto.map(str::to_string));
        // A bound only where there is one, so that each shape plans on the tenant index.
        let mut sql =
            "SELECT tenant, meter, value::text, latest_us, latest_id FROM tallies WHERE bucket = $1".to_string();
        let mut bounds = Vec::new();
        for (bound, op) in [(after, ">"), (upto, "<=")] {
            if let Some(b) = bound {
                bounds.push(b);
                sql.push_str(&format!(" AND tenant {op} ${}", bounds.len() + 1));
            }
        }
        self.pg
            .with(async move |c| {
                let mut args: Vec<&(dyn meter_postgres::tokio_postgres::types::ToSql + Sync)> = vec![&bucket];
                args.extend(bounds.iter().map(|b| b as &(dyn meter_postgres::tokio_postgres::types::ToSql + Sync)));
                nest(&c.query(&sql, &args).await?)
            })
            .await
    }

    async fn breakdown(&self, tenant: &str, period: Period) -> Result<Breakdown, Error> {
        let (tenant, period) = (tenant.to_string(), period.to_string());
        self.pg
            .with(async move |c| {
                let rows = c
                    .query(
                        "SELECT meter, property, value, amount::text FROM breakdowns WHERE tenant = $1 AND period = $2",
                        &[&tenant, &period],
                    )
                    .await?;
                let mut out = Breakdown::new();
                for r in &rows {
                    let amount = decimal(r.get(3), "breakdown amount")?.unwrap_or_default();
                    out.entry(r.get(0)).or_default().entry(r.get(1)).or_default().insert(r.get(2), amount);
                }
                Ok(out)
            })
            .await
    }

    async fn watermark(&self, consumer: &str, partitions: u32) -> Result<Option<i64>, Error> {
        let consumer = consumer.to_string();
        let marks = self
            .pg
            .with(async move |c| {
                let rows = c
                    .query(
                        "SELECT partition, watermark_us FROM checkpoints
                         WHERE consumer = $1 AND watermark_us IS NOT NULL",
                        &[&consumer],
                    )
                    .await?;
                Ok::<_, Error>(rows.iter().map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1))).collect::<Vec<_>>())
            })
            .await?;
        Ok(crate::slowest(&marks, partitions))
    }

    async fn positions(&self, consumer: &str) -> Result<Vec<(u32, u64)>, Error> {
        let consumer = consumer.to_string();
        self.pg
            .with(async move |c| {
                let rows = c
                    .query(
                        "SELECT partition, next_offset FROM checkpoints WHERE consumer = $1 ORDER BY partition",
                        &[&consumer],
                    )
                    .await?;
                Ok::<_, Error>(rows.iter().map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1) as u64)).collect())
            })
            .await
    }
}

/// `(a, b, value, latest_us, latest_id)` rows as tallies by `a`, then by `b`.
fn nest(rows: &[Row]) -> Result<BTreeMap<String, BTreeMap<String, Tally>>, Error> {
    let mut nested: BTreeMap<String, BTreeMap<String, Tally>> = BTreeMap::new();
    for r in rows {
        nested.entry(r.get(0)).or_default().insert(r.get(1), tally(r, 2)?);
    }
    Ok(nested)
}

#[async_trait]
impl LiveStore for PgStore {
    fn set_allowances(&self, allowances: Arc<dyn Allowances>) {
        *self.allowances.write().unwrap_or_else(|e| e.into_inner()) = Some(allowances);
    }

    fn reevaluate(&self, tenant: &str, period: Period) -> Result<usize, Error> {
        let Some(allowances) = self.allowances() else { return Ok(0) };
        let known = self.known();
        let bucket = period.to_string();
        let (raised, new) = self.pg.block(async {
            let mut c = self.pg.client().await?;
            let tx = c.transaction().await?;
            let rows = tx
                .query(
                    "SELECT meter, value::text, latest_us, latest_id FROM tallies WHERE tenant = $1 AND bucket = $2",
                    &[&tenant, &bucket],
                )
                .await?;
            let mut reached = Vec::new();
            for r in &rows {
                let meter: String = r.get(0);
                reached.extend(thresholds(&*allowances, (tenant, &meter, &bucket), &tally(r, 1)?, &known));
            }
            let out = raise(&tx, reached).await?;
            tx.commit().await?;
            Ok::<_, Error>(out)
        })?;
        self.raised.lock().unwrap_or_else(|e| e.into_inner()).extend(raised);
        self.announce("usage_threshold", new);
        Ok(new)
    }

    fn suggest(&self, s: Suggestion) -> Result<bool, Error> {
        let id = suggestion_id(&s.tenant, &s.period, &s.suggested_plan);
        let saving = s.saving.normalize().to_string();
        let n = self.pg.block(async {
            let mut c = self.pg.client().await?;
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(ALERTS)]).await?;
            let n = tx
                .execute(
                    "INSERT INTO alerts (seq, id, tenant, meter, period, percent, threshold, included, value, plan,
                         raised_us, kind, suggested_plan, saving)
                     SELECT (SELECT coalesce(max(seq), 0) + 1 FROM alerts), $1, $2, '', $3, 0, '', '', '', $4, $5,
                         'upgrade_suggested', $6, $7
                     WHERE NOT EXISTS (SELECT 1 FROM alerts WHERE id = $1)",
                    &[&id, &s.tenant, &s.period, &s.plan, &now_us(), &s.suggested_plan, &saving],
                )
                .await?;
            tx.commit().await?;
            Ok::<_, Error>(n)
        })?;
        self.announce("upgrade_suggested", n as usize);
        Ok(n == 1)
    }

    async fn limit_states(&self, queries: Vec<LimitQuery>) -> Result<LimitSnapshot, Error> {
        self.pg
            .with(async move |mut c| {
                let tx = snapshot(&mut c).await?;
                let mut states = Vec::with_capacity(queries.len());
                for q in queries {
                    let mut state = LimitState::default();
                    if !q.ids.is_empty() {
                        let rows = tx.query(SEEN_OF_TENANT, &[&q.tenant, &q.ids]).await?;
                        state.counted = rows.iter().map(|r| r.get(0)).collect();
                    }
                    let names: Vec<&str> = q.meters.iter().map(|(m, _)| m.as_str()).collect();
                    let rows = tx
                    .query(
                        "SELECT meter, value::text FROM tallies WHERE tenant = $1 AND bucket = $2 AND meter = ANY($3)",
                        &[&q.tenant, &q.bucket, &names],
                    )
                    .await?;
                    for r in &rows {
                        if let Some(v) = decimal(r.get(1), "tally value")? {
                            state.values.insert(r.get(0), v);
                        }
                    }
                    let (um, uv): (Vec<&str>, Vec<&str>) =
                        q.meters.iter().flat_map(|(m, vs)| vs.iter().map(move |v| (m.as_str(), v.as_str()))).unzip();
                    if !um.is_empty() {
                        let rows = tx
                            .query(
                                "SELECT u.meter, u.value FROM uniques u
                             JOIN unnest($3::text[], $4::text[]) AS k(meter, value)
                               ON u.meter = k.meter AND u.value = k.value
                             WHERE u.tenant = $1 AND u.bucket = $2",
                                &[&q.tenant, &q.bucket, &um, &uv],
                            )
                            .await?;
                        for r in &rows {
                            state.known.entry(r.get(0)).or_default().insert(r.get(1));
                        }
                    }
                    states.push(state);
                }
                let progress: i64 =
                    tx.query_one("SELECT COALESCE(SUM(next_offset), 0)::int8 FROM checkpoints", &[]).await?.get(0);
                tx.commit().await?;
                Ok(LimitSnapshot { progress: progress.max(0) as u64, states })
            })
            .await
    }

    fn shares_holds(&self) -> bool {
        true
    }

    async fn limit_check(
        &self,
        queries: Vec<LimitQuery>,
        release_after: std::time::Duration,
        decide: crate::Decide,
    ) -> Result<Option<Vec<(usize, String)>>, Error> {
        let release_us = release_after.as_micros() as i64;
        self.pg.with(async move |mut c| {
            let tx = c.transaction().await?;
            // One check at a time per tenant and period, on every host; locks taken in order.
            let mut keys: Vec<i64> = queries.iter().map(|q| lock_key(&format!("limit:{}:{}", q.tenant, q.bucket))).collect();
            keys.sort_unstable();
            keys.dedup();
            tx.execute("SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT unnest($1::int8[]) AS k ORDER BY 1) l", &[&keys])
                .await?;
            // Not cached: planned for `seen_ids`'s partitions as they are now (see `insert_ids`).
            let read = tx
                .prepare(
                    // One statement, one snapshot, taken after the locks: the ids counted (of the
                    // request's and the held ones) always agree with the values.
                    concat!(
                    "SELECT 1, x.id, NULL::text, NULL::int8, NULL::int8
                       FROM (SELECT unnest($2::text[]) AS id
                             UNION SELECT h.id FROM limit_holds h WHERE h.tenant = $1 AND h.bucket = $3) x",
                    seen_lateral!("$1::text", "x.id", "-9223372036854775808", "-9223372036854775808", "9223372036854775807"),
                    "
                     UNION ALL SELECT 2, t.meter, t.value::text, NULL, NULL FROM tallies t
                       WHERE t.tenant = $1 AND t.bucket = $3 AND t.meter = ANY($4)
                     UNION ALL SELECT 3, u.meter, u.value, NULL, NULL FROM uniques u
                       JOIN unnest($5::text[], $6::text[]) AS x(meter, value) ON u.meter = x.meter AND u.value = x.value
                       WHERE u.tenant = $1 AND u.bucket = $3
                     UNION ALL SELECT 4, h.id, h.adds, h.accepted_progress, h.created_us FROM limit_holds h
                       WHERE h.tenant = $1 AND h.bucket = $3
                     UNION ALL SELECT 5, NULL, NULL, (SELECT COALESCE(SUM(next_offset), 0)::int8 FROM checkpoints), NULL"
                    ),
                )
                .await?;
            let now = now_us();
            let mut progress = 0u64;
            let (mut states, mut holds, mut released) = (Vec::new(), Vec::new(), Vec::new());
            for q in &queries {
                let names: Vec<&str> = q.meters.iter().map(|(m, _)| m.as_str()).collect();
                let (um, uv): (Vec<&str>, Vec<&str>) =
                    q.meters.iter().flat_map(|(m, vs)| vs.iter().map(move |v| (m.as_str(), v.as_str()))).unzip();
                let rows = tx.query(&read, &[&q.tenant, &q.ids, &q.bucket, &names, &um, &uv]).await?;
                let mut state = LimitState::default();
                let mut held = Vec::new();
                for r in &rows {
                    match r.get::<_, i32>(0) {
                        1 => {
                            state.counted.insert(r.get(1));
                        }
                        2 => {
                            if let Some(v) = decimal(r.get(2), "tally value")? {
                                state.values.insert(r.get(1), v);
                            }
                        }
                        3 => {
                            state.known.entry(r.get(1)).or_default().insert(r.get(2));
                        }
                        4 => held.push((r.get::<_, String>(1), r.get::<_, String>(2), r.get::<_, i64>(3), r.get::<_, i64>(4))),
                        _ => progress = r.get::<_, i64>(3).max(0) as u64,
                    }
                }
                // Counted holds are let go; so are lost ones (old, and the counters moved on).
                let mut kept = Vec::new();
                for (id, adds, at_progress, created_us) in held {
                    let lost = now - created_us > release_us && progress > at_progress as u64;
                    if state.counted.contains(&id) || lost {
                        released.push((q.tenant.clone(), q.bucket.clone(), id));
                    } else {
                        kept.push(crate::Hold { id, adds });
                    }
                }
                states.push(state);
                holds.push(kept);
            }
            let (new, refused) = decide(&LimitSnapshot { progress, states }, &holds).map_err(Error::Unreadable)?;
            let (mut t, mut b, mut ids, mut adds) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (q, new) in queries.iter().zip(new) {
                for h in new {
                    t.push(q.tenant.clone());
                    b.push(q.bucket.clone());
                    ids.push(h.id);
                    adds.push(h.adds);
                }
            }
            if !released.is_empty() {
                let col = |i: usize| released.iter().map(|r| [&r.0, &r.1, &r.2][i].as_str()).collect::<Vec<_>>();
                tx.execute(
                    "DELETE FROM limit_holds h USING unnest($1::text[], $2::text[], $3::text[]) AS x(t, b, id)
                     WHERE h.tenant = x.t AND h.bucket = x.b AND h.id = x.id",
                    &[&col(0), &col(1), &col(2)],
                )
                .await?;
            }
            if !ids.is_empty() {
                tx.execute(
                    "INSERT INTO limit_holds (tenant, bucket, id, adds, accepted_progress, created_us)
                     SELECT t, b, id, a, $5, $6 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS x(t, b, id, a)
                     ON CONFLICT DO NOTHING",
                    &[&t, &b, &ids, &adds, &(progress as i64), &now],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(Some(refused))
        })
        .await
    }

    fn alerted(&self) -> tokio::sync::watch::Receiver<u64> {
        self.alerted.subscribe()
    }

    async fn alerts(&self, tenant: Option<&str>, after_seq: u64, limit: usize) -> Result<Vec<Alert>, Error> {
        let tenant = tenant.map(str::to_string);
        self.pg
            .with(async move |c| {
                let rows = c
                    .query(
                        "SELECT seq, id, tenant, meter, period, percent, threshold, included, value, plan, raised_us,
                            kind, suggested_plan, saving
                     FROM alerts WHERE seq > $1 AND ($2::text IS NULL OR tenant = $2) ORDER BY seq LIMIT $3",
                        &[&(after_seq as i64), &tenant, &(limit as i64)],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| {
                        let kind: String = r.get(11);
                        let threshold = kind == "usage_threshold";
                        let some = |i: usize| threshold.then(|| r.get::<_, String>(i));
                        Alert {
                            seq: r.get::<_, i64>(0) as u64,
                            id: r.get(1),
                            tenant: r.get(2),
                            meter: some(3),
                            period: r.get(4),
                            percent: threshold.then(|| r.get::<_, i32>(5) as u32),
                            threshold: some(6),
                            included: some(7),
                            value: some(8),
                            plan: r.get(9),
                            raised_at: format_time(r.get(10)),
                            kind,
                            suggested_plan: r.get(12),
                            saving: r.get(13),
                        }
                    })
                    .collect())
            })
            .await
    }
}
