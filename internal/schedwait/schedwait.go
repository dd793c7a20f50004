package schedwait

import (
	"math"
	"runtime/metrics"
	"time"
)

// schedMetric is the Go runtime's histogram of how long goroutines waited,
// runnable, before they ran: the time a read's goroutines queue for a
// CPU. It counts a sample of the goroutines' transitions, not all.
const schedMetric = "/sched/latencies:seconds"

// Waits is a histogram of scheduling waits (schedMetric): cumulative
// since this process started as Read returns it, or of an
// interval (Since).
type Waits struct {
	counts  []uint64
	buckets []float64 // len(counts)+1 boundaries, in seconds
}

// Read reads this process's histogram of scheduling waits (an
// empty one if the runtime does not provide it).
func Read() Waits {
	s := []metrics.Sample{{Name: schedMetric}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64Histogram {
		return Waits{}
	}
	h := s[0].Value.Float64Histogram()
	return Waits{counts: append([]uint64(nil), h.Counts...), buckets: h.Buckets}
}

// Since is the histogram of the waits counted after prev, an earlier
// reading of the same process; prev may be the zero Waits.
func (w Waits) Since(prev Waits) Waits {
	if len(prev.counts) != len(w.counts) {
		return w
	}
	d := Waits{counts: make([]uint64, len(w.counts)), buckets: w.buckets}
	for i, c := range w.counts {
		d.counts[i] = c - min(c, prev.counts[i])
	}
	return d
}

// N is the number of waits counted.
func (w Waits) N() uint64 {
	var n uint64
	for _, c := range w.counts {
		n += c
	}
	return n
}

// Quantile is the upper bound of the bucket that holds the q-quantile of
// the waits (0 if none were counted); the last bucket, unbounded, gives
// its lower bound.
func (w Waits) Quantile(q float64) time.Duration {
	n := w.N()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	var seen uint64
	for i, c := range w.counts {
		seen += c
		if seen >= max(rank, 1) {
			bound := w.buckets[i+1]
			if math.IsInf(bound, 1) {
				bound = w.buckets[i]
			}
			return time.Duration(bound * float64(time.Second))
		}
	}
	return 0
}

// Over is the share of the waits (0 to 1) of at least from: from is the
// first bucket boundary at or above d, since the histogram cannot split
// a bucket (Go's buckets near 1 ms are [0.918, 1.049) ms and up, so
// Over(time.Millisecond) counts waits of 1.049 ms or more). from is 0
// if no boundary is at or above d.
func (w Waits) Over(d time.Duration) (share float64, from time.Duration) {
	i := 0
	for i < len(w.counts) && w.buckets[i] < d.Seconds() {
		i++
	}
	if i == len(w.counts) {
		return 0, 0
	}
	from = time.Duration(w.buckets[i] * float64(time.Second))
	n := w.N()
	if n == 0 {
		return 0, from
	}
	var over uint64
	for _, c := range w.counts[i:] {
		over += c
	}
	return float64(over) / float64(n), from
}
