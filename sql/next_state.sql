-- The state stage: the sync's next snapshot, from the last one and what this run's destination
-- accepted.
--
-- Inputs (registered by src/sync/mod.rs):
--   bf_state  the last committed snapshot: __bf_key, __bf_hash
--             (and __bf_fields, the per-field hashes, for a sync that sends only changed
--             fields: the fields placeholders add the column)
--   bf_sent   one row per key the destination accepted in this run (late rejections removed):
--             __bf_key, __bf_hash, __bf_keep (FALSE when the key leaves the state: deleted
--             from the destination, or gone from a delete sync's list)
--
-- A key the run did not touch, or whose write was rejected, keeps its old row, so a rejected
-- change is still "changed" on the next run and is sent again.
-- (the small side, bf_sent, is on the left: hash joins build their left side in memory)
SELECT s.__bf_key, s.__bf_hash{s.fields}
FROM bf_sent t
RIGHT ANTI JOIN bf_state s ON s.__bf_key = t.__bf_key
UNION ALL
SELECT __bf_key, __bf_hash{fields} FROM bf_sent WHERE __bf_keep
