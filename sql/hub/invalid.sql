-- The hub's read stage: the records sql/hub/valid.sql leaves out, with the reason.
-- Output: __bf_invalid_id (the id as read), __bf_reason, then the record's columns.
SELECT __bf_sid AS __bf_invalid_id,
       CASE WHEN __bf_sid IS NULL THEN 'the id is NULL'
            WHEN __bf_ties > 1 THEN 'the id appears more than once with the same watermark value; none of its records is taken'
            ELSE 'field(s) ' || __bf_bad || ' cannot be read as the entity''s type; the record is not taken'
       END AS __bf_reason,
       * EXCEPT (__bf_ties, __bf_latest)
FROM (
    SELECT *,
           COUNT(*) OVER (PARTITION BY __bf_sid, __bf_wm) AS __bf_ties,
           MAX(__bf_wm) OVER (PARTITION BY __bf_sid) AS __bf_latest
    FROM {input}
)
WHERE __bf_sid IS NULL
   OR ((__bf_wm IS NOT DISTINCT FROM __bf_latest) AND (__bf_ties > 1 OR (__bf_bad <> '' AND NOT __bf_deleted)))
