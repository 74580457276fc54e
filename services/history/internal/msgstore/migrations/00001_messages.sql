-- +goose Up
-- One row per chat: the last sequence number given to a message of the chat.
-- The history writer locks a chat's row while it numbers the chat's messages.
CREATE TABLE chat_counters (
    chat_id  bigint PRIMARY KEY,
    last_seq bigint NOT NULL DEFAULT 0
);

CREATE TABLE messages (
    chat_id       bigint      NOT NULL,
    seq           bigint      NOT NULL,
    sender_id     bigint      NOT NULL,
    sender        text        NOT NULL,
    client_msg_id text        NOT NULL,
    text          text        NOT NULL,
    sent_at       timestamptz NOT NULL,
    stored_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chat_id, seq),
    -- A retried send is stored once (P3).
    CONSTRAINT messages_client_msg_key UNIQUE (chat_id, sender_id, client_msg_id)
);

-- +goose Down
DROP TABLE messages;
DROP TABLE chat_counters;
