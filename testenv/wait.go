package testenv

import (
	"testing"
	"time"
)

// WaitFor polls cond until it returns true or timeout passes, then fails
// the test with what.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	WaitEvery(tb, timeout, 5*time.Millisecond, what, cond)
}

// WaitEvery is WaitFor polling every interval, for a cond that costs more
// than a glance (a read of a room's whole log).
func WaitEvery(tb testing.TB, timeout, interval time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// Applied is what WaitApplied needs of a projector.
type Applied interface{ Applied() uint64 }

// WaitApplied waits until every log message up to seq is applied.
func WaitApplied(tb testing.TB, p Applied, seq uint64) {
	tb.Helper()
	WaitFor(tb, 20*time.Second, "the projection to apply the log", func() bool { return p.Applied() >= seq })
}
