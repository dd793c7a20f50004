package handlers_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/testenv"
)

type seqLog struct {
	mu  sync.Mutex
	seq uint64
}

func (l *seqLog) Append(context.Context, string, string, []byte) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	return l.seq, nil
}

// SubjectLastSeq and AppendAfter: every room's commands are new here.
func (l *seqLog) SubjectLastSeq(context.Context, string) (uint64, error) { return 0, nil }

func (l *seqLog) AppendAfter(ctx context.Context, subject, msgID string, data []byte, _ uint64) (uint64, error) {
	return l.Append(ctx, subject, msgID, data)
}

// stalledRoomWaiter never sees one room's commands applied (its
// partition is stuck behind a long purge, say); every other room's are
// applied at once.
type stalledRoomWaiter struct{ stalled string }

func (w stalledRoomWaiter) WaitFor(ctx context.Context, roomID string, _ uint64) error {
	if roomID == w.stalled {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}
func (stalledRoomWaiter) Watermark(string) uint64 { return 0 }

// TestDelete_ARoomWhoseCommandIsSlowDoesNotHoldUpOthers (found by a review
// helper): a deletion waits up to WaitForTimeout (10 s) for its command
// to be applied. A deletion of another room must not wait for that:
// when a process-wide lock, one of 64 shared mutexes, serialized the
// check and the publish, a room sharing the slow room's mutex waited
// beyond its own deadline (mu.Lock ignores the request's ctx). The
// check and the publish are now one conditional append per room
// (bus.Log.AppendAfter), and no lock is shared.
func TestDelete_ARoomWhoseCommandIsSlowDoesNotHoldUpOthers(t *testing.T) {
	f := newFixture(t)
	slow, other := "!slow:test", "!other:test"
	log := &seqLog{}
	a := &handlers.Admin{Store: f.store, Waiter: stalledRoomWaiter{slow}, Log: log, Subjects: subjects,
		Now: time.Now, CanStart: func(string) bool { return false }}
	req, _ := bus.Encode(map[string]any{"requested_by": "@admin:test"})
	slowCtx, stop := context.WithCancel(context.Background())
	slowDone := make(chan struct{})
	go func() { _, _ = a.Delete(slowCtx, subjects.APIRoom(slow, "delete"), req); close(slowDone) }()
	defer func() { stop(); <-slowDone }()
	// Once its command is appended, the slow room's request waits in its
	// publish for the command to be applied.
	testenv.WaitFor(t, 5*time.Second, "the slow room's command appended", func() bool {
		log.mu.Lock()
		defer log.mu.Unlock()
		return log.seq > 0
	})

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { _, err := a.Delete(ctx, subjects.APIRoom(other, "delete"), req); done <- err }()
	select {
	case err := <-done:
		t.Logf("%s answered after %v: %v", other, time.Since(start), err)
	case <-time.After(3 * time.Second):
		t.Fatalf("the deletion of %s, a room nobody else deletes, still waits after %v (its deadline was 1 s): it waits for %s, whose command is slow to apply",
			other, time.Since(start), slow)
	}
}
