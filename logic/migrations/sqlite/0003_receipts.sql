-- One row per (message, reader device, kind) receipted: a receipt is never
-- sent twice for the same message and device.
CREATE TABLE receipts (
    msg_id  BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    device  BIGINT NOT NULL,
    kind    BIGINT NOT NULL,
    at_ms   BIGINT NOT NULL,
    PRIMARY KEY (msg_id, user_id, device, kind)
);
