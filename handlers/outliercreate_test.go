package handlers_test

import (
	"testing"

	"github.com/scrollback/scrollback/testenv"
)

// outlierCreateRoom is a room joined over federation: the state the join
// brought (create, alice's join, power levels, join rules) is held as
// outliers only, as Synapse persists the state from send_join; the
// timeline starts at bob's join. Synapse knows the room version all the
// same (rooms.room_version, which _fetch_event_rows joins in to build
// every event, prune_event included).
func outlierCreateRoom(f *fixture, name, version string, members ...string) *testenv.Room {
	r := testenv.NewRoom(name, "test")
	create := r.Next("m.room.create", alice, testenv.S(""), map[string]any{"creator": alice, "room_version": version})
	state := []testenv.Event{
		create,
		r.Join(alice),
		r.Next("m.room.power_levels", alice, testenv.S(""), map[string]any{"users": map[string]any{alice: int64(100)}}),
		r.Next("m.room.join_rules", alice, testenv.S(""), map[string]any{"join_rule": "public"}),
	}
	for _, ev := range state {
		ev["outlier"] = true
	}
	f.add(state...)
	for _, m := range members {
		f.add(r.Join(m))
	}
	return r
}

// TestRedactions_VersionFromAnOutlierCreate (found by a review helper):
// with m.room.create held only
// as an outlier, reads took the room for version 1: a redacted
// m.room.aliases event of a v10 room kept its aliases in an admin read
// (Synapse's redact keeps them only with special_case_aliases_auth,
// v1-v5; client reads hide aliases events altogether), a v11 redaction
// lost its top-level redacts, and a redaction across servers by a user
// without the power applied and was shown (no recheck_redaction before v3).
func TestRedactions_VersionFromAnOutlierCreate(t *testing.T) {
	f := newFixture(t)
	r := outlierCreateRoom(f, "outcreate", "10", bob)
	aliases := r.Next("m.room.aliases", alice, testenv.S("test"), map[string]any{"aliases": []any{"#secret:test"}})
	red := r.Next("m.room.redaction", alice, nil, map[string]any{})
	red["redacts"] = aliases.ID()
	f.add(aliases, red)
	p := f.mustRead(r.ID, map[string]any{"admin": true, "dir": "b", "limit": 2})
	same(t, "page", p.ids, []string{red.ID(), aliases.ID()})
	if c := p.events[1]["content"].(map[string]any); len(c) != 0 {
		t.Errorf("redacted v10 m.room.aliases content = %v, want {}", c)
	}

	t.Run("v11: a redaction shows its target at the top level", func(t *testing.T) {
		r := outlierCreateRoom(f, "outcreate11", "11", bob)
		m := r.Msg(bob, "hi")
		red := r.Next("m.room.redaction", alice, nil, map[string]any{"redacts": m.ID()})
		delete(red, "redacts") // v11: content.redacts alone
		f.add(m, red)
		p := f.mustRead(r.ID, map[string]any{"user_id": bob, "dir": "b", "limit": 2})
		same(t, "page", p.ids, []string{red.ID(), m.ID()})
		if p.events[0]["redacts"] != m.ID() {
			t.Errorf("v11 redaction: top-level redacts = %v, want %s", p.events[0]["redacts"], m.ID())
		}
	})
	t.Run("v10: a redaction across servers without the power redacts nothing", func(t *testing.T) {
		const eve = "@eve:evil.org"
		r := outlierCreateRoom(f, "outcreate10x", "10", bob, eve)
		m := r.Msg(bob, "kept")
		on := r.Next("m.room.redaction", eve, nil, map[string]any{})
		on["redacts"] = m.ID()
		f.add(m, on)
		p := f.mustRead(r.ID, map[string]any{"user_id": bob, "dir": "b", "limit": 2})
		same(t, "page (eve's redaction withheld)", p.ids, []string{m.ID()})
		if c := p.events[0]["content"].(map[string]any); c["body"] != "kept" {
			t.Errorf("content = %v", c)
		}
	})
}
