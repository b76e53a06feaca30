//! The ledger in Postgres (`--state postgres://…`): the tables of component `ledger`, shared by
//! every host. SQLite serialises every write; here advisory transaction locks keep the same
//! rules with several writers:
//!
//! - `periods` (shared by subscription writes, exclusive for `freeze`): a change is never dated
//!   inside a period that a close on another host is freezing;
//! - `recording` (exclusive for `record`): a close's recording on another host waits for this
//!   one's, and then finds its period closed; it takes neither `periods` nor, until its very end,
//!   `outbox`, so that writers go on while a close walks (its pushes wait in a temporary table,
//!   which needs the role's `TEMP` privilege);
//! - `sub:<tenant>`: two hosts cannot both admit a subscription for one tenant;
//! - `outbox`: operation ids appear in commit order, so that a lane's oldest pending operation
//!   (its `min(id)`) is the next one on every host;
//! - `remote:<id>`: a provider invoice's status only moves forward.
//!
//! Claims lock the rows they read (`FOR UPDATE SKIP LOCKED`), so two workers never claim one
//! operation.

use super::Close;
use super::outbox::{NewOperation, OpKind, OpState, Operation, ReceivedEvent, RemoteCustomer, RemoteInvoice, Settle};
use super::{
    Admit, CLOSE_LEASE_SQL, Change, CloseHolder, CloseSummary, Closed, LedgerStore, Page, Part, Parts, Rows, UsedList,
    Written, close_holder, stopped,
};
use crate::Error;
use async_trait::async_trait;
use meter_postgres::deadpool_postgres::{GenericClient, Transaction};
use meter_postgres::tokio_postgres::Row;
use meter_postgres::{Pg, lock_key};
use meter_rater::Subscription;
use meter_schemas::Period;
use std::collections::HashSet;
use std::sync::Arc;

/// The component's name in `meter_schema_versions`.
pub const COMPONENT: &str = "ledger";

/// The `ledger` component's migrations, in order (version N is the N-th).
pub const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE subscriptions (
        id text COLLATE \"C\" PRIMARY KEY, tenant text COLLATE \"C\" NOT NULL, created_us bigint NOT NULL,
        body text NOT NULL
    );
    CREATE INDEX subscriptions_by_tenant ON subscriptions (tenant, created_us);
    CREATE TABLE closes (
        period text COLLATE \"C\" PRIMARY KEY, closed_us bigint NOT NULL, body text NOT NULL,
        watermark_us bigint NOT NULL, revises text NOT NULL
    );
    CREATE TABLE close_parts (
        period text COLLATE \"C\" NOT NULL, part integer NOT NULL, body bytea NOT NULL, PRIMARY KEY (period, part)
    );
    CREATE TABLE freezes (period text COLLATE \"C\" PRIMARY KEY, since_us bigint NOT NULL);
    CREATE TABLE price_lists (
        version text COLLATE \"C\" PRIMARY KEY, digest text NOT NULL, first_period text COLLATE \"C\" NOT NULL
    );
    CREATE TABLE invoices (
        id text COLLATE \"C\" PRIMARY KEY, tenant text COLLATE \"C\" NOT NULL, period text COLLATE \"C\" NOT NULL,
        body text NOT NULL
    );
    CREATE INDEX invoices_by_tenant ON invoices (tenant, period);
    CREATE INDEX invoices_by_period ON invoices (period, id);
    CREATE TABLE outbox (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind text NOT NULL, subject text COLLATE \"C\" NOT NULL,
        tenant text COLLATE \"C\" NOT NULL, lane text COLLATE \"C\" NOT NULL, period text COLLATE \"C\",
        body text NOT NULL, created_us bigint NOT NULL, first_tried_us bigint, attempts integer NOT NULL DEFAULT 0,
        next_us bigint NOT NULL, claimed_until_us bigint, state text NOT NULL DEFAULT 'pending', outcome text,
        UNIQUE (kind, subject)
    );
    CREATE INDEX outbox_lanes ON outbox (tenant, lane, id) WHERE state IN ('pending', 'dead');
    CREATE INDEX outbox_due ON outbox (next_us, id) WHERE state = 'pending';
    CREATE INDEX outbox_by_period ON outbox (period, id);
    CREATE TABLE remote_customers (
        tenant text COLLATE \"C\" PRIMARY KEY, customer text COLLATE \"C\" NOT NULL, subscription text COLLATE \"C\"
    );
    CREATE INDEX remote_customers_by_customer ON remote_customers (customer);
    CREATE INDEX remote_customers_by_subscription ON remote_customers (subscription);
    CREATE TABLE remote_invoices (
        remote text COLLATE \"C\" PRIMARY KEY, invoice text COLLATE \"C\" NOT NULL, tenant text COLLATE \"C\" NOT NULL,
        status text NOT NULL, sent_us bigint, due_us bigint, paid_us bigint, hosted_url text, pdf_url text
    );
    CREATE INDEX remote_invoices_by_invoice ON remote_invoices (invoice);
    CREATE TABLE received_events (
        id text COLLATE \"C\" PRIMARY KEY, kind text NOT NULL, created bigint NOT NULL, object text NOT NULL,
        body text NOT NULL, processed_us bigint, outcome text
    );
    CREATE INDEX received_events_unprocessed ON received_events (created, id) WHERE processed_us IS NULL;
",
    "
    CREATE TABLE close_lease (
        id integer PRIMARY KEY CHECK (id = 1), holder text NOT NULL, period text NOT NULL,
        since_us bigint NOT NULL, until_us bigint NOT NULL
    );
",
    // A close's invoices and report rows are rows of their own, by position (`rows_apart`), not
    // in its body: recording one serializes no copy of it whole. (`invoices` stays the index by
    // id; the close is kept by position, whatever its ids.)
    "
    ALTER TABLE closes ADD COLUMN rows_apart boolean NOT NULL DEFAULT false;
    CREATE TABLE close_invoices (
        period text COLLATE \"C\" NOT NULL, seq integer NOT NULL, body text NOT NULL, PRIMARY KEY (period, seq)
    );
    CREATE TABLE close_report (
        period text COLLATE \"C\" NOT NULL, row integer NOT NULL, tenant text COLLATE \"C\" NOT NULL,
        meter text NOT NULL, accepted text, counted text, stored text, rated text, status text NOT NULL,
        PRIMARY KEY (period, row)
    );
",
    // An invoice's body is written once, in `invoices`: a close's place of it and its push hold
    // '' and read it from the row of its id (`close_invoices.id`, `outbox.subject`), unless that
    // row holds another invoice of the id (written before, or earlier in the same close).
    "
    ALTER TABLE close_invoices ADD COLUMN id text COLLATE \"C\";
",
    // The outbox's `body` becomes `payload`, so that a process of an older build still running
    // fails its outbox statements (tried again until it is replaced) instead of reading a push's
    // '' as its invoice.
    "
    ALTER TABLE outbox RENAME COLUMN body TO payload;
",
];

/// Invoices or report rows written, or read, in one statement.
const ROWS_AT_ONCE: usize = 5_000;

/// A close body longer than this is stored in parts of this size (Postgres refuses a value over
/// 1 GB).
const PART_BYTES: usize = 64 << 20;

/// The ledger in Postgres.
pub struct PgLedger {
    pg: Arc<Pg>,
    part_bytes: usize,
}

impl PgLedger {
    /// The tables on `pg`, refused unless `meter migrate` has brought them to this build's version.
    pub fn open(pg: Arc<Pg>) -> Result<Self, Error> {
        meter_postgres::check(&pg, COMPONENT, MIGRATIONS.len() as i64)?;
        Ok(Self { pg, part_bytes: PART_BYTES })
    }

    /// Creates or upgrades the tables (`meter migrate`).
    pub fn migrate(pg: &Pg) -> Result<i64, Error> {
        Ok(meter_postgres::migrate(pg, COMPONENT, MIGRATIONS)?)
    }

    /// The same ledger, keeping close bodies past `bytes` in parts (tests).
    #[doc(hidden)]
    pub fn with_part_bytes(self, bytes: usize) -> Self {
        Self { part_bytes: bytes, ..self }
    }
}

impl From<meter_postgres::tokio_postgres::Error> for Error {
    fn from(e: meter_postgres::tokio_postgres::Error) -> Self {
        Error::Postgres(e.into())
    }
}

/// Takes the advisory lock `name` until the transaction ends; `shared` lets other shared
/// holders in.
/// `sql`, written once for every backend with SQLite's `?1`…`?9`, with Postgres's `$1`…`$9`.
fn numbered(sql: &str) -> String {
    (1..=9).fold(sql.to_string(), |sql, n| sql.replace(&format!("?{n}"), &format!("${n}")))
}

async fn lock(tx: &Transaction<'_>, name: &str, shared: bool) -> Result<(), Error> {
    let sql = if shared { "SELECT pg_advisory_xact_lock_shared($1)" } else { "SELECT pg_advisory_xact_lock($1)" };
    tx.execute(sql, &[&lock_key(name)]).await?;
    Ok(())
}

const PERIODS: &str = "ledger:periods";
const OUTBOX: &str = "ledger:outbox";
/// Held by a close while it records: another close's recording of the period waits for it, and
/// then reads it. Subscription writes do not take it.
const RECORDING: &str = "ledger:recording";

#[async_trait]
impl LedgerStore for PgLedger {
    async fn price_lists(&self) -> Result<Vec<UsedList>, Error> {
        self.pg
            .with(async |c| {
                let rows =
                    c.query("SELECT version, digest, first_period FROM price_lists ORDER BY version", &[]).await?;
                Ok(rows
                    .iter()
                    .map(|r| UsedList { version: r.get(0), digest: r.get(1), first_period: r.get(2) })
                    .collect())
            })
            .await
    }

    async fn insert_subscription(&self, sub: Subscription, at_us: i64, admit: Admit) -> Result<Subscription, Error> {
        self.pg
            .with(async move |mut c| {
                let tx = c.transaction().await?;
                lock(&tx, PERIODS, true).await?;
                lock(&tx, &format!("ledger:sub:{}", sub.tenant), false).await?;
                check_open(&tx, at_us).await?;
                admit(&load(&tx, "WHERE tenant = $1", &[&sub.tenant]).await?)?;
                tx.execute(
                    "INSERT INTO subscriptions (id, tenant, created_us, body) VALUES ($1, $2, $3, $4)",
                    &[&sub.id, &sub.tenant, &at_us, &serde_json::to_string(&sub)?],
                )
                .await?;
                let now_us = meter_schemas::period::now_us();
                write_operations(&tx, &super::outbox::mirror_of(&sub, now_us), now_us).await?;
                tx.commit().await?;
                Ok(sub)
            })
            .await
    }

    async fn update_subscription(&self, id: String, at_us: i64, change: Change) -> Result<Subscription, Error> {
        self.pg
            .with(async move |mut c| {
                let tx = c.transaction().await?;
                lock(&tx, PERIODS, true).await?;
                check_open(&tx, at_us).await?;
                let mut sub = load(&tx, "WHERE id = $1 FOR UPDATE", &[&id])
                    .await?
                    .pop()
                    .ok_or_else(|| Error::NotFound(id.clone()))?;
                change(&mut sub)?;
                tx.execute("UPDATE subscriptions SET body = $2 WHERE id = $1", &[&id, &serde_json::to_string(&sub)?])
                    .await?;
                let now_us = meter_schemas::period::now_us();
                write_operations(&tx, &super::outbox::mirror_of(&sub, now_us), now_us).await?;
                tx.commit().await?;
                Ok(sub)
            })
            .await
    }

    async fn subscription(&self, id: String) -> Result<Option<Subscription>, Error> {
        self.pg.with(async move |c| Ok(load(&c, "WHERE id = $1", &[&id]).await?.pop())).await
    }

    async fn subscriptions(&self, tenant: Option<String>) -> Result<Vec<Subscription>, Error> {
        self.pg
            .with(async move |c| {
                load(&c, "WHERE $1::text IS NULL OR tenant = $1 ORDER BY created_us, id", &[&tenant]).await
            })
            .await
    }

    async fn subscriptions_after(
        &self,
        after: Option<String>,
        tenants: usize,
        before_us: i64,
    ) -> Result<Vec<Subscription>, Error> {
        let filter = numbered(&super::subscriptions_after_filter(after.is_some()));
        let (from, tenants) = (after.unwrap_or_default(), tenants as i64);
        self.pg.with(async move |c| load(&c, &filter, &[&from, &tenants, &before_us]).await).await
    }

    async fn close_of(&self, period: Period) -> Result<Option<Close>, Error> {
        self.pg.with(async move |c| read_close(&c, &period.to_string()).await).await
    }

    async fn closed(&self, period: Period) -> Result<Option<Closed>, Error> {
        self.pg.with(async move |c| read_closed(&c, &period.to_string()).await).await
    }

    async fn close_rows(&self, period: Period, rows: Rows, from: usize, limit: usize) -> Result<Option<Page>, Error> {
        self.pg
            .with(async move |c| {
                let period = period.to_string();
                Ok(match rows_apart(&c, &period).await? {
                    None => None,
                    Some(false) => read_close(&c, &period).await?.map(|close| Page::of(close, rows, from)),
                    Some(true) => Some(match rows {
                        Rows::Invoices => Page::Invoices(read_invoices(&c, &period, from, limit).await?),
                        Rows::Report => Page::Report(read_report(&c, &period, from, limit).await?),
                    }),
                })
            })
            .await
    }

    async fn close_summaries(&self) -> Result<Vec<CloseSummary>, Error> {
        self.pg
            .with(async |c| {
                let rows = c.query("SELECT period, watermark_us, revises FROM closes ORDER BY period", &[]).await?;
                rows.iter()
                    .map(|r| {
                        Ok(CloseSummary {
                            period: parse_period(r.get(0))?,
                            watermark_us: r.get(1),
                            revises: serde_json::from_str(r.get(2))?,
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn freeze(&self, period: Period, now_us: i64) -> Result<(), Error> {
        self.pg
            .with(async move |mut c| {
                let tx = c.transaction().await?;
                lock(&tx, PERIODS, false).await?;
                tx.execute(
                    "INSERT INTO freezes (period, since_us) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&period.to_string(), &now_us],
                )
                .await?;
                tx.commit().await?;
                Ok(())
            })
            .await
    }

    async fn record(&self, header: Close, version: String, digest: String, mut parts: Parts) -> Result<Closed, Error> {
        let part_bytes = self.part_bytes;
        self.pg
            .with(async move |mut c| {
                let tx = c.transaction().await?;
                lock(&tx, RECORDING, false).await?;
                // Its pushes wait in a table of the transaction's own, moved to the outbox just
                // before the commit: the outbox's lock (its ids in commit order) is held from
                // there only, not while the close walks and reads.
                tx.batch_execute(
                    "CREATE TEMP TABLE close_pushes (
                        n bigint GENERATED ALWAYS AS IDENTITY, kind text, subject text, tenant text,
                        period text, payload text, created_us bigint, next_us bigint, lane text
                    ) ON COMMIT DROP",
                )
                .await?;
                let period = header.period.to_string();
                if let Some(stands) = read_closed(&tx, &period).await? {
                    return Ok(stands);
                }
                let mut at = Written::default();
                let totals = loop {
                    match parts.recv().await {
                        Some(Part::Rows(part, report)) => {
                            let (from, row) = ((at.invoices, &part[..]), (at.rows, &report[..]));
                            write_close_rows(&tx, &period, header.closed_us, from, row).await?;
                            at.add(&part, &report);
                        }
                        Some(Part::End(totals)) => break totals,
                        None => return Err(stopped(&period)),
                    }
                };
                let header = Close { totals, ..header };
                let body = serde_json::to_vec(&header)?;
                let s = summary(&header);
                let revises = serde_json::to_string(&s.revises)?;
                let inline = if body.len() <= part_bytes { std::str::from_utf8(&body).ok() } else { None };
                tx.execute(
                    "INSERT INTO closes (period, closed_us, body, watermark_us, revises, rows_apart)
                     VALUES ($1, $2, $3, $4, $5, true)",
                    &[&period, &header.closed_us, &inline.unwrap_or(""), &s.watermark_us, &revises],
                )
                .await?;
                if inline.is_none() {
                    let part = tx.prepare("INSERT INTO close_parts (period, part, body) VALUES ($1, $2, $3)").await?;
                    for (i, chunk) in body.chunks(part_bytes).enumerate() {
                        tx.execute(&part, &[&period, &(i as i32), &chunk]).await?;
                    }
                }
                tx.execute(
                    "INSERT INTO price_lists (version, digest, first_period) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&version, &digest, &period],
                )
                .await?;
                // Last: the outbox's lock is held from here to the commit only.
                lock(&tx, OUTBOX, false).await?;
                tx.execute(
                    "INSERT INTO outbox (kind, subject, tenant, period, payload, created_us, next_us, lane)
                     SELECT kind, subject, tenant, period, payload, created_us, next_us, lane FROM close_pushes
                     ORDER BY n
                     ON CONFLICT (kind, subject) DO NOTHING",
                    &[],
                )
                .await?;
                tx.commit().await?;
                Ok(at.closed(header))
            })
            .await
    }

    async fn invoices_of(&self, tenant: String) -> Result<Vec<meter_rater::Invoice>, Error> {
        self.pg
            .with(async move |c| {
                let rows =
                    c.query("SELECT body FROM invoices WHERE tenant = $1 ORDER BY period DESC, id", &[&tenant]).await?;
                rows.iter().map(|r| Ok(serde_json::from_str(r.get(0))?)).collect()
            })
            .await
    }

    async fn invoices_between(&self, from: Period, to: Period) -> Result<Vec<meter_rater::Invoice>, Error> {
        let (from, to) = (from.to_string(), to.to_string());
        self.pg
            .with(async move |c| {
                let rows = c
                    .query(
                        "SELECT body FROM invoices WHERE period >= $1 AND period <= $2 ORDER BY period, id",
                        &[&from, &to],
                    )
                    .await?;
                rows.iter().map(|r| Ok(serde_json::from_str(r.get(0))?)).collect()
            })
            .await
    }

    async fn held_invoices(&self) -> Result<Vec<(RemoteInvoice, meter_rater::Invoice)>, Error> {
        self.pg
            .with(async move |c| {
                let columns = REMOTE_INVOICE.split(", ").map(|col| format!("r.{col}")).collect::<Vec<_>>().join(", ");
                let sql = format!(
                    "SELECT {columns}, i.body FROM remote_invoices r JOIN invoices i ON i.id = r.invoice
                 ORDER BY r.invoice, r.remote"
                );
                let rows = c.query(&sql, &[]).await?;
                rows.iter().map(|r| Ok((remote_invoice(r), serde_json::from_str(r.get(9))?))).collect()
            })
            .await
    }

    async fn invoice(&self, id: String) -> Result<Option<meter_rater::Invoice>, Error> {
        self.pg
            .with(async move |c| {
                let row = c.query_opt("SELECT body FROM invoices WHERE id = $1", &[&id]).await?;
                row.map(|r| Ok(serde_json::from_str(r.get(0))?)).transpose()
            })
            .await
    }

    async fn claim_operations(&self, now_us: i64, lease_us: i64, limit: usize) -> Result<Vec<Operation>, Error> {
        self.pg
            .with(async move |mut c| {
                let tx = c.transaction().await?;
                // Each lane's oldest pending or dead operation, when it is pending, due and not
                // claimed by a worker whose claim still runs; rows another worker is claiming right
                // now are skipped.
                let sql = format!(
                    "UPDATE outbox SET claimed_until_us = $3, first_tried_us = coalesce(first_tried_us, $1)
                 WHERE id IN (
                     SELECT o.id FROM outbox o
                     WHERE o.state = 'pending' AND o.next_us <= $1 AND coalesce(o.claimed_until_us, 0) <= $1
                       AND o.id = (SELECT min(p.id) FROM outbox p
                                   WHERE p.tenant = o.tenant AND p.lane = o.lane AND p.state IN ('pending', 'dead'))
                     ORDER BY o.next_us, o.id LIMIT $2
                     FOR UPDATE SKIP LOCKED)
                 RETURNING {OP_COLUMNS}"
                );
                let rows = tx.query(&sql, &[&now_us, &(limit as i64), &(now_us + lease_us)]).await?;
                tx.commit().await?;
                let mut ops = rows.iter().map(operation).collect::<Result<Vec<_>, _>>()?;
                ops.sort_by_key(|o| (o.next_us, o.id));
                Ok(ops)
            })
            .await
    }

    async fn renew_claims(&self, claims: Vec<(i64, i64)>, until_us: i64) -> Result<Vec<i64>, Error> {
        let (ids, untils): (Vec<i64>, Vec<i64>) = claims.into_iter().unzip();
        self.pg
            .with(async move |c| {
                let rows = c
                    .query(
                        "UPDATE outbox o SET claimed_until_us = $3
                         FROM unnest($1::bigint[], $2::bigint[]) AS c (id, until_us)
                         WHERE o.id = c.id AND o.claimed_until_us = c.until_us AND o.state = 'pending'
                         RETURNING o.id",
                        &[&ids, &untils, &until_us],
                    )
                    .await?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            })
            .await
    }

    async fn lease_close(
        &self,
        holder: String,
        period: Period,
        until_us: i64,
        now_us: i64,
    ) -> Result<Option<CloseHolder>, Error> {
        self.pg
            .with(async move |c| {
                // Two takers at once: the upsert of one waits for the other's row and then sees it.
                static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| numbered(CLOSE_LEASE_SQL));
                if c.execute(SQL.as_str(), &[&holder, &period.to_string(), &now_us, &until_us]).await? == 1 {
                    return Ok(None);
                }
                let r =
                    c.query_one("SELECT holder, period, since_us, until_us FROM close_lease WHERE id = 1", &[]).await?;
                close_holder(r.get(0), r.get(1), r.get(2), r.get(3)).map(Some)
            })
            .await
    }

    async fn release_close(&self, holder: String) -> Result<(), Error> {
        self.pg
            .with(async move |c| {
                c.execute("DELETE FROM close_lease WHERE id = 1 AND holder = $1", &[&holder]).await?;
                Ok(())
            })
            .await
    }

    async fn settle(&self, id: i64, settle: Settle) -> Result<(), Error> {
        self.pg
            .with(async move |mut c| {
                let tx = c.transaction().await?;
                let changed = match settle {
                Settle::Done { outcome, then } => {
                    let changed = tx
                        .execute(
                            "UPDATE outbox SET state = 'done', outcome = $2, attempts = attempts + 1,
                             claimed_until_us = NULL WHERE id = $1 AND state = 'pending'",
                            &[&id, &outcome],
                        )
                        .await?;
                    if changed == 1 {
                        write_operations(&tx, &then, meter_schemas::period::now_us()).await?;
                    }
                    changed
                }
                Settle::Again { next_us, error } => {
                    tx.execute(
                        "UPDATE outbox SET next_us = $2, outcome = $3, attempts = attempts + 1, claimed_until_us = NULL
                         WHERE id = $1 AND state = 'pending'",
                        &[&id, &next_us, &error],
                    )
                    .await?
                }
                Settle::Dead(reason) => {
                    tx.execute(
                        "UPDATE outbox SET state = 'dead', outcome = $2, attempts = attempts + 1,
                         claimed_until_us = NULL WHERE id = $1 AND state = 'pending'",
                        &[&id, &reason],
                    )
                    .await?
                }
            };
                if changed == 0 {
                    return Err(Error::NoOperation(format!("pending outbox operation {id}")));
                }
                tx.commit().await?;
                Ok(())
            })
            .await
    }

    async fn operations(&self, state: Option<OpState>, period: Option<String>) -> Result<Vec<Operation>, Error> {
        self.pg.with(async move |c| {
            let sql = format!(
                "SELECT {OP_COLUMNS} FROM outbox WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR period = $2)
                 ORDER BY id"
            );
            let rows = c.query(&sql, &[&state.map(OpState::as_str), &period]).await?;
            rows.iter().map(operation).collect()
        })
        .await
    }

    async fn remote_customer(&self, tenant: String) -> Result<Option<RemoteCustomer>, Error> {
        self.pg
            .with(async move |c| {
                let row = c
                    .query_opt(
                        "SELECT tenant, customer, subscription FROM remote_customers WHERE tenant = $1",
                        &[&tenant],
                    )
                    .await?;
                Ok(row.as_ref().map(remote_customer))
            })
            .await
    }

    async fn record_remote_customer(&self, remote: RemoteCustomer) -> Result<(), Error> {
        self.pg
            .with(async move |c| {
                c.execute(
                    "INSERT INTO remote_customers (tenant, customer, subscription) VALUES ($1, $2, $3)
                 ON CONFLICT (tenant) DO UPDATE SET customer = excluded.customer, subscription = excluded.subscription",
                    &[&remote.tenant, &remote.customer, &remote.subscription],
                )
                .await?;
                Ok(())
            })
            .await
    }

    async fn remote_customer_by_id(&self, id: String) -> Result<Option<RemoteCustomer>, Error> {
        self.pg
            .with(async move |c| {
                let row = c
                    .query_opt(
                        "SELECT tenant, customer, subscription FROM remote_customers
                     WHERE customer = $1 OR subscription = $1 LIMIT 1",
                        &[&id],
                    )
                    .await?;
                Ok(row.as_ref().map(remote_customer))
            })
            .await
    }

    async fn record_remote_invoice(&self, remote: RemoteInvoice) -> Result<RemoteInvoice, Error> {
        self.pg
            .with(async move |mut c| {
                let tx = c.transaction().await?;
                lock(&tx, &format!("ledger:remote:{}", remote.remote), false).await?;
                let known =
                    tx.query_opt("SELECT status FROM remote_invoices WHERE remote = $1", &[&remote.remote]).await?;
                let forward = known
                    .as_ref()
                    .is_none_or(|k| RemoteInvoice::rank(&remote.status) > RemoteInvoice::rank(k.get::<_, &str>(0)));
                if forward {
                    tx.execute(
                        "INSERT INTO remote_invoices AS r (remote, invoice, tenant, status, sent_us, due_us, paid_us,
                         hosted_url, pdf_url)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (remote) DO UPDATE SET status = excluded.status,
                         sent_us = coalesce(r.sent_us, excluded.sent_us), due_us = coalesce(r.due_us, excluded.due_us),
                         paid_us = coalesce(r.paid_us, excluded.paid_us),
                         hosted_url = coalesce(excluded.hosted_url, r.hosted_url),
                         pdf_url = coalesce(excluded.pdf_url, r.pdf_url)",
                        &[
                            &remote.remote,
                            &remote.invoice,
                            &remote.tenant,
                            &remote.status,
                            &remote.sent_us,
                            &remote.due_us,
                            &remote.paid_us,
                            &remote.hosted_url,
                            &remote.pdf_url,
                        ],
                    )
                    .await?;
                } else {
                    // The provider's pages, learnt late, are kept whatever the status.
                    tx.execute(
                    "UPDATE remote_invoices SET hosted_url = coalesce($2, hosted_url), pdf_url = coalesce($3, pdf_url)
                     WHERE remote = $1",
                    &[&remote.remote, &remote.hosted_url, &remote.pdf_url],
                )
                .await?;
                }
                let sql = format!("SELECT {REMOTE_INVOICE} FROM remote_invoices WHERE remote = $1");
                let stands = remote_invoice(&tx.query_one(&sql, &[&remote.remote]).await?);
                tx.commit().await?;
                Ok(stands)
            })
            .await
    }

    async fn remote_invoice(&self, remote: String) -> Result<Option<RemoteInvoice>, Error> {
        self.pg
            .with(async move |c| {
                let sql = format!("SELECT {REMOTE_INVOICE} FROM remote_invoices WHERE remote = $1");
                Ok(c.query_opt(&sql, &[&remote]).await?.as_ref().map(remote_invoice))
            })
            .await
    }

    async fn receive_event(&self, event: ReceivedEvent) -> Result<bool, Error> {
        self.pg
            .with(async move |c| {
                let n = c
                    .execute(
                        "INSERT INTO received_events (id, kind, created, object, body) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT DO NOTHING",
                        &[&event.id, &event.kind, &event.created, &event.object, &event.body],
                    )
                    .await?;
                Ok(n == 1)
            })
            .await
    }

    async fn unprocessed_events(&self, limit: usize) -> Result<Vec<ReceivedEvent>, Error> {
        self.pg
            .with(async move |c| {
                let rows = c
                .query(
                    "SELECT id, kind, created, object, body, outcome FROM received_events WHERE processed_us IS NULL
                     ORDER BY created, id LIMIT $1",
                    &[&(limit as i64)],
                )
                .await?;
                Ok(rows
                    .iter()
                    .map(|r| ReceivedEvent {
                        id: r.get(0),
                        kind: r.get(1),
                        created: r.get(2),
                        object: r.get(3),
                        body: r.get(4),
                        outcome: r.get(5),
                    })
                    .collect())
            })
            .await
    }

    async fn processed_event(&self, id: String, outcome: String, now_us: i64) -> Result<(), Error> {
        self.pg
            .with(async move |c| {
                c.execute(
                    "UPDATE received_events SET processed_us = $2, outcome = $3 WHERE id = $1",
                    &[&id, &now_us, &outcome],
                )
                .await?;
                Ok(())
            })
            .await
    }

    async fn remote_invoices_of(&self, invoices: Vec<String>) -> Result<Vec<RemoteInvoice>, Error> {
        self.pg
            .with(async move |c| {
                let columns = REMOTE_INVOICE.split(", ").map(|col| format!("r.{col}")).collect::<Vec<_>>().join(", ");
                let sql = format!(
                    "SELECT {columns} FROM remote_invoices r
                 JOIN unnest($1::text[]) WITH ORDINALITY AS i(wanted, n) ON i.wanted = r.invoice
                 ORDER BY i.n, r.remote"
                );
                Ok(c.query(&sql, &[&invoices]).await?.iter().map(remote_invoice).collect())
            })
            .await
    }

    async fn latest_event_created(&self) -> Result<Option<i64>, Error> {
        self.pg.with(async |c| Ok(c.query_one("SELECT max(created) FROM received_events", &[]).await?.get(0))).await
    }

    async fn revive(&self, id: i64, now_us: i64) -> Result<bool, Error> {
        self.pg
            .with(async move |c| {
                let n = c
                    .execute(
                        "UPDATE outbox SET state = 'pending', next_us = $2, claimed_until_us = NULL
                     WHERE id = $1 AND state = 'dead'",
                        &[&id, &now_us],
                    )
                    .await?;
                Ok(n == 1)
            })
            .await
    }
}

fn remote_customer(r: &Row) -> RemoteCustomer {
    RemoteCustomer { tenant: r.get(0), customer: r.get(1), subscription: r.get(2) }
}

const REMOTE_INVOICE: &str = "remote, invoice, tenant, status, sent_us, due_us, paid_us, hosted_url, pdf_url";

fn remote_invoice(r: &Row) -> RemoteInvoice {
    RemoteInvoice {
        remote: r.get(0),
        invoice: r.get(1),
        tenant: r.get(2),
        status: r.get(3),
        sent_us: r.get(4),
        due_us: r.get(5),
        paid_us: r.get(6),
        hosted_url: r.get(7),
        pdf_url: r.get(8),
    }
}

/// Writes each of `ops` unless one of its kind and subject was written before, in the order
/// given, under the outbox's lock (ids in commit order).
async fn write_operations(tx: &Transaction<'_>, ops: &[NewOperation], now_us: i64) -> Result<(), Error> {
    if ops.is_empty() {
        return Ok(());
    }
    lock(tx, OUTBOX, false).await?;
    insert_operations(tx, "outbox", ops, now_us, "ON CONFLICT (kind, subject) DO NOTHING").await
}

/// Stages a close's pushes, made at `now_us`, in its transaction's `close_pushes`, in order
/// (see `record`).
async fn stage_pushes(tx: &Transaction<'_>, ops: &[NewOperation], now_us: i64) -> Result<(), Error> {
    insert_operations(tx, "close_pushes", ops, now_us, "").await
}

/// Inserts `ops`, made at `now_us`, into `table` (the outbox, or the shape of it a close stages
/// its pushes in), in their order, the statement ending with `tail`.
async fn insert_operations(
    tx: &Transaction<'_>,
    table: &str,
    ops: &[NewOperation],
    now_us: i64,
    tail: &str,
) -> Result<(), Error> {
    let kinds: Vec<&str> = ops.iter().map(|o| o.kind.as_str()).collect();
    let subjects: Vec<&str> = ops.iter().map(|o| o.subject.as_str()).collect();
    let tenants: Vec<&str> = ops.iter().map(|o| o.tenant.as_str()).collect();
    let periods: Vec<Option<&str>> = ops.iter().map(|o| o.period.as_deref()).collect();
    let bodies: Vec<&str> = ops.iter().map(|o| o.body.as_str()).collect();
    let next: Vec<i64> = ops.iter().map(|o| o.next_us).collect();
    let lanes: Vec<String> = ops.iter().map(|o| o.kind.lane(&o.subject)).collect();
    let sql = format!(
        "INSERT INTO {table} (kind, subject, tenant, period, payload, created_us, next_us, lane)
         SELECT kind, subject, tenant, period, payload, $6, next_us, lane
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $7::int8[], $8::text[])
              WITH ORDINALITY AS o(kind, subject, tenant, period, payload, next_us, lane, n)
         ORDER BY n
         {tail}"
    );
    tx.execute(&sql, &[&kinds, &subjects, &tenants, &periods, &bodies, &now_us, &next, &lanes]).await?;
    Ok(())
}

/// An operation's columns, of `outbox`: a push whose payload is '' reads its invoice's body
/// (written once, in the invoice row of its id).
const OP_COLUMNS: &str = "id, kind, subject, tenant, period,
    CASE WHEN payload = '' AND kind = 'push_invoice'
         THEN (SELECT i.body FROM invoices i WHERE i.id = outbox.subject) ELSE payload END,
    created_us, first_tried_us, attempts, next_us, state, outcome";

fn operation(r: &Row) -> Result<Operation, Error> {
    let id: i64 = r.get(0);
    let (kind, state): (&str, &str) = (r.get(1), r.get(10));
    let (Some(kind), Some(state)) = (OpKind::parse(kind), OpState::parse(state)) else {
        return Err(Error::Corrupt(format!("outbox operation {id}: kind {kind:?}, state {state:?}")));
    };
    let attempts: i32 = r.get(8);
    let body: Option<String> = r.get(5);
    let body = body.ok_or_else(|| Error::Corrupt(format!("outbox operation {id}: its invoice is gone")))?;
    Ok(Operation {
        id,
        kind,
        subject: r.get(2),
        tenant: r.get(3),
        period: r.get(4),
        body,
        created_us: r.get(6),
        first_tried_us: r.get(7),
        attempts: attempts as u32,
        next_us: r.get(9),
        state,
        outcome: r.get(11),
    })
}

/// Refuses a change at `at_us` inside a closed period (or one being closed): a close is never
/// rewritten. Called under the `periods` lock, shared.
async fn check_open(c: &impl GenericClient, at_us: i64) -> Result<(), Error> {
    let last: Option<String> = c
        .query_one("SELECT max(period) FROM (SELECT period FROM closes UNION ALL SELECT period FROM freezes) p", &[])
        .await?
        .get(0);
    if let Some(p) = last.and_then(|p| p.parse::<Period>().ok())
        && at_us < p.end_us()
    {
        return Err(Error::Closed(format!(
            "at: {} is in or before the closed period {p}; a closed period is never rewritten",
            meter_schemas::period::format_time(at_us)
        )));
    }
    Ok(())
}

/// A close's invoices (each in its place, indexed by id, with the push that follows it) and
/// report rows, some thousands at a time.
async fn write_close_rows(
    tx: &Transaction<'_>,
    period: &str,
    closed_us: i64,
    (first_invoice, invoices): (usize, &[meter_rater::Invoice]),
    (first_row, report): (usize, &[super::ReportRow]),
) -> Result<(), Error> {
    for (n, chunk) in invoices.chunks(ROWS_AT_ONCE).enumerate() {
        let first = position(first_invoice + n * ROWS_AT_ONCE);
        let ids: Vec<&str> = chunk.iter().map(|i| i.id.as_str()).collect();
        let bodies = chunk.iter().map(serde_json::to_string).collect::<Result<Vec<_>, _>>()?;
        // Indexed by id: the first of each id in the statement, unless its id is there.
        let mut seen = HashSet::new();
        let offered: Vec<usize> = (0..chunk.len()).filter(|&k| seen.insert(ids[k])).collect();
        let offered_ids: Vec<&str> = offered.iter().map(|&k| ids[k]).collect();
        let tenants: Vec<&str> = offered.iter().map(|&k| chunk[k].tenant.as_str()).collect();
        let offered_bodies: Vec<&str> = offered.iter().map(|&k| bodies[k].as_str()).collect();
        let written: HashSet<String> = tx
            .query(
                "INSERT INTO invoices (id, tenant, period, body)
                 SELECT id, tenant, $3, body FROM unnest($1::text[], $2::text[], $4::text[]) AS i(id, tenant, body)
                 ON CONFLICT DO NOTHING RETURNING id",
                &[&offered_ids, &tenants, &period, &offered_bodies],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        drop(offered_bodies);
        // Each body written once: where the invoice row of its id is this invoice's, '' elsewhere.
        let mut bodies = bodies;
        for &k in &offered {
            if written.contains(ids[k]) {
                bodies[k].clear();
            }
        }
        tx.execute(
            "INSERT INTO close_invoices (period, seq, id, body)
             SELECT $1, $2 + n::int4 - 1, id, body
             FROM unnest($3::text[], $4::text[]) WITH ORDINALITY AS i(id, body, n)",
            &[&period, &first, &ids, &bodies],
        )
        .await?;
        let ops = chunk
            .iter()
            .zip(bodies)
            .filter(|(i, _)| !i.lines.is_empty())
            .map(|(invoice, body)| NewOperation {
                kind: OpKind::PushInvoice,
                subject: invoice.id.clone(),
                tenant: invoice.tenant.clone(),
                period: Some(period.to_string()),
                body,
                next_us: closed_us,
            })
            .collect::<Vec<_>>();
        stage_pushes(tx, &ops, closed_us).await?;
    }
    for (n, chunk) in report.chunks(ROWS_AT_ONCE).enumerate() {
        let first = position(first_row + n * ROWS_AT_ONCE);
        let column = |f: fn(&super::ReportRow) -> Option<&str>| chunk.iter().map(f).collect::<Vec<_>>();
        tx.execute(
            "INSERT INTO close_report (period, row, tenant, meter, accepted, counted, stored, rated, status)
             SELECT $1, $2 + n::int4 - 1, tenant, meter, accepted, counted, stored, rated, status
             FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])
                  WITH ORDINALITY AS r(tenant, meter, accepted, counted, stored, rated, status, n)",
            &[
                &period,
                &first,
                &column(|r| Some(r.tenant.as_str())),
                &column(|r| Some(r.meter.as_str())),
                &column(|r| r.accepted.as_deref()),
                &column(|r| r.counted.as_deref()),
                &column(|r| r.stored.as_deref()),
                &column(|r| r.rated.as_deref()),
                &column(|r| Some(r.status.as_str())),
            ],
        )
        .await?;
    }
    Ok(())
}

/// The close of `period`: its body (whole, or from its parts), with its invoices and report rows
/// when they are rows of their own.
async fn read_close(c: &impl GenericClient, period: &str) -> Result<Option<Close>, Error> {
    let Some((mut close, rows_apart)) = read_body(c, period).await? else { return Ok(None) };
    if rows_apart {
        close.invoices = read_invoices(c, period, 0, usize::MAX).await?;
        close.report = read_report(c, period, 0, usize::MAX).await?;
    }
    Ok(Some(close))
}

/// The close of `period` without its rows: counted in their tables, or, recorded before they
/// were kept apart, in its body.
async fn read_closed(c: &impl GenericClient, period: &str) -> Result<Option<Closed>, Error> {
    let Some((header, rows_apart)) = read_body(c, period).await? else { return Ok(None) };
    if !rows_apart {
        return Ok(Some(Closed::of(header)));
    }
    let count =
        async |sql: &str| -> Result<usize, Error> { Ok(c.query_one(sql, &[&period]).await?.get::<_, i64>(0) as usize) };
    let invoices = count("SELECT count(*) FROM close_invoices WHERE period = $1").await?;
    let differences = count("SELECT count(*) FROM close_report WHERE period = $1 AND status <> 'ok'").await?;
    Ok(Some(Closed { header, invoices, differences }))
}

/// The body of the close of `period`, and whether its rows are rows of their own.
async fn read_body(c: &impl GenericClient, period: &str) -> Result<Option<(Close, bool)>, Error> {
    let Some(row) = c.query_opt("SELECT body, rows_apart FROM closes WHERE period = $1", &[&period]).await? else {
        return Ok(None);
    };
    let (body, rows_apart): (&str, bool) = (row.get(0), row.get(1));
    let close: Close = if !body.is_empty() {
        serde_json::from_str(body)?
    } else {
        let parts = c.query("SELECT body FROM close_parts WHERE period = $1 ORDER BY part", &[&period]).await?;
        let mut body = Vec::new();
        for part in &parts {
            body.extend_from_slice(part.get::<_, &[u8]>(0));
        }
        serde_json::from_slice(&body)?
    };
    Ok(Some((close, rows_apart)))
}

/// Whether `period` is closed, and then whether its close's rows are rows of their own.
async fn rows_apart(c: &impl GenericClient, period: &str) -> Result<Option<bool>, Error> {
    Ok(c.query_opt("SELECT rows_apart FROM closes WHERE period = $1", &[&period]).await?.map(|r| r.get(0)))
}

/// A position or a count as a close's rows number them (`usize::MAX`: no limit).
fn position(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The invoices of a close whose rows are apart, from position `from`, at most `limit`, some
/// thousands a statement.
async fn read_invoices(
    c: &impl GenericClient,
    period: &str,
    from: usize,
    limit: usize,
) -> Result<Vec<meter_rater::Invoice>, Error> {
    let mut out = Vec::new();
    while out.len() < limit {
        let (start, take) = (position(from.saturating_add(out.len())), (limit - out.len()).min(ROWS_AT_ONCE) as i64);
        // An invoice's body is its own, or the invoice row's of its id (written once).
        let rows = c
            .query(
                "SELECT c.id, CASE WHEN c.body = '' THEN (SELECT i.body FROM invoices i WHERE i.id = c.id) ELSE c.body END
                 FROM close_invoices c WHERE c.period = $1 AND c.seq >= $2 ORDER BY c.seq LIMIT $3",
                &[&period, &start, &take],
            )
            .await?;
        for r in &rows {
            let body: Option<&str> = r.get(1);
            let body = body.ok_or_else(|| {
                let id: Option<&str> = r.get(0);
                Error::Corrupt(format!("invoice {} of the close of {period} is gone", id.unwrap_or_default()))
            })?;
            out.push(serde_json::from_str(body)?);
        }
        if (rows.len() as i64) < take {
            break;
        }
    }
    Ok(out)
}

/// The report rows of a close whose rows are apart, from position `from`, at most `limit`, some
/// thousands a statement.
async fn read_report(
    c: &impl GenericClient,
    period: &str,
    from: usize,
    limit: usize,
) -> Result<Vec<super::ReportRow>, Error> {
    let mut out = Vec::new();
    while out.len() < limit {
        let (start, take) = (position(from.saturating_add(out.len())), (limit - out.len()).min(ROWS_AT_ONCE) as i64);
        let rows = c
            .query(
                "SELECT tenant, meter, accepted, counted, stored, rated, status FROM close_report
                 WHERE period = $1 AND row >= $2 ORDER BY row LIMIT $3",
                &[&period, &start, &take],
            )
            .await?;
        out.extend(rows.iter().map(|r| super::ReportRow {
            tenant: r.get(0),
            meter: r.get(1),
            accepted: r.get(2),
            counted: r.get(3),
            stored: r.get(4),
            rated: r.get(5),
            status: r.get(6),
        }));
        if (rows.len() as i64) < take {
            break;
        }
    }
    Ok(out)
}

fn summary(close: &Close) -> CloseSummary {
    CloseSummary {
        period: close.period,
        watermark_us: close.watermark_us,
        revises: close.revisions.keys().copied().collect(),
    }
}

fn parse_period(s: &str) -> Result<Period, Error> {
    s.parse().map_err(|e| Error::Corrupt(format!("a close's period {s:?} is not a period: {e}")))
}

async fn load(
    c: &impl GenericClient,
    filter: &str,
    args: &[&(dyn meter_postgres::tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Subscription>, Error> {
    let rows = c.query(&format!("SELECT body FROM subscriptions {filter}"), args).await?;
    rows.iter().map(|r| Ok(serde_json::from_str(r.get(0))?)).collect()
}
