-- +goose Up
-- A deletion clears the text of the message's edits too: find them by their
-- target, not by scanning the chat's (or every chat's) history.
CREATE INDEX messages_edits_by_target ON messages (chat_id, target_seq) WHERE kind = 'edit';

-- +goose Down
DROP INDEX messages_edits_by_target;
