-- The DuckDB baseline: the same diff backflow computes, as one script.
-- Classify new / changed / deleted rows of {model} against the previous key/hash snapshot
-- {state} by key and row hash, write the rows to send to {changes} and the next snapshot to
-- {next_state}. {where} is empty for a full read, or a cursor filter; {join} is FULL for a full
-- read (deletes are detected) and LEFT for a cursor read.
SET threads = 2;
CREATE TEMP TABLE m AS
    SELECT *, hash(id, email, name, company, plan, mrr, updated_at) AS h
    FROM read_parquet('{model}') {where};
COPY (
    SELECT COALESCE(m.id, s.id) AS id, m.email, m.name, m.company, m.plan, m.mrr, m.updated_at,
           CASE WHEN m.id IS NULL THEN 'delete' WHEN s.id IS NULL THEN 'create' ELSE 'update' END AS op
    FROM m {join} JOIN read_parquet('{state}') s ON m.id = s.id
    WHERE m.id IS NULL OR s.id IS NULL OR m.h <> s.h
) TO '{changes}' (FORMAT parquet);
COPY (
    {next_state_select}
) TO '{next_state}' (FORMAT parquet);
