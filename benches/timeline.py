"""Reads benches/timeline.sh's poll file: per interval of STEP polls (0.25 s each), the events
counted, the batches, their mean duration and the event-to-counter p50/p99 (bucket-interpolated),
then the run's p50/p99 whole and p99 after its first 1 s and 5 s.
    python3 benches/timeline.py POLL [STEP]"""
import re
import sys


def snapshots(path):
    snaps, cur = [], None
    for line in open(path):
        if line.startswith("T "):
            cur = {"t": float(line.split()[1]), "b": {}, "bs": 0.0, "bc": 0.0, "ev": 0.0}
            snaps.append(cur)
            continue
        m = re.match(r"(\S+?)(\{.*\})? (\S+)$", line.strip())
        if not m or cur is None:
            continue
        name, labels, v = m.group(1), m.group(2) or "", float(m.group(3))
        if name.endswith("_bucket"):
            le = re.search(r'le="([^"]+)"', labels).group(1)
            cur["b"][le] = cur["b"].get(le, 0) + v
        elif name.endswith("batch_duration_seconds_sum"):
            cur["bs"] += v
        elif name.endswith("batch_duration_seconds_count"):
            cur["bc"] += v
        elif name == "meter_aggregator_events_total":
            cur["ev"] += v
    return [s for s in snaps if s["b"]]


def quantile(b0, b1, q):
    """The q-quantile in ms of what the histogram counted between snapshots b0 and b1."""
    bounds = sorted(b1, key=lambda x: float("inf") if x == "+Inf" else float(x))
    total = b1["+Inf"] - b0.get("+Inf", 0)
    if total <= 0:
        return 0.0
    want, prev_b, prev_c = q * total, 0.0, 0.0
    for le in bounds:
        c = b1[le] - b0.get(le, 0)
        if c >= want:
            if le == "+Inf":
                return prev_b * 1000
            return (prev_b + (float(le) - prev_b) * (want - prev_c) / (c - prev_c)) * 1000
        prev_b, prev_c = float(le), c
    return prev_b * 1000


def main():
    snaps = snapshots(sys.argv[1])
    step = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    t0 = snaps[0]["t"]
    for i in range(0, len(snaps) - step, step):
        a, b = snaps[i], snaps[i + step]
        n = b["bc"] - a["bc"]
        mean = (b["bs"] - a["bs"]) / n * 1000 if n else 0.0
        print(f"{a['t'] - t0:6.2f} s: {b['ev'] - a['ev']:7.0f} events, {n:4.0f} batches, mean batch {mean:6.1f} ms,"
              f" p50 {quantile(a['b'], b['b'], 0.5):6.1f} ms, p99 {quantile(a['b'], b['b'], 0.99):6.1f} ms")
    last = snaps[-1]["b"]
    after = {s: next((x["b"] for x in snaps if x["t"] - t0 >= s), last) for s in (1, 5)}
    print(f"whole run: p50 {quantile({}, last, 0.5):.1f} ms, p99 {quantile({}, last, 0.99):.1f} ms;"
          f" after 1 s: p99 {quantile(after[1], last, 0.99):.1f} ms; after 5 s: p99 {quantile(after[5], last, 0.99):.1f} ms")


if __name__ == "__main__":
    main()
