package handlers_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	berrors "go.etcd.io/bbolt/errors"

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

func (a noMsgID) SubjectLastSeq(ctx context.Context, subject string) (uint64, error) {
	return a.log.SubjectLastSeq(ctx, subject)
}

func (a noMsgID) AppendAfter(ctx context.Context, subject, _ string, data []byte, last uint64) (uint64, error) {
	return a.log.AppendAfter(ctx, subject, "", data, last)
}

// TestAdmin_RejectedCommandIsAnError: an admin request whose command the
// projector dead-letters, rather than applies, is answered with an error
// that names the command's sequence and the reason, at once. Before, the
// block was reported done, the purge got a purge_id whose status was
// then 404, and a v1 room deletion waited ten minutes for a task that
// would never finish.
func TestAdmin_RejectedCommandIsAnError(t *testing.T) {
	r := testenv.NewRoom("rejected", "test")
	cut := r.Msg("@alice:test", "one")
	a, store := rejectingAdmin(t, func() string { return "sameid" }, append(r.Setup("@alice:test"), cut, r.Msg("@alice:test", "two"))...)
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

// TestAdmin_CommandThatFailsToApplyIsAnError: the projector's other way to
// dead-letter a command, after applying it failed three times over (a
// poison message: in service, a bug or a corrupt file), is also answered
// with a 500 that names the task and the error, and the room's later
// commands are applied as before. The test's decoder makes the command's
// room ID, a key of the rooms bucket, longer than bbolt takes
// (bolt.MaxKeySize) behind the log's validation, as such a bug would.
func TestAdmin_CommandThatFailsToApplyIsAnError(t *testing.T) {
	r := testenv.NewRoom("poisoned", "test")
	ids := []string{"poison"}
	newID := func() string {
		id := "fine"
		if len(ids) > 0 {
			id, ids = ids[0], ids[1:]
		}
		return id
	}
	decode := testenv.PoisonDecoder(subjects, "poison")
	a, store := decodingAdmin(t, newID, decode, r.Setup("@alice:test")...)
	req, err := bus.Encode(map[string]any{"block": true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // bounded: a projector that retried forever would never answer
	defer cancel()
	_, err = a.Block(ctx, subjects.APIRoom(r.ID, "block"), req)
	var e *commands.Error
	if !errors.As(err, &e) || e.Status != 500 || !strings.Contains(e.Message, "task poison") || !strings.Contains(e.Message, "internal error applying message") || !strings.Contains(e.Message, berrors.ErrKeyTooLarge.Error()) {
		t.Fatalf("block whose command fails to apply: err = %v, want a 500 naming the task and the error", err)
	}
	if dl, err := store.DeadLetters(10); err != nil || len(dl) != 1 || !strings.Contains(dl[0].Reason, berrors.ErrKeyTooLarge.Error()) {
		t.Fatalf("dead letters: %+v (err %v), want the poisoned block", dl, err)
	}
	if _, err := a.Block(context.Background(), subjects.APIRoom(r.ID, "block"), req); err != nil {
		t.Fatalf("the next block of the room: %v", err)
	}
	if task, err := store.Task("fine"); err != nil || task == nil || task.Status != commands.TaskComplete {
		t.Fatalf("the next block's task: %+v (err %v), want complete", task, err)
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

// rejectingAdmin runs a projector over a real log holding evs, and an
// Admin whose commands get their IDs from newID and go to the log without
// a Nats-Msg-Id (noMsgID).
func rejectingAdmin(t *testing.T, newID func() string, evs ...testenv.Event) (*handlers.Admin, *projections.Store) {
	t.Helper()
	return decodingAdmin(t, newID, subjects.Decode, evs...)
}

// decodingAdmin is rejectingAdmin with a projector that decodes the log
// with decode.
func decodingAdmin(t *testing.T, newID func() string, decode projections.Decoder, evs ...testenv.Event) (*handlers.Admin, *projections.Store) {
	t.Helper()
	log, store, p := projectedLog(t, decode, evs...)
	return &handlers.Admin{Store: store, Waiter: p, Log: noMsgID{log}, Subjects: subjects, Now: time.Now, NewID: newID}, store
}

// projectedLog runs a projector, decoding with decode, over a real log
// holding evs, and returns once they are applied.
func projectedLog(t *testing.T, decode projections.Decoder, evs ...testenv.Event) (*bus.Log, *projections.Store, *projections.Projector) {
	t.Helper()
	n := testenv.NewNATS(t)
	log := n.Stream(t, subjects, "SCROLLBACK")
	store := testenv.NewStore(t)
	p := &projections.Projector{Store: store, Source: log, Decode: decode, RoomKeyOf: roomKeyOf}
	if err := p.Init(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testenv.WaitFor(t, 10*time.Second, "projector start", p.Started)
	seqs := (&testenv.Publisher{JS: n.JS, Subjects: subjects}).Publish(t, evs...)
	if err := p.WaitFor(context.Background(), roomOf(evs[len(evs)-1]), seqs[len(seqs)-1]); err != nil {
		t.Fatal(err)
	}
	return log, store, p
}

func roomOf(ev testenv.Event) string { return ev["room_id"].(string) }

// TestForgottenRooms_ARejectedRoomDoesNotStopTheOthers: the forgotten-room
// purge goes on past a room whose purge_room the projection rejects, and
// reports it, as the retention jobs do; else that room, forgotten still
// at every run, would keep every room after it from being purged.
func TestForgottenRooms_ARejectedRoomDoesNotStopTheOthers(t *testing.T) {
	var evs []testenv.Event
	var rooms []*testenv.Room
	for _, name := range []string{"forgot1", "forgot2"} {
		r := testenv.NewRoom(name, "test")
		rooms = append(rooms, r)
		evs = append(append(evs, r.Setup("@alice:test")...), r.Member("@alice:test", "@alice:test", "leave"))
	}
	ids := []string{"taken", "taken"} // the first purge_room reuses the block's task ID
	a, store := rejectingAdmin(t, func() string {
		id := "fresh"
		if len(ids) > 0 {
			id, ids = ids[0], ids[1:]
		}
		return id
	}, evs...)
	other := testenv.NewRoom("other", "test")
	req, err := bus.Encode(map[string]any{"block": true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Block(context.Background(), subjects.APIRoom(other.ID, "block"), req); err != nil {
		t.Fatal(err)
	}
	for i, r := range rooms { // alice forgets each room, as the homeserver tells
		data, err := bus.Encode(map[string]any{"id": fmt.Sprintf("forget%d", i), "action": commands.ActionForget, "room_id": r.ID,
			"params": map[string]any{"user_id": "@alice:test"}, "ts": time.Now().UnixMilli()})
		if err != nil {
			t.Fatal(err)
		}
		seq, err := a.Log.Append(context.Background(), subjects.Room(r.ID, commands.KindCmd), "", data)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Waiter.WaitFor(context.Background(), r.ID, seq); err != nil {
			t.Fatal(err)
		}
	}
	f := &handlers.ForgottenRooms{Period: time.Millisecond, ServerName: "test", Store: store, Admin: a,
		Now: func() time.Time { return time.Now().Add(time.Hour) }, Logger: slog.New(slog.DiscardHandler)}
	purged, err := f.RunOnce(context.Background())
	if purged != 1 || err == nil || !strings.Contains(err.Error(), "taken") {
		t.Fatalf("RunOnce = %d, %v: want one room purged and the other's rejection reported", purged, err)
	}
	left, err := store.ForgottenRooms("test", time.Now().Add(time.Hour).UnixMilli(), 1)
	if err != nil || len(left) != 1 {
		t.Fatalf("forgotten rooms left: %v (err %v), want the rejected one", left, err)
	}
}

// The forgotten-rooms job reads the rooms from the log as it is now, as
// the retention jobs do: an instance that has not caught up (a new owner
// after a failover) would miss the purge_room the last owner published,
// and publish another. Found by a review helper.
func TestForgottenRooms_CatchesUpFirst(t *testing.T) {
	asked := false
	a := &handlers.Admin{Store: testenv.NewStore(t), CatchUp: func(context.Context) error { asked = true; return errors.New("behind") }}
	f := &handlers.ForgottenRooms{Period: time.Millisecond, ServerName: "test", Store: a.Store, Admin: a,
		Now: time.Now, Logger: slog.New(slog.DiscardHandler)}
	if purged, err := f.RunOnce(context.Background()); !asked || err == nil || purged != 0 {
		t.Fatalf("RunOnce = %d, %v, caught up first: %v; want an error from the catch-up", purged, err, asked)
	}
}
