-- The index by message id covers only the entries a retransmit looks up:
-- the sender's own (migrations/postgres/0010_inbox_own_msg.sql). One
-- writer at a time, so it is rebuilt in the migration's transaction.
DROP INDEX inbox_msg;
CREATE INDEX inbox_own_msg ON inbox (msg_id)
    WHERE COALESCE(receipt_to, 0) = 0 AND sender IS NULL;
