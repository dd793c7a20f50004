package projections_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// logItem is a log message: an event, or (cmd != nil) a purge_history.
type logItem struct {
	ev  testenv.Event
	cmd map[string]any
}

// replay applies items from seq 1 on, skipping the sequences in skip;
// janitorAt >= 0 drains the janitor before item janitorAt (len(items): at
// the end). A command is a purge_history with the task ID p<seq>, or,
// with a task_id, a TaskUpdate (the runner's confirmation of a waiting
// purge, which releases a later purge's erasures).
func replay(t *testing.T, s *projections.Store, roomID string, items []logItem, skip []uint64, janitorAt int) {
	t.Helper()
	for i, it := range items {
		if i == janitorAt {
			drainJanitor(t, s)
		}
		seq := uint64(i + 1)
		if slices.Contains(skip, seq) {
			continue
		}
		if _, ok := it.cmd["task_id"]; ok {
			out, err := s.ApplyBatch(0, []commands.LogEntry{entry(t, seq, roomID, commands.KindTask, it.cmd)})
			if err != nil || out[0].Result != projections.OutcomeApplied {
				t.Fatalf("update %v: %v %v", it.cmd, err, out)
			}
		} else if it.cmd != nil {
			applyCmd(t, s, seq, roomID, fmt.Sprintf("p%d", seq), commands.ActionPurgeHistory, it.cmd)
		} else {
			apply(t, s, seq, it.ev)
		}
	}
	if janitorAt >= len(items) {
		drainJanitor(t, s)
	}
}

func backOf(s *projections.Store, roomID string) map[string]int64 {
	var out map[string]int64
	_ = s.View(roomID, func(v *projections.RoomView) error { out = v.Extremities(true); return nil })
	return out
}

func fwdOf(s *projections.Store, roomID string) map[string]int64 {
	var out map[string]int64
	_ = s.View(roomID, func(v *projections.RoomView) error { out = v.Extremities(false); return nil })
	return out
}

// liveThenRebuild runs items live with the janitor drained before item
// janitorAt, then rebuilds from the log less what the live store erased
// (janitor at the end, as buildFromLog), compares, and returns the live
// store.
func liveThenRebuild(t *testing.T, roomID string, items []logItem, janitorAt int) *projections.Store {
	t.Helper()
	live := openWithServer(t)
	replay(t, live, roomID, items, nil, janitorAt)
	drainJanitor(t, live)
	er, err := live.PendingErasures(1000, true)
	if err != nil {
		t.Fatal(err)
	}
	rebuilt := openWithServer(t)
	replay(t, rebuilt, roomID, items, er.Seqs, len(items))
	t.Logf("erased %v; live back %v; rebuilt back %v", er.Seqs, backOf(live, roomID), backOf(rebuilt, roomID))
	sameProjection(t, "live and rebuilt from the erased log", live, rebuilt)
	return live
}

// TestExtremities_KeptStateParentAtFloorCopyAfterJanitor: a remote state
// event S one level below the floor, which the purge keeps as an outlier,
// named by the row at the floor. Live, the janitor makes S a backward
// extremity (markExtremity's scan of the rows at the floor); a backfilled
// copy of S then comes and is dropped below the floor (endBelowFloor): no
// entry. A rebuild applies the copy as a duplicate of S's row, then its
// janitor keeps S as an outlier, and its scan made S a backward extremity
// again from the same row: the copy now marks S ended (bEnded), and only
// children logged after it count. One logged after it opens the gap
// again, live as in the rebuild. From a helper's review.
func TestExtremities_KeptStateParentAtFloorCopyAfterJanitor(t *testing.T) {
	for _, later := range []bool{false, true} {
		t.Run(map[bool]string{false: "the copy last", true: "a child after the copy"}[later], func(t *testing.T) {
			r := testenv.NewRoom("keptfloor", "test")
			setup := r.Setup("@alice:test", "@remote:other.org")
			a := remoteMsgs(r, 4)
			s := r.Next("m.room.topic", "@remote:other.org", testenv.S(""), map[string]any{"topic": "kept"})
			b := remoteMsgs(r, 5)
			var items []logItem
			for _, ev := range append(append(append(append([]testenv.Event{}, setup...), a...), s), b...) {
				items = append(items, logItem{ev: ev})
			}
			janitorAt := len(items) + 1
			cp := copyOf(s, false)
			cp["backfilled"] = true
			items = append(items, logItem{cmd: purgeAt(b[0])}, logItem{ev: cp})
			if later {
				c := r.Msg("@remote:other.org", "a later child at the floor")
				c["prev_events"], c["depth"] = []any{s.ID()}, b[0]["depth"]
				items = append(items, logItem{ev: c})
			}
			liveThenRebuild(t, r.ID, items, janitorAt)
			if later {
				live := openWithServer(t)
				replay(t, live, r.ID, items, nil, janitorAt)
				if _, ok := backOf(live, r.ID)[s.ID()]; !ok {
					t.Errorf("backward extremities %v: the later child's parent %s is none", backOf(live, r.ID), s.ID())
				}
			}
		})
	}
}

// TestExtremities_DeletedRowCopyBeforeJanitor: D, logged after the purge,
// names a remote message P far below the floor that is still a row. A
// backfilled copy of P comes before the janitor reaches it: a duplicate,
// recorded as an extra message of P, which the janitor erases with P. A
// rebuild from the erased log applies D with P unknown: P is a backward
// extremity. So it must stay one live: the copy of a row the purge
// deletes does not end its gap (endBelowFloor), as its effect would
// outlast its erasure. From a helper's review.
func TestExtremities_DeletedRowCopyBeforeJanitor(t *testing.T) {
	r := testenv.NewRoom("delcopy", "test")
	setup := r.Setup("@alice:test", "@remote:other.org")
	msgs := remoteMsgs(r, 10)
	d := r.Msg("@remote:other.org", "names a purged message")
	d["prev_events"] = []any{msgs[9].ID(), msgs[2].ID()}
	cp := copyOf(msgs[2], false)
	cp["backfilled"] = true
	var items []logItem
	for _, ev := range append(append([]testenv.Event{}, setup...), msgs...) {
		items = append(items, logItem{ev: ev})
	}
	items = append(items, logItem{cmd: purgeAt(msgs[6])}, logItem{ev: d}, logItem{ev: cp})
	liveThenRebuild(t, r.ID, items, len(items))
}

// TestExtremities_SoftFailedChildKeepsLateParentOffForwardExtremities: a
// soft-failed S names E, not held; E then arrives as a new (live) event
// naming the room's forward extremity. Synapse's
// _calculate_new_extremities adds E and _get_events_which_are_prevs leaves
// out soft-failed children: E is a forward extremity. S's
// backward-extremity entry for E must not count as "a stored event names
// this one", or the room is left with no forward extremity at all and the
// purge guard passes anything. From a helper's review.
func TestExtremities_SoftFailedChildKeepsLateParentOffForwardExtremities(t *testing.T) {
	st := testenv.NewStore(t)
	r := testenv.NewRoom("softfwd", "test")
	setup := r.Setup("@a:test")
	last := setup[len(setup)-1]
	e := r.Msg("@b:other.org", "late parent")
	sf := r.Msg("@b:other.org", "soft-failed child")
	sf["soft_failed"] = true
	next := apply(t, st, 1, setup...)
	next = apply(t, st, next, sf)
	apply(t, st, next, e)
	fwd := fwdOf(st, r.ID)
	t.Logf("forward %v, backward %v", fwd, backOf(st, r.ID))
	if _, ok := fwd[e.ID()]; !ok {
		t.Errorf("forward extremities %v: want %s (its only child is soft-failed); %s was the room's last", fwd, e.ID(), last.ID())
	}
	// The purge guard then passes a purge above every event of the room.
	above := map[string]any{"token": fmt.Sprintf("t%d-0", e["depth"].(int64)+5)}
	task := applyCmd(t, st, next+1, r.ID, "p", commands.ActionPurgeHistory, above)
	if task.Error != projections.ErrTextAboveExtremities {
		t.Errorf("a purge above every event: task %s %q, want refused (%s)", task.Status, task.Error, projections.ErrTextAboveExtremities)
	}
}

// TestExtremities_SoftFailedChainLinkBatchAgrees: soft-failed events between
// normal ones in one transaction (the chain link held back) give what
// one message per transaction gives.
func TestExtremities_SoftFailedChainLinkBatchAgrees(t *testing.T) {
	r := testenv.NewRoom("softbatch", "test")
	evs := r.Setup("@a:test")
	l := r.Msg("@a:test", "L")
	s1 := r.Msg("@b:other.org", "soft, names L")
	s1["soft_failed"] = true
	n := r.Msg("@a:test", "N names s1")
	r.StartAt(n["depth"].(int64)+2, "$x")
	s2 := r.Msg("@b:other.org", "soft, names unknown $x")
	s2["soft_failed"] = true
	x := testenv.Event{"event_id": "$x", "room_id": r.ID, "type": "m.room.message", "sender": "@b:other.org",
		"origin_server_ts": int64(7), "depth": n["depth"].(int64) + 1, "prev_events": []any{n.ID()}, "content": map[string]any{}, "soft_failed": true}
	r.StartAt(s2["depth"].(int64)+1, s2.ID(), l.ID())
	m := r.Msg("@a:test", "M names s2 and L")
	evs = append(evs, l, s1, n, s2, x, m)
	var log []commands.LogEntry
	for i, ev := range evs {
		log = append(log, entry(t, uint64(i+1), r.ID, commands.KindEvent, ev))
	}
	whole, alone := wholeAndAlone(t, log)
	t.Logf("fwd %v back %v", fwdOf(whole, r.ID), backOf(whole, r.ID))
	sameProjection(t, "one batch and one by one", whole, alone)
}

// wholeAndAlone applies log to two stores: in one batch (one
// transaction), and one message per transaction.
func wholeAndAlone(t *testing.T, log []commands.LogEntry) (whole, alone *projections.Store) {
	t.Helper()
	whole, alone = openWithServer(t), openWithServer(t)
	if _, err := whole.ApplyBatch(0, log); err != nil {
		t.Fatal(err)
	}
	for _, e := range log {
		if _, err := alone.ApplyBatch(0, []commands.LogEntry{e}); err != nil {
			t.Fatal(err)
		}
	}
	return whole, alone
}
