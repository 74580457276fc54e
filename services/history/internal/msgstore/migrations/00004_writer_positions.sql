-- +goose Up
-- Where the history writer stands in the message stream: the last stream
-- sequence it stored. Each batch moves it in the batch's own transaction
-- (compare and set), so a message is stored once and in stream order even
-- when two writers run at once. epoch is the stream's creation time (Unix
-- nanoseconds): a stream created again starts its sequences over.
CREATE TABLE writer_positions (
    stream   text PRIMARY KEY,
    epoch    bigint NOT NULL,
    last_seq bigint NOT NULL CHECK (last_seq >= 0)
);

-- +goose Down
DROP TABLE writer_positions;
