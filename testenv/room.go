package testenv

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
)

// Event is an event as a homeserver worker publishes it: a map of the
// contract's fields, ready for MessagePack.
type Event map[string]any

// ID is the event's event_id.
func (e Event) ID() string { s, _ := e["event_id"].(string); return s }

// Room builds a room's events like a homeserver: each event one deeper
// than the last, with the last as its parent.
type Room struct {
	ID    string
	local string
	mu    sync.Mutex
	depth int64
	prev  []string
	n     int
	ts    int64
}

// NewRoom starts a room "!<local>:<server>".
func NewRoom(local, server string) *Room {
	return &Room{ID: "!" + local + ":" + server, local: local, ts: 1_700_000_000_000}
}

// StartAt makes the next event have depth and parents prev (to leave gaps).
func (r *Room) StartAt(depth int64, prev ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.depth, r.prev = depth-1, prev
}

// Next builds the next event; stateKey nil makes a non-state event.
func (r *Room) Next(typ, sender string, stateKey *string, content map[string]any) Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	r.depth++
	r.ts++
	if content == nil {
		content = map[string]any{}
	}
	ev := Event{
		"event_id":         fmt.Sprintf("$%s.%d", r.local, r.n),
		"room_id":          r.ID,
		"type":             typ,
		"sender":           sender,
		"origin_server_ts": r.ts,
		"depth":            r.depth,
		"prev_events":      append([]string{}, r.prev...),
		"content":          content,
		"hashes":           map[string]any{"sha256": "aGFzaA"},
		"signatures":       map[string]any{"example.org": map[string]any{"ed25519:a": "c2ln"}},
	}
	if stateKey != nil {
		ev["state_key"] = *stateKey
	}
	if target, ok := content["redacts"].(string); ok && typ == "m.room.redaction" {
		// Both places, as a homeserver's client format has it: room
		// versions before 11 (the rooms Setup makes are version 10) read
		// the top level, v11 reads content.redacts.
		ev["redacts"] = target
	}
	r.prev = []string{ev.ID()}
	return ev
}

// S returns a pointer to s, for state keys.
func S(s string) *string { return &s }

// Create is m.room.create.
func (r *Room) Create(creator string) Event {
	return r.Next("m.room.create", creator, S(""), map[string]any{"creator": creator, "room_version": "10"})
}

// Member is an m.room.member event for target.
func (r *Room) Member(sender, target, membership string) Event {
	return r.Next("m.room.member", sender, S(target), map[string]any{"membership": membership})
}

// Join is the user's own join.
func (r *Room) Join(user string) Event { return r.Member(user, user, "join") }

// Msg is an m.room.message text event.
func (r *Room) Msg(sender, body string) Event {
	return r.Next("m.room.message", sender, nil, map[string]any{"msgtype": "m.text", "body": body})
}

// Setup is create, the creator's join, power levels, join rules, then the
// members' joins.
func (r *Room) Setup(creator string, members ...string) []Event {
	evs := []Event{
		r.Create(creator),
		r.Join(creator),
		r.Next("m.room.power_levels", creator, S(""), map[string]any{"users": map[string]any{creator: int64(100)}}),
		r.Next("m.room.join_rules", creator, S(""), map[string]any{"join_rule": "public"}),
	}
	for _, m := range members {
		evs = append(evs, r.Join(m))
	}
	return evs
}

// Publisher appends to the room log like a homeserver worker.
type Publisher struct {
	JS       jetstream.JetStream
	Subjects bus.Subjects
}

// Publish appends events in order and returns their sequences. It keeps
// at most 1000 publishes unacknowledged.
func (p *Publisher) Publish(tb testing.TB, evs ...Event) []uint64 {
	tb.Helper()
	seqs := make([]uint64, 0, len(evs))
	for start := 0; start < len(evs); start += 1000 {
		seqs = append(seqs, p.publishWindow(tb, evs[start:min(start+1000, len(evs))])...)
	}
	return seqs
}

func (p *Publisher) publishWindow(tb testing.TB, evs []Event) []uint64 {
	tb.Helper()
	seqs := make([]uint64, len(evs))
	futs := make([]jetstream.PubAckFuture, len(evs))
	for i, ev := range evs {
		data, err := bus.Encode(map[string]any(ev))
		if err != nil {
			tb.Fatal(err)
		}
		roomID, _ := ev["room_id"].(string)
		msg := &nats.Msg{Subject: p.Subjects.Room(roomID, "event"), Data: data, Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgIDHeader, ev.ID())
		if futs[i], err = p.JS.PublishMsgAsync(msg); err != nil {
			tb.Fatalf("publish %s: %v", ev.ID(), err)
		}
	}
	for i, f := range futs {
		select {
		case ack := <-f.Ok():
			seqs[i] = ack.Sequence
		case err := <-f.Err():
			tb.Fatalf("publish %s: %v", evs[i].ID(), err)
		case <-time.After(30 * time.Second):
			tb.Fatalf("no ack for %s", evs[i].ID())
		}
	}
	return seqs
}

// PublishRaw appends arbitrary bytes to a subject and returns the sequence.
func (p *Publisher) PublishRaw(tb testing.TB, subject string, data []byte) uint64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := p.JS.Publish(ctx, subject, data)
	if err != nil {
		tb.Fatalf("publish to %s: %v", subject, err)
	}
	return ack.Sequence
}

// Command appends a command map to its room's cmd subject.
func (p *Publisher) Command(tb testing.TB, cmd map[string]any) uint64 {
	tb.Helper()
	data, err := bus.Encode(cmd)
	if err != nil {
		tb.Fatal(err)
	}
	roomID, _ := cmd["room_id"].(string)
	return p.PublishRaw(tb, p.Subjects.Room(roomID, "cmd"), data)
}
