package main

import (
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// gappyRoom: a room whose full history (60 events) the federation worker
// knows, of which the local log has events 6-10 (a gap at the start) and
// 41-60 (a gap in the middle).
func gappyRoom(t *testing.T, m *Main, name string) (*testenv.Room, []testenv.Event) {
	t.Helper()
	r := testenv.NewRoom(name, "test")
	full := r.Setup(alice)
	for len(full) < 60 {
		full = append(full, r.Msg("@remote:other.org", name))
	}
	seqs := m.publisher().Publish(t, append(append([]testenv.Event{}, full[5:10]...), full[40:]...)...)
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	return r, full
}

func backfillMain(t *testing.T, timeout time.Duration) *Main {
	return startMain(t, func(c *Config) { c.Backfill.Timeout = commands.DurationOf(timeout) })
}

func TestBackfill_ForegroundFillsTheGap(t *testing.T) {
	m := backfillMain(t, 2*time.Second)
	fed := testenv.NewFederation(t, m.NC, m.publisher().Subjects)
	r, full := gappyRoom(t, m, "gappy")
	fed.Serve(r.ID, full...)
	// 20 local events for a limit of 30: a short page, so the read
	// backfills in the foreground and answers with the filled page.
	p, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 30})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := chunkIDs(p), rev(ids(full[30:])); !same(got, want) {
		t.Fatalf("filled page:\n got  %v\n want %v", got, want)
	}
	reqs := fed.Requests()
	if len(reqs) == 0 || reqs[0]["room_id"] != r.ID {
		t.Fatalf("requests = %v", reqs)
	}
	ev := reqs[0]["event_ids"].([]any)
	if len(ev) == 0 || len(ev) > 5 || ev[0] != full[39].ID() {
		t.Fatalf("asked about %v, want the extremity %s first", ev, full[39].ID())
	}
	if n, _ := commands.AsInt(reqs[0]["limit"]); n != 100 {
		t.Fatalf("limit = %v", reqs[0]["limit"])
	}
	// Everything is there now, the start gap included, each event once
	// (events already known in the reply were dropped), in order.
	p, _ = m.messages(t, r.ID, map[string]any{"admin": true, "dir": "f", "limit": 100})
	if got := chunkIDs(p); !same(got, ids(full)) {
		t.Fatalf("whole room after backfill:\n got  %v\n want %v", got, ids(full))
	}
}

// TestBackfill_AnOutlierJoinsTheTimeline: a room joined over federation
// holds the join's parent as an outlier, published with the contract's
// Nats-Msg-Id (its event ID). A read before the join backfills from that
// outlier, and its backfilled copy joins the timeline: the service's own
// append must not be taken for the outlier's publish within JetStream's
// duplicate window (it was, and the event was lost for good). Found by a
// helper's integration walkthrough.
func TestBackfill_AnOutlierJoinsTheTimeline(t *testing.T) {
	m := backfillMain(t, 2*time.Second)
	fed := testenv.NewFederation(t, m.NC, m.publisher().Subjects)
	r := testenv.NewRoom("joined", "test")
	full := r.Setup(alice)
	for len(full) < 30 {
		full = append(full, r.Msg("@remote:other.org", "before the join"))
	}
	parent := testenv.Event{}
	maps.Copy(parent, full[19])
	parent["outlier"] = true
	seqs := m.publisher().Publish(t, append([]testenv.Event{parent}, full[20:]...)...)
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	fed.Serve(r.ID, full...)
	p, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 30})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := chunkIDs(p), rev(ids(full)); !same(got, want) {
		t.Fatalf("page after the backfill:\n got  %v\n want %v", got, want)
	}
}

func TestBackfill_NeverHangsAndBacksOff(t *testing.T) {
	t.Run("no federation worker", func(t *testing.T) {
		m := backfillMain(t, 2*time.Second)
		r, full := gappyRoom(t, m, "alone")
		start := time.Now()
		p, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 30})
		if err != nil || !same(chunkIDs(p), localPage(full)) {
			t.Fatalf("local page: %v %v", chunkIDs(p), err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("a read without responders took %s", d)
		}
		// MSC3871: the gaps the read could not fill, after full[40] and
		// full[5] (their parents are missing), with tokens around them.
		gaps, _ := p["org.matrix.msc3871.gaps"].([]any)
		if len(gaps) != 2 {
			t.Fatalf("gaps = %v", gaps)
		}
		g := gaps[0].(map[string]any)
		if g["event_id"] != full[40].ID() || g["prev_pagination_token"] == g["next_pagination_token"] {
			t.Fatalf("first gap = %v", g)
		}
		if gaps[1].(map[string]any)["event_id"] != full[5].ID() {
			t.Fatalf("second gap = %v", gaps[1])
		}
	})
	t.Run("silent worker: the local page after the timeout, then back-off", func(t *testing.T) {
		m := backfillMain(t, 300*time.Millisecond)
		fed := testenv.NewFederation(t, m.NC, m.publisher().Subjects)
		fed.SetSilent(true)
		r, full := gappyRoom(t, m, "silent")
		p, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 30})
		if err != nil || !same(chunkIDs(p), localPage(full)) {
			t.Fatalf("local page: %v %v", chunkIDs(p), err)
		}
		n := len(fed.Requests())
		start := time.Now()
		if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 30}); err != nil {
			t.Fatal(err)
		}
		if len(fed.Requests()) != n {
			t.Fatal("an extremity in back-off was asked again")
		}
		if d := time.Since(start); d > 250*time.Millisecond {
			t.Fatalf("the read after a failure took %s (back-off should make it local)", d)
		}
	})
	t.Run("error replies back off too", func(t *testing.T) {
		m := backfillMain(t, 2*time.Second)
		fed := testenv.NewFederation(t, m.NC, m.publisher().Subjects)
		fed.SetFail(true)
		r, _ := gappyRoom(t, m, "failing")
		for range 3 {
			if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 30}); err != nil {
				t.Fatal(err)
			}
		}
		if n := len(fed.Requests()); n != 1 {
			t.Fatalf("%d requests, want 1 (then back-off)", n)
		}
	})
}

// TestBackfill_BackoffIsTheConfiguredDelay: backfill.backoff is the first
// retry delay of the points whose backfill failed, doubling with each
// further failure (Synapse's is a fixed 1 h, SYNAPSE.md 11). On the
// service's clock: a read before the delay is over asks the federation
// workers nothing, a read at its end asks again.
func TestBackfill_BackoffIsTheConfiguredDelay(t *testing.T) {
	clock := testenv.NewClock(time.UnixMilli(1_900_000_000_000))
	m := startMainAt(t, clock.Now, func(c *Config) {
		c.Backfill.Timeout = commands.DurationOf(2 * time.Second)
		c.Backfill.Backoff = commands.DurationOf(10 * time.Minute)
	})
	fed := testenv.NewFederation(t, m.NC, m.publisher().Subjects)
	fed.SetFail(true)
	r, _ := gappyRoom(t, m, "backoff")
	// A short page: each read backfills in the foreground, and its
	// failure is recorded before it answers.
	read := func() int {
		t.Helper()
		if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 30}); err != nil {
			t.Fatal(err)
		}
		return len(fed.Requests())
	}
	if n := read(); n != 1 {
		t.Fatalf("the first read sent %d backfill requests, want 1", n)
	}
	for i, delay := range []time.Duration{10 * time.Minute, 20 * time.Minute} {
		clock.Advance(delay - time.Millisecond)
		if n := read(); n != i+1 {
			t.Fatalf("a read 1 ms before the end of a %v back-off: %d requests in all, want %d", delay, n, i+1)
		}
		clock.Advance(time.Millisecond)
		if n := read(); n != i+2 {
			t.Fatalf("a read at the end of a %v back-off: %d requests in all, want %d", delay, n, i+2)
		}
	}
}

func TestBackfill_ConcurrentReadsShareOneRequest(t *testing.T) {
	m := backfillMain(t, 3*time.Second)
	fed := testenv.NewFederation(t, m.NC, m.publisher().Subjects)
	fed.SetDelay(300 * time.Millisecond)
	r, full := gappyRoom(t, m, "shared")
	fed.Serve(r.ID, full...)
	var wg sync.WaitGroup
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 30}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := len(fed.Requests()); n != 1 {
		t.Fatalf("%d backfill requests for 5 concurrent reads, want 1", n)
	}
}

func TestBackfill_BackgroundAndNotBelowPurge(t *testing.T) {
	t.Run("background", func(t *testing.T) {
		m := backfillMain(t, 2*time.Second)
		fed := testenv.NewFederation(t, m.NC, m.publisher().Subjects)
		r, full := gappyRoom(t, m, "bg")
		fed.Serve(r.ID, full...)
		// A full, contiguous page answers at once and backfills behind it.
		p, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 10})
		if err != nil || !same(chunkIDs(p), rev(ids(full[50:]))) {
			t.Fatalf("page: %v %v", chunkIDs(p), err)
		}
		testenv.WaitFor(t, 10*time.Second, "the background backfill", func() bool {
			p, _ := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "f", "limit": 100})
			return len(chunkIDs(p)) == len(full)
		})
	})
	t.Run("no backfill below a purge cut-off", func(t *testing.T) {
		m := backfillMain(t, 2*time.Second)
		fed := testenv.NewFederation(t, m.NC, m.publisher().Subjects)
		r, full := gappyRoom(t, m, "purged")
		fed.Serve(r.ID, full...)
		seq := m.publisher().Command(t, map[string]any{"id": "cut", "action": "purge_history", "room_id": r.ID,
			"params": map[string]any{"token": "t45-0"}})
		p, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 30, "wait_for": seq})
		if err != nil || !same(chunkIDs(p), rev(ids(full[44:]))) {
			t.Fatalf("page: %v %v", chunkIDs(p), err)
		}
		if n := len(fed.Requests()); n != 0 {
			t.Fatalf("%d backfill requests below the purge cut-off", n)
		}
	})
	t.Run("a purged parent named from above the cut-off is asked for once", func(t *testing.T) {
		// A merge names its parents at any depth: a kept event above the
		// cut-off names a purged one far below it, which becomes a
		// backward extremity at the merge's depth (as in a rebuild from
		// the erased log, where nothing tells its depth). Found by a
		// helper's review: every read near the cut-off asked for it, and
		// what came back was dropped below the cut-off.
		m := backfillMain(t, 2*time.Second)
		fed := testenv.NewFederation(t, m.NC, m.publisher().Subjects)
		r := testenv.NewRoom("merge", "test")
		evs := r.Setup(alice)
		for len(evs) < 30 { // depths 5..30
			evs = append(evs, r.Msg("@remote:other.org", fmt.Sprint(len(evs))))
		}
		old := evs[9] // depth 10, remote: the purge deletes it
		r.StartAt(31, evs[29].ID(), old.ID())
		evs = append(evs, r.Msg("@remote:other.org", "merge"))
		for range 5 {
			evs = append(evs, r.Msg("@remote:other.org", "after"))
		}
		fed.Serve(r.ID, evs...)
		seqs := m.publisher().Publish(t, evs...)
		if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
			t.Fatal(err)
		}
		seq := m.publisher().Command(t, map[string]any{"id": "cut20", "action": "purge_history", "room_id": r.ID,
			"params": map[string]any{"token": "t20-0"}})
		if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seq}); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, 20*time.Second, "the purge to complete", func() bool {
			task, err := m.Store.Task("cut20")
			return err == nil && task != nil && task.Status == "complete"
		})
		// Its depth is known only once it comes back: one request, and
		// then its copy, dropped below the cut-off, ends it as a
		// backward extremity (the service appends a backfilled event
		// under its own message ID, so JetStream does not take the copy
		// for the purged message).
		for range 3 {
			if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 50}); err != nil {
				t.Fatal(err)
			}
		}
		if reqs := fed.Requests(); len(reqs) != 1 {
			t.Fatalf("%d backfill requests for the purged %s, want 1: %v", len(reqs), old.ID(), reqs)
		}
		if d := extremity(t, m, r.ID, old.ID()); d != 0 {
			t.Fatalf("the purged parent, back from below the cut-off, is still a backward extremity at depth %d", d)
		}
	})
}

// extremity is the depth of the room's backward extremity id (0: none).
func extremity(t *testing.T, m *Main, roomID, id string) int64 {
	t.Helper()
	var d int64
	if err := m.Store.View(roomID, func(v *projections.RoomView) error {
		d = v.Extremities(true)[id]
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return d
}

// localPage is what the gappy room holds locally, newest first.
func localPage(full []testenv.Event) []string {
	return rev(ids(append(append([]testenv.Event{}, full[5:10]...), full[40:]...)))
}

func rev(s []string) []string {
	out := make([]string, len(s))
	for i := range s {
		out[len(s)-1-i] = s[i]
	}
	return out
}

func same(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestBackfill_APointTheReplyDidNotReachIsAskedAgain: a reply that walks
// down from one gap and runs out of its limit before the other gap's
// point leaves that point free to be asked by the next read near it; only
// a point whose own event came back and still left it a gap is backed off
// (found by a helper's review of the back-off).
func TestBackfill_APointTheReplyDidNotReachIsAskedAgain(t *testing.T) {
	m := backfillMain(t, 2*time.Second)
	fed := testenv.NewFederation(t, m.NC, m.publisher().Subjects)
	r := testenv.NewRoom("reach", "test")
	full := r.Setup(alice)
	for len(full) < 420 { // full[i] has depth i+1
		full = append(full, r.Msg("@remote:other.org", "x"))
	}
	fed.Serve(r.ID, full...)
	local := append(append([]testenv.Event{}, full[5:10]...), full[400:]...)
	seqs := m.publisher().Publish(t, local...)
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 30}); err != nil {
		t.Fatal(err)
	}
	reqs := fed.Requests()
	if len(reqs) != 1 || len(reqs[0]["event_ids"].([]any)) != 2 {
		t.Fatalf("first read's requests: %v", reqs)
	}
	if extremity(t, m, r.ID, full[4].ID()) == 0 {
		t.Fatal("the start gap's point should still be a backward extremity")
	}
	from := fmt.Sprintf("t11-%d", seqs[4]+1)
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 30, "from": from}); err != nil {
		t.Fatal(err)
	}
	asked := false
	for _, req := range fed.Requests()[1:] {
		for _, id := range req["event_ids"].([]any) {
			asked = asked || id == full[4].ID()
		}
	}
	if !asked {
		t.Fatalf("a read at the start gap did not ask for its point %s (requests: %d)", full[4].ID(), len(fed.Requests()))
	}
}

// TestBackfill_FromAStreamTokenBeforeTheLocalHistory: a room joined over
// federation (the local log starts at full[100], whose parents are
// missing) that has moved on by 100 events since. A client paginates
// backwards from a live token just before the first local event (sync's
// prev_batch of the timeline that held the join). Synapse's curr_topo for
// an s token is MIN(topological_ordering) of the events at or after it
// (SYNAPSE.md 1.4 step 3), i.e. the join's depth, which is right at the
// backward extremity: it backfills and returns the older history.
func TestBackfill_FromAStreamTokenBeforeTheLocalHistory(t *testing.T) {
	m := backfillMain(t, 2*time.Second)
	fed := testenv.NewFederation(t, m.NC, m.publisher().Subjects)
	r := testenv.NewRoom("joinedlate", "test")
	full := r.Setup(alice)
	for len(full) < 200 {
		full = append(full, r.Msg("@remote:other.org", fmt.Sprint(len(full))))
	}
	fed.Serve(r.ID, full...)
	other := testenv.NewRoom("other", "test")
	m.publisher().Publish(t, other.Setup(alice)...)
	seqs := m.publisher().Publish(t, full[100:]...)
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	from := fmt.Sprintf("s%d_0_0_0_0_0_0_0_0_0_0_0_0", seqs[0]-1)
	p, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 10, "from": from})
	if err != nil {
		t.Fatal(err)
	}
	_, hasEnd := p["end"]
	asked := len(fed.Requests())
	if got, want := chunkIDs(p), rev(ids(full[90:100])); !same(got, want) {
		t.Fatalf("page from %s: %d events (end present: %v), %d backfill requests; want the 10 events before the join\n got  %v\n want %v",
			from, len(got), hasEnd, asked, got, want)
	}
}

// TestBackfill_AReadWaitsThenAsksForItsOwnGap: backfills of a room run one
// at a time, each for its own depth, as Synapse's _room_backfill
// linearizer runs them: a read that finds another's backfill under way
// waits for it, then fills its own gap, where it took the other's result
// and its page skipped its gap.
func TestBackfill_AReadWaitsThenAsksForItsOwnGap(t *testing.T) {
	m := backfillMain(t, 5*time.Second)
	fed := testenv.NewFederation(t, m.NC, m.publisher().Subjects)
	fed.SetDelay(800 * time.Millisecond)
	r := testenv.NewRoom("twodepths", "test")
	full := r.Setup(alice)
	for len(full) < 300 { // full[i] has depth i+1
		full = append(full, r.Msg("@remote:other.org", fmt.Sprint(len(full))))
	}
	fed.Serve(r.ID, full...)
	local := append(append(append([]testenv.Event{}, full[5:10]...), full[100:280]...), full[285:]...)
	seqs := m.publisher().Publish(t, local...)
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Near the start: a short page, a backfill at depth 10.
		from := fmt.Sprintf("t%d-%d", full[9]["depth"], seqs[4])
		if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 30, "from": from}); err != nil {
			t.Error(err)
		}
	}()
	testenv.WaitFor(t, 10*time.Second, "the first read's backfill to be under way", func() bool { return len(fed.Requests()) >= 1 })
	// Near the top: 30 events with a gap (full[280:285] missing).
	p, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 30})
	if err != nil {
		t.Fatal(err)
	}
	<-done
	if got, want := chunkIDs(p), rev(ids(full[270:])); !same(got, want) {
		t.Fatalf("the top page still has the gap full[280:285] (backfill requests: %v)\n got  %v\n want %v", fed.Requests(), got, want)
	}
}

// TestBackfill_LimitZeroBackfillsInTheBackground: a backwards read with
// limit 0 returns no event, which get_messages does not count as a short
// page (0 < 0 is false), so Synapse runs maybe_backfill in the background
// with limit 0 (synapse/handlers/pagination.py get_messages): it asks for
// the points whose depth is at or above the read's, as current_depth -
// 2*0 > depth rules out only the deeper-down ones
// (synapse/handlers/federation.py _maybe_backfill_inner). scrollback
// skipped the backfill for limit 0.
func TestBackfill_LimitZeroBackfillsInTheBackground(t *testing.T) {
	m := backfillMain(t, 2*time.Second)
	fed := testenv.NewFederation(t, m.NC, m.publisher().Subjects)
	r, full := gappyRoom(t, m, "limitzero")
	fed.Serve(r.ID, full...)
	// At full[40], the first event above the middle gap: its missing
	// parent full[39] is a backfill point at its depth.
	from := fmt.Sprintf("t%d-%d", full[40]["depth"], 1<<40)
	p, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 0, "from": from})
	if err != nil || len(chunkIDs(p)) != 0 {
		t.Fatalf("limit 0: %v %v, want an empty chunk", chunkIDs(p), err)
	}
	testenv.WaitFor(t, 10*time.Second, "a background backfill request", func() bool { return len(fed.Requests()) >= 1 })
	if ev := fed.Requests()[0]["event_ids"].([]any); len(ev) == 0 || ev[0] != full[39].ID() {
		t.Fatalf("asked about %v, want the extremity %s first", ev, full[39].ID())
	}
}
