package bus_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/testenv"
)

// holdRequests serves an endpoint whose handler waits until release is
// called, sends n requests to it, and waits until the service holds them.
func holdRequests(t *testing.T, n int) (load *bus.Load, release func()) {
	return holdRequestsWith(t, n, 0)
}

// holdRequestsWith is holdRequests with workers workers (0: the default).
func holdRequestsWith(t *testing.T, n, workers int) (load *bus.Load, release func()) {
	t.Helper()
	load = &bus.Load{}
	return load, testenv.NewNATS(t).HoldRequests(t, load, n, workers)
}

// TestLoad_CountsHeldRequests: a service counts the requests it holds,
// and drops them from the count once answered.
func TestLoad_CountsHeldRequests(t *testing.T) {
	load, release := holdRequests(t, 3)
	release()
	testenv.WaitFor(t, 5*time.Second, "the count to fall to 0", func() bool { return load.Requests() == 0 })
	var none *bus.Load
	if none.Requests() != 0 {
		t.Fatal("a nil Load holds requests")
	}
}

// TestLoad_MakeWayWaitsForTheRequests: MakeWay returns once the service
// holds no more than the limit, or when its longest wait is over.
func TestLoad_MakeWayWaitsForTheRequests(t *testing.T) {
	load, release := holdRequests(t, 3)
	done := make(chan struct{})
	go func() {
		load.MakeWay(context.Background(), 2, time.Minute)
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("MakeWay returned while 3 requests were held, limit 2")
	case <-time.After(50 * time.Millisecond):
	}
	release()
	testenv.WaitFor(t, 5*time.Second, "MakeWay to return once the requests are answered", func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	})

	busy, _ := holdRequests(t, 2)
	start := time.Now()
	busy.MakeWay(context.Background(), 1, 20*time.Millisecond)
	if busy.Requests() != 2 || time.Since(start) < 20*time.Millisecond {
		t.Fatalf("MakeWay under load returned after %v with %d requests held: want its whole wait", time.Since(start), busy.Requests())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	busy.MakeWay(ctx, 1, time.Minute) // returns: the context has ended
}

// TestLoad_BackoffWhileRequestsWaitForWorkers: Backoff returns at once
// while every request has a worker; once one waits for a worker, it
// waits until the requests are down to half the workers, or for its
// longest wait, or until its context ends.
func TestLoad_BackoffWhileRequestsWaitForWorkers(t *testing.T) {
	enough, _ := holdRequestsWith(t, 2, 2)
	start := time.Now()
	if enough.Backoff(context.Background(), time.Minute); time.Since(start) > 10*time.Second {
		t.Fatal("Backoff waited while every request had a worker")
	}

	load, release := holdRequestsWith(t, 3, 2) // the third waits for a worker
	done := make(chan struct{})
	go func() {
		load.Backoff(context.Background(), time.Minute)
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("Backoff returned while a request waited for a worker")
	case <-time.After(50 * time.Millisecond):
	}
	release()
	testenv.WaitFor(t, 5*time.Second, "Backoff to return once the requests are answered", func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	})

	busy, _ := holdRequestsWith(t, 3, 2)
	start = time.Now()
	busy.Backoff(context.Background(), 20*time.Millisecond)
	if time.Since(start) < 20*time.Millisecond {
		t.Fatalf("Backoff returned after %v with a request waiting: want its whole wait", time.Since(start))
	}
	if got := busy.BackedOff(); got < 20*time.Millisecond || got > 10*time.Second {
		t.Fatalf("BackedOff is %v after a whole wait of 20ms", got)
	}
	if got := enough.BackedOff(); got != 0 {
		t.Fatalf("BackedOff is %v without a wait", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	busy.Backoff(ctx, time.Minute) // returns: the context has ended
	var none *bus.Load
	none.Backoff(context.Background(), time.Minute) // returns: no service
	if none.BackedOff() != 0 {
		t.Fatal("a nil Load backed off")
	}
}

// TestDeleteMsgs_WaitsBeforeEachDelete: DeleteMsgs asks BeforeDelete
// before each message, and a message is deleted only once it returned.
func TestDeleteMsgs_WaitsBeforeEachDelete(t *testing.T) {
	n := testenv.NewNATS(t)
	log := n.Stream(t, bus.Subjects{Prefix: "sb"}, "SCROLLBACK")
	seqs := publishN(t, n, log, 20)
	st, err := n.JS.Stream(context.Background(), "SCROLLBACK")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	asked := 0
	log.BeforeDelete = func(ctx context.Context) {
		mu.Lock()
		defer mu.Unlock()
		info, err := st.Info(ctx)
		if err != nil {
			t.Error(err)
			return
		}
		// Deletes run bus.DeleteInFlight at a time: at most that many
		// have been let through and not yet counted here.
		if gone := 20 - int(info.State.Msgs); gone > asked || gone < asked-bus.DeleteInFlight {
			t.Errorf("before delete %d: %d messages gone", asked+1, gone)
		}
		asked++
	}
	if err := log.DeleteMsgs(context.Background(), seqs); err != nil {
		t.Fatal(err)
	}
	if info, err := st.Info(context.Background()); err != nil || info.State.Msgs != 0 || asked != 20 {
		t.Fatalf("after: %d messages left (err %v), BeforeDelete asked %d times", info.State.Msgs, err, asked)
	}
}

// TestLoad_CalmWhileGoroutinesQueueForACPU: while more goroutines want
// to run than there are CPUs, WatchCPU sees them wait in Go's scheduling
// waits, and Calm waits while it does, for at most its longest. Once
// they stop, the queue is gone.
func TestLoad_CalmWhileGoroutinesQueueForACPU(t *testing.T) {
	load := &bus.Load{}
	testenv.WatchCPU(t, load)

	stop := testenv.QueueForCPU(t)
	testenv.WaitFor(t, 10*time.Second, "WatchCPU to see goroutines queue", load.Calming)
	// A window may look calm now and then (the test's own process gets
	// less CPU beside other tests, and samples fewer waits), and the gate
	// opens once it has held work back for half of its span: Calm returns
	// at the first. Each call starts while the gate is closed, so it waits
	// for the window's end at least, half a window on average.
	const longest = 200 * time.Millisecond
	var total time.Duration
	for range 10 {
		testenv.WaitFor(t, 10*time.Second, "the CPU gate to close", load.Calming)
		returned := make(chan time.Duration, 1)
		go func() {
			start := time.Now()
			load.Calm(context.Background(), longest)
			returned <- time.Since(start)
		}()
		// This test makes goroutines queue for a CPU on purpose, so the
		// goroutine that Calm wakes waits its turn too (300-550 ms past
		// longest seen beside other test runs): no bound near longest
		// holds on a loaded machine. The check is that Calm gives up
		// while the queue lasts, which one that never did would not.
		var took time.Duration
		select {
		case took = <-returned:
		case <-time.After(30 * time.Second):
			t.Fatalf("Calm(%v) still waiting after 30 s while goroutines queue for a CPU", longest)
		}
		total += took
	}
	stop()
	// Calmed counts the waits inside Calm, which lie within the calls
	// timed here: no more than total (the goroutine timing a call may
	// wait for a CPU after Calm returns), and a window at least.
	if calmed := load.Calmed(); calmed < bus.CPUWindow || calmed > total {
		t.Fatalf("ten calls took %v in all while goroutines queued for a CPU, and Calmed counts %v of waits; want at least a window, %v, and at most the calls' time", total, calmed, bus.CPUWindow)
	}
	testenv.WaitFor(t, 10*time.Second, "the queue to drain", func() bool { return !load.CPUQueued() && !load.Calming() })
	var none *bus.Load
	none.Calm(context.Background(), time.Hour)
	if none.CPUQueued() || none.Calming() || none.Calmed() != 0 {
		t.Fatal("a nil Load reports a CPU queue")
	}
}

// TestLoad_CalmHoldsBackHalfTheTimeAtMost: under a CPU queue that never
// drains (a busy host, or reads that take both cores), work that calls
// Calm before each step is held back for about CPUHoldShare of its time,
// not all of it: a shutdown or a purge still runs at least about half as
// fast as without the gate.
func TestLoad_CalmHoldsBackHalfTheTimeAtMost(t *testing.T) {
	load := &bus.Load{}
	testenv.WatchCPU(t, load)
	testenv.QueueForCPU(t)
	testenv.WaitFor(t, 10*time.Second, "the CPU gate to close", load.Calming)
	start := time.Now()
	var waited time.Duration
	for time.Since(start) < 3*bus.CPUHoldSpan {
		s := time.Now()
		load.Calm(context.Background(), bus.CPUWindow)
		waited += time.Since(s)
		// A step of the work: a millisecond of CPU, as a janitor's step
		// takes it.
		for s := time.Now(); time.Since(s) < time.Millisecond; {
		}
	}
	elapsed := time.Since(start)
	// A wait ends a poll after the gate opens, and that poll waits for a
	// CPU too: the margin.
	if share := float64(waited) / float64(elapsed); share > bus.CPUHoldShare+0.2 || share < 0.1 {
		t.Fatalf("Calm held the work back %v of %v (%.2f) under a queue that never drained, want about %.2f", waited, elapsed, share, bus.CPUHoldShare)
	}
	t.Logf("Calm held the work back %v of %v", waited, elapsed)
}
