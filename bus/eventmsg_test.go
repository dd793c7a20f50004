package bus_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
)

// TestEventMessage: an event's message is found by its sequence on the
// room's event subject and, once a compaction moved it, as a kept copy
// among many; an erased one, or one of another room, is ErrEventGone.
func TestEventMessage(t *testing.T) {
	k := newKeptLog(t, 40)
	ctx := context.Background()
	var erase []uint64
	for i := 1; i <= 30; i += 2 {
		erase = append(erase, k.seqs[fmt.Sprintf("a%d", i)])
	}
	if err := k.log.Compact(ctx, "!a:x", erase); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 40; i++ {
		name := fmt.Sprintf("a%d", i)
		data, err := k.log.EventMessage(ctx, "!a:x", k.seqs[name])
		if i <= 30 && i%2 == 1 {
			if !errors.Is(err, bus.ErrEventGone) {
				t.Errorf("erased %s: %q, %v; want ErrEventGone", name, data, err)
			}
			continue
		}
		if err != nil || string(data) != name {
			t.Errorf("%s (kept: %v): %q, %v", name, i <= 30, data, err)
		}
	}
	// EventMessages reads them all at once: nil for the erased ones.
	var seqs []uint64
	for i := 1; i <= 40; i++ {
		seqs = append(seqs, k.seqs[fmt.Sprintf("a%d", i)])
	}
	all, err := k.log.EventMessages(ctx, "!a:x", seqs)
	if err != nil || len(all) != 40 {
		t.Fatalf("EventMessages: %d, %v", len(all), err)
	}
	for i, data := range all {
		want := fmt.Sprintf("a%d", i+1)
		if i < 30 && i%2 == 0 {
			want = ""
		}
		if string(data) != want || (want == "") != (data == nil) {
			t.Errorf("EventMessages: %q for %s, want %q", data, fmt.Sprintf("a%d", i+1), want)
		}
	}
	if data, err := k.log.EventMessage(ctx, "!a:x", k.seqs["b4"]); !errors.Is(err, bus.ErrEventGone) {
		t.Errorf("room b's message read as room a's: %q, %v", data, err)
	}
	if data, err := k.log.EventMessage(ctx, "!c:x", k.seqs["a2"]); !errors.Is(err, bus.ErrEventGone) {
		t.Errorf("a room without a kept subject: %q, %v", data, err)
	}
}

// TestEventMessage_ForeignMessagesOnTheKeptSubject: a message on the kept
// subject that the service did not make (no valid Sb-Kept-Seq header) is
// passed over, wherever it stands: last on the subject, or between the
// copies of two compactions (the second, finding it last, copies after
// it). Every kept copy is still found, and every erased message is gone.
func TestEventMessage_ForeignMessagesOnTheKeptSubject(t *testing.T) {
	k := newKeptLog(t, 60)
	ctx := context.Background()
	keptSubj := k.log.Subjects.Room("!a:x", commands.KindKept)
	compact := func(from, to int) {
		t.Helper()
		var erase []uint64
		for i := from; i <= to; i += 2 {
			erase = append(erase, k.seqs[fmt.Sprintf("a%d", i)])
		}
		if err := k.log.Compact(ctx, "!a:x", erase); err != nil {
			t.Fatal(err)
		}
	}
	check := func(when string, compacted int) {
		t.Helper()
		for i := 1; i <= 60; i++ {
			name := fmt.Sprintf("a%d", i)
			data, err := k.log.EventMessage(ctx, "!a:x", k.seqs[name])
			if i <= compacted && i%2 == 1 {
				if !errors.Is(err, bus.ErrEventGone) {
					t.Errorf("%s: erased %s: %q, %v; want ErrEventGone", when, name, data, err)
				}
				continue
			}
			if err != nil || string(data) != name {
				t.Errorf("%s: %s: %q, %v", when, name, data, err)
			}
		}
	}
	compact(1, 29)
	if _, err := k.log.Append(ctx, keptSubj, "", []byte("foreign")); err != nil {
		t.Fatal(err)
	}
	check("a foreign message last", 29)
	compact(31, 49) // copies a32..a48 after the foreign message
	check("a foreign message between two compactions' copies", 49)
}
