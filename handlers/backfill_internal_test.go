package handlers

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// TestBackfill_BackoffSaturates: the back-off doubles with each failure,
// up to 2^8 times the configured base, and never overflows into the past:
// with a base of years (the config takes up to 292 years) the ninth
// failure made a negative duration, and the point was tried again on
// every read.
func TestBackfill_BackoffSaturates(t *testing.T) {
	now := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	for _, base := range []time.Duration{time.Hour, 2 * 365 * 24 * time.Hour, 292 * 365 * 24 * time.Hour} {
		b := &Backfiller{Backoff: base, Now: func() time.Time { return now }}
		b.init()
		last := now
		for attempt := 1; attempt <= 12; attempt++ {
			b.failed("!r:test", []point{{id: "$x"}})
			until := b.failures["!r:test"]["$x"].until
			if !until.After(now) || until.Before(last) {
				t.Fatalf("base %v, failure %d: retry at %v, before the one before (%v) or not after now", base, attempt, until, last)
			}
			last = until
		}
		if base == time.Hour && last.Sub(now) != 256*time.Hour {
			t.Errorf("an hour's back-off after 12 failures: %v, want 256h", last.Sub(now))
		}
	}
}

// TestBackfill_AppendWaitsForItsNewestEvent: a backfill reply may repeat
// events the log holds; JetStream acks such a repeat (within its
// duplicate window) with its first sequence, far below the new events'.
// append must report the greatest sequence, or the read that waits for it
// reads its page again before the new events are applied (its gap then
// shows, or partly).
func TestBackfill_AppendWaitsForItsNewestEvent(t *testing.T) {
	ctx := context.Background()
	log, s := testLog(t)
	r := testenv.NewRoom("dups", "test")
	evs := r.Setup("@alice:test")
	old, nw := evs[0], evs[1]
	data, err := bus.Encode(map[string]any(old))
	if err != nil {
		t.Fatal(err)
	}
	first, err := log.Append(ctx, s.Room(r.ID, "event"), old.ID(), data)
	if err != nil {
		t.Fatal(err)
	}
	b := &Backfiller{Log: log, Subjects: s}
	// The new event, then the repeat, as a reply lists them newest first
	// down to what the room holds, decoded as they come off the wire.
	wire := func(e testenv.Event) any {
		data, err := bus.Encode(map[string]any(e))
		if err != nil {
			t.Fatal(err)
		}
		m, err := bus.DecodeMap(data, bus.DefaultLimits)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	appended, last, err := b.append(ctx, r.ID, []any{wire(nw), wire(old)})
	if err != nil || appended != 2 {
		t.Fatalf("append = %d, %v", appended, err)
	}
	if last < first+1 {
		t.Fatalf("append reports sequence %d; the new event is at %d or after (the repeat acks with %d)", last, first+1, first)
	}
}

// TestBackfill_PointsNearMaxDepth (found by a review helper): a read at
// a depth within 100 of the int64 maximum (an event's depth may be up to 2^63-1, Synapse's
// MAX_DEPTH, and a client's token may name any depth) must still find the
// backward extremities near it. depth+backfillLimit overflowed to a
// negative number, so every point looked too deep and none was asked.
func TestBackfill_PointsNearMaxDepth(t *testing.T) {
	now := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	b := &Backfiller{Now: func() time.Time { return now }}
	b.init()
	const maxDepth = 1<<63 - 1
	all := []point{{id: "$deep", depth: maxDepth - 5}}
	for _, depth := range []int64{maxDepth, maxDepth - 50} {
		got := b.points(all, "!r:test", depth, 10)
		if len(got) != 1 || got[0].id != "$deep" {
			t.Errorf("read at depth %d: points %v, want [$deep]", depth, got)
		}
	}
}

// TestBackfill_DistinctIDsAreNotDuplicates (found by a review helper):
// two events of a reply with distinct event IDs are both appended. Their message IDs went into a
// NATS header, which trims white space and turns CR and LF into spaces:
// "$a:x" and "$a:x " (or "$a:x\n") had the same Nats-Msg-Id, and
// JetStream dropped the second as a duplicate within its window, so that
// event never reached the log (and its gap stayed, backed off).
func TestBackfill_DistinctIDsAreNotDuplicates(t *testing.T) {
	ctx := context.Background()
	log, s := testLog(t)
	r := testenv.NewRoom("ids", "test")
	b := &Backfiller{Log: log, Subjects: s}
	var reply []any
	for _, id := range []string{"$a:x", "$a:x ", "$a:x\n", "$b:x\ny", "$b:x y"} {
		ev := r.Msg("@alice:test", id)
		ev["event_id"] = id
		data, err := bus.Encode(map[string]any(ev))
		if err != nil {
			t.Fatal(err)
		}
		m, err := bus.DecodeMap(data, bus.DefaultLimits)
		if err != nil {
			t.Fatal(err)
		}
		reply = append(reply, m)
	}
	appended, _, err := b.append(ctx, r.ID, reply)
	if err != nil || appended != len(reply) {
		t.Fatalf("append = %d, %v", appended, err)
	}
	info, err := log.JS.Stream(ctx, "SCROLLBACK")
	if err != nil {
		t.Fatal(err)
	}
	st, err := info.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.State.Msgs != uint64(len(reply)) {
		t.Fatalf("the log holds %d messages, want %d: JetStream took distinct events for duplicates", st.State.Msgs, len(reply))
	}
}

// testLog is a room log on an embedded NATS server of the test's own.
func testLog(t *testing.T) (*bus.Log, bus.Subjects) {
	t.Helper()
	s := bus.Subjects{Prefix: "sb"}
	return testenv.NewNATS(t).Stream(t, s, "SCROLLBACK"), s
}

// TestBackfill_FailuresForgetPointsNoLongerThere: the back-off of a
// backward extremity is forgotten once the room no longer has that
// extremity (its event came, by a later backfill or from the homeserver;
// a purge took it below the floor), as Synapse clears a failed pull's
// attempts when the event is persisted. The back-off map is keyed by
// room and event ID from federation: kept for good, it grew with every
// extremity that had ever failed once, for as long as the process ran.
func TestBackfill_FailuresForgetPointsNoLongerThere(t *testing.T) {
	now := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	b := &Backfiller{Backoff: time.Millisecond, Now: func() time.Time { return now }}
	b.init()
	const room = "!r:test"
	// A room read again and again, each time with a new gap that fails
	// once and is then filled by other means.
	for i := range 10_000 {
		p := point{id: fmt.Sprintf("$gap%d:test", i), depth: 50}
		b.mu.Lock()
		got := b.points([]point{p}, room, 60, 10)
		b.mu.Unlock()
		if len(got) != 1 {
			t.Fatalf("round %d: points %v, want [%s]", i, got, p.id)
		}
		b.failed(room, got)
		now = now.Add(time.Second) // past the back-off
	}
	// The room's gaps are all filled now.
	b.mu.Lock()
	b.points(nil, room, 60, 10)
	n := 0
	for _, m := range b.failures {
		n += len(m)
	}
	b.mu.Unlock()
	if n > 1 {
		t.Errorf("the back-off map holds %d entries for a room with no backward extremity left, want at most 1", n)
	}
	// A point still there keeps its back-off.
	p := point{id: "$still:test", depth: 50}
	b.failed(room, []point{p})
	b.mu.Lock()
	got := b.points([]point{p}, room, 60, 10)
	b.mu.Unlock()
	if len(got) != 0 {
		t.Errorf("a point in back-off was asked again: %v", got)
	}
}

// TestBackfill_CloseEndsTheBackgroundRuns: a background backfill belongs
// to its Backfiller, which Close stops and waits for: it ran on its own
// context for up to its timeout, past the service's stop, against a store
// and connections the stop then closed. No background run starts after
// Close.
func TestBackfill_CloseEndsTheBackgroundRuns(t *testing.T) {
	n := testenv.NewNATS(t)
	s, store := bus.Subjects{Prefix: "sb"}, testenv.NewStore(t)
	r, evs := gapRoom("bgclose", 3)
	for i, ev := range evs {
		data, _ := bus.Encode(map[string]any(ev))
		e := s.Decode(uint64(i+1), s.Room(r.ID, commands.KindEvent), data, 1_800_000_000_000)
		if _, err := store.ApplyBatch(projections.PartitionOf(bus.RoomKey(r.ID), store.Partitions()), []commands.LogEntry{e}); err != nil {
			t.Fatal(err)
		}
	}
	// A federation worker that takes the request and never answers.
	asked := make(chan struct{}, 8)
	sub, err := n.NC.Subscribe(s.Backfill(), func(*nats.Msg) { asked <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	b := &Backfiller{Req: &bus.Requester{NC: n.NC, Timeout: time.Hour}, Store: store, Subjects: s,
		Timeout: time.Hour, Now: time.Now, Logger: slog.New(slog.DiscardHandler)}
	b.Background(r.ID, 25, 10)
	select {
	case <-asked:
	case <-time.After(10 * time.Second):
		t.Fatal("the background backfill never asked")
	}
	closed := make(chan struct{})
	go func() { b.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not end the background backfill, which waits an hour")
	}
	if len(b.bg) != 0 {
		t.Fatalf("%d background backfills still hold a slot after Close", len(b.bg))
	}
	b.Background(r.ID, 25, 10)
	if len(b.bg) != 0 {
		t.Fatal("a background backfill started after Close")
	}
}

// TestBackfill_FreshBackoffOutlivesAnOlderListOfPoints: a read lists the
// room's extremities before it takes the Backfiller's lock, and a
// backfill that ends in between may back off an extremity the list does
// not hold yet (it came with the backfill's own events). Forgetting the
// back-off of every extremity missing from the list dropped that fresh
// one, and the next read asked about it again at once.
func TestBackfill_FreshBackoffOutlivesAnOlderListOfPoints(t *testing.T) {
	now := time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)
	b := &Backfiller{Backoff: time.Minute, Now: func() time.Time { return now }}
	b.init()
	const room = "!r:test"
	fresh := point{id: "$new:test", depth: 40}
	b.failed(room, []point{fresh})
	b.mu.Lock()
	b.points([]point{{id: "$old:test", depth: 50}}, room, 60, 10) // listed before fresh was there
	got := b.points([]point{fresh}, room, 60, 10)
	b.mu.Unlock()
	if len(got) != 0 {
		t.Fatalf("points %v: a back-off a minute long was forgotten at once", got)
	}
}
