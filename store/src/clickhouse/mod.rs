//! The scale-out usage store: ClickHouse over HTTP, rows in RowBinary.
//!
//! ClickHouse has no transactions, so this backend is exact by idempotence rather than atomicity:
//!
//! * `events` holds every copy of every event the sink inserted, each with its log offset; every
//!   read counts only the first copy of each `(tenant, id)`. A batch inserted twice, a log replayed
//!   from offset 0, or a producer retry that stored an event twice changes no total.
//! * A consumer's offsets and watermarks (`progress`) read as the largest ever written, and are
//!   written only after ClickHouse acknowledged the events they cover: a crash in between
//!   re-inserts events, which changes nothing.
//! * `apply` checks that the stored offsets are where the batch started (the fence the SQLite
//!   store checks inside its transaction). Here the check and the insert are two requests, so a
//!   stale owner may still insert between them; what it inserts are copies of rows the new owner
//!   inserts too, so totals stay exact and the checkpoint never moves back.
//!
//! Days no event can reach any more are rolled up into `daily` ([`ClickHouseStore::roll_up`]).

mod query;
mod schema;

pub use schema::SCHEMA_VERSION;

use crate::{
    Applied, Breakdown, Checkpoint, Coverage, Error, MeterTallies, Metered, PeriodUsage, Progress, Series, Totals,
    UsageStore,
};
use async_trait::async_trait;
use clickhouse::{Client, Row};
use meter_schemas::period::{Date, date_start_us};
use meter_schemas::{Contribution, MeterDef, Period};
use query::{AggRow, Bind, DAY_US, Scope, Tenants, kind_code};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

/// Longest a query may take before it counts as failed.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest an insert may take (a large batch on a busy server).
const INSERT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a ClickHouse store is: `clickhouse://[USER@]HOST:PORT/DATABASE` (HTTP port).
#[derive(Clone, PartialEq, Eq)]
pub struct ClickHouseUrl {
    /// `http://HOST:PORT`.
    pub http: String,
    /// Database name.
    pub database: String,
    /// User, if not `default`.
    pub user: Option<String>,
    /// Password (never printed).
    pub password: Option<String>,
}

impl fmt::Debug for ClickHouseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseUrl")
            .field("http", &self.http)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl ClickHouseUrl {
    /// Parses `clickhouse://[USER@]HOST:PORT/DATABASE`; the error says what is wrong.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("clickhouse://").ok_or("must start with clickhouse://")?;
        let (authority, database) = rest.split_once('/').ok_or("needs a database: clickhouse://HOST:PORT/DATABASE")?;
        let (user, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        if host.is_empty() || !host.contains(':') {
            return Err("needs HOST:PORT (ClickHouse's HTTP port, 8123 by default)".into());
        }
        if database.is_empty() || !database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("database {database:?} must be letters, digits and underscores"));
        }
        Ok(Self { http: format!("http://{host}"), database: database.into(), user, password: None })
    }

    fn client(&self) -> Client {
        // Debian's ClickHouse (18.16) knows neither the crate's validation format nor its LZ4
        // response framing; plain RowBinary works on every version.
        let mut c = Client::default()
            .with_url(&self.http)
            .with_validation(false)
            .with_compression(clickhouse::Compression::None);
        if let Some(u) = &self.user {
            c = c.with_user(u);
        }
        if let Some(p) = &self.password {
            c = c.with_password(p);
        }
        c
    }
}

/// The ClickHouse usage store.
pub struct ClickHouseStore {
    inner: Inner,
    /// Runs every request, also those of blocking callers (the aggregator's thread).
    rt: Option<tokio::runtime::Runtime>,
}

#[derive(Clone)]
struct Inner {
    client: Client,
    database: String,
}

impl Drop for ClickHouseStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl ClickHouseStore {
    /// Creates or upgrades the schema at `url`; returns the version it is at now.
    pub async fn migrate(url: &ClickHouseUrl) -> Result<u32, Error> {
        Self::migrate_to(url, SCHEMA_VERSION).await
    }

    /// Creates or upgrades the schema at `url` up to version `target` (at most this meter's):
    /// what an older meter's `migrate` left, for tests of the upgrades.
    #[cfg(feature = "testing")]
    pub async fn migrate_up_to(url: &ClickHouseUrl, target: u32) -> Result<u32, Error> {
        Self::migrate_to(url, target.min(SCHEMA_VERSION)).await
    }

    async fn migrate_to(url: &ClickHouseUrl, target: u32) -> Result<u32, Error> {
        let server = url.client();
        timed(QUERY_TIMEOUT, server.query(&format!("CREATE DATABASE IF NOT EXISTS {}", url.database)).execute())
            .await?;
        let db = server.with_database(&url.database);
        timed(QUERY_TIMEOUT, db.query(schema::VERSIONS_TABLE).execute()).await?;
        let mut version = stored_version(&db).await?;
        if version > SCHEMA_VERSION {
            return Err(newer(url, version));
        }
        let current = version;
        for m in schema::MIGRATIONS.iter().filter(|m| m.version > current && m.version <= target) {
            for statement in m.statements {
                timed(QUERY_TIMEOUT, db.query(statement).execute()).await?;
            }
            for (table, column, kind) in m.add_columns {
                let present: u64 = timed(
                    QUERY_TIMEOUT,
                    db.query("SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?")
                        .bind(&url.database)
                        .bind(*table)
                        .bind(*column)
                        .fetch_one::<u64>(),
                )
                .await?;
                if present == 0 {
                    let sql = format!("ALTER TABLE {table} ADD COLUMN {column} {kind}");
                    timed(QUERY_TIMEOUT, db.query(&sql).execute()).await?;
                }
            }
            timed(
                QUERY_TIMEOUT,
                db.query("INSERT INTO schema_versions (version, what) VALUES (?, ?)")
                    .bind(m.version)
                    .bind(m.what)
                    .execute(),
            )
            .await?;
            tracing::info!(version = m.version, what = m.what, database = %url.database, "clickhouse schema migrated");
            version = m.version;
        }
        Ok(version)
    }

    /// Opens the store at `url`, whose schema must be at this meter's version (else
    /// [`Error::Schema`] says what to do).
    pub async fn open(url: &ClickHouseUrl) -> Result<Self, Error> {
        let inner = Inner { client: url.client().with_database(&url.database), database: url.database.clone() };
        let has_schema: u64 = timed(
            QUERY_TIMEOUT,
            url.client()
                .query("SELECT count() FROM system.tables WHERE database = ? AND name = 'schema_versions'")
                .bind(&url.database)
                .fetch_one::<u64>(),
        )
        .await?;
        let version = if has_schema == 0 { 0 } else { stored_version(&inner.client).await? };
        if version > SCHEMA_VERSION {
            return Err(newer(url, version));
        }
        if version < SCHEMA_VERSION {
            return Err(Error::Schema(format!(
                "the ClickHouse database {:?} at {} has meter schema version {version}; this meter needs version \
                 {SCHEMA_VERSION}: run `meter migrate --store clickhouse://HOST:PORT/{}` first",
                url.database, url.http, url.database
            )));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("meter-clickhouse")
            .enable_all()
            .build()
            .map_err(|e| Error::Schema(format!("cannot start the ClickHouse client's runtime: {e}")))?;
        Ok(Self { inner, rt: Some(rt) })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("the runtime lives as long as the store")
    }

    /// Runs `f` on the store's runtime and waits for it, from a plain thread or from async code.
    fn block<T: Send>(&self, f: impl Future<Output = T> + Send) -> T {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| self.rt().block_on(f)).join().unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        } else {
            self.rt().block_on(f)
        }
    }

    /// Runs `f` on the store's runtime from async code.
    async fn spawn<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        self.rt().spawn(f).await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Rolls up into `daily` every day that no event can reach any more: each of `partitions`
    /// (all of the log's) has been read by `consumer` past the day's end plus `lateness_us`.
    /// Idempotent; returns the first day (days since the epoch) not rolled up.
    pub async fn roll_up(&self, consumer: &str, partitions: u32, lateness_us: i64) -> Result<i64, Error> {
        let inner = self.inner.clone();
        let consumer = consumer.to_string();
        self.spawn(async move { inner.roll_up(&consumer, partitions, lateness_us).await }).await
    }

    /// Drops the months of raw events that end before `before_us` (retention). Daily rollups stay.
    pub async fn expire(&self, before_us: i64) -> Result<Vec<String>, Error> {
        let inner = self.inner.clone();
        self.spawn(async move { inner.expire(before_us).await }).await
    }
}

fn newer(url: &ClickHouseUrl, version: u32) -> Error {
    Error::Schema(format!(
        "the ClickHouse database {:?} has meter schema version {version}, newer than this meter's {SCHEMA_VERSION}: \
         upgrade meter",
        url.database
    ))
}

async fn stored_version(db: &Client) -> Result<u32, Error> {
    timed(QUERY_TIMEOUT, db.query("SELECT toUInt32(max(version)) FROM schema_versions").fetch_one::<u32>()).await
}

/// `f`, failing after `limit` (a server that stopped answering must not hang the sink).
async fn timed<T>(limit: Duration, f: impl Future<Output = clickhouse::error::Result<T>>) -> Result<T, Error> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Error::ClickHouse(clickhouse::error::Error::TimedOut)),
    }
}

#[derive(Row, Serialize)]
struct EventRow<'a> {
    tenant: &'a str,
    id: &'a str,
    time_us: i64,
    rank: u64,
    meters: Vec<&'a str>,
    kinds: Vec<u8>,
    values: Vec<i128>,
    texts: Vec<&'a str>,
    group_meters: Vec<&'a str>,
    group_properties: Vec<&'a str>,
    group_values: Vec<&'a str>,
    group_amounts: Vec<i128>,
}

/// `progress.kind` of a next offset.
const NEXT_OFFSET: u8 = 0;
/// `progress.kind` of a watermark.
const WATERMARK: u8 = 1;

#[derive(Row, Serialize, Deserialize)]
struct ProgressRow {
    consumer: String,
    partition: u32,
    kind: u8,
    value: u64,
}

impl ProgressRow {
    fn new(consumer: &str, partition: u32, kind: u8, value: u64) -> Self {
        Self { consumer: consumer.into(), partition, kind, value }
    }
}

fn event_row<'a>(meters: &'a [MeterDef], ev: &'a Metered) -> Result<EventRow<'a>, Error> {
    let n = ev.contributions.len();
    let mut row = EventRow {
        tenant: &ev.tenant,
        id: &ev.id,
        time_us: ev.time_us,
        rank: u64::MAX - ev.offset,
        meters: Vec::with_capacity(n),
        kinds: Vec::with_capacity(n),
        values: Vec::with_capacity(n),
        texts: Vec::with_capacity(n),
        group_meters: Vec::new(),
        group_properties: Vec::new(),
        group_values: Vec::new(),
        group_amounts: Vec::new(),
    };
    for (m, c) in &ev.contributions {
        row.meters.push(&meters.get(*m).ok_or(Error::UnknownMeter(*m))?.name);
        let (v, text) = match c {
            Contribution::Count => (1_000_000_000, ""),
            Contribution::Unique(u) => (0, u.as_str()),
            Contribution::Sum(q) | Contribution::Max(q) | Contribution::Latest(q) => {
                (query::raw(*q).ok_or(Error::OutOfRange(*q))?, "")
            }
        };
        row.kinds.push(kind_code(c.aggregation()));
        row.values.push(v);
        row.texts.push(text);
    }
    for (m, values) in &ev.groups {
        let def = meters.get(*m).ok_or(Error::UnknownMeter(*m))?;
        let Some(at) = ev.contributions.iter().position(|(i, _)| i == m) else { continue };
        for (property, value) in def.group_by.iter().zip(values) {
            row.group_meters.push(&def.name);
            row.group_properties.push(property);
            row.group_values.push(value);
            row.group_amounts.push(row.values[at]);
        }
    }
    Ok(row)
}

impl Inner {
    /// `consumer`'s progress of one kind, per partition: `(partition, value)` in partition order.
    async fn progress(&self, consumer: &str, kind: u8, partition: Option<u32>) -> Result<Vec<(u32, u64)>, Error> {
        let one = if partition.is_some() { "AND partition = ?" } else { "" };
        let sql = format!(
            "SELECT consumer, partition, kind, max(value) AS value FROM progress WHERE consumer = ? AND kind = ? {one}
             GROUP BY consumer, partition, kind ORDER BY partition"
        );
        let mut q = self.client.query(&sql).bind(consumer).bind(kind);
        if let Some(p) = partition {
            q = q.bind(p);
        }
        let rows = timed(QUERY_TIMEOUT, q.fetch_all::<ProgressRow>()).await?;
        Ok(rows.into_iter().map(|r| (r.partition, r.value)).collect())
    }

    async fn offsets(&self, consumer: &str) -> Result<Vec<(u32, u64)>, Error> {
        self.progress(consumer, NEXT_OFFSET, None).await
    }

    async fn checkpoint(&self, consumer: &str) -> Result<Checkpoint, Error> {
        let other = timed(
            QUERY_TIMEOUT,
            self.client
                .query("SELECT consumer FROM progress WHERE consumer != ? LIMIT 1")
                .bind(consumer)
                .fetch_all::<String>(),
        )
        .await?;
        if let Some(found) = other.into_iter().next() {
            return Err(Error::OtherConsumer { found, asked: consumer.to_string() });
        }
        Ok(Checkpoint { positions: self.offsets(consumer).await? })
    }

    async fn apply(
        &self,
        consumer: &str,
        meters: &[MeterDef],
        events: &[Metered],
        progress: &Progress,
    ) -> Result<Applied, Error> {
        // The fence's read runs while the rows are built.
        let stored = (!progress.partitions.is_empty()).then(|| {
            let (inner, consumer) = (self.clone(), consumer.to_string());
            tokio::spawn(async move { inner.offsets(&consumer).await })
        });
        let rows = events.iter().map(|ev| event_row(meters, ev)).collect::<Result<Vec<_>, _>>();
        if let Some(stored) = stored {
            let stored = stored.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
            for a in &progress.partitions {
                let at = stored.iter().find(|(p, _)| *p == a.partition).map_or(0, |(_, o)| *o);
                if at != a.from {
                    return Err(Error::Fenced { partition: a.partition, stored: at, from: a.from });
                }
            }
        }
        let rows = rows?;
        if !rows.is_empty() {
            let mut insert =
                self.client.insert::<EventRow<'_>>("events").await?.with_timeouts(None, Some(INSERT_TIMEOUT));
            for row in &rows {
                insert.write(row).await?;
            }
            insert.end().await?;
        }
        // Only now that ClickHouse holds the events may the checkpoint cover them.
        let mut marks: Vec<ProgressRow> =
            progress.partitions.iter().map(|a| ProgressRow::new(consumer, a.partition, NEXT_OFFSET, a.to)).collect();
        if let Some(w) = progress.watermark_us {
            marks.extend(
                progress.partitions.iter().map(|a| ProgressRow::new(consumer, a.partition, WATERMARK, w as u64)),
            );
        }
        self.insert_progress(&marks).await?;
        // Duplicates are left for reads to skip; the store does not know them at insert.
        Ok(Applied { counted: events.len(), duplicates: 0 })
    }

    async fn insert_progress(&self, rows: &[ProgressRow]) -> Result<(), Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self.client.insert::<ProgressRow>("progress").await?.with_timeouts(None, Some(QUERY_TIMEOUT));
        for row in rows {
            insert.write(row).await?;
        }
        Ok(insert.end().await?)
    }

    async fn advance_watermark(&self, consumer: &str, partitions: &[u32], watermark_us: i64) -> Result<(), Error> {
        // A zero offset lists the partition in the checkpoint without moving it (reads take the maximum).
        let rows: Vec<ProgressRow> = partitions
            .iter()
            .flat_map(|p| {
                [
                    ProgressRow::new(consumer, *p, NEXT_OFFSET, 0),
                    ProgressRow::new(consumer, *p, WATERMARK, watermark_us as u64),
                ]
            })
            .collect();
        self.insert_progress(&rows).await
    }

    async fn watermark(&self, consumer: &str, partition: u32) -> Result<Option<i64>, Error> {
        let marks = self.progress(consumer, WATERMARK, Some(partition)).await?;
        Ok(marks.first().map(|(_, w)| *w as i64))
    }

    /// First day (since the epoch) not rolled up into `daily`.
    async fn unrolled_from(&self) -> Result<i64, Error> {
        let rows = timed(
            QUERY_TIMEOUT,
            self.client.query("SELECT toInt64(max(day) + 1), count() FROM rolled_days").fetch_one::<(i64, u64)>(),
        )
        .await?;
        Ok(if rows.1 == 0 { i64::MIN / 2 } else { rows.0 })
    }

    /// The scope of one read: `tenant` (or every tenant) over `from_us..to_us`.
    async fn scope(&self, tenant: Option<&str>, from_us: i64, to_us: i64, by_day: bool) -> Result<Scope, Error> {
        let unrolled_from_day = self.unrolled_from().await?;
        let tenants = match tenant {
            Some(t) => Tenants::One(t.to_string()),
            None => Tenants::Range { after: None, upto: None },
        };
        Ok(Scope { tenants, from_us, to_us, by_day, unrolled_from_day })
    }

    async fn aggregate(&self, scope: Scope) -> Result<Vec<AggRow>, Error> {
        let (sql, binds) = query::aggregate(&scope);
        if sql.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = self.client.query(&sql);
        for b in binds {
            q = match b {
                Bind::Text(t) => q.bind(t),
                Bind::Int(i) => q.bind(i),
            };
        }
        timed(QUERY_TIMEOUT, q.fetch_all::<AggRow>()).await
    }

    async fn usage(&self, tenant: &str, period: Period, coverage: (String, u32)) -> Result<PeriodUsage, Error> {
        // One look at what is rolled up serves both reads.
        let whole = self.scope(Some(tenant), period.start_us(), period.end_us(), false).await?;
        let (whole, days, watermark_us) = tokio::try_join!(
            self.aggregate(Scope { by_day: false, ..whole.clone() }),
            self.aggregate(Scope { by_day: true, ..whole }),
            self.watermark(&coverage.0, coverage.1),
        )?;
        let mut usage = PeriodUsage { meters: BTreeMap::new(), watermark_us };
        for row in whole {
            usage.meters.entry(row.meter.clone()).or_default().period = row.tally()?;
        }
        for row in days {
            let day = row.date();
            let entry: &mut MeterTallies = usage.meters.entry(row.meter.clone()).or_default();
            entry.days.insert(day, row.tally()?);
        }
        Ok(usage)
    }

    async fn daily(&self, tenant: &str, from: Date, to: Date) -> Result<Series, Error> {
        let rows =
            self.aggregate(self.scope(Some(tenant), date_start_us(from), date_start_us(to), true).await?).await?;
        let mut series = Series::new();
        for row in rows {
            let day = row.date();
            series.entry(row.meter.clone()).or_default().insert(day, row.tally()?);
        }
        Ok(series)
    }

    async fn period_totals_in(
        &self,
        period: Period,
        after: Option<String>,
        upto: Option<String>,
    ) -> Result<Totals, Error> {
        let scope = self.scope(None, period.start_us(), period.end_us(), false).await?;
        let rows = self.aggregate(Scope { tenants: Tenants::Range { after, upto }, ..scope }).await?;
        let mut totals = Totals::new();
        for row in rows {
            let tally = row.tally()?;
            totals.entry(row.tenant).or_default().insert(row.meter, tally);
        }
        Ok(totals)
    }

    async fn breakdown(&self, tenant: &str, period: Period) -> Result<Breakdown, Error> {
        let q = self.client.query(query::BREAKDOWN).bind(tenant).bind(period.start_us()).bind(period.end_us());
        let rows = timed(QUERY_TIMEOUT, q.fetch_all::<(String, String, String, i128)>()).await?;
        let mut out = Breakdown::new();
        for (meter, property, value, amount) in rows {
            out.entry(meter).or_default().entry(property).or_default().insert(value, query::decimal(amount)?);
        }
        Ok(out)
    }

    async fn roll_up(&self, consumer: &str, partitions: u32, lateness_us: i64) -> Result<i64, Error> {
        let marks = self.progress(consumer, WATERMARK, None).await?;
        // Every partition must have been read; the slowest one decides.
        let watermark = match (0..partitions).map(|p| marks.iter().find(|(q, _)| *q == p)).collect::<Option<Vec<_>>>() {
            Some(read) if !read.is_empty() => read.iter().map(|(_, w)| *w as i64).min().unwrap_or(i64::MIN),
            _ => return self.unrolled_from().await,
        };
        // Day D is sealed when the watermark passed its end plus the lateness window.
        let sealed_until = (watermark - lateness_us).div_euclid(DAY_US);
        let from = self.unrolled_from().await?;
        let first_event_day = timed(
            QUERY_TIMEOUT,
            self.client
                .query("SELECT toInt64(intDiv(min(time_us), ?)), count() FROM events")
                .bind(DAY_US)
                .fetch_one::<(i64, u64)>(),
        )
        .await?;
        if first_event_day.1 == 0 {
            return Ok(from);
        }
        let from = from.max(first_event_day.0);
        if from >= sealed_until {
            return Ok(from);
        }
        let sql = format!(
            "INSERT INTO daily
             SELECT tenant, m AS meter, intDiv(t, {DAY_US}) AS day, any(kd) AS kind, count() AS n, sum(v) AS sum,
                    uniqExactState(x) AS uniques, max(v) AS max, argMax(v, (t, id)) AS latest_value, max(t) AS latest_us,
                    argMax(id, (t, id)) AS latest_id, toUInt64(?) AS version
             FROM ({} GROUP BY tenant, id HAVING t >= ? AND t < ?)
             ARRAY JOIN ms AS m, ks AS kd, vs AS v, xs AS x
             GROUP BY tenant, meter, day",
            query::WINNERS
        );
        let version = meter_schemas::period::now_us() as u64;
        timed(
            INSERT_TIMEOUT,
            self.client.query(&sql).bind(version).bind(from * DAY_US).bind(sealed_until * DAY_US).execute(),
        )
        .await?;
        // Marked only once the rows are in: a crash in between rolls the same days up again, under
        // another version, and reads never take the unmarked rows.
        let days: Vec<String> = (from..sealed_until).map(|d| format!("({d}, {version})")).collect();
        timed(
            QUERY_TIMEOUT,
            self.client.query(&format!("INSERT INTO rolled_days VALUES {}", days.join(","))).execute(),
        )
        .await?;
        tracing::info!(from_day = from, until_day = sealed_until, "clickhouse: days rolled up");
        Ok(sealed_until)
    }

    async fn expire(&self, before_us: i64) -> Result<Vec<String>, Error> {
        let parts = timed(
            QUERY_TIMEOUT,
            self.client
                .query("SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = 'events' AND active")
                .bind(&self.database)
                .fetch_all::<String>(),
        )
        .await?;
        let mut dropped = Vec::new();
        for part in parts {
            let Some(month) = part.trim_matches('\'').parse::<u32>().ok().filter(|m| *m > 197000) else { continue };
            let Ok(period) = format!("{:04}-{:02}", month / 100, month % 100).parse::<Period>() else { continue };
            if period.end_us() <= before_us {
                timed(
                    QUERY_TIMEOUT,
                    self.client.query(&format!("ALTER TABLE events DROP PARTITION {month}")).execute(),
                )
                .await?;
                tracing::info!(period = %period, "clickhouse: raw events past retention dropped");
                dropped.push(period.to_string());
            }
        }
        Ok(dropped)
    }
}

#[async_trait]
impl UsageStore for ClickHouseStore {
    fn deduplicates_at_write(&self) -> bool {
        false
    }

    fn checkpoint(&self, consumer: &str) -> Result<Checkpoint, Error> {
        self.block(self.inner.checkpoint(consumer))
    }

    fn apply(
        &self,
        consumer: &str,
        meters: &[MeterDef],
        events: &[Metered],
        progress: &Progress,
    ) -> Result<Applied, Error> {
        self.block(self.inner.apply(consumer, meters, events, progress))
    }

    fn advance_watermark(&self, consumer: &str, partitions: &[u32], watermark_us: i64) -> Result<(), Error> {
        self.block(self.inner.advance_watermark(consumer, partitions, watermark_us))
    }

    async fn usage(&self, tenant: &str, period: Period, coverage: Coverage<'_>) -> Result<PeriodUsage, Error> {
        let (inner, tenant) = (self.inner.clone(), tenant.to_string());
        let coverage = (coverage.consumer.to_string(), coverage.partition);
        self.spawn(async move { inner.usage(&tenant, period, coverage).await }).await
    }

    async fn daily(&self, tenant: &str, from: Date, to: Date) -> Result<Series, Error> {
        let (inner, tenant) = (self.inner.clone(), tenant.to_string());
        self.spawn(async move { inner.daily(&tenant, from, to).await }).await
    }

    async fn period_totals_in(&self, period: Period, after: Option<&str>, upto: Option<&str>) -> Result<Totals, Error> {
        let (inner, after, upto) = (self.inner.clone(), after.map(str::to_string), upto.map(str::to_string));
        self.spawn(async move { inner.period_totals_in(period, after, upto).await }).await
    }

    async fn breakdown(&self, tenant: &str, period: Period) -> Result<Breakdown, Error> {
        let (inner, tenant) = (self.inner.clone(), tenant.to_string());
        self.spawn(async move { inner.breakdown(&tenant, period).await }).await
    }

    async fn watermark(&self, consumer: &str, partitions: u32) -> Result<Option<i64>, Error> {
        let (inner, consumer) = (self.inner.clone(), consumer.to_string());
        self.spawn(async move {
            let marks = inner.progress(&consumer, WATERMARK, None).await?;
            let marks: Vec<(u32, i64)> = marks.into_iter().map(|(p, w)| (p, w as i64)).collect();
            Ok(crate::slowest(&marks, partitions))
        })
        .await
    }

    async fn positions(&self, consumer: &str) -> Result<Vec<(u32, u64)>, Error> {
        let (inner, consumer) = (self.inner.clone(), consumer.to_string());
        self.spawn(async move {
            let mut offsets = inner.offsets(&consumer).await?;
            offsets.sort_unstable();
            Ok(offsets)
        })
        .await
    }
}
