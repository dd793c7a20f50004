package handlers_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/handlers"
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
