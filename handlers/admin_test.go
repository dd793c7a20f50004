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

// TestAdmin_MistypedFieldsAreRefused: the NATS admin requests' own fields
// are type-checked like Synapse's, before anything is published: a
// delete's wait that is not a boolean ran an asynchronous deletion, and a
// requested_by that is not a string was taken for none (the audit named
// scrollback). Found by a helper's integration walkthrough.
func TestAdmin_MistypedFieldsAreRefused(t *testing.T) {
	r := testenv.NewRoom("typed", "test")
	cut := r.Msg("@alice:test", "one")
	a, store := rejectingAdmin(t, func() string { return "neverused" }, append(r.Setup("@alice:test"), cut, r.Msg("@alice:test", "two"))...)
	for _, c := range []struct {
		name     string
		call     func(context.Context, string, []byte) ([]byte, error)
		endpoint string
		req      map[string]any
		want     string
	}{
		{"delete with wait \"yes\"", a.Delete, "delete", map[string]any{"wait": "yes"}, "Param 'wait' must be a boolean, if given"},
		{"delete with a number for requested_by", a.Delete, "delete", map[string]any{"requested_by": int64(5)}, "Param 'requested_by' must be a string, if given"},
		{"block with a number for requested_by", a.Block, "block", map[string]any{"block": true, "requested_by": int64(5)}, "Param 'requested_by' must be a string, if given"},
		{"purge with a number for requested_by", a.PurgeHistory, "purge_history", map[string]any{"event_id": cut.ID(), "requested_by": int64(5)}, "Param 'requested_by' must be a string, if given"},
	} {
		_, err := c.call(context.Background(), subjects.APIRoom(r.ID, c.endpoint), mustEncode(t, c.req))
		var e *commands.Error
		if !errors.As(err, &e) || e.Status != 400 || e.Code != commands.CodeBadJSON || e.Message != c.want {
			t.Errorf("%s: %v, want 400 M_BAD_JSON %q", c.name, err, c.want)
		}
	}
	if task, err := store.Task("neverused"); err != nil || task != nil {
		t.Fatalf("a refused request published a command: %+v (%v)", task, err)
	}
}
