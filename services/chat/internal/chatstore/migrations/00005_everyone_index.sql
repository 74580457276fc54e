-- +goose Up
-- A user's chat list starts from the "everyone" chats (there is one,
-- "general"): a partial index holds just them, so finding them reads one
-- index page instead of every chat. Without it, each chat list and each
-- resuming connection scanned the whole table (3.9 ms with 19,000 chats,
-- most of PostgreSQL's time in a reconnect storm).
CREATE INDEX IF NOT EXISTS chats_everyone ON chats (id) WHERE everyone;

-- +goose Down
DROP INDEX IF EXISTS chats_everyone;
