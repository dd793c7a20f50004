package main

// The service under test of the ingest, reads and mixed scenarios: an
// embedded scrollback (a Main in this process, the default), or an
// external one (--target nats://...) reached through the contract only:
// JetStream publishes to sb.room.<rk>.*, requests to sb.api.*, answers to
// sb.hs.*, and, with --target-http, the HTTP bridge and GET /metrics.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/internal/loadgen"
)

// sut is the service under test.
type sut struct {
	m        *Main // nil: external
	subjects bus.Subjects
	stream   string
	nc       *nats.Conn // the bench's client connection
	js       jetstream.JetStream
	req      *bus.Requester
	httpBase string // "http://host:port" of the HTTP bridge, "" if none
	dataDir  string // embedded: the data dir; external: --target-data, if given
	pid      int    // external: --target-pid, if given
	connect  func(name string) (*nats.Conn, error)
	hc       *http.Client
	notOwned bool     // m is the caller's: Close leaves it open
	db       *bolt.DB // m's projection file, for its freelist (taken at Open: Close clears m.Store)

	closeOnce sync.Once
	closeErr  error

	published atomic.Uint64 // the highest sequence the bench published
}

// External reports whether the service runs elsewhere.
func (s *sut) External() bool { return s.m == nil }

// floorReplyConns is how many connections of its own a floor next to the
// service replies on: as many as the service's replies go out on
// (serve: apiReplyConns on its embedded server), none next to an external
// target, which the floor reaches as a client.
func (s *sut) floorReplyConns() int {
	if s.External() || s.m.NATSServer == nil {
		return 0
	}
	return apiReplyConns
}

// openSUT opens the service under test: a new embedded service on a data
// dir of its own under the bench's temp dir, or the external target.
func (b *bench) openSUT(ctx context.Context, name string) (*sut, error) {
	c := b.cfg
	s := &sut{hc: newBenchHTTPClient(4)}
	if c.Target == "" {
		m, err := b.openBenchService(ctx, filepath.Join(b.dir, name))
		if err != nil {
			return nil, err
		}
		s.m, s.subjects, s.stream, s.dataDir = m, bus.Subjects{Prefix: m.Config.NATS.SubjectPrefix}, m.Config.NATS.Stream, m.Config.DataDir
		s.db = m.Store.DB()
		s.httpBase = "http://" + m.HTTPAddr
		s.connect = func(name string) (*nats.Conn, error) { return bus.ConnectInProcess(m.NATSServer, name) }
	} else {
		s.subjects, s.stream = bus.Subjects{Prefix: c.TargetPrefix}, c.TargetStream
		s.httpBase, s.dataDir, s.pid = strings.TrimSuffix(c.TargetHTTP, "/"), c.TargetData, c.TargetPID
		s.connect = func(name string) (*nats.Conn, error) { return bus.Connect(c.Target, c.TargetCreds, name) }
	}
	var err error
	if s.nc, err = s.connect("bench-client"); err != nil {
		s.Close()
		return nil, err
	}
	s.req = &bus.Requester{NC: s.nc, Timeout: 30 * time.Second}
	if s.js, err = jetstreamOf(s.nc); err != nil {
		s.Close()
		return nil, err
	}
	if _, err := s.js.Stream(ctx, s.stream); err != nil {
		s.Close()
		return nil, fmt.Errorf("bench: stream %s: %w", s.stream, err)
	}
	if last, err := s.lastSeq(ctx); err == nil {
		s.published.Store(last)
	}
	b.register(s)
	return s, nil
}

// Close closes the bench's connection and, if embedded, the service; it
// is safe to call again. The fields stay (the sampler may still look at
// the closed service's projector).
func (s *sut) Close() error {
	s.closeOnce.Do(func() {
		s.hc.CloseIdleConnections()
		if s.nc != nil {
			s.nc.Close()
		}
		if s.m != nil && !s.notOwned {
			s.closeErr = s.m.Close()
		}
	})
	return s.closeErr
}

func jetstreamOf(nc *nats.Conn) (jetstream.JetStream, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("bench: jetstream: %w", err)
	}
	return js, nil
}

// lastSeq is the log's last sequence (stream info).
func (s *sut) lastSeq(ctx context.Context) (uint64, error) {
	st, err := s.js.Stream(ctx, s.stream)
	if err != nil {
		return 0, fmt.Errorf("bench: stream info: %w", err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("bench: stream info: %w", err)
	}
	return info.State.LastSeq, nil
}

// notePublished records a sequence the bench published.
func (s *sut) notePublished(seq uint64) {
	for {
		cur := s.published.Load()
		if seq <= cur || s.published.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// metrics scrapes GET /metrics of the external service.
func (s *sut) metrics(ctx context.Context) ([]byte, error) {
	if s.httpBase == "" {
		return nil, errors.New("bench: no --target-http: the projection's progress is not known")
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.httpBase+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("bench: GET /metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bench: GET /metrics: status %d", resp.StatusCode)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 8<<20))
}

// lag is the projection lag in log messages: the log's last sequence
// (what the bench published, or what the projector knows of) minus the
// applied one. External: the service's scrollback_projection_lag_messages.
func (s *sut) lag(ctx context.Context) (float64, error) {
	if s.m != nil {
		p := s.m.Projector
		last := max(s.published.Load(), p.LogLast())
		return float64(last - min(p.Applied(), last)), nil
	}
	text, err := s.metrics(ctx)
	if err != nil {
		return 0, err
	}
	v, ok := loadgen.PromValue(text, "scrollback_projection_lag_messages")
	if !ok {
		return 0, errors.New("bench: /metrics has no scrollback_projection_lag_messages")
	}
	return v, nil
}

// applied is the log sequence up to which everything is applied.
// External: the log's last sequence minus the service's lag.
func (s *sut) applied(ctx context.Context) (uint64, error) {
	if s.m != nil {
		return s.m.Projector.Applied(), nil
	}
	last, err := s.lastSeq(ctx)
	if err != nil {
		return 0, err
	}
	lag, err := s.lag(ctx)
	if err != nil {
		return 0, err
	}
	return last - min(uint64(lag), last), nil
}

// pollEvery is how often waitApplied and the freshness watcher look at
// the projection's progress.
func (s *sut) pollEvery() time.Duration {
	if s.m != nil {
		return time.Millisecond
	}
	return 20 * time.Millisecond
}

// waitApplied waits until everything up to seq is applied. Without a way
// to know the projection's progress (external, no --target-http) it asks
// each room of rooms with wait_for instead (CONTRACT.md section 4).
func (s *sut) waitApplied(ctx context.Context, seq uint64, rooms func(yield func(roomID string, last uint64) bool)) error {
	if s.m == nil && s.httpBase == "" {
		return s.waitRooms(ctx, rooms)
	}
	deadline := time.Now().Add(30 * time.Minute)
	for {
		got, err := s.applied(ctx)
		if err != nil {
			return err
		}
		if got >= seq {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: the projection applied %d after 30 minutes, want %d", got, seq)
		}
		select {
		case <-time.After(s.pollEvery()):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// waitRooms reads every room once with wait_for its last sequence, 16 at a
// time.
func (s *sut) waitRooms(ctx context.Context, rooms func(yield func(roomID string, last uint64) bool)) error {
	type job struct {
		room string
		seq  uint64
	}
	jobs := make(chan job)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for j := range jobs {
				_, err := s.req.Request(ctx, s.subjects.APIRoom(j.room, "messages"), map[string]any{"admin": true, "limit": 0, "wait_for": j.seq})
				if err != nil {
					errs <- fmt.Errorf("bench: wait_for %d in %s: %w", j.seq, j.room, err)
					return
				}
			}
		})
	}
	var err error
	rooms(func(room string, last uint64) bool {
		select {
		case jobs <- job{room, last}:
			return true
		case err = <-errs:
			return false
		}
	})
	close(jobs)
	wg.Wait()
	close(errs)
	if err == nil {
		err = <-errs
	}
	return err
}

// memory is the service's memory: this process's /proc status when
// embedded (the bench's own clients included), the --target-pid's when
// given (memorySplit), else what /metrics says: process_resident_memory_bytes,
// every resident page with the mapped files, as VmRSS alone.
func (s *sut) memory(ctx context.Context) (loadgen.Memory, bool) {
	if s.memorySplit() {
		m, err := loadgen.ReadMemory(s.pid)
		return m, err == nil
	}
	text, err := s.metrics(ctx)
	if err != nil {
		return loadgen.Memory{}, false
	}
	v, ok := loadgen.PromValue(text, "process_resident_memory_bytes")
	return loadgen.Memory{VmRSS: int64(v)}, ok
}

// memorySplit reports whether memory tells the process's own memory
// (RssAnon + RssShmem) from the mapped files' (RssFile): only /proc does.
func (s *sut) memorySplit() bool { return s.m != nil || s.pid > 0 }

// cpu is the service's CPU time so far: this process's when embedded, the
// --target-pid's when given.
func (s *sut) cpu() (time.Duration, bool) {
	if s.m == nil && s.pid <= 0 {
		return 0, false
	}
	d, err := loadgen.ReadCPU(s.pid)
	return d, err == nil
}

// io is the service's storage I/O: this process's when embedded, the
// --target-pid's when given.
func (s *sut) io() (loadgen.IO, bool) {
	if s.m == nil && s.pid <= 0 {
		return loadgen.IO{}, false
	}
	io, err := loadgen.ReadIO(s.pid)
	return io, err == nil
}

// metricValues scrapes GET /metrics once and returns a look-up of its
// values by name (0 for a metric not served); ok is false if the scrape
// failed.
func (s *sut) metricValues(ctx context.Context) (get func(name string) float64, ok bool) {
	text, err := s.metrics(ctx)
	if err != nil {
		return nil, false
	}
	return func(name string) float64 {
		v, _ := loadgen.PromValue(text, name)
		return v
	}, true
}

// projectorCost is what the projector's metrics (GET /metrics) say it
// did so far: its partitions' batches and the time each took from
// decoding to the commit (scrollback_apply_batch_seconds), and bbolt's
// writer's group commits (scrollback_commit_*). A field not served (an
// older build) stays 0.
func (s *sut) projectorCost(ctx context.Context, c *applyCost) {
	get, ok := s.metricValues(ctx)
	if !ok {
		return
	}
	c.Batches, c.BatchSecs = get("scrollback_apply_batch_seconds_count"), get("scrollback_apply_batch_seconds_sum")
	c.Groups, c.GroupSecs = get("scrollback_commit_seconds_count"), get("scrollback_commit_seconds_sum")
	c.Pages = get("scrollback_commit_pages_total")
}

// janitorCost is what the janitor's metrics (GET /metrics) say it did so
// far (scrollback_janitor_*).
func (s *sut) janitorCost(ctx context.Context, c *janitorCost) {
	get, ok := s.metricValues(ctx)
	if !ok {
		return
	}
	c.RowTx, c.OtherTx = get(`scrollback_janitor_transactions_total{kind="rows"}`), get(`scrollback_janitor_transactions_total{kind="other"}`)
	c.Rows = get("scrollback_janitor_rows_total")
	c.Wait, c.Held = get("scrollback_janitor_wait_seconds_total"), get("scrollback_janitor_held_seconds_total")
}

// freelist is the size of the projection file's freelist in bytes:
// bbolt writes it with every commit.
func (s *sut) freelist() (int64, bool) {
	if s.db == nil {
		return 0, false
	}
	return int64(s.db.Stats().FreelistInuse), true
}

// disk is the size of the bbolt file and of the JetStream store, when the
// data dir is known.
func (s *sut) disk() (bolt, js int64, ok bool) {
	if s.dataDir == "" {
		return 0, 0, false
	}
	bolt, err1 := loadgen.DirSize(filepath.Join(s.dataDir, "scrollback.db"))
	js, err2 := loadgen.DirSize(filepath.Join(s.dataDir, "jetstream"))
	return bolt, js, err1 == nil && err2 == nil
}
