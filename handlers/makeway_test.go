package handlers_test

import (
	"context"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/testenv"
)

// TestMakeWayForReads_BoundedWhileRequestsWaitForWorkers: while a request
// waits for a worker, the eraser's wait (run before every DeleteMsg)
// still ends within its two short bounds, not the janitor's second: an
// erasure message by message must not drop to a message a second. The
// janitor's wait, and the eraser's before a step of a compaction (thousands
// of messages), hold on until the queue drains, for up to a second.
func TestMakeWayForReads_BoundedWhileRequestsWaitForWorkers(t *testing.T) {
	load := &bus.Load{}
	testenv.NewNATS(t).HoldRequests(t, load, 3, 2) // the third waits for a worker

	start := time.Now()
	handlers.MakeWayForReads(load)(context.Background())
	if took := time.Since(start); took < handlers.LongestWaitForReads || took > handlers.LongestBackoff/2 {
		t.Fatalf("the eraser's wait took %v with a request waiting for a worker: want its short bounds, %v each", took, handlers.LongestWaitForReads)
	}
	for name, wait := range map[string]func(*bus.Load) func(context.Context){
		"the janitor's": handlers.BackoffForReads, "a compaction step's": handlers.MakeWayForCompaction} {
		start = time.Now()
		wait(load)(context.Background())
		if took := time.Since(start); took < handlers.LongestBackoff {
			t.Fatalf("%s wait took %v with a request waiting for a worker: want %v", name, took, handlers.LongestBackoff)
		}
	}
}

// TestMakeWayForKicks_Bounded: a shutdown's wait before each user makes
// way as the eraser's does, within its short bounds: one for the requests
// waiting for a worker, one for goroutines queued for a CPU. A shutdown
// of thousands of users must not drop to a user a second under reads.
func TestMakeWayForKicks_Bounded(t *testing.T) {
	load := &bus.Load{}
	testenv.WatchCPU(t, load)
	testenv.NewNATS(t).HoldRequests(t, load, 3, 2) // the third waits for a worker
	testenv.QueueForCPU(t)
	testenv.WaitFor(t, 10*time.Second, "the CPU gate to close", load.Calming)
	start := time.Now()
	handlers.MakeWayForKicks(load)(context.Background())
	if took := time.Since(start); took < handlers.LongestWaitForReads || took > handlers.LongestBackoff/2 {
		t.Fatalf("a kick's wait took %v with a request waiting for a worker and a CPU queue: want its short bounds, %v each", took, handlers.LongestWaitForReads)
	}
}

// TestMakeWay_CalmWhileGoroutinesQueueForACPU: with no request waiting
// for a worker but goroutines queued for a CPU, the janitor's and a
// kick's waits still wait, each within its short bound for it. A window
// may look calm now and then, and the gate opens once it has held work
// back for half its span (bus.CPUHoldShare); a wait ends at the first: the
// test starts ten waits while the gate is closed, and asks that they add
// up to a window at least.
func TestMakeWay_CalmWhileGoroutinesQueueForACPU(t *testing.T) {
	load := &bus.Load{}
	testenv.WatchCPU(t, load)
	testenv.QueueForCPU(t)
	for name, wait := range map[string]func(*bus.Load) func(context.Context){
		"the janitor's": handlers.BackoffForReads, "a kick's": handlers.MakeWayForKicks} {
		var total time.Duration
		for range 10 {
			testenv.WaitFor(t, 10*time.Second, "the CPU gate to close", load.Calming)
			start := time.Now()
			wait(load)(context.Background())
			took := time.Since(start)
			if took > handlers.LongestBackoff/2 {
				t.Fatalf("%s wait took %v with goroutines queued for a CPU: want at most about %v", name, took, handlers.LongestWaitForReads)
			}
			total += took
		}
		if total < bus.CPUWindow {
			t.Fatalf("ten of %s waits took %v in all while goroutines queued for a CPU, want at least a window, %v", name, total, bus.CPUWindow)
		}
	}
}
