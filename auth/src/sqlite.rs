//! The key table in SQLite (`keys.db`). Each call opens its own connection: `meter keys` in
//! another process writes the same file.

use crate::session::{SessionInfo, SessionKind, SessionTable, StoredSession};
use crate::{Error, KeyInfo, KeyTable, Principal, Role, StoredKey};
use meter_sqlite::rusqlite::{Connection, OptionalExtension, params};
use meter_sqlite::{Durability, migrate, open};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE keys (
        id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, role TEXT NOT NULL, tenant TEXT,
        created_at TEXT NOT NULL, revoked_at TEXT
    );
",
    // Browser sessions (portal and console): hashes of the link's token and the cookie's secret.
    "
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, tenant TEXT, link_hash TEXT NOT NULL UNIQUE,
        cookie_hash TEXT UNIQUE, created_by TEXT NOT NULL, created_us INTEGER NOT NULL,
        expires_us INTEGER NOT NULL, exchanged_us INTEGER, revoked_us INTEGER
    );
    CREATE INDEX sessions_by_tenant ON sessions (tenant, created_us);
",
];

/// API keys in a SQLite file.
pub struct SqliteKeys {
    path: PathBuf,
}

impl SqliteKeys {
    /// Opens (creating or upgrading) the key table at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let mut conn = open(path, Durability::Full)?;
        migrate(&mut conn, path, MIGRATIONS)?;
        Ok(Self { path: path.to_path_buf() })
    }

    fn conn(&self) -> Result<Connection, Error> {
        Ok(open(&self.path, Durability::Full)?)
    }
}

fn role(text: String) -> Role {
    text.parse().unwrap_or(Role::Read)
}

impl KeyTable for SqliteKeys {
    fn insert(&self, key: &StoredKey) -> Result<(), Error> {
        self.conn()?.execute(
            "INSERT INTO keys (id, hash, role, tenant, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key.id, key.hash, key.role.to_string(), key.tenant, key.created_at],
        )?;
        Ok(())
    }

    fn revoke(&self, id: &str, at: &str) -> Result<bool, Error> {
        let n = self
            .conn()?
            .execute("UPDATE keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL", params![id, at])?;
        Ok(n == 1)
    }

    fn list(&self) -> Result<Vec<KeyInfo>, Error> {
        let conn = self.conn()?;
        let mut stmt =
            conn.prepare("SELECT id, role, tenant, created_at, revoked_at FROM keys ORDER BY created_at, id")?;
        let rows = stmt.query_map([], |r| {
            Ok(KeyInfo {
                id: r.get(0)?,
                role: role(r.get(1)?),
                tenant: r.get(2)?,
                created_at: r.get(3)?,
                revoked_at: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn active(&self) -> Result<HashMap<String, Principal>, Error> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT id, hash, role, tenant FROM keys WHERE revoked_at IS NULL")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(1)?, Principal { key_id: r.get(0)?, role: role(r.get(2)?), tenant: r.get(3)? }))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn is_empty(&self) -> Result<bool, Error> {
        let conn = self.conn()?;
        Ok(conn.query_row("SELECT id FROM keys LIMIT 1", [], |r| r.get::<_, String>(0)).optional()?.is_none())
    }
}

const SESSION_COLUMNS: &str = "id, kind, tenant, created_by, created_us, expires_us, exchanged_us, revoked_us";

fn read_session(r: &meter_sqlite::rusqlite::Row<'_>) -> meter_sqlite::rusqlite::Result<SessionInfo> {
    let kind: String = r.get(1)?;
    Ok(SessionInfo {
        id: r.get(0)?,
        kind: SessionKind::parse(&kind).unwrap_or(SessionKind::Portal),
        tenant: r.get(2)?,
        created_by: r.get(3)?,
        created_us: r.get(4)?,
        expires_us: r.get(5)?,
        exchanged_us: r.get(6)?,
        revoked_us: r.get(7)?,
    })
}

impl SessionTable for SqliteKeys {
    fn insert(&self, s: &StoredSession) -> Result<(), Error> {
        self.conn()?.execute(
            "INSERT INTO sessions (id, kind, tenant, link_hash, created_by, created_us, expires_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![s.id, s.kind.as_str(), s.tenant, s.link_hash, s.created_by, s.created_us, s.expires_us],
        )?;
        Ok(())
    }

    fn exchange(&self, link_hash: &str, cookie_hash: &str, now_us: i64) -> Result<Option<SessionInfo>, Error> {
        let conn = self.conn()?;
        let n = conn.execute(
            "UPDATE sessions SET cookie_hash = ?2, exchanged_us = ?3
             WHERE link_hash = ?1 AND exchanged_us IS NULL AND revoked_us IS NULL AND expires_us > ?3",
            params![link_hash, cookie_hash, now_us],
        )?;
        if n == 0 {
            return Ok(None);
        }
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE link_hash = ?1");
        Ok(conn.query_row(&sql, params![link_hash], read_session).optional()?)
    }

    fn by_cookie(&self, cookie_hash: &str, now_us: i64) -> Result<Option<SessionInfo>, Error> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE cookie_hash = ?1 AND revoked_us IS NULL AND expires_us > ?2"
        );
        Ok(self.conn()?.query_row(&sql, params![cookie_hash, now_us], read_session).optional()?)
    }

    fn revoke(&self, id: &str, now_us: i64) -> Result<bool, Error> {
        let n = self
            .conn()?
            .execute("UPDATE sessions SET revoked_us = ?2 WHERE id = ?1 AND revoked_us IS NULL", params![id, now_us])?;
        Ok(n == 1)
    }

    fn get(&self, id: &str) -> Result<Option<SessionInfo>, Error> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1");
        Ok(self.conn()?.query_row(&sql, params![id], read_session).optional()?)
    }

    fn list(&self, tenant: Option<&str>) -> Result<Vec<SessionInfo>, Error> {
        let conn = self.conn()?;
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE (?1 IS NULL OR tenant = ?1) ORDER BY created_us DESC, id"
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params![tenant], read_session)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl From<meter_sqlite::rusqlite::Error> for Error {
    fn from(e: meter_sqlite::rusqlite::Error) -> Self {
        Error::Storage(e.into())
    }
}
