package projections_test

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// crash closes the store's file without ending its build, as a process
// that dies leaves it (the kernel keeps what was written).
func crash(t *testing.T, s *projections.Store) {
	t.Helper()
	if err := s.DB().Close(); err != nil {
		t.Fatal(err)
	}
}

// openBuild opens the store at path as serve does (Build).
func openBuild(t *testing.T, path string) *projections.Store {
	t.Helper()
	s, err := projections.Open(path, projections.Options{Build: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestStore_BuildWithoutSync: a new file opened with Build commits
// without fsync and is marked with the boot's ID; Built syncs it, removes
// the mark and turns fsync on. A file that exists is never built so.
func TestStore_BuildWithoutSync(t *testing.T) {
	projections.SetBootID(t, "boot-1")
	path := filepath.Join(t.TempDir(), "p.db")
	s := openBuild(t, path)
	if !s.Building() || !s.DB().NoSync || s.Restarted() {
		t.Fatalf("new file: Building=%v NoSync=%v Restarted=%v, want true true false", s.Building(), s.DB().NoSync, s.Restarted())
	}
	if mark, err := os.ReadFile(path + ".building"); err != nil || string(mark) != "boot-1" {
		t.Fatalf("marker: %q, %v; want the boot ID", mark, err)
	}
	r := testenv.NewRoom("a", "test")
	evs := r.Setup("@a:test")
	apply(t, s, 1, evs...)
	if err := s.Built(); err != nil {
		t.Fatal(err)
	}
	if s.Building() || s.DB().NoSync {
		t.Fatalf("after Built: Building=%v NoSync=%v, want false false", s.Building(), s.DB().NoSync)
	}
	if _, err := os.Stat(path + ".building"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("marker after Built: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openBuild(t, path)
	defer s.Close()
	if s.Building() || s.DB().NoSync {
		t.Fatalf("an existing file: Building=%v NoSync=%v, want false false", s.Building(), s.DB().NoSync)
	}
	if got := len(timelineIDs(t, s, r.ID)); got != len(evs) {
		t.Fatalf("timeline holds %d events, want %d", got, len(evs))
	}
}

// TestStore_BuildAfterACrash: a build that a crash of the process cut
// short goes on with what it has in the same boot; after a restart of the
// machine its file is deleted and built again from nothing, and without
// Build (scrollback verify) it is refused.
func TestStore_BuildAfterACrash(t *testing.T) {
	projections.SetBootID(t, "boot-1")
	path := filepath.Join(t.TempDir(), "p.db")
	s := openBuild(t, path)
	r := testenv.NewRoom("a", "test")
	evs := r.Setup("@a:test")
	apply(t, s, 1, evs...)
	crash(t, s)

	// The same boot: the file is whole, and still being built.
	s = openBuild(t, path)
	if !s.Building() || s.Restarted() {
		t.Fatalf("same boot: Building=%v Restarted=%v, want true false", s.Building(), s.Restarted())
	}
	if got := len(timelineIDs(t, s, r.ID)); got != len(evs) {
		t.Fatalf("same boot: timeline holds %d events, want %d", got, len(evs))
	}
	crash(t, s)

	projections.SetBootID(t, "boot-2")
	if _, err := projections.Open(path, projections.Options{}); !errors.Is(err, projections.ErrUnsynced) {
		t.Fatalf("another boot, without Build: %v, want ErrUnsynced", err)
	}
	s = openBuild(t, path)
	defer s.Close()
	if !s.Building() || !s.Restarted() {
		t.Fatalf("another boot: Building=%v Restarted=%v, want true true", s.Building(), s.Restarted())
	}
	if got := timelineIDs(t, s, r.ID); len(got) != 0 {
		t.Fatalf("another boot: the torn file's %d events are still there", len(got))
	}
	if mark, err := os.ReadFile(path + ".building"); err != nil || string(mark) != "boot-2" {
		t.Fatalf("marker: %q, %v; want the new boot's ID", mark, err)
	}
}

// TestProjector_EndsTheBuildOnceCaughtUp: the projector of a new file
// ends its build without fsync when it comes within BuiltLag messages of
// the log, and not before.
func TestProjector_EndsTheBuildOnceCaughtUp(t *testing.T) {
	projections.SetBootID(t, "boot-1")
	n := testenv.NewNATS(t)
	log := n.Stream(t, subjects, "SCROLLBACK")
	pub := &testenv.Publisher{JS: n.JS, Subjects: subjects}
	r := testenv.NewRoom("a", "test")
	evs := r.Setup("@a:test")
	for len(evs) < 2*projections.BuiltLag {
		evs = append(evs, r.Msg("@a:test", "x"))
	}
	seqs := pub.Publish(t, evs...)
	path := filepath.Join(t.TempDir(), "p.db")
	s := openBuild(t, path)
	t.Cleanup(func() { s.Close() })
	// One message at a time: the build must still be on while the
	// projector is more than BuiltLag behind.
	var mu sync.Mutex
	applied, endedAt := 0, 0
	p := runProjector(t, &projections.Projector{Store: s, Source: log, Decode: subjects.Decode, RoomKeyOf: roomKeyOfSubject, MaxBatch: 1,
		Observe: func(_ int, out []projections.Outcome, _ time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			applied += len(out)
			if endedAt == 0 && !s.Building() {
				endedAt = applied
			}
		}})
	testenv.WaitApplied(t, p.Projector, seqs[len(seqs)-1])
	testenv.WaitFor(t, 10*time.Second, "the build to end", func() bool { return !s.Building() })
	if _, err := os.Stat(path + ".building"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("marker after the build: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if endedAt != 0 && endedAt < len(evs)-projections.BuiltLag {
		t.Fatalf("the build ended after %d of %d messages, more than %d from the log's end", endedAt, len(evs), projections.BuiltLag)
	}
}

// TestStore_CloseEndsTheBuild: a clean stop syncs a file still being
// built and removes its marker; the next Open writes with fsync.
func TestStore_CloseEndsTheBuild(t *testing.T) {
	projections.SetBootID(t, "boot-1")
	path := filepath.Join(t.TempDir(), "p.db")
	s := openBuild(t, path)
	r := testenv.NewRoom("a", "test")
	apply(t, s, 1, r.Setup("@a:test")...)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + ".building"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("marker after Close: %v", err)
	}
	s = openBuild(t, path)
	defer s.Close()
	if s.Building() || s.DB().NoSync {
		t.Fatalf("after a clean stop: Building=%v NoSync=%v, want false false", s.Building(), s.DB().NoSync)
	}
}
