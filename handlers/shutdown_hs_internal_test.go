package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/testenv"
)

// stopOnNoResponders asks the real requester, and cancels the shutdown's
// context once the homeserver has no responders: a stop that comes while
// hs retries, the homeserver's workers gone.
type stopOnNoResponders struct {
	req  *bus.Requester
	stop context.CancelFunc
}

func (s stopOnNoResponders) Request(ctx context.Context, subject string, req any) ([]byte, error) {
	data, err := s.req.Request(ctx, subject, req)
	if errors.Is(err, bus.ErrNoResponders) {
		s.stop()
	}
	return data, err
}

// TestHS_CancelledWhileRetryingEndsCancelled: a request to the homeserver
// that hs retries for want of responders, and whose shutdown is cancelled
// meanwhile, ends with the cancellation, so that the metrics label it
// cancelled rather than error (Metrics.ObserveHomeserver): it ended with
// "no responders" alone, and a stop while the homeserver was down counted
// as the homeserver's errors.
func TestHS_CancelledWhileRetryingEndsCancelled(t *testing.T) {
	n := testenv.NewNATS(t) // nobody answers sb.hs.*
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var observed error
	r := &TaskRunner{HS: stopOnNoResponders{&bus.Requester{NC: n.NC}, cancel}, HSTimeout: time.Hour,
		Subjects: bus.Subjects{Prefix: "sb"}, Logger: slog.New(slog.DiscardHandler),
		ObserveHS: func(_ string, _ time.Duration, err error) { observed = err }}
	_, err := r.hs(ctx, "leave", map[string]any{"txn_id": "T-leave-0", "room_id": "!r:t", "user_id": "@a:t"})
	if !errors.Is(err, context.Canceled) || !errors.Is(observed, context.Canceled) {
		t.Fatalf("hs returned %v and observed %v, want both to be context.Canceled", err, observed)
	}
	if !errors.Is(err, bus.ErrNoResponders) {
		t.Errorf("hs returned %v, which no longer says the homeserver had no responders", err)
	}
}

// TestKickFailures_AStopIsNoFailure: kicks that end because the task was
// cancelled or the service stops are logged at Debug and do not count
// among the failures the summary reports, which are the homeserver's.
func TestKickFailures_AStopIsNoFailure(t *testing.T) {
	var out testenv.Buffer
	f := &kickFailures{log: slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug})), task: "t1"}
	for range warnedKicks + 5 {
		f.add("leave", "@u:test", fmt.Errorf("no responders; given up: %w", context.Canceled))
	}
	f.summary()
	if f.n != 0 || strings.Contains(out.String(), "level=WARN") {
		t.Fatalf("%d failures counted, log:\n%s", f.n, out.String())
	}
	f.add("leave", "@u:test", errors.New("timeout"))
	if f.n != 1 || !strings.Contains(out.String(), "level=WARN") {
		t.Fatalf("a homeserver's failure: %d counted, log:\n%s", f.n, out.String())
	}
}
