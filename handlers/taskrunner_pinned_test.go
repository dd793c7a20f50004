package handlers_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// TestTaskRunner_Run_OwnershipMoveStopsTheTaskAndFreesItsSlot pins that a
// runner stops a running task of a room whose partition moved to another
// instance (the new owner resumes it from the log): its slot is free at
// once, so a task of a room the runner owns now starts, with
// MaxConcurrent 1. Kept running, the moved task would hold the slot (and
// run on two instances at once).
func TestTaskRunner_Run_OwnershipMoveStopsTheTaskAndFreesItsSlot(t *testing.T) {
	ra, rb := testenv.NewRoom("movea", "test"), testenv.NewRoom("moveb", "test")
	evsA := append(ra.Setup("@alice:test"), ra.Msg("@remote:other.org", "a1"), ra.Msg("@remote:other.org", "a2"))
	evsB := append(rb.Setup("@alice:test"), rb.Msg("@remote:other.org", "b1"), rb.Msg("@remote:other.org", "b2"))
	ids := []string{"purgea", "purgeb"}
	a, store := rejectingAdmin(t, func() string { id := ids[0]; ids = ids[1:]; return id }, append(evsA, evsB...)...)
	for _, evs := range [][]testenv.Event{evsA, evsB} {
		cut := evs[len(evs)-1]
		testenv.WaitFor(t, 10*time.Second, "the cut-off event applied", func() bool {
			_, ok, err := store.FindEvent(roomOf(cut), cut.ID())
			return err == nil && ok
		})
		if _, err := a.PurgeHistory(context.Background(), subjects.APIRoom(roomOf(cut), "purge_history"), mustEncode(t, map[string]any{"event_id": cut.ID()})); err != nil {
			t.Fatal(err)
		}
	}
	var ownsB atomic.Bool // the runner owns room A, then room B
	wake := make(chan struct{}, 1)
	runner := &handlers.TaskRunner{Store: store, Log: a.Log.(noMsgID).log, Waiter: a.Waiter, Subjects: subjects, Now: time.Now,
		Logger: slog.New(slog.DiscardHandler), PollInterval: time.Hour, MaxConcurrent: 1, Wake: wake,
		Owns: func(roomID string) bool { return (roomID == rb.ID) == ownsB.Load() }}
	runTaskRunner(t, runner)
	status := taskStatus(t, store)
	// The janitor is not running: room A's purge stays active.
	testenv.WaitFor(t, 10*time.Second, "room A's purge to go active", func() bool { return status("purgea") == commands.TaskActive })
	if got := status("purgeb"); got != commands.TaskScheduled {
		t.Fatalf("room B's purge, not owned: %s, want scheduled", got)
	}
	ownsB.Store(true)
	wake <- struct{}{} // the first pass stops A's task; the next one starts B's
	testenv.WaitFor(t, 10*time.Second, "room B's purge to take the freed slot", func() bool {
		select {
		case wake <- struct{}{}:
		default:
		}
		return status("purgeb") == commands.TaskActive
	})
}

// TestTaskRunner_Run_ExpiresABacklogWithoutWaitingForTheInterval pins
// that the sweep of expired tasks goes on at every pass while its batches
// come back full (projections.ExpireBatch): a backlog of one more than a
// batch is gone after two passes, not one ExpireInterval later (an hour
// here), so that expired tasks do not linger in the status requests.
func TestTaskRunner_Run_ExpiresABacklogWithoutWaitingForTheInterval(t *testing.T) {
	store := testenv.NewStore(t)
	r := testenv.NewRoom("backlog", "test")
	expired := time.Now().Add(-8 * 24 * time.Hour).UnixMilli()
	var batch []commands.LogEntry
	for i := range projections.ExpireBatch + 1 {
		data, err := bus.Encode(map[string]any{"id": fmt.Sprintf("forget%04d", i), "action": commands.ActionForget, "room_id": r.ID,
			"params": map[string]any{"user_id": "@alice:test"}, "ts": expired})
		if err != nil {
			t.Fatal(err)
		}
		batch = append(batch, subjects.Decode(uint64(i+1), subjects.Room(r.ID, commands.KindCmd), data, expired))
	}
	if _, err := store.ApplyBatch(0, batch); err != nil {
		t.Fatal(err)
	}
	left := func() int {
		n := 0
		for i := range projections.ExpireBatch + 1 {
			task, err := store.Task(fmt.Sprintf("forget%04d", i))
			if err != nil {
				t.Fatal(err)
			}
			if task != nil {
				n++
			}
		}
		return n
	}
	if n := left(); n != projections.ExpireBatch+1 {
		t.Fatalf("tasks before the sweep: %d, want %d", n, projections.ExpireBatch+1)
	}
	// No open task and nothing to confirm: the runner only sweeps.
	runner := &handlers.TaskRunner{Store: store, Subjects: subjects, Now: time.Now, Logger: slog.New(slog.DiscardHandler),
		PollInterval: 5 * time.Millisecond, ExpireInterval: time.Hour}
	runTaskRunner(t, runner)
	testenv.WaitFor(t, 10*time.Second, "every expired task deleted", func() bool { return left() == 0 })
}

// catchUpLog is a task log whose end is at last, recording the appends.
type catchUpLog struct {
	last    uint64
	mu      sync.Mutex
	appends []string // message IDs
}

func (l *catchUpLog) LastSeq(context.Context) (uint64, error) { return l.last, nil }

func (l *catchUpLog) Append(_ context.Context, _, msgID string, _ []byte) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.appends = append(l.appends, msgID)
	return l.last + uint64(len(l.appends)), nil
}

// catchUpWaiter applies the log messages behind the projection (behind)
// at the first wait, as a projection catching up after a restart does.
type catchUpWaiter struct {
	store  *projections.Store
	behind []commands.LogEntry
	caught atomic.Bool
}

func (w *catchUpWaiter) WaitFor(context.Context, string, uint64) error {
	if w.caught.Load() {
		return nil
	}
	_, err := w.store.ApplyBatch(0, w.behind)
	w.caught.Store(true)
	return err
}

func (w *catchUpWaiter) Watermark(string) uint64 { return 0 }

// TestTaskRunner_Run_TaskFinishedInTheLogIsNotRunAgain pins that a task
// listed as open by a projection that was behind (after a restart or a
// failover) is looked up again once the projection has caught up with
// the log's end, and is left alone if the log has finished it meanwhile:
// the runner publishes no update for it (a purge would otherwise be
// completed a second time, a shutdown run again).
func TestTaskRunner_Run_TaskFinishedInTheLogIsNotRunAgain(t *testing.T) {
	store := testenv.NewStore(t)
	r := testenv.NewRoom("finished", "test")
	evs := append(r.Setup("@alice:test"), r.Msg("@alice:test", "a"), r.Msg("@alice:test", "b"), r.Msg("@alice:test", "c"))
	var batch []commands.LogEntry
	add := func(kind string, v map[string]any) uint64 {
		t.Helper()
		data, err := bus.Encode(v)
		if err != nil {
			t.Fatal(err)
		}
		seq := uint64(len(batch) + 1)
		batch = append(batch, subjects.Decode(seq, subjects.Room(r.ID, kind), data, time.Now().UnixMilli()))
		return seq
	}
	for _, ev := range evs {
		add(commands.KindEvent, ev)
	}
	// Local messages only: the purge deletes nothing and queues no
	// erasure, so once its janitor is done it completes at once.
	add(commands.KindCmd, map[string]any{"id": "p", "action": commands.ActionPurgeHistory, "room_id": r.ID,
		"params": map[string]any{"token": fmt.Sprintf("t%d-0", evs[len(evs)-1]["depth"])}})
	if _, err := store.ApplyBatch(0, batch); err != nil {
		t.Fatal(err)
	}
	for {
		did, err := store.JanitorStep(projections.JanitorBatch)
		if err != nil {
			t.Fatal(err)
		}
		if !did {
			break
		}
	}
	if task, _ := store.Task("p"); task == nil || task.Status != commands.TaskScheduled {
		t.Fatalf("purge before the runner: %+v, want scheduled", task)
	}
	// The log already holds the task's updates, up to its completion,
	// which the projection has not applied yet.
	batch = nil
	for i, st := range []string{commands.TaskActive, commands.TaskComplete} {
		data, err := bus.Encode(map[string]any{"task_id": "p", "status": st, "ts": time.Now().UnixMilli()})
		if err != nil {
			t.Fatal(err)
		}
		batch = append(batch, subjects.Decode(uint64(len(evs)+2+i), subjects.Room(r.ID, commands.KindTask), data, time.Now().UnixMilli()))
	}
	log := &catchUpLog{last: uint64(len(evs) + 3)}
	waiter := &catchUpWaiter{store: store, behind: batch}
	runner := &handlers.TaskRunner{Store: store, Log: log, Waiter: waiter, Subjects: subjects, Now: time.Now,
		Logger: slog.New(slog.DiscardHandler), PollInterval: time.Hour, MaxConcurrent: 1}
	runTaskRunner(t, runner)
	updates := func() (ids []string) { // the runner's updates, not its confirmations
		log.mu.Lock()
		defer log.mu.Unlock()
		for _, id := range log.appends {
			if !strings.HasSuffix(id, "-confirm") {
				ids = append(ids, id)
			}
		}
		return ids
	}
	testenv.WaitFor(t, 10*time.Second, "the task's run to end, or an update", func() bool {
		return waiter.caught.Load() && (runner.CanStart(r.ID) || len(updates()) > 0)
	})
	if task, _ := store.Task("p"); task == nil || task.Status != commands.TaskComplete || task.Updates != 2 {
		t.Fatalf("purge after the catch-up: %+v, want complete with the log's 2 updates", task)
	}
	if ids := updates(); len(ids) != 0 {
		t.Errorf("the runner published updates %v for a task the log had finished", ids)
	}
	if !runner.CanStart(r.ID) {
		t.Error("the finished task still holds the runner's only slot")
	}
}

// TestTaskRunner_Run_NoProgressUpdateWithoutProgress pins that a purge
// task publishes a progress update only when the janitor has moved
// (purged_below changed), at most once a PurgeProgressEvery: a purge whose
// janitor is stalled adds nothing to the log however long it waits, and
// its record keeps the time of its last real update, so that the runner's
// 24-hour warning about stale tasks can name it.
func TestTaskRunner_Run_NoProgressUpdateWithoutProgress(t *testing.T) {
	r := testenv.NewRoom("stalled", "test")
	cut := r.Msg("@alice:test", "one")
	p := purgeWithRunner(t, r, cut, append(r.Setup("@alice:test"), cut, r.Msg("@alice:test", "two"))...)
	clock, runner, task := p.clock, p.runner, p.task
	// The janitor is not running: the purge goes active, then has its
	// first progress update (nothing purged yet) once the clock has moved.
	testenv.WaitFor(t, 10*time.Second, "the purge's first progress update", func() bool {
		clock.Advance(handlers.PurgeProgressEvery)
		return task().Result["purged_below"] != nil
	})
	updates := task().Updates
	for range 3 {
		clock.Advance(2 * handlers.PurgeProgressEvery)
		checks := runner.PurgeChecks()
		testenv.WaitFor(t, 10*time.Second, "two more looks at the purge's progress", func() bool { return runner.PurgeChecks() >= checks+2 })
	}
	if got := task(); got.Updates != updates || got.Status != commands.TaskActive {
		t.Errorf("stalled purge: %d updates, status %s; want still %d, active", got.Updates, got.Status, updates)
	}
}
