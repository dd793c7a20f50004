package projections_test

import (
	"runtime"
	"testing"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// TestStore_BigCommitsWriteBackEarly: a commit of a catch-up's size asks
// the kernel to write its pages out while bbolt writes them (writeback.go),
// stops asking once it is over, and a live-sized commit does not ask.
func TestStore_BigCommitsWriteBackEarly(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("early writeback is Linux's sync_file_range")
	}
	s, err := projections.Open(t.TempDir()+"/x.db", projections.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := testenv.NewRoom("a", "test")
	batch := func(seq uint64, n int) []commands.LogEntry {
		out := make([]commands.LogEntry, n)
		for i := range out {
			out[i] = entry(t, seq+uint64(i), r.ID, commands.KindEvent, r.Msg("@a:test", "a message long enough to fill the pages a little faster"))
		}
		return out
	}
	if _, err := s.ApplyBatch(0, batch(1, 10)); err != nil {
		t.Fatal(err)
	}
	if n := s.WritebackRequests(); n != 0 {
		t.Fatalf("a commit of 10 messages asked for writeback %d times, want 0", n)
	}
	big := batch(11, projections.WritebackMin)
	if _, err := s.ApplyBatch(0, big); err != nil {
		t.Fatal(err)
	}
	after := s.WritebackRequests()
	if after == 0 {
		t.Fatalf("a commit of %d messages never asked for writeback", len(big))
	}
	if n := s.WritebackFailures(); n != 0 {
		t.Fatalf("the kernel refused %d of %d requests for writeback", n, after)
	}
	// The asking stopped with the commit.
	if n := s.WritebackActive(); n != 0 {
		t.Fatalf("%d goroutines still ask for writeback after the commit", n)
	}
	if _, err := s.ApplyBatch(0, batch(11+uint64(len(big)), 10)); err != nil {
		t.Fatal(err)
	}
	if n := s.WritebackRequests(); n != after {
		t.Fatalf("writeback went on after its commit: %d requests, then %d", after, n)
	}
	if got := len(timelineIDs(t, s, r.ID)); got != 20+len(big) {
		t.Fatalf("timeline holds %d events, want %d", got, 20+len(big))
	}
}

// TestStore_SyncEndsABulkLoad: a file opened with NoSync (a rebuild's new
// file) commits without fsync until Sync, and with it afterwards, and
// keeps what it holds.
func TestStore_SyncEndsABulkLoad(t *testing.T) {
	path := t.TempDir() + "/x.db"
	s, err := projections.Open(path, projections.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	r := testenv.NewRoom("a", "test")
	seq := apply(t, s, 1, r.Setup("@a:test")...)
	if !s.DB().NoSync {
		t.Fatal("NoSync is off before Sync")
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if s.DB().NoSync {
		t.Fatal("commits after Sync skip fsync")
	}
	apply(t, s, seq, r.Msg("@a:test", "after"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = projections.Open(path, projections.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, want := len(timelineIDs(t, s, r.ID)), len(r.Setup("@a:test"))+1; got != want {
		t.Fatalf("timeline holds %d events after reopening, want %d", got, want)
	}
}
