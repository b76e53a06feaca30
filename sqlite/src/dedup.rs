//! Dedup state for the embedded default, kept for a horizon and cheap for random ids.
//!
//! One B-tree keyed by event id dirties a random page per new id, and a commit writes every
//! dirty page to the WAL: with random (UUIDv4) ids that cost ingest more than half its rate.
//! Here a new id is appended to a small table in arrival order (`<name>_pending`, its rowid)
//! and mirrored in memory; once that holds [`Settings::flush_at`] ids they move, sorted, into
//! the open generation's B-tree, so a leaf page of it is written about once per move however
//! many of its ids arrived. The move goes in key order, [`MOVE_CHUNK`] ids after each commit of
//! the writer, so that no commit waits for the whole move; the appended rows go in the move's
//! last transaction. Generations are arrival buckets: a new one opens
//! every quarter of the horizon, and one whose last arrival is older than the horizon is
//! dropped whole (`DROP TABLE`), so the state stays flat under a steady load. A generation is
//! also sealed, and a new one opened, once it holds [`Settings::seal_at`] ids, so that the B-tree
//! a move writes into stays within the page cache until the horizon holds [`SEALED`] times that
//! (beyond, a generation is sealed at a `SEALED`th of the sealed ids, so that there are about
//! `SEALED` of them whatever the load). A lookup asks the memory mirror, then each live
//! generation, newest first; a sealed generation (it takes no more ids) is asked only if its
//! filter (a binary fuse filter of its ids, kept by each connection, about 9 bits an id, no false
//! negatives, 0.4 % false positives) says it may hold the id, so that a new id costs the open
//! generation's pages and seldom one of a sealed one.
//!
//! Every connection that looks ids up keeps a [`Mirror`] refreshed inside its transaction: the
//! rows appended since it last looked (rowid order), or all of them after a flush (an epoch in
//! `<name>_state` says when). The single writer stages its own uncommitted ids apart
//! ([`Dedup::insert`], [`Dedup::rollback_to`]), so a rolled back request leaves nothing behind.

use hashbrown::{Equivalent, HashMap};
use rusqlite::{Connection, OptionalExtension, params};
use std::hash::{DefaultHasher, Hash, Hasher};
use xorf::{BinaryFuse8, Filter};

/// A stored id's value: the event's payload hash and its place in the log (the store keeps
/// neither).
pub type Value = (Vec<u8>, i64);

/// How the dedup state is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How long an id is kept after it arrived (µs), at least.
    pub horizon_us: i64,
    /// Ids appended before they move into the open generation's B-tree.
    pub flush_at: usize,
    /// Ids a generation takes before it is sealed and the next one opens (checked at the end
    /// of each move, so a generation may hold up to a move more), or a [`SEALED`]th of the
    /// ids in the sealed ones if more.
    pub seal_at: usize,
}

/// Generations per horizon: ids are kept between the horizon and a quarter more.
const GENERATIONS: i64 = 4;

/// About how many sealed generations a lookup asks the filters of: once the sealed ones hold
/// more than `SEALED` × [`Settings::seal_at`] ids, a generation is sealed at a `SEALED`th of
/// them rather than at `seal_at`.
pub const SEALED: usize = 32;

/// Ids moved into the open generation after each commit while a move runs.
pub const MOVE_CHUNK: usize = 16_384;

impl Settings {
    /// Kept for `horizon_us`, flushed every 131,072 new ids (about 20 MB of memory per mirror),
    /// a generation sealed at as many: each move fills a generation of its own, written in key
    /// order into an empty B-tree, so each of its pages is written once whatever the ids (at
    /// 3,000,000 random ids this ran at 0.88-0.95 of ordered ones, sealing at twice as many at
    /// 0.75-0.83; BENCHMARKS.md).
    pub fn new(horizon_us: i64) -> Self {
        Settings { horizon_us: horizon_us.max(GENERATIONS), flush_at: 131_072, seal_at: 131_072 }
    }

    /// How long a generation takes arrivals: a quarter of the horizon.
    pub fn bucket_us(&self) -> i64 {
        self.horizon_us / GENERATIONS
    }
}

/// `(tenant, id)`.
type Key = (String, String);

/// A `(tenant, id)` looked up without copying it: hashes and compares as a [`Key`].
pub struct Probe<'a>(pub &'a str, pub &'a str);

impl Hash for Probe<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.0, self.1).hash(state);
    }
}

impl Equivalent<Key> for Probe<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

/// What a filter is built from: a `(tenant, id)`'s 64-bit hash. Filters never leave the
/// process, so the hash need only agree with itself there (std's `DefaultHasher::new()`:
/// fixed keys, its algorithm free to change between Rust releases).
fn fingerprint(tenant: &str, id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    (tenant, id).hash(&mut h);
    h.finish()
}

/// A filter of `fps` (each id's [`fingerprint`]); none if it cannot be built, and the generation
/// is then always asked.
fn filter_of(mut fps: Vec<u64>) -> Option<BinaryFuse8> {
    fps.sort_unstable();
    fps.dedup();
    BinaryFuse8::try_from(&fps).ok()
}

/// How a connection looks an id up in one live generation.
struct Lookup {
    tbl: String,
    sql: String,
    /// A sealed generation's filter: it is asked only if this may hold the id.
    filter: Option<BinaryFuse8>,
}

/// What a connection knows of the appended ids and the live generations.
#[derive(Default)]
pub struct Mirror {
    epoch: Option<i64>,
    last_rowid: i64,
    /// Each live generation, newest first.
    lookups: Vec<Lookup>,
    /// Filters of sealed generations built elsewhere (the writer's, from the ids it moved),
    /// taken at the next reload rather than built from the table.
    adopted: HashMap<String, BinaryFuse8>,
    /// How many ids the sealed generations hold (as recorded when each was sealed).
    sealed_ids: usize,
    /// Generations' B-trees asked (a test's count: the filters spare the others).
    #[cfg(test)]
    probes: std::cell::Cell<usize>,
    /// Since when the open generation takes ids.
    open_since: i64,
    ids: HashMap<Key, Value>,
    /// The ids a move takes into the open generation, sorted as its key (id, then tenant):
    /// still appended until the move's last transaction. Only the writer's mirror has any.
    moving: Vec<(Key, Value)>,
    /// What [`Mirror::refresh`] asks in every transaction (the epoch, the ids appended since),
    /// formatted once.
    sql: Option<(String, String)>,
}

/// The dedup state `name` in one SQLite file.
pub struct Dedup {
    name: String,
    settings: Settings,
    mirror: Mirror,
    insert_sql: String,
    /// Ids written in the open transaction: their values and order of writing.
    staged: HashMap<Key, (usize, Value)>,
    /// The rowids of the ids written in the open transaction, in order (those rolled back to a
    /// savepoint gone: SQLite gives their rowids again, maybe to another writer).
    written: Vec<i64>,
    /// The move under way, if any.
    moving: Option<Move>,
    /// The open generation as this writer last saw it.
    open: Option<Open>,
}

/// The open generation: its table, about how many ids it holds and, while this writer moved
/// every one of them since it opened it, their fingerprints (its filter once sealed).
struct Open {
    tbl: String,
    ids: usize,
    fps: Option<Vec<u64>>,
}

/// A move of the appended ids into the open generation (the ids are the mirror's `moving`).
struct Move {
    /// How many of them are in the generation.
    done: usize,
    /// The last appended rowid it covers.
    through: i64,
    /// `INSERT OR IGNORE` into the open generation.
    insert: String,
}

impl Dedup {
    /// Opens the state `name` on `conn` (its writer), creating its tables; an existing table
    /// `legacy` (an earlier layout: `id`, `tenant`, `hash` and `key`) becomes its oldest
    /// generation, dropped a horizon from now.
    pub fn open(
        conn: &mut Connection,
        name: &str,
        legacy: Option<&str>,
        settings: Settings,
        now_us: i64,
    ) -> Result<Self, crate::Error> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {name}_gens (
                 gen INTEGER PRIMARY KEY, tbl TEXT NOT NULL, from_us INTEGER NOT NULL, until_us INTEGER, ids INTEGER
             );
             CREATE TABLE IF NOT EXISTS {name}_pending (
                 rowid INTEGER PRIMARY KEY, tenant TEXT NOT NULL, id TEXT NOT NULL, hash BLOB, key INTEGER
             );
             CREATE TABLE IF NOT EXISTS {name}_state (one INTEGER PRIMARY KEY CHECK (one = 1), epoch INTEGER NOT NULL);
             INSERT OR IGNORE INTO {name}_state (one, epoch) VALUES (1, 0);"
        ))?;
        // Files from before generations were sealed for their size: how many ids a sealed one
        // holds is unknown (NULL).
        let counted: i64 = tx.query_row(
            &format!("SELECT count(*) FROM pragma_table_info('{name}_gens') WHERE name = 'ids'"),
            [],
            |r| r.get(0),
        )?;
        if counted == 0 {
            tx.execute_batch(&format!("ALTER TABLE {name}_gens ADD COLUMN ids INTEGER"))?;
        }
        let gens: i64 = tx.query_row(&format!("SELECT count(*) FROM {name}_gens"), [], |r| r.get(0))?;
        if gens == 0 {
            let legacy = match legacy {
                Some(t) => tx
                    .query_row("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?1", [t], |r| {
                        r.get::<_, String>(0)
                    })
                    .optional()?,
                None => None,
            };
            // An empty earlier table (a new file's, made by its first migration) is dropped:
            // every lookup would ask it.
            let legacy = match legacy {
                Some(t)
                    if tx.query_row(&format!("SELECT 1 FROM {t} LIMIT 1"), [], |_| Ok(())).optional()?.is_none() =>
                {
                    tx.execute_batch(&format!("DROP TABLE {t}"))?;
                    None
                }
                other => other,
            };
            if let Some(t) = legacy {
                tx.execute(
                    &format!("INSERT INTO {name}_gens (gen, tbl, from_us, until_us) VALUES (0, ?1, 0, ?2)"),
                    params![t, now_us],
                )?;
            }
            open_generation(&tx, name, 1, now_us)?;
        }
        tx.commit()?;
        let mut dedup = Dedup {
            name: name.to_string(),
            settings,
            mirror: Mirror::default(),
            insert_sql: format!("INSERT INTO {name}_pending (tenant, id, hash, key) VALUES (?1, ?2, ?3, ?4)"),
            staged: HashMap::new(),
            written: Vec::new(),
            moving: None,
            open: None,
        };
        // One snapshot: another writer may drop a generation meanwhile.
        let tx = conn.transaction()?;
        dedup.begin(&tx)?;
        tx.commit()?;
        Ok(dedup)
    }

    /// Starts a transaction's work on `tx` (the writer's, holding the write lock): learns what
    /// other writers appended, forgets anything staged by a transaction that did not commit.
    pub fn begin(&mut self, tx: &Connection) -> Result<(), crate::Error> {
        self.staged.clear();
        self.written.clear();
        self.refresh(tx)
    }

    /// Refreshes this writer's mirror; if another writer moved ids meanwhile, forgets what it
    /// knew of the move and of the open generation.
    fn refresh(&mut self, tx: &Connection) -> Result<(), crate::Error> {
        let epoch = self.mirror.epoch;
        self.mirror.refresh(tx, &self.name)?;
        if self.mirror.epoch != epoch {
            // Another writer moved the appended ids (this mirror started over, its frozen ids
            // gone): this writer's move, if any, is abandoned; what it had not moved is still
            // appended, and read back. It may have moved ids into the open generation, or
            // sealed it: this writer counts it again at its next move, and no longer knows
            // every id in it.
            self.moving = None;
            self.open = None;
        }
        Ok(())
    }

    /// The value of `(tenant, id)`, if it was seen: staged in this transaction, appended, or in a
    /// live generation.
    pub fn get(&self, tx: &Connection, tenant: &str, id: &str) -> Result<Option<Value>, crate::Error> {
        if let Some((_, v)) = self.staged.get(&Probe(tenant, id)) {
            return Ok(Some(v.clone()));
        }
        self.mirror.get(tx, tenant, id)
    }

    /// Whether `(tenant, id)` was seen (as [`Dedup::get`], without its value).
    pub fn contains(&self, tx: &Connection, tenant: &str, id: &str) -> Result<bool, crate::Error> {
        Ok(self.staged.contains_key(&Probe(tenant, id)) || self.mirror.get(tx, tenant, id)?.is_some())
    }

    /// Records `(tenant, id)` with `value` in the open transaction (appended; seen by
    /// [`Dedup::get`] at once). The caller has checked it is new.
    pub fn insert(&mut self, tx: &Connection, tenant: &str, id: &str, value: Value) -> Result<(), crate::Error> {
        let (hash, at) = nullable(&value);
        tx.prepare_cached(&self.insert_sql)?.execute(params![tenant, id, hash, at])?;
        self.written.push(tx.last_insert_rowid());
        let n = self.staged.len();
        self.staged.insert((tenant.to_string(), id.to_string()), (n, value));
        Ok(())
    }

    /// How many ids are staged: a mark to roll back to.
    pub fn mark(&self) -> usize {
        self.staged.len()
    }

    /// Forgets the ids staged after `mark` (their savepoint was rolled back).
    pub fn rollback_to(&mut self, mark: usize) {
        self.written.truncate(mark);
        if self.staged.len() > mark {
            self.staged.retain(|_, (n, _)| *n < mark);
        }
    }

    /// After the transaction committed: its ids count as appended (this writer held the write
    /// lock from [`Dedup::begin`], so nobody else appended meanwhile). Then, outside any
    /// transaction, moves the next chunk of appended ids into the open generation once there
    /// are enough, opens a new generation every quarter of the horizon and drops those past it.
    /// A failure leaves everything appended; the next call goes on.
    pub fn committed(&mut self, conn: &mut Connection, now_us: i64) -> Result<(), crate::Error> {
        for (key, (_, value)) in self.staged.drain() {
            self.mirror.ids.insert(key, value);
        }
        if let Some(&last) = self.written.last() {
            self.mirror.last_rowid = self.mirror.last_rowid.max(last);
        }
        if now_us >= self.mirror.open_since.saturating_add(self.settings.bucket_us()) {
            // Once a quarter horizon: what a move left and everything appended go at once.
            return self.roll(conn, now_us);
        }
        if self.moving.is_none() && self.mirror.ids.len() >= self.settings.flush_at {
            self.start_move(conn)?;
        }
        if self.moving.is_some() {
            self.move_chunk(conn, now_us)?;
        }
        Ok(())
    }

    /// Freezes the appended ids, sorted, for a move into the open generation.
    fn start_move(&mut self, conn: &mut Connection) -> Result<(), crate::Error> {
        // The mirror and the rows the move covers are read in one snapshot: another writer may
        // have appended since this one committed, and the move covers exactly what the mirror
        // then holds. Not the mirror's last rowid, which may be a rolled back row's and which an
        // emptied table reuses: rows appended during the move would be at or below it and
        // deleted unmoved.
        let tx = conn.transaction()?;
        self.refresh(&tx)?;
        let tbl: String =
            tx.query_row(&format!("SELECT tbl FROM {}_gens WHERE until_us IS NULL", self.name), [], |r| r.get(0))?;
        let through: i64 =
            tx.query_row(&format!("SELECT coalesce(max(rowid), 0) FROM {}_pending", self.name), [], |r| r.get(0))?;
        if self.open.as_ref().is_none_or(|o| o.tbl != tbl) {
            // Opened elsewhere (another writer, or before this process): counted once, and its
            // filter built from the table when it is sealed.
            let ids: i64 = tx.query_row(&format!("SELECT count(*) FROM {tbl}"), [], |r| r.get(0))?;
            self.open = Some(Open { tbl: tbl.clone(), ids: ids as usize, fps: None });
        }
        tx.commit()?;
        let moving = &mut self.mirror.moving;
        moving.extend(self.mirror.ids.drain());
        moving.sort_unstable_by(|(a, _), (b, _)| (a.1.as_str(), a.0.as_str()).cmp(&(b.1.as_str(), b.0.as_str())));
        self.moving = Some(Move {
            done: 0,
            through,
            insert: format!("INSERT OR IGNORE INTO {tbl} (id, tenant, hash, key) VALUES (?1, ?2, ?3, ?4)"),
        });
        Ok(())
    }

    /// Moves the next [`MOVE_CHUNK`] ids; the last chunk also deletes the rows it moved from
    /// the appended ones, seals the open generation if it holds [`Settings::seal_at`] ids, and
    /// tells readers (the epoch).
    fn move_chunk(&mut self, conn: &mut Connection, now_us: i64) -> Result<(), crate::Error> {
        let Some(m) = self.moving.as_mut() else { return Ok(()) };
        let ids = &self.mirror.moving;
        // At least twice what arrived since the move began, so that a move always ends before
        // the next is due, however large the commits.
        let step = MOVE_CHUNK.max(2 * self.mirror.ids.len());
        let end = (m.done + step).min(ids.len());
        let last = end == ids.len();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let epoch: i64 = tx.query_row(&format!("SELECT epoch FROM {}_state", self.name), [], |r| r.get(0))?;
        let (Some(open), true) = (self.open.as_mut(), self.mirror.epoch == Some(epoch)) else {
            // Another writer moved the appended ids since this one's last look (or the open
            // generation is not known): abandon this move (what it had not moved is still
            // appended) and start the mirror over.
            drop(tx);
            self.moving = None;
            self.open = None;
            self.mirror.moving.clear();
            self.mirror.epoch = None;
            return Ok(());
        };
        let mut inserted = 0;
        {
            let mut insert = tx.prepare_cached(&m.insert)?;
            for ((tenant, id), value) in &ids[m.done..end] {
                let (hash, at) = nullable(value);
                inserted += insert.execute(params![id, tenant, hash, at])?;
            }
        }
        let mut sealed = None;
        let mut emptied = false;
        let epoch = match last {
            true => {
                let name = &self.name;
                tx.execute(&format!("DELETE FROM {name}_pending WHERE rowid <= ?1"), [m.through])?;
                // An emptied table gives rowids from 1 again: this mirror must read from there.
                emptied = tx
                    .query_row(&format!("SELECT 1 FROM {name}_pending LIMIT 1"), [], |_| Ok(()))
                    .optional()?
                    .is_none();
                let held = open.ids + inserted;
                if held >= self.settings.seal_at.max(self.mirror.sealed_ids / SEALED) {
                    sealed = Some(seal(&tx, name, now_us, self.settings.horizon_us, held)?);
                }
                Some(tx.query_row(&format!("UPDATE {name}_state SET epoch = epoch + 1 RETURNING epoch"), [], |r| {
                    r.get::<_, i64>(0)
                })?)
            }
            false => None,
        };
        tx.commit()?;
        open.ids += inserted;
        if let Some(fps) = open.fps.as_mut() {
            fps.extend(ids[m.done..end].iter().map(|((tenant, id), _)| fingerprint(tenant, id)));
        }
        m.done = end;
        if last {
            self.moving = None;
            self.mirror.moving.clear();
            // This mirror already holds what is appended now: only readers start over.
            self.mirror.epoch = epoch;
            if emptied {
                self.mirror.last_rowid = 0;
            }
        }
        if let Some(tbl) = sealed {
            let done = std::mem::replace(open, Open { tbl, ids: 0, fps: Some(Vec::new()) });
            if let Some(filter) = done.fps.and_then(filter_of) {
                self.mirror.adopted.insert(done.tbl, filter);
            }
            self.reload(conn, epoch)?;
        }
        Ok(())
    }

    /// After this writer sealed a generation: its mirror looks up the new list of generations.
    /// If another writer moved since this one's `epoch` (it may have moved ids into the new
    /// open generation), this writer no longer knows every id there.
    fn reload(&mut self, conn: &mut Connection, epoch: Option<i64>) -> Result<(), crate::Error> {
        self.mirror.epoch = None;
        let tx = conn.transaction()?;
        self.mirror.refresh(&tx, &self.name)?;
        tx.commit()?;
        if self.mirror.epoch != epoch {
            self.open = None;
        }
        Ok(())
    }

    /// Once a quarter horizon: everything appended goes into the open generation, which is
    /// sealed (its filter built from the table: it took ids this writer does not hold).
    fn roll(&mut self, conn: &mut Connection, now_us: i64) -> Result<(), crate::Error> {
        let name = &self.name;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let tbl: String =
            tx.query_row(&format!("SELECT tbl FROM {name}_gens WHERE until_us IS NULL"), [], |r| r.get(0))?;
        tx.execute_batch(&format!(
            "INSERT OR IGNORE INTO {tbl} (id, tenant, hash, key)
                 SELECT id, tenant, hash, key FROM {name}_pending ORDER BY id, tenant;
             DELETE FROM {name}_pending;"
        ))?;
        let held: i64 = tx.query_row(&format!("SELECT count(*) FROM {tbl}"), [], |r| r.get(0))?;
        let tbl = seal(&tx, name, now_us, self.settings.horizon_us, held as usize)?;
        let epoch: i64 =
            tx.query_row(&format!("UPDATE {name}_state SET epoch = epoch + 1 RETURNING epoch"), [], |r| r.get(0))?;
        tx.commit()?;
        self.open = Some(Open { tbl, ids: 0, fps: Some(Vec::new()) });
        self.moving = None;
        self.mirror.moving.clear();
        self.reload(conn, Some(epoch))
    }
}

/// Seals the open generation of `name` (holding `held` ids) at `now_us`, opens the next and drops
/// those whose last arrival is a horizon ago; returns the new open generation's table.
fn seal(tx: &Connection, name: &str, now_us: i64, horizon_us: i64, held: usize) -> Result<String, crate::Error> {
    let open: i64 = tx.query_row(&format!("SELECT gen FROM {name}_gens WHERE until_us IS NULL"), [], |r| r.get(0))?;
    tx.execute(
        &format!("UPDATE {name}_gens SET until_us = ?1, ids = ?2 WHERE gen = ?3"),
        params![now_us, held as i64, open],
    )?;
    let tbl = open_generation(tx, name, open + 1, now_us)?;
    let gone: Vec<(i64, String)> = {
        let mut stmt = tx.prepare(&format!("SELECT gen, tbl FROM {name}_gens WHERE until_us <= ?1 ORDER BY gen"))?;
        let rows = stmt.query_map([now_us.saturating_sub(horizon_us)], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (number, tbl) in gone {
        tx.execute_batch(&format!("DROP TABLE IF EXISTS {tbl}"))?;
        tx.execute(&format!("DELETE FROM {name}_gens WHERE gen = ?1"), [number])?;
        tracing::info!(state = %name, generation = number, "dedup generation past the horizon dropped");
    }
    Ok(tbl)
}

/// A value as stored: a value-less id (the store's) keeps NULLs.
fn nullable(value: &Value) -> (Option<&Vec<u8>>, Option<i64>) {
    match value.0.is_empty() {
        true => (None, None),
        false => (Some(&value.0), Some(value.1)),
    }
}

/// Opens generation `number` (its table, returned) from `from_us`.
fn open_generation(tx: &Connection, name: &str, number: i64, from_us: i64) -> Result<String, crate::Error> {
    let tbl = format!("{name}_g{number}");
    tx.execute_batch(&format!(
        "CREATE TABLE {tbl} (id TEXT NOT NULL, tenant TEXT NOT NULL, hash BLOB, key INTEGER,
             PRIMARY KEY (id, tenant)) WITHOUT ROWID;"
    ))?;
    tx.execute(
        &format!("INSERT INTO {name}_gens (gen, tbl, from_us) VALUES (?1, ?2, ?3)"),
        params![number, tbl, from_us],
    )?;
    Ok(tbl)
}

impl Mirror {
    /// Brings the mirror of `name` up to what `tx` sees (call it inside the transaction that
    /// then looks ids up, so that a flush cannot move an id out of sight in between).
    pub fn refresh(&mut self, tx: &Connection, name: &str) -> Result<(), crate::Error> {
        let sql = self.sql.take().unwrap_or_else(|| {
            (
                format!("SELECT epoch FROM {name}_state"),
                format!("SELECT rowid, tenant, id, hash, key FROM {name}_pending WHERE rowid > ?1 ORDER BY rowid"),
            )
        });
        let refreshed = self.refresh_with(tx, name, &sql);
        self.sql = Some(sql);
        refreshed
    }

    fn refresh_with(&mut self, tx: &Connection, name: &str, sql: &(String, String)) -> Result<(), crate::Error> {
        let epoch: i64 = tx.prepare_cached(&sql.0)?.query_row([], |r| r.get(0))?;
        if self.epoch != Some(epoch) {
            self.ids.clear();
            self.moving.clear();
            self.last_rowid = 0;
            let mut stmt =
                tx.prepare(&format!("SELECT tbl, from_us, until_us, ids FROM {name}_gens ORDER BY gen DESC"))?;
            let gens: Vec<(String, i64, Option<i64>, Option<i64>)> =
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect::<Result<_, _>>()?;
            self.open_since = gens.iter().find(|g| g.2.is_none()).map_or(0, |g| g.1);
            self.sealed_ids = gens.iter().filter(|g| g.2.is_some()).map(|g| g.3.unwrap_or(0).max(0) as usize).sum();
            let mut known: HashMap<String, BinaryFuse8> = std::mem::take(&mut self.adopted);
            known.extend(self.lookups.drain(..).filter_map(|l| Some((l.tbl, l.filter?))));
            for (tbl, _, until, _) in gens {
                let filter = match until {
                    None => None,
                    Some(_) => match known.remove(&tbl) {
                        Some(f) => Some(f),
                        None => build_filter(tx, &tbl)?,
                    },
                };
                let sql = format!("SELECT hash, key FROM {tbl} WHERE id = ?1 AND tenant = ?2");
                self.lookups.push(Lookup { tbl, sql, filter });
            }
            self.epoch = Some(epoch);
        }
        let mut stmt = tx.prepare_cached(&sql.1)?;
        let mut rows = stmt.query([self.last_rowid])?;
        while let Some(r) = rows.next()? {
            self.last_rowid = r.get(0)?;
            let value = (r.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default(), r.get::<_, Option<i64>>(4)?.unwrap_or(0));
            self.ids.insert((r.get(1)?, r.get(2)?), value);
        }
        Ok(())
    }

    /// The value of `(tenant, id)` if seen, as of the last refresh.
    pub fn get(&self, tx: &Connection, tenant: &str, id: &str) -> Result<Option<Value>, crate::Error> {
        if let Some(v) = self.ids.get(&Probe(tenant, id)) {
            return Ok(Some(v.clone()));
        }
        if let Ok(i) = self.moving.binary_search_by(|((t, i), _)| (i.as_str(), t.as_str()).cmp(&(id, tenant))) {
            return Ok(Some(self.moving[i].1.clone()));
        }
        let fp = fingerprint(tenant, id);
        for Lookup { sql, filter, .. } in &self.lookups {
            if filter.as_ref().is_some_and(|f| !f.contains(&fp)) {
                continue;
            }
            #[cfg(test)]
            self.probes.set(self.probes.get() + 1);
            let found = tx
                .prepare_cached(sql)?
                .query_row(params![id, tenant], |r| {
                    Ok((r.get::<_, Option<Vec<u8>>>(0)?.unwrap_or_default(), r.get::<_, Option<i64>>(1)?.unwrap_or(0)))
                })
                .optional()?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }
}

/// The filter of a sealed generation, from its table.
fn build_filter(tx: &Connection, tbl: &str) -> Result<Option<BinaryFuse8>, crate::Error> {
    let started = std::time::Instant::now();
    let mut stmt = tx.prepare(&format!("SELECT tenant, id FROM {tbl}"))?;
    let fps = stmt
        .query_map([], |r| Ok(fingerprint(r.get_ref(0)?.as_str()?, r.get_ref(1)?.as_str()?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let n = fps.len();
    let filter = filter_of(fps);
    tracing::debug!(generation = tbl, ids = n, built = filter.is_some(), took = ?started.elapsed(), "dedup filter built");
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(n: i64) -> Value {
        (vec![n as u8; 4], n)
    }

    fn writer(path: &std::path::Path, settings: Settings, now: i64) -> (Connection, Dedup) {
        let mut conn = crate::open(path, crate::Durability::Normal).unwrap();
        let d = Dedup::open(&mut conn, "ids", None, settings, now).unwrap();
        (conn, d)
    }

    /// Inserts `ids` for tenant `t` in one committed transaction at `now`.
    fn commit(conn: &mut Connection, d: &mut Dedup, ids: impl IntoIterator<Item = i64>, now: i64) {
        commit_only(conn, d, ids);
        d.committed(conn, now).unwrap();
    }

    fn seen(conn: &mut Connection, d: &mut Dedup, i: i64) -> Option<Value> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        d.begin(&tx).unwrap();
        d.get(&tx, "t", &format!("e{i}")).unwrap()
    }

    /// A reader's look at `(t, e{i})`, refreshed in its own transaction.
    fn look(reader: &mut Connection, mirror: &mut Mirror, i: i64) -> Option<Value> {
        let tx = reader.transaction().unwrap();
        mirror.refresh(&tx, "ids").unwrap();
        mirror.get(&tx, "t", &format!("e{i}")).unwrap()
    }

    /// How many ids are appended, not yet moved.
    fn pending(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM ids_pending", [], |r| r.get(0)).unwrap()
    }

    fn tables(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'ids_g[0-9]*' ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn staged_ids_are_seen_at_once_and_a_rollback_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut conn, mut d) = writer(&dir.path().join("x.db"), Settings::new(1_000_000), 0);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        d.begin(&tx).unwrap();
        d.insert(&tx, "t", "e1", value(1)).unwrap();
        assert_eq!(d.get(&tx, "t", "e1").unwrap(), Some(value(1)));
        assert_eq!(d.get(&tx, "u", "e1").unwrap(), None, "ids are per tenant");
        let mark = d.mark();
        d.insert(&tx, "t", "e2", value(2)).unwrap();
        d.rollback_to(mark);
        assert_eq!(d.get(&tx, "t", "e2").unwrap(), None);
        drop(tx); // rolled back whole
        assert_eq!(seen(&mut conn, &mut d, 1), None, "a transaction that did not commit leaves nothing");
        commit(&mut conn, &mut d, [3], 0);
        assert_eq!(seen(&mut conn, &mut d, 3), Some(value(3)));
    }

    #[test]
    fn ids_survive_a_restart_and_a_flush_and_other_connections_see_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { flush_at: 10, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        commit(&mut conn, &mut d, 0..6, 1);
        drop((conn, d)); // a crash: the appended ids are in the file
        let (mut conn, mut d) = writer(&path, settings, 2);
        assert_eq!(seen(&mut conn, &mut d, 5), Some(value(5)));
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let mut mirror = Mirror::default();
        assert_eq!(look(&mut reader, &mut mirror, 4), Some(value(4)));
        commit(&mut conn, &mut d, 6..12, 3);
        assert_eq!(pending(&conn), 0, "12 ids reached flush_at: moved into the generation's B-tree");
        for i in [0, 7, 11] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)));
            assert_eq!(look(&mut reader, &mut mirror, i), Some(value(i)), "the reader after the flush");
        }
        assert_eq!(look(&mut reader, &mut mirror, 12), None);
    }

    /// A flush that fails (the file locked by another writer past the busy timeout) loses
    /// nothing: the ids stay appended and seen, and the next commit moves them.
    #[test]
    fn a_failed_flush_loses_nothing_and_is_done_at_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { flush_at: 4, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        conn.busy_timeout(std::time::Duration::ZERO).unwrap();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        d.begin(&tx).unwrap();
        for i in 0..5 {
            d.insert(&tx, "t", &format!("e{i}"), value(i)).unwrap();
        }
        tx.commit().unwrap();
        let mut other = crate::open(&path, crate::Durability::Normal).unwrap();
        let lock = other.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        assert!(d.committed(&mut conn, 1).is_err(), "the flush cannot take the write lock");
        drop(lock);
        assert_eq!(pending(&conn), 5, "still appended");
        for i in 0..5 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)));
        }
        commit(&mut conn, &mut d, [5], 2);
        assert_eq!(pending(&conn), 1, "the five moved at the next commit; the sixth waits for the next move");
        for i in 0..6 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)));
        }
        drop((conn, d));
        let (mut conn, mut d) = writer(&path, settings, 3);
        for i in 0..6 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "after a restart");
        }
    }

    /// A move goes a chunk per commit: meanwhile every id is seen by the writer and by a
    /// reader, the appended rows stay until its last chunk, a crash midway loses nothing, and a
    /// move started again ends with every id in the generation once.
    #[test]
    fn a_move_goes_a_chunk_per_commit_and_a_crash_midway_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let n = 2 * MOVE_CHUNK as i64 + 100;
        let settings = Settings { flush_at: n as usize, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        let in_generation =
            |conn: &Connection| -> i64 { conn.query_row("SELECT count(*) FROM ids_g1", [], |r| r.get(0)).unwrap() };
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let mut mirror = Mirror::default();
        // Descending ids: the move sorts them.
        commit(&mut conn, &mut d, (0..n).rev(), 1);
        assert_eq!((pending(&conn), in_generation(&conn)), (n, MOVE_CHUNK as i64), "the first chunk");
        commit(&mut conn, &mut d, [n], 1);
        assert_eq!((pending(&conn), in_generation(&conn)), (n + 1, 2 * MOVE_CHUNK as i64), "the second");
        for i in [0, n / 2, n - 1, n] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "the writer sees {i} midway");
            assert_eq!(look(&mut reader, &mut mirror, i), Some(value(i)), "a reader sees {i} midway");
        }
        drop((conn, d)); // a crash midway
        let (mut conn, mut d) = writer(&path, settings, 2);
        for i in [0, n / 2, n - 1, n] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i} after the crash");
        }
        commit(&mut conn, &mut d, [n + 1], 3);
        commit(&mut conn, &mut d, [n + 2], 3);
        commit(&mut conn, &mut d, [n + 3], 3);
        assert_eq!(in_generation(&conn), n + 2, "moved again, once each");
        assert_eq!(pending(&conn), 2, "the ids appended after the move began wait for the next");
        for i in [0, 1, n / 2, n + 2, n + 3] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)));
            assert_eq!(look(&mut reader, &mut mirror, i), Some(value(i)), "a reader sees {i} after the move");
        }
        assert_eq!(look(&mut reader, &mut mirror, n + 4), None);
    }

    /// An id appended during a move after a rolled back one (whose rowid SQLite gives again)
    /// is not deleted with the moved rows.
    #[test]
    fn an_id_appended_during_a_move_after_a_rollback_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let n = MOVE_CHUNK as i64 + 1;
        let settings = Settings { flush_at: n as usize, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        commit(&mut conn, &mut d, 0..n - 1, 1);
        let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        d.begin(&tx).unwrap();
        d.insert(&tx, "t", &format!("e{}", n - 1), value(n - 1)).unwrap();
        let mark = d.mark();
        let mut sp = tx.savepoint().unwrap();
        d.insert(&sp, "t", "rolled-back", value(0)).unwrap();
        sp.rollback().unwrap();
        drop(sp);
        d.rollback_to(mark);
        tx.commit().unwrap();
        d.committed(&mut conn, 1).unwrap(); // the move starts: its first chunk
        commit(&mut conn, &mut d, [n], 1); // appended at the rolled back row's rowid; the last chunk
        drop((conn, d));
        let (mut conn, mut d) = writer(&path, settings, 2);
        for i in [0, n - 1, n] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i} after a restart");
        }
        let rolled_back = {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
            d.begin(&tx).unwrap();
            d.get(&tx, "t", "rolled-back").unwrap()
        };
        assert_eq!(rolled_back, None);
    }

    /// Two writers on one database (two aggregate processes sharing a data directory): one
    /// finishes a move while the other is midway through its own. The other abandons its move
    /// (its mirror starts over) rather than slicing a mirror that is gone, and every id stays
    /// seen, whoever moved it.
    #[test]
    fn a_move_by_another_writer_midway_through_ours_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let n = 2 * MOVE_CHUNK as i64 + 1;
        let settings = Settings { flush_at: n as usize, ..Settings::new(1_000_000) };
        let (mut a_conn, mut a) = writer(&path, settings, 0);
        let (mut b_conn, mut b) = writer(&path, settings, 0);
        commit(&mut a_conn, &mut a, 0..n, 1); // A's move: its first chunk
        for i in n..n + 3 {
            commit(&mut b_conn, &mut b, [i], 1); // B's move, from its first chunk to its last
        }
        assert!(b.moving.is_none(), "B's move ended");
        commit(&mut a_conn, &mut a, [n + 3], 1);
        commit(&mut a_conn, &mut a, [n + 4], 1);
        drop((a_conn, a, b_conn, b));
        let (mut conn, mut d) = writer(&path, settings, 2);
        for i in 0..n + 5 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i}");
        }
    }

    /// A move that empties the appended rows makes SQLite give rowids from 1 again: a row
    /// another writer appends then is read by this writer's mirror, and moved, not deleted
    /// unmoved by this writer's next move.
    #[test]
    fn a_row_another_writer_appends_after_our_move_emptied_the_table_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { flush_at: 10, ..Settings::new(1_000_000) };
        let (mut a_conn, mut a) = writer(&path, settings, 0);
        let (mut b_conn, mut b) = writer(&path, settings, 0);
        commit(&mut a_conn, &mut a, 0..10, 1); // moved: the table emptied
        commit(&mut b_conn, &mut b, [100], 1); // rowid 1 again
        assert_eq!(seen(&mut a_conn, &mut a, 100), Some(value(100)), "A sees B's id");
        commit(&mut a_conn, &mut a, 10..20, 1); // A's next move
        drop((a_conn, a, b_conn, b));
        let (mut conn, mut d) = writer(&path, settings, 2);
        for i in (0..20).chain([100]) {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i}");
        }
    }

    /// A row rolled back to a savepoint gives its rowid again, maybe to another writer's row:
    /// this writer's mirror still reads that row.
    #[test]
    fn a_rowid_rolled_back_here_and_given_to_another_writer_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings::new(1_000_000);
        let (mut a_conn, mut a) = writer(&path, settings, 0);
        let (mut b_conn, mut b) = writer(&path, settings, 0);
        let mut tx = a_conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        a.begin(&tx).unwrap();
        a.insert(&tx, "t", "e1", value(1)).unwrap();
        let mark = a.mark();
        let mut sp = tx.savepoint().unwrap();
        a.insert(&sp, "t", "rolled-back", value(0)).unwrap();
        sp.rollback().unwrap();
        drop(sp);
        a.rollback_to(mark);
        tx.commit().unwrap();
        a.committed(&mut a_conn, 1).unwrap();
        commit(&mut b_conn, &mut b, [2], 1); // the rolled back row's rowid
        assert_eq!(seen(&mut a_conn, &mut a, 2), Some(value(2)), "A sees B's id");
        assert_eq!(seen(&mut a_conn, &mut a, 1), Some(value(1)));
    }

    /// Commits `ids` at `now` without the work done after a commit (`Dedup::committed`), which
    /// the caller runs later: another writer may act in between.
    fn commit_only(conn: &mut Connection, d: &mut Dedup, ids: impl IntoIterator<Item = i64>) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        d.begin(&tx).unwrap();
        for i in ids {
            d.insert(&tx, "t", &format!("e{i}"), value(i)).unwrap();
        }
        tx.commit().unwrap();
    }

    /// Another writer acts between this writer's commit and the move that follows it: an id
    /// it appends then is moved with the rest (the move reads what it covers in one snapshot,
    /// never deleting a row it did not move), and a move it finishes then makes this writer's
    /// next chunk abandon its own move.
    #[test]
    fn another_writer_between_a_commit_and_its_move_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let n = 2 * MOVE_CHUNK as i64 + 1;
        let settings = Settings { flush_at: n as usize, ..Settings::new(1_000_000) };
        let (mut a_conn, mut a) = writer(&path, settings, 0);
        let (mut b_conn, mut b) = writer(&path, settings, 0);
        // B appends one id after A's commit, before A's move starts: A's move covers it.
        commit_only(&mut a_conn, &mut a, 0..n);
        commit(&mut b_conn, &mut b, [n], 1);
        a.committed(&mut a_conn, 1).unwrap();
        assert_eq!(a.moving.as_ref().map(|m| m.done), Some(MOVE_CHUNK), "A's move: its first chunk");
        // B finishes a move of everything after A's next commit, before A's next chunk.
        commit_only(&mut a_conn, &mut a, [n + 1]);
        for i in n + 2..n + 5 {
            commit(&mut b_conn, &mut b, [i], 1);
        }
        assert!(b.moving.is_none(), "B's move ended");
        a.committed(&mut a_conn, 1).unwrap();
        assert!(a.moving.is_none(), "A's move abandoned");
        commit(&mut a_conn, &mut a, [n + 5], 1);
        drop((a_conn, a, b_conn, b));
        let (mut conn, mut d) = writer(&path, settings, 2);
        for i in 0..n + 6 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i}");
        }
    }

    /// How many live generations `d`'s own lookups have, and how many of them have a filter.
    fn filtered(d: &Dedup) -> (usize, usize) {
        (d.mirror.lookups.len(), d.mirror.lookups.iter().filter(|l| l.filter.is_some()).count())
    }

    /// A generation holding `seal_at` ids is sealed and the next opens, well within a quarter
    /// horizon. Every id stays seen through the sealed generations' filters: by the writer (its
    /// filters from the ids it moved), by a reader and after a restart (theirs built from the
    /// tables); an id never written is not.
    #[test]
    fn a_full_generation_is_sealed_and_its_ids_are_found_through_its_filter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { flush_at: 10, seal_at: 25, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        for batch in 0..10 {
            commit(&mut conn, &mut d, batch * 10..batch * 10 + 10, 1);
        }
        assert_eq!(tables(&conn), ["ids_g1", "ids_g2", "ids_g3", "ids_g4"], "sealed every third move");
        let count =
            |tbl: &str| -> i64 { conn.query_row(&format!("SELECT count(*) FROM {tbl}"), [], |r| r.get(0)).unwrap() };
        assert_eq!([count("ids_g1"), count("ids_g2"), count("ids_g3"), count("ids_g4")], [30, 30, 30, 10]);
        let _ = seen(&mut conn, &mut d, 0);
        assert_eq!(filtered(&d), (4, 3), "each sealed generation has a filter, the open one none");
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let mut mirror = Mirror::default();
        for i in 0..100 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "the writer sees {i}");
            assert_eq!(look(&mut reader, &mut mirror, i), Some(value(i)), "a reader sees {i}");
        }
        let probes = |d: &Dedup| d.mirror.probes.get();
        let before = probes(&d);
        for i in 100..1_100 {
            assert_eq!(seen(&mut conn, &mut d, i), None, "never written: {i}");
        }
        // The open generation's B-tree is asked for each; a sealed one's only on a false
        // positive of its filter (0.4 %: about 12 of 3,000).
        let asked = probes(&d) - before;
        assert!((1_000..1_060).contains(&asked), "{asked} B-trees asked for 1,000 new ids in 4 generations");
        drop((conn, d));
        let (mut conn, mut d) = writer(&path, settings, 2);
        assert_eq!(filtered(&d), (4, 3), "after a restart, filters built from the tables");
        for i in 0..100 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i} after a restart");
        }
        // The generation left open before the restart is counted and sealed when full.
        for batch in 10..13 {
            commit(&mut conn, &mut d, batch * 10..batch * 10 + 10, 3);
        }
        assert_eq!(tables(&conn).len(), 5);
        for i in 0..130 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i} after the next seal");
            assert_eq!(look(&mut reader, &mut mirror, i), Some(value(i)), "a reader sees {i} after the next seal");
        }
    }

    /// A move of several chunks into a generation this writer opened: the filter it builds from
    /// the ids it moved, used in place of the table's, holds every chunk's.
    #[test]
    fn a_writer_built_filter_holds_every_chunk_of_its_moves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let n = 2 * MOVE_CHUNK as i64 + 100;
        let settings = Settings { flush_at: n as usize, seal_at: 10, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        // The first generation was opened before this writer knew it: sealed after one move.
        commit(&mut conn, &mut d, 0..n, 1);
        commit(&mut conn, &mut d, [n], 1);
        commit(&mut conn, &mut d, [n + 1], 1);
        assert_eq!(tables(&conn), ["ids_g1", "ids_g2"]);
        // The second, opened by this writer: its filter comes from the three chunks moved.
        commit(&mut conn, &mut d, n + 2..2 * n, 1);
        commit(&mut conn, &mut d, [2 * n], 1);
        commit(&mut conn, &mut d, [2 * n + 1], 1);
        assert_eq!(tables(&conn), ["ids_g1", "ids_g2", "ids_g3"]);
        assert!(d.mirror.adopted.is_empty() && filtered(&d) == (3, 2), "{:?}", filtered(&d));
        for i in 0..2 * n + 2 {
            assert_eq!(d.get(&conn, "t", &format!("e{i}")).unwrap(), Some(value(i)), "{i}");
        }
    }

    /// Under a load that outgrows [`SEALED`] generations of `seal_at`, a generation is sealed
    /// at a `SEALED`th of the sealed ids: the generations (and the filters a lookup asks) grow
    /// as the logarithm of the ids, not with them (and past a horizon, not at all).
    #[test]
    fn generations_grow_with_the_sealed_ids_past_sealed_times_seal_at() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { flush_at: 10, seal_at: 20, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        for batch in 0..400 {
            commit(&mut conn, &mut d, batch * 10..batch * 10 + 10, 1);
        }
        let gens = tables(&conn).len();
        // 87 (each sealed at 1 + 1/32 times the last, from 32 of seal_at); 200 at seal_at.
        assert_eq!(gens, 87, "generations for 4,000 ids");
        for i in (0..4_000).step_by(7) {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i}");
        }
    }

    /// Generations sealed for their size are dropped a horizon after their last arrival even
    /// when no quarter horizon passes between seals, so the state stays bounded under a load
    /// that seals often.
    #[test]
    fn generations_sealed_for_their_size_go_past_the_horizon() {
        let dir = tempfile::tempdir().unwrap();
        let horizon = 400;
        let settings = Settings { flush_at: 10, seal_at: 20, ..Settings::new(horizon) };
        let (mut conn, mut d) = writer(&dir.path().join("x.db"), settings, 0);
        for t in 1..=80 {
            commit(&mut conn, &mut d, t * 10..t * 10 + 10, t * 10);
        }
        // Sealed every second commit (20 µs), so at most a horizon of them, and the open one.
        assert!(tables(&conn).len() <= (horizon / 20 + 1) as usize, "{:?}", tables(&conn));
        assert_eq!(seen(&mut conn, &mut d, 10), None, "arrived at 10: dropped");
        assert_eq!(seen(&mut conn, &mut d, 350), None, "arrived at 350, its generation sealed at 360: dropped");
        for i in [410, 610, 799] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "arrived at {}: kept", i / 10 * 10);
        }
    }

    /// Two writers on one database sealing generations in turn: each writer's filter of a
    /// generation it sealed covers the ids the other moved into it (or is built from the
    /// table), so every id stays seen.
    #[test]
    fn two_writers_sealing_in_turn_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { flush_at: 10, seal_at: 25, ..Settings::new(1_000_000) };
        let (mut a_conn, mut a) = writer(&path, settings, 0);
        let (mut b_conn, mut b) = writer(&path, settings, 0);
        for batch in 0..20 {
            let ids = batch * 7..batch * 7 + 7;
            match batch % 3 {
                0 => commit(&mut b_conn, &mut b, ids, 1),
                _ => commit(&mut a_conn, &mut a, ids, 1),
            }
        }
        assert!(tables(&a_conn).len() >= 4, "sealed at least thrice: {:?}", tables(&a_conn));
        for i in 0..140 {
            assert_eq!(seen(&mut a_conn, &mut a, i), Some(value(i)), "A sees {i}");
            assert_eq!(seen(&mut b_conn, &mut b, i), Some(value(i)), "B sees {i}");
        }
        assert_eq!(seen(&mut a_conn, &mut a, 140), None);
    }

    #[test]
    fn generations_open_every_quarter_horizon_and_go_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let horizon = 400;
        let (mut conn, mut d) = writer(&dir.path().join("x.db"), Settings::new(horizon), 0);
        commit(&mut conn, &mut d, [1], 10);
        assert_eq!(tables(&conn), ["ids_g1"]);
        commit(&mut conn, &mut d, [2], 100);
        assert_eq!(tables(&conn), ["ids_g1", "ids_g2"], "a quarter of the horizon: a new generation");
        commit(&mut conn, &mut d, [3], 250);
        assert_eq!(seen(&mut conn, &mut d, 1), Some(value(1)), "kept for the horizon");
        commit(&mut conn, &mut d, [4], 499);
        assert_eq!(seen(&mut conn, &mut d, 1), Some(value(1)), "its generation's last arrival was at 100");
        commit(&mut conn, &mut d, [5], 600);
        assert_eq!(seen(&mut conn, &mut d, 1), None, "dropped: every id of it arrived a horizon ago");
        assert_eq!(seen(&mut conn, &mut d, 2), None, "it arrived at 100, in the same generation");
        assert_eq!(seen(&mut conn, &mut d, 3), Some(value(3)), "arrived at 250");
        assert!(!tables(&conn).contains(&"ids_g1".to_string()), "{:?}", tables(&conn));
    }

    /// Pages of the file: all, and those in use (not on the free list).
    fn pages(conn: &Connection) -> (i64, i64) {
        let all: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0)).unwrap();
        (all, all - free)
    }

    /// Random ids at a steady rate for eight horizons, for three horizons: once a horizon has
    /// passed, the file stops growing (dropped generations' pages are reused), and what it
    /// holds grows with the horizon, not with the ids ever seen.
    #[test]
    fn the_file_is_flat_under_a_steady_load_once_the_horizon_is_reached() {
        let mut steady = Vec::new();
        for horizon in [400, 800, 1600] {
            let dir = tempfile::tempdir().unwrap();
            let settings = Settings { flush_at: 2_000, ..Settings::new(horizon) };
            let (mut conn, mut d) = writer(&dir.path().join("x.db"), settings, 0);
            let mut at = Vec::new();
            let (tick, per_tick) = (10, 100);
            for t in (tick..=8 * horizon).step_by(tick as usize) {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
                d.begin(&tx).unwrap();
                for _ in 0..per_tick {
                    let id = format!("{:032x}", rand::random::<u128>());
                    d.insert(&tx, "t", &id, (Vec::new(), 0)).unwrap();
                }
                tx.commit().unwrap();
                d.committed(&mut conn, t).unwrap();
                if t % horizon == 0 {
                    at.push(pages(&conn));
                }
            }
            let (file, used): (Vec<i64>, Vec<i64>) = at.iter().copied().unzip();
            eprintln!("horizon {horizon}: file pages at each horizon {file:?}, in use {used:?}");
            // From 3 horizons on, twice the ids ever seen and the file no larger than a quarter more.
            assert!(file[7] * 4 <= file[2] * 5, "horizon {horizon}: {file:?}");
            assert!(used[7] * 4 <= used[2] * 5, "horizon {horizon}: {used:?}");
            steady.push(file[7]);
        }
        assert!(steady[0] < steady[1] && steady[1] < steady[2], "the state grows with the horizon: {steady:?}");
    }

    #[test]
    fn an_earlier_table_becomes_the_oldest_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let mut conn = crate::open(&path, crate::Durability::Normal).unwrap();
        conn.execute_batch(
            "CREATE TABLE ids (tenant TEXT NOT NULL, id TEXT NOT NULL, hash BLOB NOT NULL, key INTEGER NOT NULL,
                 PRIMARY KEY (id, tenant)) WITHOUT ROWID;
             INSERT INTO ids VALUES ('t', 'old', x'01', 9);",
        )
        .unwrap();
        let mut d = Dedup::open(&mut conn, "ids", Some("ids"), Settings::new(400), 1_000).unwrap();
        let tx = conn.transaction().unwrap();
        d.begin(&tx).unwrap();
        assert_eq!(d.get(&tx, "t", "old").unwrap(), Some((vec![1], 9)));
        drop(tx);
        // A new file's empty earlier table is dropped rather than asked on every lookup.
        let path = dir.path().join("new.db");
        let mut conn = crate::open(&path, crate::Durability::Normal).unwrap();
        conn.execute_batch(
            "CREATE TABLE seen (tenant TEXT, id TEXT, hash BLOB, key INTEGER, PRIMARY KEY (id, tenant));",
        )
        .unwrap();
        Dedup::open(&mut conn, "seen", Some("seen"), Settings::new(400), 1_000).unwrap();
        let gone: Option<String> =
            conn.query_row("SELECT name FROM sqlite_master WHERE name = 'seen'", [], |r| r.get(0)).optional().unwrap();
        assert_eq!(gone, None);
    }
}
