//! The webhooks' state in SQLite (`webhooks.db`).

use crate::store::{Attempted, Due, Queued, StoredEndpoint, WebhookStore};
use crate::{Delivery, Endpoint, Error};
use async_trait::async_trait;
use meter_schemas::period::format_time;
use meter_sqlite::rusqlite::{Connection, OptionalExtension, params};
use meter_sqlite::{Durability, Shared, migrate, open};
use std::collections::HashMap;
use std::path::Path;

const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE endpoints (
        id TEXT PRIMARY KEY, url TEXT NOT NULL, tenant TEXT, secret TEXT NOT NULL, created_us INTEGER NOT NULL
    );
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY, alert_id TEXT NOT NULL, tenant TEXT NOT NULL, endpoint_id TEXT NOT NULL,
        body TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL, first_us INTEGER,
        next_us INTEGER NOT NULL, last_error TEXT, delivered_us INTEGER,
        UNIQUE (alert_id, endpoint_id)
    );
    CREATE INDEX deliveries_due ON deliveries (state, next_us);
    CREATE TABLE fanned_out (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
",
    "
    -- An endpoint an admin registered for a tenant is not that tenant's to see or change.
    ALTER TABLE endpoints ADD COLUMN by_admin INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until_us INTEGER NOT NULL);
",
];

/// The webhooks' state in one SQLite file, one connection shared by the process.
pub struct SqliteWebhooks {
    conn: Shared,
}

impl SqliteWebhooks {
    /// Opens (creating or upgrading) `webhooks.db` at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let mut conn = open(path, Durability::Full)?;
        migrate(&mut conn, path, MIGRATIONS)?;
        Ok(Self { conn: Shared::new(conn) })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        self.conn.with(f).await
    }
}

impl From<meter_sqlite::rusqlite::Error> for Error {
    fn from(e: meter_sqlite::rusqlite::Error) -> Self {
        Error::Storage(e.into())
    }
}

#[async_trait]
impl WebhookStore for SqliteWebhooks {
    async fn insert_endpoint(&self, e: StoredEndpoint) -> Result<(), Error> {
        self.with(move |c| {
            c.execute(
                "INSERT INTO endpoints (id, url, tenant, secret, created_us, by_admin) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![e.endpoint.id, e.endpoint.url, e.endpoint.tenant, e.secret, e.created_us, e.by_admin],
            )?;
            Ok(())
        })
        .await
    }

    async fn endpoints(&self, tenant: Option<String>) -> Result<Vec<Endpoint>, Error> {
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, url, tenant, created_us FROM endpoints WHERE ?1 IS NULL OR (tenant = ?1 AND by_admin = 0)
                 ORDER BY created_us, id",
            )?;
            let rows = stmt.query_map(params![tenant], |r| {
                Ok(Endpoint { id: r.get(0)?, url: r.get(1)?, tenant: r.get(2)?, created_at: format_time(r.get(3)?) })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn remove_endpoint(&self, id: String, tenant: Option<String>) -> Result<(), Error> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "DELETE FROM endpoints WHERE id = ?1 AND (?2 IS NULL OR (tenant = ?2 AND by_admin = 0))",
                params![id, tenant],
            )?;
            if n == 0 {
                return Err(Error::NotFound(format!("webhook endpoint {id:?}")));
            }
            tx.execute("DELETE FROM deliveries WHERE endpoint_id = ?1 AND state <> 'delivered'", params![id])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn deliveries(
        &self,
        tenant: Option<String>,
        state: Option<String>,
        limit: usize,
    ) -> Result<Vec<Delivery>, Error> {
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT d.id, d.alert_id, d.tenant, d.endpoint_id, d.state, d.attempts, d.next_us, d.last_error
                 FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id
                 WHERE (?1 IS NULL OR (e.tenant = ?1 AND e.by_admin = 0)) AND (?2 IS NULL OR d.state = ?2)
                 ORDER BY d.id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![tenant, state, limit as i64], |r| {
                let state: String = r.get(4)?;
                let next: i64 = r.get(6)?;
                Ok(Delivery {
                    id: r.get::<_, i64>(0)? as u64,
                    alert_id: r.get(1)?,
                    tenant: r.get(2)?,
                    endpoint_id: r.get(3)?,
                    next_attempt: (state == "pending").then(|| format_time(next)),
                    state,
                    attempts: r.get(5)?,
                    last_error: r.get(7)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn retry(&self, id: u64, tenant: Option<String>, now_us: i64) -> Result<(), Error> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let state: Option<String> = tx
                .query_row(
                    "SELECT d.state FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id
                     WHERE d.id = ?1 AND (?2 IS NULL OR (e.tenant = ?2 AND e.by_admin = 0))",
                    params![id as i64, tenant],
                    |r| r.get(0),
                )
                .optional()?;
            match state.as_deref() {
                None => return Err(Error::NotFound(format!("delivery {id}"))),
                Some("dead") => {}
                Some(other) => {
                    return Err(Error::Conflict(format!("delivery {id} is {other}; only a dead one is retried")));
                }
            }
            tx.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, first_us = NULL, next_us = ?2 WHERE id = ?1",
                params![id as i64, now_us],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn lease(&self, name: String, holder: String, until_us: i64, now_us: i64) -> Result<bool, Error> {
        self.with(move |c| {
            let n = c.execute(
                "INSERT INTO leases (name, holder, until_us) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_us = excluded.until_us
                 WHERE leases.holder = excluded.holder OR leases.until_us < ?4",
                params![name, holder, until_us, now_us],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn cursor(&self, name: String) -> Result<u64, Error> {
        self.with(move |c| {
            Ok(c.query_row("SELECT seq FROM fanned_out WHERE name = ?1", params![name], |r| r.get::<_, i64>(0))
                .optional()?
                .unwrap_or(0) as u64)
        })
        .await
    }

    async fn move_cursor(&self, name: String, seq: u64) -> Result<(), Error> {
        self.with(move |c| {
            c.execute(
                "INSERT INTO fanned_out (name, seq) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET seq = max(seq, excluded.seq)",
                params![name, seq as i64],
            )?;
            Ok(())
        })
        .await
    }

    async fn queue(&self, alerts: Vec<Queued>, through_seq: Option<u64>, now_us: i64) -> Result<(), Error> {
        self.with(move |c| {
            let tx = c.transaction()?;
            {
                let mut targets = tx.prepare_cached("SELECT id FROM endpoints WHERE tenant IS NULL OR tenant = ?1")?;
                let mut queue = tx.prepare_cached(
                    "INSERT OR IGNORE INTO deliveries (alert_id, tenant, endpoint_id, body, state, attempts, next_us)
                     VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5)",
                )?;
                for alert in &alerts {
                    let ids = targets.query_map(params![alert.tenant], |r| r.get::<_, String>(0))?;
                    for endpoint in ids {
                        queue.execute(params![alert.alert_id, alert.tenant, endpoint?, alert.body, now_us])?;
                    }
                }
            }
            if let Some(seq) = through_seq {
                tx.execute(
                    "INSERT INTO fanned_out (name, seq) VALUES ('alerts', ?1) ON CONFLICT (name) DO UPDATE SET seq = max(seq, excluded.seq)",
                    params![seq as i64],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn claim(
        &self,
        room: usize,
        per_endpoint: usize,
        mut busy: HashMap<String, usize>,
        now_us: i64,
        until_us: i64,
    ) -> Result<Vec<Due>, Error> {
        // Endpoints at their cap are left out in the query, so that one endpoint's backlog
        // cannot fill the window of due rows.
        let full: Vec<&String> = busy.iter().filter(|(_, n)| **n >= per_endpoint).map(|(e, _)| e).collect();
        let full = serde_json::to_string(&full).unwrap_or_else(|_| "[]".into());
        self.with(move |c| {
            let tx = c.transaction()?;
            let due = {
                let mut stmt = tx.prepare_cached(
                    "SELECT d.id, d.endpoint_id, e.by_admin, d.alert_id, e.url, e.secret, d.body, d.attempts, d.first_us
                     FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id
                     WHERE d.state = 'pending' AND d.next_us <= ?1
                       AND d.endpoint_id NOT IN (SELECT value FROM json_each(?3))
                     ORDER BY d.next_us LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![now_us, (room * per_endpoint * 4) as i64, full], |r| {
                    Ok(Due {
                        id: r.get::<_, i64>(0)? as u64,
                        endpoint_id: r.get(1)?,
                        by_admin: r.get(2)?,
                        alert_id: r.get(3)?,
                        url: r.get(4)?,
                        secret: r.get(5)?,
                        body: r.get(6)?,
                        attempts: r.get(7)?,
                        first_us: r.get(8)?,
                    })
                })?;
                let mut due = Vec::new();
                for d in rows {
                    let d = d?;
                    let n = busy.entry(d.endpoint_id.clone()).or_default();
                    if *n < per_endpoint {
                        *n += 1;
                        due.push(d);
                        if due.len() == room {
                            break;
                        }
                    }
                }
                due
            };
            let mut claim = tx.prepare_cached("UPDATE deliveries SET next_us = ?2 WHERE id = ?1")?;
            for d in &due {
                claim.execute(params![d.id as i64, until_us])?;
            }
            drop(claim);
            tx.commit()?;
            Ok(due)
        })
        .await
    }

    async fn record(&self, id: u64, attempted: Attempted) -> Result<(), Error> {
        self.with(move |c| {
            match attempted {
                Attempted::Delivered { attempts, first_us, at_us } => c.execute(
                    "UPDATE deliveries SET state = 'delivered', attempts = ?2, first_us = ?3, delivered_us = ?4,
                     last_error = NULL WHERE id = ?1",
                    params![id as i64, attempts, first_us, at_us],
                )?,
                Attempted::Failed { attempts, first_us, next_us, dead, error } => c.execute(
                    "UPDATE deliveries SET state = ?2, attempts = ?3, first_us = ?4, next_us = ?5, last_error = ?6
                     WHERE id = ?1",
                    params![id as i64, if dead { "dead" } else { "pending" }, attempts, first_us, next_us, error],
                )?,
            };
            Ok(())
        })
        .await
    }
}
