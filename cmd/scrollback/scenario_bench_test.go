package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/testenv"
)

// BenchmarkShutdown5000 is issue 5's benchmark: the shutdown of a room with
// 5,000 local members against a fake homeserver that takes 2 ms per
// request (each leave, forget and join) and publishes what each request
// does to the log before it answers (the leave and the join as events,
// the forget as a command): three synchronous appends per member. The
// homeserver has a connection of its own, as a worker in another process
// would. With a new room, shutdown.concurrency 16. It reports the total
// time; the log's capacity in the same run (16 synchronous publishers,
// measured just before the shutdown) and the time the shutdown's appends
// alone would take at that capacity (log-bound-s); and the p99 of
// /messages on another room, read every 5 ms meanwhile, against the same
// read without a shutdown running. Run it once:
//
//	go test -run '^$' -bench Shutdown5000 -benchtime 1x ./cmd/scrollback
func BenchmarkShutdown5000(b *testing.B) {
	members := 5000
	if testing.Short() {
		members = 500
	}
	concurrency := 16 // the default of shutdown.concurrency
	if v, err := strconv.Atoi(os.Getenv("SCROLLBACK_BENCH_SHUTDOWN_CONCURRENCY")); err == nil && v > 0 {
		concurrency = v
	}
	for b.Loop() {
		m := startMain(b, func(c *Config) { c.Shutdown.Concurrency = concurrency })
		hsNC, err := bus.ConnectInProcess(m.NATSServer, "homeserver")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(hsNC.Close)
		hsJS, err := jetstream.New(hsNC)
		if err != nil {
			b.Fatal(err)
		}
		hsPub := &testenv.Publisher{JS: hsJS, Subjects: m.publisher().Subjects}
		hs := testenv.NewHomeserver(b, hsNC, hsPub, "test")
		r := testenv.NewRoom("big", "test")
		hs.Track(r)
		evs := r.Setup(alice)
		for i := range members {
			evs = append(evs, r.Join(fmt.Sprintf("@member%d:test", i)))
		}
		other := testenv.NewRoom("other", "test")
		oevs := other.Setup(alice)
		for i := range 200 {
			oevs = append(oevs, other.Msg(alice, fmt.Sprint(i)))
		}
		seqs := m.publisher().Publish(b, append(evs, oevs...)...)
		for _, id := range []string{r.ID, other.ID} {
			if _, err := m.messages(b, id, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
				b.Fatal(err)
			}
		}
		hs.SetDelay(2 * time.Millisecond)
		read := func() time.Duration {
			start := time.Now()
			if _, err := m.messages(b, other.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 50}); err != nil {
				b.Fatal(err)
			}
			return time.Since(start)
		}
		var quiet []time.Duration
		for range 200 {
			quiet = append(quiet, read())
		}
		logCap := logCapacity(b, m, hsPub, 16, time.Second)
		start := time.Now()
		st, body := m.do(b, "DELETE", deletePath("v2", r.ID), "tok-admin", `{"new_room_user_id": "@admin:test", "purge": true}`)
		if st != 200 {
			b.Fatalf("%d %v", st, body)
		}
		id := body["delete_id"].(string)
		var during []time.Duration
		pace := time.NewTicker(5 * time.Millisecond) // an open-loop-ish reader, not saturation
		defer pace.Stop()
		// The task record of a shutdown holds every member: decoding it
		// costs milliseconds, so look at it every 20th read only (at
		// every read it took a quarter of the process's CPU).
		for i := 0; ; i, _ = i+1, <-pace.C {
			if i%20 == 0 {
				task, _ := m.Store.Task(id)
				if task != nil && task.Finished() {
					if task.Status != commands.TaskComplete {
						b.Fatalf("task %s: %s", task.Status, task.Error)
					}
					break
				}
			}
			during = append(during, read())
		}
		total := time.Since(start)
		task, _ := m.Store.Task(id)
		if n := len(task.Result["kicked_users"].([]any)); n != members+1 {
			b.Fatalf("kicked %d users, want %d", n, members+1)
		}
		appends := 3 * members // each member's leave, forget and join
		bound := time.Duration(float64(appends) / logCap * float64(time.Second))
		b.ReportMetric(total.Seconds(), "shutdown-s")
		b.ReportMetric(logCap, "log-msgs/s")
		b.ReportMetric(bound.Seconds(), "log-bound-s")
		b.ReportMetric(float64(p99(quiet).Microseconds()), "quiet-p99-us")
		b.ReportMetric(float64(p99(during).Microseconds()), "during-p99-us")
		b.ReportMetric(float64(p99(during))/float64(p99(quiet)), "p99-ratio")
		b.Logf("%d members, concurrency %d: shutdown %s; the log took %.0f synchronous appends/s from 16 publishers just before, so the homeserver's %d appends alone need %s (%.2fx of the shutdown); /messages on another room p99 %s quiet, %s during (%d reads)",
			members, concurrency, total.Round(time.Millisecond), logCap, appends, bound.Round(time.Millisecond), bound.Seconds()/total.Seconds(),
			p99(quiet), p99(during), len(during))
	}
}

// BenchmarkBackfillSilentWorker is issue 6's benchmark: /messages on a
// room with a gap whose federation worker never answers. The first read
// waits for backfill.timeout (200 ms here) and answers with the local
// page; afterwards the extremity is in back-off and reads cost what a
// plain read costs. It reports the first read's latency minus the
// timeout, and the p99 of the later reads against a room without gaps.
//
//	go test -run '^$' -bench BackfillSilentWorker -benchtime 1x ./cmd/scrollback
func BenchmarkBackfillSilentWorker(b *testing.B) {
	timeout := 200 * time.Millisecond
	for b.Loop() {
		m := startMain(b, func(c *Config) { c.Backfill.Timeout = commands.DurationOf(timeout) })
		fed := testenv.NewFederation(b, m.NC, m.publisher().Subjects)
		fed.SetSilent(true)
		gappy := testenv.NewRoom("gappy", "test")
		full := gappy.Setup(alice)
		for len(full) < 300 {
			full = append(full, gappy.Msg(alice, "x"))
		}
		plain := testenv.NewRoom("plain", "test")
		pevs := plain.Setup(alice)
		for range 200 {
			pevs = append(pevs, plain.Msg(alice, "y"))
		}
		// The gappy room lacks events 100-199: the page below 200 is short.
		seqs := m.publisher().Publish(b, append(append(append([]testenv.Event{}, full[:100]...), full[200:]...), pevs...)...)
		for _, id := range []string{gappy.ID, plain.ID} {
			if _, err := m.messages(b, id, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
				b.Fatal(err)
			}
		}
		read := func(roomID string) time.Duration {
			start := time.Now()
			if _, err := m.messages(b, roomID, map[string]any{"user_id": alice, "dir": "b", "limit": 150}); err != nil {
				b.Fatal(err)
			}
			return time.Since(start)
		}
		first := read(gappy.ID)
		var after, base []time.Duration
		for range 300 {
			after = append(after, read(gappy.ID))
			base = append(base, read(plain.ID))
		}
		if len(fed.Requests()) != 1 {
			b.Fatalf("%d backfill requests, want 1 (then back-off)", len(fed.Requests()))
		}
		b.ReportMetric(float64((first - timeout).Microseconds()), "first-over-timeout-us")
		b.ReportMetric(float64(p99(after).Microseconds()), "after-p99-us")
		b.ReportMetric(float64(p99(base).Microseconds()), "plain-p99-us")
		b.Logf("first read %s (timeout %s); later reads p99 %s vs plain %s", first.Round(time.Microsecond), timeout, p99(after), p99(base))
	}
}

// logCapacity measures how many synchronous appends a second the log takes
// from n publishers for d (on a room of its own), then waits until the
// service has applied them.
func logCapacity(tb testing.TB, m *Main, pub *testenv.Publisher, n int, d time.Duration) float64 {
	tb.Helper()
	room := testenv.NewRoom("logcapacity", "test")
	var count atomic.Int64
	var last atomic.Uint64
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				ev := room.Msg(alice, "x")
				data, err := bus.Encode(map[string]any(ev))
				if err != nil {
					tb.Error(err)
					return
				}
				ack, err := pub.JS.Publish(context.Background(), pub.Subjects.Room(room.ID, "event"), data, jetstream.WithMsgID(ev.ID()))
				if err != nil {
					tb.Error(err)
					return
				}
				count.Add(1)
				for {
					seq := last.Load()
					if ack.Sequence <= seq || last.CompareAndSwap(seq, ack.Sequence) {
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if _, err := m.messages(tb, room.ID, map[string]any{"admin": true, "wait_for": last.Load()}); err != nil {
		tb.Fatal(err)
	}
	return float64(count.Load()) / elapsed.Seconds()
}

func p99(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*99/100)]
}
