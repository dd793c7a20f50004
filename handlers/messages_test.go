package handlers_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

var subjects = bus.Subjects{Prefix: "sb"}

// staticWaiter is a projector that has applied everything up to seq.
type staticWaiter struct{ seq uint64 }

func (w *staticWaiter) WaitFor(ctx context.Context, _ string, seq uint64) error {
	if seq <= w.seq {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}
func (w *staticWaiter) Watermark(string) uint64 { return w.seq }

// fixture is a store with rooms applied from the log, and the handler.
type fixture struct {
	t     *testing.T
	store *projections.Store
	h     *handlers.Messages
	w     *staticWaiter
	seq   uint64
	clock *testenv.Clock
	seqOf map[string]uint64
}

func newFixture(t *testing.T) *fixture {
	f := &fixture{t: t, store: testenv.NewStore(t), w: &staticWaiter{}, clock: testenv.NewClock(time.UnixMilli(1_800_000_000_000)), seqOf: map[string]uint64{}}
	f.h = &handlers.Messages{Store: f.store, Waiter: f.w, Subjects: subjects, Now: f.clock.Now}
	return f
}

// add applies events as the next log messages; received at log time
// 1_800_000_000_000 - 1000 + seq.
func (f *fixture) add(evs ...testenv.Event) {
	f.t.Helper()
	for _, ev := range evs {
		if out := f.applyOutcome(ev); out.Result != projections.OutcomeApplied {
			f.t.Fatalf("%s: %s %s", ev.ID(), out.Result, out.Reason)
		}
	}
}

// applyOutcome applies ev as the next log message, like add, and returns
// what the projection made of it instead of requiring it applied.
func (f *fixture) applyOutcome(ev testenv.Event) projections.Outcome {
	f.t.Helper()
	f.seq++
	data, err := bus.Encode(map[string]any(ev))
	if err != nil {
		f.t.Fatal(err)
	}
	roomID := ev["room_id"].(string)
	e := subjects.Decode(f.seq, subjects.Room(roomID, commands.KindEvent), data, 1_800_000_000_000-1000+int64(f.seq))
	out, err := f.store.ApplyBatch(projections.PartitionOf(bus.RoomKey(roomID), f.store.Partitions()), []commands.LogEntry{e})
	if err != nil {
		f.t.Fatal(err)
	}
	if out[0].Result == projections.OutcomeApplied {
		f.seqOf[ev.ID()] = f.seq
	}
	f.w.seq = f.seq
	return out[0]
}

// applyCmd applies a command as the next log message.
func (f *fixture) applyCmd(cmd map[string]any) {
	f.t.Helper()
	f.seq++
	data, err := bus.Encode(cmd)
	if err != nil {
		f.t.Fatal(err)
	}
	roomID := cmd["room_id"].(string)
	e := subjects.Decode(f.seq, subjects.Room(roomID, commands.KindCmd), data, 1_800_000_000_000)
	out, err := f.store.ApplyBatch(projections.PartitionOf(bus.RoomKey(roomID), f.store.Partitions()), []commands.LogEntry{e})
	if err != nil || out[0].Result != projections.OutcomeApplied {
		f.t.Fatalf("command: %v %+v", err, out)
	}
	f.w.seq = f.seq
}

func (f *fixture) read(roomID string, req map[string]any) (map[string]any, *commands.Error) {
	f.t.Helper()
	data, err := bus.Encode(req)
	if err != nil {
		f.t.Fatal(err)
	}
	reply, err := f.h.Handle(context.Background(), subjects.APIRoom(roomID, "messages"), data)
	if err != nil {
		var e *commands.Error
		if !errors.As(err, &e) {
			f.t.Fatalf("internal error: %v", err)
		}
		return nil, e
	}
	m, err := bus.DecodeMap(reply, bus.DefaultLimits)
	if err != nil {
		f.t.Fatalf("reply is not a map: %v", err)
	}
	return m, nil
}

// tokenAt is the topological token of an added event.
func (f *fixture) tokenAt(ev testenv.Event) string {
	return fmt.Sprintf("t%d-%d", ev["depth"], f.seqOf[ev.ID()])
}

// wantEmptyWithEnd reads alice's dir=b page of limit from ev and fails
// unless it is empty and has an end: the page's rows were all dropped
// after the limit (rejected, withheld), so pagination goes on.
func (f *fixture) wantEmptyWithEnd(t *testing.T, roomID string, ev testenv.Event, limit int) {
	t.Helper()
	p := f.mustRead(roomID, map[string]any{"user_id": alice, "dir": "b", "limit": limit, "from": f.tokenAt(ev)})
	if len(p.ids) != 0 || !p.hasEnd {
		t.Fatalf("page=%+v", p)
	}
}

func (f *fixture) mustRead(roomID string, req map[string]any) page {
	f.t.Helper()
	m, e := f.read(roomID, req)
	if e != nil {
		f.t.Fatalf("read %v: %v", req, e)
	}
	return toPage(m)
}

type page struct {
	ids    []string
	events []map[string]any
	start  string
	end    string
	hasEnd bool
}

func toPage(m map[string]any) page {
	var p page
	chunk, _ := m["chunk"].([]any)
	for _, c := range chunk {
		ev := c.(map[string]any)
		p.events = append(p.events, ev)
		p.ids = append(p.ids, ev["event_id"].(string))
	}
	p.start, _ = m["start"].(string)
	p.end, p.hasEnd = m["end"].(string)
	return p
}

const (
	alice = "@alice:test"
	bob   = "@bob:test"
	zeros = "_0_0_0_0_0_0_0_0_0_0_0_0"
)

func idsOf(evs []testenv.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.ID()
	}
	return out
}

func rev(s []string) []string {
	out := make([]string, len(s))
	for i := range s {
		out[len(s)-1-i] = s[i]
	}
	return out
}

func same(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("%s:\n got  %v\n want %v", what, got, want)
	}
}

// basicRoom: setup (alice creates, bob joins) then 20 messages.
func basicRoom(f *fixture, name string) (*testenv.Room, []testenv.Event) {
	r := testenv.NewRoom(name, "test")
	evs := r.Setup(alice, bob)
	for i := range 20 {
		evs = append(evs, r.Msg(bob, fmt.Sprintf("m%d", i)))
	}
	f.add(evs...)
	return r, evs
}

func TestMessages_DefaultsAndTokens(t *testing.T) {
	f := newFixture(t)
	r, evs := basicRoom(f, "defaults")
	all := idsOf(evs)
	last := evs[len(evs)-1]

	t.Run("dir defaults to f from the start, limit 10", func(t *testing.T) {
		p := f.mustRead(r.ID, map[string]any{"user_id": alice})
		same(t, "chunk", p.ids, all[:10])
		if p.start != "s0"+zeros {
			t.Fatalf("start=%q", p.start)
		}
		tenth := evs[9]
		if want := fmt.Sprintf("t%d-%d", tenth["depth"], f.seqOf[tenth.ID()]) + zeros; p.end != want {
			t.Fatalf("end=%q, want %q", p.end, want)
		}
	})
	t.Run("dir=b starts at max depth and stream", func(t *testing.T) {
		p := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 3})
		same(t, "chunk", p.ids, rev(all)[:3])
		if want := fmt.Sprintf("t%d-%d", last["depth"], f.seq) + zeros; p.start != want {
			t.Fatalf("start=%q, want %q", p.start, want)
		}
		// end sits just before the oldest returned event.
		third := evs[len(evs)-3]
		if want := fmt.Sprintf("t%d-%d", third["depth"], f.seqOf[third.ID()]-1) + zeros; p.end != want {
			t.Fatalf("end=%q, want %q", p.end, want)
		}
	})
	t.Run("limit 0 answers from as end", func(t *testing.T) {
		p := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 0, "from": "t5-5"})
		if len(p.ids) != 0 || !p.hasEnd || p.end != "t5-5"+zeros || p.start != "t5-5"+zeros {
			t.Fatalf("page=%+v", p)
		}
	})
	t.Run("limit clamps to 1000", func(t *testing.T) {
		p := f.mustRead(r.ID, map[string]any{"user_id": alice, "limit": 5000})
		same(t, "chunk", p.ids, all)
	})
	t.Run("short from is padded in start", func(t *testing.T) {
		p := f.mustRead(r.ID, map[string]any{"user_id": alice, "from": "s0_0_0"})
		if p.start != "s0"+zeros {
			t.Fatalf("start=%q", p.start)
		}
	})
	t.Run("END is no from", func(t *testing.T) {
		p := f.mustRead(r.ID, map[string]any{"user_id": alice, "from": "END", "limit": 2})
		same(t, "chunk", p.ids, all[:2])
	})
	t.Run("backwards then forwards repeats the gap's event", func(t *testing.T) {
		b := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 5})
		fw := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "f", "limit": 5, "from": b.end})
		same(t, "forward page", fw.ids, all[len(all)-5:])
		again := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 1, "from": fw.end})
		same(t, "backwards from a forward end is inclusive", again.ids, all[len(all)-1:])
	})
	t.Run("end is missing only after the last event", func(t *testing.T) {
		p := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": len(all)})
		if !p.hasEnd {
			t.Fatal("page with every event has no end")
		}
		p2 := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 10, "from": p.end})
		if len(p2.ids) != 0 || p2.hasEnd {
			t.Fatalf("after the start of the room: %+v", p2)
		}
	})
	t.Run("live s token backwards compares stream orderings", func(t *testing.T) {
		mid := evs[10]
		p := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 3, "from": fmt.Sprintf("s%d", f.seqOf[mid.ID()])})
		same(t, "chunk", p.ids, rev(all[:11])[:3])
		if !strings.HasPrefix(p.end, "t") {
			t.Fatalf("end %q is not topological", p.end)
		}
	})
	t.Run("live s token forwards", func(t *testing.T) {
		mid := evs[10]
		p := f.mustRead(r.ID, map[string]any{"user_id": alice, "limit": 3, "from": fmt.Sprintf("s%d", f.seqOf[mid.ID()])})
		same(t, "chunk", p.ids, all[11:14])
	})
	t.Run("to bounds: exclusive backwards, inclusive forwards", func(t *testing.T) {
		e5, e9 := evs[5], evs[9]
		tok := func(e testenv.Event) string { return fmt.Sprintf("t%d-%d", e["depth"], f.seqOf[e.ID()]) }
		p := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "from": tok(e9), "to": tok(e5), "limit": 100})
		same(t, "dir=b", p.ids, rev(all[6:10]))
		p = f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "f", "from": tok(e5), "to": tok(e9), "limit": 100})
		same(t, "dir=f", p.ids, all[6:10])
		if !p.hasEnd {
			t.Fatal("dir=f up to to: no end")
		}
	})
	t.Run("to before from bails out without end", func(t *testing.T) {
		p := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "f", "from": "s10", "to": "s5"})
		if len(p.ids) != 0 || p.hasEnd {
			t.Fatalf("page=%+v", p)
		}
	})
}

func TestMessages_Errors(t *testing.T) {
	f := newFixture(t)
	r, _ := basicRoom(f, "errors")
	tests := []struct {
		name   string
		room   string
		req    map[string]any
		status int
		code   string
		text   string
	}{
		{"bad dir", r.ID, map[string]any{"user_id": alice, "dir": "x"}, 400, "M_INVALID_PARAM", "Query parameter 'dir' must be one of ['b', 'f']"},
		{"bad from", r.ID, map[string]any{"user_id": alice, "from": "x1"}, 400, "M_UNKNOWN", "'from' parameter is invalid"},
		{"from with 14 fields", r.ID, map[string]any{"user_id": alice, "from": "s1" + zeros + "_0"}, 400, "M_UNKNOWN", "'from' parameter is invalid"},
		{"bad to", r.ID, map[string]any{"user_id": alice, "to": "t1"}, 400, "M_UNKNOWN", "'to' parameter is invalid"},
		{"limit not an integer", r.ID, map[string]any{"user_id": alice, "limit": "ten"}, 400, "M_INVALID_PARAM", "Query parameter limit must be an integer"},
		{"negative limit", r.ID, map[string]any{"user_id": alice, "limit": -1}, 400, "M_INVALID_PARAM", "Query parameter limit must be a positive integer."},
		{"filter not an object", r.ID, map[string]any{"user_id": alice, "filter": []any{1}}, 400, "M_NOT_JSON", "Query parameter filter must be a valid JSON object"},
		{"no user", r.ID, map[string]any{"dir": "b"}, 400, "M_MISSING_PARAM", ""},
		{"not a member", r.ID, map[string]any{"user_id": "@carol:test"}, 403, "M_FORBIDDEN", "User @carol:test not in room !errors:test, and room previews are disabled"},
		{"unknown room is 403", "!nowhere:test", map[string]any{"user_id": alice}, 403, "M_FORBIDDEN", "User @alice:test not in room !nowhere:test, and room previews are disabled"},
		{"dir checked before from", r.ID, map[string]any{"user_id": alice, "dir": "x", "from": "bad"}, 400, "M_INVALID_PARAM", ""},
		{"wait_for times out as 504", r.ID, map[string]any{"admin": true, "wait_for": 1 << 40}, 504, "M_UNKNOWN", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.status == 504 {
				t.Skip("takes WaitForTimeout; covered by TestMessages_WaitForTimeout")
			}
			_, e := f.read(tt.room, tt.req)
			if e == nil {
				t.Fatalf("no error, want %d %s", tt.status, tt.code)
			}
			if e.Status != tt.status || e.Code != tt.code || (tt.text != "" && e.Message != tt.text) {
				t.Fatalf("got %d %s %q, want %d %s %q", e.Status, e.Code, e.Message, tt.status, tt.code, tt.text)
			}
		})
	}
	t.Run("payload that is not a map", func(t *testing.T) {
		for _, data := range [][]byte{nil, {0x90}, {0xc0}, []byte("{}")} {
			_, err := f.h.Handle(context.Background(), subjects.APIRoom(r.ID, "messages"), data)
			if !errors.Is(err, &commands.Error{Status: 400, Code: commands.CodeBadJSON}) {
				t.Fatalf("%x: err=%v, want 400 M_BAD_JSON", data, err)
			}
		}
	})
	t.Run("admin reads unknown rooms", func(t *testing.T) {
		p := f.mustRead("!nowhere:test", map[string]any{"admin": true})
		if len(p.ids) != 0 || p.hasEnd {
			t.Fatalf("page=%+v", p)
		}
	})
}

func TestMessages_Filters(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("filters", "test")
	evs := r.Setup(alice, bob)
	img := r.Next("m.room.message", bob, nil, map[string]any{"msgtype": "m.image", "body": "cat", "url": "mxc://test/cat"})
	labelled := r.Next("m.room.message", alice, nil, map[string]any{"body": "l", "org.matrix.labels": []any{"#work"}})
	custom1 := r.Next("f.message.1", alice, nil, nil)
	custom2 := r.Next("f.message.2", bob, nil, nil)
	plain := r.Msg(alice, "plain")
	evs = append(evs, img, labelled, custom1, custom2, plain)
	f.add(evs...)
	tests := []struct {
		name   string
		filter map[string]any
		want   []testenv.Event
	}{
		{"types wildcard", map[string]any{"types": []any{"f.message.*"}}, []testenv.Event{custom1, custom2}},
		{"types exact", map[string]any{"types": []any{"m.room.message"}}, []testenv.Event{img, labelled, plain}},
		{"not_types star excludes all", map[string]any{"not_types": []any{"*"}}, nil},
		{"senders", map[string]any{"senders": []any{bob}, "types": []any{"m.room.message", "f.*"}}, []testenv.Event{img, custom2}},
		{"not_senders", map[string]any{"not_senders": []any{alice}}, []testenv.Event{evs[4], img, custom2}},
		{"contains_url", map[string]any{"contains_url": true}, []testenv.Event{img}},
		{"labels", map[string]any{"org.matrix.labels": []any{"#work"}}, []testenv.Event{labelled}},
		{"not_labels", map[string]any{"org.matrix.not_labels": []any{"#work"}, "types": []any{"m.room.message"}}, []testenv.Event{img, plain}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := f.mustRead(r.ID, map[string]any{"user_id": alice, "limit": 100, "filter": tt.filter})
			same(t, "chunk", p.ids, idsOf(tt.want))
		})
	}
	t.Run("types [] takes rows then drops them: empty chunk with end", func(t *testing.T) {
		p := f.mustRead(r.ID, map[string]any{"user_id": alice, "limit": 3, "filter": map[string]any{"types": []any{}}})
		if len(p.ids) != 0 || !p.hasEnd {
			t.Fatalf("page=%+v", p)
		}
		if want := fmt.Sprintf("t%d-%d", evs[2]["depth"], f.seqOf[evs[2].ID()]) + zeros; p.end != want {
			t.Fatalf("end=%q, want %q (after the third row taken)", p.end, want)
		}
	})
	t.Run("not_labels applies after the limit; end from the last row taken", func(t *testing.T) {
		from := fmt.Sprintf("t%d-%d", img["depth"], f.seqOf[img.ID()])
		p := f.mustRead(r.ID, map[string]any{"user_id": alice, "limit": 1, "from": from, "filter": map[string]any{"org.matrix.not_labels": []any{"#work"}}})
		if len(p.ids) != 0 || p.end != fmt.Sprintf("t%d-%d", labelled["depth"], f.seqOf[labelled.ID()])+zeros {
			t.Fatalf("page=%+v", p)
		}
	})
}

// TestMessages_RelatedByFilters: related_by_senders and
// related_by_rel_types keep the events that have a relation from one of
// those senders and of one of those types (one relation meeting both),
// before the limit (SYNAPSE.md 1.2; Synapse's PaginationTestCase in
// tests/storage/test_stream.py). An empty list constrains nothing, as in
// Synapse, where it is falsy. A redacted relation no longer counts
// (Synapse deletes its event_relations row).
func TestMessages_RelatedByFilters(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("relatedby", "test")
	evs := r.Setup(alice, bob, carol)
	first := r.Msg(alice, "test1")
	e1 := r.Msg(alice, "message 1")
	e2 := r.Msg(alice, "message 2")
	react := func(sender, target, key string) testenv.Event {
		return r.Next("m.reaction", sender, nil, map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": target, "key": key}})
	}
	bobOn1 := react(bob, e1.ID(), "👍")
	bobOn1Again := react(bob, e1.ID(), "b")
	carolOn2 := r.Next("m.room.message", carol, nil, map[string]any{"body": "ref", "m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": e2.ID()}})
	e3 := r.Msg(alice, "message 3")
	aliceOn3 := r.Next("m.room.message", alice, nil, map[string]any{"body": "edit", "m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": e3.ID()}})
	unrelate := r.Next("m.room.redaction", alice, nil, map[string]any{"redacts": aliceOn3.ID()})
	f.add(append(evs, first, e1, e2, bobOn1, bobOn1Again, carolOn2, e3, aliceOn3, unrelate)...)

	read := func(filter map[string]any, limit int, from string) page {
		req := map[string]any{"user_id": alice, "dir": "b", "limit": limit, "filter": filter}
		if from != "" {
			req["from"] = from
		}
		return f.mustRead(r.ID, req)
	}
	tests := []struct {
		name   string
		filter map[string]any
		want   []testenv.Event
	}{
		{"senders: bob", map[string]any{"related_by_senders": []any{bob}}, []testenv.Event{e1}},
		{"senders: carol", map[string]any{"related_by_senders": []any{carol}}, []testenv.Event{e2}},
		{"senders: either", map[string]any{"related_by_senders": []any{bob, carol}}, []testenv.Event{e2, e1}},
		{"rel types: annotation", map[string]any{"related_by_rel_types": []any{"m.annotation"}}, []testenv.Event{e1}},
		{"rel types: reference", map[string]any{"related_by_rel_types": []any{"m.reference"}}, []testenv.Event{e2}},
		{"rel types: either", map[string]any{"related_by_rel_types": []any{"m.annotation", "m.reference"}}, []testenv.Event{e2, e1}},
		{"both, one relation meets them", map[string]any{"related_by_senders": []any{bob}, "related_by_rel_types": []any{"m.annotation"}}, []testenv.Event{e1}},
		{"both, no one relation meets them", map[string]any{"related_by_senders": []any{bob}, "related_by_rel_types": []any{"m.reference"}}, nil},
		{"a redacted relation does not count", map[string]any{"related_by_senders": []any{alice}}, nil},
		{"with types", map[string]any{"related_by_rel_types": []any{"m.annotation", "m.reference"}, "types": []any{"m.room.message"}, "not_senders": []any{carol}}, []testenv.Event{e2, e1}},
		{"the relating events have none", map[string]any{"related_by_rel_types": []any{"m.annotation", "m.reference"}, "types": []any{"m.reaction"}}, nil},
		{"a string lists its characters", map[string]any{"related_by_senders": "@bob:test"}, nil},
		{"a list of no strings: no relation meets it", map[string]any{"related_by_senders": []any{5}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := read(tt.filter, 100, "")
			same(t, "chunk", p.ids, idsOf(tt.want))
		})
	}
	t.Run("empty lists constrain nothing", func(t *testing.T) {
		types := []any{"m.room.message", "m.reaction"}
		all := read(map[string]any{"types": types}, 100, "")
		p := read(map[string]any{"related_by_senders": []any{}, "related_by_rel_types": []any{}, "types": types}, 100, "")
		if len(all.ids) != 8 {
			t.Fatalf("%d messages and reactions, want 8", len(all.ids))
		}
		same(t, "chunk", p.ids, all.ids)
	})
	t.Run("before the limit", func(t *testing.T) {
		filter := map[string]any{"related_by_senders": []any{bob, carol}}
		p := read(filter, 1, "")
		same(t, "first page", p.ids, []string{e2.ID()})
		if !p.hasEnd {
			t.Fatalf("page=%+v", p)
		}
		p = read(filter, 1, p.end)
		same(t, "second page", p.ids, []string{e1.ID()})
	})
}

func TestMessages_RejectedSoftFailedAndClientFormat(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("fmt", "test")
	evs := r.Setup(alice, bob)
	topic1 := r.Next("m.room.topic", alice, testenv.S(""), map[string]any{"topic": "one"})
	topic2 := r.Next("m.room.topic", bob, testenv.S(""), map[string]any{"topic": "two"})
	rej1 := r.Msg(bob, "rejected 1")
	rej1["rejected"] = true
	rej2 := r.Msg(bob, "rejected 2")
	rej2["rejected"] = true
	soft := r.Msg(bob, "soft")
	soft["soft_failed"] = true
	withAge := r.Msg(alice, "aged")
	withAge["unsigned"] = map[string]any{"age": int64(5000), "org.example.kept": "txn1"}
	evs = append(evs, topic1, topic2, rej1, rej2, soft, withAge)
	f.add(evs...)

	t.Run("a page of only rejected events keeps end", func(t *testing.T) {
		f.wantEmptyWithEnd(t, r.ID, rej2, 2)
	})
	t.Run("soft-failed hidden from users, shown to admins", func(t *testing.T) {
		p := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 2})
		same(t, "user", p.ids, []string{withAge.ID()})
		p = f.mustRead(r.ID, map[string]any{"admin": true, "dir": "b", "limit": 2})
		same(t, "admin", p.ids, []string{withAge.ID(), soft.ID()})
		// Synapse's admin metadata (include_admin_metadata) marks it.
		if un, _ := p.events[1]["unsigned"].(map[string]any); un["io.element.synapse.soft_failed"] != true {
			t.Fatalf("soft-failed event for an admin: unsigned %v", un)
		}
		if un, _ := p.events[0]["unsigned"].(map[string]any); un["io.element.synapse.soft_failed"] != nil {
			t.Fatalf("an event that is not soft-failed: unsigned %v", un)
		}
	})
	t.Run("client format", func(t *testing.T) {
		p := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 1})
		ev := p.events[0]
		for _, k := range []string{"hashes", "signatures", "depth", "prev_events", "auth_events", "received_ts", "rejected", "soft_failed", "backfilled", "outlier"} {
			if _, ok := ev[k]; ok {
				t.Errorf("client event has %q", k)
			}
		}
		if ev["user_id"] != alice || ev["room_id"] != r.ID || ev["type"] != "m.room.message" {
			t.Errorf("event=%v", ev)
		}
		un := ev["unsigned"].(map[string]any)
		// age = now - (received - published age)
		received := int64(1_800_000_000_000 - 1000 + int64(f.seqOf[withAge.ID()]))
		wantAge := f.clock.Now().UnixMilli() - (received - 5000)
		if age, _ := commands.AsInt(un["age"]); age != wantAge {
			t.Errorf("unsigned.age=%v, want %d", un["age"], wantAge)
		}
		if age, _ := commands.AsInt(ev["age"]); age != wantAge {
			t.Errorf("age=%v, want %d", ev["age"], wantAge)
		}
		// Synapse keeps no other published unsigned key
		// (PersistedUnsignedFields).
		if un["org.example.kept"] != nil {
			t.Errorf("a published unsigned key is shown: %v", un)
		}
	})
	t.Run("state events carry prev_content", func(t *testing.T) {
		from := fmt.Sprintf("t%d-%d", topic2["depth"], f.seqOf[topic2.ID()])
		p := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 2, "from": from})
		same(t, "chunk", p.ids, []string{topic2.ID(), topic1.ID()})
		t2, t1 := p.events[0], p.events[1]
		un := t2["unsigned"].(map[string]any)
		if pc, _ := un["prev_content"].(map[string]any); pc["topic"] != "one" || un["prev_sender"] != alice || un["replaces_state"] != topic1.ID() {
			t.Errorf("unsigned=%v", un)
		}
		if pc, _ := t2["prev_content"].(map[string]any); pc["topic"] != "one" {
			t.Errorf("top-level prev_content=%v", t2["prev_content"])
		}
		if _, ok := t1["unsigned"].(map[string]any)["prev_content"]; ok {
			t.Errorf("first topic has prev_content: %v", t1)
		}
		if t1["state_key"] != "" {
			t.Errorf("state_key=%v", t1["state_key"])
		}
	})
}

func TestMessages_ReplyEndsBeforeMaxPayload(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("big", "test")
	evs := r.Setup(alice)
	for i := range 30 {
		evs = append(evs, r.Msg(alice, fmt.Sprintf("%d %s", i, strings.Repeat("x", 4000))))
	}
	f.add(evs...)
	f.h.MaxReply = func() int { return 64<<10 + 20000 } // room for about 5 events past the margin
	p := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 30})
	if len(p.ids) == 0 || len(p.ids) >= 30 {
		t.Fatalf("got %d events, want a cut page", len(p.ids))
	}
	next := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 1, "from": p.end})
	same(t, "page after the cut", next.ids, []string{evs[len(evs)-1-len(p.ids)].ID()})
}

// TestMessages_GapsWhileThePurgeRuns: a kept event that names an event a
// purge deletes shows a gap (MSC3871) from the moment the purge is
// applied, as it does once the janitor has made the purged event a
// backward extremity; the read skipped the look-up until then.
func TestMessages_GapsWhileThePurgeRuns(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("gaps", "test")
	evs := r.Setup(alice, "@remote:other.org")
	var msgs []testenv.Event
	for i := range 10 {
		msgs = append(msgs, r.Msg("@remote:other.org", fmt.Sprint(i)))
	}
	msgs[8]["prev_events"] = []any{msgs[7].ID(), msgs[1].ID()}
	f.add(append(evs, msgs...)...)
	f.applyCmd(map[string]any{"id": "p", "action": commands.ActionPurgeHistory, "room_id": r.ID,
		"params": map[string]any{"token": fmt.Sprintf("t%d-0", msgs[5]["depth"])}})
	gapsOf := func() []any {
		m, e := f.read(r.ID, map[string]any{"admin": true, "dir": "b", "limit": 50})
		if e != nil {
			t.Fatal(e)
		}
		g, _ := m["org.matrix.msc3871.gaps"].([]any)
		return g
	}
	before := gapsOf()
	for {
		did, err := f.store.JanitorStep(1000)
		if err != nil {
			t.Fatal(err)
		}
		if !did {
			break
		}
	}
	after := gapsOf()
	if len(after) != 1 || after[0].(map[string]any)["event_id"] != msgs[8].ID() {
		t.Fatalf("gaps after the janitor: %v, want one at %s", after, msgs[8].ID())
	}
	if len(before) != 1 || before[0].(map[string]any)["event_id"] != msgs[8].ID() {
		t.Errorf("gaps before the janitor: %v, want one at %s as after it", before, msgs[8].ID())
	}
}

// TestMessages_TokensFromBeforeAPurge: a pagination token handed out
// before a purge, pointing into what the purge removes, returns none of
// the purged events afterwards, in either direction, from the moment the
// purge is applied and once the janitor has deleted the rows: dir=b from
// inside the purged range finds nothing, and dir=f from there starts at
// the cut-off.
func TestMessages_TokensFromBeforeAPurge(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("oldtokens", "test")
	evs := r.Setup(alice)
	var msgs []testenv.Event
	for i := range 30 {
		msgs = append(msgs, r.Msg("@remote:other.org", fmt.Sprint(i)))
	}
	f.add(append(evs, msgs...)...)
	// Tokens deep in the room's history, taken before the purge: one
	// paging backwards from the newest, one paging forwards from the
	// oldest.
	back := f.mustRead(r.ID, map[string]any{"admin": true, "dir": "b", "limit": 25})
	fwd := f.mustRead(r.ID, map[string]any{"admin": true, "dir": "f", "limit": 5})
	if !back.hasEnd || !fwd.hasEnd {
		t.Fatalf("pages before the purge end nowhere: %+v %+v", back, fwd)
	}
	cut := msgs[20]
	f.applyCmd(map[string]any{"id": "p", "action": commands.ActionPurgeHistory, "room_id": r.ID,
		"params": map[string]any{"token": fmt.Sprintf("t%d-0", cut["depth"])}})
	kept := map[string]bool{}
	for _, ev := range msgs[20:] {
		kept[ev.ID()] = true
	}
	check := func(when string) {
		t.Helper()
		older := f.mustRead(r.ID, map[string]any{"admin": true, "dir": "b", "limit": 50, "from": back.end})
		for _, id := range older.ids {
			if !kept[id] {
				t.Errorf("%s: dir=b from a token of before the purge returned %s, which it purged", when, id)
			}
		}
		newer := f.mustRead(r.ID, map[string]any{"admin": true, "dir": "f", "limit": 50, "from": fwd.end})
		var want []string
		for _, ev := range msgs[20:] {
			want = append(want, ev.ID())
		}
		var got []string
		for _, id := range newer.ids {
			if id == cut.ID() || kept[id] {
				got = append(got, id)
			} else if slices.ContainsFunc(msgs, func(ev testenv.Event) bool { return ev.ID() == id }) {
				t.Errorf("%s: dir=f from a token of before the purge returned %s, which it purged", when, id)
			}
		}
		same(t, when+": dir=f from a token of before the purge", got, want)
	}
	check("purge applied")
	for {
		did, err := f.store.JanitorStep(7)
		if err != nil {
			t.Fatal(err)
		}
		if !did {
			break
		}
	}
	check("rows deleted")
}

// TestMessages_WaitForTimeout: a read whose wait_for the projection does
// not reach in time is a 504 that names the sequence (CONTRACT.md
// section 4). The wait ends at WaitForTimeout (10 s) or at the caller's
// deadline, whichever comes first: here the caller's, 50 ms.
func TestMessages_WaitForTimeout(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("waitfor", "test")
	f.add(r.Setup(alice)...)
	data, err := bus.Encode(map[string]any{"admin": true, "wait_for": int64(1 << 40)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = f.h.Handle(ctx, subjects.APIRoom(r.ID, "messages"), data)
	var e *commands.Error
	if !errors.As(err, &e) || e.Status != 504 || e.Code != commands.CodeUnknown || e.Message != fmt.Sprintf("Timed out waiting for the room log to reach sequence %d", int64(1<<40)) {
		t.Fatalf("wait_for past the log: %v, want 504 naming the sequence", err)
	}
}

// TestMessages_LeaveClampFromALiveToken: for a stream token, Synapse
// clamps a departed user's page to their leave only when the leave is
// deeper than curr_topo, the least depth at or after the token (here an
// event after the leave in the stream is the leave's sibling, at the
// same depth: no clamp).
func TestMessages_LeaveClampFromALiveToken(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("clampfork", "test")
	evs := r.Setup(alice, bob)
	m1 := r.Msg(alice, "m1")
	leave := r.Member(bob, bob, "leave")
	r.StartAt(leave["depth"].(int64), m1.ID()) // x: the leave's sibling, same depth
	x := r.Msg(alice, "x")
	f.add(append(evs, m1, leave, x)...)
	from := fmt.Sprintf("s%d", f.seqOf[x.ID()])
	p := f.mustRead(r.ID, map[string]any{"user_id": bob, "dir": "b", "limit": 3, "from": from})
	if p.start != from+zeros {
		t.Errorf("start=%q, want the unclamped %q", p.start, from+zeros)
	}
	same(t, "chunk", p.ids, idsOf([]testenv.Event{x, leave, m1}))
}

// TestMessages_FilterCheckSeesTheRedactedContent: the SQL part of a
// filter sees what was stored (events.contains_url, event_labels), the
// Python part after the limit sees the event as get_events_as_list gives
// it, a redacted one pruned: a redacted file leaves a contains_url view.
func TestMessages_FilterCheckSeesTheRedactedContent(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("redfilter", "test")
	evs := r.Setup(alice, bob)
	img := r.Next("m.room.message", bob, nil, map[string]any{"msgtype": "m.image", "body": "cat", "url": "mxc://test/cat", "org.matrix.labels": []any{"#work"}})
	red := r.Next("m.room.redaction", alice, nil, map[string]any{"redacts": img.ID()})
	red["redacts"] = img.ID()
	f.add(append(evs, img, red)...)
	for _, tt := range []struct {
		name   string
		filter map[string]any
		want   []string
	}{
		{"contains_url true: SQL takes it, the check drops it", map[string]any{"contains_url": true}, nil},
		{"contains_url false: no SQL clause, the check keeps it", map[string]any{"contains_url": false, "types": []any{"m.room.message"}}, []string{img.ID()}},
		{"labels: event_labels takes it, the check drops it", map[string]any{"org.matrix.labels": []any{"#work"}}, nil},
		{"not_labels: the pruned event has no label", map[string]any{"org.matrix.not_labels": []any{"#work"}, "types": []any{"m.room.message"}}, []string{img.ID()}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := f.mustRead(r.ID, map[string]any{"user_id": alice, "limit": 100, "filter": tt.filter})
			same(t, "chunk", p.ids, tt.want)
		})
	}
}
