package ws

import "testing"

// BenchmarkDeliverMessage hands one live message to each of 50 local
// connections of its chat, as the hub does for every fanout event (the
// per-connection position check and the queueing), and takes it off each
// queue as the connection's writer would.
func BenchmarkDeliverMessage(b *testing.B) {
	const members = 50
	conns := make([]*Conn, members)
	for i := range conns {
		c, _ := newTestConn(b, 256)
		c.start([]byte("hello"))
		<-c.send
		conns[i] = c
	}
	event := []byte(`{"type":"message","chat_id":7,"seq":1,"sender_id":1,"sender":"alice","client_msg_id":"m","text":"a typical chat message of some length","sent_at":"2026-11-24T12:00:00Z"}`)
	seq := int64(0)
	b.ReportAllocs()
	for b.Loop() {
		seq++
		for _, c := range conns {
			c.DeliverMessage(7, seq, false, event)
		}
		for _, c := range conns {
			<-c.send
		}
	}
	b.StopTimer()
	for i, c := range conns {
		if c.isClosed() {
			b.Fatalf("connection %d closed with %d", i, c.closeCode)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*members), "ns/delivery")
}
