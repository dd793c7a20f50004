package projections_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// TestPurgeHistory_ApplyCommand_DecidedPassIgnoresTheGuard pins that a
// purge_history whose first TaskUpdate in the log says it passed the
// forward-extremity guard (commands.LogEntry.Decided, an "active" update of
// the task runner) passes again in a projection where the history it was
// decided on is gone: a later purge erased the room's forward extremity of
// the time, and a rebuild from that log must not fail a purge that ran
// (applyPurgeHistory evaluates the guard only when no update decides it).
// The same command with no update is refused, which shows the guard would
// fail on this history.
func TestPurgeHistory_ApplyCommand_DecidedPassIgnoresTheGuard(t *testing.T) {
	r := testenv.NewRoom("decided", "test")
	setup := r.Setup("@alice:test", "@remote:other.org")
	msgs := remoteMsgs(r, 5)
	cut := msgs[4]
	rebuilt := func(decided map[string]*commands.TaskUpdate) (*projections.Store, *commands.Task) {
		s := openWithServer(t)
		// The log after the erasures: the state events stay; the remote
		// messages, the forward extremity among them, were erased.
		seq := apply(t, s, 1, setup...) + uint64(len(msgs))
		e := entry(t, seq, r.ID, commands.KindCmd, map[string]any{"id": "p1", "action": commands.ActionPurgeHistory,
			"room_id": r.ID, "params": purgeAt(cut)})
		e.Decided = decided
		out, err := s.ApplyBatch(0, []commands.LogEntry{e})
		if err != nil {
			t.Fatal(err)
		}
		if out[0].Result != projections.OutcomeApplied || out[0].Task == nil {
			t.Fatalf("purge: %s %s", out[0].Result, out[0].Reason)
		}
		return s, out[0].Task
	}
	if _, task := rebuilt(nil); task.Status != commands.TaskFailed || task.Error != projections.ErrTextAboveExtremities {
		t.Fatalf("undecided purge above the rebuilt room's extremities: %s %q, want the guard's failure", task.Status, task.Error)
	}
	s, task := rebuilt(map[string]*commands.TaskUpdate{"p1": {TaskID: "p1", Status: commands.TaskActive}})
	if task.Status != commands.TaskScheduled || task.Error != "" {
		t.Fatalf("purge the log says passed: %s %q, want scheduled", task.Status, task.Error)
	}
	if p, err := s.PurgeProgress(r.ID); err != nil || p.Floor != cut["depth"].(int64) {
		t.Fatalf("floor after the decided purge: %+v, %v; want %d", p, err, cut["depth"])
	}
}

// TestPurgeHistory_ApplyCommand_LowerDeleteLocalCutoffKeepsTheHigher pins
// that a later purge_history with delete_local_events and a lower cut-off
// does not lower the depth below which local events are deleted: the local
// messages between the two cut-offs, which the first purge deletes, stay
// deleted (not kept as outliers, readable by ID) and their log messages
// are erased, whether the janitor ran between the purges or not.
func TestPurgeHistory_ApplyCommand_LowerDeleteLocalCutoffKeepsTheHigher(t *testing.T) {
	for _, janitorBetween := range []bool{false, true} {
		t.Run(fmt.Sprint("janitor between=", janitorBetween), func(t *testing.T) {
			s := openWithServer(t)
			r := testenv.NewRoom("lower", "test")
			evs := r.Setup("@alice:test")
			var msgs []testenv.Event
			for i := range 10 {
				msgs = append(msgs, r.Msg("@alice:test", fmt.Sprint(i)))
			}
			next := apply(t, s, 1, append(evs, msgs...)...)
			applyCmd(t, s, next, r.ID, "p1", commands.ActionPurgeHistory, map[string]any{"token": fmt.Sprintf("t%d-0", msgs[8]["depth"]), "delete_local_events": true})
			if janitorBetween {
				drainJanitor(t, s)
			}
			applyCmd(t, s, next+1, r.ID, "p2", commands.ActionPurgeHistory, map[string]any{"token": fmt.Sprintf("t%d-0", msgs[2]["depth"]), "delete_local_events": true})
			check := func(when string) {
				_ = s.View(r.ID, func(v *projections.RoomView) error {
					if row, _ := v.Event(msgs[5].ID()); row != nil {
						t.Errorf("%s: local message below p1's cut-off returned by ID after p2's lower cut-off", when)
					}
					return nil
				})
			}
			check("before the janitor")
			drainJanitor(t, s)
			check("after the janitor")
			projections.ConfirmAll(t, s)
			if er, _ := s.PendingErasures(100, true); len(er.Seqs) != 8 {
				t.Errorf("erasures %v, want the 8 local messages below p1's cut-off", er.Seqs)
			}
		})
	}
}

// TestPurgeHistory_ApplyCommand_TokenAfterAPurgeRoomSetsTheFloor pins the
// bounds of staleToken: after a purge_room, a purge_history token without
// a stream position (t<depth>-0), or one naming the purge_room's own log
// position (not logged before it), is a cut-off of the new timeline: the
// purge is scheduled and its depth becomes the room's floor. Only a token
// logged strictly before the purge_room is stale (completed, no floor;
// TestPurgeHistory_TokenFromBeforeAPurgeRoom).
func TestPurgeHistory_ApplyCommand_TokenAfterAPurgeRoomSetsTheFloor(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stream func(resetSeq uint64) uint64
	}{
		{"no stream position", func(uint64) uint64 { return 0 }},
		{"the purge_room's position", func(resetSeq uint64) uint64 { return resetSeq }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openWithServer(t)
			r := testenv.NewRoom("reset", "test")
			next := apply(t, s, 1, append(r.Setup("@alice:test"), remoteMsgs(r, 10)...)...)
			resetSeq := next
			applyCmd(t, s, resetSeq, r.ID, "pr", commands.ActionPurgeRoom, map[string]any{"force": true})
			fresh := testenv.NewRoom("reset", "test")
			again := append(fresh.Setup("@bob:test"), remoteMsgs(fresh, 5)...)
			next = apply(t, s, resetSeq+1, again...)
			cut := again[len(again)-2]
			tok := fmt.Sprintf("t%d-%d", cut["depth"], tc.stream(resetSeq))
			task := applyCmd(t, s, next, r.ID, "p", commands.ActionPurgeHistory, map[string]any{"token": tok})
			if task.Status != commands.TaskScheduled {
				t.Fatalf("purge %s of the new timeline: %s %q, want scheduled", tok, task.Status, task.Error)
			}
			if p, _ := s.PurgeProgress(r.ID); p.Floor != cut["depth"].(int64) {
				t.Errorf("floor after purge %s: %d, want %d", tok, p.Floor, cut["depth"])
			}
		})
	}
}

// TestPurgeHistory_Event_RemoteEventAtTheCutoffStaysReadable pins Synapse's
// strict selection (topological_ordering < cut-off, SYNAPSE.md 6.4): a
// remote, non-state event at the cut-off depth itself is kept, so a look-up
// by ID (RoomView.Event, FindEvent, which the admin API's purge by
// event_id uses) still finds it, before the janitor and after it.
func TestPurgeHistory_Event_RemoteEventAtTheCutoffStaysReadable(t *testing.T) {
	s := openWithServer(t)
	r := testenv.NewRoom("atcut", "test")
	msgs := remoteMsgs(r, 6)
	next := apply(t, s, 1, append(r.Setup("@alice:test", "@remote:other.org"), msgs...)...)
	cut := msgs[3]
	if task := applyCmd(t, s, next, r.ID, "p", commands.ActionPurgeHistory, purgeAt(cut)); task.Status != commands.TaskScheduled {
		t.Fatalf("purge: %s %q", task.Status, task.Error)
	}
	check := func(when string) {
		t.Helper()
		_ = s.View(r.ID, func(v *projections.RoomView) error {
			if row, _ := v.Event(cut.ID()); row == nil {
				t.Errorf("%s: the remote event at the cut-off depth is not returned by its ID", when)
			}
			if row, _ := v.Event(msgs[2].ID()); row != nil {
				t.Errorf("%s: the remote event below the cut-off is returned by its ID", when)
			}
			return nil
		})
		if info, ok, err := s.FindEvent(r.ID, cut.ID()); err != nil || !ok || info.Depth != cut["depth"].(int64) {
			t.Errorf("%s: FindEvent(cut-off) = %+v, %v, %v", when, info, ok, err)
		}
	}
	check("before the janitor")
	drainJanitor(t, s)
	check("after the janitor")
}

// TestForgottenRooms_ForgetDuringAnActiveDeletion pins that a forget
// applied while a deletion of the room is active (its kicks ask the
// homeserver to forget the room for each local member) is the deletion's
// own forget (Synapse's do_not_schedule_purge): a deletion with purge
// false keeps the room's history, and the forgotten-rooms job never lists
// it, though its task has ended before the job looks.
func TestForgottenRooms_ForgetDuringAnActiveDeletion(t *testing.T) {
	s := openWithServer(t)
	alice := "@alice:test"
	r := testenv.NewRoom("kept", "test")
	next := apply(t, s, 1, r.Setup(alice, "@remote:other.org")...)
	applyCmd(t, s, next, r.ID, "del", commands.ActionShutdownAndPurgeRoom, map[string]any{"purge": false})
	next++
	update := func(status string) {
		t.Helper()
		out, err := s.ApplyBatch(0, []commands.LogEntry{entry(t, next, r.ID, commands.KindTask,
			map[string]any{"task_id": "del", "status": status, "ts": int64(1_700_000_000_000 + next)})})
		if err != nil || out[0].Result != projections.OutcomeApplied {
			t.Fatalf("%s: %+v, %v", status, out, err)
		}
		next++
	}
	update(commands.TaskActive)
	next = apply(t, s, next, r.Member(alice, alice, "leave"))
	applyCmd(t, s, next, r.ID, "forget", commands.ActionForget, map[string]any{"user_id": alice})
	forgot := int64(1_700_000_000_000 + next)
	next++
	update(commands.TaskComplete)
	const period = 60_000
	if got, err := s.ForgottenRooms("test", forgot+2*period, period); err != nil || len(got) != 0 {
		t.Errorf("two periods after the deletion's forget: %v, %v; want none (the deletion kept the history)", got, err)
	}
}

// forgetAt applies a forget of user as a command issued at ts (ms).
func forgetAt(t *testing.T, s *projections.Store, seq uint64, roomID, id, user string, ts int64) {
	t.Helper()
	out, err := s.ApplyBatch(0, []commands.LogEntry{entry(t, seq, roomID, commands.KindCmd, map[string]any{"id": id,
		"action": commands.ActionForget, "room_id": roomID, "params": map[string]any{"user_id": user}, "ts": ts})})
	if err != nil || out[0].Result != projections.OutcomeApplied {
		t.Fatalf("forget: %+v, %v", out, err)
	}
}

// TestForgottenRooms_DueExactlyOnePeriodAfterTheForget pins the bound of
// forgotten_room_retention_period: Synapse schedules the purge at the
// forget's time plus the period, and its scheduler runs a task whose
// timestamp is <= now, so the room is due at that very millisecond, not
// one before.
func TestForgottenRooms_DueExactlyOnePeriodAfterTheForget(t *testing.T) {
	s := openWithServer(t)
	alice := "@alice:test"
	r := testenv.NewRoom("bound", "test")
	next := apply(t, s, 1, append(r.Setup(alice, "@remote:other.org"), r.Member(alice, alice, "leave"))...)
	const forgot, period = int64(1_700_000_500_000), int64(60_000)
	forgetAt(t, s, next, r.ID, "forget", alice, forgot)
	if got, err := s.ForgottenRooms("test", forgot+period-1, period); err != nil || len(got) != 0 {
		t.Errorf("1 ms before the period ends: %v, %v; want none", got, err)
	}
	if got, err := s.ForgottenRooms("test", forgot+period, period); err != nil || len(got) != 1 || got[0] != r.ID {
		t.Errorf("when the period ends: %v, %v; want %s", got, err, r.ID)
	}
}

// TestForgottenRooms_DeletionRequestedInTheForgetsMillisecond pins that a
// deletion requested at the very time of the last forget ("at or after")
// holds the room, though it has ended: the room is its to purge or keep
// (here it kept the history, purge false), and the forgotten-rooms job
// does not list it while the task is on record.
func TestForgottenRooms_DeletionRequestedInTheForgetsMillisecond(t *testing.T) {
	s := openWithServer(t)
	alice := "@alice:test"
	r := testenv.NewRoom("samems", "test")
	next := apply(t, s, 1, append(r.Setup(alice, "@remote:other.org"), r.Member(alice, alice, "leave"))...)
	const forgot, period = int64(1_700_000_500_000), int64(60_000)
	forgetAt(t, s, next, r.ID, "forget", alice, forgot)
	out, err := s.ApplyBatch(0, []commands.LogEntry{
		entry(t, next+1, r.ID, commands.KindCmd, map[string]any{"id": "del", "action": commands.ActionShutdownAndPurgeRoom,
			"room_id": r.ID, "params": map[string]any{"purge": false}, "ts": forgot}),
		entry(t, next+2, r.ID, commands.KindTask, map[string]any{"task_id": "del", "status": commands.TaskComplete, "ts": forgot + 10}),
	})
	if err != nil || out[0].Result != projections.OutcomeApplied || out[1].Result != projections.OutcomeApplied {
		t.Fatalf("deletion: %+v, %v", out, err)
	}
	if got, err := s.ForgottenRooms("test", forgot+2*period, period); err != nil || len(got) != 0 {
		t.Errorf("with a deletion requested at the forget's time: %v, %v; want none", got, err)
	}
}

// TestPurgeRoom_JanitorStep_DropsTheRetiredRoomRecord pins that the drop
// of a room number that purge_room retired ends with the number's own
// record (roommeta): once the janitor is done, only the room's new number
// has one, and nothing of the old history is left in the file, so that
// deleting a room again and again leaves no record behind (CONTRACT.md
// section 7: the space is reused).
func TestPurgeRoom_JanitorStep_DropsTheRetiredRoomRecord(t *testing.T) {
	s := openWithServer(t)
	r := testenv.NewRoom("retired", "test")
	next := apply(t, s, 1, append(r.Setup("@alice:test"), remoteMsgs(r, 3)...)...)
	for i := range 3 {
		applyCmd(t, s, next, r.ID, fmt.Sprint("pr", i), commands.ActionPurgeRoom, map[string]any{"force": true})
		next++
		next = apply(t, s, next, testenv.NewRoom("retired", "test").Create("@bob:test"))
	}
	drainJanitor(t, s)
	if lines := bucketLines(t, s, "roommeta"); len(lines) != 1 {
		t.Errorf("room records after three purge_rooms and the janitor: %d, want only the current number's:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	if done, err := s.PurgeDone(r.ID); err != nil || !done {
		t.Errorf("PurgeDone = %v, %v", done, err)
	}
}

// TestPurgeHistory_JanitorStep_RejectedRowAtTheFloorNamesNoParent pins
// that a rejected event at the cut-off depth does not make its purged
// parent a backward extremity: rejected events have no edges (they are
// kept for the DAG only, and a rebuild from the erased log makes nothing
// of their parents), so only the parents that kept, accepted events name
// are where the room's history continues backwards.
func TestPurgeHistory_JanitorStep_RejectedRowAtTheFloorNamesNoParent(t *testing.T) {
	s := openWithServer(t)
	r := testenv.NewRoom("rejfloor", "test")
	setup := r.Setup("@alice:test", "@remote:other.org")
	msgs := remoteMsgs(r, 6)
	// A fork: side is msgs[3]'s sibling, and only a rejected event at
	// msgs[4]'s depth (the cut-off) names it.
	r.StartAt(msgs[3]["depth"].(int64), msgs[2].ID())
	side := r.Msg("@remote:other.org", "side")
	rejected := r.Msg("@remote:other.org", "rejected")
	rejected["rejected"] = true
	if rejected["depth"] != msgs[4]["depth"] {
		t.Fatalf("the rejected event is at depth %v, want the cut-off's %v", rejected["depth"], msgs[4]["depth"])
	}
	next := apply(t, s, 1, append(append(setup, msgs...), side, rejected)...)
	if task := applyCmd(t, s, next, r.ID, "p", commands.ActionPurgeHistory, purgeAt(msgs[4])); task.Status != commands.TaskScheduled {
		t.Fatalf("purge: %s %q", task.Status, task.Error)
	}
	drainJanitor(t, s)
	_ = s.View(r.ID, func(v *projections.RoomView) error {
		back := v.Extremities(true)
		if _, ok := back[msgs[3].ID()]; !ok || len(back) != 1 {
			t.Errorf("backward extremities %v, want only the cut-off's parent %s (not %s, named by a rejected event only)", back, msgs[3].ID(), side.ID())
		}
		return nil
	})
}

// TestExpireTasks_DropsTheUnconfirmedMark pins that a task the sweep
// deletes takes its unconfirmed mark with it (deleteTask): a purge_room
// refused by the members check is marked for the task runner to confirm;
// if it expires unconfirmed, nothing of it is left in the file, so that
// the runner's look for decisions to confirm (ToConfirm) is one read of
// an empty bucket again, and an ID reused later does not find its mark.
func TestExpireTasks_DropsTheUnconfirmedMark(t *testing.T) {
	s := openWithServer(t)
	r := testenv.NewRoom("unconfirmed", "test")
	next := apply(t, s, 1, r.Setup("@alice:test")...)
	refusedAt := time.Now().Add(-8 * 24 * time.Hour).UnixMilli()
	out, err := s.ApplyBatch(0, []commands.LogEntry{entry(t, next, r.ID, commands.KindCmd, map[string]any{
		"id": "refused", "action": commands.ActionPurgeRoom, "room_id": r.ID, "params": map[string]any{"force": false}, "ts": refusedAt})})
	if err != nil || out[0].Result != projections.OutcomeApplied || out[0].Task.Status != commands.TaskFailed {
		t.Fatalf("refused purge_room: %+v, %v", out, err)
	}
	if lines := bucketLines(t, s, "unconfirmed"); len(lines) != 1 {
		t.Fatalf("unconfirmed marks after the refusal: %v, want the refusal's", lines)
	}
	if n, err := s.ExpireTasks(time.Now(), projections.ExpireBatch); n != 1 || err != nil {
		t.Fatalf("ExpireTasks = %d, %v; want the refusal", n, err)
	}
	if lines := bucketLines(t, s, "unconfirmed"); len(lines) != 0 {
		t.Errorf("unconfirmed marks after the refusal expired: %v, want none", lines)
	}
}
