package projections

import (
	"bytes"
	"reflect"
	"testing"
	"unsafe"

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
