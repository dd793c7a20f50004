package handlers_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// refuseOnce is the log with one append refused, as a JetStream whose
// store is full refuses a publish.
type refuseOnce struct {
	*bus.Log
	refuse bool
}

func (l *refuseOnce) Append(ctx context.Context, subject, msgID string, data []byte) (uint64, error) {
	if l.refuse {
		l.refuse = false
		return 0, errors.New("nats: insufficient resources")
	}
	return l.Log.Append(ctx, subject, msgID, data)
}

// AppendNew refuses as Append does: the task runner publishes its updates
// with it.
func (l *refuseOnce) AppendNew(ctx context.Context, subject, msgID string, data []byte) (uint64, error) {
	if l.refuse {
		l.refuse = false
		return 0, errors.New("nats: insufficient resources")
	}
	return l.Log.AppendNew(ctx, subject, msgID, data)
}

// TestTaskRunner_RefusedUpdateUsesNoNumber: a task's updates are numbered
// by the updates the log took, so that a run that starts from the task's
// applied count (Task.Updates) never reuses the message ID of an update
// the log holds. Before, a refused publish used up its number: a
// shutdown's progress flusher went on publishing after it, the applied
// count fell one behind the IDs used, and the next run's first update,
// which could be the task's completion, was dropped by the log as a
// duplicate.
func TestTaskRunner_RefusedUpdateUsesNoNumber(t *testing.T) {
	r := testenv.NewRoom("updates", "test")
	cut := r.Msg("@alice:test", "one")
	a, store := rejectingAdmin(t, func() string { return "purge1" }, append(r.Setup("@alice:test"), cut, r.Msg("@alice:test", "two"))...)
	req, err := bus.Encode(map[string]any{"event_id": cut.ID()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.PurgeHistory(context.Background(), subjects.APIRoom(r.ID, "purge_history"), req); err != nil {
		t.Fatal(err)
	}
	log := &refuseOnce{Log: a.Log.(noMsgID).log}
	runner := &handlers.TaskRunner{Store: store, Log: log, Waiter: a.Waiter, Subjects: subjects, Now: time.Now}
	task, err := store.Task("purge1")
	if err != nil || task == nil {
		t.Fatalf("task: %+v (%v)", task, err)
	}
	n := task.Updates
	ctx := context.Background()
	if err := runner.Update(ctx, task, &n, commands.TaskActive); err != nil {
		t.Fatal(err)
	}
	log.refuse = true
	if err := runner.Update(ctx, task, &n, commands.TaskActive); err == nil {
		t.Fatal("a refused update: no error")
	}
	if err := runner.Update(ctx, task, &n, commands.TaskActive); err != nil {
		t.Fatal(err)
	}
	if task, err = store.Task("purge1"); err != nil {
		t.Fatal(err)
	}
	if task.Updates != n {
		t.Fatalf("the runner counts %d updates, the task applied %d: the next run would reuse an ID", n, task.Updates)
	}
	// The next run starts from the applied count: its update is new to
	// the log, and applied.
	n = task.Updates
	if err := runner.Update(ctx, task, &n, commands.TaskComplete); err != nil {
		t.Fatal(err)
	}
	if task, err = store.Task("purge1"); err != nil || task.Status != commands.TaskComplete {
		t.Fatalf("after the next run's completion: %+v (%v), want complete", task, err)
	}
}

// TestTaskRunner_PurgeProgressInTheTaskRecord: while the janitor deletes
// a purge's rows, the task record takes its progress (purged_below in
// the result), at most once a PurgeProgressEvery by the runner's clock,
// and the purge status shows it.
func TestTaskRunner_PurgeProgressInTheTaskRecord(t *testing.T) {
	r := testenv.NewRoom("progress", "test")
	evs := r.Setup("@alice:test")
	for i := range 40 {
		evs = append(evs, r.Msg("@remote:other.org", fmt.Sprint(i)))
	}
	cut := evs[len(evs)-3]
	p := purgeWithRunner(t, r, cut, evs...)
	a, store, clock, task := p.admin, p.store, p.clock, p.task
	testenv.WaitFor(t, 10*time.Second, "the purge task to go active", func() bool { return task().Status == commands.TaskActive })

	// The janitor is not running: the test steps it, 5 rows a step (its
	// first steps sweep the outliers and unindex ahead), until rows go.
	for {
		if did, err := store.JanitorStep(5); err != nil || !did {
			t.Fatalf("janitor step: %v %v", did, err)
		}
		if p, err := store.PurgeProgress(r.ID); err != nil || p.PurgedBelow > 1 {
			break
		}
	}
	floor := cut["depth"].(int64)
	testenv.WaitFor(t, 10*time.Second, "the janitor's progress in the task record", func() bool {
		clock.Advance(handlers.PurgeProgressEvery) // whenever the runner began to wait
		below := intOf(task().Result["purged_below"])
		return below > 1 && below < floor
	})
	below := intOf(task().Result["purged_below"])
	data, err := a.PurgeStatus(context.Background(), subjects.API("purge_status"), mustEncode(t, map[string]any{"purge_id": "purge1"}))
	if err != nil {
		t.Fatal(err)
	}
	status, err := bus.DecodeMap(data, bus.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	prog, _ := status["progress"].(map[string]any)
	if status["status"] != "active" || prog == nil || intOf(prog["purged_below"]) != below || intOf(prog["floor"]) != floor {
		t.Fatalf("purge status: %v, want active with purged_below %d and floor %d", status, below, floor)
	}
}

func mustEncode(t *testing.T, v map[string]any) []byte {
	t.Helper()
	b, err := bus.Encode(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTaskRunner_WarnsAboutStaleTasks: an open task not updated for 24
// hours is logged as a warning, as Synapse's scheduler logs it: here a
// purge whose janitor never runs.
func TestTaskRunner_WarnsAboutStaleTasks(t *testing.T) {
	r := testenv.NewRoom("stale", "test")
	cut := r.Msg("@alice:test", "one")
	a, store := rejectingAdmin(t, func() string { return "purge1" }, append(r.Setup("@alice:test"), cut, r.Msg("@alice:test", "two"))...)
	if _, err := a.PurgeHistory(context.Background(), subjects.APIRoom(r.ID, "purge_history"), mustEncode(t, map[string]any{"event_id": cut.ID()})); err != nil {
		t.Fatal(err)
	}
	clock := testenv.NewClock(time.Now())
	var logs testenv.Buffer
	runner := &handlers.TaskRunner{Store: store, Log: a.Log.(noMsgID).log, Waiter: a.Waiter, Subjects: subjects, Now: clock.Now,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)), PollInterval: 10 * time.Millisecond, ExpireInterval: 10 * time.Millisecond}
	runTaskRunner(t, runner)
	testenv.WaitFor(t, 10*time.Second, "the purge task to go active", func() bool {
		task, _ := store.Task("purge1")
		return task != nil && task.Status == commands.TaskActive
	})
	// Its first progress update (nothing purged yet) comes once the
	// clock has moved a second past the runner's start of the wait;
	// after it the task is not updated again.
	testenv.WaitFor(t, 10*time.Second, "the purge's first progress update", func() bool {
		clock.Advance(handlers.PurgeProgressEvery)
		task, _ := store.Task("purge1")
		return task != nil && task.Result["purged_below"] != nil
	})
	clock.Advance(handlers.StaleTaskAge)
	testenv.WaitFor(t, 10*time.Second, "the warning about the stale task", func() bool {
		return strings.Contains(logs.String(), "task not updated for 24 hours") && strings.Contains(logs.String(), "task=purge1")
	})
}

// intOf is a MessagePack-decoded integer (commands.AsInt), -1 if it is
// none.
func intOf(v any) int64 {
	if n, ok := commands.AsInt(v); ok {
		return n
	}
	return -1
}

// TestTaskRunner_APurgeWaitsForItsOwnRoomsErasures: a purge task completes
// once its own room's rows and log messages are gone, whatever other
// rooms still have to erase. Before, it waited for every room's erasures:
// one room whose erasure failed kept every other purge active, each
// holding one of the tasks.max_concurrent slots (found by a helper's
// review).
func TestTaskRunner_APurgeWaitsForItsOwnRoomsErasures(t *testing.T) {
	slow, quick := testenv.NewRoom("slow", "test"), testenv.NewRoom("quick", "test")
	evs := slow.Setup("@alice:test")
	for i := range 20 {
		evs = append(evs, slow.Msg("@remote:other.org", fmt.Sprint(i)))
	}
	slowCut := evs[len(evs)-3]
	quickEvs := quick.Setup("@alice:test")
	evs = append(append(evs, quickEvs...), quick.Msg("@alice:test", "hi"))
	ids := []string{"purgeslow", "purgequick"}
	a, store := rejectingAdmin(t, func() string { id := ids[0]; ids = ids[1:]; return id }, evs...)
	purge := func(roomID string, cut testenv.Event) {
		t.Helper()
		req, err := bus.Encode(map[string]any{"event_id": cut.ID()})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.PurgeHistory(context.Background(), subjects.APIRoom(roomID, "purge_history"), req); err != nil {
			t.Fatal(err)
		}
		drainJanitor(t, store) // no janitor runs here
	}
	// The slow room's messages are queued for erasure, and no eraser
	// runs; the quick room's purge deletes nothing.
	purge(slow.ID, slowCut)
	purge(quick.ID, quickEvs[0])
	runner := &handlers.TaskRunner{Store: store, Log: a.Log.(noMsgID).log, Waiter: a.Waiter, Subjects: subjects, Now: time.Now,
		Logger: slog.New(slog.DiscardHandler), PollInterval: 10 * time.Millisecond}
	runTaskRunner(t, runner)
	status := taskStatus(t, store)
	// Both tasks start on their own goroutines, so the quick one can
	// complete before the slow one has published that it is active: wait
	// for both states (CI once saw the slow one still scheduled).
	testenv.WaitFor(t, 10*time.Second, "the quick room's purge to complete while the slow one is active", func() bool {
		return status("purgequick") == commands.TaskComplete && status("purgeslow") == commands.TaskActive
	})
	if s := status("purgeslow"); s != commands.TaskActive {
		t.Fatalf("the slow room's purge, whose messages are still to erase, is %s", s)
	}
}

// TestTaskRunner_APurgeRoomWaitsForItsRows: a purge_room task completes
// once the janitor has dropped the rows of the room number it retired, as
// well as the log's erasure; before, it completed with the rows still in
// the file (the room's new number had nothing to delete). Found by a
// helper's review.
func TestTaskRunner_APurgeRoomWaitsForItsRows(t *testing.T) {
	r := testenv.NewRoom("dropped", "test")
	evs := r.Setup("@alice:test")
	for i := range 20 {
		evs = append(evs, r.Msg("@remote:other.org", fmt.Sprint(i)))
	}
	a, store := rejectingAdmin(t, func() string { return "unused" }, evs...)
	log := a.Log.(noMsgID).log
	data, err := bus.Encode(map[string]any{"id": "drop", "action": commands.ActionPurgeRoom, "room_id": r.ID, "params": map[string]any{"force": true}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	seq, err := log.Append(ctx, subjects.Room(r.ID, commands.KindCmd), "", data)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Waiter.WaitFor(ctx, r.ID, seq); err != nil {
		t.Fatal(err)
	}
	runner := &handlers.TaskRunner{Store: store, Log: log, Waiter: a.Waiter, Subjects: subjects, Now: time.Now,
		Logger: slog.New(slog.DiscardHandler), PollInterval: 10 * time.Millisecond}
	eraser := &handlers.Eraser{Store: store, Log: log, Subjects: subjects, Compact: true, Logger: slog.New(slog.DiscardHandler)}
	var wg sync.WaitGroup
	wg.Go(func() { runner.Run(ctx) })
	wg.Go(func() { eraser.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	status := func() string {
		task, err := store.Task("drop")
		if err != nil || task == nil {
			t.Fatalf("task: %+v (%v)", task, err)
		}
		return task.Status
	}
	testenv.WaitFor(t, 10*time.Second, "the room's erasure", func() bool {
		pending, err := store.ErasuresPendingFor(r.ID)
		return err == nil && !pending && status() == commands.TaskActive
	})
	// Two more looks of the task at its progress: the second began after
	// the erasure was seen done, and found the rows.
	looked := runner.PurgeChecks()
	testenv.WaitFor(t, 10*time.Second, "the task to look at its progress again", func() bool {
		return runner.PurgeChecks() >= looked+2 || status() != commands.TaskActive
	})
	if s := status(); s != commands.TaskActive {
		t.Fatalf("the purge_room is %s with the retired number's rows still in the file", s)
	}
	drainJanitor(t, store) // no janitor runs here
	testenv.WaitFor(t, 10*time.Second, "the purge_room to complete", func() bool { return status() == commands.TaskComplete })
}

// drainJanitor steps the janitor until it has nothing left to do.
func drainJanitor(t *testing.T, store *projections.Store) {
	t.Helper()
	for {
		did, err := store.JanitorStep(1000)
		if err != nil {
			t.Fatal(err)
		}
		if !did {
			return
		}
	}
}

// purgeRun is a purge_history (purge1) with its task runner.
type purgeRun struct {
	admin  *handlers.Admin
	store  *projections.Store
	clock  *testenv.Clock
	runner *handlers.TaskRunner
	task   func() *commands.Task // the purge's record
}

// purgeWithRunner applies evs, requests purge1, a purge_history up to
// cut, and runs a task runner on a test clock, with no janitor running:
// the test steps it.
func purgeWithRunner(t *testing.T, r *testenv.Room, cut testenv.Event, evs ...testenv.Event) *purgeRun {
	t.Helper()
	a, store := rejectingAdmin(t, func() string { return "purge1" }, evs...)
	req, err := bus.Encode(map[string]any{"event_id": cut.ID()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.PurgeHistory(context.Background(), subjects.APIRoom(r.ID, "purge_history"), req); err != nil {
		t.Fatal(err)
	}
	clock := testenv.NewClock(time.Now())
	runner := &handlers.TaskRunner{Store: store, Log: a.Log.(noMsgID).log, Waiter: a.Waiter, Subjects: subjects, Now: clock.Now,
		Logger: slog.New(slog.DiscardHandler), PollInterval: 10 * time.Millisecond}
	runTaskRunner(t, runner)
	return &purgeRun{admin: a, store: store, clock: clock, runner: runner, task: func() *commands.Task {
		task, err := store.Task("purge1")
		if err != nil || task == nil {
			t.Fatalf("task: %+v (%v)", task, err)
		}
		return task
	}}
}

// runTaskRunner runs runner until the test ends.
func runTaskRunner(t *testing.T, runner *handlers.TaskRunner) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); runner.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// taskStatus reads a task's status from store; the task must exist.
func taskStatus(t *testing.T, store *projections.Store) func(id string) string {
	return func(id string) string {
		t.Helper()
		task, err := store.Task(id)
		if err != nil || task == nil {
			t.Fatalf("task %s: %+v (%v)", id, task, err)
		}
		return task.Status
	}
}
