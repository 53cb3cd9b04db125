-- Whom acknowledging an inbox entry sends a DELIVERED receipt to: the
-- message's sender, for one-to-one user messages from someone else
-- (`im_proto::wants_delivered_receipt`); NULL for everything else (your own
-- copies, group and server messages, receipts). Written with the entry, so
-- an acknowledgement reads the entries it covers and no message row.
ALTER TABLE inbox ADD COLUMN receipt_to BIGINT;
UPDATE inbox SET receipt_to = (
  SELECT m.sender FROM messages m
  WHERE m.id = inbox.msg_id AND m.conv_type = 1 AND m.content_type < 61440
    AND m.sender <> inbox.user_id);
