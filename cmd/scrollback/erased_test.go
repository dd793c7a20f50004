package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// erasedLog is a log and what reads it the way an instance does.
type erasedLog struct {
	log      *bus.Log
	subjects bus.Subjects
	pub      *testenv.Publisher
}

func newErasedLog(t *testing.T) *erasedLog {
	n := testenv.NewNATS(t)
	subjects := bus.Subjects{Prefix: "sb"}
	return &erasedLog{log: n.Stream(t, subjects, "SCROLLBACK"), subjects: subjects, pub: &testenv.Publisher{JS: n.JS, Subjects: subjects}}
}

// store opens a projection of server test.example, whose local users a
// purge_room checks.
func (l *erasedLog) store(t *testing.T) *projections.Store {
	t.Helper()
	s, err := projections.Open(filepath.Join(t.TempDir(), "scrollback.db"), projections.Options{ServerName: "test.example"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// read applies the log into store up to seq, as an instance does, and
// stops.
func (l *erasedLog) read(t *testing.T, store *projections.Store, seq uint64) {
	t.Helper()
	p := &projections.Projector{Store: store, Source: l.log, Decode: l.subjects.Decode, RoomKeyOf: roomKeyToken("sb"), Erased: logErased(l.log), FirstUpdates: l.log.FirstUpdates}
	if err := p.Init(); err != nil {
		t.Fatal(err)
	}
	runProjector(t, p, seq)()
}

// runProjector runs p until every message up to seq is applied, and
// returns what stops it.
func runProjector(t *testing.T, p *projections.Projector, seq uint64) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	stop = func() { cancel(); <-done }
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := p.WaitAll(wctx, seq); err != nil {
		stop()
		t.Fatal(err)
	}
	return stop
}

// confirm appends the task runner's confirmation of a task's decision
// (TaskRunner.confirm) and applies the log into store up to it.
func (l *erasedLog) confirm(t *testing.T, store *projections.Store, roomID, taskID, status, errText string) uint64 {
	t.Helper()
	data, err := bus.Encode(map[string]any{"task_id": taskID, "status": status, "error": errText})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	seq, err := l.log.Append(ctx, l.subjects.Room(roomID, commands.KindTask), taskID+"-confirm", data)
	if err != nil {
		t.Fatal(err)
	}
	l.read(t, store, seq)
	return seq
}

// drainJanitor runs the janitor until it has nothing left to do.
func drainJanitor(t *testing.T, store *projections.Store) {
	t.Helper()
	for {
		did, err := store.JanitorStep(projections.JanitorBatch)
		if err != nil {
			t.Fatal(err)
		}
		if !did {
			return
		}
	}
}

// checkTask fails the test unless the task has the status.
func checkTask(t *testing.T, store *projections.Store, id, want string) {
	t.Helper()
	task, err := store.Task(id)
	if err != nil || task == nil {
		t.Fatalf("task %s: %v %v", id, task, err)
	}
	if task.Status != want {
		t.Errorf("task %s: %s %q, want %s", id, task.Status, task.Error, want)
	}
}

// checkMember fails the test unless user's membership in the room is want.
func checkMember(t *testing.T, store *projections.Store, roomID, user, want string) {
	t.Helper()
	if err := store.View(roomID, func(v *projections.RoomView) error {
		if got := v.Membership(user); got != want {
			t.Errorf("%s: %s's membership %q, want %q", roomID, user, got, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

const erasedAlice, erasedBob = "@alice:test.example", "@bob:test.example"

// An instance reading the log while another erases a room's history
// below a purge_room (CLUSTER.md) reads the room's start, then finds the
// rest gone: it saw the members join and not leave. The erasure follows
// only a purge_room that succeeded, so the reader must apply it as done,
// not fail it with "Users are still joined" where the instance that ran
// it completed it. A purge_room refused while the history is still in
// the log stays refused.
func TestProjector_PurgeRoomWhoseHistoryWasErasedUnderTheReader(t *testing.T) {
	l := newErasedLog(t)
	erased := testenv.NewRoom("erased", "test.example")
	kept := testenv.NewRoom("kept", "test.example")
	l.pub.Publish(t, erased.Setup(erasedAlice, erasedBob)...)
	seqs := l.pub.Publish(t, kept.Setup(erasedAlice, erasedBob)...)
	store := l.store(t)
	l.read(t, store, seqs[len(seqs)-1])

	// The rest of the erased room's life, as the instance that ran its
	// purge saw it: everybody leaves, the room is purged, and its events
	// are erased before the reader gets to them. The kept room's purge
	// is refused: its members are still there, and so is its history.
	l.pub.Publish(t, erased.Member(erasedAlice, erasedAlice, "leave"), erased.Member(erasedBob, erasedBob, "leave"))
	drop := l.pub.Command(t, map[string]any{"id": "drop-erased", "action": "purge_room", "room_id": erased.ID, "params": map[string]any{}})
	last := l.pub.Command(t, map[string]any{"id": "drop-kept", "action": "purge_room", "room_id": kept.ID, "params": map[string]any{}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.log.PurgeSubjectBelow(ctx, l.subjects.Room(erased.ID, commands.KindEvent), drop); err != nil {
		t.Fatal(err)
	}
	l.read(t, store, last)

	// Accepted, the purge waits for the task runner (not running here)
	// to complete it once the rows are gone.
	checkTask(t, store, "drop-erased", commands.TaskScheduled)
	checkTask(t, store, "drop-kept", commands.TaskFailed)
	checkMember(t, store, erased.ID, erasedAlice, "") // a new, empty room
	checkMember(t, store, kept.ID, erasedAlice, "join")
}

// A lone instance compacts the log: a purge_history after a refused
// purge_room copies the state events it keeps to the room's kept subject,
// after the purge_room, and erases their originals, so no event message
// of the room is left below the purge_room. The joins are still in the
// log, as copies of messages from before it: a rebuild must refuse the
// purge_room again.
func TestProjector_RefusedPurgeRoomStaysRefusedAfterCompaction(t *testing.T) {
	l := newErasedLog(t)
	r := testenv.NewRoom("refused", "test.example")
	const eve = "@eve:remote.example"
	l.pub.Publish(t, r.Setup(erasedAlice, erasedBob, eve)...)
	l.pub.Command(t, map[string]any{"id": "drop", "action": "purge_room", "room_id": r.ID, "params": map[string]any{}})
	after := l.pub.Publish(t, r.Msg(eve, "one"), r.Msg(eve, "two"))
	live := l.store(t)
	l.read(t, live, after[1])
	checkTask(t, live, "drop", commands.TaskFailed)

	// A purge_history up to "two": "one" is erased, and the state below
	// it is kept.
	if err := l.log.Compact(context.Background(), r.ID, []uint64{after[0]}); err != nil {
		t.Fatal(err)
	}
	rebuilt := l.store(t)
	l.read(t, rebuilt, after[1])
	checkTask(t, rebuilt, "drop", commands.TaskFailed)
	checkMember(t, rebuilt, r.ID, erasedAlice, "join")
}

// A projector stopped while the log cannot tell whether a purge_room's
// history is erased applies neither the purge_room nor anything after it
// in its partition, and does not count them as applied; the next run
// applies them.
func TestProjector_StopWhileTheLogCannotAnswer(t *testing.T) {
	l := newErasedLog(t)
	r := testenv.NewRoom("unanswered", "test.example")
	l.pub.Publish(t, r.Setup(erasedAlice)...)
	l.pub.Publish(t, r.Member(erasedAlice, erasedAlice, "leave"))
	drop := l.pub.Command(t, map[string]any{"id": "drop", "action": "purge_room", "room_id": r.ID, "params": map[string]any{}})
	after := l.pub.Publish(t, r.Msg(erasedBob, "after the purge"))[0]
	store := l.store(t)

	asked := make(chan struct{}, 100)
	p := &projections.Projector{Store: store, Source: l.log, Decode: l.subjects.Decode, RoomKeyOf: roomKeyToken("sb"),
		Erased: func(context.Context, string, uint64) (bool, error) {
			asked <- struct{}{}
			return false, errors.New("the log is away")
		}}
	if err := p.Init(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	<-asked
	<-asked // asked again: it does not give up while running
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if task, err := store.Task("drop"); err != nil || task != nil {
		t.Fatalf("the purge_room was applied without an answer: %v %v", task, err)
	}
	if got := p.Applied(); got >= drop {
		t.Errorf("Applied() = %d, past the unapplied purge_room at %d", got, drop)
	}

	l.read(t, store, after)
	checkTask(t, store, "drop", commands.TaskScheduled)
}

// TestEraser_PurgeRoomDuringACompactionLeavesNoCopy: a purge_room applied
// while the eraser compacts an earlier purge_history of the room (it has
// taken the room's erasures, and goes on copying what that purge keeps)
// leaves none of those copies in the log, though they are appended after
// the purge_room and its erasure purges the kept subject below it by the
// copies' own sequences (CONTRACT.md section 7; found by a helper's
// review: the room's state stayed in the log for good).
func TestEraser_PurgeRoomDuringACompactionLeavesNoCopy(t *testing.T) {
	l := newErasedLog(t)
	r := testenv.NewRoom("copies", "test.example")
	const eve = "@eve:remote.example"
	evs := r.Setup(erasedAlice, eve)
	for range 10 {
		evs = append(evs, r.Msg(eve, "remote"), r.Msg(erasedAlice, "local, kept as an outlier"))
	}
	seqs := l.pub.Publish(t, evs...)
	store := l.store(t)
	l.read(t, store, seqs[len(seqs)-1])
	cut := evs[len(evs)-2]
	hist := l.pub.Command(t, map[string]any{"id": "hist", "action": "purge_history", "room_id": r.ID,
		"params": map[string]any{"token": fmt.Sprintf("t%d-0", cut["depth"].(int64))}})
	l.read(t, store, hist)
	drainJanitor(t, store)
	// The eraser takes the room's erasures...
	re, ok, err := store.RoomErasures()
	if err != nil || !ok {
		t.Fatalf("room erasures: %v %v", ok, err)
	}
	// ...the room is purged meanwhile...
	drop := l.pub.Command(t, map[string]any{"id": "drop", "action": "purge_room", "room_id": r.ID,
		"params": map[string]any{"force": true}})
	l.read(t, store, drop)
	checkTask(t, store, "drop", commands.TaskScheduled)
	// The task runner confirms hist, which it has not started: until
	// then the room's erasures wait (projections holding).
	l.confirm(t, store, r.ID, "hist", commands.TaskScheduled, "")
	// ...and the compaction goes on, then the eraser carries on.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.log.Compact(ctx, re.RoomID, re.Seqs); err != nil {
		t.Fatal(err)
	}
	if err := store.RoomErasureDone(re); err != nil {
		t.Fatal(err)
	}
	eraser := &handlers.Eraser{Store: store, Log: l.log, Subjects: l.subjects, Compact: true, Logger: slog.New(slog.DiscardHandler)}
	ectx, ecancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { eraser.Run(ectx); close(done) }()
	testenv.WaitFor(t, 20*time.Second, "the erasures", func() bool {
		pending, _ := store.ErasuresPending()
		return !pending
	})
	ecancel()
	<-done
	left, err := l.log.RoomHistoryBelow(ctx, r.ID, drop)
	if err != nil {
		t.Fatal(err)
	}
	if left {
		t.Fatalf("the log still holds the purged room's history below its purge_room (seq %d): kept copies made after it survive its erasure", drop)
	}
}

// confirmFirst is the log as the eraser uses it, which notes a room's
// history erased before a refusal's confirmation is in the log.
type confirmFirst struct {
	*bus.Log
	roomID, taskID string
	refused        uint64 // the refused command's sequence
	early          atomic.Bool
}

func (c *confirmFirst) PurgeSubjectInSteps(ctx context.Context, subject string, below uint64) error {
	if subject == c.Subjects.Room(c.roomID, commands.KindEvent) {
		if first, err := c.FirstUpdates(ctx, c.roomID, []string{c.taskID}, c.refused); err != nil || first[c.taskID] == nil {
			c.early.Store(true)
		}
	}
	return c.Log.PurgeSubjectInSteps(ctx, subject, below)
}

// TestEraser_WaitsForTheRefusalsConfirmation: an unforced purge_room
// refused while a local user is joined, then a forced one. The eraser
// leaves the room's history in the log until the refusal's confirmation
// is there too, so that a rebuild at any point, before the confirmation
// or after the erasure, keeps the first refused (found by a helper's
// review: erased first, a rebuild before the task runner's next pass
// brought the refused purge back scheduled).
func TestEraser_WaitsForTheRefusalsConfirmation(t *testing.T) {
	l := newErasedLog(t)
	r := testenv.NewRoom("refused", "test.example")
	seqs := l.pub.Publish(t, r.Setup(erasedAlice, erasedBob)...)
	live := l.store(t)
	l.read(t, live, seqs[len(seqs)-1])
	refused := l.pub.Command(t, map[string]any{"id": "refused", "action": "purge_room", "room_id": r.ID, "params": map[string]any{}})
	forced := l.pub.Command(t, map[string]any{"id": "forced", "action": "purge_room", "room_id": r.ID, "params": map[string]any{"force": true}})
	l.read(t, live, forced)
	checkTask(t, live, "refused", commands.TaskFailed)
	drainJanitor(t, live)
	log := &confirmFirst{Log: l.log, roomID: r.ID, taskID: "refused", refused: refused}
	eraser := &handlers.Eraser{Store: live, Log: log, Subjects: l.subjects, Compact: true, Logger: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { eraser.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	// The service stops before the runner's pass; `scrollback rebuild`.
	before := l.store(t)
	l.read(t, before, forced)
	checkTask(t, before, "refused", commands.TaskFailed)
	if un, _ := before.Unconfirmed(); len(un) != 1 {
		t.Errorf("rebuilt before the confirmation: unconfirmed %v, want the refusal, for the runner to confirm", un)
	}

	// The runner's pass.
	confirmed := l.confirm(t, live, r.ID, "refused", commands.TaskFailed, projections.ErrTextUsersJoined)
	actx, acancel := context.WithTimeout(ctx, 10*time.Second)
	defer acancel()
	testenv.WaitFor(t, 20*time.Second, "the erasure after the confirmation", func() bool {
		pending, _ := live.ErasuresPending()
		return !pending
	})
	if log.early.Load() {
		t.Error("the room's history was erased before the refusal's confirmation was in the log")
	}
	if left, err := l.log.RoomHistoryBelow(actx, r.ID, forced); err != nil || left {
		t.Fatalf("history left below the forced purge_room: %v %v", left, err)
	}
	after := l.store(t)
	l.read(t, after, confirmed)
	checkTask(t, after, "refused", commands.TaskFailed)
	if un, _ := after.Unconfirmed(); len(un) != 0 {
		t.Errorf("rebuilt after the confirmation: unconfirmed %v, want none", un)
	}
}
