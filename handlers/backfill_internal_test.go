package handlers

import (
	"testing"
	"time"
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
