package main

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/testenv"
)

// BenchmarkShutdown5000 is issue 5's benchmark: the shutdown of a room with
// 5,000 local members against a fake homeserver that takes 2 ms per
// request (each leave, forget and join; each leave and join also goes to
// the log), with a new room, shutdown.concurrency 16. It reports the total
// time and the p99 of /messages on another room meanwhile, against the
// same read without a shutdown running. Run it once:
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
		hs := testenv.NewHomeserver(b, m.NC, m.publisher(), "test")
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
		start := time.Now()
		st, body := m.do(b, "DELETE", deletePath("v2", r.ID), "tok-admin", `{"new_room_user_id": "@admin:test", "purge": true}`)
		if st != 200 {
			b.Fatalf("%d %v", st, body)
		}
		id := body["delete_id"].(string)
		var during []time.Duration
		pace := time.NewTicker(5 * time.Millisecond) // an open-loop-ish reader, not saturation
		defer pace.Stop()
		for ; ; <-pace.C {
			task, _ := m.Store.Task(id)
			if task != nil && task.Finished() {
				if task.Status != commands.TaskComplete {
					b.Fatalf("task %s: %s", task.Status, task.Error)
				}
				break
			}
			during = append(during, read())
		}
		total := time.Since(start)
		task, _ := m.Store.Task(id)
		if n := len(task.Result["kicked_users"].([]any)); n != members+1 {
			b.Fatalf("kicked %d users, want %d", n, members+1)
		}
		b.ReportMetric(total.Seconds(), "shutdown-s")
		b.ReportMetric(float64(p99(quiet).Microseconds()), "quiet-p99-us")
		b.ReportMetric(float64(p99(during).Microseconds()), "during-p99-us")
		b.ReportMetric(float64(p99(during))/float64(p99(quiet)), "p99-ratio")
		b.Logf("%d members, concurrency %d: shutdown %s; /messages on another room p99 %s quiet, %s during (%d reads)",
			members, concurrency, total.Round(time.Millisecond), p99(quiet), p99(during), len(during))
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

func p99(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*99/100)]
}
