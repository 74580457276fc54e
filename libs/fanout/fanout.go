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
// without re-encoding; Trace carries the W3C trace context of the write.
type Envelope struct {
	Trace map[string]string `json:"trace,omitempty"`
	Event json.RawMessage   `json:"event"`
}
