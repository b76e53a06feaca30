//! Postgres plumbing shared by meter's shared-state backends (keys, the live usage store, the
//! billing ledger, webhooks): a URL whose password never prints ([`PgUrl`]), a connection pool
//! with a runtime of its own so that blocking ports can call it from a plain thread or from async
//! code ([`Pg`]), and versioned migrations per component ([`migrate`], [`check`]).

mod migrate;
#[cfg(feature = "testing")]
pub mod testing;
mod url;

pub use deadpool_postgres;
pub use migrate::{check, migrate, version};
pub use tokio_postgres;
pub use url::PgUrl;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// Errors of the Postgres plumbing. None carries a password.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state URL cannot be used.
    #[error("state URL: {0}")]
    Url(String),
    /// No connection could be made (unreachable, refused, wrong password, no such database).
    #[error("cannot connect to Postgres at {url}: {reason}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// What the server or the network said.
        reason: String,
    },
    /// Postgres refused or failed a statement.
    #[error("postgres: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A component's schema in the database was written by a newer meter.
    #[error(
        "the Postgres database at {url} has {component} schema version {found}, newer than this meter knows \
         ({known}); upgrade meter"
    )]
    NewerSchema {
        /// The URL, without its password.
        url: String,
        /// Which component's tables.
        component: String,
        /// Version in the database.
        found: i64,
        /// Newest version this build knows.
        known: i64,
    },
    /// A component's schema is missing or older than this build needs.
    #[error(
        "the Postgres database at {url} has {component} schema version {found}; this meter needs version {known}: \
         run `meter migrate --state {url}` first"
    )]
    OlderSchema {
        /// The URL, without its password.
        url: String,
        /// Which component's tables.
        component: String,
        /// Version in the database (0: none).
        found: i64,
        /// Version this build needs.
        known: i64,
    },
}

impl Error {
    /// Whether the error is Postgres's `SQLSTATE` `code` (for example `23505`, a unique
    /// violation).
    pub fn is_code(&self, code: &str) -> bool {
        matches!(self, Error::Postgres(e) if e.code().is_some_and(|c| c.code() == code))
    }
}

/// How many connections one process keeps at most.
pub const MAX_CONNECTIONS: usize = 8;
/// How long a connection may take to open, and a caller may wait for a free one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One process's connections to the state database, shared by its backends.
pub struct Pg {
    pool: Pool,
    url: PgUrl,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg").field("url", &self.url).finish_non_exhaustive()
    }
}

/// Turns the server's JIT off on a new connection (a session setting: a pooler in session mode
/// keeps it; one in transaction mode cannot, as it cannot keep meter's prepared statements either,
/// and is not supported). meter's statements read and write by key, but a batch's arrays are planned at
/// their real length, and the lookup of 40,000 ids then cost past `jit_above_cost`: each such
/// batch compiled its statement, about 21 ms of the server's CPU, a quarter of that statement's
/// time (`STATEMENTS=1 benches/postgres.sh`; BENCHMARKS.md). A server that refuses the setting
/// (before Postgres 11, or one that forbids it) keeps its own: the connection is still used.
async fn no_jit(client: &mut deadpool_postgres::ClientWrapper) -> Result<(), deadpool_postgres::HookError> {
    if let Err(e) = client.batch_execute("SET jit = off").await {
        tracing::warn!(error = %e, "the Postgres server did not take `SET jit = off`; large batches may spend its CPU compiling");
    }
    Ok(())
}

impl Pg {
    /// Connects to `url` with at most `max` connections, and checks that one connection opens
    /// (a clear error naming the URL, never its password, when it does not).
    pub fn connect(url: &PgUrl, max: usize) -> Result<Self, Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("meter-postgres")
            .enable_all()
            .build()
            .map_err(|e| Error::Connect { url: url.to_string(), reason: format!("cannot start a runtime: {e}") })?;
        let mut config = url.config();
        config.connect_timeout(CONNECT_TIMEOUT).application_name("meter");
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        // The pool's timers and connections run on the runtime of whoever awaits it: always
        // this one (`block`, `spawn`). The connection given back last is handed out next, so a
        // role that uses one at a time keeps one warm (statements prepared, plans settled, the
        // server's caches filled); taken in turn, every connection was warmed by a batch in turn.
        let pool = Pool::builder(manager)
            .max_size(max.max(1))
            .queue_mode(deadpool_postgres::QueueMode::Lifo)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .post_create(deadpool_postgres::Hook::async_fn(|client, _| Box::pin(no_jit(client))))
            .build()
            .map_err(|e| Error::Connect { url: url.to_string(), reason: e.to_string() })?;
        let pg = Self { pool, url: url.clone(), rt: Some(rt) };
        pg.block(async { pg.client().await.map(drop) })?;
        Ok(pg)
    }

    /// The URL, whose `Display` leaves out the password.
    pub fn url(&self) -> &PgUrl {
        &self.url
    }

    /// A connection from the pool. Call it on the pool's runtime (inside [`Pg::block`] or
    /// [`Pg::spawn`]).
    pub async fn client(&self) -> Result<Object, Error> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) if e.as_db_error().is_some() => Error::Connect {
                url: self.url.to_string(),
                reason: e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default(),
            },
            PoolError::Backend(e) => Error::Connect { url: self.url.to_string(), reason: reason(&e) },
            PoolError::Timeout(_) => Error::Connect {
                url: self.url.to_string(),
                reason: format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
            },
            other => Error::Connect { url: self.url.to_string(), reason: other.to_string() },
        })
    }

    /// Runs one statement on a pooled connection and waits; the number of rows it changed.
    pub fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        self.block(async { Ok(self.client().await?.execute(sql, params).await?) })
    }

    /// Runs one query on a pooled connection and waits; its rows.
    pub fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        self.block(async { Ok(self.client().await?.query(sql, params).await?) })
    }

    /// Runs one query on a pooled connection and waits; its row, if any (more than one is an
    /// error).
    pub fn query_opt(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, Error> {
        self.block(async { Ok(self.client().await?.query_opt(sql, params).await?) })
    }

    /// Runs one query on a pooled connection and waits; its one row.
    pub fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
        self.block(async { Ok(self.client().await?.query_one(sql, params).await?) })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("the runtime lives as long as the pool")
    }

    /// Runs `f` on the pool's runtime and waits for it, from a plain thread or from async code.
    pub fn block<T: Send>(&self, f: impl Future<Output = T> + Send) -> T {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| self.rt().block_on(f)).join().unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        } else {
            self.rt().block_on(f)
        }
    }

    /// Runs `f` with a pooled connection on the pool's runtime, from async code; errors are the
    /// caller's own (a failure to get a connection becomes one through `From`).
    pub async fn with<T, E, F>(self: &Arc<Self>, f: impl FnOnce(Object) -> F + Send + 'static) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let pg = self.clone();
        self.spawn(async move { f(pg.client().await?).await }).await
    }

    /// Runs `f` on the pool's runtime from async code.
    pub async fn spawn<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        self.rt().spawn(f).await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

/// A statement's error in words: the server's message and code, or the innermost cause
/// (tokio-postgres says only "db error" or "error communicating with the server").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => reason(e),
    }
}

/// A connection error in words: the innermost cause (refused, timed out, no such host), which
/// tokio-postgres's own message ("error connecting to server") leaves out.
fn reason(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    text
}

/// A hash of `name` for Postgres's advisory locks: the same on every host and build.
pub fn lock_key(name: &str) -> i64 {
    // FNV-1a, 64 bits: stable, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}
