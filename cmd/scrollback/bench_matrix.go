package main

// Phase 5 of the reads scenario: the read matrix and the Dendrite
// comparison.
//
// The matrix reads the benchmark room over NATS in every shape a client
// asks for: dir=b and dir=f, limits 10, 50 and 100, a filter (types and
// not_senders, both applied before the limit), and lazy-loaded members.
// Each shape is measured next to the floor's scan of the same events in
// the same direction with the same limit (compareFor: in turns, latency
// from one closed-loop client, throughput from --clients), so every row
// is a ratio to its own floor. Goals (DESIGN.md, issue 7): p99 at most 3x
// the floor's; 6x with lazy-loaded members.
//
// The Dendrite comparison reads a room of 10,000 events over HTTP,
// /messages dir=b limit=50, as Dendrite 0.13.8 was measured on the same
// work: p50 12 ms and p99 21 ms with one client, 123 req/s with 16
// clients. Goals: 10x better at p99, 20x the throughput.

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/scrollback/scrollback/bus"
)

// Dendrite 0.13.8's figures for /messages limit=50 on a 10k-event room,
// and for ingest through its client API, with the goals of issue 7.
const (
	dendriteRoomEvents = 10_000
	dendriteP50        = 12 * time.Millisecond
	dendriteP99        = 21 * time.Millisecond
	dendriteThroughput = 123.0 // req/s, 16 clients
	dendriteIngest     = 45.0  // events/s through the client API
	goalDendriteP99    = 10.0  // times better
	goalDendriteThr    = 20.0  // times the throughput
	dendriteLimit      = 50
)

// matrixRow is one shape of the read matrix and its floor, measured in
// turns.
type matrixRow struct {
	Label      string
	Goal       float64 // p99 / floor p99 at most
	Floor, Svc loadPair
}

// dendriteResult is the HTTP read of the 10k-event room and its floor.
type dendriteResult struct {
	Floor, Svc loadPair
	Load       time.Duration
}

// embeddedSUT is a sut for a service the caller owns and closes.
func (b *bench) embeddedSUT(m *Main) (*sut, error) {
	s := &sut{hc: newBenchHTTPClient(4), db: m.Store.DB(), subjects: bus.Subjects{Prefix: m.Config.NATS.SubjectPrefix}, stream: m.Config.NATS.Stream,
		dataDir: m.Config.DataDir, httpBase: "http://" + m.HTTPAddr,
		connect: func(name string) (*nats.Conn, error) { return bus.ConnectInProcess(m.NATSServer, name) }}
	var err error
	if s.nc, err = s.connect("bench-client"); err != nil {
		return nil, err
	}
	s.req = &bus.Requester{NC: s.nc, Timeout: 30 * time.Second}
	// The sampler looks at the service through m; Close leaves m open.
	s.m = m
	s.notOwned = true
	if s.js, err = jetstreamOf(s.nc); err != nil {
		s.Close()
		return nil, err
	}
	if last, err := s.lastSeq(context.Background()); err == nil {
		s.published.Store(last)
	}
	b.register(s)
	return s, nil
}

// publishMsgs publishes msgs to the service in atomic batches (without
// their Nats-Msg-Id: one duplicate would reject a whole batch) and waits
// until they are applied. It returns the last sequence and the time.
func (b *bench) publishMsgs(ctx context.Context, s *sut, roomID string, msgs []*nats.Msg) (uint64, time.Duration, error) {
	start := time.Now()
	var last uint64
	p, closeP, err := newPublisher(s.connect, "bench-publisher", publishModeBatch, maxAtomicBatch, 4, func(a pubAck) { last = max(last, a.Last) })
	if err != nil {
		return 0, 0, err
	}
	defer closeP()
	i := 0
	if _, err := p.run(ctx, func() *nats.Msg {
		if i == len(msgs) {
			return nil
		}
		m := &nats.Msg{Subject: msgs[i].Subject, Data: msgs[i].Data}
		i++
		return m
	}); err != nil {
		return 0, 0, err
	}
	s.notePublished(last)
	err = s.waitApplied(ctx, last, func(yield func(string, uint64) bool) { yield(roomID, last) })
	return last, time.Since(start), err
}

// matrixPhases runs the read matrix on room and the Dendrite comparison
// on a room of its own, in the service s; readerToken is the HTTP token of
// the rooms' reader.
func (b *bench) matrixPhases(ctx context.Context, s *sut, room *benchRoom, readerToken string) error {
	c := b.cfg
	r := b.res.reads
	b.printf("\n== read matrix: NATS /messages of the %d-event room by direction, limit, filter and lazy loading, each next to the floor's scan of the same events (%v phases) ==\n",
		room.Len(), c.MatrixDuration)
	subject := s.subjects.APIRoom(room.ID, "messages")
	starts := map[string]readTarget{}
	for _, dir := range []string{"b", "f"} {
		t, err := collectStartPoints(ctx, s.req, subject, room.Reader(), room.Len(), dir, 100)
		if err != nil {
			return err
		}
		starts[dir] = t
	}
	b.printf("start points: %d for dir=b, %d for dir=f (every %d events, with at least 100 events beyond)\n", len(starts["b"].tokens), len(starts["f"].tokens), tokenPage)
	fl, err := openFloorFrom(ctx, filepath.Join(b.dir, "matrix-floor.db"), s.connect, s.floorReplyConns(), slices.Values(room.raw))
	if err != nil {
		return err
	}
	defer fl.Close()
	type shape struct {
		label  string
		dir    string
		limit  int
		filter map[string]any
		goal   float64
	}
	shapes := []shape{}
	for _, dir := range []string{"b", "f"} {
		for _, limit := range []int{10, 50, 100} {
			shapes = append(shapes, shape{fmt.Sprintf("dir=%s limit=%d", dir, limit), dir, limit, nil, goalP99Ratio})
		}
	}
	shapes = append(shapes,
		shape{"dir=b limit=50 filter types+not_senders", "b", 50, map[string]any{"types": []any{"m.room.message"}, "not_senders": []any{benchUser(2)}}, goalP99Ratio},
		shape{"dir=b limit=50 lazy_load_members", "b", 50, map[string]any{"lazy_load_members": true}, goalLazyFloorP99Ratio})
	for _, sh := range shapes {
		t := starts[sh.dir]
		extra := map[string]any{"dir": sh.dir}
		if sh.filter != nil {
			extra["filter"] = sh.filter
		}
		reqs, err := t.requests(room.Reader(), sh.limit, extra)
		if err != nil {
			return err
		}
		pairs, err := b.compareFor(ctx, c.MatrixDuration,
			namedTarget{"floor " + sh.label, natsTarget(s.nc, floorScanSubject, t.floorRequestsDir(sh.dir, sh.limit))},
			namedTarget{"nats " + sh.label, natsTarget(s.nc, subject, reqs)})
		if err != nil {
			return err
		}
		r.matrix = append(r.matrix, matrixRow{Label: sh.label, Goal: sh.goal, Floor: pairs[0], Svc: pairs[1]})
	}
	fl.Close()
	return b.dendritePhase(ctx, s, readerToken)
}

// dendritePhase loads a room of dendriteRoomEvents events and reads it over
// HTTP next to the floor's HTTP scan.
func (b *bench) dendritePhase(ctx context.Context, s *sut, readerToken string) error {
	c := b.cfg
	r := b.res.reads
	if s.httpBase == "" {
		b.printf("\n(no HTTP bridge (--target-http): no Dendrite comparison)\n")
		return nil
	}
	id := "!dendrite:" + benchServerName
	if s.External() {
		id = "!dendrite-" + strings.ToLower(rand.Text()[:8]) + ":" + benchServerName
	}
	room := newBenchRoom(id, dendriteRoomEvents)
	b.printf("\n== Dendrite comparison: HTTP GET /messages dir=b limit=%d on a %d-event room, against Dendrite 0.13.8 (p50 %v, p99 %v with 1 client, %.0f req/s with 16 clients) ==\n",
		dendriteLimit, dendriteRoomEvents, dendriteP50, dendriteP99, dendriteThroughput)
	_, took, err := b.publishMsgs(ctx, s, room.ID, room.Msgs(s.subjects))
	if err != nil {
		return err
	}
	res := &dendriteResult{Load: took}
	b.printf("room loaded: %d events in atomic batches, applied in %v\n", room.Len(), round(took))
	subject := s.subjects.APIRoom(room.ID, "messages")
	t, err := collectStartPoints(ctx, s.req, subject, room.Reader(), room.Len(), "b", dendriteLimit)
	if err != nil {
		return err
	}
	fl, err := openFloorFrom(ctx, filepath.Join(b.dir, "dendrite-floor.db"), s.connect, s.floorReplyConns(), slices.Values(room.raw))
	if err != nil {
		return err
	}
	defer fl.Close()
	urls := make([]string, len(t.tokens))
	floorURLs := make([]string, len(t.tokens))
	base := s.httpBase + "/_matrix/client/v3/rooms/" + url.PathEscape(room.ID) + fmt.Sprintf("/messages?dir=b&limit=%d", dendriteLimit)
	for i, tok := range t.tokens {
		urls[i] = base
		if tok != "" {
			urls[i] += "&from=" + url.QueryEscape(tok)
		}
		floorURLs[i] = fl.URL(t.depths[i], dendriteLimit)
	}
	hc := newBenchHTTPClient(c.Clients)
	defer hc.CloseIdleConnections()
	bearer := "Bearer " + readerToken
	pairs, err := b.compare(ctx,
		namedTarget{"dendrite room: floor http scan", httpTarget(hc, floorURLs, bearer)},
		namedTarget{"dendrite room: http /messages", httpTarget(hc, urls, bearer)})
	if err != nil {
		return err
	}
	res.Floor, res.Svc = pairs[0], pairs[1]
	r.dendrite = res
	return nil
}

// collectStartPoints pages once through a room of n events in direction
// dir, limit tokenPage, and keeps every start point with at least min
// events beyond it, with its position for the floor: for dir=b the number
// of events at and below it (the floor scans down from there), for dir=f
// the position of the first event after it (the floor scans up). The first
// start point is "no from". It checks that the pages hold the whole room.
func collectStartPoints(ctx context.Context, req *bus.Requester, subject, reader string, n int, dir string, least int) (readTarget, error) {
	t := readTarget{tokens: []string{""}, depths: []int{n}}
	if dir == "f" {
		t.depths[0] = 1
	}
	seen := 0
	from := ""
	for {
		q := map[string]any{"user_id": reader, "dir": dir, "limit": tokenPage}
		if from != "" {
			q["from"] = from
		}
		data, err := req.Request(ctx, subject, q)
		if err != nil {
			return t, fmt.Errorf("bench: collect start points: %w", err)
		}
		page, err := bus.DecodeMap(data, bus.DefaultLimits)
		if err != nil {
			return t, fmt.Errorf("bench: collect start points: %w", err)
		}
		chunk, _ := page["chunk"].([]any)
		seen += len(chunk)
		end, ok := page["end"].(string)
		if !ok || len(chunk) == 0 {
			break
		}
		if n-seen >= least {
			t.tokens = append(t.tokens, end)
			if dir == "f" {
				t.depths = append(t.depths, seen+1)
			} else {
				t.depths = append(t.depths, n-seen)
			}
		}
		from = end
	}
	if seen != n {
		return t, fmt.Errorf("bench: paging through the room (dir=%s) returned %d events, want %d", dir, seen, n)
	}
	return t, nil
}

// floorRequestsDir is the floor's NATS request for each start point, in
// direction dir.
func (t readTarget) floorRequestsDir(dir string, limit int) [][]byte {
	if dir != "f" {
		return t.floorRequests(limit)
	}
	reqs := make([][]byte, len(t.depths))
	for i, d := range t.depths {
		reqs[i] = floorForward(d, limit)
	}
	return reqs
}

// externalReads is the reads scenario against an external service: the
// publish, ingest and catch-up phases need the service in this process;
// the read matrix and the Dendrite comparison do not. The bench loads its
// own rooms (with new IDs) and answers sb.hs.whoami for its reader's HTTP
// token.
func (b *bench) externalReads(ctx context.Context) error {
	c := b.cfg
	r := b.res.reads
	r.external = true
	s, err := b.openSUT(ctx, "reads")
	if err != nil {
		return err
	}
	defer s.Close()
	hs, err := startBenchHS(s, c.HSDelay)
	if err != nil {
		return err
	}
	defer hs.Close()
	room := newBenchRoom("!reads-"+strings.ToLower(rand.Text()[:8])+":"+benchServerName, c.Events)
	token := "bench-" + rand.Text()
	hs.SetToken(token, room.Reader())
	b.printf("\n== reads (external): the benchmark room, %d events, published in atomic batches ==\n", room.Len())
	_, took, err := b.publishMsgs(ctx, s, room.ID, room.Msgs(s.subjects))
	if err != nil {
		return err
	}
	b.printf("room loaded: %d events, applied in %v\n", room.Len(), round(took))
	return b.matrixPhases(ctx, s, room, token)
}

// matrixSummary is the read matrix's and the Dendrite comparison's part of
// the summary.
func (b *bench) matrixSummary(t summaryTable) {
	r := b.res.reads
	if len(r.matrix) > 0 {
		t.section("read matrix: NATS /messages of the benchmark room; ratio = scrollback / the floor's scan of the same events in the same direction and limit", "metric", "scrollback", "floor", "ratio", "goal", "result")
		for _, m := range r.matrix {
			t.latRow(m.Label+" p50, 1 client", m.Svc.Lat.Pct(50), m.Floor.Lat.Pct(50), 0)
			t.latRow(m.Label+" p99, 1 client", m.Svc.Lat.Pct(99), m.Floor.Lat.Pct(99), m.Goal)
			t.thrRow(fmt.Sprintf("%s throughput, %d clients (req/s)", m.Label, m.Svc.Thr.Clients), m.Svc.Thr.PerSec(), m.Floor.Thr.PerSec(), 0)
		}
		t.line("goals: p99 at most %gx the floor's, %gx with lazy-loaded members (DESIGN.md); the filter is applied before the limit, so its page reads more events than the floor's", goalP99Ratio, goalLazyFloorP99Ratio)
	}
	if d := r.dendrite; d != nil {
		t.section(fmt.Sprintf("Dendrite 0.13.8 comparison: HTTP GET /messages dir=b limit=%d on a %d-event room; ratio = scrollback / Dendrite", dendriteLimit, dendriteRoomEvents),
			"metric", "scrollback", "Dendrite", "ratio", "goal", "result")
		t.latRow("HTTP /messages p50, 1 client", d.Svc.Lat.Pct(50), dendriteP50, 0)
		t.latRow("HTTP /messages p99, 1 client", d.Svc.Lat.Pct(99), dendriteP99, 1/goalDendriteP99)
		t.thrRow(fmt.Sprintf("HTTP /messages throughput, %d clients (req/s)", d.Svc.Thr.Clients), d.Svc.Thr.PerSec(), dendriteThroughput, goalDendriteThr)
		if !r.external && r.live.N > 0 {
			t.thrRow("ingest (events/s): scrollback's log, async publishes, SyncAlways; Dendrite's client API", r.live.PerSec(), dendriteIngest, 0)
		}
		t.latRow("floor: HTTP scan p99, 1 client", d.Floor.Lat.Pct(99), dendriteP99, 0)
		t.line("scrollback is %.1fx faster than Dendrite at p99 (goal %gx) and has %.1fx its throughput (goal %gx); Dendrite's figures are published ones from another machine, not measured in this run",
			float64(dendriteP99)/float64(d.Svc.Lat.Pct(99)), goalDendriteP99, d.Svc.Thr.PerSec()/dendriteThroughput, goalDendriteThr)
	}
}
