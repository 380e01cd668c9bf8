-- The DuckDB baseline's second half in `snapshot` mode: after baseline.sql wrote the rows to
-- send to {changes}, rewrite the destination object {object} as {next_object}: its rows whose
-- keys did not change, and the created and updated rows, as one Parquet file compressed as
-- backflow's file destination compresses it (zstd, level 1).
SET threads = 2;
COPY (
    SELECT o.* FROM read_parquet('{object}') o ANTI JOIN read_parquet('{changes}') c ON o.id = c.id
    UNION ALL
    SELECT id, email, name, company, plan, mrr, updated_at FROM read_parquet('{changes}') WHERE op <> 'delete'
) TO '{next_object}' (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1);
