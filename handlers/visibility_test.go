package handlers_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/testenv"
)

const carol = "@carol:test"

func memberships(p page) []string {
	var out []string
	for _, ev := range p.events {
		un, _ := ev["unsigned"].(map[string]any)
		m, _ := un["membership"].(string)
		out = append(out, m)
	}
	return out
}

func visRoom(r *testenv.Room, visibility string) []testenv.Event {
	evs := r.Setup(alice)
	if visibility != "" {
		evs = append(evs, r.Next("m.room.history_visibility", alice, testenv.S(""), map[string]any{"history_visibility": visibility}))
	}
	return evs
}

// Synapse's test_joined_history_visibility, through /messages: with
// "joined" visibility, bob who joined then left sees exactly
// [join, during, leave] with memberships [join, join, leave].
func TestVisibility_JoinedHistory(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("joined", "test")
	evs := visRoom(r, "joined")
	before := r.Msg(alice, "before")
	join := r.Join(bob)
	during := r.Msg(alice, "during")
	leave := r.Member(bob, bob, "leave")
	after := r.Msg(alice, "after")
	f.add(append(evs, before, join, during, leave, after)...)

	// Read from just after the visibility event: the events before it
	// were under the default (shared) visibility.
	hv := evs[len(evs)-1]
	afterHV := fmt.Sprintf("t%d-%d", hv["depth"], f.seqOf[hv.ID()])
	p := f.mustRead(r.ID, map[string]any{"user_id": bob, "limit": 100, "from": afterHV})
	same(t, "bob (departed)", p.ids, idsOf([]testenv.Event{join, during, leave}))
	same(t, "bob's memberships", memberships(p), []string{"join", "join", "leave"})

	p = f.mustRead(r.ID, map[string]any{"user_id": alice, "limit": 5, "from": fmt.Sprintf("t%d-%d", evs[len(evs)-1]["depth"], f.seqOf[evs[len(evs)-1].ID()])})
	same(t, "alice (resident)", p.ids, idsOf([]testenv.Event{before, join, during, leave, after}))
	same(t, "alice's memberships", memberships(p), []string{"join", "join", "join", "join", "join"})

	t.Run("departed user paging back is clamped to the leave", func(t *testing.T) {
		p := f.mustRead(r.ID, map[string]any{"user_id": bob, "dir": "b", "limit": 2})
		same(t, "page", p.ids, idsOf([]testenv.Event{leave, during}))
		if want := fmt.Sprintf("t%d-%d", leave["depth"], f.seqOf[leave.ID()]) + zeros; p.start != want {
			t.Fatalf("start=%q, want the clamped %q", p.start, want)
		}
	})
	t.Run("forgetting ends access", func(t *testing.T) {
		f.seq++
		data := map[string]any{"id": "forget1", "action": "forget", "room_id": r.ID, "params": map[string]any{"user_id": bob}}
		f.applyCmd(data)
		_, e := f.read(r.ID, map[string]any{"user_id": bob})
		if e == nil || e.Status != 403 {
			t.Fatalf("after forget: %v", e)
		}
	})
}

func TestVisibility_InvitedSharedWorldReadable(t *testing.T) {
	f := newFixture(t)

	t.Run("invited", func(t *testing.T) {
		r := testenv.NewRoom("invited", "test")
		evs := visRoom(r, "invited")
		before := r.Msg(alice, "before")
		invite := r.Member(alice, bob, "invite")
		whileInvited := r.Msg(alice, "while invited")
		join := r.Join(bob)
		joined := r.Msg(alice, "joined")
		f.add(append(evs, before, invite, whileInvited, join, joined)...)
		hv := evs[len(evs)-1]
		p := f.mustRead(r.ID, map[string]any{"user_id": bob, "limit": 100, "from": fmt.Sprintf("t%d-%d", hv["depth"], f.seqOf[hv.ID()])})
		same(t, "bob", p.ids, idsOf([]testenv.Event{invite, whileInvited, join, joined}))
		same(t, "memberships", memberships(p), []string{"invite", "invite", "join", "join"})
	})
	t.Run("shared shows history to members", func(t *testing.T) {
		r := testenv.NewRoom("shared", "test")
		evs := visRoom(r, "shared")
		before := r.Msg(alice, "before")
		join := r.Join(bob)
		f.add(append(evs, before, join)...)
		p := f.mustRead(r.ID, map[string]any{"user_id": bob, "limit": 100})
		same(t, "bob", p.ids, idsOf(append(evs, before, join)))
		if memberships(p)[0] != "leave" {
			t.Fatalf("membership before bob's join = %q, want leave", memberships(p)[0])
		}
	})
	t.Run("world_readable peek", func(t *testing.T) {
		r := testenv.NewRoom("world", "test")
		evs := visRoom(r, "world_readable")
		msg := r.Msg(alice, "hello world")
		f.add(append(evs, msg)...)
		p := f.mustRead(r.ID, map[string]any{"user_id": carol, "dir": "b", "limit": 2})
		same(t, "carol peeks", p.ids, idsOf([]testenv.Event{msg, evs[len(evs)-1]}))
	})
	t.Run("shared and peeking hides, after visibility changes", func(t *testing.T) {
		r := testenv.NewRoom("wr2", "test")
		evs := visRoom(r, "shared")
		secret := r.Msg(alice, "secret")
		wr := r.Next("m.room.history_visibility", alice, testenv.S(""), map[string]any{"history_visibility": "world_readable"})
		public := r.Msg(alice, "public")
		f.add(append(evs, secret, wr, public)...)
		p := f.mustRead(r.ID, map[string]any{"user_id": carol, "limit": 100})
		// The visibility event itself uses the less restrictive of old
		// and new, so it is shown.
		same(t, "carol", p.ids, idsOf([]testenv.Event{wr, public}))
	})
	t.Run("unknown room and non-member are 403", func(t *testing.T) {
		_, e := f.read("!none:test", map[string]any{"user_id": carol})
		if e == nil || e.Status != 403 || e.Message != "User @carol:test not in room !none:test, and room previews are disabled" {
			t.Fatalf("%v", e)
		}
	})
}

func TestVisibility_HiddenEventsAndIgnoredUsers(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("hidden", "test")
	evs := r.Setup(alice, bob)
	dummy := r.Next("org.matrix.dummy_event", alice, nil, nil)
	aliases := r.Next("m.room.aliases", alice, testenv.S("test"), map[string]any{"aliases": []any{"#a:test"}})
	fromBob := r.Msg(bob, "from bob")
	bobTopic := r.Next("m.room.topic", bob, testenv.S(""), map[string]any{"topic": "bob's"})
	f.add(append(evs, dummy, aliases, fromBob, bobTopic)...)
	p := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 4, "ignored_users": []any{bob}})
	same(t, "alice ignoring bob", p.ids, []string{bobTopic.ID()})
	if !p.hasEnd {
		t.Fatal("a page emptied by visibility lost its end")
	}
	p = f.mustRead(r.ID, map[string]any{"admin": true, "dir": "b", "limit": 4})
	same(t, "admin sees all", p.ids, rev(idsOf([]testenv.Event{dummy, aliases, fromBob, bobTopic})))
	if _, ok := p.events[0]["unsigned"].(map[string]any)["membership"]; ok {
		t.Fatal("admin read carries unsigned.membership")
	}
}

func TestVisibility_RetentionHidesOldMessages(t *testing.T) {
	f := newFixture(t)
	f.h.Retention = handlers.Retention{Enabled: true, Default: commands.RetentionPolicy{MaxLifetime: int64(24 * time.Hour / time.Millisecond)}}
	r := testenv.NewRoom("ret", "test")
	evs := r.Setup(alice)
	old := r.Msg(alice, "old") // origin_server_ts in 2023: older than a day
	fresh := r.Next("m.room.message", alice, nil, map[string]any{"body": "fresh"})
	fresh["origin_server_ts"] = f.clock.Now().UnixMilli() - 1000
	f.add(append(evs, old, fresh)...)
	p := f.mustRead(r.ID, map[string]any{"user_id": alice, "limit": 100})
	same(t, "retention", p.ids, idsOf(append(evs, fresh)))
	// A room policy overrides the default.
	f.add(r.Next("m.room.retention", alice, testenv.S(""), map[string]any{"max_lifetime": int64(1 << 50)}))
	p = f.mustRead(r.ID, map[string]any{"user_id": alice, "limit": 100})
	if len(p.ids) != len(evs)+3 {
		t.Fatalf("with a long room policy: %v", p.ids)
	}
}

func TestRedactions(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("redact", "test")
	evs := r.Setup(alice, bob)
	target := r.Next("m.room.message", bob, nil, map[string]any{"msgtype": "m.text", "body": "spam", "url": "mxc://x/y"})
	red := r.Next("m.room.redaction", alice, nil, map[string]any{"redacts": target.ID(), "reason": "spam"})
	red["redacts"] = target.ID()
	// The redaction reaches the log before its target.
	f.add(evs...)
	f.add(red, target)
	p := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 2})
	same(t, "page", p.ids, []string{red.ID(), target.ID()})
	got := p.events[1]
	if c := got["content"].(map[string]any); len(c) != 0 {
		t.Fatalf("redacted content = %v, want {}", c)
	}
	un := got["unsigned"].(map[string]any)
	because, _ := un["redacted_because"].(map[string]any)
	if because["event_id"] != red.ID() || un["redacted_by"] != red.ID() {
		t.Fatalf("unsigned = %v", un)
	}
	if top, _ := got["redacted_because"].(map[string]any); top["event_id"] != red.ID() {
		t.Fatalf("top-level redacted_because = %v", got["redacted_because"])
	}
	t.Run("content.redacts only (room v11) redacts and shows redacts", func(t *testing.T) {
		r11 := v11Room("v11redacts")
		setup := v11Setup(r11)
		m := r11.Msg(bob, "v11 style target")
		rd := r11.Next("m.room.redaction", alice, nil, map[string]any{"redacts": m.ID()})
		delete(rd, "redacts") // content.redacts alone
		f.add(append(setup, m, rd)...)
		p := f.mustRead(r11.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 2})
		if p.events[0]["redacts"] != m.ID() {
			t.Fatalf("redaction event without top-level redacts: %v", p.events[0])
		}
		if c := p.events[1]["content"].(map[string]any); len(c) != 0 {
			t.Fatalf("target not redacted: %v", c)
		}
	})
	// Synapse's EventBase.redacts reads where the room version keeps the
	// target; elsewhere it is ordinary content that the auth rules never
	// checked, so anybody could erase anybody's message with it.
	t.Run("content.redacts only before v11 redacts nothing", func(t *testing.T) {
		m := r.Msg(alice, "alice's message")
		rd := r.Next("m.room.redaction", bob, nil, map[string]any{"redacts": m.ID()})
		delete(rd, "redacts") // content.redacts alone
		f.add(m, rd)
		p := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 2})
		same(t, "page (the redaction withheld)", p.ids, []string{m.ID()})
		if c := p.events[0]["content"].(map[string]any); c["body"] != "alice's message" {
			t.Fatalf("a v10 message redacted by a content-only redacts: %v", c)
		}
	})
	t.Run("top-level redacts only in v11 redacts nothing", func(t *testing.T) {
		r11 := v11Room("v11toplevel")
		setup := v11Setup(r11)
		m := r11.Msg(alice, "alice's message")
		rd := r11.Next("m.room.redaction", bob, nil, map[string]any{})
		rd["redacts"] = m.ID()
		f.add(append(setup, m, rd)...)
		p := f.mustRead(r11.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 2})
		same(t, "page (the redaction withheld)", p.ids, []string{m.ID()})
		if c := p.events[0]["content"].(map[string]any); c["body"] != "alice's message" {
			t.Fatalf("a v11 message redacted by a top-level-only redacts: %v", c)
		}
	})
	// Synapse's serialize_event copies a shown redaction's target
	// (EventBase.redacts, where the room version keeps it) to the other
	// place: into content before v11, to the top level from v11 on.
	t.Run("the target in both places", func(t *testing.T) {
		m := r.Msg(bob, "v10 target")
		rd := r.Next("m.room.redaction", alice, nil, map[string]any{"reason": "r", "redacts": "$not.the.target"})
		rd["redacts"] = m.ID()
		r11 := v11Room("v11both")
		setup := v11Setup(r11)
		m11 := r11.Msg(bob, "v11 target")
		rd11 := r11.Next("m.room.redaction", alice, nil, map[string]any{"redacts": m11.ID()})
		rd11["redacts"] = "$not.the.target"
		f.add(m, rd)
		f.add(append(setup, m11, rd11)...)
		p := f.mustRead(r.ID, map[string]any{"admin": true, "dir": "b", "limit": 1})
		c := p.events[0]["content"].(map[string]any)
		if p.events[0]["redacts"] != m.ID() || c["redacts"] != m.ID() || c["reason"] != "r" {
			t.Fatalf("v10 redaction: redacts %v, content %v", p.events[0]["redacts"], c)
		}
		p = f.mustRead(r11.ID, map[string]any{"admin": true, "dir": "b", "limit": 1})
		c = p.events[0]["content"].(map[string]any)
		if p.events[0]["redacts"] != m11.ID() || c["redacts"] != m11.ID() {
			t.Fatalf("v11 redaction: redacts %v, content %v", p.events[0]["redacts"], c)
		}
	})
	t.Run("member events keep membership", func(t *testing.T) {
		m := r.Next("m.room.member", carol, testenv.S(carol), map[string]any{"membership": "join", "displayname": "Carol"})
		rm := r.Next("m.room.redaction", alice, nil, map[string]any{"redacts": m.ID()})
		f.add(m, rm)
		p := f.mustRead(r.ID, map[string]any{"admin": true, "dir": "b", "limit": 2})
		c := p.events[1]["content"].(map[string]any)
		if c["membership"] != "join" || c["displayname"] != nil {
			t.Fatalf("content = %v", c)
		}
	})
}

// TestRedactions_AChainCostsOneLevel: the redaction in redacted_because
// is shown as stored, without its own redacted_because (Synapse embeds it
// without recursing): a chain of redactions of redactions, which any
// member can send, made each level double the reply (two copies of
// redacted_because a level).
func TestRedactions_AChainCostsOneLevel(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("chain", "test")
	evs := r.Setup(alice, bob)
	m := r.Msg(bob, "first")
	chain := []testenv.Event{m}
	for range 20 {
		prev := chain[len(chain)-1]
		chain = append(chain, r.Next("m.room.redaction", bob, nil, map[string]any{"redacts": prev.ID()}))
	}
	f.add(append(evs, chain...)...)
	from := fmt.Sprintf("t%d-%d", evs[len(evs)-1]["depth"], f.seqOf[evs[len(evs)-1].ID()])
	p := f.mustRead(r.ID, map[string]any{"user_id": bob, "dir": "f", "limit": 1, "from": from})
	same(t, "page", p.ids, []string{m.ID()})
	because, _ := p.events[0]["unsigned"].(map[string]any)["redacted_because"].(map[string]any)
	if because["event_id"] != chain[1].ID() {
		t.Fatalf("redacted_because = %v", because)
	}
	if _, nested := because["redacted_because"]; nested {
		t.Fatalf("the redaction in redacted_because is shown redacted: %v", because)
	}
	if un, _ := because["unsigned"].(map[string]any); un["redacted_by"] != nil || un["redacted_because"] != nil {
		t.Fatalf("the redaction in redacted_because has its own: %v", un)
	}
	// Redacted itself (by the next link), it is shown pruned: in a v10
	// room no target is left anywhere.
	if c, _ := because["content"].(map[string]any); len(c) != 0 || because["redacts"] != nil {
		t.Fatalf("the redacted redaction in redacted_because: %v", because)
	}
}

// TestRedactions_RedactedBecauseIsPrunedWhenRedacted: Synapse fetches the
// redaction for redacted_because with get_events, which prunes a
// redaction that is itself redacted: its reason goes, and its target
// stays only where the room version's redaction rules keep it (v11:
// content.redacts, copied to the top level).
func TestRedactions_RedactedBecauseIsPrunedWhenRedacted(t *testing.T) {
	f := newFixture(t)
	for _, v11 := range []bool{false, true} {
		r := testenv.NewRoom(fmt.Sprintf("pruned%v", v11), "test")
		evs := r.Setup(alice, bob)
		if v11 {
			r = v11Room("pruned11")
			evs = v11Setup(r)
		}
		m := r.Msg(bob, "hi")
		red1 := r.Next("m.room.redaction", alice, nil, map[string]any{"redacts": m.ID(), "reason": "secret reason"})
		red2 := r.Next("m.room.redaction", alice, nil, map[string]any{"redacts": red1.ID()})
		f.add(append(evs, m, red1, red2)...)
		p := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "f", "limit": 1, "from": f.tokenAt(evs[len(evs)-1])})
		same(t, "page", p.ids, []string{m.ID()})
		b := p.events[0]["unsigned"].(map[string]any)["redacted_because"].(map[string]any)
		c := b["content"].(map[string]any)
		switch {
		case c["reason"] != nil:
			t.Errorf("v11=%v: the redacted reason is shown: %v", v11, b)
		case !v11 && (c["redacts"] != nil || b["redacts"] != nil):
			t.Errorf("v10: a redacted redaction keeps a target: %v", b)
		case v11 && (c["redacts"] != m.ID() || b["redacts"] != m.ID()):
			t.Errorf("v11: a redacted redaction keeps content.redacts, copied to the top level: %v", b)
		}
	}
}

// TestRedactions_Withheld: Synapse's get_events_as_list withholds, after
// the limit, a redaction event that names no target where its room
// version keeps it, one whose target the server does not hold (unknown,
// rejected, or in another room) until the target arrives, and one of
// m.room.create, whose redaction it also ignores (_maybe_redact_event_row).
func TestRedactions_Withheld(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("withheld", "test")
	evs := r.Setup(alice, bob)
	other := testenv.NewRoom("elsewhere", "test")
	otherEvs := other.Setup(alice)
	elsewhere := other.Msg(alice, "in another room")
	rejected := r.Msg(bob, "rejected")
	rejected["rejected"] = true
	redact := func(target string) testenv.Event {
		return r.Next("m.room.redaction", alice, nil, map[string]any{"redacts": target})
	}
	ofCreate := redact(evs[0].ID())
	ofElsewhere := redact(elsewhere.ID())
	ofRejected := redact(rejected.ID())
	ofNothing := r.Next("m.room.redaction", alice, nil, map[string]any{})
	early := r.Msg(bob, "arrives late")
	ofEarly := redact(early.ID())
	shown := r.Msg(alice, "after")
	f.add(append(otherEvs, elsewhere)...)
	f.add(append(evs, rejected, ofCreate, ofElsewhere, ofRejected, ofNothing, ofEarly, shown)...)

	p := f.mustRead(r.ID, map[string]any{"admin": true, "dir": "b", "limit": 6})
	same(t, "page", p.ids, []string{shown.ID()})
	if !p.hasEnd {
		t.Fatalf("withheld after the limit, so the page goes on: %+v", p)
	}
	t.Run("a page of withheld redactions keeps end", func(t *testing.T) {
		f.wantEmptyWithEnd(t, r.ID, ofEarly, 1)
	})
	t.Run("the create event is never shown redacted", func(t *testing.T) {
		p := f.mustRead(r.ID, map[string]any{"admin": true, "dir": "f", "limit": 1})
		same(t, "first event", p.ids, []string{evs[0].ID()})
		if c := p.events[0]["content"].(map[string]any); c["room_version"] != "10" {
			t.Fatalf("create content = %v", c)
		}
		if un, _ := p.events[0]["unsigned"].(map[string]any); un["redacted_by"] != nil {
			t.Fatalf("create unsigned = %v", un)
		}
	})
	t.Run("shown once its target arrives", func(t *testing.T) {
		f.add(early)
		p := f.mustRead(r.ID, map[string]any{"admin": true, "dir": "b", "limit": 6})
		same(t, "page", p.ids, []string{shown.ID(), ofEarly.ID(), early.ID()})
		if c := p.events[2]["content"].(map[string]any); len(c) != 0 {
			t.Fatalf("late target not redacted: %v", c)
		}
	})
}

// TestRedactions_AcrossServers: from room version 3 on, Synapse's auth
// rules accept a redaction from a user below the redact level on the
// condition that it redacts an event of its sender's own server; across
// servers it then neither redacts its target nor is shown
// (recheck_redaction, checked when events are read). A later redaction
// that applies still redacts the target. The level is the one in the
// state before the redaction.
func TestRedactions_AcrossServers(t *testing.T) {
	const eve = "@eve:evil.org"
	f := newFixture(t)
	r := testenv.NewRoom("servers", "test")
	evs := r.Setup(alice, bob, eve)
	redact := func(by, target string) testenv.Event {
		return r.Next("m.room.redaction", by, nil, map[string]any{"redacts": target})
	}
	m1 := r.Msg(bob, "bob's first")
	eveOn1 := redact(eve, m1.ID())
	aliceOn1 := redact(alice, m1.ID())
	m2 := r.Msg(eve, "eve's own")
	eveOn2 := redact(eve, m2.ID())
	m3 := r.Msg(bob, "bob's second")
	promoted := r.Next("m.room.power_levels", alice, testenv.S(""), map[string]any{"users": map[string]any{alice: int64(100), eve: int64(50)}})
	eveOn3 := redact(eve, m3.ID())
	f.add(append(evs, m1, eveOn1, aliceOn1, m2, eveOn2, m3, promoted, eveOn3)...)

	p := f.mustRead(r.ID, map[string]any{"admin": true, "dir": "b", "limit": 8})
	same(t, "page", p.ids, []string{eveOn3.ID(), promoted.ID(), m3.ID(), eveOn2.ID(), m2.ID(), aliceOn1.ID(), m1.ID()})
	for _, tt := range []struct {
		ev testenv.Event
		by string
	}{{m1, aliceOn1.ID()}, {m2, eveOn2.ID()}, {m3, eveOn3.ID()}} {
		i := slices.Index(p.ids, tt.ev.ID())
		un, _ := p.events[i]["unsigned"].(map[string]any)
		if c := p.events[i]["content"].(map[string]any); len(c) != 0 || un["redacted_by"] != tt.by {
			t.Errorf("%s: content %v, redacted_by %v, want {} and %s", tt.ev.ID(), c, un["redacted_by"], tt.by)
		}
	}
	// _maybe_redact_event_row takes the redactions whose sender had the
	// power first, whatever their order.
	t.Run("a redaction with the power goes first", func(t *testing.T) {
		r3 := testenv.NewRoom("servers3", "test")
		evs := r3.Setup(alice, bob, carol)
		m := r3.Msg(bob, "bob's")
		byCarol := r3.Next("m.room.redaction", carol, nil, map[string]any{"redacts": m.ID()})
		byAlice := r3.Next("m.room.redaction", alice, nil, map[string]any{"redacts": m.ID()})
		f.add(append(evs, m, byCarol, byAlice)...)
		p := f.mustRead(r3.ID, map[string]any{"admin": true, "dir": "b", "limit": 1, "from": f.tokenAt(m)})
		same(t, "page", p.ids, []string{m.ID()})
		if un, _ := p.events[0]["unsigned"].(map[string]any); un["redacted_by"] != byAlice.ID() {
			t.Fatalf("redacted_by %v, want alice's %s (carol's is %s)", un["redacted_by"], byAlice.ID(), byCarol.ID())
		}
	})
	t.Run("not redacted by the redaction that does not apply", func(t *testing.T) {
		r2 := testenv.NewRoom("servers2", "test")
		evs := r2.Setup(alice, bob, eve)
		m := r2.Msg(bob, "kept")
		on := r2.Next("m.room.redaction", eve, nil, map[string]any{"redacts": m.ID()})
		f.add(append(evs, m, on)...)
		p := f.mustRead(r2.ID, map[string]any{"user_id": bob, "dir": "b", "limit": 2})
		same(t, "page", p.ids, []string{m.ID()})
		if c := p.events[0]["content"].(map[string]any); c["body"] != "kept" {
			t.Fatalf("content = %v", c)
		}
	})
}

func relations(ev map[string]any) map[string]any {
	un, _ := ev["unsigned"].(map[string]any)
	rel, _ := un["m.relations"].(map[string]any)
	return rel
}

func TestBundledAggregations(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("bundles", "test")
	evs := r.Setup(alice, bob, carol)
	root := r.Msg(alice, "root")
	thread := func(sender, body string) testenv.Event {
		return r.Next("m.room.message", sender, nil, map[string]any{"msgtype": "m.text", "body": body,
			"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root.ID(), "is_falling_back": true}})
	}
	edit := func(sender, target, body string, ts int64) testenv.Event {
		e := r.Next("m.room.message", sender, nil, map[string]any{"msgtype": "m.text", "body": "* " + body,
			"m.new_content": map[string]any{"msgtype": "m.text", "body": body},
			"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": target}})
		e["origin_server_ts"] = ts
		return e
	}
	ref := func(sender, target string) testenv.Event {
		return r.Next("m.room.message", sender, nil, map[string]any{"body": "ref", "m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": target}})
	}
	r1 := thread(bob, "reply 1")
	r2 := thread(bob, "reply 2")
	e1 := edit(alice, root.ID(), "root v2", 1_900_000_000_000)
	e2 := edit(alice, root.ID(), "root v3", 1_900_000_000_001)
	eOther := edit(bob, root.ID(), "not alice", 1_900_000_000_002)
	ref1 := ref(carol, root.ID())
	ref2 := ref(bob, root.ID())
	editOfReply := edit(bob, r2.ID(), "reply 2 edited", 1_900_000_000_003)
	f.add(append(evs, root, r1, r2, e1, e2, eOther, ref1, ref2, editOfReply)...)

	rootOf := func(t *testing.T, user string, ignored ...any) map[string]any {
		t.Helper()
		from := fmt.Sprintf("t%d-%d", root["depth"], f.seqOf[root.ID()])
		req := map[string]any{"user_id": user, "dir": "b", "limit": 1, "from": from}
		if len(ignored) > 0 {
			req["ignored_users"] = ignored
		}
		p := f.mustRead(r.ID, req)
		same(t, "root page", p.ids, []string{root.ID()})
		return relations(p.events[0])
	}
	for _, tt := range []struct {
		name, user   string
		participated bool
	}{{"root sender", alice, true}, {"replier", bob, true}, {"bystander", carol, false}} {
		t.Run("thread summary for "+tt.name, func(t *testing.T) {
			rel := rootOf(t, tt.user)
			th, _ := rel["m.thread"].(map[string]any)
			if n, _ := commands.AsInt(th["count"]); n != 2 || th["current_user_participated"] != tt.participated {
				t.Fatalf("m.thread = %v", th)
			}
			latest, _ := th["latest_event"].(map[string]any)
			if latest["event_id"] != r2.ID() {
				t.Fatalf("latest_event = %v", latest["event_id"])
			}
			// The latest event carries its own bundle: its edit.
			if le := relations(latest)["m.replace"].(map[string]any); le["event_id"] != editOfReply.ID() {
				t.Fatalf("latest_event's edit = %v", le)
			}
		})
	}
	t.Run("edit: latest by the original's sender, whole event", func(t *testing.T) {
		rep, _ := rootOf(t, alice)["m.replace"].(map[string]any)
		if rep["event_id"] != e2.ID() || rep["content"].(map[string]any)["m.new_content"] == nil {
			t.Fatalf("m.replace = %v", rep)
		}
	})
	t.Run("references in order", func(t *testing.T) {
		refs := rootOf(t, alice)["m.reference"].(map[string]any)["chunk"].([]any)
		if len(refs) != 2 || refs[0].(map[string]any)["event_id"] != ref1.ID() || refs[1].(map[string]any)["event_id"] != ref2.ID() {
			t.Fatalf("m.reference = %v", refs)
		}
	})
	t.Run("ignored users excluded", func(t *testing.T) {
		rel := rootOf(t, carol, bob)
		if _, ok := rel["m.thread"]; ok {
			t.Fatalf("thread of only ignored replies: %v", rel["m.thread"])
		}
		refs := rel["m.reference"].(map[string]any)["chunk"].([]any)
		if len(refs) != 1 {
			t.Fatalf("references = %v", refs)
		}
	})
	t.Run("edits get no bundle and redacted relations drop out", func(t *testing.T) {
		red := r.Next("m.room.redaction", alice, nil, map[string]any{"redacts": r2.ID()})
		red["redacts"] = r2.ID()
		f.add(red)
		th := rootOf(t, alice)["m.thread"].(map[string]any)
		if n, _ := commands.AsInt(th["count"]); n != 1 || th["latest_event"].(map[string]any)["event_id"] != r1.ID() {
			t.Fatalf("after redacting reply 2: %v", th)
		}
	})
	// Synapse's get_bundled_aggregations: a redacted event keeps its
	// thread summary and references; only its edits go.
	t.Run("a redacted root keeps its thread and references, not its edit", func(t *testing.T) {
		f.add(r.Next("m.room.redaction", alice, nil, map[string]any{"redacts": root.ID()}))
		rel := rootOf(t, alice)
		if _, ok := rel["m.replace"]; ok {
			t.Fatalf("a redacted event with an edit: %v", rel["m.replace"])
		}
		th, _ := rel["m.thread"].(map[string]any)
		refs, _ := rel["m.reference"].(map[string]any)
		if n, _ := commands.AsInt(th["count"]); n != 1 || refs == nil {
			t.Fatalf("relations of the redacted root: %v", rel)
		}
	})
}

// TestBundledAggregations_OneKindEach: events with one kind of relation
// each, on one page, get that kind's aggregation and no other (the page
// learns the kinds from the related marks); a reaction bundles nothing.
func TestBundledAggregations_OneKindEach(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("kinds", "test")
	evs := r.Setup(alice, bob)
	withRef, withEdit, withThread, withReaction := r.Msg(alice, "ref"), r.Msg(alice, "edit"), r.Msg(alice, "thread"), r.Msg(alice, "reaction")
	relate := func(typ, relType, target string) testenv.Event {
		return r.Next(typ, alice, nil, map[string]any{"body": relType, "m.relates_to": map[string]any{"rel_type": relType, "event_id": target, "key": "x"}})
	}
	// An edit of another type of event is bundled too, when its type is
	// the original's (Synapse's get_applicable_edits since 1.100, #15295).
	poll := r.Next("org.example.poll", alice, nil, map[string]any{"question": "?"})
	f.add(append(evs, withRef, withEdit, withThread, withReaction, poll,
		relate("m.room.message", "m.reference", withRef.ID()), relate("m.room.message", "m.replace", withEdit.ID()),
		relate("m.room.message", "m.thread", withThread.ID()), relate("m.reaction", "m.annotation", withReaction.ID()),
		relate("org.example.poll", "m.replace", poll.ID()))...)
	p := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 20})
	want := map[string]string{withRef.ID(): "m.reference", withEdit.ID(): "m.replace", withThread.ID(): "m.thread", withReaction.ID(): "", poll.ID(): "m.replace"}
	for i, id := range p.ids {
		kind, ok := want[id]
		if !ok {
			continue
		}
		delete(want, id)
		rel := relations(p.events[i])
		if kind == "" {
			if len(rel) != 0 {
				t.Errorf("%s has bundles %v", id, rel)
			}
			continue
		}
		if _, ok := rel[kind]; !ok || len(rel) != 1 {
			t.Errorf("the message with an %s has bundles %v", kind, rel)
		}
	}
	if len(want) != 0 {
		t.Fatalf("not on the page: %v", want)
	}
}

func TestLazyLoadMembers(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("lazy", "test")
	evs := r.Setup(alice, bob, carol)
	bobName := r.Next("m.room.member", bob, testenv.S(bob), map[string]any{"membership": "join", "displayname": "Bob"})
	m1 := r.Msg(bob, "hi")
	m2 := r.Msg(alice, "hello")
	later := r.Next("m.room.member", bob, testenv.S(bob), map[string]any{"membership": "join", "displayname": "Robert"})
	f.add(append(evs, bobName, m1, m2, later)...)
	from := fmt.Sprintf("t%d-%d", m2["depth"], f.seqOf[m2.ID()])
	m, e := f.read(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 2, "from": from, "filter": map[string]any{"lazy_load_members": true}})
	if e != nil {
		t.Fatal(e)
	}
	state, _ := m["state"].([]any)
	got := map[string]string{}
	for _, s := range state {
		ev := s.(map[string]any)
		got[ev["state_key"].(string)] = ev["event_id"].(string)
		if _, ok := ev["unsigned"].(map[string]any)["membership"]; ok {
			t.Error("state entry carries unsigned.membership")
		}
	}
	if len(got) != 2 || got[bob] != bobName.ID() || got[alice] != evs[1].ID() {
		t.Fatalf("state = %v (want bob's member event as of the chunk, not the later rename)", got)
	}
	// Without lazy_load_members there is no state.
	m, e = f.read(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 2, "from": from})
	if _, ok := m["state"]; ok || e != nil {
		t.Fatalf("state without lazy_load_members: %v %v", m["state"], e)
	}
}

// TestVisibility_RetentionZeroMaxLifetimeHides: a room policy with
// max_lifetime 0 is a policy (Synapse: "if max_lifetime is not None",
// SYNAPSE.md 3 and 9): every non-state event sent before now is hidden.
// scrollback took 0 for "no policy" and showed everything, even with a
// default policy that would have hidden the old message.
func TestVisibility_RetentionZeroMaxLifetimeHides(t *testing.T) {
	f := newFixture(t)
	f.h.Retention = handlers.Retention{Enabled: true, Default: commands.RetentionPolicy{MaxLifetime: int64(24 * time.Hour / time.Millisecond)}}
	r := testenv.NewRoom("ret0", "test")
	evs := append(r.Setup(alice), r.Next("m.room.retention", alice, testenv.S(""), map[string]any{"max_lifetime": int64(0)}))
	old := r.Msg(alice, "old")
	recent := r.Next("m.room.message", alice, nil, map[string]any{"body": "a second ago"})
	recent["origin_server_ts"] = f.clock.Now().UnixMilli() - 1000
	f.add(append(evs, old, recent)...)
	p := f.mustRead(r.ID, map[string]any{"user_id": alice, "limit": 100})
	same(t, "max_lifetime 0", p.ids, idsOf(evs))
}

// Synapse's did_forget (roommember.py): "Returns whether user_id has
// elected to discard history for room_id. Returns False if they have
// since re-joined." -- it counts room_memberships rows with forgotten = 0,
// and a membership after the forget is such a row. So a user who forgot
// the room, joined again and left again is a departed user again
// (SYNAPSE.md 1.3: "leave (incl. kicked) and not forgotten -> OK").
func TestVisibility_AMembershipAfterTheForgetEndsIt(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("reforget", "test")
	evs := visRoom(r, "shared")
	evs = append(evs, r.Join(bob), r.Msg(alice, "one"), r.Member(bob, bob, "leave"))
	f.add(evs...)
	f.applyCmd(map[string]any{"id": "forget2", "action": "forget", "room_id": r.ID, "params": map[string]any{"user_id": bob}})
	if _, e := f.read(r.ID, map[string]any{"user_id": bob}); e == nil || e.Status != 403 {
		t.Fatalf("after forget: %v, want 403", e)
	}
	join2 := r.Join(bob)
	msg2 := r.Msg(alice, "two")
	leave2 := r.Member(bob, bob, "leave")
	f.add(join2, msg2, leave2, r.Msg(alice, "after"))
	p, e := f.read(r.ID, map[string]any{"user_id": bob, "dir": "b", "limit": 2})
	if e != nil {
		t.Fatalf("after rejoining and leaving again: %d %s %q, want 200 (did_forget is false once re-joined)", e.Status, e.Code, e.Message)
	}
	pg := toPage(p)
	same(t, "page", pg.ids, idsOf([]testenv.Event{leave2, msg2}))
	if want := fmt.Sprintf("t%d-%d", leave2["depth"], f.seqOf[leave2.ID()]) + zeros; pg.start != want {
		t.Fatalf("start=%q, want the clamped %q", pg.start, want)
	}
}

// v11Room is a room for v11Setup, which gives its first events: alice
// creates it as version 11 (testenv's Setup makes version 10), bob joins.
func v11Room(name string) *testenv.Room { return testenv.NewRoom(name, "test") }

func v11Setup(r *testenv.Room) []testenv.Event {
	return []testenv.Event{
		r.Next("m.room.create", alice, testenv.S(""), map[string]any{"room_version": "11"}),
		r.Join(alice),
		r.Next("m.room.power_levels", alice, testenv.S(""), map[string]any{"users": map[string]any{alice: int64(100)}}),
		r.Next("m.room.join_rules", alice, testenv.S(""), map[string]any{"join_rule": "public"}),
		r.Join(bob),
	}
}

// TestClientEvent_NoStrippedStateNorTransactionID: SYNAPSE.md 1.5,
// "Invite/knock stripped state removed from unsigned", and
// unsigned.transaction_id only for the sender's own device, which the
// service cannot tell: published values never reach a page.
func TestClientEvent_NoStrippedStateNorTransactionID(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("stripped", "test")
	evs := r.Setup(alice)
	invite := r.Member(alice, bob, "invite")
	invite["unsigned"] = map[string]any{"invite_room_state": []any{map[string]any{"type": "m.room.name", "state_key": "", "sender": alice, "content": map[string]any{"name": "secret"}}}}
	knock := r.Member(carol, carol, "knock")
	knock["unsigned"] = map[string]any{"knock_room_state": []any{map[string]any{"type": "m.room.name", "state_key": "", "sender": alice, "content": map[string]any{"name": "secret"}}}}
	msg := r.Msg(alice, "hi")
	msg["unsigned"] = map[string]any{"transaction_id": "m1234"}
	f.add(append(evs, invite, knock, msg)...)
	p := f.mustRead(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 3})
	same(t, "page", p.ids, []string{msg.ID(), knock.ID(), invite.ID()})
	for _, ev := range p.events {
		un := ev["unsigned"].(map[string]any)
		for _, k := range []string{"invite_room_state", "knock_room_state", "transaction_id"} {
			if _, ok := un[k]; ok {
				t.Errorf("%s: unsigned.%s present: %v", ev["event_id"], k, un[k])
			}
		}
	}
}

// TestVisibility_HistoryVisibilityAtAnotherStateKey: Synapse checks a
// history_visibility event against its own prev_content, the previous
// event at the same state key (none here: shared), so a member who joins
// after it sees it; the room's "" key is not its predecessor.
func TestVisibility_HistoryVisibilityAtAnotherStateKey(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("hvkey", "test")
	evs := visRoom(r, "joined")
	odd := r.Next("m.room.history_visibility", alice, testenv.S("x"), map[string]any{"history_visibility": "joined"})
	join := r.Join(bob)
	f.add(append(evs, odd, join)...)
	p := f.mustRead(r.ID, map[string]any{"user_id": bob, "dir": "b", "limit": 10})
	same(t, "bob", p.ids, rev(idsOf(append(evs, odd, join))))
}
