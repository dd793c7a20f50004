package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSlowTrace_WritesTheTraceOfASlowRead: a read under the threshold
// writes nothing; one at or over it writes the recorder's trace, with the
// read marked in it; one less than 2 s after the last file is skipped,
// since its stretch is in that file; a scenario writes five files at
// most, and nothing is written once the tracer is stopped.
func TestSlowTrace_WritesTheTraceOfASlowRead(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	var out strings.Builder
	printf := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(&out, format, args...)
	}
	tr, err := startSlowTrace(dir, 20*time.Millisecond, printf)
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	tr.now = func() time.Time { return clock }
	read := func(scenario string, lat time.Duration, after time.Duration) {
		clock = clock.Add(after)
		tr.observe(scenario, "reads during the workload", lat)
		tr.wait()
	}
	read("mixed", 19*time.Millisecond, 0)           // under the threshold
	read("mixed", 20*time.Millisecond, 0)           // file 1
	read("mixed", 45*time.Millisecond, time.Second) // 1 s after file 1: skipped
	read("mixed", 50*time.Millisecond, time.Second) // 2 s after file 1: file 2
	for range 4 {
		read("mixed", 60*time.Millisecond, 3*time.Second) // files 3 to 5, then skipped
	}
	read("purge", 70*time.Millisecond, 3*time.Second) // another scenario: its own five
	tr.stop()
	read("purge", 80*time.Millisecond, 3*time.Second) // stopped: skipped

	files, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := 1; i <= 5; i++ {
		want = append(want, filepath.Join(dir, fmt.Sprintf("mixed.slow-%d.trace", i)))
	}
	want = append(want, filepath.Join(dir, "purge.slow-1.trace"))
	slices.Sort(files)
	slices.Sort(want)
	if !slices.Equal(files, want) {
		t.Fatalf("files = %v, want %v", files, want)
	}
	marks := map[string]string{"mixed.slow-1.trace": "20ms", "mixed.slow-2.trace": "50ms", "purge.slow-1.trace": "70ms"}
	for name, took := range marks {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(data, []byte("go 1.")) {
			t.Fatalf("%s does not start like a Go execution trace: %q", name, data[:min(len(data), 16)])
		}
		mark := `a read of "reads during the workload" took ` + took
		if !bytes.Contains(data, []byte("scrollback-bench")) || !bytes.Contains(data, []byte(mark)) {
			t.Errorf("%s does not hold the mark %q in category scrollback-bench", name, mark)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if got := out.String(); strings.Count(got, "trace: ") != 6 || !strings.Contains(got, "took 20ms") || !strings.Contains(got, "go tool trace "+want[0]) {
		t.Fatalf("printed %q, want six lines naming the reads and their files", got)
	}
}

// TestRunBench_TraceSlow runs the tiny catch-up scenario with every read
// counted as slow: the first one writes a trace next to the profiles.
func TestRunBench_TraceSlow(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a whole service")
	}
	dir := t.TempDir()
	var buf bytes.Buffer
	// A backlog of 20k events gives the catch-up's reader (50 a second)
	// time for a read or more.
	args := append(slices.Clone(tinyBench), "--scenario", "catchup", "--backlog", "20000", "--profile-dir", dir, "--trace-slow", "1ns")
	if err := runBench(context.Background(), args, &buf); err != nil {
		t.Fatalf("runBench: %v\noutput:\n%s", err, buf.String())
	}
	want := filepath.Join(dir, "catchup.slow-1.trace")
	if out := buf.String(); !strings.Contains(out, `trace: a read of "newest page of the largest room during the catch-up, 50 req/s" took `) ||
		!strings.Contains(out, "go tool trace "+want) {
		t.Fatalf("output does not name the trace %s:\n%s", want, out)
	}
	if fi, err := os.Stat(want); err != nil {
		t.Fatal(err)
	} else if fi.Size() == 0 {
		t.Fatalf("trace %s is empty", want)
	}
}

// TestBenchPrintf_FromManyGoroutines: --trace-slow prints from its own
// goroutine while the scenario prints from its: printf must keep every
// line whole (under -race, a write to out without the lock fails).
func TestBenchPrintf_FromManyGoroutines(t *testing.T) {
	var buf bytes.Buffer
	b := &bench{out: &buf}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 100 {
				b.printf("goroutine %d line %d\n", g, i)
			}
		})
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 800 {
		t.Fatalf("%d lines, want 800", len(lines))
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "goroutine ") || strings.Count(l, "line") != 1 {
			t.Fatalf("a line was torn: %q", l)
		}
	}
}
