package loadgen

import (
	"sync"
	"time"
)

// Series defaults.
const (
	// DefaultWindow is the first width of a Series' time windows.
	DefaultWindow = 100 * time.Millisecond
	// MaxWindows bounds the windows of a Series: past it, the width
	// doubles and neighbouring windows merge.
	MaxWindows = 2048
	// WindowBits is the resolution of the per-window histograms (1/8).
	WindowBits = 3
	// ReservoirSize is the number of individual requests a Series keeps
	// (a uniform sample of all of them) for the scatter plot.
	ReservoirSize = 2000
)

// Sample is one request: when it was sent (since the series' origin) and
// how long it took.
type Sample struct {
	At, Lat time.Duration
}

// Series records per-request latencies with their timestamps: one exact-ish
// histogram for the whole run (Hist), one coarse histogram per time
// window (Windows, for latency over time), and a uniform sample of the
// requests themselves (Samples). Memory is bounded whatever the count and
// the length of the run. It is safe for concurrent use.
type Series struct {
	Name  string
	Group string // series of one group share their plots (Report)
	// Observe, if set before the first Record, hears each latency
	// recorded, after it is counted (the bench's --trace-slow).
	Observe func(lat time.Duration)
	origin  time.Time

	mu     sync.Mutex
	width  time.Duration
	wins   []Hist
	all    Hist
	res    []Sample
	seen   uint64
	rstate uint64
}

// NewSeries starts an empty series whose times count from origin.
func NewSeries(name string, origin time.Time) *Series {
	return &Series{Name: name, origin: origin, width: DefaultWindow, rstate: 0x9e3779b97f4a7c15}
}

// Origin is time zero of the series.
func (s *Series) Origin() time.Time { return s.origin }

// Record counts one request sent at sent that took lat.
func (s *Series) Record(sent time.Time, lat time.Duration) {
	at := max(sent.Sub(s.origin), 0)
	s.mu.Lock()
	s.add(at, lat)
	s.mu.Unlock()
	if s.Observe != nil {
		s.Observe(lat)
	}
}

func (s *Series) add(at, lat time.Duration) {
	s.all.Add(lat)
	i := s.window(at)
	s.wins[i].Add(lat)
	s.seen++
	if len(s.res) < ReservoirSize {
		s.res = append(s.res, Sample{at, lat})
	} else if j := s.rand() % s.seen; j < ReservoirSize {
		s.res[j] = Sample{at, lat}
	}
}

// window returns the index of at's window, growing or widening the
// windows as needed.
func (s *Series) window(at time.Duration) int {
	for int(at/s.width) >= MaxWindows {
		s.widen()
	}
	i := int(at / s.width)
	for len(s.wins) <= i {
		s.wins = append(s.wins, NewHist(WindowBits))
	}
	return i
}

// widen doubles the window width, merging windows pairwise.
func (s *Series) widen() {
	s.width *= 2
	n := (len(s.wins) + 1) / 2
	for i := range n {
		w := s.wins[2*i]
		if 2*i+1 < len(s.wins) {
			w.Merge(&s.wins[2*i+1])
		}
		s.wins[i] = w
	}
	s.wins = s.wins[:n]
}

// rand is xorshift64*: the reservoir needs no more.
func (s *Series) rand() uint64 {
	x := s.rstate
	x ^= x >> 12
	x ^= x << 25
	x ^= x >> 27
	s.rstate = x
	return x * 2685821657736338717
}

// Merge adds every request of o (which must share the origin; otherwise
// o's times are shifted to this series' origin).
func (s *Series) Merge(o *Series) {
	o.mu.Lock()
	shift := o.origin.Sub(s.origin)
	width, wins, all, res, seen := o.width, make([]Hist, len(o.wins)), o.all.Clone(), append([]Sample(nil), o.res...), o.seen
	for i := range o.wins {
		wins[i] = o.wins[i].Clone()
	}
	o.mu.Unlock()
	if seen == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.width < width {
		s.widen()
	}
	for i := range wins {
		at := max(time.Duration(i)*width+shift, 0)
		s.wins[s.window(at)].Merge(&wins[i])
	}
	s.all.Merge(&all)
	// The reservoirs merge in proportion to the requests each stands for.
	total := s.seen + seen
	ka, kb := len(s.res), len(res)
	if ka+kb > ReservoirSize {
		ka = min(ka, int(uint64(ReservoirSize)*s.seen/total))
		kb = min(kb, ReservoirSize-ka)
	}
	keep := make([]Sample, 0, ka+kb)
	keep = s.pick(keep, s.res, ka, 0)
	keep = s.pick(keep, res, kb, shift)
	s.res = keep
	s.seen = total
}

// pick appends k of src chosen at random (a partial shuffle of src),
// shifted by shift.
func (s *Series) pick(dst, src []Sample, k int, shift time.Duration) []Sample {
	for i := range min(k, len(src)) {
		j := i + int(s.rand()%uint64(len(src)-i))
		src[i], src[j] = src[j], src[i]
		dst = append(dst, Sample{max(src[i].At+shift, 0), src[i].Lat})
	}
	return dst
}

// Hist is a copy of the whole run's histogram.
func (s *Series) Hist() Hist {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.all.Clone()
}

// Count is the number of requests.
func (s *Series) Count() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen
}

// Samples is a uniform sample of at most ReservoirSize requests.
func (s *Series) Samples() []Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Sample(nil), s.res...)
}

// Window is the requests sent in [Start, End) since the origin.
type Window struct {
	Start, End         time.Duration
	N                  uint64
	P50, P90, P99, Max time.Duration
}

// Windows are the time windows that saw requests, in order, with their
// percentiles (within 1/8, WindowBits) and exact maximum.
func (s *Series) Windows() []Window {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Window
	for i := range s.wins {
		w := &s.wins[i]
		if w.Count() == 0 {
			continue
		}
		out = append(out, Window{Start: time.Duration(i) * s.width, End: time.Duration(i+1) * s.width, N: w.Count(),
			P50: w.Percentile(50), P90: w.Percentile(90), P99: w.Percentile(99), Max: w.Max()})
	}
	return out
}

// Between summarises the requests sent in [from, to) since the origin,
// to the windows' width: a window counts if it starts in the span. Its
// percentiles are within 1/8 (WindowBits); its maximum is exact.
func (s *Series) Between(from, to time.Duration) Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := NewHist(WindowBits)
	for i := range s.wins {
		if at := time.Duration(i) * s.width; at >= from && at < to {
			h.Merge(&s.wins[i])
		}
	}
	return HistStats(&h)
}

// Span is from the origin to the end of the last window with requests.
func (s *Series) Span() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.wins) - 1; i >= 0; i-- {
		if s.wins[i].Count() > 0 {
			return time.Duration(i+1) * s.width
		}
	}
	return 0
}

// Stats summarises a latency distribution.
type Stats struct {
	N                        uint64
	P50, P90, P99, Max, Mean time.Duration
}

// Stats of the whole series.
func (s *Series) Stats() Stats {
	h := s.Hist()
	return HistStats(&h)
}

// HistStats summarises h.
func HistStats(h *Hist) Stats {
	return Stats{N: h.Count(), P50: h.Percentile(50), P90: h.Percentile(90), P99: h.Percentile(99), Max: h.Max(), Mean: h.Mean()}
}
