//! The census: every event the log accepted for a period, metered again from the log itself,
//! the first of the four figures a close reconciles (accepted, counted, stored, rated).

use crate::Error;
use meter_eventlog::LogReader;
use meter_schemas::{Catalog, Contribution, Period, Tally};
use meter_store::Totals;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// How long the census waits to be given every partition (a consumer group's assignment).
const ASSIGNMENT_PATIENCE: Duration = Duration::from_secs(60);

/// Reads the whole log from offset 0 and meters every distinct `(tenant, id)` (its first copy,
/// as the stores count it) whose time falls in `period`. Blocking; `progress` hears the number
/// of records read every 100,000.
pub fn census(
    mut reader: Box<dyn LogReader>,
    catalog: &Catalog,
    period: Period,
    partitions: u32,
    progress: &dyn Fn(u64),
) -> Result<Totals, Error> {
    let (start, end) = (period.start_us(), period.end_us());
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut uniques: HashSet<(String, usize, String)> = HashSet::new();
    let mut totals = Totals::new();
    let mut read = 0u64;
    let started = Instant::now();
    reader.seek(&[]);
    loop {
        let owned = reader.owned().len() as u32;
        if owned < partitions && started.elapsed() > ASSIGNMENT_PATIENCE {
            return Err(Error::NotReady(format!(
                "the census was given {owned} of {partitions} partitions of the log within {ASSIGNMENT_PATIENCE:?}"
            )));
        }
        let batch = reader.poll(10_000, Duration::from_millis(200))?;
        if batch.reassigned {
            // A group handed partitions over: start again from offset 0.
            reader.seek(&[]);
            (seen, uniques, totals, read) = Default::default();
            continue;
        }
        for r in batch.records {
            read += 1;
            if read.is_multiple_of(100_000) {
                progress(read);
            }
            let e = r.event;
            if !seen.insert((e.tenant.clone(), e.id.clone())) || e.time_us < start || e.time_us >= end {
                continue;
            }
            for (i, c) in catalog.contributions(&e).0 {
                if let Contribution::Unique(v) = &c
                    && !uniques.insert((e.tenant.clone(), i, v.clone()))
                {
                    continue;
                }
                let meter = catalog.meters()[i].name.clone();
                let tally: &mut Tally = totals.entry(e.tenant.clone()).or_default().entry(meter).or_default();
                tally.add(&c, e.time_us, &e.id).map_err(meter_store::Error::Overflow)?;
            }
        }
        if batch.caught_up && owned == partitions {
            return Ok(totals);
        }
    }
}
