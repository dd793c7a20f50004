package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestRunBench_Quick runs every scenario of the benchmark in its CI size
// and checks that every phase and every summary row was reported. It is a
// smoke test of the command: it asserts no timings.
func TestRunBench_Quick(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three whole services for several seconds each")
	}
	var buf bytes.Buffer
	if err := runBench(context.Background(), []string{"--quick", "--scenario", "all"}, &buf); err != nil {
		t.Fatalf("runBench: %v\noutput:\n%s", err, buf.String())
	}
	out := buf.String()
	t.Logf("output:\n%s", out)
	for _, want := range []string{
		"scenario all",
		// reads
		"== publish",
		"publish, 1 publisher:",
		"publish, 16 publishers:",
		"== ingest",
		"ingest, live:",
		"ingest, catch-up:",
		"== reads",
		// rich
		"== rich: a room of 5000 events, 250 members",
		"rich room loaded:",
		"lazy_load_members pages:",
		// purge
		"== purge: purge_history of a room with 3000 messages below the cut-off (--purge-events; the issue's goal size is 1000000)",
		"other room loaded:",
		"purged room loaded:",
		"idle purge: the room's 7 set-up events",
		"open-loop rate of the other room's reads:",
		"purge request: POST /_synapse/admin/v1/purge_history/",
		"the read after it starts at the cut-off",
		"purge, bbolt: 3000 rows removed",
		"purge, log: 3000 messages erased",
		"purge, task: status complete",
		"sizes: bbolt file",
		// the summary
		"== summary",
		"\nreads: ratio = scrollback / floor\n",
		"\nrich: 5000 events, 250 members,",
		"\npurge: 3000 messages below the cut-off, all remote;",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output has no %q", want)
		}
	}
	lines := strings.Split(out, "\n")
	// Each closed-loop target reports both of its phases (1 client, 16
	// clients), each open-loop phase once.
	for name, want := range map[string]int{
		"floor nats echo": 2, "floor nats scan": 2, "scrollback nats /messages": 2, "floor http scan": 2, "scrollback http /messages": 2,
		"rich: floor nats scan": 2, "rich: plain /messages": 2, "rich: lazy_load_members": 2,
		"other: floor nats scan": 2, "other: nats /messages": 2,
		"other: no purge": 1, "other: during the purge": 1, "other: until rows removed": 1, "other: after rows removed": 1, "other: no purge, after": 1,
	} {
		n := 0
		for _, l := range lines {
			if strings.HasPrefix(l, name+" ") && strings.Contains(l, " req in ") {
				n++
			}
		}
		if n != want {
			t.Errorf("%q reported %d times, want %d", name, n, want)
		}
	}
	// Every summary row, with a result where the row has a goal.
	for _, row := range []struct{ metric, result string }{
		{"ingest catch-up, backlog to applied (events/s)", "PASS|MISS"},
		{"NATS /messages p99, 1 client", "PASS|MISS"},
		{"NATS /messages throughput, 16 clients (req/s)", "PASS|MISS"},
		{"HTTP /messages p99, 1 client", "-"},
		{"NATS lazy_load_members vs plain p50, 1 client", "-"},
		{"NATS lazy_load_members vs plain p99, 1 client", "PASS|MISS"},
		{"NATS lazy_load_members vs plain throughput, 16 clients (req/s)", "-"},
		{"NATS plain vs floor p99, 1 client", "PASS|MISS"},
		{"NATS lazy_load_members vs floor p99, 1 client", "PASS|MISS"},
		{"purge request to purged events hidden, idle (HTTP)", "PASS|MISS"},
		{"purge request to purged events hidden, with reads (HTTP)", "PASS|MISS"},
		{"bbolt rows removed (rows/s)", "PASS|MISS"},
		{"log messages erased (msgs/s)", "-"},
		{"purge task complete (s)", "-"},
		{"other room /messages p50 during vs without purge", "-"},
		{"other room /messages p99 during vs without purge", "PASS|MISS"},
		{"other room /messages p99 until rows removed vs without", "PASS|MISS"},
		{"other room /messages p99 after rows removed vs without", "PASS|MISS"},
		{"other room /messages p99 without purge, after vs before", "-"},
		{"bbolt file after vs before", "-"},
		{"JetStream store after vs before", "-"},
	} {
		var found string
		for _, l := range lines {
			if strings.HasPrefix(l, row.metric+"  ") {
				found = l
				break
			}
		}
		if found == "" {
			t.Errorf("summary has no row %q", row.metric)
			continue
		}
		fields := strings.Fields(found)
		if got := fields[len(fields)-1]; !slices.Contains(strings.Split(row.result, "|"), got) {
			t.Errorf("row %q ends in %q, want %s", row.metric, got, row.result)
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
		{name: "defaults", want: benchConfig{Scenario: "reads", Events: 100_000, Members: 5_000, PurgeEvents: 200_000, PurgeRate: 0.5,
			Duration: 5 * time.Second, Clients: 16, Limit: 50, Rounds: 5, Publish: 5_000}},
		{name: "quick", args: []string{"--quick"}, want: benchConfig{Scenario: "reads", Events: 5_000, Members: 250, PurgeEvents: 3_000, PurgeRate: 0.1,
			Duration: time.Second, Clients: 16, Limit: 50, Rounds: 5, Publish: 500}},
		{name: "quick with explicit events", args: []string{"--quick", "--events", "2000", "--cpuprofile", "cpu.out"},
			want: benchConfig{Scenario: "reads", Events: 2_000, Members: 250, PurgeEvents: 3_000, PurgeRate: 0.1,
				Duration: time.Second, Clients: 16, Limit: 50, Rounds: 5, Publish: 500, CPUProfile: "cpu.out"}},
		{name: "purge of a million", args: []string{"--scenario", "purge", "--purge-events", "1000000"},
			want: benchConfig{Scenario: "purge", Events: 100_000, Members: 5_000, PurgeEvents: 1_000_000, PurgeRate: 0.5,
				Duration: 5 * time.Second, Clients: 16, Limit: 50, Rounds: 5, Publish: 5_000}},
		{name: "bad values", args: []string{"--events", "10", "--clients", "0", "--limit", "1001", "--duration", "0s"},
			wantErr: "events: must be at least 1000"},
		{name: "unknown scenario", args: []string{"--scenario", "everything"}, wantErr: `scenario: must be one of reads, rich, purge, all; got "everything"`},
		{name: "profile of all", args: []string{"--scenario", "all", "--cpuprofile", "cpu.out"}, wantErr: `cpuprofile: needs one scenario, not "all"`},
		{name: "too many members", args: []string{"--events", "4000", "--members", "1001"}, wantErr: "members: must be from 2 to a quarter of --events (1000), got 1001"},
		{name: "small purge", args: []string{"--purge-events", "10"}, wantErr: "purge-events: must be at least 100, got 10"},
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

// TestLatHist checks the open loop's histogram against exact percentiles
// of the same values.
func TestLatHist(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(1, 2))
	var h, h2 latHist
	var all []time.Duration
	for i := range 100_000 {
		d := time.Duration(rng.ExpFloat64() * float64(300*time.Microsecond))
		if i%1000 == 0 {
			d *= 1000 // a tail of seconds
		}
		all = append(all, d)
		if i%2 == 0 {
			h.add(d)
		} else {
			h2.add(d)
		}
	}
	h.merge(&h2)
	slices.Sort(all)
	for _, p := range []float64{0.1, 50, 90, 99, 99.9, 100} {
		want := all[max(int(float64(len(all))*p/100+0.999999)-1, 0)]
		got := h.pct(p)
		if got < want || float64(got-want) > float64(want)/histSub+1 {
			t.Errorf("p%g = %v, want %v (within 1/%d above)", p, got, want, histSub)
		}
	}
	if h.max != all[len(all)-1] || h.n != uint64(len(all)) {
		t.Errorf("max %v n %d, want %v %d", h.max, h.n, all[len(all)-1], len(all))
	}
	for _, d := range []time.Duration{0, 1, 255, 256, 257, 511, 512, time.Second, time.Hour} {
		if v := histValue(histBucket(d)); v < d || float64(v-d) > float64(d)/histSub+1 {
			t.Errorf("bucket of %v holds up to %v", d, v)
		}
	}
}
