package main

import (
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/testenv"
)

// apiBenchRoom starts the service with a room of 5,000 messages applied,
// and returns the subject and the request of the API benchmarks' read:
// /messages of that room, backwards, limit 50, as an admin.
func apiBenchRoom(b *testing.B) (m *Main, subject string, req []byte) {
	m = startMain(b)
	r := testenv.NewRoom("apibench", "test")
	evs := r.Setup(alice)
	for i := range 5000 {
		evs = append(evs, r.Msg(alice, fmt.Sprint("message ", i)))
	}
	m.publishApplied(b, r.ID, evs...)
	req, err := bus.Encode(map[string]any{"admin": true, "dir": "b", "limit": 50})
	if err != nil {
		b.Fatal(err)
	}
	return m, bus.Subjects{Prefix: m.Config.NATS.SubjectPrefix}.APIRoom(r.ID, "messages"), req
}

// BenchmarkAPI_MessagesClosedLoop is the NATS API's closed-loop
// throughput for /messages, limit 50, of a 5,000-event room: 64
// requesters on 8 client connections of their own (homeserver workers
// are processes of their own), against the service's embedded server.
// It reports requests a second; with -cpuprofile or -trace it shows where
// the service's workers wait (docs/BENCHMARKS.md, "A quicker Sunday
// evening": the connections' mutex).
//
//	go test -run '^$' -bench API_MessagesClosedLoop -benchtime 20000x ./cmd/scrollback
func BenchmarkAPI_MessagesClosedLoop(b *testing.B) {
	m, subject, req := apiBenchRoom(b)
	ncs := make([]*nats.Conn, 8)
	for i := range ncs {
		nc, err := bus.ConnectInProcess(m.NATSServer, fmt.Sprintf("closedloop-%d", i))
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		ncs[i] = nc
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

// openLoopRate is BenchmarkAPI_MessagesOpenLoop's request rate.
var openLoopRate = flag.Int("openloop-rate", 20000, "BenchmarkAPI_MessagesOpenLoop: requests a second")

// BenchmarkAPI_MessagesOpenLoop sends the reads of
// BenchmarkAPI_MessagesClosedLoop at a fixed rate (-openloop-rate) for
// five seconds, each when it is due whatever the replies do, over 8
// client connections, and reports the replies a second that came within
// 2 s of being due (goodput), the p99 from when each was due, and the
// share lost. Past the service's capacity a good service keeps its
// goodput near that capacity; one that collapses answers fewer the more
// it is asked. Run it with -benchtime 1x.
//
//	go test ./cmd/scrollback -run '^$' -bench API_MessagesOpenLoop -benchtime 1x -openloop-rate 30000
func BenchmarkAPI_MessagesOpenLoop(b *testing.B) {
	const (
		conns    = 8
		duration = 5 * time.Second
		deadline = 2 * time.Second
	)
	m, subject, req := apiBenchRoom(b)
	total := int(duration.Seconds() * float64(*openLoopRate))
	interval := time.Second / time.Duration(*openLoopRate)
	var start atomic.Int64              // UnixNano of the first request's due time
	took := make([]atomic.Int64, total) // from due to reply, 0 while none
	var answered atomic.Int64
	all := make(chan struct{}) // closed once every request has its reply
	ncs := make([]*nats.Conn, conns)
	prefixes := make([]string, conns)
	for i := range ncs {
		nc, err := bus.ConnectInProcess(m.NATSServer, fmt.Sprintf("openloop-%d", i))
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		inbox := nc.NewRespInbox()
		prefix := inbox[:strings.LastIndexByte(inbox, '.')+1]
		sub, err := nc.Subscribe(prefix+"*", func(msg *nats.Msg) {
			n, err := strconv.Atoi(msg.Subject[len(prefix):])
			if err != nil || n < 0 || n >= total {
				return
			}
			due := time.Unix(0, start.Load()).Add(time.Duration(n) * interval)
			if took[n].CompareAndSwap(0, max(int64(time.Since(due)), 1)) && answered.Add(1) == int64(total) {
				close(all)
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		if err := sub.SetPendingLimits(-1, -1); err != nil {
			b.Fatal(err)
		}
		ncs[i], prefixes[i] = nc, prefix
	}
	b.ResetTimer()
	t0 := time.Now()
	start.Store(t0.UnixNano())
	for i := range total {
		if d := time.Until(t0.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		c := i % conns
		if err := ncs[c].PublishMsg(&nats.Msg{Subject: subject, Reply: prefixes[c] + strconv.Itoa(i), Data: req}); err != nil {
			b.Fatal(err)
		}
	}
	select { // the last replies, up to the deadline of the last request
	case <-all:
	case <-time.After(deadline):
	}
	b.StopTimer()
	var lat []time.Duration
	lost := 0
	for i := range took {
		d := time.Duration(took[i].Load())
		if d == 0 || d > deadline {
			lost++
			d = deadline
		}
		lat = append(lat, d)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(total-lost)/duration.Seconds(), "good/s")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(100*float64(lost)/float64(total), "lost-%")
}
