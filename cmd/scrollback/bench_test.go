package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

// TestRunBench_Quick runs the whole benchmark in its CI size and checks
// that every phase reported. It is a smoke test of the command: it asserts
// no timings.
func TestRunBench_Quick(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a whole service for several seconds")
	}
	var buf bytes.Buffer
	if err := runBench(context.Background(), []string{"--quick"}, &buf); err != nil {
		t.Fatalf("runBench: %v\noutput:\n%s", err, buf.String())
	}
	out := buf.String()
	t.Logf("output:\n%s", out)
	for _, want := range []string{
		"== publish",
		"publish, 1 publisher:",
		"publish, 16 publishers:",
		"== ingest",
		"ingest, live:",
		"ingest, catch-up:",
		"== reads",
		"floor nats echo",
		"floor nats scan",
		"scrollback nats /messages",
		"floor http scan",
		"scrollback http /messages",
		"== summary",
		"metric",
		"NATS /messages p99, 1 client",
		"NATS /messages throughput, 16 clients (req/s)",
		"HTTP /messages p99, 1 client",
		"ingest catch-up, backlog to applied (events/s)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output has no %q", want)
		}
	}
	// Each read phase reports both of its runs.
	for _, name := range []string{"floor nats echo", "floor nats scan", "scrollback nats /messages", "floor http scan", "scrollback http /messages"} {
		if n := strings.Count(out, name+" "); n != 2 {
			t.Errorf("%q reported %d times, want 2 (1 client, 16 clients)", name, n)
		}
	}
}

func TestParseBenchFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    benchConfig
		wantErr string
	}{
		{name: "defaults", want: benchConfig{Events: 100_000, Duration: 5 * time.Second, Clients: 16, Limit: 50, Rounds: 5, Publish: 5_000}},
		{name: "quick", args: []string{"--quick"}, want: benchConfig{Events: 5_000, Duration: time.Second, Clients: 16, Limit: 50, Rounds: 5, Publish: 500}},
		{name: "quick with explicit events", args: []string{"--quick", "--events", "2000", "--cpuprofile", "cpu.out"},
			want: benchConfig{Events: 2_000, Duration: time.Second, Clients: 16, Limit: 50, Rounds: 5, Publish: 500, CPUProfile: "cpu.out"}},
		{name: "bad values", args: []string{"--events", "10", "--clients", "0", "--limit", "1001", "--duration", "0s"},
			wantErr: "events: must be at least 1000"},
		{name: "argument", args: []string{"extra"}, wantErr: `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseBenchFlags(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("config = %+v, want %+v", got, tt.want)
			}
		})
	}
	if _, err := parseBenchFlags([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: err = %v, want flag.ErrHelp", err)
	}
}
