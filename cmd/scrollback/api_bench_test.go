package main

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/testenv"
)

// BenchmarkAPI_MessagesClosedLoop is the NATS API's closed-loop
// throughput for /messages, limit 50, of a 5,000-event room: 64
// requesters on 8 client connections of their own (homeserver workers
// are processes of their own), against the service's embedded server.
// It reports requests a second; with -cpuprofile or -trace it shows where
// the service's workers wait (docs/BENCHMARKS.md, "A quicker Sunday
// evening": the connections' mutex).
//
//	go test -run '^$' -bench APIMessagesClosedLoop -benchtime 20000x ./cmd/scrollback
func BenchmarkAPI_MessagesClosedLoop(b *testing.B) {
	m := startMain(b)
	r := testenv.NewRoom("closedloop", "test")
	evs := r.Setup(alice)
	for i := range 5000 {
		evs = append(evs, r.Msg(alice, fmt.Sprint("message ", i)))
	}
	m.publishApplied(b, r.ID, evs...)
	ncs := make([]*nats.Conn, 8)
	for i := range ncs {
		nc, err := bus.ConnectInProcess(m.NATSServer, fmt.Sprintf("closedloop-%d", i))
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		ncs[i] = nc
	}
	subject := bus.Subjects{Prefix: m.Config.NATS.SubjectPrefix}.APIRoom(r.ID, "messages")
	req, err := bus.Encode(map[string]any{"admin": true, "dir": "b", "limit": 50})
	if err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	b.SetParallelism(32) // 64 requesters on 2 CPUs
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		nc := ncs[next.Add(1)%int64(len(ncs))]
		for pb.Next() {
			msg, err := nc.RequestMsg(&nats.Msg{Subject: subject, Data: req}, benchRequestTimeout)
			if err != nil {
				b.Error(err)
				return
			}
			if code := msg.Header.Get("Nats-Service-Error-Code"); code != "" {
				b.Errorf("error %s: %s", code, msg.Header.Get("Nats-Service-Error"))
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}
