-- +goose Up
-- A direct chat belongs to two users: it has no name, no creator, and the
-- ordered pair of its members (direct_low < direct_high) is unique, so
-- starting it twice, even at once, gives one chat. Names stay unique
-- regardless of letter case among the other chats only.
ALTER TABLE chats
    ADD COLUMN direct      boolean NOT NULL DEFAULT false,
    ADD COLUMN direct_low  bigint,
    ADD COLUMN direct_high bigint,
    ADD CONSTRAINT chats_direct_pair_check CHECK (
        (NOT direct AND direct_low IS NULL AND direct_high IS NULL)
        OR (direct AND direct_low < direct_high AND name = '' AND creator_id IS NULL AND NOT everyone));
CREATE UNIQUE INDEX chats_direct_pair_key ON chats (direct_low, direct_high) WHERE direct;
DROP INDEX chats_name_lower_key;
CREATE UNIQUE INDEX chats_name_lower_key ON chats (lower(name)) WHERE NOT direct;

-- +goose Down
DROP INDEX chats_name_lower_key;
DELETE FROM chats WHERE direct;
CREATE UNIQUE INDEX chats_name_lower_key ON chats (lower(name));
DROP INDEX chats_direct_pair_key;
ALTER TABLE chats
    DROP CONSTRAINT chats_direct_pair_check,
    DROP COLUMN direct_high,
    DROP COLUMN direct_low,
    DROP COLUMN direct;
