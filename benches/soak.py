#!/usr/bin/env python3
"""The soak's helpers (benches/soak.sh), standard library only but for the plot (matplotlib).

  soak.py receiver STATE          a webhook receiver on a free loopback port (printed first) that
                                  answers 500 to 10 % of deliveries at random; STATE holds
                                  "accepted failed distinct_alert_ids" after each delivery
  soak.py report OUT NAME LOADGEN_CSV RESOURCES_CSV ACKED_JSON URL [STORE]
                                  joins the two CSVs row by row into OUT/NAME.csv, plots them into
                                  OUT/NAME.png, states the slopes, and reconciles every tenant's
                                  every meter: acknowledged (ACKED_JSON, from loadgen) against the
                                  live counters and, with STORE (`store`), the history at URL
                                  (admin key in METER_KEY); exits 1 on any difference
"""
import csv
import http.server
import json
import os
import random
import sys
import threading
import urllib.request


def receiver(state):
    lock = threading.Lock()
    seen = set()
    counts = {"ok": 0, "failed": 0}

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            fail = random.random() < 0.10
            with lock:
                if fail:
                    counts["failed"] += 1
                else:
                    counts["ok"] += 1
                    try:
                        seen.add(json.loads(body)["id"])
                    except (ValueError, KeyError, TypeError):
                        pass
                with open(state + ".tmp", "w") as f:
                    f.write(f"{counts['ok']} {counts['failed']} {len(seen)}\n")
                os.replace(state + ".tmp", state)
            self.send_response(500 if fail else 200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def get(url, key):
    req = urllib.request.Request(url, headers={"authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def expected(t):
    """Each default meter's value from what loadgen saw acknowledged for one tenant."""
    e = t["events"]
    return {
        "work_orders": e.get("work_order.created", 0),
        "work_orders_completed": e.get("work_order.completed", 0),
        "agent_invocations": e.get("agent.invocation", 0),
        "agent_tokens": t["tokens"],
        "api_calls": e.get("api.call", 0),
        "active_users": t["users"],
    }


def slope(xs, ys):
    """Least-squares slope of ys over xs."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")


def report(out, name, loadgen_csv, resources_csv, acked_json, url, store=None):
    with open(loadgen_csv) as f:
        load = list(csv.DictReader(f))
    with open(resources_csv) as f:
        res = list(csv.DictReader(f))
    # Each sample takes the load generator's row for the interval ending at the same second (the
    # first, when its last, partial row ends there too); the sample taken after the load has none.
    rows = []
    for r in res:
        row = dict(r)
        match = next((l for l in load if abs(float(l["seconds"]) - float(r["seconds"])) <= 2), {})
        for k, v in match.items():
            if k != "seconds":
                row[k] = v
        rows.append(row)
    columns = list(rows[0].keys()) if rows else []
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)
    with open(os.path.join(out, name + ".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)

    num = lambda r, k: float(r[k]) if r.get(k) not in (None, "") else float("nan")
    minutes = [num(r, "seconds") / 60 for r in rows]
    rss_cols = [c for c in columns if c.startswith("rss_mb_")]
    fds_cols = [c for c in columns if c.startswith("fds_")]
    # Warm-up: the first 5 minutes (or the first third of a shorter run).
    warm = [i for i, m in enumerate(minutes) if m >= min(5, minutes[-1] / 3)] if minutes else []
    print(f"== {name}: {len(rows)} samples over {minutes[-1] if minutes else 0:.0f} min")
    for c in rss_cols:
        ys = [num(rows[i], c) for i in warm]
        print(f"{c}: {min(ys):.1f}-{max(ys):.1f} MB after warm-up, slope {slope([minutes[i] for i in warm], ys):+.3f} MB/min")
    for c in fds_cols:
        ys = [num(r, c) for r in rows]
        print(f"{c}: {min(ys):.0f}-{max(ys):.0f}")
    appended = [num(r, "events_taken") for r in rows]
    for c in ("data_bytes", "wal_bytes", "clickhouse_bytes"):
        if c in columns:
            ys = [num(r, c) for r in rows]
            print(f"{c}: {ys[0] / 1e6:.1f} MB at the first sample, {ys[-1] / 1e6:.1f} MB at the last, "
                  f"max {max(ys) / 1e6:.1f} MB; slope {slope(appended, ys):.1f} bytes per event taken")
    for c in ("ingest_p99_ms", "usage_p99_ms", "entitlement_p99_ms"):
        ys = [num(r, c) for r in rows if r.get(c)]
        if ys:
            print(f"{c} per minute: {min(ys):.2f}-{max(ys):.2f} (median {sorted(ys)[len(ys) // 2]:.2f})")
    failed = sum(int(float(r.get("failed_requests") or 0)) for r in rows)
    failed_reads = sum(int(float(r.get("failed_reads") or 0)) for r in rows)
    print(f"failed requests: {failed}; failed reads: {failed_reads}")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(4, 1, figsize=(9, 12), sharex=True)
        for c in rss_cols:
            ax[0].plot(minutes, [num(r, c) for r in rows], label=c[len("rss_mb_"):])
        ax[0].set_ylabel("RSS, MB")
        for c in ("data_bytes", "wal_bytes", "clickhouse_bytes"):
            if c in columns:
                ax[1].plot(minutes, [num(r, c) / 1e6 for r in rows], label=c[: -len("_bytes")])
        ax[1].set_ylabel("disk, MB")
        for c in ("ingest_p99_ms", "usage_p99_ms", "entitlement_p99_ms"):
            ax[2].plot(minutes, [num(r, c) for r in rows], label=c[: -len("_p99_ms")])
        ax[2].set_ylabel("p99 in the minute, ms")
        for c in fds_cols:
            ax[3].plot(minutes, [num(r, c) for r in rows], label=c[len("fds_"):])
        ax[3].set_ylabel("open files")
        ax[3].set_xlabel("minutes")
        for a in ax:
            a.legend(loc="upper left", fontsize=8)
            a.grid(alpha=0.3)
        fig.suptitle(f"soak: {name}")
        fig.tight_layout()
        fig.savefig(os.path.join(out, name + ".png"), dpi=80)
    except ImportError:
        print("no matplotlib: no plot")

    key = os.environ["METER_KEY"]
    with open(acked_json) as f:
        acked = json.load(f)
    sources = ["live"] + ([store] if store else [])
    differ = {s: 0 for s in sources}
    meters = 0
    for tenant, t in acked.items():
        want = expected(t)
        for s in sources:
            got = get(f"{url}/api/v1/usage?tenant={tenant}&source={s}", key)
            values = {m["name"]: m["value"] for m in got["meters"]}
            for meter, v in want.items():
                if s == "live":
                    meters += 1
                have = values.get(meter)
                if (have is None and v != 0) or (have is not None and float(have) != v):
                    differ[s] += 1
                    if differ[s] <= 5:
                        print(f"differs: {tenant} {meter} ({s}): acknowledged {v}, {s} {have}")
    print(f"reconciled {len(acked)} tenants, {meters} meters: "
          + "; ".join(f"{s}: {n} differ" for s, n in differ.items()))
    return 1 if any(differ.values()) else 0


if __name__ == "__main__":
    if sys.argv[1] == "receiver":
        receiver(sys.argv[2])
    elif sys.argv[1] == "report":
        sys.exit(report(*sys.argv[2:]))
    else:
        sys.exit(__doc__)
