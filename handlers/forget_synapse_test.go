package handlers_test

import (
	"testing"

	"github.com/scrollback/scrollback/testenv"
)

// TestVisibility_ASoftFailedMembershipAfterTheForgetEndsIt (found by a
// review helper): Synapse stores a soft-failed event like any other (only
// rejected ones are left out of _update_metadata_tables_txn, events.py
// _store_rejected_events_txn), so a soft-failed m.room.member of the user
// applied after the forget inserts a room_memberships row with forgotten =
// 0 and did_forget (roommember.py) is false again; the user's current
// membership (local_current_membership, not moved by a soft-failed event)
// is still leave, so check_user_in_room_or_world_readable lets them read as
// a departed user.
func TestVisibility_ASoftFailedMembershipAfterTheForgetEndsIt(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("softforget", "test")
	evs := visRoom(r, "shared")
	evs = append(evs, r.Join(bob), r.Msg(alice, "one"), r.Member(bob, bob, "leave"))
	f.add(evs...)
	f.applyCmd(map[string]any{"id": "forgetsf", "action": "forget", "room_id": r.ID, "params": map[string]any{"user_id": bob}})
	if _, e := f.read(r.ID, map[string]any{"user_id": bob}); e == nil || e.Status != 403 {
		t.Fatalf("after forget: %v, want 403", e)
	}
	ban := r.Member("@mallory:other.org", bob, "ban")
	ban["soft_failed"] = true
	f.add(ban, r.Msg(alice, "after"))
	if _, e := f.read(r.ID, map[string]any{"user_id": bob, "dir": "b"}); e != nil {
		t.Fatalf("after a soft-failed membership of bob: %d %s %q, want 200 (did_forget is false again)", e.Status, e.Code, e.Message)
	}
}

// TestVisibility_AnOutlierJoiningTheTimelineAfterTheForgetKeepsIt (found
// by a review helper): an
// event first stored as an outlier has its room_memberships row from
// then on; a forget after it marks that row forgotten, and when the
// event later joins the timeline (events.py _update_outliers_txn) no new
// row is written, so did_forget stays true and the user, whose current
// membership is still leave, gets 403.
func TestVisibility_AnOutlierJoiningTheTimelineAfterTheForgetKeepsIt(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("outforget", "test")
	evs := visRoom(r, "shared")
	evs = append(evs, r.Join(bob), r.Msg(alice, "one"), r.Member(bob, bob, "leave"))
	kick := r.Member(alice, bob, "leave")
	out := testenv.Event{}
	for k, v := range kick {
		out[k] = v
	}
	out["outlier"] = true
	f.add(append(evs, out)...)
	f.applyCmd(map[string]any{"id": "forgetout", "action": "forget", "room_id": r.ID, "params": map[string]any{"user_id": bob}})
	f.add(kick, r.Msg(alice, "after"))
	if _, e := f.read(r.ID, map[string]any{"user_id": bob, "dir": "b"}); e == nil || e.Status != 403 {
		t.Fatalf("after the outlier joined the timeline: %v, want 403 (did_forget is still true)", e)
	}
}
