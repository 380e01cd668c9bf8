-- A sync's state as its snapshot with the deltas of later runs that accepted few rows (src/sync/state.rs).
--
-- Inputs:
--   bf_base    the snapshot: __bf_key, __bf_hash
--   bf_deltas  every delta's rows: __bf_key, __bf_hash, __bf_keep (FALSE: the key left the
--              state), __bf_v (the delta's place, newest highest)
--
-- A key's newest delta entry replaces its snapshot row (or removes it). The deltas are few
-- and small: they are the left side, which hash joins build in memory; the snapshot streams.
WITH newest AS (
    SELECT __bf_key, __bf_hash{fields}, __bf_keep
    FROM (
        SELECT *, ROW_NUMBER() OVER (PARTITION BY __bf_key ORDER BY __bf_v DESC) AS __bf_rn
        FROM bf_deltas
    )
    WHERE __bf_rn = 1
)
SELECT s.__bf_key, s.__bf_hash{s.fields}
FROM newest d
RIGHT ANTI JOIN bf_base s ON s.__bf_key = d.__bf_key
UNION ALL
SELECT __bf_key, __bf_hash{fields} FROM newest WHERE __bf_keep
