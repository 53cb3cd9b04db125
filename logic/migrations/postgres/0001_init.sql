-- Accounts, tokens, messages and per-user inboxes (Postgres).
CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- The highest sequence handed out in each user's inbox. Its row lock
-- serialises seq allocation per user, so seq order is commit order.
CREATE TABLE user_seq (
    user_id BIGINT PRIMARY KEY REFERENCES users (id),
    seq     BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE revoked_tokens (
    jti           TEXT PRIMARY KEY,
    expires_at_ms BIGINT NOT NULL
);

-- A message as sent, stored once whatever the number of recipients.
CREATE TABLE messages (
    id            BIGSERIAL PRIMARY KEY,
    sender        BIGINT NOT NULL,
    client_msg_id TEXT NOT NULL,
    conv_type     BIGINT NOT NULL,
    target        BIGINT NOT NULL,
    content_type  BIGINT NOT NULL,
    body          BYTEA NOT NULL,
    sent_at_ms    BIGINT NOT NULL,
    UNIQUE (sender, client_msg_id)
);

-- One entry per recipient user (the sender too), in per-user sequence order.
CREATE TABLE inbox (
    user_id BIGINT NOT NULL,
    seq     BIGINT NOT NULL,
    msg_id  BIGINT NOT NULL,
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX inbox_msg ON inbox (msg_id);

-- What each device of a user has acknowledged.
CREATE TABLE device_cursors (
    user_id       BIGINT NOT NULL,
    device        BIGINT NOT NULL,
    acked_seq     BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, device)
);
