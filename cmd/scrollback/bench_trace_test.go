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

// TestSlowTrace_WritesTheTraceOfASlowRead: a read under the
// threshold writes nothing; one over it writes the recorder's trace, with
// the read marked in it; one more right after the file is written is
// skipped, since its stretch is in the file already.
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
	tr.observe("mixed", "reads during the workload", 19*time.Millisecond)
	tr.observe("mixed", "reads during the workload", 31*time.Millisecond)
	tr.wg.Wait() // the file is written: the next is skipped for being too close, not for being busy
	tr.observe("mixed", "reads during the workload", 45*time.Millisecond)
	tr.stop()

	files, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(dir, "mixed.slow-1.trace")
	if len(files) != 1 || files[0] != want {
		t.Fatalf("files = %v, want only %s", files, want)
	}
	data, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, []byte("go 1.")) {
		t.Fatalf("%s does not start like a Go execution trace: %q", want, data[:min(len(data), 16)])
	}
	for _, mark := range []string{"scrollback-bench", `a read of "reads during the workload" took 31ms`} {
		if !bytes.Contains(data, []byte(mark)) {
			t.Errorf("the trace does not hold the mark %q", mark)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if got := out.String(); strings.Count(got, "trace: ") != 1 || !strings.Contains(got, "took 31ms") || !strings.Contains(got, "go tool trace "+want) {
		t.Fatalf("printed %q, want one line naming the 31ms read and %s", got, want)
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
	args := append(slices.Clone(tinyBench), "--scenario", "catchup", "--profile-dir", dir, "--trace-slow", "1ns")
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
