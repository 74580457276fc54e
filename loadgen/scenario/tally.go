package scenario

// seqTally checks the sequence numbers one connection receives in one chat:
// each should arrive once, in increasing order. It is owned by the
// connection's reader goroutine.
type seqTally struct {
	last       int64
	seen       []uint64 // bit s set: seq s arrived
	received   int64
	duplicated int64
	outOfOrder int64
}

// observe records the arrival of seq (>= 1).
func (t *seqTally) observe(seq int64) {
	if seq <= 0 {
		t.outOfOrder++
		return
	}
	w, bit := int(seq/64), uint64(1)<<(seq%64)
	for w >= len(t.seen) {
		t.seen = append(t.seen, 0)
	}
	if t.seen[w]&bit != 0 {
		t.duplicated++
		return
	}
	t.seen[w] |= bit
	t.received++
	if seq < t.last {
		t.outOfOrder++
		return
	}
	t.last = seq
}
