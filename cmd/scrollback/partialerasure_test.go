package main

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// stopBetweenSteps is the log as the eraser uses it, where the service
// stops between two steps of the erasure of a room's event subject
// (bus.Log.PurgeSubjectInSteps: steps of 10,000 messages from the
// oldest, ctx checked between them): the first step goes through, then
// the eraser's context ends.
type stopBetweenSteps struct {
	handlers.LogEraser
	subject string
	below   uint64 // the first step's bound
	stop    context.CancelFunc
	stopped chan struct{}
}

func (s *stopBetweenSteps) PurgeSubjectInSteps(ctx context.Context, subject string, below uint64) error {
	if subject != s.subject {
		return s.LogEraser.PurgeSubjectInSteps(ctx, subject, below)
	}
	if err := s.LogEraser.PurgeSubjectBelow(ctx, subject, s.below); err != nil {
		return err
	}
	s.stop()
	close(s.stopped)
	return ctx.Err()
}

// TestRebuild_RefusedPurgeRoomAfterAStopMidErasure: an unforced
// purge_room refused while a local user is joined, its refusal confirmed
// in the log, then a forced purge_room. The service stops between two
// steps of the forced one's erasure: the room's oldest messages, the
// local user's join among them, are gone from the log, its later ones
// are not. A rebuild from that log (`scrollback rebuild`, or `verify`
// after the stop) must keep the first purge_room refused, as the live
// projection has it: the log holds its confirmation. It passed the
// members check on what was left, which lacks the join.
func TestRebuild_RefusedPurgeRoomAfterAStopMidErasure(t *testing.T) {
	l := newErasedLog(t)
	r := testenv.NewRoom("steps", "test.example")
	const eve = "@eve:remote.example"
	seqs := l.pub.Publish(t, r.Setup(eve, erasedAlice)...) // create ... alice's join last
	later := l.pub.Publish(t, r.Msg(eve, "one"), r.Msg(eve, "two"), r.Msg(eve, "three"))
	live := l.store(t)
	l.read(t, live, later[len(later)-1])
	refused := l.pub.Command(t, map[string]any{"id": "refused", "action": "purge_room", "room_id": r.ID, "params": map[string]any{}})
	l.read(t, live, refused)
	checkTask(t, live, "refused", commands.TaskFailed)
	// The runner's confirmation, which the forced purge's erasure waits
	// for (projections holding).
	l.confirm(t, live, r.ID, "refused", commands.TaskFailed, projections.ErrTextUsersJoined)
	forced := l.pub.Command(t, map[string]any{"id": "forced", "action": "purge_room", "room_id": r.ID, "params": map[string]any{"force": true}})
	l.read(t, live, forced)
	drainJanitor(t, live)

	// The eraser runs, and the service stops after the first step of the
	// event subject's erasure: below the first message after the join.
	stopAfterTheFirstStep(t, l, live, r.ID, seqs[len(seqs)-1], later[0])
	ctx := context.Background()
	if left, err := l.log.RoomHistoryBelow(ctx, r.ID, forced); err != nil || !left {
		t.Fatalf("history left below the forced purge_room after the first step: %v %v, want some", left, err)
	}
	rebuildAsLive(t, l, live, "refused")
}

// stopAfterTheFirstStep runs the eraser over live until the first step
// of roomID's event subject's erasure, below firstAfter (the first
// message after the local member's join at join), then stops it there.
func stopAfterTheFirstStep(t *testing.T, l *erasedLog, live *projections.Store, roomID string, join, firstAfter uint64) {
	t.Helper()
	if firstAfter <= join {
		t.Fatal("the join is not below the messages")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ectx, ecancel := context.WithCancel(ctx)
	defer ecancel()
	log := &stopBetweenSteps{LogEraser: l.log, subject: l.subjects.Room(roomID, commands.KindEvent), below: firstAfter, stop: ecancel, stopped: make(chan struct{})}
	eraser := &handlers.Eraser{Store: live, Log: log, Subjects: l.subjects, Compact: true, Logger: slog.New(slog.DiscardHandler)}
	done := make(chan struct{})
	go func() { eraser.Run(ectx); close(done) }()
	select {
	case <-log.stopped:
	case <-ctx.Done():
		t.Fatal("the eraser never reached the event subject's erasure")
	}
	<-done
}

// rebuildAsLive is `scrollback rebuild` from the log as the stop left it:
// the task failed, as live has it, and the same projection, without
// dead letters.
func rebuildAsLive(t *testing.T, l *erasedLog, live *projections.Store, task string) {
	t.Helper()
	last, err := l.log.LastSeq(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rebuilt := l.store(t)
	l.read(t, rebuilt, last)
	checkTask(t, rebuilt, task, commands.TaskFailed)
	now := time.Now()
	dl, err := live.Digest(now)
	if err != nil {
		t.Fatal(err)
	}
	dr, err := rebuilt.Digest(now)
	if err != nil {
		t.Fatal(err)
	}
	if diff := dl.Diff(dr, "live", "rebuilt"); len(diff) > 0 {
		dumpTask(t, "live", live, task)
		dumpTask(t, "rebuilt", rebuilt, task)
		t.Errorf("the rebuild differs from the live projection: %v", diff)
	}
	if dl, _ := rebuilt.DeadLetters(10); len(dl) > 0 {
		t.Errorf("dead letters in the rebuild: %+v", dl)
	}
}

func dumpTask(t *testing.T, name string, s *projections.Store, id string) {
	task, _ := s.Task(id)
	t.Logf("%s: %+v", name, task)
}

// TestRebuild_RefusedDeletionAfterAStopMidErasure: as
// TestRebuild_RefusedPurgeRoomAfterAStopMidErasure, for a deletion whose
// purge step (unforced) was refused: the rebuild must fail the deletion
// as the live projection did, not complete it.
func TestRebuild_RefusedDeletionAfterAStopMidErasure(t *testing.T) {
	l := newErasedLog(t)
	r := testenv.NewRoom("stepsdel", "test.example")
	const eve = "@eve:remote.example"
	seqs := l.pub.Publish(t, r.Setup(eve, erasedAlice)...)
	later := l.pub.Publish(t, r.Msg(eve, "one"), r.Msg(eve, "two"), r.Msg(eve, "three"))
	live := l.store(t)
	l.read(t, live, later[len(later)-1])
	l.pub.Command(t, map[string]any{"id": "del", "action": "shutdown_and_purge_room", "room_id": r.ID, "params": map[string]any{"block": true}})
	step := l.pub.Command(t, map[string]any{"id": "del" + commands.ShutdownPurgeSuffix, "action": "purge_room", "room_id": r.ID, "params": map[string]any{"force": false}})
	l.read(t, live, step)
	checkTask(t, live, "del", commands.TaskFailed)
	l.confirm(t, live, r.ID, "del", commands.TaskFailed, projections.ErrTextUsersJoined)
	forced := l.pub.Command(t, map[string]any{"id": "forced", "action": "purge_room", "room_id": r.ID, "params": map[string]any{"force": true}})
	l.read(t, live, forced)
	drainJanitor(t, live)

	stopAfterTheFirstStep(t, l, live, r.ID, seqs[len(seqs)-1], later[0])
	rebuildAsLive(t, l, live, "del")
}
