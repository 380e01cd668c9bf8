"""backflow into PostgreSQL vs `psql \\copy` of the same rows, in the same run.

    bash benches/setup.sh
    python3 benches/postgres.py --rows 1000000      # needs psql and the server in $BENCH_PG_URL

Scenarios, on the benchmark's synthetic `customers` model (generate.py):

  initial      backflow: v1 (N rows, no state) mirrored into a new table
               baseline: `\\copy` of the same N rows (CSV) into an empty table with the same
               columns and primary key
  incremental  backflow: v2 on top (1% updated, 0.5% deleted, 0.5% new: 2% of N rows change)
               baseline: `\\copy` of the changed rows into a staging table, then the same
               upsert and delete statements a hand-written sync would run

Rows per second count the model's rows for `initial` and the changed rows for `incremental`.
The ratio is backflow's time over the baseline's (below 1.0: backflow is faster).
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
URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
SCHEMA = "bf_bench"
COLUMNS = "id bigint PRIMARY KEY, email text, name text, company text, plan text, mrr double precision, updated_at timestamp"


def psql(sql):
    subprocess.run(["psql", URL.replace("?sslmode=disable", ""), "-q", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True,
                   stdout=subprocess.DEVNULL)


def timed(cmd, env=None):
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, env=env)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stdout.decode()}\n{p.stderr.decode()}")
    return time.perf_counter() - start, p.stdout.decode()


def same_tables(schema):
    """Exit unless backflow's `customers` and the baseline's `copied` in `schema` hold the same rows."""
    check = subprocess.run(
        ["psql", URL.replace("?sslmode=disable", ""), "-tAc",
         f"SELECT (SELECT count(*) FROM {schema}.customers), (SELECT count(*) FROM {schema}.copied), "
         f"(SELECT count(*) FROM (SELECT id, email, name, company, plan, mrr, updated_at FROM {schema}.customers "
         f"EXCEPT SELECT * FROM {schema}.copied) x)"],
        capture_output=True, check=True).stdout.decode().strip()
    a, b, diff = check.split("|")
    if a != b or diff != "0":
        sys.exit(f"the two tables differ: {check}")


def backflow(project):
    env = dict(os.environ, BENCH_PG_URL=URL)
    # Each timed load starts from a clean checkpoint (no dirty buffers of an earlier one).
    psql("CHECKPOINT")
    t, out = timed([BIN, "run", "s", "--json", "--project", project], env)
    report = json.loads(out.strip().splitlines()[-1])
    if report["status"] != "succeeded":
        sys.exit(f"backflow failed: {report}")
    return t, report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--data", default=os.path.join(ROOT, "target", "bench-data"))
    args = ap.parse_args()
    import duckdb

    v1, v2 = generate(args.rows, args.data)
    work = os.path.join(args.data, f"pg_{args.rows}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    csv1 = os.path.join(work, "v1.csv")
    changes = os.path.join(work, "changes.csv")
    deletes = os.path.join(work, "deletes.csv")
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * FROM read_parquet('{v1}')) TO '{csv1}' (HEADER, DELIMITER ',')")
    con.execute(
        f"""COPY (SELECT b.* FROM read_parquet('{v2}') b LEFT JOIN read_parquet('{v1}') a USING (id)
                 WHERE a.id IS NULL OR a.name <> b.name OR a.updated_at <> b.updated_at)
            TO '{changes}' (HEADER, DELIMITER ',')"""
    )
    con.execute(
        f"""COPY (SELECT a.id FROM read_parquet('{v1}') a ANTI JOIN read_parquet('{v2}') b USING (id))
            TO '{deletes}' (HEADER, DELIMITER ',')"""
    )
    n_changed = con.execute(f"SELECT count(*) FROM read_csv('{changes}')").fetchone()[0]
    n_deleted = con.execute(f"SELECT count(*) FROM read_csv('{deletes}')").fetchone()[0]

    psql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}")
    # backflow
    proj = os.path.join(work, "project")
    os.makedirs(proj)
    with open(os.path.join(proj, "backflow.toml"), "w") as f:
        f.write(
            f"""
[sources.customers]
type = "parquet"
path = "model.parquet"

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
    link = os.path.join(proj, "model.parquet")
    os.symlink(v1, link)
    b_init, r1 = backflow(proj)
    os.remove(link)
    os.symlink(v2, link)
    b_incr, r2 = backflow(proj)

    # psql \copy
    base = URL.replace("?sslmode=disable", "")
    psql(f"CREATE TABLE {SCHEMA}.copied ({COLUMNS})")
    psql("CHECKPOINT")
    d_init, _ = timed(["psql", base, "-q", "-v", "ON_ERROR_STOP=1", "-c",
                       f"\\copy {SCHEMA}.copied FROM '{csv1}' CSV HEADER"])
    script = f"""
BEGIN;
CREATE TEMP TABLE stage (LIKE {SCHEMA}.copied) ON COMMIT DROP;
CREATE TEMP TABLE gone (id bigint) ON COMMIT DROP;
\\copy stage FROM '{changes}' CSV HEADER
\\copy gone FROM '{deletes}' CSV HEADER
DELETE FROM {SCHEMA}.copied c USING gone g WHERE c.id = g.id;
INSERT INTO {SCHEMA}.copied SELECT * FROM stage
  ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, name = EXCLUDED.name, company = EXCLUDED.company,
  plan = EXCLUDED.plan, mrr = EXCLUDED.mrr, updated_at = EXCLUDED.updated_at;
COMMIT;
"""
    sp = os.path.join(work, "incremental.sql")
    open(sp, "w").write(script)
    psql("CHECKPOINT")
    d_incr, _ = timed(["psql", base, "-q", "-v", "ON_ERROR_STOP=1", "-f", sp])

    # Both tables must hold v2.
    same_tables(SCHEMA)

    changed = n_changed + n_deleted
    rows = [
        ("initial", args.rows, b_init, d_init),
        ("incremental", changed, b_incr, d_incr),
    ]
    print(f"\nPostgreSQL, {args.rows:,} rows ({changed:,} changed in the incremental run); both tables equal after the run\n")
    print("| scenario | rows sent | backflow | psql \\copy | backflow rows/s | psql rows/s | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, n, b, d in rows:
        print(f"| {name} | {n:,} | {b:.2f} s | {d:.2f} s | {n / b:,.0f} | {n / d:,.0f} | {b / d:.2f} |")
    json.dump({"rows": args.rows, "results": [dict(zip(["scenario", "rows", "backflow_s", "psql_s"], r)) for r in rows],
               "reports": [r1, r2]},
              open(os.path.join(work, "results.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
