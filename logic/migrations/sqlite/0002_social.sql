-- Friends, blocks, groups, read diffusion, read positions and revokes (SQLite; same shape as migrations/postgres).

-- A friend request; status 0 = pending, 1 = accepted, 2 = rejected.
CREATE TABLE friend_requests (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    from_user     BIGINT NOT NULL,
    to_user       BIGINT NOT NULL,
    note          TEXT NOT NULL,
    status        BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX friend_requests_to ON friend_requests (to_user, status);
CREATE INDEX friend_requests_from ON friend_requests (from_user, status);

-- A friendship is two rows (one per side) sharing one random per-pair key.
CREATE TABLE friends (
    user_id       BIGINT NOT NULL,
    friend_id     BIGINT NOT NULL,
    pair_key      TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, friend_id)
);

-- user_id blocks blocked_id: blocked_id's messages to user_id are refused.
CREATE TABLE blocks (
    user_id       BIGINT NOT NULL,
    blocked_id    BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, blocked_id)
);

-- join_policy 0 = open, 1 = invitation, 2 = approval.
CREATE TABLE chat_groups (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL,
    owner_id      BIGINT NOT NULL,
    join_policy   BIGINT NOT NULL,
    announcement  TEXT NOT NULL DEFAULT '',
    muted_all     BIGINT NOT NULL DEFAULT 0,
    dismissed     BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL
);

-- role 0 = member, 1 = admin, 2 = owner; muted_until_ms 0 = not muted.
CREATE TABLE group_members (
    group_id       BIGINT NOT NULL,
    user_id        BIGINT NOT NULL,
    role           BIGINT NOT NULL,
    muted_until_ms BIGINT NOT NULL DEFAULT 0,
    joined_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_user ON group_members (user_id);

-- Pending requests to join groups with the approval policy.
CREATE TABLE group_join_requests (
    group_id      BIGINT NOT NULL,
    user_id       BIGINT NOT NULL,
    note          TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (group_id, user_id)
);

-- Read diffusion: the highest per-group sequence, and one row per message
-- of a large group (members pull by their own group cursor).
CREATE TABLE group_seq (
    group_id BIGINT PRIMARY KEY,
    seq      BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE group_inbox (
    group_id BIGINT NOT NULL,
    seq      BIGINT NOT NULL,
    msg_id   BIGINT NOT NULL,
    PRIMARY KEY (group_id, seq)
);
CREATE INDEX group_inbox_msg ON group_inbox (msg_id);

-- How far each user read each conversation (conv_type 1 = c2c peer, 2 = group).
CREATE TABLE conversation_reads (
    user_id       BIGINT NOT NULL,
    conv_type     BIGINT NOT NULL,
    peer_id       BIGINT NOT NULL,
    read_msg_id   BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, conv_type, peer_id)
);

CREATE TABLE revoked_messages (
    msg_id        BIGINT PRIMARY KEY,
    revoked_at_ms BIGINT NOT NULL
);

-- History and conversation lists read messages by conversation.
CREATE INDEX messages_conv ON messages (conv_type, target, id);
CREATE INDEX messages_pair ON messages (conv_type, target, sender, id);
CREATE INDEX messages_sender ON messages (conv_type, sender, id);
