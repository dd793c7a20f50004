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
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// noMsgID appends without a Nats-Msg-Id, so that JetStream does not drop
// a second command with the same ID as a duplicate and the projector gets
// to reject it: the test's way to have the projector dead-letter one of
// the handlers' own commands (in service, that takes an error applying
// it three times over).
type noMsgID struct{ log *bus.Log }

func (a noMsgID) Append(ctx context.Context, subject, _ string, data []byte) (uint64, error) {
	return a.log.Append(ctx, subject, "", data)
}

// TestAdmin_RejectedCommandIsAnError: an admin request whose command the
// projector dead-letters, rather than applies, is answered with an error
// that names the command's sequence and the reason, at once. Before, the
// block was reported done, the purge got a purge_id whose status was
// then 404, and a v1 room deletion waited ten minutes for a task that
// would never finish.
func TestAdmin_RejectedCommandIsAnError(t *testing.T) {
	n := testenv.NewNATS(t)
	log := n.Stream(t, subjects, "SCROLLBACK")
	store := testenv.NewStore(t)
	p := &projections.Projector{Store: store, Source: log, Decode: subjects.Decode, RoomKeyOf: roomKeyOf}
	if err := p.Init(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testenv.WaitFor(t, 10*time.Second, "projector start", p.Started)

	r := testenv.NewRoom("rejected", "test")
	cut := r.Msg("@alice:test", "one")
	seqs := (&testenv.Publisher{JS: n.JS, Subjects: subjects}).Publish(t, append(r.Setup("@alice:test"), cut, r.Msg("@alice:test", "two"))...)
	if err := p.WaitFor(context.Background(), r.ID, seqs[len(seqs)-1]); err != nil {
		t.Fatal(err)
	}
	a := &handlers.Admin{Store: store, Waiter: p, Log: noMsgID{log}, Subjects: subjects, Now: time.Now,
		NewID: func() string { return "sameid" }}
	block := func() error {
		req, err := bus.Encode(map[string]any{"block": true})
		if err != nil {
			t.Fatal(err)
		}
		_, err = a.Block(context.Background(), subjects.APIRoom(r.ID, "block"), req)
		return err
	}
	if err := block(); err != nil {
		t.Fatalf("the first block: %v", err)
	}
	before, err := store.DeadLetters(10)
	if err != nil || len(before) != 0 {
		t.Fatalf("dead letters before: %v (err %v)", before, err)
	}

	del := func(wait bool) error {
		req, err := bus.Encode(map[string]any{"wait": wait})
		if err != nil {
			t.Fatal(err)
		}
		// Bounded: v1 waits for its deletion to finish.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = a.Delete(ctx, subjects.APIRoom(r.ID, "delete"), req)
		return err
	}
	req, err := bus.Encode(map[string]any{"event_id": cut.ID()})
	if err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"block": block,
		"purge_history": func() error {
			_, err := a.PurgeHistory(context.Background(), subjects.APIRoom(r.ID, "purge_history"), req)
			return err
		},
		"delete (v2)": func() error { return del(false) },
		"delete (v1)": func() error { return del(true) },
	} {
		err := call()
		var e *commands.Error
		if !errors.As(err, &e) || e.Status != 500 || !strings.Contains(e.Message, "sameid") || !strings.Contains(e.Message, commands.ErrDuplicateCommand.Error()) {
			t.Errorf("%s with a command the projector rejects: err = %v, want a 500 naming the task and the reason", name, err)
		}
	}
	if dl, err := store.DeadLetters(10); err != nil || len(dl) != 4 {
		t.Fatalf("dead letters after: %v (err %v), want the four rejected commands", dl, err)
	}
}

// roomKeyOf is the <rk> of a room log subject, sb.room.<rk>.<kind>.
func roomKeyOf(subject string) string {
	roomID, _, err := subjects.ParseRoomSubject(subject)
	if err != nil {
		return ""
	}
	return bus.RoomKey(roomID)
}
