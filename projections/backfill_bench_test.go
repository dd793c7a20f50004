package projections_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// BenchmarkApplyBackfill applies a room's history as backfill fills it:
// the newest 100 events live, then the 5,000 before them as backfilled
// events in batches of 100, newest first, as federation's /backfill gives
// them. Every backfilled event then ends a backward extremity that its
// child, applied before it, opened, so this is the path that looks up the
// extremity's children (namedByLiveChild). Commits skip the fsync, so the
// figure is the applier's CPU per event.
//
//	go test -run '^$' -bench ApplyBackfill -benchtime 20x ./projections
func BenchmarkApplyBackfill(b *testing.B) {
	const live, history, batch = 100, 5000, 100
	r := testenv.NewRoom("backfill", "test")
	evs := r.Setup("@alice:test", "@remote:other.org")
	for i := range history + live - len(evs) {
		evs = append(evs, r.Msg("@remote:other.org", fmt.Sprint("message ", i)))
	}
	var elapsed time.Duration
	events := 0
	for b.Loop() {
		b.StopTimer()
		s, err := projections.Open(b.TempDir()+"/p.db", projections.Options{ServerName: "test"})
		if err != nil {
			b.Fatal(err)
		}
		s.DB().NoSync = true
		seq := uint64(1)
		var tail []commands.LogEntry
		for _, ev := range evs[len(evs)-live:] {
			tail = append(tail, entry(b, seq, r.ID, commands.KindEvent, ev))
			seq++
		}
		if _, err := s.ApplyBatch(0, tail); err != nil {
			b.Fatal(err)
		}
		var batches [][]commands.LogEntry
		for end := len(evs) - live; end > 0; end -= batch {
			var entries []commands.LogEntry
			for i := end - 1; i >= max(0, end-batch); i-- {
				ev := testenv.Event{}
				for k, v := range evs[i] {
					ev[k] = v
				}
				ev["backfilled"] = true
				entries = append(entries, entry(b, seq, r.ID, commands.KindEvent, ev))
				seq++
			}
			batches = append(batches, entries)
		}
		b.StartTimer()
		start := time.Now()
		for _, entries := range batches {
			out, err := s.ApplyBatch(0, entries)
			if err != nil {
				b.Fatal(err)
			}
			for _, o := range out {
				if o.Result != projections.OutcomeApplied {
					b.Fatalf("seq %d: %s %s", o.Seq, o.Result, o.Reason)
				}
			}
			events += len(entries)
		}
		elapsed += time.Since(start)
		b.StopTimer()
		if back := backOf(s, r.ID); len(back) != 0 {
			b.Fatalf("backward extremities left: %v", back)
		}
		s.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(events), "ns/event")
}
