"""What dropping a dedup generation whole costs against deleting it 4,096 rows at a time, by its
size: the generation's schema (sqlite/src/dedup.rs) in a WAL database, N random ids as the load
generator makes them, the file closed and reopened, then DROP TABLE in one transaction; and on a
second such file, pieces of 4,096 rows by key range, each a transaction of its own.
    python3 benches/drop_cost.py 131072 2097152
"""
import sqlite3, os, random, time, sys, tempfile
def make(path, n):
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=NORMAL"); c.execute("PRAGMA cache_size=-65536")
    c.execute("CREATE TABLE g (id TEXT NOT NULL, tenant TEXT NOT NULL, hash BLOB, key INTEGER, PRIMARY KEY (id, tenant)) WITHOUT ROWID")
    c.execute("BEGIN")
    rows = sorted((f"soak-{random.getrandbits(128):032x}", f"tenant-{random.randrange(1000):04d}", os.urandom(32), i) for i in range(n))
    c.executemany("INSERT INTO g VALUES (?,?,?,?)", rows)
    c.execute("COMMIT"); c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return c
for n in map(int, sys.argv[1:]):
    d = tempfile.mkdtemp(dir="/tmp")
    c = make(f"{d}/a.db", n); c.close()
    c = sqlite3.connect(f"{d}/a.db", isolation_level=None); c.execute("PRAGMA cache_size=-65536")
    t = time.perf_counter(); c.execute("BEGIN IMMEDIATE"); c.execute("DROP TABLE g"); c.execute("COMMIT"); whole = time.perf_counter() - t
    c.close()
    c = make(f"{d}/b.db", n); c.close()
    c = sqlite3.connect(f"{d}/b.db", isolation_level=None); c.execute("PRAGMA cache_size=-65536")
    pieces = []
    while True:
        t = time.perf_counter(); c.execute("BEGIN IMMEDIATE")
        cut = c.execute("SELECT id, tenant FROM g ORDER BY id, tenant LIMIT 1 OFFSET 4095").fetchone()
        if cut: c.execute("DELETE FROM g WHERE (id, tenant) <= (?, ?)", cut)
        else: c.execute("DROP TABLE g")
        c.execute("COMMIT"); pieces.append(time.perf_counter() - t)
        if not cut: break
    pieces.sort()
    print(f"{n} ids: DROP TABLE {whole*1000:.1f} ms; {len(pieces)} pieces of 4,096: median {pieces[len(pieces)//2]*1000:.2f} ms, max {pieces[-1]*1000:.2f} ms, total {sum(pieces)*1000:.0f} ms")
    os.system(f"rm -rf {d}")
