package projections_test

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
)

// memLog is a room log held in memory, to which Append adds: Consume
// delivers what it holds and waits for more until ctx ends.
type memLog struct {
	mu   sync.Mutex
	msgs []memMsg
	more chan struct{}
}

type memMsg struct {
	subject string
	data    []byte
}

func newMemLog(msgs []memMsg) *memLog { return &memLog{msgs: msgs, more: make(chan struct{}, 1)} }

// Append adds a message and returns its sequence.
func (l *memLog) Append(m memMsg) uint64 {
	l.mu.Lock()
	l.msgs = append(l.msgs, m)
	seq := uint64(len(l.msgs))
	l.mu.Unlock()
	select {
	case l.more <- struct{}{}:
	default:
	}
	return seq
}

func (l *memLog) Consume(ctx context.Context, from uint64, fn func(seq uint64, subject string, data []byte, ts int64, pending uint64)) error {
	for seq := max(from, 1); ; {
		l.mu.Lock()
		msgs := l.msgs
		l.mu.Unlock()
		for ; seq <= uint64(len(msgs)) && ctx.Err() == nil; seq++ {
			m := msgs[seq-1]
			fn(seq, m.subject, m.data, 1_700_000_000_000+int64(seq), uint64(len(msgs))-seq)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-l.more:
		}
	}
}

// runBenchProjector runs a projector of a new store on log until the
// benchmark ends.
func runBenchProjector(b *testing.B, log *memLog) *projections.Projector {
	b.Helper()
	s, err := projections.Open(filepath.Join(b.TempDir(), "p.db"), projections.Options{})
	if err != nil {
		b.Fatal(err)
	}
	p := &projections.Projector{
		Store: s, Source: log, Decode: subjects.Decode,
		RoomKeyOf: roomKeyOfSubject,
	}
	if err := p.Init(); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		<-done
		s.Close()
	})
	return p
}

// catchupLog is a log of n events in rooms rooms whose sizes follow
// Zipf's law (s=1), interleaved at random, each room a conversation of
// text messages with a reaction or a thread reply to a recent message now
// and then: the shape of `scrollback bench --scenario catchup`.
func catchupLog(tb testing.TB, rooms, n int) []memMsg {
	tb.Helper()
	rng := mrand.New(mrand.NewPCG(1, 2))
	cum := make([]float64, rooms)
	total := 0.0
	for k := range rooms {
		total += 1 / float64(k+1)
		cum[k] = total
	}
	made := make([]int, rooms)
	log := make([]memMsg, 0, n)
	for range n {
		x := rng.Float64() * total
		k := min(sort.SearchFloat64s(cum, x), rooms-1)
		roomID := fmt.Sprintf("!r%d:bench", k)
		i := made[k]
		made[k]++
		id := func(i int) string { return fmt.Sprintf("$r%d.%d", k, i) }
		prev := []string{}
		if i > 0 {
			prev = []string{id(i - 1)}
		}
		sender := fmt.Sprintf("@u%d:bench", rng.IntN(20))
		content := map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("message %d of room %d: the projector applies each room's log in order while readers page back", i, k)}
		switch x := rng.IntN(100); {
		case i > 0 && x < 12:
			content = map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": id(max(0, i-1-rng.IntN(8))), "key": "👍"}}
		case i > 0 && x < 17:
			content["m.relates_to"] = map[string]any{"rel_type": "m.thread", "event_id": id(max(0, i-1-rng.IntN(8)))}
		}
		typ := "m.room.message"
		if _, ok := content["msgtype"]; !ok {
			typ = "m.reaction"
		}
		data, err := bus.Encode(map[string]any{
			"event_id": id(i), "room_id": roomID, "type": typ, "sender": sender,
			"origin_server_ts": int64(1_700_000_000_000 + i), "depth": int64(i + 1), "prev_events": prev,
			"content": content, "hashes": map[string]any{"sha256": "aGFzaA"},
			"signatures": map[string]any{"bench": map[string]any{"ed25519:a": "c2ln"}},
		})
		if err != nil {
			tb.Fatal(err)
		}
		log = append(log, memMsg{subject: subjects.Room(roomID, commands.KindEvent), data: data})
	}
	return log
}

// BenchmarkProjectorCatchup measures a projection catching up a backlog
// of 200,000 events in 2,000 rooms from an in-memory log (no NATS), with
// fsync, and reports events/s.
//
//	go test -run '^$' -bench ProjectorCatchup -benchtime 3x ./projections
func BenchmarkProjectorCatchup(b *testing.B) {
	msgs := catchupLog(b, 2000, 200_000)
	var total time.Duration
	for b.Loop() {
		start := time.Now()
		p := runBenchProjector(b, newMemLog(msgs))
		if err := p.WaitAll(context.Background(), uint64(len(msgs))); err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
	}
	b.ReportMetric(float64(len(msgs))*float64(b.N)/total.Seconds(), "events/s")
}

// BenchmarkProjectorLive measures the time from a live event's arrival
// in the log to its commit (a whole transaction with its fsync): the
// latency of the projection when it is not behind.
//
//	go test -run '^$' -bench ProjectorLive ./projections
func BenchmarkProjectorLive(b *testing.B) {
	log := newMemLog(nil)
	p := runBenchProjector(b, log)
	i := 0
	for b.Loop() {
		room := fmt.Sprintf("!r%d:bench", i%50)
		data, err := bus.Encode(map[string]any{"event_id": fmt.Sprintf("$e%d", i), "room_id": room, "type": "m.room.message", "sender": "@u:bench",
			"origin_server_ts": int64(i), "depth": int64(i/50 + 1), "prev_events": []string{}, "content": map[string]any{"body": "live"}})
		if err != nil {
			b.Fatal(err)
		}
		seq := log.Append(memMsg{subject: subjects.Room(room, commands.KindEvent), data: data})
		if err := p.WaitFor(context.Background(), room, seq); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkApplyGroup measures bbolt's one writer on its own: one group
// commit of 16,000 events of the catch-up's shape (the projector's
// MaxGroup) into a store that grows to 200,000 events and then starts
// again, and reports the time per event (building the rows included).
// The catch-up's speed is bounded by this time (BENCHMARKS.md), and it
// varies less on a busy machine than the catch-up's, which also waits
// for its other goroutines.
//
//	go test -run '^$' -bench ApplyGroup -benchtime 40x ./projections
func BenchmarkApplyGroup(b *testing.B) {
	const group = 16_000
	msgs := catchupLog(b, 2000, 200_000)
	entries := make([]commands.LogEntry, len(msgs))
	for i, m := range msgs {
		entries[i] = subjects.Decode(uint64(i+1), m.subject, m.data, 1_700_000_000_000+int64(i))
	}
	for _, wb := range []bool{true, false} {
		b.Run(fmt.Sprintf("writeback=%v", wb), func(b *testing.B) {
			projections.SetEarlyWriteback(b, wb)
			var s *projections.Store
			pos := len(entries)
			b.Cleanup(func() {
				if s != nil {
					s.Close()
				}
			})
			for b.Loop() {
				if pos+group > len(entries) {
					b.StopTimer()
					if s != nil {
						s.Close()
					}
					var err error
					if s, err = projections.Open(filepath.Join(b.TempDir(), "g.db"), projections.Options{}); err != nil {
						b.Fatal(err)
					}
					pos = 0
					b.StartTimer()
				}
				if _, err := s.ApplyBatch(0, entries[pos:pos+group]); err != nil {
					b.Fatal(err)
				}
				pos += group
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*group), "ns/event")
		})
	}
}
