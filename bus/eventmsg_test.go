package bus_test

import (
	"context"
	"fmt"
	"testing"
)

// TestEventMessages: an event's message is found by its sequence on the
// room's event subject and, once a compaction moved it, as a kept copy
// among many; an erased one, or one of another room, is absent.
func TestEventMessages(t *testing.T) {
	k := newKeptLog(t, 40)
	ctx := context.Background()
	var erase []uint64
	for i := 1; i <= 30; i += 2 {
		erase = append(erase, k.seqs[fmt.Sprintf("a%d", i)])
	}
	if err := k.log.Compact(ctx, "!a:x", erase); err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for i := 1; i <= 40; i++ {
		seqs = append(seqs, k.seqs[fmt.Sprintf("a%d", i)])
	}
	got, err := k.log.EventMessages(ctx, "!a:x", append(seqs, k.seqs["b4"]))
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 40; i++ {
		name := fmt.Sprintf("a%d", i)
		data, ok := got[k.seqs[name]]
		if i <= 30 && i%2 == 1 {
			if ok {
				t.Errorf("erased %s read: %q", name, data)
			}
			continue
		}
		if string(data) != name {
			t.Errorf("%s (kept: %v): %q, %v", name, i <= 30, data, ok)
		}
	}
	if data, ok := got[k.seqs["b4"]]; ok {
		t.Errorf("room b's message read as room a's: %q", data)
	}
	if got, err := k.log.EventMessages(ctx, "!c:x", []uint64{k.seqs["a2"]}); err != nil || len(got) != 0 {
		t.Errorf("a room without a kept subject: %v, %v", got, err)
	}
	// A log that cannot answer is an error, not messages gone.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := k.log.EventMessages(cctx, "!a:x", seqs); err == nil {
		t.Error("no error with a cancelled context")
	}
}
