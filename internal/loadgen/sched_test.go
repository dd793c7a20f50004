package loadgen

import (
	"math"
	"testing"
	"time"
)

// A histogram of waits with buckets [0,1µs) [1µs,1ms) [1ms,10ms) [10ms,+Inf).
func schedOf(counts ...uint64) SchedWaits {
	return SchedWaits{counts: counts, buckets: []float64{0, 1e-6, 1e-3, 1e-2, math.Inf(1)}}
}

func TestSchedWaits_Quantiles(t *testing.T) {
	w := schedOf(90, 8, 1, 1)
	for _, tt := range []struct {
		q    float64
		want time.Duration
	}{
		{0.5, time.Microsecond},       // in the first bucket: its upper bound
		{0.9, time.Microsecond},       // the 90th of 100
		{0.95, time.Millisecond},      // the 95th: second bucket
		{0.99, 10 * time.Millisecond}, // the 99th: third bucket
		{1, 10 * time.Millisecond},    // the last, unbounded bucket: its lower bound
	} {
		if got := w.Quantile(tt.q); got != tt.want {
			t.Errorf("Quantile(%v) = %v, want %v", tt.q, got, tt.want)
		}
	}
	if got := w.Over(time.Millisecond); got != 0.02 {
		t.Errorf("Over(1ms) = %v, want 0.02", got)
	}
	if got := (SchedWaits{}).Quantile(0.99); got != 0 {
		t.Errorf("empty: Quantile = %v, want 0", got)
	}
	if got := (SchedWaits{}).Over(time.Millisecond); got != 0 {
		t.Errorf("empty: Over = %v, want 0", got)
	}
}

func TestSchedWaits_Since(t *testing.T) {
	before, after := schedOf(10, 5, 0, 0), schedOf(20, 5, 3, 1)
	d := after.Since(before)
	if d.N() != 14 || d.Over(time.Millisecond) != 4.0/14 {
		t.Fatalf("interval: %d waits, %v over 1ms; want 14 and 4/14", d.N(), d.Over(time.Millisecond))
	}
	if got := after.Since(SchedWaits{}); got.N() != after.N() {
		t.Fatalf("since nothing: %d waits, want %d", got.N(), after.N())
	}
}

// TestReadSchedWaits: the runtime provides the histogram, and a process
// that runs goroutines counts waits.
func TestReadSchedWaits(t *testing.T) {
	before := ReadSchedWaits()
	done := make(chan struct{})
	for range 100 {
		go func() { done <- struct{}{} }()
	}
	for range 100 {
		<-done
	}
	if ReadSchedWaits().Since(before).N() == 0 {
		t.Fatal("no scheduling waits counted after 100 goroutines ran")
	}
}
