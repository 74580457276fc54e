-- +goose Up
-- A user's read position in a chat: every entry up to seq is read. It only
-- ever moves forward. Positions outlive a membership, so a member removed
-- and added again keeps theirs.
CREATE TABLE read_positions (
    user_id bigint NOT NULL,
    chat_id bigint NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    seq     bigint NOT NULL CHECK (seq > 0),
    PRIMARY KEY (user_id, chat_id)
);

-- +goose Down
DROP TABLE read_positions;
