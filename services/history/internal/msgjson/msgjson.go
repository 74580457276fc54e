// Package msgjson encodes the history service's message replies as JSON by
// appending to a caller's buffer: a protocol.Message and a history page
// (busapi.HistoryPage), byte for byte as encoding/json (v1) encodes them,
// without reflection and without allocating. A page of 50 is served 1,000
// times a second; encoding/json spent half of its time on it in
// time.Time.MarshalJSON. The sameness is with encoding/json v1, the
// default: built with GOEXPERIMENT=jsonv2, encoding/json treats invalid
// UTF-8 differently, and the tests that compare the two differ on it.
package msgjson

import (
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/services/history/internal/history"
)

// AppendPage appends the JSON of the busapi.HistoryPage holding msgs (each
// as its protocol event, history.Message.Event), in order:
// {"messages":[...]}, with [] when msgs is empty, never null.
func AppendPage(dst []byte, msgs []history.Message) ([]byte, error) {
	dst = append(dst, `{"messages":[`...)
	var err error
	for i := range msgs {
		if i > 0 {
			dst = append(dst, ',')
		}
		ev := msgs[i].Event()
		if dst, err = AppendMessage(dst, &ev); err != nil {
			return dst, err
		}
	}
	return append(dst, "]}"...), nil
}

// AppendMessage appends the JSON of m, as json.Marshal(m) gives it
// (encoding/json v1: see the package comment). Its one
// error is encoding/json's for a time it cannot encode (a year outside 0 to
// 9999).
func AppendMessage(dst []byte, m *protocol.Message) ([]byte, error) {
	dst = append(dst, `{"type":`...)
	dst = appendString(dst, m.Type)
	dst = append(dst, `,"chat_id":`...)
	dst = strconv.AppendInt(dst, m.ChatID, 10)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendInt(dst, m.Seq, 10)
	if m.Kind != "" {
		dst = append(dst, `,"kind":`...)
		dst = appendString(dst, m.Kind)
	}
	if m.TargetSeq != 0 {
		dst = append(dst, `,"target_seq":`...)
		dst = strconv.AppendInt(dst, m.TargetSeq, 10)
	}
	dst = append(dst, `,"sender_id":`...)
	dst = strconv.AppendInt(dst, m.SenderID, 10)
	dst = append(dst, `,"sender":`...)
	dst = appendString(dst, m.Sender)
	dst = append(dst, `,"client_msg_id":`...)
	dst = appendString(dst, m.ClientMsgID)
	dst = append(dst, `,"text":`...)
	dst = appendString(dst, m.Text)
	dst = append(dst, `,"sent_at":`...)
	var err error
	if dst, err = appendTime(dst, m.SentAt); err != nil {
		return dst, err
	}
	if m.EditedAt != nil {
		dst = append(dst, `,"edited_at":`...)
		if dst, err = appendTime(dst, *m.EditedAt); err != nil {
			return dst, err
		}
	}
	if m.Deleted {
		dst = append(dst, `,"deleted":true`...)
	}
	return append(dst, '}'), nil
}

// appendTime appends t as time.Time.MarshalJSON does: RFC 3339 with
// nanoseconds (trailing zeros dropped), quoted. A time MarshalJSON refuses
// (a year outside 0 to 9999, an offset of a day or more) gets its error.
func appendTime(dst []byte, t time.Time) ([]byte, error) {
	if y := t.Year(); y < 0 || y > 9999 {
		return dst, timeError(t)
	}
	if _, off := t.Zone(); off <= -24*60*60 || off >= 24*60*60 {
		return dst, timeError(t)
	}
	dst = append(dst, '"')
	dst = t.AppendFormat(dst, time.RFC3339Nano)
	return append(dst, '"'), nil
}

func timeError(t time.Time) error {
	_, err := t.MarshalJSON()
	return err
}

const hex = "0123456789abcdef"

// appendString appends s as a JSON string exactly as encoding/json v1 does
// with its default HTML escaping: ", \ and the control characters escaped (\b,
// \f, \n, \r, \t short, the others as \u00XX), <, > and & as \u003c,
// \u003e and \u0026, U+2028 and U+2029 as \u2028 and \u2029, and each byte
// of invalid UTF-8 as \ufffd.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
