package main

// The ingest scenario of `scrollback bench` (issue 7): --ingest-events
// events in --rooms rooms whose sizes follow Zipf's law (--zipf-s, or
// --largest to solve for the exponent), realistic events (bench_gen.go),
// interleaved as on a busy server, published like homeserver workers do
// (atomic batches of --batch, or --publish-mode async), while the service
// applies them.
//
// What is measured:
//
//   - throughput: events acknowledged by the log per second, and events
//     published and applied per second (first publish to the last one
//     applied); the log's rate is the floor of ingest: the projection
//     cannot apply faster than the log accepts, so their ratio says how
//     well it keeps up;
//   - freshness: for each acknowledged group (a batch), the time from its
//     publish until the projection has applied it, and the ack's own
//     latency, as latency series (p50/p90/p99/max, over time);
//   - the projection lag, memory (RssAnon + RssShmem; RssFile apart; an
//     external service without --target-pid: VmRSS alone, with no
//     verdict) and disk (bbolt file, JetStream store), sampled every
//     --sample;
//   - then reads at every room size: for rooms of about the largest size,
//     1M, 100k, 10k, 1k and 100 events (those the run has), /messages dir=b
//     limit=--limit over NATS, plain and with lazy_load_members (bundled
//     aggregations are always on), next to the floor's scan of the same
//     room's events (rebuilt from the room's seed), in turns. Goals: p99 at
//     most 3x the floor's plain, 6x lazy.
//
// Scale goals (issue 7, this machine): 10M events in 100k rooms (largest
// 2M): RSS under 512 MiB.

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/scrollback/scrollback/internal/loadgen"
)

// goalRSS is issue 7's memory goal at goalRSSEvents events: RssAnon +
// RssShmem.
const (
	goalRSS       = 512 << 20
	goalRSSEvents = 10_000_000
)

// sizeTargets are the room sizes the reads by room size look for.
var sizeTargets = []int{0, 1_000_000, 100_000, 10_000, 1_000, 100} // 0: the largest

// ingestResults are the measurements of the ingest scenario.
type ingestResults struct {
	Rooms, Events     int
	S                 float64
	Largest, Median   int
	Smallest          int
	Mode              string
	Kinds             string
	Acked, Applied    time.Duration // from the first publish
	MaxLag            float64
	Mem               memPeak
	Bolt, JS          int64
	ack, fresh        *loadgen.Series
	sizes             []sizeRead
	external, noFresh bool
	cost              applyCost
}

// sizeRead is the reads of one room by size.
type sizeRead struct {
	Room               string
	Size               int
	Floor, Plain, Lazy loadPair
}

// runPrefix is the local part's prefix of the generated rooms' IDs: the
// same every run against an embedded service, new every run against an
// external one (which may hold the rooms of an earlier run).
func (b *bench) runPrefix(name string) string {
	if b.cfg.Target == "" {
		return name
	}
	return name + strings.ToLower(rand.Text()[:6]) + "-"
}

// ingestScenario loads the generated rooms and reads them by size.
func (b *bench) ingestScenario(ctx context.Context) error {
	c := b.cfg
	sizes, s, err := genSizes(c.Rooms, c.IngestEvents, c.ZipfS, c.Largest)
	if err != nil {
		return fmt.Errorf("bench: room sizes: %w", err)
	}
	res := &ingestResults{Rooms: c.Rooms, Events: c.IngestEvents, S: s, Largest: sizes[0], Median: sizes[len(sizes)/2], Smallest: sizes[len(sizes)-1],
		Mode: c.PublishMode, external: c.Target != ""}
	b.res.ingest = res
	b.printf("\n== ingest: %d events in %d rooms, Zipf s=%.3f (largest %d, median %d, smallest %d events), published %s ==\n",
		c.IngestEvents, c.Rooms, s, res.Largest, res.Median, res.Smallest, publishHow(c.PublishMode, c.Batch))
	sv, err := b.openSUT(ctx, "ingest")
	if err != nil {
		return err
	}
	defer sv.Close()
	prefix := b.runPrefix("z")
	g := newGenLog(c.Seed, prefix, sizes, sv.subjects)

	res.ack = b.newSeries("ingest", "publish to ack, per group")
	res.fresh = b.newSeries("ingest", "publish to applied, per group")
	fw := startFreshness(ctx, sv, res.fresh)
	res.noFresh = fw == nil
	window := 4
	if c.PublishMode == publishModeAsync {
		window = publishWindow
	}
	var last uint64
	p, closeP, err := newPublisher(sv.connect, "bench-publisher", c.PublishMode, c.Batch, window, func(a pubAck) {
		res.ack.Record(a.Sent, a.Acked.Sub(a.Sent))
		sv.notePublished(a.Last)
		last = max(last, a.Last)
		fw.add(a)
	})
	if err != nil {
		return err
	}
	defer closeP()
	b.mark("publishing")
	cost0 := b.applyCost(ctx, 0)
	start := time.Now()
	n, err := p.run(ctx, func() *nats.Msg {
		_, m := g.Next()
		return m
	})
	if err != nil {
		return err
	}
	res.Acked = time.Since(start)
	b.mark("all acked")
	b.printf("published: %d events acked in %v = %.0f events/s; mix: %s\n", n, round(res.Acked), perSec(n, res.Acked), g.KindsString())
	res.Kinds = g.KindsString()
	if err := sv.waitApplied(ctx, last, func(yield func(string, uint64) bool) {
		for _, r := range g.Rooms {
			if !yield(r.ID, last) {
				return
			}
		}
	}); err != nil {
		return err
	}
	res.Applied = time.Since(start)
	b.mark("all applied")
	res.cost = b.applyCost(ctx, res.Applied).since(cost0)
	fw.stop()
	res.MaxLag, res.Mem = b.samplerPeaks()
	bolt, js, ok := sv.disk()
	res.Bolt, res.JS = bolt, js
	fr := res.fresh.Stats()
	b.printf("applied: %d events published and applied in %v = %.0f events/s (the log acked %.0f events/s: ratio %.2f); applied %v after the last ack\n",
		n, round(res.Applied), perSec(n, res.Applied), perSec(n, res.Acked), res.Acked.Seconds()/res.Applied.Seconds(), round(res.Applied-res.Acked))
	if !res.noFresh {
		b.printf("freshness, publish to applied per group of %d: p50 %s p90 %s p99 %s max %s; ack p50 %s p99 %s\n", c.Batch,
			fmtLat(fr.P50), fmtLat(fr.P90), fmtLat(fr.P99), fmtLat(fr.Max), fmtLat(res.ack.Stats().P50), fmtLat(res.ack.Stats().P99))
	}
	b.printf("projection lag max %.0f msgs; memory peak %s", res.MaxLag, res.Mem)
	if ok {
		b.printf("; disk: bbolt %s, JetStream %s (%.0f + %.0f bytes per event)", fmtMiB(bolt), fmtMiB(js), float64(bolt)/float64(n), float64(js)/float64(n))
	}
	b.printf("\n")
	b.printf("projector: %s\n", res.cost.per(n))
	return b.readsBySize(ctx, sv, g, prefix, sizes)
}

func publishHow(mode string, batch int) string {
	if mode == publishModeAsync {
		return fmt.Sprintf("one async publish per message (at most %d unacknowledged)", publishWindow)
	}
	return fmt.Sprintf("in atomic batches of %d (4 in flight)", batch)
}

// readsBySize reads rooms of every size class next to their floors.
func (b *bench) readsBySize(ctx context.Context, sv *sut, g *genLog, prefix string, sizes []int) error {
	c := b.cfg
	res := b.res.ingest
	var picked []int
	for _, want := range sizeTargets {
		best := -1
		for i, n := range sizes {
			if want == 0 {
				best = 0
				break
			}
			if best < 0 || absInt(n-want) < absInt(sizes[best]-want) {
				best = i
			}
		}
		// Only sizes the run has: within a factor 2 of the target.
		if best >= 0 && !slices.Contains(picked, best) && (want == 0 || sizes[best] >= want/2 && sizes[best] <= want*2) {
			picked = append(picked, best)
		}
	}
	b.printf("\n== reads by room size: /messages dir=b limit=%d over NATS, plain and lazy_load_members, next to the floor (%v phases) ==\n", c.Limit, c.MatrixDuration)
	for _, idx := range picked {
		room := g.Rooms[idx]
		n := sizes[idx]
		subject := sv.subjects.APIRoom(room.ID, "messages")
		t, err := collectStartPoints(ctx, sv.req, subject, room.Reader(), n, "b", c.Limit)
		if err != nil {
			return fmt.Errorf("bench: room %s of %d events: %w", room.ID, n, err)
		}
		path := filepath.Join(b.dir, fmt.Sprintf("size-floor-%d.db", idx))
		fl, err := openFloorFrom(ctx, path, sv.connect, sv.floorReplyConns(), genRoomEvents(c.Seed, prefix, idx, n))
		if err != nil {
			return err
		}
		plain, err := t.requests(room.Reader(), c.Limit, nil)
		if err != nil {
			fl.Close()
			return err
		}
		lazy, err := t.requests(room.Reader(), c.Limit, map[string]any{"filter": map[string]any{"lazy_load_members": true}})
		if err != nil {
			fl.Close()
			return err
		}
		label := fmt.Sprintf("%d-event room", n)
		pairs, err := b.compareFor(ctx, c.MatrixDuration,
			namedTarget{label + ": floor", natsTarget(sv.nc, floorScanSubject, t.floorRequests(c.Limit))},
			namedTarget{label + ": plain", natsTarget(sv.nc, subject, plain)},
			namedTarget{label + ": lazy", natsTarget(sv.nc, subject, lazy)})
		fl.Close()
		os.Remove(path)
		if err != nil {
			return err
		}
		res.sizes = append(res.sizes, sizeRead{Room: room.ID, Size: n, Floor: pairs[0], Plain: pairs[1], Lazy: pairs[2]})
	}
	return nil
}

// costRows are the summary's rows of what applying cost.
func costRows(t summaryTable, c applyCost, events int) {
	if c.Batches > 0 {
		t.row("projector: messages per partition batch, on average", fmt.Sprintf("%.0f", float64(events)/c.Batches), "-", "-", "report", "-")
		t.row("projector: batch time, on average (decode, wait for the writer, apply, commit)", fmtLat(time.Duration(c.BatchSecs/c.Batches*float64(time.Second))), "-", "-", "report", "-")
	}
	if c.Groups > 0 {
		t.row("projector: messages per group commit, on average", fmt.Sprintf("%.0f", float64(events)/c.Groups), "-", "-", "report", "-")
		t.row("projector: pages written per message", fmt.Sprintf("%.2f", c.Pages/float64(events)), "-", "-", "report", "-")
		t.row("bbolt's writer busy in group commits (share of the time)", fmt.Sprintf("%.0f%%", 100*c.writerBusy()), "-", "-", "report", "-")
	}
	if c.Written >= 0 {
		t.row("written to storage per event (bytes, /proc/self/io: the log's and the projection's)", fmt.Sprintf("%.0f", float64(c.Written)/float64(events)), "-", "-", "report", "-")
	}
}

func absInt(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// samplerPeaks are the largest projection lag and memory sampled in the
// current scenario so far.
func (b *bench) samplerPeaks() (lag float64, mem memPeak) {
	mem = b.peakMemory()
	b.mu.Lock()
	run := b.cur
	b.mu.Unlock()
	if run == nil || run.sampler == nil {
		return 0, mem
	}
	run.sampler.mu.Lock()
	defer run.sampler.mu.Unlock()
	return run.sampler.lag.Max(), mem
}

// lagMaxSince is the largest projection lag sampled in the current
// scenario since t.
func (b *bench) lagMaxSince(t time.Time) float64 {
	b.mu.Lock()
	run := b.cur
	b.mu.Unlock()
	if run == nil || run.sampler == nil {
		return 0
	}
	s := run.sampler
	s.sample(context.Background(), b.source.Load())
	s.mu.Lock()
	defer s.mu.Unlock()
	m := 0.0
	for _, p := range s.lag.Between(t.Sub(run.origin), time.Duration(1<<62)) {
		m = max(m, p.V)
	}
	return m
}

// freshness records, for each acknowledged group, the time from its
// publish until the projection has applied it: a watcher takes the groups
// in log order and polls the projection's progress.
type freshness struct {
	sv     *sut
	series *loadgen.Series
	mu     sync.Mutex
	queue  []pubAck
	wake   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

// startFreshness starts the watcher; nil (whose methods do nothing) when
// the service's progress cannot be followed (external, no --target-http).
func startFreshness(ctx context.Context, sv *sut, series *loadgen.Series) *freshness {
	if sv.External() && sv.httpBase == "" {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	f := &freshness{sv: sv, series: series, wake: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	go f.run(ctx)
	return f
}

func (f *freshness) add(a pubAck) {
	if f == nil {
		return
	}
	f.mu.Lock()
	f.queue = append(f.queue, a)
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

func (f *freshness) run(ctx context.Context) {
	defer close(f.done)
	var applied uint64
	for {
		f.mu.Lock()
		var head pubAck
		ok := len(f.queue) > 0
		if ok {
			head = f.queue[0]
		}
		f.mu.Unlock()
		if !ok {
			select {
			case <-f.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		if applied < head.Last {
			if a, err := f.sv.applied(ctx); err == nil {
				applied = a
			}
		}
		if applied >= head.Last {
			f.series.Record(head.Sent, time.Since(head.Sent))
			f.mu.Lock()
			f.queue = f.queue[1:]
			f.mu.Unlock()
			continue
		}
		select {
		case <-time.After(f.sv.pollEvery()):
		case <-ctx.Done():
			return
		}
	}
}

// stop ends the watcher (the groups not applied by then are not counted).
func (f *freshness) stop() {
	if f == nil {
		return
	}
	// Let the watcher take what is applied already.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		f.mu.Lock()
		n := len(f.queue)
		f.mu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	f.cancel()
	<-f.done
}

func (b *bench) ingestSummary(t summaryTable) {
	r := b.res.ingest
	n := float64(r.Events)
	t.section(fmt.Sprintf("ingest: %d events in %d rooms (Zipf s=%.3f: largest %d, median %d, smallest %d), published %s; mix: %s",
		r.Events, r.Rooms, r.S, r.Largest, r.Median, r.Smallest, publishHow(r.Mode, b.cfg.Batch), r.Kinds), "metric", "value", "vs", "ratio", "goal", "result")
	acked, applied := n/r.Acked.Seconds(), n/r.Applied.Seconds()
	t.row("log: publish to ack (events/s)", fmtRate(acked), "-", "-", "report", "-")
	t.thrRow("ingest: publish to applied (events/s) vs the log's ack rate", applied, acked, 0)
	if !r.noFresh {
		fr := r.fresh.Stats()
		t.row("freshness p50, publish to applied per group", fmtLat(fr.P50), "-", "-", "report", "-")
		t.row("freshness p90, publish to applied per group", fmtLat(fr.P90), "-", "-", "report", "-")
		t.row("freshness p99, publish to applied per group", fmtLat(fr.P99), "-", "-", "report", "-")
		t.row("freshness max, publish to applied per group", fmtLat(fr.Max), "-", "-", "report", "-")
	}
	ack := r.ack.Stats()
	t.row("publish to ack p99, per group", fmtLat(ack.P99), "-", "-", "report", "-")
	t.row("projection lag, max (msgs)", fmt.Sprintf("%.0f", r.MaxLag), "-", "-", "report", "-")
	t.thrRow("ingest vs Dendrite 0.13.8's client API (events/s)", applied, dendriteIngest, 0)
	if r.Mem != (memPeak{}) {
		who := "process: service + bench"
		if r.external {
			who = "the external service"
		}
		// The goal is for 10M events: a smaller run reports against it
		// without a verdict.
		result := "-"
		if r.Events >= goalRSSEvents {
			result = verdict(r.Mem.Resident < goalRSS)
		}
		memRows(t, r.Mem, who, fmt.Sprintf("< %s at 10M events", fmtMiB(goalRSS)), result)
	}
	if r.Bolt > 0 {
		t.row("disk: bbolt file", fmtMiB(r.Bolt), "-", "-", "report", "-")
		t.row("disk: JetStream store", fmtMiB(r.JS), "-", "-", "report", "-")
		t.row("disk: bytes per event (bbolt + JetStream)", fmt.Sprintf("%.0f", float64(r.Bolt+r.JS)/n), "-", "-", "report", "-")
	}
	costRows(t, r.cost, r.Events)
	t.line("floor of ingest: the log's own acknowledgement rate in the same run (the projection cannot apply faster); freshness = publish of a group until the projection applied it")
	if len(r.sizes) > 0 {
		t.section(fmt.Sprintf("reads by room size: /messages dir=b limit=%d over NATS; ratio = scrollback / the floor's scan of the same room's events", b.cfg.Limit),
			"metric", "scrollback", "floor", "ratio", "goal", "result")
		for _, s := range r.sizes {
			t.latRow(fmt.Sprintf("%d-event room plain p99, 1 client", s.Size), s.Plain.Lat.Pct(99), s.Floor.Lat.Pct(99), goalP99Ratio)
			t.latRow(fmt.Sprintf("%d-event room lazy+bundles p99, 1 client", s.Size), s.Lazy.Lat.Pct(99), s.Floor.Lat.Pct(99), goalLazyFloorP99Ratio)
			t.latRow(fmt.Sprintf("%d-event room plain p50, 1 client", s.Size), s.Plain.Lat.Pct(50), s.Floor.Lat.Pct(50), 0)
			t.thrRow(fmt.Sprintf("%d-event room plain throughput, %d clients (req/s)", s.Size, s.Plain.Thr.Clients), s.Plain.Thr.PerSec(), s.Floor.Thr.PerSec(), 0)
		}
		t.line("goals: p99 at most %gx the floor's at every room size, %gx with lazy-loaded members and bundled aggregations (issue 7)", goalP99Ratio, goalLazyFloorP99Ratio)
	}
}
