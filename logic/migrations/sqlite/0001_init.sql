-- Accounts, tokens, messages and per-user inboxes (SQLite). Same shape as
-- migrations/postgres; see the comments there.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE user_seq (
    user_id BIGINT PRIMARY KEY REFERENCES users (id),
    seq     BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE revoked_tokens (
    jti           TEXT PRIMARY KEY,
    expires_at_ms BIGINT NOT NULL
);

CREATE TABLE messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    sender        BIGINT NOT NULL,
    client_msg_id TEXT NOT NULL,
    conv_type     BIGINT NOT NULL,
    target        BIGINT NOT NULL,
    content_type  BIGINT NOT NULL,
    body          BLOB NOT NULL,
    sent_at_ms    BIGINT NOT NULL,
    UNIQUE (sender, client_msg_id)
);

CREATE TABLE inbox (
    user_id BIGINT NOT NULL,
    seq     BIGINT NOT NULL,
    msg_id  BIGINT NOT NULL,
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX inbox_msg ON inbox (msg_id);

CREATE TABLE device_cursors (
    user_id       BIGINT NOT NULL,
    device        BIGINT NOT NULL,
    acked_seq     BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, device)
);
