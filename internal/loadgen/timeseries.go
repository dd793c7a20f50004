package loadgen

import "time"

// Point is one sampled value at a time since the run's origin.
type Point struct {
	T time.Duration
	V float64
}

// TimeSeries is a value sampled over time: projection lag, memory, disk.
type TimeSeries struct {
	Name   string
	Unit   string // "msgs", "bytes", ...
	Points []Point
}

// Add appends a sample.
func (ts *TimeSeries) Add(t time.Duration, v float64) { ts.Points = append(ts.Points, Point{t, v}) }

// Max is the largest value (0 if empty).
func (ts *TimeSeries) Max() float64 {
	m := 0.0
	for i, p := range ts.Points {
		if i == 0 || p.V > m {
			m = p.V
		}
	}
	return m
}

// Last is the last value (0 if empty).
func (ts *TimeSeries) Last() float64 {
	if len(ts.Points) == 0 {
		return 0
	}
	return ts.Points[len(ts.Points)-1].V
}

// Between is the points with from <= T < to.
func (ts *TimeSeries) Between(from, to time.Duration) []Point {
	var out []Point
	for _, p := range ts.Points {
		if p.T >= from && p.T < to {
			out = append(out, p)
		}
	}
	return out
}
