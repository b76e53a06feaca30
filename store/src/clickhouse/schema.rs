//! The ClickHouse schema, versioned: `meter migrate --store URL` applies what is missing, and a
//! store opened on any other version is refused.
//!
//! The SQL runs on ClickHouse 18.16 (Debian's package) and on current releases: no table TTL, no
//! `SimpleAggregateFunction`, no CTEs.

/// The schema version this meter reads and writes.
pub const SCHEMA_VERSION: u32 = 2;

/// One migration: its version, what it does, and its statements (on the store's database).
pub(super) struct Migration {
    pub version: u32,
    pub what: &'static str,
    pub statements: &'static [&'static str],
    /// Columns added: `(table, column, type)`, each only when missing (18.16 has no
    /// `ADD COLUMN IF NOT EXISTS`), so that a migration that died halfway can run again.
    pub add_columns: &'static [(&'static str, &'static str, &'static str)],
}

pub(super) const VERSIONS_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS schema_versions (version UInt32, what String, applied_at DateTime DEFAULT now())
     ENGINE = MergeTree ORDER BY version";

pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        what: "events, progress, daily rollups",
        statements: &[
            // One row per copy of an event, with its contributions; `rank` is u64::MAX minus the
            // copy's log offset, so the first copy ranks highest. Merges keep that copy of each
            // (tenant, id) within a month; queries pick it across months (`argMax(…, rank)`).
            // Months are the unit of retention (`ALTER TABLE … DROP PARTITION`).
            "CREATE TABLE IF NOT EXISTS events (
            tenant String, id String, time_us Int64, rank UInt64,
            meters Array(String), kinds Array(UInt8), values Array(Decimal(38, 9)), texts Array(String)
        ) ENGINE = ReplacingMergeTree(rank)
        PARTITION BY toYYYYMM(toDateTime(intDiv(time_us, 1000000), 'UTC'))
        ORDER BY (tenant, id)",
            // A consumer's progress per partition: its next offset (kind 0) and its watermark in
            // microseconds (kind 1), each read as the maximum written, so that progress written
            // twice or late never moves back. One table, so that a batch writes both in one insert.
            "CREATE TABLE IF NOT EXISTS progress (consumer String, partition UInt32, kind UInt8, value UInt64)
        ENGINE = ReplacingMergeTree(value) ORDER BY (consumer, partition, kind)",
            // Daily rollups per tenant and meter, for days no event can reach any more (see
            // `ClickHouseStore::roll_up`); `uniques` keeps the set state so that a period's unique
            // count merges exactly across days. Each roll-up writes its rows under a version of its
            // own and then marks its days with it in `rolled_days`; reads take each day's highest
            // marked version, so a roll-up that died before marking, or ran twice at once, counts
            // nothing twice (and reads need no FINAL).
            "CREATE TABLE IF NOT EXISTS daily (
            tenant String, meter String, day Int64, kind UInt8, n UInt64, sum Decimal(38, 9),
            uniques AggregateFunction(uniqExact, String), max Decimal(38, 9),
            latest_value Decimal(38, 9), latest_us Int64, latest_id String, version UInt64
        ) ENGINE = MergeTree
        PARTITION BY intDiv(day, 32)
        ORDER BY (tenant, meter, day)",
            "CREATE TABLE IF NOT EXISTS rolled_days (day Int64, version UInt64) ENGINE = MergeTree ORDER BY day",
        ],
        add_columns: &[],
    },
    Migration {
        version: 2,
        what: "breakdowns: each event's group_by values",
        statements: &[],
        // One element per (broken-down meter, property) of the event: the meter, the property, the
        // event's value of it ("" for none) and what the event adds to the meter.
        add_columns: &[
            ("events", "group_meters", "Array(String)"),
            ("events", "group_properties", "Array(String)"),
            ("events", "group_values", "Array(String)"),
            ("events", "group_amounts", "Array(Decimal(38, 9))"),
        ],
    },
];
