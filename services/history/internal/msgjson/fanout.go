package msgjson

import (
	"slices"
	"strconv"

	"github.com/communications/communications/libs/fanout"
	"github.com/communications/communications/libs/protocol"
)

// AppendEnvelope appends the JSON of env with ev as its event, as
// json.Marshal gives a fanout.Envelope whose Event is json.Marshal(ev)
// (encoding/json v1: see the package comment); env.Event is ignored. The
// writer publishes one per stored message, 50,000 a second while it drains
// a backlog. Its one error is AppendMessage's.
func AppendEnvelope(dst []byte, env *fanout.Envelope, ev *protocol.Message) ([]byte, error) {
	dst = append(dst, `{"chat_id":`...)
	dst = strconv.AppendInt(dst, env.ChatID, 10)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendInt(dst, env.Seq, 10)
	dst = append(dst, `,"sender_id":`...)
	dst = strconv.AppendInt(dst, env.SenderID, 10)
	if env.Duplicate {
		dst = append(dst, `,"duplicate":true`...)
	}
	if env.Ephemeral {
		dst = append(dst, `,"ephemeral":true`...)
	}
	if env.AcceptedAt != 0 {
		dst = append(dst, `,"accepted_at":`...)
		dst = strconv.AppendInt(dst, env.AcceptedAt, 10)
	}
	if len(env.Trace) > 0 {
		dst = append(dst, `,"trace":{`...)
		var small [4]string
		keys := small[:0]
		for k := range env.Trace {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, k)
			dst = append(dst, ':')
			dst = appendString(dst, env.Trace[k])
		}
		dst = append(dst, '}')
	}
	dst = append(dst, `,"event":`...)
	dst, err := AppendMessage(dst, ev)
	if err != nil {
		return dst, err
	}
	return append(dst, '}'), nil
}
