package main

// The catchup scenario of `scrollback bench` (issue 7): a projection
// starting --backlog events behind the log, as after a restore, a rebuild
// or a long outage.
//
//  1. The log: the embedded NATS server alone (the service is not running)
//     on a new data dir; --backlog events of --rooms generated rooms
//     (bench_gen.go, Zipf sizes with --zipf-s) published in atomic batches.
//  2. The catch-up: a service opened on that data dir, with an empty
//     projection; the clock runs from Open until everything is applied
//     and the new file, built without fsync (projections/build.go), is
//     synced.
//     Meanwhile a reader asks the largest room for its newest page 50
//     times a second, open-loop (what a client sees during a catch-up; it
//     hardly loads the service).
//  3. The floor: the cheapest catch-up of the same log on this machine: an
//     ordered consumer reading the whole stream and writing each message's
//     bytes to a new bbolt file, keyed by sequence, one transaction (with
//     fsync) per 1000 messages as the projector commits.
//
// Goal: at least 50k events/s.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/internal/loadgen"
)

// catchupReadRate is the rate of the reads during the catch-up.
const catchupReadRate = 50

// catchupResults are the measurements of the catchup scenario.
type catchupResults struct {
	Events, Rooms  int
	S              float64
	Largest        int
	Load           time.Duration // publishing the backlog
	Open           time.Duration // Open of the service
	Caught         time.Duration // Open until all applied
	Floor          time.Duration // the floor's copy of the log
	Mem            memPeak
	Bolt, JS       int64
	readsN, readsE int // reads during the catch-up: done, failed
	readsRefused   int // refused: the reader's join not yet applied
	cost           applyCost
	// CPU is the process's CPU time from Open to all applied (the
	// embedded NATS server's and the catch-up's reads' included); -1:
	// not known.
	CPU          time.Duration
	floorWritten int64 // by the floor's copy; -1: not known
}

func (b *bench) catchupScenario(ctx context.Context) error {
	c := b.cfg
	sizes, s, err := genSizes(c.Rooms, c.Backlog, c.ZipfS, 0)
	if err != nil {
		return fmt.Errorf("bench: room sizes: %w", err)
	}
	res := &catchupResults{Events: c.Backlog, Rooms: c.Rooms, S: s, Largest: sizes[0]}
	b.res.catchup = res
	b.printf("\n== catchup: a projection starting %d events behind the log (%d rooms, Zipf s=%.3f, largest %d events) ==\n", c.Backlog, c.Rooms, s, sizes[0])
	dataDir := filepath.Join(b.dir, "catchup")
	subjects := bus.Subjects{Prefix: DefaultConfig().NATS.SubjectPrefix}
	g := newGenLog(c.Seed, "c", sizes, subjects)
	last, err := b.loadBacklog(ctx, dataDir, subjects, g)
	if err != nil {
		return err
	}
	b.printf("backlog: %d events published in atomic batches of %d with the service stopped in %v = %.0f events/s\n",
		c.Backlog, c.Batch, round(res.Load), perSec(c.Backlog, res.Load))

	b.mark("open")
	// The process's counters, read directly: the sampler has no service
	// to look at until Open returns, and would miss what Open writes.
	io0, ioErr := loadgen.ReadIO(0)
	cpu0, cpuErr := loadgen.ReadCPU(0)
	start := time.Now()
	m, err := b.openBenchService(ctx, dataDir)
	if err != nil {
		return err
	}
	defer m.Close()
	res.Open = time.Since(start)
	stopReads, err := b.catchupReads(ctx, m, g.Rooms[0])
	if err != nil {
		return err
	}
	err = b.waitAllApplied(ctx, m, last)
	res.Caught = time.Since(start)
	res.CPU = -1
	if cpu1, err := loadgen.ReadCPU(0); cpuErr == nil && err == nil {
		res.CPU = cpu1 - cpu0
	}
	res.readsN, res.readsRefused, res.readsE = stopReads()
	if err != nil {
		return err
	}
	b.mark("caught up")
	res.cost = b.applyCost(ctx, res.Caught)
	res.cost.Written = writtenSince(io0, ioErr) // the catch-up's, Open's included, not the backlog's
	_, res.Mem = b.samplerPeaks()
	res.Bolt, _ = fileSize(filepath.Join(dataDir, "scrollback.db"))
	res.JS, _ = dirSize(filepath.Join(dataDir, "jetstream"))
	b.printf("catch-up: %d events applied in %v from Open (Open took %v) = %.0f events/s; %d reads of the largest room's newest page meanwhile (%d refused before the reader's join was applied, %d failed)\n",
		c.Backlog, round(res.Caught), round(res.Open), perSec(c.Backlog, res.Caught), res.readsN, res.readsRefused, res.readsE)
	if st := b.seriesStats("newest page of the largest room during the catch-up"); st.N > 0 {
		b.printf("reads during the catch-up: p50 %s p90 %s p99 %s max %s\n", fmtLat(st.P50), fmtLat(st.P90), fmtLat(st.P99), fmtLat(st.Max))
	}

	b.printf("projector: %s\n", res.cost.per(c.Backlog))
	if res.CPU >= 0 {
		b.printf("process CPU from Open to all applied: %v = %.1f µs per event, %.2f cores (%.1f µs per event at most for %s events/s on %d cores)\n",
			round(res.CPU), cpuPerEvent(res.CPU, c.Backlog), res.CPU.Seconds()/res.Caught.Seconds(),
			cpuBudget(runtime.NumCPU()), fmtRate(goalApplyPerSec), runtime.NumCPU())
	}
	b.mark("floor")
	io0, ioErr = loadgen.ReadIO(0)
	if res.Floor, err = b.catchupFloor(ctx, m, last); err != nil {
		return err
	}
	res.floorWritten = writtenSince(io0, ioErr)
	b.printf("floor: an ordered consumer copying the %d messages to a bbolt file, 1000 per fsynced transaction, in %v = %.0f msgs/s; %s written = %.0f bytes per message\n",
		last, round(res.Floor), perSec(int(last), res.Floor), fmtMiB(res.floorWritten), float64(res.floorWritten)/float64(last))
	b.printf("memory peak %s; disk: bbolt %s, JetStream %s\n", res.Mem, fmtMiB(res.Bolt), fmtMiB(res.JS))
	if err := m.Close(); err != nil {
		return fmt.Errorf("bench: close service: %w", err)
	}
	return nil
}

// loadBacklog publishes the generated log to the embedded NATS server of
// dataDir with no service running, and returns the last sequence.
func (b *bench) loadBacklog(ctx context.Context, dataDir string, subjects bus.Subjects, g *genLog) (uint64, error) {
	res := b.res.catchup
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{StoreDir: filepath.Join(dataDir, "jetstream"), Subjects: subjects})
	if err != nil {
		return 0, err
	}
	defer func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	}()
	connect := func(name string) (*nats.Conn, error) { return bus.ConnectInProcess(srv, name) }
	nc, err := connect("bench-setup")
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	js, err := jetstreamOf(nc)
	if err != nil {
		return 0, err
	}
	if _, err := bus.EnsureStream(ctx, js, subjects, DefaultConfig().NATS.Stream); err != nil {
		return 0, err
	}
	var last uint64
	p, closeP, err := newPublisher(connect, "bench-publisher", publishModeBatch, b.cfg.Batch, 4, func(a pubAck) { last = max(last, a.Last) })
	if err != nil {
		return 0, err
	}
	defer closeP()
	start := time.Now()
	if _, err := p.run(ctx, func() *nats.Msg {
		_, m := g.Next()
		return m
	}); err != nil {
		return 0, err
	}
	res.Load = time.Since(start)
	return last, nil
}

// waitAllApplied waits until the projector has applied every partition up
// to seq, and a projection built without fsync is synced (Store.Building).
func (b *bench) waitAllApplied(ctx context.Context, m *Main, seq uint64) error {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for m.Projector.Applied() < seq {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return waitBuilt(ctx, m)
}

// waitBuilt waits until a projection built without fsync is synced
// (Store.Building): a catch-up into a new file is done only then.
func waitBuilt(ctx context.Context, m *Main) error {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for m.Store.Building() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// catchupReads starts reading the room's newest page catchupReadRate
// times a second, open-loop: a read slow to answer holds none of the next
// back, and each is timed from when it was due. Before the reader's join
// is applied a read is refused (403, not a member): counted apart from
// failures (timeouts, other errors), and, like them, not in the series.
// stop ends the reads and counts them.
func (b *bench) catchupReads(ctx context.Context, m *Main, room *synthRoom) (stop func() (ok, refused, failed int), err error) {
	nc, err := bus.ConnectInProcess(m.NATSServer, "bench-reader")
	if err != nil {
		return nil, err
	}
	subject := bus.Subjects{Prefix: m.Config.NATS.SubjectPrefix}.APIRoom(room.ID, "messages")
	data, err := bus.Encode(map[string]any{"user_id": room.Reader(), "dir": "b", "limit": b.cfg.Limit})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("bench: encode request: %w", err)
	}
	read := natsTarget(nc, subject, [][]byte{data})
	var refusals atomic.Int64
	do := read.do
	read.do = func(ctx context.Context, i int) (int, error) {
		n, err := do(ctx, i)
		var se *serviceError
		if errors.As(err, &se) && se.code == "403" {
			refusals.Add(1)
		}
		return n, err
	}
	read.rec.set(b.readSeries("reads during the catch-up", fmt.Sprintf("newest page of the largest room during the catch-up, %d req/s", catchupReadRate)))
	o := startOpenLoop(ctx, catchupReadRate, read)
	return func() (ok, refused, failed int) {
		// A catch-up may end before the reader's join is applied: a
		// phase with no read answered is no error here.
		r, _ := o.Stop()
		nc.Close()
		refused = int(refusals.Load())
		return r.Requests, refused, r.Failed - refused
	}, nil
}

// catchupFloor copies the log to a new bbolt file with an ordered consumer,
// 1000 messages per transaction, and returns the time it took.
func (b *bench) catchupFloor(ctx context.Context, m *Main, last uint64) (time.Duration, error) {
	path := filepath.Join(b.dir, "catchup-floor.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, InitialMmapSize: 1 << 30})
	if err != nil {
		return 0, fmt.Errorf("bench: floor file: %w", err)
	}
	defer os.Remove(path)
	defer db.Close()
	nc, err := bus.ConnectInProcess(m.NATSServer, "bench-floor")
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	js, err := jetstreamOf(nc)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	cons, err := js.OrderedConsumer(ctx, m.Config.NATS.Stream, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return 0, fmt.Errorf("bench: floor consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(4096))
	if err != nil {
		return 0, fmt.Errorf("bench: floor consumer: %w", err)
	}
	defer it.Stop()
	type kv struct {
		seq  uint64
		data []byte
	}
	batch := make([]kv, 0, 1000)
	commit := func() error {
		err := db.Update(func(tx *bolt.Tx) error {
			bk, err := tx.CreateBucketIfNotExists(floorBucket)
			if err != nil {
				return err
			}
			bk.FillPercent = 0.9
			for _, e := range batch {
				if err := bk.Put(binary.BigEndian.AppendUint64(nil, e.seq), e.data); err != nil {
					return err
				}
			}
			return nil
		})
		batch = batch[:0]
		return err
	}
	for {
		msg, err := it.Next()
		if err != nil {
			return 0, fmt.Errorf("bench: floor consumer: %w", err)
		}
		md, err := msg.Metadata()
		if err != nil {
			return 0, fmt.Errorf("bench: floor consumer: %w", err)
		}
		batch = append(batch, kv{md.Sequence.Stream, msg.Data()})
		done := md.Sequence.Stream >= last
		if len(batch) == cap(batch) || done {
			if err := commit(); err != nil {
				return 0, fmt.Errorf("bench: floor file: %w", err)
			}
		}
		if done {
			return time.Since(start), nil
		}
	}
}

// writtenSince is what this process wrote to storage since its I/O
// counters read io0 (err: they could not be read); -1: not known.
func writtenSince(io0 loadgen.IO, err error) int64 {
	io1, err1 := loadgen.ReadIO(0)
	if err != nil || err1 != nil {
		return -1
	}
	return io1.WriteBytes - io0.WriteBytes
}

func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// cpuPerEvent is d spread over n events, in microseconds.
func cpuPerEvent(d time.Duration, n int) float64 {
	if n <= 0 {
		return 0
	}
	return float64(d.Microseconds()) / float64(n)
}

// cpuBudget is the most CPU an event may cost, in microseconds, for the
// catch-up goal (goalApplyPerSec) on cores fully used: with less, the
// goal cannot be met however well the work is spread over them.
func cpuBudget(cores int) float64 { return float64(cores) * 1e6 / goalApplyPerSec }

func dirSize(path string) (int64, error) { return loadgen.DirSize(path) }

func (b *bench) catchupSummary(t summaryTable) {
	r := b.res.catchup
	t.section(fmt.Sprintf("catchup: a projection starting %d events behind the log (%d rooms, Zipf s=%.3f, largest %d); ratio = scrollback / floor (an ordered consumer copying the log into bbolt)",
		r.Events, r.Rooms, r.S, r.Largest), "metric", "value", "floor", "ratio", "goal", "result")
	rate := perSec(r.Events, r.Caught)
	floor := perSec(r.Events, r.Floor)
	t.row("catch-up, Open to all applied (events/s)", fmtRate(rate), fmtRate(floor), fmt.Sprintf("%.2fx", rate/floor),
		fmt.Sprintf(">= %s", fmtRate(goalApplyPerSec)), verdict(rate >= goalApplyPerSec))
	costRows(t, r.cost, r.Events)
	if r.floorWritten > 0 {
		t.row("floor: written to storage per event (bytes)", fmt.Sprintf("%.0f", float64(r.floorWritten)/float64(r.Events)), "-", "-", "report", "-")
	}
	if r.CPU >= 0 {
		t.row("process CPU per event, Open to all applied (µs)", fmt.Sprintf("%.1f", cpuPerEvent(r.CPU, r.Events)), "-", "-",
			fmt.Sprintf("<= %.1f", cpuBudget(runtime.NumCPU())), verdict(cpuPerEvent(r.CPU, r.Events) <= cpuBudget(runtime.NumCPU())))
	}
	t.row("Open of the service (ms)", fmt.Sprintf("%.1f", float64(r.Open)/float64(time.Millisecond)), "-", "-", "report", "-")
	t.row("backlog published, atomic batches, service stopped (events/s)", fmtRate(perSec(r.Events, r.Load)), "-", "-", "report", "-")
	if s := b.seriesStats("newest page of the largest room during the catch-up"); s.N > 0 {
		t.row("reads during the catch-up p50 (50 req/s)", fmtLat(s.P50), "-", "-", "report", "-")
		t.row("reads during the catch-up p99 (50 req/s)", fmtLat(s.P99), "-", "-", "report", "-")
	}
	memRows(t, r.Mem, "process: service + bench", "report", "-")
	t.row("disk: bbolt file after", fmtMiB(r.Bolt), "-", "-", "report", "-")
	t.row("disk: JetStream store", fmtMiB(r.JS), "-", "-", "report", "-")
}
