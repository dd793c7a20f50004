package projections_test

import (
	"testing"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// TestApplyBatch_OutlierStateIsState: a state event held as an outlier
// (the state a join over federation brings) is the room's state; rejected
// and soft-failed ones are not. When the outlier joins the timeline its
// entry moves to the timeline row's position, so the event does not
// replace itself (prev_content), and a rebuild gives the same.
func TestApplyBatch_OutlierStateIsState(t *testing.T) {
	r := testenv.NewRoom("outstate", "other.org")
	create := r.Next("m.room.create", "@mod:other.org", testenv.S(""), map[string]any{"room_version": "10"})
	pl := r.Next("m.room.power_levels", "@mod:other.org", testenv.S(""), map[string]any{"users": map[string]any{"@mod:other.org": int64(100)}})
	rejected := r.Next("m.room.topic", "@mod:other.org", testenv.S(""), map[string]any{"topic": "rejected"})
	rejected["rejected"] = true
	soft := r.Next("m.room.name", "@mod:other.org", testenv.S(""), map[string]any{"name": "soft"})
	soft["soft_failed"] = true
	for _, ev := range []testenv.Event{create, pl, rejected, soft} {
		ev["outlier"] = true
	}
	// The power levels join the timeline later (published again without
	// outlier).
	again := testenv.Event{}
	for k, v := range pl {
		again[k] = v
	}
	delete(again, "outlier")
	var log []commands.LogEntry
	for i, ev := range []testenv.Event{create, pl, rejected, soft, again} {
		log = append(log, entry(t, uint64(i+1), r.ID, commands.KindEvent, ev))
	}
	s := openWithServer(t)
	if _, err := s.ApplyBatch(0, log[:4]); err != nil {
		t.Fatal(err)
	}
	view := func(fn func(v *projections.RoomView)) {
		t.Helper()
		if err := s.View(r.ID, func(v *projections.RoomView) error { fn(v); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	view(func(v *projections.RoomView) {
		if version, ok := v.Version(); !ok || version != "10" {
			t.Errorf("version %q %v, want 10 from the outlier create", version, ok)
		}
		if st, ok := v.CurrentState("m.room.power_levels", ""); !ok || st.EventID != pl.ID() {
			t.Errorf("power levels %+v %v, want the outlier's", st, ok)
		}
		for _, typ := range []string{"m.room.topic", "m.room.name"} {
			if st, ok := v.CurrentState(typ, ""); ok {
				t.Errorf("%s: %+v is state, but rejected or soft-failed", typ, st)
			}
		}
	})
	if _, err := s.ApplyBatch(0, log[4:]); err != nil {
		t.Fatal(err)
	}
	view(func(v *projections.RoomView) {
		h, _ := v.StateHistory("m.room.power_levels", "", 10)
		if len(h) != 1 || h[0].EventID != pl.ID() || h[0].Stream != 5 {
			t.Fatalf("power levels' state entries %+v, want one at stream 5", h)
		}
		if st, ok := v.StateBefore("m.room.power_levels", "", h[0].Depth, h[0].Stream); ok {
			t.Errorf("the power levels replace %+v: themselves", st)
		}
	})
	whole, alone := wholeAndAlone(t, log)
	sameProjection(t, "live and one batch", s, whole)
	sameProjection(t, "live and one by one", s, alone)
}
