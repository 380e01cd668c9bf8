-- The hub benchmark's unify as one DuckDB script (benches/hub.py --duckdb): the same three
-- CSV files, the email normalised as backflow's normalize_email does (trimmed, lower case,
-- one '@' with a dotted domain, no inner whitespace; anything else matches nothing), records
-- grouped by it, each field taken from the first source in priority order (a, b, c) that has
-- a value, the golden records and the ID map written as Parquet. (No transaction log, no
-- provenance per field, no merges, no committed state: backflow does those too.)
CREATE TEMP TABLE recs AS
WITH raw AS (
    SELECT 'a' AS src, 1 AS prio, id, email, name, phone, plan
    FROM read_csv('a.csv', all_varchar = true)
    UNION ALL
    SELECT 'b', 2, id, email, name, phone, NULL FROM read_csv('b.csv', all_varchar = true)
    UNION ALL
    SELECT 'c', 3, id, email, name, NULL, plan FROM read_csv('c.csv', all_varchar = true)
), normalised AS (
    SELECT *, lower(trim(email)) AS e, regexp_extract(lower(trim(email)), '@([^@]*)$', 1) AS domain
    FROM raw
)
SELECT src, prio, id, name, phone, plan,
       CASE WHEN regexp_full_match(e, '.+@[^@]*') AND domain LIKE '%.%'
                 AND NOT starts_with(domain, '.') AND NOT ends_with(domain, '.')
                 AND NOT regexp_matches(e, '\s')
            THEN e END AS email
FROM normalised;

-- One golden record per email; a record without a usable email is a golden record of its own.
CREATE TEMP TABLE linked AS
SELECT *, dense_rank() OVER (ORDER BY coalesce(email, '~' || src || ':' || id)) AS golden_id
FROM recs;

COPY (
    SELECT golden_id,
           arg_min(email, prio) FILTER (WHERE email IS NOT NULL) AS email,
           arg_min(name, prio) FILTER (WHERE name IS NOT NULL) AS name,
           arg_min(phone, prio) FILTER (WHERE phone IS NOT NULL) AS phone,
           arg_min(plan, prio) FILTER (WHERE plan IS NOT NULL) AS plan
    FROM linked GROUP BY golden_id
) TO 'golden.parquet' (FORMAT parquet);

COPY (SELECT src AS source, id, golden_id FROM linked) TO 'idmap.parquet' (FORMAT parquet);
