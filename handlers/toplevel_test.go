package handlers_test

import (
	"reflect"
	"testing"

	"github.com/scrollback/scrollback/testenv"
)

// TestMessages_TopLevelKeysSynapseKeeps: Synapse's client format is the
// PDU minus auth_events, prev_events, hashes, signatures, depth, origin
// and prev_state (rust/src/events/serialize.rs V2_DROP_KEYS), so any
// other top-level key a server put in the event (a legacy membership, an
// addition of its own) is shown. A redacted event keeps only what
// redaction keeps (rust/src/events/utils.rs redact): the legacy
// membership before room version 11, nothing of a server's own keys.
func TestMessages_TopLevelKeysSynapseKeeps(t *testing.T) {
	for _, tc := range []struct {
		version        string
		keepMembership bool // after redaction
	}{{"10", true}, {"11", false}} {
		t.Run("v"+tc.version, func(t *testing.T) {
			f := newFixture(t)
			r := testenv.NewRoom("top"+tc.version, "test")
			create := r.Next("m.room.create", alice, testenv.S(""), map[string]any{"creator": alice, "room_version": tc.version})
			join := r.Join(alice)
			join["membership"] = "join" // the legacy top-level copy
			join["origin"] = "test"
			join["prev_state"] = []any{}
			join["auth_events"] = []any{create.ID()}
			pl := r.Next("m.room.power_levels", alice, testenv.S(""), map[string]any{"users": map[string]any{alice: int64(100)}})
			msg := r.Msg(alice, "hello")
			msg["org.example.extra"] = map[string]any{"n": int64(1), "list": []any{"a", "b"}}
			plain := r.Msg(alice, "plain")
			f.add(create, join, pl, msg, plain)

			read := func(id string) map[string]any {
				t.Helper()
				p := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 20})
				for i, got := range p.ids {
					if got == id {
						return p.events[i]
					}
				}
				t.Fatalf("%s not in the page %v", id, p.ids)
				return nil
			}
			want := map[string]any{"n": int64(1), "list": []any{"a", "b"}}
			if got := read(msg.ID())["org.example.extra"]; !reflect.DeepEqual(got, want) {
				t.Errorf("org.example.extra = %#v, want %#v", got, want)
			}
			ev := read(join.ID())
			if ev["membership"] != "join" {
				t.Errorf("member event: membership = %v, want join", ev["membership"])
			}
			for _, k := range []string{"origin", "prev_state", "auth_events", "hashes", "signatures", "depth", "prev_events"} {
				if _, ok := ev[k]; ok {
					t.Errorf("member event shows %q", k)
				}
			}
			if _, ok := read(plain.ID())["org.example.extra"]; ok {
				t.Error("another event shows the key")
			}

			f.add(r.Next("m.room.redaction", alice, nil, map[string]any{"redacts": msg.ID()}),
				r.Next("m.room.redaction", alice, nil, map[string]any{"redacts": join.ID()}))
			if ev := read(msg.ID()); ev["org.example.extra"] != nil {
				t.Errorf("redacted message: org.example.extra = %v", ev["org.example.extra"])
			}
			ev = read(join.ID())
			if _, ok := ev["redacted_because"]; !ok {
				t.Fatalf("member event not redacted: %v", ev)
			}
			if got := ev["membership"] == "join"; got != tc.keepMembership {
				t.Errorf("redacted member event: membership = %v, want kept %v", ev["membership"], tc.keepMembership)
			}
		})
	}
}
