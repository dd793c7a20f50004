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
