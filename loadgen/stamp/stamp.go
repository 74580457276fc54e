// Package stamp encodes the intended send time of a load-generator message
// into its text and reads it back at the receiver, without allocating.
package stamp

import "strconv"

// Prefix starts every stamped text; texts without it are not ours.
const Prefix = "lg:"

// Append appends the text of a message intended to be sent at intended
// (unix nanoseconds) to buf.
func Append(buf []byte, intended int64) []byte {
	buf = append(buf, Prefix...)
	return strconv.AppendInt(buf, intended, 10)
}

// Parse returns the intended send time stamped in text, and false when
// text is not a stamp.
func Parse(text []byte) (int64, bool) {
	if len(text) <= len(Prefix) || string(text[:len(Prefix)]) != Prefix {
		return 0, false
	}
	var n int64
	for _, c := range text[len(Prefix):] {
		if c < '0' || c > '9' || n > (1<<63-1)/10-1 {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
