-- +goose Up
CREATE TABLE chats (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    creator_id  bigint,
    everyone    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX chats_name_lower_key ON chats (lower(name));

CREATE TABLE chat_members (
    chat_id   bigint NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    user_id   bigint NOT NULL,
    joined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chat_id, user_id)
);
CREATE INDEX chat_members_user_idx ON chat_members (user_id, chat_id);

-- "general" exists from the start, and every user is in it.
INSERT INTO chats (id, name, description, everyone) VALUES (1, 'general', 'Everyone is here.', true);
SELECT setval('chats_id_seq', 1);

-- +goose Down
DROP TABLE chat_members;
DROP TABLE chats;
