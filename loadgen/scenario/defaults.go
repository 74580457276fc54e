package scenario

import (
	"strconv"
	"time"
)

// setDefault sets *v to def when it holds its type's zero value: the
// scenarios' configurations fill their unset fields with it.
func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// newRunID returns a run id that makes chat names and client message ids
// unique: the time in milliseconds, base 36.
func newRunID() string { return strconv.FormatInt(time.Now().UnixNano()/1e6, 36) }
