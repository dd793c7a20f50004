package testenv

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
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

// QueueForCPU keeps the process's goroutines queued for a CPU until the
// returned stop is called (or the test ends): a hundred goroutines that
// each work for 100 µs and yield, so that each waits milliseconds for
// the others ahead of it, and often enough that Go's sampled scheduling
// waits (/sched/latencies, one in eight) fill every 20 ms with dozens of
// them.
func QueueForCPU(tb testing.TB) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				for start := time.Now(); time.Since(start) < 100*time.Microsecond; {
				}
				runtime.Gosched()
			}
		})
	}
	var once sync.Once
	stop = func() { once.Do(func() { close(done); wg.Wait() }) }
	tb.Cleanup(stop)
	return stop
}

// WatchCPU runs load.WatchCPU until the test ends, as the service does.
func WatchCPU(tb testing.TB, load *bus.Load) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { load.WatchCPU(ctx); close(done) }()
	tb.Cleanup(func() { cancel(); <-done })
}
