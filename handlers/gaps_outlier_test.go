package handlers_test

import (
	"testing"

	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// TestMessages_AnOutlierParentIsAGap: a parent held only as an outlier is
// a backward extremity (the history before a join over federation), and
// the page's MSC3871 gaps list it as they list an unknown parent; they
// counted it as held (RoomView.Holds takes outliers). From a helper's
// review.
func TestMessages_AnOutlierParentIsAGap(t *testing.T) {
	for _, outlierParent := range []bool{false, true} {
		name := map[bool]string{false: "unknown parent", true: "outlier parent"}[outlierParent]
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			r := testenv.NewRoom("outgap", "test")
			create := r.Create(alice)
			f.add(create)
			if outlierParent {
				f.add(testenv.Event{"event_id": "$parent9", "room_id": r.ID, "type": "m.room.member", "state_key": "@b:other.org",
					"sender": "@b:other.org", "origin_server_ts": int64(5), "depth": int64(9), "prev_events": []string{"$older8"},
					"content": map[string]any{"membership": "join"}, "outlier": true})
			}
			r.StartAt(10, "$parent9")
			f.add(r.Join(alice), r.Msg(alice, "after"))
			var back map[string]int64
			_ = f.store.View(r.ID, func(v *projections.RoomView) error { back = v.Extremities(true); return nil })
			m, e := f.read(r.ID, map[string]any{"admin": true, "dir": "b", "limit": 50})
			if e != nil {
				t.Fatal(e)
			}
			g, _ := m["org.matrix.msc3871.gaps"].([]any)
			t.Logf("backward extremities %v; gaps %v", back, g)
			if _, ok := back["$parent9"]; !ok {
				t.Fatalf("$parent9 is no backward extremity: %v", back)
			}
			if len(g) == 0 {
				t.Errorf("$parent9 is a backward extremity, but the page lists no gap")
			}
		})
	}
}
