package bus

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/scrollback/scrollback/internal/schedwait"
)

// Load counts the requests a Service holds: handed to it and not yet
// answered, whether a worker runs them or they wait for one. Background
// work that competes with the reads for the CPU asks it to make way (the
// log eraser: each DeleteMsg costs the server a write and an fsync, and
// the kernel as much CPU again).
//
// Requests held is the rate times the time each takes (Little's law), so
// it rises both when more reads come and when each waits longer for a
// CPU: a few more than the CPUs means reads are queueing. More than the
// service's workers means they queue for a worker, in the endpoints'
// subscriptions, where past a bound NATS drops them (Backoff).
//
// It also watches whether the process's goroutines queue for a CPU
// (WatchCPU, Calm): a few requests held can still each wait behind work
// that takes both cores in bursts, which the count does not show. That
// gate closes for at most CPUHoldShare of the time (cpuGate).
type Load struct {
	n         atomic.Int64
	detached  atomic.Int64 // requests waiting detached from the workers (Detach)
	workers   atomic.Int64 // the service's, once it serves
	backedOff atomic.Int64 // ns spent in Backoff's waits
	cpuQueued atomic.Bool  // the last CPUWindow's goroutines queued for a CPU (WatchCPU)
	cpuClosed atomic.Bool  // Calm holds background work back (WatchCPU's cpuGate)
	calmed    atomic.Int64 // ns spent in Calm's waits
}

// BackedOff is the time background work has waited in Backoff so far
// (0 for a nil Load): the scrollback_backoff_seconds_total metric.
func (l *Load) BackedOff() time.Duration {
	if l == nil {
		return 0
	}
	return time.Duration(l.backedOff.Load())
}

// Requests is how many requests the service holds now (0 for a nil Load).
func (l *Load) Requests() int {
	if l == nil {
		return 0
	}
	return int(l.n.Load())
}

// Detached is how many requests wait detached from the service's
// workers now (Detach; 0 for a nil Load): the scrollback_requests_detached
// metric. They are not among Requests.
func (l *Load) Detached() int {
	if l == nil {
		return 0
	}
	return int(l.detached.Load())
}

// serve records the number of workers of the service that counts.
func (l *Load) serve(workers int) {
	if l != nil {
		l.workers.Store(int64(workers))
	}
}

func (l *Load) add(d int64) {
	if l != nil {
		l.n.Add(d)
	}
}

func (l *Load) detach(d int64) {
	if l != nil {
		l.detached.Add(d)
	}
}

// makeWayPoll is how often MakeWay looks at the count again.
const makeWayPoll = 2 * time.Millisecond

// MakeWay waits while the service holds more than limit requests, for at
// most longest (so that background work slows down under a read load but
// never stops), or until ctx ends.
func (l *Load) MakeWay(ctx context.Context, limit int, longest time.Duration) {
	if l.Requests() <= limit {
		return
	}
	waitWhile(ctx, longest, func() bool { return l.Requests() > limit })
}

// waitWhile waits while cond holds, looking every makeWayPoll, for at
// most longest, or until ctx ends.
func waitWhile(ctx context.Context, longest time.Duration, cond func() bool) {
	t := time.NewTimer(longest)
	defer t.Stop()
	tick := time.NewTicker(makeWayPoll)
	defer tick.Stop()
	for cond() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			return
		case <-tick.C:
		}
	}
}

// Backoff is the wait of background work (the purges' janitor, the log
// eraser) before each of its steps. While every request the service holds
// has a worker it returns at once; once requests wait for a worker, reads
// are queueing in the endpoints' subscriptions, and work that takes CPU
// from them makes the queue grow until NATS drops requests (a purge at
// 65% of the service's read capacity: thousands of reads timed out, and
// the queue stayed full until the purge ended; BENCHMARKS.md, session
// 15). It then waits until the requests held are down to half the
// workers, for at most longest, or until ctx ends.
func (l *Load) Backoff(ctx context.Context, longest time.Duration) {
	if l == nil {
		return
	}
	workers := int(l.workers.Load())
	if workers == 0 || l.Requests() <= workers {
		return
	}
	start := time.Now()
	l.MakeWay(ctx, workers/2, longest)
	l.backedOff.Add(int64(time.Since(start)))
}

// CPUWindow is how often WatchCPU looks at the process's scheduling
// waits, and CPUQueueWait, CPUQueueShare and cpuQueueMin say when a
// window counts as queued: more than CPUQueueShare of its waits (at least
// cpuQueueMin of them) lasted CPUQueueWait or more. Go's histogram has
// no bucket boundary at 1 ms: CPUQueueWait counts waits of 1.049 ms or
// more. During a 5,000-member shutdown in the mixed workload of `scrollback
// bench`, 1.5-3% of the waits lasted that long, against 0.3-0.4% with
// the reads and the ingest alone (docs/BENCHMARKS.md, "A shutdown's kicks
// make way for reads"). Those figures come from one process that held the
// service, its embedded NATS server, the bench's clients and its fake
// homeserver, all of whose goroutines the histogram counts; a service
// whose homeserver and clients are other processes sees only its own
// goroutines queue, and the same thresholds have not been measured there.
const (
	CPUWindow     = 20 * time.Millisecond
	CPUQueueWait  = time.Millisecond
	CPUQueueShare = 0.01
	cpuQueueMin   = 20
)

// WatchCPU samples the process's scheduling waits (Go's
// /sched/latencies) every CPUWindow until ctx ends, and records whether
// goroutines queued for a CPU in the last window (CPUQueued) and whether
// Calm holds background work back in the next (Calming; see cpuGate).
// Reading the histogram costs a few microseconds.
func (l *Load) WatchCPU(ctx context.Context) {
	if l == nil {
		return
	}
	t := time.NewTicker(CPUWindow)
	defer t.Stop()
	gate := newCPUGate()
	prev, last := schedwait.Read(), time.Now()
	for {
		select {
		case <-ctx.Done():
			l.cpuQueued.Store(false)
			l.cpuClosed.Store(false)
			return
		case <-t.C:
			// Timed here, not by the tick's due time: a tick that comes
			// late counts for as long as it was late.
			cur, now := schedwait.Read(), time.Now()
			queued := cpuQueuing(cur.Since(prev))
			l.cpuQueued.Store(queued)
			l.cpuClosed.Store(gate.next(now.Sub(last), queued))
			prev, last = cur, now
		}
	}
}

// CPUHoldShare is the most of its time that the CPU gate (Calm) holds
// background work back, over the last CPUHoldSpan: a process whose
// goroutines queue for a CPU all the time, because the host is busy or
// the reads take both cores, still runs a shutdown's kicks and a purge's
// janitor half the time, so at least about half as fast as without the
// gate, where before it held them to a step every 20 ms for as long as
// the queue lasted. On a slow day of the bench's machine, where the reads
// alone kept 1.35-1.92% of the waits at CPUQueueWait or more before a
// purge, the janitor of a 1M purge removed more rows a second with the
// share than without it, in three pairs of runs that showed no harm to the
// reads (docs/BENCHMARKS.md, "The CPU gate holds background work back
// half the time at most").
const (
	CPUHoldShare = 0.5
	CPUHoldSpan  = 50 * CPUWindow
)

// cpuGate decides, window by window, whether Calm holds background work
// back: while goroutines queued for a CPU in the window that just ended,
// if it held it back for less than CPUHoldShare of the time of its
// record, the last CPUHoldSpan/CPUWindow windows (a second while they
// come every CPUWindow). Windows are timed as they happened, so that a
// late tick of WatchCPU counts for as long as it was late, but for at
// most cpuLongestWindow: one long stall of the watcher (a paused VM)
// would otherwise weigh on the record for a whole span, closed or open.
type cpuGate struct {
	dur          [CPUHoldSpan / CPUWindow]time.Duration // ring: each window's length
	held         [CPUHoldSpan / CPUWindow]bool          // and whether the gate was closed in it
	i            int                                    // the oldest window
	total, hheld time.Duration                          // sums of dur, and of dur where held
	closed       bool                                   // the gate in the window under way
}

// cpuLongestWindow bounds the length a window counts for in the gate's
// record (cpuGate).
const cpuLongestWindow = 2 * CPUWindow

// newCPUGate is a gate with a calm past: open for CPUHoldSpan.
func newCPUGate() *cpuGate {
	g := &cpuGate{total: CPUHoldSpan}
	for i := range g.dur {
		g.dur[i] = CPUWindow
	}
	return g
}

// next records the window that just ended, d long, whose goroutines
// queued for a CPU if queued, and reports whether the gate is closed in
// the next one.
func (g *cpuGate) next(d time.Duration, queued bool) bool {
	d = min(d, cpuLongestWindow)
	g.total -= g.dur[g.i]
	if g.held[g.i] {
		g.hheld -= g.dur[g.i]
	}
	g.dur[g.i], g.held[g.i] = d, g.closed
	g.total += d
	if g.closed {
		g.hheld += d
	}
	g.i = (g.i + 1) % len(g.dur)
	g.closed = queued && float64(g.hheld) < CPUHoldShare*float64(g.total)
	return g.closed
}

// cpuQueuing reports whether a window's waits count as queued (see
// CPUWindow).
func cpuQueuing(w schedwait.Waits) bool {
	share, _ := w.Over(CPUQueueWait)
	return w.N() >= cpuQueueMin && share > CPUQueueShare
}

// CPUQueued reports whether goroutines queued for a CPU in the last
// window WatchCPU looked at (false for a nil Load, or before WatchCPU).
func (l *Load) CPUQueued() bool {
	return l != nil && l.cpuQueued.Load()
}

// Calming reports whether Calm holds background work back now: goroutines
// queued for a CPU in the last window, and the gate has held work back
// for less than CPUHoldShare of the last CPUHoldSpan (false for a nil
// Load, or before WatchCPU).
func (l *Load) Calming() bool {
	return l != nil && l.cpuClosed.Load()
}

// Calm waits while goroutines queue for a CPU (Calming), for at most
// longest, or until ctx ends: background work that runs in bursts of many
// goroutines at once (a shutdown's kicks) waits for the queue to drain
// before it adds to it, so that the reads' goroutines queue behind fewer.
// It holds work back for at most CPUHoldShare of the time, whatever makes
// the goroutines queue.
func (l *Load) Calm(ctx context.Context, longest time.Duration) {
	if !l.Calming() {
		return
	}
	start := time.Now()
	waitWhile(ctx, longest, l.Calming)
	l.calmed.Add(int64(time.Since(start)))
}

// Calmed is the time background work has waited in Calm so far (0 for a
// nil Load): the scrollback_cpu_queue_waits_seconds_total metric.
func (l *Load) Calmed() time.Duration {
	if l == nil {
		return 0
	}
	return time.Duration(l.calmed.Load())
}
