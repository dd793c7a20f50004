package projections

import (
	"bytes"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
)

// TestUnindex_FillsTheWindowInSteps: the janitor fills its window in
// steps of at most unindexFill rows and deletes no index entry meanwhile
// (one step of a 200,000-row window took 234 ms of a core, and reads
// queued behind it); then it deletes the entries of all the steps in key
// order, as one sorted window would.
func TestUnindex_FillsTheWindowInSteps(t *testing.T) {
	SetUnindexWindow(t, 40)
	was := unindexFill
	unindexFill = 7
	t.Cleanup(func() { unindexFill = was })

	s := openTestStore(t)
	const room = "!fill:test"
	msgs := roomLog(t, room, 60, 0) // depths 1-60; every third a reaction
	cmd, err := bus.Encode(map[string]any{"id": "p1", "action": commands.ActionPurgeHistory, "room_id": room,
		"params": map[string]any{"token": "t50-0"}})
	if err != nil {
		t.Fatal(err)
	}
	msgs = append(msgs, rawMsg{seq: 61, subject: testSubjects.Room(room, commands.KindCmd), data: cmd, ts: 1_700_000_000_061})
	if _, err := s.ApplyBatch(0, decodeAll(msgs)); err != nil {
		t.Fatal(err)
	}
	entries := func() map[string]bool {
		out := map[string]bool{}
		if err := s.db.View(func(tx *bolt.Tx) error {
			return tx.Bucket(bEvents).ForEach(func(k, _ []byte) error {
				out[string(k[8:])] = true
				return nil
			})
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}

	// The fill: ceil(40/7) steps, each reading at most 7 rows.
	for step := 1; step <= 6; step++ {
		before := entries()
		if did, err := s.JanitorStep(1); err != nil || !did {
			t.Fatalf("fill step %d: did %v, %v", step, did, err)
		}
		if want := min(7*step, 40); s.ahead.rows != want {
			t.Fatalf("after fill step %d the window covers %d rows, want %d", step, s.ahead.rows, want)
		}
		if after := entries(); len(after) != len(before) {
			t.Fatalf("fill step %d deleted %d index entries", step, len(before)-len(after))
		}
	}
	if s.ahead.filling || len(s.ahead.runs) != 6 {
		t.Fatalf("after 6 steps: filling %v, %d runs; want a full window of 6 runs", s.ahead.filling, len(s.ahead.runs))
	}

	// The deletion: 4 entries a step (unindexBatch x 1), every ID above
	// those of the steps before, until the window is through.
	var last []byte
	deleted := 0
	for !s.ahead.empty() {
		before := entries()
		if did, err := s.JanitorStep(1); err != nil || !did {
			t.Fatalf("unindex step: did %v, %v", did, err)
		}
		var gone [][]byte
		after := entries()
		for id := range before {
			if !after[id] {
				gone = append(gone, []byte(id))
			}
		}
		if len(gone) == 0 || len(gone) > unindexBatch {
			t.Fatalf("an unindex step deleted %d entries, want 1 to %d", len(gone), unindexBatch)
		}
		for _, id := range gone {
			if last != nil && bytes.Compare(id, last) <= 0 {
				t.Fatalf("entry %s deleted after %s: not in key order across the fill's runs", id, last)
			}
		}
		for _, id := range gone {
			if last == nil || bytes.Compare(id, last) > 0 {
				last = id
			}
		}
		deleted += len(gone)
	}
	// 40 rows below the floor, less the targets of reactions (their
	// entries go with their rows).
	if deleted < 20 || deleted > 40 {
		t.Fatalf("the window deleted %d entries ahead, want most of 40", deleted)
	}
	for {
		did, err := s.JanitorStep(JanitorBatch)
		if err != nil {
			t.Fatal(err)
		}
		if !did {
			break
		}
	}
	if err := s.CheckRelatedMarks(); err != nil {
		t.Error(err)
	}
	// Left: the rows from the floor up (depths 50-60) and the create
	// event, kept as an outlier.
	if left := entries(); len(left) != 12 {
		t.Errorf("%d index entries left, want 12", len(left))
	}
}
