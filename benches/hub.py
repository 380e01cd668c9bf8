#!/usr/bin/env python3
"""A hub cycle at scale: three CSV sources of N records each (default 1,000,000), one exact
match rule on the normalised email, priority authority over three fields.

    python3 benches/hub.py --backflow target/release/backflow [--records 1000000] [--runs 3]
        [--baseline OTHER_BACKFLOW] [--duckdb PYTHON_WITH_DUCKDB]

`--baseline` runs another build (an earlier commit) alternately on the same data and reports
backflow / baseline; `--duckdb` also times `benches/hub_baseline.sql`, the same unify as one
DuckDB script, on the initial files.

Each source has a watermark (`updated_at`, distinct per record), so an incremental cycle reads
only what changed.
The sources share people: `b` has 60% of `a`'s emails (in another case), `c` 30%, the rest
are their own. Measured (each a separate process, median of --runs with fresh state for the
initial load):

- initial: the first run over the three sources (one cycle: batch_size is above N);
- incremental: 1% of `a`'s records changed (a new name, a later watermark);
- no change: a run that finds nothing new.

Time is wall time of `backflow run`; memory is the process's peak RSS (/usr/bin/time).
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

PROJECT = """
[sources.a]
type = "csv"
path = "a.csv"

[sources.b]
type = "csv"
path = "b.csv"

[sources.c]
type = "csv"
path = "c.csv"

[entities.person]
fields = {{ email = "text", name = "text", phone = "text", plan = "text" }}
match = [["email"]]
batch_size = {batch}

[entities.person.authority]
rule = "priority"
sources = ["a", "b", "c"]

[entities.person.sources.a]
from = "a"
id = "id"
watermark = "updated_at"
fields = {{ email = "normalize_email(email)", name = "name", phone = "phone", plan = "plan" }}

[entities.person.sources.b]
from = "b"
id = "id"
watermark = "updated_at"
fields = {{ email = "normalize_email(email)", name = "name", phone = "phone" }}

[entities.person.sources.c]
from = "c"
id = "id"
watermark = "updated_at"
fields = {{ email = "normalize_email(email)", name = "name", plan = "plan" }}
"""


def write_sources(dir, n, seed=7):
    rng = random.Random(seed)
    plans = ["free", "pro", "team", "enterprise"]
    with open(os.path.join(dir, "a.csv"), "w") as f:
        f.write("id,email,name,phone,plan,updated_at\n")
        for i in range(n):
            f.write(f"{i},person{i}@example.com,Person {i},+1555{i:07d},{plans[i % 4]},{i + 1}\n")
    with open(os.path.join(dir, "b.csv"), "w") as f:
        f.write("id,email,name,phone,updated_at\n")
        for i in range(n):
            email = f"PERSON{i}@Example.com" if i % 10 < 6 else f"b{i}@example.org"
            f.write(f"B{i},{email},B Person {i},+1666{i:07d},{i + 1}\n")
    with open(os.path.join(dir, "c.csv"), "w") as f:
        f.write("id,email,name,plan,updated_at\n")
        for i in range(n):
            j = (i * 7919) % n
            email = f" person{j}@example.com " if i % 10 < 3 else f"c{i}@example.net"
            f.write(f"C{i},{email},C Person {i},{rng.choice(plans)},{i + 1}\n")


def change_a(dir, n, share=0.01, round_=2):
    """Rewrite a.csv with `share` of its records renamed at a later watermark."""
    step = int(1 / share)
    path = os.path.join(dir, "a.csv")
    with open(path, "w") as f:
        f.write("id,email,name,phone,plan,updated_at\n")
        plans = ["free", "pro", "team", "enterprise"]
        for i in range(n):
            if i % step == 0:
                f.write(f"{i},person{i}@example.com,Renamed {i} r{round_},+1555{i:07d},{plans[i % 4]},{round_ * n + i}\n")
            else:
                f.write(f"{i},person{i}@example.com,Person {i},+1555{i:07d},{plans[i % 4]},{i + 1}\n")


def timed(cmd, cwd=None):
    """Run `cmd` under /usr/bin/time: (wall seconds, peak RSS MiB)."""
    started = time.monotonic()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *cmd], cwd=cwd, capture_output=True, text=True
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{done.stdout}\n{done.stderr}")
    return seconds, int(done.stderr.strip().splitlines()[-1]) / 1024


def run(binary, project):
    return timed([binary, "run", "--project", project, "--quiet"])


def run_duckdb(python, files_dir):
    """benches/hub_baseline.sql over a copy of the sources; (seconds, peak MiB)."""
    work = tempfile.mkdtemp(prefix="bf-hub-duckdb-")
    try:
        for name in ("a.csv", "b.csv", "c.csv"):
            shutil.copy(os.path.join(files_dir, name), work)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hub_baseline.sql")
        code = (
            "import duckdb, sys; c = duckdb.connect(); "
            "c.execute(open(sys.argv[1]).read())"
        )
        return timed([python, "-c", code, script], cwd=work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cycles(binary, data, n, round_):
    """initial, incremental (1% of a), no change: (seconds, peak MiB) each."""
    project = tempfile.mkdtemp(prefix="bf-hub-")
    try:
        for name in ("a.csv", "b.csv", "c.csv"):
            shutil.copy(os.path.join(data, name), project)
        with open(os.path.join(project, "backflow.toml"), "w") as f:
            f.write(PROJECT.format(batch=3 * n + 1))
        initial = run(binary, project)
        change_a(project, n, round_=round_)
        incremental = run(binary, project)
        none = run(binary, project)
        return [initial, incremental, none]
    finally:
        shutil.rmtree(project, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backflow", default="target/release/backflow")
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--baseline",
        help="another backflow binary (an earlier build), run alternately on the same data",
    )
    ap.add_argument(
        "--duckdb",
        metavar="PYTHON",
        help="a Python with the duckdb module: also time benches/hub_baseline.sql on the initial files",
    )
    args = ap.parse_args()
    n = args.records
    data = tempfile.mkdtemp(prefix="bf-hub-data-")
    write_sources(data, n)
    names = ["initial", "incremental (1% of a)", "no change"]
    binaries = {"backflow": args.backflow}
    if args.baseline:
        binaries["baseline"] = args.baseline
    results = {b: [[] for _ in names] for b in binaries}
    duck = []
    try:
        for r in range(args.runs):
            for b, binary in binaries.items():
                for i, m in enumerate(cycles(binary, data, n, 2 + r)):
                    results[b][i].append(m)
            if args.duckdb:
                duck.append(run_duckdb(args.duckdb, data))
    finally:
        shutil.rmtree(data, ignore_errors=True)
    med = lambda rs: statistics.median(x[0] for x in rs)
    peak = lambda rs: max(x[1] for x in rs)
    print(f"3 sources x {n} records, {args.runs} runs (median; peak RSS max)")
    head = "| cycle | backflow s | peak MiB | / its initial |"
    rule = "|---|---:|---:|---:|"
    if args.baseline:
        head += " baseline s | baseline peak MiB | backflow / baseline |"
        rule += "---:|---:|---:|"
    print(head)
    print(rule)
    first = med(results["backflow"][0])
    for i, name in enumerate(names):
        t = med(results["backflow"][i])
        line = f"| {name} | {t:.2f} | {peak(results['backflow'][i]):.0f} | {t / first:.3f} |"
        if args.baseline:
            bt = med(results["baseline"][i])
            line += f" {bt:.2f} | {peak(results['baseline'][i]):.0f} | {t / bt:.2f} |"
        print(line)
    if duck:
        d = med(duck)
        print(
            f"\nDuckDB script (benches/hub_baseline.sql) on the initial files: {d:.2f} s, "
            f"peak {peak(duck):.0f} MiB; backflow initial / DuckDB = {first / d:.2f}"
        )


if __name__ == "__main__":
    main()
