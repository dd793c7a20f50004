package bus_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/scrollback/scrollback/bus"
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
	if data, err := k.log.EventMessage(ctx, "!a:x", k.seqs["b4"]); !errors.Is(err, bus.ErrEventGone) {
		t.Errorf("room b's message read as room a's: %q, %v", data, err)
	}
	if data, err := k.log.EventMessage(ctx, "!c:x", k.seqs["a2"]); !errors.Is(err, bus.ErrEventGone) {
		t.Errorf("a room without a kept subject: %q, %v", data, err)
	}
}
