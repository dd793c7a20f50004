package handlers

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
)

// dedupLog is the log's duplicate window: a second message with a known
// ID is dropped and acknowledged with the first one's sequence (as
// JetStream does), and reported as bus.ErrDuplicate to AppendNew.
type dedupLog struct {
	mu  sync.Mutex
	seq uint64
	ids map[string]uint64
}

func (l *dedupLog) AppendNew(_ context.Context, _, id string, _ []byte) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s, ok := l.ids[id]; ok {
		return s, bus.ErrDuplicate
	}
	if l.ids == nil {
		l.ids = map[string]uint64{}
	}
	l.seq++
	l.ids[id] = l.seq
	return l.seq, nil
}

func (l *dedupLog) Append(ctx context.Context, subject, id string, data []byte) (uint64, error) {
	s, err := l.AppendNew(ctx, subject, id, data)
	if errors.Is(err, bus.ErrDuplicate) {
		err = nil
	}
	return s, err
}
func (l *dedupLog) LastSeq(context.Context) (uint64, error) { return l.seq, nil }

// cachingHS answers a txn_id it has seen from its cache, as a homeserver
// worker does: it records the txn_ids it was asked (seen) and counts the
// leaves it carried out per user.
type cachingHS struct {
	mu     sync.Mutex
	seen   map[string]bool
	leaves map[string]int
}

func (h *cachingHS) Request(_ context.Context, subject string, req any) ([]byte, error) {
	m := req.(map[string]any)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seen == nil {
		h.seen, h.leaves = map[string]bool{}, map[string]int{}
	}
	txn := m["txn_id"].(string) // one per step and user: <task>-leave-<n>
	if !h.seen[txn] {
		h.seen[txn] = true
		if subject == "sb.hs.leave" {
			h.leaves[m["user_id"].(string)]++
		}
	}
	return bus.Encode(map[string]any{})
}

// TestShutdown_OverlappingOwnersNeverShareATxnID (found by a review
// helper): the deletion's txn_ids number each user by their place in the
// task's list, so the list must be the one in the log. An old owner that
// listed the members, then paused past its lease, publishes its list's
// update after the new owner has published its own under the same message
// ID (the log drops it), and must not go on kicking with its own numbers: a
// user who joined between the two listings shifts the numbers, two users
// share a txn_id, and the homeserver answers one from the other's cache
// (never kicked) while another is kicked twice. CLUSTER.md says such an
// overlap can at worst repeat a step that has no effect.
func TestShutdown_OverlappingOwnersNeverShareATxnID(t *testing.T) {
	log, hs := &dedupLog{}, &cachingHS{}
	runner := func() *TaskRunner {
		return &TaskRunner{HS: hs, Log: log, Waiter: nopWaiter{}, Now: time.Now,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Concurrency: 1, Subjects: bus.Subjects{Prefix: "sb"}}
	}
	a, b := runner(), runner()
	task := &commands.Task{ID: "T", RoomID: "!r:t", Status: commands.TaskActive, Updates: 1}
	ctx := context.Background()
	// a listed the members before @b joined, and paused before publishing.
	resA, nA := resultOf(nil), task.Updates
	// b took over once a's lease expired; @b had joined by then.
	resB, nB := resultOf(nil), task.Updates
	// b publishes its list (listAndKick's first step) ...
	resB.list(map[string]string{"@a:t": "join", "@b:t": "join", "@c:t": "join"})
	if err := b.update(ctx, task, &nB, commands.TaskActive, resB.toMap(), ""); err != nil {
		t.Fatal(err)
	}
	// ... and a wakes up: its list's update is the log's duplicate of b's.
	err := a.listAndKick(ctx, task, resA, map[string]string{"@a:t": "join", "@c:t": "join"}, &nA)
	t.Logf("a's run: %v", err)
	// b kicks.
	if err := b.kickAll(ctx, task, resB, &nB); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"@a:t", "@b:t", "@c:t"} {
		if got := hs.leaves[u]; got != 1 {
			t.Errorf("%s left %d times, want 1", u, got)
		}
	}
}
