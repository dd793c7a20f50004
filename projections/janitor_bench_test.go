package projections_test

import (
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// loadPurgeRoom applies a room of n remote messages (every tenth a thread
// reply, so that relations are unindexed too) followed by a local tail,
// in batches of 1000 as the projector does, and returns the purge token
// of the first tail event and the next log sequence.
func loadPurgeRoom(tb testing.TB, s *projections.Store, r *testenv.Room, n int) (string, uint64) {
	tb.Helper()
	evs := r.Setup("@alice:test", "@remote:other.org")
	var root string
	for i := range n {
		ev := r.Msg("@remote:other.org", fmt.Sprint("message ", i))
		if i%10 == 0 {
			root = ev.ID()
		} else if i%10 == 5 {
			ev["content"] = map[string]any{"msgtype": "m.text", "body": "reply", "m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}}
		}
		evs = append(evs, ev)
	}
	cut := r.Msg("@alice:test", "cut")
	evs = append(evs, cut, r.Msg("@alice:test", "tail"))
	seq := uint64(1)
	for start := 0; start < len(evs); start += 1000 {
		var batch []commands.LogEntry
		for _, ev := range evs[start:min(start+1000, len(evs))] {
			batch = append(batch, entry(tb, seq, r.ID, commands.KindEvent, ev))
			seq++
		}
		if _, err := s.ApplyBatch(0, batch); err != nil {
			tb.Fatal(err)
		}
	}
	return fmt.Sprintf("t%d-0", cut["depth"]), seq
}

// BenchmarkJanitor removes the rows of a purged room of 50,000 messages
// with JanitorStep batches of JanitorSlice (RunJanitor's) and of
// JanitorBatch, and reports the cost per removed row: time (the commits'
// fsyncs included), CPU time of the process (the garbage collector's
// included), allocations and bytes allocated.
//
//	go test -run '^$' -bench 'Janitor/' -benchtime 3x ./projections
func BenchmarkJanitor(b *testing.B) {
	for _, batch := range []int{projections.JanitorSlice, projections.JanitorBatch} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) { benchmarkJanitor(b, batch) })
	}
}

func benchmarkJanitor(b *testing.B, batch int) {
	const n = 50_000
	var rows, allocs, bytes uint64
	var elapsed, cpu time.Duration
	for b.Loop() {
		b.StopTimer()
		s, err := projections.Open(b.TempDir()+"/p.db", projections.Options{ServerName: "test"})
		if err != nil {
			b.Fatal(err)
		}
		s.DB().NoSync = true // a fast load; the purge below syncs as in production
		r := testenv.NewRoom("big", "test")
		tok, seq := loadPurgeRoom(b, s, r, n)
		s.DB().NoSync = false
		if _, err := s.ApplyBatch(0, []commands.LogEntry{entry(b, seq, r.ID, commands.KindCmd,
			map[string]any{"id": "purge", "action": commands.ActionPurgeHistory, "room_id": r.ID, "params": map[string]any{"token": tok}})}); err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		b.StartTimer()
		cpu0 := cpuTime(b)
		start := time.Now()
		for {
			did, err := s.JanitorStep(batch)
			if err != nil {
				b.Fatal(err)
			}
			if !did {
				break
			}
		}
		elapsed += time.Since(start)
		cpu += cpuTime(b) - cpu0
		b.StopTimer()
		runtime.ReadMemStats(&after)
		rows += n
		allocs += after.Mallocs - before.Mallocs
		bytes += after.TotalAlloc - before.TotalAlloc
		done, err := s.PurgeDone(r.ID)
		if err != nil || !done {
			b.Fatalf("purge done = %v, %v", done, err)
		}
		testenv.CheckBolt(b, s.DB())
		s.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(rows), "ns/row")
	b.ReportMetric(float64(rows)/elapsed.Seconds(), "rows/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(rows), "cpu-ns/row")
	b.ReportMetric(float64(allocs)/float64(rows), "allocs/row")
	b.ReportMetric(float64(bytes)/float64(rows), "B/row")
}

// cpuTime is the CPU time the process has used (user and system).
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
