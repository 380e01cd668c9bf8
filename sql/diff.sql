-- The diff stage: classify every model row and every previously synced key in one join.
--
-- Inputs (registered by src/sync/mod.rs and src/sync/state.rs; planned by src/sync/diff.rs):
--   bf_mapped  the mapped model rows: the destination fields, plus
--              __bf_key (the key), __bf_hash (the row hash of the mapped fields),
--              __bf_cursor (the cursor value, NULL without a cursor) and
--              __bf_present (always TRUE: tells model rows from state-only rows after the join)
--   bf_prev    the sync's last committed state: __bf_key, __bf_hash (and __bf_fields, the
--              per-field hashes, for a sync with send = "changed": the fields placeholder passes them on
--              as __bf_prev_fields)
--              (a full resync gives every hash as NULL, so every row counts as changed)
--
-- __bf_op:  0 unchanged   1 new   2 changed   3 gone (synced before, no longer in the model)
--           4 invalid: NULL key   5 invalid: the key appears more than once in this run
--           6 unowned: for a sync without state, bf_prev holds the destination's keys
--             ({gone} is 6 then, 3 otherwise): a record there and not in the model
--
-- Duplicates are found with a GROUP BY over the key alone (cheap: only the key is read) rather
-- than a window over whole rows.
--
-- Hash joins build their left side in memory, so the narrow inputs (the state's key and hash,
-- the duplicate keys) are on the left and the model rows stream through as the probe side.
--
-- {from} joins the model rows with the state: for a run that reads the whole model a FULL JOIN
--   `bf_prev p FULL JOIN model m` (gone keys are found; the state, as narrow as the model is
--   long, is the build side); for a cursor run, which reads only part of the model and so
--   cannot tell which keys are gone, `model m LEFT JOIN bf_prev p`: the few rows past the
--   watermark are the build side and the whole state streams through (building a hash table
--   of every key in state cost a 10-million-key cursor run a third of its time).
WITH dups AS (
    -- Keys that appear more than once: a hash aggregate over the key column alone.
    SELECT __bf_key AS __bf_dup_key
    FROM bf_mapped
    WHERE __bf_key IS NOT NULL
    GROUP BY __bf_key
    HAVING COUNT(*) > 1
),
model AS (
    SELECT m.*, d.__bf_dup_key
    FROM dups d
    RIGHT JOIN bf_mapped m ON d.__bf_dup_key = m.__bf_key
)
SELECT m.*,
       p.__bf_key AS __bf_prev_key{p.fields},
       CAST(CASE
         WHEN m.__bf_present IS NULL THEN {gone}
         WHEN m.__bf_key IS NULL THEN 4
         WHEN m.__bf_dup_key IS NOT NULL THEN 5
         WHEN p.__bf_key IS NULL THEN 1
         WHEN m.__bf_hash IS DISTINCT FROM p.__bf_hash THEN 2
         ELSE 0
       END AS TINYINT) AS __bf_op
FROM {from}
