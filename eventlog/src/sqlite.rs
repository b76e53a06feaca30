//! The embedded event log: one SQLite file in WAL mode.
//!
//! A single writer thread takes append requests from a channel and commits whatever has queued up
//! as one transaction (group commit), each request inside its own savepoint so that one request's
//! conflict leaves the others untouched. A record's rowid is `partition << 40 | offset`, in its
//! partition's own table (`log_<partition>`, [`table`]), so that every partition's records are
//! appended at the end of a B-tree: in one table for all, every partition but the last split
//! pages in the middle of it (at 10,000 tenants the log writer took 1.30 and 1.50 times the CPU
//! it took with one partition, BENCHMARKS.md).
//!
//! Compaction ([`EventLog::compact`]) deletes a prefix of a partition in transactions of
//! [`COMPACT_CHUNK`] records and records, in the same transaction, the first offset the
//! partition still holds (`meta`'s `kept_from:<partition>`): the next offset never goes back,
//! even when every record of a partition was dropped, and a reader behind it is told.

use crate::{Batch, Encoded, Error, EventLog, LogReader, Outcome, Position, Record, decoded, encoded};
use async_trait::async_trait;
use meter_schemas::Event;
use meter_schemas::partition::partition_for;
use meter_schemas::period::now_us;
use meter_sqlite::dedup::{self, Dedup};
use meter_sqlite::rusqlite::{CachedStatement, Connection, OptionalExtension, TransactionBehavior, params};
use meter_sqlite::{
    Checkpointer, Durability, PREPARED_STATEMENTS, WAL_BOUND, WalBound, migrate, open, open_for_checkpointer,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

const OFFSET_BITS: u32 = 40;
/// Most requests folded into one commit.
const GROUP_REQUESTS: usize = 512;
/// Most events folded into one commit.
const GROUP_EVENTS: usize = 50_000;
/// Records deleted per transaction when compacting: the log's writer waits at most for one.
const COMPACT_CHUNK: u64 = 10_000;
/// `meta`'s name of the first offset a partition still holds, followed by the partition.
const KEPT_FROM: &str = "kept_from:";

const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE log (key INTEGER PRIMARY KEY, ingested_us INTEGER NOT NULL, payload BLOB NOT NULL);
    CREATE TABLE ids (
        tenant TEXT NOT NULL, id TEXT NOT NULL, hash BLOB NOT NULL, key INTEGER NOT NULL,
        PRIMARY KEY (id, tenant)
    ) WITHOUT ROWID;
    CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
",
    "
    -- meter_sqlite::dedup puts time-ordered ids straight into the open generation of `ids`; a
    -- build from before would not see them in its filters, so this version makes it refuse the
    -- file (a newer file is refused).
",
    "
    -- meter_sqlite::dedup leaves the rows a move took from `ids_pending` below a floor
    -- (`ids_state.floor`) that readers skip, deleting them after later commits. A build from
    -- before would delete the floor's own row with its next move, or empty the table with its
    -- quarter-horizon roll, without lowering the floor: rows appended after it would be given
    -- rowids below the floor and hidden. This version makes such a build refuse the file.
",
    "
    -- meter_sqlite::dedup keeps the ids a transaction appends as one row of `ids_appended`
    -- (converting `ids_pending`, a row per id, when the state opens). A build from before
    -- would read none of them. This version makes such a build refuse the file.
",
    "
    -- Each partition's records move to a table of their own (`log_<partition>`, made when the
    -- log opens, which moves the records of `log` into them: `lay_out`). A build from before
    -- would find no `log`; this version makes it refuse the file.
",
];

/// The table of partition `p`'s records.
fn table(p: u32) -> String {
    format!("log_{p}")
}

/// The keys of partition `p`'s records: `[p << 40, (p + 1) << 40)`.
fn keys(p: u32) -> (i64, i64) {
    let base = u64::from(p) << OFFSET_BITS;
    (base as i64, (base + (1 << OFFSET_BITS)) as i64)
}

/// Most records one transaction of [`lay_out`] moves.
const MOVE_CHUNK: i64 = 50_000;

/// Gives each of the `partitions` a table of its own ([`table`]), moving into them the records of
/// a log that kept every partition in one table (`log`, before migration 5). A record keeps its
/// key, so the ids the dedup index keeps with their first copy's key still find it. The records
/// move `chunk` at a time ([`MOVE_CHUNK`]), each chunk in one transaction (inserted into its partition's
/// table and deleted from `log`), with the WAL bounded after each: a log of months moves without a
/// WAL of its size, and a move cut off goes on at the next opening. `log` goes when it is empty.
/// A record outside every partition (the count of partitions is kept with the log and never
/// changes) refuses the move before anything moves.
fn lay_out(conn: &mut Connection, partitions: u32, wal: &WalBound, chunk: i64) -> Result<(), Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for p in 0..partitions {
        tx.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {} (key INTEGER PRIMARY KEY, ingested_us INTEGER NOT NULL, payload BLOB NOT NULL)",
            table(p)
        ))?;
    }
    let one_table: bool =
        tx.query_row("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'log'", [], |r| r.get(0))?;
    if one_table {
        let end = keys(partitions - 1).1;
        let outside: i64 = tx.query_row("SELECT count(*) FROM log WHERE key < 0 OR key >= ?1", [end], |r| r.get(0))?;
        if outside > 0 {
            return Err(Error::Unavailable(format!(
                "{outside} records of the log's table `log` have keys beyond its {partitions} partitions \
                 (from {end}); none was moved into the partitions' tables"
            )));
        }
    }
    tx.commit()?;
    if !one_table {
        return Ok(());
    }
    for p in 0..partitions {
        let (mut from, to) = keys(p);
        let t = table(p);
        loop {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let next: Option<i64> = tx
                .query_row(
                    "SELECT key FROM log WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT 1 OFFSET ?3",
                    params![from, to, chunk],
                    |r| r.get(0),
                )
                .optional()?;
            let until = next.unwrap_or(to);
            tx.execute(
                &format!("INSERT INTO {t} SELECT key, ingested_us, payload FROM log WHERE key >= ?1 AND key < ?2 ORDER BY key"),
                params![from, until],
            )?;
            tx.execute("DELETE FROM log WHERE key >= ?1 AND key < ?2", params![from, until])?;
            tx.commit()?;
            if let Err(e) = wal.after_commit(conn) {
                tracing::warn!(error = %e, "bounding the event log's WAL while moving its records failed");
            }
            match next {
                Some(_) => from = until,
                None => break,
            }
        }
    }
    conn.execute_batch("DROP TABLE log")?;
    Ok(())
}

/// Metric names of the log, declared once.
pub mod metric {
    /// Events stored (duplicates excluded).
    pub const APPENDED: &str = "meter_log_appended_events_total";
    /// Duplicates answered without storing.
    pub const DUPLICATES: &str = "meter_log_duplicate_events_total";
    /// Time a group commit takes.
    pub const COMMIT: &str = "meter_log_commit_duration_seconds";
    /// Requests folded into one commit.
    pub const GROUP: &str = "meter_log_group_commit_requests";
    /// Records dropped by compaction, behind every consumer and every census still to come.
    pub const COMPACTED: &str = "meter_log_compacted_events_total";
}

/// An event made ready for the writer: hashing and encoding happen on the caller's task, so the
/// single writer thread only runs SQL.
struct Prepared {
    tenant: String,
    id: String,
    partition: u32,
    time_us: i64,
    hash: [u8; 32],
    payload: Vec<u8>,
}

struct Request {
    events: Vec<Prepared>,
    reply: oneshot::Sender<Result<Vec<Outcome>, Error>>,
}

/// Count of commits, for readers waiting for new records, and the lock that orders commit times
/// against watermark times.
#[derive(Default)]
struct Heads {
    commits: Mutex<u64>,
    changed: Condvar,
    /// Held by the writer from taking its commit time until the commit is visible, and by a reader
    /// while it takes the time it starts reading. So a commit a reader cannot see yet has a commit
    /// time after that reader's start, and its events passed the lateness check against it.
    committing: Mutex<()>,
}

impl Heads {
    fn current(&self) -> u64 {
        *self.commits.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        *self.commits.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.changed.notify_all();
    }

    fn wait_beyond(&self, seen: u64, timeout: Duration) {
        let guard = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.changed.wait_timeout_while(guard, timeout, |c| *c == seen);
    }
}

/// The SQLite event log.
pub struct SqliteLog {
    _checkpointer: Checkpointer,
    path: PathBuf,
    partitions: u32,
    durability: Durability,
    requests: mpsc::Sender<Request>,
    heads: Arc<Heads>,
}

/// The first offset each compacted partition still holds, from `meta`.
fn kept_from(conn: &Connection) -> Result<Vec<Position>, Error> {
    let mut stmt = conn.prepare_cached("SELECT name, value FROM meta WHERE name >= ?1 AND name < ?2")?;
    let rows = stmt.query_map(params![KEPT_FROM, format!("{}\u{10FFFF}", KEPT_FROM)], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    let mut kept = Vec::new();
    for row in rows {
        let (name, offset) = row?;
        if let Ok(partition) = name[KEPT_FROM.len()..].parse() {
            kept.push(Position { partition, offset: offset as u64 });
        }
    }
    kept.sort_by_key(|p| p.partition);
    Ok(kept)
}

/// Deletes the prefix of each partition of `behind` that arrived before `arrived_before_us`,
/// in transactions of [`COMPACT_CHUNK`] records. Blocking.
fn compact(conn: &mut Connection, behind: &[Position], arrived_before_us: i64) -> Result<u64, Error> {
    let kept = kept_from(conn)?;
    let mut dropped = 0;
    for b in behind {
        let base = u64::from(b.partition) << OFFSET_BITS;
        let t = table(b.partition);
        let from = kept.iter().find(|k| k.partition == b.partition).map_or(0, |k| k.offset);
        // Never past the partition's last record (a consumer ahead of a restored log).
        let last: Option<i64> = conn.query_row(&format!("SELECT max(key) FROM {t}"), [], |r| r.get(0))?;
        let behind = b.offset.min(last.map_or(from, |k| (k as u64 & ((1 << OFFSET_BITS) - 1)) + 1));
        // The prefix ends at the first record that arrived at or after the cut-off.
        let arrived_since: Option<i64> = conn
            .query_row(
                &format!("SELECT key FROM {t} WHERE key >= ?1 AND key < ?2 AND ingested_us >= ?3 ORDER BY key LIMIT 1"),
                params![(base | from) as i64, (base | behind) as i64, arrived_before_us],
                |r| r.get(0),
            )
            .optional()?;
        let to = arrived_since.map_or(behind, |k| k as u64 & ((1 << OFFSET_BITS) - 1));
        let mut at = from;
        while at < to {
            let end = (at + COMPACT_CHUNK).min(to);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                &format!("DELETE FROM {t} WHERE key >= ?1 AND key < ?2"),
                params![(base | at) as i64, (base | end) as i64],
            )?;
            tx.execute(
                "INSERT INTO meta (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![format!("{KEPT_FROM}{}", b.partition), end as i64],
            )?;
            tx.commit()?;
            metrics::counter!(metric::COMPACTED).increment(n as u64);
            dropped += n as u64;
            at = end;
        }
    }
    Ok(dropped)
}

impl SqliteLog {
    /// Opens (creating if needed) the log at `path` with `partitions` partitions. A log created
    /// with another partition count is refused: tenants would move between partitions.
    pub fn open(path: &Path, partitions: u32, durability: Durability) -> Result<Self, Error> {
        Self::open_with_lateness(path, partitions, durability, i64::MAX)
    }

    /// Like [`SqliteLog::open`], and refuses at commit time any event older than `lateness_us`
    /// at that moment ([`Error::TooLate`]). Ingest checks the window on receipt; this second check
    /// closes the gap between receipt and commit, so that a watermark past a period's end plus the
    /// lateness window really means no more events for that period.
    pub fn open_with_lateness(
        path: &Path,
        partitions: u32,
        durability: Durability,
        lateness_us: i64,
    ) -> Result<Self, Error> {
        let horizon = dedup::Settings::new(meter_schemas::envelope::DEDUP_HORIZON_US);
        Self::open_with(path, partitions, durability, lateness_us, horizon)
    }

    /// Like [`SqliteLog::open_with_lateness`], keeping event ids for duplicates as `dedup` says
    /// (a horizon at least the lateness window plus how far ahead events may be dated).
    pub fn open_with(
        path: &Path,
        partitions: u32,
        durability: Durability,
        lateness_us: i64,
        dedup: dedup::Settings,
    ) -> Result<Self, Error> {
        let partitions = partitions.max(1);
        let mut conn = open_for_checkpointer(path, durability)?;
        migrate(&mut conn, path, MIGRATIONS)?;
        let dedup = Dedup::open(&mut conn, "ids", Some("ids"), dedup, now_us())?;
        let stored: Option<i64> =
            conn.query_row("SELECT value FROM meta WHERE name = 'partitions'", [], |r| r.get(0)).optional()?;
        match stored {
            None => {
                conn.execute("INSERT INTO meta (name, value) VALUES ('partitions', ?1)", [partitions])?;
            }
            Some(n) if n != i64::from(partitions) => {
                return Err(Error::Unavailable(format!(
                    "{} has {n} partitions but {partitions} are configured; the partition count of a log cannot change",
                    path.display()
                )));
            }
            Some(_) => {}
        }
        let checkpointer = Checkpointer::start(path, Duration::from_secs(1))?;
        let wal = WalBound::new(path, WAL_BOUND).asking(&checkpointer);
        lay_out(&mut conn, partitions, &wal, MOVE_CHUNK)?;
        // Each partition's statements kept prepared, with the others'.
        conn.set_prepared_statement_cache_capacity(PREPARED_STATEMENTS + 2 * partitions as usize);
        // Each request of a group commit runs under a savepoint, which copies every page it changes
        // to a sub-journal; past 64 KiB SQLite moves that to a temporary file, created and deleted
        // for each group commit (with many tenants, a request changes a page in every partition's
        // table: 0.9 % of the writer's samples at 10,000 tenants went to creating the files alone,
        // BENCHMARKS.md). Kept in memory, it holds the pages of one request at a time.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        let mut next = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let max: Option<i64> = conn.query_row(&format!("SELECT max(key) FROM {}", table(p)), [], |r| r.get(0))?;
            next.push(max.map_or(0, |k| (k as u64 & ((1 << OFFSET_BITS) - 1)) + 1));
        }
        // A partition compacted to its end holds no record: its next offset is where it was kept from.
        for k in kept_from(&conn)? {
            if let Some(n) = next.get_mut(k.partition as usize) {
                *n = (*n).max(k.offset);
            }
        }
        let heads = Arc::new(Heads::default());
        let (tx, rx) = mpsc::channel(4096);
        let writer = Writer { conn, next, heads: heads.clone(), lateness_us, wal, dedup };
        std::thread::Builder::new()
            .name("meter-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::Unavailable(format!("cannot start the log writer: {e}")))?;
        Ok(Self { _checkpointer: checkpointer, path: path.to_path_buf(), partitions, durability, requests: tx, heads })
    }
}

#[async_trait]
impl EventLog for SqliteLog {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    async fn append(&self, events: &[Event]) -> Result<Vec<Outcome>, Error> {
        let events = events
            .iter()
            .map(|e| Prepared {
                partition: partition_for(&e.tenant, self.partitions),
                time_us: e.time_us,
                hash: e.payload_hash(),
                payload: e.encode(),
                tenant: e.tenant.clone(),
                id: e.id.clone(),
            })
            .collect();
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { events, reply })
            .await
            .map_err(|_| Error::Unavailable("the log writer has stopped".into()))?;
        answer.await.map_err(|_| Error::Unavailable("the log writer has stopped".into()))?
    }

    fn reader(&self) -> Result<Box<dyn LogReader>, Error> {
        let conn = open(&self.path, Durability::Normal)?;
        conn.set_prepared_statement_cache_capacity(PREPARED_STATEMENTS + self.partitions as usize);
        Ok(Box::new(SqliteReader { conn, next: vec![0; self.partitions as usize], heads: self.heads.clone() }))
    }

    async fn compact(&self, behind: &[Position], arrived_before_us: i64) -> Result<u64, Error> {
        let (path, durability, behind) = (self.path.clone(), self.durability, behind.to_vec());
        tokio::task::spawn_blocking(move || compact(&mut open(&path, durability)?, &behind, arrived_before_us))
            .await
            .map_err(|e| Error::Unavailable(format!("compacting the log stopped: {e}")))?
    }
}

struct Writer {
    conn: Connection,
    next: Vec<u64>,
    heads: Arc<Heads>,
    lateness_us: i64,
    /// Keeps the WAL bounded: this thread is the log's only writer.
    wal: WalBound,
    /// The ids seen, for duplicates.
    dedup: Dedup,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            let mut events = group[0].events.len();
            while group.len() < GROUP_REQUESTS && events < GROUP_EVENTS {
                match rx.try_recv() {
                    Ok(r) => {
                        events += r.events.len();
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            metrics::histogram!(metric::GROUP).record(group.len() as f64);
            let started = Instant::now();
            let snapshot = self.next.clone();
            let heads = self.heads.clone();
            let committing = heads.committing.lock().unwrap_or_else(|e| e.into_inner());
            let result = self.commit(&group);
            drop(committing);
            match result {
                Ok(results) => {
                    metrics::histogram!(metric::COMMIT).record(started.elapsed().as_secs_f64());
                    self.heads.bump();
                    for (req, result) in group.into_iter().zip(results) {
                        if let Ok(outcomes) = &result {
                            let new = outcomes.iter().filter(|o| matches!(o, Outcome::Appended(_))).count();
                            metrics::counter!(metric::APPENDED).increment(new as u64);
                            metrics::counter!(metric::DUPLICATES).increment((outcomes.len() - new) as u64);
                        }
                        let _ = req.reply.send(result);
                    }
                    // Answered first: the requests just committed do not wait for this.
                    if let Err(e) = self.dedup.committed(&mut self.conn, now_us()) {
                        tracing::warn!(error = %e, "moving the event log's new ids into its dedup index failed; trying again after the next commit");
                    }
                    if let Err(e) = self.wal.after_commit(&self.conn) {
                        tracing::warn!(error = %e, "bounding the event log's WAL failed; trying again after the next commit");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "event log commit failed");
                    self.next = snapshot;
                    for req in group {
                        let _ = req.reply.send(Err(Error::Unavailable(e.to_string())));
                    }
                }
            }
        }
    }

    /// Writes every request of the group in one transaction; a request with conflicts is rolled
    /// back to its savepoint and answered with them.
    #[allow(clippy::type_complexity)]
    fn commit(&mut self, group: &[Request]) -> Result<Vec<Result<Vec<Outcome>, Error>>, Error> {
        let now = now_us();
        let mut tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        self.dedup.begin(&tx)?;
        let mut results = Vec::with_capacity(group.len());
        for req in group {
            let before = self.next.clone();
            let mark = self.dedup.mark();
            let mut sp = tx.savepoint()?;
            let mut outcomes = Vec::with_capacity(req.events.len());
            let mut conflicts = Vec::new();
            let mut late = Vec::new();
            {
                let mut inserts: Vec<Option<CachedStatement<'_>>> = (0..self.next.len()).map(|_| None).collect();
                let mut ids = self.dedup.batch(&sp);
                for (i, e) in req.events.iter().enumerate() {
                    if e.time_us < now.saturating_sub(self.lateness_us) {
                        late.push(i);
                        continue;
                    }
                    let partition = e.partition;
                    let offset = self.next[partition as usize];
                    let key = (u64::from(partition) << OFFSET_BITS | offset) as i64;
                    if let Some((previous, first_key)) = ids.insert_new(&e.tenant, &e.id, (e.hash.to_vec(), key))? {
                        // The stored hash may follow an earlier rule (a CloudEvent's time was
                        // part of it until the hash left it out): on a mismatch, which is rare,
                        // the first copy is read back and hashed as today.
                        let same_as_first = || -> Result<bool, Error> {
                            let t = table((first_key as u64 >> OFFSET_BITS) as u32);
                            let payload: Option<Vec<u8>> = sp
                                .prepare_cached(&format!("SELECT payload FROM {t} WHERE key = ?1"))?
                                .query_row(params![first_key], |r| r.get(0))
                                .optional()?;
                            let first = payload.and_then(|p| Event::decode(&p).ok());
                            Ok(first.is_some_and(|f| f.payload_hash() == e.hash))
                        };
                        if previous == e.hash || same_as_first()? {
                            outcomes.push(Outcome::Duplicate);
                        } else {
                            conflicts.push(i);
                        }
                    } else {
                        let insert = match &mut inserts[partition as usize] {
                            Some(insert) => insert,
                            empty => empty.insert(sp.prepare_cached(&format!(
                                "INSERT INTO {} (key, ingested_us, payload) VALUES (?1, ?2, ?3)",
                                table(partition)
                            ))?),
                        };
                        insert.execute(params![key, now, e.payload])?;
                        self.next[partition as usize] += 1;
                        outcomes.push(Outcome::Appended(Position { partition, offset }));
                    }
                }
            }
            if conflicts.is_empty() && late.is_empty() {
                sp.commit()?;
                results.push(Ok(outcomes));
            } else {
                sp.rollback()?;
                drop(sp);
                self.next = before;
                self.dedup.rollback_to(mark);
                results.push(Err(if late.is_empty() { Error::Conflicts(conflicts) } else { Error::TooLate(late) }));
            }
        }
        self.dedup.commit(tx)?;
        Ok(results)
    }
}

struct SqliteReader {
    conn: Connection,
    next: Vec<u64>,
    heads: Arc<Heads>,
}

impl SqliteReader {
    /// Reads up to `max` records, each event as `decode` makes it of the record's bytes (`Err`
    /// with why the record is damaged).
    fn read<E>(
        &mut self,
        max: usize,
        decode: &impl Fn(&[u8]) -> Result<E, String>,
    ) -> Result<(Vec<Record<E>>, bool), Error> {
        let mut records = Vec::new();
        let mut caught_up = true;
        let per_partition = (max / self.next.len()).max(1);
        let tx = self.conn.transaction()?;
        {
            for (p, next) in self.next.iter_mut().enumerate() {
                let mut stmt = tx.prepare_cached(&format!(
                    "SELECT key, ingested_us, payload FROM {} WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT ?3",
                    table(p as u32)
                ))?;
                let base = (p as u64) << OFFSET_BITS;
                let mut rows = stmt.query(params![
                    (base | *next) as i64,
                    (base + (1 << OFFSET_BITS)) as i64,
                    per_partition as i64
                ])?;
                let mut n = 0;
                while let Some(row) = rows.next()? {
                    let key: i64 = row.get(0)?;
                    let offset = key as u64 & ((1 << OFFSET_BITS) - 1);
                    let payload = row.get_ref(2)?.as_blob().map_err(meter_sqlite::rusqlite::Error::from)?;
                    let event =
                        decode(payload).map_err(|reason| Error::Corrupt { partition: p as u32, offset, reason })?;
                    records.push(Record {
                        position: Position { partition: p as u32, offset },
                        ingested_us: row.get(1)?,
                        event,
                    });
                    *next = offset + 1;
                    n += 1;
                }
                if n >= per_partition {
                    caught_up = false;
                }
            }
        }
        tx.commit()?;
        Ok((records, caught_up))
    }

    /// [`LogReader::poll`], each event as `decode` makes it ([`SqliteReader::read`]).
    fn poll_as<E>(
        &mut self,
        max: usize,
        timeout: Duration,
        decode: impl Fn(&[u8]) -> Result<E, String>,
    ) -> Result<Batch<E>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.heads.current();
            let started_us = {
                let _ordered = self.heads.committing.lock().unwrap_or_else(|e| e.into_inner());
                now_us()
            };
            let (records, caught_up) = self.read(max, &decode)?;
            let now = Instant::now();
            if !records.is_empty() || now >= deadline {
                return Ok(Batch { records, caught_up, started_us, reassigned: false });
            }
            self.heads.wait_beyond(seen, (deadline - now).min(Duration::from_millis(250)));
        }
    }
}

impl LogReader for SqliteReader {
    fn seek(&mut self, positions: &[Position]) {
        self.next.iter_mut().for_each(|n| *n = 0);
        for p in positions {
            if let Some(n) = self.next.get_mut(p.partition as usize) {
                *n = p.offset;
            }
        }
    }

    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Batch, Error> {
        self.poll_as(max, timeout, decoded)
    }

    fn poll_encoded(&mut self, max: usize, timeout: Duration) -> Result<Batch<Encoded>, Error> {
        self.poll_as(max, timeout, encoded)
    }

    fn owned(&self) -> Vec<u32> {
        (0..self.next.len() as u32).collect()
    }

    fn kept_from(&self) -> Result<Vec<Position>, Error> {
        kept_from(&self.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::event;

    fn tables(path: &Path) -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'log%' ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }

    /// Each partition's records lie in a table of their own, appended at its end. A log written
    /// with one table for every partition (a build from before, schema 4) is moved into them on
    /// opening, and so is one whose move was cut off (schema 5, some partitions moved): its
    /// records read at the same positions, each partition's next offset follows them, and a
    /// resent event is still a duplicate, also when its first copy is read back from its
    /// partition's table (the dedup index keeps that copy's key).
    #[tokio::test]
    async fn each_partition_has_a_table_and_a_log_in_one_table_moves_into_them() {
        let tenants = ["acme", "globex", "initech", "umbrella", "hooli", "stark"];
        for (version, cut_off) in [(4, false), (5, true)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("events.db");
            let log = SqliteLog::open(&path, 4, Durability::Normal).unwrap();
            // Alone first: its id goes straight into the open generation, whose hash is changed below.
            let first = event("acme", "acme-first", 9);
            let outcomes = log.append(std::slice::from_ref(&first)).await.unwrap();
            let Outcome::Appended(at) = &outcomes[0] else { panic!("{outcomes:?}") };
            let mut written = vec![("acme-first".to_string(), at.partition, at.offset)];
            for n in 0..2 {
                let events: Vec<Event> = tenants.iter().map(|t| event(t, &format!("{t}-{n}"), n)).collect();
                for (e, o) in events.iter().zip(log.append(&events).await.unwrap()) {
                    let Outcome::Appended(at) = o else { panic!("{o:?}") };
                    written.push((e.id.clone(), at.partition, at.offset));
                }
            }
            drop(log);
            tokio::time::sleep(Duration::from_millis(200)).await;
            {
                // As a build from before left it: every record in `log`; or, cut off, partition
                // 0's already moved.
                let conn = Connection::open(&path).unwrap();
                conn.busy_timeout(Duration::from_secs(10)).unwrap();
                conn.execute_batch(
                    "CREATE TABLE log (key INTEGER PRIMARY KEY, ingested_us INTEGER NOT NULL, payload BLOB NOT NULL)",
                )
                .unwrap();
                for p in u32::from(cut_off)..4 {
                    conn.execute_batch(&format!("INSERT INTO log SELECT * FROM log_{p}; DROP TABLE log_{p};")).unwrap();
                }
                conn.pragma_update(None, "user_version", version).unwrap();
                let changed =
                    conn.execute("UPDATE ids_g1 SET hash = ?1 WHERE id = 'acme-first'", [&[7u8; 32][..]]).unwrap();
                assert_eq!(changed, 1);
            }
            let log = SqliteLog::open(&path, 4, Durability::Normal).unwrap();
            assert_eq!(tables(&path), ["log_0", "log_1", "log_2", "log_3"], "schema {version}");
            let mut reader = log.reader().unwrap();
            reader.seek(&[]);
            let read = reader.poll(100, Duration::from_millis(50)).unwrap().records;
            let mut got: Vec<(String, u32, u64)> =
                read.iter().map(|r| (r.event.id.clone(), r.position.partition, r.position.offset)).collect();
            got.sort();
            written.sort();
            assert_eq!(got, written, "every record at its position");
            let resent = log.append(&[event("acme", "acme-0", 0), first.clone()]).await.unwrap();
            assert_eq!(resent, [Outcome::Duplicate, Outcome::Duplicate], "a first copy read back from its table");
            let p = partition_for("acme", 4);
            let next = written.iter().filter(|w| w.1 == p).count() as u64;
            let appended = log.append(&[event("acme", "acme-2", 2)]).await.unwrap();
            assert_eq!(appended, [Outcome::Appended(Position { partition: p, offset: next })]);
        }
    }

    /// The records of a log in one table move a chunk a transaction, each partition's all of them
    /// in order, and `log` goes.
    #[test]
    fn records_move_a_chunk_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, &path, &MIGRATIONS[..4]).unwrap();
        let keys: Vec<i64> = (0..5).chain((0..2).map(|o| 1 << OFFSET_BITS | o)).collect();
        for &key in &keys {
            conn.execute("INSERT INTO log VALUES (?1, ?1, x'00')", [key]).unwrap();
        }
        lay_out(&mut conn, 2, &WalBound::new(&path, WAL_BOUND), 2).unwrap();
        drop(conn);
        assert_eq!(tables(&path), ["log_0", "log_1"]);
        let conn = Connection::open(&path).unwrap();
        let held = |t: &str| -> Vec<i64> {
            let mut stmt = conn.prepare(&format!("SELECT key FROM {t} WHERE ingested_us = key ORDER BY key")).unwrap();
            stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
        };
        assert_eq!(held("log_0"), keys[..5]);
        assert_eq!(held("log_1"), keys[5..]);
    }

    /// A record of a log in one table whose key lies beyond every partition refuses the move,
    /// and nothing moves.
    #[tokio::test]
    async fn a_record_beyond_the_partitions_refuses_the_move() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        {
            let mut old = Connection::open(&path).unwrap();
            migrate(&mut old, &path, &MIGRATIONS[..4]).unwrap();
            old.execute("INSERT INTO meta (name, value) VALUES ('partitions', 2)", []).unwrap();
            let payload = event("acme", "a", 0).encode();
            for key in [0_i64, 2 << OFFSET_BITS] {
                old.execute("INSERT INTO log VALUES (?1, 0, ?2)", params![key, payload]).unwrap();
            }
        }
        let err = SqliteLog::open(&path, 2, Durability::Normal).err().unwrap();
        assert!(
            err.to_string().contains("1 records of the log's table `log` have keys beyond its 2 partitions"),
            "{err}"
        );
        let conn = Connection::open(&path).unwrap();
        let held: i64 = conn.query_row("SELECT count(*) FROM log", [], |r| r.get(0)).unwrap();
        assert_eq!(held, 2);
    }
}
