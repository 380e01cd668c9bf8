-- The hub's read stage: the records sql/hub/valid.sql leaves out, with the reason.
-- Output: __bf_invalid_id (the id as read), __bf_reason, then the record's columns.
--
-- As in valid.sql, an id read once is judged on its own (its NULL id, or a value of the wrong
-- type), and only the ids read more than once ({dup}, as in valid.sql) go through the windows.
SELECT i.__bf_sid AS __bf_invalid_id,
       CASE WHEN i.__bf_sid IS NULL THEN 'the id is NULL'
            ELSE 'field(s) ' || i.__bf_bad || ' cannot be read as the entity''s type; the record is not taken'
       END AS __bf_reason,
       *
FROM {input} i LEFT ANTI JOIN {dup} d ON d.__bf_dup = i.__bf_sid
WHERE i.__bf_sid IS NULL OR (i.__bf_bad <> '' AND NOT i.__bf_deleted)
UNION ALL
SELECT __bf_sid AS __bf_invalid_id,
       CASE WHEN __bf_ties > 1 THEN 'the id appears more than once with the same watermark value; none of its records is taken'
            ELSE 'field(s) ' || __bf_bad || ' cannot be read as the entity''s type; the record is not taken'
       END AS __bf_reason,
       * EXCEPT (__bf_ties, __bf_latest)
FROM (
    SELECT *,
           COUNT(*) OVER (PARTITION BY __bf_sid, __bf_wm) AS __bf_ties,
           MAX(__bf_wm) OVER (PARTITION BY __bf_sid) AS __bf_latest
    FROM {input} i LEFT SEMI JOIN {dup} d ON d.__bf_dup = i.__bf_sid
)
WHERE (__bf_wm IS NOT DISTINCT FROM __bf_latest) AND (__bf_ties > 1 OR (__bf_bad <> '' AND NOT __bf_deleted))
