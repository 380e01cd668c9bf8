-- The hub's read stage: the records sql/hub/valid.sql leaves out, with the reason.
-- Output: __bf_invalid_id (the id as read), __bf_reason, then the record's columns.
SELECT __bf_sid AS __bf_invalid_id,
       CASE WHEN __bf_sid IS NULL THEN 'the id is NULL'
            ELSE 'the id appears more than once with the same watermark value; none of its records is taken'
       END AS __bf_reason,
       * EXCEPT (__bf_rn, __bf_ties, __bf_latest)
FROM (
    SELECT *,
           ROW_NUMBER() OVER (PARTITION BY __bf_sid ORDER BY __bf_wm DESC NULLS LAST) AS __bf_rn,
           COUNT(*) OVER (PARTITION BY __bf_sid, __bf_wm) AS __bf_ties,
           MAX(__bf_wm) OVER (PARTITION BY __bf_sid) AS __bf_latest
    FROM {input}
)
WHERE __bf_sid IS NULL
   OR (__bf_ties > 1 AND (__bf_wm IS NOT DISTINCT FROM __bf_latest))
