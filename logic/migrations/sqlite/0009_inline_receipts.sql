-- The columns of an inbox entry that carries its message inline
-- (migrations/postgres/0009_inline_receipts.sql). SQLite's writer does not
-- write such entries; pulls on both backends read the same columns.
ALTER TABLE inbox ADD COLUMN sender BIGINT;
ALTER TABLE inbox ADD COLUMN client_msg_id TEXT;
ALTER TABLE inbox ADD COLUMN content_type BIGINT;
ALTER TABLE inbox ADD COLUMN body BLOB;
ALTER TABLE inbox ADD COLUMN sent_at_ms BIGINT;
