package scenario

import (
	"bytes"
	"time"

	"github.com/gorilla/websocket"

	"github.com/communications/communications/loadgen/stamp"
)

// scanEvent reads the fields of one server event (a JSON object on one
// line) that the load generator uses into ev, without reflection or
// allocation: type, text, code and client_msg_id as raw JSON strings
// (quotes included, escapes kept), chat_id and seq as integers. Other
// fields, nested objects and arrays are skipped. It reports false for a
// line that is not a well-formed object of that shape; it does not check
// everything a JSON parser would.
func scanEvent(line []byte, ev *inbound) bool {
	ev.Type, ev.Text, ev.Code, ev.ClientMsgID = ev.Type[:0], ev.Text[:0], ev.Code[:0], ev.ClientMsgID[:0]
	ev.ChatID, ev.Seq = 0, 0
	i := skipSpace(line, 0)
	if i >= len(line) || line[i] != '{' {
		return false
	}
	i = skipSpace(line, i+1)
	if i < len(line) && line[i] == '}' {
		return true
	}
	for i < len(line) {
		if line[i] != '"' {
			return false
		}
		end := stringEnd(line, i)
		if end < 0 {
			return false
		}
		key := line[i+1 : end-1]
		i = skipSpace(line, end)
		if i >= len(line) || line[i] != ':' {
			return false
		}
		i = skipSpace(line, i+1)
		vend := valueEnd(line, i)
		if vend < 0 {
			return false
		}
		val := line[i:vend]
		switch string(key) {
		case "type":
			ev.Type = append(ev.Type, val...)
		case "text":
			ev.Text = append(ev.Text, val...)
		case "code":
			ev.Code = append(ev.Code, val...)
		case "client_msg_id":
			ev.ClientMsgID = append(ev.ClientMsgID, val...)
		case "chat_id":
			ev.ChatID = parseInt(val)
		case "seq":
			ev.Seq = parseInt(val)
		}
		i = skipSpace(line, vend)
		if i >= len(line) {
			return false
		}
		switch line[i] {
		case ',':
			i = skipSpace(line, i+1)
		case '}':
			return true
		default:
			return false
		}
	}
	return false
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// stringEnd returns the index after the string starting at b[i] ('"'), or
// -1 when it does not end.
func stringEnd(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return -1
}

// valueEnd returns the index after the JSON value starting at b[i], or -1.
func valueEnd(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				e := stringEnd(b, j)
				if e < 0 {
					return -1
				}
				j = e - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1
				}
			}
		}
		return -1
	default: // number, true, false, null
		j := i
		for j < len(b) && bytes.IndexByte([]byte(",}] \t\r\n"), b[j]) < 0 {
			j++
		}
		if j == i {
			return -1
		}
		return j
	}
}

// parseInt parses a JSON integer (0 for anything else).
func parseInt(b []byte) int64 {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' || n > (1<<62)/10 {
			return 0
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		return -n
	}
	return n
}

// events calls f with each event of a frame (newline-delimited) and
// returns how many lines it could not read.
func events(frame []byte, ev *inbound, f func(ev *inbound)) (undecodable int) {
	for len(frame) > 0 {
		var line []byte
		line, frame, _ = bytes.Cut(frame, []byte("\n"))
		if len(line) == 0 {
			continue
		}
		if !scanEvent(line, ev) {
			undecodable++
			continue
		}
		f(ev)
	}
	return undecodable
}

// readFrames reads ws's frames until it fails and calls f with each, and
// the time it was read (unix nanoseconds); the frame's bytes are reused
// after f returns.
func readFrames(ws *websocket.Conn, buf *bytes.Buffer, f func(frame []byte, now int64)) error {
	for {
		_, rd, err := ws.NextReader()
		if err != nil {
			return err
		}
		buf.Reset()
		if _, err := buf.ReadFrom(rd); err != nil {
			return err
		}
		f(buf.Bytes(), time.Now().UnixNano())
	}
}

// recordStamp records the latency of an event whose text (a raw JSON
// string) is a send stamp: now minus its intended send time.
func (sh *shard) recordStamp(text []byte, now int64) {
	if len(text) < 2 {
		return
	}
	if at, ok := stamp.Parse(text[1 : len(text)-1]); ok {
		sh.record(max((now-at)/1e3, 1), at)
	}
}

// record records a latency of us microseconds of something intended at
// the unix nanosecond at.
func (sh *shard) record(us, at int64) {
	sec := at / 1e9
	sh.mu.Lock()
	_ = sh.h.RecordValue(us)
	if sh.worst == nil {
		sh.worst = map[int64]int64{}
	}
	if us > sh.worst[sec] {
		sh.worst[sec] = us
	}
	sh.mu.Unlock()
}
