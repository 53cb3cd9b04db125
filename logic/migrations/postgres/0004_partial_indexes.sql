-- History, conversation lists and unread counts never read system messages
-- (content types from 0xF000 = 61440: DELIVERED receipts, revokes), which
-- are about half of all messages at one receipt per message. Their index
-- entries are left out; queries state the same condition as a literal
-- (`history::USER_CONTENT`) so the planner can use these indexes.
DROP INDEX messages_conv;
DROP INDEX messages_pair;
DROP INDEX messages_sender;
CREATE INDEX messages_conv ON messages (conv_type, target, id) WHERE content_type < 61440;
CREATE INDEX messages_pair ON messages (conv_type, target, sender, id) WHERE content_type < 61440;
CREATE INDEX messages_sender ON messages (conv_type, sender, id) WHERE content_type < 61440;
