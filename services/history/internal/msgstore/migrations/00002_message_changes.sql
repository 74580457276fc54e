-- +goose Up
-- Edits and deletions are entries of a chat's history with their own
-- sequence numbers (kind 'edit' or 'delete', pointing at target_seq); the
-- target row shows the message as it is now: edited_at once edited, and
-- deleted (with the text cleared) once deleted.
ALTER TABLE messages
    ADD COLUMN kind       text        NOT NULL DEFAULT 'message'
        CHECK (kind IN ('message', 'edit', 'delete')),
    ADD COLUMN target_seq bigint,
    ADD COLUMN edited_at  timestamptz,
    ADD COLUMN deleted    boolean     NOT NULL DEFAULT false,
    ADD CONSTRAINT messages_target_check
        CHECK ((kind = 'message') = (target_seq IS NULL));

-- +goose Down
ALTER TABLE messages
    DROP CONSTRAINT messages_target_check,
    DROP COLUMN deleted,
    DROP COLUMN edited_at,
    DROP COLUMN target_seq,
    DROP COLUMN kind;
