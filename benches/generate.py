"""Synthetic `customers` model for the benchmark, written as Parquet with DuckDB.

v1 has N rows (id bigint, email, name, company, plan, mrr double, updated_at timestamp).
v2 is v1 with 1% of rows updated (id % 100 = 7), 0.5% deleted (id % 200 = 13) and 0.5% new
(ids N .. N + N/200). Updated and new rows get an updated_at past every v1 value, so a cursor
run reads 1.5% of v2.
"""

import os
import sys

import duckdb

COLUMNS = """
    i AS id,
    'user' || i || '@example.com' AS email,
    'Name ' || i AS name,
    'Company ' || (i % 50000) AS company,
    CASE i % 4 WHEN 0 THEN 'free' WHEN 1 THEN 'pro' WHEN 2 THEN 'team' ELSE 'enterprise' END AS plan,
    CAST((i % 1000) * 1.5 AS DOUBLE) AS mrr,
    TIMESTAMP '2026-01-01' + to_seconds(i % 86400) AS updated_at
"""


def generate(rows: int, out_dir: str) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    v1 = os.path.join(out_dir, f"customers_{rows}_v1.parquet")
    v2 = os.path.join(out_dir, f"customers_{rows}_v2.parquet")
    con = duckdb.connect()
    if not os.path.exists(v1):
        con.execute(
            f"COPY (SELECT {COLUMNS} FROM range({rows}) t(i)) TO '{v1}' (FORMAT parquet)"
        )
    if not os.path.exists(v2):
        new = rows // 200
        con.execute(
            f"""COPY (
                SELECT id, email,
                       CASE WHEN id % 100 = 7 THEN name || ' (renamed)' ELSE name END AS name,
                       company, plan,
                       CASE WHEN id % 100 = 7 THEN mrr + 10 ELSE mrr END AS mrr,
                       CASE WHEN id % 100 = 7 THEN TIMESTAMP '2026-02-01' + to_seconds(id % 86400)
                            ELSE updated_at END AS updated_at
                FROM read_parquet('{v1}') WHERE id % 200 <> 13
                UNION ALL
                SELECT i AS id, 'user' || i || '@example.com', 'New ' || i, 'Company ' || (i % 50000),
                       'pro', 99.0, TIMESTAMP '2026-02-02' + to_seconds(i % 86400)
                FROM range({rows}, {rows + new}) t(i)
            ) TO '{v2}' (FORMAT parquet)"""
        )
    return v1, v2


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    print(generate(n, sys.argv[2] if len(sys.argv) > 2 else "target/bench-data"))
