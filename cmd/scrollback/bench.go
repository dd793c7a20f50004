package main

// `scrollback bench` measures one whole scrollback in-process, on a temp
// data dir, against "the floor" (bench_floor.go): the cheapest thing that
// could answer the same reads on the same machine in the same run. It
// follows the benchmark protocol of DESIGN.md: latency percentiles come
// from one closed-loop client, throughput from --clients closed-loop
// clients on one shared connection, and the floor is measured with the
// same client code right next to the service.
//
// Phases, in this order:
//
//  1. publish: synchronous JetStream publishes with the service's default
//     durability (the embedded server fsyncs every write), one publisher,
//     then 16 concurrent publishers (one room each), against a throwaway
//     service of its own so that the ingest room's log holds nothing else.
//  2. ingest, live: the benchmark room (--events) is published
//     asynchronously as fast as the server acknowledges, and the clock runs
//     from the first publish until the projector has applied the last
//     sequence.
//  3. ingest, catch-up: the service is closed, its projection file
//     (<data_dir>/scrollback.db) deleted and a new service opened on the
//     same data dir; the clock runs from Open until the projector has
//     applied the whole log again. This is the projection's apply rate from
//     a backlog, without the publisher in the way.
//  4. reads: /messages (dir=b, --limit, from a random depth of the room)
//     over NATS and over HTTP, each next to its floor: a bare NATS echo, a
//     bare bbolt reverse scan behind the same micro/worker-pool
//     arrangement, and the same scan behind net/http. The service and its
//     floors take turns (--rounds) so that all of them see the same noise
//     of a shared machine.
//
// The numbers are printed as measured; the summary table compares them
// with the goals of the benchmark issue.

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
)

// Goals of the benchmark issue: NATS /messages p99 at most 3x the floor's,
// NATS /messages throughput at least half the floor's, and the projection
// applying at least 50k events/s from the log.
const (
	goalP99Ratio        = 3.0
	goalThroughputRatio = 0.5
	goalApplyPerSec     = 50_000
)

// Fixed shape of the benchmark.
const (
	benchServerName = "bench.invalid"
	// benchPublishers is the number of concurrent publishers of the
	// publish phase.
	benchPublishers = 16
	// benchMembers is the number of joined members of each room; they take
	// turns sending the messages.
	benchMembers = 10
	// tokenPage is the page size used once to collect the `end` tokens
	// that the read phases start from.
	tokenPage = 1000
	// publishWindow bounds the asynchronous publishes awaiting their ack
	// while the ingest room is loaded.
	publishWindow = 1024
	// requestTimeout bounds one request of the read phases.
	benchRequestTimeout = 10 * time.Second
)

// benchConfig is the parsed flags of `scrollback bench`.
type benchConfig struct {
	Events     int           // events in the benchmark room
	Duration   time.Duration // length of each latency or throughput phase
	Clients    int           // closed-loop clients of the throughput phases
	Limit      int           // /messages limit
	Rounds     int           // turns that each read phase is cut into
	Publish    int           // messages of each publish phase
	CPUProfile string        // file for a CPU profile of an extra NATS read run
}

// Warmup is the unmeasured run of each target before each read phase: a
// tenth of the phase, at most half a second.
func (c benchConfig) Warmup() time.Duration { return min(c.Duration/10, 500*time.Millisecond) }

func parseBenchFlags(args []string, output io.Writer) (benchConfig, error) {
	c := benchConfig{Events: 100_000, Duration: 5 * time.Second, Clients: 16, Limit: 50, Rounds: 5, Publish: 5_000}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(output)
	var quick bool
	fs.IntVar(&c.Events, "events", c.Events, "`n`umber of events in the benchmark room")
	fs.DurationVar(&c.Duration, "duration", c.Duration, "length of each latency and throughput phase")
	fs.IntVar(&c.Clients, "clients", c.Clients, "closed-loop clients of the throughput phases (one shared connection)")
	fs.IntVar(&c.Limit, "limit", c.Limit, "/messages `limit` (and events per floor scan)")
	fs.IntVar(&c.Rounds, "rounds", c.Rounds, "`n`umber of turns each read phase is cut into, the service and its floors taking turns")
	fs.IntVar(&c.Publish, "publish", c.Publish, "`n`umber of messages of each publish phase")
	fs.BoolVar(&quick, "quick", false, "a small CI-sized run: 5000 events, 1s phases, 500 publishes (explicit flags still win)")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "after the measurements, profile an extra --duration run of scrollback /messages over NATS with --clients clients into `file`")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: scrollback bench [flags]\n\n"+
			"Runs a whole scrollback in-process on a temp dir (removed at the end) and\n"+
			"measures publish, ingest and /messages against the floor (see docs/BENCHMARKS.md).\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("bench: unexpected argument %q", fs.Arg(0))
	}
	if quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["events"] {
			c.Events = 5_000
		}
		if !set["duration"] {
			c.Duration = time.Second
		}
		if !set["publish"] {
			c.Publish = 500
		}
	}
	var p problems
	if c.Events < 1_000 {
		p.add("events", "must be at least 1000, got %d", c.Events)
	}
	if c.Duration <= 0 {
		p.add("duration", "must be greater than 0, got %v", c.Duration)
	}
	if c.Clients < 1 {
		p.add("clients", "must be at least 1, got %d", c.Clients)
	}
	if c.Limit < 1 || c.Limit > tokenPage {
		p.add("limit", "must be from 1 to %d, got %d", tokenPage, c.Limit)
	}
	if c.Rounds < 1 {
		p.add("rounds", "must be at least 1, got %d", c.Rounds)
	}
	if c.Publish < benchPublishers {
		p.add("publish", "must be at least %d, got %d", benchPublishers, c.Publish)
	}
	if err := errors.Join(p...); err != nil {
		return c, withHeading("bench: invalid flags", err)
	}
	return c, nil
}

// runBench is `scrollback bench`: it runs every phase, prints each result as
// it comes and ends with the summary table.
func runBench(ctx context.Context, args []string, stdout io.Writer) (err error) {
	cfg, err := parseBenchFlags(args, os.Stderr)
	if err != nil {
		return err
	}
	var prof *os.File
	if cfg.CPUProfile != "" {
		if prof, err = os.Create(cfg.CPUProfile); err != nil {
			return fmt.Errorf("bench: cpu profile: %w", err)
		}
		defer func() {
			if cerr := prof.Close(); err == nil && cerr != nil {
				err = fmt.Errorf("bench: cpu profile: %w", cerr)
			}
		}()
	}
	dir, err := os.MkdirTemp("", "scrollback-bench-")
	if err != nil {
		return fmt.Errorf("bench: temp dir: %w", err)
	}
	defer os.RemoveAll(dir)

	b := &bench{cfg: cfg, dir: dir, out: stdout, prof: prof,
		logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	return b.run(ctx)
}

// bench is one run of `scrollback bench`.
type bench struct {
	cfg    benchConfig
	dir    string
	out    io.Writer
	prof   *os.File
	logger *slog.Logger

	res benchResults
}

// benchResults holds every measurement for the summary.
type benchResults struct {
	pub1, pub16     rate
	live, catchUp   rate
	livePublish     rate
	natsSvc, natsFl loadPair
	httpSvc, httpFl loadPair
	echo            loadPair
}

// rate is a count of things done in a time.
type rate struct {
	N       int
	Elapsed time.Duration
}

// PerSec is N per second.
func (r rate) PerSec() float64 { return float64(r.N) / r.Elapsed.Seconds() }

// loadPair is a latency phase (one client) and a throughput phase
// (--clients clients) against one target.
type loadPair struct{ Lat, Thr loadResult }

func (b *bench) printf(format string, args ...any) { fmt.Fprintf(b.out, format, args...) }

func (b *bench) run(ctx context.Context) error {
	c := b.cfg
	b.printf("scrollback bench %s: %d events, limit %d, %d clients, %v read phases in %d rounds (+%v warm-up), %s %s/%s, %d CPUs, GOMAXPROCS %d\n",
		version, c.Events, c.Limit, c.Clients, c.Duration, c.Rounds, c.Warmup(), runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0))
	b.printf("temp dir %s (removed at the end); NATS in-process (nats.InProcessServer, no TCP); HTTP over loopback TCP\n", b.dir)

	if err := b.publishPhases(ctx); err != nil {
		return err
	}
	room := newBenchRoom("!bench:"+benchServerName, c.Events)
	m, err := b.ingestPhases(ctx, room)
	if m == nil {
		return err
	}
	closeM := sync.OnceValue(m.Close)
	defer closeM()
	if err != nil {
		return err
	}
	if err := b.readPhases(ctx, m, room); err != nil {
		return err
	}
	if err := closeM(); err != nil {
		return fmt.Errorf("bench: close service: %w", err)
	}
	b.summary()
	return nil
}

// openBenchService opens a scrollback on dataDir with the defaults of
// `scrollback serve` except: in-process NATS only, HTTP on a random
// loopback port, and the given static tokens.
func (b *bench) openBenchService(ctx context.Context, dataDir string, tokens ...TokenConfig) (*Main, error) {
	cfg := DefaultConfig()
	cfg.ServerName = benchServerName
	cfg.DataDir = dataDir
	cfg.NATS.Listen = ""
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.Auth.Tokens = append(tokens, TokenConfig{Token: "bench-admin-" + rand.Text(), UserID: "@admin:" + benchServerName, Admin: true})
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, withHeading("bench: service configuration", err)
	}
	m := &Main{Config: cfg, Logger: b.logger}
	if err := m.Open(ctx); err != nil {
		m.Close()
		return nil, fmt.Errorf("bench: open service: %w", err)
	}
	return m, nil
}

// ---- 1. publish ----

// publishPhases measures synchronous publishes to the room log of a
// throwaway service: c.Publish messages from one publisher, then c.Publish
// messages from benchPublishers publishers, each its own room (a room's
// messages come from one worker at a time in practice). The service's
// projector runs meanwhile, as in production.
func (b *bench) publishPhases(ctx context.Context) error {
	b.printf("\n== publish: synchronous JetStream publishes, SyncAlways (fsync on every write), own throwaway service ==\n")
	m, err := b.openBenchService(ctx, filepath.Join(b.dir, "publish"))
	if err != nil {
		return err
	}
	closeM := sync.OnceValue(m.Close)
	defer closeM()
	nc, err := bus.ConnectInProcess(m.NATSServer, "bench-publisher")
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("bench: jetstream: %w", err)
	}
	subjects := bus.Subjects{Prefix: m.Config.NATS.SubjectPrefix}

	one := newBenchRoom("!publish-1:"+benchServerName, b.cfg.Publish).Msgs(subjects)
	start := time.Now()
	for _, msg := range one {
		if err := publishSync(ctx, js, msg); err != nil {
			return err
		}
	}
	b.res.pub1 = rate{len(one), time.Since(start)}
	b.printf("publish, 1 publisher:   %d msgs in %v = %.0f msgs/s\n", b.res.pub1.N, round(b.res.pub1.Elapsed), b.res.pub1.PerSec())

	per := b.cfg.Publish / benchPublishers
	rooms := make([][]*nats.Msg, benchPublishers)
	for i := range rooms {
		rooms[i] = newBenchRoom(fmt.Sprintf("!publish-%d-%d:%s", benchPublishers, i, benchServerName), per).Msgs(subjects)
	}
	errs := make([]error, benchPublishers)
	var wg sync.WaitGroup
	start = time.Now()
	for i, msgs := range rooms {
		wg.Go(func() {
			for _, msg := range msgs {
				if errs[i] = publishSync(ctx, js, msg); errs[i] != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	b.res.pub16 = rate{per * benchPublishers, time.Since(start)}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	b.printf("publish, %d publishers: %d msgs in %v = %.0f msgs/s\n", benchPublishers, b.res.pub16.N, round(b.res.pub16.Elapsed), b.res.pub16.PerSec())
	nc.Close()
	if err := closeM(); err != nil {
		return fmt.Errorf("bench: close service: %w", err)
	}
	return nil
}

func publishSync(ctx context.Context, js jetstream.JetStream, msg *nats.Msg) error {
	pctx, cancel := context.WithTimeout(ctx, benchRequestTimeout)
	defer cancel()
	if _, err := js.PublishMsg(pctx, msg); err != nil {
		return fmt.Errorf("bench: publish to %s: %w", msg.Subject, err)
	}
	return nil
}

// ---- 2 and 3. ingest ----

// ingestPhases loads the benchmark room into a new service (live ingest),
// then rebuilds its projection from the log (catch-up), and returns the
// rebuilt service for the read phases.
func (b *bench) ingestPhases(ctx context.Context, room *benchRoom) (*Main, error) {
	b.printf("\n== ingest: the benchmark room, %d events, into the projection ==\n", room.Len())
	dataDir := filepath.Join(b.dir, "service")
	token := TokenConfig{Token: "bench-" + rand.Text(), UserID: room.Reader()}
	m, err := b.openBenchService(ctx, dataDir, token)
	if err != nil {
		return nil, err
	}
	last, err := b.liveIngest(ctx, m, room)
	if cerr := m.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("bench: close service: %w", cerr)
	}
	if err != nil {
		return nil, err
	}

	// Catch-up: the same log, an empty projection.
	if err := os.Remove(filepath.Join(dataDir, "scrollback.db")); err != nil {
		return nil, fmt.Errorf("bench: remove projection: %w", err)
	}
	start := time.Now()
	m, err = b.openBenchService(ctx, dataDir, token)
	if err != nil {
		return nil, err
	}
	opened := time.Since(start)
	if err := waitApplied(ctx, m, room.ID, last); err != nil {
		return m, err
	}
	b.res.catchUp = rate{int(last), time.Since(start)}
	b.printf("ingest, catch-up: %d log messages applied from a backlog in %v = %.0f events/s (clock from Open, which took %v; projection file deleted, log kept)\n",
		b.res.catchUp.N, round(b.res.catchUp.Elapsed), b.res.catchUp.PerSec(), round(opened))
	return m, nil
}

// liveIngest publishes the room asynchronously (at most publishWindow
// unacknowledged) from a connection of its own, like a homeserver worker,
// and waits until the projector has applied the last message. It returns
// the last sequence.
func (b *bench) liveIngest(ctx context.Context, m *Main, room *benchRoom) (uint64, error) {
	nc, err := bus.ConnectInProcess(m.NATSServer, "bench-publisher")
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(2*publishWindow), jetstream.WithPublishAsyncTimeout(30*time.Second))
	if err != nil {
		return 0, fmt.Errorf("bench: jetstream: %w", err)
	}
	msgs := room.Msgs(bus.Subjects{Prefix: m.Config.NATS.SubjectPrefix})

	start := time.Now()
	last, err := publishAsync(ctx, js, msgs, publishWindow)
	if err != nil {
		return 0, err
	}
	acked := time.Since(start)
	if err := waitApplied(ctx, m, room.ID, last); err != nil {
		return 0, err
	}
	b.res.live = rate{len(msgs), time.Since(start)}
	b.res.livePublish = rate{len(msgs), acked}
	if last != uint64(len(msgs)) {
		return 0, fmt.Errorf("bench: the log's last sequence is %d after publishing %d events to a new stream", last, len(msgs))
	}
	b.printf("ingest, live: %d events published async (window %d) and applied in %v = %.0f events/s (all acked after %v = %.0f msgs/s; applied %v after the last ack)\n",
		b.res.live.N, publishWindow, round(b.res.live.Elapsed), b.res.live.PerSec(), round(acked), b.res.livePublish.PerSec(), round(b.res.live.Elapsed-acked))
	return last, nil
}

// publishAsync publishes msgs in order with at most window awaiting their
// ack and returns the sequence of the last one.
func publishAsync(ctx context.Context, js jetstream.JetStream, msgs []*nats.Msg, window int) (uint64, error) {
	pending := make([]jetstream.PubAckFuture, 0, len(msgs))
	next := 0 // the oldest future not yet acknowledged
	var last uint64
	await := func() error {
		f := pending[next]
		next++
		select {
		case ack := <-f.Ok():
			last = max(last, ack.Sequence)
			return nil
		case err := <-f.Err():
			return fmt.Errorf("bench: publish to %s: %w", f.Msg().Subject, err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, msg := range msgs {
		if len(pending)-next >= window {
			if err := await(); err != nil {
				return 0, err
			}
		}
		f, err := js.PublishMsgAsync(msg)
		if err != nil {
			return 0, fmt.Errorf("bench: publish to %s: %w", msg.Subject, err)
		}
		pending = append(pending, f)
	}
	for next < len(pending) {
		if err := await(); err != nil {
			return 0, err
		}
	}
	return last, nil
}

// waitApplied waits until the service's projector has applied every log
// message up to seq.
func waitApplied(ctx context.Context, m *Main, roomID string, seq uint64) error {
	// The projector offers no "started" notification, and WaitFor may only
	// be called once Run has set it up (Started reports that): poll Started
	// for the few milliseconds that takes. The wait for seq itself is
	// notified, not polled.
	if !m.Projector.Started() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for !m.Projector.Started() {
			select {
			case <-tick.C:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	if err := m.Projector.WaitFor(ctx, roomID, seq); err != nil {
		return fmt.Errorf("bench: waiting for the projection to apply sequence %d: %w", seq, err)
	}
	if got := m.Projector.Applied(); got < seq {
		return fmt.Errorf("bench: projection applied %d, want %d", got, seq)
	}
	return nil
}

// ---- 4. reads ----

// readTarget is what the read phases ask for: the service's /messages
// from each start point, and the floor's scan of the same events.
type readTarget struct {
	tokens []string // "" is "no from": the newest page
	depths []int    // events older than each start point, floor positions
}

// readPhases measures /messages and its floors over NATS, then over HTTP
// (see compare), and takes the optional CPU profile.
func (b *bench) readPhases(ctx context.Context, m *Main, room *benchRoom) error {
	c := b.cfg
	subjects := bus.Subjects{Prefix: m.Config.NATS.SubjectPrefix}
	nc, err := bus.ConnectInProcess(m.NATSServer, "bench-client")
	if err != nil {
		return err
	}
	defer nc.Close()

	b.printf("\n== reads: /messages dir=b limit=%d from a random depth; latency from 1 closed-loop client, throughput from %d on one shared connection ==\n", c.Limit, c.Clients)
	t, err := collectTokens(ctx, nc, subjects, room, c.Limit)
	if err != nil {
		return err
	}
	b.printf("start points: %d (the newest page, then every %d events down to %d events from the bottom)\n", len(t.tokens), tokenPage, c.Limit)

	fl, err := openFloor(ctx, filepath.Join(b.dir, "floor.db"), m.NATSServer, room)
	if err != nil {
		return err
	}
	defer fl.Close()

	// The service's requests, encoded once.
	svcSubject := subjects.APIRoom(room.ID, "messages")
	svcReqs := make([][]byte, len(t.tokens))
	httpURLs := make([]string, len(t.tokens))
	floorReqs := make([][]byte, len(t.tokens))
	floorURLs := make([]string, len(t.tokens))
	base := "http://" + m.HTTPAddr + "/_matrix/client/v3/rooms/" + url.PathEscape(room.ID) + fmt.Sprintf("/messages?dir=b&limit=%d", c.Limit)
	for i, tok := range t.tokens {
		req := map[string]any{"user_id": room.Reader(), "dir": "b", "limit": c.Limit}
		u := base
		if tok != "" {
			req["from"] = tok
			u += "&from=" + url.QueryEscape(tok)
		}
		if svcReqs[i], err = bus.Encode(req); err != nil {
			return err
		}
		httpURLs[i] = u
		floorReqs[i] = floorRequest(t.depths[i], c.Limit)
		floorURLs[i] = fl.URL(t.depths[i], c.Limit)
	}
	hc := newBenchHTTPClient(c.Clients)
	defer hc.CloseIdleConnections()
	bearer := "Bearer " + m.Config.Auth.Tokens[0].Token // the reader's (ingestPhases)

	// NATS: the bare echo (of the service's request payloads), the floor's
	// scan and the service, in turns; then HTTP: the floor's scan and the
	// service, in turns.
	nats3, err := b.compare(ctx,
		namedTarget{"floor nats echo", natsTarget(nc, floorEchoSubject, svcReqs)},
		namedTarget{"floor nats scan", natsTarget(nc, floorScanSubject, floorReqs)},
		namedTarget{"scrollback nats /messages", natsTarget(nc, svcSubject, svcReqs)})
	if err != nil {
		return err
	}
	b.res.echo, b.res.natsFl, b.res.natsSvc = nats3[0], nats3[1], nats3[2]
	http2, err := b.compare(ctx,
		namedTarget{"floor http scan", httpTarget(hc, floorURLs, bearer)},
		namedTarget{"scrollback http /messages", httpTarget(hc, httpURLs, bearer)})
	if err != nil {
		return err
	}
	b.res.httpFl, b.res.httpSvc = http2[0], http2[1]

	if b.prof != nil {
		// An extra run, not counted, so that the profiler's overhead
		// touches none of the numbers above.
		if err := pprof.StartCPUProfile(b.prof); err != nil {
			return fmt.Errorf("bench: cpu profile: %w", err)
		}
		r, err := runLoad(ctx, c.Clients, c.Duration, natsTarget(nc, svcSubject, svcReqs))
		pprof.StopCPUProfile()
		if err != nil {
			return fmt.Errorf("bench: profiled run: %w", err)
		}
		b.printf("cpu profile: an extra %v run of scrollback nats /messages with %d clients (%.0f req/s under the profiler, not counted; the bench clients are in the profile too): %s\n",
			round(r.Elapsed), c.Clients, r.PerSec(), c.CPUProfile)
	}
	return nil
}

// collectTokens pages once through the room, newest first, limit
// tokenPage, and keeps every start point with at least limit events below
// it, so that every measured read returns a full page. It checks that the
// service returns the whole room.
func collectTokens(ctx context.Context, nc *nats.Conn, subjects bus.Subjects, room *benchRoom, limit int) (readTarget, error) {
	req := &bus.Requester{NC: nc, Timeout: 30 * time.Second}
	subject := subjects.APIRoom(room.ID, "messages")
	t := readTarget{tokens: []string{""}, depths: []int{room.Len()}}
	seen := 0
	from := ""
	for {
		q := map[string]any{"user_id": room.Reader(), "dir": "b", "limit": tokenPage}
		if from != "" {
			q["from"] = from
		}
		data, err := req.Request(ctx, subject, q)
		if err != nil {
			return t, fmt.Errorf("bench: collect tokens: %w", err)
		}
		page, err := bus.DecodeMap(data, bus.DefaultLimits)
		if err != nil {
			return t, fmt.Errorf("bench: collect tokens: %w", err)
		}
		chunk, _ := page["chunk"].([]any)
		seen += len(chunk)
		end, ok := page["end"].(string)
		if !ok || len(chunk) == 0 {
			break
		}
		if left := room.Len() - seen; left >= limit {
			t.tokens = append(t.tokens, end)
			t.depths = append(t.depths, left)
		}
		from = end
	}
	if seen != room.Len() {
		return t, fmt.Errorf("bench: paging through the room returned %d events, want %d", seen, room.Len())
	}
	return t, nil
}

// target is one thing the read phases send requests to: do sends the
// request for start point i and returns the size of the reply.
type target struct {
	n  int
	do func(ctx context.Context, i int) (int, error)
}

// natsTarget sends reqs[i] to subject over nc and fails on a service error
// reply (CONTRACT.md section 4).
func natsTarget(nc *nats.Conn, subject string, reqs [][]byte) target {
	return target{n: len(reqs), do: func(ctx context.Context, i int) (int, error) {
		msg, err := nc.RequestMsg(&nats.Msg{Subject: subject, Data: reqs[i]}, benchRequestTimeout)
		if err != nil {
			return 0, fmt.Errorf("request %s: %w", subject, err)
		}
		if code := msg.Header.Get("Nats-Service-Error-Code"); code != "" {
			return 0, fmt.Errorf("request %s: error %s: %s", subject, code, msg.Header.Get("Nats-Service-Error"))
		}
		return len(msg.Data), nil
	}}
}

// httpTarget GETs urls[i] with an Authorization header and reads the
// whole body; anything but 200 fails.
func httpTarget(hc *http.Client, urls []string, authorization string) target {
	return target{n: len(urls), do: func(ctx context.Context, i int) (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, urls[i], nil)
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", authorization)
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil {
			return 0, err
		}
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("GET %s: status %d", urls[i], resp.StatusCode)
		}
		return int(n), nil
	}}
}

// newBenchHTTPClient keeps enough idle connections for every client (no
// proxy, no compression, as a client next to the service would).
func newBenchHTTPClient(clients int) *http.Client {
	return &http.Client{
		Timeout: benchRequestTimeout,
		Transport: &http.Transport{
			MaxIdleConns:        2 * clients,
			MaxIdleConnsPerHost: 2 * clients,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
	}
}

// namedTarget is a target with the name it is reported under.
type namedTarget struct {
	name string
	t    target
}

// compare measures the targets in turns so that each sees the same noise
// of a shared machine: first the latency phase (one client), then the
// throughput phase (--clients clients). Each phase is cut into --rounds
// rounds; in each round every target runs for duration/rounds, one after
// the other. Each target is warmed up before each phase. It prints each
// target's phases and returns them in the order of ts.
func (b *bench) compare(ctx context.Context, ts ...namedTarget) ([]loadPair, error) {
	c := b.cfg
	out := make([]loadPair, len(ts))
	slice := c.Duration / time.Duration(c.Rounds)
	for _, clients := range []int{1, c.Clients} {
		res := make([]loadResult, len(ts))
		for _, t := range ts {
			if _, err := runLoad(ctx, clients, c.Warmup(), t.t); err != nil {
				return nil, fmt.Errorf("bench: %s, warm-up: %w", t.name, err)
			}
		}
		for range c.Rounds {
			for i, t := range ts {
				r, err := runLoad(ctx, clients, slice, t.t)
				if err != nil {
					return nil, fmt.Errorf("bench: %s: %w", t.name, err)
				}
				res[i].add(r)
			}
		}
		for i, t := range ts {
			r := res[i]
			r.finish()
			if clients == 1 {
				out[i].Lat = r
			} else {
				out[i].Thr = r
			}
			b.printf("%-26s %2d client(s): %7d req in %v = %6.0f req/s; p50 %s p90 %s p99 %s max %s; reply %s\n",
				t.name, r.Clients, r.Requests, round(r.Elapsed), r.PerSec(),
				fmtLat(r.Pct(50)), fmtLat(r.Pct(90)), fmtLat(r.Pct(99)), fmtLat(r.Max()), fmtBytes(r.Bytes/max(r.Requests, 1)))
		}
	}
	return out, nil
}

// loadResult is one closed-loop phase.
type loadResult struct {
	Clients  int
	Requests int
	Bytes    int // of all replies
	Elapsed  time.Duration
	lat      []time.Duration // sorted
}

// PerSec is completed requests per second.
func (r loadResult) PerSec() float64 { return float64(r.Requests) / r.Elapsed.Seconds() }

// add merges r2 (another round of the same phase) into r; finish sorts
// the latencies afterwards.
func (r *loadResult) add(r2 loadResult) {
	r.Clients = r2.Clients
	r.Requests += r2.Requests
	r.Bytes += r2.Bytes
	r.Elapsed += r2.Elapsed
	r.lat = append(r.lat, r2.lat...)
}

func (r *loadResult) finish() { slices.Sort(r.lat) }

// Pct is the p-th percentile latency (nearest rank).
func (r loadResult) Pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	i := int(float64(len(r.lat))*p/100+0.999999) - 1
	return r.lat[min(max(i, 0), len(r.lat)-1)]
}

// Max is the slowest request.
func (r loadResult) Max() time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[len(r.lat)-1]
}

// runLoad runs clients closed-loop clients against t for d: each sends a
// request to a random start point, waits for the reply, and sends the next.
// Requests under way when d ends complete and count; the first error stops
// the phase.
func runLoad(ctx context.Context, clients int, d time.Duration, t target) (loadResult, error) {
	var stop atomic.Bool
	timer := time.AfterFunc(d, func() { stop.Store(true) })
	defer timer.Stop()
	lats := make([][]time.Duration, clients)
	sizes := make([]int, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range clients {
		wg.Go(func() {
			lat := make([]time.Duration, 0, 4096)
			for !stop.Load() {
				if err := ctx.Err(); err != nil {
					errs[w] = err
					break
				}
				t0 := time.Now()
				n, err := t.do(ctx, mrand.IntN(t.n))
				if err != nil {
					errs[w] = err
					stop.Store(true)
					break
				}
				lat = append(lat, time.Since(t0))
				sizes[w] += n
			}
			lats[w] = lat
		})
	}
	wg.Wait()
	r := loadResult{Clients: clients, Elapsed: time.Since(start)}
	if err := errors.Join(errs...); err != nil {
		return r, err
	}
	for w := range clients {
		r.lat = append(r.lat, lats[w]...)
		r.Bytes += sizes[w]
	}
	r.Requests = len(r.lat)
	slices.Sort(r.lat)
	if r.Requests == 0 {
		return r, errors.New("no request completed")
	}
	return r, nil
}

// ---- the benchmark room ----

// benchRoom is a room as a homeserver worker publishes it: create, the
// creator's join, power levels, join rules, history visibility and the
// other members' joins, then text messages from the members in turn; each
// event one deeper than the last, with the last as its parent. The events
// are MessagePack maps of the contract's fields (CONTRACT.md section 3),
// shaped like testenv.Room's.
type benchRoom struct {
	ID      string
	members []string
	ids     []string
	raw     [][]byte // encoded events, in log order
}

// newBenchRoom builds a room of n events (at least its set-up).
func newBenchRoom(roomID string, n int) *benchRoom {
	local := strings.TrimPrefix(roomID[:strings.IndexByte(roomID, ':')], "!")
	r := &benchRoom{ID: roomID}
	for i := range benchMembers {
		r.members = append(r.members, fmt.Sprintf("@user%d:%s", i, benchServerName))
	}
	creator := r.members[0]
	state := func(typ, sender, key string, content map[string]any) map[string]any {
		return map[string]any{"type": typ, "sender": sender, "state_key": key, "content": content}
	}
	evs := []map[string]any{
		state("m.room.create", creator, "", map[string]any{"creator": creator, "room_version": "10"}),
		state("m.room.member", creator, creator, map[string]any{"membership": "join"}),
		state("m.room.power_levels", creator, "", map[string]any{"users": map[string]any{creator: int64(100)}}),
		state("m.room.join_rules", creator, "", map[string]any{"join_rule": "public"}),
		state("m.room.history_visibility", creator, "", map[string]any{"history_visibility": "shared"}),
	}
	for _, u := range r.members[1:] {
		evs = append(evs, state("m.room.member", u, u, map[string]any{"membership": "join"}))
	}
	const text = "The quick brown fox jumps over the lazy dog while the projector applies the room log in order. "
	for i := len(evs); i < n; i++ {
		body := fmt.Sprintf("message %d: %s", i, text[:20+(i*37)%(len(text)-20)])
		evs = append(evs, map[string]any{"type": "m.room.message", "sender": r.members[i%benchMembers],
			"content": map[string]any{"msgtype": "m.text", "body": body}})
	}
	prev := []string{}
	for i, ev := range evs {
		id := fmt.Sprintf("$%s.%d", local, i+1)
		ev["event_id"] = id
		ev["room_id"] = roomID
		ev["origin_server_ts"] = int64(1_700_000_000_000 + i)
		ev["depth"] = int64(i + 1)
		ev["prev_events"] = prev
		ev["hashes"] = map[string]any{"sha256": "aGFzaA"}
		ev["signatures"] = map[string]any{benchServerName: map[string]any{"ed25519:a": "c2ln"}}
		data, err := bus.Encode(ev)
		if err != nil {
			panic(fmt.Sprintf("bench: encode event: %v", err)) // plain maps of strings and ints always encode
		}
		r.ids = append(r.ids, id)
		r.raw = append(r.raw, data)
		prev = []string{id}
	}
	return r
}

// Len is the number of events.
func (r *benchRoom) Len() int { return len(r.raw) }

// Reader is the joined member who reads the room.
func (r *benchRoom) Reader() string { return r.members[1] }

// Msgs returns the events as log messages with their Nats-Msg-Id.
func (r *benchRoom) Msgs(subjects bus.Subjects) []*nats.Msg {
	subject := subjects.Room(r.ID, "event")
	msgs := make([]*nats.Msg, len(r.raw))
	for i, data := range r.raw {
		msgs[i] = &nats.Msg{Subject: subject, Data: data, Header: nats.Header{jetstream.MsgIDHeader: []string{r.ids[i]}}}
	}
	return msgs
}

// ---- the summary ----

func (b *bench) summary() {
	r := &b.res
	b.printf("\n== summary (as measured; ratio = scrollback / floor) ==\n")
	tw := tabwriter.NewWriter(b.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "metric\tscrollback\tfloor\tratio\tgoal\tresult")
	row := func(metric, svc, floor, ratio, goal, result string) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", metric, svc, floor, ratio, goal, result)
	}
	verdict := func(ok bool) string {
		if ok {
			return "PASS"
		}
		return "MISS"
	}
	row("publish sync, 1 publisher (msgs/s)", fmtRate(r.pub1.PerSec()), "-", "-", "report", "-")
	row(fmt.Sprintf("publish sync, %d publishers (msgs/s)", benchPublishers), fmtRate(r.pub16.PerSec()), "-", "-", "report", "-")
	row("ingest live, async publish to applied (events/s)", fmtRate(r.live.PerSec()), "-", "-", "report", "-")
	row("ingest catch-up, backlog to applied (events/s)", fmtRate(r.catchUp.PerSec()), "-", "-",
		fmt.Sprintf(">= %s", fmtRate(goalApplyPerSec)), verdict(r.catchUp.PerSec() >= goalApplyPerSec))
	latRows := func(label string, svc, fl loadPair, p99Goal bool, thrGoal bool) {
		for _, p := range []float64{50, 99} {
			ratio := float64(svc.Lat.Pct(p)) / float64(fl.Lat.Pct(p))
			goal, result := "-", "-"
			if p == 99 && p99Goal {
				goal, result = fmt.Sprintf("<= %.0fx", goalP99Ratio), verdict(ratio <= goalP99Ratio)
			}
			row(fmt.Sprintf("%s p%.0f, 1 client", label, p), fmtLat(svc.Lat.Pct(p)), fmtLat(fl.Lat.Pct(p)), fmt.Sprintf("%.2fx", ratio), goal, result)
		}
		ratio := svc.Thr.PerSec() / fl.Thr.PerSec()
		goal, result := "-", "-"
		if thrGoal {
			goal, result = fmt.Sprintf(">= %.1fx", goalThroughputRatio), verdict(ratio >= goalThroughputRatio)
		}
		row(fmt.Sprintf("%s throughput, %d clients (req/s)", label, svc.Thr.Clients), fmtRate(svc.Thr.PerSec()), fmtRate(fl.Thr.PerSec()), fmt.Sprintf("%.2fx", ratio), goal, result)
	}
	latRows("NATS /messages", r.natsSvc, r.natsFl, true, true)
	latRows("HTTP /messages", r.httpSvc, r.httpFl, false, false)
	row("NATS echo p50, 1 client", "-", fmtLat(r.echo.Lat.Pct(50)), "-", "-", "-")
	row("NATS echo p99, 1 client", "-", fmtLat(r.echo.Lat.Pct(99)), "-", "-", "-")
	row(fmt.Sprintf("NATS echo throughput, %d clients (req/s)", r.echo.Thr.Clients), "-", fmtRate(r.echo.Thr.PerSec()), "-", "-", "-")
	tw.Flush()
	b.printf("floors: NATS = bbolt reverse scan of %d raw events behind a micro endpoint with the service's worker pool (bus.Serve), in-process connection; HTTP = the same scan behind net/http over loopback\n", b.cfg.Limit)
}

// ---- formatting ----

func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

func fmtLat(d time.Duration) string {
	if d < time.Millisecond {
		return fmt.Sprintf("%dµs", d.Microseconds())
	}
	return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
}

func fmtRate(perSec float64) string { return fmt.Sprintf("%.0f", perSec) }

func fmtBytes(n int) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f KiB", float64(n)/1024)
}
