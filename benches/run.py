"""backflow vs DuckDB on the same sync diff, in the same run.

    bash benches/setup.sh                       # DuckDB from PyPI + release build
    python3 benches/run.py --rows 1000000 10000000

For each model size: generate v1 and v2 (generate.py), then time four scenarios with the
release binary (`backflow run` on a Parquet model into a Parquet file destination, once in
each mode: `snapshot`, where the file holds the object's full contents and is rewritten, and
`changes`, where each run writes only the changes it sent, as the DuckDB script does) and the
same diff as one DuckDB script (baseline.sql) on the same files. Against `snapshot` mode the
script also rewrites the object the same way (baseline_snapshot.sql: the previous object's
untouched rows and the changed and new ones, as one zstd Parquet file, skipped when nothing
changed), so that like is compared with like:

  initial      v1, no state: every row is new
  incremental  v2 on top of v1's state (mirror: 1% changed, 0.5% deleted, 0.5% new)
  no-change    v2 again
  cursor       v2 with a cursor on updated_at (upsert), after an untimed v1 run

`--memory-limit 2GiB` runs backflow under that engine memory limit (joins and sorts spill);
`--modes changes` runs one file mode only.

Wall time and peak RSS come from the child process (wait4). Prints a Markdown table with the
ratio backflow / DuckDB (below 1.0: backflow is faster) and writes JSON next to the data.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate import generate  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "backflow")
BASELINE = open(os.path.join(ROOT, "benches", "baseline.sql")).read()
SNAPSHOT = open(os.path.join(ROOT, "benches", "baseline_snapshot.sql")).read()


def measured(cmd, cwd=None):
    """Run cmd; return (seconds, peak RSS MiB, stdout)."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate()
    elapsed = time.perf_counter() - start
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{out.decode()}\n{err.decode()}")
    return elapsed, out


def peak_child_rss_mib(fn):
    """Run fn() in a forked child and return (result, child's peak RSS in MiB)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            result = fn()
            os.write(w, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not data:
        sys.exit("benchmark child failed")
    return json.loads(data), usage.ru_maxrss / 1024


def backflow_run(project, sync):
    def go():
        cmd = [BIN, "run", sync, "--json", "--project", project]
        t, out = measured(cmd)
        report = json.loads(out.decode().strip().splitlines()[-1])
        if report["status"] != "succeeded":
            raise SystemExit(f"backflow failed: {report}")
        return {"seconds": t, "report": report}

    return peak_child_rss_mib(go)


def duckdb_run(model, state, changes, next_state, where="", join="FULL", cursor=False, snapshot=None):
    """The diff script; with `snapshot` = (previous object, next object), the object is
    rewritten too (when something changed)."""
    if cursor:
        next_sel = (
            f"SELECT s.id, s.h FROM read_parquet('{state}') s ANTI JOIN m ON s.id = m.id "
            "UNION ALL SELECT id, h FROM m"
        )
    else:
        next_sel = "SELECT id, h FROM m"
    sql = BASELINE.format(
        model=model, state=state, changes=changes, next_state=next_state, where=where, join=join,
        next_state_select=next_sel,
    )

    def go():
        import duckdb

        start = time.perf_counter()
        con = duckdb.connect()
        con.execute(sql)
        if snapshot:
            prev, nxt = snapshot
            changed = con.execute(f"SELECT count(*) FROM read_parquet('{changes}')").fetchone()[0]
            if changed:
                con.execute(SNAPSHOT.format(object=prev, changes=changes, next_object=nxt))
            else:
                shutil.copyfile(prev, nxt)
        return {"seconds": time.perf_counter() - start}

    return peak_child_rss_mib(go)


def project(dir, model, cursor, mode, memory_limit=None):
    if os.path.exists(dir):
        shutil.rmtree(dir)
    os.makedirs(dir)
    sync = (
        'behavior = "upsert"\ncursor = "updated_at"' if cursor else 'behavior = "mirror"'
    )
    engine = f'[engine]\nmemory_limit = "{memory_limit}"\n' if memory_limit else ""
    with open(os.path.join(dir, "backflow.toml"), "w") as f:
        f.write(
            f"""{engine}
[sources.customers]
type = "parquet"
path = "model.parquet"

[destinations.lake]
type = "file"
path = "out"
format = "parquet"
mode = "{mode}"

[syncs.s]
from = "customers"
to = "lake"
object = "customers"
key = "id"
{sync}
"""
        )
    point(dir, model)


def point(dir, model):
    link = os.path.join(dir, "model.parquet")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(os.path.abspath(model), link)


def bench(rows, data_dir, modes, memory_limit=None):
    v1, v2 = generate(rows, data_dir)
    work = os.path.join(data_dir, f"work_{rows}")
    os.makedirs(work, exist_ok=True)
    results = []

    # backflow, in each file destination mode
    runs = {}
    for mode in modes:
        mirror = os.path.join(work, f"mirror_{mode}")
        project(mirror, v1, cursor=False, mode=mode, memory_limit=memory_limit)
        b_initial = backflow_run(mirror, "s")
        point(mirror, v2)
        b_incr = backflow_run(mirror, "s")
        b_same = backflow_run(mirror, "s")
        cur = os.path.join(work, f"cursor_{mode}")
        project(cur, v1, cursor=True, mode=mode, memory_limit=memory_limit)
        backflow_run(cur, "s")
        point(cur, v2)
        b_cursor = backflow_run(cur, "s")
        runs[mode] = (b_initial, b_incr, b_same, b_cursor)

    # DuckDB
    import duckdb

    empty = os.path.join(work, "empty_state.parquet")
    duckdb.connect().execute(
        f"COPY (SELECT CAST(NULL AS BIGINT) AS id, CAST(NULL AS UBIGINT) AS h WHERE false) TO '{empty}' (FORMAT parquet)"
    )
    p = lambda name: os.path.join(work, name)  # noqa: E731
    cursor_filter = "WHERE updated_at >= (SELECT max(updated_at) FROM read_parquet('" + v1 + "'))"
    baselines = {}
    for mode in modes:
        def o(i):
            """In snapshot mode the object is rewritten too: o0 (empty) → o1 → o2 → o3; the
            cursor run (4) starts from o1."""
            if mode != "snapshot":
                return None
            return p(f"d_object{1 if i == 4 else i - 1}.parquet"), p(f"d_object{i}.parquet")

        if mode == "snapshot":
            duckdb.connect().execute(
                f"COPY (SELECT * FROM read_parquet('{v1}') WHERE false) TO '{p('d_object0.parquet')}' (FORMAT parquet)"
            )
        baselines[mode] = (
            duckdb_run(v1, empty, p("d_changes1.parquet"), p("d_state1.parquet"), snapshot=o(1)),
            duckdb_run(v2, p("d_state1.parquet"), p("d_changes2.parquet"), p("d_state2.parquet"), snapshot=o(2)),
            duckdb_run(v2, p("d_state2.parquet"), p("d_changes3.parquet"), p("d_state3.parquet"), snapshot=o(3)),
            duckdb_run(v2, p("d_state1.parquet"), p("d_changes4.parquet"), p("d_state4.parquet"),
                       where=cursor_filter, join="LEFT", cursor=True, snapshot=o(4)),
        )

    model_rows = {"initial": rows, "incremental": rows, "no-change": rows, "cursor": rows}
    for mode, (b_initial, b_incr, b_same, b_cursor) in runs.items():
        d_initial, d_incr, d_same, d_cursor = baselines[mode]
        for name, b, d in [
            ("initial", b_initial, d_initial),
            ("incremental", b_incr, d_incr),
            ("no-change", b_same, d_same),
            ("cursor", b_cursor, d_cursor),
        ]:
            (bres, bmem), (dres, dmem) = b, d
            results.append(
                {
                    "rows": rows,
                    "mode": mode,
                    "scenario": name,
                    "backflow_s": bres["seconds"],
                    "duckdb_s": dres["seconds"],
                    "ratio": bres["seconds"] / dres["seconds"],
                    "backflow_rows_per_s": model_rows[name] / bres["seconds"],
                    "duckdb_rows_per_s": model_rows[name] / dres["seconds"],
                    "backflow_peak_mib": bmem,
                    "duckdb_peak_mib": dmem,
                    "report": bres["report"],
                }
            )
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--data", default=os.path.join(ROOT, "target", "bench-data"))
    ap.add_argument("--modes", nargs="+", choices=["snapshot", "changes"], default=["snapshot", "changes"],
                    help="file destination modes to run (default: both)")
    ap.add_argument("--memory-limit", help='run backflow under [engine] memory_limit (e.g. "2GiB")')
    args = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} not found: run benches/setup.sh first")
    all_results = []
    print("| rows | file mode | scenario | backflow s | DuckDB s | ratio | backflow rows/s | backflow peak MiB | DuckDB peak MiB | sent (c/u/d) |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---|")
    for rows in args.rows:
        for r in bench(rows, args.data, args.modes, args.memory_limit):
            all_results.append(r)
            rep = r["report"]
            print(
                f"| {r['rows']:,} | {r['mode']} | {r['scenario']} | {r['backflow_s']:.2f} | {r['duckdb_s']:.2f} | "
                f"{r['ratio']:.2f} | {r['backflow_rows_per_s']:,.0f} | {r['backflow_peak_mib']:.0f} | "
                f"{r['duckdb_peak_mib']:.0f} | {rep['created']}/{rep['updated']}/{rep['deleted']} |",
                flush=True,
            )
    with open(os.path.join(args.data, "results.json"), "w") as f:
        json.dump(all_results, f, indent=2)


if __name__ == "__main__":
    main()
