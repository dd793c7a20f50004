package projections_test

import (
	"testing"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// TestPurgeHistory_BackfilledEventIsNoForwardExtremity (found by a review
// helper): Synapse never changes a room's forward extremities for
// backfilled events
// (synapse/storage/controllers/persist_events.py _persist_event_batch:
// the new extremities are computed only `if not backfilled`). A
// backfilled event that no stored event names (here one a remote
// returned that names the room's latest event) is therefore not a
// forward extremity, and the purge guard (_purge_history_txn) still
// sees the live latest event: a purge up to the backfilled event's depth
// fails with "topological_ordering is greater than forward extremities",
// instead of deleting the room's latest live event.
func TestPurgeHistory_BackfilledEventIsNoForwardExtremity(t *testing.T) {
	s := openWithServer(t)
	r := testenv.NewRoom("bfext", "test")
	evs := append(r.Setup("@alice:test", "@remote:other.org"), remoteMsgs(r, 3)...)
	last := evs[len(evs)-1]
	bf := r.Msg("@remote:other.org", "backfilled, naming the latest event")
	bf["backfilled"] = true
	seq := apply(t, s, 1, append(evs, bf)...)
	_ = s.View(r.ID, func(v *projections.RoomView) error {
		fwd := v.Extremities(false)
		if _, ok := fwd[last.ID()]; !ok || len(fwd) != 1 {
			t.Errorf("forward extremities %v, want only the latest live event %s (backfilled events do not change them)", fwd, last.ID())
		}
		return nil
	})
	task := applyCmd(t, s, seq, r.ID, "bfpurge", commands.ActionPurgeHistory, purgeAt(bf))
	if task == nil || task.Status != commands.TaskFailed || task.Error != projections.ErrTextAboveExtremities {
		t.Fatalf("purge up to the backfilled event: %+v, want failed with %q", task, projections.ErrTextAboveExtremities)
	}
}
