package handlers_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/testenv"
)

// TestAdmin_PurgeErrorsOverNATS: the purge API's errors that only a NATS
// request (or a body the HTTP bridge passes through) can reach, with
// Synapse's codes and texts (SYNAPSE.md 6.1), and a purge task that is
// still scheduled reported as active, as Synapse maps every status but
// complete and failed.
func TestAdmin_PurgeErrorsOverNATS(t *testing.T) {
	r := testenv.NewRoom("purgeapi", "test")
	rejected := r.Msg("@alice:test", "rejected")
	rejected["rejected"] = true
	cut := r.Msg("@alice:test", "one")
	a, _ := rejectingAdmin(t, func() string { return "purge1" }, append(r.Setup("@alice:test"), rejected, cut, r.Msg("@alice:test", "two"))...)
	ctx := context.Background()
	purge := func(req map[string]any) error {
		_, err := a.PurgeHistory(ctx, subjects.APIRoom(r.ID, "purge_history"), mustEncode(t, req))
		return err
	}
	status := func(data []byte) error {
		_, err := a.PurgeStatus(ctx, subjects.API("purge_status"), data)
		return err
	}
	notMap, err := bus.Encode([]any{"purge1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name       string
		err        error
		status     int
		code, text string
	}{
		{"event_id not a string", purge(map[string]any{"event_id": 5}), 400, commands.CodeBadJSON, "event_id must be a string"},
		{"purge_up_to_ts not an int", purge(map[string]any{"purge_up_to_ts": "yesterday"}), 400, commands.CodeBadJSON, "purge_up_to_ts must be an int"},
		{"no cut-off", purge(map[string]any{"delete_local_events": true}), 400, commands.CodeBadJSON, "must specify purge_up_to_event_id or purge_up_to_ts"},
		{"a rejected event as the cut-off", purge(map[string]any{"event_id": rejected.ID()}), 404, commands.CodeNotFound, "Could not find event " + rejected.ID()},
		{"status without purge_id", status(mustEncode(t, map[string]any{})), 400, commands.CodeMissingParam, "Missing params: ['purge_id']"},
		{"status of a payload that is not a map", status(notMap), 400, commands.CodeBadJSON, "Request must be a MessagePack map"},
		// {purge_id: [270k empty maps]} (270 KB) would have made the
		// decoder build 270k Go maps (bus.RequestLimits). It is a map:
		// the answer names the limit it passed.
		{"a request of too many values", status(append(append([]byte{0x81, 0xa8}, "purge_id"...), append([]byte{0xdd, 0, 4, 0x1e, 0xb0}, bytes.Repeat([]byte{0x80}, 270_000)...)...)), 400, commands.CodeLimitExceeded, "Request has too many values (at most 262144)"},
		{"a request nested too deeply", status(append(append([]byte{0x81, 0xa8}, "purge_id"...), bytes.Repeat([]byte{0x91}, 150)...)), 400, commands.CodeLimitExceeded, "Request is nested too deeply (at most 100 levels)"},
	} {
		var e *commands.Error
		if !errors.As(tt.err, &e) || e.Status != tt.status || e.Code != tt.code || !strings.HasPrefix(e.Message, tt.text) {
			t.Errorf("%s: %v, want %d %s %q", tt.name, tt.err, tt.status, tt.code, tt.text)
		}
	}

	// No task runner runs here: the purge's task stays scheduled.
	if err := purge(map[string]any{"event_id": cut.ID()}); err != nil {
		t.Fatal(err)
	}
	data, err := a.PurgeStatus(ctx, subjects.API("purge_status"), mustEncode(t, map[string]any{"purge_id": "purge1"}))
	if err != nil {
		t.Fatal(err)
	}
	m, err := bus.DecodeMap(data, bus.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	if task, _ := a.Store.Task("purge1"); task == nil || task.Status != commands.TaskScheduled || m["status"] != commands.TaskActive {
		t.Fatalf("status of a scheduled purge: %v (task %+v), want active", m, task)
	}
}

// TestAdmin_PurgeDeleteLocalEventsIsTruthy: Synapse reads
// delete_local_events by truth (any true value, such as 1 or "yes"), and
// the command carries a boolean.
func TestAdmin_PurgeDeleteLocalEventsIsTruthy(t *testing.T) {
	for i, v := range []any{1, "yes", true, 0, "", false} {
		r := testenv.NewRoom(fmt.Sprint("truthy", i), "test")
		cut := r.Msg("@alice:test", "one")
		a, store := rejectingAdmin(t, func() string { return "purge1" }, append(r.Setup("@alice:test"), cut, r.Msg("@alice:test", "two"))...)
		req := mustEncode(t, map[string]any{"event_id": cut.ID(), "delete_local_events": v})
		if _, err := a.PurgeHistory(context.Background(), subjects.APIRoom(r.ID, "purge_history"), req); err != nil {
			t.Fatal(err)
		}
		task, err := store.Task("purge1")
		if err != nil || task == nil {
			t.Fatalf("task: %+v (%v)", task, err)
		}
		want := i < 3
		if got := task.Params["delete_local_events"]; got != want {
			t.Errorf("delete_local_events %#v: the command carries %#v, want %v", v, got, want)
		}
	}
}

// TestAdmin_ExpiredPurgeIsNotFound: a finished purge's status is 404 from
// 7 days after its last update, as Synapse's scheduler forgets it, even
// before the sweep deletes its record.
func TestAdmin_ExpiredPurgeIsNotFound(t *testing.T) {
	r := testenv.NewRoom("expired", "test")
	cut := r.Msg("@alice:test", "one")
	a, store := rejectingAdmin(t, func() string { return "purge1" }, append(r.Setup("@alice:test"), cut, r.Msg("@alice:test", "two"))...)
	ctx := context.Background()
	if _, err := a.PurgeHistory(ctx, subjects.APIRoom(r.ID, "purge_history"), mustEncode(t, map[string]any{"event_id": cut.ID()})); err != nil {
		t.Fatal(err)
	}
	task, err := store.Task("purge1")
	if err != nil || task == nil {
		t.Fatalf("task: %+v (%v)", task, err)
	}
	clock := testenv.NewClock(time.Now())
	runner := &handlers.TaskRunner{Store: store, Log: a.Log.(noMsgID).log, Waiter: a.Waiter, Subjects: subjects, Now: clock.Now}
	n := task.Updates
	if err := runner.Update(ctx, task, &n, commands.TaskComplete); err != nil {
		t.Fatal(err)
	}
	a.Now = clock.Now
	req := mustEncode(t, map[string]any{"purge_id": "purge1"})
	clock.Advance(7*24*time.Hour - time.Second)
	if _, err := a.PurgeStatus(ctx, subjects.API("purge_status"), req); err != nil {
		t.Fatalf("status a second before expiry: %v", err)
	}
	clock.Advance(2 * time.Second)
	_, err = a.PurgeStatus(ctx, subjects.API("purge_status"), req)
	var e *commands.Error
	if !errors.As(err, &e) || e.Status != 404 || e.Message != "purge id 'purge1' not found" {
		t.Fatalf("status a second after expiry: %v, want 404", err)
	}
	if task, _ := store.Task("purge1"); task == nil {
		t.Fatal("the record is gone already: the test no longer covers the expiry before the sweep")
	}
}
