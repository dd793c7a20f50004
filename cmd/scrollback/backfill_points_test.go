package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/scrollback/scrollback/testenv"
)

// TestBackfill_AnExtremityNamedFromTwoDepths: Synapse's
// get_backfill_points_in_room (storage/databases/main/event_federation.py)
// joins each backward extremity with every event that names it
// (event_edges), one row per successor at that successor's depth, keeps
// the rows with depth <= current_depth + 100, and _maybe_backfill_inner
// (handlers/federation.py) sorts them by |current_depth - depth|. So an
// extremity named by a merge far above (depth 300) and by a fork event
// near the read (depth 11) is a backfill point for a read at depth 20 by
// its near successor. scrollback kept one depth per extremity, the first
// successor's, whichever that was in log order.
// Found by a review helper.
func TestBackfill_AnExtremityNamedFromTwoDepths(t *testing.T) {
	m := backfillMain(t, 2*time.Second)
	fed := testenv.NewFederation(t, m.NC, m.publisher().Subjects)
	r := testenv.NewRoom("twosucc", "test")
	full := r.Setup(alice)
	for len(full) < 299 { // full[i] has depth i+1
		full = append(full, r.Msg("@remote:other.org", fmt.Sprint(len(full))))
	}
	x := full[9] // depth 10: the room never gets it
	r.StartAt(300, full[298].ID(), x.ID())
	merge := r.Msg("@remote:other.org", "merge")
	fed.Serve(r.ID, append(append([]testenv.Event{}, full...), merge)...)
	// The merge names x first (its extremity is at depth 300); full[10],
	// at depth 11, arrives late and names it too.
	local := append(append(append([]testenv.Event{}, full[:9]...), full[11:]...), merge, full[10])
	seqs := m.publisher().Publish(t, local...)
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	// Depths 20..1 without 10: 19 events for a limit of 30, a short page,
	// so Synapse backfills x in the foreground and reads the page again.
	p, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 30, "from": "t20-999999999"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := chunkIDs(p), rev(ids(full[:20])); !same(got, want) {
		t.Fatalf("page from depth 20 (backfill requests %v):\n got  %v\n want %v", fed.Requests(), got, want)
	}
}

// TestBackfill_OnlyTheFiftyDeepestPointsAreCandidates: Synapse's
// _maybe_backfill_inner asks get_backfill_points_in_room for 50 points
// (ORDER BY depth DESC, event_id DESC LIMIT 50, among those at most 100
// above the read), and only then sorts them by distance to the read. With
// 50 forks whose parents are missing at depths 151-200, a read at depth
// 100 asks about the five at 151-155; the gap at depth 90, though closer,
// is not among the 50 deepest. scrollback sorted every point by distance.
func TestBackfill_OnlyTheFiftyDeepestPointsAreCandidates(t *testing.T) {
	m := backfillMain(t, 2*time.Second)
	fed := testenv.NewFederation(t, m.NC, m.publisher().Subjects)
	r := testenv.NewRoom("fifty", "test")
	full := r.Setup(alice)
	for len(full) < 200 { // full[i] has depth i+1
		full = append(full, r.Msg("@remote:other.org", fmt.Sprint(len(full))))
	}
	fed.Serve(r.ID, full...)
	local := append(append([]testenv.Event{}, full[:88]...), full[89:]...) // depth 89 missing
	var want []any
	for d := int64(151); d <= 200; d++ {
		missing := fmt.Sprintf("$missing.%d", d)
		if d <= 155 {
			want = append(want, missing)
		}
		r.StartAt(d, missing)
		local = append(local, r.Msg("@remote:other.org", "fork"))
	}
	seqs := m.publisher().Publish(t, local...)
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	// Depths 100..91: a full page without gaps, so a background backfill.
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 10, "from": "t100-999999999"}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "a backfill request", func() bool { return len(fed.Requests()) > 0 })
	got, _ := fed.Requests()[0]["event_ids"].([]any)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("asked about %v, want %v (the nearest of the 50 deepest points; %s at depth 90 is not one)", got, want, full[88].ID())
	}
}
