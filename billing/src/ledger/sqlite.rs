//! The ledger in SQLite (`billing.db`).

use super::Close;
use super::outbox::{NewOperation, OpKind, OpState, Operation, ReceivedEvent, RemoteCustomer, RemoteInvoice, Settle};
use super::{
    Admit, CLOSE_LEASE_SQL, Change, CloseHolder, CloseSummary, Closed, LedgerStore, Page, Part, Parts, Rows, UsedList,
    Written, close_holder, stopped,
};
use crate::Error;
use async_trait::async_trait;
use meter_rater::Subscription;
use meter_schemas::Period;
use meter_sqlite::rusqlite::{Connection, OptionalExtension, params};
use meter_sqlite::{Durability, ReadPool, Shared, blocking, migrate, open};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE subscriptions (
        id TEXT PRIMARY KEY, tenant TEXT NOT NULL, created_us INTEGER NOT NULL, body TEXT NOT NULL
    );
    CREATE INDEX subscriptions_by_tenant ON subscriptions (tenant, created_us);
    CREATE TABLE closes (period TEXT PRIMARY KEY, closed_us INTEGER NOT NULL, body TEXT NOT NULL);
    CREATE TABLE price_lists (version TEXT PRIMARY KEY, digest TEXT NOT NULL, first_period TEXT NOT NULL);
",
    "
    CREATE TABLE freezes (period TEXT PRIMARY KEY, since_us INTEGER NOT NULL);
",
    // A close's body past PART_BYTES is kept in parts (SQLite refuses a value over 1 GB: about
    // 350,000 invoices); what a later close needs to know of it is kept beside it.
    "
    ALTER TABLE closes ADD COLUMN watermark_us INTEGER;
    ALTER TABLE closes ADD COLUMN revises TEXT;
    CREATE TABLE close_parts (
        period TEXT NOT NULL, part INTEGER NOT NULL, body BLOB NOT NULL, PRIMARY KEY (period, part)
    );
",
    // The sync outbox (billing-sync): written with the close it follows.
    "
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY, kind TEXT NOT NULL, subject TEXT NOT NULL, tenant TEXT NOT NULL,
        period TEXT, body TEXT NOT NULL, created_us INTEGER NOT NULL, first_tried_us INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0, next_us INTEGER NOT NULL, claimed_until_us INTEGER,
        state TEXT NOT NULL DEFAULT 'pending', outcome TEXT,
        UNIQUE (kind, subject)
    );
    CREATE INDEX outbox_pending ON outbox (state, tenant, id);
    CREATE INDEX outbox_by_period ON outbox (period, id);
    CREATE TABLE remote_customers (tenant TEXT PRIMARY KEY, customer TEXT NOT NULL, subscription TEXT);
    CREATE INDEX remote_customers_by_customer ON remote_customers (customer);
    CREATE INDEX remote_customers_by_subscription ON remote_customers (subscription);
    CREATE TABLE remote_invoices (
        remote TEXT PRIMARY KEY, invoice TEXT NOT NULL, tenant TEXT NOT NULL, status TEXT NOT NULL
    );
    CREATE TABLE received_events (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, created INTEGER NOT NULL, object TEXT NOT NULL,
        body TEXT NOT NULL, processed_us INTEGER, outcome TEXT
    );
    CREATE INDEX received_events_unprocessed ON received_events (processed_us, created);
",
    // What finance needs of an invoice at the provider: sent, due and paid.
    "
    ALTER TABLE remote_invoices ADD COLUMN sent_us INTEGER;
    ALTER TABLE remote_invoices ADD COLUMN due_us INTEGER;
    ALTER TABLE remote_invoices ADD COLUMN paid_us INTEGER;
    CREATE INDEX remote_invoices_by_invoice ON remote_invoices (invoice);
",
    // Lanes: a tenant's operations are worked in order within a lane (OpKind::lane).
    "
    ALTER TABLE outbox ADD COLUMN lane TEXT NOT NULL DEFAULT 'push';
    CREATE INDEX outbox_lanes ON outbox (tenant, lane, state, id);
",
    // Claiming what is due reads only what is due: retries and checks written for days ahead
    // (one or two per invoice collected) are not scanned at every claim.
    "
    CREATE INDEX outbox_due ON outbox (state, next_us, id);
",
    // Each closed invoice by itself, for a tenant's history without reading whole closes
    // (written with its close; filled from the closes recorded before, at open).
    "
    CREATE TABLE invoices (
        id TEXT PRIMARY KEY, tenant TEXT NOT NULL, period TEXT NOT NULL, body TEXT NOT NULL
    );
    CREATE INDEX invoices_by_tenant ON invoices (tenant, period);
    CREATE TABLE invoices_filled (done INTEGER NOT NULL);
",
    // The provider's pages of an invoice it sent: the hosted invoice and the PDF.
    "
    ALTER TABLE remote_invoices ADD COLUMN hosted_url TEXT;
    ALTER TABLE remote_invoices ADD COLUMN pdf_url TEXT;
",
    // One close at a time, on every process sharing the ledger.
    "
    CREATE TABLE close_lease (
        id INTEGER PRIMARY KEY CHECK (id = 1), holder TEXT NOT NULL, period TEXT NOT NULL,
        since_us INTEGER NOT NULL, until_us INTEGER NOT NULL
    );
",
    // A close's invoices and report rows are rows of their own, by position (`rows_apart`), not
    // in its body: recording one serializes no copy of it whole. (`invoices` stays the index by
    // id; the close is kept by position, whatever its ids.)
    "
    ALTER TABLE closes ADD COLUMN rows_apart INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE close_invoices (
        period TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (period, seq)
    );
    CREATE TABLE close_report (
        period TEXT NOT NULL, row INTEGER NOT NULL, tenant TEXT NOT NULL, meter TEXT NOT NULL, accepted TEXT,
        counted TEXT, stored TEXT, rated TEXT, status TEXT NOT NULL, PRIMARY KEY (period, row)
    );
",
    // An invoice's body is written once, in `invoices`: a close's place of it and its push hold
    // '' and read it from the row of its id (`close_invoices.id`, `outbox.subject`), unless that
    // row holds another invoice of the id (written before, or earlier in the same close).
    "
    ALTER TABLE close_invoices ADD COLUMN id TEXT;
",
    // The outbox's `body` becomes `payload`, so that a process of an older build still running
    // fails its outbox statements (tried again until it is replaced) instead of reading a push's
    // '' as its invoice.
    "
    ALTER TABLE outbox RENAME COLUMN body TO payload;
",
    // No read of the outbox uses `outbox_pending` (the claim reads `outbox_due` and
    // `outbox_lanes`, a period's operations `outbox_by_period`), and every push and every
    // change of state wrote it.
    "
    DROP INDEX IF EXISTS outbox_pending;
",
];

/// A close body longer than this is stored in parts of this size.
const PART_BYTES: usize = 64 << 20;

/// The ledger in one SQLite file. Every write is one SQLite transaction.
pub struct SqliteLedger {
    conn: Shared,
    /// How many closes this process is recording, each on a connection of its own: while any,
    /// the shared connection's writers fail at once instead of holding it through the busy
    /// timeout (its readers read on), and the close lease is read, not written.
    recording: Arc<AtomicUsize>,
    path: std::path::PathBuf,
    /// Reads that must not wait for `conn` (a close walks the subscriptions while it records).
    reads: Arc<ReadPool>,
    part_bytes: usize,
}

impl SqliteLedger {
    /// Opens (creating or upgrading) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let mut conn = open(path, Durability::Full)?;
        migrate(&mut conn, path, MIGRATIONS)?;
        fill_invoices(&mut conn)?;
        Ok(SqliteLedger {
            conn: Shared::new(conn),
            recording: Arc::default(),
            path: path.to_path_buf(),
            reads: Arc::new(ReadPool::new(path)),
            part_bytes: PART_BYTES,
        })
    }

    /// Runs `f` on the connection off the async runtime.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let recording = self.recording.clone();
        self.conn
            .with(move |c| {
                if recording.load(Ordering::SeqCst) == 0 {
                    return f(c);
                }
                c.busy_timeout(std::time::Duration::ZERO)?;
                let out = f(c);
                c.busy_timeout(meter_sqlite::BUSY_TIMEOUT)?;
                out
            })
            .await
    }
}

#[async_trait]
impl LedgerStore for SqliteLedger {
    async fn price_lists(&self) -> Result<Vec<UsedList>, Error> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT version, digest, first_period FROM price_lists ORDER BY version")?;
            let rows = stmt
                .query_map([], |r| Ok(UsedList { version: r.get(0)?, digest: r.get(1)?, first_period: r.get(2)? }))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn insert_subscription(&self, sub: Subscription, at_us: i64, admit: Admit) -> Result<Subscription, Error> {
        self.with(move |c| {
            let tx = c.transaction()?;
            check_open(&tx, at_us)?;
            admit(&load(&tx, "WHERE tenant = ?1", params![sub.tenant])?)?;
            tx.execute(
                "INSERT INTO subscriptions (id, tenant, created_us, body) VALUES (?1, ?2, ?3, ?4)",
                params![sub.id, sub.tenant, at_us, serde_json::to_string(&sub)?],
            )?;
            let now_us = meter_schemas::period::now_us();
            for op in super::outbox::mirror_of(&sub, now_us) {
                write_operation(&tx, &op, now_us)?;
            }
            tx.commit()?;
            Ok(sub)
        })
        .await
    }

    async fn update_subscription(&self, id: String, at_us: i64, change: Change) -> Result<Subscription, Error> {
        self.with(move |c| {
            let tx = c.transaction()?;
            check_open(&tx, at_us)?;
            let mut sub = load(&tx, "WHERE id = ?1", params![id])?.pop().ok_or_else(|| Error::NotFound(id.clone()))?;
            change(&mut sub)?;
            tx.execute("UPDATE subscriptions SET body = ?2 WHERE id = ?1", params![id, serde_json::to_string(&sub)?])?;
            let now_us = meter_schemas::period::now_us();
            for op in super::outbox::mirror_of(&sub, now_us) {
                write_operation(&tx, &op, now_us)?;
            }
            tx.commit()?;
            Ok(sub)
        })
        .await
    }

    async fn subscription(&self, id: String) -> Result<Option<Subscription>, Error> {
        self.with(move |c| Ok(load(c, "WHERE id = ?1", params![id])?.pop())).await
    }

    async fn subscriptions(&self, tenant: Option<String>) -> Result<Vec<Subscription>, Error> {
        self.with(move |c| match tenant {
            Some(t) => load(c, "WHERE tenant = ?1 ORDER BY created_us, id", params![t]),
            None => load(c, "ORDER BY created_us, id", params![]),
        })
        .await
    }

    async fn subscriptions_after(
        &self,
        after: Option<String>,
        tenants: usize,
        before_us: i64,
    ) -> Result<Vec<Subscription>, Error> {
        let reads = self.reads.clone();
        let filter = super::subscriptions_after_filter(after.is_some());
        let from = after.unwrap_or_default();
        blocking(move || reads.with(|c| Ok(load(c, &filter, params![from, tenants as i64, before_us])))).await?
    }

    async fn close_of(&self, period: Period) -> Result<Option<Close>, Error> {
        self.with(move |c| read_close(c, &period.to_string())).await
    }

    async fn closed(&self, period: Period) -> Result<Option<Closed>, Error> {
        self.with(move |c| read_closed(c, &period.to_string())).await
    }

    async fn close_rows(&self, period: Period, rows: Rows, from: usize, limit: usize) -> Result<Option<Page>, Error> {
        self.with(move |c| {
            let period = period.to_string();
            Ok(match rows_apart(c, &period)? {
                None => None,
                Some(false) => read_close(c, &period)?.map(|close| Page::of(close, rows, from)),
                Some(true) => Some(match rows {
                    Rows::Invoices => Page::Invoices(read_invoices(c, &period, from, limit)?),
                    Rows::Report => Page::Report(read_report(c, &period, from, limit)?),
                }),
            })
        })
        .await
    }

    async fn close_summaries(&self) -> Result<Vec<CloseSummary>, Error> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT period, watermark_us, revises FROM closes ORDER BY period")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?, r.get::<_, Option<String>>(2)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (period, watermark_us, revises) = row?;
                out.push(match (watermark_us, revises) {
                    (Some(watermark_us), Some(revises)) => CloseSummary {
                        period: parse_period(&period)?,
                        watermark_us,
                        revises: serde_json::from_str(&revises)?,
                    },
                    // Recorded before summaries were kept: read from the close itself.
                    _ => {
                        let close =
                            read_close(c, &period)?.ok_or_else(|| Error::Corrupt(format!("no close {period}")))?;
                        summary(&close)
                    }
                });
            }
            Ok(out)
        })
        .await
    }

    async fn freeze(&self, period: Period, now_us: i64) -> Result<(), Error> {
        self.with(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO freezes (period, since_us) VALUES (?1, ?2)",
                params![period.to_string(), now_us],
            )?;
            Ok(())
        })
        .await
    }

    async fn record(&self, header: Close, version: String, digest: String, mut parts: Parts) -> Result<Closed, Error> {
        let (part_bytes, path, recording) = (self.part_bytes, self.path.clone(), self.recording.clone());
        // On a connection of its own, for as long as the parts come: the ledger's other callers
        // read meanwhile, and its writers fail at once (`with`).
        tokio::task::spawn_blocking(move || {
            let _recording = Recording::start(recording);
            let mut c = open(&path, Durability::Full)?;
            // Taken for writing at once: no other close can be recorded between the check and
            // the end.
            let tx = c.transaction_with_behavior(meter_sqlite::rusqlite::TransactionBehavior::Immediate)?;
            let period = header.period.to_string();
            if let Some(stands) = read_closed(&tx, &period)? {
                return Ok(stands);
            }
            let mut at = Written::default();
            let totals = loop {
                match parts.blocking_recv() {
                    Some(Part::Rows(part, report)) => {
                        write_rows(&tx, &period, header.closed_us, (at.invoices, &part), (at.rows, &report))?;
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
                 VALUES (?1, ?2, ?3, ?4, ?5, 1)",
                params![period, header.closed_us, inline.unwrap_or(""), s.watermark_us, revises],
            )?;
            if inline.is_none() {
                let mut part = tx.prepare("INSERT INTO close_parts (period, part, body) VALUES (?1, ?2, ?3)")?;
                for (i, chunk) in body.chunks(part_bytes).enumerate() {
                    part.execute(params![period, i as i64, chunk])?;
                }
            }
            tx.execute(
                "INSERT OR IGNORE INTO price_lists (version, digest, first_period) VALUES (?1, ?2, ?3)",
                params![version, digest, period],
            )?;
            tx.commit()?;
            Ok(at.closed(header))
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }

    async fn invoices_of(&self, tenant: String) -> Result<Vec<meter_rater::Invoice>, Error> {
        self.with(move |c| {
            let mut stmt = c.prepare("SELECT body FROM invoices WHERE tenant = ?1 ORDER BY period DESC, id")?;
            let bodies = stmt.query_map(params![tenant], |r| r.get::<_, String>(0))?;
            bodies.map(|b| Ok(serde_json::from_str(&b?)?)).collect()
        })
        .await
    }

    async fn invoices_between(&self, from: Period, to: Period) -> Result<Vec<meter_rater::Invoice>, Error> {
        let (from, to) = (from.to_string(), to.to_string());
        self.with(move |c| {
            let mut stmt =
                c.prepare("SELECT body FROM invoices WHERE period >= ?1 AND period <= ?2 ORDER BY period, id")?;
            let bodies = stmt.query_map(params![from, to], |r| r.get::<_, String>(0))?;
            bodies.map(|b| Ok(serde_json::from_str(&b?)?)).collect()
        })
        .await
    }

    async fn held_invoices(&self) -> Result<Vec<(RemoteInvoice, meter_rater::Invoice)>, Error> {
        self.with(move |c| {
            let columns = REMOTE_INVOICE.split(", ").map(|col| format!("r.{col}")).collect::<Vec<_>>().join(", ");
            let mut stmt = c.prepare(&format!(
                "SELECT {columns}, i.body FROM remote_invoices r JOIN invoices i ON i.id = r.invoice ORDER BY r.invoice, r.remote"
            ))?;
            let rows = stmt.query_map([], |r| Ok((read_remote_invoice(r)?, r.get::<_, String>(9)?)))?;
            rows.map(|row| {
                let (remote, body) = row?;
                Ok((remote, serde_json::from_str(&body)?))
            })
            .collect()
        })
        .await
    }

    async fn invoice(&self, id: String) -> Result<Option<meter_rater::Invoice>, Error> {
        self.with(move |c| {
            let body: Option<String> =
                c.query_row("SELECT body FROM invoices WHERE id = ?1", params![id], |r| r.get(0)).optional()?;
            body.map(|b| Ok(serde_json::from_str(&b)?)).transpose()
        })
        .await
    }

    async fn claim_operations(&self, now_us: i64, lease_us: i64, limit: usize) -> Result<Vec<Operation>, Error> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let ops = {
                let mut stmt = tx.prepare(&claim_sql())?;
                let rows = stmt.query_map(params![now_us, limit as i64], read_op)?;
                rows.collect::<Result<Result<Vec<_>, _>, _>>()??
            };
            let mut claim = tx.prepare(
                "UPDATE outbox SET claimed_until_us = ?2, first_tried_us = coalesce(first_tried_us, ?3) WHERE id = ?1",
            )?;
            for op in &ops {
                claim.execute(params![op.id, now_us + lease_us, now_us])?;
            }
            drop(claim);
            tx.commit()?;
            Ok(ops.into_iter().map(|o| Operation { first_tried_us: o.first_tried_us.or(Some(now_us)), ..o }).collect())
        })
        .await
    }

    async fn renew_claims(&self, claims: Vec<(i64, i64)>, until_us: i64) -> Result<Vec<i64>, Error> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let mut renewed = Vec::new();
            {
                let mut renew = tx.prepare(
                    "UPDATE outbox SET claimed_until_us = ?3 WHERE id = ?1 AND claimed_until_us = ?2 AND state = 'pending'",
                )?;
                for (id, until) in claims {
                    if renew.execute(params![id, until, until_us])? == 1 {
                        renewed.push(id);
                    }
                }
            }
            tx.commit()?;
            Ok(renewed)
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
        let recording = self.recording.load(Ordering::SeqCst) > 0;
        self.with(move |c| {
            let tx = c.transaction()?;
            let held = || -> Result<Option<CloseHolder>, Error> {
                let row = tx
                    .query_row("SELECT holder, period, since_us, until_us FROM close_lease WHERE id = 1", [], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?, r.get(3)?))
                    })
                    .optional()?;
                row.map(|(holder, period, since_us, until_us)| close_holder(holder, &period, since_us, until_us))
                    .transpose()
            };
            // While a close records (this process's, or, past the busy timeout, another's), the
            // lease cannot be written, and no other process can take it: it is read. Its last
            // holder keeps it; another, while it runs, is named; otherwise the writer may be
            // anything, and the answer is to retry.
            let busy = || {
                Error::Conflict("the ledger is being written at length (a close recording); retry once it ends".into())
            };
            let recorded_meanwhile = |last: Option<CloseHolder>| match last {
                Some(last) if last.holder == holder => Ok(None),
                Some(last) if last.until_us > now_us => Ok(Some(last)),
                _ => Err(busy()),
            };
            if recording {
                return recorded_meanwhile(held()?);
            }
            let taken = match tx.execute(CLOSE_LEASE_SQL, params![holder, period.to_string(), now_us, until_us]) {
                Ok(n) => n,
                Err(e) if e.sqlite_error_code() == Some(meter_sqlite::rusqlite::ErrorCode::DatabaseBusy) => {
                    return recorded_meanwhile(held()?);
                }
                Err(e) => return Err(e.into()),
            };
            let other = match taken {
                1 => None,
                _ => Some(held()?.ok_or_else(|| Error::Corrupt("the close lease is gone".into()))?),
            };
            tx.commit()?;
            Ok(other)
        })
        .await
    }

    async fn release_close(&self, holder: String) -> Result<(), Error> {
        self.with(move |c| {
            c.execute("DELETE FROM close_lease WHERE id = 1 AND holder = ?1", params![holder])?;
            Ok(())
        })
        .await
    }

    async fn settle(&self, id: i64, settle: Settle) -> Result<(), Error> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let c = &tx;
            let changed = match settle {
                Settle::Done { outcome, then } => {
                    let changed = c.execute(
                        "UPDATE outbox SET state = 'done', outcome = ?2, attempts = attempts + 1, claimed_until_us = NULL
                         WHERE id = ?1 AND state = 'pending'",
                        params![id, outcome],
                    )?;
                    if changed == 1 {
                        let now_us = meter_schemas::period::now_us();
                        for op in &then {
                            write_operation(c, op, now_us)?;
                        }
                    }
                    changed
                }
                Settle::Again { next_us, error } => c.execute(
                    "UPDATE outbox SET next_us = ?2, outcome = ?3, attempts = attempts + 1, claimed_until_us = NULL
                     WHERE id = ?1 AND state = 'pending'",
                    params![id, next_us, error],
                )?,
                Settle::Dead(reason) => c.execute(
                    "UPDATE outbox SET state = 'dead', outcome = ?2, attempts = attempts + 1, claimed_until_us = NULL
                     WHERE id = ?1 AND state = 'pending'",
                    params![id, reason],
                )?,
            };
            if changed == 0 {
                return Err(Error::NoOperation(format!("pending outbox operation {id}")));
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn operations(&self, state: Option<OpState>, period: Option<String>) -> Result<Vec<Operation>, Error> {
        self.with(move |c| {
            let mut stmt = c.prepare(&operations_sql(period.is_some()))?;
            let rows = stmt.query_map(params![state.map(OpState::as_str), period], read_op)?;
            rows.collect::<Result<Result<Vec<_>, _>, _>>()?
        })
        .await
    }

    async fn remote_customer(&self, tenant: String) -> Result<Option<RemoteCustomer>, Error> {
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT tenant, customer, subscription FROM remote_customers WHERE tenant = ?1",
                params![tenant],
                read_remote_customer,
            )
            .optional()?)
        })
        .await
    }

    async fn record_remote_customer(&self, remote: RemoteCustomer) -> Result<(), Error> {
        self.with(move |c| {
            c.execute(
                "INSERT INTO remote_customers (tenant, customer, subscription) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant) DO UPDATE SET customer = excluded.customer, subscription = excluded.subscription",
                params![remote.tenant, remote.customer, remote.subscription],
            )?;
            Ok(())
        })
        .await
    }

    async fn remote_customer_by_id(&self, id: String) -> Result<Option<RemoteCustomer>, Error> {
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT tenant, customer, subscription FROM remote_customers WHERE customer = ?1 OR subscription = ?1",
                params![id],
                read_remote_customer,
            )
            .optional()?)
        })
        .await
    }

    async fn record_remote_invoice(&self, remote: RemoteInvoice) -> Result<RemoteInvoice, Error> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let known: Option<String> = tx
                .query_row("SELECT status FROM remote_invoices WHERE remote = ?1", params![remote.remote], |r| r.get(0))
                .optional()?;
            let forward = known.as_deref().is_none_or(|k| RemoteInvoice::rank(&remote.status) > RemoteInvoice::rank(k));
            if !forward {
                // The provider's pages, learnt late, are kept whatever the status.
                tx.execute(
                    "UPDATE remote_invoices SET hosted_url = coalesce(?2, hosted_url), pdf_url = coalesce(?3, pdf_url)
                     WHERE remote = ?1",
                    params![remote.remote, remote.hosted_url, remote.pdf_url],
                )?;
            }
            if forward {
                tx.execute(
                    "INSERT INTO remote_invoices (remote, invoice, tenant, status, sent_us, due_us, paid_us, hosted_url,
                         pdf_url)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (remote) DO UPDATE SET status = excluded.status,
                         sent_us = coalesce(sent_us, excluded.sent_us), due_us = coalesce(due_us, excluded.due_us),
                         paid_us = coalesce(paid_us, excluded.paid_us),
                         hosted_url = coalesce(excluded.hosted_url, hosted_url),
                         pdf_url = coalesce(excluded.pdf_url, pdf_url)",
                    params![
                        remote.remote,
                        remote.invoice,
                        remote.tenant,
                        remote.status,
                        remote.sent_us,
                        remote.due_us,
                        remote.paid_us,
                        remote.hosted_url,
                        remote.pdf_url
                    ],
                )?;
            }
            let stands = tx.query_row(
                &format!("SELECT {REMOTE_INVOICE} FROM remote_invoices WHERE remote = ?1"),
                params![remote.remote],
                read_remote_invoice,
            )?;
            tx.commit()?;
            Ok(stands)
        })
        .await
    }

    async fn remote_invoice(&self, remote: String) -> Result<Option<RemoteInvoice>, Error> {
        self.with(move |c| {
            Ok(c.query_row(
                &format!("SELECT {REMOTE_INVOICE} FROM remote_invoices WHERE remote = ?1"),
                params![remote],
                read_remote_invoice,
            )
            .optional()?)
        })
        .await
    }

    async fn receive_event(&self, event: ReceivedEvent) -> Result<bool, Error> {
        self.with(move |c| {
            let n = c.execute(
                "INSERT OR IGNORE INTO received_events (id, kind, created, object, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![event.id, event.kind, event.created, event.object, event.body],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn unprocessed_events(&self, limit: usize) -> Result<Vec<ReceivedEvent>, Error> {
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, kind, created, object, body, outcome FROM received_events WHERE processed_us IS NULL
                 ORDER BY created, id LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit as i64], |r| {
                Ok(ReceivedEvent {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    created: r.get(2)?,
                    object: r.get(3)?,
                    body: r.get(4)?,
                    outcome: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn processed_event(&self, id: String, outcome: String, now_us: i64) -> Result<(), Error> {
        self.with(move |c| {
            c.execute(
                "UPDATE received_events SET processed_us = ?2, outcome = ?3 WHERE id = ?1",
                params![id, now_us, outcome],
            )?;
            Ok(())
        })
        .await
    }

    async fn remote_invoices_of(&self, invoices: Vec<String>) -> Result<Vec<RemoteInvoice>, Error> {
        self.with(move |c| {
            let mut stmt =
                c.prepare_cached(&format!("SELECT {REMOTE_INVOICE} FROM remote_invoices WHERE invoice = ?1"))?;
            let mut out = Vec::new();
            for invoice in invoices {
                for r in stmt.query_map(params![invoice], read_remote_invoice)? {
                    out.push(r?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn latest_event_created(&self) -> Result<Option<i64>, Error> {
        self.with(|c| Ok(c.query_row("SELECT max(created) FROM received_events", [], |r| r.get(0))?)).await
    }

    async fn revive(&self, id: i64, now_us: i64) -> Result<bool, Error> {
        self.with(move |c| {
            let n = c.execute(
                "UPDATE outbox SET state = 'pending', next_us = ?2, claimed_until_us = NULL WHERE id = ?1 AND state = 'dead'",
                params![id, now_us],
            )?;
            Ok(n == 1)
        })
        .await
    }
}

fn read_remote_customer(r: &meter_sqlite::rusqlite::Row<'_>) -> meter_sqlite::rusqlite::Result<RemoteCustomer> {
    Ok(RemoteCustomer { tenant: r.get(0)?, customer: r.get(1)?, subscription: r.get(2)? })
}

const REMOTE_INVOICE: &str = "remote, invoice, tenant, status, sent_us, due_us, paid_us, hosted_url, pdf_url";

fn read_remote_invoice(r: &meter_sqlite::rusqlite::Row<'_>) -> meter_sqlite::rusqlite::Result<RemoteInvoice> {
    Ok(RemoteInvoice {
        remote: r.get(0)?,
        invoice: r.get(1)?,
        tenant: r.get(2)?,
        status: r.get(3)?,
        sent_us: r.get(4)?,
        due_us: r.get(5)?,
        paid_us: r.get(6)?,
        hosted_url: r.get(7)?,
        pdf_url: r.get(8)?,
    })
}

/// Writes `op` unless one of its kind and subject was written before.
fn write_operation(c: &Connection, op: &NewOperation, now_us: i64) -> Result<(), Error> {
    c.prepare_cached(
        "INSERT OR IGNORE INTO outbox (kind, subject, tenant, period, payload, created_us, next_us, lane)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        op.kind.as_str(),
        op.subject,
        op.tenant,
        op.period,
        op.body,
        now_us,
        op.next_us,
        op.kind.lane(&op.subject)
    ])?;
    Ok(())
}

/// An operation's columns, of `outbox o`: a push whose payload is '' reads its invoice's body
/// (written once, in the invoice row of its id).
const OP_COLUMNS: &str = "id, kind, subject, tenant, period,
    CASE WHEN payload = '' AND kind = 'push_invoice'
         THEN (SELECT i.body FROM invoices i WHERE i.id = o.subject) ELSE payload END,
    created_us, first_tried_us, attempts, next_us, state, outcome";

/// What a claim may take (`?1` now, `?2` how many): the due operations that are each the oldest
/// pending or dead of their lane, soonest due first.
fn claim_sql() -> String {
    format!(
        "SELECT {OP_COLUMNS} FROM outbox o
         WHERE state = 'pending' AND next_us <= ?1 AND coalesce(claimed_until_us, 0) <= ?1
           AND id = (SELECT min(id) FROM outbox p
                     WHERE p.tenant = o.tenant AND p.lane = o.lane AND p.state IN ('pending', 'dead'))
         ORDER BY next_us, id LIMIT ?2"
    )
}

/// The operations in `?1`'s state (every state when null), of period `?2` when `by_period`, by
/// id: a period's read through its index, not by a scan of the whole outbox (a statement is
/// planned once, so a period that may be null would never use it).
fn operations_sql(by_period: bool) -> String {
    let period = if by_period { "period = ?2" } else { "?2 IS NULL" };
    format!("SELECT {OP_COLUMNS} FROM outbox o WHERE (?1 IS NULL OR state = ?1) AND {period} ORDER BY id")
}

fn read_op(r: &meter_sqlite::rusqlite::Row<'_>) -> meter_sqlite::rusqlite::Result<Result<Operation, Error>> {
    let kind: String = r.get(1)?;
    let state: String = r.get(10)?;
    let (Some(kind), Some(state)) = (OpKind::parse(&kind), OpState::parse(&state)) else {
        return Ok(Err(Error::Corrupt(format!(
            "outbox operation {}: kind {kind:?}, state {state:?}",
            r.get::<_, i64>(0)?
        ))));
    };
    let Some(body) = r.get::<_, Option<String>>(5)? else {
        return Ok(Err(Error::Corrupt(format!("outbox operation {}: its invoice is gone", r.get::<_, i64>(0)?))));
    };
    Ok(Ok(Operation {
        id: r.get(0)?,
        kind,
        subject: r.get(2)?,
        tenant: r.get(3)?,
        period: r.get(4)?,
        body,
        created_us: r.get(6)?,
        first_tried_us: r.get(7)?,
        attempts: r.get::<_, i64>(8)? as u32,
        next_us: r.get(9)?,
        state,
        outcome: r.get(11)?,
    }))
}

/// Refuses a change at `at_us` inside a closed period (or one being closed): a close is never
/// rewritten.
fn check_open(c: &Connection, at_us: i64) -> Result<(), Error> {
    let last: Option<String> = c.query_row(
        "SELECT max(period) FROM (SELECT period FROM closes UNION ALL SELECT period FROM freezes)",
        [],
        |r| r.get(0),
    )?;
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

/// Writes `invoices` of `period` into the invoice table (once each).
fn write_invoices(c: &Connection, period: &str, invoices: &[meter_rater::Invoice]) -> Result<(), Error> {
    for inv in invoices {
        write_invoice(c, period, inv, &serde_json::to_string(inv)?)?;
    }
    Ok(())
}

/// `inv` (whose JSON is `body`) in the index of closed invoices by id, unless an invoice of its
/// id is there; returns whether it was written.
fn write_invoice(c: &Connection, period: &str, inv: &meter_rater::Invoice, body: &str) -> Result<bool, Error> {
    let written = c
        .prepare_cached("INSERT OR IGNORE INTO invoices (id, tenant, period, body) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![inv.id, inv.tenant, period, body])?;
    Ok(written == 1)
}

/// Fills the invoice table from the closes recorded before it existed, once (`invoices_filled`
/// says it was): in one write transaction taken at once, so that two processes opening the
/// ledger together fill it once, and a crash leaves it to the next open.
fn fill_invoices(conn: &mut Connection) -> Result<(), Error> {
    let filled = |c: &Connection| -> Result<bool, Error> {
        Ok(c.query_row("SELECT EXISTS (SELECT 1 FROM invoices_filled)", [], |r| r.get::<_, bool>(0))?)
    };
    if filled(conn)? {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(meter_sqlite::rusqlite::TransactionBehavior::Immediate)?;
    if !filled(&tx)? {
        let periods: Vec<String> = {
            let mut stmt = tx.prepare("SELECT period FROM closes ORDER BY period")?;
            stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        for period in periods {
            if let Some(close) = read_close(&tx, &period)? {
                write_invoices(&tx, &period, &close.invoices)?;
            }
        }
        tx.execute("INSERT INTO invoices_filled (done) VALUES (1)", [])?;
    }
    tx.commit()?;
    Ok(())
}

/// The close of `period`: its body (whole, or from its parts), with its invoices and report rows
/// when they are rows of their own.
/// Counts a close this process's ledger records, for as long as it lives.
struct Recording(Arc<AtomicUsize>);

impl Recording {
    fn start(count: Arc<AtomicUsize>) -> Recording {
        count.fetch_add(1, Ordering::SeqCst);
        Recording(count)
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Writes a part of a close's rows: its invoices from position `first_invoice` (each indexed by
/// id, with the push that follows it; its body written once, in the row of its id, when that row
/// is this invoice's) and its report rows from position `first_row`.
fn write_rows(
    tx: &Connection,
    period: &str,
    closed_us: i64,
    (first_invoice, invoices): (usize, &[meter_rater::Invoice]),
    (first_row, report): (usize, &[super::ReportRow]),
) -> Result<(), Error> {
    let mut place = tx.prepare_cached("INSERT INTO close_invoices (period, seq, id, body) VALUES (?1, ?2, ?3, ?4)")?;
    for (i, inv) in invoices.iter().enumerate() {
        let body = serde_json::to_string(inv)?;
        let body = if write_invoice(tx, period, inv, &body)? { String::new() } else { body };
        place.execute(params![period, (first_invoice + i) as i64, inv.id, body])?;
        if !inv.lines.is_empty() {
            let op = NewOperation {
                kind: OpKind::PushInvoice,
                subject: inv.id.clone(),
                tenant: inv.tenant.clone(),
                period: Some(period.to_string()),
                body,
                next_us: closed_us,
            };
            write_operation(tx, &op, closed_us)?;
        }
    }
    let mut row = tx.prepare_cached(
        "INSERT INTO close_report (period, row, tenant, meter, accepted, counted, stored, rated, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for (i, r) in report.iter().enumerate() {
        row.execute(params![
            period,
            (first_row + i) as i64,
            r.tenant,
            r.meter,
            r.accepted,
            r.counted,
            r.stored,
            r.rated,
            r.status
        ])?;
    }
    Ok(())
}

/// The close of `period` without its rows: counted in their tables, or, recorded before they
/// were kept apart, in its body.
fn read_closed(c: &Connection, period: &str) -> Result<Option<Closed>, Error> {
    let Some((header, rows_apart)) = read_body(c, period)? else { return Ok(None) };
    if !rows_apart {
        return Ok(Some(Closed::of(header)));
    }
    let count = |sql: &str| c.query_row(sql, params![period], |r| r.get::<_, i64>(0));
    let invoices = count("SELECT count(*) FROM close_invoices WHERE period = ?1")? as usize;
    let differences = count("SELECT count(*) FROM close_report WHERE period = ?1 AND status <> 'ok'")? as usize;
    Ok(Some(Closed { header, invoices, differences }))
}

fn read_close(c: &Connection, period: &str) -> Result<Option<Close>, Error> {
    let Some((mut close, rows_apart)) = read_body(c, period)? else { return Ok(None) };
    if rows_apart {
        close.invoices = read_invoices(c, period, 0, usize::MAX)?;
        close.report = read_report(c, period, 0, usize::MAX)?;
    }
    Ok(Some(close))
}

/// The body of the close of `period`, and whether its rows are rows of their own.
fn read_body(c: &Connection, period: &str) -> Result<Option<(Close, bool)>, Error> {
    let found: Option<(String, bool)> = c
        .query_row("SELECT body, rows_apart FROM closes WHERE period = ?1", params![period], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let Some((body, rows_apart)) = found else { return Ok(None) };
    let close: Close = if !body.is_empty() {
        serde_json::from_str(&body)?
    } else {
        let mut stmt = c.prepare("SELECT body FROM close_parts WHERE period = ?1 ORDER BY part")?;
        let mut body = Vec::new();
        for part in stmt.query_map(params![period], |r| r.get::<_, Vec<u8>>(0))? {
            body.extend_from_slice(&part?);
        }
        serde_json::from_slice(&body)?
    };
    Ok(Some((close, rows_apart)))
}

/// Whether `period` is closed, and then whether its close's rows are rows of their own.
fn rows_apart(c: &Connection, period: &str) -> Result<Option<bool>, Error> {
    Ok(c.query_row("SELECT rows_apart FROM closes WHERE period = ?1", params![period], |r| r.get(0)).optional()?)
}

/// The invoices of a close whose rows are apart, from position `from`, at most `limit`.
fn read_invoices(c: &Connection, period: &str, from: usize, limit: usize) -> Result<Vec<meter_rater::Invoice>, Error> {
    // An invoice's body is its own, or the invoice row's of its id (written once).
    let mut stmt = c.prepare_cached(
        "SELECT c.id, CASE WHEN c.body = '' THEN (SELECT i.body FROM invoices i WHERE i.id = c.id) ELSE c.body END
         FROM close_invoices c WHERE c.period = ?1 AND c.seq >= ?2 ORDER BY c.seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![period, position(from), position(limit)], |r| {
        Ok((r.get::<_, Option<String>>(0)?, r.get(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, body): (Option<String>, Option<String>) = row?;
        let body = body.ok_or_else(|| {
            Error::Corrupt(format!("invoice {} of the close of {period} is gone", id.unwrap_or_default()))
        })?;
        out.push(serde_json::from_str(&body)?);
    }
    Ok(out)
}

/// The report rows of a close whose rows are apart, from position `from`, at most `limit`.
fn read_report(c: &Connection, period: &str, from: usize, limit: usize) -> Result<Vec<super::ReportRow>, Error> {
    let mut stmt = c.prepare_cached(
        "SELECT tenant, meter, accepted, counted, stored, rated, status FROM close_report
         WHERE period = ?1 AND row >= ?2 ORDER BY row LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![period, position(from), position(limit)], |r| {
        Ok(super::ReportRow {
            tenant: r.get(0)?,
            meter: r.get(1)?,
            accepted: r.get(2)?,
            counted: r.get(3)?,
            stored: r.get(4)?,
            rated: r.get(5)?,
            status: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A position or a count as SQLite takes it (`usize::MAX`: no limit).
fn position(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
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

fn load(c: &Connection, filter: &str, args: &[&dyn meter_sqlite::rusqlite::ToSql]) -> Result<Vec<Subscription>, Error> {
    let mut stmt = c.prepare(&format!("SELECT body FROM subscriptions {filter}"))?;
    let rows = stmt.query_map(args, |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for body in rows {
        out.push(serde_json::from_str(&body?)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meter_rater::PriceBook;
    use meter_rater::pricebook::SAMPLE;

    const METERS: &[&str] =
        &["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"];

    /// The contract's close with 50 report rows and four invoices of three tenants, not in order,
    /// two of them sharing an id (which a close does not make, but the ledger keeps a close by
    /// position whatever its ids).
    fn a_close(period: &str, revises: &[&str]) -> Close {
        let row = super::super::ReportRow {
            tenant: "t".into(),
            meter: "work_orders".into(),
            accepted: Some("1".into()),
            counted: None,
            stored: Some("1".into()),
            rated: Some("1".into()),
            status: "accepted ≠ counted".into(),
        };
        let invoice = |t: &str, lines| super::super::contract::invoice(t, period, lines);
        let invoices = vec![invoice("c", 2), invoice("a", 2), invoice("a", 1), invoice("b", 2)];
        assert_eq!(invoices[1].id, invoices[2].id);
        Close { report: vec![row; 50], invoices, ..super::super::contract::a_close(period, revises) }
    }

    /// A close gone between two pages of a read (closes are never deleted: only a damaged ledger
    /// does this) fails the read, naming the period, rather than ending it as if complete.
    #[tokio::test]
    async fn a_close_gone_between_pages_fails_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("billing.db");
        let ledger = super::super::Ledger::new(std::sync::Arc::new(SqliteLedger::open(&path).unwrap()));
        let book = PriceBook::parse(SAMPLE, METERS, &["active_users"]).unwrap();
        ledger.record(a_close("2026-10", &[]), book.version("2026-01").unwrap()).await.unwrap();
        let october = "2026-10".parse().unwrap();
        let mut pages = crate::export::Pages::open(&ledger, october, super::Rows::Report, 10).await.unwrap().unwrap();
        assert_eq!(pages.next().await.unwrap().unwrap().len(), 10);
        Connection::open(&path).unwrap().execute("DELETE FROM closes WHERE period = '2026-10'", []).unwrap();
        let e = pages.next().await.unwrap_err();
        assert!(matches!(&e, Error::Corrupt(m) if m.contains("2026-10")), "{e}");
    }

    /// A close's invoices and report rows are rows of their own and read back the same; a body
    /// too long for one value is kept in parts; what later closes need is read without it;
    /// closes recorded the old ways (whole, in one value or in parts, without a summary) still
    /// read back and answer them.
    #[tokio::test]
    async fn closes_keep_their_rows_apart_and_the_old_ways_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteLedger::open(&dir.path().join("billing.db")).unwrap();
        store.part_bytes = 100;
        let book = PriceBook::parse(SAMPLE, METERS, &["active_users"]).unwrap();
        let list = book.version("2026-01").unwrap();
        // Recorded the old ways: the whole body in one value, or in parts; no summary.
        let (old, older) = (a_close("2026-09", &[]), a_close("2026-08", &[]));
        let (body, parted) = (serde_json::to_string(&old).unwrap(), serde_json::to_vec(&older).unwrap());
        assert!(parted.len() > 5000);
        store
            .with(move |c| {
                c.execute("INSERT INTO closes (period, closed_us, body) VALUES ('2026-09', 7, ?1)", [body])?;
                c.execute("INSERT INTO closes (period, closed_us, body) VALUES ('2026-08', 7, '')", [])?;
                for (i, part) in parted.chunks(1000).enumerate() {
                    c.execute(
                        "INSERT INTO close_parts (period, part, body) VALUES ('2026-08', ?1, ?2)",
                        params![i as i64, part],
                    )?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let big = a_close("2026-10", &["2026-09"]);
        let ledger = super::super::Ledger::new(std::sync::Arc::new(store));
        assert_eq!(ledger.record(big.clone(), list).await.unwrap(), big);
        let db = Connection::open(dir.path().join("billing.db")).unwrap();
        let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert!(count("SELECT count(*) FROM close_parts WHERE period = '2026-10'") > 1, "the body is in parts");
        assert_eq!(count("SELECT count(*) FROM close_report WHERE period = '2026-10'"), 50);
        assert_eq!(count("SELECT count(*) FROM close_invoices WHERE period = '2026-10'"), 4);
        assert_eq!(count("SELECT count(*) FROM invoices WHERE period = '2026-10'"), 3, "by id");
        assert!(
            count("SELECT max(length(body)) FROM close_parts WHERE period = '2026-10'") <= 100,
            "parts of the body alone"
        );
        let header: String = db
            .query_row(
                "SELECT group_concat(CAST(body AS TEXT), '') FROM (SELECT body FROM close_parts WHERE period = '2026-10' \
                 ORDER BY part)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!header.contains("fee 0") && !header.contains("work_orders"), "no invoice or report row in the body");
        assert_eq!(ledger.close_of("2026-10".parse().unwrap()).await.unwrap().unwrap(), big);
        assert_eq!(ledger.close_of("2026-09".parse().unwrap()).await.unwrap().unwrap(), old);
        assert_eq!(ledger.close_of("2026-08".parse().unwrap()).await.unwrap().unwrap(), older);
        // Closes recorded the old ways are read through pages too.
        for (period, close) in [("2026-09", &old), ("2026-08", &older)] {
            let period = period.parse().unwrap();
            let page = |rows, from, limit| ledger.close_rows(period, rows, from, limit);
            let invoices = |r: std::ops::Range<usize>| Some(super::Page::Invoices(close.invoices[r].to_vec()));
            // Stored whole, read whole: every row from `from`, whatever the limit.
            assert_eq!(page(super::Rows::Invoices, 1, 2).await.unwrap(), invoices(1..4));
            assert_eq!(page(super::Rows::Invoices, 3, 2).await.unwrap(), invoices(3..4));
            let report = Some(super::Page::Report(close.report[48..].to_vec()));
            assert_eq!(page(super::Rows::Report, 48, 5).await.unwrap(), report);
        }
        // Recording it again keeps the first (and its rows).
        let mut again = big.clone();
        again.closed_us = 8;
        again.report.truncate(3);
        assert_eq!(ledger.record(again, list).await.unwrap(), big);
        assert_eq!(count("SELECT count(*) FROM close_report WHERE period = '2026-10'"), 50);
        let summaries = ledger.close_summaries().await.unwrap();
        let want = |p: &str, revises: &[&str]| CloseSummary {
            period: p.parse().unwrap(),
            watermark_us: 42,
            revises: revises.iter().map(|p| p.parse().unwrap()).collect(),
        };
        assert_eq!(summaries, [want("2026-08", &[]), want("2026-09", &[]), want("2026-10", &["2026-09"])]);
    }

    /// Every index of the outbox is one its reads use (each push a close writes writes every
    /// index, and a settle those on its state and due time): the plans of the claim (with its lane check) and of a
    /// period's operations name each, and there is no other.
    #[tokio::test]
    async fn the_outbox_keeps_only_indexes_its_reads_use() {
        let (dir, _ledger, _) = a_ledger();
        // Opened as the ledger opens it (each statement planned once).
        let db = open(&dir.path().join("billing.db"), Durability::Full).unwrap();
        let mut stmt = db
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox' AND sql IS NOT NULL")
            .unwrap();
        let mut indexes: Vec<String> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        indexes.sort();
        assert_eq!(indexes, ["outbox_by_period", "outbox_due", "outbox_lanes"]);
        let plan = |sql: String| -> Vec<String> {
            let mut stmt = db.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            stmt.query_map(params![0, "2026-10"], |r| r.get(3)).unwrap().map(Result::unwrap).collect()
        };
        let mut used: Vec<String> = [claim_sql(), operations_sql(true)]
            .into_iter()
            .flat_map(plan)
            .filter_map(|step| indexes.iter().find(|i| step.contains(&format!("INDEX {i} "))).cloned())
            .collect();
        used.sort();
        assert_eq!(used, indexes);
    }

    /// A ledger in `billing.db` of a new directory, and the sample price book.
    fn a_ledger() -> (tempfile::TempDir, super::super::Ledger, PriceBook) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteLedger::open(&dir.path().join("billing.db")).unwrap();
        (
            dir,
            super::super::Ledger::new(std::sync::Arc::new(store)),
            PriceBook::parse(SAMPLE, METERS, &["active_users"]).unwrap(),
        )
    }

    /// Each invoice's body is written once: the close's place and its push read it from the
    /// invoice row of its id. An invoice whose id's row holds another invoice (one written
    /// before, or earlier in the same close) keeps its own body in its place, and in its push
    /// when it has one, so every read gives what was recorded; rows written before the change
    /// (a body of their own, no id) read as they did.
    #[tokio::test]
    async fn a_close_writes_each_invoice_body_once() {
        let (dir, ledger, book) = a_ledger();
        let list = book.version("2026-01").unwrap();
        let db = Connection::open(dir.path().join("billing.db")).unwrap();
        // An invoice row of tenant c's id from before the close (which a close does not make).
        let taken = super::super::contract::invoice("c", "2026-10", 3);
        db.execute(
            "INSERT INTO invoices (id, tenant, period, body) VALUES (?1, 'c', '2026-10', ?2)",
            params![taken.id, serde_json::to_string(&taken).unwrap()],
        )
        .unwrap();
        let close = a_close("2026-10", &[]);
        assert_eq!(ledger.record(close.clone(), list).await.unwrap(), close);
        let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        // Tenant c's (its id was taken) and the second of tenant a's two of one id keep theirs.
        assert_eq!(count("SELECT count(*) FROM close_invoices WHERE period = '2026-10' AND body != ''"), 2);
        assert_eq!(count("SELECT count(*) FROM outbox WHERE kind = 'push_invoice' AND payload != ''"), 1);
        assert_eq!(ledger.close_of("2026-10".parse().unwrap()).await.unwrap().unwrap(), close);
        // Each id's first invoice with lines, as before: c's own, a's first, b's.
        let pushed = super::super::contract::pushed(&ledger, "2026-10").await;
        assert_eq!(pushed, [close.invoices[0].clone(), close.invoices[1].clone(), close.invoices[3].clone()]);
        assert_eq!(ledger.invoice(&taken.id).await.unwrap().unwrap(), taken, "the row that was there stays");
        // Rows as a build before the change wrote them: each with its body, no id in its place.
        db.execute_batch(
            "UPDATE close_invoices SET body = (SELECT i.body FROM invoices i WHERE i.id = close_invoices.id), id = NULL
             WHERE body = '';
             UPDATE outbox SET payload = (SELECT i.body FROM invoices i WHERE i.id = outbox.subject) WHERE payload = '';",
        )
        .unwrap();
        assert_eq!(count("SELECT count(*) FROM close_invoices WHERE body = ''"), 0);
        assert_eq!(ledger.close_of("2026-10".parse().unwrap()).await.unwrap().unwrap(), close);
        let listed = ledger.operations(None, Some("2026-10".parse().unwrap())).await.unwrap();
        let listed: Vec<meter_rater::Invoice> = listed.iter().map(|o| serde_json::from_str(&o.body).unwrap()).collect();
        assert_eq!(listed, pushed);
    }

    /// An invoice row that a close's place or push reads, gone (by hand): reading the close or
    /// the outbox fails naming what is missing, and nothing else is read in its place.
    #[tokio::test]
    async fn an_invoice_row_gone_under_a_close_is_named() {
        let (dir, ledger, book) = a_ledger();
        let close = a_close("2026-10", &[]);
        ledger.record(close.clone(), book.version("2026-01").unwrap()).await.unwrap();
        let gone = close.invoices[3].id.clone();
        Connection::open(dir.path().join("billing.db"))
            .unwrap()
            .execute("DELETE FROM invoices WHERE id = ?1", [&gone])
            .unwrap();
        let e = ledger.close_of("2026-10".parse().unwrap()).await.unwrap_err();
        assert!(
            matches!(&e, Error::Corrupt(m) if m == &format!("invoice {gone} of the close of 2026-10 is gone")),
            "{e}"
        );
        let e = ledger.operations(None, None).await.unwrap_err();
        assert!(matches!(&e, Error::Corrupt(m) if m.ends_with(": its invoice is gone")), "{e}");
    }

    /// While a close records its parts (holding SQLite's write lock on a connection of its own),
    /// the lease is read, not written: in the recording process at once, in another once the
    /// busy timeout passes. Its holder keeps it (the close is not stopped by its own recording);
    /// another close is told who holds it (a 409 naming it), or, when that lease ran out, to
    /// retry. The process's other writers fail at once; its readers read on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn while_a_close_records_the_lease_names_its_holder() {
        use crate::ledger::Part;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("billing.db");
        let ledger = super::super::Ledger::new(Arc::new(SqliteLedger::open(&path).unwrap()));
        let elsewhere = SqliteLedger::open(&path).unwrap();
        let october: Period = "2026-10".parse().unwrap();
        let elsewhere_lease = |now: i64| elsewhere.lease_close("another".into(), october, now + 100, now);
        assert_eq!(ledger.store().lease_close("me".into(), october, 101, 1).await.unwrap(), None);
        let book = PriceBook::parse(SAMPLE, METERS, &["active_users"]).unwrap();
        let list = book.version("2026-01").unwrap().clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let recording = tokio::spawn({
            let (ledger, list) = (ledger.clone(), list.clone());
            async move { ledger.record_parts(crate::ledger::contract::a_close("2026-10", &[]), &list, rx).await }
        });
        // Taken (the channel holds one): the recording began.
        tx.send(Part::Rows(vec![], vec![])).await.unwrap();
        tx.send(Part::Rows(vec![], vec![])).await.unwrap();
        let started = std::time::Instant::now();
        let store = ledger.store();
        assert_eq!(store.lease_close("me".into(), october, 300, 200).await.unwrap(), None, "its own");
        let other = store.lease_close("another".into(), october, 300, 50).await.unwrap().expect("held");
        assert_eq!((other.holder.as_str(), other.period, other.until_us), ("me", october, 101));
        let e = store.lease_close("another".into(), october, 300, 200).await.unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "ran out while the ledger is written: retry ({e})");
        let e = ledger
            .create("t", crate::ledger::contract::setup("starter"), october.end_us() + 1, "k", &list)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Storage(_)), "a writer fails: {e}");
        assert!(ledger.list(None).await.unwrap().is_empty(), "a reader reads");
        assert!(started.elapsed() < meter_sqlite::BUSY_TIMEOUT, "none of it waited for the busy timeout");
        // Another process: after the busy timeout, the same answer.
        assert_eq!(elsewhere_lease(50).await.unwrap(), Some(other.clone()));
        drop(tx);
        assert!(matches!(recording.await.unwrap().unwrap_err(), Error::Task(_)));
        assert_eq!(elsewhere_lease(50).await.unwrap(), Some(other), "written again: held until it runs out");
        assert_eq!(elsewhere_lease(400).await.unwrap(), None, "then taken");
    }
}
