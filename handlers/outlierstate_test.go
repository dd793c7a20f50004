package handlers_test

import (
	"testing"

	"github.com/scrollback/scrollback/testenv"
)

// TestMessages_TheStateAJoinBroughtIsTheRoomsState: a room joined over
// federation holds the state the join brought (send_join's state: the
// create, the power levels, the other members) as outliers, and Synapse
// reads it as the room's state before the join, its state groups built
// from it. A moderator of another server, whose power level is only in
// that outlier state, redacts a spammer of a third server after our
// user's join: Synapse applies the redaction (the recheck finds the
// moderator's level), and so must scrollback, which took the room for
// one without power levels and withheld it, the spam shown whole.
func TestMessages_TheStateAJoinBroughtIsTheRoomsState(t *testing.T) {
	const mod, spammer = "@mod:other.org", "@spam:third.org"
	f := newFixture(t)
	r := testenv.NewRoom("fedjoin", "other.org")
	state := []testenv.Event{
		r.Next("m.room.create", mod, testenv.S(""), map[string]any{"creator": mod, "room_version": "10"}),
		r.Join(mod),
		r.Next("m.room.power_levels", mod, testenv.S(""), map[string]any{"users": map[string]any{mod: int64(100)}}),
		r.Next("m.room.join_rules", mod, testenv.S(""), map[string]any{"join_rule": "public"}),
		r.Next("m.room.history_visibility", mod, testenv.S(""), map[string]any{"history_visibility": "joined"}),
		r.Join(spammer),
	}
	for _, ev := range state {
		ev["outlier"] = true
	}
	f.add(state...)
	join := r.Join(bob)
	spam := r.Msg(spammer, "buy now")
	red := r.Next("m.room.redaction", mod, nil, map[string]any{})
	red["redacts"] = spam.ID()
	f.add(join, spam, red)

	p := f.mustRead(r.ID, map[string]any{"user_id": bob, "dir": "b", "limit": 10})
	same(t, "page", p.ids, []string{red.ID(), spam.ID(), join.ID()})
	if c := p.events[1]["content"].(map[string]any); len(c) != 0 {
		t.Errorf("the moderator's redaction was not applied: spam content %v", c)
	}
	// The join's state is what lazy loading and prev_content see too.
	if un, _ := p.events[2]["unsigned"].(map[string]any); un["prev_content"] != nil {
		t.Errorf("bob's first join replaces nothing: unsigned %v", un)
	}
}
