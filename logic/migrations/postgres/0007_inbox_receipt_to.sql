-- Whom acknowledging an inbox entry sends a DELIVERED receipt to, written
-- with the entry: the message's sender for one-to-one user messages from
-- someone else (`im_proto::delivered_receipt_to`), 0 for everything else
-- (your own copies, group and server messages, receipts). An
-- acknowledgement then reads the entries it covers and no message row.
-- NULL: written before this column, or by a logic tier not yet upgraded
-- during a rolling upgrade; acknowledgements decide those from the message,
-- as before. So nothing is filled in here, and adding the column is
-- instant however large the inbox.
ALTER TABLE inbox ADD COLUMN receipt_to BIGINT;
