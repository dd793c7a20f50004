package loadgen

import (
	"math"
	"math/bits"
	"slices"
	"time"
)

// DefaultBits is the sub-bucket resolution of a zero Hist: each value is
// kept within 1/128 of itself.
const DefaultBits = 7

// Hist is a log-linear histogram of durations (nanoseconds): below
// 2<<bits every nanosecond has its bucket; above, each power of two is cut
// into 1<<bits buckets. Memory grows with the largest value, not with the
// count. The zero value is an empty histogram with DefaultBits.
type Hist struct {
	bits   uint8 // 0: DefaultBits
	counts []uint64
	n      uint64
	sum    float64 // nanoseconds
	min    time.Duration
	max    time.Duration
}

// NewHist returns an empty histogram whose buckets are 1/2^bits wide
// (relative); bits is clamped to 1..10.
func NewHist(bits int) Hist { return Hist{bits: uint8(min(max(bits, 1), 10))} }

func (h *Hist) sub() uint64 {
	if h.bits == 0 {
		return 1 << DefaultBits
	}
	return 1 << h.bits
}

func (h *Hist) nbits() int {
	if h.bits == 0 {
		return DefaultBits
	}
	return int(h.bits)
}

// bucket is the index of d's bucket.
func (h *Hist) bucket(d time.Duration) int {
	v := uint64(max(d, 0))
	sub := h.sub()
	if v < 2*sub {
		return int(v)
	}
	e := uint64(bits.Len64(v) - (h.nbits() + 1)) // v>>e is in [sub, 2*sub)
	return int(2*sub + (e-1)*sub + v>>e - sub)
}

// bounds is the lowest and highest value of bucket i.
func (h *Hist) bounds(i int) (lo, hi time.Duration) {
	sub := h.sub()
	if uint64(i) < 2*sub {
		return time.Duration(i), time.Duration(i)
	}
	e := (uint64(i)-2*sub)/sub + 1
	m := (uint64(i)-2*sub)%sub + sub
	return time.Duration(m << e), time.Duration((m+1)<<e - 1)
}

// Add counts one value; negative values count as 0.
func (h *Hist) Add(d time.Duration) {
	d = max(d, 0)
	i := h.bucket(d)
	if i >= len(h.counts) {
		h.counts = slices.Grow(h.counts, i+1-len(h.counts))[:i+1]
	}
	h.counts[i]++
	if h.n == 0 || d < h.min {
		h.min = d
	}
	h.n++
	h.sum += float64(d)
	h.max = max(h.max, d)
}

// Merge adds every value of o, which must have the same resolution.
func (h *Hist) Merge(o *Hist) {
	if o.n == 0 {
		return
	}
	if h.n == 0 {
		h.bits = o.bits
	}
	if h.sub() != o.sub() {
		panic("loadgen: merge of histograms of different resolutions")
	}
	if len(o.counts) > len(h.counts) {
		h.counts = slices.Grow(h.counts, len(o.counts)-len(h.counts))[:len(o.counts)]
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// Clone is an independent copy.
func (h *Hist) Clone() Hist {
	c := *h
	c.counts = slices.Clone(h.counts)
	return c
}

// Count is the number of values.
func (h *Hist) Count() uint64 { return h.n }

// Max is the largest value (exact).
func (h *Hist) Max() time.Duration { return h.max }

// Min is the smallest value (exact).
func (h *Hist) Min() time.Duration { return h.min }

// Mean is the average (exact).
func (h *Hist) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.n))
}

// Percentile is the p-th percentile (0 < p <= 100) by nearest rank: the
// highest value of the bucket that holds the value of that rank, but at
// most the largest value seen. It is never below the exact percentile and
// at most 1/2^bits above it.
func (h *Hist) Percentile(p float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	r := rank(h.n, p)
	var seen uint64
	for i, c := range h.counts {
		if seen += c; seen >= r {
			_, hi := h.bounds(i)
			return min(hi, h.max)
		}
	}
	return h.max
}

// rank is the nearest rank (1-based) of the p-th percentile of n values.
func rank(n uint64, p float64) uint64 {
	// The epsilon keeps float error (999.0000000000001) from moving the rank.
	r := math.Ceil(float64(n)*p/100 - 1e-9)
	return uint64(min(max(r, 1), float64(n)))
}

// Percentile is the p-th percentile of sorted values by nearest rank
// (exact): the smallest value such that at least p% of the values are at
// most it. sorted must be in ascending order.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[rank(uint64(len(sorted)), p)-1]
}

// Bin is a range of latencies and how many values fell in it.
type Bin struct {
	Lo, Hi time.Duration // [Lo, Hi)
	Count  uint64
}

// Bins regroups the histogram into bins of equal width on a log scale,
// perDecade per power of ten, from the decade of the smallest value to
// that of the largest: the latency histogram of the report.
func (h *Hist) Bins(perDecade int) []Bin {
	if h.n == 0 || perDecade < 1 {
		return nil
	}
	lo := math.Floor(math.Log10(float64(max(h.min, 1))))
	hi := math.Floor(math.Log10(float64(max(h.max, 1)))) + 1
	n := int(hi-lo) * perDecade
	out := make([]Bin, n)
	for i := range out {
		out[i].Lo = time.Duration(math.Round(math.Pow(10, lo+float64(i)/float64(perDecade))))
		out[i].Hi = time.Duration(math.Round(math.Pow(10, lo+float64(i+1)/float64(perDecade))))
	}
	for i, c := range h.counts {
		if c == 0 {
			continue
		}
		blo, bhi := h.bounds(i)
		mid := float64(blo+bhi)/2 + 0.5
		j := int((math.Log10(max(mid, 1)) - lo) * float64(perDecade))
		out[min(max(j, 0), n-1)].Count += c
	}
	return out
}
