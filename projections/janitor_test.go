package projections_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// richPurgeLog is a deterministic log of two rooms: "rich" has forks,
// backfilled history, state, local and remote senders, threads, edits and
// redactions; it gets two purge_history commands (the second raising the
// floor, with delete_local_events). "gone", with threads, gets a forced
// purge_room.
func richPurgeLog(tb testing.TB) []commands.LogEntry {
	tb.Helper()
	rng := rand.New(rand.NewPCG(7, 7))
	r := testenv.NewRoom("rich", "test")
	evs := r.Setup("@alice:test", "@remote:other.org", "@bob:test")
	nSetup := len(evs)
	var plain []string
	for i := range 600 {
		sender := []string{"@alice:test", "@remote:other.org", "@bob:test", "@carol:other.org"}[rng.IntN(4)]
		var ev testenv.Event
		switch x := rng.IntN(20); {
		case x == 0 && len(plain) > 0:
			ev = r.Next("m.room.redaction", sender, nil, map[string]any{"redacts": plain[rng.IntN(len(plain))]})
		case x < 3 && len(plain) > 0:
			ev = r.Next("m.room.message", sender, nil, map[string]any{"body": "t", "m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": plain[rng.IntN(len(plain))]}})
		case x < 5 && len(plain) > 0:
			ev = r.Next("m.room.message", sender, nil, map[string]any{"body": "e", "m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": plain[rng.IntN(len(plain))]}})
		case x < 6:
			ev = r.Next("m.room.topic", "@alice:test", testenv.S(""), map[string]any{"topic": fmt.Sprint(i)})
		case x < 7:
			// A fork: two events on the same parent, then one naming both.
			a := r.Msg(sender, fmt.Sprint("fork a ", i))
			r.StartAt(a["depth"].(int64), a["prev_events"].([]string)...)
			b := r.Msg("@remote:other.org", fmt.Sprint("fork b ", i))
			r.StartAt(b["depth"].(int64)+1, a.ID(), b.ID())
			evs = append(evs, a, b)
			ev = r.Msg(sender, fmt.Sprint("merge ", i))
		default:
			ev = r.Msg(sender, fmt.Sprint("message ", i))
			plain = append(plain, ev.ID())
		}
		evs = append(evs, ev)
	}
	// Backfilled history below the room's start, and an outlier.
	bf := testenv.NewRoom("rich", "test")
	bf.StartAt(1)
	for i := range 20 {
		ev := bf.Msg("@remote:other.org", fmt.Sprint("old ", i))
		ev["event_id"] = fmt.Sprintf("$old.%d", i)
		ev["backfilled"] = true
		evs = append(evs, ev)
	}
	out := r.Msg("@remote:other.org", "outlier")
	out["outlier"] = true
	evs = append(evs, out)
	evs = withCopies(evs, nSetup)

	g := testenv.NewRoom("gone", "test")
	gevs := g.Setup("@alice:test")
	for i := range 300 {
		if i%10 == 9 { // relations, whose marks purge_room drops too
			gevs = append(gevs, g.Next("m.room.message", "@remote:other.org", nil, map[string]any{"body": "t", "m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": gevs[len(gevs)-1].ID()}}))
			continue
		}
		gevs = append(gevs, g.Msg("@remote:other.org", fmt.Sprint(i)))
	}

	var log []commands.LogEntry
	seq := uint64(1)
	add := func(roomID, kind string, v map[string]any) {
		log = append(log, entry(tb, seq, roomID, kind, v))
		seq++
	}
	for _, ev := range append(evs, gevs...) {
		add(ev["room_id"].(string), commands.KindEvent, ev)
	}
	depth := func(i int) int64 { return evs[i]["depth"].(int64) }
	add(r.ID, commands.KindCmd, map[string]any{"id": "p1", "action": commands.ActionPurgeHistory, "room_id": r.ID, "params": map[string]any{"token": fmt.Sprintf("t%d-0", depth(300))}})
	add(g.ID, commands.KindCmd, map[string]any{"id": "pr", "action": commands.ActionPurgeRoom, "room_id": g.ID, "params": map[string]any{"force": true}})
	add(r.ID, commands.KindCmd, map[string]any{"id": "p2", "action": commands.ActionPurgeHistory, "room_id": r.ID,
		"params": map[string]any{"token": fmt.Sprintf("t%d-0", depth(450)), "delete_local_events": true}})
	return log
}

// withCopies adds to a room's events (the first n its setup, then the
// main loop's 600 events of richPurgeLog and the rest) more messages of
// some of them: outlier copies of a remote message and of a topic below
// the first purge's cut-off, which then join the timeline, and, at the
// end, duplicates of that message and of a local message the second
// purge deletes (live, and as an outlier). The purges delete their rows
// but the topic's, which stays as an outlier with its extra message.
func withCopies(evs []testenv.Event, n int) []testenv.Event {
	find := func(from, to int, ok func(testenv.Event) bool) testenv.Event {
		for _, ev := range evs[from:to] {
			if ok(ev) {
				return ev
			}
		}
		panic("richPurgeLog: no event to copy")
	}
	plain := func(sender string) func(testenv.Event) bool {
		return func(ev testenv.Event) bool {
			_, rel := ev["content"].(map[string]any)["m.relates_to"]
			return ev["type"] == "m.room.message" && ev["sender"] == sender && !rel
		}
	}
	remote := find(n, n+300, plain("@remote:other.org"))
	topic := find(n, n+300, func(ev testenv.Event) bool { return ev["type"] == "m.room.topic" })
	local := find(n+300, n+450, plain("@alice:test"))
	out := append([]testenv.Event{}, evs[:n]...)
	out = append(out, copyOf(remote, true), copyOf(topic, true))
	out = append(out, evs[n:]...)
	return append(out, copyOf(remote, false), copyOf(local, false), copyOf(local, true))
}

// dumpBuckets is every key and value of every bucket, in key order.
func dumpBuckets(tb testing.TB, s *projections.Store) string {
	tb.Helper()
	var b strings.Builder
	err := s.DB().View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, bk *bolt.Bucket) error {
			return bk.ForEach(func(k, v []byte) error {
				fmt.Fprintf(&b, "%s %x %x\n", name, k, v)
				return nil
			})
		})
	})
	if err != nil {
		tb.Fatal(err)
	}
	return b.String()
}

// TestJanitor_BatchSizesAgree purges a rich room and retires another,
// applying the commands one after the other and draining the janitor in
// batches of several sizes (1 exercises a resumption after every row),
// first without deleting index entries ahead of the rows (unindex.go),
// then with windows of several sizes, filled in one step or in steps of
// a few rows: every bucket ends byte for byte the same, and the file is
// consistent.
func TestJanitor_BatchSizesAgree(t *testing.T) {
	log := richPurgeLog(t)
	var want string
	windows := []int{0, 1 << 20, 1 << 20, 10, 100, 1, 1 << 20, 10}
	fills := []int{1 << 20, 1 << 20, 1 << 20, 1 << 20, 1 << 20, 1 << 20, 3, 4}
	for i, batch := range []int{projections.JanitorBatch, projections.JanitorBatch, 1, 7, 64, 64, 64, 7} {
		projections.SetUnindexWindow(t, windows[i])
		projections.SetUnindexFill(t, fills[i])
		s := openWithServer(t)
		s.DB().NoSync = true // a test of contents, not of durability
		for _, e := range log {
			out, err := s.ApplyBatch(0, []commands.LogEntry{e})
			if err != nil {
				t.Fatal(err)
			}
			if out[0].Result != projections.OutcomeApplied && out[0].Result != projections.OutcomeDuplicate {
				t.Fatalf("seq %d: %s %s", e.Seq, out[0].Result, out[0].Reason)
			}
			if e.Kind == commands.KindCmd {
				for {
					did, err := s.JanitorStep(batch)
					if err != nil {
						t.Fatal(err)
					}
					if !did {
						break
					}
				}
			}
		}
		got := dumpBuckets(t, s)
		if p := os.Getenv("SCROLLBACK_JANITOR_DUMP"); p != "" && batch == projections.JanitorBatch {
			if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if !strings.Contains(got, "erasein ") || !strings.Contains(got, "outlierrows ") || !strings.Contains(got, "extraseqs ") {
			t.Fatalf("batch %d: the purge queued no erasure, kept no outlier or no extra message", batch)
		}
		if err := s.CheckExtraSeqs(); err != nil {
			t.Fatalf("batch %d: %v", batch, err)
		}
		if want == "" {
			want = got
			continue
		}
		if got != want {
			a, b := strings.Split(want, "\n"), strings.Split(got, "\n")
			for j := range min(len(a), len(b)) {
				if a[j] != b[j] {
					t.Fatalf("batch %d, window %d differs from batch %d without a window at line %d:\n%s\n%s", batch, windows[i], projections.JanitorBatch, j, a[j], b[j])
				}
			}
			t.Fatalf("batch %d, window %d: %d lines, want %d", batch, windows[i], len(b), len(a))
		}
	}
	if !bytes.Contains([]byte(want), []byte("backext ")) {
		t.Log("no backward extremity left (the cut-offs' parents are purged)")
	}
}

// remoteMessages applies a room's set-up and n messages of a remote user,
// and returns the room, its cut-th message and the next sequence.
func remoteMessages(t *testing.T, s *projections.Store, name string, n, cut int) (*testenv.Room, testenv.Event, uint64) {
	t.Helper()
	r := testenv.NewRoom(name, "test")
	evs := r.Setup("@alice:test")
	var at testenv.Event
	for i := range n {
		m := r.Msg("@remote:other.org", fmt.Sprint(i))
		evs = append(evs, m)
		if i == cut {
			at = m
		}
	}
	return r, at, apply(t, s, 1, evs...)
}

// runJanitor runs s.RunJanitor until the test ends or stop is called.
func runJanitor(t *testing.T, s *projections.Store) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		s.RunJanitor(ctx, time.Hour, slog.New(slog.DiscardHandler))
	}()
	stop = func() { cancel(); <-stopped }
	t.Cleanup(stop)
	return stop
}

// TestRunJanitor_WaitsInBeforeJanitor: RunJanitor asks BeforeJanitor
// before each step and takes none while it waits there (the service
// holds it back there while reads queue), then goes on.
func TestRunJanitor_WaitsInBeforeJanitor(t *testing.T) {
	s := openWithServer(t)
	r, cut, seq := remoteMessages(t, s, "held", 50, 40)
	applyCmd(t, s, seq, r.ID, "p1", commands.ActionPurgeHistory, purgeAt(cut))
	asked := make(chan struct{}, 1)
	gate := make(chan struct{})
	s.BeforeJanitor = func(ctx context.Context) {
		select {
		case asked <- struct{}{}:
		default:
		}
		select {
		case <-gate:
		case <-ctx.Done():
		}
	}
	runJanitor(t, s) // its first step has the purge to do
	select {
	case <-asked:
	case <-time.After(10 * time.Second):
		t.Fatal("the janitor never asked BeforeJanitor")
	}
	// Something not happening cannot be waited for: a janitor that did
	// not wait in BeforeJanitor (or asked it on the side) is through the
	// 40 rows well within this.
	time.Sleep(50 * time.Millisecond)
	if done, err := s.PurgeDone(r.ID); err != nil || done {
		t.Fatalf("the janitor removed the rows while BeforeJanitor held it back (done %v, %v)", done, err)
	}
	close(gate)
	testenv.WaitFor(t, 10*time.Second, "the janitor to remove the rows", func() bool {
		done, err := s.PurgeDone(r.ID)
		return err == nil && done
	})
}

// TestRunJanitor_FillStepsAreNoTransactions: the steps that fill the
// unindex window read the room in a read-only transaction; RunJanitor
// reports no transaction of bbolt's writer for them (ObserveJanitor: the
// janitor_transactions_total and janitor_held_seconds_total metrics), as
// it holds none. Only the window's deletions, the outlier sweep and the
// row transactions are the writer's.
func TestRunJanitor_FillStepsAreNoTransactions(t *testing.T) {
	projections.SetUnindexWindow(t, 1<<20)
	projections.SetUnindexFill(t, 1) // a fill step per row
	s := openWithServer(t)
	r, cut, seq := remoteMessages(t, s, "filled", 60, 50)
	stats := make(chan projections.JanitorStats, 1000)
	s.ObserveJanitor = func(j projections.JanitorStats) { stats <- j }
	stop := runJanitor(t, s)
	applyCmd(t, s, seq, r.ID, "p1", commands.ActionPurgeHistory, purgeAt(cut))
	s.WakeJanitor()
	testenv.WaitFor(t, 10*time.Second, "the janitor to remove the rows", func() bool {
		done, err := s.PurgeDone(r.ID)
		return err == nil && done
	})
	stop()
	close(stats)
	other, rows := 0, 0
	for j := range stats {
		if j.Rows == 0 {
			other++
		}
		rows += j.Rows
	}
	// About 50 rows below the cut-off: one transaction of their entries,
	// the outlier sweep's, the rows'; not one per fill step.
	if rows < 50 || other > 10 {
		t.Fatalf("RunJanitor reported %d transactions without rows (%d rows): the window's fill steps count as the writer's", other, rows)
	}
}
