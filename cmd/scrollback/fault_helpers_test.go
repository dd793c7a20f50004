package main

// Shared machinery of the fault-injection tests (crash_test.go,
// fault_*_test.go): the service binary built once per test run, a running
// `scrollback serve` process that can be killed with SIGKILL and started
// again on the same config, a restartable external nats-server, reads of a
// whole room, the room log as it is stored, and the soak loop.
//
// Soak mode: with SCROLLBACK_SOAK set to a Go duration (for example 10m)
// each fault test loops over its crash points with random kill timings for
// that long (each test gets the whole duration, two tests run at once on
// two cores; choose them with -run), and the service binary is built with
// -race, its output checked for data races at each verify. Without it
// every test runs one short pass (the CI pass).
//
//	SCROLLBACK_SOAK=10m go test -race -timeout 60m -run 'Fault|Crash' ./cmd/scrollback/

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/testenv"
)

// faultSubjects are the subjects of every fault test's service (the
// default prefix).
var faultSubjects = bus.Subjects{Prefix: "sb"}

const faultStream = "SCROLLBACK"

// TestMain removes the shared build of the service binary after the run.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

// buildBinary builds cmd/scrollback once per test run (with -race in soak
// mode) and returns its path.
func buildBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "scrollback-bin-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "scrollback")
		args := []string{"build", "-o", binPath}
		if os.Getenv("SCROLLBACK_SOAK") != "" {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// freePort reserves a free loopback address; the process that binds it
// next could lose it to another one, which then fails loudly.
func freePort(t testing.TB) string {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		// The port is free until someone binds it: the service does a
		// moment later, and meanwhile the kernel may hand it out again,
		// to another of this package's parallel tests (CI saw a
		// service's HTTP port taken by another service's NATS). So a
		// port goes to one caller per test process.
		if !portsGiven[addr] {
			portsGiven[addr] = true
			return addr
		}
	}
}

var (
	portsMu    sync.Mutex
	portsGiven = map[string]bool{}
)

// soakBudget is SCROLLBACK_SOAK as a duration, 0 when unset (one short
// pass).
func soakBudget(t testing.TB) time.Duration {
	v := os.Getenv("SCROLLBACK_SOAK")
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("SCROLLBACK_SOAK=%q: want a positive Go duration such as 10m", v)
	}
	return d
}

// slowWait is d in the CI pass and ten times d in soak mode, whose rooms
// are bigger and whose service binary runs under the race detector.
func slowWait(t testing.TB, d time.Duration) time.Duration {
	if soakBudget(t) > 0 {
		return 10 * d
	}
	return d
}

// faultCounts are what a fault test checked, for its closing log line.
type faultCounts struct {
	rounds int
	points map[string]int // crash point -> kills
	hits   map[string]int // crash point -> kills that happened in the phase they aimed at
	events int            // events read back and compared
	tasks  int            // tasks checked for exactly one completion
}

func (c *faultCounts) killed(point string, inPhase bool) {
	if c.points == nil {
		c.points, c.hits = map[string]int{}, map[string]int{}
	}
	c.points[point]++
	if inPhase {
		c.hits[point]++
	}
}

func (c *faultCounts) log(t testing.TB, start time.Time) {
	t.Helper()
	total := 0
	var b strings.Builder
	for _, p := range slices.Sorted(maps.Keys(c.points)) {
		total += c.points[p]
		fmt.Fprintf(&b, " %s=%d/%d", p, c.hits[p], c.points[p])
	}
	t.Logf("fault counts: %d rounds in %s, %d kills (point=in-phase/tried:%s), %d events and %d tasks checked",
		c.rounds, time.Since(start).Round(time.Millisecond), total, b.String(), c.events, c.tasks)
}

// rounds runs round once (CI), or again and again with fresh random
// timings until the soak budget is spent. Each round gets its own seeded
// generator; the seed is logged, and SCROLLBACK_FAULT_SEED sets it to
// choose the same crash points again (the timing of a crash still
// varies).
func rounds(t *testing.T, c *faultCounts, round func(n int, rng *rand.Rand)) {
	t.Helper()
	start := time.Now()
	budget := soakBudget(t)
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("SCROLLBACK_FAULT_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("SCROLLBACK_FAULT_SEED=%q: %v", v, err)
		}
	}
	t.Logf("fault seed %d (soak %v)", seed, budget)
	for n := 0; ; n++ {
		round(n, rand.New(rand.NewPCG(seed, uint64(n))))
		c.rounds++
		if t.Failed() || time.Since(start) >= budget {
			break
		}
	}
	c.log(t, start)
}

// serveProcess runs `scrollback serve -c cfg` and waits for /health; the
// caller owns the process. startService does the same with the config,
// restarts and cleanup taken care of.
func serveProcess(t testing.TB, bin, cfg, httpAddr string, log io.Writer) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, "serve", "-c", cfg)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() }) // if still running
	testenv.WaitFor(t, 30*time.Second, "/health", func() bool {
		resp, err := http.Get("http://" + httpAddr + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return cmd
}

// service is `scrollback serve -c cfg` as its own process.
type service struct {
	t        testing.TB
	bin      string
	cfg      string
	natsAddr string // embedded listener ("" with an external NATS)
	natsURL  string // where clients connect
	httpAddr string
	out      *testenv.Buffer
	proc     *exec.Cmd
	starts   int

	mu   sync.Mutex
	dead []string // dead-letter announcements (sb.deadletter.>)
}

// serviceConfig is what differs between the fault tests' configs.
type serviceConfig struct {
	natsURL string // external NATS; "" = embedded, listening on loopback
	extra   string // more top-level YAML (homeserver:, backfill:, ...)
}

// startService writes a config under a new temp dir and starts the
// service on it.
func startService(t testing.TB, sc serviceConfig) *service {
	t.Helper()
	s := &service{t: t, bin: buildBinary(t), out: &testenv.Buffer{}, httpAddr: freePort(t)}
	dir := t.TempDir()
	s.cfg = filepath.Join(dir, "scrollback.yaml")
	natsYAML := ""
	if sc.natsURL == "" {
		s.natsAddr = freePort(t)
		s.natsURL = "nats://" + s.natsAddr
		natsYAML = fmt.Sprintf("nats: {listen: %q}\n", s.natsAddr)
	} else {
		s.natsURL = sc.natsURL
		natsYAML = fmt.Sprintf("nats: {url: %q}\n", sc.natsURL)
	}
	cfg := fmt.Sprintf("server_name: test\ndata_dir: %s\n%shttp: {listen: %q}\nauth: {tokens: [{token: t-admin, user_id: \"@admin:test\", admin: true}]}\n%s",
		filepath.Join(dir, "data"), natsYAML, s.httpAddr, sc.extra)
	if err := os.WriteFile(s.cfg, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if s.proc != nil {
			s.proc.Process.Kill()
			s.proc.Wait()
		}
		if t.Failed() {
			out := s.out.String()
			t.Logf("service output (last 20000 bytes):\n%s", out[max(0, len(out)-20000):])
		}
	})
	s.start()
	// No scenario here publishes anything malformed: a dead letter means
	// that a crash made the service reject its own messages (a TaskUpdate
	// for a finished task, a command applied twice).
	nc, _ := s.connect()
	sub, err := nc.Subscribe(faultSubjects.DeadLetter(">"), func(m *nats.Msg) {
		s.mu.Lock()
		defer s.mu.Unlock()
		d, _ := bus.DecodeMap(m.Data, bus.DefaultLimits)
		s.dead = append(s.dead, fmt.Sprintf("%s %v", m.Subject, d))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return s
}

// start runs the service and waits for /health.
func (s *service) start() {
	s.t.Helper()
	fmt.Fprintf(s.out, "=== start %d\n", s.starts)
	s.starts++
	s.proc = serveProcess(s.t, s.bin, s.cfg, s.httpAddr, s.out)
}

// kill9 kills the service with SIGKILL and waits for it.
func (s *service) kill9() {
	s.t.Helper()
	s.proc.Process.Kill()
	s.proc.Wait()
	s.proc = nil
	fmt.Fprintf(s.out, "=== killed with SIGKILL\n")
}

// restart is kill9 then start: a crash and the supervisor bringing it
// back.
func (s *service) restart() {
	s.t.Helper()
	s.kill9()
	s.start()
}

// stop sends SIGTERM and fails the test unless the service exits 0.
func (s *service) stop() {
	s.t.Helper()
	s.proc.Process.Signal(syscall.SIGTERM)
	err := s.proc.Wait()
	s.proc = nil
	if err != nil {
		s.t.Fatalf("SIGTERM: the service did not stop cleanly: %v", err)
	}
}

// verify stops the service cleanly, runs `scrollback verify` (which fails
// on any difference between the projection and a rebuild from the log),
// checks the output for data races (soak builds), and starts the service
// again if again is set.
func (s *service) verify(again bool) {
	s.t.Helper()
	s.stop()
	out, err := exec.Command(s.bin, "verify", "-c", s.cfg).CombinedOutput()
	if err != nil {
		s.t.Fatalf("scrollback verify: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte(", 0 differences")) {
		s.t.Fatalf("scrollback verify says:\n%s", out)
	}
	s.t.Logf("%s", bytes.TrimSpace(out))
	if log := s.out.String(); strings.Contains(log, "WARNING: DATA RACE") {
		s.t.Fatalf("the service reported a data race")
	}
	s.noDeadLetters("at the end of the round")
	if again {
		s.start()
	}
}

// noDeadLetters fails the test if the service announced a dead letter.
func (s *service) noDeadLetters(when string) {
	s.t.Helper()
	s.mu.Lock()
	dead := s.dead
	s.mu.Unlock()
	if len(dead) > 0 {
		s.t.Fatalf("%s: the service announced %d dead letters, want none: %q", when, len(dead), dead[:min(len(dead), 5)])
	}
}

// connect connects a worker-like client to the service's NATS (the
// embedded listener or the external server); it reconnects across
// restarts without limit.
func (s *service) connect() (*nats.Conn, jetstream.JetStream) {
	s.t.Helper()
	return connectNATS(s.t, s.natsURL)
}

func connectNATS(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(25*time.Millisecond),
		nats.RetryOnFailedConnect(true),
		// Broken pipes while the server dies are the point here.
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// externalNATS is a nats-server in the test process with a fixed port and
// store dir, so that it can be shut down and started again as the same
// server.
type externalNATS struct {
	t     testing.TB
	addr  string
	store string
	srv   *server.Server
}

func startExternalNATS(t testing.TB) *externalNATS {
	t.Helper()
	e := &externalNATS{t: t, addr: freePort(t), store: t.TempDir()}
	e.start()
	t.Cleanup(func() {
		if e.srv != nil {
			e.srv.Shutdown()
			e.srv.WaitForShutdown()
		}
	})
	return e
}

func (e *externalNATS) url() string { return "nats://" + e.addr }

func (e *externalNATS) start() {
	e.t.Helper()
	var err error
	// The port was free a moment ago; a restart may race the old
	// listener's close, so retry briefly.
	testenv.WaitFor(e.t, 10*time.Second, "nats-server to start on "+e.addr, func() bool {
		e.srv, err = bus.StartEmbedded(bus.EmbeddedOptions{Listen: e.addr, StoreDir: e.store})
		return err == nil
	})
}

func (e *externalNATS) shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
	e.srv = nil
}

// api asks the service (request-reply) and decodes the reply; error
// replies come back as *commands.Error.
func api(ctx context.Context, nc *nats.Conn, subject string, req map[string]any) (map[string]any, error) {
	r := &bus.Requester{NC: nc, Timeout: 15 * time.Second}
	data, err := r.Request(ctx, subject, req)
	if err != nil {
		return nil, err
	}
	return bus.DecodeMap(data, bus.DefaultLimits)
}

// readRoom reads a whole room as an admin, oldest first (dir=f pages of
// 1000), after waiting until the log is applied up to waitFor. Each read
// is retried while the service restarts.
func readRoom(t testing.TB, nc *nats.Conn, roomID string, waitFor uint64) []string {
	t.Helper()
	var got []string
	from := ""
	for range 10_000 {
		req := map[string]any{"admin": true, "dir": "f", "limit": 1000}
		if waitFor > 0 {
			req["wait_for"] = waitFor
		}
		if from != "" {
			req["from"] = from
		}
		var p map[string]any
		testenv.WaitFor(t, 30*time.Second, "a page of "+roomID, func() bool {
			var err error
			p, err = api(context.Background(), nc, faultSubjects.APIRoom(roomID, "messages"), req)
			var ce *commands.Error
			if errors.As(err, &ce) && ce.Status != 504 {
				t.Fatalf("read %s: %v", roomID, err)
			}
			return err == nil
		})
		got = append(got, chunkIDs(p)...)
		end, ok := p["end"].(string)
		if !ok {
			return got
		}
		from = end
	}
	t.Fatalf("read %s: no end after 10000 pages", roomID)
	return nil
}

// readPage reads one event of a room after waiting until the room's
// messages up to seq are applied.
func readPage(t testing.TB, nc *nats.Conn, roomID string, seq uint64) {
	t.Helper()
	if _, err := api(context.Background(), nc, faultSubjects.APIRoom(roomID, "messages"), map[string]any{"admin": true, "limit": 1, "wait_for": seq}); err != nil {
		t.Fatalf("read %s: %v", roomID, err)
	}
}

// pageBack reads a room backwards from its end to its start, 100 events
// a page, as a client scrolling up does; short pages and gaps make the
// service backfill.
func pageBack(nc *nats.Conn, roomID string) error {
	from := ""
	for {
		req := map[string]any{"admin": true, "dir": "b", "limit": 100}
		if from != "" {
			req["from"] = from
		}
		p, err := api(context.Background(), nc, faultSubjects.APIRoom(roomID, "messages"), req)
		if err != nil {
			return err
		}
		end, ok := p["end"].(string)
		if !ok {
			return nil
		}
		from = end
	}
}

// wantRoom fails the test unless the room reads exactly want, each once
// and in order; it returns how many events it compared.
func wantRoom(t testing.TB, nc *nats.Conn, roomID string, waitFor uint64, want []string, when string) int {
	t.Helper()
	got := readRoom(t, nc, roomID, waitFor)
	if same(got, want) {
		return len(got)
	}
	wantSet := map[string]bool{}
	for _, id := range want {
		wantSet[id] = true
	}
	seen := map[string]int{}
	var extra, dup []string
	for _, id := range got {
		seen[id]++
		if !wantSet[id] {
			extra = append(extra, id)
		} else if seen[id] == 2 {
			dup = append(dup, id)
		}
	}
	var missing []string
	for _, id := range want {
		if seen[id] == 0 {
			missing = append(missing, id)
		}
	}
	trim := func(l []string) []string { return l[:min(len(l), 10)] }
	t.Fatalf("%s: room %s reads %d events, want %d each once in order; unexpected (purged?) %d %v, twice %d %v, missing %d %v",
		when, roomID, len(got), len(want), len(extra), trim(extra), len(dup), trim(dup), len(missing), trim(missing))
	return 0
}

// publishOne appends one message like a homeserver worker does: with a
// message ID, retrying until it is acknowledged (across restarts of the
// service or of NATS). It returns the sequence.
func publishOne(t testing.TB, js jetstream.JetStream, subject, msgID string, data []byte) uint64 {
	t.Helper()
	var seq uint64
	testenv.WaitFor(t, 30*time.Second, "an ack for "+msgID, func() bool {
		var err error
		seq, err = tryPublish(js, subject, msgID, data)
		return err == nil
	})
	return seq
}

func tryPublish(js jetstream.JetStream, subject, msgID string, data []byte) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, msgID)
	ack, err := js.PublishMsg(ctx, msg)
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

func encodeEvent(t testing.TB, ev testenv.Event) []byte {
	t.Helper()
	data, err := bus.Encode(map[string]any(ev))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// publishBatches appends events in atomic batches of up to 1000 (ADR-50;
// without Nats-Msg-Id, as batch publishers do), which costs about one
// fsync a batch instead of one a message, and returns their sequences.
// It sets up the tests' rooms quickly; the service must be running.
func publishBatches(t testing.TB, nc *nats.Conn, evs []testenv.Event) []uint64 {
	t.Helper()
	seqs, err := tryPublishBatches(nc, evs, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return seqs
}

// tryPublishBatches is publishBatches for any goroutine: it stops at the
// first error, returning the sequences of the batches committed so far.
func tryPublishBatches(nc *nats.Conn, evs []testenv.Event, timeout time.Duration) ([]uint64, error) {
	seqs := make([]uint64, 0, len(evs))
	for b := 0; b < len(evs); b += 1000 {
		batch := evs[b:min(b+1000, len(evs))]
		id := fmt.Sprintf("fault-%d-%d", time.Now().UnixNano(), b)
		for i, ev := range batch {
			data, err := bus.Encode(map[string]any(ev))
			if err != nil {
				return seqs, err
			}
			m := &nats.Msg{Subject: faultSubjects.Room(ev["room_id"].(string), commands.KindEvent), Data: data, Header: nats.Header{}}
			m.Header.Set("Nats-Batch-Id", id)
			m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
			if i < len(batch)-1 {
				if err := nc.PublishMsg(m); err != nil {
					return seqs, err
				}
				continue
			}
			m.Header.Set("Nats-Batch-Commit", "1")
			resp, err := nc.RequestMsg(m, timeout)
			if err != nil {
				return seqs, fmt.Errorf("commit batch: %w", err)
			}
			var ack struct {
				Seq   uint64 `json:"seq"`
				Count int    `json:"count"`
				Error *struct {
					Description string `json:"description"`
				} `json:"error"`
			}
			if err := json.Unmarshal(resp.Data, &ack); err != nil || ack.Error != nil || ack.Count != len(batch) {
				return seqs, fmt.Errorf("commit batch: %s", resp.Data)
			}
			for j := range batch {
				seqs = append(seqs, ack.Seq-uint64(len(batch)-1-j))
			}
		}
	}
	return seqs, nil
}

// publishCommand appends a command to its room's log (as a homeserver
// worker publishes purge_room) and returns its sequence.
func publishCommand(t testing.TB, js jetstream.JetStream, cmd map[string]any) uint64 {
	t.Helper()
	data, err := bus.Encode(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return publishOne(t, js, faultSubjects.Room(cmd["room_id"].(string), commands.KindCmd), cmd["id"].(string), data)
}

// livePublisher keeps publishing a room's next events, one at a time with
// retries, the way a homeserver keeps writing while scrollback crashes. It
// records every acknowledged event.
type livePublisher struct {
	stop  chan struct{}
	halt  sync.Once
	done  chan struct{}
	mu    sync.Mutex
	acked []string
	last  uint64
	err   error
}

// startLive publishes room messages from sender until finish (or the
// test's end).
func startLive(t testing.TB, js jetstream.JetStream, room *testenv.Room, sender string) *livePublisher {
	lp := &livePublisher{stop: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(func() {
		lp.halt.Do(func() { close(lp.stop) })
		<-lp.done
	})
	go func() {
		defer close(lp.done)
		for i := 0; ; i++ {
			ev := room.Msg(sender, fmt.Sprint("live ", i))
			data, err := bus.Encode(map[string]any(ev))
			if err != nil {
				lp.fail(err)
				return
			}
			deadline := time.Now().Add(30 * time.Second)
			for {
				seq, err := tryPublish(js, faultSubjects.Room(room.ID, commands.KindEvent), ev.ID(), data)
				if err == nil {
					lp.mu.Lock()
					lp.acked = append(lp.acked, ev.ID())
					lp.last = max(lp.last, seq)
					lp.mu.Unlock()
					break
				}
				if time.Now().After(deadline) {
					lp.fail(fmt.Errorf("no ack for %s in 30 s: %w", ev.ID(), err))
					return
				}
				// An event is never abandoned: one without an ack may be
				// in the log already, and only an ack settles it.
				<-time.After(20 * time.Millisecond)
			}
			select {
			case <-lp.stop:
				return
			default:
			}
		}
	}()
	return lp
}

func (lp *livePublisher) fail(err error) {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	lp.err = err
}

// count is how many events were acknowledged so far.
func (lp *livePublisher) count() int {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	return len(lp.acked)
}

// finish stops the publisher and returns the acknowledged events, in
// order, and the highest acknowledged sequence.
func (lp *livePublisher) finish(t testing.TB) ([]string, uint64) {
	t.Helper()
	lp.halt.Do(func() { close(lp.stop) })
	<-lp.done
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if lp.err != nil {
		t.Fatalf("live publisher: %v", lp.err)
	}
	return append([]string(nil), lp.acked...), lp.last
}

// subjectCount is how many messages the log holds on a subject now.
func subjectCount(ctx context.Context, js jetstream.JetStream, subject string) (uint64, error) {
	st, err := js.Stream(ctx, faultStream)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return 0, err
	}
	return info.State.Subjects[subject], nil
}

// mustSubjectCount is subjectCount, retried across restarts.
func mustSubjectCount(t testing.TB, js jetstream.JetStream, subject string) uint64 {
	t.Helper()
	var n uint64
	testenv.WaitFor(t, 30*time.Second, "the message count of "+subject, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var err error
		n, err = subjectCount(ctx, js, subject)
		return err == nil
	})
	return n
}

// logMsg is a message of the log, decoded.
type logMsg struct {
	seq uint64
	m   map[string]any
}

// logMessages decodes every message the log holds on subject, in order.
// A read that messages vanish from (an erasure under way) is read again.
func logMessages(t testing.TB, js jetstream.JetStream, subject string) []logMsg {
	t.Helper()
	var out []logMsg
	testenv.WaitFor(t, 30*time.Second, "a whole read of "+subject, func() bool {
		var ok bool
		out, ok = readSubject(t, js, subject)
		return ok
	})
	return out
}

// readSubject is one try of logMessages; ok is false if fewer messages
// came than the subject held when it started.
func readSubject(t testing.TB, js jetstream.JetStream, subject string) (out []logMsg, ok bool) {
	t.Helper()
	n := mustSubjectCount(t, js, subject)
	if n == 0 {
		return nil, true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, faultStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatalf("read %s: %v", subject, err)
	}
	for uint64(len(out)) < n {
		batch, err := cons.Fetch(int(n)-len(out), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatalf("read %s: %v", subject, err)
		}
		got := 0
		for msg := range batch.Messages() {
			got++
			m, err := bus.DecodeMap(msg.Data(), bus.DefaultLimits)
			if err != nil {
				t.Fatalf("%s: undecodable message: %v", subject, err)
			}
			md, err := msg.Metadata()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, logMsg{md.Sequence.Stream, m})
		}
		if batch.Error() != nil {
			t.Fatalf("read %s: %d of %d messages: %v", subject, len(out), n, batch.Error())
		}
		if got == 0 {
			if now := mustSubjectCount(t, js, subject); now < n {
				return nil, false // erased while read: read again
			}
			t.Fatalf("read %s: %d of %d messages, and none came", subject, len(out), n)
		}
	}
	return out, true
}

// taskEnds counts, on a room's task subject, the TaskUpdates that finish
// task id (complete, failed or cancelled), by status.
func taskEnds(t testing.TB, js jetstream.JetStream, roomID, id string) map[string]int {
	t.Helper()
	ends := map[string]int{}
	for _, u := range logMessages(t, js, faultSubjects.Room(roomID, commands.KindTask)) {
		if u.m["task_id"] != id {
			continue
		}
		switch s, _ := u.m["status"].(string); s {
		case commands.TaskComplete, commands.TaskFailed, commands.TaskCancelled:
			ends[s]++
		}
	}
	return ends
}

// commandsWithID lists the log sequences of the commands with id on a
// room's cmd subject.
func commandsWithID(t testing.TB, js jetstream.JetStream, roomID, id string) []uint64 {
	t.Helper()
	var seqs []uint64
	for _, c := range logMessages(t, js, faultSubjects.Room(roomID, commands.KindCmd)) {
		if c.m["id"] == id {
			seqs = append(seqs, c.seq)
		}
	}
	return seqs
}

// lastOn is the last message the log holds on subject.
func lastOn(js jetstream.JetStream, subject string) (logMsg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, faultStream)
	if err != nil {
		return logMsg{}, err
	}
	msg, err := st.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		return logMsg{}, err
	}
	m, err := bus.DecodeMap(msg.Data, bus.DefaultLimits)
	return logMsg{seq: msg.Sequence, m: m}, err
}

// firstSeq is the sequence of the first message the log holds on subject
// (0 if none).
func firstSeq(ctx context.Context, js jetstream.JetStream, subject string) (uint64, error) {
	st, err := js.Stream(ctx, faultStream)
	if err != nil {
		return 0, err
	}
	msg, err := st.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subject))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return msg.Sequence, nil
}

// taskStatus asks the service for a task's status: purge_status for a
// purge_history id, delete_status otherwise. It returns "" while the
// task is unknown (404) and the error text of a failed task.
func taskStatus(nc *nats.Conn, action, id string) (status, errText string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	subj, key := faultSubjects.API("delete_status"), "delete_id"
	if action == commands.ActionPurgeHistory {
		subj, key = faultSubjects.API("purge_status"), "purge_id"
	}
	m, err := api(ctx, nc, subj, map[string]any{key: id})
	var ce *commands.Error
	if errors.As(err, &ce) && ce.Status == 404 {
		return "", "", nil
	}
	if err != nil {
		return "", "", err
	}
	status, _ = m["status"].(string)
	errText, _ = m["error"].(string)
	return status, errText, nil
}

// waitTaskComplete waits until the task is finished and fails the test
// unless it completed.
func waitTaskComplete(t testing.TB, nc *nats.Conn, action, id string, timeout time.Duration) {
	t.Helper()
	var status, errText string
	testenv.WaitFor(t, timeout, "task "+id+" to finish", func() bool {
		var err error
		status, errText, err = taskStatus(nc, action, id)
		return err == nil && (status == commands.TaskComplete || status == commands.TaskFailed)
	})
	if status != commands.TaskComplete {
		t.Fatalf("task %s (%s) is %s: %s", id, action, status, errText)
	}
}

// logAsRead reads the whole log as the projector reads it, through
// bus.Log.Consume (kept copies in their original places), and returns
// each message's subject by sequence.
func logAsRead(t testing.TB, js jetstream.JetStream, stream string, subjects bus.Subjects) map[uint64]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := &bus.Log{JS: js, Stream: stream, Subjects: subjects}
	last, err := l.LastSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]string{}
	if last == 0 {
		return out
	}
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	err = l.Consume(rctx, 1, func(seq uint64, subject string, _ []byte, _ int64, _ uint64) {
		out[seq] = subject
		if seq >= last {
			stop()
		}
	})
	if ctx.Err() != nil {
		t.Fatalf("reading the log: %v", ctx.Err())
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	return out
}
