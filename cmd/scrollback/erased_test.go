package main

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// An instance reading the log while another erases a room's history
// below a purge_room (CLUSTER.md) reads the room's start, then finds the
// rest gone: it saw the members join and not leave. The erasure follows
// only a purge_room that succeeded, so the reader must apply it as done,
// not fail it with "Users are still joined" where the instance that ran
// it completed it. A purge_room refused while the history is still in
// the log stays refused.
func TestProjector_PurgeRoomWhoseHistoryWasErasedUnderTheReader(t *testing.T) {
	n := testenv.NewNATS(t)
	subjects := bus.Subjects{Prefix: "sb"}
	log := n.Stream(t, subjects, "SCROLLBACK")
	pub := &testenv.Publisher{JS: n.JS, Subjects: subjects}
	const alice, bob = "@alice:test.example", "@bob:test.example"
	erased := testenv.NewRoom("erased", "test.example")
	kept := testenv.NewRoom("kept", "test.example")
	pub.Publish(t, erased.Setup(alice, bob)...)
	seqs := pub.Publish(t, kept.Setup(alice, bob)...)

	store, err := projections.Open(filepath.Join(t.TempDir(), "scrollback.db"), projections.Options{ServerName: "test.example"})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	// read applies the log up to seq, as an instance does, and stops.
	read := func(seq uint64) {
		t.Helper()
		p := &projections.Projector{Store: store, Source: log, Decode: subjects.Decode, RoomKeyOf: roomKeyToken("sb"),
			Erased: logErased(log, subjects)}
		if err := p.Init(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		defer func() { cancel(); <-done }()
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		defer wcancel()
		if err := p.WaitAll(wctx, seq); err != nil {
			t.Fatal(err)
		}
	}
	read(seqs[len(seqs)-1])

	// The rest of the erased room's life, as the instance that ran its
	// purge saw it: everybody leaves, the room is purged, and its events
	// are erased before the reader gets to them. The kept room's purge
	// is refused: its members are still there, and so is its history.
	pub.Publish(t, erased.Member(alice, alice, "leave"), erased.Member(bob, bob, "leave"))
	drop := pub.Command(t, map[string]any{"id": "drop-erased", "action": "purge_room", "room_id": erased.ID, "params": map[string]any{}})
	last := pub.Command(t, map[string]any{"id": "drop-kept", "action": "purge_room", "room_id": kept.ID, "params": map[string]any{}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := log.PurgeSubjectBelow(ctx, subjects.Room(erased.ID, commands.KindEvent), drop); err != nil {
		t.Fatal(err)
	}
	read(last)

	// Accepted, the purge waits for the task runner (not running here)
	// to complete it once the rows are gone.
	for id, want := range map[string]string{"drop-erased": commands.TaskScheduled, "drop-kept": commands.TaskFailed} {
		task, err := store.Task(id)
		if err != nil || task == nil {
			t.Fatalf("task %s: %v %v", id, task, err)
		}
		if task.Status != want {
			t.Errorf("task %s: %s %q, want %s", id, task.Status, task.Error, want)
		}
	}
	// The erased room starts anew; the kept room keeps its members.
	for room, want := range map[string]string{erased.ID: "", kept.ID: "join"} {
		if err := store.View(room, func(v *projections.RoomView) error {
			if got := v.Membership(alice); got != want {
				t.Errorf("%s: alice's membership %q, want %q", room, got, want)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}
