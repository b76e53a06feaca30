//! The key table in SQLite (`keys.db`). Each call opens its own connection: `meter keys` in
//! another process writes the same file.

use crate::{Error, KeyInfo, KeyTable, Principal, Role, StoredKey};
use meter_sqlite::rusqlite::{Connection, OptionalExtension, params};
use meter_sqlite::{Durability, migrate, open};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MIGRATIONS: &[&str] = &["
    CREATE TABLE keys (
        id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, role TEXT NOT NULL, tenant TEXT,
        created_at TEXT NOT NULL, revoked_at TEXT
    );
"];

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

impl From<meter_sqlite::rusqlite::Error> for Error {
    fn from(e: meter_sqlite::rusqlite::Error) -> Self {
        Error::Storage(e.into())
    }
}
