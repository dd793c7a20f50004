package projections_test

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// fillDisk bounds the pages bbolt may use to those it uses now, as a full
// disk would (full: false lifts the bound). It sets the bound inside a
// write transaction: bbolt's writer reads it under the same lock.
func fillDisk(t *testing.T, s *projections.Store, full bool) {
	t.Helper()
	db := s.DB()
	err := db.Update(func(tx *bolt.Tx) error {
		db.MaxSize = 0
		if full {
			db.MaxSize = int(tx.Size()) // pages above it: ErrMaxSizeReached
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestProjector_FullDiskLosesNothing: when the file cannot grow (a full
// disk, here bbolt's own bound on the file's size), the projector
// retries until it can, and turns no message into a dead letter: the
// messages are not at fault, and a dead letter would leave them out of
// the projection for good. Stopping the service meanwhile does not hang
// on the retries: what is not applied stays in the log for the next run,
// which applies every message once the disk has room.
func TestProjector_FullDiskLosesNothing(t *testing.T) {
	n := testenv.NewNATS(t)
	log := n.Stream(t, subjects, "SCROLLBACK")
	pub := &testenv.Publisher{JS: n.JS, Subjects: subjects}
	path := filepath.Join(t.TempDir(), "p.db")
	s := testenv.OpenStore(t, path)
	var logs testenv.Buffer
	newProjector := func() *projections.Projector {
		return &projections.Projector{
			Store: s, Source: log, Decode: subjects.Decode, RoomKeyOf: roomKeyOfSubject, MaxBatch: 64,
			Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		}
	}
	p := runProjector(t, newProjector())

	r := testenv.NewRoom("full", "test")
	evs := r.Setup("@a:test")
	seqs := pub.Publish(t, evs...)
	testenv.WaitApplied(t, p, seqs[len(seqs)-1])
	want := timelineIDs(t, s, r.ID)

	fillDisk(t, s, true)
	body := strings.Repeat("x", 2000)
	var more []testenv.Event
	for i := range 600 { // about 1.4 MB of rows: more than the file's free pages
		ev := r.Msg("@a:test", fmt.Sprint(i, body))
		more = append(more, ev)
		want = append(want, ev.ID())
	}
	seqs = pub.Publish(t, more...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(logs.String())
		}
	})
	testenv.WaitFor(t, 20*time.Second, "the projector to retry a message the file has no room for", func() bool {
		dead, _ := s.DeadLetters(1)
		return strings.Count(logs.String(), "the file cannot take it") >= 3 || len(dead) > 0
	})
	if dead, err := s.DeadLetters(10); err != nil || len(dead) != 0 {
		t.Fatalf("dead letters while the disk is full: %+v (err %v), want none", dead, err)
	}
	if p.Applied() >= seqs[len(seqs)-1] {
		t.Fatalf("applied up to %d with the file full, want below %d", p.Applied(), seqs[len(seqs)-1])
	}

	stopped := make(chan struct{})
	go func() { p.stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the projector did not stop while the file had no room (retrying forever)")
	}

	fillDisk(t, s, false) // the operator frees some disk
	p = runProjector(t, newProjector())
	testenv.WaitApplied(t, p, seqs[len(seqs)-1])
	sameStrings(t, "timeline after the disk has room", timelineIDs(t, s, r.ID), want)
	if dead, err := s.DeadLetters(10); err != nil || len(dead) != 0 {
		t.Fatalf("dead letters: %+v (err %v), want none", dead, err)
	}
}
