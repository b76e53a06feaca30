//! Dedup state for the embedded default, kept for a horizon and cheap for random ids.
//!
//! One B-tree keyed by event id dirties a random page per new id, and a commit writes every
//! dirty page to the WAL: with random (UUIDv4) ids that cost ingest more than half its rate.
//! Here a new id is appended: the ids a transaction appends are written as one row of a small
//! table in arrival order (`<name>_appended`, its rowid; [`Dedup::commit`]), so that an id costs
//! no row of its own, and mirrored in memory; once that holds [`Settings::flush_at`] ids they
//! move, sorted, into the open generation's B-tree, so a leaf page of it is written about once
//! per move however many of its ids arrived. The move goes in key order, a chunk after each commit of the writer
//! ([`MOVE_CHUNK`] ids, or twice those appended since the last chunk if more), so that no commit
//! waits for the whole move. The move's last transaction raises a floor below which every
//! appended row is moved (readers read above it); the rows below it are deleted after later
//! commits, [`TRIM_ROWS`] at a time, the floor's own row kept so that no rowid is given twice.
//! Generations are arrival buckets: a new one opens every quarter of the horizon, and one whose
//! last arrival is older than the horizon leaves the lookups at the next seal, dropped whole
//! there up to [`DROP_WHOLE`] ids, a larger one's rows deleted after later commits,
//! [`DROP_ROWS`] at a time (its table dropped once empty), so the state stays flat under a
//! steady load and no commit waits for a large generation's pages. A generation is
//! also sealed, and a new one opened, once it holds [`Settings::seal_at`] ids, so that the B-tree
//! a move writes into stays within the page cache until the horizon holds [`SEALED`] times that
//! (beyond, a generation is sealed at a `SEALED`th of the sealed ids: about `SEALED` of them
//! once a horizon has passed (computed), but about `SEALED` × (1 + ln(ids ÷ (`SEALED` × seal_at))) until
//! then, 105 at 38.5 million ids; BENCHMARKS.md, "The soak"). A lookup asks the memory mirror, then each live
//! generation, newest first; a sealed generation (it takes no more ids) is asked only if its
//! filter (a binary fuse filter of its ids, about 9 bits an id, no false negatives, 0.4 % false
//! positives) says it may hold the id, so that a new id costs the open generation's pages and
//! seldom one of a sealed one. Each run of [`GROUP`] adjacent sealed generations gets one
//! filter of all their ids, built off the writer's thread and kept in `<name>_groups`: a lookup
//! asks it in place of theirs, and their B-trees only if it may hold the id, so that it asks
//! about a `GROUP`th as many filters (each a load that misses the cache). The writer's batch ([`Batch::insert_new`]) asks the open
//! generation only about an id going straight in (its key refuses a copy) or one whose
//! fingerprint the generation may hold, while the writer knows every id there. A generation's
//! filter is written into `<name>_gens` in the transaction that seals it, and each connection
//! reads it from there rather than scanning the generation (a filter it cannot read, or none,
//! is built from the table).
//!
//! Every connection that looks ids up keeps a [`Mirror`] refreshed inside its transaction: the
//! rows appended since it last looked (rowid order), or all of them above the floor after a
//! move (an epoch in `<name>_state` says when). The single writer stages its own uncommitted appended ids apart,
//! and keeps the fingerprints of those it put straight into the open generation
//! ([`Batch::insert`], [`Dedup::rollback_to`]), so a rolled back request leaves nothing behind.

use hashbrown::HashMap;
use rusqlite::{Connection, OptionalExtension, params};
use siphasher::sip::SipHasher13;
use std::hash::Hasher;
use xorf::{BinaryFuse8, Descriptor, Filter};

/// A stored id's value: the event's payload hash and its place in the log (the store keeps
/// neither).
pub type Value = (Vec<u8>, i64);

/// How the dedup state is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How long an id is kept after it arrived (µs), at least.
    pub horizon_us: i64,
    /// Ids appended before they move into the open generation's B-tree.
    pub flush_at: usize,
    /// Ids a generation takes before it is sealed and the next one opens (checked at the end
    /// of each move, so a generation may hold up to a move more), or a [`SEALED`]th of the
    /// ids in the sealed ones if more.
    pub seal_at: usize,
    /// Whether an id above the open generation's recent keys goes straight into it rather than
    /// being appended and moved (see [`EDGE_LAG`]).
    pub straight: bool,
    /// Rows of a generation past the horizon deleted after each commit, at least (see
    /// [`DROP_ROWS`]).
    pub drop_rows: usize,
    /// Ids of a generation past the horizon up to which it is dropped whole at the seal that
    /// finds it so (see [`DROP_WHOLE`]).
    pub drop_whole: usize,
}

/// Generations per horizon: ids are kept between the horizon and a quarter more.
const GENERATIONS: i64 = 4;

/// About how many sealed generations a lookup asks the filters of once a horizon has passed:
/// once the sealed ones hold more than `SEALED` × [`Settings::seal_at`] ids, a generation is
/// sealed at a `SEALED`th of them rather than at `seal_at` (during the first horizon their
/// number keeps growing, as the logarithm of the ids; see the module's documentation).
pub const SEALED: usize = 32;

/// Sealed generations a group filter covers. A lookup asks each sealed generation's filter, a
/// load from memory that misses the cache, and until a horizon has passed there are about
/// `SEALED` × (1 + ln(ids ÷ (`SEALED` × seal_at))) of them: 105 at 38.5 million ids, when 21.5 %
/// of the embedded default's CPU samples were in the lookup, 90 % of those on the filters' loads
/// (BENCHMARKS.md, "The soak"). Once `GROUP` adjacent sealed generations are in no group, the
/// writer builds one filter of all their ids, off its thread ([`Dedup::group`]), and lookups ask
/// it in place of theirs: about a `GROUP`th as many filters, as much memory.
pub const GROUP: usize = 8;

/// Rows a group's build reads from a generation per read transaction, so that no snapshot is
/// held long enough to keep a checkpoint from reaching the end of the WAL.
const GROUP_SCAN_ROWS: i64 = 65_536;

/// Ids at most (about: fingerprints are spread evenly) in each part of a group's filter
/// ([`Parted`]). xorf's construction takes some 24 bytes an id (computed from its arrays, not
/// measured): a group of 10 million ids built whole would hold about 240 MB beside its 80 MB of
/// fingerprints, where the filters of every generation took 43 MB in the soak; in parts, 25 MB.
pub const GROUP_PART: usize = 1 << 20;

/// How long after a group's build or keeping failed none is started again.
const GROUP_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// Ids moved into the open generation after each commit while a move runs (at least; twice
/// the ids appended since the last chunk if more). Random ids cost about 0.9-2.6 µs each to
/// move here, so a chunk holds the writer's next commit for about 0.3-0.6 ms (the medians of
/// the store's and of the log's chunks; 0.35-0.68 ms at p90; at 20,000 random ids a second,
/// `RUST_LOG=meter_sqlite=debug`; a move's last chunk, which seals, 5.9-8.1 ms). At 16,384 a
/// chunk took 14-43 ms, and requests arriving during a move waited that long (BENCHMARKS.md,
/// "Rate quotas and a flood; dedup moves in short chunks"); at 1,024, 100 tenants' request p99
/// beside a flood whose ids sort above theirs was 2.0-3.6 times its value without the flood, at
/// 256 1.3-1.8 times, for the same CPU per event ("A flood's ids no longer slow the others'").
/// Under a heavy load the chunk is set by the ids arriving, not by this.
pub const MOVE_CHUNK: usize = 256;

/// Rows a move inserts into the open generation per statement, so that a statement's binding,
/// step and reset are paid once for them rather than per row (the chunk's remainder goes a row
/// at a time).
const MOVE_ROWS: usize = 64;

/// Bytes of tenant and id a writer's mirror has room for per id it has room for (the load
/// generator's random ids and their tenant take about 50; more grows the buffer by copying).
const TEXT_ROOM: usize = 64;

/// Bytes of value likewise (the event log's hash of an event's content takes 32; the store's
/// ids have none, and untouched room costs address space, not memory).
const BYTES_ROOM: usize = 32;

/// Moved rows of appended ids deleted after each commit once a move has ended (at least; twice
/// the rows appended since the last piece if more). A row holds the ids one transaction
/// appended. When each id had a row, a move's last chunk deleted every row it moved, 131,072 at
/// the default `flush_at`: that held the writer for 17-26 ms and made its commit as long again
/// (BENCHMARKS.md, "Prepared statements kept, and moved rows deleted after the move").
pub const TRIM_ROWS: usize = 16;

/// Rows of a large generation past the horizon ([`DROP_WHOLE`]) deleted after each commit (at
/// least; twice the ids committed since the last piece if more), its table dropped once it holds
/// fewer rows than a piece has left.
pub const DROP_ROWS: usize = 4_096;

/// Ids of a generation past the horizon up to which it is dropped whole inside the seal that
/// finds it so; a larger one is emptied a piece at a time ([`DROP_ROWS`]). `DROP TABLE` frees
/// every page of the table inside the writer's transaction, and a generation holds up to a
/// thirty-second of the horizon's ids, millions on a busy server: dropped whole, it would hold
/// every commit for as long (BENCHMARKS.md, "Generations past the horizon: dropped whole or a
/// piece at a time"). Deleting rows costs more in all than freeing pages, and a piece after
/// every commit raised the ingest p99 with generations of 131,072 ids, so those still go whole.
pub const DROP_WHOLE: usize = 262_144;

/// How many commits back the writer looks for the open generation's greatest key: a new id
/// above the greatest key as it was then goes straight into the generation's B-tree (its right
/// edge, whose pages the last commits wrote anyway) rather than being appended and moved. Time-
/// ordered ids (ULIDs, UUIDv7) then cost one insert, as in a plain B-tree, even when requests
/// in flight commit a little out of order; random ids seldom land above it.
const EDGE_LAG: usize = 8;

impl Settings {
    /// Kept for `horizon_us`, flushed every 131,072 new ids (about 20 MB of memory per mirror),
    /// a generation sealed at as many: each move fills a generation of its own, written in key
    /// order into an empty B-tree, so each of its pages is written once whatever the ids (at
    /// 3,000,000 random ids this ran at 0.88-0.95 of ordered ones, sealing at twice as many at
    /// 0.75-0.83; BENCHMARKS.md).
    pub fn new(horizon_us: i64) -> Self {
        Settings {
            horizon_us: horizon_us.max(GENERATIONS),
            flush_at: 131_072,
            seal_at: 131_072,
            straight: true,
            drop_rows: DROP_ROWS,
            drop_whole: DROP_WHOLE,
        }
    }

    /// How long a generation takes arrivals: a quarter of the horizon.
    pub fn bucket_us(&self) -> i64 {
        self.horizon_us / GENERATIONS
    }
}

/// `(tenant, id)`.
type Key = (String, String);

/// What a filter is built from: a `(tenant, id)`'s 64-bit hash. Filters are kept in the file,
/// so the hash must not change between builds: SipHash-1-3 with zero keys over the tenant's
/// length, the tenant and the id (the `siphasher` crate; std's `DefaultHasher` may change its
/// algorithm in any Rust release). Changing it means a new [`FILTER_FORMAT`]. The Postgres
/// store's sealed arrival partitions keep filters of the same fingerprints.
pub fn fingerprint(tenant: &str, id: &str) -> u64 {
    let mut h = SipHasher13::new();
    h.write(&(tenant.len() as u64).to_le_bytes());
    h.write(tenant.as_bytes());
    h.write(id.as_bytes());
    h.finish()
}

/// The layout of a filter kept in `<name>_gens.filter`: this byte, the filter's descriptor (seed
/// u64, segment length, its mask and the segments' total length, u32 each, little-endian), a
/// checksum (u64, SipHash-1-3 keyed [`FILTER_SUM_KEY`] over everything else) and the
/// fingerprints. An empty blob says no filter could be built (the generation is always asked).
const FILTER_FORMAT: u8 = 1;
const FILTER_SUM_KEY: (u64, u64) = (0x6d65_7465_7220_6467, 0x6669_6c74_6572_7331);
const FILTER_HEADER: usize = 1 + 8 + 4 + 4 + 4;

/// A filter as kept in the file ([`FILTER_FORMAT`]); none is an empty blob.
fn encode_filter(filter: Option<&BinaryFuse8>) -> Vec<u8> {
    let Some(f) = filter else { return Vec::new() };
    let d = &f.descriptor;
    let mut out = Vec::with_capacity(FILTER_HEADER + 8 + f.fingerprints.len());
    out.push(FILTER_FORMAT);
    out.extend_from_slice(&d.seed.to_le_bytes());
    out.extend_from_slice(&d.segment_length.to_le_bytes());
    out.extend_from_slice(&d.segment_length_mask.to_le_bytes());
    out.extend_from_slice(&d.segment_count_length.to_le_bytes());
    let sum = filter_sum(&out, &f.fingerprints);
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(&f.fingerprints);
    out
}

fn filter_sum(header: &[u8], fingerprints: &[u8]) -> u64 {
    let mut h = SipHasher13::new_with_keys(FILTER_SUM_KEY.0, FILTER_SUM_KEY.1);
    h.write(header);
    h.write(fingerprints);
    h.finish()
}

/// What a blob kept by [`encode_filter`] says: a filter, none (`Ok(None)`: always ask), or why it
/// cannot be used (another format, a checksum that does not match, a descriptor that would read
/// past its fingerprints).
fn decode_filter(blob: &[u8]) -> Result<Option<BinaryFuse8>, &'static str> {
    if blob.is_empty() {
        return Ok(None);
    }
    if blob[0] != FILTER_FORMAT {
        return Err("another format");
    }
    if blob.len() < FILTER_HEADER + 8 {
        return Err("shorter than its header");
    }
    let (header, rest) = blob.split_at(FILTER_HEADER);
    let (sum, fingerprints) = rest.split_at(8);
    if filter_sum(header, fingerprints).to_le_bytes() != sum {
        return Err("checksum does not match");
    }
    let u32_at = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
    let descriptor = Descriptor {
        seed: u64::from_le_bytes(header[1..9].try_into().expect("8 bytes")),
        segment_length: u32_at(9),
        segment_length_mask: u32_at(13),
        segment_count_length: u32_at(17),
    };
    // As xorf builds one: whole segments of a power of two, and two more segments of
    // fingerprints after them (a lookup reads up to two segments past its first).
    let (length, total) = (descriptor.segment_length, descriptor.segment_count_length);
    let reach = u64::from(total) + 2 * u64::from(length);
    if !length.is_power_of_two()
        || descriptor.segment_length_mask != length - 1
        || total < length
        || total % length != 0
        || reach != fingerprints.len() as u64
    {
        return Err("descriptor does not fit its fingerprints");
    }
    Ok(Some(BinaryFuse8 { descriptor, fingerprints: fingerprints.into() }))
}

/// A filter of `fps` (each id's [`fingerprint`], each once: xorf fails on duplicates); none if it
/// cannot be built, and the generation is then always asked.
fn filter_of(fps: &[u64]) -> Option<BinaryFuse8> {
    BinaryFuse8::try_from(fps).ok()
}

/// A group's filter: its fingerprints split by their top `bits` bits into parts of about
/// [`GROUP_PART`] ids at most, a binary fuse filter each (none for an empty part), so that a
/// build holds one part's construction at a time. A lookup asks the one part its fingerprint
/// falls in. The Postgres store keeps one of each sealed arrival partition's ids.
pub struct Parted {
    bits: u32,
    parts: Vec<Option<BinaryFuse8>>,
}

/// Which part of a [`Parted`] a fingerprint falls in: its top `bits` bits.
#[derive(Clone, Copy)]
pub struct Parting {
    bits: u32,
}

impl Parting {
    /// The part fingerprint `fp` falls in.
    pub fn part(self, fp: u64) -> usize {
        match self.bits {
            0 => 0,
            bits => (fp >> (64 - bits)) as usize,
        }
    }
}

impl Parted {
    fn part(&self, fp: u64) -> usize {
        Parting { bits: self.bits }.part(fp)
    }

    /// Whether the id of fingerprint `fp` may be one of the filter's (never a false no).
    pub fn contains(&self, fp: u64) -> bool {
        self.parts[self.part(fp)].as_ref().is_some_and(|f| f.contains(&fp))
    }

    /// The filter of `fps` (sorted, each once) in parts of about `part_ids` at most; none if a
    /// part cannot be built.
    pub fn of(fps: &[u64], part_ids: usize) -> Option<Self> {
        let mut build = Parted::build(fps.len(), part_ids);
        let parts = build.parts();
        build.add(fps, parts).then_some(())?;
        build.finish()
    }

    /// A filter of about `ids` fingerprints in parts of about `part_ids` at most, built a range of
    /// parts at a time ([`PartedBuild::add`]), so that a build need not hold every fingerprint at
    /// once.
    pub fn build(ids: usize, part_ids: usize) -> PartedBuild {
        let count = ids.div_ceil(part_ids.max(1)).max(1).next_power_of_two();
        PartedBuild { filter: Parted { bits: count.trailing_zeros(), parts: Vec::with_capacity(count) } }
    }
    /// As kept in `<name>_groups.filter`: [`GROUP_FORMAT`], `bits` (a byte), then each part's
    /// length (u64, little-endian) and the part as [`encode_filter`] keeps a filter (empty for an
    /// empty part).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![GROUP_FORMAT, self.bits as u8];
        for part in &self.parts {
            let blob = encode_filter(part.as_ref());
            out.extend_from_slice(&(blob.len() as u64).to_le_bytes());
            out.extend_from_slice(&blob);
        }
        out
    }

    /// What [`Parted::encode`] kept: none for an empty blob (no filter could be built), or why it
    /// cannot be used.
    pub fn decode(blob: &[u8]) -> Result<Option<Self>, &'static str> {
        let Some((&format, rest)) = blob.split_first() else { return Ok(None) };
        if format != GROUP_FORMAT {
            return Err("another format");
        }
        let Some((&bits, mut rest)) = rest.split_first() else { return Err("no parts") };
        if bits > 24 {
            return Err("too many parts");
        }
        let mut parted = Parted { bits: u32::from(bits), parts: Vec::with_capacity(1 << bits) };
        for _ in 0..1usize << bits {
            let (len, tail) = rest.split_at_checked(8).ok_or("shorter than its parts")?;
            let len = usize::try_from(u64::from_le_bytes(len.try_into().expect("8 bytes"))).unwrap_or(usize::MAX);
            let (part, tail) = tail.split_at_checked(len).ok_or("shorter than its parts")?;
            parted.parts.push(decode_filter(part)?);
            rest = tail;
        }
        match rest.is_empty() {
            true => Ok(Some(parted)),
            false => Err("longer than its parts"),
        }
    }
}

/// A [`Parted`] being built, its parts in order.
pub struct PartedBuild {
    filter: Parted,
}

impl PartedBuild {
    /// How many parts the filter has.
    pub fn parts(&self) -> usize {
        1 << self.filter.bits
    }

    /// Which part each fingerprint falls in.
    pub fn parting(&self) -> Parting {
        Parting { bits: self.filter.bits }
    }

    /// Builds the parts from the next one not built up to `upto` (excluded) of `fps`, sorted, each
    /// once, every one of them in those parts; false if a part cannot be built.
    pub fn add(&mut self, fps: &[u64], upto: usize) -> bool {
        let mut rest = fps;
        for p in self.filter.parts.len()..upto.min(self.parts()) {
            let end = rest.partition_point(|&fp| self.filter.part(fp) == p);
            let (part, tail) = rest.split_at(end);
            rest = tail;
            let built = match part.is_empty() {
                true => None,
                false => match filter_of(part) {
                    Some(f) => Some(f),
                    None => return false,
                },
            };
            self.filter.parts.push(built);
        }
        rest.is_empty()
    }

    /// The filter, once every part is built.
    pub fn finish(self) -> Option<Parted> {
        (self.filter.parts.len() == self.parts()).then_some(self.filter)
    }
}

/// The layout of a group's filter in `<name>_groups.filter` ([`Parted::encode`]).
const GROUP_FORMAT: u8 = 1;

/// The fingerprints of every id in the open generation, while its writer knows them all.
type Fingerprints = hashbrown::HashSet<u64>;

/// An appended id a mirror holds: where its tenant and id are in its list's `text` (one after
/// the other), where its value's bytes are in the list's `bytes`, the value's number and its
/// [`fingerprint`].
#[derive(Clone, Copy)]
struct Entry {
    text: usize,
    tenant: u32,
    id: u32,
    bytes: usize,
    len: u32,
    number: i64,
    fp: u64,
}

/// The appended ids a mirror holds, in the order it learned them, found through an index of
/// their places hashed by fingerprint. A move takes the whole list at once, and the index is 4
/// bytes a slot, where a map of the entries themselves (80 bytes a slot) made every insert
/// touch a random line of some 20 MB at 131,072 ids. Their strings and values' bytes are kept
/// in two buffers rather than each in an allocation of its own: a move sorts the ids and binds
/// them in that order, and reading each from wherever the allocator had put it was a cache miss
/// (a tenth of the embedded default's CPU with random ids; BENCHMARKS.md).
#[derive(Default)]
struct Appended {
    entries: Vec<Entry>,
    text: String,
    bytes: Vec<u8>,
    index: hashbrown::HashTable<u32>,
}

/// What [`Appended::sort`] sorts and the entries in their new order: a writer's mirror keeps
/// them with their room between moves (some 80 bytes an id moved).
type Sorting = (Vec<(u128, u32)>, Vec<Entry>);

fn len_of(bytes: &[u8]) -> u32 {
    u32::try_from(bytes.len()).expect("a value shorter than 4 GiB")
}

impl Appended {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn tenant(&self, e: &Entry) -> &str {
        &self.text[e.text..e.text + e.tenant as usize]
    }

    fn id(&self, e: &Entry) -> &str {
        let at = e.text + e.tenant as usize;
        &self.text[at..at + e.id as usize]
    }

    /// Its key as a generation sorts it: the id, then the tenant.
    fn sorted(&self, e: &Entry) -> (&str, &str) {
        (self.id(e), self.tenant(e))
    }

    /// Its value's bytes and number as a generation's row holds them (none for no bytes).
    fn nullable(&self, e: &Entry) -> (Option<&[u8]>, Option<i64>) {
        match e.len {
            0 => (None, None),
            len => (Some(&self.bytes[e.bytes..e.bytes + len as usize]), Some(e.number)),
        }
    }

    fn value(&self, e: &Entry) -> Value {
        (self.bytes[e.bytes..e.bytes + e.len as usize].to_vec(), e.number)
    }

    fn find(&self, tenant: &str, id: &str, fp: u64) -> Option<usize> {
        let at = self.index.find(fp, |&i| {
            let e = &self.entries[i as usize];
            e.fp == fp && self.tenant(e) == tenant && self.id(e) == id
        })?;
        Some(*at as usize)
    }

    fn get(&self, tenant: &str, id: &str, fp: u64) -> Option<Value> {
        self.find(tenant, id, fp).map(|i| self.value(&self.entries[i]))
    }

    /// Holds `(tenant, id)` with `value` (`fp` its fingerprint), replacing the value it held
    /// (in its place if no longer: a row read again after a failure gives the same values, and
    /// its ids would otherwise take room again at every read).
    fn insert(&mut self, tenant: &str, id: &str, value: (&[u8], i64), fp: u64) {
        let Some(i) = self.find(tenant, id, fp) else { return self.insert_new(tenant, id, value, fp) };
        let e = &mut self.entries[i];
        let len = len_of(value.0);
        if len > e.len {
            e.bytes = self.bytes.len();
            self.bytes.extend_from_slice(value.0);
        } else {
            self.bytes[e.bytes..e.bytes + len as usize].copy_from_slice(value.0);
        }
        (e.len, e.number) = (len, value.1);
    }

    /// Holds `(tenant, id)`, which it does not hold, with `value` (`fp` its fingerprint).
    fn insert_new(&mut self, tenant: &str, id: &str, value: (&[u8], i64), fp: u64) {
        debug_assert!(self.find(tenant, id, fp).is_none(), "an appended id held twice");
        let bytes = self.bytes.len();
        self.bytes.extend_from_slice(value.0);
        let text = self.text.len();
        self.text.push_str(tenant);
        self.text.push_str(id);
        let i = u32::try_from(self.entries.len()).expect("fewer than 2^32 appended ids in a mirror");
        self.entries.push(Entry {
            text,
            tenant: u32::try_from(tenant.len()).expect("a tenant shorter than 4 GiB"),
            id: u32::try_from(id.len()).expect("an id shorter than 4 GiB"),
            bytes,
            len: len_of(value.0),
            number: value.1,
            fp,
        });
        let entries = &self.entries;
        self.index.insert_unique(fp, i, |&j| entries[j as usize].fp);
    }

    /// Takes `other`'s entries after its own (without indexing them: a moving list's use).
    fn append(&mut self, other: &Appended) {
        let (text, bytes) = (self.text.len(), self.bytes.len());
        self.text.push_str(&other.text);
        self.bytes.extend_from_slice(&other.bytes);
        self.entries.extend(other.entries.iter().map(|e| Entry { text: e.text + text, bytes: e.bytes + bytes, ..*e }));
    }

    /// Takes `other`'s entries, none of which it holds, after its own, indexed.
    fn extend(&mut self, other: &Appended) {
        let from = self.entries.len();
        self.append(other);
        let entries = &self.entries;
        for (i, e) in entries.iter().enumerate().skip(from) {
            let i = u32::try_from(i).expect("fewer than 2^32 appended ids in a mirror");
            self.index.insert_unique(e.fp, i, |&j| entries[j as usize].fp);
        }
    }

    /// Keeps its first `len` entries (of a list that took only new ids: a replaced value's
    /// bytes would be after the next entry's).
    fn truncate(&mut self, len: usize) {
        let Some(&Entry { text, bytes, .. }) = self.entries.get(len) else { return };
        self.index.retain(|i| (*i as usize) < len);
        self.entries.truncate(len);
        self.text.truncate(text);
        self.bytes.truncate(bytes);
    }

    /// Sorts the entries as a generation's key (id, then tenant), leaving the index stale. The
    /// sort compares 16 bytes of each id read once, after the prefix every id shares (random ids
    /// from one source share one), and reads the ids themselves only where those are equal:
    /// comparing the strings in place read two random places of the text for every comparison.
    fn sort(&mut self, (order, sorted): &mut Sorting) {
        let (list, entries) = (&*self, &self.entries);
        let Some(first) = entries.first() else { return };
        let mut shared = list.id(first).as_bytes();
        for e in entries {
            let same = shared.iter().zip(list.id(e).as_bytes()).take_while(|(a, b)| a == b).count();
            shared = &shared[..same];
        }
        let skip = shared.len();
        order.clear();
        order.extend(entries.iter().enumerate().map(|(i, e)| {
            // The id's next 16 bytes, zeros after its end: where two differ, so do the ids,
            // the same way (a shorter id sorts first, and an id's byte is never below 0).
            let mut next = [0u8; 16];
            let rest = &list.id(e).as_bytes()[skip..];
            let n = rest.len().min(16);
            next[..n].copy_from_slice(&rest[..n]);
            (u128::from_be_bytes(next), i as u32)
        }));
        order.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| list.sorted(&entries[a.1 as usize]).cmp(&list.sorted(&entries[b.1 as usize])))
        });
        sorted.clear();
        // At least the room the list had, which it keeps (`Mirror::reserved`).
        sorted.reserve(entries.capacity());
        sorted.extend(order.iter().map(|&(_, i)| entries[i as usize]));
        std::mem::swap(&mut self.entries, sorted);
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.text.clear();
        self.bytes.clear();
        self.index.clear();
    }
}

/// How a connection looks an id up in one live generation.
struct Lookup {
    tbl: String,
    sql: String,
    /// A sealed generation's filter: it is asked only if this may hold the id (none for a
    /// member of a group, whose filter answers for it).
    filter: Option<BinaryFuse8>,
    /// The generation's number.
    gen_no: i64,
    /// Whether it is sealed.
    sealed: bool,
    /// The group it belongs to (its place in [`Mirror`]'s `groups`).
    group: Option<usize>,
}

/// A filter over a run of adjacent sealed generations ([`GROUP`] of them), asked once for all
/// of them: a lookup asks its members' B-trees only if it may hold the id.
struct Group {
    /// Its row in `<name>_groups`.
    id: i64,
    filter: Parted,
    /// Its live members' places in [`Mirror`]'s `lookups` (adjacent: both go by generation).
    start: usize,
    end: usize,
}

/// What a connection knows of the appended ids and the live generations.
#[derive(Default)]
pub struct Mirror {
    epoch: Option<i64>,
    last_rowid: i64,
    /// Each live generation, newest first.
    lookups: Vec<Lookup>,
    /// The group filters over sealed generations, newest first.
    groups: Vec<Group>,
    /// The groups' `AUTOINCREMENT` sequence as last read: another value means a group was kept.
    groups_seen: i64,
    /// The newest generation in a group (kept with a filter or not), if any.
    grouped_through: Option<i64>,
    /// Group filters this connection's writer built, by group, taken at the next reload rather
    /// than read back.
    adopted_groups: HashMap<i64, Parted>,
    /// Filters asked, a group's or a generation's (a test's count: groups spare them).
    #[cfg(test)]
    filters_asked: std::cell::Cell<usize>,
    /// Filters of sealed generations built elsewhere (the writer's, from the ids it moved),
    /// taken at the next reload rather than built from the table.
    adopted: HashMap<String, BinaryFuse8>,
    /// How many ids the sealed generations hold (as recorded when each was sealed).
    sealed_ids: usize,
    /// Generations' B-trees asked (a test's count: the filters spare the others).
    #[cfg(test)]
    probes: std::cell::Cell<usize>,
    /// Sealed generations scanned for their filter (a test's count: kept filters spare them).
    #[cfg(test)]
    scans: std::cell::Cell<usize>,
    /// Times the appended ids were read again from the first (a test's count: a writer's own
    /// seal spares it).
    #[cfg(test)]
    rereads: usize,
    /// Since when the open generation takes ids.
    open_since: i64,
    ids: Appended,
    /// The ids a move takes into the open generation, sorted as its key (id, then tenant):
    /// still appended until the move's last transaction. Only the writer's mirror has any.
    moving: Appended,
    /// [`Appended::sort`]'s room, kept for the next move.
    sorting: Sorting,
    /// Their fingerprints as a set: a lookup searches `moving` only for an id whose
    /// fingerprint is there (a binary search over up to 131,072 strings for every new id was
    /// 7-9 % of the embedded default's CPU samples with random ids; BENCHMARKS.md).
    moving_set: Fingerprints,
    /// Searches of `moving` (a test's count: the fingerprints spare them).
    #[cfg(test)]
    searches: std::cell::Cell<usize>,
    /// What [`Mirror::refresh`] asks in every transaction (the epoch, the ids appended since),
    /// formatted once.
    sql: Option<(String, String)>,
}

/// The dedup state `name` in one SQLite file.
pub struct Dedup {
    name: String,
    settings: Settings,
    mirror: Mirror,
    /// Writes the open transaction's appended ids as one row ([`Dedup::commit`]).
    append_sql: String,
    /// Deletes the moved rows below the floor among the `?1` rowids from the oldest
    /// ([`Dedup::trim`]).
    trim_sql: String,
    /// Ids appended in the open transaction, with their values, and (`staged_at`, one for each)
    /// their places in `written`.
    staged: Appended,
    staged_at: Vec<usize>,
    /// Ids written straight into the open generation in the open transaction: their place in
    /// `written` and their fingerprints (the generation's table holds them; a savepoint rolled
    /// back takes them out of it).
    took: Vec<(usize, u64)>,
    /// The greatest of those ids as they were written (its place in `written`), for the open
    /// generation's greatest key: forgotten if a savepoint rolls it back, with any kept before
    /// it, so the greatest key may then stay below the generation's until a later id raises it,
    /// which only sends more ids straight (still answered right: `INSERT OR IGNORE`).
    top: Option<(usize, Key)>,
    /// The ids written in the open transaction, in order (those rolled back to a savepoint
    /// gone).
    written: Vec<Written>,
    /// The ids appended in the open transaction, encoded ([`encode_appended`]): written as one
    /// row of `<name>_appended` when the transaction commits ([`Dedup::commit`]), so that an
    /// appended id costs no row, no B-tree insert and no delete of its own.
    buffer: Vec<u8>,
    /// The rowid of that row once written (SQLite may give it again if the transaction fails).
    flushed: Option<i64>,
    /// Rows this writer appended since it opened (the pace of [`Dedup::trim`]).
    rows_appended: usize,
    /// `PRAGMA data_version` as this writer last read it: it changes when another connection
    /// commits, which may have put ids into the open generation unseen by this one.
    data_version: Option<i64>,
    /// The move under way, if any.
    moving: Option<Move>,
    /// Whether moved rows may lie below the floor, to be deleted a piece after each commit.
    below_floor: bool,
    /// How many rows were appended when the last piece of them was deleted (a piece takes at
    /// least twice as many rows as were appended since).
    trimmed_at: usize,
    /// Whether a generation past the horizon may still hold rows, to be deleted a piece after
    /// each commit ([`Dedup::empty_past`]); true at the start, to find any a crash left.
    past_horizon: bool,
    /// Ids committed since the last such piece (a piece takes at least twice as many rows).
    committed_since_piece: usize,
    /// The open generation as this writer last saw it.
    open: Option<Open>,
    /// The group filter being built, off this writer's thread ([`Dedup::group`]).
    grouping: Option<Grouping>,
    /// When a group's build or keeping last failed: none is started for [`GROUP_RETRY`].
    group_failed: Option<std::time::Instant>,
    /// Runs once between this writer's seal and its reload (tests: another writer acts there).
    #[cfg(test)]
    before_reload: Option<Box<dyn FnMut() + Send>>,
    /// Whether commits build groups (tests: else only [`Dedup::settle_groups`] does).
    #[cfg(test)]
    auto_group: bool,
}

/// A group filter being built over generations `first..=last`.
struct Grouping {
    first: i64,
    last: i64,
    built: std::thread::JoinHandle<Result<Option<Parted>, crate::Error>>,
}

/// One id written by the writer's open transaction.
#[derive(Clone, Copy)]
enum Written {
    /// Straight into the open generation's table.
    Straight,
    /// Appended, its encoding at `at` in [`Dedup`]'s `buffer`.
    Appended { at: usize },
}

/// Encodes `(tenant, id)` with `value` onto `out`, as a row of `<name>_appended` holds its ids:
/// the tenant, the id and the value's bytes each after its length (u32, little-endian), then
/// the value's number (i64, little-endian).
fn encode_appended(out: &mut Vec<u8>, tenant: &str, id: &str, value: &Value) {
    for part in [tenant.as_bytes(), id.as_bytes(), value.0.as_slice()] {
        out.extend_from_slice(&u32::try_from(part.len()).expect("an id shorter than 4 GiB").to_le_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&value.1.to_le_bytes());
}

/// Column `i` of `r`, a blob read in place.
fn blob<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> Result<&'r [u8], rusqlite::Error> {
    r.get_ref(i)?
        .as_blob()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, Box::new(e)))
}

/// Hands each id of a row of `<name>_appended` (its `ids`, which hold `n`) to `each`, in the
/// order they were appended.
fn decode_appended(blob: &[u8], n: i64, mut each: impl FnMut(&str, &str, (&[u8], i64))) -> Result<(), rusqlite::Error> {
    fn corrupt(why: String) -> rusqlite::Error {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, why.into())
    }
    fn take<'b>(rest: &mut &'b [u8], n: usize) -> Result<&'b [u8], rusqlite::Error> {
        if rest.len() < n {
            return Err(corrupt(format!("appended ids cut short: {n} bytes wanted, {} left", rest.len())));
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Ok(head)
    }
    fn part<'b>(rest: &mut &'b [u8]) -> Result<&'b [u8], rusqlite::Error> {
        let len = u32::from_le_bytes(take(rest, 4)?.try_into().expect("4 bytes")) as usize;
        take(rest, len)
    }
    fn text(bytes: &[u8]) -> Result<&str, rusqlite::Error> {
        std::str::from_utf8(bytes).map_err(|e| corrupt(format!("appended ids: {e}")))
    }
    let (mut rest, mut found) = (blob, 0);
    while !rest.is_empty() {
        let tenant = text(part(&mut rest)?)?;
        let id = text(part(&mut rest)?)?;
        let bytes = part(&mut rest)?;
        let number = i64::from_le_bytes(take(&mut rest, 8)?.try_into().expect("8 bytes"));
        each(tenant, id, (bytes, number));
        found += 1;
    }
    match found == n {
        true => Ok(()),
        false => Err(corrupt(format!("appended ids: the row says {n}, its blob holds {found}"))),
    }
}

/// The open generation: its table, about how many ids it holds and, while this writer put
/// every one of them there since it opened it, their fingerprints (its filter once sealed).
struct Open {
    tbl: String,
    ids: usize,
    fps: Option<Fingerprints>,
    /// `INSERT OR IGNORE` of one id straight into it.
    insert: String,
    /// The greatest key (id, then tenant) this writer knows in it.
    max: Option<Key>,
    /// `max` as it was after each of the last [`EDGE_LAG`] commits, oldest first.
    edges: std::collections::VecDeque<Option<Key>>,
}

impl Open {
    /// The open generation `tbl` holding `ids`, their fingerprints if known, `max` the greatest.
    fn new(tbl: String, ids: usize, fps: Option<Fingerprints>, max: Option<Key>) -> Self {
        let insert = format!("INSERT OR IGNORE INTO {tbl} (id, tenant, hash, key) VALUES (?1, ?2, ?3, ?4)");
        Open { tbl, ids, fps, insert, max, edges: Default::default() }
    }

    /// The open generation `tbl` as `tx` sees it, opened elsewhere (another writer, or before
    /// this process): read once, for how many ids it holds, their fingerprints and its greatest
    /// key. Its filter then comes from the fingerprints when it is sealed, as if this writer
    /// had opened it: built from the table, it held the sealing transaction, and every commit
    /// behind it, for the whole read (57 ms at 198,358 ids).
    fn learn(tx: &Connection, tbl: String) -> Result<Self, crate::Error> {
        let started = std::time::Instant::now();
        let mut fps = Fingerprints::default();
        let mut ids = 0;
        let mut stmt = tx.prepare(&format!("SELECT tenant, id FROM {tbl}"))?;
        for fp in stmt.query_map([], |r| Ok(fingerprint(r.get_ref(0)?.as_str()?, r.get_ref(1)?.as_str()?)))? {
            fps.insert(fp?);
            ids += 1;
        }
        let max: Option<Key> = tx
            .query_row(&format!("SELECT tenant, id FROM {tbl} ORDER BY id DESC, tenant DESC LIMIT 1"), [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        tracing::debug!(generation = %tbl, ids, took = ?started.elapsed(), "open dedup generation read");
        Ok(Open::new(tbl, ids, Some(fps), max))
    }

    /// Its filter as it is sealed in `tx`: from the ids this writer put there if it knows them
    /// all, else from the table.
    fn filter(&mut self, tx: &Connection) -> Result<Option<BinaryFuse8>, crate::Error> {
        match self.fps.take() {
            // A set: each fingerprint once already.
            Some(fps) => Ok(filter_of(&fps.into_iter().collect::<Vec<_>>())),
            None => build_filter(tx, &self.tbl),
        }
    }

    /// The generation `tbl` this writer opens after another: empty, its ids all known.
    fn opened(tbl: String) -> Self {
        Open::new(tbl, 0, Some(Fingerprints::default()), None)
    }

    /// Whether `(tenant, id)` goes straight into the generation: above its greatest key as it
    /// was [`EDGE_LAG`] commits ago, or, until that is known (the generation was empty then,
    /// or this writer learned it since), as it was at the last commit. So a new generation
    /// takes at most one commit of random ids before its greatest key is near the top.
    fn takes(&self, tenant: &str, id: &str) -> bool {
        let edge = match self.edges.front() {
            Some(Some(edge)) if self.edges.len() == EDGE_LAG => Some(edge),
            _ => self.max.as_ref(),
        };
        edge.is_none_or(|m| above(tenant, id, m))
    }

    /// After a commit: the ids it put straight here (their fingerprints, the greatest of them)
    /// are counted, fingerprinted and raise `max`.
    fn took(&mut self, took: &[(usize, u64)], top: Option<(usize, Key)>) {
        self.ids += took.len();
        if let Some(fps) = self.fps.as_mut() {
            fps.extend(took.iter().map(|&(_, fp)| fp));
        }
        if let Some((_, key)) = top
            && self.max.as_ref().is_none_or(|m| above(&key.0, &key.1, m))
        {
            self.max = Some(key);
        }
    }

    /// After a commit: where the edge stood.
    fn committed(&mut self) {
        self.edges.push_back(self.max.clone());
        if self.edges.len() > EDGE_LAG {
            self.edges.pop_front();
        }
    }
}

/// A run of writes in one transaction of [`Dedup`]'s writer ([`Dedup::batch`]: the store's
/// whole batch, one request of the event log): its insert straight into the open generation is
/// looked up in the connection's statement cache once for the run rather than for every id.
pub struct Batch<'d, 'c> {
    dedup: &'d mut Dedup,
    tx: &'c Connection,
    /// `INSERT OR IGNORE` into the open generation, once used.
    straight: Option<rusqlite::CachedStatement<'c>>,
}

impl Batch<'_, '_> {
    /// Records `(tenant, id)` with `value` in the open transaction (appended, or straight into
    /// the open generation if it sorts above its recent keys; seen by [`Dedup::get`] at once).
    /// The caller has checked it is new.
    pub fn insert(&mut self, tenant: &str, id: &str, value: Value) -> Result<(), crate::Error> {
        let fp = fingerprint(tenant, id);
        if self.dedup.staged.find(tenant, id, fp).is_some() {
            // Staged already in this transaction: kept with the value it was staged with, and
            // not staged twice (the list holds an id once).
            return Ok(());
        }
        let straight = self.dedup.straight(tenant, id);
        self.write(tenant, id, value, straight, fp)?;
        Ok(())
    }

    /// Records `(tenant, id)` with `value` as [`Batch::insert`] does if it was never seen, and
    /// answers `None`; else answers the value it was seen with and writes nothing. An id that
    /// goes straight into the open generation is not looked up there first: that B-tree's key
    /// refuses a copy by itself (one statement where a lookup and an insert were two).
    pub fn insert_new(&mut self, tenant: &str, id: &str, value: Value) -> Result<Option<Value>, crate::Error> {
        let d = &*self.dedup;
        let fp = fingerprint(tenant, id);
        if let Some(v) = d.staged.get(tenant, id, fp) {
            return Ok(Some(v));
        }
        let straight = d.straight(tenant, id);
        // The open generation is not asked about an id going straight in (its key refuses a
        // copy), nor about one its fingerprints say it does not hold. Those are the ids this
        // writer committed there; an id it put there in this transaction went straight, and so
        // does this one if it is the same (the edge moves only at a commit).
        let open = d
            .open
            .as_ref()
            .filter(|o| straight || o.fps.as_ref().is_some_and(|f| !f.contains(&fp)))
            .map(|o| o.tbl.as_str());
        if let Some(v) = d.mirror.get_but(self.tx, tenant, id, open, fp)? {
            return Ok(Some(v));
        }
        if self.write(tenant, id, value, straight, fp)? {
            return Ok(None);
        }
        // Already in the open generation.
        self.dedup.mirror.get_but(self.tx, tenant, id, None, fp)
    }

    /// Writes `(tenant, id)` (`fp` its fingerprint): straight into the open generation (`INSERT
    /// OR IGNORE`: false if it was there) or appended (to the transaction's buffer) and staged.
    fn write(&mut self, tenant: &str, id: &str, value: Value, straight: bool, fp: u64) -> Result<bool, crate::Error> {
        let d = &mut *self.dedup;
        let (hash, at) = nullable(&value);
        let n = d.written.len();
        match d.open.as_ref().filter(|_| straight) {
            Some(open) => {
                let insert = match &mut self.straight {
                    Some(insert) => insert,
                    None => self.straight.insert(self.tx.prepare_cached(&open.insert)?),
                };
                if insert.execute(params![id, tenant, hash, at])? == 0 {
                    return Ok(false);
                }
                d.written.push(Written::Straight);
                d.took.push((n, fp));
                match &mut d.top {
                    Some((_, key)) if !above(tenant, id, key) => {}
                    Some((place, key)) => {
                        // Ordered ids raise it at every write: its strings are reused.
                        *place = n;
                        key.0.clear();
                        key.0.push_str(tenant);
                        key.1.clear();
                        key.1.push_str(id);
                    }
                    None => d.top = Some((n, (tenant.to_string(), id.to_string()))),
                }
            }
            None => {
                d.written.push(Written::Appended { at: d.buffer.len() });
                encode_appended(&mut d.buffer, tenant, id, &value);
                d.staged.insert_new(tenant, id, (&value.0, value.1), fp);
                d.staged_at.push(n);
            }
        }
        Ok(true)
    }
}

/// Whether `(tenant, id)` sorts after `key` in a generation (by id, then tenant).
fn above(tenant: &str, id: &str, key: &Key) -> bool {
    (id, tenant) > (key.1.as_str(), key.0.as_str())
}

/// A move of the appended ids into the open generation (the ids are the mirror's `moving`).
struct Move {
    /// How many of them are in the generation.
    done: usize,
    /// How many ids had been appended since the move began when its last chunk went.
    arrived: usize,
    /// The last appended rowid it covers.
    through: i64,
    /// `INSERT OR IGNORE` into the open generation.
    insert: String,
    /// The same, of [`MOVE_ROWS`] rows at once.
    insert_rows: String,
}

impl Dedup {
    /// Opens the state `name` on `conn` (its writer), creating its tables; an existing table
    /// `legacy` (an earlier layout: `id`, `tenant`, `hash` and `key`) becomes its oldest
    /// generation, dropped a horizon from now.
    pub fn open(
        conn: &mut Connection,
        name: &str,
        legacy: Option<&str>,
        settings: Settings,
        now_us: i64,
    ) -> Result<Self, crate::Error> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {name}_gens (
                 gen INTEGER PRIMARY KEY, tbl TEXT NOT NULL, from_us INTEGER NOT NULL, until_us INTEGER, ids INTEGER,
                 filter BLOB
             );
             CREATE TABLE IF NOT EXISTS {name}_appended (
                 rowid INTEGER PRIMARY KEY, n INTEGER NOT NULL, ids BLOB NOT NULL
             );
             CREATE TABLE IF NOT EXISTS {name}_state (
                 one INTEGER PRIMARY KEY CHECK (one = 1), epoch INTEGER NOT NULL, floor INTEGER NOT NULL DEFAULT 0
             );
             INSERT OR IGNORE INTO {name}_state (one, epoch) VALUES (1, 0);
             CREATE TABLE IF NOT EXISTS {name}_groups (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, first_gen INTEGER NOT NULL, last_gen INTEGER NOT NULL,
                 filter BLOB NOT NULL
             );"
        ))?;
        // Files from before generations were sealed for their size (how many ids a sealed one
        // holds is unknown: NULL) or kept their filters (NULL: built from the table, below), and
        // from before moved rows were deleted after the move (all of them went with its last
        // chunk: nothing lies below the floor).
        for (table, column, kind) in
            [("gens", "ids", "INTEGER"), ("gens", "filter", "BLOB"), ("state", "floor", "INTEGER NOT NULL DEFAULT 0")]
        {
            let known: i64 = tx.query_row(
                &format!("SELECT count(*) FROM pragma_table_info('{name}_{table}') WHERE name = ?1"),
                [column],
                |r| r.get(0),
            )?;
            if known == 0 {
                tx.execute_batch(&format!("ALTER TABLE {name}_{table} ADD COLUMN {column} {kind}"))?;
            }
        }
        // Files from before appended ids were kept a row per transaction: those not moved yet
        // (above the floor) become one row, the first of the new table.
        let per_id = format!("{name}_pending");
        if tx
            .query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", [&per_id], |_| Ok(()))
            .optional()?
            .is_some()
        {
            let (mut buffer, mut n) = (Vec::new(), 0i64);
            {
                let mut stmt = tx.prepare(&format!(
                    "SELECT tenant, id, hash, key FROM {per_id} WHERE rowid > (SELECT floor FROM {name}_state)
                     ORDER BY rowid"
                ))?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    let value =
                        (r.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default(), r.get::<_, Option<i64>>(3)?.unwrap_or(0));
                    encode_appended(&mut buffer, &r.get::<_, String>(0)?, &r.get::<_, String>(1)?, &value);
                    n += 1;
                }
            }
            if n > 0 {
                tx.execute(&format!("INSERT INTO {name}_appended (n, ids) VALUES (?1, ?2)"), params![n, buffer])?;
            }
            tx.execute_batch(&format!("UPDATE {name}_state SET epoch = epoch + 1, floor = 0; DROP TABLE {per_id};"))?;
        }
        let gens: i64 = tx.query_row(&format!("SELECT count(*) FROM {name}_gens"), [], |r| r.get(0))?;
        if gens == 0 {
            let legacy = match legacy {
                Some(t) => tx
                    .query_row("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?1", [t], |r| {
                        r.get::<_, String>(0)
                    })
                    .optional()?,
                None => None,
            };
            // An empty earlier table (a new file's, made by its first migration) is dropped:
            // every lookup would ask it.
            let legacy = match legacy {
                Some(t)
                    if tx.query_row(&format!("SELECT 1 FROM {t} LIMIT 1"), [], |_| Ok(())).optional()?.is_none() =>
                {
                    tx.execute_batch(&format!("DROP TABLE {t}"))?;
                    None
                }
                other => other,
            };
            if let Some(t) = legacy {
                tx.execute(
                    &format!("INSERT INTO {name}_gens (gen, tbl, from_us, until_us) VALUES (0, ?1, 0, ?2)"),
                    params![t, now_us],
                )?;
            }
            open_generation(&tx, name, 1, now_us)?;
        }
        // A sealed generation without its filter (an earlier file's, or the earlier table just
        // taken in) gets it now, once, rather than at every connection's start.
        let unfiltered: Vec<String> = {
            let mut stmt =
                tx.prepare(&format!("SELECT tbl FROM {name}_gens WHERE until_us IS NOT NULL AND filter IS NULL"))?;
            stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        for tbl in unfiltered {
            let filter = build_filter(&tx, &tbl)?;
            tx.execute(
                &format!("UPDATE {name}_gens SET filter = ?1 WHERE tbl = ?2"),
                params![encode_filter(filter.as_ref()), tbl],
            )?;
        }
        tx.commit()?;
        let mut dedup = Dedup {
            name: name.to_string(),
            settings,
            mirror: Mirror::reserved(settings.flush_at),
            append_sql: format!("INSERT INTO {name}_appended (n, ids) VALUES (?1, ?2)"),
            // The floor's own row stays, so that SQLite never gives a rowid at or below it again.
            // A range of rowids from the oldest, deleted as one scan (a subquery of the oldest
            // rowids, deleted one lookup each, took about half as long again).
            trim_sql: format!(
                "DELETE FROM {name}_appended
                 WHERE rowid < min((SELECT floor FROM {name}_state), (SELECT min(rowid) FROM {name}_appended) + ?1)"
            ),
            staged: Appended::default(),
            staged_at: Vec::new(),
            took: Vec::new(),
            top: None,
            written: Vec::new(),
            buffer: Vec::new(),
            flushed: None,
            rows_appended: 0,
            data_version: None,
            moving: None,
            below_floor: false,
            trimmed_at: 0,
            past_horizon: true,
            committed_since_piece: 0,
            open: None,
            grouping: None,
            group_failed: None,
            #[cfg(test)]
            before_reload: None,
            #[cfg(test)]
            auto_group: true,
        };
        // One snapshot: another writer may drop a generation meanwhile.
        let tx = conn.transaction()?;
        dedup.begin(&tx)?;
        // An earlier process may have left moved rows below the floor.
        dedup.below_floor = true;
        let open: String =
            tx.query_row(&format!("SELECT tbl FROM {name}_gens WHERE until_us IS NULL"), [], |r| r.get(0))?;
        dedup.open = Some(Open::learn(&tx, open)?);
        tx.commit()?;
        Ok(dedup)
    }

    /// Starts a transaction's work on `tx` (the writer's, holding the write lock): learns what
    /// other writers appended, forgets anything staged by a transaction that did not commit.
    pub fn begin(&mut self, tx: &Connection) -> Result<(), crate::Error> {
        self.staged.clear();
        self.staged_at.clear();
        self.took.clear();
        self.top = None;
        self.written.clear();
        self.buffer.clear();
        self.flushed = None;
        self.others_committed(tx)?;
        self.refresh(tx)
    }

    /// Notes whether another connection committed since this writer last looked (inside its
    /// write transaction `tx`): it may have put ids straight into the open generation, whose
    /// fingerprints this writer then no longer knows all of (its filter comes from the table).
    fn others_committed(&mut self, tx: &Connection) -> Result<(), crate::Error> {
        let version: i64 = tx.prepare_cached("PRAGMA data_version")?.query_row([], |r| r.get(0))?;
        let others = self.data_version.replace(version).is_some_and(|v| v != version);
        if let Some(open) = self.open.as_mut().filter(|o| others && o.fps.is_some()) {
            tracing::debug!(state = %self.name, generation = %open.tbl, "another connection wrote: filter from the table");
            open.fps = None;
        }
        Ok(())
    }

    /// Refreshes this writer's mirror; if another writer moved ids meanwhile, forgets what it
    /// knew of the move and of the open generation.
    fn refresh(&mut self, tx: &Connection) -> Result<(), crate::Error> {
        let epoch = self.mirror.epoch;
        // The mirror may take the new epoch and still fail (reading the appended ids): what
        // follows holds then too, or the next refresh, finding no news, would keep the move and
        // the open generation another writer ended.
        let refreshed = self.mirror.refresh(tx, &self.name);
        if self.mirror.epoch != epoch {
            // Another writer moved the appended ids (this mirror started over, its frozen ids
            // gone): this writer's move, if any, is abandoned; what it had not moved is still
            // appended, and read back. It may have moved ids into the open generation, or
            // sealed it: this writer counts it again at its next move, and no longer knows
            // every id in it.
            self.moving = None;
            self.open = None;
        }
        refreshed
    }

    /// The value of `(tenant, id)`, if it was seen: staged in this transaction, appended, or in a
    /// live generation.
    pub fn get(&self, tx: &Connection, tenant: &str, id: &str) -> Result<Option<Value>, crate::Error> {
        if let Some(v) = self.staged.get(tenant, id, fingerprint(tenant, id)) {
            return Ok(Some(v));
        }
        self.mirror.get(tx, tenant, id)
    }

    /// A run of writes on `tx` (a transaction or a savepoint of it), their statements looked up
    /// once for all of them.
    pub fn batch<'d, 'c>(&'d mut self, tx: &'c Connection) -> Batch<'d, 'c> {
        Batch { dedup: self, tx, straight: None }
    }

    /// Records `(tenant, id)` as [`Batch::insert`] does.
    pub fn insert(&mut self, tx: &Connection, tenant: &str, id: &str, value: Value) -> Result<(), crate::Error> {
        self.batch(tx).insert(tenant, id, value)
    }

    /// Records `(tenant, id)` if it was never seen, as [`Batch::insert_new`] does.
    pub fn insert_new(
        &mut self,
        tx: &Connection,
        tenant: &str,
        id: &str,
        value: Value,
    ) -> Result<Option<Value>, crate::Error> {
        self.batch(tx).insert_new(tenant, id, value)
    }

    /// Whether `(tenant, id)` goes straight into the open generation (not while a move runs:
    /// another writer's move may have learned the open generation too).
    fn straight(&self, tenant: &str, id: &str) -> bool {
        self.settings.straight && self.moving.is_none() && self.open.as_ref().is_some_and(|o| o.takes(tenant, id))
    }

    /// How many ids are written in the open transaction: a mark to roll back to.
    pub fn mark(&self) -> usize {
        self.written.len()
    }

    /// Forgets the ids written after `mark` (their savepoint was rolled back).
    pub fn rollback_to(&mut self, mark: usize) {
        let first = self.written.get(mark..).unwrap_or_default().iter().find_map(|w| match w {
            Written::Appended { at } => Some(*at),
            Written::Straight => None,
        });
        if let Some(at) = first {
            self.buffer.truncate(at);
        }
        self.written.truncate(mark);
        self.took.truncate(self.took.partition_point(|(n, _)| *n < mark));
        if self.top.as_ref().is_some_and(|(n, _)| *n >= mark) {
            self.top = None;
        }
        let keep = self.staged_at.partition_point(|&n| n < mark);
        self.staged.truncate(keep);
        self.staged_at.truncate(keep);
    }

    /// Writes the ids the open transaction appended, as one row, then commits it (the writer's
    /// transaction: call this rather than `tx.commit()`, then [`Dedup::committed`]).
    pub fn commit(&mut self, tx: rusqlite::Transaction<'_>) -> Result<(), crate::Error> {
        let row = match self.buffer.is_empty() {
            true => None,
            false => {
                let n = self.written.iter().filter(|w| matches!(w, Written::Appended { .. })).count();
                tx.prepare_cached(&self.append_sql)?.execute(params![n as i64, self.buffer])?;
                Some(tx.last_insert_rowid())
            }
        };
        tx.commit()?;
        // Only once committed: a failed commit leaves its rowid to be given again (and
        // [`Dedup::committed`] refuses to go on).
        self.flushed = row;
        self.buffer.clear();
        Ok(())
    }

    /// After the transaction committed: its ids count as appended or as in the open generation
    /// (this writer held the write lock from [`Dedup::begin`], so nobody else appended
    /// meanwhile). Then, outside any transaction, moves the next chunk of appended ids into the
    /// open generation once there are enough, seals it once full, opens a new generation every
    /// quarter of the horizon and takes those past it out of the lookups, then deletes a piece
    /// of those ([`Dedup::empty_past`]). A failure leaves everything appended; the next call
    /// goes on.
    pub fn committed(&mut self, conn: &mut Connection, now_us: i64) -> Result<(), crate::Error> {
        assert!(
            self.buffer.is_empty() && (self.staged.is_empty() || self.flushed.is_some()),
            "ids appended in a transaction committed without Dedup::commit"
        );
        self.committed_since_piece += self.staged.len() + self.took.len();
        // Each was looked up before it was written: none is held yet.
        self.mirror.ids.extend(&self.staged);
        self.staged.clear();
        self.staged_at.clear();
        // An id goes straight in only while the open generation is known.
        if let Some(open) = self.open.as_mut() {
            open.took(&self.took, self.top.take());
            open.committed();
        }
        self.took.clear();
        if let Some(row) = self.flushed.take() {
            self.mirror.last_rowid = self.mirror.last_rowid.max(row);
            self.rows_appended += 1;
        }
        if now_us >= self.mirror.open_since.saturating_add(self.settings.bucket_us()) {
            // Once a quarter horizon: what a move left and everything appended go at once.
            return self.roll(conn, now_us);
        }
        if self.moving.is_none() && self.open.as_ref().is_some_and(|o| o.ids >= self.seal_at()) {
            self.seal_full(conn, now_us)?;
        }
        if self.moving.is_none() && self.mirror.ids.len() >= self.settings.flush_at {
            self.start_move(conn)?;
        }
        if self.moving.is_some() {
            self.move_chunk(conn, now_us)?;
        } else if self.below_floor {
            self.trim(conn)?;
        }
        match self.past_horizon {
            true => self.empty_past(conn)?,
            // A piece keeps pace with the ids committed while one is due, not before.
            false => self.committed_since_piece = 0,
        }
        #[cfg(test)]
        if !self.auto_group {
            return Ok(());
        }
        self.group(conn, false);
        Ok(())
    }

    /// Keeps the group filter built since the last call, if any; else starts building one once
    /// [`GROUP`] adjacent sealed generations are in no group (each is then read once, a piece
    /// per read transaction, on a thread and a connection of its own: a generation holds up to
    /// a `SEALED`th of the horizon's ids, and building its group's filter inside the writer's
    /// commits would hold each of them as long). If `wait`, waits for a build under way. A
    /// failure only leaves the generations' own filters asked: it is logged, and no build
    /// starts for [`GROUP_RETRY`].
    fn group(&mut self, conn: &mut Connection, wait: bool) {
        if let Some(grouping) = self.grouping.take_if(|g| wait || g.built.is_finished()) {
            let (first, last) = (grouping.first, grouping.last);
            let kept = match grouping.built.join() {
                Ok(built) => built.and_then(|filter| self.keep_group(conn, first, last, filter)),
                Err(_) => Err(crate::Error::Task("the dedup group's build panicked".into())),
            };
            if let Err(e) = kept {
                tracing::warn!(state = %self.name, first, last, error = %e, "dedup group filter not kept");
                self.group_failed = Some(std::time::Instant::now());
            }
            return;
        }
        let waiting = self.group_failed.is_some_and(|at| at.elapsed() < GROUP_RETRY);
        if self.grouping.is_some() || waiting || self.mirror.epoch.is_none() {
            return;
        }
        let gens = self.mirror.ungrouped();
        let (Some(&first), Some(&last)) = (gens.first(), gens.get(GROUP - 1)) else { return };
        let Some(path) = conn.path().filter(|p| !p.is_empty()).map(str::to_string) else {
            // A database in memory: no other connection can read it.
            self.group_failed = Some(std::time::Instant::now());
            return;
        };
        let name = self.name.clone();
        let built = std::thread::Builder::new()
            .name(format!("{name}-group"))
            .spawn(move || build_group(&path, &name, first, last, GROUP_PART));
        match built {
            Ok(built) => self.grouping = Some(Grouping { first, last, built }),
            Err(e) => {
                tracing::warn!(state = %self.name, error = %e, "dedup group build not started");
                self.group_failed = Some(std::time::Instant::now());
            }
        }
        if wait {
            self.group(conn, true);
        }
    }

    /// Waits for the group filter under way and keeps it, then builds and keeps every other
    /// group due, one after the other (a benchmark's set-up; a writer's commits do this as they
    /// go, [`Dedup::committed`]). Call it between transactions, never between [`Dedup::commit`]
    /// and [`Dedup::committed`] (its refresh would read the committed ids before they are taken). Stops early if a build or its keeping fails (logged), or none
    /// can be built (a database in memory).
    pub fn settle_groups(&mut self, conn: &mut Connection) -> Result<(), crate::Error> {
        loop {
            self.group(conn, true);
            let tx = conn.transaction()?;
            self.refresh(&tx)?;
            tx.commit()?;
            if self.group_failed.is_some() || (self.grouping.is_none() && self.mirror.ungrouped().len() < GROUP) {
                return Ok(());
            }
        }
    }

    /// Keeps `filter` as the group of generations `first..=last` (an empty filter if none could
    /// be built: the generations' own are asked), unless another writer kept one over any of
    /// them; this writer's mirror takes it at its next reload.
    fn keep_group(
        &mut self,
        conn: &mut Connection,
        first: i64,
        last: i64,
        filter: Option<Parted>,
    ) -> Result<(), crate::Error> {
        let started = std::time::Instant::now();
        let name = &self.name;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let taken: bool = tx.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM {name}_groups WHERE last_gen >= ?1 AND first_gen <= ?2)"),
            [first, last],
            |r| r.get(0),
        )?;
        let built = filter.is_some();
        let mut kept = None;
        if !taken {
            tx.execute(
                &format!("INSERT INTO {name}_groups (first_gen, last_gen, filter) VALUES (?1, ?2, ?3)"),
                params![first, last, filter.as_ref().map(Parted::encode).unwrap_or_default()],
            )?;
            kept = filter.map(|f| (tx.last_insert_rowid(), f));
        }
        tx.commit()?;
        if let Some((id, filter)) = kept {
            self.mirror.adopted_groups.insert(id, filter);
        }
        tracing::debug!(state = %name, first, last, built, taken, took = ?started.elapsed(), "dedup group filter kept");
        Ok(())
    }

    /// Deletes the moved rows (below the floor) among the next [`TRIM_ROWS`] rowids from the
    /// oldest, or twice those appended since the last piece if more, between moves (a move's
    /// chunks delete them too, at their own pace).
    fn trim(&mut self, conn: &mut Connection) -> Result<(), crate::Error> {
        let started = std::time::Instant::now();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let deleted = delete_below_floor(&tx, &self.trim_sql, self.trim_step())?;
        tx.commit()?;
        // Fewer than the step if rowids were skipped: it goes on until a piece finds none.
        self.below_floor = deleted > 0;
        self.trimmed_at = self.rows_appended;
        if deleted > 0 {
            tracing::debug!(state = %self.name, rows = deleted, took = ?started.elapsed(), "moved dedup rows deleted");
        }
        Ok(())
    }

    /// How many rowids the next piece of moved rows covers: [`TRIM_ROWS`], or twice the rows
    /// appended since the last piece if more, so that moved rows never pile up.
    fn trim_step(&self) -> usize {
        TRIM_ROWS.max(2 * self.rows_appended.saturating_sub(self.trimmed_at))
    }

    /// Freezes the appended ids, sorted, for a move into the open generation.
    fn start_move(&mut self, conn: &mut Connection) -> Result<(), crate::Error> {
        // The mirror and the rows the move covers are read in one snapshot: another writer may
        // have appended since this one committed, and the move covers exactly what the mirror
        // then holds, the rows up to the greatest rowid in that snapshot (rows appended during
        // the move come above it, and the floor never hides them).
        let tx = conn.transaction()?;
        self.refresh(&tx)?;
        let tbl: String =
            tx.query_row(&format!("SELECT tbl FROM {}_gens WHERE until_us IS NULL", self.name), [], |r| r.get(0))?;
        let through: i64 =
            tx.query_row(&format!("SELECT coalesce(max(rowid), 0) FROM {}_appended", self.name), [], |r| r.get(0))?;
        if self.open.as_ref().is_none_or(|o| o.tbl != tbl) {
            self.open = Some(Open::learn(&tx, tbl.clone())?);
        }
        tx.commit()?;
        let started = std::time::Instant::now();
        self.mirror.freeze();
        let took = started.elapsed();
        tracing::debug!(state = %self.name, ids = self.mirror.moving.len(), ?took, "dedup ids frozen for a move");
        self.moving = Some(Move {
            done: 0,
            arrived: 0,
            through,
            insert: format!("INSERT OR IGNORE INTO {tbl} (id, tenant, hash, key) VALUES (?1, ?2, ?3, ?4)"),
            insert_rows: format!(
                "INSERT OR IGNORE INTO {tbl} (id, tenant, hash, key) VALUES {}",
                vec!["(?, ?, ?, ?)"; MOVE_ROWS].join(", ")
            ),
        });
        Ok(())
    }

    /// Moves the next [`MOVE_CHUNK`] ids, or twice those appended since the last chunk if more
    /// (and deletes the rows below the floor, left by an earlier move, among the next
    /// [`Dedup::trim_step`] rowids); the last chunk also raises the floor over the rows it
    /// moved, seals the open generation if it holds [`Settings::seal_at`] ids, and tells
    /// readers (the epoch).
    fn move_chunk(&mut self, conn: &mut Connection, now_us: i64) -> Result<(), crate::Error> {
        let Some(done) = self.moving.as_ref().map(|m| m.done) else { return Ok(()) };
        let started = std::time::Instant::now();
        // At least twice what arrived since the last chunk, so that a move moves at least twice
        // as many ids as arrive meanwhile and ends before the next is due (unless one commit
        // appends more than half of `flush_at`: the next move is then larger, which costs memory,
        // not exactness); and no more under a steady load, so that no commit waits behind a
        // long chunk.
        let arrived = self.mirror.ids.len();
        let since = arrived.saturating_sub(self.moving.as_ref().map_or(0, |m| m.arrived));
        let step = MOVE_CHUNK.max(2 * since);
        let end = (done + step).min(self.mirror.moving.len());
        let last = end == self.mirror.moving.len();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let epoch: i64 = tx.query_row(&format!("SELECT epoch FROM {}_state", self.name), [], |r| r.get(0))?;
        self.others_committed(&tx)?;
        let seal_at = self.seal_at();
        let trim_step = self.below_floor.then(|| self.trim_step());
        let Some(m) = self.moving.as_mut() else { return Ok(()) };
        let ids = &self.mirror.moving;
        let (Some(open), true) = (self.open.as_mut(), self.mirror.epoch == Some(epoch)) else {
            // Another writer moved the appended ids since this one's last look (or the open
            // generation is not known): abandon this move (what it had not moved is still
            // appended) and start the mirror over.
            drop(tx);
            self.moving = None;
            self.open = None;
            self.mirror.thaw();
            self.mirror.epoch = None;
            return Ok(());
        };
        let mut inserted = 0;
        {
            let mut rows = ids.entries[m.done..end].chunks_exact(MOVE_ROWS);
            if rows.len() > 0 {
                let mut insert = tx.prepare_cached(&m.insert_rows)?;
                for chunk in &mut rows {
                    for (j, e) in chunk.iter().enumerate() {
                        let (hash, at) = ids.nullable(e);
                        insert.raw_bind_parameter(4 * j + 1, ids.id(e))?;
                        insert.raw_bind_parameter(4 * j + 2, ids.tenant(e))?;
                        insert.raw_bind_parameter(4 * j + 3, hash)?;
                        insert.raw_bind_parameter(4 * j + 4, at)?;
                    }
                    inserted += insert.raw_execute()?;
                }
            }
            let mut insert = tx.prepare_cached(&m.insert)?;
            for e in rows.remainder() {
                let (hash, at) = ids.nullable(e);
                inserted += insert.execute(params![ids.id(e), ids.tenant(e), hash, at])?;
            }
        }
        if let Some(fps) = open.fps.as_mut() {
            fps.extend(ids.entries[m.done..end].iter().map(|e| e.fp));
        }
        // The rows an earlier move left below the floor go at this move's pace, so that they
        // never pile up, however large the commits (between moves [`Dedup::trim`] goes on).
        let trimmed = match trim_step {
            Some(step) => delete_below_floor(&tx, &self.trim_sql, step)?,
            None => 0,
        };
        let mut sealed = None;
        let epoch = match last {
            true => {
                let name = &self.name;
                let held = open.ids + inserted;
                if held >= seal_at {
                    let filter = open.filter(&tx)?;
                    let next = seal(&tx, name, now_us, self.settings, held, filter.as_ref())?;
                    sealed = Some((open.tbl.clone(), next, filter));
                }
                // The rows moved stay until the commits after this one delete them ([`Dedup::trim`]).
                Some(tx.query_row(
                    &format!("UPDATE {name}_state SET epoch = epoch + 1, floor = max(floor, ?1) RETURNING epoch"),
                    [m.through],
                    |r| r.get::<_, i64>(0),
                )?)
            }
            false => None,
        };
        let committed = tx.commit();
        if let Err(e) = committed {
            // Its fingerprints may be taken or this chunk's counted: nothing more is known.
            self.open = None;
            return Err(e.into());
        }
        open.ids += inserted;
        if let Some(e) =
            ids.entries[..end].last().filter(|e| open.max.as_ref().is_none_or(|m| above(ids.tenant(e), ids.id(e), m)))
        {
            open.max = Some((ids.tenant(e).to_string(), ids.id(e).to_string()));
        }
        m.done = end;
        m.arrived = arrived;
        if trim_step.is_some() {
            self.trimmed_at = self.rows_appended;
            if trimmed == 0 {
                self.below_floor = false;
            }
        }
        if last {
            self.moving = None;
            self.mirror.thaw();
            // This mirror already holds what is appended now: only readers start over.
            self.mirror.epoch = epoch;
            self.below_floor = true;
            self.trimmed_at = self.rows_appended;
        }
        let sealed_one = sealed.is_some();
        if let Some((done, next, filter)) = sealed {
            self.opened(done, next, filter);
            // This mirror holds what is appended as of `epoch` (above).
            self.reload(conn, epoch, true)?;
        }
        tracing::debug!(state = %self.name, ids = end - done, last, sealed = sealed_one, took = ?started.elapsed(), "dedup ids moved");
        Ok(())
    }

    /// How many ids seal the open generation: [`Settings::seal_at`], or a [`SEALED`]th of the
    /// sealed ones if more.
    fn seal_at(&self) -> usize {
        self.settings.seal_at.max(self.mirror.sealed_ids / SEALED)
    }

    /// Seals the open generation once the ids put straight into it filled it (a move's last
    /// chunk does the same for the ids it moved).
    fn seal_full(&mut self, conn: &mut Connection, now_us: i64) -> Result<(), crate::Error> {
        let started = std::time::Instant::now();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let epoch: i64 = tx.query_row(&format!("SELECT epoch FROM {}_state", self.name), [], |r| r.get(0))?;
        self.others_committed(&tx)?;
        let name = &self.name;
        let (Some(open), true) = (self.open.as_mut(), self.mirror.epoch == Some(epoch)) else {
            // Another writer moved or sealed since this one's last look.
            self.open = None;
            return Ok(());
        };
        let filter = open.filter(&tx)?;
        let next = seal(&tx, name, now_us, self.settings, open.ids, filter.as_ref())?;
        let done = open.tbl.clone();
        let epoch: i64 =
            tx.query_row(&format!("UPDATE {name}_state SET epoch = epoch + 1 RETURNING epoch"), [], |r| r.get(0))?;
        if let Err(e) = tx.commit() {
            self.open = None;
            return Err(e.into());
        }
        let ids = open.ids;
        self.opened(done, next, filter);
        #[cfg(test)]
        if let Some(mut between) = self.before_reload.take() {
            between();
        }
        // The seal moved no appended id: this mirror holds what is appended as of `epoch`.
        self.reload(conn, Some(epoch), true)?;
        tracing::debug!(state = %self.name, ids, took = ?started.elapsed(), "dedup generation sealed full");
        Ok(())
    }

    /// After this writer's seal of `done` (its filter, if built, taken at the next reload rather
    /// than read back) committed: `next` is the open generation, empty.
    /// `left`: the seal left a generation past the horizon to empty a piece at a time.
    fn opened(&mut self, done: String, (next, left): (String, bool), filter: Option<BinaryFuse8>) {
        if let Some(filter) = filter {
            self.mirror.adopted.insert(done, filter);
        }
        self.open = Some(Open::opened(next));
        self.past_horizon |= left;
    }

    /// Deletes a piece of the generations past the horizon ([`seal`] takes them out of
    /// `<name>_gens`, so no lookup asks them; their tables are the `<name>_g<N>` below every
    /// generation listed): oldest first, [`Settings::drop_rows`] rows or twice the ids committed
    /// since the last piece if more, a table dropped once it holds fewer than the piece has
    /// left (an empty one costs SQLite a page or two). Several writers on one file may each
    /// take pieces: each reads the tables anew inside its own write transaction.
    fn empty_past(&mut self, conn: &mut Connection) -> Result<(), crate::Error> {
        let started = std::time::Instant::now();
        let mut budget = self.settings.drop_rows.max(2 * self.committed_since_piece);
        let name = &self.name;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let listed: Option<i64> = tx.query_row(&format!("SELECT min(gen) FROM {name}_gens"), [], |r| r.get(0))?;
        let prefix = format!("{name}_g");
        let mut past: Vec<(i64, String)> = {
            let mut stmt = tx.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB ?1")?;
            let names = stmt.query_map([format!("{prefix}[0-9]*")], |r| r.get::<_, String>(0))?;
            let mut past = Vec::new();
            for n in names {
                let n = n?;
                let number = n.strip_prefix(&prefix).and_then(|g| g.parse::<i64>().ok());
                if let (Some(number), Some(listed)) = (number, listed)
                    && number < listed
                {
                    past.push((number, n));
                }
            }
            past
        };
        past.sort_unstable();
        let (mut deleted, mut dropped) = (0, 0);
        let mut left = false;
        for (_, tbl) in &past {
            let cut: Option<(String, String)> = tx
                .query_row(
                    &format!("SELECT id, tenant FROM {tbl} ORDER BY id, tenant LIMIT 1 OFFSET ?1"),
                    [budget as i64 - 1],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match cut {
                Some((id, tenant)) => {
                    deleted +=
                        tx.execute(&format!("DELETE FROM {tbl} WHERE (id, tenant) <= (?1, ?2)"), [id, tenant])?;
                    left = true;
                    break;
                }
                None => {
                    let n: i64 = tx.query_row(&format!("SELECT count(*) FROM {tbl}"), [], |r| r.get(0))?;
                    tx.execute_batch(&format!("DROP TABLE {tbl}"))?;
                    // Fewer rows than the budget (no row at its last place): some budget is left.
                    (deleted, dropped, budget) = (deleted + n as usize, dropped + 1, budget - n as usize);
                }
            }
        }
        tx.commit()?;
        self.past_horizon = left;
        self.committed_since_piece = 0;
        if deleted > 0 || dropped > 0 {
            tracing::debug!(state = %name, rows = deleted, dropped, took = ?started.elapsed(), "dedup rows past the horizon deleted");
        }
        Ok(())
    }

    /// After this writer sealed a generation at `epoch`: its mirror looks up the new list of
    /// generations. If `kept` (its mirror holds every id appended as of `epoch`: a seal moves
    /// none), the mirror keeps those ids (reading them all again cost a commit tens of
    /// milliseconds at 131,072 ids) unless another writer moved since; then it starts over,
    /// and this writer no longer knows every id in the open generation (the other may have
    /// moved ids there).
    fn reload(&mut self, conn: &mut Connection, epoch: Option<i64>, kept: bool) -> Result<(), crate::Error> {
        // Not current until the generations are read again: if that fails, the next refresh
        // starts over rather than keep a list without the new open generation.
        self.mirror.epoch = None;
        let tx = conn.transaction()?;
        // Whether it fails or not, a mirror at another epoch than the seal's (another writer
        // moved, sealed or rolled since) means this writer no longer knows the open generation:
        // the next refresh, finding no news, would not tell it.
        let reloaded = self.mirror.refresh_keeping(&tx, &self.name, epoch.filter(|_| kept));
        let reloaded = reloaded.and_then(|()| Ok(tx.commit()?));
        if self.mirror.epoch != epoch {
            self.open = None;
        }
        reloaded
    }

    /// Once a quarter horizon: everything appended goes into the open generation, which is
    /// sealed (its filter built from the table: it took ids this writer does not hold).
    fn roll(&mut self, conn: &mut Connection, now_us: i64) -> Result<(), crate::Error> {
        let name = &self.name;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let tbl: String =
            tx.query_row(&format!("SELECT tbl FROM {name}_gens WHERE until_us IS NULL"), [], |r| r.get(0))?;
        let mut appended: Vec<(Key, Value)> = Vec::new();
        {
            let mut stmt = tx.prepare(&format!(
                "SELECT ids, n FROM {name}_appended WHERE rowid > (SELECT floor FROM {name}_state) ORDER BY rowid"
            ))?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                decode_appended(blob(r, 0)?, r.get(1)?, |tenant, id, (bytes, number)| {
                    appended.push(((tenant.to_string(), id.to_string()), (bytes.to_vec(), number)))
                })?;
            }
        }
        appended.sort_unstable_by(|(a, _), (b, _)| (a.1.as_str(), a.0.as_str()).cmp(&(b.1.as_str(), b.0.as_str())));
        {
            let mut insert =
                tx.prepare(&format!("INSERT OR IGNORE INTO {tbl} (id, tenant, hash, key) VALUES (?1, ?2, ?3, ?4)"))?;
            for ((tenant, id), value) in &appended {
                let (hash, at) = nullable(value);
                insert.execute(params![id, tenant, hash, at])?;
            }
        }
        tx.execute_batch(&format!("DELETE FROM {name}_appended;"))?;
        let held: i64 = tx.query_row(&format!("SELECT count(*) FROM {tbl}"), [], |r| r.get(0))?;
        let filter = build_filter(&tx, &tbl)?;
        let next = seal(&tx, name, now_us, self.settings, held as usize, filter.as_ref())?;
        // The table is empty: SQLite gives rowids from 1 again.
        let epoch: i64 =
            tx.query_row(&format!("UPDATE {name}_state SET epoch = epoch + 1, floor = 0 RETURNING epoch"), [], |r| {
                r.get(0)
            })?;
        tx.commit()?;
        self.opened(tbl, next, filter);
        self.moving = None;
        self.below_floor = false;
        self.mirror.thaw();
        // Everything appended went: the mirror starts over.
        self.reload(conn, Some(epoch), false)
    }
}

/// Seals the open generation of `name` (holding `held` ids, all of them in `filter`, if one could
/// be built) at `now_us`, opens the next and takes out of `<name>_gens` those whose last arrival is a horizon ago;
/// returns the new open generation's table, and whether it left a generation to empty a piece
/// at a time ([`Dedup::empty_past`]).
fn seal(
    tx: &Connection,
    name: &str,
    now_us: i64,
    settings: Settings,
    held: usize,
    filter: Option<&BinaryFuse8>,
) -> Result<(String, bool), crate::Error> {
    let open: i64 = tx.query_row(&format!("SELECT gen FROM {name}_gens WHERE until_us IS NULL"), [], |r| r.get(0))?;
    tx.execute(
        &format!("UPDATE {name}_gens SET until_us = ?1, ids = ?2, filter = ?3 WHERE gen = ?4"),
        params![now_us, held as i64, encode_filter(filter), open],
    )?;
    let tbl = open_generation(tx, name, open + 1, now_us)?;
    let gone: Vec<(i64, String, Option<i64>)> = {
        let mut stmt =
            tx.prepare(&format!("SELECT gen, tbl, ids FROM {name}_gens WHERE until_us <= ?1 ORDER BY gen"))?;
        let rows =
            stmt.query_map([now_us.saturating_sub(settings.horizon_us)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut left = false;
    for (number, tbl, ids) in gone {
        // A large generation's own table is emptied a piece after each later commit
        // (`Dedup::empty_past`); a small one, or another table (a state's from before
        // generations), goes now. A count not kept (files from before) is taken as large.
        let own = tbl == format!("{name}_g{number}");
        let small = ids.is_some_and(|n| n as usize <= settings.drop_whole);
        if !own || small {
            tx.execute_batch(&format!("DROP TABLE IF EXISTS {tbl}"))?;
        } else {
            left = true;
        }
        tx.execute(&format!("DELETE FROM {name}_gens WHERE gen = ?1"), [number])?;
        tracing::info!(state = %name, generation = number, ids, whole = !own || small, "dedup generation past the horizon taken out");
    }
    tx.execute(&format!("DELETE FROM {name}_groups WHERE last_gen < (SELECT min(gen) FROM {name}_gens)"), [])?;
    Ok((tbl, left))
}

/// Deletes the appended ids' rows below the floor (moved) among the `step` rowids from the
/// oldest, with [`Dedup`]'s `trim_sql`; returns how many (fewer than `step` where rowids were
/// skipped). The floor's own row is kept: while the greatest
/// rowid is at least the floor, SQLite gives new rows rowids above it.
fn delete_below_floor(tx: &Connection, trim_sql: &str, step: usize) -> Result<usize, crate::Error> {
    Ok(tx.prepare_cached(trim_sql)?.execute([step as i64])?)
}

/// A value as stored: a value-less id (the store's) keeps NULLs.
fn nullable(value: &Value) -> (Option<&Vec<u8>>, Option<i64>) {
    match value.0.is_empty() {
        true => (None, None),
        false => (Some(&value.0), Some(value.1)),
    }
}

/// Opens generation `number` (its table, returned) from `from_us`.
fn open_generation(tx: &Connection, name: &str, number: i64, from_us: i64) -> Result<String, crate::Error> {
    let tbl = format!("{name}_g{number}");
    tx.execute_batch(&format!(
        "CREATE TABLE {tbl} (id TEXT NOT NULL, tenant TEXT NOT NULL, hash BLOB, key INTEGER,
             PRIMARY KEY (id, tenant)) WITHOUT ROWID;"
    ))?;
    tx.execute(
        &format!("INSERT INTO {name}_gens (gen, tbl, from_us) VALUES (?1, ?2, ?3)"),
        params![number, tbl, from_us],
    )?;
    Ok(tbl)
}

impl Mirror {
    /// A writer's mirror, with room for one and a half times `flush_at` ids appended and as
    /// many moving, so that neither list grows by copying itself (some 11 MB at `flush_at`)
    /// inside a commit unless one commit goes more than half of `flush_at` past it (a writer's
    /// lists trade places at each move and keep their room). Untouched room costs address
    /// space, not memory.
    fn reserved(flush_at: usize) -> Self {
        let room = flush_at.saturating_add(flush_at / 2);
        let mut mirror = Mirror::default();
        for list in [&mut mirror.ids, &mut mirror.moving] {
            list.entries.reserve(room);
            list.text.reserve(room * TEXT_ROOM);
            list.bytes.reserve(room * BYTES_ROOM);
            list.index.reserve(room, |_| 0);
        }
        mirror.moving_set.reserve(room);
        mirror
    }

    /// Takes every appended id it holds into `moving`, sorted as the open generation's key,
    /// with their fingerprints.
    fn freeze(&mut self) {
        if self.moving.is_empty() {
            // The lists trade places: each keeps its capacity for the next time.
            std::mem::swap(&mut self.moving, &mut self.ids);
        } else {
            self.moving.append(&self.ids);
        }
        self.ids.clear();
        self.moving.index.clear();
        self.moving.sort(&mut self.sorting);
        self.moving_set.clear();
        self.moving_set.extend(self.moving.entries.iter().map(|e| e.fp));
    }

    /// Forgets the moving ids (moved, or still appended and read again).
    fn thaw(&mut self) {
        self.moving.clear();
        self.moving_set.clear();
    }

    /// Brings the mirror of `name` up to what `tx` sees (call it inside the transaction that
    /// then looks ids up, so that a flush cannot move an id out of sight in between).
    pub fn refresh(&mut self, tx: &Connection, name: &str) -> Result<(), crate::Error> {
        self.refresh_keeping(tx, name, None)
    }

    /// [`Mirror::refresh`]; if the epoch `tx` sees is `current`, the one as of which the ids
    /// this mirror holds are all that is appended (its writer's own seal moved none), it reads
    /// the generations again but keeps the ids.
    fn refresh_keeping(&mut self, tx: &Connection, name: &str, current: Option<i64>) -> Result<(), crate::Error> {
        let sql = self.sql.take().unwrap_or_else(|| {
            (
                // The groups' sequence: it grows with each group kept (groups are deleted only
                // with their generations, which changes the epoch).
                format!(
                    "SELECT epoch, floor, coalesce((SELECT seq FROM sqlite_sequence WHERE name = '{name}_groups'), 0)
                     FROM {name}_state"
                ),
                format!("SELECT rowid, ids, n FROM {name}_appended WHERE rowid > ?1 ORDER BY rowid"),
            )
        });
        let refreshed = self.refresh_with(tx, name, &sql, current);
        self.sql = Some(sql);
        refreshed
    }

    fn refresh_with(
        &mut self,
        tx: &Connection,
        name: &str,
        sql: &(String, String),
        current: Option<i64>,
    ) -> Result<(), crate::Error> {
        let (epoch, floor, groups): (i64, i64, i64) =
            tx.prepare_cached(&sql.0)?.query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        if self.epoch == Some(epoch) && self.groups_seen != groups {
            // A group was kept since: the same generations, fewer filters to ask.
            self.generations(tx, name)?;
        }
        if self.epoch != Some(epoch) {
            if current != Some(epoch) {
                self.ids.clear();
                self.thaw();
                // Below the floor every row is moved (the floor changes only with the epoch).
                self.last_rowid = floor;
                #[cfg(test)]
                {
                    self.rereads += 1;
                }
            }
            self.generations(tx, name)?;
            self.epoch = Some(epoch);
        }
        self.groups_seen = groups;
        let mut stmt = tx.prepare_cached(&sql.1)?;
        let mut rows = stmt.query([self.last_rowid])?;
        while let Some(r) = rows.next()? {
            let ids = &mut self.ids;
            decode_appended(blob(r, 1)?, r.get(2)?, |tenant, id, value| {
                ids.insert(tenant, id, value, fingerprint(tenant, id));
            })?;
            // Only once the row is read: a row that failed is read again at the next refresh
            // (the ids it gave before failing are taken again, as they are).
            self.last_rowid = r.get(0)?;
        }
        Ok(())
    }

    /// Reads the list of live generations as `tx` sees it (a sealed one's filter taken from
    /// those this mirror holds or adopted, else as kept in the file).
    fn generations(&mut self, tx: &Connection, name: &str) -> Result<(), crate::Error> {
        let mut stmt =
            tx.prepare(&format!("SELECT gen, tbl, from_us, until_us, ids FROM {name}_gens ORDER BY gen DESC"))?;
        // Number, table, since, until (none: the open one) and ids held (as sealed).
        type Gen = (i64, String, i64, Option<i64>, Option<i64>);
        let gens: Vec<Gen> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
            .collect::<Result<_, _>>()?;
        self.open_since = gens.iter().find(|g| g.3.is_none()).map_or(0, |g| g.2);
        self.sealed_ids = gens.iter().filter(|g| g.3.is_some()).map(|g| g.4.unwrap_or(0).max(0) as usize).sum();
        // The groups, newest first: those with a filter this mirror can use, and how far any
        // reaches (a group kept without one still says its generations are taken).
        let mut known_groups: HashMap<i64, Parted> = std::mem::take(&mut self.adopted_groups);
        known_groups.extend(self.groups.drain(..).map(|g| (g.id, g.filter)));
        let rows: Vec<(i64, i64, i64)> = tx
            .prepare(&format!("SELECT id, first_gen, last_gen FROM {name}_groups ORDER BY first_gen DESC"))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        self.grouped_through = rows.iter().map(|g| g.2).max();
        let mut ranges = Vec::new();
        for (id, first, last) in rows {
            let filter = match known_groups.remove(&id) {
                Some(f) => Some(f),
                None => group_filter(tx, name, id)?,
            };
            if let Some(filter) = filter {
                ranges.push((first, last));
                self.groups.push(Group { id, filter, start: 0, end: 0 });
            }
        }
        let mut known: HashMap<String, BinaryFuse8> = std::mem::take(&mut self.adopted);
        known.extend(self.lookups.drain(..).filter_map(|l| Some((l.tbl, l.filter?))));
        for (gen_no, tbl, _, until, _) in gens {
            let sealed = until.is_some();
            let group = match sealed {
                true => ranges.iter().position(|&(first, last)| (first..=last).contains(&gen_no)),
                false => None,
            };
            let filter = match (sealed, group) {
                (false, _) | (true, Some(_)) => None,
                (true, None) => match known.remove(&tbl) {
                    Some(f) => Some(f),
                    None => self.kept_filter(tx, name, &tbl)?,
                },
            };
            if let Some(g) = group {
                let at = self.lookups.len();
                let group = &mut self.groups[g];
                if group.start == group.end {
                    group.start = at;
                }
                group.end = at + 1;
            }
            let sql = format!("SELECT hash, key FROM {tbl} WHERE id = ?1 AND tenant = ?2");
            self.lookups.push(Lookup { tbl, sql, filter, gen_no, sealed, group });
        }
        Ok(())
    }

    /// The sealed generations above the newest grouped one, oldest first: those a writer
    /// groups next.
    fn ungrouped(&self) -> Vec<i64> {
        let above = |l: &&Lookup| l.sealed && self.grouped_through.is_none_or(|t| l.gen_no > t);
        self.lookups.iter().rev().filter(above).map(|l| l.gen_no).collect()
    }

    /// The filter of the sealed generation `tbl` as kept in the file; built from the table if
    /// none is kept (a file from before filters were kept) or it cannot be read.
    fn kept_filter(&self, tx: &Connection, name: &str, tbl: &str) -> Result<Option<BinaryFuse8>, crate::Error> {
        let blob: Option<Vec<u8>> = tx
            .prepare_cached(&format!("SELECT filter FROM {name}_gens WHERE tbl = ?1"))?
            .query_row([tbl], |r| r.get(0))
            .optional()?
            .flatten();
        if let Some(blob) = blob {
            match decode_filter(&blob) {
                Ok(filter) => return Ok(filter),
                Err(why) => {
                    tracing::warn!(generation = tbl, why, "dedup filter kept in the file not used; built again")
                }
            }
        }
        #[cfg(test)]
        self.scans.set(self.scans.get() + 1);
        build_filter(tx, tbl)
    }

    /// The value of `(tenant, id)` if seen, as of the last refresh.
    pub fn get(&self, tx: &Connection, tenant: &str, id: &str) -> Result<Option<Value>, crate::Error> {
        self.get_but(tx, tenant, id, None, fingerprint(tenant, id))
    }

    /// [`Mirror::get`] asking every live generation but `skip` (`fp` is the id's fingerprint).
    fn get_but(
        &self,
        tx: &Connection,
        tenant: &str,
        id: &str,
        skip: Option<&str>,
        fp: u64,
    ) -> Result<Option<Value>, crate::Error> {
        if let Some(v) = self.ids.get(tenant, id, fp) {
            return Ok(Some(v));
        }
        if self.moving_set.contains(&fp) {
            #[cfg(test)]
            self.searches.set(self.searches.get() + 1);
            let moving = &self.moving;
            if let Ok(i) = moving.entries.binary_search_by(|e| moving.sorted(e).cmp(&(id, tenant))) {
                return Ok(Some(moving.value(&moving.entries[i])));
            }
        }
        let mut at = 0;
        while let Some(Lookup { tbl, sql, filter, group, .. }) = self.lookups.get(at) {
            at += 1;
            if let Some(g) = group.and_then(|g| self.groups.get(g))
                && g.start == at - 1
            {
                // The first of a group's members: its filter answers for them all.
                #[cfg(test)]
                self.filters_asked.set(self.filters_asked.get() + 1);
                if !g.filter.contains(fp) {
                    at = g.end;
                    continue;
                }
            }
            if let Some(f) = filter {
                #[cfg(test)]
                self.filters_asked.set(self.filters_asked.get() + 1);
                if !f.contains(&fp) {
                    continue;
                }
            }
            if skip == Some(tbl.as_str()) {
                continue;
            }
            #[cfg(test)]
            self.probes.set(self.probes.get() + 1);
            let found = tx
                .prepare_cached(sql)?
                .query_row(params![id, tenant], |r| {
                    Ok((r.get::<_, Option<Vec<u8>>>(0)?.unwrap_or_default(), r.get::<_, Option<i64>>(1)?.unwrap_or(0)))
                })
                .optional()?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }
}

/// The filter of the group of generations `first..=last` of `name` in the file at `path`, from
/// their tables (a generation dropped meanwhile is passed over; one taken out of the lookups
/// meanwhile may be read partly emptied, its missing ids then ones no lookup asks for), read
/// [`GROUP_SCAN_ROWS`] at a time in key order, each piece in a read transaction of its own.
fn build_group(path: &str, name: &str, first: i64, last: i64, part_ids: usize) -> Result<Option<Parted>, crate::Error> {
    let started = std::time::Instant::now();
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let tbls: Vec<String> = conn
        .prepare(&format!("SELECT tbl FROM {name}_gens WHERE gen BETWEEN ?1 AND ?2 AND until_us IS NOT NULL"))?
        .query_map([first, last], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    // As many as the generations held when sealed (a file from before says none: it grows).
    let held: i64 = conn.query_row(
        &format!("SELECT coalesce(sum(max(ids, 0)), 0) FROM {name}_gens WHERE gen BETWEEN ?1 AND ?2"),
        [first, last],
        |r| r.get(0),
    )?;
    let mut fps = Vec::with_capacity(usize::try_from(held).unwrap_or(0));
    for tbl in &tbls {
        let mut after: Option<(String, String)> = None;
        loop {
            let tx = conn.transaction()?;
            let present = tx
                .query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", [tbl], |_| Ok(()))
                .optional()?
                .is_some();
            if !present {
                break;
            }
            let mut rows = 0;
            {
                let mut stmt = tx.prepare_cached(&match after {
                    None => format!("SELECT id, tenant FROM {tbl} ORDER BY id, tenant LIMIT ?1"),
                    Some(_) => format!(
                        "SELECT id, tenant FROM {tbl} WHERE (id, tenant) > (?2, ?3) ORDER BY id, tenant LIMIT ?1"
                    ),
                })?;
                let mut found = match after.as_ref() {
                    None => stmt.query(params![GROUP_SCAN_ROWS])?,
                    Some((id, tenant)) => stmt.query(params![GROUP_SCAN_ROWS, id, tenant])?,
                };
                let mut last_key = None;
                while let Some(r) = found.next()? {
                    let text = |i: usize| -> Result<&str, rusqlite::Error> { Ok(r.get_ref(i)?.as_str()?) };
                    let (id, tenant) = (text(0)?, text(1)?);
                    fps.push(fingerprint(tenant, id));
                    rows += 1;
                    if rows == GROUP_SCAN_ROWS {
                        last_key = Some((id.to_string(), tenant.to_string()));
                    }
                }
                if last_key.is_some() {
                    after = last_key;
                }
            }
            tx.commit()?;
            if rows < GROUP_SCAN_ROWS {
                break;
            }
        }
    }
    let n = fps.len();
    fps.sort_unstable();
    fps.dedup();
    let filter = Parted::of(&fps, part_ids);
    tracing::debug!(state = name, first, last, ids = n, built = filter.is_some(), took = ?started.elapsed(), "dedup group filter built");
    Ok(filter)
}

/// The filter kept for group `id` of `name`: none if it could not be built or read (its
/// generations' own filters are asked).
fn group_filter(tx: &Connection, name: &str, id: i64) -> Result<Option<Parted>, crate::Error> {
    let mut stmt = tx.prepare_cached(&format!("SELECT filter FROM {name}_groups WHERE id = ?1"))?;
    let decoded = stmt.query_row([id], |r| Ok(Parted::decode(blob(r, 0)?)))?;
    match decoded {
        Ok(filter) => Ok(filter),
        Err(why) => {
            tracing::warn!(state = name, group = id, why, "dedup group filter kept in the file not used");
            Ok(None)
        }
    }
}

/// The filter of a sealed generation, from its table.
fn build_filter(tx: &Connection, tbl: &str) -> Result<Option<BinaryFuse8>, crate::Error> {
    let started = std::time::Instant::now();
    let mut stmt = tx.prepare(&format!("SELECT tenant, id FROM {tbl}"))?;
    let mut fps = stmt
        .query_map([], |r| Ok(fingerprint(r.get_ref(0)?.as_str()?, r.get_ref(1)?.as_str()?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let n = fps.len();
    // Two ids of the table may share a fingerprint.
    fps.sort_unstable();
    fps.dedup();
    let filter = filter_of(&fps);
    tracing::debug!(generation = tbl, ids = n, built = filter.is_some(), took = ?started.elapsed(), "dedup filter built");
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(n: i64) -> Value {
        (vec![n as u8; 4], n)
    }

    /// A writer on `path` that appends every id (none goes straight into the open generation).
    fn appending(path: &std::path::Path) -> (Connection, Dedup) {
        writer(path, Settings { straight: false, ..Settings::new(1_000_000) }, 0)
    }

    fn writer(path: &std::path::Path, settings: Settings, now: i64) -> (Connection, Dedup) {
        let mut conn = crate::open(path, crate::Durability::Normal).unwrap();
        let d = Dedup::open(&mut conn, "ids", None, settings, now).unwrap();
        (conn, d)
    }

    /// Inserts `ids` for tenant `t` in one committed transaction at `now`.
    fn commit(conn: &mut Connection, d: &mut Dedup, ids: impl IntoIterator<Item = i64>, now: i64) {
        commit_only(conn, d, ids);
        d.committed(conn, now).unwrap();
    }

    fn seen(conn: &mut Connection, d: &mut Dedup, i: i64) -> Option<Value> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        d.begin(&tx).unwrap();
        d.get(&tx, "t", &format!("e{i}")).unwrap()
    }

    /// A reader's look at `(t, e{i})`, refreshed in its own transaction.
    fn look(reader: &mut Connection, mirror: &mut Mirror, i: i64) -> Option<Value> {
        let tx = reader.transaction().unwrap();
        mirror.refresh(&tx, "ids").unwrap();
        mirror.get(&tx, "t", &format!("e{i}")).unwrap()
    }

    /// How many rows the appended ids' table holds (one per transaction that appended ids),
    /// moved (below the floor) or not.
    fn rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM ids_appended", [], |r| r.get(0)).unwrap()
    }

    /// How many ids are appended, not yet moved (above the floor).
    fn pending(conn: &Connection) -> i64 {
        conn.query_row(
            "SELECT coalesce(sum(n), 0) FROM ids_appended WHERE rowid > (SELECT floor FROM ids_state)",
            [],
            |r| r.get(0),
        )
        .unwrap()
    }

    /// Commits each of `ids` in a transaction of its own at `now`: a row each.
    fn commit_each(conn: &mut Connection, d: &mut Dedup, ids: std::ops::Range<i64>, now: i64) {
        for i in ids {
            commit(conn, d, [i], now);
        }
    }

    fn tables(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'ids_g[0-9]*' ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
    }

    /// A moving list sorts as a generation's key does (id, then tenant, bytewise), whatever
    /// the ids share: a long common prefix, ids that end inside the 16 bytes compared first,
    /// ids equal in those 16 bytes, one id for several tenants, and text beyond ASCII.
    #[test]
    fn a_moving_list_sorts_as_the_generation_key() {
        let mut ids: Vec<(String, String)> = Vec::new();
        for i in 0..600u64 {
            let tenant = format!("t{}", i % 7);
            let id = match i % 6 {
                0 => format!("lg1764889000000-{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                1 => format!("lg1764889000000-{}", i % 13),
                2 => format!("lg1764889000000-0000000000000000{:x}", i),
                3 => format!("lg1764889000000-é{}", i % 5),
                4 => "lg1764889000000-".to_string(),
                _ => format!("lg1764889000000-{:032x}-{}", i % 3, i),
            };
            if !ids.contains(&(tenant.clone(), id.clone())) {
                ids.push((tenant, id));
            }
        }
        let mut list = Appended::default();
        for (tenant, id) in &ids {
            list.insert(tenant, id, (b"", 0), fingerprint(tenant, id));
        }
        list.sort(&mut Sorting::default());
        let got: Vec<(&str, &str)> = list.entries.iter().map(|e| list.sorted(e)).collect();
        let mut want: Vec<(&str, &str)> = ids.iter().map(|(t, i)| (i.as_str(), t.as_str())).collect();
        want.sort();
        assert_eq!(got, want);
        // Ids with nothing in common but their first byte, and an empty list.
        let mut list = Appended::default();
        for id in ["b", "a", "ab", "a\u{7f}", "ba"] {
            list.insert("t", id, (b"", 0), fingerprint("t", id));
        }
        list.sort(&mut Sorting::default());
        let got: Vec<&str> = list.entries.iter().map(|e| list.id(e)).collect();
        assert_eq!(got, ["a", "ab", "a\u{7f}", "b", "ba"]);
        Appended::default().sort(&mut Sorting::default());
    }

    #[test]
    fn staged_ids_are_seen_at_once_and_a_rollback_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut conn, mut d) = appending(&dir.path().join("x.db"));
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        d.begin(&tx).unwrap();
        d.insert(&tx, "t", "e1", value(1)).unwrap();
        assert_eq!(d.get(&tx, "t", "e1").unwrap(), Some(value(1)));
        assert_eq!(d.get(&tx, "u", "e1").unwrap(), None, "ids are per tenant");
        let mark = d.mark();
        d.insert(&tx, "t", "e2", value(2)).unwrap();
        d.rollback_to(mark);
        assert_eq!(d.get(&tx, "t", "e2").unwrap(), None);
        drop(tx); // rolled back whole
        assert_eq!(seen(&mut conn, &mut d, 1), None, "a transaction that did not commit leaves nothing");
        commit(&mut conn, &mut d, [3], 0);
        assert_eq!(seen(&mut conn, &mut d, 3), Some(value(3)));
    }

    /// A value replaced takes its old place unless it is longer (a row read again after a
    /// failure would otherwise add its values at every read), and reads back as replaced.
    #[test]
    fn a_replaced_value_takes_no_room_unless_longer() {
        let mut list = Appended::default();
        list.insert("t", "e1", (b"abcd", 1), fingerprint("t", "e1"));
        list.insert("t", "e2", (b"wxyz", 2), fingerprint("t", "e2"));
        let room = list.bytes.len();
        for _ in 0..3 {
            list.insert("t", "e1", (b"ABCD", 3), fingerprint("t", "e1"));
        }
        assert_eq!(list.bytes.len(), room, "the same length: in place");
        assert_eq!(list.get("t", "e1", fingerprint("t", "e1")), Some((b"ABCD".to_vec(), 3)));
        list.insert("t", "e1", (b"ab", 4), fingerprint("t", "e1"));
        assert_eq!(list.get("t", "e1", fingerprint("t", "e1")), Some((b"ab".to_vec(), 4)));
        list.insert("t", "e1", (b"abcdef", 5), fingerprint("t", "e1"));
        assert_eq!(list.get("t", "e1", fingerprint("t", "e1")), Some((b"abcdef".to_vec(), 5)));
        assert_eq!(list.get("t", "e2", fingerprint("t", "e2")), Some((b"wxyz".to_vec(), 2)), "its neighbour intact");
        assert_eq!(list.len(), 2);
    }

    /// An id inserted twice in one transaction (the caller was to check it is new) is staged
    /// once, with its first value, and held once after the commit.
    #[test]
    fn an_id_inserted_twice_in_a_transaction_is_staged_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut conn, mut d) = appending(&dir.path().join("x.db"));
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        d.begin(&tx).unwrap();
        d.insert(&tx, "t", "e1", value(1)).unwrap();
        d.insert(&tx, "t", "e1", value(2)).unwrap();
        assert_eq!(d.staged.len(), 1);
        d.commit(tx).unwrap();
        d.committed(&mut conn, 1).unwrap();
        assert_eq!(d.mirror.ids.len(), 1);
        assert_eq!(seen(&mut conn, &mut d, 1), Some(value(1)));
    }

    /// A savepoint rolled back forgets the ids staged after it and only those: one of them
    /// written again is new, with its new value; what the transaction commits is what it kept,
    /// for its writer and for a reader of the file.
    #[test]
    fn a_rollback_keeps_the_ids_staged_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let (mut conn, mut d) = appending(&path);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        d.begin(&tx).unwrap();
        for i in 0..5 {
            assert_eq!(d.insert_new(&tx, "t", &format!("e{i}"), value(i)).unwrap(), None);
        }
        let mark = d.mark();
        for i in 5..9 {
            assert_eq!(d.insert_new(&tx, "t", &format!("e{i}"), value(i)).unwrap(), None);
        }
        d.rollback_to(mark);
        assert_eq!(d.insert_new(&tx, "t", "e6", value(60)).unwrap(), None, "rolled back: new again");
        assert_eq!(d.insert_new(&tx, "t", "e2", value(20)).unwrap(), Some(value(2)), "kept");
        assert_eq!(d.get(&tx, "t", "e7").unwrap(), None);
        d.commit(tx).unwrap();
        d.committed(&mut conn, 1).unwrap();
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let mut mirror = Mirror::default();
        for (i, want) in [(0, Some(value(0))), (4, Some(value(4))), (5, None), (6, Some(value(60))), (8, None)] {
            assert_eq!(seen(&mut conn, &mut d, i), want, "e{i}, its writer");
            assert_eq!(look(&mut reader, &mut mirror, i), want, "e{i}, a reader");
        }
    }

    #[test]
    fn ids_survive_a_restart_and_a_flush_and_other_connections_see_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { flush_at: 10, straight: false, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        commit(&mut conn, &mut d, 0..6, 1);
        drop((conn, d)); // a crash: the appended ids are in the file
        let (mut conn, mut d) = writer(&path, settings, 2);
        assert_eq!(seen(&mut conn, &mut d, 5), Some(value(5)));
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let mut mirror = Mirror::default();
        assert_eq!(look(&mut reader, &mut mirror, 4), Some(value(4)));
        commit(&mut conn, &mut d, 6..12, 3);
        assert_eq!(pending(&conn), 0, "12 ids reached flush_at: moved into the generation's B-tree");
        for i in [0, 7, 11] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)));
            assert_eq!(look(&mut reader, &mut mirror, i), Some(value(i)), "the reader after the flush");
        }
        assert_eq!(look(&mut reader, &mut mirror, 12), None);
    }

    /// A flush that fails (the file locked by another writer past the busy timeout) loses
    /// nothing: the ids stay appended and seen, and the next commit moves them.
    #[test]
    fn a_failed_flush_loses_nothing_and_is_done_at_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { flush_at: 4, straight: false, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        conn.busy_timeout(std::time::Duration::ZERO).unwrap();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        d.begin(&tx).unwrap();
        for i in 0..5 {
            d.insert(&tx, "t", &format!("e{i}"), value(i)).unwrap();
        }
        d.commit(tx).unwrap();
        let mut other = crate::open(&path, crate::Durability::Normal).unwrap();
        let lock = other.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        assert!(d.committed(&mut conn, 1).is_err(), "the flush cannot take the write lock");
        drop(lock);
        assert_eq!(pending(&conn), 5, "still appended");
        for i in 0..5 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)));
        }
        commit(&mut conn, &mut d, [5], 2);
        assert_eq!(pending(&conn), 1, "the five moved at the next commit; the sixth waits for the next move");
        for i in 0..6 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)));
        }
        drop((conn, d));
        let (mut conn, mut d) = writer(&path, settings, 3);
        for i in 0..6 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "after a restart");
        }
    }

    /// A move goes a chunk per commit: meanwhile every id is seen by the writer and by a
    /// reader, the appended rows stay until its last chunk, a crash midway loses nothing, and a
    /// move started again ends with every id in the generation once.
    #[test]
    fn a_move_goes_a_chunk_per_commit_and_a_crash_midway_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let n = 2 * MOVE_CHUNK as i64 + 100;
        let settings = Settings { flush_at: n as usize, straight: false, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        let in_generation =
            |conn: &Connection| -> i64 { conn.query_row("SELECT count(*) FROM ids_g1", [], |r| r.get(0)).unwrap() };
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let mut mirror = Mirror::default();
        // Descending ids: the move sorts them.
        commit(&mut conn, &mut d, (0..n).rev(), 1);
        assert_eq!((pending(&conn), in_generation(&conn)), (n, MOVE_CHUNK as i64), "the first chunk");
        commit(&mut conn, &mut d, [n], 1);
        assert_eq!((pending(&conn), in_generation(&conn)), (n + 1, 2 * MOVE_CHUNK as i64), "the second");
        for i in [0, n / 2, n - 1, n] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "the writer sees {i} midway");
            assert_eq!(look(&mut reader, &mut mirror, i), Some(value(i)), "a reader sees {i} midway");
        }
        drop((conn, d)); // a crash midway
        let (mut conn, mut d) = writer(&path, settings, 2);
        for i in [0, n / 2, n - 1, n] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i} after the crash");
        }
        commit(&mut conn, &mut d, [n + 1], 3);
        commit(&mut conn, &mut d, [n + 2], 3);
        commit(&mut conn, &mut d, [n + 3], 3);
        assert_eq!(in_generation(&conn), n + 2, "moved again, once each");
        assert_eq!(pending(&conn), 2, "the ids appended after the move began wait for the next");
        for i in [0, 1, n / 2, n + 2, n + 3] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)));
            assert_eq!(look(&mut reader, &mut mirror, i), Some(value(i)), "a reader sees {i} after the move");
        }
        assert_eq!(look(&mut reader, &mut mirror, n + 4), None);
    }

    /// While a move runs, an id that is not moving is told so by the moving ids' fingerprints,
    /// without a search of the sorted ids; one that is moving is found there; and the chunks,
    /// many rows to a statement and the rest one at a time, move each id once.
    #[test]
    fn during_a_move_a_new_id_is_told_apart_from_the_moving_ones_by_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let n = 3 * MOVE_CHUNK as i64 + 7;
        let settings = Settings { flush_at: n as usize, straight: false, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        commit(&mut conn, &mut d, (0..n).rev(), 1);
        assert!(d.moving.is_some(), "a move runs");
        let searches = |d: &Dedup| d.mirror.searches.get();
        let before = searches(&d);
        for i in n + 10..n + 110 {
            assert_eq!(seen(&mut conn, &mut d, i), None, "e{i} is new");
        }
        assert_eq!(searches(&d) - before, 0, "no new id searched the moving ones");
        for i in [0, 1, n / 2, n - 1] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "e{i} is moving");
        }
        assert_eq!(searches(&d) - before, 4, "each moving id found by one search");
        while d.moving.is_some() {
            commit(&mut conn, &mut d, [], 2);
        }
        let moved: i64 = conn.query_row("SELECT count(*) FROM ids_g1", [], |r| r.get(0)).unwrap();
        assert_eq!(moved, n, "every id moved once");
        for i in [0, n / 3, n - 1] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "e{i} after the move");
        }
    }

    /// A move's last chunk deletes none of the rows it moved (deleting 131,072 at once held the
    /// log's writer for 17-26 ms, its commit as long again): it raises the floor below which
    /// rows are moved, readers read only above it, and the commits after it delete them, a
    /// piece each, oldest first, keeping the floor's own row so that SQLite never gives a rowid
    /// at or below the floor again.
    #[test]
    fn a_move_leaves_its_rows_to_the_next_commits_to_delete_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let n = 2 * TRIM_ROWS as i64 + 10;
        let settings = Settings { flush_at: n as usize, straight: false, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        commit_each(&mut conn, &mut d, 0..n, 1);
        while d.moving.is_some() {
            commit(&mut conn, &mut d, [], 1);
        }
        assert_eq!((rows(&conn), pending(&conn)), (n, 0), "moved, all kept, none above the floor");
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        assert_eq!(started(&mut reader).ids.len(), 0, "a reader reads none of them");
        commit(&mut conn, &mut d, [], 1);
        assert_eq!(rows(&conn), n - TRIM_ROWS as i64, "a piece");
        commit(&mut conn, &mut d, [], 1);
        assert_eq!(rows(&conn), n - 2 * TRIM_ROWS as i64, "another");
        commit(&mut conn, &mut d, [], 1);
        commit(&mut conn, &mut d, [], 1);
        assert_eq!(rows(&conn), 1, "the floor's own row is kept");
        commit(&mut conn, &mut d, [n], 1);
        assert_eq!((rows(&conn), pending(&conn)), (2, 1), "appended above the floor");
        let mut mirror = started(&mut reader);
        assert_eq!(mirror.ids.len(), 1, "a reader reads what is above the floor");
        for i in [0, n - 1, n] {
            assert_eq!(look(&mut reader, &mut mirror, i), Some(value(i)), "a reader sees {i}");
        }
        drop((conn, d));
        let (mut conn, mut d) = writer(&path, settings, 2);
        for i in [0, n / 2, n - 1, n] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i} after a restart");
        }
        assert_eq!(seen(&mut conn, &mut d, n + 1), None);
    }

    /// Pieces delete a range of rowids from the oldest: where rowids were skipped (here a run
    /// of rows longer than a piece is gone), a piece deletes fewer rows, and the next ones go
    /// on until none is left below the floor but its own.
    #[test]
    fn pieces_go_on_past_skipped_rowids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let n = 4 * TRIM_ROWS as i64;
        let settings = Settings { flush_at: n as usize, straight: false, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        commit_each(&mut conn, &mut d, 0..n, 1);
        while d.moving.is_some() {
            commit(&mut conn, &mut d, [], 1);
        }
        // Rowids 11 to 10 + 2 pieces are skipped: the first piece finds only the 10 below.
        let gap = 2 * TRIM_ROWS as i64;
        conn.execute("DELETE FROM ids_appended WHERE rowid > 10 AND rowid <= ?1", [10 + gap]).unwrap();
        assert_eq!(rows(&conn), n - gap);
        commit(&mut conn, &mut d, [], 1);
        assert_eq!(rows(&conn), n - gap - 10, "the first piece: the 10 before the gap");
        for _ in 0..4 {
            commit(&mut conn, &mut d, [], 1);
        }
        assert_eq!(rows(&conn), 1, "the rest, past the gap; the floor's own row is kept");
        commit(&mut conn, &mut d, [n], 1);
        assert_eq!(pending(&conn), 1, "appended above the floor");
        for i in [0, n - 1, n] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i} is seen");
        }
    }

    /// A piece of deletion that fails (here the write lock is held elsewhere) changes nothing:
    /// the moved rows stay below the floor, no id is lost, and the next commit's piece goes on.
    #[test]
    fn a_failed_piece_of_deletion_is_taken_up_by_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let n = TRIM_ROWS as i64 - 6;
        let settings = Settings { flush_at: n as usize, straight: false, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        commit_each(&mut conn, &mut d, 0..n, 1); // moved at once: n rows below the floor
        assert_eq!((rows(&conn), pending(&conn)), (n, 0));
        commit_only(&mut conn, &mut d, [n]);
        let mut other = crate::open(&path, crate::Durability::Normal).unwrap();
        let lock = other.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        conn.busy_timeout(std::time::Duration::ZERO).unwrap();
        assert!(d.committed(&mut conn, 1).is_err(), "the piece could not take the write lock");
        drop(lock);
        assert_eq!((rows(&conn), pending(&conn)), (n + 1, 1), "nothing deleted");
        for i in [0, n - 1, n] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i} after the failed piece");
        }
        commit(&mut conn, &mut d, [n + 1], 1);
        assert_eq!((rows(&conn), pending(&conn)), (3, 2), "the next piece deleted the moved rows but the floor's");
        for i in [0, n - 1, n, n + 1] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i}");
        }
    }

    /// A file from before appended ids were kept a row per transaction (a row per id in
    /// `ids_pending`, some moved below the floor): the ids not moved become one row of
    /// `ids_appended`, the old table goes, and every id is still seen, by the writer, by a
    /// reader and after the next move.
    #[test]
    fn a_file_with_a_row_per_appended_id_keeps_every_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { flush_at: 8, straight: false, ..Settings::new(1_000_000) };
        let (conn, d) = writer(&path, settings, 0);
        drop(d);
        // As such a file was left: e0 and e1 moved into the open generation (their rows below the
        // floor, kept), e2 to e4 appended.
        conn.execute_batch(
            "DROP TABLE ids_appended;
             CREATE TABLE ids_pending (
                 rowid INTEGER PRIMARY KEY, tenant TEXT NOT NULL, id TEXT NOT NULL, hash BLOB, key INTEGER
             );
             INSERT INTO ids_g1 (id, tenant, hash, key) VALUES ('e0', 't', x'00000000', 0), ('e1', 't', x'01010101', 1);
             INSERT INTO ids_pending (tenant, id, hash, key) VALUES
                 ('t', 'e0', x'00000000', 0), ('t', 'e1', x'01010101', 1), ('t', 'e2', x'02020202', 2),
                 ('t', 'e3', x'03030303', 3), ('t', 'e4', x'04040404', 4);
             UPDATE ids_state SET floor = 2;",
        )
        .unwrap();
        drop(conn);
        let (mut conn, mut d) = writer(&path, settings, 1);
        let old: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'ids_pending'", [], |r| r.get(0)).unwrap();
        let floor: i64 = conn.query_row("SELECT floor FROM ids_state", [], |r| r.get(0)).unwrap();
        assert_eq!((old, rows(&conn), pending(&conn), floor), (0, 1, 3, 0), "e2 to e4 in one row");
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let mut mirror = started(&mut reader);
        for i in 0..5 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "the writer sees {i}");
            assert_eq!(look(&mut reader, &mut mirror, i), Some(value(i)), "a reader sees {i}");
        }
        commit_each(&mut conn, &mut d, 5..10, 2);
        assert_eq!(pending(&conn), 0, "moved");
        for i in 0..10 {
            assert_eq!(look(&mut reader, &mut mirror, i), Some(value(i)), "a reader sees {i} after the move");
        }
        drop((conn, d));
        let (mut conn, mut d) = writer(&path, settings, 3);
        for i in 0..10 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i} after a restart");
        }
    }

    /// A file from before the floor (its state without the column; its moves deleted what they
    /// moved) gains it at 0: every id is still seen, by the writer and by a reader, and the
    /// next move raises it.
    #[test]
    fn a_file_from_before_the_floor_gains_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let n = MOVE_CHUNK as i64;
        let settings = Settings { flush_at: n as usize, straight: false, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        commit(&mut conn, &mut d, 0..10, 1);
        drop(d);
        conn.execute_batch("ALTER TABLE ids_state DROP COLUMN floor").unwrap();
        drop(conn);
        let (mut conn, mut d) = writer(&path, settings, 1);
        let floor: i64 = conn.query_row("SELECT floor FROM ids_state", [], |r| r.get(0)).unwrap();
        assert_eq!((floor, pending(&conn)), (0, 10));
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let mut mirror = started(&mut reader);
        for i in 0..10 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i} after the column was added");
            assert_eq!(look(&mut reader, &mut mirror, i), Some(value(i)), "a reader sees {i}");
        }
        commit(&mut conn, &mut d, 10..n, 1);
        commit(&mut conn, &mut d, [n], 1);
        let floor: i64 = conn.query_row("SELECT floor FROM ids_state", [], |r| r.get(0)).unwrap();
        assert_eq!((floor, pending(&conn)), (2, 1), "the move raised the floor over the two rows it moved");
        for i in [0, n - 1, n] {
            assert_eq!(look(&mut reader, &mut mirror, i), Some(value(i)), "a reader sees {i}");
        }
    }

    /// However large the commits, the rows moves leave below the floor do not pile up: a move's
    /// chunks delete an earlier move's at their own pace. (Deleted only between moves, at 3,000
    /// ids a commit they were never deleted: the next move began at the commit after the last.)
    #[test]
    fn moved_rows_do_not_pile_up_under_large_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        // Moves due at 8,192 ids (about 9,000 each, three commits of 3,000): each appended row
        // (a commit's ids) is a third of a move. The bound was written for MOVE_CHUNK 1,024.
        let n = 8_192;
        let settings = Settings { flush_at: n as usize, straight: false, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        let below = |conn: &Connection| -> i64 {
            conn.query_row(
                "SELECT coalesce(sum(n), 0) FROM ids_appended WHERE rowid < (SELECT floor FROM ids_state)",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        let mut most = 0;
        for c in 0..40 {
            commit(&mut conn, &mut d, c * 3_000..(c + 1) * 3_000, 1);
            most = most.max(below(&conn));
        }
        assert!(most <= 2 * n, "{most} moved ids below the floor");
        for i in [0, 59_999, 119_999] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i}");
        }
    }

    /// The quarter-horizon roll while moved rows are still below the floor: it takes only the
    /// rows above it into the generation it seals, empties the table and sets the floor to 0;
    /// every id stays seen, and rows appended after it are read from rowid 1.
    #[test]
    fn a_roll_with_rows_below_the_floor_takes_only_those_above() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let n = MOVE_CHUNK as i64 + 10;
        let settings =
            Settings { flush_at: n as usize, seal_at: n as usize, straight: false, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        commit_each(&mut conn, &mut d, 0..n, 1);
        commit(&mut conn, &mut d, [n], 1); // the move's last chunk seals g1: n - 1 rows below the floor
        assert_eq!((rows(&conn), pending(&conn)), (n + 1, 1), "the moved rows kept below the floor");
        let quarter = settings.bucket_us();
        commit(&mut conn, &mut d, [n + 1], 1 + quarter); // the roll
        let (rows, floor): (i64, i64) = conn
            .query_row("SELECT (SELECT count(*) FROM ids_appended), floor FROM ids_state", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((rows, floor), (0, 0));
        let sealed: i64 = conn.query_row("SELECT count(*) FROM ids_g2", [], |r| r.get(0)).unwrap();
        assert_eq!(sealed, 2, "the roll took the two ids above the floor into g2, not the moved ones again");
        commit(&mut conn, &mut d, [n + 2], 2 + quarter);
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let mut mirror = started(&mut reader);
        for i in [0, n - 1, n, n + 1, n + 2] {
            assert_eq!(look(&mut reader, &mut mirror, i), Some(value(i)), "a reader sees {i}");
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "the writer sees {i}");
        }
    }

    /// A chunk moves twice the ids appended since the last chunk, at least [`MOVE_CHUNK`]: a
    /// large commit is outrun, and the commits after it are not held behind long chunks.
    #[test]
    fn a_chunk_moves_twice_what_arrived_since_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let c = MOVE_CHUNK as i64;
        let n = 8 * c;
        let settings = Settings { flush_at: n as usize, straight: false, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        let in_generation =
            |conn: &Connection| -> i64 { conn.query_row("SELECT count(*) FROM ids_g1", [], |r| r.get(0)).unwrap() };
        commit(&mut conn, &mut d, 0..n, 1);
        assert_eq!(in_generation(&conn), c, "the first chunk");
        commit(&mut conn, &mut d, [n], 1);
        assert_eq!(in_generation(&conn), 2 * c, "one id arrived: a chunk");
        commit(&mut conn, &mut d, n + 1..n + 1 + c, 1);
        assert_eq!(in_generation(&conn), 4 * c, "a chunk's worth arrived: twice that");
        commit(&mut conn, &mut d, [n + 1 + c], 1);
        assert_eq!(in_generation(&conn), 5 * c, "one id arrived since: a chunk again");
        for _ in 0..3 {
            commit(&mut conn, &mut d, [], 1);
        }
        assert_eq!(in_generation(&conn), n, "the move ended");
        assert_eq!(pending(&conn), c + 2, "what arrived meanwhile waits for the next");
        for i in [0, n - 1, n, n + 1 + c] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)));
        }
    }

    /// An id appended during a move, after a transaction that rolled one back to a savepoint,
    /// is not deleted with the moved rows, and the rolled back one is not kept.
    #[test]
    fn an_id_appended_during_a_move_after_a_rollback_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let n = MOVE_CHUNK as i64 + 1;
        let settings = Settings { flush_at: n as usize, straight: false, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        commit(&mut conn, &mut d, 0..n - 1, 1);
        let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        d.begin(&tx).unwrap();
        d.insert(&tx, "t", &format!("e{}", n - 1), value(n - 1)).unwrap();
        let mark = d.mark();
        let mut sp = tx.savepoint().unwrap();
        d.insert(&sp, "t", "rolled-back", value(0)).unwrap();
        sp.rollback().unwrap();
        drop(sp);
        d.rollback_to(mark);
        d.commit(tx).unwrap();
        d.committed(&mut conn, 1).unwrap(); // the move starts: its first chunk
        commit(&mut conn, &mut d, [n], 1); // appended during the move; the last chunk
        drop((conn, d));
        let (mut conn, mut d) = writer(&path, settings, 2);
        for i in [0, n - 1, n] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i} after a restart");
        }
        let rolled_back = {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
            d.begin(&tx).unwrap();
            d.get(&tx, "t", "rolled-back").unwrap()
        };
        assert_eq!(rolled_back, None);
    }

    /// Two writers on one database (two aggregate processes sharing a data directory): one
    /// finishes a move while the other is midway through its own. The other abandons its move
    /// (its mirror starts over) rather than slicing a mirror that is gone, and every id stays
    /// seen, whoever moved it.
    #[test]
    fn a_move_by_another_writer_midway_through_ours_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let n = 2 * MOVE_CHUNK as i64 + 1;
        let settings = Settings { flush_at: n as usize, straight: false, ..Settings::new(1_000_000) };
        let (mut a_conn, mut a) = writer(&path, settings, 0);
        let (mut b_conn, mut b) = writer(&path, settings, 0);
        commit(&mut a_conn, &mut a, 0..n, 1); // A's move: its first chunk
        for i in n..n + 3 {
            commit(&mut b_conn, &mut b, [i], 1); // B's move, from its first chunk to its last
        }
        assert!(b.moving.is_none(), "B's move ended");
        commit(&mut a_conn, &mut a, [n + 3], 1);
        commit(&mut a_conn, &mut a, [n + 4], 1);
        drop((a_conn, a, b_conn, b));
        let (mut conn, mut d) = writer(&path, settings, 2);
        for i in 0..n + 5 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i}");
        }
    }

    /// A row another writer appends after this writer's move is read by this writer's mirror,
    /// and moved, not deleted unmoved by this writer's next move or the deletions after it.
    #[test]
    fn a_row_another_writer_appends_after_our_move_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { flush_at: 10, straight: false, ..Settings::new(1_000_000) };
        let (mut a_conn, mut a) = writer(&path, settings, 0);
        let (mut b_conn, mut b) = writer(&path, settings, 0);
        commit(&mut a_conn, &mut a, 0..10, 1); // moved
        commit(&mut b_conn, &mut b, [100], 1);
        assert_eq!(seen(&mut a_conn, &mut a, 100), Some(value(100)), "A sees B's id");
        commit(&mut a_conn, &mut a, 10..20, 1); // A's next move
        drop((a_conn, a, b_conn, b));
        let (mut conn, mut d) = writer(&path, settings, 2);
        for i in (0..20).chain([100]) {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i}");
        }
    }

    /// Ids appended after a savepoint was rolled back, in the same transaction (the log's usual
    /// case: one request conflicts, the next appends), are kept; the rolled back one is not,
    /// and another writer's row after it is read.
    #[test]
    fn ids_appended_after_a_rollback_in_the_same_transaction_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { straight: false, ..Settings::new(1_000_000) };
        let (mut a_conn, mut a) = writer(&path, settings, 0);
        let (mut b_conn, mut b) = writer(&path, settings, 0);
        let mut tx = a_conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        a.begin(&tx).unwrap();
        a.insert(&tx, "t", "e1", value(1)).unwrap();
        let mark = a.mark();
        let mut sp = tx.savepoint().unwrap();
        a.insert(&sp, "t", "rolled-back", value(0)).unwrap();
        sp.rollback().unwrap();
        drop(sp);
        a.rollback_to(mark);
        a.insert(&tx, "t", "e3", value(3)).unwrap();
        a.commit(tx).unwrap();
        a.committed(&mut a_conn, 1).unwrap();
        assert_eq!((rows(&a_conn), pending(&a_conn)), (1, 2), "one row: e1 and e3");
        commit(&mut b_conn, &mut b, [2], 1);
        assert_eq!(seen(&mut a_conn, &mut a, 2), Some(value(2)), "A sees B's id");
        drop((a_conn, a, b_conn, b));
        let (mut conn, mut d) = writer(&path, settings, 2);
        for i in 1..=3 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i} after a restart");
        }
        let tx = conn.transaction().unwrap();
        assert_eq!(d.get(&tx, "t", "rolled-back").unwrap(), None, "the rolled back id is not kept");
    }

    /// Commits `ids` at `now` without the work done after a commit (`Dedup::committed`), which
    /// the caller runs later: another writer may act in between.
    fn commit_only(conn: &mut Connection, d: &mut Dedup, ids: impl IntoIterator<Item = i64>) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        d.begin(&tx).unwrap();
        for i in ids {
            d.insert(&tx, "t", &format!("e{i}"), value(i)).unwrap();
        }
        d.commit(tx).unwrap();
    }

    /// Another writer acts between this writer's commit and the move that follows it: an id
    /// it appends then is moved with the rest (the move reads what it covers in one snapshot,
    /// never deleting a row it did not move), and a move it finishes then makes this writer's
    /// next chunk abandon its own move.
    #[test]
    fn another_writer_between_a_commit_and_its_move_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let n = 2 * MOVE_CHUNK as i64 + 1;
        let settings = Settings { flush_at: n as usize, straight: false, ..Settings::new(1_000_000) };
        let (mut a_conn, mut a) = writer(&path, settings, 0);
        let (mut b_conn, mut b) = writer(&path, settings, 0);
        // B appends one id after A's commit, before A's move starts: A's move covers it.
        commit_only(&mut a_conn, &mut a, 0..n);
        commit(&mut b_conn, &mut b, [n], 1);
        a.committed(&mut a_conn, 1).unwrap();
        assert_eq!(a.moving.as_ref().map(|m| m.done), Some(MOVE_CHUNK), "A's move: its first chunk");
        // B finishes a move of everything after A's next commit, before A's next chunk.
        commit_only(&mut a_conn, &mut a, [n + 1]);
        for i in n + 2..n + 5 {
            commit(&mut b_conn, &mut b, [i], 1);
        }
        assert!(b.moving.is_none(), "B's move ended");
        a.committed(&mut a_conn, 1).unwrap();
        assert!(a.moving.is_none(), "A's move abandoned");
        commit(&mut a_conn, &mut a, [n + 5], 1);
        drop((a_conn, a, b_conn, b));
        let (mut conn, mut d) = writer(&path, settings, 2);
        for i in 0..n + 6 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i}");
        }
    }

    /// How many live generations `d`'s own lookups have, and how many of them have a filter.
    fn filtered(d: &Dedup) -> (usize, usize) {
        (d.mirror.lookups.len(), d.mirror.lookups.iter().filter(|l| l.filter.is_some()).count())
    }

    /// A generation holding `seal_at` ids is sealed and the next opens, well within a quarter
    /// horizon. Every id stays seen through the sealed generations' filters: by the writer (its
    /// filters from the ids it moved), by a reader and after a restart (theirs built from the
    /// tables); an id never written is not.
    #[test]
    fn a_full_generation_is_sealed_and_its_ids_are_found_through_its_filter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { flush_at: 10, seal_at: 25, straight: false, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        for batch in 0..10 {
            commit(&mut conn, &mut d, batch * 10..batch * 10 + 10, 1);
        }
        assert_eq!(tables(&conn), ["ids_g1", "ids_g2", "ids_g3", "ids_g4"], "sealed every third move");
        let count =
            |tbl: &str| -> i64 { conn.query_row(&format!("SELECT count(*) FROM {tbl}"), [], |r| r.get(0)).unwrap() };
        assert_eq!([count("ids_g1"), count("ids_g2"), count("ids_g3"), count("ids_g4")], [30, 30, 30, 10]);
        let _ = seen(&mut conn, &mut d, 0);
        assert_eq!(filtered(&d), (4, 3), "each sealed generation has a filter, the open one none");
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let mut mirror = Mirror::default();
        for i in 0..100 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "the writer sees {i}");
            assert_eq!(look(&mut reader, &mut mirror, i), Some(value(i)), "a reader sees {i}");
        }
        let probes = |d: &Dedup| d.mirror.probes.get();
        let before = probes(&d);
        for i in 100..1_100 {
            assert_eq!(seen(&mut conn, &mut d, i), None, "never written: {i}");
        }
        // The open generation's B-tree is asked for each; a sealed one's only on a false
        // positive of its filter (0.4 %: about 12 of 3,000).
        let asked = probes(&d) - before;
        assert!((1_000..1_060).contains(&asked), "{asked} B-trees asked for 1,000 new ids in 4 generations");
        drop((conn, d));
        let (mut conn, mut d) = writer(&path, settings, 2);
        assert_eq!(filtered(&d), (4, 3), "after a restart, filters built from the tables");
        for i in 0..100 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i} after a restart");
        }
        // The generation left open before the restart is counted and sealed when full.
        for batch in 10..13 {
            commit(&mut conn, &mut d, batch * 10..batch * 10 + 10, 3);
        }
        assert_eq!(tables(&conn).len(), 5);
        for i in 0..130 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i} after the next seal");
            assert_eq!(look(&mut reader, &mut mirror, i), Some(value(i)), "a reader sees {i} after the next seal");
        }
    }

    /// A move of several chunks into a generation this writer opened: the filter it builds from
    /// the ids it moved, used in place of the table's, holds every chunk's.
    #[test]
    fn a_writer_built_filter_holds_every_chunk_of_its_moves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let n = 2 * MOVE_CHUNK as i64 + 100;
        let settings = Settings { flush_at: n as usize, seal_at: 10, straight: false, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        // The first generation was opened before this writer knew it: sealed after one move.
        commit(&mut conn, &mut d, 0..n, 1);
        commit(&mut conn, &mut d, [n], 1);
        commit(&mut conn, &mut d, [n + 1], 1);
        assert_eq!(tables(&conn), ["ids_g1", "ids_g2"]);
        // The second, opened by this writer: its filter comes from the three chunks moved.
        commit(&mut conn, &mut d, n + 2..2 * n, 1);
        commit(&mut conn, &mut d, [2 * n], 1);
        commit(&mut conn, &mut d, [2 * n + 1], 1);
        assert_eq!(tables(&conn), ["ids_g1", "ids_g2", "ids_g3"]);
        assert!(d.mirror.adopted.is_empty() && filtered(&d) == (3, 2), "{:?}", filtered(&d));
        for i in 0..2 * n + 2 {
            assert_eq!(d.get(&conn, "t", &format!("e{i}")).unwrap(), Some(value(i)), "{i}");
        }
    }

    /// Under a load that outgrows [`SEALED`] generations of `seal_at`, a generation is sealed
    /// at a `SEALED`th of the sealed ids: the generations (and the filters a lookup asks) grow
    /// as the logarithm of the ids, not with them (and past a horizon, not at all).
    #[test]
    fn generations_grow_with_the_sealed_ids_past_sealed_times_seal_at() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { flush_at: 10, seal_at: 20, straight: false, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        for batch in 0..400 {
            commit(&mut conn, &mut d, batch * 10..batch * 10 + 10, 1);
        }
        let gens = tables(&conn).len();
        // 87 (each sealed at 1 + 1/32 times the last, from 32 of seal_at); 200 at seal_at.
        assert_eq!(gens, 87, "generations for 4,000 ids");
        for i in (0..4_000).step_by(7) {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i}");
        }
    }

    /// Builds and keeps every group due on `d`'s file.
    fn grouped(conn: &mut Connection, d: &mut Dedup) {
        d.settle_groups(conn).unwrap();
        assert!(d.group_failed.is_none());
    }

    /// A group's filter in parts finds every fingerprint it was built of (each in its part),
    /// about 0.4 % of others, and reads back as kept; a damaged or cut blob is refused.
    #[test]
    fn a_group_filter_in_parts_holds_every_fingerprint() {
        let mut fps: Vec<u64> = (0..5_000).map(|i| fingerprint("t", &format!("e{i}"))).collect();
        fps.sort_unstable();
        let parted = Parted::of(&fps, 1_000).unwrap();
        assert_eq!((parted.bits, parted.parts.len()), (3, 8), "5,000 ids in parts of 1,000 at most: 8");
        let blob = parted.encode();
        let read = Parted::decode(&blob).unwrap().unwrap();
        for f in [&parted, &read] {
            assert!(fps.iter().all(|&fp| f.contains(fp)), "no false negative");
            let others = (5_000..105_000).filter(|i| f.contains(fingerprint("t", &format!("e{i}")))).count();
            assert!(others < 800, "{others} false positives in 100,000");
        }
        let whole = Parted::of(&fps, GROUP_PART).unwrap();
        assert_eq!(whole.parts.len(), 1);
        assert!(fps.iter().all(|&fp| whole.contains(fp)));
        let empty = Parted::of(&[], GROUP_PART).unwrap();
        assert!(!empty.contains(fps[0]), "a group of no ids holds none");
        assert!(Parted::decode(&empty.encode()).unwrap().is_some());
        assert!(Parted::decode(&[]).unwrap().is_none(), "an empty blob: no filter could be built");
        let mut damaged = blob.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(Parted::decode(&damaged).is_err());
        assert!(Parted::decode(&blob[..blob.len() - 1]).is_err());
        let mut longer = blob.clone();
        longer.push(0);
        assert!(Parted::decode(&longer).is_err());
        let mut other = blob;
        other[0] = GROUP_FORMAT + 1;
        assert!(Parted::decode(&other).is_err());
    }

    fn groups(conn: &Connection) -> Vec<(i64, i64)> {
        let mut stmt = conn.prepare("SELECT first_gen, last_gen FROM ids_groups ORDER BY first_gen").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
    }

    /// [`GROUP`] adjacent sealed generations get one filter, built off the writer's thread and
    /// kept in the file: a lookup asks it once for them all, their B-trees only if it may hold
    /// the id. Every id is still found, by the writer, by a reader and after a restart; a new
    /// id costs about a filter per group and one per generation in none. Groups go with their
    /// generations past the horizon.
    #[test]
    fn sealed_generations_are_asked_through_a_group_filter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { flush_at: 10, seal_at: 20, straight: false, ..Settings::new(1_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        // A reader that keeps its mirror throughout.
        let mut early = crate::open(&path, crate::Durability::Normal).unwrap();
        let mut kept = Mirror::default();
        assert_eq!(look(&mut early, &mut kept, 0), None);
        for batch in 0..34 {
            commit(&mut conn, &mut d, batch * 10..batch * 10 + 10, 1);
        }
        grouped(&mut conn, &mut d);
        let gens = tables(&conn).len();
        assert_eq!(gens, 18, "17 sealed generations and the open one");
        assert_eq!(groups(&conn), [(1, 8), (9, 16)], "two groups of {GROUP}");
        assert_eq!(filtered(&d), (18, 1), "only the sealed generation in no group keeps its own filter");
        for i in 0..340 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "the writer sees {i}");
            assert_eq!(look(&mut early, &mut kept, i), Some(value(i)), "a reader from the start sees {i}");
        }
        assert_eq!(started_with(&kept), (0, 1));
        {
            // The writer's batch asks the sealed generations through the groups too.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
            d.begin(&tx).unwrap();
            let mut batch = d.batch(&tx);
            for i in (0..340).step_by(3) {
                assert_eq!(batch.insert_new("t", &format!("e{i}"), value(-1)).unwrap(), Some(value(i)), "{i}");
            }
            assert_eq!(batch.insert_new("t", "e-new", value(-1)).unwrap(), None);
        }
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let mirror = started(&mut reader);
        assert_eq!(started_with(&mirror), (0, 1), "a reader reads the groups' filters from the file");
        sees_all(&mut reader, &mirror, 0..340);
        let (filters, probes) = (mirror.filters_asked.get(), mirror.probes.get());
        {
            let tx = reader.transaction().unwrap();
            for i in 340..1_340 {
                assert_eq!(mirror.get(&tx, "t", &format!("e{i}")).unwrap(), None, "never written: {i}");
            }
        }
        let (filters, probes) = (mirror.filters_asked.get() - filters, mirror.probes.get() - probes);
        assert_eq!(filters, 3_000, "two groups' filters and one generation's for each new id, not 17");
        // The open generation's B-tree for each; a group's members only on a false positive of
        // its filter (0.4 %: about 8 × 8 of 2,000), a lone one's on its own (about 4 of 1,000).
        assert!((1_000..1_150).contains(&probes), "{probes} B-trees asked for 1,000 new ids");

        // A restart: the groups come from the file, and the writer groups no generation twice.
        drop((conn, d));
        let (mut conn, mut d) = writer(&path, settings, 2);
        // Grouped only when the test says, so that the reader sees the groups change.
        d.auto_group = false;
        assert_eq!(filtered(&d), (18, 1));
        for i in 0..340 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i} after a restart");
        }
        for batch in 34..50 {
            commit(&mut conn, &mut d, batch * 10..batch * 10 + 10, 3);
        }
        // The reader learns the generations sealed since, then a group kept with no seal.
        assert_eq!(look(&mut early, &mut kept, 499), Some(value(499)));
        let alone = started_with(&kept).1;
        assert!(alone > GROUP, "{alone} generations in no group yet");
        grouped(&mut conn, &mut d);
        assert_eq!(groups(&conn), [(1, 8), (9, 16), (17, 24)]);
        assert_eq!(look(&mut early, &mut kept, 499), Some(value(499)));
        assert_eq!(started_with(&kept), (0, alone - GROUP), "the new group's filter in place of theirs");
        sees_all(&mut early, &kept, 0..500);
        let mirror = started(&mut reader);
        sees_all(&mut reader, &mirror, 0..500);

        // Past the horizon, generations go and their groups with them; a group with members
        // left is asked for those.
        let min_gen =
            |conn: &Connection| -> i64 { conn.query_row("SELECT min(gen) FROM ids_gens", [], |r| r.get(0)).unwrap() };
        for batch in 50..55 {
            commit(&mut conn, &mut d, batch * 10..batch * 10 + 10, 1_002);
        }
        assert_eq!(min_gen(&conn), 18, "those sealed at 1 are past the horizon at 1,002");
        assert_eq!(groups(&conn), [(17, 24)], "the groups of only those went with them");
        let mirror = started(&mut reader);
        assert_eq!(seen(&mut conn, &mut d, 10), None, "arrived at 1: dropped");
        sees_all(&mut reader, &mirror, 340..550);
        for i in 340..550 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i}");
        }
        for batch in 55..60 {
            commit(&mut conn, &mut d, batch * 10..batch * 10 + 10, 1_004);
        }
        assert!(min_gen(&conn) > 24, "those sealed at 3 are past the horizon at 1,004");
        assert_eq!(groups(&conn), [], "and the last group with them");
        assert_eq!(seen(&mut conn, &mut d, 400), None, "arrived at 3: dropped");
        for i in 500..600 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i}");
        }
    }

    /// A group's filter that cannot be read from the file (damaged) is passed over: a connection
    /// asks its generations' own filters and still finds every id. A database in memory, which
    /// no other connection can read, gets no group, and settling them ends.
    #[test]
    fn an_unreadable_group_filter_leaves_the_generations_own_and_memory_gets_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { flush_at: 10, seal_at: 20, straight: false, ..Settings::new(1_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        for batch in 0..20 {
            commit(&mut conn, &mut d, batch * 10..batch * 10 + 10, 1);
        }
        grouped(&mut conn, &mut d);
        assert_eq!(groups(&conn), [(1, 8)]);
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let alone = started_with(&started(&mut reader)).1;
        conn.execute("UPDATE ids_groups SET filter = substr(filter, 1, length(filter) - 1)", []).unwrap();
        let mirror = started(&mut reader);
        assert_eq!(started_with(&mirror), (0, alone + GROUP), "each member's own filter, read from the file");
        sees_all(&mut reader, &mirror, 0..200);

        let mut memory = Connection::open_in_memory().unwrap();
        let mut d = Dedup::open(&mut memory, "ids", None, settings, 0).unwrap();
        for batch in 0..20 {
            commit(&mut memory, &mut d, batch * 10..batch * 10 + 10, 1);
        }
        d.settle_groups(&mut memory).unwrap();
        assert!(d.group_failed.is_some() && d.grouping.is_none());
        let none: i64 = memory.query_row("SELECT count(*) FROM ids_groups", [], |r| r.get(0)).unwrap();
        assert_eq!(none, 0);
        for i in 0..200 {
            assert_eq!(seen(&mut memory, &mut d, i), Some(value(i)), "{i}");
        }
    }

    /// Generations sealed for their size are dropped a horizon after their last arrival even
    /// when no quarter horizon passes between seals, so the state stays bounded under a load
    /// that seals often.
    #[test]
    fn generations_sealed_for_their_size_go_past_the_horizon() {
        let dir = tempfile::tempdir().unwrap();
        let horizon = 400;
        let settings = Settings { flush_at: 10, seal_at: 20, straight: false, ..Settings::new(horizon) };
        let (mut conn, mut d) = writer(&dir.path().join("x.db"), settings, 0);
        for t in 1..=80 {
            commit(&mut conn, &mut d, t * 10..t * 10 + 10, t * 10);
        }
        // Sealed every second commit (20 µs), so at most a horizon of them, and the open one.
        assert!(tables(&conn).len() <= (horizon / 20 + 1) as usize, "{:?}", tables(&conn));
        assert_eq!(seen(&mut conn, &mut d, 10), None, "arrived at 10: dropped");
        assert_eq!(seen(&mut conn, &mut d, 350), None, "arrived at 350, its generation sealed at 360: dropped");
        for i in [410, 610, 799] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "arrived at {}: kept", i / 10 * 10);
        }
    }

    /// Two writers on one database sealing generations in turn: each writer's filter of a
    /// generation it sealed covers the ids the other moved into it (or is built from the
    /// table), so every id stays seen.
    #[test]
    fn two_writers_sealing_in_turn_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { flush_at: 10, seal_at: 25, straight: false, ..Settings::new(1_000_000) };
        let (mut a_conn, mut a) = writer(&path, settings, 0);
        let (mut b_conn, mut b) = writer(&path, settings, 0);
        for batch in 0..20 {
            let ids = batch * 7..batch * 7 + 7;
            match batch % 3 {
                0 => commit(&mut b_conn, &mut b, ids, 1),
                _ => commit(&mut a_conn, &mut a, ids, 1),
            }
        }
        assert!(tables(&a_conn).len() >= 4, "sealed at least thrice: {:?}", tables(&a_conn));
        for i in 0..140 {
            assert_eq!(seen(&mut a_conn, &mut a, i), Some(value(i)), "A sees {i}");
            assert_eq!(seen(&mut b_conn, &mut b, i), Some(value(i)), "B sees {i}");
        }
        assert_eq!(seen(&mut a_conn, &mut a, 140), None);
    }

    #[test]
    fn generations_open_every_quarter_horizon_and_go_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let horizon = 400;
        let (mut conn, mut d) =
            writer(&dir.path().join("x.db"), Settings { straight: false, ..Settings::new(horizon) }, 0);
        commit(&mut conn, &mut d, [1], 10);
        assert_eq!(tables(&conn), ["ids_g1"]);
        commit(&mut conn, &mut d, [2], 100);
        assert_eq!(tables(&conn), ["ids_g1", "ids_g2"], "a quarter of the horizon: a new generation");
        commit(&mut conn, &mut d, [3], 250);
        assert_eq!(seen(&mut conn, &mut d, 1), Some(value(1)), "kept for the horizon");
        commit(&mut conn, &mut d, [4], 499);
        assert_eq!(seen(&mut conn, &mut d, 1), Some(value(1)), "its generation's last arrival was at 100");
        commit(&mut conn, &mut d, [5], 600);
        assert_eq!(seen(&mut conn, &mut d, 1), None, "dropped: every id of it arrived a horizon ago");
        assert_eq!(seen(&mut conn, &mut d, 2), None, "it arrived at 100, in the same generation");
        assert_eq!(seen(&mut conn, &mut d, 3), Some(value(3)), "arrived at 250");
        assert!(!tables(&conn).contains(&"ids_g1".to_string()), "a small one goes whole: {:?}", tables(&conn));
    }

    /// A generation past the horizon larger than `drop_whole` leaves the lookups at the seal
    /// that finds it so, and its rows go a piece after each later commit (`drop_rows`, or twice the ids committed since
    /// the last piece if more), its table once empty: dropped whole, a large generation held
    /// the writer's commit for as long as SQLite took to free every page. A writer opened on a
    /// file left halfway goes on.
    #[test]
    fn a_generation_past_the_horizon_is_emptied_a_piece_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let horizon = 1_000;
        let settings = Settings {
            flush_at: 100,
            seal_at: 1_000,
            drop_rows: 100,
            drop_whole: 999,
            straight: false,
            ..Settings::new(horizon)
        };
        let (mut conn, mut d) = writer(&path, settings, 0);
        for c in 0..20 {
            commit(&mut conn, &mut d, c * 50..c * 50 + 50, 10);
        }
        commit(&mut conn, &mut d, 1_000..1_010, 20);
        assert_eq!(tables(&conn), ["ids_g1", "ids_g2"], "the first sealed full");
        let rows =
            |conn: &Connection| -> i64 { conn.query_row("SELECT count(*) FROM ids_g1", [], |r| r.get(0)).unwrap() };
        assert_eq!(rows(&conn), 1_000);
        // A quarter horizon later than 1,020 the open one is sealed, and the first is past it.
        commit(&mut conn, &mut d, 1_010..1_020, 1_300);
        assert_eq!(seen(&mut conn, &mut d, 5), None, "past the horizon: not asked");
        let listed: i64 = conn.query_row("SELECT min(gen) FROM ids_gens", [], |r| r.get(0)).unwrap();
        assert_eq!(listed, 2);
        let mut left = vec![rows(&conn)];
        for c in 0..4 {
            commit(&mut conn, &mut d, 2_000 + c * 10..2_010 + c * 10, 1_310);
            left.push(rows(&conn));
        }
        assert_eq!(left, [1_000, 900, 800, 700, 600], "a piece of drop_rows after each commit");
        commit(&mut conn, &mut d, 3_000..3_300, 1_320);
        assert_eq!(rows(&conn), 0, "twice the 300 ids of that commit: the rest");
        drop(d);
        drop(conn);
        let (mut conn, mut d) = writer(&path, settings, 1_320);
        assert!(tables(&conn).contains(&"ids_g1".to_string()), "{:?}", tables(&conn));
        commit(&mut conn, &mut d, 4_000..4_010, 1_330);
        assert!(!tables(&conn).contains(&"ids_g1".to_string()), "reopened, the empty table goes: {:?}", tables(&conn));
        for i in [1_000, 1_015, 2_035, 3_299, 4_009] {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i} kept");
        }
    }

    /// Pages of the file: all, and those in use (not on the free list).
    fn pages(conn: &Connection) -> (i64, i64) {
        let all: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0)).unwrap();
        (all, all - free)
    }

    /// Random ids at a steady rate for eight horizons, for three horizons: once a horizon has
    /// passed, the file stops growing (dropped generations' pages are reused), and what it
    /// holds grows with the horizon, not with the ids ever seen.
    #[test]
    fn the_file_is_flat_under_a_steady_load_once_the_horizon_is_reached() {
        let mut steady = Vec::new();
        for horizon in [400, 800, 1600] {
            let dir = tempfile::tempdir().unwrap();
            let settings = Settings { flush_at: 2_000, straight: false, ..Settings::new(horizon) };
            let (mut conn, mut d) = writer(&dir.path().join("x.db"), settings, 0);
            let mut at = Vec::new();
            let (tick, per_tick) = (10, 100);
            for t in (tick..=8 * horizon).step_by(tick as usize) {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
                d.begin(&tx).unwrap();
                for _ in 0..per_tick {
                    let id = format!("{:032x}", rand::random::<u128>());
                    d.insert(&tx, "t", &id, (Vec::new(), 0)).unwrap();
                }
                d.commit(tx).unwrap();
                d.committed(&mut conn, t).unwrap();
                if t % horizon == 0 {
                    at.push(pages(&conn));
                }
            }
            let (file, used): (Vec<i64>, Vec<i64>) = at.iter().copied().unzip();
            eprintln!("horizon {horizon}: file pages at each horizon {file:?}, in use {used:?}");
            // From 3 horizons on, twice the ids ever seen and the file no larger than a quarter more.
            assert!(file[7] * 4 <= file[2] * 5, "horizon {horizon}: {file:?}");
            assert!(used[7] * 4 <= used[2] * 5, "horizon {horizon}: {used:?}");
            steady.push(file[7]);
        }
        assert!(steady[0] < steady[1] && steady[1] < steady[2], "the state grows with the horizon: {steady:?}");
    }

    #[test]
    fn an_earlier_table_becomes_the_oldest_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let mut conn = crate::open(&path, crate::Durability::Normal).unwrap();
        conn.execute_batch(
            "CREATE TABLE ids (tenant TEXT NOT NULL, id TEXT NOT NULL, hash BLOB NOT NULL, key INTEGER NOT NULL,
                 PRIMARY KEY (id, tenant)) WITHOUT ROWID;
             INSERT INTO ids VALUES ('t', 'old', x'01', 9);",
        )
        .unwrap();
        let mut d =
            Dedup::open(&mut conn, "ids", Some("ids"), Settings { straight: false, ..Settings::new(400) }, 1_000)
                .unwrap();
        let tx = conn.transaction().unwrap();
        d.begin(&tx).unwrap();
        assert_eq!(d.get(&tx, "t", "old").unwrap(), Some((vec![1], 9)));
        drop(tx);
        // A new file's empty earlier table is dropped rather than asked on every lookup.
        let path = dir.path().join("new.db");
        let mut conn = crate::open(&path, crate::Durability::Normal).unwrap();
        conn.execute_batch(
            "CREATE TABLE seen (tenant TEXT, id TEXT, hash BLOB, key INTEGER, PRIMARY KEY (id, tenant));",
        )
        .unwrap();
        Dedup::open(&mut conn, "seen", Some("seen"), Settings { straight: false, ..Settings::new(400) }, 1_000)
            .unwrap();
        let gone: Option<String> =
            conn.query_row("SELECT name FROM sqlite_master WHERE name = 'seen'", [], |r| r.get(0)).optional().unwrap();
        assert_eq!(gone, None);
    }

    /// Filters are kept in the file, so the fingerprint must not change between builds: this is
    /// SipHash-1-3 with zero keys over `1u64` (little-endian), `t` and `e1`, as computed by an
    /// implementation apart from this crate's (a Python one checked against SipHash's reference
    /// vector). A change here needs a new `FILTER_FORMAT`.
    #[test]
    fn the_fingerprint_of_an_id_does_not_change_between_builds() {
        assert_eq!(fingerprint("t", "e1"), 0x4d7a_a49d_6fde_6bc5);
        assert_ne!(fingerprint("ab", "c"), fingerprint("a", "bc"), "the tenant's length is hashed");
    }

    /// A reader's mirror, started on `path` as a new process's would be.
    fn started(reader: &mut Connection) -> Mirror {
        let mut mirror = Mirror::default();
        let tx = reader.transaction().unwrap();
        mirror.refresh(&tx, "ids").unwrap();
        mirror
    }

    /// How many sealed generations `mirror` scanned, and how many of its lookups have a filter.
    fn started_with(mirror: &Mirror) -> (usize, usize) {
        (mirror.scans.get(), mirror.lookups.iter().filter(|l| l.filter.is_some()).count())
    }

    fn sees_all(reader: &mut Connection, mirror: &Mirror, ids: impl IntoIterator<Item = i64>) {
        let tx = reader.transaction().unwrap();
        for i in ids {
            assert_eq!(mirror.get(&tx, "t", &format!("e{i}")).unwrap(), Some(value(i)), "{i}");
        }
    }

    /// Each sealed generation's filter is kept in the file when it is sealed (by a move and by
    /// the quarter-horizon roll): a connection that starts reads them instead of scanning the
    /// generations, and finds every id through them. A kept filter that cannot be used (damaged,
    /// another format) is built from its table; an earlier file's generations, with none kept,
    /// get theirs when a writer opens the file.
    #[test]
    fn sealed_generations_keep_their_filters_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { flush_at: 10, seal_at: 25, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        for batch in 0..10 {
            commit(&mut conn, &mut d, batch * 10..batch * 10 + 10, 1);
        }
        let kept = |conn: &Connection| -> i64 {
            conn.query_row("SELECT count(*) FROM ids_gens WHERE length(filter) > 0", [], |r| r.get(0)).unwrap()
        };
        assert_eq!((tables(&conn).len(), kept(&conn)), (4, 3), "three sealed generations, each with its filter");
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let mirror = started(&mut reader);
        assert_eq!(started_with(&mirror), (0, 3), "filters read from the file, no generation scanned");
        sees_all(&mut reader, &mirror, 0..100);
        let before = mirror.probes.get();
        {
            let tx = reader.transaction().unwrap();
            for i in 100..1_100 {
                assert_eq!(mirror.get(&tx, "t", &format!("e{i}")).unwrap(), None);
            }
        }
        let asked = mirror.probes.get() - before;
        assert!((1_000..1_060).contains(&asked), "{asked} B-trees asked for 1,000 new ids: the kept filters work");

        // One kept filter damaged (a fingerprint's byte), one of another format.
        let blob: Vec<u8> = conn.query_row("SELECT filter FROM ids_gens WHERE gen = 1", [], |r| r.get(0)).unwrap();
        let mut damaged = blob.clone();
        *damaged.last_mut().unwrap() ^= 0x40;
        let mut other = blob;
        other[0] = FILTER_FORMAT + 1;
        conn.execute("UPDATE ids_gens SET filter = ?1 WHERE gen = 1", [damaged]).unwrap();
        conn.execute("UPDATE ids_gens SET filter = ?1 WHERE gen = 2", [other]).unwrap();
        let mirror = started(&mut reader);
        assert_eq!(started_with(&mirror), (2, 3), "the two unusable filters built from their tables");
        sees_all(&mut reader, &mirror, 0..100);

        // An earlier file: no filter kept. Connections build them until a writer opens it.
        conn.execute("UPDATE ids_gens SET filter = NULL", []).unwrap();
        let mirror = started(&mut reader);
        assert_eq!(started_with(&mirror), (3, 3));
        sees_all(&mut reader, &mirror, 0..100);
        drop((conn, d));
        let (mut conn, mut d) = writer(&path, settings, 2);
        assert_eq!(kept(&conn), 3, "the writer kept every sealed generation's filter at its open");
        let mirror = started(&mut reader);
        assert_eq!(started_with(&mirror), (0, 3));
        sees_all(&mut reader, &mirror, 0..100);

        // The quarter-horizon roll keeps the filter of the generation it seals.
        commit(&mut conn, &mut d, 100..105, 300_000);
        assert_eq!((tables(&conn).len(), kept(&conn)), (5, 4));
        let mirror = started(&mut reader);
        assert_eq!(started_with(&mirror), (0, 4));
        sees_all(&mut reader, &mirror, 0..105);
        assert!(d.mirror.scans.get() == 0 && filtered(&d) == (5, 4), "the writer scanned nothing: {:?}", filtered(&d));
    }

    /// Ids above the open generation's recent keys (time-ordered ids, even a little out of
    /// order) go straight into its B-tree (the writer knows it from its start): nothing
    /// appended, nothing moved. An id below them is appended as before. Each is seen at once, by
    /// a reader and after a restart; a rolled back one is not.
    #[test]
    fn ordered_ids_go_straight_into_the_open_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { flush_at: 100, seal_at: 1_000_000, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        let state = |conn: &Connection| -> (i64, i64) {
            (pending(conn), conn.query_row("SELECT count(*) FROM ids_g1", [], |r| r.get(0)).unwrap())
        };
        commit(&mut conn, &mut d, 3000..3100, 1);
        assert_eq!(state(&conn), (0, 100), "an empty generation takes a commit whole");
        let mut next = 3100;
        for _ in 0..EDGE_LAG {
            commit(&mut conn, &mut d, next..next + 5, 1);
            next += 5;
        }
        assert_eq!(state(&conn), (0, 140), "ids above the greatest key go straight in");
        // A request overtaken by a later one: below the greatest key, above it as it was
        // EDGE_LAG commits ago.
        commit(&mut conn, &mut d, next + 5..next + 10, 1);
        commit(&mut conn, &mut d, next..next + 5, 1);
        next += 10;
        assert_eq!(state(&conn), (0, 150), "a little out of order goes straight in too");
        commit(&mut conn, &mut d, [2000], 1);
        assert_eq!(state(&conn), (1, 150), "an id below the edge is appended");
        {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
            d.begin(&tx).unwrap();
            d.insert(&tx, "t", &format!("e{next}"), value(next)).unwrap();
            assert_eq!(d.get(&tx, "t", &format!("e{next}")).unwrap(), Some(value(next)), "seen at once");
        }
        assert_eq!(seen(&mut conn, &mut d, next), None, "rolled back");
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let mut mirror = Mirror::default();
        for i in (3000..next).chain([2000]) {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i}");
            assert_eq!(look(&mut reader, &mut mirror, i), Some(value(i)), "a reader sees {i}");
        }
        drop((conn, d));
        let (mut conn, mut d) = writer(&path, settings, 2);
        for i in (3000..next).chain([2000]) {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i} after a restart");
        }
    }

    /// A writer sealing every 60 ids, whose quarter-horizon roll has just opened its second
    /// generation (empty: ids go straight in).
    fn rolled(path: &std::path::Path) -> (Connection, Dedup, Settings) {
        let settings = Settings { flush_at: 1_000, seal_at: 60, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(path, settings, 0);
        commit(&mut conn, &mut d, [1000], 300_000);
        (conn, d, settings)
    }

    /// Commits of five ids each, the `i`th `e{3000 + 5i}` to `e{3004 + 5i}`.
    fn fives(conn: &mut Connection, d: &mut Dedup, commits: std::ops::Range<i64>) {
        for i in commits {
            commit(conn, d, 3000 + 5 * i..3005 + 5 * i, 300_001);
        }
    }

    /// A writer whose refresh fails after it found that another writer rolled the generations
    /// (the epoch moved; the appended ids could not be read) still forgets the open generation
    /// it knew. It used to keep it, as the epoch it had then read was no news at the next
    /// refresh, and put ids straight into the generation the roll had sealed, outside that
    /// generation's filter, where no lookup found them.
    #[test]
    fn a_refresh_that_fails_after_another_writers_roll_still_forgets_the_open_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let (mut a_conn, mut a, settings) = rolled(&path);
        fives(&mut a_conn, &mut a, 0..EDGE_LAG as i64 + 2);
        let known = a.open.as_ref().map(|o| o.tbl.clone()).expect("A knows the open generation");
        let held = |conn: &Connection| -> i64 {
            conn.query_row(&format!("SELECT count(*) FROM {known}"), [], |r| r.get(0)).unwrap()
        };
        let (mut b_conn, mut b) = writer(&path, settings, 300_001);
        commit(&mut b_conn, &mut b, [9000], 600_000); // B's roll: a new generation, the epoch moved
        drop((b_conn, b));
        let before = held(&a_conn);
        let other = crate::open(&path, crate::Durability::Normal).unwrap();
        other.execute_batch("ALTER TABLE ids_appended RENAME TO ids_away").unwrap();
        {
            let tx = a_conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
            assert!(a.begin(&tx).is_err(), "the appended ids cannot be read");
        }
        other.execute_batch("ALTER TABLE ids_away RENAME TO ids_appended").unwrap();
        let next = 3000 + 5 * (EDGE_LAG as i64 + 2);
        for i in 0..3 {
            commit(&mut a_conn, &mut a, next + 5 * i..next + 5 * i + 5, 600_001);
        }
        assert_eq!(held(&a_conn), before, "A wrote nothing more into the generation B's roll sealed");
        drop((a_conn, a));
        let (mut conn, mut d) = writer(&path, settings, 600_002);
        for i in (3000..next + 15).chain([9000]) {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i}");
        }
    }

    /// A row whose ids cannot be read (an error while the mirror reads it) is read again at the
    /// next refresh, not passed over, with the ids decoded before the error taken again as they
    /// are; a row cut between two ids is refused for holding fewer than it says.
    #[test]
    fn an_appended_row_that_could_not_be_read_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { straight: false, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        commit(&mut conn, &mut d, [1], 1);
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let mut mirror = Mirror::default();
        assert_eq!(look(&mut reader, &mut mirror, 1), Some(value(1)));
        commit(&mut conn, &mut d, [2, 3], 1);
        let kept: Vec<u8> = conn.query_row("SELECT ids FROM ids_appended WHERE rowid = 2", [], |r| r.get(0)).unwrap();
        let mut one = Vec::new();
        encode_appended(&mut one, "t", "e2", &value(2));
        for (cut, why) in [(&kept[..kept.len() - 1], "cut short"), (&kept[..one.len()], "holds 1")] {
            conn.execute("UPDATE ids_appended SET ids = ?1 WHERE rowid = 2", [cut]).unwrap();
            let tx = reader.transaction().unwrap();
            let e = mirror.refresh(&tx, "ids").unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        conn.execute("UPDATE ids_appended SET ids = ?1 WHERE rowid = 2", [&kept]).unwrap();
        assert_eq!(look(&mut reader, &mut mirror, 2), Some(value(2)));
        assert_eq!(look(&mut reader, &mut mirror, 3), Some(value(3)));
    }

    /// The same after this writer's own seal: its reload fails after another writer's roll
    /// sealed the generation this writer had just opened, and this writer forgets that
    /// generation rather than put ids straight into it.
    #[test]
    fn a_reload_that_fails_after_another_writers_roll_still_forgets_the_open_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let (mut a_conn, mut a, settings) = rolled(&path);
        fives(&mut a_conn, &mut a, 0..11);
        let (mut b_conn, mut b) = writer(&path, settings, 300_001);
        let other = crate::open(&path, crate::Durability::Normal).unwrap();
        a.before_reload = Some(Box::new(move || {
            commit(&mut b_conn, &mut b, [9000], 600_000); // B's roll: the epoch moved
            other.execute_batch("ALTER TABLE ids_appended RENAME TO ids_away").unwrap();
        }));
        commit_only(&mut a_conn, &mut a, 3055..3060);
        assert!(a.committed(&mut a_conn, 300_001).is_err(), "A's seal committed, its reload failed");
        a_conn.execute_batch("ALTER TABLE ids_away RENAME TO ids_appended").unwrap();
        let sealed: String =
            a_conn.query_row("SELECT tbl FROM ids_gens WHERE until_us = 600000", [], |r| r.get(0)).unwrap();
        let held = |conn: &Connection| -> i64 {
            conn.query_row(&format!("SELECT count(*) FROM {sealed}"), [], |r| r.get(0)).unwrap()
        };
        let before = held(&a_conn);
        for i in 0..3 {
            commit(&mut a_conn, &mut a, 3060 + 5 * i..3065 + 5 * i, 600_001);
        }
        assert_eq!(held(&a_conn), before, "A wrote nothing into the generation B's roll sealed");
        drop((a_conn, a));
        let (mut conn, mut d) = writer(&path, settings, 600_002);
        for i in (3000..3075).chain([9000]) {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i}");
        }
    }

    /// A generation filled by ids put straight into it is sealed once it holds `seal_at`, with
    /// its filter from those ids: every id is found through the filters, by the writer, by a
    /// reader and after a restart, and new ids ask about one B-tree each.
    #[test]
    fn a_generation_filled_straight_is_sealed_with_its_filter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let (mut conn, mut d, settings) = rolled(&path);
        // Its own filter for each generation (no group of them: that test is above).
        d.auto_group = false;
        fives(&mut conn, &mut d, 0..100);
        assert_eq!(tables(&conn).len(), 10, "a generation every 60 ids");
        assert_eq!(pending(&conn), 0, "none appended");
        let filters: i64 =
            conn.query_row("SELECT count(*) FROM ids_gens WHERE length(filter) > 0", [], |r| r.get(0)).unwrap();
        assert_eq!(filters, 9);
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let mirror = started(&mut reader);
        assert_eq!(started_with(&mirror), (0, 9));
        sees_all(&mut reader, &mirror, 3000..3500);
        for i in 3000..3500 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "the writer sees {i}");
        }
        let before = d.mirror.probes.get();
        for i in 5000..5500 {
            assert_eq!(seen(&mut conn, &mut d, i), None);
        }
        let asked = d.mirror.probes.get() - before;
        assert!((500..545).contains(&asked), "{asked} B-trees asked for 500 new ids in 10 generations");
        drop((conn, d));
        let (mut conn, mut d) = writer(&path, settings, 300_002);
        for i in 3000..3500 {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "{i} after a restart");
        }
    }

    /// A writer's own seal of a generation filled straight keeps the appended ids its mirror
    /// holds rather than reading them all again (the next commit waited for that), reads the new
    /// list of generations, and still finds every id, as does a reader.
    #[test]
    fn a_seal_keeps_the_appended_ids_the_writers_mirror_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let (mut conn, mut d, _) = rolled(&path);
        fives(&mut conn, &mut d, 0..5);
        // Below the open generation's greatest key: appended.
        commit(&mut conn, &mut d, 2000..2010, 300_001);
        assert_eq!(pending(&conn), 10);
        let (gens, rereads) = (tables(&conn).len(), d.mirror.rereads);
        fives(&mut conn, &mut d, 5..12);
        assert_eq!(tables(&conn).len(), gens + 1, "sealed at 60 ids");
        assert_eq!(d.mirror.rereads, rereads, "the seal read the appended ids again");
        assert_eq!(d.mirror.lookups.len(), tables(&conn).len(), "the new open generation is asked");
        assert_eq!(pending(&conn), 10, "a seal moves nothing");
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let mut mirror = started(&mut reader);
        for i in (2000..2010).chain(3000..3060) {
            assert_eq!(seen(&mut conn, &mut d, i), Some(value(i)), "the writer sees {i}");
            assert_eq!(look(&mut reader, &mut mirror, i), Some(value(i)), "a reader sees {i}");
        }
    }

    /// An id another connection put into the open generation while this writer was putting ids
    /// there itself is in the filter it seals the generation with (then built from the table,
    /// not from the ids this writer knows).
    #[test]
    fn an_id_another_connection_put_in_the_open_generation_is_in_its_filter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let (mut conn, mut d, _) = rolled(&path);
        fives(&mut conn, &mut d, 0..EDGE_LAG as i64 + 2);
        let other = crate::open(&path, crate::Durability::Normal).unwrap();
        other
            .execute("INSERT INTO ids_g2 (id, tenant, hash, key) VALUES ('e9999', 't', x'0f0f0f0f', 9999)", [])
            .unwrap();
        fives(&mut conn, &mut d, EDGE_LAG as i64 + 2..20);
        assert_eq!(tables(&conn).len(), 3, "the generation was sealed");
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let mirror = started(&mut reader);
        let tx = reader.transaction().unwrap();
        assert_eq!(mirror.get(&tx, "t", "e9999").unwrap(), Some((vec![15; 4], 9999)));
    }

    /// `insert_new` finds, below the open generation's edge (so not going straight in), an id
    /// this writer put straight into it at an earlier commit (through the fingerprints that
    /// commit added), one another connection put there (the fingerprints are then unknown and
    /// the B-tree is asked), and after a restart every id of the generation left open.
    #[test]
    fn insert_new_finds_below_the_edge_what_went_straight_or_came_from_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let (mut conn, mut d, settings) = rolled(&path);
        fives(&mut conn, &mut d, 0..EDGE_LAG as i64 + 2);
        assert_eq!(pending(&conn), 0, "all went straight");
        // In a transaction that is rolled back.
        let again = |conn: &mut Connection, d: &mut Dedup, id: &str| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
            d.begin(&tx).unwrap();
            d.batch(&tx).insert_new("t", id, value(0)).unwrap()
        };
        assert!(!d.straight("t", "e3002"), "below the edge");
        assert_eq!(again(&mut conn, &mut d, "e3002"), Some(value(3002)));
        assert_eq!(again(&mut conn, &mut d, "e3002x"), None, "a new id below the edge");
        let other = crate::open(&path, crate::Durability::Normal).unwrap();
        other
            .execute("INSERT INTO ids_g2 (id, tenant, hash, key) VALUES ('e2500', 't', x'0f0f0f0f', 2500)", [])
            .unwrap();
        assert_eq!(again(&mut conn, &mut d, "e2500"), Some((vec![15; 4], 2500)));
        drop((conn, d));
        let (mut conn, mut d) = writer(&path, settings, 300_002);
        for i in 3000..3050 {
            assert_eq!(again(&mut conn, &mut d, &format!("e{i}")), Some(value(i)), "e{i} after a restart");
        }
        assert_eq!(again(&mut conn, &mut d, "e2500"), Some((vec![15; 4], 2500)), "after a restart");
    }

    /// Ids put straight into the open generation after a savepoint that is rolled back leave
    /// it as they leave its table: not counted, not in the filter the generation is sealed
    /// with, and the greatest key is the greatest kept (one batch of statements throughout).
    #[test]
    fn straight_ids_rolled_back_to_a_savepoint_are_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let (mut conn, mut d, _) = rolled(&path);
        fives(&mut conn, &mut d, 0..EDGE_LAG as i64 + 2);
        let key = |i: i64| ("t".to_string(), format!("e{i}"));
        {
            let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
            d.begin(&tx).unwrap();
            d.batch(&tx).insert_new("t", "e3050", value(3050)).unwrap();
            let mark = d.mark();
            let mut sp = tx.savepoint().unwrap();
            {
                let mut ids = d.batch(&sp);
                for i in 3051..3054 {
                    assert_eq!(ids.insert_new("t", &format!("e{i}"), value(i)).unwrap(), None);
                }
            }
            assert_eq!(d.top.as_ref().map(|(_, k)| k.clone()), Some(key(3053)));
            sp.rollback().unwrap();
            drop(sp);
            d.rollback_to(mark);
            assert_eq!(d.top, None, "the greatest was rolled back");
            let mut ids = d.batch(&tx);
            assert_eq!(ids.insert_new("t", "e3052", value(3052)).unwrap(), None, "written again, once");
            assert_eq!(ids.insert_new("t", "e3052", value(0)).unwrap(), Some(value(3052)), "its copy is refused");
            drop(ids);
            d.commit(tx).unwrap();
            d.committed(&mut conn, 300_001).unwrap();
        }
        let open = d.open.as_ref().unwrap();
        let in_table: i64 = conn.query_row("SELECT count(*) FROM ids_g2", [], |r| r.get(0)).unwrap();
        assert_eq!((open.ids, open.fps.as_ref().map(|f| f.len()), in_table), (52, Some(52), 52));
        assert_eq!(open.max, Some(key(3052)));
        commit(&mut conn, &mut d, 3100..3110, 300_001);
        assert_eq!(tables(&conn).len(), 3, "the generation was sealed, its filter from what was kept");
        let mut reader = crate::open(&path, crate::Durability::Normal).unwrap();
        let mirror = started(&mut reader);
        sees_all(&mut reader, &mirror, (3000..3051).chain([3052]).chain(3100..3110));
        for i in [3051, 3053] {
            assert_eq!(seen(&mut conn, &mut d, i), None, "{i} was rolled back");
        }
    }

    /// While this writer knows every id in the open generation (it opened it and nobody else
    /// wrote since), a new id that is not going straight in (below the generation's keys, as
    /// random ids mostly are) costs no look into that generation's B-tree: its fingerprints
    /// answer. An id that is there is still found, and after another connection wrote, the
    /// B-tree is asked again.
    #[test]
    fn the_open_generation_is_asked_only_for_ids_its_fingerprints_may_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let (mut conn, mut d, settings) = a_hundred_moved(&path);
        let probes = |d: &Dedup| d.mirror.probes.get();
        assert_eq!(probed(&mut conn, &mut d, 1_000..1_500, 0..100), 100, "only the ids that are there were looked up");
        // Another connection writes: the fingerprints no longer tell.
        let (mut other_conn, mut other) = writer(&path, settings, 1);
        commit(&mut other_conn, &mut other, [5_000], 1);
        let before = probes(&d);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        d.begin(&tx).unwrap();
        assert_eq!(d.batch(&tx).insert_new("t", "e2000", value(2000)).unwrap(), None);
        d.commit(tx).unwrap();
        assert_eq!(probes(&d) - before, 1, "asked again once another connection wrote");
    }

    /// A writer that starts over (a restart, a new process) learns the fingerprints of every id
    /// in the generation left open, so that sealing it later writes its filter from them rather
    /// than reading the whole generation inside the sealing transaction (57 ms for 198,358 ids
    /// in `benches/kafka.sh`, and every batch waited behind it), and so that the open
    /// generation's B-tree is asked only about ids its fingerprints may hold.
    #[test]
    fn a_writer_that_starts_over_knows_every_id_of_the_open_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let (conn, d, settings) = a_hundred_moved(&path);
        drop((conn, d));
        let (mut conn, mut d) = writer(&path, settings, 1);
        let open = d.open.as_ref().unwrap();
        let known: Vec<u64> = (0..100).map(|i| fingerprint("t", &format!("e{i}"))).collect();
        assert_eq!(open.ids, 100);
        assert!(
            open.fps.as_ref().is_some_and(|f| f.len() == 100 && known.iter().all(|fp| f.contains(fp))),
            "every id's fingerprint is known after the restart"
        );
        assert_eq!(probed(&mut conn, &mut d, 1_000..1_100, 0..10), 10, "only the ids that are there were looked up");
    }

    /// A writer whose open generation holds e0..e99, moved in ten commits, nothing appended.
    fn a_hundred_moved(path: &std::path::Path) -> (Connection, Dedup, Settings) {
        let settings = Settings { flush_at: 10, seal_at: 1_000, straight: false, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(path, settings, 0);
        for batch in 0..10 {
            commit(&mut conn, &mut d, batch * 10..batch * 10 + 10, 1);
        }
        assert_eq!(pending(&conn), 0, "all moved into the open generation");
        (conn, d, settings)
    }

    /// In one batch, the ids `new` (never seen, written) and then `old` (seen, each answered):
    /// how many lookups asked a B-tree.
    fn probed(conn: &mut Connection, d: &mut Dedup, new: std::ops::Range<i64>, old: std::ops::Range<i64>) -> usize {
        let before = d.mirror.probes.get();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        d.begin(&tx).unwrap();
        {
            let mut ids = d.batch(&tx);
            for i in new {
                assert_eq!(ids.insert_new("t", &format!("e{i}"), value(i)).unwrap(), None);
            }
            for i in old {
                assert_eq!(ids.insert_new("t", &format!("e{i}"), value(0)).unwrap(), Some(value(i)), "{i} is seen");
            }
        }
        d.commit(tx).unwrap();
        d.committed(conn, 1).unwrap();
        d.mirror.probes.get() - before
    }

    /// `insert_new` answers the value an id was seen with wherever it is (staged, appended, in
    /// a sealed generation, in the open one even where it would go straight in) and writes
    /// nothing then; a new id it writes once.
    #[test]
    fn insert_new_finds_an_id_wherever_it_is_and_writes_a_new_one_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let settings = Settings { flush_at: 1_000, seal_at: 100, ..Settings::new(1_000_000) };
        let (mut conn, mut d) = writer(&path, settings, 0);
        for c in 0..10 {
            commit(&mut conn, &mut d, 3000 + 10 * c..3010 + 10 * c, 1);
        }
        assert_eq!(tables(&conn), ["ids_g1", "ids_g2"], "the first generation sealed at 100 ids");
        let in_g2 =
            |conn: &Connection| -> i64 { conn.query_row("SELECT count(*) FROM ids_g2", [], |r| r.get(0)).unwrap() };
        let new = |conn: &mut Connection, d: &mut Dedup, ids: &[i64]| -> Vec<Option<Value>> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
            d.begin(&tx).unwrap();
            let out = ids.iter().map(|&i| d.insert_new(&tx, "t", &format!("e{i}"), value(i)).unwrap()).collect();
            d.commit(tx).unwrap();
            d.committed(conn, 1).unwrap();
            out
        };
        // The open generation is empty: any id would go straight in; one in the sealed one is found.
        assert_eq!(new(&mut conn, &mut d, &[3050, 3100, 3100]), [Some(value(3050)), None, Some(value(3100))]);
        assert_eq!(in_g2(&conn), 1);
        for c in 0..9 {
            commit(&mut conn, &mut d, 3101 + 10 * c..3111 + 10 * c, 1);
        }
        assert_eq!((pending(&conn), in_g2(&conn)), (0, 91));
        // e3185 is in the open generation above its edge: refused by its key, not looked up.
        assert_eq!(new(&mut conn, &mut d, &[3185, 2000, 2000]), [Some(value(3185)), None, Some(value(2000))]);
        assert_eq!((pending(&conn), in_g2(&conn)), (1, 91), "e2000 appended once, e3185 not written again");
        assert_eq!(new(&mut conn, &mut d, &[2000, 3191]), [Some(value(2000)), None]);
        assert_eq!((pending(&conn), in_g2(&conn)), (1, 92));
    }

    /// A kept filter whose descriptor would read past its fingerprints is refused even with a
    /// checksum that matches (a blob written by hand or by a faulty build), so a lookup cannot
    /// panic on it; a filter as built passes.
    #[test]
    fn a_kept_filter_that_does_not_fit_its_fingerprints_is_refused() {
        let blob = |length: u32, total: u32, bytes: usize| {
            let mut header = vec![FILTER_FORMAT];
            header.extend_from_slice(&7u64.to_le_bytes());
            header.extend_from_slice(&length.to_le_bytes());
            header.extend_from_slice(&length.wrapping_sub(1).to_le_bytes());
            header.extend_from_slice(&total.to_le_bytes());
            let fingerprints = vec![0u8; bytes];
            let sum = filter_sum(&header, &fingerprints);
            [header, sum.to_le_bytes().to_vec(), fingerprints].concat()
        };
        for (length, total, bytes) in [(1, 0, 2), (4, 5, 13), (4, 8, 24), (3, 6, 12)] {
            assert!(decode_filter(&blob(length, total, bytes)).is_err(), "{length} {total} {bytes}");
        }
        assert!(decode_filter(&blob(4, 8, 16)).unwrap().is_some());
        let built =
            filter_of(&(0..10_000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect::<Vec<_>>()).unwrap();
        let read = decode_filter(&encode_filter(Some(&built))).unwrap().unwrap();
        assert!((0..10_000u64).all(|i| read.contains(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15))));
    }
}
