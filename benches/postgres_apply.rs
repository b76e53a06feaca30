//! The live counters' batch apply on Postgres against a raw `INSERT … ON CONFLICT DO NOTHING` of
//! the same rows (the dedup rows, the unique values, the tallies and the breakdown amounts the
//! apply writes for the same batches) through the same driver and pool, one transaction per
//! batch: what the store's fence, folding, reads and upserts cost over writing its rows.
//!
//! `cargo bench --bench postgres_apply` (EVENTS, BATCH, TENANTS and ROUNDS override the defaults:
//! 200,000 events in batches of 2,000 from 1,000 tenants, 3 rounds, each apply then raw on fresh
//! databases). Uses the server named by `METER_TEST_POSTGRES`, or starts a private cluster.
#![allow(clippy::print_stdout, missing_docs)]

use meter_postgres::testing::{fresh_database, shared_url};
use meter_postgres::{Pg, PgUrl};
use meter_schemas::period::{day_of, format_day, now_us};
use meter_schemas::{Catalog, Contribution, Period};
use meter_store::{Metered, PgStore};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/pg_events.rs"]
mod pg_events;

fn migrated(base: &PgUrl) -> Arc<Pg> {
    let pg = Arc::new(Pg::connect(&fresh_database(base), meter_postgres::MAX_CONNECTIONS).unwrap());
    PgStore::migrate(&pg).unwrap();
    pg
}

fn apply(base: &PgUrl, catalog: &Catalog, batches: &[&[Metered]]) -> Duration {
    let store = PgStore::open(migrated(base)).unwrap();
    pg_events::applied(&store, catalog, batches)
}

/// The rows the apply writes for one batch, as text columns.
struct Rows {
    seen: [Vec<String>; 2],
    uniques: [Vec<String>; 4],
    tallies: [Vec<String>; 3],
    breakdowns: [Vec<String>; 5],
}

fn rows(catalog: &Catalog, batch: &[Metered]) -> Rows {
    let mut r = Rows {
        seen: Default::default(),
        uniques: Default::default(),
        tallies: Default::default(),
        breakdowns: Default::default(),
    };
    let (mut tallies, mut uniques, mut groups) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for e in batch {
        r.seen[0].push(e.tenant.clone());
        r.seen[1].push(e.id.clone());
        let buckets = [Period::containing(e.time_us).to_string(), format_day(day_of(e.time_us))];
        for (m, c) in &e.contributions {
            let meter = &catalog.meters()[*m].name;
            for b in &buckets {
                tallies.insert((e.tenant.clone(), meter.clone(), b.clone()));
                if let Contribution::Unique(v) = c {
                    uniques.insert((e.tenant.clone(), meter.clone(), b.clone(), v.clone()));
                }
            }
        }
        for (m, values) in &e.groups {
            let def = &catalog.meters()[*m];
            for (p, v) in def.group_by.iter().zip(values) {
                groups.insert((e.tenant.clone(), buckets[0].clone(), def.name.clone(), p.clone(), v.clone()));
            }
        }
    }
    for (t, m, b) in tallies {
        r.tallies[0].push(t);
        r.tallies[1].push(m);
        r.tallies[2].push(b);
    }
    for (t, m, b, v) in uniques {
        for (i, x) in [t, m, b, v].into_iter().enumerate() {
            r.uniques[i].push(x);
        }
    }
    for (t, p, m, pr, v) in groups {
        for (i, x) in [t, p, m, pr, v].into_iter().enumerate() {
            r.breakdowns[i].push(x);
        }
    }
    r
}

fn raw(base: &PgUrl, all: &[Rows]) -> Duration {
    let pg = migrated(base);
    // One arrival partition for every row, as the apply writes into the newest one, with the
    // primary key `ON CONFLICT` needs and no other index (the store's hash index is dropped).
    pg.execute("DROP INDEX seen_by_key", &[]).unwrap();
    pg.execute(
        "CREATE TABLE seen_all PARTITION OF seen_ids (PRIMARY KEY (tenant, id)) FOR VALUES FROM (MINVALUE) TO (MAXVALUE)",
        &[],
    )
    .unwrap();
    let arrived = now_us();
    let started = Instant::now();
    for r in all {
        pg.block(async {
            let mut c = pg.client().await?;
            let tx = c.transaction().await?;
            tx.execute(
                "INSERT INTO seen_ids (tenant, id, arrived_us) SELECT t, i, $3 FROM unnest($1::text[], $2::text[]) AS k(t, i)
                 ON CONFLICT DO NOTHING",
                &[&r.seen[0], &r.seen[1], &arrived],
            )
            .await?;
            tx.execute(
                "INSERT INTO uniques (tenant, meter, bucket, value)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING",
                &[&r.uniques[0], &r.uniques[1], &r.uniques[2], &r.uniques[3]],
            )
            .await?;
            tx.execute(
                "INSERT INTO tallies (tenant, meter, bucket, value)
                 SELECT t, m, b, 1 FROM unnest($1::text[], $2::text[], $3::text[]) AS k(t, m, b) ON CONFLICT DO NOTHING",
                &[&r.tallies[0], &r.tallies[1], &r.tallies[2]],
            )
            .await?;
            tx.execute(
                "INSERT INTO breakdowns (tenant, period, meter, property, value, amount)
                 SELECT t, p, m, pr, v, 1 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
                     AS k(t, p, m, pr, v)
                 ON CONFLICT DO NOTHING",
                &[&r.breakdowns[0], &r.breakdowns[1], &r.breakdowns[2], &r.breakdowns[3], &r.breakdowns[4]],
            )
            .await?;
            tx.commit().await?;
            Ok::<_, meter_postgres::Error>(())
        })
        .unwrap();
    }
    started.elapsed()
}

fn main() {
    let (n, batch, tenants, rounds) = (
        pg_events::env("EVENTS", 200_000),
        pg_events::env("BATCH", 2_000),
        pg_events::env("TENANTS", 1_000),
        pg_events::env("ROUNDS", 3),
    );
    let base = shared_url();
    let catalog = Catalog::new(vec![]).unwrap();
    let events = pg_events::events(n, tenants, &catalog);
    let batches: Vec<&[Metered]> = events.chunks(batch).collect();
    let all: Vec<Rows> = batches.iter().map(|b| rows(&catalog, b)).collect();
    let written: usize =
        all.iter().map(|r| r.seen[0].len() + r.uniques[0].len() + r.tallies[0].len() + r.breakdowns[0].len()).sum();
    println!("{n} events in batches of {batch} from {tenants} tenants: {written} rows written in all");
    for round in 1..=rounds {
        let a = apply(&base, &catalog, &batches);
        let r = raw(&base, &all);
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        println!(
            "round {round}: apply {:.0} events/s ({:.2} s), raw insert {:.0} events/s ({:.2} s): apply / raw = {:.2}",
            rate(a),
            a.as_secs_f64(),
            rate(r),
            r.as_secs_f64(),
            rate(a) / rate(r)
        );
    }
}
