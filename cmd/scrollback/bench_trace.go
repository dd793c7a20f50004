package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/trace"
	"sync"
	"time"
)

// slowTrace is --trace-slow: it keeps the last seconds of a runtime
// execution trace of the process in memory (runtime/trace's flight
// recorder) and writes them to a file when a read (a readSeries) takes
// longer than a threshold. The trace shows what every goroutine, the
// service's and the bench's, did while that read waited: which ran,
// which queued for a CPU, which waited for a lock, and when the collector
// marked. A p99 says how slow the tail is; this says why.
type slowTrace struct {
	fr     *trace.FlightRecorder
	dir    string
	over   time.Duration
	printf func(format string, args ...any)
	now    func() time.Time

	mu      sync.Mutex
	counts  map[string]int // files written or being written, by scenario
	last    time.Time      // when the last one was taken
	busy    bool           // a file is being written (one at a time)
	stopped bool
	wg      sync.WaitGroup
}

const (
	// slowTraceKeep is how much trace the recorder keeps (unless
	// slowTraceBytes fills first), and the least time between two files:
	// each covers a stretch of its own.
	slowTraceKeep = 2 * time.Second
	// slowTraceBytes bounds the recorder's memory. The mixed workload's
	// traces held about 1 MB a second, so 2 s fit.
	slowTraceBytes = 16 << 20
	// slowTraceMax is the most files a scenario writes.
	slowTraceMax = 5
)

// startSlowTrace starts the flight recorder; stop ends it.
func startSlowTrace(dir string, over time.Duration, printf func(string, ...any)) (*slowTrace, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("bench: trace dir: %w", err)
	}
	fr := trace.NewFlightRecorder(trace.FlightRecorderConfig{MinAge: slowTraceKeep, MaxBytes: slowTraceBytes})
	if err := fr.Start(); err != nil {
		return nil, fmt.Errorf("bench: --trace-slow: %w", err)
	}
	return &slowTrace{fr: fr, dir: dir, over: over, printf: printf, now: time.Now, counts: map[string]int{}}, nil
}

// observe takes a snapshot of the trace if lat is the threshold or more,
// unless the scenario has written slowTraceMax files, a file is being
// written, or one was taken less than slowTraceKeep ago. It marks the
// read in the trace with a log event (category "scrollback-bench") and
// writes the file in the background (wait waits for it).
func (t *slowTrace) observe(scenario, series string, lat time.Duration) {
	if lat < t.over {
		return
	}
	now := t.now()
	t.mu.Lock()
	if t.stopped || t.busy || t.counts[scenario] >= slowTraceMax || (!t.last.IsZero() && now.Sub(t.last) < slowTraceKeep) {
		t.mu.Unlock()
		return
	}
	t.busy, t.last = true, now
	t.counts[scenario]++
	n := t.counts[scenario]
	t.wg.Add(1)
	t.mu.Unlock()
	what := fmt.Sprintf("a read of %q took %v", series, lat.Round(time.Microsecond))
	trace.Log(context.Background(), "scrollback-bench", what)
	go func() {
		defer t.wg.Done()
		path := filepath.Join(t.dir, fmt.Sprintf("%s.slow-%d.trace", scenario, n))
		err := t.write(path)
		t.mu.Lock()
		t.busy = false
		t.mu.Unlock()
		if err != nil {
			t.printf("trace: %s at %s; could not write its trace: %v\n", what, now.Format("15:04:05.000"), err)
			return
		}
		t.printf("trace: %s at %s, ended at the log event \"scrollback-bench\": %s (go tool trace %s)\n", what, now.Format("15:04:05.000"), path, path)
	}()
}

// write writes the recorder's trace to path, and removes what it wrote
// if that fails.
func (t *slowTrace) write(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	_, err = t.fr.WriteTo(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// wait waits for the file being written, if any.
func (t *slowTrace) wait() { t.wg.Wait() }

// stop takes no more snapshots, waits for the one being written and
// stops the recorder.
func (t *slowTrace) stop() {
	t.mu.Lock()
	t.stopped = true
	t.mu.Unlock()
	t.wg.Wait()
	t.fr.Stop()
}
