package bus

import (
	"testing"
	"time"
)

// TestCPUGate_HoldsBackHalfTheTimeAtMost: the gate closes while
// goroutines queue for a CPU, at once and for whole short bursts, but
// under a queue that never drains it is closed for at most CPUHoldShare
// of any CPUHoldSpan, however late the windows come; it is never closed
// in a window after one without a queue.
func TestCPUGate_HoldsBackHalfTheTimeAtMost(t *testing.T) {
	g := newCPUGate()
	span := int(CPUHoldSpan / CPUWindow)

	// A burst shorter than the share is held back from its start to its end.
	burst := span / 4
	for i := range burst {
		if !g.next(CPUWindow, true) {
			t.Fatalf("window %d of a burst of %d: the gate is open, want closed", i+1, burst)
		}
	}
	if g.next(CPUWindow, false) {
		t.Fatal("the gate is closed after a window without a queue")
	}

	// A queue that never drains, with windows of other lengths than
	// CPUWindow (WatchCPU's ticks come late): once the calm past is out
	// of the gate's record, every span of it held back at most the share
	// (plus a window, at the span's edge), and about that much.
	for _, d := range []time.Duration{CPUWindow, 3 * CPUWindow / 2, CPUWindow / 2, cpuLongestWindow} {
		g := newCPUGate()
		var dur []time.Duration
		var held []bool
		for range span { // the calm past a new gate starts with
			dur, held = append(dur, CPUWindow), append(held, false)
		}
		closed := false
		for range 20 * span {
			dur, held = append(dur, d), append(held, closed)
			closed = g.next(d, true)
		}
		for end := 3 * span; end <= len(dur); end++ {
			var total, h time.Duration
			for i := end - span; i < end; i++ {
				total += dur[i]
				if held[i] {
					h += dur[i]
				}
			}
			if limit := time.Duration(CPUHoldShare*float64(total)) + d; h > limit {
				t.Fatalf("windows of %v: held back %v of %v in windows %d to %d, want at most %v", d, h, total, end-span, end, limit)
			}
		}
		var h time.Duration
		for i := len(dur) - span; i < len(dur); i++ {
			if held[i] {
				h += dur[i]
			}
		}
		if h < time.Duration(CPUHoldShare*float64(span)*float64(d))-2*d {
			t.Fatalf("windows of %v: held back %v of the last span, want about %v", d, h, CPUHoldShare*float64(span)*float64(d))
		}
		if g.next(d, false) {
			t.Fatalf("windows of %v: the gate is closed after a window without a queue", d)
		}
	}
}

// TestCPUGate_OneStallDoesNotHoldTheNextSecond: a window the watcher
// took seconds to end (a paused VM) counts for at most cpuLongestWindow,
// so that it does not fill the record alone: after a long open window,
// a queue that lasts is still held back about half of the next span, not
// nearly all of it.
func TestCPUGate_OneStallDoesNotHoldTheNextSecond(t *testing.T) {
	g := newCPUGate()
	span := int(CPUHoldSpan / CPUWindow)
	g.next(10*time.Second, false)
	held := 0
	for range span {
		if g.next(CPUWindow, true) {
			held++
		}
	}
	if limit := span/2 + 2; held > limit {
		t.Fatalf("held back %d of the %d windows after a 10 s stall, want at most %d", held, span, limit)
	}
}
