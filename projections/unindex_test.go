package projections_test

import (
	"fmt"
	"testing"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// withAndWithoutWindow runs fn on a room of 20 remote messages and a
// purge_history below the 16th, once without deleting index entries ahead
// of the rows and once with a window of them all; seq is the next
// sequence.
func withAndWithoutWindow(t *testing.T, local string, fn func(t *testing.T, window int, s *projections.Store, r *testenv.Room, msgs []testenv.Event, seq uint64)) {
	for _, window := range []int{0, 1 << 20} {
		t.Run(fmt.Sprint("window ", window), func(t *testing.T) {
			projections.SetUnindexWindow(t, window)
			s := openWithServer(t)
			r := testenv.NewRoom(local, "test")
			evs := r.Setup("@alice:test")
			var msgs []testenv.Event
			for i := range 20 {
				m := r.Msg("@remote:other.org", fmt.Sprint(i))
				msgs = append(msgs, m)
				evs = append(evs, m)
			}
			seq := apply(t, s, 1, evs...)
			applyCmd(t, s, seq, r.ID, "p1", commands.ActionPurgeHistory, map[string]any{"token": fmt.Sprintf("t%d-0", msgs[15]["depth"].(int64))})
			fn(t, window, s, r, msgs, seq+1)
		})
	}
}

// janitorStep runs one janitor step of batch rows.
func janitorStep(t *testing.T, s *projections.Store, batch int) {
	t.Helper()
	if _, err := s.JanitorStep(batch); err != nil {
		t.Fatal(err)
	}
}

// An event purged below the floor that arrives again as an outlier after
// its index entry went ahead of its row (unindex.go) is kept as an
// outlier, as it is when it arrives after the janitor: its row transaction
// leaves the outlier's entry alone, and nothing is left without one.
func TestUnindex_EventSentAgainBetweenEntryAndRow(t *testing.T) {
	withAndWithoutWindow(t, "again", func(t *testing.T, window int, s *projections.Store, r *testenv.Room, msgs []testenv.Event, seq uint64) {
		janitorStep(t, s, 1000) // with a window: filled
		janitorStep(t, s, 1000) // with a window: the entries only
		again := testenv.Event{}
		for k, v := range msgs[5] {
			again[k] = v
		}
		again["outlier"] = true
		apply(t, s, seq, again)
		drainJanitor(t, s)
		var got *projections.Row
		if err := s.View(r.ID, func(v *projections.RoomView) error {
			var err error
			got, err = v.Event(msgs[5].ID())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if window > 0 && got == nil {
			t.Errorf("the event sent again as an outlier cannot be read")
		}
		if err := s.CheckRelatedMarks(); err != nil {
			t.Error(err)
		}
	})
}

// A relation to a purged event applied after the janitor's window was
// filled makes the event a target: its entry is then left to its row, so
// that the relation's marks can still be found and removed (here by a
// redaction). Every mark ends where a relation needs it.
func TestUnindex_RelationToAPurgedEventAfterTheWindowFilled(t *testing.T) {
	withAndWithoutWindow(t, "rel", func(t *testing.T, _ int, s *projections.Store, r *testenv.Room, msgs []testenv.Event, seq uint64) {
		janitorStep(t, s, 1) // with a window: filled
		janitorStep(t, s, 1) // with a window: a few entries gone
		rel := r.Next("m.room.message", "@remote:other.org", nil, map[string]any{"body": "t",
			"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": msgs[9].ID()}})
		seq = apply(t, s, seq, rel)
		janitorStep(t, s, 1000) // with a window: the rest of the entries
		apply(t, s, seq, r.Next("m.room.redaction", "@remote:other.org", nil, map[string]any{"redacts": rel.ID()}))
		drainJanitor(t, s)
		if err := s.CheckRelatedMarks(); err != nil {
			t.Error(err)
		}
	})
}
