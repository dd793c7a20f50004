package schedwait

import (
	"math"
	"testing"
	"time"
)

// A histogram of waits with buckets [0,1µs) [1µs,1ms) [1ms,10ms) [10ms,+Inf).
func schedOf(counts ...uint64) Waits {
	return Waits{counts: counts, buckets: []float64{0, 1e-6, 1e-3, 1e-2, math.Inf(1)}}
}

func TestWaits_Quantiles(t *testing.T) {
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
	if got, from := w.Over(time.Millisecond); got != 0.02 || from != time.Millisecond {
		t.Errorf("Over(1ms) = %v from %v, want 0.02 from 1ms", got, from)
	}
	if got := (Waits{}).Quantile(0.99); got != 0 {
		t.Errorf("empty: Quantile = %v, want 0", got)
	}
	if got, _ := (Waits{}).Over(time.Millisecond); got != 0 {
		t.Errorf("empty: Over = %v, want 0", got)
	}
}

func TestWaits_Since(t *testing.T) {
	before, after := schedOf(10, 5, 0, 0), schedOf(20, 5, 3, 1)
	d := after.Since(before)
	if over, _ := d.Over(time.Millisecond); d.N() != 14 || over != 4.0/14 {
		t.Fatalf("interval: %d waits, %v over 1ms; want 14 and 4/14", d.N(), over)
	}
	if got := after.Since(Waits{}); got.N() != after.N() {
		t.Fatalf("since nothing: %d waits, want %d", got.N(), after.N())
	}
}

// TestRead: the runtime provides the histogram, and a process
// that runs goroutines counts waits.
func TestRead(t *testing.T) {
	before := Read()
	done := make(chan struct{})
	for range 100 {
		go func() { done <- struct{}{} }()
	}
	for range 100 {
		<-done
	}
	if Read().Since(before).N() == 0 {
		t.Fatal("no scheduling waits counted after 100 goroutines ran")
	}
}

// TestWaits_OverSplitsNoBucket: with Go's buckets no boundary falls
// on 1 ms; Over counts from the next one and says which, so that it
// agrees with Quantile, which gives upper bounds.
func TestWaits_OverSplitsNoBucket(t *testing.T) {
	// [-Inf,0) [0,64ns) [64ns,0.9175ms) [0.9175ms,1.0486ms) [1.0486ms,+Inf)
	w := Waits{counts: []uint64{0, 90, 0, 10, 0}, buckets: []float64{math.Inf(-1), 0, 64e-9, 0.9175e-3, 1.048576e-3, math.Inf(1)}}
	share, from := w.Over(time.Millisecond)
	if share != 0 || from != 1048576*time.Nanosecond {
		t.Fatalf("Over(1ms) = %v from %v, want 0 from 1.048576ms", share, from)
	}
	if q := w.Quantile(0.99); q != 1048576*time.Nanosecond {
		t.Fatalf("Quantile(0.99) = %v, want 1.048576ms (the bucket's upper bound)", q)
	}
	if share, from := w.Over(time.Hour); share != 0 || from != 0 {
		t.Fatalf("Over(1h) = %v from %v, want 0 from 0 (no boundary above)", share, from)
	}
}
