package projections_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/testenv"
)

// TestExtremities_LaterDeleteLocalPurgeErasesTheEndingCopy: a local
// message E below the floor of a purge that keeps local events; a copy of
// E comes before the janitor: a duplicate of a row this purge does not
// delete, so it ends E's gap (endBelowFloor marks E ended) and is recorded
// as an extra message of E. A later purge with delete_local_events deletes
// E and erases the copy with it. A rebuild from the erased log never sees
// the copy: E's kept child K makes E a backward extremity, and so it must
// live: the janitor drops the mark with the copy it erases, and E's edges
// stayed. From a helper's review.
func TestExtremities_LaterDeleteLocalPurgeErasesTheEndingCopy(t *testing.T) {
	for _, c := range []struct{ atFloor, higher bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		atFloor := c.atFloor
		t.Run(fmt.Sprintf("child at the floor %v, second purge higher %v", c.atFloor, c.higher), func(t *testing.T) {
			r := testenv.NewRoom("laterlocal", "test")
			setup := r.Setup("@alice:test", "@remote:other.org")
			e := r.Msg("@alice:test", "local E")
			a := remoteMsgs(r, 3)
			var cut testenv.Event
			if atFloor {
				cut = a[0] // depth E+1: a[0] names E, no edge
			} else {
				cut = a[2]
			}
			k := r.Msg("@remote:other.org", "K names E")
			k["prev_events"] = []string{a[2].ID(), e.ID()} // an edge: E is not one level up
			tail := remoteMsgs(r, 2)
			cut2 := cut
			if c.higher {
				cut2 = k // K stays, at the floor
			}
			var items []logItem
			for _, ev := range slices.Concat(setup, []testenv.Event{e}, a, []testenv.Event{k}, tail) {
				items = append(items, logItem{ev: ev})
			}
			p1 := fmt.Sprintf("p%d", len(items)+1)
			items = append(items,
				logItem{cmd: purgeAt(cut)},
				logItem{cmd: map[string]any{"task_id": p1, "status": "scheduled"}}, // the runner's confirmation
				logItem{ev: copyOf(e, false)},
				logItem{cmd: map[string]any{"token": purgeAt(cut2)["token"], "delete_local_events": true}},
			)
			for _, at := range []int{len(items), len(items) - 1} { // the janitor at the end, or before the second purge
				t.Run(fmt.Sprint("janitor before item ", at), func(t *testing.T) { liveThenRebuild(t, r.ID, items, at) })
			}
		})
	}
}

// TestExtremities_CopyAndChildrenInOneBatch: the copy from below the floor and
// children of its event before and after it, in one transaction (one
// batch), then the janitor, give what one message per transaction gives.
func TestExtremities_CopyAndChildrenInOneBatch(t *testing.T) {
	r := testenv.NewRoom("onebatch", "test")
	setup := r.Setup("@alice:test", "@remote:other.org")
	a := remoteMsgs(r, 4)
	s := r.Next("m.room.topic", "@remote:other.org", testenv.S(""), map[string]any{"topic": "kept"})
	b := remoteMsgs(r, 5)
	before := r.Msg("@remote:other.org", "before the copy, at the floor")
	before["prev_events"], before["depth"] = []string{s.ID()}, b[0]["depth"]
	after := r.Msg("@remote:other.org", "after the copy, at the floor")
	after["prev_events"], after["depth"] = []string{s.ID()}, b[0]["depth"]
	bf := copyOf(after, false)
	bf["event_id"], bf["backfilled"] = "$bf", true
	cp := copyOf(s, false)
	cp["backfilled"] = true
	var log []commands.LogEntry
	seq := uint64(1)
	for _, ev := range slices.Concat(setup, a, []testenv.Event{s}, b) {
		log = append(log, entry(t, seq, r.ID, commands.KindEvent, ev))
		seq++
	}
	log = append(log, entry(t, seq, r.ID, commands.KindCmd, map[string]any{"id": "p", "action": commands.ActionPurgeHistory, "room_id": r.ID, "params": purgeAt(b[0])}))
	seq++
	for _, ev := range []testenv.Event{before, cp, bf} {
		log = append(log, entry(t, seq, r.ID, commands.KindEvent, ev))
		seq++
	}
	whole, alone := wholeAndAlone(t, log)
	drainJanitor(t, whole)
	drainJanitor(t, alone)
	t.Logf("back %v / %v", backOf(whole, r.ID), backOf(alone, r.ID))
	sameProjection(t, "one batch and one by one", whole, alone)
	if _, ok := backOf(whole, r.ID)[s.ID()]; !ok {
		t.Errorf("backward extremities %v: the backfilled child after the copy names %s", backOf(whole, r.ID), s.ID())
	}
}
