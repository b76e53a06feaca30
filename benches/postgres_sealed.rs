//! What the filters of sealed arrival partitions save the live counters' batch apply on Postgres
//! once `seen_ids` holds earlier arrivals: four sealed partitions of `AGED` ids each before the
//! partition of now (as a horizon of steady load leaves them), then the same batches of new ids
//! applied with the partitions' filters built, with them unusable (every partition asked, as
//! before schema version 7), and on a database with no ids yet (what the other Postgres
//! benchmarks measure), each on its own copy of one database, the order turning each round.
//!
//! `cargo bench --bench postgres_sealed` (EVENTS, BATCH, TENANTS, ROUNDS and AGED override the
//! defaults: 200,000 events in batches of 2,000 from 1,000 tenants, 3 rounds, 1,000,000 ids in
//! each sealed partition). Uses the server named by `METER_TEST_POSTGRES`, or starts a private
//! cluster.
#![allow(clippy::print_stdout, missing_docs)]

use meter_postgres::testing::{fresh_database, shared_url};
use meter_postgres::{Pg, PgUrl};
use meter_schemas::Catalog;
use meter_schemas::envelope::DEDUP_HORIZON_US;
use meter_schemas::period::now_us;
use meter_sqlite::dedup::Settings;
use meter_store::{Metered, PgStore};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/pg_events.rs"]
mod pg_events;

/// A migrated database whose `seen_ids` holds four sealed partitions of `aged` ids each, the
/// newest ending where the partition of now starts, with no filter built.
fn aged_template(base: &PgUrl, aged: usize) -> PgUrl {
    let url = fresh_database(base);
    let pg = Pg::connect(&url, 1).unwrap();
    PgStore::migrate(&pg).unwrap();
    let width = Settings::new(DEDUP_HORIZON_US).bucket_us();
    let now = now_us();
    let current = now - now.rem_euclid(width);
    for k in 1..=4i64 {
        let (from, to) = (current - k * width, current - (k - 1) * width);
        let started = Instant::now();
        let name = PgStore::make_partition(&pg, (from, to)).unwrap();
        pg.execute(
            &format!(
                "INSERT INTO seen_ids SELECT 'bench-' || (g % 1000), md5('{k}:' || g), {from} FROM generate_series(1, {aged}) g"
            ),
            &[],
        )
        .unwrap();
        PgStore::seal_partition(&pg, &name).unwrap();
        println!("sealed partition {k} of 4: {aged} ids in {:.1} s", started.elapsed().as_secs_f64());
    }
    url
}

/// A copy of database `template` (which no connection may be open on).
fn copy_of(base: &PgUrl, template: &PgUrl) -> PgUrl {
    let url = fresh_database(base);
    let admin = Pg::connect(base, 1).unwrap();
    admin.execute(&format!("DROP DATABASE {}", url.database()), &[]).unwrap();
    admin.execute(&format!("CREATE DATABASE {} TEMPLATE {}", url.database(), template.database()), &[]).unwrap();
    url
}

/// What a run applies its batches to.
#[derive(Clone, Copy)]
enum Case {
    /// The aged database, its sealed partitions' filters built.
    Filtered,
    /// The aged database, its sealed partitions' filters unusable: each is asked about every id.
    Asked,
    /// A database with no ids.
    Fresh,
}

/// Applies `batches` on a copy of `aged_db` (`aged` ids in each sealed partition, their filters
/// built or unusable) or of `fresh`; answers the time the batches took.
fn apply(
    base: &PgUrl,
    [aged_db, fresh]: [&PgUrl; 2],
    aged: usize,
    catalog: &Catalog,
    batches: &[&[Metered]],
    case: Case,
) -> Duration {
    let template = match case {
        Case::Filtered | Case::Asked => aged_db,
        Case::Fresh => fresh,
    };
    let pg = Arc::new(Pg::connect(&copy_of(base, template), meter_postgres::MAX_CONNECTIONS).unwrap());
    match case {
        Case::Filtered => {
            let started = Instant::now();
            assert_eq!(PgStore::build_filters(&pg).unwrap(), 4);
            let bytes: i64 = pg.query_one("SELECT sum(length(filter))::int8 FROM seen_parts", &[]).unwrap().get(0);
            println!(
                "  the 4 filters built in {:.2} s: {bytes} bytes, {:.3} bytes an id",
                started.elapsed().as_secs_f64(),
                bytes as f64 / (4 * aged) as f64
            );
        }
        Case::Asked => _ = pg.execute("UPDATE seen_parts SET filter = ''::bytea WHERE sealed", &[]).unwrap(),
        Case::Fresh => {}
    }
    pg.execute("VACUUM ANALYZE", &[]).unwrap();
    let store = PgStore::open(pg).unwrap();
    pg_events::applied(&store, catalog, batches)
}

fn main() {
    let (n, batch, tenants, rounds, aged) = (
        pg_events::env("EVENTS", 200_000),
        pg_events::env("BATCH", 2_000),
        pg_events::env("TENANTS", 1_000),
        pg_events::env("ROUNDS", 3),
        pg_events::env("AGED", 1_000_000),
    );
    let base = shared_url();
    let catalog = Catalog::new(vec![]).unwrap();
    let events = pg_events::events(n, tenants, &catalog);
    let batches: Vec<&[Metered]> = events.chunks(batch).collect();
    let templates = [&aged_template(&base, aged), &fresh_database(&base)];
    PgStore::migrate(&Pg::connect(templates[1], 1).unwrap()).unwrap();
    println!("{n} new events in batches of {batch} from {tenants} tenants, over 4 sealed partitions of {aged} ids");
    let cases = [Case::Filtered, Case::Asked, Case::Fresh];
    for round in 1..=rounds {
        let mut took = [Duration::ZERO; 3];
        for k in 0..3 {
            let c = (round - 1 + k) % 3;
            took[c] = apply(&base, templates, aged, &catalog, &batches, cases[c]);
        }
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        println!(
            "round {round}: filtered {:.0} events/s ({:.2} s), every partition asked {:.0} events/s ({:.2} s), no ids yet {:.0} events/s ({:.2} s): filtered / asked = {:.2}, filtered / no ids yet = {:.2}",
            rate(took[0]),
            took[0].as_secs_f64(),
            rate(took[1]),
            took[1].as_secs_f64(),
            rate(took[2]),
            took[2].as_secs_f64(),
            rate(took[0]) / rate(took[1]),
            rate(took[0]) / rate(took[2]),
        );
    }
}
