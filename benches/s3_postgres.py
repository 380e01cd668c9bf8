"""A bulk initial load from object storage into PostgreSQL: backflow vs `psql \\copy`, in one run.

    bash benches/setup.sh
    python3 benches/s3_postgres.py --rows 10000000   # needs psql, moto_server ($BENCH_MOTO) and
                                                     # the server in $BENCH_PG_URL

A Parquet export of N rows (generate.py's `customers`) is put in a bucket of a local S3-compatible
server (moto's server mode, PyPI `moto[server]`). backflow mirrors it into a new PostgreSQL table,
reading `s3://bench/customers.parquet` with its credentials and endpoint from the environment, as
a user loading a large export would. The baseline is `psql \\copy` of the same rows from a local
CSV file into an empty table with the same columns and primary key: the fastest load PostgreSQL
offers, handed a file already on this machine and already in its text format, so the ratio
counts everything backflow does (fetching from S3, decoding Parquet, hashing, writing the
state) against the server's own bulk path. Both tables are compared afterwards (equal). The
ratio is backflow's time over the baseline's (below 1.0: backflow is faster).
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate import generate  # noqa: E402
from postgres import BIN, COLUMNS, URL, psql, same_tables, timed  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOTO = os.environ.get(
    "BENCH_MOTO", os.path.expanduser("~/.cache/backflow-ci/moto-5.2.5/bin/moto_server"))
SCHEMA = "bf_bench_s3"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--data", default=os.path.join(ROOT, "target", "bench-data"))
    args = ap.parse_args()
    import duckdb

    v1, _ = generate(args.rows, args.data)
    work = os.path.join(args.data, f"s3pg_{args.rows}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    csv1 = os.path.join(work, "v1.csv")
    duckdb.connect().execute(f"COPY (SELECT * FROM read_parquet('{v1}')) TO '{csv1}' (HEADER, DELIMITER ',')")

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(urllib.request.Request(f"{endpoint}/bench", method="PUT"), timeout=5)
                break
            except OSError:
                time.sleep(0.2)
        with open(v1, "rb") as f:
            urllib.request.urlopen(
                urllib.request.Request(f"{endpoint}/bench/customers.parquet", data=f.read(), method="PUT",
                                       headers={"Content-Type": "application/octet-stream"}),
                timeout=600)

        proj = os.path.join(work, "project")
        os.makedirs(proj)
        with open(os.path.join(proj, "backflow.toml"), "w") as f:
            f.write(
                f"""
[sources.customers]
type = "parquet"
path = "s3://bench/customers.parquet"

[destinations.pg]
type = "postgres"
url_env = "BENCH_PG_URL"
schema = "{SCHEMA}"

[syncs.s]
from = "customers"
to = "pg"
object = "customers"
behavior = "mirror"
key = "id"
"""
            )
        env = dict(os.environ, BENCH_PG_URL=URL, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench",
                   AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
        base = URL.replace("?sslmode=disable", "")
        results = []
        for run in range(args.runs):
            psql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}")
            shutil.rmtree(os.path.join(proj, ".backflow"), ignore_errors=True)
            b, out = timed([BIN, "run", "s", "--json", "--project", proj], env)
            report = json.loads(out.strip().splitlines()[-1])
            if report["status"] != "succeeded" or report["created"] != args.rows:
                sys.exit(f"backflow failed: {report}")
            psql(f"CREATE TABLE {SCHEMA}.copied ({COLUMNS})")
            d, _ = timed(["psql", base, "-q", "-v", "ON_ERROR_STOP=1", "-c",
                          f"\\copy {SCHEMA}.copied FROM '{csv1}' CSV HEADER"])
            same_tables(SCHEMA)
            results.append((b, d))
            print(f"run {run + 1}: backflow {b:.1f} s, psql \\copy {d:.1f} s, ratio {b / d:.2f}", flush=True)
    finally:
        moto.kill()

    print(f"\nS3 (moto) Parquet -> PostgreSQL, {args.rows:,} rows; both tables equal after each run\n")
    print("| run | backflow (from S3) | psql \\copy (local CSV) | backflow rows/s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for i, (b, d) in enumerate(results):
        print(f"| {i + 1} | {b:.1f} s | {d:.1f} s | {args.rows / b:,.0f} | {b / d:.2f} |")
    json.dump({"rows": args.rows, "runs": [{"backflow_s": b, "psql_s": d} for b, d in results]},
              open(os.path.join(work, "results.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
