-- no-transaction
-- A retransmitted message is answered as it was first stored, with the
-- sequence of the sender's own inbox entry, found by the message's id
-- (`store::pg_batch::ORIGINALS_SQL`, `store::messages` `original_ack`).
-- Only such entries need an index by message id: no receipt wanted
-- (`receipt_to` 0, or NULL from before migration 0007) and no message
-- inline (migration 0009). A one-to-one message's recipient entry and an
-- inline DELIVERED receipt are left out: two of the three index entries a
-- one-to-one message wrote into `inbox_msg` (dropped by 0011), whose
-- upkeep was ~4–10 % of the writer's Postgres CPU per message
-- (docs/benchmarks.md).
--
-- Built concurrently, so that sends keep writing to a large inbox during
-- the build: outside a transaction, hence one statement in a file of its
-- own. A build that fails leaves an invalid index behind, which
-- `IF NOT EXISTS` would keep; `Store::migrate` drops it before migrating.
CREATE INDEX CONCURRENTLY IF NOT EXISTS inbox_own_msg ON inbox (msg_id)
    WHERE COALESCE(receipt_to, 0) = 0 AND sender IS NULL;
