// Package fanout defines how stored chat events travel from the history
// writer to every gateway replica over Redis pub/sub: the channel names and
// the envelope that carries the event and its trace context.
package fanout

import (
	"encoding/json"
	"strconv"
)

// Channel is the Redis pub/sub channel of a chat's events.
func Channel(prefix string, chatID int64) string {
	return prefix + ":chat:" + strconv.FormatInt(chatID, 10)
}

// Envelope is the payload published on a chat channel. Event is the
// protocol event exactly as clients receive it, so a gateway forwards it
// without re-encoding; the other fields let the gateway route it without
// decoding the event, and Trace carries the W3C trace context of the write.
type Envelope struct {
	ChatID   int64 `json:"chat_id"`
	Seq      int64 `json:"seq"`
	SenderID int64 `json:"sender_id"`
	// Duplicate marks a message stored earlier and published again
	// because its sender retried it (or a writer read it again after another one crashed). The
	// gateways deliver it to the sender's connections only.
	Duplicate bool `json:"duplicate,omitempty"`
	// Ephemeral marks an event that is not part of the chat's history (a
	// typing indicator): it has no sequence number, is never stored, and
	// goes only to the connections viewing the chat, other than the
	// sender's. Gateways publish these themselves.
	Ephemeral bool `json:"ephemeral,omitempty"`
	// AcceptedAt is when the chat service took the message in, in Unix
	// microseconds on its host's clock: just before publishing it to the
	// stream, so the stream's disk sync is part of the fanout latency.
	// 0 on duplicates and ephemeral events. Gateways measure their fanout
	// latency from it.
	AcceptedAt int64             `json:"accepted_at,omitempty"`
	Trace      map[string]string `json:"trace,omitempty"`
	Event      json.RawMessage   `json:"event"`
}
