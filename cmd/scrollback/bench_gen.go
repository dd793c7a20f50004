package main

// The generated rooms of `scrollback bench` (ingest, mixed and catchup):
// many rooms whose sizes follow Zipf's law, their events interleaved in
// the log as on a server where every room is busy at once, each room
// shaped like a real conversation: text messages (some formatted),
// replies, edits by the original sender, reactions, thread replies,
// images, topic and name changes, and members joining and leaving.
//
// Every room draws from a random source of its own, seeded by the run's
// seed and the room's index, so its events do not depend on how the rooms
// are interleaved: the floor of a read can rebuild one room's events
// (genRoomEvents) without the others, and get the very events that were
// published (the same maps, so the same sizes; bus.Encode writes map keys
// in Go's map order, so not always the same bytes). Only the rooms' state (a few dozen bytes each) is kept, never
// the events: a run of ten million events holds none of them in memory.

import (
	"fmt"
	mrand "math/rand/v2"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/internal/loadgen"
)

// Shape of a generated room.
const (
	// genSetup is the number of set-up events: create, the creator's join,
	// power levels, join rules, history visibility, the reader's join.
	genSetup = 6
	// genMinRoom is the smallest generated room.
	genMinRoom = 10
	// genMaxMembers bounds the members of a generated room.
	genMaxMembers = 5_000
	// genRecent is how many recent messages replies, edits, reactions and
	// thread replies pick from.
	genRecent = 8
)

// Kinds of generated events, after the set-up, in per mille of the
// events (genMix).
type genKind int

const (
	genText genKind = iota
	genReply
	genEdit
	genReaction
	genThread
	genImage
	genState
	genMembership
	genKinds
)

var genKindNames = [genKinds]string{"text", "reply", "edit", "reaction", "thread reply", "image", "state (set-up, topic, name)", "membership"}

// genMix is the share of each kind, in per mille.
var genMix = [genKinds]int{genText: 600, genReply: 80, genEdit: 50, genReaction: 120, genThread: 50, genImage: 30, genState: 10, genMembership: 60}

var genReactions = []string{"👍", "❤️", "😂", "🎉", "👀", "🙏", "✅", "🚀"}

const genWords = "the projector applies each room's log in order while readers page back through history and admins purge what must go; " +
	"federation fills the gaps, the janitor frees pages, and nobody waits for a lock because every read is a snapshot of bbolt "

// synthRoom is one generated room's state: enough to make its next event.
type synthRoom struct {
	ID      string
	Size    int // events the room will have (it can be made longer)
	made    int
	rng     *mrand.Rand
	members int // users 0 .. members-1 are joined: 0 the creator, 1 the reader
	maxMem  int
	recent  [genRecent]genRecentMsg
	nrecent int
}

type genRecentMsg struct{ i, sender int32 }

// newSynthRoom is room idx of a run with seed: its ID and random source.
func newSynthRoom(seed uint64, prefix string, idx, size int) *synthRoom {
	return &synthRoom{
		ID:     fmt.Sprintf("!%s%d:%s", prefix, idx, benchServerName),
		Size:   size,
		rng:    mrand.New(mrand.NewPCG(seed, uint64(idx)+1)),
		maxMem: min(genMaxMembers, max(2, size/10)),
	}
}

// genUser is the k-th user of the generated rooms (they share users, as
// rooms on one server do).
func genUser(k int) string { return fmt.Sprintf("@u%d:%s", k, benchServerName) }

// Reader is the member whose reads are measured: joined from the set-up on,
// never leaves.
func (r *synthRoom) Reader() string { return genUser(1) }

// Made is the number of events made so far.
func (r *synthRoom) Made() int { return r.made }

// Next makes the room's next event and returns its kind and encoding.
func (r *synthRoom) Next() (genKind, []byte) {
	i := r.made
	r.made++
	var ev map[string]any
	kind := genText
	if i < genSetup {
		ev = r.setup(i)
		kind = genState
	} else {
		kind, ev = r.message(i)
	}
	_, data := benchEvent(r.ID, i, ev)
	return kind, data
}

func (r *synthRoom) setup(i int) map[string]any {
	creator := genUser(0)
	state := func(typ, sender, key string, content map[string]any) map[string]any {
		return map[string]any{"type": typ, "sender": sender, "state_key": key, "content": content}
	}
	switch i {
	case 0:
		return state("m.room.create", creator, "", map[string]any{"creator": creator, "room_version": "10"})
	case 1:
		r.members = 1
		return state("m.room.member", creator, creator, map[string]any{"membership": "join", "displayname": "u0"})
	case 2:
		return state("m.room.power_levels", creator, "", map[string]any{"users": map[string]any{creator: int64(100)}, "users_default": int64(0),
			"events_default": int64(0), "state_default": int64(50), "ban": int64(50), "kick": int64(50), "redact": int64(50)})
	case 3:
		return state("m.room.join_rules", creator, "", map[string]any{"join_rule": "public"})
	case 4:
		return state("m.room.history_visibility", creator, "", map[string]any{"history_visibility": "shared"})
	default:
		r.members = 2
		return state("m.room.member", genUser(1), genUser(1), map[string]any{"membership": "join", "displayname": "u1"})
	}
}

// pickKind draws a kind by genMix; kinds that need something the room
// does not have yet become text messages.
func (r *synthRoom) pickKind() genKind {
	x := r.rng.IntN(1000)
	for k := range genKinds {
		if x < genMix[k] {
			switch k {
			case genReply, genEdit, genReaction, genThread:
				if r.nrecent == 0 {
					return genText
				}
			}
			return k
		}
		x -= genMix[k]
	}
	return genText
}

// sender draws a joined member: a few talk a lot (the first members are
// drawn more often).
func (r *synthRoom) sender() int {
	if r.rng.IntN(2) == 0 {
		return r.rng.IntN(min(r.members, 4))
	}
	return r.rng.IntN(r.members)
}

func (r *synthRoom) text() string {
	n := 12 + r.rng.IntN(160)
	start := r.rng.IntN(len(genWords) - n)
	return strings.TrimSpace(genWords[start : start+n])
}

func (r *synthRoom) pickRecent() genRecentMsg {
	return r.recent[r.rng.IntN(min(r.nrecent, genRecent))]
}

func (r *synthRoom) eventID(i int32) string { return benchEventID(r.ID, int(i)) }

func (r *synthRoom) remember(i, sender int) {
	r.recent[r.nrecent%genRecent] = genRecentMsg{int32(i), int32(sender)}
	r.nrecent++
}

func (r *synthRoom) message(i int) (genKind, map[string]any) {
	kind := r.pickKind()
	s := r.sender()
	msg := func(content map[string]any) map[string]any {
		return map[string]any{"type": "m.room.message", "sender": genUser(s), "content": content}
	}
	switch kind {
	case genReply:
		to := r.pickRecent()
		body := r.text()
		r.remember(i, s)
		return kind, msg(map[string]any{"msgtype": "m.text", "body": "> <" + genUser(int(to.sender)) + "> ...\n\n" + body,
			"m.relates_to": map[string]any{"m.in_reply_to": map[string]any{"event_id": r.eventID(to.i)}}})
	case genEdit:
		orig := r.pickRecent()
		s = int(orig.sender)
		if s >= r.members { // the sender left: they cannot edit any more
			s = r.sender()
			body := r.text()
			r.remember(i, s)
			return genText, msg(map[string]any{"msgtype": "m.text", "body": body})
		}
		body := r.text()
		return kind, msg(map[string]any{"msgtype": "m.text", "body": "* " + body,
			"m.new_content": map[string]any{"msgtype": "m.text", "body": body},
			"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": r.eventID(orig.i)}})
	case genReaction:
		to := r.pickRecent()
		return kind, map[string]any{"type": "m.reaction", "sender": genUser(s), "content": map[string]any{
			"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": r.eventID(to.i), "key": genReactions[r.rng.IntN(len(genReactions))]}}}
	case genThread:
		root := r.pickRecent()
		return kind, msg(map[string]any{"msgtype": "m.text", "body": r.text(),
			"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": r.eventID(root.i), "is_falling_back": true,
				"m.in_reply_to": map[string]any{"event_id": r.eventID(root.i)}}})
	case genImage:
		r.remember(i, s)
		return kind, msg(map[string]any{"msgtype": "m.image", "body": fmt.Sprintf("IMG_%04d.jpg", r.rng.IntN(10000)),
			"url":  fmt.Sprintf("mxc://%s/%016x", benchServerName, r.rng.Uint64()),
			"info": map[string]any{"mimetype": "image/jpeg", "size": int64(20_000 + r.rng.IntN(2_000_000)), "w": int64(800), "h": int64(600)}})
	case genState:
		ev := map[string]any{"type": "m.room.topic", "sender": genUser(s), "state_key": "", "content": map[string]any{"topic": r.text()}}
		if r.rng.IntN(3) == 0 {
			ev = map[string]any{"type": "m.room.name", "sender": genUser(s), "state_key": "", "content": map[string]any{"name": r.text()[:10]}}
		}
		return kind, ev
	case genMembership:
		// Joins until the room is full, then as many leaves as joins; the
		// creator and the reader never leave.
		if r.members < 3 || r.members < r.maxMem && r.rng.IntN(10) < 7 {
			u := genUser(r.members)
			r.members++
			return kind, map[string]any{"type": "m.room.member", "sender": u, "state_key": u, "content": map[string]any{"membership": "join", "displayname": u[1:strings.IndexByte(u, ':')]}}
		}
		r.members--
		u := genUser(r.members)
		return kind, map[string]any{"type": "m.room.member", "sender": u, "state_key": u, "content": map[string]any{"membership": "leave"}}
	}
	content := map[string]any{"msgtype": "m.text", "body": r.text()}
	if r.rng.IntN(5) == 0 {
		content["format"] = "org.matrix.custom.html"
		content["formatted_body"] = "<p><strong>" + r.text() + "</strong></p>"
	}
	r.remember(i, s)
	return genText, msg(content)
}

// genLog is the log of a run's generated rooms: their events interleaved
// at random in proportion to what each room has left.
type genLog struct {
	Rooms    []*synthRoom
	subjects []string // each room's event subject
	iv       *loadgen.Interleaver
	Kinds    [genKinds]int // events made by kind
}

// newGenLog makes the rooms (sizes in order; room i is "!<prefix><i>:...")
// and their interleaving.
func newGenLog(seed uint64, prefix string, sizes []int, subjects bus.Subjects) *genLog {
	g := &genLog{Rooms: make([]*synthRoom, len(sizes)), subjects: make([]string, len(sizes))}
	for i, n := range sizes {
		g.Rooms[i] = newSynthRoom(seed, prefix, i, n)
		g.subjects[i] = subjects.Room(g.Rooms[i].ID, "event")
	}
	g.iv = loadgen.NewInterleaver(sizes, mrand.New(mrand.NewPCG(seed, 0)))
	return g
}

// Left is the number of events not made yet.
func (g *genLog) Left() int64 { return g.iv.Left() }

// Next is the next log message, with no Nats-Msg-Id (batch publishers
// leave it out; the projection dedupes by event ID); nil at the end.
func (g *genLog) Next() (room int, msg *nats.Msg) {
	i, ok := g.iv.Next()
	if !ok {
		return 0, nil
	}
	kind, data := g.Rooms[i].Next()
	g.Kinds[kind]++
	return i, &nats.Msg{Subject: g.subjects[i], Data: data}
}

// Refill lets the rooms grow by as many events again, in the same
// proportions: the mixed workload keeps ingesting after the load.
func (g *genLog) Refill(seed uint64) {
	sizes := make([]int, len(g.Rooms))
	for i, r := range g.Rooms {
		sizes[i] = r.Size
	}
	g.iv = loadgen.NewInterleaver(sizes, mrand.New(mrand.NewPCG(seed, uint64(len(sizes)))))
}

// KindsString is the mix of kinds made, for the phase lines.
func (g *genLog) KindsString() string {
	total := 0
	for _, n := range g.Kinds {
		total += n
	}
	var parts []string
	for k, n := range g.Kinds {
		parts = append(parts, fmt.Sprintf("%s %.1f%%", genKindNames[k], 100*float64(n)/float64(max(total, 1))))
	}
	return strings.Join(parts, ", ")
}

// genRoomEvents makes room idx of a run again, from its first event: the
// same events as were published (the floor loads them).
func genRoomEvents(seed uint64, prefix string, idx, size int) func(yield func([]byte) bool) {
	return func(yield func([]byte) bool) {
		r := newSynthRoom(seed, prefix, idx, size)
		for range size {
			_, data := r.Next()
			if !yield(data) {
				return
			}
		}
	}
}

// genSizes are the room sizes of a run: Zipf with exponent s, or the
// exponent that makes the largest room largest events when largest > 0.
func genSizes(rooms, events int, s float64, largest int) ([]int, float64, error) {
	if largest > 0 {
		var err error
		if s, err = loadgen.SolveZipfS(rooms, events, genMinRoom, largest); err != nil {
			return nil, 0, err
		}
	}
	sizes, err := loadgen.ZipfSizes(rooms, events, genMinRoom, s)
	return sizes, s, err
}
