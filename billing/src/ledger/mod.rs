//! The ledger: subscriptions with their audit trails, closed periods with their invoice drafts
//! and reports, and the price-list versions those closes used. [`Ledger`] holds the rules (one
//! live subscription per tenant, price lists that rated a closed period never change); its rows
//! live behind the [`LedgerStore`] port (SQLite's `billing.db` by default, [`SqliteLedger`]).

pub mod contract;
pub mod outbox;
mod postgres;
mod record;
mod sqlite;

pub use postgres::{MIGRATIONS as PG_MIGRATIONS, PgLedger};
pub use record::{Close, ReportRow};
pub use sqlite::SqliteLedger;

use crate::Error;
use async_trait::async_trait;
use meter_rater::{Command, PriceBook, PriceList, Setup, State, Subscription};
use meter_schemas::Period;
use outbox::{OpState, Operation, ReceivedEvent, RemoteCustomer, RemoteInvoice, Settle};
use std::path::Path;
use std::sync::Arc;

/// Which of a close's rows: its invoices or its report's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// The invoice drafts, by tenant.
    Invoices,
    /// The reconciliation report, by tenant and meter.
    Report,
}

/// A page of a close's rows ([`LedgerStore::close_rows`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Page {
    /// Invoices.
    Invoices(Vec<meter_rater::Invoice>),
    /// Report rows.
    Report(Vec<ReportRow>),
}

impl Page {
    /// How many rows.
    pub fn len(&self) -> usize {
        match self {
            Page::Invoices(p) => p.len(),
            Page::Report(p) => p.len(),
        }
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `close`'s `rows` from position `from` (a close held whole).
    pub fn of(close: Close, rows: Rows, from: usize) -> Page {
        match rows {
            Rows::Invoices => Page::Invoices(close.invoices.into_iter().skip(from).collect()),
            Rows::Report => Page::Report(close.report.into_iter().skip(from).collect()),
        }
    }
}

/// A part of a close being recorded ([`LedgerStore::record`]), in the close's order: its rows as
/// the close makes them, a range of tenants at a time, then its end.
#[derive(Clone, Debug)]
pub enum Part {
    /// The next invoices and report rows (by tenant, after every row sent before).
    Rows(Vec<meter_rater::Invoice>, Vec<ReportRow>),
    /// The last part: the sum of the invoices by currency, which only the end knows.
    End(std::collections::BTreeMap<String, rust_decimal::Decimal>),
}

/// The parts of a close being recorded, as the close sends them.
pub type Parts = tokio::sync::mpsc::Receiver<Part>;

/// A recorded close without its rows, which are read a page at a time
/// ([`LedgerStore::close_rows`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    /// The close but its rows: its `invoices` and `report` are empty.
    pub header: Close,
    /// How many invoices it has.
    pub invoices: usize,
    /// How many of its report rows differ (a status other than `ok`).
    pub differences: usize,
}

impl Closed {
    /// What `close`, held whole, comes to without its rows.
    pub fn of(close: Close) -> Closed {
        let (header, invoices, report) = apart(close);
        Closed { header, invoices: invoices.len(), differences: report.iter().filter(|r| r.differs()).count() }
    }
}

/// What a later close needs to know of a recorded close, without reading its invoices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseSummary {
    /// The period closed.
    pub period: Period,
    /// Its watermark.
    pub watermark_us: i64,
    /// The earlier periods it rated again.
    pub revises: Vec<Period>,
}

/// A price-list version a close used: its digest and the first period it rated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsedList {
    /// The version.
    pub version: String,
    /// Its digest when it rated.
    pub digest: String,
    /// The first period it rated.
    pub first_period: String,
}

/// Who holds the close lease ([`LedgerStore::lease_close`]): one close runs at a time, on every
/// host sharing the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseHolder {
    /// The holding process (host, process id, start).
    pub holder: String,
    /// The period it is closing.
    pub period: Period,
    /// Since when it holds the lease (µs).
    pub since_us: i64,
    /// Until when, unless renewed (µs).
    pub until_us: i64,
}

/// Takes or renews the close lease (parameters: holder, period, now, until), written once for
/// every backend: a row is taken when there is none, when it is the holder's own (which keeps
/// its start) or when it ran out. Changes one row exactly when the holder has the lease.
const CLOSE_LEASE_SQL: &str = "
    INSERT INTO close_lease AS l (id, holder, period, since_us, until_us) VALUES (1, ?1, ?2, ?3, ?4)
    ON CONFLICT (id) DO UPDATE SET
        since_us = CASE WHEN l.holder = excluded.holder THEN l.since_us ELSE excluded.since_us END,
        holder = excluded.holder, period = excluded.period, until_us = excluded.until_us
    WHERE l.holder = excluded.holder OR l.until_us <= ?3";

/// The filter of [`LedgerStore::subscriptions_after`] on `subscriptions`, written once for every
/// backend (parameters: the tenant after which, or `''` from the first; how many tenants;
/// created before): the next tenants that have one, from the index by tenant, then theirs.
fn subscriptions_after_filter(after: bool) -> String {
    let from = if after { "tenant > ?1" } else { "tenant >= ?1" };
    format!(
        "WHERE {from} AND created_us < ?3 AND tenant <= (SELECT max(tenant) FROM
             (SELECT DISTINCT tenant FROM subscriptions WHERE {from} AND created_us < ?3
              ORDER BY tenant LIMIT ?2) t)
         ORDER BY tenant, created_us, id"
    )
}

/// A stored close holder, read back.
fn close_holder(holder: String, period: &str, since_us: i64, until_us: i64) -> Result<CloseHolder, Error> {
    let period = period.parse().map_err(|e| Error::Corrupt(format!("the close lease names period {period:?}: {e}")))?;
    Ok(CloseHolder { holder, period, since_us, until_us })
}

/// Decides, inside the transaction that inserts a subscription, whether the tenant's other
/// subscriptions allow it.
pub type Admit = Box<dyn FnOnce(&[Subscription]) -> Result<(), Error> + Send>;

/// Changes a subscription inside the transaction that stores it.
pub type Change = Box<dyn FnOnce(&mut Subscription) -> Result<(), Error> + Send>;

/// Storage of the ledger. Each write is atomic; a write dated inside a closed period, or one
/// being closed ([`LedgerStore::freeze`]), is refused with [`Error::Closed`] in the same
/// transaction, so a close is never rewritten.
#[async_trait]
pub trait LedgerStore: Send + Sync {
    /// The price-list versions recorded closes used, by version.
    async fn price_lists(&self) -> Result<Vec<UsedList>, Error>;

    /// Inserts `sub`, created at `at_us`, if `admit` accepts the tenant's other subscriptions
    /// (read in the same transaction), with its mirror's operation ([`outbox::mirror_of`]).
    async fn insert_subscription(&self, sub: Subscription, at_us: i64, admit: Admit) -> Result<Subscription, Error>;

    /// Applies `change` dated `at_us` to subscription `id` and stores the result with its
    /// mirror's operation ([`outbox::mirror_of`]), in one transaction; [`Error::NotFound`] when
    /// there is no such subscription.
    async fn update_subscription(&self, id: String, at_us: i64, change: Change) -> Result<Subscription, Error>;

    /// Subscription `id`.
    async fn subscription(&self, id: String) -> Result<Option<Subscription>, Error>;

    /// Every subscription (of `tenant`, when given), oldest first (then by id).
    async fn subscriptions(&self, tenant: Option<String>) -> Result<Vec<Subscription>, Error>;

    /// The subscriptions created before `before_us` of the tenants after `after` (from the first
    /// when `None`), by tenant in the order of their bytes, each tenant's oldest first (then by
    /// id): those of the next `tenants` tenants that have one, or of every one left. Read apart
    /// from a close being recorded, which this neither waits for nor sees.
    async fn subscriptions_after(
        &self,
        after: Option<String>,
        tenants: usize,
        before_us: i64,
    ) -> Result<Vec<Subscription>, Error>;

    /// The close of `period`, if it was closed.
    async fn close_of(&self, period: Period) -> Result<Option<Close>, Error>;

    /// The close of `period` without its rows, if it was closed.
    async fn closed(&self, period: Period) -> Result<Option<Closed>, Error>;

    /// The close of `period`'s `rows` from position `from`, at most `limit`, in the close's order
    /// (fewer, or none, at its end); `None` if the period is not closed. A close recorded before
    /// its rows were kept apart is stored whole, and read whole: it gives every row from `from`
    /// at once, whatever `limit`, so that a reader going through it reads it once.
    async fn close_rows(&self, period: Period, rows: Rows, from: usize, limit: usize) -> Result<Option<Page>, Error>;

    /// What every recorded close rated, oldest first.
    async fn close_summaries(&self) -> Result<Vec<CloseSummary>, Error>;

    /// Every closed invoice of `tenant`, newest period first (then by id).
    async fn invoices_of(&self, tenant: String) -> Result<Vec<meter_rater::Invoice>, Error>;

    /// The closed invoice `id`.
    async fn invoice(&self, id: String) -> Result<Option<meter_rater::Invoice>, Error>;

    /// Every closed invoice of the periods `from..=to`, oldest period first (then by id).
    async fn invoices_between(&self, from: Period, to: Period) -> Result<Vec<meter_rater::Invoice>, Error>;

    /// Every invoice held at the provider, with meter's closed invoice it carries.
    async fn held_invoices(&self) -> Result<Vec<(RemoteInvoice, meter_rater::Invoice)>, Error>;

    /// Marks `period` as being closed since `now_us` (once): from then on no change may be
    /// dated inside it.
    async fn freeze(&self, period: Period, now_us: i64) -> Result<(), Error>;

    /// Records the close `header` (its invoices and report empty, its totals given by the last
    /// part), rated with price list `version` (`digest`), with its rows as they come from
    /// `parts`, unless its period was closed before: then it reads nothing of `parts` and
    /// returns that close. One transaction: with the rows, it writes to the outbox one
    /// [`outbox::OpKind::PushInvoice`] per invoice that has lines; parts that stop before their
    /// [`Part::End`] (the close failed midway) record nothing and fail with [`Error::Task`].
    /// Returns the close that stands.
    async fn record(&self, header: Close, version: String, digest: String, parts: Parts) -> Result<Closed, Error>;

    /// Pending operations due at `now_us`, at most `limit`: of each tenant's lane
    /// ([`outbox::OpKind::lane`]) only its oldest pending one (a lane's operations are worked one
    /// at a time, in order; a dead one holds back the lane's later ones until it is revived,
    /// since what it left at the provider, such as pending invoice items, would go into the
    /// next invoice), and none that another worker claimed less than `lease_us` ago. Claims
    /// those it returns until `now_us + lease_us`, marking their first try.
    async fn claim_operations(&self, now_us: i64, lease_us: i64, limit: usize) -> Result<Vec<Operation>, Error>;

    /// Extends to `until_us` each claim `(id, claimed_until_us)` that is still the one its worker
    /// took (the operation is pending and claimed until that instant: nobody claimed it since);
    /// returns the ids renewed.
    async fn renew_claims(&self, claims: Vec<(i64, i64)>, until_us: i64) -> Result<Vec<i64>, Error>;

    /// Takes or renews the close lease for `holder`, closing `period`, until `until_us`; when
    /// another holder's lease runs past `now_us`, changes nothing and returns that holder.
    async fn lease_close(
        &self,
        holder: String,
        period: Period,
        until_us: i64,
        now_us: i64,
    ) -> Result<Option<CloseHolder>, Error>;

    /// Gives the close lease back, if `holder` holds it.
    async fn release_close(&self, holder: String) -> Result<(), Error>;

    /// Records what a try of operation `id` came to; a done one writes what follows it in the
    /// same transaction (an operation of a kind and subject already written is not written
    /// again).
    async fn settle(&self, id: i64, settle: Settle) -> Result<(), Error>;

    /// Operations in `state` (every state when `None`), of `period` when given, oldest first.
    async fn operations(&self, state: Option<OpState>, period: Option<String>) -> Result<Vec<Operation>, Error>;

    /// Puts dead operation `id` back to pending, due at `now_us`; false when it is not dead.
    async fn revive(&self, id: i64, now_us: i64) -> Result<bool, Error>;

    /// What the provider calls `tenant`, once recorded.
    async fn remote_customer(&self, tenant: String) -> Result<Option<RemoteCustomer>, Error>;

    /// Records what the provider calls a tenant (replacing what was recorded).
    async fn record_remote_customer(&self, remote: RemoteCustomer) -> Result<(), Error>;

    /// The tenant whose customer (or mirror subscription) the provider calls `id`.
    async fn remote_customer_by_id(&self, id: String) -> Result<Option<RemoteCustomer>, Error>;

    /// Records an invoice the provider holds for meter, or moves its status forward; a status
    /// that would move it back (an event read out of order) is kept out. Returns what stands.
    async fn record_remote_invoice(&self, remote: RemoteInvoice) -> Result<RemoteInvoice, Error>;

    /// The invoice the provider calls `remote`, if meter made it.
    async fn remote_invoice(&self, remote: String) -> Result<Option<RemoteInvoice>, Error>;

    /// The provider's invoices carrying meter invoices `invoices`.
    async fn remote_invoices_of(&self, invoices: Vec<String>) -> Result<Vec<RemoteInvoice>, Error>;

    /// Keeps `event` unless an event of its id was kept before; returns whether it is new.
    async fn receive_event(&self, event: ReceivedEvent) -> Result<bool, Error>;

    /// Events not processed yet, in the order the provider made them.
    async fn unprocessed_events(&self, limit: usize) -> Result<Vec<ReceivedEvent>, Error>;

    /// Marks event `id` processed with what came of it.
    async fn processed_event(&self, id: String, outcome: String, now_us: i64) -> Result<(), Error>;

    /// When the provider made the newest event kept (unix seconds), if any: where catching up
    /// on missed events starts.
    async fn latest_event_created(&self) -> Result<Option<i64>, Error>;
}

/// Whether a tenant whose subscriptions are `others` may start a new one at `at_us`: only when
/// every other one expired by then, with nothing of it after (usage is per tenant: two would bill
/// it twice; a backdated start must not overlap).
pub fn admit_new(others: &[Subscription], at_us: i64) -> Result<(), Error> {
    for other in others {
        let mut other = other.clone();
        other.advance(at_us);
        let after = other.entries.last().is_some_and(|e| e.at_us > at_us);
        if other.state() != State::Expired || after {
            return Err(Error::Conflict(format!(
                "tenant {} already has subscription {} ({}); cancel it first",
                other.tenant,
                other.id,
                other.state()
            )));
        }
    }
    Ok(())
}

/// The ledger.
#[derive(Clone)]
pub struct Ledger {
    store: Arc<dyn LedgerStore>,
}

impl Ledger {
    /// Opens (creating or upgrading) the SQLite ledger at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        Ok(Self::new(Arc::new(SqliteLedger::open(path)?)))
    }

    /// The ledger kept in `store`.
    pub fn new(store: Arc<dyn LedgerStore>) -> Self {
        Ledger { store }
    }

    /// Refuses a price book that changed a list some closed period was rated with.
    pub async fn check_price_book(&self, book: &PriceBook) -> Result<(), Error> {
        for UsedList { version, digest, first_period: period } in self.store.price_lists().await? {
            match book.version(&version) {
                Some(l) if l.digest() == digest => {}
                Some(_) => {
                    return Err(Error::PriceBook(format!(
                        "price list {version} changed after it rated the closed period {period}: restore it and add \
                         a [[list]] with a later effective date instead"
                    )));
                }
                None => {
                    return Err(Error::PriceBook(format!(
                        "price list {version} is gone, but it rated the closed period {period}: restore it"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Creates a subscription for `tenant`, refused while the tenant has another that has not
    /// expired (usage is per tenant: two would bill it twice).
    pub async fn create(
        &self,
        tenant: &str,
        setup: Setup,
        at_us: i64,
        by: &str,
        list: &PriceList,
    ) -> Result<Subscription, Error> {
        let id = format!("sub_{}", hex::encode(rand::random::<[u8; 12]>()));
        let sub = Subscription::create(&id, tenant, &setup, at_us, by, list)?;
        let admit: Admit = Box::new(move |others| admit_new(others, at_us));
        let sub = self.store.insert_subscription(sub, at_us, admit).await?;
        metrics::counter!(crate::metric::SUBSCRIPTION_CHANGES, "action" => "create").increment(1);
        Ok(sub)
    }

    /// Applies `command` at `at_us` to subscription `id`.
    pub async fn apply(
        &self,
        id: &str,
        command: Command,
        at_us: i64,
        by: &str,
        list: PriceList,
    ) -> Result<Subscription, Error> {
        let name = command.name();
        let by = by.to_string();
        let change: Change = Box::new(move |sub| Ok(sub.apply(&command, at_us, &by, &list)?));
        let sub = self.store.update_subscription(id.to_string(), at_us, change).await?;
        metrics::counter!(crate::metric::SUBSCRIPTION_CHANGES, "action" => name).increment(1);
        Ok(sub)
    }

    /// Subscription `id`.
    pub async fn get(&self, id: &str) -> Result<Subscription, Error> {
        self.store.subscription(id.to_string()).await?.ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// Every subscription (of `tenant`, when given), oldest first.
    pub async fn list(&self, tenant: Option<&str>) -> Result<Vec<Subscription>, Error> {
        self.store.subscriptions(tenant.map(str::to_string)).await
    }

    /// The subscriptions of the next `tenants` tenants after `after`
    /// ([`LedgerStore::subscriptions_after`]).
    pub async fn subscriptions_after(
        &self,
        after: Option<String>,
        tenants: usize,
        before_us: i64,
    ) -> Result<Vec<Subscription>, Error> {
        self.store.subscriptions_after(after, tenants, before_us).await
    }

    /// The close of `period`, if it was closed.
    pub async fn close_of(&self, period: Period) -> Result<Option<Close>, Error> {
        self.store.close_of(period).await
    }

    /// A page of the close of `period`'s `rows` ([`LedgerStore::close_rows`]).
    pub async fn close_rows(
        &self,
        period: Period,
        rows: Rows,
        from: usize,
        limit: usize,
    ) -> Result<Option<Page>, Error> {
        self.store.close_rows(period, rows, from, limit).await
    }

    /// What every recorded close rated, oldest first (their invoices are not read).
    pub async fn close_summaries(&self) -> Result<Vec<CloseSummary>, Error> {
        self.store.close_summaries().await
    }

    /// Every closed invoice of `tenant`, newest period first.
    pub async fn invoices_of(&self, tenant: &str) -> Result<Vec<meter_rater::Invoice>, Error> {
        self.store.invoices_of(tenant.to_string()).await
    }

    /// The closed invoice `id`.
    pub async fn invoice(&self, id: &str) -> Result<Option<meter_rater::Invoice>, Error> {
        self.store.invoice(id.to_string()).await
    }

    /// Every closed invoice of the periods `from..=to`, oldest period first.
    pub async fn invoices_between(&self, from: Period, to: Period) -> Result<Vec<meter_rater::Invoice>, Error> {
        self.store.invoices_between(from, to).await
    }

    /// Marks `period` as being closed: from now on no change may be dated inside it.
    pub async fn freeze(&self, period: Period) -> Result<(), Error> {
        self.store.freeze(period, meter_schemas::period::now_us()).await
    }

    /// Claims pending sync operations due at `now_us` ([`LedgerStore::claim_operations`]).
    pub async fn claim_operations(&self, now_us: i64, lease_us: i64, limit: usize) -> Result<Vec<Operation>, Error> {
        self.store.claim_operations(now_us, lease_us, limit).await
    }

    /// Extends the claims that are still their worker's ([`LedgerStore::renew_claims`]).
    pub async fn renew_claims(&self, claims: Vec<(i64, i64)>, until_us: i64) -> Result<Vec<i64>, Error> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        self.store.renew_claims(claims, until_us).await
    }

    /// Takes or renews the close lease ([`LedgerStore::lease_close`]).
    pub async fn lease_close(
        &self,
        holder: &str,
        period: Period,
        until_us: i64,
        now_us: i64,
    ) -> Result<Option<CloseHolder>, Error> {
        self.store.lease_close(holder.to_string(), period, until_us, now_us).await
    }

    /// Gives the close lease back, if `holder` holds it.
    pub async fn release_close(&self, holder: &str) -> Result<(), Error> {
        self.store.release_close(holder.to_string()).await
    }

    /// Records what a try of sync operation `id` came to.
    pub async fn settle(&self, id: i64, settle: Settle) -> Result<(), Error> {
        self.store.settle(id, settle).await
    }

    /// Sync operations in `state`, of `period`, oldest first.
    pub async fn operations(&self, state: Option<OpState>, period: Option<Period>) -> Result<Vec<Operation>, Error> {
        self.store.operations(state, period.map(|p| p.to_string())).await
    }

    /// Puts dead sync operation `id` back to pending; [`Error::NoOperation`] when it is not dead.
    pub async fn revive(&self, id: i64, now_us: i64) -> Result<(), Error> {
        match self.store.revive(id, now_us).await? {
            true => Ok(()),
            false => Err(Error::NoOperation(format!("dead outbox operation {id}"))),
        }
    }

    /// What the payment provider calls `tenant`, once recorded.
    pub async fn remote_customer(&self, tenant: &str) -> Result<Option<RemoteCustomer>, Error> {
        self.store.remote_customer(tenant.to_string()).await
    }

    /// Records what the payment provider calls a tenant.
    pub async fn record_remote_customer(&self, remote: RemoteCustomer) -> Result<(), Error> {
        self.store.record_remote_customer(remote).await
    }

    /// The store behind the ledger (for the sync stage's state).
    pub fn store(&self) -> &Arc<dyn LedgerStore> {
        &self.store
    }

    /// The close of `period` without its rows, if it was closed.
    pub async fn closed(&self, period: Period) -> Result<Option<Closed>, Error> {
        self.store.closed(period).await
    }

    /// Records the close `header` with its rows as they come from `parts`
    /// ([`LedgerStore::record`]) unless the period was closed meanwhile; returns the close that
    /// stands.
    pub async fn record_parts(&self, header: Close, list: &PriceList, parts: Parts) -> Result<Closed, Error> {
        let (period, closed_us) = (header.period, header.closed_us);
        let stands = self.store.record(header, list.version.clone(), list.digest(), parts).await?;
        if stands.header.closed_us != closed_us {
            tracing::info!(%period, "period was closed meanwhile; keeping that close");
        }
        Ok(stands)
    }

    /// Records `close`, held whole, unless the period was closed meanwhile; returns the close
    /// that stands, as it reads back.
    pub async fn record(&self, close: Close, list: &PriceList) -> Result<Close, Error> {
        let period = close.period;
        let (mut header, invoices, report) = apart(close);
        let totals = std::mem::take(&mut header.totals);
        let (tx, parts) = tokio::sync::mpsc::channel(2);
        // Both parts fit the channel: sent before the recording reads them.
        let sent = tx.try_send(Part::Rows(invoices, report)).and_then(|()| tx.try_send(Part::End(totals)));
        sent.map_err(|e| Error::Task(format!("the close's parts: {e}")))?;
        drop(tx);
        self.record_parts(header, list, parts).await?;
        self.close_of(period).await?.ok_or_else(|| Error::Corrupt(format!("the close of {period} is gone")))
    }
}

/// A close taken apart for recording: its body without invoices and report, which the backends
/// keep as rows of their own (the invoices in the order of the close: by tenant, then id).
pub(crate) fn apart(mut close: Close) -> (Close, Vec<meter_rater::Invoice>, Vec<ReportRow>) {
    let (invoices, report) = (std::mem::take(&mut close.invoices), std::mem::take(&mut close.report));
    (close, invoices, report)
}

/// Where a recording is in a close's rows: the positions the next part starts at, and how many
/// of the report rows differ.
#[derive(Default)]
pub(crate) struct Written {
    pub invoices: usize,
    pub rows: usize,
    pub differences: usize,
}

impl Written {
    /// Past a part of `invoices` and `report` rows.
    pub fn add(&mut self, invoices: &[meter_rater::Invoice], report: &[ReportRow]) {
        self.invoices += invoices.len();
        self.rows += report.len();
        self.differences += report.iter().filter(|r| r.differs()).count();
    }

    /// The close `header` with the rows written.
    pub fn closed(&self, header: Close) -> Closed {
        Closed { header, invoices: self.invoices, differences: self.differences }
    }
}

/// What a recording whose parts stopped before their end fails with.
pub(crate) fn stopped(period: &str) -> Error {
    Error::Task(format!("the close of {period} stopped before its end; nothing of it was recorded"))
}
