package handlers_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/testenv"
)

// TestPurgeHistory_TimeoutNamesTheTask: a purge_history whose command is
// in the log but not applied in time is answered 504, and the purge still
// happens when the command is applied. The reply must name its task, or
// the requester can neither follow the purge (purge_history_status) nor
// tell it from a purge that never was, and would send it again.
func TestPurgeHistory_TimeoutNamesTheTask(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("slow", "test")
	f.add(r.Setup("@alice:test")...)
	a := &handlers.Admin{Store: f.store, Waiter: f.w, Log: testenv.NewNATS(t).Stream(t, subjects, "SCROLLBACK"),
		Subjects: subjects, Now: f.clock.Now, NewID: func() string { return "theslowpurge" }}
	req, err := bus.Encode(map[string]any{"purge_up_to_ts": int64(0)})
	if err != nil {
		t.Fatal(err)
	}
	// The store was filled directly, not from this log: as far as the
	// waiter knows, nothing of the log is applied, so the command's wait
	// ends with the context.
	f.w.seq = 0
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = a.PurgeHistory(ctx, subjects.APIRoom(r.ID, "purge_history"), req)
	var e *commands.Error
	if !errors.As(err, &e) || e.Status != 504 {
		t.Fatalf("err = %v, want a 504", err)
	}
	if !strings.Contains(e.Message, "theslowpurge") {
		t.Fatalf("the 504 %q does not name the task (theslowpurge) the command created", e.Message)
	}
}
