package projections_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

type runningProjector struct {
	*projections.Projector
	cancel context.CancelFunc
	done   chan error
}

// roomKeyOfSubject is the <rk> token of sb.room.<rk>.<kind>.
func roomKeyOfSubject(subject string) string {
	_, rest, _ := cutN(subject, 2)
	rk, _, _ := cutN(rest, 1)
	return rk
}

func startProjector(tb testing.TB, s *projections.Store, log *bus.Log) *runningProjector {
	tb.Helper()
	return runProjector(tb, &projections.Projector{
		Store: s, Source: log, Decode: subjects.Decode,
		RoomKeyOf: roomKeyOfSubject,
		MaxBatch:  64,
	})
}

// runProjector runs p until the test ends.
func runProjector(tb testing.TB, p *projections.Projector) *runningProjector {
	tb.Helper()
	if err := p.Init(); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rp := &runningProjector{Projector: p, cancel: cancel, done: make(chan error, 1)}
	go func() { rp.done <- p.Run(ctx) }()
	testenv.WaitFor(tb, 10*time.Second, "projector start", p.Started)
	tb.Cleanup(rp.stop)
	return rp
}

func (r *runningProjector) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	<-r.done
	r.cancel = nil
}

// cutN splits s after its n-th '.'.
func cutN(s string, n int) (head, tail string, ok bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '.' {
			n--
			if n == 0 {
				return s[:i], s[i+1:], true
			}
		}
	}
	return s, "", false
}

func TestProjector_ManyRoomsInOrderAcrossRestarts(t *testing.T) {
	n := testenv.NewNATS(t)
	log := n.Stream(t, subjects, "SCROLLBACK")
	pub := &testenv.Publisher{JS: n.JS, Subjects: subjects}
	path := filepath.Join(t.TempDir(), "p.db")
	s := testenv.OpenStore(t, path)
	p := startProjector(t, s, log)

	const rooms, perRoom = 12, 60
	var want [rooms][]string
	var all []testenv.Event
	rs := make([]*testenv.Room, rooms)
	for i := range rs {
		rs[i] = testenv.NewRoom(fmt.Sprintf("room%d", i), "test")
		for _, ev := range rs[i].Setup("@a:test") {
			all = append(all, ev)
			want[i] = append(want[i], ev.ID())
		}
	}
	for j := 0; j < perRoom; j++ {
		for i, r := range rs {
			ev := r.Msg("@a:test", fmt.Sprint(j))
			all = append(all, ev)
			want[i] = append(want[i], ev.ID())
		}
	}
	half := len(all) / 2
	seqs := pub.Publish(t, all[:half]...)
	testenv.WaitApplied(t, p, seqs[len(seqs)-1])

	// Stop, publish the rest while nothing consumes, redeliver from an
	// older position by reopening, and check nothing is applied twice.
	p.stop()
	seqs = pub.Publish(t, all[half:]...)
	p = startProjector(t, s, log)
	testenv.WaitApplied(t, p, seqs[len(seqs)-1])
	for i, r := range rs {
		sameStrings(t, r.ID, timelineIDs(t, s, r.ID), want[i])
	}
	// The same events published again (a homeserver retrying past the
	// duplicate window) change nothing.
	seqs = pub.Publish(t, all[:10]...)
	testenv.WaitApplied(t, p, seqs[len(seqs)-1])
	for i, r := range rs {
		sameStrings(t, r.ID+" after re-publish", timelineIDs(t, s, r.ID), want[i])
	}
}

func TestProjector_WaitForOtherRoomsSequence(t *testing.T) {
	n := testenv.NewNATS(t)
	log := n.Stream(t, subjects, "SCROLLBACK")
	pub := &testenv.Publisher{JS: n.JS, Subjects: subjects}
	s := testenv.NewStore(t)
	p := startProjector(t, s, log)
	a, b := testenv.NewRoom("a", "test"), testenv.NewRoom("b", "test")
	pub.Publish(t, a.Create("@a:test"))
	seqs := pub.Publish(t, b.Create("@a:test"), b.Msg("@a:test", "x"))
	// Room a's partition has nothing at those sequences, yet a wait for
	// them must end: every message of a's subjects up to them is applied.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.WaitFor(ctx, a.ID, seqs[1]); err != nil {
		t.Fatalf("WaitFor(a, %d): %v", seqs[1], err)
	}
	// A sequence past the end of the log waits for it.
	var wg sync.WaitGroup
	wg.Add(1)
	var werr error
	go func() {
		defer wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		werr = p.WaitFor(ctx, b.ID, seqs[1]+1)
	}()
	pub.Publish(t, b.Msg("@a:test", "y"))
	wg.Wait()
	if werr != nil {
		t.Fatalf("WaitFor a future sequence: %v", werr)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if err := p.WaitFor(short, b.ID, 1000); err == nil {
		t.Fatal("WaitFor a sequence never published returned nil")
	}
}

// TestProjector_LingerGathersLiveMessages: while the committer is busy
// with live traffic, messages that arrive one at a time in rooms of
// different partitions wait for each other and go in one group commit
// (Linger), commands too. Whoever begins to wait for the projection ends
// the wait at once, also when the message waited for is held behind its
// partition's waiting event, and while anyone waits nothing lingers.
// After a quiet spell, or for a lone room's stream, each event is
// committed at once. The linger is a minute, so a wait that should not
// have happened fails the test's WaitApplied.
func TestProjector_LingerGathersLiveMessages(t *testing.T) {
	t.Run("busy", func(t *testing.T) {
		// Every commit is recent enough, and enough partitions.
		projections.SetLingerBusy(t, time.Hour, 1)
		lp := startLingering(t)
		lp.applied(t, lp.purge(t, 0, "first"), []int{1})
		// One at a time, each acknowledged, as live traffic comes; a
		// command nobody waits for (a homeserver's forget) as well.
		lp.publish(t, 1)
		lp.waitLingering(t, 1)
		lp.publish(t, 2)
		lp.waitLingering(t, 2)
		seq := lp.purge(t, 3, "nobody-waits")
		lp.waitLingering(t, 3)
		lp.waitFor(t, 3, seq, []int{3})
	})
	t.Run("held behind its partition", func(t *testing.T) {
		projections.SetLingerBusy(t, time.Hour, 1)
		lp := startLingering(t)
		lp.applied(t, lp.publish(t, 0), []int{1})
		// A partition has one batch in flight: the command waits behind
		// the event, and the committer does not have it yet.
		lp.publish(t, 2)
		lp.waitLingering(t, 1)
		seq := lp.purge(t, 2, "same-partition")
		lp.waitFor(t, 2, seq, []int{1, 1})
	})
	t.Run("someone waits", func(t *testing.T) {
		projections.SetLingerBusy(t, time.Hour, 1)
		lp := startLingering(t)
		lp.applied(t, lp.publish(t, 0), []int{1})
		// A read waiting for a sequence not yet in the log.
		ctx, cancel := context.WithCancel(context.Background())
		waited := make(chan error, 1)
		go func() { waited <- lp.WaitFor(ctx, lp.rooms[0].ID, 1<<40) }()
		testenv.WaitFor(t, 10*time.Second, "the read to wait", func() bool { return lp.Waiting() == 1 })
		for _, room := range []int{1, 2, 3} {
			lp.applied(t, lp.publish(t, room), []int{1})
		}
		cancel()
		if err := <-waited; !errors.Is(err, context.Canceled) {
			t.Fatalf("WaitFor = %v, want context.Canceled", err)
		}
	})
	t.Run("idle", func(t *testing.T) {
		projections.SetLingerBusy(t, 0, 1) // no commit is recent enough
		lp := startLingering(t)
		lp.applied(t, lp.purge(t, 0, "first"), []int{1})
		for _, room := range []int{1, 2, 3} {
			lp.applied(t, lp.publish(t, room), []int{1})
		}
	})
	t.Run("lone stream", func(t *testing.T) {
		projections.SetLingerBusy(t, time.Hour, 2) // the default: two partitions
		lp := startLingering(t)
		for range 3 {
			lp.applied(t, lp.publish(t, 1), []int{1})
		}
	})
}

// lingering is a projector with a linger of a minute, four rooms of as
// many partitions (a partition has one batch in flight, so a room's next
// event could not join a group that holds its last one), and the
// messages of each group commit.
type lingering struct {
	*runningProjector
	pub   *testenv.Publisher
	rooms []*testenv.Room
	mu    sync.Mutex
	msgs  []int
}

func startLingering(t *testing.T) *lingering {
	n := testenv.NewNATS(t)
	log := n.Stream(t, subjects, "SCROLLBACK")
	s := testenv.NewStore(t)
	lp := &lingering{pub: &testenv.Publisher{JS: n.JS, Subjects: subjects}}
	used := map[int]bool{}
	for i := 0; len(lp.rooms) < 4; i++ {
		r := testenv.NewRoom(fmt.Sprintf("linger%d", i), "test")
		part := projections.PartitionOf(roomKeyOfSubject(subjects.Room(r.ID, "event")), s.Partitions())
		if !used[part] {
			used[part] = true
			lp.rooms = append(lp.rooms, r)
		}
	}
	lp.runningProjector = runProjector(t, &projections.Projector{
		Store: s, Source: log, Decode: subjects.Decode, RoomKeyOf: roomKeyOfSubject,
		Linger: time.Minute,
		ObserveCommit: func(c projections.CommitStats) {
			lp.mu.Lock()
			lp.msgs = append(lp.msgs, c.Messages)
			lp.mu.Unlock()
		},
	})
	return lp
}

func (lp *lingering) publish(t *testing.T, room int) uint64 {
	return lp.pub.Publish(t, lp.rooms[room].Msg("@a:test", "live"))[0]
}

func (lp *lingering) purge(t *testing.T, room int, id string) uint64 {
	return lp.pub.Command(t, map[string]any{"id": id, "action": commands.ActionPurgeHistory,
		"room_id": lp.rooms[room].ID, "params": map[string]any{"token": "t1-0"}})
}

// waitLingering waits until the committer lingers with a group of n
// messages.
func (lp *lingering) waitLingering(t *testing.T, n int) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, fmt.Sprintf("the committer to wait with %d messages", n),
		func() bool { return lp.Lingering() == n })
}

// waitFor waits for seq as the service's requests do (Projector.WaitFor),
// then checks the group commits as applied does.
func (lp *lingering) waitFor(t *testing.T, room int, seq uint64, want ...[]int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := lp.WaitFor(ctx, lp.rooms[room].ID, seq); err != nil {
		t.Fatalf("WaitFor(%d): %v", seq, err)
	}
	lp.commits(t, seq, want)
}

// applied waits for seq to be applied without waiting as the service's
// requests do (it polls), then checks the messages of each group commit
// since the last check against the ones allowed.
func (lp *lingering) applied(t *testing.T, seq uint64, want ...[]int) {
	t.Helper()
	testenv.WaitApplied(t, lp, seq)
	lp.commits(t, seq, want)
}

func (lp *lingering) commits(t *testing.T, seq uint64, want [][]int) {
	t.Helper()
	lp.mu.Lock()
	got := lp.msgs
	lp.msgs = nil
	lp.mu.Unlock()
	if !slices.ContainsFunc(want, func(w []int) bool { return slices.Equal(got, w) }) {
		t.Errorf("messages of each group commit up to seq %d = %v, want one of %v", seq, got, want)
	}
}

// TestProjector_ObserveCommit: every message is counted in exactly one
// group commit, every partition batch in one group, and each commit
// reports the pages it wrote and the writer's time.
func TestProjector_ObserveCommit(t *testing.T) {
	n := testenv.NewNATS(t)
	log := n.Stream(t, subjects, "SCROLLBACK")
	pub := &testenv.Publisher{JS: n.JS, Subjects: subjects}
	var all []testenv.Event
	for i := range 20 {
		r := testenv.NewRoom(fmt.Sprintf("room%d", i), "test")
		all = append(all, r.Setup("@a:test")...)
		for j := range 30 {
			all = append(all, r.Msg("@a:test", fmt.Sprint(j)))
		}
	}
	// A backlog, so that partitions have batches ready at once.
	seqs := pub.Publish(t, all...)

	var mu sync.Mutex
	var commits []projections.CommitStats
	batches := 0
	p := &projections.Projector{
		Store: testenv.NewStore(t), Source: log, Decode: subjects.Decode, RoomKeyOf: roomKeyOfSubject, MaxBatch: 16,
		Observe: func(int, []projections.Outcome, time.Duration) {
			mu.Lock()
			batches++
			mu.Unlock()
		},
		ObserveCommit: func(c projections.CommitStats) {
			mu.Lock()
			commits = append(commits, c)
			mu.Unlock()
		},
	}
	if err := p.Init(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	testenv.WaitFor(t, 10*time.Second, "projector start", p.Started)
	testenv.WaitApplied(t, p, seqs[len(seqs)-1])
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	mu.Lock()
	defer mu.Unlock()
	msgs, inGroups := 0, 0
	for i, c := range commits {
		msgs += c.Messages
		inGroups += c.Batches
		if c.Messages <= 0 || c.Batches <= 0 || c.Pages <= 0 || c.Duration <= 0 {
			t.Errorf("commit %d: %+v, want every field positive", i, c)
		}
	}
	if msgs != len(all) {
		t.Errorf("group commits counted %d messages, want the %d published", msgs, len(all))
	}
	if inGroups != batches {
		t.Errorf("group commits counted %d partition batches, Observe saw %d", inGroups, batches)
	}
}
