package bus

import (
	"context"
	"sync/atomic"
	"time"
)

// Load counts the requests a Service holds: handed to it and not yet
// answered, whether a worker runs them or they wait for one. Background
// work that competes with the reads for the CPU asks it to make way (the
// log eraser: each DeleteMsg costs the server a write and an fsync, and
// the kernel as much CPU again).
//
// Requests held is the rate times the time each takes (Little's law), so
// it rises both when more reads come and when each waits longer for a
// CPU: a few more than the CPUs means reads are queueing.
type Load struct{ n atomic.Int64 }

// Requests is how many requests the service holds now (0 for a nil Load).
func (l *Load) Requests() int {
	if l == nil {
		return 0
	}
	return int(l.n.Load())
}

func (l *Load) add(d int64) {
	if l != nil {
		l.n.Add(d)
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
	t := time.NewTimer(longest)
	defer t.Stop()
	tick := time.NewTicker(makeWayPoll)
	defer tick.Stop()
	for l.Requests() > limit {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			return
		case <-tick.C:
		}
	}
}
