//! The census: every event the log accepted for a period, metered again from the log itself,
//! the first of the four figures a close reconciles (accepted, counted, stored, rated).
//!
//! Its memory does not grow with the log. No set of the log's ids is kept: each record read is
//! written to one of [`FAN_OUT`] spill files chosen by a hash of its `(tenant, id)`, so that
//! every copy of an event lands in the same file. The files are then read one at a time, each
//! one's copies sorted by `(tenant, id, order read)`, and only the first copy of each event is
//! metered, as the stores count it. A file larger than the budget is first split again
//! [`FAN_OUT`] ways by the hash's next bits. The distinct values of unique-count meters are
//! found the same way, through a second spill keyed by `(tenant, meter, value)`. Each file's
//! totals are written, sorted by tenant, into a run on disk; the runs are merged back a range of
//! tenants at a time as the close asks for them ([`Accepted`]). What stays in memory is one
//! file's records, a range's totals and a record of each run.

use crate::Error;
use fs4::fs_std::FileExt;
use meter_eventlog::{LogReader, Position};
use meter_schemas::{Aggregation, Catalog, Contribution, Event, Period, Tally};
use meter_store::Totals;
use rust_decimal::Decimal;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fs::File;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the census waits to be given every partition (a consumer group's assignment).
const ASSIGNMENT_PATIENCE: Duration = Duration::from_secs(60);

/// A census's own directory inside the spill directory starts with this.
const PREFIX: &str = "census-";
/// The file in it that its census holds locked while it runs.
const LOCK: &str = "lock";

/// Slots of the events last spilled ([`Seen`]), a power of two.
const SEEN_SLOTS: usize = 1 << 12;

/// Distinct values remembered as they are spilled, so that a value seen again soon (one user's
/// every login) is not spilled again: the spill of a value repeated millions of times could not
/// be split by its hash. Forgotten all at once when full.
const RECENT_VALUES: usize = 1 << 16;

/// Where the census of an installation whose scratch directory (its data directory) is
/// `scratch` spills.
pub fn spill_dir(scratch: &Path) -> PathBuf {
    scratch.join("census")
}

/// Removes what censuses killed midway left in `spill`: each census directory whose lock no
/// live census holds. Best effort: what cannot be removed is logged and left.
pub fn remove_left_over(spill: &Path) {
    let Ok(entries) = std::fs::read_dir(spill) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_name().to_string_lossy().starts_with(PREFIX) || !path.is_dir() {
            continue;
        }
        // A directory made before its lock file was is a census killed at its start.
        let free = match File::open(path.join(LOCK)) {
            Ok(f) => f.try_lock_exclusive().unwrap_or(false),
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        };
        if free && let Err(e) = std::fs::remove_dir_all(&path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a census's left-over spill");
        }
    }
}

/// Files a spill is split into, at each level.
pub const FAN_OUT: u64 = 64;
const FAN_BITS: u32 = FAN_OUT.trailing_zeros();

/// A spill file larger than this is split again before it is read into memory (where its
/// records take about three times their size on disk).
pub const BUCKET_BUDGET: u64 = 32 << 20;

/// Runs merged at once, at most (each an open file): past this many, groups of them are merged
/// into one first.
const RUNS_AT_ONCE: usize = 256;

/// Reads the whole log from offset 0 and meters every distinct `(tenant, id)` (its first copy,
/// as the stores count it) whose time falls in `period`, spilling into a directory of its own
/// made inside `spill` (and removed however the census ends: once its totals are read or
/// dropped). Blocking; `progress` hears the number of records read every 100,000.
pub fn census(
    reader: Box<dyn LogReader>,
    catalog: &Catalog,
    period: Period,
    partitions: u32,
    spill: &Path,
    progress: &dyn Fn(u64),
) -> Result<Accepted, Error> {
    census_within(reader, catalog, period, partitions, spill, BUCKET_BUDGET, progress)
}

/// [`census`] with the size past which a spill file is split again (tests make it small).
#[doc(hidden)]
pub fn census_within(
    mut reader: Box<dyn LogReader>,
    catalog: &Catalog,
    period: Period,
    partitions: u32,
    spill: &Path,
    budget: u64,
    progress: &dyn Fn(u64),
) -> Result<Accepted, Error> {
    let (start, end) = (period.start_us(), period.end_us());
    let started = Instant::now();
    reader.seek(&[]);
    'from_the_start: loop {
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir_in(spill)?;
        // Held while this census runs: `remove_left_over` leaves the directory alone.
        let lock = File::create(dir.path().join(LOCK))?;
        if !lock.try_lock_exclusive()? {
            return Err(Error::Spill(io::Error::other(format!("cannot lock {}", dir.path().display()))));
        }
        let mut copies = Spill::<Copy>::create(dir.path().join("copies"), 0)?;
        let mut seen = Seen::default();
        let mut read = 0u64;
        loop {
            let owned = reader.owned().len() as u32;
            if owned < partitions && started.elapsed() > ASSIGNMENT_PATIENCE {
                return Err(Error::NotReady(format!(
                    "the census was given {owned} of {partitions} partitions of the log within {ASSIGNMENT_PATIENCE:?}"
                )));
            }
            let batch = reader.poll_encoded(10_000, Duration::from_millis(200))?;
            if batch.reassigned {
                // A group handed partitions over: start again from offset 0.
                reader.seek(&[]);
                continue 'from_the_start;
            }
            for r in batch.records {
                read += 1;
                if read.is_multiple_of(100_000) {
                    progress(read);
                }
                // Read in place, as the aggregator reads it: only what the census keeps is copied.
                let copy = Event::view(&r.event, |e| {
                    let hash = hash_of(&(e.tenant, e.id));
                    if seen.again(hash, e.tenant, e.id) {
                        return None;
                    }
                    let inside = e.time_us >= start && e.time_us < end;
                    let contributions = inside.then(|| catalog.contributions_of(e.code, e).0);
                    let (tenant, id, time_us) = (e.tenant.to_owned(), e.id.to_owned(), e.time_us);
                    Some(Copy { hash, seq: read, tenant, id, time_us, contributions })
                });
                let Position { partition, offset } = r.position;
                let copy =
                    copy.map_err(|e| meter_eventlog::Error::Corrupt { partition, offset, reason: e.to_string() })?;
                if let Some(copy) = copy {
                    copies.push(&copy)?;
                }
            }
            if batch.caught_up && owned == partitions {
                break;
            }
        }
        let mut runs = Runs { dir: dir.path().join("runs"), runs: Vec::new() };
        std::fs::create_dir_all(&runs.dir)?;
        let mut distinct = Spill::<Distinct>::create(dir.path().join("distinct"), 0)?;
        let mut recent = Recent::default();
        copies.drain(budget, &mut |mut copies| {
            copies.sort_unstable_by(|a, b| (&a.tenant, &a.id, a.seq).cmp(&(&b.tenant, &b.id, b.seq)));
            let mut totals = Partials::new();
            let mut last: Option<(&str, &str)> = None;
            for c in &copies {
                if last == Some((&c.tenant, &c.id)) {
                    continue;
                }
                last = Some((&c.tenant, &c.id));
                for (meter, contribution) in c.contributions.iter().flatten() {
                    if let Contribution::Unique(value) = contribution {
                        let hash = hash_of(&(&c.tenant, *meter, value));
                        if recent.insert(hash, &c.tenant, *meter, value) {
                            let (tenant, meter, value) = (c.tenant.clone(), *meter, value.clone());
                            distinct.push(&Distinct { hash, tenant, meter, value })?;
                        }
                    } else {
                        tally(&mut totals, &c.tenant, *meter).add(contribution, c.time_us, &c.id).map_err(overflow)?;
                    }
                }
            }
            runs.write(totals)
        })?;
        distinct.drain(budget, &mut |mut values| {
            values.sort_unstable_by(|a, b| (&a.tenant, a.meter, &a.value).cmp(&(&b.tenant, b.meter, &b.value)));
            values.dedup_by(|a, b| (&a.tenant, a.meter, &a.value) == (&b.tenant, b.meter, &b.value));
            let mut totals = Partials::new();
            for v in values {
                // A unique value counts once, whichever event carried it first: its file holds
                // every copy of it, so the files' counts add up.
                let t = tally(&mut totals, &v.tenant, v.meter);
                t.add(&Contribution::Unique(v.value), 0, "").map_err(overflow)?;
            }
            runs.write(totals)
        })?;
        let meters: Vec<(String, Aggregation)> =
            catalog.meters().iter().map(|m| (m.name.clone(), m.aggregation)).collect();
        let merge = Merge::of(runs, &meters)?;
        tracing::debug!(runs = merge.runs.len(), premerged = merge.premerged, "census totals in runs on disk");
        return Ok(Accepted { merge, meters, _lock: lock, _dir: dir });
    }
}

/// The census's totals, read a range of tenants at a time, in the order of their bytes: each
/// spill file's totals, sorted by tenant in a run on disk, merged. Holds the census's directory,
/// removed when this is dropped.
pub struct Accepted {
    merge: Merge,
    /// Each meter's name and aggregation, by its number in the catalog.
    meters: Vec<(String, Aggregation)>,
    _lock: File,
    _dir: tempfile::TempDir,
}

impl Accepted {
    /// The totals of the tenants up to `upto`, included (every one left when `None`), that an
    /// earlier call did not give.
    pub fn until(&mut self, upto: Option<&str>) -> Result<Totals, Error> {
        let mut totals = Totals::new();
        while self.merge.peek().is_some_and(|t| upto.is_none_or(|u| t <= u)) {
            let Some(p) = self.merge.next(&self.meters)? else { break };
            totals.entry(p.tenant).or_default().insert(self.meters[p.meter].0.clone(), p.tally);
        }
        Ok(totals)
    }

    /// Every total left, at once.
    pub fn rest(mut self) -> Result<Totals, Error> {
        self.until(None)
    }
}

/// A spill file's totals: by tenant, then meter number.
type Partials = BTreeMap<String, BTreeMap<usize, Tally>>;

/// One tenant's meter in a run: the part of its total one spill file holds.
struct Partial {
    tenant: String,
    meter: usize,
    tally: Tally,
}

impl Partial {
    fn write(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&(self.meter as u64).to_le_bytes())?;
        put_str(w, &self.tenant)?;
        match &self.tally.value {
            None => w.write_all(&[0])?,
            Some(d) => put_decimal(w, 1, d)?,
        }
        match &self.tally.latest {
            None => w.write_all(&[0]),
            Some((time_us, id)) => {
                w.write_all(&[1])?;
                w.write_all(&time_us.to_le_bytes())?;
                put_str(w, id)
            }
        }
    }

    fn read(r: &mut impl Read) -> io::Result<Option<Self>> {
        let Some(meter) = first_u64(r)? else { return Ok(None) };
        let tenant = get_str(r)?;
        let value = match get_u8(r)? {
            0 => None,
            _ => Some(get_decimal(r)?),
        };
        let latest = match get_u8(r)? {
            0 => None,
            _ => Some((get_u64(r)? as i64, get_str(r)?)),
        };
        Ok(Some(Partial { tenant, meter: meter as usize, tally: Tally { value, latest } }))
    }
}

/// Folds `part` of a meter's total into `into`: what adding the contributions behind both, in any
/// order, gives.
fn combine(into: &mut Tally, part: Tally, aggregation: Aggregation) -> Result<(), Error> {
    let Some(v) = part.value else { return Ok(()) };
    let contribution = match aggregation {
        Aggregation::Count | Aggregation::UniqueCount | Aggregation::Sum => Contribution::Sum(v),
        Aggregation::Max => Contribution::Max(v),
        Aggregation::Latest => Contribution::Latest(v),
    };
    let (time_us, id) = part.latest.unwrap_or_default();
    into.add(&contribution, time_us, &id).map_err(overflow)
}

/// The runs written so far, each a spill file's totals sorted by tenant.
struct Runs {
    dir: PathBuf,
    runs: Vec<Run>,
}

/// A run on disk and the records written to it, checked when it is read back.
struct Run {
    path: PathBuf,
    written: u64,
}

impl Runs {
    fn write(&mut self, totals: Partials) -> Result<(), Error> {
        if totals.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(self.runs.len().to_string());
        let mut w = BufWriter::with_capacity(1 << 16, File::create(&path)?);
        let mut written = 0;
        for (tenant, meters) in totals {
            for (meter, tally) in meters {
                Partial { tenant: tenant.clone(), meter, tally }.write(&mut w)?;
                written += 1;
            }
        }
        w.into_inner().map_err(io::IntoInnerError::into_error)?;
        self.runs.push(Run { path, written });
        Ok(())
    }
}

/// A run being read: a record ahead, and how many were read.
struct Reading {
    run: Run,
    file: BufReader<File>,
    read: u64,
    head: Option<Partial>,
}

impl Reading {
    fn open(run: Run) -> io::Result<Reading> {
        let file = BufReader::with_capacity(1 << 16, File::open(&run.path)?);
        let mut reading = Reading { run, file, read: 0, head: None };
        reading.head = reading.next()?;
        Ok(reading)
    }

    /// The run's next record; at its end, an error unless every record written was read.
    fn next(&mut self) -> io::Result<Option<Partial>> {
        let record = Partial::read(&mut self.file)?;
        match record {
            Some(_) => self.read += 1,
            None if self.read != self.run.written => {
                let (path, read, written) = (self.run.path.display(), self.read, self.run.written);
                let e = format!("{path} holds {read} records of the {written} written");
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            None => {}
        }
        Ok(record)
    }
}

/// Runs merged by `(tenant, meter)`, each read a record ahead.
struct Merge {
    runs: Vec<Reading>,
    order: BinaryHeap<Reverse<(String, usize, usize)>>,
    /// Groups of runs merged into one before this merge.
    premerged: usize,
}

impl Merge {
    /// The merge of `runs`, at most [`RUNS_AT_ONCE`] open at a time: groups of them are merged
    /// into a run first while there are more.
    fn of(mut runs: Runs, meters: &[(String, Aggregation)]) -> Result<Merge, Error> {
        let mut premerged = 0;
        while runs.runs.len() > RUNS_AT_ONCE {
            premerged += 1;
            let group: Vec<Run> = runs.runs.drain(..RUNS_AT_ONCE).collect();
            let done: Vec<PathBuf> = group.iter().map(|r| r.path.clone()).collect();
            let mut merge = Merge::open(group)?;
            let path = runs.dir.join(format!("{}-merged", runs.runs.len() + done.len()));
            let mut w = BufWriter::with_capacity(1 << 16, File::create(&path)?);
            let mut written = 0;
            while let Some(p) = merge.next(meters)? {
                p.write(&mut w)?;
                written += 1;
            }
            w.into_inner().map_err(io::IntoInnerError::into_error)?;
            drop(merge);
            for path in done {
                std::fs::remove_file(path)?;
            }
            runs.runs.push(Run { path, written });
        }
        Ok(Merge { premerged, ..Merge::open(runs.runs)? })
    }

    fn open(runs: Vec<Run>) -> io::Result<Merge> {
        let mut merge = Merge { runs: Vec::new(), order: BinaryHeap::new(), premerged: 0 };
        for run in runs {
            let reading = Reading::open(run)?;
            if let Some(h) = &reading.head {
                merge.order.push(Reverse((h.tenant.clone(), h.meter, merge.runs.len())));
            }
            merge.runs.push(reading);
        }
        Ok(merge)
    }

    /// The tenant of the next total.
    fn peek(&self) -> Option<&str> {
        self.order.peek().map(|Reverse((tenant, _, _))| tenant.as_str())
    }

    /// The next tenant's meter, its parts combined.
    fn next(&mut self, meters: &[(String, Aggregation)]) -> Result<Option<Partial>, Error> {
        let Some(Reverse((tenant, meter, run))) = self.order.pop() else { return Ok(None) };
        let mut total = self.advance(run)?;
        while let Some(Reverse((t, m, _))) = self.order.peek()
            && (t.as_str(), *m) == (tenant.as_str(), meter)
        {
            let Some(Reverse((_, _, run))) = self.order.pop() else { break };
            let part = self.advance(run)?;
            combine(&mut total.tally, part.tally, meters[meter].1)?;
        }
        Ok(Some(total))
    }

    /// Run `run`'s record ahead, reading the one after it.
    fn advance(&mut self, run: usize) -> io::Result<Partial> {
        let reading = &mut self.runs[run];
        let head = reading.head.take().ok_or_else(|| io::Error::other("a run's record read twice"))?;
        reading.head = reading.next()?;
        if let Some(h) = &reading.head {
            self.order.push(Reverse((h.tenant.clone(), h.meter, run)));
        }
        Ok(head)
    }
}

/// The `(tenant, id)` spilled last in each of [`SEEN_SLOTS`] slots, chosen by its hash: a copy
/// of an event whose first copy was just spilled (a client resending one event in a loop) is not
/// spilled again, since only the first copy counts. Compared whole, not by hash alone; a slot's
/// strings are reused, so a slot allocates only while its strings grow.
#[derive(Default)]
struct Seen {
    slots: Vec<Option<(u64, String, String)>>,
}

impl Seen {
    /// True when `(tenant, id)` is what its slot holds (a copy already spilled); otherwise it
    /// takes the slot.
    fn again(&mut self, hash: u64, tenant: &str, id: &str) -> bool {
        if self.slots.is_empty() {
            self.slots.resize(SEEN_SLOTS, None);
        }
        // The high bits: the spill's files are chosen by the low ones.
        let slot = &mut self.slots[(hash >> (u64::BITS - SEEN_SLOTS.trailing_zeros())) as usize];
        match slot {
            Some((h, t, i)) if *h == hash && t == tenant && i == id => true,
            Some((h, t, i)) => {
                *h = hash;
                t.clear();
                t.push_str(tenant);
                i.clear();
                i.push_str(id);
                false
            }
            None => {
                *slot = Some((hash, tenant.to_string(), id.to_string()));
                false
            }
        }
    }
}

/// The distinct values spilled last, up to [`RECENT_VALUES`], compared whole (not by hash).
#[derive(Default)]
struct Recent {
    by_hash: HashMap<u64, Vec<(String, usize, String)>>,
    len: usize,
}

impl Recent {
    /// True unless the value is among the recent ones (then it need not be spilled again).
    fn insert(&mut self, hash: u64, tenant: &str, meter: usize, value: &str) -> bool {
        let same = |(t, m, v): &(String, usize, String)| t == tenant && *m == meter && v == value;
        if self.by_hash.get(&hash).is_some_and(|held| held.iter().any(same)) {
            return false;
        }
        if self.len == RECENT_VALUES {
            (self.by_hash, self.len) = Default::default();
        }
        self.by_hash.entry(hash).or_default().push((tenant.to_string(), meter, value.to_string()));
        self.len += 1;
        true
    }
}

fn overflow(e: meter_schemas::meter::Overflow) -> Error {
    Error::Store(meter_store::Error::Overflow(e))
}

/// The tally of `tenant`'s meter number `meter`, made when missing.
fn tally<'a>(totals: &'a mut Partials, tenant: &str, meter: usize) -> &'a mut Tally {
    if !totals.contains_key(tenant) {
        totals.insert(tenant.to_string(), Default::default());
    }
    totals.get_mut(tenant).expect("inserted above").entry(meter).or_default()
}

/// Which spill file a record goes to: any hash, the same within one process.
fn hash_of<T: std::hash::Hash>(key: &T) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
}

/// A record the census spills: written and read back as bytes, placed by its hash.
trait Spilled: Sized {
    fn hash(&self) -> u64;
    fn write(&self, w: &mut impl Write) -> io::Result<()>;
    /// The next record, or `None` at the end of the file.
    fn read(r: &mut impl Read) -> io::Result<Option<Self>>;
}

/// One record of the log as the census spills it.
struct Copy {
    hash: u64,
    /// Its place in the order read: of an event's copies, the first read is the one counted.
    seq: u64,
    tenant: String,
    id: String,
    time_us: i64,
    /// What it adds to each meter; `None` when its time is outside the period (it is not
    /// counted, and neither is a later copy inside it).
    contributions: Option<Vec<(usize, Contribution)>>,
}

/// A value of a unique-count meter carried by an event the census counts.
struct Distinct {
    hash: u64,
    tenant: String,
    meter: usize,
    value: String,
}

impl Spilled for Copy {
    fn hash(&self) -> u64 {
        self.hash
    }

    fn write(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.hash.to_le_bytes())?;
        w.write_all(&self.seq.to_le_bytes())?;
        put_str(w, &self.tenant)?;
        put_str(w, &self.id)?;
        w.write_all(&self.time_us.to_le_bytes())?;
        let Some(cs) = &self.contributions else { return w.write_all(&[0]) };
        w.write_all(&[1])?;
        w.write_all(&(cs.len() as u32).to_le_bytes())?;
        for (meter, c) in cs {
            w.write_all(&(*meter as u32).to_le_bytes())?;
            match c {
                Contribution::Count => w.write_all(&[0])?,
                Contribution::Sum(d) => put_decimal(w, 1, d)?,
                Contribution::Max(d) => put_decimal(w, 2, d)?,
                Contribution::Latest(d) => put_decimal(w, 3, d)?,
                Contribution::Unique(v) => {
                    w.write_all(&[4])?;
                    put_str(w, v)?;
                }
            }
        }
        Ok(())
    }

    fn read(r: &mut impl Read) -> io::Result<Option<Self>> {
        let Some(hash) = first_u64(r)? else { return Ok(None) };
        let (seq, tenant, id, time_us) = (get_u64(r)?, get_str(r)?, get_str(r)?, get_u64(r)? as i64);
        let contributions = match get_u8(r)? {
            0 => None,
            _ => {
                let n = get_u32(r)? as usize;
                let mut cs = Vec::with_capacity(n);
                for _ in 0..n {
                    let meter = get_u32(r)? as usize;
                    let c = match get_u8(r)? {
                        0 => Contribution::Count,
                        1 => Contribution::Sum(get_decimal(r)?),
                        2 => Contribution::Max(get_decimal(r)?),
                        3 => Contribution::Latest(get_decimal(r)?),
                        4 => Contribution::Unique(get_str(r)?),
                        k => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("contribution kind {k}"))),
                    };
                    cs.push((meter, c));
                }
                Some(cs)
            }
        };
        Ok(Some(Copy { hash, seq, tenant, id, time_us, contributions }))
    }
}

impl Spilled for Distinct {
    fn hash(&self) -> u64 {
        self.hash
    }

    fn write(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.hash.to_le_bytes())?;
        put_str(w, &self.tenant)?;
        w.write_all(&(self.meter as u32).to_le_bytes())?;
        put_str(w, &self.value)
    }

    fn read(r: &mut impl Read) -> io::Result<Option<Self>> {
        let Some(hash) = first_u64(r)? else { return Ok(None) };
        let (tenant, meter, value) = (get_str(r)?, get_u32(r)? as usize, get_str(r)?);
        Ok(Some(Distinct { hash, tenant, meter, value }))
    }
}

fn put_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u32).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn put_decimal(w: &mut impl Write, kind: u8, d: &Decimal) -> io::Result<()> {
    w.write_all(&[kind])?;
    w.write_all(&d.serialize())
}

fn get_u8(r: &mut impl Read) -> io::Result<u8> {
    let mut b = [0; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn get_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn get_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// A record's first field, or `None` at the end of the file (and only there).
fn first_u64(r: &mut impl Read) -> io::Result<Option<u64>> {
    let mut b = [0; 8];
    let mut got = 0;
    while got < b.len() {
        match r.read(&mut b[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    Ok(Some(u64::from_le_bytes(b)))
}

fn get_str(r: &mut impl Read) -> io::Result<String> {
    let mut b = vec![0; get_u32(r)? as usize];
    r.read_exact(&mut b)?;
    String::from_utf8(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn get_decimal(r: &mut impl Read) -> io::Result<Decimal> {
    let mut b = [0; 16];
    r.read_exact(&mut b)?;
    Ok(Decimal::deserialize(b))
}

/// Records spread over [`FAN_OUT`] files by their hash's bits at `level`.
struct Spill<T> {
    dir: PathBuf,
    level: u32,
    files: Vec<BufWriter<File>>,
    /// Records written to each file, checked when it is read back.
    written: Vec<u64>,
    records: PhantomData<T>,
}

impl<T: Spilled> Spill<T> {
    fn create(dir: PathBuf, level: u32) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let files = (0..FAN_OUT)
            .map(|i| File::create(dir.join(i.to_string())).map(|f| BufWriter::with_capacity(1 << 15, f)))
            .collect::<io::Result<_>>()?;
        Ok(Spill { dir, level, files, written: vec![0; FAN_OUT as usize], records: PhantomData })
    }

    fn push(&mut self, record: &T) -> io::Result<()> {
        let file = ((record.hash() >> (self.level * FAN_BITS)) % FAN_OUT) as usize;
        self.written[file] += 1;
        record.write(&mut self.files[file])
    }

    /// Hands `each` every file's records, one file at a time, deleting each once read; a file
    /// over `budget` is split again first, while the hash has bits left to split it by.
    fn drain(self, budget: u64, each: &mut dyn FnMut(Vec<T>) -> Result<(), Error>) -> Result<(), Error> {
        let Spill { dir, level, files, written, .. } = self;
        for f in files {
            f.into_inner().map_err(io::IntoInnerError::into_error)?;
        }
        for (i, written) in written.into_iter().enumerate() {
            let path = dir.join(i.to_string());
            let size = std::fs::metadata(&path)?.len();
            let mut r = BufReader::with_capacity(1 << 16, File::open(&path)?);
            let mut read = 0u64;
            let mut next = |r: &mut BufReader<File>| -> io::Result<Option<T>> {
                let record = T::read(r)?;
                read += u64::from(record.is_some());
                if record.is_none() && read != written {
                    let e = format!("{} holds {read} records of the {written} written", path.display());
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                Ok(record)
            };
            if size > budget && (level + 2) * FAN_BITS <= u64::BITS {
                let mut again = Spill::<T>::create(dir.join(format!("{i}-split")), level + 1)?;
                while let Some(record) = next(&mut r)? {
                    again.push(&record)?;
                }
                drop(r);
                std::fs::remove_file(&path)?;
                again.drain(budget, each)?;
            } else {
                let mut records = Vec::with_capacity(written as usize);
                while let Some(record) = next(&mut r)? {
                    records.push(record);
                }
                drop(r);
                std::fs::remove_file(&path)?;
                each(records)?;
            }
        }
        std::fs::remove_dir(&dir)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meter_eventlog::{Batch, Encoded, Record};
    use serde_json::json;
    use std::collections::HashSet;

    /// A log of one partition read in batches of `per_poll`, whose group hands its partition
    /// over once after `reassign_after` polls (when given).
    struct Log {
        records: Vec<Record>,
        at: usize,
        per_poll: usize,
        reassign_after: Option<usize>,
        /// The offset of a record read damaged (its last byte cut off) as the log holds it.
        damaged: Option<u64>,
    }

    impl LogReader for Log {
        fn seek(&mut self, _: &[Position]) {
            self.at = 0;
        }

        fn poll(&mut self, max: usize, _: Duration) -> Result<Batch, meter_eventlog::Error> {
            if let Some(polls) = self.reassign_after.as_mut() {
                if *polls == 0 {
                    self.reassign_after = None;
                    return Ok(Batch { reassigned: true, ..Batch::default() });
                }
                *polls -= 1;
            }
            let n = max.min(self.per_poll).min(self.records.len() - self.at);
            let records = self.records[self.at..self.at + n].to_vec();
            self.at += n;
            Ok(Batch { records, caught_up: self.at == self.records.len(), started_us: 0, reassigned: false })
        }

        fn poll_encoded(&mut self, max: usize, timeout: Duration) -> Result<Batch<Encoded>, meter_eventlog::Error> {
            let Batch { records, caught_up, started_us, reassigned } = self.poll(max, timeout)?;
            let records = records
                .into_iter()
                .map(|r| {
                    let mut event = r.event.encode();
                    if Some(r.position.offset) == self.damaged {
                        event.pop();
                    }
                    Record { position: r.position, ingested_us: r.ingested_us, event }
                })
                .collect();
            Ok(Batch { records, caught_up, started_us, reassigned })
        }

        fn owned(&self) -> Vec<u32> {
            vec![0]
        }
    }

    fn event(tenant: &str, id: &str, code: &str, time_us: i64, properties: serde_json::Value) -> Event {
        Event {
            tenant: tenant.into(),
            id: id.into(),
            code: code.into(),
            time_us,
            implicit_time: false,
            subscription: None,
            source: None,
            properties: properties.as_object().cloned().unwrap_or_default(),
        }
    }

    fn log(events: Vec<Event>) -> Box<dyn LogReader> {
        log_reassigned(events, None)
    }

    fn log_reassigned(events: Vec<Event>, reassign_after: Option<usize>) -> Box<dyn LogReader> {
        Box::new(log_of(events, reassign_after, None))
    }

    fn log_of(events: Vec<Event>, reassign_after: Option<usize>, damaged: Option<u64>) -> Log {
        let records = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| Record { position: Position { partition: 0, offset: i as u64 }, ingested_us: 0, event })
            .collect();
        Log { records, at: 0, per_poll: 7, reassign_after, damaged }
    }

    /// The census as it was before it spilled: every id in memory, read in order.
    fn in_memory(events: &[Event], catalog: &Catalog, period: Period) -> Totals {
        let (mut seen, mut uniques, mut totals) = (HashSet::new(), HashSet::new(), Totals::new());
        for e in events {
            if !seen.insert((e.tenant.clone(), e.id.clone()))
                || e.time_us < period.start_us()
                || e.time_us >= period.end_us()
            {
                continue;
            }
            for (i, c) in catalog.contributions(e).0 {
                if let Contribution::Unique(v) = &c
                    && !uniques.insert((e.tenant.clone(), i, v.clone()))
                {
                    continue;
                }
                let name = catalog.meters()[i].name.clone();
                totals.entry(e.tenant.clone()).or_default().entry(name).or_default().add(&c, e.time_us, &e.id).unwrap();
            }
        }
        totals
    }

    #[test]
    fn a_census_handed_its_partitions_over_midway_reads_the_log_again_from_the_start() {
        let catalog = catalog();
        let october: Period = "2026-10".parse().unwrap();
        let t = october.start_us();
        let events: Vec<Event> = (0..100)
            .map(|i| {
                let tokens = json!({"model": "m", "input_tokens": i, "output_tokens": 0});
                event("a", &format!("e{}", i % 60), "agent.invocation", t + i, tokens)
            })
            .collect();
        let expected = in_memory(&events, &catalog, october);
        let dir = tempfile::tempdir().unwrap();
        let totals =
            census(log_reassigned(events, Some(5)), &catalog, october, 1, dir.path(), &|_| {}).unwrap().rest().unwrap();
        assert_eq!(totals, expected);
        assert_eq!(value(&totals, "a", "agent_invocations").as_deref(), Some("60"));
        assert_eq!(value(&totals, "a", "last_prompt").as_deref(), Some("59"), "e59's first copy is the latest");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the first spill is removed too");
    }

    #[test]
    fn a_damaged_record_stops_the_census_with_where_it_is() {
        let catalog = catalog();
        let october: Period = "2026-10".parse().unwrap();
        let events: Vec<Event> = (0..20)
            .map(|i| event("a", &format!("e{i}"), "work_order.created", october.start_us(), json!({})))
            .collect();
        let log = Box::new(log_of(events, None, Some(11)));
        let dir = tempfile::tempdir().unwrap();
        let refused = census(log, &catalog, october, 1, dir.path(), &|_| {}).map(drop).unwrap_err().to_string();
        assert!(refused.contains("corrupt record at partition 0 offset 11: "), "{refused}");
        assert!(refused.contains("meter's format"), "{refused}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "its spill is removed");
    }

    #[test]
    fn a_copy_is_skipped_only_when_its_slot_holds_the_same_tenant_and_id() {
        let mut seen = Seen::default();
        assert!(!seen.again(7, "a", "1"));
        assert!(seen.again(7, "a", "1"), "a copy of the event just spilled");
        assert!(!seen.again(7, "a", "2"), "another id of the same hash is spilled");
        assert!(!seen.again(7, "b", "2"), "and another tenant's");
        assert!(!seen.again(7, "a", "1"), "the slot now holds b's");
        assert!(!seen.again(u64::MAX, "a", "1"), "another slot");
        assert!(seen.again(u64::MAX, "a", "1"));
    }

    #[test]
    fn one_event_sent_thousands_of_times_counts_once() {
        let catalog = catalog();
        let october: Period = "2026-10".parse().unwrap();
        let tokens = |n: u64| json!({"model": "m", "input_tokens": n, "output_tokens": 0});
        let mut events = vec![event("a", "first", "agent.invocation", october.start_us(), tokens(3))];
        events.extend((0..5_000).map(|n| event("a", "loop", "agent.invocation", october.start_us() + 1, tokens(n))));
        events.extend(
            (0..5_000).map(|n| event("a", &format!("e{n}"), "agent.invocation", october.start_us(), tokens(1))),
        );
        let expected = in_memory(&events, &catalog, october);
        let dir = tempfile::tempdir().unwrap();
        let totals =
            census_within(log(events), &catalog, october, 1, dir.path(), 4096, &|_| {}).unwrap().rest().unwrap();
        assert_eq!(totals, expected);
        assert_eq!(value(&totals, "a", "agent_tokens").as_deref(), Some("5003"), "3 + the loop's first 0 + 5,000");
        assert_eq!(value(&totals, "a", "largest_prompt").as_deref(), Some("3"));
    }

    /// A run that holds fewer records than were written to it (a disk that lost its end) stops
    /// the read, naming it, rather than giving totals without them.
    #[test]
    fn a_run_cut_short_stops_the_read_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs = Runs { dir: dir.path().to_path_buf(), runs: Vec::new() };
        let mut totals = Partials::new();
        for tenant in ["a", "b", "c"] {
            tally(&mut totals, tenant, 0).add(&Contribution::Count, 0, "").unwrap();
        }
        runs.write(totals).unwrap();
        // The same run without its last record.
        let mut w = File::create(&runs.runs[0].path).unwrap();
        for tenant in ["a", "b"] {
            let tally = Tally { value: Some(Decimal::ONE), latest: None };
            Partial { tenant: tenant.into(), meter: 0, tally }.write(&mut w).unwrap();
        }
        drop(w);
        let meters = [("work_orders".to_string(), Aggregation::Count)];
        let mut merge = Merge::of(runs, &meters).unwrap();
        assert_eq!(merge.next(&meters).unwrap().map(|p| p.tenant).as_deref(), Some("a"));
        let e = merge.next(&meters).map(drop).unwrap_err().to_string();
        assert!(e.contains("holds 2 records of the 3 written"), "{e}");
    }

    #[test]
    fn only_spills_no_live_census_holds_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let made = |name: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("0"), b"spilled").unwrap();
            d
        };
        let (killed, killed_early, live, other) =
            (made("census-killed"), made("census-early"), made("census-live"), made("something-else"));
        File::create(killed.join(LOCK)).unwrap();
        let held = File::create(live.join(LOCK)).unwrap();
        assert!(held.try_lock_exclusive().unwrap());
        remove_left_over(dir.path());
        assert!(!killed.exists() && !killed_early.exists(), "unlocked spills are removed");
        assert!(live.join("0").exists() && other.join("0").exists(), "a live census's and others' files stay");
        drop(held);
        remove_left_over(dir.path());
        assert!(!live.exists() && other.exists());
    }

    fn value(totals: &Totals, tenant: &str, meter: &str) -> Option<String> {
        totals.get(tenant)?.get(meter)?.value.map(|v| v.normalize().to_string())
    }

    #[test]
    fn the_first_copy_of_an_event_is_counted_once_and_a_copy_outside_the_period_counts_nothing() {
        let catalog = Catalog::new(vec![]).unwrap();
        let october: Period = "2026-10".parse().unwrap();
        let t = october.start_us() + 1_000;
        let tokens = |input: u64| json!({"model": "m", "input_tokens": input, "output_tokens": 0});
        let events = vec![
            event("a", "1", "agent.invocation", t, tokens(100)),
            // A later copy with other content: the first copy is the one counted.
            event("a", "1", "agent.invocation", t, tokens(999)),
            event("a", "2", "agent.invocation", t, tokens(5)),
            // First read with a time in November: neither it nor its October copy counts.
            event("a", "3", "agent.invocation", october.end_us(), tokens(1_000)),
            event("a", "3", "agent.invocation", t, tokens(1_000)),
            // The same id in another tenant is another event.
            event("b", "1", "agent.invocation", t, tokens(7)),
            event("b", "u1", "user.login", t, json!({"user_id": "x"})),
            event("b", "u2", "user.login", t, json!({"user_id": "x"})),
            event("b", "u3", "user.login", t, json!({"user_id": "y"})),
        ];
        let dir = tempfile::tempdir().unwrap();
        let totals = census(log(events), &catalog, october, 1, dir.path(), &|_| {}).unwrap().rest().unwrap();
        assert_eq!(value(&totals, "a", "agent_tokens").as_deref(), Some("105"));
        assert_eq!(value(&totals, "a", "agent_invocations").as_deref(), Some("2"));
        assert_eq!(value(&totals, "b", "agent_tokens").as_deref(), Some("7"));
        assert_eq!(value(&totals, "b", "active_users").as_deref(), Some("2"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the spill is removed");
    }

    /// The built-in meters, and a max and a latest of the tokens (whose results depend on
    /// which copies count and on their times and ids).
    fn catalog() -> Catalog {
        let meter = |name: &str, aggregation| meter_schemas::MeterDef {
            name: name.into(),
            event: "agent.invocation".into(),
            aggregation,
            property: vec!["input_tokens".into()],
            filter: Default::default(),
            description: String::new(),
            group_by: vec![],
        };
        use meter_schemas::Aggregation::{Latest, Max};
        Catalog::new(vec![meter("largest_prompt", Max), meter("last_prompt", Latest)]).unwrap()
    }

    #[test]
    fn split_spills_count_as_the_census_in_memory_did() {
        let catalog = catalog();
        let october: Period = "2026-10".parse().unwrap();
        let codes = ["work_order.created", "work_order.completed", "agent.invocation", "api.call", "user.login"];
        let mut events = Vec::new();
        for i in 0..20_000u64 {
            let n = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
            // A fifth of the ids are sent again, some with other content or time.
            let id = if n % 5 == 0 { format!("e{}", n % 1_000) } else { format!("e{i}") };
            let time_us = if n % 17 == 0 { october.end_us() + 5 } else { october.start_us() + (n % 1_000_000) as i64 };
            let properties = json!({
                "work_order_id": format!("w{}", n % 300),
                "model": "m", "input_tokens": n % 997, "output_tokens": (n % 13) as f64 / 8.0,
                "route": "/r", "method": "GET", "status": 200,
                "user_id": format!("u{}", n % 40),
            });
            events.push(event(&format!("t{}", n % 50), &id, codes[(n / 50 % 5) as usize], time_us, properties));
        }
        let expected = in_memory(&events, &catalog, october);
        let dir = tempfile::tempdir().unwrap();
        // About 1.1 MB of copies spilled: files of about 17 KB, each split again at this budget.
        let split = census_within(log(events.clone()), &catalog, october, 1, dir.path(), 4096, &|_| {})
            .unwrap()
            .rest()
            .unwrap();
        let whole = census(log(events.clone()), &catalog, october, 1, dir.path(), &|_| {}).unwrap().rest().unwrap();
        assert!(expected.len() == 50 && expected.values().all(|m| m.len() == 8), "every meter has figures");
        assert_eq!(split, expected);
        assert_eq!(whole, expected);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the spills are removed");

        // Read a range of tenants at a time, in the order of their bytes (t1 < t10 < … < t2).
        let mut accepted = census_within(log(events), &catalog, october, 1, dir.path(), 4096, &|_| {}).unwrap();
        assert!(accepted.merge.premerged > 0, "more runs than are merged at once: groups of them merged first");
        let (mut read, mut after) = (Totals::new(), None::<&str>);
        for upto in [Some("t0"), Some("t0"), Some("t19"), Some("t2"), Some("t44"), None] {
            let range = accepted.until(upto).unwrap();
            for tenant in range.keys() {
                assert!(after.is_none_or(|a| tenant.as_str() > a) && upto.is_none_or(|u| tenant.as_str() <= u));
            }
            assert!(upto != Some("t0") || after != Some("t0") || range.is_empty(), "nothing twice");
            read.extend(range);
            after = upto;
        }
        assert_eq!(read, expected, "the ranges together");
        assert!(accepted.until(None).unwrap().is_empty());
        drop(accepted);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the spill is removed once read");
    }
}
