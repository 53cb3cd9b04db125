-- Each history index serves one conversation type: one-to-one history,
-- conversation lists and unread counts read `messages_pair` and
-- `messages_sender`, group history reads `messages_conv`. A message now
-- enters only the indexes of its type (a one-to-one message two instead of
-- three, a group message one), and the constant type leaves the keys.
-- Queries write the type as a literal (`history::C2C`, `history::C2G`), as
-- they do the content condition, so the planner can match these predicates.
DROP INDEX messages_conv;
DROP INDEX messages_pair;
DROP INDEX messages_sender;
CREATE INDEX messages_conv ON messages (target, id) WHERE conv_type = 2 AND content_type < 61440;
CREATE INDEX messages_pair ON messages (target, sender, id) WHERE conv_type = 1 AND content_type < 61440;
CREATE INDEX messages_sender ON messages (sender, id) WHERE conv_type = 1 AND content_type < 61440;
