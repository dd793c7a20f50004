package projections

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
)

var testSubjects = bus.Subjects{Prefix: "sb"}

func openTestStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "p.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// roomEvents makes a room's first n events: its create event, then
// messages, every third a reaction to the one before.
func roomEvents(roomID string, n int) []map[string]any {
	var out []map[string]any
	prev := []any{}
	for i := range n {
		id := fmt.Sprintf("$%s.%d", strings.TrimPrefix(roomID, "!"), i)
		ev := map[string]any{"event_id": id, "room_id": roomID, "sender": "@a:test", "origin_server_ts": int64(i),
			"depth": int64(i + 1), "prev_events": prev, "type": "m.room.message", "content": map[string]any{"body": fmt.Sprint(i)}}
		switch {
		case i == 0:
			ev["type"], ev["state_key"], ev["content"] = "m.room.create", "", map[string]any{"creator": "@a:test"}
		case i%3 == 0:
			ev["type"], ev["content"] = "m.reaction", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": prev[0], "key": "x"}}
		}
		out = append(out, ev)
		prev = []any{id}
	}
	return out
}

func decodeAll(msgs []rawMsg) []commands.LogEntry {
	out := make([]commands.LogEntry, len(msgs))
	for i, m := range msgs {
		out[i] = testSubjects.Decode(m.seq, m.subject, m.data, m.ts)
	}
	return out
}

// interleave makes the log of n events in each of rooms rooms, an event
// of each room in turn, and returns each room's messages.
func interleave(t *testing.T, rooms, n int) [][]rawMsg {
	t.Helper()
	evs := make([][]map[string]any, rooms)
	for r := range evs {
		evs[r] = roomEvents(fmt.Sprintf("!r%d:test", r), n)
	}
	logs := make([][]rawMsg, rooms)
	seq := uint64(0)
	for i := range n {
		for r := range logs {
			data, err := bus.Encode(evs[r][i])
			if err != nil {
				t.Fatal(err)
			}
			seq++
			logs[r] = append(logs[r], rawMsg{seq: seq, subject: testSubjects.Room(evs[r][i]["room_id"].(string), commands.KindEvent), data: data, ts: 1_700_000_000_000 + int64(seq)})
		}
	}
	return logs
}

// TestApplyBatches_GroupAppliesAsAlone commits three partitions' batches
// in one transaction, one of them partly committed before (a
// redelivery), and checks that the outcomes, checkpoints and projection
// are those of the batches committed one at a time.
func TestApplyBatches_GroupAppliesAsAlone(t *testing.T) {
	logs := interleave(t, 6, 40) // rooms 2p and 2p+1 in partition p
	batch := func(p int) []commands.LogEntry {
		msgs := append(append([]rawMsg{}, logs[2*p]...), logs[2*p+1]...)
		slices.SortFunc(msgs, func(a, b rawMsg) int { return cmp.Compare(a.seq, b.seq) })
		return decodeAll(msgs)
	}
	group, alone := openTestStore(t), openTestStore(t)
	// Partition 2 committed its first ten messages before.
	for _, s := range []*Store{group, alone} {
		if _, err := s.ApplyBatch(2, batch(2)[:10]); err != nil {
			t.Fatal(err)
		}
	}
	bs := []*partBatch{prepareBatch(0, batch(0)), prepareBatch(1, batch(1)), prepareBatch(2, batch(2))}
	if _, err := group.applyBatches(bs); err != nil {
		t.Fatal(err)
	}
	for _, p := range []int{2, 0, 1} {
		want, err := alone.ApplyBatch(p, batch(p))
		if err != nil {
			t.Fatal(err)
		}
		got := bs[p].out
		if len(got) != len(want) {
			t.Fatalf("partition %d: %d outcomes, want %d", p, len(got), len(want))
		}
		for i := range want {
			if got[i].Seq != want[i].Seq || got[i].Result != want[i].Result {
				t.Errorf("partition %d seq %d: %s, alone %s", p, want[i].Seq, got[i].Result, want[i].Result)
			}
		}
	}
	for p, b := range bs {
		for i, o := range b.out {
			want := OutcomeApplied
			if p == 2 && i < 10 {
				want = OutcomeSkipped
			}
			if o.Result != want {
				t.Fatalf("partition %d seq %d: %s, want %s", p, o.Seq, o.Result, want)
			}
		}
	}
	cg, _ := group.Checkpoints()
	ca, _ := alone.Checkpoints()
	if fmt.Sprint(cg) != fmt.Sprint(ca) {
		t.Errorf("checkpoints %v, alone %v", cg, ca)
	}
	dg, _ := group.Digest(time.Now())
	da, _ := alone.Digest(time.Now())
	if diff := dg.Diff(da); len(diff) != 0 {
		t.Fatalf("group and alone differ: %v", diff)
	}
	if rg, ra := receivedKeys(t, group), receivedKeys(t, alone); len(rg) != 6*40 || fmt.Sprint(rg) != fmt.Sprint(ra) {
		t.Fatalf("received index: %d entries, alone %d, want %d alike", len(rg), len(ra), 6*40)
	}
	// The same group again changes nothing.
	if _, err := group.applyBatches(bs); err != nil {
		t.Fatal(err)
	}
	for _, b := range bs {
		for _, o := range b.out {
			if o.Result != OutcomeSkipped {
				t.Fatalf("partition %d seq %d applied twice: %s", b.part, o.Seq, o.Result)
			}
		}
	}
}

// receivedKeys lists the received index (received time and sequence of
// every live event).
func receivedKeys(t *testing.T, s *Store) []string {
	t.Helper()
	var keys []string
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bReceived).ForEach(func(k, _ []byte) error {
			keys = append(keys, fmt.Sprintf("%x", k))
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestProjector_PoisonInGroupCommit hands three partitions' batches to the
// committer at once, so that they share one transaction; one batch holds
// a message that fails to apply (bbolt refuses its event ID, a failure of
// no particular kind). The group fails; each batch is retried alone, so
// the other two commit as they are; the poisoned one is applied message
// by message, and only the poison message becomes a dead letter.
func TestProjector_PoisonInGroupCommit(t *testing.T) {
	logs := interleave(t, 3, 5)
	poison := logs[1][2].seq
	var mu sync.Mutex
	var warnings []string
	outcomes := map[int][]Outcome{}
	p := &Projector{
		Store: openTestStore(t),
		Decode: func(seq uint64, subject string, data []byte, ts int64) commands.LogEntry {
			e := testSubjects.Decode(seq, subject, data, ts)
			if seq == poison {
				e.Event.EventID = "$" + strings.Repeat("x", bolt.MaxKeySize)
			}
			return e
		},
		Logger: slog.New(handlerFunc(func(r slog.Record) {
			mu.Lock()
			defer mu.Unlock()
			warnings = append(warnings, r.Message)
		})),
		Observe: func(part int, out []Outcome, _ time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			outcomes[part] = append(outcomes[part], out...)
		},
	}
	if err := p.init(); err != nil {
		t.Fatal(err)
	}
	p.commits = make(chan *commitJob, len(p.parts))
	p.preparing = make(chan struct{}, 1)
	var wg sync.WaitGroup
	for part, msgs := range logs {
		wg.Go(func() { p.applyBatch(context.Background(), p.parts[part], msgs) })
	}
	commitWhenHandedOver(t, p, len(logs), &wg)

	for part, msgs := range logs {
		if len(outcomes[part]) != len(msgs) {
			t.Fatalf("partition %d: %d outcomes, want %d", part, len(outcomes[part]), len(msgs))
		}
		for _, o := range outcomes[part] {
			want := OutcomeApplied
			if o.Seq == poison {
				want = OutcomeDead
			}
			if o.Result != want {
				t.Errorf("partition %d seq %d: %s (%s), want %s", part, o.Seq, o.Result, o.Reason, want)
			}
		}
		if got := p.parts[part].applied.Load(); got != msgs[len(msgs)-1].seq {
			t.Errorf("partition %d applied up to %d, want %d", part, got, msgs[len(msgs)-1].seq)
		}
	}
	dead, err := p.Store.DeadLetters(10)
	if err != nil || len(dead) != 1 || dead[0].Seq != poison {
		t.Fatalf("dead letters %+v (%v), want only seq %d", dead, err, poison)
	}
	cps, _ := p.Store.Checkpoints()
	for part, msgs := range logs {
		if cps[part] != msgs[len(msgs)-1].seq {
			t.Errorf("checkpoint of partition %d = %d, want %d", part, cps[part], msgs[len(msgs)-1].seq)
		}
	}
	count := map[string]int{}
	for _, w := range warnings {
		count[w]++
	}
	if count["group commit failed; applying the partition's batch alone"] != 3 || count["batch failed; applying one by one"] != 1 {
		t.Fatalf("warnings %q: want each batch retried alone once and only the poisoned one applied one by one", warnings)
	}
}

// commitWhenHandedOver waits until n partitions have handed their batches
// to the committer (so that it sees them all at once), then runs it until
// the partitions' goroutines (wg) are done.
func commitWhenHandedOver(t *testing.T, p *Projector, n int, wg *sync.WaitGroup) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); len(p.commits) < n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the partitions did not hand their batches over")
		}
	}
	committed := make(chan struct{})
	go func() {
		defer close(committed)
		p.runCommitter()
	}()
	wg.Wait()
	close(p.commits)
	<-committed
}

// handlerFunc is a slog.Handler that hands each record to a function.
type handlerFunc func(slog.Record)

func (h handlerFunc) Enabled(context.Context, slog.Level) bool      { return true }
func (h handlerFunc) Handle(_ context.Context, r slog.Record) error { h(r); return nil }
func (h handlerFunc) WithAttrs([]slog.Attr) slog.Handler            { return h }
func (h handlerFunc) WithGroup(string) slog.Handler                 { return h }
