package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/internal/loadgen"
	"github.com/scrollback/scrollback/testenv"
)

// tinyBench are the flags of the smoke runs: every scenario at a size that
// takes seconds, not minutes.
var tinyBench = []string{"--quick", "--duration", "300ms", "--rounds", "2", "--matrix-duration", "60ms", "--publish", "200",
	"--events", "2000", "--members", "100", "--purge-events", "1000", "--rooms", "50", "--ingest-events", "5000", "--backlog", "5000",
	"--mixed-events", "2000", "--mixed-purge", "500", "--shutdown-members", "50", "--ingest-rate", "300", "--hs-delay", "0s", "--sample", "50ms"}

// TestRunBench_Quick runs every scenario of the benchmark at a tiny size
// and checks that every phase and every summary row was reported, and that
// the report holds every scenario. It is a smoke test of the command: it
// asserts no timings.
func TestRunBench_Quick(t *testing.T) {
	if testing.Short() {
		t.Skip("runs six whole services for a few seconds each")
	}
	report := filepath.Join(t.TempDir(), "report.html")
	var buf bytes.Buffer
	if err := runBench(context.Background(), append(slices.Clone(tinyBench), "--scenario", "all", "--report", report), &buf); err != nil {
		t.Fatalf("runBench: %v\noutput:\n%s", err, buf.String())
	}
	out := buf.String()
	t.Logf("output:\n%s", out)
	for _, want := range []string{
		"scenario all",
		"memory at the start of reads (this process), after a collection: RssAnon+RssShmem ",
		"memory at the start of mixed (this process), after a collection: RssAnon+RssShmem ",
		// reads
		"== publish",
		"publish, 1 publisher:",
		"publish, 16 publishers:",
		"publish, atomic batches of 10, 4 in flight:",
		"publish, atomic batches of 1000, 4 in flight:",
		"== ingest",
		"ingest, live:",
		"ingest, catch-up:",
		"== reads",
		"== read matrix",
		"== Dendrite comparison",
		"homeserver, for the HTTP reads: map[ignored_users:",
		// rich
		"== rich: a room of 2000 events, 100 members",
		"rich room loaded:",
		"lazy_load_members pages:",
		// purge
		"== purge: purge_history of a room with 1000 messages below the cut-off (--purge-events; the issue's goal size is 1000000)",
		"other room loaded:",
		"purged room loaded:",
		"idle purge: the room's 7 set-up events",
		"open-loop rate of the other room's reads:",
		"purge request: POST /_synapse/admin/v1/purge_history/",
		"the read after it starts at the cut-off",
		"purge, bbolt: 1000 rows removed",
		"purge, log: 1000 messages erased",
		"purge, task: status complete",
		"sizes: bbolt file",
		// ingest
		"== ingest: 5000 events in 50 rooms, Zipf s=1.000",
		"published: 5000 events acked",
		"applied: 5000 events published and applied",
		"freshness, publish to applied",
		"== reads by room size",
		// catchup
		"== catchup: a projection starting 5000 events behind the log",
		"backlog: 5000 events published",
		"catch-up: 5000 events applied",
		"process CPU from Open to all applied: ",
		"floor: an ordered consumer copying",
		// mixed
		"== mixed: reads of a 10000-event room",
		"requests: purge_history replied",
		"purge: 500 messages; rows removed",
		"shutdown: 51 members kicked",
		"homeserver: leave answered in p50 ",
		"homeserver: forget answered in p50 ",
		"ingest during the workload:",
		// the summary
		"== summary",
		"\nreads: ratio = scrollback / floor\n",
		"\nread matrix: NATS /messages",
		"\nDendrite 0.13.8 comparison:",
		"\nrich: 2000 events, 100 members,",
		"\npurge: 1000 messages below the cut-off, all remote;",
		"\ningest: 5000 events in 50 rooms",
		"\nreads by room size:",
		"\ncatchup: a projection starting 5000 events behind",
		"\nmixed: reads of a 10000-event room",
		"report: " + report,
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
		"floor dir=b limit=10": 2, "nats dir=f limit=100": 2, "nats dir=b limit=50 lazy_load_members": 2,
		"dendrite room: http /messages": 2, "dendrite room: floor http scan": 2,
		"rich: floor nats scan": 2, "rich: plain /messages": 2, "rich: lazy_load_members": 2,
		"other: floor nats scan": 2, "other: nats /messages": 2,
		"other: no purge": 1, "other: during the purge": 1, "other: until rows removed": 1, "other: after rows removed": 1, "other: no purge, after": 1,
		"mixed: floor nats scan": 2, "mixed: nats /messages": 2, "mixed: reads alone": 1, "mixed: reads during": 1, "mixed: reads alone, after": 1,
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
		{"ingest catch-up of one room (issue 1), backlog to applied (events/s)", "-"},
		{"publish atomic batches of 100, 4 in flight (acked msgs/s)", "-"},
		{"durable publishing, best of the above (acked msgs/s)", "PASS|MISS"},
		{"NATS /messages p99, 1 client", "PASS|MISS"},
		{"NATS /messages throughput, 16 clients (req/s)", "PASS|MISS"},
		{"HTTP /messages p99, 1 client", "-|PASS|MISS"},
		{"dir=b limit=10 p99, 1 client", "PASS|MISS"},
		{"dir=f limit=100 p99, 1 client", "PASS|MISS"},
		{"dir=b limit=50 filter types+not_senders p99, 1 client", "PASS|MISS"},
		{"dir=b limit=50 lazy_load_members p99, 1 client", "PASS|MISS"},
		{"HTTP /messages throughput, 16 clients (req/s)", "-|PASS|MISS"},
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
		{"ingest: publish to applied (events/s) vs the log's ack rate", "-"},
		{"freshness p99, publish to applied per group", "-"},
		{"memory RssAnon+RssShmem, peak (process: service + bench)", "-"}, // the goal is at 10M events
		{"catch-up, Open to all applied (events/s)", "PASS|MISS"},
		{"reads p99 during the workload vs with the ingest alone", "PASS|MISS"},
		{"reads p99 during the workload vs alone", "-"},
		{"purge request replied (purged events hidden)", "PASS|MISS"},
		{"shutdown: members kicked", "-"},
	} {
		var found string
		for _, l := range lines {
			// The mixed reads' rows end in their rate: "[reads at ...]".
			if strings.HasPrefix(l, row.metric+"  ") || strings.HasPrefix(l, row.metric+" [reads at ") {
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
	// Room sizes: the reads by size found rooms of the run's sizes.
	if !regexp.MustCompile(`\n\d+-event room plain p99, 1 client  `).MatchString(out) {
		t.Error("no reads by room size in the summary")
	}
	html, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "Goals at a glance", `id="s-reads"`, `id="s-rich"`, `id="s-purge"`, `id="s-ingest"`, `id="s-catchup"`, `id="s-mixed"`,
		"latency over time", "latency histogram", "projection lag", "RssFile", "JetStream store", "read matrix", "Dendrite 0.13.8 comparison", "reads during the workload"} {
		if !strings.Contains(string(html), want) {
			t.Errorf("report has no %q", want)
		}
	}
}

// TestRunBench_External runs the scenarios that work through the contract
// alone against a service of their own, as --target does.
func TestRunBench_External(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a service and three scenarios against it")
	}
	m := startMain(t, func(c *Config) {
		c.ServerName = benchServerName // the shutdown kicks the bench's users: they must be local
		c.NATS.Listen = "127.0.0.1:0"
	})
	for _, scenario := range externalScenarios {
		t.Run(scenario, func(t *testing.T) {
			var buf bytes.Buffer
			args := append(slices.Clone(tinyBench), "--scenario", scenario, "--target", m.NATSServer.ClientURL(),
				"--target-http", "http://"+m.HTTPAddr, "--target-data", m.Config.DataDir)
			if err := runBench(context.Background(), args, &buf); err != nil {
				t.Fatalf("runBench: %v\noutput:\n%s", err, buf.String())
			}
			out := buf.String()
			t.Logf("output:\n%s", out)
			for _, want := range map[string][]string{
				scenarioReads:  {"target: the external service at nats://", "== reads (external)", "== read matrix", "== Dendrite comparison", "\nread matrix:", "\nDendrite 0.13.8 comparison:"},
				scenarioIngest: {"applied: 5000 events", "freshness, publish to applied", "\nreads by room size:", "memory VmRSS, mapped files included, peak (the external service; --target-pid for the split)"},
				scenarioMixed:  {"shutdown: 51 members kicked", "\nmixed: reads of a 10000-event room"},
			}[scenario] {
				if !strings.Contains(out, want) {
					t.Errorf("output has no %q", want)
				}
			}
		})
	}
}

func TestParseBenchFlags(t *testing.T) {
	defaults := defaultBenchConfig()
	quick := defaults
	quick.Events, quick.Members, quick.PurgeEvents, quick.PurgeRate, quick.Duration, quick.Publish = 5_000, 250, 3_000, 0.1, time.Second, 500
	quick.Rooms, quick.IngestEvents, quick.Backlog, quick.MatrixDuration = 200, 20_000, 20_000, 200*time.Millisecond
	quick.MixedEvents, quick.MixedPurge, quick.ShutdownMembers, quick.MixedRate, quick.IngestRate, quick.Sample = 5_000, 2_000, 200, 0.1, 500, 100*time.Millisecond
	with := func(c benchConfig, edit func(*benchConfig)) benchConfig { edit(&c); return c }
	tests := []struct {
		name    string
		args    []string
		want    benchConfig
		wantErr string
	}{
		{name: "defaults", want: benchConfig{Scenario: "reads", Events: 100_000, Members: 5_000, PurgeEvents: 200_000, PurgeRate: 0.5,
			Duration: 5 * time.Second, Clients: 16, Limit: 50, Rounds: 5, Publish: 5_000,
			Rooms: 10_000, IngestEvents: 1_000_000, ZipfS: 1, Backlog: 1_000_000, Batch: 1000, PublishMode: "batch", Seed: 1,
			MatrixDuration: 2 * time.Second, MixedEvents: 200_000, MixedPurge: 100_000, ShutdownMembers: 5_000, MixedRate: 0.25,
			IngestRate: 1_000, HSDelay: 2 * time.Millisecond, Sample: 250 * time.Millisecond, TargetStream: "SCROLLBACK", TargetPrefix: "sb"}},
		{name: "quick", args: []string{"--quick"}, want: quick},
		{name: "quick with explicit events", args: []string{"--quick", "--events", "2000", "--cpuprofile", "cpu.out", "--rooms", "10"},
			want: with(quick, func(c *benchConfig) { c.Events, c.CPUProfile, c.Rooms = 2_000, "cpu.out", 10 })},
		{name: "purge of a million", args: []string{"--scenario", "purge", "--purge-events", "1000000"},
			want: with(defaults, func(c *benchConfig) { c.Scenario, c.PurgeEvents = "purge", 1_000_000 })},
		{name: "the issue's scale", args: []string{"--scenario", "ingest", "--rooms", "100000", "--ingest-events", "10000000", "--largest", "2000000", "--report", "r.html", "--profile-dir", "prof"},
			want: with(defaults, func(c *benchConfig) {
				c.Scenario, c.Rooms, c.IngestEvents, c.Largest, c.Report, c.ProfileDir = "ingest", 100_000, 10_000_000, 2_000_000, "r.html", "prof"
			})},
		{name: "slow requests traced", args: []string{"--scenario", "mixed", "--profile-dir", "prof", "--trace-slow", "30ms"},
			want: with(defaults, func(c *benchConfig) { c.Scenario, c.ProfileDir, c.TraceSlow = "mixed", "prof", 30*time.Millisecond })},
		{name: "external", args: []string{"--scenario", "mixed", "--target", "nats://127.0.0.1:4222", "--target-http", "http://127.0.0.1:8090"},
			want: with(defaults, func(c *benchConfig) {
				c.Scenario, c.Target, c.TargetHTTP = "mixed", "nats://127.0.0.1:4222", "http://127.0.0.1:8090"
			})},
		{name: "bad values", args: []string{"--events", "10", "--clients", "0", "--limit", "1001", "--duration", "0s"},
			wantErr: "events: must be at least 1000"},
		{name: "unknown scenario", args: []string{"--scenario", "everything"}, wantErr: `scenario: must be one of reads, rich, purge, ingest, catchup, mixed, all; got "everything"`},
		{name: "profile of all", args: []string{"--scenario", "all", "--cpuprofile", "cpu.out"}, wantErr: `cpuprofile: needs one scenario, not "all"`},
		{name: "too many members", args: []string{"--events", "4000", "--members", "1001"}, wantErr: "members: must be from 2 to a quarter of --events (1000), got 1001"},
		{name: "small purge", args: []string{"--purge-events", "10"}, wantErr: "purge-events: must be at least 100, got 10"},
		{name: "argument", args: []string{"extra"}, wantErr: `unexpected argument "extra"`},
		{name: "rooms too small", args: []string{"--rooms", "1000", "--ingest-events", "5000"}, wantErr: "ingest-events: must be at least --rooms x 10 (10000), got 5000"},
		{name: "largest beyond the events", args: []string{"--largest", "2000000"}, wantErr: "largest: must be from 0 to --ingest-events (1000000), got 2000000"},
		{name: "batch too big", args: []string{"--batch", "5000"}, wantErr: "batch: must be from 1 to 1000, got 5000"},
		{name: "publish mode", args: []string{"--publish-mode", "sync"}, wantErr: `publish-mode: must be batch or async, got "sync"`},
		{name: "mixed rate", args: []string{"--mixed-rate", "2"}, wantErr: "mixed-rate: must be greater than 0 and at most 1, got 2"},
		{name: "both profiles", args: []string{"--scenario", "ingest", "--cpuprofile", "c.out", "--profile-dir", "p"}, wantErr: "profile-dir: cannot be combined with --cpuprofile"},
		{name: "trace without a dir", args: []string{"--trace-slow", "30ms"}, wantErr: "trace-slow: writes its traces to --profile-dir: give one"},
		{name: "negative trace", args: []string{"--trace-slow", "-1s", "--profile-dir", "p"}, wantErr: "trace-slow: must not be negative, got -1s"},
		{name: "external purge", args: []string{"--scenario", "purge", "--target", "nats://127.0.0.1:4222"}, wantErr: `target: runs the scenarios reads, ingest, mixed, not "purge"`},
		{name: "external profile", args: []string{"--scenario", "ingest", "--target", "nats://h:4222", "--profile-dir", "p"}, wantErr: "target: profiles are of this process"},
		{name: "bad target", args: []string{"--scenario", "ingest", "--target", "localhost"}, wantErr: `target: must be a NATS URL such as nats://127.0.0.1:4222, got "localhost"`},
		{name: "bad target http", args: []string{"--target-http", "127.0.0.1:8090"}, wantErr: `target-http: must be http://host:port, got "127.0.0.1:8090"`},
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

// TestOpenLoop_CountsFailures: an open loop against a target that fails
// every third request keeps going, counts the failures with their
// latencies, and reports an error only when nothing was answered.
func TestOpenLoop_CountsFailures(t *testing.T) {
	var calls atomic.Int64
	boom := errors.New("timeout")
	tg := target{n: 1, do: func(ctx context.Context, i int) (int, error) {
		if calls.Add(1)%3 == 0 {
			time.Sleep(2 * time.Millisecond)
			return 0, boom
		}
		return 100, nil
	}}
	r, err := runOpenLoop(context.Background(), 2000, 200*time.Millisecond, tg)
	if err != nil {
		t.Fatal(err)
	}
	total := int(calls.Load())
	if r.Requests+r.Failed != total || r.Failed != total/3 || !errors.Is(r.FirstErr, boom) {
		t.Fatalf("%d calls: %d answered, %d failed (first %v)", total, r.Requests, r.Failed, r.FirstErr)
	}
	if r.Max() < 2*time.Millisecond {
		t.Fatalf("max %v: the failures' latencies are not counted", r.Max())
	}
	if r.Bytes != 100*r.Requests {
		t.Fatalf("bytes %d for %d answers", r.Bytes, r.Requests)
	}
	_, err = runOpenLoop(context.Background(), 2000, 50*time.Millisecond, target{n: 1, do: func(context.Context, int) (int, error) { return 0, boom }})
	if err == nil || !strings.Contains(err.Error(), "no request completed") {
		t.Fatalf("all failed: err = %v", err)
	}
}

func TestSlowestWindows(t *testing.T) {
	ms := time.Millisecond
	ws := []loadgen.Window{
		{Start: 0, End: 100 * ms, P99: 5 * ms, Max: 6 * ms},
		{Start: 100 * ms, End: 200 * ms, P99: 30 * ms, Max: 40 * ms},
		{Start: 200 * ms, End: 300 * ms, P99: 9 * ms, Max: 9 * ms},
		{Start: 300 * ms, End: 400 * ms, P99: 30 * ms, Max: 31 * ms},
		{Start: 400 * ms, End: 500 * ms, P99: 50 * ms, Max: 55 * ms},
	}
	// The reply at 100 ms, the rows removed 250 ms after it.
	got := slowestWindows(ws, 100*ms, 250*ms, 3)
	want := []string{
		"+0.3s (erasure) p99 50.00ms max 55.00ms",
		"+0.0s (rows) p99 30.00ms max 40.00ms",
		"+0.2s (rows) p99 30.00ms max 31.00ms",
	}
	if !slices.Equal(got, want) {
		t.Errorf("slowestWindows = %q, want %q", got, want)
	}
	if got := slowestWindows(ws[:1], 100*ms, 0, 3); len(got) != 1 || !strings.Contains(got[0], "before the reply") {
		t.Errorf("a window before the reply: %q", got)
	}
	if got := slowestWindows(nil, 0, 0, 3); len(got) != 0 {
		t.Errorf("no windows: %q", got)
	}
}

// TestMixedPhases: the phases are named by what still ran in them and
// take the open loop's parts in order, one per distinct step end.
func TestMixedPhases(t *testing.T) {
	reads := func(maxes ...time.Duration) []openResult {
		var out []openResult
		for _, m := range maxes {
			var r openResult
			r.add(m/2, 10, nil)
			r.add(m, 10, nil)
			out = append(out, r)
		}
		return out
	}
	ms := time.Millisecond
	// Rows removed at 2 s, the shutdown complete at 3 s, the purge at 4 s;
	// the loop's parts from the reply: to 2 s, to 3 s, to 4 s, and the
	// rest until it stopped.
	got := mixedPhases(reads(1*ms, 20*ms, 2*ms, 50*ms), 2*time.Second, 3*time.Second, 4*time.Second)
	want := []struct {
		from, to time.Duration
		running  string
		max      time.Duration
	}{
		{0, 2 * time.Second, "purge rows + shutdown", 1 * ms},
		{2 * time.Second, 3 * time.Second, "shutdown + purge erasure", 20 * ms},
		{3 * time.Second, 4 * time.Second, "purge erasure", 2 * ms},
	}
	if len(got) != len(want) {
		t.Fatalf("phases = %v, want %d", got, len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.From != w.from || g.To != w.to || strings.Join(g.Running, " + ") != w.running || g.Reads.Max() != w.max || g.Reads.N() != 2 {
			t.Errorf("phase %d = %v, want %+v", i, g, w)
		}
	}
	// Without the rows' end (an external service) the purge is one step;
	// steps seen at once are one boundary, one part, one phase.
	got = mixedPhases(reads(20*ms, 50*ms), 0, 4*time.Second, 4*time.Second)
	if len(got) != 1 || strings.Join(got[0].Running, " + ") != "shutdown + purge" || got[0].Reads.Max() != 20*ms {
		t.Errorf("phases without the rows' end = %v", got)
	}
}

// TestOpenLoop_TimedFromDue: a pacer that wakes late (here 300 ms, as
// if descheduled on a busy machine) releases every request due meanwhile
// at once; each counts the wait since it was due in its latency, in the
// table and in the series alike, though the target answers at once.
func TestOpenLoop_TimedFromDue(t *testing.T) {
	const rate = 1000
	stall := 300 * time.Millisecond
	s := loadgen.NewSeries("reads", time.Now().Add(-stall))
	tg := target{n: 1, rec: &recHook{}, do: func(context.Context, int) (int, error) { return 10, nil }}
	tg.rec.set(s)
	o := startOpenLoopAt(context.Background(), rate, tg, time.Now().Add(-stall))
	// Until the requests due during the stall have been answered.
	testenv.WaitFor(t, 10*time.Second, "the stalled requests' replies", func() bool {
		return s.Count() >= uint64(stall.Seconds()*rate)
	})
	r, err := o.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests < int(stall.Seconds()*rate) {
		t.Fatalf("%d requests: the ones due during the stall were not all sent", r.Requests)
	}
	// The first was due 300 ms before it could leave; of those due
	// during the stall, half waited 150 ms or more.
	if r.Max() < stall-10*time.Millisecond || r.Pct(40) < 100*time.Millisecond {
		t.Errorf("max %v, p40 %v: the requests' wait since they were due is not counted", r.Max(), r.Pct(40))
	}
	if r.Late.Max() < stall-10*time.Millisecond {
		t.Errorf("left at most %v after due, want about %v", r.Late.Max(), stall)
	}
	if h := s.Hist(); h.Count() != uint64(r.Requests) || h.Max() != r.Max() {
		t.Errorf("series: %d requests, max %v; the loop: %d, max %v", h.Count(), h.Max(), r.Requests, r.Max())
	}
}

// TestOpenLoop_PartsByDueTime: Mark splits a phase by when each request
// was due, not when it left or replied: with 300 ms of requests due at
// once and the mark before the pacer wakes, every one due before the mark
// counts in the first part.
func TestOpenLoop_PartsByDueTime(t *testing.T) {
	const rate = 1000
	var calls atomic.Int64
	tg := target{n: 1, do: func(context.Context, int) (int, error) {
		calls.Add(1)
		time.Sleep(time.Millisecond)
		return 10, nil
	}}
	// With one P the pacer's goroutine runs only once this one waits:
	// after the mark.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	o := startOpenLoopAt(context.Background(), rate, tg, time.Now().Add(-300*time.Millisecond))
	mark := o.Mark()
	// Until requests due after the mark have been answered too.
	testenv.WaitFor(t, 10*time.Second, "requests due after the mark", func() bool {
		return calls.Load() > int64(mark.Sub(o.start).Seconds()*rate)+1 // more than were due before it
	})
	if _, err := o.Stop(); err != nil {
		t.Fatal(err)
	}
	want := 0
	for o.due(want).Before(mark) {
		want++
	}
	parts := o.Parts()
	if len(parts) != 2 || parts[0].N() != want || parts[1].N() == 0 {
		t.Fatalf("parts of %v: %d and %d requests, want %d due before the mark and some after", mark.Sub(o.start), parts[0].N(), parts[1].N(), want)
	}
	if parts[0].Elapsed != mark.Sub(o.start) || parts[1].Elapsed != o.elapsed-mark.Sub(o.start) {
		t.Errorf("parts last %v and %v, want %v and %v", parts[0].Elapsed, parts[1].Elapsed, mark.Sub(o.start), o.elapsed-mark.Sub(o.start))
	}
}

// TestHideStats: nearest-rank percentiles of a few durations, in any
// order.
func TestHideStats(t *testing.T) {
	ms := func(n ...int) []time.Duration {
		var out []time.Duration
		for _, v := range n {
			out = append(out, time.Duration(v)*time.Millisecond)
		}
		return out
	}
	for _, tt := range []struct {
		in            []time.Duration
		p50, p90, max time.Duration
	}{
		{nil, 0, 0, 0},
		{ms(7), 7 * time.Millisecond, 7 * time.Millisecond, 7 * time.Millisecond},
		{ms(10, 1, 9, 2, 8, 3, 7, 4, 6, 5), 5 * time.Millisecond, 9 * time.Millisecond, 10 * time.Millisecond},
		{ms(3, 1, 2), 2 * time.Millisecond, 3 * time.Millisecond, 3 * time.Millisecond},
	} {
		got := hideStats(tt.in)
		if got != (latencies{tt.p50, tt.p90, tt.max}) {
			t.Errorf("hideStats(%v) = %+v, want p50 %v p90 %v max %v", tt.in, got, tt.p50, tt.p90, tt.max)
		}
	}
}

// TestLoadResultPct: the closed loop's percentiles are loadgen's nearest
// rank. The rank is the smallest with at least p% of the values at or
// below it: of two values, p50.00001 is the second (the first is only
// 50%), which an epsilon of 1e-6 on the rank got wrong.
func TestLoadResultPct(t *testing.T) {
	ms := time.Millisecond
	r := loadResult{lat: []time.Duration{1 * ms, 2 * ms}}
	for _, tt := range []struct {
		p    float64
		want time.Duration
	}{{50, 1 * ms}, {50.00001, 2 * ms}, {99, 2 * ms}, {100, 2 * ms}, {0.001, 1 * ms}} {
		if got := r.Pct(tt.p); got != tt.want {
			t.Errorf("p%g of %v = %v, want %v", tt.p, r.lat, got, tt.want)
		}
	}
	if got := (loadResult{}).Pct(99); got != 0 {
		t.Errorf("p99 of nothing = %v, want 0", got)
	}
}

// TestMixedPhaseSpan: sub-second phases keep their times apart.
func TestMixedPhaseSpan(t *testing.T) {
	ms := time.Millisecond
	for _, tt := range []struct {
		from, to time.Duration
		want     string
	}{{0, 300 * ms, "0.0-0.3s"}, {300 * ms, 450 * ms, "0.3-0.5s"}, {2 * time.Second, 12500 * ms, "2.0-12.5s"}} {
		if got := (mixedPhase{From: tt.from, To: tt.to}).Span(); got != tt.want {
			t.Errorf("span %v-%v = %q, want %q", tt.from, tt.to, got, tt.want)
		}
	}
}

// TestLoops_RecordWhatTheyMeasure: the closed and the open loop record
// each answered request into the target's series themselves, with the
// latency they count, so that a series (the plots, --trace-slow) and the
// loop's own figures agree.
func TestLoops_RecordWhatTheyMeasure(t *testing.T) {
	var calls atomic.Int64
	do := func(ctx context.Context, i int) (int, error) {
		if calls.Add(1)%5 == 0 {
			time.Sleep(3 * time.Millisecond)
		}
		return 10, nil
	}
	ctx := context.Background()
	closed := loadgen.NewSeries("closed", time.Now())
	tg := target{n: 1, do: do, rec: &recHook{}}
	tg.rec.set(closed)
	r, err := runLoad(ctx, 2, 50*time.Millisecond, tg)
	if err != nil {
		t.Fatal(err)
	}
	if h := closed.Hist(); h.Count() != uint64(r.Requests) || h.Max() != r.Max() {
		t.Errorf("closed loop: %d requests, max %v; its series: %d, max %v", r.Requests, r.Max(), h.Count(), h.Max())
	}
	open := loadgen.NewSeries("open", time.Now())
	tg.rec.set(open)
	or, err := runOpenLoop(ctx, 1000, 100*time.Millisecond, tg)
	if err != nil {
		t.Fatal(err)
	}
	if h := open.Hist(); h.Count() != uint64(or.Requests) || h.Max() != or.Max() {
		t.Errorf("open loop: %d requests, max %v; its series: %d, max %v", or.Requests, or.Max(), h.Count(), h.Max())
	}
}

// TestFloorReusesReplyBuffers: the floor's scan builds its reply in a
// buffer given back once the reply is sent (Endpoint.Release), as the
// service does, so a read allocates far less than a page.
func TestFloorReusesReplyBuffers(t *testing.T) {
	f := &floor{}
	var err error
	if f.db, err = bolt.Open(filepath.Join(t.TempDir(), "floor.db"), 0o600, &bolt.Options{NoSync: true}); err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	room := newBenchRoom("!floor:"+benchServerName, 300)
	if err := f.load(context.Background(), slices.Values(room.raw)); err != nil {
		t.Fatal(err)
	}
	req := floorRequest(room.Len(), 50)
	scan := func(release bool) (perRead uint64, size int) {
		const n = 200
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		for range n {
			reply, err := f.handleScan(context.Background(), floorScanSubject, req)
			if err != nil {
				t.Fatal(err)
			}
			size = len(reply)
			if release {
				releaseFloorBuf(reply)
			}
		}
		runtime.ReadMemStats(&m1)
		return (m1.TotalAlloc - m0.TotalAlloc) / n, size
	}
	scan(true) // the pool's first buffer
	reused, size := scan(true)
	fresh, _ := scan(false)
	// The race detector drops a quarter of what goes back to a pool.
	if reused > fresh/2 {
		t.Errorf("a read of a %d-byte reply allocates %d bytes when its buffer is given back, %d when not", size, reused, fresh)
	}
}

// TestFloor_RepliesAsTheServiceDoes: the floor is bus.Serve in the
// service's arrangement (DESIGN.md, "Benchmark protocol"), so in-process
// on the embedded server its replies go out over apiReplyConns
// connections of their own, as serve's do, and none over the connection
// its requests come in on. It replied on that one connection, and near
// capacity its workers queued on the connection's mutex, which the
// service's no longer do: the ratios to the floor and the purge
// scenario's read rate, half the floor's throughput, came from a floor
// slower than the service's own arrangement.
func TestFloor_RepliesAsTheServiceDoes(t *testing.T) {
	env := testenv.NewNATS(t)
	room := newBenchRoom("!floor:"+benchServerName, 100)
	f, err := openFloor(context.Background(), filepath.Join(t.TempDir(), "floor.db"), env.Server, room)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range 2 * apiReplyConns {
		msg, err := env.NC.Request(floorScanSubject, floorRequest(room.Len()-i, 10), 5*time.Second)
		if err != nil {
			t.Fatalf("scan %d: %v", i, err)
		}
		if len(msg.Data) == 0 || msg.Header.Get("Nats-Service-Error-Code") != "" {
			t.Fatalf("scan %d: %d bytes, error %q", i, len(msg.Data), msg.Header.Get("Nats-Service-Error"))
		}
	}
	if n := f.nc.Stats().OutMsgs; n != 0 {
		t.Errorf("the floor's serving connection published %d replies, want none", n)
	}
	if len(f.replyNCs) != apiReplyConns {
		t.Fatalf("the floor replies over %d connections, the service over %d", len(f.replyNCs), apiReplyConns)
	}
	for i, nc := range f.replyNCs {
		if n := nc.Stats().OutMsgs; n != 2 {
			t.Errorf("reply connection %d published %d replies, want 2 of the %d", i, n, 2*apiReplyConns)
		}
	}
}

// TestExternalMemoryIsVmRSS: an external service's /metrics gives only
// process_resident_memory_bytes, every resident page with bbolt's mapped
// file: it is sampled and shown as VmRSS, and never judged against the
// memory goal, which leaves the page cache out.
func TestExternalMemoryIsVmRSS(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "scrollback_projection_lag_messages 0\nprocess_resident_memory_bytes 6.7108864e+08\n")
	}))
	defer srv.Close()
	var none atomic.Pointer[sut]
	s := startSampler(context.Background(), time.Now(), time.Hour, &none)
	s.stop()
	s.sample(context.Background(), &sut{httpBase: srv.URL, hc: srv.Client()})
	if len(s.vmRSS.Points) != 1 || len(s.anon.Points)+len(s.file.Points) != 0 || s.peak != (memPeak{VmRSS: 640 << 20}) {
		t.Fatalf("sampled VmRSS %v, RssAnon+RssShmem %v, RssFile %v; peak %+v", s.vmRSS.Points, s.anon.Points, s.file.Points, s.peak)
	}
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	memRows(summaryTable{tw: tw}, s.peak, "the external service", "< 512.0 MiB at 10M events", "MISS")
	tw.Flush()
	out := buf.String()
	if !strings.HasPrefix(out, "memory VmRSS, mapped files included, peak (the external service; --target-pid for the split)  640.0 MiB") ||
		strings.Contains(out, "MISS") || strings.Contains(out, "RssAnon") || !strings.HasSuffix(strings.TrimSpace(out), "report  -") {
		t.Errorf("summary rows:\n%s", out)
	}
}

// TestMixedRateNote: the mixed reads' ratios name their rate, in req/s
// and as the share of the floor's throughput it is.
func TestMixedRateNote(t *testing.T) {
	r := &mixedResults{Rate: 1250}
	r.floor.Thr = loadResult{Requests: 10_000, Elapsed: 2 * time.Second}
	if got, want := r.rateNote(), "[reads at 1250 req/s = 0.25x the floor's]"; got != want {
		t.Errorf("rate note = %q, want %q", got, want)
	}
	r.Rate, r.Capped = 900, true
	if got, want := r.rateNote(), "[reads at 900 req/s = 0.18x the floor's, capped at 0.5x scrollback's]"; got != want {
		t.Errorf("rate note = %q, want %q", got, want)
	}
}

// TestProfiledRunSaysSo: with --profile-dir every figure is measured
// under the CPU profiler, and the summary and the report say so.
func TestProfiledRunSaysSo(t *testing.T) {
	dir := t.TempDir()
	for _, profiled := range []bool{false, true} {
		var out bytes.Buffer
		b := &bench{out: &out, cfg: benchConfig{Report: filepath.Join(dir, "report.html")}}
		if profiled {
			b.cfg.ProfileDir = filepath.Join(dir, "prof")
		}
		b.summary()
		if err := b.writeReport(time.Now()); err != nil {
			t.Fatal(err)
		}
		html, err := os.ReadFile(b.cfg.Report)
		if err != nil {
			t.Fatal(err)
		}
		inSummary := strings.Contains(out.String(), "== summary (as measured; every figure under the CPU profiler (--profile-dir)) ==")
		inReport := strings.Contains(string(html), "measured under the CPU profiler")
		if inSummary != profiled || inReport != profiled {
			t.Errorf("--profile-dir %v: the summary says so %v, the report %v", profiled, inSummary, inReport)
		}
	}
}

// TestReport_RedactsTargetPassword: a --target URL with a password or a
// token is masked in the report's command line and notes, as the run's
// output masks it.
func TestReport_RedactsTargetPassword(t *testing.T) {
	const secret = "s3cretpw"
	target := "nats://bench:" + secret + "@127.0.0.1:4222"
	path := filepath.Join(t.TempDir(), "report.html")
	b := &bench{cfg: benchConfig{Report: path, Target: target}, out: io.Discard,
		args: []string{"--target", target, "--target=" + target, "--scenario", "ingest"}}
	if err := b.writeReport(time.Now()); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte(secret)) {
		t.Errorf("the report holds the target's password")
	}
	if !bytes.Contains(data, []byte("--scenario ingest")) || !bytes.Contains(data, []byte("127.0.0.1:4222")) {
		t.Errorf("the report lost the rest of the command line")
	}
}
