-- +goose Up
-- Usernames never change, so each membership keeps the member's username
-- from the moment it was added: member lists need no call to auth. Rows
-- from before this migration keep an empty username.
ALTER TABLE chat_members ADD COLUMN username text NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE chat_members DROP COLUMN username;
