"""An incremental sync from a Delta table with 1% changed: reading the table's change data feed
against diffing the whole table, in one run.

    python benches/delta_feed.py --rows 10000000   # a python with deltalake and pyarrow
                                                   # (BACKFLOW_TEST_DELTA_PYTHON has both)

A Delta table of N rows (id, email, name, plan, mrr, updated_at) with Change Data Feed on is
written by the `deltalake` Python package. Two syncs mirror it into change-feed file
destinations (Parquet, `mode = "changes"`, so that what is measured is the read and the diff,
not a rewrite of the output): `feed` reads the table's change data feed, `full` sets
`change_feed = false` on its source and diffs the whole table. After both have loaded the
table, each round changes 1% of it in one MERGE (0.5% updated, 0.25% inserted, 0.25% deleted)
and times one run of each sync (alternating which goes first); both must send the same
counts. The ratio is the feed's time over the full diff's (below 1.0: the feed is faster).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BENCH_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "backflow")


def rows(start, count, version=0):
    ids = pa.array(range(start, start + count), pa.int64())
    text = pc.cast(ids, pa.string())
    return pa.table({
        "id": ids,
        "email": pc.binary_join_element_wise("user", text, "@example.com", ""),
        "name": pc.binary_join_element_wise("Name ", text, f" v{version}", ""),
        "plan": pc.choose(pc.cast(pc.bit_wise_and(ids, 3), pa.int8()), "free", "pro", "team", "enterprise"),
        "mrr": pc.multiply(pc.cast(pc.bit_wise_and(ids, 1023), pa.float64()), 1.5),
        "updated_at": pc.cast(pc.add(pc.multiply(ids, 1000), 1_767_225_600_000_000), pa.timestamp("us", "UTC")),
    })


def timed(cmd, cwd):
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, cwd=cwd)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stdout.decode()}\n{p.stderr.decode()}")
    return time.perf_counter() - start, json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", default=os.path.join(ROOT, "target", "bench-data"))
    args = ap.parse_args()
    n = args.rows
    work = os.path.join(args.data, f"delta_feed_{n}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    table = os.path.join(work, "lake", "customers")
    chunk = 1_000_000
    for i, start in enumerate(range(0, n, chunk)):
        write_deltalake(table, rows(start, min(chunk, n - start)), mode="append" if i else "error",
                        configuration={"delta.enableChangeDataFeed": "true"} if i == 0 else None)
    with open(os.path.join(work, "backflow.toml"), "w") as f:
        f.write("""
[sources.feed]
type = "delta"
path = "lake/customers"

[sources.full]
type = "delta"
path = "lake/customers"
change_feed = false

[destinations.out]
type = "file"
path = "out"
format = "parquet"
mode = "changes"
""" + "".join(f"""
[syncs.{s}]
from = "{s}"
to = "out"
object = "{s}"
behavior = "mirror"
key = "id"
""" for s in ("feed", "full")))
    for s in ("feed", "full"):
        t, r = timed([BIN, "run", s, "--json"], work)
        print(f"initial load {s}: {t:.2f}s, {r['created']} created", flush=True)
    ratios = []
    next_id = n
    for k in range(args.rounds):
        dt = DeltaTable(table)
        changed = n // 200
        updates = rows(k * 7919 % (n - changed), changed, version=k + 1)
        inserts = rows(next_id, n // 400)
        next_id += n // 400
        source = pa.concat_tables([updates, inserts])
        (dt.merge(source, "t.id = s.id", source_alias="s", target_alias="t")
           .when_matched_update_all().when_not_matched_insert_all().execute())
        lo = n // 2 + k * (n // 400)
        DeltaTable(table).delete(f"id >= {lo} AND id < {lo + n // 400}")
        order = ("feed", "full") if k % 2 == 0 else ("full", "feed")
        times, results = {}, {}
        for s in order:
            times[s], results[s] = timed([BIN, "run", s, "--json"], work)
        counts = {s: tuple(results[s][c] for c in ("created", "updated", "deleted")) for s in order}
        if counts["feed"] != counts["full"]:
            sys.exit(f"the syncs sent different changes: {counts}")
        ratio = times["feed"] / times["full"]
        ratios.append(ratio)
        print(f"round {k + 1}: 1% changed {counts['feed']} (created, updated, deleted); "
              f"feed {times['feed']:.2f}s (read {results['feed']['read']}), "
              f"full diff {times['full']:.2f}s (read {results['full']['read']}); ratio {ratio:.3f}",
              flush=True)
    print(f"median ratio feed / full diff at {n} rows: {statistics.median(ratios):.3f}")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
