package handlers_test

import (
	"strings"
	"testing"

	"github.com/scrollback/scrollback/testenv"
)

// TestBundledAggregations_AnyStringRelationStartsNoThread:
// Synapse's relation_from_event (synapse/events/__init__.py) takes any
// string rel_type and event_id as a relation, "" and IDs past 255 bytes
// included, and get_bundled_aggregations (synapse/handlers/relations.py)
// then puts the event in relations_by_id: no thread summary for it
// ("It is not valid to start a thread on an event which itself relates
// to another event"), and no bundle at all when rel_type is m.replace or
// m.annotation. commands.RelationOf took such events for events without
// a relation, so they got a thread summary (and an edit with a long
// target got its references and edits).
func TestBundledAggregations_AnyStringRelationStartsNoThread(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("oddrel", "test")
	evs := r.Setup(alice, bob)
	other := r.Msg(alice, "other")
	long := "$" + strings.Repeat("x", 300)
	relating := func(relType, target string) testenv.Event {
		return r.Next("m.room.message", alice, nil, map[string]any{"body": "odd", "m.relates_to": map[string]any{"rel_type": relType, "event_id": target}})
	}
	cases := []struct {
		name string
		ev   testenv.Event
	}{
		{"empty rel_type", relating("", other.ID())},
		{"empty event_id", relating("m.thread", "")},
		{"long rel_type", relating(strings.Repeat("r", 300), other.ID())},
		{"thread with a long event_id", relating("m.thread", long)},
		{"edit with a long event_id", relating("m.replace", long)},
	}
	all := append(evs, other)
	for _, c := range cases {
		all = append(all, c.ev)
	}
	for _, c := range cases {
		all = append(all,
			r.Next("m.room.message", bob, nil, map[string]any{"body": "reply", "m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": c.ev.ID()}}),
			r.Next("m.room.message", bob, nil, map[string]any{"body": "ref", "m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": c.ev.ID()}}))
	}
	// No relation without a string event_id: an m.replace without one is
	// no edit, and gets its bundles.
	noID := r.Next("m.room.message", alice, nil, map[string]any{"body": "odd", "m.relates_to": map[string]any{"rel_type": "m.replace"}})
	all = append(all, noID, r.Next("m.room.message", bob, nil, map[string]any{"body": "reply", "m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": noID.ID()}}))
	// Redacted, its content is pruned, m.relates_to with it: Synapse's
	// relation_from_event finds none, and it starts a thread.
	redacted := relating("", other.ID())
	redaction := r.Next("m.room.redaction", alice, nil, map[string]any{"redacts": redacted.ID()})
	redaction["redacts"] = redacted.ID()
	all = append(all, redacted,
		r.Next("m.room.message", bob, nil, map[string]any{"body": "reply", "m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": redacted.ID()}}),
		redaction)
	f.add(all...)
	p := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 100})
	for _, c := range cases {
		i := -1
		for j, id := range p.ids {
			if id == c.ev.ID() {
				i = j
			}
		}
		if i < 0 {
			t.Fatalf("%s: not on the page", c.name)
		}
		rel := relations(p.events[i])
		if th, ok := rel["m.thread"]; ok {
			t.Errorf("%s: an event with a relation got a thread summary: %v", c.name, th)
		}
		_, hasRef := rel["m.reference"]
		if wantRef := c.name != "edit with a long event_id"; hasRef != wantRef {
			t.Errorf("%s: m.reference bundled %v, want %v (an edit gets no bundle)", c.name, hasRef, wantRef)
		}
	}
	for i, id := range p.ids {
		if id == redacted.ID() || id == noID.ID() {
			if _, ok := relations(p.events[i])["m.thread"]; !ok {
				t.Errorf("%s has no relation (redacted, or no event_id), but got no thread summary: %v", id, relations(p.events[i]))
			}
		}
	}
}
