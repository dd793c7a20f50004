package handlers

import (
	"context"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/testenv"
)

// TestBackfill_BackoffSaturates: the back-off doubles with each failure,
// up to 2^8 times the configured base, and never overflows into the past:
// with a base of years (the config takes up to 292 years) the ninth
// failure made a negative duration, and the point was tried again on
// every read.
func TestBackfill_BackoffSaturates(t *testing.T) {
	now := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	for _, base := range []time.Duration{time.Hour, 2 * 365 * 24 * time.Hour, 292 * 365 * 24 * time.Hour} {
		b := &Backfiller{Backoff: base, Now: func() time.Time { return now }}
		b.init()
		last := now
		for attempt := 1; attempt <= 12; attempt++ {
			b.failed("!r:test", []point{{id: "$x"}})
			until := b.failures["!r:test|$x"].until
			if !until.After(now) || until.Before(last) {
				t.Fatalf("base %v, failure %d: retry at %v, before the one before (%v) or not after now", base, attempt, until, last)
			}
			last = until
		}
		if base == time.Hour && last.Sub(now) != 256*time.Hour {
			t.Errorf("an hour's back-off after 12 failures: %v, want 256h", last.Sub(now))
		}
	}
}

// TestBackfill_AppendWaitsForItsNewestEvent: a backfill reply may repeat
// events the log holds; JetStream acks such a repeat (within its
// duplicate window) with its first sequence, far below the new events'.
// append must report the greatest sequence, or the read that waits for it
// reads its page again before the new events are applied (its gap then
// shows, or partly).
func TestBackfill_AppendWaitsForItsNewestEvent(t *testing.T) {
	n := testenv.NewNATS(t)
	s := bus.Subjects{Prefix: "sb"}
	ctx := context.Background()
	if _, err := bus.EnsureStream(ctx, n.JS, s, "SCROLLBACK"); err != nil {
		t.Fatal(err)
	}
	log := &bus.Log{JS: n.JS, Stream: "SCROLLBACK", Subjects: s}
	r := testenv.NewRoom("dups", "test")
	evs := r.Setup("@alice:test")
	old, nw := evs[0], evs[1]
	data, err := bus.Encode(map[string]any(old))
	if err != nil {
		t.Fatal(err)
	}
	first, err := log.Append(ctx, s.Room(r.ID, "event"), old.ID(), data)
	if err != nil {
		t.Fatal(err)
	}
	b := &Backfiller{Log: log, Subjects: s}
	// The new event, then the repeat, as a reply lists them newest first
	// down to what the room holds, decoded as they come off the wire.
	wire := func(e testenv.Event) any {
		data, err := bus.Encode(map[string]any(e))
		if err != nil {
			t.Fatal(err)
		}
		m, err := bus.DecodeMap(data, bus.DefaultLimits)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	appended, last, err := b.append(ctx, r.ID, []any{wire(nw), wire(old)})
	if err != nil || appended != 2 {
		t.Fatalf("append = %d, %v", appended, err)
	}
	if last < first+1 {
		t.Fatalf("append reports sequence %d; the new event is at %d or after (the repeat acks with %d)", last, first+1, first)
	}
}
