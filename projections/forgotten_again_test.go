package projections_test

import (
	"testing"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// TestForgottenRooms_AgainAfterAPurgeOfTheOldTimeline (found by a review
// helper): Synapse's forget (handlers/room_member.py
// RoomMemberHandler.forget) schedules a purge_room task at now +
// forgotten_room_retention_period whenever the forget leaves the room
// locally forgotten, whatever earlier purges the room had. A room the
// forgotten-rooms job purged, whose new timeline (CONTRACT.md section 7) a
// local user joins, leaves and forgets again, is due one period after that
// forget, not only once the earlier purge_room's record has expired 7 days
// later.
func TestForgottenRooms_AgainAfterAPurgeOfTheOldTimeline(t *testing.T) {
	s := openWithServer(t)
	alice := "@alice:test"
	r := testenv.NewRoom("again", "test")
	next := apply(t, s, 1, append(r.Setup(alice, "@remote:other.org"), r.Member(alice, alice, "leave"))...)
	applyCmd(t, s, next, r.ID, "forget1", commands.ActionForget, map[string]any{"user_id": alice})
	next++
	if task := applyCmd(t, s, next, r.ID, "purge1", commands.ActionPurgeRoom, map[string]any{"force": false}); task.Status == commands.TaskFailed {
		t.Fatalf("purge_room: %+v", task)
	}
	next++
	out, err := s.ApplyBatch(0, []commands.LogEntry{entry(t, next, r.ID, commands.KindTask,
		map[string]any{"task_id": "purge1", "status": "complete"})})
	if err != nil || out[0].Result != projections.OutcomeApplied {
		t.Fatalf("complete: %+v, %v", out, err)
	}
	next++
	// The new timeline: alice is back, leaves and forgets again.
	next = apply(t, s, next, r.Member(alice, alice, "join"), r.Msg(alice, "new timeline"), r.Member(alice, alice, "leave"))
	applyCmd(t, s, next, r.ID, "forget2", commands.ActionForget, map[string]any{"user_id": alice})
	forgot := int64(1_700_000_000_000 + next) // the log time of forget2
	const period = 60_000                     // 1 minute
	got, err := s.ForgottenRooms("test", forgot+2*period, period)
	if err != nil || len(got) != 1 || got[0] != r.ID {
		t.Fatalf("two periods after the new forget: %v, %v; want %s (Synapse scheduled its purge_room one period after the forget)", got, err, r.ID)
	}
}
