//! Versioned schemas, one per component (`keys`, `store`, `ledger`, `webhooks`) in one database.
//! Version N is the N-th migration of the component's list; `meter_schema_versions` keeps one
//! row per migration applied. Only `meter migrate` applies migrations; a process opening the
//! database checks the version and refuses one it does not know.

use crate::{Error, Pg, lock_key};

const VERSIONS: &str = "
    CREATE TABLE IF NOT EXISTS meter_schema_versions (
        component text COLLATE \"C\" NOT NULL,
        version bigint NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (component, version)
    )";

/// The component's schema version in the database (0 when it has none).
pub async fn version(pg: &Pg, component: &str) -> Result<i64, Error> {
    let client = pg.client().await?;
    let exists: Option<String> =
        client.query_one("SELECT to_regclass('meter_schema_versions')::text", &[]).await?.get(0);
    if exists.is_none() {
        return Ok(0);
    }
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM meter_schema_versions WHERE component = $1", &[&component])
        .await?;
    Ok(row.get(0))
}

/// Creates or upgrades `component`'s tables: applies, each in a transaction of its own with its
/// version row, the migrations the database lacks. Two processes migrating at once take turns
/// (an advisory lock), so each migration runs once. A database at a newer version than
/// `migrations` knows is refused. Returns the version the database is at now.
pub fn migrate(pg: &Pg, component: &str, migrations: &[&str]) -> Result<i64, Error> {
    pg.block(async {
        let mut client = pg.client().await?;
        let key = lock_key("meter-migrate");
        client.execute("SELECT pg_advisory_lock($1)", &[&key]).await?;
        let result = async {
            client.batch_execute(VERSIONS).await?;
            let found: i64 = client
                .query_one(
                    "SELECT coalesce(max(version), 0) FROM meter_schema_versions WHERE component = $1",
                    &[&component],
                )
                .await?
                .get(0);
            let known = migrations.len() as i64;
            if found > known {
                return Err(Error::NewerSchema {
                    url: pg.url().to_string(),
                    component: component.into(),
                    found,
                    known,
                });
            }
            for (i, sql) in migrations.iter().enumerate().skip(found as usize) {
                let version = i as i64 + 1;
                let tx = client.transaction().await?;
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO meter_schema_versions (component, version) VALUES ($1, $2)",
                    &[&component, &version],
                )
                .await?;
                tx.commit().await?;
                tracing::info!(component, version, url = %pg.url(), "migrated the Postgres schema");
            }
            Ok(known)
        }
        .await;
        client.execute("SELECT pg_advisory_unlock($1)", &[&key]).await?;
        result
    })
}

/// Checks that `component`'s schema is at `known`, the version this build writes: a newer one
/// is refused ("upgrade meter"), a missing or older one too ("run `meter migrate`").
pub fn check(pg: &Pg, component: &str, known: i64) -> Result<(), Error> {
    let found = pg.block(version(pg, component))?;
    let url = pg.url().to_string();
    match found.cmp(&known) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(Error::NewerSchema { url, component: component.into(), found, known }),
        std::cmp::Ordering::Less => Err(Error::OlderSchema { url, component: component.into(), found, known }),
    }
}
