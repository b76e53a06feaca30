//! API keys: 256 random bits, shown once, stored only as SHA-256, each with a role and (for
//! tenant keys) a tenant.
//!
//! The server keeps the key table in memory ([`KeyStore`]) and reloads it from its storage (the
//! [`KeyTable`] port: SQLite's `keys.db` by default) at most every second, so a check is a hash
//! and a map look-up, and `meter keys create` or `revoke` take effect within a second.

pub mod contract;
mod postgres;
pub mod session;
mod sqlite;
mod table;

pub use postgres::PgKeys;
pub use session::{SessionKind, SessionTable, Sessions};
pub use sqlite::SqliteKeys;
pub use table::{KeyTable, StoredKey};

use base64::Engine;
use meter_schemas::envelope::check_id;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Prefix of every key, so that leaked keys are easy to find by scanners.
pub const KEY_PREFIX: &str = "mtr_";
/// How stale the in-memory key table may get before a check reloads it.
const RELOAD_AFTER: Duration = Duration::from_secs(1);
/// Least time between reloads forced by unknown keys.
const MISS_RELOAD_GAP: Duration = Duration::from_millis(100);

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Send events.
    Ingest,
    /// Read one tenant's usage.
    Read,
    /// Everything, for every tenant.
    Admin,
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ingest" => Ok(Role::Ingest),
            "read" => Ok(Role::Read),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?}: use ingest, read or admin")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Ingest => "ingest",
            Role::Read => "read",
            Role::Admin => "admin",
        })
    }
}

/// Who is calling: the key's id, role and tenant scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// Public id of the key (safe to log).
    pub key_id: String,
    /// What the key may do.
    pub role: Role,
    /// The only tenant the key may act for; `None` for service and admin keys.
    pub tenant: Option<String>,
}

impl Principal {
    /// The tenant this caller may read: its own, or (admin, or a service key) the one asked for.
    pub fn readable_tenant(&self, asked: Option<&str>) -> Result<String, AuthError> {
        match (&self.tenant, asked) {
            (Some(own), Some(a)) if own != a => Err(AuthError::OtherTenant),
            (Some(own), _) => Ok(own.clone()),
            (None, Some(a)) => Ok(a.to_string()),
            (None, None) => Err(AuthError::TenantRequired),
        }
    }
}

/// A key as listed (never the secret).
#[derive(Clone, Debug, Serialize)]
pub struct KeyInfo {
    /// Public id.
    pub id: String,
    /// Role.
    pub role: Role,
    /// Tenant scope.
    pub tenant: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, when revoked.
    pub revoked_at: Option<String>,
}

/// A key just created. The secret exists only here.
pub struct NewKey {
    /// Public id.
    pub id: String,
    /// The key itself, to show once.
    pub secret: String,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

/// Why a call is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Missing, malformed, unknown or revoked key: all alike, on purpose.
    #[error("missing, malformed, unknown or revoked API key")]
    Unauthenticated,
    /// The key's role may not do this.
    #[error("an API key with role {have} may not {action}")]
    WrongRole {
        /// The key's role.
        have: Role,
        /// What was attempted.
        action: &'static str,
    },
    /// The key belongs to another tenant.
    #[error("this API key belongs to another tenant")]
    OtherTenant,
    /// A key with no tenant must say which tenant.
    #[error("tenant is required with a key that is not scoped to one tenant")]
    TenantRequired,
    /// The key store failed.
    #[error("key store unavailable: {0}")]
    Unavailable(String),
    /// A browser session's request that changes something did not come from this site's pages.
    #[error("a browser session's request that changes something must come from meter's own pages")]
    CrossOrigin,
}

/// Errors of key management.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad argument.
    #[error("{0}")]
    Invalid(String),
    /// Work off the async runtime panicked or was cancelled.
    #[error("{0}")]
    Task(String),
    /// The storage underneath failed.
    #[error(transparent)]
    Storage(#[from] meter_sqlite::Error),
    /// The shared state in Postgres failed.
    #[error(transparent)]
    Postgres(#[from] meter_postgres::Error),
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn now_text() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

struct Loaded {
    by_hash: HashMap<String, Principal>,
    at: Instant,
}

/// The key table, cached in memory in front of its storage.
pub struct KeyStore {
    table: Arc<dyn KeyTable>,
    loaded: RwLock<Loaded>,
    last_miss_reload: Mutex<Instant>,
    /// One reload at a time; callers that find one under way wait for it rather than start another.
    reloading: tokio::sync::Mutex<()>,
}

impl KeyStore {
    /// Opens (creating if needed) the SQLite key table at `path`.
    pub fn open(path: &Path) -> Result<Arc<Self>, Error> {
        Self::new(Arc::new(SqliteKeys::open(path)?))
    }

    /// The keys stored in `table`, loaded once now.
    pub fn new(table: Arc<dyn KeyTable>) -> Result<Arc<Self>, Error> {
        let store = Self {
            table,
            loaded: RwLock::new(Loaded { by_hash: HashMap::new(), at: Instant::now() }),
            last_miss_reload: Mutex::new(Instant::now() - MISS_RELOAD_GAP),
            reloading: tokio::sync::Mutex::new(()),
        };
        store.reload()?;
        Ok(Arc::new(store))
    }

    /// Creates a key. A tenant key's tenant must be a valid id; an ingest key without a tenant is
    /// a service key, which must name the tenant of every event.
    pub fn create(&self, role: Role, tenant: Option<&str>) -> Result<NewKey, Error> {
        if let Some(t) = tenant {
            check_id(t).map_err(|m| Error::Invalid(format!("tenant {m}")))?;
        }
        if role == Role::Read && tenant.is_none() {
            return Err(Error::Invalid("a read key needs --tenant (an admin key reads every tenant)".into()));
        }
        if role == Role::Admin && tenant.is_some() {
            return Err(Error::Invalid("an admin key acts for every tenant; drop --tenant".into()));
        }
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        let secret = format!("{KEY_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
        let digest = hash(&secret);
        let id = format!("key_{}", &digest[..12]);
        self.table.insert(&StoredKey {
            id: id.clone(),
            hash: digest,
            role,
            tenant: tenant.map(str::to_string),
            created_at: now_text(),
        })?;
        self.reload()?;
        Ok(NewKey { id, secret })
    }

    /// Revokes the key with this id; false when there is no such key.
    pub fn revoke(&self, id: &str) -> Result<bool, Error> {
        let revoked = self.table.revoke(id, &now_text())?;
        self.reload()?;
        Ok(revoked)
    }

    /// Every key, oldest first.
    pub fn list(&self) -> Result<Vec<KeyInfo>, Error> {
        self.table.list()
    }

    /// Whether no key has ever been created.
    pub fn is_empty(&self) -> Result<bool, Error> {
        self.table.is_empty()
    }

    fn reload(&self) -> Result<(), Error> {
        // Dated when the read starts: a key made during the read may be missing from it.
        let at = Instant::now();
        let by_hash = self.table.active()?;
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Loaded { by_hash, at };
        Ok(())
    }

    fn lookup(&self, digest: &str) -> (Option<Principal>, bool) {
        let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        (loaded.by_hash.get(digest).cloned(), loaded.at.elapsed() > RELOAD_AFTER)
    }

    /// Checks an `Authorization` header value (`Bearer <key>`).
    pub async fn authenticate(self: &Arc<Self>, header: Option<&str>) -> Result<Principal, AuthError> {
        let secret = header
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, k)| k.trim())
            .filter(|k| k.starts_with(KEY_PREFIX) && k.len() < 200)
            .ok_or(AuthError::Unauthenticated)?;
        let digest = hash(secret);
        let arrived = Instant::now();
        let (found, stale) = self.lookup(&digest);
        if found.is_some() && !stale {
            return found.ok_or(AuthError::Unauthenticated);
        }
        // One reload at a time; a request that waited for another's finds its answer in it.
        let _one = self.reloading.lock().await;
        let (again, loaded_at) = {
            let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
            (loaded.by_hash.get(&digest).cloned(), loaded.at)
        };
        if let Some(p) = &again
            && loaded_at.elapsed() <= RELOAD_AFTER
        {
            return Ok(p.clone());
        }
        if found.is_none() {
            if loaded_at >= arrived {
                // Loaded after this request arrived: the key did not exist then.
                return Err(AuthError::Unauthenticated);
            }
            // An unknown key (one just made on another host, or a wrong one) reloads the table
            // at most once per gap: this request waits for its turn rather than being refused
            // a key made before it arrived.
            let since = self.last_miss_reload.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
            if since < MISS_RELOAD_GAP {
                tokio::time::sleep(MISS_RELOAD_GAP - since).await;
            }
            *self.last_miss_reload.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
        let this = self.clone();
        let reloaded = tokio::task::spawn_blocking(move || this.reload())
            .await
            .unwrap_or_else(|e| Err(Error::Task(format!("the key table's reload task failed: {e}"))));
        match (reloaded, found) {
            (Ok(()), _) => self.lookup(&digest).0.ok_or(AuthError::Unauthenticated),
            // The table cannot be read now: a key known a moment ago still works.
            (Err(e), Some(p)) => {
                tracing::warn!(error = %e, "key table reload failed; using the cached table");
                Ok(p)
            }
            (Err(e), None) => Err(AuthError::Unavailable(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key made by another process (another host), used by many requests at once: each is
    /// accepted, not only the one whose miss reloaded the table.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_key_made_elsewhere_works_for_concurrent_first_requests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let serving = KeyStore::open(&path).unwrap();
        for round in 0..5 {
            let k = KeyStore::open(&path).unwrap().create(Role::Ingest, Some("acme")).unwrap();
            let header = format!("Bearer {}", k.secret);
            let tries: Vec<_> = (0..8)
                .map(|_| {
                    let (serving, header) = (serving.clone(), header.clone());
                    tokio::spawn(async move { serving.authenticate(Some(&header)).await })
                })
                .collect();
            for t in tries {
                assert!(t.await.unwrap().is_ok(), "round {round}");
            }
        }
    }

    #[tokio::test]
    async fn keys_are_hashed_scoped_and_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::open(&dir.path().join("keys.db")).unwrap();
        assert!(keys.is_empty().unwrap());
        let k = keys.create(Role::Ingest, Some("acme")).unwrap();
        assert!(k.secret.starts_with(KEY_PREFIX) && k.secret.len() >= 40);
        assert!(!format!("{k:?}").contains(&k.secret));
        let header = format!("Bearer {}", k.secret);
        let p = keys.authenticate(Some(&header)).await.unwrap();
        assert_eq!((p.role, p.tenant.as_deref()), (Role::Ingest, Some("acme")));
        // Only the hash is on disk.
        let raw = std::fs::read(dir.path().join("keys.db")).unwrap();
        assert!(!raw.windows(k.secret.len()).any(|w| w == k.secret.as_bytes()));
        for bad in [None, Some("Bearer"), Some("Basic abc"), Some("Bearer mtr_unknown"), Some("bearer x")] {
            assert_eq!(keys.authenticate(bad).await, Err(AuthError::Unauthenticated), "{bad:?}");
        }
        assert!(keys.revoke(&k.id).unwrap());
        assert_eq!(keys.authenticate(Some(&header)).await, Err(AuthError::Unauthenticated));
    }

    #[tokio::test]
    async fn a_key_created_by_another_process_works_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let server = KeyStore::open(&dir.path().join("keys.db")).unwrap();
        let cli = KeyStore::open(&dir.path().join("keys.db")).unwrap();
        let k = cli.create(Role::Admin, None).unwrap();
        let p = server.authenticate(Some(&format!("Bearer {}", k.secret))).await.unwrap();
        assert_eq!(p.role, Role::Admin);
    }

    #[tokio::test]
    async fn revocation_by_another_process_takes_effect_and_a_failed_reload_keeps_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let server = KeyStore::open(&path).unwrap();
        let cli = KeyStore::open(&path).unwrap();
        let (kept, revoked) = (cli.create(Role::Admin, None).unwrap(), cli.create(Role::Read, Some("a")).unwrap());
        let header = |k: &NewKey| format!("Bearer {}", k.secret);
        assert!(server.authenticate(Some(&header(&revoked))).await.is_ok());
        cli.revoke(&revoked.id).unwrap();
        std::thread::sleep(RELOAD_AFTER + Duration::from_millis(100));
        assert_eq!(server.authenticate(Some(&header(&revoked))).await, Err(AuthError::Unauthenticated));

        // The table cannot be read any more: known keys still work, unknown ones get a 503, not a 401.
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        std::thread::sleep(RELOAD_AFTER + Duration::from_millis(100));
        assert!(server.authenticate(Some(&header(&kept))).await.is_ok());
        let unknown = server.authenticate(Some("Bearer mtr_unknown")).await;
        assert!(matches!(unknown, Err(AuthError::Unavailable(_))), "{unknown:?}");
    }

    #[test]
    fn scopes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::open(&dir.path().join("keys.db")).unwrap();
        assert!(keys.create(Role::Read, None).is_err());
        assert!(keys.create(Role::Admin, Some("a")).is_err());
        assert!(keys.create(Role::Ingest, Some("bad tenant")).is_err());
        let reader = Principal { key_id: "k".into(), role: Role::Read, tenant: Some("a".into()) };
        assert_eq!(reader.readable_tenant(None), Ok("a".into()));
        assert_eq!(reader.readable_tenant(Some("b")), Err(AuthError::OtherTenant));
        let admin = Principal { key_id: "k".into(), role: Role::Admin, tenant: None };
        assert_eq!(admin.readable_tenant(None), Err(AuthError::TenantRequired));
    }
}
