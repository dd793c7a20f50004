package loadgen

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
)

// Errors of the size generators.
var (
	// ErrTooFew is returned when the total cannot give every room its
	// minimum size.
	ErrTooFew = errors.New("loadgen: total below rooms x minimum size")
	// ErrUnreachable is returned when no exponent gives the largest size
	// asked for.
	ErrUnreachable = errors.New("loadgen: largest size out of reach")
)

// ZipfSizes splits total events among rooms rooms by Zipf's law with
// exponent s: the room of rank i (from 1) gets about c/i^s events, with c
// chosen so that the sizes add up to total exactly, but no room gets fewer
// than minSize. The sizes are in non-increasing order (rank 1 first);
// s = 0 gives equal rooms.
func ZipfSizes(rooms, total, minSize int, s float64) ([]int, error) {
	if rooms < 1 || minSize < 0 || s < 0 || math.IsNaN(s) {
		return nil, fmt.Errorf("loadgen: zipf sizes: rooms %d, minimum %d, s %g", rooms, minSize, s)
	}
	if rooms*minSize > total {
		return nil, fmt.Errorf("%w: %d rooms x %d > %d", ErrTooFew, rooms, minSize, total)
	}
	return zipfFit(zipfWeights(rooms, s), total, minSize), nil
}

func zipfWeights(rooms int, s float64) []float64 {
	w := make([]float64, rooms)
	for i := range w {
		w[i] = math.Pow(float64(i+1), -s)
	}
	return w
}

// zipfFit finds the largest scale c with sum(max(minSize, floor(c*w_i))) <=
// total by bisection and hands the remainder out one event each from the
// largest room down, which keeps the order.
func zipfFit(w []float64, total, minSize int) []int {
	sum := func(c float64) int {
		n := 0
		for _, wi := range w {
			n += max(minSize, int(c*wi))
		}
		return n
	}
	lo, hi := 0.0, float64(total)/w[0]+1
	for range 200 {
		mid := (lo + hi) / 2
		if sum(mid) <= total {
			lo = mid
		} else {
			hi = mid
		}
		if hi-lo < 1e-9*hi {
			break
		}
	}
	sizes := make([]int, len(w))
	n := 0
	for i, wi := range w {
		sizes[i] = max(minSize, int(lo*wi))
		n += sizes[i]
	}
	for i := 0; n < total; i = (i + 1) % len(sizes) {
		sizes[i]++
		n++
	}
	return sizes
}

// SolveZipfS finds the exponent with which ZipfSizes gives the largest
// room largest events (within one percent, or as close as the sizes
// allow), by bisection over s in [0, 8].
func SolveZipfS(rooms, total, minSize, largest int) (float64, error) {
	if _, err := ZipfSizes(rooms, total, minSize, 0); err != nil {
		return 0, err
	}
	first := func(s float64) int { return zipfFit(zipfWeights(rooms, s), total, minSize)[0] }
	if first(0) > largest || first(8) < largest {
		return 0, fmt.Errorf("%w: %d rooms, %d events, minimum %d: the largest room can hold from %d to %d events, not %d",
			ErrUnreachable, rooms, total, minSize, first(0), first(8), largest)
	}
	lo, hi := 0.0, 8.0
	for range 60 {
		mid := (lo + hi) / 2
		got := first(mid)
		if math.Abs(float64(got-largest)) <= 0.01*float64(largest) {
			return mid, nil
		}
		if got < largest {
			lo = mid
		} else {
			hi = mid
		}
	}
	return (lo + hi) / 2, nil
}

// Interleaver draws rooms at random in proportion to the events each has
// left, so that every room's events are spread over the whole log as in a
// server where all rooms are busy at once: a random shuffle of the
// multiset of room indices, drawn lazily (a Fenwick tree, O(log rooms) a
// draw, no list of all events).
type Interleaver struct {
	tree []int64 // 1-based Fenwick tree of events left per room
	left int64
	top  int // highest power of two <= len(tree)-1
	rng  *rand.Rand
}

// NewInterleaver draws from rooms of the given sizes.
func NewInterleaver(sizes []int, rng *rand.Rand) *Interleaver {
	iv := &Interleaver{tree: make([]int64, len(sizes)+1), rng: rng, top: 1}
	for i, n := range sizes {
		iv.tree[i+1] += int64(n)
		if j := (i + 1) + (i+1)&-(i+1); j < len(iv.tree) {
			iv.tree[j] += iv.tree[i+1]
		}
		iv.left += int64(n)
	}
	for iv.top*2 < len(iv.tree) {
		iv.top *= 2
	}
	return iv
}

// Left is the number of events not drawn yet.
func (iv *Interleaver) Left() int64 { return iv.left }

// Next draws the room of the next event; ok is false once every event is
// drawn.
func (iv *Interleaver) Next() (room int, ok bool) {
	if iv.left == 0 {
		return 0, false
	}
	r := iv.rng.Int64N(iv.left) // the r-th event left (0-based)
	pos := 0
	for step := iv.top; step > 0; step /= 2 {
		if next := pos + step; next < len(iv.tree) && iv.tree[next] <= r {
			pos = next
			r -= iv.tree[next]
		}
	}
	// pos is the last index whose prefix sum is <= r: the room is pos+1
	// (1-based), pos 0-based.
	for i := pos + 1; i < len(iv.tree); i += i & -i {
		iv.tree[i]--
	}
	iv.left--
	return pos, true
}
