//! The embedded usage store: one SQLite file in WAL mode.
//!
//! Writes come from the aggregator through one connection; the current tallies of touched keys are
//! cached in memory (written through), so a batch reads the database only for keys it has not met
//! before. Reads for the API use a small pool of connections off the async runtime.

use crate::alerts::{Alert, Allowances, Suggestion, suggestion_id, thresholds};
use crate::counters::{Cache, Counter, GroupKey, GroupRef, Key, KeyRef, lock_or_clear};
use crate::limits::{LimitQuery, LimitSnapshot, LimitState};
use crate::{
    Applied, Breakdown, Checkpoint, Coverage, Date, Error, LiveStore, MeterTallies, Metered, PeriodUsage, Progress,
    Series, Totals, UsageStore,
};
use async_trait::async_trait;
use meter_schemas::period::{day_of, format_day, format_time, now_us};
use meter_schemas::{Contribution, MeterDef, Period, Tally};
use meter_sqlite::dedup::{self, Dedup, Mirror};
use meter_sqlite::rusqlite::{
    CachedStatement, Connection, OptionalExtension, Row, ToSql, TransactionBehavior, params, params_from_iter,
};
use meter_sqlite::{Checkpointer, Durability, ReadPool, WAL_BOUND, WalBound, blocking, migrate, open_for_checkpointer};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE tallies (
        tenant TEXT NOT NULL, meter TEXT NOT NULL, bucket TEXT NOT NULL,
        value TEXT, latest_us INTEGER, latest_id TEXT,
        PRIMARY KEY (tenant, meter, bucket)
    ) WITHOUT ROWID;
    CREATE TABLE uniques (
        tenant TEXT NOT NULL, meter TEXT NOT NULL, bucket TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (tenant, meter, bucket, value)
    ) WITHOUT ROWID;
    CREATE TABLE seen (tenant TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (id, tenant)) WITHOUT ROWID;
    CREATE TABLE checkpoints (
        consumer TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
        PRIMARY KEY (consumer, partition)
    );
    CREATE TABLE watermarks (consumer TEXT PRIMARY KEY, watermark_us INTEGER NOT NULL);
",
    "
    ALTER TABLE checkpoints ADD COLUMN watermark_us INTEGER;
    UPDATE checkpoints SET watermark_us =
        (SELECT w.watermark_us FROM watermarks w WHERE w.consumer = checkpoints.consumer);
    DROP TABLE watermarks;
    -- One name for the aggregators on every log: their consumer group's.
    UPDATE checkpoints SET consumer = 'meter-aggregator' WHERE consumer = 'aggregator';
",
    "
    CREATE TABLE alerts (
        seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
        tenant TEXT NOT NULL, meter TEXT NOT NULL, period TEXT NOT NULL, percent INTEGER NOT NULL,
        threshold TEXT NOT NULL, included TEXT NOT NULL, value TEXT NOT NULL, plan TEXT NOT NULL,
        raised_us INTEGER NOT NULL
    );
    CREATE INDEX alerts_by_tenant ON alerts (tenant, seq);
",
    "
    ALTER TABLE alerts ADD COLUMN kind TEXT NOT NULL DEFAULT 'usage_threshold';
    ALTER TABLE alerts ADD COLUMN suggested_plan TEXT;
    ALTER TABLE alerts ADD COLUMN saving TEXT;
",
    "
    CREATE TABLE breakdowns (
        tenant TEXT NOT NULL, period TEXT NOT NULL, meter TEXT NOT NULL, property TEXT NOT NULL,
        value TEXT NOT NULL, amount TEXT NOT NULL,
        PRIMARY KEY (tenant, period, meter, property, value)
    ) WITHOUT ROWID;
",
    // The ids seen move to arrival generations (meter_sqlite::dedup); this table becomes the
    // oldest, dropped a horizon after the upgrade.
    "
    ALTER TABLE seen ADD COLUMN hash BLOB;
    ALTER TABLE seen ADD COLUMN key INTEGER;
",
    "
    -- meter_sqlite::dedup puts time-ordered ids straight into the open generation of `seen`; a
    -- build from before would not see them in its filters, so this version makes it refuse the
    -- file (a newer file is refused).
",
    // A batch rewrites every counter it adds to: by its row id (one integer seek) rather than by
    // its text keys (an upsert's two seeks and their string comparisons). AUTOINCREMENT: an id is
    // never given to another key, so a row found by a remembered id is that key's.
    "
    CREATE TABLE tallies_by_id (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant TEXT NOT NULL, meter TEXT NOT NULL, bucket TEXT NOT NULL,
        value TEXT, latest_us INTEGER, latest_id TEXT,
        UNIQUE (tenant, meter, bucket)
    );
    INSERT INTO tallies_by_id (tenant, meter, bucket, value, latest_us, latest_id)
        SELECT tenant, meter, bucket, value, latest_us, latest_id FROM tallies ORDER BY tenant, meter, bucket;
    DROP TABLE tallies;
    ALTER TABLE tallies_by_id RENAME TO tallies;
    CREATE TABLE breakdowns_by_id (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant TEXT NOT NULL, period TEXT NOT NULL, meter TEXT NOT NULL, property TEXT NOT NULL,
        value TEXT NOT NULL, amount TEXT NOT NULL,
        UNIQUE (tenant, period, meter, property, value)
    );
    INSERT INTO breakdowns_by_id (tenant, period, meter, property, value, amount)
        SELECT tenant, period, meter, property, value, amount FROM breakdowns
        ORDER BY tenant, period, meter, property, value;
    DROP TABLE breakdowns;
    ALTER TABLE breakdowns_by_id RENAME TO breakdowns;
",
    // A tenant's counters lie together: a row's id is its tenant's slot times 2^32 plus the
    // tenant's count of rows so far in that table ([`Slots`]), never given twice. Given in
    // order of creation, a batch of a run of tenants rewrote a page for nearly every counter, about
    // three times the WAL of rows kept by tenant (BENCHMARKS.md).
    "
    CREATE TABLE counter_slots (
        tenant TEXT PRIMARY KEY, slot INTEGER NOT NULL UNIQUE,
        tallies INTEGER NOT NULL DEFAULT 0 CHECK (tallies < 4294967296),
        breakdowns INTEGER NOT NULL DEFAULT 0 CHECK (breakdowns < 4294967296)
    ) WITHOUT ROWID;
    INSERT INTO counter_slots (tenant, slot)
        SELECT tenant, row_number() OVER (ORDER BY tenant)
        FROM (SELECT tenant FROM tallies UNION SELECT tenant FROM breakdowns);
    CREATE TABLE tallies_by_tenant (
        id INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL, meter TEXT NOT NULL, bucket TEXT NOT NULL,
        value TEXT, latest_us INTEGER, latest_id TEXT,
        UNIQUE (tenant, meter, bucket)
    );
    INSERT INTO tallies_by_tenant (id, tenant, meter, bucket, value, latest_us, latest_id)
        SELECT (s.slot << 32) + row_number() OVER (PARTITION BY t.tenant ORDER BY t.meter, t.bucket) - 1,
            t.tenant, t.meter, t.bucket, t.value, t.latest_us, t.latest_id
        FROM tallies t JOIN counter_slots s ON s.tenant = t.tenant;
    DROP TABLE tallies;
    ALTER TABLE tallies_by_tenant RENAME TO tallies;
    CREATE TABLE breakdowns_by_tenant (
        id INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL, period TEXT NOT NULL, meter TEXT NOT NULL, property TEXT NOT NULL,
        value TEXT NOT NULL, amount TEXT NOT NULL,
        UNIQUE (tenant, period, meter, property, value)
    );
    INSERT INTO breakdowns_by_tenant (id, tenant, period, meter, property, value, amount)
        SELECT (s.slot << 32)
                + row_number() OVER (PARTITION BY b.tenant ORDER BY b.period, b.meter, b.property, b.value) - 1,
            b.tenant, b.period, b.meter, b.property, b.value, b.amount
        FROM breakdowns b JOIN counter_slots s ON s.tenant = b.tenant;
    DROP TABLE breakdowns;
    ALTER TABLE breakdowns_by_tenant RENAME TO breakdowns;
    UPDATE counter_slots SET
        tallies = (SELECT count(*) FROM tallies t WHERE t.tenant = counter_slots.tenant),
        breakdowns = (SELECT count(*) FROM breakdowns b WHERE b.tenant = counter_slots.tenant);
",
    "
    -- meter_sqlite::dedup leaves the rows a move took from `seen_pending` below a floor
    -- (`seen_state.floor`) that readers skip, deleting them after later commits. A build from
    -- before would delete the floor's own row with its next move, or empty the table with its
    -- quarter-horizon roll, without lowering the floor: rows appended after it would be given
    -- rowids below the floor and hidden. This version makes such a build refuse the file.
",
    "
    -- meter_sqlite::dedup keeps the ids a transaction appends as one row of `seen_appended`
    -- (converting `seen_pending`, a row per id, when the state opens). A build from before
    -- would read none of them. This version makes such a build refuse the file.
",
];

/// A tenant's slot and its counts of ids given in `tallies` and `breakdowns` ([`Slots`]).
const READ_SLOT: &str = "SELECT slot, tallies, breakdowns FROM counter_slots WHERE tenant = ?1";

/// Writes a tenant's slot with its counts after a batch gave it ids ([`Slots`]).
/// Changes nothing if the tenant's stored slot is another one.
const WRITE_SLOT: &str = "INSERT INTO counter_slots (tenant, slot, tallies, breakdowns) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (tenant) DO UPDATE
     SET tallies = max(tallies, excluded.tallies), breakdowns = max(breakdowns, excluded.breakdowns)
     WHERE counter_slots.slot = excluded.slot";

/// Most tallies kept in memory; past it the cache starts over (the database has every value).
/// 100,000 tenants counting every default meter hold 1.2 million (6 meters, 2 buckets): at
/// 500,000 the cache started over every few batches there and the aggregator read its counters
/// back one query each (55.8 against 45.2 CPU-s for 3,000,000 events, for about 110 MB more at
/// its peak; BENCHMARKS.md).
const CACHE_ENTRIES: usize = 2_000_000;

/// Most breakdowns kept in memory (keys of five strings; two a tenant there).
const GROUP_CACHE_ENTRIES: usize = 500_000;

/// The SQLite usage store.
pub struct SqliteStore {
    _checkpointer: Checkpointer,
    writer: Mutex<Connection>,
    /// Keeps the WAL bounded; the writer checks it after each batch.
    wal: WalBound,
    /// The committed tallies (locked only while `writer` is held), which a batch adds to in
    /// place: a batch that fails empties it.
    cache: Mutex<Cache<Key>>,
    /// The same for the breakdowns' amounts, cleared with it.
    group_cache: Mutex<Cache<GroupKey>>,
    /// The tenants' slots, which give new rows their ids; cleared with the caches.
    slots: Mutex<Slots>,
    reads: Arc<ReadPool>,
    allowances: RwLock<Option<Arc<dyn Allowances>>>,
    /// Ids of alerts known to be raised, so that a counter above its thresholds costs no write.
    raised: Mutex<HashSet<String>>,
    /// Counts writes that raised an alert; every subscriber wakes on a change.
    alerted: tokio::sync::watch::Sender<u64>,
    /// The event ids counted, for duplicates: the writer's (locked after `writer`).
    seen: Mutex<Dedup>,
    /// What the readers know of them.
    seen_by_readers: Arc<Mutex<Mirror>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, Error> {
        Self::open_with(path, durability, dedup::Settings::new(meter_schemas::envelope::DEDUP_HORIZON_US))
    }

    /// Opens the store at `path`, keeping counted event ids as `dedup` says (a horizon at least
    /// the lateness window plus how far ahead events may be dated, plus Kafka's delivery margin).
    pub fn open_with(path: &Path, durability: Durability, dedup: dedup::Settings) -> Result<Self, Error> {
        let mut conn = open_for_checkpointer(path, durability)?;
        migrate(&mut conn, path, MIGRATIONS)?;
        let seen = Dedup::open(&mut conn, "seen", Some("seen"), dedup, now_us())?;
        let checkpointer = Checkpointer::start(path, Duration::from_secs(1))?;
        Ok(Self {
            seen: Mutex::new(seen),
            seen_by_readers: Arc::new(Mutex::new(Mirror::default())),
            wal: WalBound::new(path, WAL_BOUND).asking(&checkpointer),
            _checkpointer: checkpointer,
            writer: Mutex::new(conn),
            cache: Mutex::default(),
            group_cache: Mutex::default(),
            slots: Mutex::default(),
            reads: Arc::new(ReadPool::new(path)),
            allowances: RwLock::new(None),
            raised: Mutex::new(HashSet::new()),
            alerted: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Counts `new` alerts of `kind` just committed and wakes their subscribers.
    fn announce(&self, kind: &'static str, new: usize) {
        if new > 0 {
            metrics::counter!(crate::alerts::metric::RAISED, "kind" => kind).increment(new as u64);
            self.alerted.send_modify(|n| *n += 1);
        }
    }
}

#[async_trait]
impl LiveStore for SqliteStore {
    /// From now on, every change of a period's counter raises the alerts its tenant's plan sets
    /// (see [`crate::alerts`]), in the same transaction.
    fn set_allowances(&self, allowances: Arc<dyn Allowances>) {
        *self.allowances.write().unwrap_or_else(|e| e.into_inner()) = Some(allowances);
    }

    /// Raises the thresholds `tenant`'s counters of `period` have already reached (after its
    /// plan changed, when no event may come to trigger them); returns how many are new. Blocking.
    fn reevaluate(&self, tenant: &str, period: Period) -> Result<usize, Error> {
        let allowances = self.allowances.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(allowances) = allowances else { return Ok(0) };
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let counters: Vec<(Key, Tally)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT meter, value, latest_us, latest_id FROM tallies WHERE tenant = ?1 AND bucket = ?2",
            )?;
            let rows = stmt.query_map(params![tenant, period.to_string()], |r| {
                Ok(((tenant.to_string(), r.get::<_, String>(0)?, period.to_string()), tally_from(r, 1)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let known = self.raised.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (raised, new) = raise_alerts(&tx, &*allowances, counters.iter().map(|(k, t)| (k, t)), &known)?;
        tx.commit()?;
        drop(conn);
        self.raised.lock().unwrap_or_else(|e| e.into_inner()).extend(raised);
        self.announce("usage_threshold", new);
        Ok(new)
    }

    /// Raises an `upgrade_suggested` alert, unless that tier was suggested to the tenant in the
    /// period before; returns whether it is new. Blocking (it waits for the writer).
    fn suggest(&self, s: Suggestion) -> Result<bool, Error> {
        let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let id = suggestion_id(&s.tenant, &s.period, &s.suggested_plan);
        let n = conn.execute(
            "INSERT OR IGNORE INTO alerts (id, tenant, meter, period, percent, threshold, included, value, plan,
                 raised_us, kind, suggested_plan, saving)
             VALUES (?1, ?2, '', ?3, 0, '', '', '', ?4, ?5, 'upgrade_suggested', ?6, ?7)",
            params![id, s.tenant, s.period, s.plan, now_us(), s.suggested_plan, s.saving.normalize().to_string()],
        )?;
        drop(conn);
        self.announce("upgrade_suggested", n);
        Ok(n == 1)
    }

    /// Answers a hard-limit check's queries from one snapshot (see [`crate::limits`]).
    async fn limit_states(&self, queries: Vec<LimitQuery>) -> Result<LimitSnapshot, Error> {
        let reads = self.reads.clone();
        let seen_by_readers = self.seen_by_readers.clone();
        Ok(blocking(move || {
            reads.with(|conn| {
                let tx = conn.transaction()?;
                let mut states = Vec::with_capacity(queries.len());
                let mut seen = seen_by_readers.lock().unwrap_or_else(|e| e.into_inner());
                seen.refresh(&tx, "seen")?;
                {
                    let mut value = tx
                        .prepare_cached("SELECT value FROM tallies WHERE tenant = ?1 AND meter = ?2 AND bucket = ?3")?;
                    let mut unique = tx.prepare_cached(
                        "SELECT 1 FROM uniques WHERE tenant = ?1 AND meter = ?2 AND bucket = ?3 AND value = ?4",
                    )?;
                    for q in queries {
                        let mut state = LimitState::default();
                        for id in q.ids {
                            if seen.get(&tx, &q.tenant, &id)?.is_some() {
                                state.counted.insert(id);
                            }
                        }
                        for (meter, values) in q.meters {
                            let v: Option<Option<String>> =
                                value.query_row(params![q.tenant, meter, q.bucket], |r| r.get(0)).optional()?;
                            if let Some(v) = v.flatten().and_then(|v| Decimal::from_str(&v).ok()) {
                                state.values.insert(meter.clone(), v);
                            }
                            let mut known = HashSet::new();
                            for v in values {
                                if unique.exists(params![q.tenant, meter, q.bucket, v])? {
                                    known.insert(v);
                                }
                            }
                            if !known.is_empty() {
                                state.known.insert(meter, known);
                            }
                        }
                        states.push(state);
                    }
                }
                let progress: i64 =
                    tx.query_row("SELECT COALESCE(SUM(next_offset), 0) FROM checkpoints", [], |r| r.get(0))?;
                drop(seen);
                tx.commit()?;
                Ok(LimitSnapshot { progress: progress.max(0) as u64, states })
            })
        })
        .await?)
    }

    /// One file on one host: the process that checks limits keeps its holds in memory.
    fn shares_holds(&self) -> bool {
        false
    }

    async fn limit_check(
        &self,
        _: Vec<LimitQuery>,
        _: Duration,
        _: crate::Decide,
    ) -> Result<Option<Vec<(usize, String)>>, Error> {
        Ok(None)
    }

    /// Changes after every write that raised an alert, so that delivery need not poll; each
    /// subscriber (webhooks, the Kafka topic) sees every change.
    fn alerted(&self) -> tokio::sync::watch::Receiver<u64> {
        self.alerted.subscribe()
    }

    /// Alerts raised after `after_seq` (of `tenant`, when given), oldest first, at most `limit`.
    async fn alerts(&self, tenant: Option<&str>, after_seq: u64, limit: usize) -> Result<Vec<Alert>, Error> {
        let reads = self.reads.clone();
        let tenant = tenant.map(str::to_string);
        let rows = blocking(move || {
            reads.with(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT seq, id, tenant, meter, period, percent, threshold, included, value, plan, raised_us,
                            kind, suggested_plan, saving
                     FROM alerts WHERE seq > ?1 AND (?2 IS NULL OR tenant = ?2) ORDER BY seq LIMIT ?3",
                )?;
                let rows = stmt.query_map(params![after_seq as i64, tenant, limit as i64], |r| {
                    let kind: String = r.get(11)?;
                    let threshold = kind == "usage_threshold";
                    let some = |v: String| threshold.then_some(v);
                    Ok(Alert {
                        seq: r.get::<_, i64>(0)? as u64,
                        id: r.get(1)?,
                        tenant: r.get(2)?,
                        meter: some(r.get(3)?),
                        period: r.get(4)?,
                        percent: threshold.then_some(r.get(5)?),
                        threshold: some(r.get(6)?),
                        included: some(r.get(7)?),
                        value: some(r.get(8)?),
                        plan: r.get(9)?,
                        raised_at: format_time(r.get(10)?),
                        kind,
                        suggested_plan: r.get(12)?,
                        saving: r.get(13)?,
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
        })
        .await?;
        Ok(rows)
    }
}

/// Raises, for every period counter of `changed`, each alert its tenant's plan sets that the
/// counter has reached; an alert raised before (same id; `known`, or in the table) is left as it
/// was. Returns the ids now known to be raised, and how many were raised now.
fn raise_alerts<'a>(
    tx: &Connection,
    allowances: &dyn Allowances,
    changed: impl IntoIterator<Item = (&'a Key, &'a Tally)>,
    known: &HashSet<String>,
) -> Result<(Vec<String>, usize), Error> {
    let mut raise = tx.prepare_cached(
        "INSERT OR IGNORE INTO alerts (id, tenant, meter, period, percent, threshold, included, value, plan, raised_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    let mut exists = tx.prepare_cached("SELECT 1 FROM alerts WHERE id = ?1")?;
    let now = now_us();
    let (mut out, mut new) = (Vec::new(), 0);
    for ((tenant, meter, bucket), t) in changed {
        for r in thresholds(allowances, (tenant, meter, bucket), t, known) {
            if exists.exists(params![r.id])? {
                out.push(r.id);
                continue;
            }
            raise.execute(params![
                r.id,
                r.tenant,
                r.meter,
                r.period,
                r.percent,
                r.threshold,
                r.included,
                r.value,
                r.plan,
                now
            ])?;
            out.push(r.id);
            new += 1;
        }
    }
    Ok((out, new))
}

/// The two tables whose rows take their ids in their tenant's slot (`counter_slots`).
#[derive(Clone, Copy)]
enum CounterTable {
    Tallies,
    Breakdowns,
}

impl CounterTable {
    /// The position after the last row of the table in the slot whose first id is `?1`, 0 if it
    /// has none.
    fn past_rows(self) -> &'static str {
        match self {
            CounterTable::Tallies => {
                "SELECT coalesce(max(id) + 1 - ?1, 0) FROM tallies WHERE id BETWEEN ?1 AND ?1 + 4294967295"
            }
            CounterTable::Breakdowns => {
                "SELECT coalesce(max(id) + 1 - ?1, 0) FROM breakdowns WHERE id BETWEEN ?1 AND ?1 + 4294967295"
            }
        }
    }
}

/// A tenant's slot and how many ids it has given in each table.
struct Slot {
    number: i64,
    tallies: i64,
    breakdowns: i64,
    /// Whether the batch in progress gave it ids (and must write it).
    changed: bool,
}

impl Slot {
    /// Its count of ids given in `table`.
    fn given(&mut self, table: CounterTable) -> &mut i64 {
        match table {
            CounterTable::Tallies => &mut self.tallies,
            CounterTable::Breakdowns => &mut self.breakdowns,
        }
    }
}

/// Most tenants' slots kept in memory; past it the map starts over (`counter_slots` has them).
const SLOT_ENTRIES: usize = 500_000;

/// Each tenant's slot (`counter_slots`) with its counts as committed plus what the batch in
/// progress gave: a row's id is its tenant's slot times 2^32 plus the tenant's count of rows so
/// far in that table, never given twice. A tenant's slot is read the first time a batch gives it
/// an id; a new tenant takes the greatest slot plus one, read once in each batch that meets a new
/// tenant (another process on the file may have taken slots since). The batch writes each
/// tenant it gave ids once ([`WRITE_SLOT`]).
///
/// Locked only while `writer` is held, and emptied with the counters' caches: after a batch that
/// failed, its counts may be ones its transaction rolled back; after a checkpoint read, another
/// process may have given ids to a tenant (a tenant's events are all in one partition, whose
/// owner alone writes its counters).
#[derive(Default)]
struct Slots {
    by_tenant: indexmap::IndexMap<String, Slot, hashbrown::DefaultHashBuilder>,
    /// The slot the next new tenant takes, once read in a batch.
    next: Option<i64>,
    /// The places in `by_tenant` of the tenants the batch in progress gave ids.
    changed: Vec<usize>,
}

impl Slots {
    /// Starts a batch. Past [`SLOT_ENTRIES`] tenants, or with counts a batch left unwritten
    /// (one that failed without [`Slots::clear`]), the map starts over.
    fn begin(&mut self) {
        if self.by_tenant.len() > SLOT_ENTRIES || !self.changed.is_empty() {
            self.clear();
        }
        self.next = None;
    }

    /// Forgets every tenant's slot (`counter_slots` has the committed ones).
    fn clear(&mut self) {
        self.by_tenant.clear();
        self.next = None;
        self.changed.clear();
    }

    /// The next id of `tenant` in `table`.
    fn next_id(&mut self, tx: &Connection, tenant: &str, table: CounterTable) -> Result<i64, Error> {
        let at = self.place(tx, tenant)?;
        Ok(self.give(at, table))
    }

    /// The next id of `tenant` in `table` past every row in its slot's range: one added without
    /// an id, by a build from before migration 9 still running, takes the table's greatest id
    /// plus one (the next position of the greatest slot), which the count does not know.
    fn next_id_past_rows(&mut self, tx: &Connection, tenant: &str, table: CounterTable) -> Result<i64, Error> {
        let at = self.place(tx, tenant)?;
        let (_, slot) = self.by_tenant.get_index_mut(at).expect("a place the map gave");
        let past: i64 = tx.prepare_cached(table.past_rows())?.query_row([slot.number << 32], |r| r.get(0))?;
        let given = slot.given(table);
        *given = (*given).max(past);
        Ok(self.give(at, table))
    }

    /// The place of `tenant`'s slot in the map: read from `counter_slots` if the map lacks it, a
    /// new slot if the table lacks it too.
    fn place(&mut self, tx: &Connection, tenant: &str) -> Result<usize, Error> {
        if let Some(at) = self.by_tenant.get_index_of(tenant) {
            return Ok(at);
        }
        let stored = tx
            .prepare_cached(READ_SLOT)?
            .query_row([tenant], |r| {
                Ok(Slot { number: r.get(0)?, tallies: r.get(1)?, breakdowns: r.get(2)?, changed: false })
            })
            .optional()?;
        let slot = match stored {
            Some(slot) => slot,
            None => {
                let number = match self.next {
                    Some(next) => next,
                    None => tx.query_row("SELECT coalesce(max(slot), 0) + 1 FROM counter_slots", [], |r| r.get(0))?,
                };
                self.next = Some(number + 1);
                Slot { number, tallies: 0, breakdowns: 0, changed: false }
            }
        };
        Ok(self.by_tenant.insert_full(tenant.to_string(), slot).0)
    }

    /// Gives the next id of the slot at `at` in `table`, marking the slot to be written.
    fn give(&mut self, at: usize, table: CounterTable) -> i64 {
        let (_, slot) = self.by_tenant.get_index_mut(at).expect("a place the map gave");
        if !slot.changed {
            slot.changed = true;
            self.changed.push(at);
        }
        let first = slot.number << 32;
        let given = slot.given(table);
        *given += 1;
        first + *given - 1
    }

    /// Writes the slot of each tenant the batch gave ids, once; [`Error::SlotMoved`] if a
    /// tenant's stored slot is not the one kept.
    fn write(&mut self, tx: &Connection) -> Result<(), Error> {
        let mut write = tx.prepare_cached(WRITE_SLOT)?;
        for at in self.changed.drain(..) {
            let (tenant, slot) = self.by_tenant.get_index_mut(at).expect("a place the map gave");
            slot.changed = false;
            if write.execute(params![tenant, slot.number, slot.tallies, slot.breakdowns])? != 1 {
                return Err(Error::SlotMoved { tenant: tenant.clone(), kept: slot.number });
            }
        }
        Ok(())
    }
}

/// Forgets what the writer keeps of the database between batches: the counters and the tenants'
/// slots (after a batch that failed, having changed them in place; or when another process may
/// have written).
fn forget_kept(cache: &mut Cache<Key>, group_cache: &mut Cache<GroupKey>, slots: &mut Slots) {
    cache.clear();
    group_cache.clear();
    slots.clear();
}

/// The statements that write one table's counters in a batch's transaction. `insert` and
/// `upsert` bind a new row's id, the key's columns and then the stored ones; `by_id` binds the
/// row's id and then the stored ones.
struct CounterWrites<'c> {
    tx: &'c Connection,
    table: CounterTable,
    by_id: CachedStatement<'c>,
    insert: CachedStatement<'c>,
    upsert: CachedStatement<'c>,
}

impl<'c> CounterWrites<'c> {
    /// The statements: `by_id` an update by row id; `insert` the insert that skips a row whose
    /// id is taken (`INSERT OR IGNORE` + `into`), and the upsert (`INSERT` + `into` +
    /// `on_conflict` + `RETURNING id`).
    fn prepare(
        tx: &'c Connection,
        table: CounterTable,
        by_id: &str,
        into: &str,
        on_conflict: &str,
    ) -> Result<Self, Error> {
        Ok(CounterWrites {
            tx,
            table,
            by_id: tx.prepare_cached(by_id)?,
            insert: tx.prepare_cached(&format!("INSERT OR IGNORE {into}"))?,
            upsert: tx.prepare_cached(&format!("INSERT {into} {on_conflict} RETURNING id"))?,
        })
    }

    /// Writes one counter of `tenant` (the key's first column) in the write transaction that read
    /// it: by its row's id when it has one; if it has none, the transaction found no row for its
    /// key, and an insert adds one with the next id of its tenant's slot (rather than the
    /// upsert). If no row has its id any more, or the insert added nothing (the next id was taken
    /// by a row the slot's count does not know; any other conflict it skips, the upsert meets
    /// again and answers or fails with), by its key: the upsert with an id past the slot's rows,
    /// answering the row's. The id is kept on the cached counter. A counter has no id only in
    /// the transaction that loaded it (a batch that fails empties the caches).
    fn store(
        &mut self,
        slots: &mut Slots,
        id: &mut Option<i64>,
        tenant: &str,
        key: &[&dyn ToSql],
        stored: &[&dyn ToSql],
    ) -> Result<(), Error> {
        match *id {
            Some(at) => {
                let set = std::iter::once(&at as &dyn ToSql).chain(stored.iter().copied());
                if self.by_id.execute(params_from_iter(set))? == 1 {
                    return Ok(());
                }
            }
            None => {
                let new = slots.next_id(self.tx, tenant, self.table)?;
                let row = std::iter::once(&new as &dyn ToSql).chain(key.iter().copied()).chain(stored.iter().copied());
                if self.insert.execute(params_from_iter(row))? == 1 {
                    *id = Some(new);
                    return Ok(());
                }
            }
        }
        let new = slots.next_id_past_rows(self.tx, tenant, self.table)?;
        let row = std::iter::once(&new as &dyn ToSql).chain(key.iter().copied()).chain(stored.iter().copied());
        *id = Some(self.upsert.query_row(params_from_iter(row), |r| r.get(0))?);
        Ok(())
    }
}

/// A breakdown's stored amount.
fn amount_of(text: &str) -> Result<Decimal, Error> {
    Decimal::from_str(text).map_err(|_| Error::Unreadable(format!("breakdown amount {text:?}")))
}

fn tally_from(row: &Row<'_>, first: usize) -> meter_sqlite::rusqlite::Result<Tally> {
    let value: Option<String> = row.get(first)?;
    let latest_us: Option<i64> = row.get(first + 1)?;
    let latest_id: Option<String> = row.get(first + 2)?;
    Ok(Tally { value: value.and_then(|v| Decimal::from_str(&v).ok()), latest: latest_us.zip(latest_id) })
}

#[async_trait]
impl UsageStore for SqliteStore {
    fn checkpoint(&self, consumer: &str) -> Result<Checkpoint, Error> {
        let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        forget_kept(
            &mut Cache::lock(&self.cache),
            &mut Cache::lock(&self.group_cache),
            &mut lock_or_clear(&self.slots, Slots::clear),
        );
        let other: Option<String> = conn
            .query_row("SELECT consumer FROM checkpoints WHERE consumer <> ?1 LIMIT 1", [consumer], |r| r.get(0))
            .optional()?;
        if let Some(other) = other {
            return Err(Error::OtherConsumer { found: other, asked: consumer.to_string() });
        }
        let mut stmt = conn
            .prepare_cached("SELECT partition, next_offset FROM checkpoints WHERE consumer = ?1 ORDER BY partition")?;
        let positions = stmt
            .query_map([consumer], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as u64)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Checkpoint { positions })
    }

    fn apply(
        &self,
        consumer: &str,
        meters: &[MeterDef],
        events: &[Metered],
        progress: &Progress,
    ) -> Result<Applied, Error> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut cache = Cache::lock(&self.cache);
        let mut group_cache = Cache::lock(&self.group_cache);
        let mut slots = lock_or_clear(&self.slots, Slots::clear);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        seen.begin(&tx)?;
        {
            let mut stored =
                tx.prepare_cached("SELECT next_offset FROM checkpoints WHERE consumer = ?1 AND partition = ?2")?;
            for a in &progress.partitions {
                let at: i64 = stored.query_row(params![consumer, a.partition], |r| r.get(0)).optional()?.unwrap_or(0);
                if at as u64 != a.from {
                    return Err(Error::Fenced { partition: a.partition, stored: at as u64, from: a.from });
                }
            }
        }
        // The counters are added to in place: a batch that fails leaves them as the database
        // never had them (and with the ids of rows it rolled back, which `counter_slots` gives
        // out again), so the caches are emptied.
        let written = (|| {
            let mut applied = Applied::default();
            cache.begin(CACHE_ENTRIES);
            group_cache.begin(GROUP_CACHE_ENTRIES);
            slots.begin();
            // The period's and the day's bucket of the last event's day: a batch is mostly one day.
            let mut day = None;
            let (mut raised, mut new_alerts) = (Vec::new(), 0);
            {
                let mut unique = tx.prepare_cached(
                    "INSERT OR IGNORE INTO uniques (tenant, meter, bucket, value) VALUES (?1, ?2, ?3, ?4)",
                )?;
                let mut load = tx.prepare_cached(
                    "SELECT value, latest_us, latest_id, id FROM tallies WHERE tenant = ?1 AND meter = ?2 AND bucket = ?3",
                )?;
                let mut load_group = tx.prepare_cached(
                    "SELECT amount, id FROM breakdowns
                     WHERE tenant = ?1 AND period = ?2 AND meter = ?3 AND property = ?4 AND value = ?5",
                )?;
                let mut ids = seen.batch(&tx);
                for ev in events {
                    if ids.insert_new(&ev.tenant, &ev.id, (Vec::new(), 0))?.is_some() {
                        applied.duplicates += 1;
                        continue;
                    }
                    applied.counted += 1;
                    let d = day_of(ev.time_us);
                    let buckets = match &day {
                        Some((at, buckets)) if *at == d => buckets,
                        _ => &day.insert((d, [Period::containing(ev.time_us).to_string(), format_day(d)])).1,
                    };
                    for (m, c) in &ev.contributions {
                        let meter = &meters.get(*m).ok_or(Error::UnknownMeter(*m))?.name;
                        for bucket in buckets {
                            if let Contribution::Unique(v) = c
                                && unique.execute(params![ev.tenant, meter, bucket, v])? == 0
                            {
                                continue;
                            }
                            let key = KeyRef(&ev.tenant, meter, bucket);
                            let tally = cache.current(&key, |KeyRef(t, m, b)| {
                                let stored = load.query_row(params![t, m, b], |r| {
                                    Ok(Counter { tally: tally_from(r, 0)?, id: Some(r.get(3)?) })
                                });
                                Ok(stored.optional()?.unwrap_or_default())
                            })?;
                            tally.add(c, ev.time_us, &ev.id)?;
                        }
                    }
                    for (m, values) in &ev.groups {
                        let def = meters.get(*m).ok_or(Error::UnknownMeter(*m))?;
                        let Some((_, c)) = ev.contributions.iter().find(|(i, _)| i == m) else { continue };
                        for (property, value) in def.group_by.iter().zip(values) {
                            let key = GroupRef(&ev.tenant, &buckets[0], &def.name, property, value);
                            let amount = group_cache.current(&key, |GroupRef(t, b, m, p, x)| {
                                let stored: Option<(String, i64)> = load_group
                                    .query_row(params![t, b, m, p, x], |r| Ok((r.get(0)?, r.get(1)?)))
                                    .optional()?;
                                let Some((amount, id)) = stored else { return Ok(Counter::default()) };
                                Ok(Counter {
                                    tally: Tally { value: Some(amount_of(&amount)?), latest: None },
                                    id: Some(id),
                                })
                            })?;
                            amount.add(c, ev.time_us, &ev.id)?;
                        }
                    }
                }
                let mut tallies = CounterWrites::prepare(
                    &tx,
                    CounterTable::Tallies,
                    "UPDATE tallies SET value = ?2, latest_us = ?3, latest_id = ?4 WHERE id = ?1",
                    "INTO tallies (id, tenant, meter, bucket, value, latest_us, latest_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    "ON CONFLICT (tenant, meter, bucket) DO UPDATE
                     SET value = excluded.value, latest_us = excluded.latest_us, latest_id = excluded.latest_id",
                )?;
                // Tallies before breakdowns (every counted event has a tally), and a batch's new
                // counters in key order: the tenants a batch counts first take their slots
                // ([`Slots`]) in the order of their names, as rows keyed by tenant lay before.
                cache.write_touched(|(tenant, meter, bucket), c| {
                    let value = c.tally.value.map(|v| v.to_string());
                    let latest = c.tally.latest.as_ref();
                    let (latest_us, latest_id) = (latest.map(|l| l.0), latest.map(|l| &l.1));
                    let stored: [&dyn ToSql; 3] = [&value, &latest_us, &latest_id];
                    tallies.store(&mut slots, &mut c.id, tenant, &[tenant, meter, bucket], &stored)
                })?;
                let mut breakdowns = CounterWrites::prepare(
                    &tx,
                    CounterTable::Breakdowns,
                    "UPDATE breakdowns SET amount = ?2 WHERE id = ?1",
                    "INTO breakdowns (id, tenant, period, meter, property, value, amount)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    "ON CONFLICT (tenant, period, meter, property, value) DO UPDATE SET amount = excluded.amount",
                )?;
                group_cache.write_touched(|(tenant, period, meter, property, value), c| {
                    let amount = c.tally.value.unwrap_or_default().to_string();
                    breakdowns.store(
                        &mut slots,
                        &mut c.id,
                        tenant,
                        &[tenant, period, meter, property, value],
                        &[&amount],
                    )
                })?;
                slots.write(&tx)?;
                let allowances = self.allowances.read().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some(allowances) = allowances {
                    let known = self.raised.lock().unwrap_or_else(|e| e.into_inner());
                    let changed = cache.touched().map(|(k, c)| (k, &c.tally));
                    (raised, new_alerts) = raise_alerts(&tx, &*allowances, changed, &known)?;
                }
                let mut position = tx.prepare_cached(
                    "INSERT INTO checkpoints (consumer, partition, next_offset, watermark_us) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (consumer, partition) DO UPDATE SET next_offset = excluded.next_offset,
                         watermark_us = coalesce(max(watermark_us, excluded.watermark_us), watermark_us, excluded.watermark_us)",
                )?;
                for a in &progress.partitions {
                    position.execute(params![consumer, a.partition, a.to as i64, progress.watermark_us])?;
                }
            }
            seen.commit(tx)?;
            Ok::<_, Error>((applied, raised, new_alerts))
        })();
        let (applied, raised, new_alerts) =
            written.inspect_err(|_| forget_kept(&mut cache, &mut group_cache, &mut slots))?;
        if let Err(e) = seen.committed(&mut conn, now_us()) {
            tracing::warn!(error = %e, "moving counted ids into the dedup index failed; trying again after the next batch");
        }
        drop(seen);
        // Committed: a failure to bound the WAL only leaves it for the next batch.
        if let Err(e) = self.wal.after_commit(&conn) {
            tracing::warn!(error = %e, "bounding the usage store's WAL failed; trying again after the next batch");
        }
        self.raised.lock().unwrap_or_else(|e| e.into_inner()).extend(raised);
        self.announce("usage_threshold", new_alerts);
        Ok(applied)
    }

    fn advance_watermark(&self, consumer: &str, partitions: &[u32], watermark_us: i64) -> Result<(), Error> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut save = tx.prepare_cached(
                "INSERT INTO checkpoints (consumer, partition, next_offset, watermark_us) VALUES (?1, ?2, 0, ?3)
                 ON CONFLICT (consumer, partition) DO UPDATE
                 SET watermark_us = coalesce(max(watermark_us, excluded.watermark_us), watermark_us, excluded.watermark_us)",
            )?;
            for p in partitions {
                save.execute(params![consumer, p, watermark_us])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    async fn usage(&self, tenant: &str, period: Period, coverage: Coverage<'_>) -> Result<PeriodUsage, Error> {
        let reads = self.reads.clone();
        let tenant = tenant.to_string();
        let (consumer, partition) = (coverage.consumer.to_string(), coverage.partition);
        let (from, to) = (period.to_string(), period.next().to_string());
        let rows = blocking(move || {
            reads.with(|conn| {
                let tx = conn.transaction()?;
                let rows = {
                    let mut stmt = tx.prepare_cached(
                        "SELECT meter, bucket, value, latest_us, latest_id FROM tallies
                         WHERE tenant = ?1 AND bucket >= ?2 AND bucket < ?3",
                    )?;
                    stmt.query_map(params![tenant, from, to], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, tally_from(r, 2)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?
                };
                let watermark: Option<i64> = tx
                    .query_row(
                        "SELECT watermark_us FROM checkpoints WHERE consumer = ?1 AND partition = ?2",
                        params![consumer, partition],
                        |r| r.get(0),
                    )
                    .optional()?
                    .flatten();
                tx.commit()?;
                Ok((rows, watermark))
            })
        })
        .await?;
        let (rows, watermark_us) = rows;
        let mut usage = PeriodUsage { meters: Default::default(), watermark_us };
        for (meter, bucket, tally) in rows {
            let entry: &mut MeterTallies = usage.meters.entry(meter).or_default();
            if bucket.len() == 7 {
                entry.period = tally;
            } else {
                entry.days.insert(bucket, tally);
            }
        }
        Ok(usage)
    }

    async fn daily(&self, tenant: &str, from: Date, to: Date) -> Result<Series, Error> {
        let sql = "SELECT meter, bucket, value, latest_us, latest_id FROM tallies
                   WHERE tenant = ?1 AND bucket >= ?2 AND bucket < ?3 AND length(bucket) = 10";
        let args = vec![tenant.to_string(), format_day(from), format_day(to)];
        Ok(nest(self.keyed_tallies(sql, args).await?))
    }

    async fn period_totals_in(&self, period: Period, after: Option<&str>, upto: Option<&str>) -> Result<Totals, Error> {
        // A bound only where there is one (each shape kept prepared).
        let mut sql = "SELECT tenant, meter, value, latest_us, latest_id FROM tallies WHERE bucket = ?1".to_string();
        let mut args = vec![period.to_string()];
        for (bound, op) in [(after, ">"), (upto, "<=")] {
            if let Some(b) = bound {
                args.push(b.to_string());
                sql.push_str(&format!(" AND tenant {op} ?{}", args.len()));
            }
        }
        Ok(nest(self.keyed_tallies(sql, args).await?))
    }

    async fn breakdown(&self, tenant: &str, period: Period) -> Result<Breakdown, Error> {
        let reads = self.reads.clone();
        let (tenant, period) = (tenant.to_string(), period.to_string());
        let rows = blocking(move || {
            reads.with(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT meter, property, value, amount FROM breakdowns WHERE tenant = ?1 AND period = ?2",
                )?;
                let rows = stmt.query_map(params![tenant, period], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
        })
        .await?;
        let mut out = Breakdown::new();
        for (meter, property, value, amount) in rows {
            out.entry(meter).or_default().entry(property).or_default().insert(value, amount_of(&amount)?);
        }
        Ok(out)
    }

    async fn watermark(&self, consumer: &str, partitions: u32) -> Result<Option<i64>, Error> {
        let reads = self.reads.clone();
        let consumer = consumer.to_string();
        let marks = blocking(move || {
            reads.with(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT partition, watermark_us FROM checkpoints WHERE consumer = ?1 AND watermark_us IS NOT NULL",
                )?;
                let rows = stmt.query_map(params![consumer], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)?)))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
        })
        .await?;
        Ok(crate::slowest(&marks, partitions))
    }

    async fn positions(&self, consumer: &str) -> Result<Vec<(u32, u64)>, Error> {
        let reads = self.reads.clone();
        let consumer = consumer.to_string();
        blocking(move || {
            reads.with(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT partition, next_offset FROM checkpoints WHERE consumer = ?1 ORDER BY partition",
                )?;
                let rows =
                    stmt.query_map(params![consumer], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as u64)))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
        })
        .await
        .map_err(Error::from)
    }
}

impl SqliteStore {
    /// Rows of two keys and a tally from `sql` (whose columns are the keys, then the tally's),
    /// read off the async runtime.
    async fn keyed_tallies(
        &self,
        sql: impl Into<String>,
        args: Vec<String>,
    ) -> Result<Vec<(String, String, Tally)>, Error> {
        let (reads, sql) = (self.reads.clone(), sql.into());
        let rows = blocking(move || {
            reads.with(|conn| {
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt
                    .query_map(meter_sqlite::rusqlite::params_from_iter(args), |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, tally_from(r, 2)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
        })
        .await?;
        Ok(rows)
    }
}

/// `(a, b, tally)` rows as a map by `a`, then by `b`.
fn nest(rows: Vec<(String, String, Tally)>) -> BTreeMap<String, BTreeMap<String, Tally>> {
    let mut nested: BTreeMap<String, BTreeMap<String, Tally>> = BTreeMap::new();
    for (a, b, tally) in rows {
        nested.entry(a).or_default().insert(b, tally);
    }
    nested
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{MID_NOVEMBER, adv, metered, meters};
    use crate::{Coverage, UsageStore};
    use rust_decimal::Decimal;

    fn call(offset: u64, id: &str) -> Metered {
        let route = serde_json::json!({"route": "/x", "method": "GET", "status": 200});
        metered(offset, "a", id, "api.call", route, MID_NOVEMBER)
    }

    /// `a`'s api calls in November: the period's, the 15th's, and the route `/x`'s.
    async fn calls(store: &SqliteStore) -> (Option<Decimal>, Option<Decimal>, Option<Decimal>) {
        let nov = "2026-11".parse().unwrap();
        let usage = store.usage("a", nov, Coverage { consumer: "c", partition: 0 }).await.unwrap();
        let calls = &usage.meters["api_calls"];
        let by_route = store.breakdown("a", nov).await.unwrap();
        let route = by_route.get("api_calls").and_then(|p| p.get("route")).and_then(|v| v.get("/x")).copied();
        (calls.period.value, calls.days.get("2026-11-15").and_then(|d| d.value), route)
    }

    /// A file from before counters were rewritten by row id (their tables keyed by text) keeps
    /// its counters, and counting adds to them, in this process and in the next.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counters_kept_by_key_before_keep_their_values_and_count_on() {
        let (_dir, path) = old_file(
            7,
            "INSERT INTO tallies VALUES ('a', 'api_calls', '2026-11', '5', NULL, NULL),
                 ('a', 'api_calls', '2026-11-15', '4', NULL, NULL), ('b', 'api_calls', '2026-11', '9', NULL, NULL),
                 ('b', 'seats', '2026-11', '3', 1794744000000123, 'e9');
             INSERT INTO breakdowns VALUES ('a', '2026-11', 'api_calls', 'route', '/x', '5');
             INSERT INTO checkpoints (consumer, partition, next_offset) VALUES ('c', 0, 1);",
        );
        let store = SqliteStore::open(&path, Durability::Normal).unwrap();
        store.checkpoint("c").unwrap();
        let five = Decimal::from(5);
        assert_eq!(calls(&store).await, (Some(five), Some(Decimal::from(4)), Some(five)));
        store.apply("c", &meters(), &[call(1, "c1")], &adv(1, 2)).unwrap();
        store.apply("c", &meters(), &[call(2, "c2")], &adv(2, 3)).unwrap();
        let seven = Decimal::from(7);
        assert_eq!(calls(&store).await, (Some(seven), Some(Decimal::from(6)), Some(seven)));
        drop(store);
        let store = SqliteStore::open(&path, Durability::Normal).unwrap();
        store.checkpoint("c").unwrap();
        store.apply("c", &meters(), &[call(3, "c3")], &adv(3, 4)).unwrap();
        let eight = Decimal::from(8);
        assert_eq!(calls(&store).await, (Some(eight), Some(Decimal::from(7)), Some(eight)));
        let b = store.usage("b", "2026-11".parse().unwrap(), Coverage { consumer: "c", partition: 0 }).await.unwrap();
        assert_eq!(b.meters["api_calls"].period.value, Some(Decimal::from(9)));
        let seats = Tally { value: Some(Decimal::from(3)), latest: Some((1_794_744_000_000_123, "e9".into())) };
        assert_eq!(b.meters["seats"].period, seats, "a latest value keeps the event that set it");
    }

    /// A file at schema `version` (an older build's) holding the rows `sql` inserts.
    fn old_file(version: usize, sql: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let mut old = Connection::open(&path).unwrap();
        migrate(&mut old, &path, &MIGRATIONS[..version]).unwrap();
        old.execute_batch(sql).unwrap();
        (dir, path)
    }

    /// Tenants in the order each table's rows lie in (by row id), one entry per run.
    fn runs(path: &Path, table: &str) -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn.prepare(&format!("SELECT tenant FROM {table} ORDER BY id")).unwrap();
        let mut runs: Vec<String> = Vec::new();
        for t in stmt.query_map([], |r| r.get::<_, String>(0)).unwrap() {
            let t = t.unwrap();
            if runs.last() != Some(&t) {
                runs.push(t);
            }
        }
        runs
    }

    /// Events of six tenants taking turns, each counting first one meter and then others: a
    /// tenant's counters and breakdowns lie together (each tenant's rows one run), whenever each
    /// was first counted, so that a batch of a few tenants rewrites few pages; and tenants first
    /// counted in one batch lie in the order of their names.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tenants_counters_lie_together() {
        const TENANTS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let store = SqliteStore::open(&path, Durability::Normal).unwrap();
        let route = |r: &str| serde_json::json!({"route": r, "method": "GET", "status": 200});
        let mut offset = 0;
        for round in 0..3 {
            let batch: Vec<Metered> = TENANTS
                .iter()
                .map(|t| {
                    offset += 1;
                    let id = format!("{t}{round}");
                    // `a` first counts a meter without breakdowns: still the first slot.
                    match (round, *t) {
                        (0, "a") | (1, _) => crate::contract::tokens(t, &id, 10, MID_NOVEMBER),
                        (0, _) => metered(offset - 1, t, &id, "api.call", route("/x"), MID_NOVEMBER),
                        _ => metered(offset - 1, t, &id, "api.call", route("/y"), MID_NOVEMBER + 86_400_000_000),
                    }
                })
                .collect();
            store.apply("c", &meters(), &batch, &adv(offset - 6, offset)).unwrap();
        }
        drop(store);
        assert_eq!(runs(&path, "tallies"), TENANTS);
        assert_eq!(runs(&path, "breakdowns"), TENANTS);
    }

    /// Times the writer has run `sql`, a statement it keeps prepared.
    fn runs_of(store: &SqliteStore, sql: &str) -> i32 {
        let conn = store.writer.lock().unwrap();
        conn.prepare_cached(sql).unwrap().get_status(meter_sqlite::rusqlite::StatementStatus::Run)
    }

    /// A batch reads a tenant's slot (`counter_slots`) only the first time one gives it an id,
    /// gives its new counters their ids in memory, the next ones of the slot in key order whether
    /// or not the tenant had rows before, and writes the slot once, whichever tables it added
    /// rows to (a batch of many new tenants ran two upserts with `RETURNING` for each, 10 % of
    /// the aggregating thread at 10,000 tenants). A store opened again goes on from the counts
    /// written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_reads_and_writes_each_tenants_slot_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let store = SqliteStore::open(&path, Durability::Normal).unwrap();
        let route = |r: &str| serde_json::json!({"route": r, "method": "GET", "status": 200});
        let day = |n: i64| MID_NOVEMBER + n * 86_400_000_000;
        // b: two meters, two buckets (4 tallies); a: one meter on two days (3 tallies) and two
        // routes (2 breakdowns).
        let first = [
            crate::contract::tokens("b", "b1", 10, MID_NOVEMBER),
            metered(1, "a", "a1", "api.call", route("/x"), MID_NOVEMBER),
            metered(2, "a", "a2", "api.call", route("/y"), day(1)),
        ];
        store.apply("c", &meters(), &first, &adv(0, 3)).unwrap();
        assert_eq!(runs_of(&store, READ_SLOT), 2, "one read for each tenant given ids for the first time");
        assert_eq!(runs_of(&store, WRITE_SLOT), 2, "one write for each tenant with new rows, for both tables");
        // a again, with a tally and a breakdown it had not (the 17th, route /z).
        store.apply("c", &meters(), &[metered(3, "a", "a3", "api.call", route("/z"), day(2))], &adv(3, 4)).unwrap();
        assert_eq!(runs_of(&store, READ_SLOT), 2, "a tenant given ids before is not read again");
        assert_eq!(runs_of(&store, WRITE_SLOT), 3);
        // a batch without new rows writes no slot.
        store.apply("c", &meters(), &[metered(4, "a", "a4", "api.call", route("/z"), day(2))], &adv(4, 5)).unwrap();
        assert_eq!(runs_of(&store, WRITE_SLOT), 3);
        drop(store);
        // Opened again: a's next rows (the 18th, route /w) follow the ones it has.
        let store = SqliteStore::open(&path, Durability::Normal).unwrap();
        store.checkpoint("c").unwrap();
        store.apply("c", &meters(), &[metered(5, "a", "a5", "api.call", route("/w"), day(3))], &adv(5, 6)).unwrap();
        assert_eq!(runs_of(&store, READ_SLOT), 1);
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let ids = |table: &str, tenant: &str| -> Vec<i64> {
            let mut stmt = conn.prepare(&format!("SELECT id FROM {table} WHERE tenant = ?1 ORDER BY id")).unwrap();
            stmt.query_map([tenant], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
        };
        let slot = |tenant: &str| -> i64 {
            conn.query_row("SELECT slot FROM counter_slots WHERE tenant = ?1", [tenant], |r| r.get(0)).unwrap()
        };
        let (a, b) = (slot("a") << 32, slot("b") << 32);
        assert_eq!((slot("a"), slot("b")), (1, 2), "new tenants take their slots in the order of their names");
        assert_eq!(ids("tallies", "a"), [a, a + 1, a + 2, a + 3, a + 4], "the ids follow each other in the slot");
        assert_eq!(ids("tallies", "b"), [b, b + 1, b + 2, b + 3]);
        assert_eq!(ids("breakdowns", "a"), [a, a + 1, a + 2, a + 3]);
        let counts: (i64, i64) = conn
            .query_row("SELECT tallies, breakdowns FROM counter_slots WHERE tenant = 'a'", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(counts, (5, 4), "the slot counts every id given, none twice");
    }

    /// A file whose counters lie in the order each was first counted (row ids given in turn)
    /// has them laid out by tenant on opening, with their values, and a tenant's next counter
    /// follows its others.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counters_given_ids_in_turn_are_laid_out_by_tenant() {
        let (_dir, path) = old_file(8,
            "INSERT INTO tallies (tenant, meter, bucket, value, latest_us, latest_id) VALUES
                 ('a', 'api_calls', '2026-11', '5', NULL, NULL), ('b', 'api_calls', '2026-11', '9', NULL, NULL),
                 ('a', 'api_calls', '2026-11-15', '4', NULL, NULL), ('b', 'seats', '2026-11', '3', 1794744000000123, 'e9');
             INSERT INTO breakdowns (tenant, period, meter, property, value, amount) VALUES
                 ('b', '2026-11', 'api_calls', 'route', '/y', '2'), ('a', '2026-11', 'api_calls', 'route', '/x', '5');
             INSERT INTO checkpoints (consumer, partition, next_offset) VALUES ('c', 0, 1);",
        );
        let store = SqliteStore::open(&path, Durability::Normal).unwrap();
        store.checkpoint("c").unwrap();
        let five = Decimal::from(5);
        assert_eq!(calls(&store).await, (Some(five), Some(Decimal::from(4)), Some(five)));
        assert_eq!(runs(&path, "tallies"), ["a", "b"]);
        assert_eq!(runs(&path, "breakdowns"), ["a", "b"]);
        // A new counter of a (the 16th's): among a's rows, before b's.
        let mut next = call(1, "c1");
        next.time_us += 86_400_000_000;
        store.apply("c", &meters(), &[next], &adv(1, 2)).unwrap();
        assert_eq!(runs(&path, "tallies"), ["a", "b"]);
        let b = store.usage("b", "2026-11".parse().unwrap(), Coverage { consumer: "c", partition: 0 }).await.unwrap();
        assert_eq!(b.meters["api_calls"].period.value, Some(Decimal::from(9)));
        let seats = Tally { value: Some(Decimal::from(3)), latest: Some((1_794_744_000_000_123, "e9".into())) };
        assert_eq!(b.meters["seats"].period, seats);
        assert_eq!(calls(&store).await.0, Some(Decimal::from(6)));
        // A new breakdown value of a (its count of breakdowns carried over): after a's.
        let route = serde_json::json!({"route": "/z", "method": "GET", "status": 200});
        store.apply("c", &meters(), &[metered(2, "a", "c2", "api.call", route, MID_NOVEMBER)], &adv(2, 3)).unwrap();
        assert_eq!(runs(&path, "breakdowns"), ["a", "b"]);
        let nov = "2026-11".parse().unwrap();
        let by_route = store.breakdown("b", nov).await.unwrap();
        assert_eq!(by_route["api_calls"]["route"]["/y"], Decimal::from(2));
        assert_eq!(store.breakdown("a", nov).await.unwrap()["api_calls"]["route"]["/z"], Decimal::from(1));
    }

    /// Rows added without an id (by a build from before migration 9 still running against the
    /// file) take the greatest id plus one, the next positions of the greatest slot, behind the
    /// back of the slot's count this process keeps: that tenant's next counter is given the
    /// position after them, not a taken id.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_added_without_an_id_does_not_take_a_tenants_next_id() {
        let (_dir, path, store) = store_after_c1_then(
            "INSERT INTO tallies (tenant, meter, bucket, value) VALUES ('a', 'seats', '2026-11', '1');
             INSERT INTO tallies (tenant, meter, bucket, value) VALUES ('a', 'seats', '2026-11-15', '1');
             INSERT INTO breakdowns (tenant, period, meter, property, value, amount)
                 VALUES ('a', '2026-11', 'api_calls', 'method', 'PUT', '1');
             INSERT INTO breakdowns (tenant, period, meter, property, value, amount)
                 VALUES ('a', '2026-11', 'api_calls', 'method', 'POST', '1');",
        );
        let mut next = metered(1, "a", "c2", "api.call", serde_json::json!({"route": "/z"}), MID_NOVEMBER);
        next.time_us += 86_400_000_000;
        store.apply("c", &meters(), &[next], &adv(1, 2)).unwrap();
        let usage =
            store.usage("a", "2026-11".parse().unwrap(), Coverage { consumer: "c", partition: 0 }).await.unwrap();
        assert_eq!(usage.meters["api_calls"].period.value, Some(Decimal::from(2)));
        assert_eq!(usage.meters["api_calls"].days["2026-11-16"].value, Some(Decimal::from(1)));
        let nov = "2026-11".parse().unwrap();
        assert_eq!(store.breakdown("a", nov).await.unwrap()["api_calls"]["route"]["/z"], Decimal::from(1));
        assert_counts_past_the_rows(&path, "a");
    }

    /// A store in a new file that counted call `c1` of tenant a, then `sql` run on its file by hand.
    fn store_after_c1_then(sql: &str) -> (tempfile::TempDir, std::path::PathBuf, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let store = SqliteStore::open(&path, Durability::Normal).unwrap();
        store.apply("c", &meters(), &[call(0, "c1")], &adv(0, 1)).unwrap();
        Connection::open(&path).unwrap().execute_batch(sql).unwrap();
        (dir, path, store)
    }

    /// `tenant`'s counts in `counter_slots` are past its last row in each table.
    fn assert_counts_past_the_rows(path: &Path, tenant: &str) {
        let (tallies, (slot, given, _)) = slot_and_ids(path, "tallies", tenant);
        let (breakdowns, (_, _, given_breakdowns)) = slot_and_ids(path, "breakdowns", tenant);
        let past = |ids: &[i64]| ids.iter().max().map_or(0, |last| last + 1 - (slot << 32));
        assert_eq!((given, given_breakdowns), (past(&tallies), past(&breakdowns)), "{tenant}'s counts");
    }

    /// A batch that fails midway (here in its fold) leaves its counters in the store's kept maps:
    /// the next batch starts them over, so what the failed one added is not counted, nor written
    /// to another key's row.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_batch_leaves_nothing_in_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("usage.db"), Durability::Normal).unwrap();
        let mut unknown = call(1, "c2");
        unknown.contributions[0].0 = usize::MAX;
        let failed = store.apply("c", &meters(), &[call(0, "c1"), unknown], &adv(0, 2));
        assert!(matches!(failed, Err(Error::UnknownMeter(_))), "{:?}", failed.err());
        store.apply("c", &meters(), &[call(0, "c1"), call(1, "c2")], &adv(0, 2)).unwrap();
        let two = Some(Decimal::from(2));
        assert_eq!(calls(&store).await, (two, two, two));
    }

    /// `tenant`'s row ids in `table`, and its slot with its counts in `counter_slots`.
    fn slot_and_ids(path: &Path, table: &str, tenant: &str) -> (Vec<i64>, (i64, i64, i64)) {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn.prepare(&format!("SELECT id FROM {table} WHERE tenant = ?1 ORDER BY id")).unwrap();
        let ids = stmt.query_map([tenant], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        let slot = conn
            .query_row("SELECT slot, tallies, breakdowns FROM counter_slots WHERE tenant = ?1", [tenant], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        (ids, slot)
    }

    /// A batch that fails after it gave new tenants their slots and ids (here its checkpoint's
    /// write) leaves none of them behind: the next batch gives the same tenants the same slots
    /// and ids from the start, and the counts match the rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_fails_after_giving_ids_leaves_no_slot_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let store = SqliteStore::open(&path, Durability::Normal).unwrap();
        let batch = [call(0, "c1"), crate::contract::tokens("b", "b1", 10, MID_NOVEMBER)];
        let refuse = "CREATE TRIGGER refuse BEFORE INSERT ON checkpoints BEGIN SELECT RAISE(ABORT, 'refused'); END";
        Connection::open(&path).unwrap().execute_batch(refuse).unwrap();
        assert!(store.apply("c", &meters(), &batch, &adv(0, 2)).is_err(), "the checkpoint's write fails");
        Connection::open(&path).unwrap().execute_batch("DROP TRIGGER refuse").unwrap();
        store.apply("c", &meters(), &batch, &adv(0, 2)).unwrap();
        let (ids, (slot, tallies, breakdowns)) = slot_and_ids(&path, "tallies", "a");
        let a = slot << 32;
        assert_eq!((slot, ids), (1, vec![a, a + 1]), "a's slot and ids from the start");
        assert_eq!((tallies, breakdowns), (2, 1));
        assert_eq!(slot_and_ids(&path, "breakdowns", "a").0, [a]);
        let (ids, (slot, tallies, _)) = slot_and_ids(&path, "tallies", "b");
        assert_eq!((slot, tallies, ids.len()), (2, 4, 4));
        assert_eq!(calls(&store).await.0, Some(Decimal::from(1)), "counted once");
    }

    /// A tenant's slot moved in `counter_slots` (by hand) while this process kept it: the batch that
    /// would write ids of the old slot fails with `SlotMoved` and changes nothing, and the next one
    /// reads the slot again and gives ids in the new one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slot_moved_under_the_store_fails_the_batch_and_is_read_again() {
        let (_dir, path, store) = store_after_c1_then("UPDATE counter_slots SET slot = 9 WHERE tenant = 'a'");
        let mut next = call(1, "c2");
        next.time_us += 86_400_000_000;
        let moved = store.apply("c", &meters(), std::slice::from_ref(&next), &adv(1, 2));
        assert!(matches!(&moved, Err(Error::SlotMoved { tenant, kept: 1 }) if tenant == "a"), "{moved:?}");
        assert_eq!(slot_and_ids(&path, "tallies", "a").0.len(), 2, "nothing of the failed batch is left");
        store.apply("c", &meters(), &[next], &adv(1, 2)).unwrap();
        let (ids, (slot, tallies, _)) = slot_and_ids(&path, "tallies", "a");
        assert_eq!((slot, tallies), (9, 3), "the stored count goes on in the slot read again");
        assert_eq!(ids.last(), Some(&((9 << 32) + 2)), "the new row in that slot");
        assert_eq!(calls(&store).await.0, Some(Decimal::from(2)));
    }

    /// Two processes on one file, each owning a partition, count new tenants in turn: each takes
    /// the slot after the other's, not one it remembered as free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processes_on_one_file_give_new_tenants_the_next_slots_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let (one, two) = (
            SqliteStore::open(&path, Durability::Normal).unwrap(),
            SqliteStore::open(&path, Durability::Normal).unwrap(),
        );
        let on = |partition: u32, at: u64| Progress {
            partitions: vec![crate::Advance { partition, from: at, to: at + 1 }],
            watermark_us: None,
        };
        let tokens = |tenant: &str| [crate::contract::tokens(tenant, &format!("{tenant}1"), 10, MID_NOVEMBER)];
        one.apply("c", &meters(), &tokens("x"), &on(0, 0)).unwrap();
        two.apply("c", &meters(), &tokens("y"), &on(1, 0)).unwrap();
        one.apply("c", &meters(), &tokens("z"), &on(0, 1)).unwrap();
        two.apply("c", &meters(), &tokens("w"), &on(1, 1)).unwrap();
        let slots: Vec<i64> = ["x", "y", "z", "w"].iter().map(|t| slot_and_ids(&path, "tallies", t).1.0).collect();
        assert_eq!(slots, [1, 2, 3, 4]);
        for t in ["x", "y", "z", "w"] {
            let (ids, (slot, tallies, _)) = slot_and_ids(&path, "tallies", t);
            assert_eq!(ids, (0..tallies).map(|i| (slot << 32) + i).collect::<Vec<_>>(), "{t}'s rows in its slot");
        }
    }

    /// A counter whose row went (removed by hand) while this process remembered its id is
    /// written again by its key: the batch's addition is not lost in an update of no row.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_counter_whose_row_went_is_written_again_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let store = SqliteStore::open(&path, Durability::Normal).unwrap();
        store.apply("c", &meters(), &[call(0, "c1")], &adv(0, 1)).unwrap();
        Connection::open(&path)
            .unwrap()
            .execute_batch("DELETE FROM tallies WHERE tenant = 'a'; DELETE FROM breakdowns WHERE tenant = 'a';")
            .unwrap();
        store.apply("c", &meters(), &[call(1, "c2")], &adv(1, 2)).unwrap();
        let two = Some(Decimal::from(2));
        assert_eq!(calls(&store).await, (two, two, two));
        assert_counts_past_the_rows(&path, "a");
    }
}
