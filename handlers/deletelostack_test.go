package handlers_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/testenv"
)

// lostAck is the log as an instance sees it when the acknowledgement of
// its first conditional append is lost: the message is in the log, and
// the repeat that bus.Log.AppendAfter sends after a lost acknowledgement,
// with the same expected sequence, is refused with bus.ErrNotLast
// (JetStream checks the sequence before the message ID). The repeat
// comes appendAttempt (5 s) after the first publish: by then the
// projection has applied the message.
type lostAck struct {
	*bus.Log
	waiter handlers.Waiter
	roomID string
	mu     sync.Mutex
	lost   bool
}

func (l *lostAck) AppendAfter(ctx context.Context, subject, msgID string, data []byte, last uint64) (uint64, error) {
	l.mu.Lock()
	first := !l.lost
	l.lost = true
	l.mu.Unlock()
	if first {
		seq, err := l.Log.AppendAfter(ctx, subject, msgID, data, last)
		if err != nil {
			return 0, err
		}
		if err := l.waiter.WaitFor(ctx, l.roomID, seq); err != nil {
			return 0, err
		}
	}
	return l.Log.AppendAfter(ctx, subject, msgID, data, last)
}

// TestDelete_V1LostAckIsNotPublishedAgain: a v1 deletion whose publish
// landed but whose acknowledgement was lost finds its own task when it
// looks again, and answers with that task's result. Before, it took its
// own open deletion for another one, waited for it to finish and then
// published its command again: past the log's duplicate window (a
// deletion may run for minutes, the window is 2 minutes by default and
// the operator's to set) the log took the command a second time, the
// projection dead-lettered it as a duplicate, and the request was
// answered 500 "rejected by the projection" for a deletion that had
// completed.
func TestDelete_V1LostAckIsNotPublishedAgain(t *testing.T) {
	r := testenv.NewRoom("lostackv1", "test")
	log, store, p := projectedLog(t, subjects.Decode, r.Setup("@alice:test")...)
	ctx := context.Background()
	cfg := subjects.StreamConfig(log.Stream)
	cfg.Duplicates = 100 * time.Millisecond // the least JetStream takes
	if _, err := log.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	a := &handlers.Admin{Store: store, Waiter: p, Log: &lostAck{Log: log, waiter: p, roomID: r.ID}, Subjects: subjects, Now: time.Now,
		NewID: func() string { return "lostackv1" }, CanStart: func(string) bool { return false }}
	req, err := bus.Encode(map[string]any{"requested_by": "@admin:test", "wait": true})
	if err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	type answer struct {
		reply []byte
		err   error
	}
	done := make(chan answer, 1)
	go func() {
		reply, err := a.Delete(dctx, subjects.APIRoom(r.ID, "delete"), req)
		done <- answer{reply, err}
	}()
	testenv.WaitFor(t, 10*time.Second, "the deletion's task", func() bool {
		task, err := store.Task("lostackv1")
		return err == nil && task != nil
	})
	cmdSubject := subjects.Room(r.ID, commands.KindCmd)
	published, err := log.SubjectLastSeq(ctx, cmdSubject)
	if err != nil {
		t.Fatal(err)
	}
	// The deletion runs longer than the duplicate window: a probe
	// published after the command, with a message ID, is taken again.
	probe := subjects.Room("!probe:test", commands.KindCmd)
	first, err := log.Append(ctx, probe, "probe", []byte{0x80})
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "the duplicate window to pass", func() bool {
		seq, err := log.Append(ctx, probe, "probe", []byte{0x80})
		return err == nil && seq != first
	})
	for i, u := range []map[string]any{
		{"task_id": "lostackv1", "status": commands.TaskActive},
		{"task_id": "lostackv1", "status": commands.TaskComplete, "result": map[string]any{"kicked_users": []any{}, "failed_to_kick_users": []any{}, "local_aliases": []any{}, "new_room_id": nil}},
	} {
		data, err := bus.Encode(u)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := log.Append(ctx, subjects.Room(r.ID, commands.KindTask), "lostackv1-"+string(rune('1'+i)), data); err != nil {
			t.Fatal(err)
		}
	}
	var got answer
	select {
	case got = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the v1 deletion did not answer after its task completed")
	}
	if got.err != nil {
		t.Errorf("Delete (v1) = %v; want the completed deletion's result", got.err)
	}
	if last, err := log.SubjectLastSeq(ctx, cmdSubject); err != nil || last != published {
		t.Errorf("the room's last command is at %d (%v), want %d: the deletion was published again", last, err, published)
	}
}

// TestDelete_LostAckIsAudited: the audit log has a line for every
// command the admin API publishes, a deletion whose acknowledgement was
// lost included. Before, only a publish that Append acknowledged wrote
// it, and this one, found in the log when the request looked again,
// left no line of who deleted the room.
func TestDelete_LostAckIsAudited(t *testing.T) {
	r := testenv.NewRoom("lostackaudit", "test")
	log, store, p := projectedLog(t, subjects.Decode, r.Setup("@alice:test")...)
	var audit bytes.Buffer
	a := &handlers.Admin{Store: store, Waiter: p, Log: &lostAck{Log: log, waiter: p, roomID: r.ID}, Subjects: subjects, Now: time.Now,
		NewID: func() string { return "lostackaudit" }, CanStart: func(string) bool { return false },
		Audit: slog.New(slog.NewTextHandler(&audit, nil))}
	req, err := bus.Encode(map[string]any{"requested_by": "@admin:test"})
	if err != nil {
		t.Fatal(err)
	}
	reply, err := a.Delete(context.Background(), subjects.APIRoom(r.ID, "delete"), req)
	if err != nil {
		t.Fatal(err)
	}
	m, err := bus.DecodeMap(reply, bus.DefaultLimits)
	if err != nil || m["delete_id"] != "lostackaudit" {
		t.Fatalf("Delete = %v (%v); want delete_id lostackaudit", m, err)
	}
	if line := audit.String(); !strings.Contains(line, "admin action") || !strings.Contains(line, "task_id=lostackaudit") ||
		!strings.Contains(line, "requested_by=@admin:test") {
		t.Errorf("audit log = %q; want a line for task lostackaudit, requested by @admin:test", line)
	}
}
