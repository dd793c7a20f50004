package handlers

import (
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
)

type nopWaiter struct{}

func (nopWaiter) WaitFor(context.Context, string, uint64) error { return nil }
func (nopWaiter) Watermark(string) uint64                       { return 0 }

func fnv32(s string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(s))
	return h.Sum32()
}

// TestShutdown_ResumedLegacyTaskKeepsItsTxnIDs (found by a review helper):
// a deletion started by the previous release recorded users_to_kick as a
// map and numbered each user's txn_ids with the FNV-1a hash of their ID.
// When this release resumes it, a user whose leave went through but was not
// yet recorded as kicked must be asked again under the same txn_id, or the
// homeserver acts a second time (a second leave, forget and join: kicked
// twice).
func TestShutdown_ResumedLegacyTaskKeepsItsTxnIDs(t *testing.T) {
	hs := &cachingHS{}
	r := &TaskRunner{HS: hs, Log: &dedupLog{}, Waiter: nopWaiter{}, Now: time.Now,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Concurrency: 2, Subjects: bus.Subjects{Prefix: "sb"}}
	task := &commands.Task{ID: "T", RoomID: "!r:t"}
	// As the previous release left it: @a done, @b's leave sent (under
	// T-leave-<fnv(@b)>) but the kill came before it was recorded.
	res := resultOf(map[string]any{
		"kicked_users": []any{"@a:t"},
		todoKey:        map[string]any{"@a:t": "join", "@b:t": "join"},
	})
	n := 0
	if err := r.kickAll(context.Background(), task, res, &n); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("T-leave-%d", fnv32("@b:t"))
	if !hs.seen[want] {
		var got []string
		for k := range hs.seen {
			got = append(got, k)
		}
		t.Fatalf("@b:t was asked under %v, not %s, the txn_id its first leave had: the homeserver acts again", got, want)
	}
	// A newcomer gets txn_ids no listed user has had.
	before := len(hs.seen)
	res.list(map[string]string{"@c:t": "join"})
	if err := r.kickAll(context.Background(), task, res, &n); err != nil {
		t.Fatal(err)
	}
	if got := len(hs.seen) - before; got != 2 {
		t.Fatalf("@c:t's leave and forget: %d new txn_ids, want 2", got)
	}
}
