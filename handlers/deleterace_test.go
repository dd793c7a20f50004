package handlers_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// otherInstance is the log as this instance sees it while another
// instance of the service, sharing the log, publishes a deletion of the
// same room: right before this instance's first append, after its own
// check for an open deletion.
type otherInstance struct {
	*bus.Log
	t      *testing.T
	waiter *projections.Projector
	roomID string
	done   bool
}

func (o *otherInstance) before(ctx context.Context) {
	if o.done {
		return
	}
	o.done = true
	data, err := bus.Encode(map[string]any{"id": "theotherone", "action": commands.ActionShutdownAndPurgeRoom, "room_id": o.roomID,
		"params": map[string]any{"block": false, "purge": true, "force_purge": false}, "ts": time.Now().UnixMilli()})
	if err != nil {
		o.t.Error(err)
		return
	}
	seq, err := o.Log.Append(ctx, o.Subjects.Room(o.roomID, commands.KindCmd), "theotherone", data)
	if err != nil {
		o.t.Error(err)
		return
	}
	if err := o.waiter.WaitFor(ctx, o.roomID, seq); err != nil {
		o.t.Error(err)
	}
}

func (o *otherInstance) Append(ctx context.Context, subject, msgID string, data []byte) (uint64, error) {
	o.before(ctx)
	return o.Log.Append(ctx, subject, msgID, data)
}

func (o *otherInstance) AppendAfter(ctx context.Context, subject, msgID string, data []byte, last uint64) (uint64, error) {
	o.before(ctx)
	return o.Log.AppendAfter(ctx, subject, msgID, data, last)
}

// TestDelete_AnotherInstancesDeletionLeavesNoFailedTask: with two
// instances on one log, a v2 deletion that another instance's deletion
// of the room overtakes between the check for an open one and the
// publish is refused as Synapse refuses it, before anything is
// scheduled: its command is never published, and the room's
// delete_status lists only the other deletion. Before, a lock of one
// process serialized the check and the publish, so the command went out
// and the projection failed it, leaving a failed deletion in the room's
// delete_status that Synapse never has.
func TestDelete_AnotherInstancesDeletionLeavesNoFailedTask(t *testing.T) {
	r := testenv.NewRoom("twoinstances", "test")
	log, store, p := projectedLog(t, subjects.Decode, r.Setup("@alice:test")...)
	ctx := context.Background()
	a := &handlers.Admin{Store: store, Waiter: p, Log: &otherInstance{Log: log, t: t, waiter: p, roomID: r.ID}, Subjects: subjects,
		Now: time.Now, NewID: func() string { return "thisone" }, CanStart: func(string) bool { return false }}
	req, err := bus.Encode(map[string]any{"requested_by": "@admin:test"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Delete(ctx, subjects.APIRoom(r.ID, "delete"), req)
	var e *commands.Error
	if !errors.As(err, &e) || e.Status != 400 || e.Message != projections.ErrTextDeletionInProgress+r.ID {
		t.Fatalf("Delete = %v; want 400 %q", err, projections.ErrTextDeletionInProgress+r.ID)
	}
	tasks, err := store.RoomTasks(r.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		if task.ID != "theotherone" {
			t.Errorf("the room has task %s (%s, %s %q): the refused deletion was scheduled", task.ID, task.Action, task.Status, task.Error)
		}
	}
	if len(tasks) != 1 {
		t.Errorf("the room has %d tasks, want the other instance's deletion only", len(tasks))
	}
}
