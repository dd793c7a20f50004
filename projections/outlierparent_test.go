package projections_test

import (
	"slices"
	"testing"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// TestPurge_AKeptOutlierParentBackfilledAsInARebuild: a state event S
// that a purge keeps as an outlier is named by an event D logged after the
// purge (a remote server's stale forward extremity, a merge): S is a
// backward extremity at D's depth (an outlier parent); a read asks
// federation for S; its backfilled copy is below the floor and is
// dropped, which ends the entry. A rebuild from the log (janitor only at
// the end, buildFromLog) holds S as a timeline row when D and the copy are
// applied (the copy is a duplicate), and the final janitor's markExtremity
// made S a backward extremity at D's depth again: the two differed, until
// the copy ended S's edges too (endBelowFloor). From a helper's review.
func TestPurge_AKeptOutlierParentBackfilledAsInARebuild(t *testing.T) {
	for _, withCopy := range []bool{false, true} {
		t.Run(map[bool]string{false: "D only", true: "D then the backfilled copy"}[withCopy], func(t *testing.T) { keptOutlierParent(t, withCopy) })
	}
}

func keptOutlierParent(t *testing.T, withCopy bool) {
	r := testenv.NewRoom("keptparent", "test")
	setup := r.Setup("@alice:test", "@remote:other.org")
	msgs := remoteMsgs(r, 10)
	var state testenv.Event
	for _, ev := range setup {
		if _, ok := ev["state_key"]; ok && ev["type"] != "m.room.create" {
			state = ev
		}
	}
	params := purgeAt(msgs[6])
	d := r.Msg("@remote:other.org", "names the kept state event")
	d["prev_events"] = []any{msgs[9].ID(), state.ID()}
	backfilled := copyOf(state, false)
	backfilled["backfilled"] = true
	all := append(append([]testenv.Event{}, setup...), msgs...)

	live := openWithServer(t)
	next := apply(t, live, 1, all...)
	applyCmd(t, live, next, r.ID, "p", commands.ActionPurgeHistory, params)
	drainJanitor(t, live)
	apply(t, live, next+1, d)
	_ = live.View(r.ID, func(v *projections.RoomView) error {
		t.Logf("live, after D: backward extremities %v", v.Extremities(true))
		return nil
	})
	if withCopy {
		apply(t, live, next+2, backfilled)
	}
	_ = live.View(r.ID, func(v *projections.RoomView) error {
		t.Logf("live, after the backfilled copy: backward extremities %v", v.Extremities(true))
		return nil
	})

	// The log after the erasure: the remote messages below the cut-off
	// are gone; the state events stay. Janitor at the end, as buildFromLog.
	rebuilt := openWithServer(t)
	for i, ev := range all {
		if _, ok := ev["state_key"]; ok || slices.ContainsFunc(msgs[6:], func(k testenv.Event) bool { return k.ID() == ev.ID() }) {
			apply(t, rebuilt, uint64(i+1), ev)
		}
	}
	applyCmd(t, rebuilt, next, r.ID, "p", commands.ActionPurgeHistory, params)
	apply(t, rebuilt, next+1, d)
	if withCopy {
		apply(t, rebuilt, next+2, backfilled)
	}
	drainJanitor(t, rebuilt)
	_ = rebuilt.View(r.ID, func(v *projections.RoomView) error {
		t.Logf("rebuilt: backward extremities %v", v.Extremities(true))
		return nil
	})
	sameProjection(t, "live and rebuilt projections", live, rebuilt)
}

// TestPurge_ASweptOutlierParentBackfilledBeforeTheSweep: a remote outlier
// below the floor, logged before the purge, is named by an event D logged
// after it, before the janitor's sweep: it is a backward extremity; the
// backfilled copy a read asks for is dropped below the floor, deleting the
// entry; then the sweep deleted the outlier, and its markExtremity found D
// through the edge updateExtremities stored and made it a backward
// extremity again. A rebuild from the erased log applies D (parent
// unknown), drops the copy and has no row for the janitor to mark: no
// entry. The dropped copy now ends the edges too. From a helper's review.
func TestPurge_ASweptOutlierParentBackfilledBeforeTheSweep(t *testing.T) {
	r := testenv.NewRoom("sweptparent", "test")
	setup := r.Setup("@alice:test", "@remote:other.org")
	msgs := remoteMsgs(r, 10)
	out := testenv.Event{"event_id": "$fetched", "room_id": r.ID, "type": "m.room.message", "sender": "@remote:other.org",
		"origin_server_ts": int64(1), "depth": msgs[1]["depth"], "prev_events": []any{}, "content": map[string]any{}, "outlier": true}
	log := append(append(append([]testenv.Event{}, setup...), out), msgs...)
	params := purgeAt(msgs[5])
	d := r.Msg("@remote:other.org", "names the outlier")
	d["prev_events"] = []any{msgs[9].ID(), out.ID()}
	backfilled := copyOf(out, false)
	delete(backfilled, "outlier")
	backfilled["backfilled"] = true

	var items []logItem
	for _, ev := range log {
		items = append(items, logItem{ev: ev})
	}
	items = append(items, logItem{cmd: params}, logItem{ev: d}, logItem{ev: backfilled}) // before the janitor
	liveThenRebuild(t, r.ID, items, len(items))
}

// TestPurge_SoftFailedChildrenAsInARebuild: a soft-failed event names its
// parents as any other (its edges, SoftFailedEventsUpdateBackwardExtremities):
// one at the cut-off's depth that names a purged parent one level down
// makes that parent a backward extremity, live (the janitor's scan of the
// rows at the floor) as in a rebuild from the erased log (where the parent
// is unknown when the soft-failed event is applied). So does one far
// above that names a purged parent through an edge.
func TestPurge_SoftFailedChildrenAsInARebuild(t *testing.T) {
	r := testenv.NewRoom("softkids", "test")
	setup := r.Setup("@alice:test", "@remote:other.org")
	msgs := remoteMsgs(r, 10)
	// A side branch just below the cut-off that only the soft-failed
	// event names (msgs[5], also there, is named by msgs[6] anyway).
	side := r.Msg("@remote:other.org", "a side branch, purged")
	side["prev_events"], side["depth"] = []any{msgs[4].ID()}, msgs[5]["depth"]
	near := r.Msg("@remote:other.org", "soft-failed, one level above a purged parent")
	near["prev_events"], near["depth"], near["soft_failed"] = []any{side.ID()}, msgs[6]["depth"], true
	far := r.Msg("@remote:other.org", "soft-failed, far above a purged parent")
	far["prev_events"], far["soft_failed"] = []any{msgs[9].ID(), msgs[2].ID()}, true
	log := append(append(append([]testenv.Event{}, setup...), msgs...), side, near, far)
	params := purgeAt(msgs[6])

	var items []logItem
	for _, ev := range log {
		items = append(items, logItem{ev: ev})
	}
	items = append(items, logItem{cmd: params})
	back := backOf(liveThenRebuild(t, r.ID, items, len(items)), r.ID)
	if _, ok := back[side.ID()]; !ok {
		t.Errorf("backward extremities %v: the purged %s, named by the soft-failed event at the floor, is none", back, side.ID())
	}
	if _, ok := back[msgs[2].ID()]; !ok {
		t.Errorf("backward extremities %v: the purged %s, named by the soft-failed event far above, is none", back, msgs[2].ID())
	}
}
