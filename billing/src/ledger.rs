//! The ledger (`billing.db`): subscriptions with their audit trails, closed periods with their
//! invoice drafts and reports, and the price-list versions those closes used.

use crate::Error;
use crate::close::Close;
use meter_rater::{Command, PriceBook, PriceList, Setup, State, Subscription};
use meter_schemas::Period;
use meter_sqlite::rusqlite::{Connection, OptionalExtension, params};
use meter_sqlite::{Durability, Shared, migrate, open};
use std::path::Path;

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
];

/// The ledger. Every write is one SQLite transaction; calls block (use the async wrappers).
#[derive(Clone)]
pub struct Ledger {
    conn: Shared,
}

impl Ledger {
    /// Opens (creating or upgrading) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let mut conn = open(path, Durability::Full)?;
        migrate(&mut conn, path, MIGRATIONS)?;
        Ok(Ledger { conn: Shared::new(conn) })
    }

    /// Runs `f` on the connection off the async runtime.
    pub(crate) async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        self.conn.with(f).await
    }

    /// Refuses a price book that changed a list some closed period was rated with.
    pub async fn check_price_book(&self, book: &PriceBook) -> Result<(), Error> {
        let used: Vec<(String, String, String)> = self
            .with(|c| {
                let mut stmt = c.prepare("SELECT version, digest, first_period FROM price_lists ORDER BY version")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        for (version, digest, period) in used {
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
        self.with(move |c| {
            let tx = c.transaction()?;
            check_open(&tx, at_us)?;
            for mut other in load(&tx, "WHERE tenant = ?1", params![sub.tenant])? {
                other.advance(at_us);
                // Expired by `at`, and nothing of it after `at` (a backdated start must not overlap).
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
            tx.execute(
                "INSERT INTO subscriptions (id, tenant, created_us, body) VALUES (?1, ?2, ?3, ?4)",
                params![sub.id, sub.tenant, at_us, serde_json::to_string(&sub)?],
            )?;
            tx.commit()?;
            metrics::counter!(crate::metric::SUBSCRIPTION_CHANGES, "action" => "create").increment(1);
            Ok(sub)
        })
        .await
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
        let (id, by) = (id.to_string(), by.to_string());
        self.with(move |c| {
            let tx = c.transaction()?;
            check_open(&tx, at_us)?;
            let mut sub = load(&tx, "WHERE id = ?1", params![id])?.pop().ok_or_else(|| Error::NotFound(id.clone()))?;
            sub.apply(&command, at_us, &by, &list)?;
            tx.execute("UPDATE subscriptions SET body = ?2 WHERE id = ?1", params![id, serde_json::to_string(&sub)?])?;
            tx.commit()?;
            metrics::counter!(crate::metric::SUBSCRIPTION_CHANGES, "action" => command.name()).increment(1);
            Ok(sub)
        })
        .await
    }

    /// Subscription `id`.
    pub async fn get(&self, id: &str) -> Result<Subscription, Error> {
        let id = id.to_string();
        self.with(move |c| load(c, "WHERE id = ?1", params![id])?.pop().ok_or(Error::NotFound(id))).await
    }

    /// Every subscription (of `tenant`, when given), oldest first.
    pub async fn list(&self, tenant: Option<&str>) -> Result<Vec<Subscription>, Error> {
        let tenant = tenant.map(str::to_string);
        self.with(move |c| match tenant {
            Some(t) => load(c, "WHERE tenant = ?1 ORDER BY created_us, id", params![t]),
            None => load(c, "ORDER BY created_us, id", params![]),
        })
        .await
    }

    /// The close of `period`, if it was closed.
    pub async fn close_of(&self, period: Period) -> Result<Option<Close>, Error> {
        self.with(move |c| {
            let body: Option<String> = c
                .query_row("SELECT body FROM closes WHERE period = ?1", params![period.to_string()], |r| r.get(0))
                .optional()?;
            Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
        })
        .await
    }

    /// Every closed period, oldest first.
    pub async fn closes(&self) -> Result<Vec<Close>, Error> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT body FROM closes ORDER BY period")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for body in rows {
                out.push(serde_json::from_str(&body?)?);
            }
            Ok(out)
        })
        .await
    }

    /// Marks `period` as being closed: from now on no change may be dated inside it.
    pub async fn freeze(&self, period: Period) -> Result<(), Error> {
        self.with(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO freezes (period, since_us) VALUES (?1, ?2)",
                params![period.to_string(), meter_schemas::period::now_us()],
            )?;
            Ok(())
        })
        .await
    }

    /// Records `close` unless the period was closed meanwhile; returns the close that stands.
    pub async fn record(&self, close: Close, list: &PriceList) -> Result<Close, Error> {
        let (version, digest) = (list.version.clone(), list.digest());
        self.with(move |c| {
            let tx = c.transaction()?;
            let period = close.period.to_string();
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO closes (period, closed_us, body) VALUES (?1, ?2, ?3)",
                params![period, close.closed_us, serde_json::to_string(&close)?],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO price_lists (version, digest, first_period) VALUES (?1, ?2, ?3)",
                params![version, digest, period],
            )?;
            let body: String =
                tx.query_row("SELECT body FROM closes WHERE period = ?1", params![period], |r| r.get(0))?;
            tx.commit()?;
            if inserted == 0 {
                tracing::info!(period, "period was closed meanwhile; keeping that close");
            }
            Ok(serde_json::from_str(&body)?)
        })
        .await
    }
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
    use meter_rater::pricebook::SAMPLE;

    const METERS: &[&str] =
        &["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"];

    #[tokio::test]
    async fn a_price_list_that_rated_a_closed_period_may_not_change() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("billing.db")).unwrap();
        let book = PriceBook::parse(SAMPLE, METERS, &["active_users"]).unwrap();
        ledger.check_price_book(&book).await.unwrap();
        let period: Period = "2026-10".parse().unwrap();
        let close = Close {
            period,
            closed_at: String::new(),
            closed_us: 0,
            watermark: String::new(),
            watermark_us: 0,
            complete: true,
            price_version: "2026-01".into(),
            invoices: vec![],
            totals: Default::default(),
            report: vec![],
            revisions: Default::default(),
        };
        ledger.record(close, book.version("2026-01").unwrap()).await.unwrap();
        ledger.check_price_book(&book).await.unwrap();
        let edited = PriceBook::parse(&SAMPLE.replace("\"25.00\"", "\"26.00\""), METERS, &["active_users"]).unwrap();
        let err = ledger.check_price_book(&edited).await.unwrap_err().to_string();
        assert!(err.contains("price list 2026-01 changed after it rated the closed period 2026-10"), "{err}");
        // A new list with a later date is the way to change prices.
        let next = SAMPLE
            .replace("version = \"2026-01\"", "version = \"2027-01\"")
            .replace("effective = 2026-01-01", "effective = 2027-01-01")
            .replace("\"25.00\"", "\"26.00\"");
        let later = PriceBook::parse(&format!("{SAMPLE}\n{next}"), METERS, &["active_users"]).unwrap();
        assert_eq!(later.for_period("2027-03".parse().unwrap()).unwrap().version, "2027-01");
        ledger.check_price_book(&later).await.unwrap();
    }
}
