package handlers_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// applyRoom applies a room's events in batches of 1000, like the
// projector, at log sequences 1, 2, ..., and returns the stream tokens
// of the events at for which at(index, depth) holds.
func applyRoom(b *testing.B, s *projections.Store, roomID string, evs []testenv.Event, at func(i int, depth int64) bool) []string {
	b.Helper()
	part := projections.PartitionOf(bus.RoomKey(roomID), s.Partitions())
	var batch []commands.LogEntry
	var toks []string
	for i, ev := range evs {
		data, _ := bus.Encode(map[string]any(ev))
		seq := uint64(i + 1)
		batch = append(batch, subjects.Decode(seq, subjects.Room(roomID, commands.KindEvent), data, 1_800_000_000_000))
		if d, _ := ev["depth"].(int64); at(i, d) {
			toks = append(toks, fmt.Sprintf("t%d-%d", d, seq))
		}
		if len(batch) == 1000 || i == len(evs)-1 {
			if _, err := s.ApplyBatch(part, batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	return toks
}

// benchRoom applies a room of n messages in batches, like the projector.
func benchRoom(b *testing.B, n int, extra func(r *testenv.Room, i int) testenv.Event) (*handlers.Messages, *testenv.Room, []string) {
	b.Helper()
	s := testenv.NewStore(b)
	r := testenv.NewRoom("bench", "test")
	evs := r.Setup(alice, bob)
	for i := range n {
		if extra != nil {
			if e := extra(r, i); e != nil {
				evs = append(evs, e)
				continue
			}
		}
		evs = append(evs, r.Msg(bob, fmt.Sprintf("message %d with some text in it", i)))
	}
	toks := applyRoom(b, s, r.ID, evs, func(i int, _ int64) bool { return i%1000 == 999 })
	h := &handlers.Messages{Store: s, Waiter: &staticWaiter{seq: uint64(len(evs))}, Subjects: subjects, Now: time.Now}
	return h, r, toks
}

func benchRead(b *testing.B, h *handlers.Messages, roomID string, toks []string, extra map[string]any) {
	ctx := context.Background()
	reqs := make([][]byte, len(toks))
	for i, tok := range toks {
		m := map[string]any{"user_id": alice, "dir": "b", "limit": 50, "from": tok}
		for k, v := range extra {
			m[k] = v
		}
		reqs[i], _ = bus.Encode(m)
	}
	subj := subjects.APIRoom(roomID, "messages")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		reply, err := h.Handle(ctx, subj, reqs[i%len(reqs)])
		if err != nil {
			b.Fatal(err)
		}
		handlers.ReleaseReply(reply) // as the service does once it has sent it
	}
}

// BenchmarkMessages_Plain: a member's dir=b limit=50 page from random
// depths of a 100k-event room, through the whole handler (decode, access,
// visibility, serialisation), without NATS.
func BenchmarkMessages_Plain(b *testing.B) {
	h, r, toks := benchRoom(b, 100_000, nil)
	benchRead(b, h, r.ID, toks, nil)
}

// BenchmarkMessages_LazyAndBundles: the same with lazy_load_members on a
// room where every tenth event is a thread reply and every tenth an edit.
func BenchmarkMessages_LazyAndBundles(b *testing.B) {
	var root string
	h, r, toks := benchRoom(b, 100_000, func(r *testenv.Room, i int) testenv.Event {
		switch i % 10 {
		case 0:
			e := r.Msg(alice, "root")
			root = e.ID()
			return e
		case 3:
			return r.Next("m.room.message", bob, nil, map[string]any{"body": "reply", "m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}})
		case 6:
			return r.Next("m.room.message", alice, nil, map[string]any{"body": "* edit", "m.new_content": map[string]any{"body": "edit"}, "m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": root}})
		}
		return nil
	})
	benchRead(b, h, r.ID, toks, map[string]any{"filter": map[string]any{"lazy_load_members": true}})
}

// BenchmarkMessages_Redacted: pages where every message is redacted by a
// user below the redact level, in a room whose power levels list 3,000
// users: from the messages' own server (sub-benchmark same-server: the
// messages are shown redacted, and no level is read) or from another
// (across-servers: Synapse's recheck_redaction; every redaction needs its
// sender's level in the state before it, nothing is redacted and the
// redactions are withheld). The power levels are decoded once a read.
func BenchmarkMessages_Redacted(b *testing.B) {
	users := map[string]any{alice: int64(100)}
	for i := range 3000 {
		users[fmt.Sprintf("@user%d:test", i)] = int64(10)
	}
	for _, redacter := range []struct{ name, user string }{{"same-server", "@eve:test"}, {"across-servers", "@eve:evil.org"}} {
		b.Run(redacter.name, func(b *testing.B) {
			var last string
			h, r, toks := benchRoom(b, 20_000, func(r *testenv.Room, i int) testenv.Event {
				switch {
				case i == 0:
					return r.Next("m.room.power_levels", alice, testenv.S(""), map[string]any{"users": users})
				case i%2 == 1:
					m := r.Msg(bob, fmt.Sprintf("message %d", i))
					last = m.ID()
					return m
				}
				return r.Next("m.room.redaction", redacter.user, nil, map[string]any{"redacts": last})
			})
			benchRead(b, h, r.ID, toks, map[string]any{"admin": true})
		})
	}
}

// BenchmarkMessages_NearAGap: members page back (dir=b, limit 50, from
// depths 150-210) towards a gap at depth 100 whose missing parent no
// federation worker answers for, in parallel: each read near the gap
// starts a background backfill (Synapse's maybe_backfill), which finds
// the point in back-off. The reads must not queue behind that
// bookkeeping.
func BenchmarkMessages_NearAGap(b *testing.B) {
	n := testenv.NewNATS(b)
	log := n.Stream(b, subjects, "SCROLLBACK")
	s := testenv.NewStore(b)
	r := testenv.NewRoom("gap", "test")
	evs := r.Setup(alice, bob)
	r.StartAt(100, "$missing:test")
	for i := range 2000 {
		evs = append(evs, r.Msg(bob, fmt.Sprintf("message %d with some text in it", i)))
	}
	toks := applyRoom(b, s, r.ID, evs, func(_ int, d int64) bool { return d >= 150 && d < 210 })
	if len(toks) == 0 {
		b.Fatal("no start points near the gap")
	}
	waiter := &staticWaiter{seq: uint64(len(evs))}
	h := &handlers.Messages{Store: s, Waiter: waiter, Subjects: subjects, Now: time.Now,
		Backfill: &handlers.Backfiller{Req: &bus.Requester{NC: n.NC, Timeout: time.Second}, Log: log, Waiter: waiter,
			Store: s, Subjects: subjects, Timeout: time.Second, Backoff: time.Minute, Now: time.Now, Logger: slog.New(slog.DiscardHandler)}}
	reqs := make([][]byte, len(toks))
	for i, tok := range toks {
		reqs[i], _ = bus.Encode(map[string]any{"user_id": alice, "dir": "b", "limit": 50, "from": tok})
	}
	subj := subjects.APIRoom(r.ID, "messages")
	ctx := context.Background()
	b.ReportAllocs()
	b.SetParallelism(8) // 16 readers on 2 cores, as the service's worker pool has them
	b.ResetTimer()
	var next atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			reply, err := h.Handle(ctx, subj, reqs[int(next.Add(1))%len(reqs)])
			if err != nil {
				b.Error(err)
				return
			}
			handlers.ReleaseReply(reply)
		}
	})
}
