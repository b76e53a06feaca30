//! The webhooks' state in Postgres (`--state postgres://…`): the tables of component
//! `webhooks`, shared by every host. A claim locks the due rows it reads (`FOR UPDATE SKIP
//! LOCKED`) and hides them until its lease runs out before it commits, so that dispatchers on
//! several hosts never send one delivery at once.

use crate::store::{Attempted, Due, Queued, StoredEndpoint, WebhookStore};
use crate::{Delivery, Endpoint, Error};
use async_trait::async_trait;
use meter_postgres::Pg;
use meter_schemas::period::format_time;
use std::collections::HashMap;
use std::sync::Arc;

/// The component's name in `meter_schema_versions`.
pub const COMPONENT: &str = "webhooks";

/// The `webhooks` component's migrations, in order (version N is the N-th).
pub const MIGRATIONS: &[&str] = &["
    CREATE TABLE endpoints (
        id text COLLATE \"C\" PRIMARY KEY, url text NOT NULL, tenant text COLLATE \"C\", secret text NOT NULL,
        created_us bigint NOT NULL, by_admin boolean NOT NULL DEFAULT false
    );
    CREATE TABLE deliveries (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, alert_id text COLLATE \"C\" NOT NULL,
        tenant text COLLATE \"C\" NOT NULL, endpoint_id text COLLATE \"C\" NOT NULL, body text NOT NULL,
        state text NOT NULL, attempts integer NOT NULL, first_us bigint, next_us bigint NOT NULL,
        last_error text, delivered_us bigint,
        UNIQUE (alert_id, endpoint_id)
    );
    CREATE INDEX deliveries_due ON deliveries (next_us) WHERE state = 'pending';
    CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id);
    CREATE TABLE fanned_out (name text COLLATE \"C\" PRIMARY KEY, seq bigint NOT NULL);
    CREATE TABLE leases (name text COLLATE \"C\" PRIMARY KEY, holder text NOT NULL, until_us bigint NOT NULL);
"];

/// The webhooks' state in Postgres.
pub struct PgWebhooks {
    pg: Arc<Pg>,
}

impl PgWebhooks {
    /// The tables on `pg`, refused unless `meter migrate` has brought them to this build's version.
    pub fn open(pg: Arc<Pg>) -> Result<Self, Error> {
        meter_postgres::check(&pg, COMPONENT, MIGRATIONS.len() as i64)?;
        Ok(Self { pg })
    }

    /// Creates or upgrades the tables (`meter migrate`).
    pub fn migrate(pg: &Pg) -> Result<i64, Error> {
        Ok(meter_postgres::migrate(pg, COMPONENT, MIGRATIONS)?)
    }
}

impl From<meter_postgres::tokio_postgres::Error> for Error {
    fn from(e: meter_postgres::tokio_postgres::Error) -> Self {
        Error::Postgres(e.into())
    }
}

#[async_trait]
impl WebhookStore for PgWebhooks {
    async fn insert_endpoint(&self, e: StoredEndpoint) -> Result<(), Error> {
        self.pg
            .with(async move |c| {
                c.execute(
                "INSERT INTO endpoints (id, url, tenant, secret, created_us, by_admin) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&e.endpoint.id, &e.endpoint.url, &e.endpoint.tenant, &e.secret, &e.created_us, &e.by_admin],
            )
            .await?;
                Ok(())
            })
            .await
    }

    async fn endpoints(&self, tenant: Option<String>) -> Result<Vec<Endpoint>, Error> {
        self.pg
            .with(async move |c| {
                let rows = c
                    .query(
                        "SELECT id, url, tenant, created_us FROM endpoints
                     WHERE $1::text IS NULL OR (tenant = $1 AND NOT by_admin) ORDER BY created_us, id",
                        &[&tenant],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| Endpoint {
                        id: r.get(0),
                        url: r.get(1),
                        tenant: r.get(2),
                        created_at: format_time(r.get(3)),
                    })
                    .collect())
            })
            .await
    }

    async fn remove_endpoint(&self, id: String, tenant: Option<String>) -> Result<(), Error> {
        self.pg
            .with(async move |mut c| {
                let tx = c.transaction().await?;
                let n = tx
                    .execute(
                        "DELETE FROM endpoints WHERE id = $1 AND ($2::text IS NULL OR (tenant = $2 AND NOT by_admin))",
                        &[&id, &tenant],
                    )
                    .await?;
                if n == 0 {
                    return Err(Error::NotFound(format!("webhook endpoint {id:?}")));
                }
                tx.execute("DELETE FROM deliveries WHERE endpoint_id = $1 AND state <> 'delivered'", &[&id]).await?;
                tx.commit().await?;
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
        self.pg.with(async move |c| {
            let rows = c
                .query(
                    "SELECT d.id, d.alert_id, d.tenant, d.endpoint_id, d.state, d.attempts, d.next_us, d.last_error
                     FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id
                     WHERE ($1::text IS NULL OR (e.tenant = $1 AND NOT e.by_admin)) AND ($2::text IS NULL OR d.state = $2)
                     ORDER BY d.id DESC LIMIT $3",
                    &[&tenant, &state, &(limit as i64)],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let state: String = r.get(4);
                    let attempts: i32 = r.get(5);
                    Delivery {
                        id: r.get::<_, i64>(0) as u64,
                        alert_id: r.get(1),
                        tenant: r.get(2),
                        endpoint_id: r.get(3),
                        next_attempt: (state == "pending").then(|| format_time(r.get(6))),
                        state,
                        attempts: attempts as u32,
                        last_error: r.get(7),
                    }
                })
                .collect())
        })
        .await
    }

    async fn retry(&self, id: u64, tenant: Option<String>, now_us: i64) -> Result<(), Error> {
        self.pg
            .with(async move |mut c| {
                let tx = c.transaction().await?;
                let row = tx
                    .query_opt(
                        "SELECT d.state FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id
                     WHERE d.id = $1 AND ($2::text IS NULL OR (e.tenant = $2 AND NOT e.by_admin)) FOR UPDATE OF d",
                        &[&(id as i64), &tenant],
                    )
                    .await?;
                match row.as_ref().map(|r| r.get::<_, &str>(0)) {
                    None => return Err(Error::NotFound(format!("delivery {id}"))),
                    Some("dead") => {}
                    Some(other) => {
                        return Err(Error::Conflict(format!("delivery {id} is {other}; only a dead one is retried")));
                    }
                }
                tx.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, first_us = NULL, next_us = $2 WHERE id = $1",
                &[&(id as i64), &now_us],
            )
            .await?;
                tx.commit().await?;
                Ok(())
            })
            .await
    }

    async fn lease(&self, name: String, holder: String, until_us: i64, now_us: i64) -> Result<bool, Error> {
        self.pg
            .with(async move |c| {
                let n = c
                    .execute(
                        "INSERT INTO leases AS l (name, holder, until_us) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_us = excluded.until_us
                     WHERE l.holder = excluded.holder OR l.until_us < $4",
                        &[&name, &holder, &until_us, &now_us],
                    )
                    .await?;
                Ok(n == 1)
            })
            .await
    }

    async fn cursor(&self, name: String) -> Result<u64, Error> {
        self.pg
            .with(async move |c| {
                let row = c.query_opt("SELECT seq FROM fanned_out WHERE name = $1", &[&name]).await?;
                Ok(row.map_or(0, |r| r.get::<_, i64>(0)) as u64)
            })
            .await
    }

    async fn move_cursor(&self, name: String, seq: u64) -> Result<(), Error> {
        self.pg
            .with(async move |c| {
                c.execute(
                    "INSERT INTO fanned_out AS f (name, seq) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET seq = GREATEST(f.seq, excluded.seq)",
                    &[&name, &(seq as i64)],
                )
                .await?;
                Ok(())
            })
            .await
    }

    async fn queue(&self, alerts: Vec<Queued>, through_seq: Option<u64>, now_us: i64) -> Result<(), Error> {
        self.pg
            .with(async move |mut c| {
                let ids: Vec<&str> = alerts.iter().map(|a| a.alert_id.as_str()).collect();
                let tenants: Vec<&str> = alerts.iter().map(|a| a.tenant.as_str()).collect();
                let bodies: Vec<&str> = alerts.iter().map(|a| a.body.as_str()).collect();
                let tx = c.transaction().await?;
                tx.execute(
                    "INSERT INTO deliveries (alert_id, tenant, endpoint_id, body, state, attempts, next_us)
                 SELECT a.alert_id, a.tenant, e.id, a.body, 'pending', 0, $4
                 FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS a(alert_id, tenant, body, n)
                 JOIN endpoints e ON e.tenant IS NULL OR e.tenant = a.tenant
                 ORDER BY a.n, e.created_us, e.id
                 ON CONFLICT (alert_id, endpoint_id) DO NOTHING",
                    &[&ids, &tenants, &bodies, &now_us],
                )
                .await?;
                if let Some(seq) = through_seq {
                    tx.execute(
                        "INSERT INTO fanned_out AS f (name, seq) VALUES ('alerts', $1)
                     ON CONFLICT (name) DO UPDATE SET seq = GREATEST(f.seq, excluded.seq)",
                        &[&(seq as i64)],
                    )
                    .await?;
                }
                tx.commit().await?;
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
        // cannot fill the window of due rows. Rows another dispatcher is claiming are skipped,
        // and those it claimed are no longer due once it commits.
        let full: Vec<String> = busy.iter().filter(|(_, n)| **n >= per_endpoint).map(|(e, _)| e.clone()).collect();
        self.pg
            .with(async move |mut c| {
                let tx = c.transaction().await?;
                let rows = tx
                .query(
                    "SELECT d.id, d.endpoint_id, e.by_admin, d.alert_id, e.url, e.secret, d.body, d.attempts, d.first_us
                     FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id
                     WHERE d.state = 'pending' AND d.next_us <= $1 AND d.endpoint_id <> ALL($3::text[])
                     ORDER BY d.next_us, d.id LIMIT $2
                     FOR UPDATE OF d SKIP LOCKED",
                    &[&now_us, &((room * per_endpoint * 4) as i64), &full],
                )
                .await?;
                let mut due = Vec::new();
                for r in &rows {
                    let endpoint_id: String = r.get(1);
                    let n = busy.entry(endpoint_id.clone()).or_default();
                    if *n < per_endpoint {
                        *n += 1;
                        let attempts: i32 = r.get(7);
                        due.push(Due {
                            id: r.get::<_, i64>(0) as u64,
                            endpoint_id,
                            by_admin: r.get(2),
                            alert_id: r.get(3),
                            url: r.get(4),
                            secret: r.get(5),
                            body: r.get(6),
                            attempts: attempts as u32,
                            first_us: r.get(8),
                        });
                        if due.len() == room {
                            break;
                        }
                    }
                }
                let claimed: Vec<i64> = due.iter().map(|d| d.id as i64).collect();
                tx.execute("UPDATE deliveries SET next_us = $2 WHERE id = ANY($1)", &[&claimed, &until_us]).await?;
                tx.commit().await?;
                Ok(due)
            })
            .await
    }

    async fn record(&self, id: u64, attempted: Attempted) -> Result<(), Error> {
        self.pg
            .with(async move |c| {
                match attempted {
                Attempted::Delivered { attempts, first_us, at_us } => {
                    c.execute(
                        "UPDATE deliveries SET state = 'delivered', attempts = $2, first_us = $3, delivered_us = $4,
                         last_error = NULL WHERE id = $1",
                        &[&(id as i64), &(attempts as i32), &first_us, &at_us],
                    )
                    .await?
                }
                Attempted::Failed { attempts, first_us, next_us, dead, error } => {
                    c.execute(
                        "UPDATE deliveries SET state = $2, attempts = $3, first_us = $4, next_us = $5, last_error = $6
                         WHERE id = $1",
                        &[
                            &(id as i64),
                            &if dead { "dead" } else { "pending" },
                            &(attempts as i32),
                            &first_us,
                            &next_us,
                            &error,
                        ],
                    )
                    .await?
                }
            };
                Ok(())
            })
            .await
    }
}
