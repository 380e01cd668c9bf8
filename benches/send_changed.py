"""What `send = "changed"` and `record_log = true` cost on the incremental run, as ratios to the
same run without them, in the same benchmark run.

    bash benches/setup.sh                       # DuckDB from PyPI + release build
    python3 benches/send_changed.py --rows 2000000

For the model size: generate v1 and v2 (generate.py: 1% changed, 0.5% deleted, 0.5% new), then
for each variant (plain, `send = "changed"`, `record_log = true`) a mirror of the Parquet model
into an SQLite table (a database keeps others' edits, which is what `send = "changed"` is for;
a file destination refuses it): an untimed initial run on v1, then the timed incremental run
on v2. The variants take turns `--repeat` times (ABCABC…), so drift on the
machine falls on all of them alike; the table gives each variant's median and its ratio to the
plain run's median (the goal of issue 16: under 1.2).
"""

import argparse
import json
import os
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate import generate  # noqa: E402
from run import backflow_run, peak_child_rss_mib, point  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS = {
    "plain": "",
    "send = \"changed\"": 'send = "changed"',
    "record_log = true": "record_log = true",
}


def project(dir, model, extra):
    if os.path.exists(dir):
        shutil.rmtree(dir)
    os.makedirs(dir)
    with open(os.path.join(dir, "backflow.toml"), "w") as f:
        f.write(
            f"""
[sources.customers]
type = "parquet"
path = "model.parquet"

[destinations.app]
type = "sqlite"
path = "app.db"

[syncs.s]
from = "customers"
to = "app"
object = "customers"
key = "id"
behavior = "mirror"
{extra}
"""
        )
    point(dir, model)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", default=os.path.join(ROOT, "target", "bench-data"))
    args = ap.parse_args()
    # (In a child: DuckDB's threads must not be in the process the timed runs fork from.)
    (v1, v2), _ = peak_child_rss_mib(lambda: list(generate(args.rows, args.data)))
    work = os.path.join(args.data, f"send_changed_{args.rows}")
    times = {name: [] for name in VARIANTS}
    peaks = {name: [] for name in VARIANTS}
    reports = {}
    for _ in range(args.repeat):
        for i, (name, extra) in enumerate(VARIANTS.items()):
            dir = os.path.join(work, f"v{i}")
            project(dir, v1, extra)
            backflow_run(dir, "s")
            point(dir, v2)
            (res, peak) = backflow_run(dir, "s")
            times[name].append(res["seconds"])
            peaks[name].append(peak)
            reports[name] = res["report"]
    base = statistics.median(times["plain"])
    print(f"\n{args.rows:,} rows, incremental run (median of {args.repeat}, variants interleaved)\n")
    print("| variant | seconds | ratio to plain | peak RSS MiB |")
    print("|---|---:|---:|---:|")
    for name in VARIANTS:
        t = statistics.median(times[name])
        print(f"| {name} | {t:.2f} | {t / base:.2f} | {max(peaks[name]):.0f} |")
    with open(os.path.join(args.data, f"send_changed_{args.rows}.json"), "w") as f:
        json.dump({"times": times, "peaks": peaks, "reports": reports}, f, indent=2)


if __name__ == "__main__":
    main()
