package projections

import (
	"bytes"
	"math"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
)

func TestRow_RoundTrip(t *testing.T) {
	sk := "@a:x"
	ev := &commands.Event{EventID: "$e", Type: "m.room.member", Sender: "@a:x", StateKey: &sk, OriginServerTS: 42, Depth: 3,
		Content:  map[string]any{"membership": "join", "url": "mxc://x/y", "org.matrix.labels": []any{"#a", 5}},
		Unsigned: map[string]any{"age": int64(10), "org.example.kept": "t", "prev_content": "dropped"}, SoftFailed: true,
		Extra: map[string]any{"membership": "join", "org.example.top": int64(7)}}
	r, err := newRow(ev, 1000)
	if err != nil {
		t.Fatal(err)
	}
	got, err := unmarshalRow(r.marshal())
	if err != nil {
		t.Fatal(err)
	}
	if got.EventID != "$e" || got.Summary != "join" || got.AgeTS != 990 || !got.IsState() || !got.SoftFailed() || got.Rejected() ||
		got.StateKey != sk || got.UnsignedN != 1 || len(got.Labels) != 1 || got.Meta().HasURL != true {
		t.Fatalf("round trip: %+v", got)
	}
	if got.ExtraN != 2 || !bytes.Equal(got.Extra, r.Extra) || !bytes.Equal(got.marshal(), r.marshal()) {
		t.Fatalf("top-level keys: %d %x, want 2 %x; marshals back the same: %v", got.ExtraN, got.Extra, r.Extra, bytes.Equal(got.marshal(), r.marshal()))
	}
	// The janitor still finds the received time ahead of them.
	ph, err := readPurgeHead(r.marshal())
	if err != nil {
		t.Fatal(err)
	}
	if ts, exact, err := rowReceived(ph.ageTS, ph.rest); ts != 1000 || !exact || err != nil {
		t.Fatalf("rowReceived = %d %v %v, want 1000 exact", ts, exact, err)
	}
	h, err := rowHead(r.marshal())
	if err != nil || h.flags != r.Flags || string(h.id) != "$e" || string(h.typ) != "m.room.member" || string(h.sender) != "@a:x" || len(h.labels) != 1 {
		t.Fatalf("rowHead: %+v %v", h, err)
	}
}

// Every string of a row comes back in its place (they share one
// allocation when read).
func TestRow_RoundTripStrings(t *testing.T) {
	sk := ""
	ev := &commands.Event{EventID: "$edit", Type: "m.room.topic", Sender: "@b:x", StateKey: &sk, Redacts: "$old", OriginServerTS: 7, Depth: 9,
		Content: map[string]any{"topic": "t", "m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": "$root"}}}
	r, err := newRow(ev, 1)
	if err != nil {
		t.Fatal(err)
	}
	b := r.marshal()
	for _, alias := range []bool{false, true} {
		var got Row
		if err := got.unmarshal(b, alias); err != nil {
			t.Fatal(err)
		}
		want := [...]string{"$edit", "m.room.topic", "@b:x", "", "$old", r.Summary, "m.thread", "$root"}
		have := [...]string{got.EventID, got.Type, got.Sender, got.StateKey, got.Redacts, got.Summary, got.RelType, got.RelTarget}
		if have != want || !got.IsState() {
			t.Fatalf("alias %v: strings read back as %q, want %q", alias, have, want)
		}
		// Aliased strings are the row's bytes; copied ones are not.
		inRow := unsafe.StringData(got.EventID) == &b[bytes.Index(b, []byte("$edit"))]
		if inRow != alias {
			t.Errorf("alias %v: EventID in the row's own bytes = %v", alias, inRow)
		}
	}
}

// FuzzUnmarshalRow: a corrupt row is an error, never a panic or a huge
// allocation.
func FuzzUnmarshalRow(f *testing.F) {
	ev := &commands.Event{EventID: "$e", Type: "t", Sender: "@a:x", Content: map[string]any{"b": "x"}}
	r, _ := newRow(ev, 1)
	f.Add(r.marshal())
	ev.Extra = map[string]any{"membership": "join"}
	r, _ = newRow(ev, 1)
	f.Add(r.marshal())
	f.Add([]byte{rowVersion, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		copied, err := unmarshalRow(b)
		_, _ = rowHead(b)
		// The aliasing decode (Paginate's) reads the same row the same way.
		var aliased Row
		aerr := aliased.unmarshal(b, true)
		if (err == nil) != (aerr == nil) {
			t.Fatalf("copying decode: %v; aliasing decode: %v", err, aerr)
		}
		if err == nil && !reflect.DeepEqual(*copied, aliased) {
			t.Fatalf("copying decode %+v, aliasing decode %+v", *copied, aliased)
		}
	})
}

// rowBlock hands out n rows in blocks that double from 16: a page's
// limit of rows in a few allocations, without paying for the limit up
// front.
func TestRowBlock_Blocks(t *testing.T) {
	for _, tt := range []struct{ n, blocks int }{{1, 1}, {16, 1}, {50, 3}, {1000, 7}} {
		rb := rowBlock{n: tt.n}
		blocks, seen := 0, map[*Row]bool{}
		for range tt.n {
			before := cap(rb.rows)
			r := rb.next()
			if len(rb.rows) == 1 || cap(rb.rows) != before {
				blocks++
			}
			if seen[r] {
				t.Fatalf("n=%d: row handed out twice", tt.n)
			}
			seen[r] = true
		}
		if blocks != tt.blocks || rb.made != tt.n {
			t.Errorf("n=%d: %d blocks making %d rows, want %d blocks making %d", tt.n, blocks, rb.made, tt.blocks, tt.n)
		}
	}
}

// FuzzRowRoundTrip: any event the log's decoder accepts is stored as a
// row that reads back as that event: IDs, type, sender, state key,
// relation, labels, flags, parents, received time, and content, unsigned
// and top-level keys that decode to what the event carried; the scan's
// and the janitor's partial readers agree with the full one.
func FuzzRowRoundTrip(f *testing.F) {
	s := bus.Subjects{Prefix: "sb"}
	for _, m := range []map[string]any{
		{"event_id": "$e", "room_id": "!r:x", "type": "m.room.message", "sender": "@a:x", "origin_server_ts": 5, "depth": 1,
			"prev_events": []any{"$p", "$q"}, "content": map[string]any{"body": "x", "url": "mxc://a/b", "org.matrix.labels": []any{"#l", 1},
				"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": "$root"}},
			"unsigned": map[string]any{"age": 7, "transaction_id": "t", "other": []any{1.5, nil}}, "received_ts": 100},
		{"event_id": "$s", "room_id": "!r:x", "type": "m.room.member", "sender": "@a:x", "state_key": "@a:x", "origin_server_ts": -1,
			"depth": 9, "content": map[string]any{"membership": "join"}, "membership": "join", "rejected": true, "outlier": true},
		{"event_id": "$r", "room_id": "!r:x", "type": "m.room.redaction", "sender": "@a:x", "redacts": "$e", "origin_server_ts": 1,
			"depth": 2, "content": map[string]any{"redacts": "$e"}, "backfilled": true, "soft_failed": true, "unsigned": map[string]any{"age": -5}},
	} {
		data, _ := bus.Encode(m)
		f.Add(data, int64(1_700_000_000_000))
	}
	ret, _ := bus.Encode(map[string]any{"event_id": "$t", "room_id": "!r:x", "type": "m.room.retention", "sender": "@a:x", "state_key": "",
		"origin_server_ts": 1, "depth": 3, "content": map[string]any{"max_lifetime": uint64(86_400_000), "min_lifetime": int64(-1)}})
	f.Add(ret, int64(0))
	f.Fuzz(func(t *testing.T, data []byte, logTS int64) {
		e := s.Decode(1, s.Room("!r:x", commands.KindEvent), data, logTS)
		if e.Err != nil {
			return
		}
		ev := e.Event
		received := ev.ReceivedTS
		if received == 0 {
			received = logTS
		}
		r, err := newRow(ev, received)
		if err != nil {
			t.Fatalf("newRow: %v", err)
		}
		b := r.marshal()
		got, err := unmarshalRow(b)
		if err != nil {
			t.Fatalf("a stored row does not read back: %v", err)
		}
		stateKey := ""
		if ev.StateKey != nil {
			stateKey = *ev.StateKey
		}
		if got.EventID != ev.EventID || got.Type != ev.Type || got.Sender != ev.Sender || got.StateKey != stateKey ||
			got.IsState() != ev.IsState() || got.Redacts != ev.Redacts || got.OriginServerTS != ev.OriginServerTS ||
			got.AgeTS != r.AgeTS || got.RelType != r.RelType || got.RelTarget != r.RelTarget || got.Flags != r.Flags ||
			got.Summary != r.Summary || !reflect.DeepEqual(got.Meta(), ev.Meta()) ||
			strings.Join(got.Prevs(), "\x00") != strings.Join(ev.PrevEvents, "\x00") || len(got.Prevs()) != len(ev.PrevEvents) {
			t.Fatalf("event %+v\nstored as %+v", ev, got)
		}
		if ev.IsState() && ev.Type == "m.room.retention" {
			// The stored summary gives back the lifetimes the event set.
			minL, maxL := commands.ParseRetentionSummary(got.Summary)
			for _, c := range []struct {
				key string
				got *int64
			}{{"min_lifetime", minL}, {"max_lifetime", maxL}} {
				v, present := ev.Content[c.key]
				n, isInt := commands.AsInt(v)
				if got.Summary != "" && (present != (c.got != nil) || present && (!isInt || *c.got != n)) {
					t.Fatalf("retention %v summarised as %q", ev.Content, got.Summary)
				}
			}
		}
		content, err := bus.DecodeMap(got.Content, bus.DefaultLimits)
		if err != nil || !sameStored(content, ev.Content) {
			t.Fatalf("content %v reads back as %v (%v)", ev.Content, content, err)
		}
		pairs := func(raw []byte, n int) map[string]any {
			if n == 0 {
				return nil
			}
			// A map header for n pairs, then the pairs.
			hdr := []byte{0xdf, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
			m, err := bus.DecodeMap(append(hdr, raw...), bus.DefaultLimits)
			if err != nil {
				t.Fatalf("stored pairs do not read back: %v", err)
			}
			return m
		}
		wantUnsigned := map[string]any{}
		for k, v := range ev.Unsigned {
			if !computedUnsigned[k] {
				wantUnsigned[k] = v
			}
		}
		if u := pairs(got.Unsigned, got.UnsignedN); !sameStored(u, wantUnsigned) && (len(u) != 0 || len(wantUnsigned) != 0) {
			t.Fatalf("unsigned %v reads back as %v", wantUnsigned, u)
		}
		if x := pairs(got.Extra, got.ExtraN); !sameStored(x, ev.Extra) && (len(x) != 0 || len(ev.Extra) != 0) {
			t.Fatalf("top-level keys %v read back as %v", ev.Extra, x)
		}
		h, err := rowHead(b)
		if err != nil || string(h.id) != ev.EventID || string(h.typ) != ev.Type || string(h.sender) != ev.Sender ||
			h.flags != r.Flags || strings.Join(h.labels, "\x00") != strings.Join(got.Labels, "\x00") {
			t.Fatalf("rowHead %+v, %v", h, err)
		}
		ph, err := readPurgeHead(b)
		if err != nil || string(ph.eventID) != ev.EventID || string(ph.redacts) != ev.Redacts || ph.ageTS != r.AgeTS ||
			string(ph.relTarget) != r.RelTarget {
			t.Fatalf("readPurgeHead %+v, %v", ph, err)
		}
		if ts, exact, err := rowReceived(ph.ageTS, ph.rest); err != nil || !exact || ts != r.AgeTS+ev.PublishedAge() {
			t.Fatalf("received %d %v %v, want %d", ts, exact, err, r.AgeTS+ev.PublishedAge())
		}
	})
}

// sameStored compares decoded values as MessagePack stores them: an
// unsigned integer that fits int64 is that int64, NaN is NaN.
func sameStored(a, b any) bool {
	if u, ok := a.(uint64); ok && u <= math.MaxInt64 {
		a = int64(u)
	}
	if u, ok := b.(uint64); ok && u <= math.MaxInt64 {
		b = int64(u)
	}
	switch x := a.(type) {
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			if w, ok := y[k]; !ok || !sameStored(v, w) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !sameStored(x[i], y[i]) {
				return false
			}
		}
		return true
	case float64:
		y, ok := b.(float64)
		return ok && (x == y || math.IsNaN(x) && math.IsNaN(y))
	}
	return reflect.DeepEqual(a, b)
}
