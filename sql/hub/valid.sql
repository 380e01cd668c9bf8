-- The hub's read stage, validation: one record per source id, the latest by watermark.
--
-- Input {input}: the records one cycle read from one source (built in src/hub/read.rs):
--   __bf_sid (the source's id), __bf_wm (its watermark, NULL without one), the entity fields the
--   source maps, __bf_change_at (when the record changed, µs since the epoch), __bf_bad (the
--   fields whose value could not be read as the field's type; empty when none), __bf_deleted
--   (the source marks the record deleted: its values do not matter).
--
-- A NULL id cannot be linked to anything, and an id read twice at the same watermark value
-- is ambiguous (which version is current?): both are left out and reported as invalid by
-- sql/hub/invalid.sql, as is a latest version with a value of the wrong type. An id read twice
-- at different watermarks is one record that changed while it was being read: the later
-- version is taken.
--
-- Most ids are read once: those are taken as they are (an anti join against the ids read
-- more than once), and only the ids read more than once go through the windows that pick
-- their latest version (a window partitioned by id costs per partition).
--
-- Input {dup}: the ids read more than once (__bf_dup), written once per read by
-- src/hub/read.rs (`dup_sql`), since this query runs again in every stage that reads the
-- source's records.
SELECT * EXCEPT (__bf_bad)
FROM {input} i LEFT ANTI JOIN {dup} d ON d.__bf_dup = i.__bf_sid
WHERE i.__bf_sid IS NOT NULL AND (i.__bf_bad = '' OR i.__bf_deleted)
UNION ALL
SELECT * EXCEPT (__bf_rn, __bf_ties, __bf_bad)
FROM (
    SELECT *,
           ROW_NUMBER() OVER (PARTITION BY __bf_sid ORDER BY __bf_wm DESC NULLS LAST) AS __bf_rn,
           COUNT(*) OVER (PARTITION BY __bf_sid, __bf_wm) AS __bf_ties
    FROM {input} i LEFT SEMI JOIN {dup} d ON d.__bf_dup = i.__bf_sid
)
WHERE __bf_rn = 1 AND __bf_ties = 1 AND (__bf_bad = '' OR __bf_deleted)
