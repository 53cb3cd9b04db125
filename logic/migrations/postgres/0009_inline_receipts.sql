-- An inbox entry may carry its message inline instead of pointing at a row
-- of `messages`: a DELIVERED receipt, which is for its one recipient only
-- (the original sender), is read by nothing but that user's pulls, and was
-- half of all `messages` rows (a heap row and two index entries each). Such
-- an entry has no `messages` row; `msg_id` is still taken from
-- `messages_id_seq`, so ids stay unique. The message is one-to-one, to the
-- entry's user, from `sender`. Pulls read these columns when the entry's
-- message is not in `messages` (`store::messages::pull`).
--
-- Written by the Postgres writer's batch statement when logic runs with
-- `IM_INLINE_RECEIPTS=true` (docs/operations.md: turn it on only once no
-- logic pod from before this migration runs, whose pulls would skip these
-- entries). NULL on every other entry; adding nullable columns is instant
-- however large the inbox.
ALTER TABLE inbox ADD COLUMN sender BIGINT;
ALTER TABLE inbox ADD COLUMN client_msg_id TEXT;
ALTER TABLE inbox ADD COLUMN content_type BIGINT;
ALTER TABLE inbox ADD COLUMN body BYTEA;
ALTER TABLE inbox ADD COLUMN sent_at_ms BIGINT;
