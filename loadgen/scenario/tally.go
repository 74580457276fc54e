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

// bitset is a growable set of small non-negative integers.
type bitset []uint64

// add sets bit i and reports whether it was set already.
func (b *bitset) add(i int64) bool {
	w, bit := int(i/64), uint64(1)<<(i%64)
	for w >= len(*b) {
		*b = append(*b, 0)
	}
	was := (*b)[w]&bit != 0
	(*b)[w] |= bit
	return was
}

func (b bitset) has(i int64) bool {
	w := int(i / 64)
	return w < len(b) && b[w]&(uint64(1)<<(i%64)) != 0
}

// deliveries compares what each connection received with the sends that
// were acknowledged. Send i went to chat i mod chats and is number i/chats
// of that chat; got[k] holds the numbers connection k received in its chat
// chatOf[k]. lost counts (acknowledged send, member) pairs never received;
// unacked counts deliveries of sends that got no ack (an error such as
// unavailable leaves the outcome unknown: the send may still be stored).
func deliveries(got []bitset, chatOf []int, acked []bool, chats int) (lost, unacked int64) {
	for k, g := range got {
		for i := int64(chatOf[k]); i < int64(len(acked)); i += int64(chats) {
			has := g.has(i / int64(chats))
			switch {
			case acked[i] && !has:
				lost++
			case !acked[i] && has:
				unacked++
			}
		}
	}
	return lost, unacked
}
