//! The key table and the browser sessions in Postgres (`--state postgres://…`): the tables of
//! component `keys`, shared by every host. Each call takes a pooled connection; every write is
//! one statement, so two hosts never interleave inside one.

use crate::session::{SessionInfo, SessionKind, SessionTable, StoredSession};
use crate::{Error, KeyInfo, KeyTable, Principal, Role, StoredKey};
use meter_postgres::Pg;
use meter_postgres::tokio_postgres::Row;
use std::collections::HashMap;
use std::sync::Arc;

/// The component's name in `meter_schema_versions`.
pub const COMPONENT: &str = "keys";

/// The `keys` component's migrations, in order (version N is the N-th).
pub const MIGRATIONS: &[&str] = &["
    CREATE TABLE keys (
        id text COLLATE \"C\" PRIMARY KEY, hash text COLLATE \"C\" NOT NULL UNIQUE, role text NOT NULL,
        tenant text COLLATE \"C\", created_at text COLLATE \"C\" NOT NULL, revoked_at text
    );
    CREATE INDEX keys_active ON keys (hash) WHERE revoked_at IS NULL;
    CREATE TABLE sessions (
        id text COLLATE \"C\" PRIMARY KEY, kind text NOT NULL, tenant text COLLATE \"C\",
        link_hash text COLLATE \"C\" NOT NULL UNIQUE, cookie_hash text COLLATE \"C\" UNIQUE,
        created_by text NOT NULL, created_us bigint NOT NULL, expires_us bigint NOT NULL,
        exchanged_us bigint, revoked_us bigint
    );
    CREATE INDEX sessions_by_tenant ON sessions (tenant, created_us);
"];

/// API keys and browser sessions in Postgres.
pub struct PgKeys {
    pg: Arc<Pg>,
}

impl PgKeys {
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

fn role(text: &str) -> Result<Role, Error> {
    text.parse().map_err(|e| Error::Invalid(format!("a stored key: {e}")))
}

fn session(r: &Row) -> Result<SessionInfo, Error> {
    let kind: String = r.get(1);
    Ok(SessionInfo {
        id: r.get(0),
        kind: SessionKind::parse(&kind).ok_or_else(|| Error::Invalid(format!("a stored session's kind {kind:?}")))?,
        tenant: r.get(2),
        created_by: r.get(3),
        created_us: r.get(4),
        expires_us: r.get(5),
        exchanged_us: r.get(6),
        revoked_us: r.get(7),
    })
}

const SESSION_COLUMNS: &str = "id, kind, tenant, created_by, created_us, expires_us, exchanged_us, revoked_us";

impl KeyTable for PgKeys {
    fn insert(&self, key: &StoredKey) -> Result<(), Error> {
        let role = key.role.to_string();
        self.pg.execute(
            "INSERT INTO keys (id, hash, role, tenant, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&key.id, &key.hash, &role, &key.tenant, &key.created_at],
        )?;
        Ok(())
    }

    fn revoke(&self, id: &str, at: &str) -> Result<bool, Error> {
        let n = self.pg.execute("UPDATE keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL", &[&id, &at])?;
        Ok(n == 1)
    }

    fn list(&self) -> Result<Vec<KeyInfo>, Error> {
        let rows =
            self.pg.query("SELECT id, role, tenant, created_at, revoked_at FROM keys ORDER BY created_at, id", &[])?;
        rows.iter()
            .map(|r| {
                Ok(KeyInfo {
                    id: r.get(0),
                    role: role(r.get(1))?,
                    tenant: r.get(2),
                    created_at: r.get(3),
                    revoked_at: r.get(4),
                })
            })
            .collect()
    }

    fn active(&self) -> Result<HashMap<String, Principal>, Error> {
        let rows = self.pg.query("SELECT id, hash, role, tenant FROM keys WHERE revoked_at IS NULL", &[])?;
        rows.iter()
            .map(|r| Ok((r.get(1), Principal { key_id: r.get(0), role: role(r.get(2))?, tenant: r.get(3) })))
            .collect()
    }

    fn is_empty(&self) -> Result<bool, Error> {
        let row = self.pg.query_one("SELECT NOT EXISTS (SELECT 1 FROM keys)", &[])?;
        Ok(row.get(0))
    }
}

impl SessionTable for PgKeys {
    fn insert(&self, s: &StoredSession) -> Result<(), Error> {
        self.pg.execute(
            "INSERT INTO sessions (id, kind, tenant, link_hash, created_by, created_us, expires_us)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&s.id, &s.kind.as_str(), &s.tenant, &s.link_hash, &s.created_by, &s.created_us, &s.expires_us],
        )?;
        Ok(())
    }

    fn exchange(&self, link_hash: &str, cookie_hash: &str, now_us: i64) -> Result<Option<SessionInfo>, Error> {
        // One statement: two hosts exchanging the same link at once give it to one of them.
        let sql = format!(
            "UPDATE sessions SET cookie_hash = $2, exchanged_us = $3
             WHERE link_hash = $1 AND exchanged_us IS NULL AND revoked_us IS NULL AND expires_us > $3
             RETURNING {SESSION_COLUMNS}"
        );
        let row = self.pg.query_opt(&sql, &[&link_hash, &cookie_hash, &now_us])?;
        row.as_ref().map(session).transpose()
    }

    fn by_cookie(&self, cookie_hash: &str, now_us: i64) -> Result<Option<SessionInfo>, Error> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE cookie_hash = $1 AND revoked_us IS NULL AND expires_us > $2"
        );
        let row = self.pg.query_opt(&sql, &[&cookie_hash, &now_us])?;
        row.as_ref().map(session).transpose()
    }

    fn revoke(&self, id: &str, now_us: i64) -> Result<bool, Error> {
        let n = self
            .pg
            .execute("UPDATE sessions SET revoked_us = $2 WHERE id = $1 AND revoked_us IS NULL", &[&id, &now_us])?;
        Ok(n == 1)
    }

    fn get(&self, id: &str) -> Result<Option<SessionInfo>, Error> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1");
        let row = self.pg.query_opt(&sql, &[&id])?;
        row.as_ref().map(session).transpose()
    }

    fn list(&self, tenant: Option<&str>) -> Result<Vec<SessionInfo>, Error> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE ($1::text IS NULL OR tenant = $1)
             ORDER BY created_us DESC, id"
        );
        let rows = self.pg.query(&sql, &[&tenant])?;
        rows.iter().map(session).collect()
    }
}
