//! The Postgres plumbing against a real server: connections, errors without passwords, and
//! versioned migrations.

use meter_postgres::testing::{fresh_database, shared_url};
use meter_postgres::{Error, MAX_CONNECTIONS, Pg, PgUrl, check, migrate};

const MIGRATIONS: &[&str] =
    &["CREATE TABLE things (id bigint PRIMARY KEY)", "ALTER TABLE things ADD COLUMN name text NOT NULL DEFAULT ''"];

fn fresh() -> Pg {
    Pg::connect(&fresh_database(&shared_url()), MAX_CONNECTIONS).unwrap()
}

fn count(pg: &Pg, sql: &str) -> i64 {
    pg.block(async { pg.client().await.unwrap().query_one(sql, &[]).await.unwrap().get(0) })
}

#[test]
fn migrations_apply_once_and_the_version_is_checked() {
    let pg = fresh();
    let e = check(&pg, "things", 2).unwrap_err().to_string();
    assert!(e.contains("things schema version 0") && e.contains("meter migrate --state postgres://meter@"), "{e}");
    assert_eq!(migrate(&pg, "things", &MIGRATIONS[..1]).unwrap(), 1);
    assert!(matches!(check(&pg, "things", 2), Err(Error::OlderSchema { found: 1, known: 2, .. })));
    assert_eq!(migrate(&pg, "things", MIGRATIONS).unwrap(), 2);
    assert_eq!(migrate(&pg, "things", MIGRATIONS).unwrap(), 2, "a second run changes nothing");
    check(&pg, "things", 2).unwrap();
    assert_eq!(count(&pg, "SELECT count(*) FROM meter_schema_versions WHERE component = 'things'"), 2);
    // Another component in the same database has its own version.
    assert_eq!(migrate(&pg, "other", &["CREATE TABLE other_things (id bigint)"]).unwrap(), 1);
    check(&pg, "things", 2).unwrap();
}

#[test]
fn a_newer_schema_is_refused_and_left_alone() {
    let pg = fresh();
    migrate(&pg, "things", MIGRATIONS).unwrap();
    let e = migrate(&pg, "things", &MIGRATIONS[..1]).unwrap_err();
    assert!(matches!(e, Error::NewerSchema { found: 2, known: 1, .. }), "{e}");
    assert!(e.to_string().contains("upgrade meter"), "{e}");
    let e = check(&pg, "things", 1).unwrap_err().to_string();
    assert!(e.contains("schema version 2, newer than this meter knows (1)"), "{e}");
    assert_eq!(count(&pg, "SELECT count(*) FROM meter_schema_versions"), 2);
}

#[test]
fn concurrent_migrations_run_each_step_once() {
    let pg = fresh();
    let url = pg.url().clone();
    // Each process has its own pool; the advisory lock makes them take turns, so the
    // non-idempotent CREATE TABLE runs once and neither fails.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || migrate(&Pg::connect(&url, 1).unwrap(), "things", MIGRATIONS))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap(), 2);
    }
    assert_eq!(count(&pg, "SELECT count(*) FROM meter_schema_versions"), 2);
}

#[test]
fn a_wrong_password_is_a_clear_error_without_the_password() {
    let url = shared_url();
    let text = format!("{url}").replace("postgres://meter@", "postgres://meter:not-the-Password@");
    let e = Pg::connect(&PgUrl::parse(&text).unwrap(), 1).unwrap_err().to_string();
    assert!(e.starts_with(&format!("cannot connect to Postgres at {url}")), "{e}");
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("not-the-Password"), "{e}");
    let missing = Pg::connect(&shared_url().with_database("no_such_db"), 1).unwrap_err().to_string();
    assert!(missing.contains("database \"no_such_db\" does not exist"), "{missing}");
}

#[test]
fn an_unreachable_server_is_a_clear_error_naming_the_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = PgUrl::parse(&format!("postgres://meter:hidden-pw@127.0.0.1:{port}/meter")).unwrap();
    let e = Pg::connect(&url, 1).unwrap_err().to_string();
    assert!(e.starts_with(&format!("cannot connect to Postgres at postgres://meter@127.0.0.1:{port}/meter: ")), "{e}");
    assert!(e.to_lowercase().contains("refused"), "{e}");
    assert!(!e.contains("hidden-pw"), "{e}");
}

#[tokio::test]
async fn blocking_calls_work_from_async_code() {
    let pg = fresh();
    migrate(&pg, "things", MIGRATIONS).unwrap();
    assert_eq!(count(&pg, "SELECT count(*) FROM things"), 0);
    let pg = std::sync::Arc::new(pg);
    let p = pg.clone();
    let n: i64 =
        pg.spawn(async move { p.client().await.unwrap().query_one("SELECT 1::int8", &[]).await.unwrap().get(0) }).await;
    assert_eq!(n, 1);
}

#[test]
fn lock_keys_are_stable_across_builds() {
    assert_eq!(meter_postgres::lock_key(""), 0xcbf2_9ce4_8422_2325_u64 as i64);
    assert_ne!(meter_postgres::lock_key("close:2026-11"), meter_postgres::lock_key("close:2026-12"));
}

/// The connection given back last is the next one handed out: a role that uses one connection at
/// a time (the aggregator's batches) keeps using one warm connection, its statements prepared and
/// their plans settled, rather than taking each of the pool's in turn and warming every one (a
/// fresh aggregator on Postgres met its first batches on cold connections one after another).
#[test]
fn the_connection_given_back_last_is_handed_out_next() {
    let pg = fresh();
    let pid = |c: &deadpool_postgres::Object| {
        pg.block(async { c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get::<_, i32>(0) })
    };
    let (a, b) = pg.block(async { (pg.client().await.unwrap(), pg.client().await.unwrap()) });
    let (first, last) = (pid(&a), pid(&b));
    assert_ne!(first, last, "two connections");
    drop(a);
    drop(b);
    let next: Vec<i32> = (0..4).map(|_| pid(&pg.block(pg.client()).unwrap())).collect();
    assert_eq!(next, vec![last; 4], "the one given back last, each time");
}

/// Every connection of the pool runs with the server's JIT off (its compiling cost a large batch's
/// lookup a quarter of its time), however many the pool opens.
#[test]
fn every_connection_runs_with_jit_off() {
    let pg = fresh();
    let settings: Vec<String> = pg.block(async {
        let a = pg.client().await.unwrap();
        let b = pg.client().await.unwrap();
        let mut out = Vec::new();
        for c in [&a, &b] {
            out.push(c.query_one("SHOW jit", &[]).await.unwrap().get(0));
        }
        out
    });
    assert_eq!(settings, ["off", "off"]);
    let server_default: String = pg.block(async {
        pg.client()
            .await
            .unwrap()
            .query_one("SELECT boot_val FROM pg_settings WHERE name = 'jit'", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(server_default, "on", "the server's own default is on: this test must see the change");
}
