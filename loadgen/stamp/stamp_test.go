package stamp

import (
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	for _, v := range []int64{0, 1, time.Now().UnixNano(), 1<<62 + 12345} {
		got, ok := Parse(Append(nil, v))
		if !ok || got != v {
			t.Errorf("Parse(Append(%d)) = %d, %v", v, got, ok)
		}
	}
}

func TestParseRejects(t *testing.T) {
	t.Parallel()
	for name, text := range map[string]string{
		"empty":        "",
		"prefix only":  "lg:",
		"other text":   "hello",
		"not a number": "lg:12a",
		"negative":     "lg:-5",
		"overflow":     "lg:99999999999999999999",
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if v, ok := Parse([]byte(text)); ok {
				t.Errorf("Parse(%q) = %d, true; want false", text, v)
			}
		})
	}
}

func TestAppendDoesNotAllocate(t *testing.T) {
	buf := make([]byte, 0, 64)
	if n := testing.AllocsPerRun(100, func() { buf = Append(buf[:0], 1234567890123) }); n != 0 {
		t.Errorf("Append allocates %v times", n)
	}
}
