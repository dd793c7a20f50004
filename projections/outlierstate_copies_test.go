package projections_test

import (
	"maps"
	"testing"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// TestApplyBatch_RejectedOrSoftFailedCopyKeepsOutlierState (found by a
// review helper): the state a join over federation brought (held as
// outliers) stays the room's state when a copy of one of those events
// arrives again without outlier but rejected or soft-failed. Synapse's
// _update_outliers_txn ignores a rejected copy altogether ("what we have is
// at least as good"), and a soft-failed copy leaves the join's state group
// as it was; the copy writes no state entry of its own, so deleting the
// outlier's left the room without its create (read as version 1) or power
// levels. From a review.
func TestApplyBatch_RejectedOrSoftFailedCopyKeepsOutlierState(t *testing.T) {
	for _, flag := range []string{"rejected", "soft_failed"} {
		t.Run(flag, func(t *testing.T) {
			r := testenv.NewRoom("outcopy"+flag, "other.org")
			create := r.Next("m.room.create", "@mod:other.org", testenv.S(""), map[string]any{"room_version": "10"})
			pl := r.Next("m.room.power_levels", "@mod:other.org", testenv.S(""), map[string]any{"users": map[string]any{"@mod:other.org": int64(100)}})
			create["outlier"], pl["outlier"] = true, true
			createCopy, plCopy := maps.Clone(create), maps.Clone(pl)
			delete(createCopy, "outlier")
			delete(plCopy, "outlier")
			createCopy[flag], plCopy[flag] = true, true
			var log []commands.LogEntry
			for i, ev := range []testenv.Event{create, pl, createCopy, plCopy} {
				log = append(log, entry(t, uint64(i+1), r.ID, commands.KindEvent, ev))
			}
			s := openWithServer(t)
			if _, err := s.ApplyBatch(0, log); err != nil {
				t.Fatal(err)
			}
			if err := s.View(r.ID, func(v *projections.RoomView) error {
				if version, ok := v.Version(); !ok || version != "10" {
					t.Errorf("version %q %v after a %s copy of the outlier create, want 10", version, ok, flag)
				}
				if st, ok := v.CurrentState("m.room.power_levels", ""); !ok || st.EventID != pl.ID() {
					t.Errorf("power levels %+v %v after a %s copy of the outlier, want %s", st, ok, flag, pl.ID())
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			whole, alone := wholeAndAlone(t, log)
			sameProjection(t, "one batch and one by one", whole, alone)
		})
	}
}

// TestPurge_OutlierStateLiveAndRebuilt: outlier state events below and
// above a purge's floor, their timeline copies (normal, rejected,
// soft-failed, backfilled) before and after the purge, with the janitor
// drained at every point: the live file and a rebuild from the erased
// log agree.
func TestPurge_OutlierStateLiveAndRebuilt(t *testing.T) {
	build := func() (string, []logItem) {
		r := testenv.NewRoom("outpurge", "test")
		var evs []testenv.Event
		evs = append(evs, r.Setup("@alice:test", "@remote:other.org")...)
		evs = append(evs, remoteMsgs(r, 3)...)
		o1 := r.Next("m.room.topic", "@remote:other.org", testenv.S(""), map[string]any{"topic": "below"})
		o2 := r.Next("m.room.member", "@bob:other.org", testenv.S("@bob:other.org"), map[string]any{"membership": "join"})
		o1["outlier"], o2["outlier"] = true, true
		evs = append(evs, o1, o2)
		b := remoteMsgs(r, 4)
		evs = append(evs, b...)
		o3 := r.Next("m.room.name", "@remote:other.org", testenv.S(""), map[string]any{"name": "above"})
		o4 := r.Next("m.room.member", "@carol:other.org", testenv.S("@carol:other.org"), map[string]any{"membership": "join"})
		o3["outlier"], o4["outlier"] = true, true
		evs = append(evs, o3, o4)
		c := remoteMsgs(r, 3)
		evs = append(evs, c...)
		var items []logItem
		for _, ev := range evs {
			items = append(items, logItem{ev: ev})
		}
		o2c := copyOf(o2, false) // joins before the purge
		items = append(items, logItem{ev: o2c})
		items = append(items, logItem{cmd: purgeAt(b[2])})
		o1c := copyOf(o1, false) // below the floor: dropped
		o3c := copyOf(o3, false)
		o3c["soft_failed"] = true
		o4c := copyOf(o4, false)
		o4c["backfilled"] = true
		items = append(items, logItem{ev: o1c}, logItem{ev: o3c}, logItem{ev: o4c})
		items = append(items, logItem{ev: r.Msg("@remote:other.org", "after")})
		return r.ID, items
	}
	roomID, items := build()
	for at := 0; at <= len(items); at++ {
		liveThenRebuild(t, roomID, items, at)
	}
}
