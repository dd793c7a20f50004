package handlers_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/scrollback/scrollback/testenv"
)

// Who sees what, rule by rule against Synapse's source (session 35):
// synapse/visibility.py _check_client_allowed_to_see_event and
// _check_membership, synapse/api/auth/base.py
// check_user_in_room_or_world_readable, and the lazy-loaded members of
// synapse/handlers/pagination.py get_messages.

// TestVisibility_KickedUserSeesTheKick: _check_membership "always allow
// the user to see their own leave events" whoever sent the leave, and a
// kicked user is a departed user (check_user_in_room: membership leave,
// not forgotten), clamped to the kick.
func TestVisibility_KickedUserSeesTheKick(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("kicked", "test")
	evs := visRoom(r, "joined")
	join := r.Join(bob)
	during := r.Msg(alice, "during")
	kick := r.Member(alice, bob, "leave")
	after := r.Msg(alice, "after")
	f.add(append(evs, join, during, kick, after)...)
	p := f.mustRead(r.ID, map[string]any{"user_id": bob, "dir": "b", "limit": 3})
	same(t, "bob", p.ids, idsOf([]testenv.Event{kick, during, join}))
	same(t, "memberships", memberships(p), []string{"leave", "join", "join"})
}

// TestVisibility_RejectedInviteIsADepartedUser: local_current_membership
// is leave after an invite is rejected, so check_user_in_room with
// allow_departed_users lets the user read, as not peeking. Under joined
// visibility only the rejection shows (its own leave after an invite);
// under shared, every event up to the rejection passes the lax shortcut.
func TestVisibility_RejectedInviteIsADepartedUser(t *testing.T) {
	f := newFixture(t)
	for _, tt := range []struct {
		vis  string
		want func(before, invite, reject testenv.Event) []testenv.Event
	}{
		{"joined", func(_, _, reject testenv.Event) []testenv.Event { return []testenv.Event{reject} }},
		{"invited", func(_, invite, reject testenv.Event) []testenv.Event { return []testenv.Event{reject, invite} }},
		{"shared", func(before, invite, reject testenv.Event) []testenv.Event {
			return []testenv.Event{reject, invite, before}
		}},
	} {
		t.Run(tt.vis, func(t *testing.T) {
			r := testenv.NewRoom("reject"+tt.vis, "test")
			evs := visRoom(r, tt.vis)
			before := r.Msg(alice, "before")
			invite := r.Member(alice, bob, "invite")
			reject := r.Member(bob, bob, "leave")
			after := r.Msg(alice, "after")
			f.add(append(evs, before, invite, reject, after)...)
			p := f.mustRead(r.ID, map[string]any{"user_id": bob, "dir": "b", "limit": 3})
			same(t, "bob", p.ids, idsOf(tt.want(before, invite, reject)))
		})
	}
}

// TestVisibility_BannedUserPeeksAWorldReadableRoom: a ban is not a
// departure (check_user_in_room allows only leave), so a banned user
// reads only a world_readable room, and then as a peeker (member event
// ID None): no leave clamp, and shared events pass only where the user's
// membership after them was join.
func TestVisibility_BannedUserPeeksAWorldReadableRoom(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("banned", "test")
	evs := visRoom(r, "shared")
	before := r.Msg(alice, "before")
	join := r.Join(bob)
	during := r.Msg(alice, "during")
	ban := r.Member(alice, bob, "ban")
	hidden := r.Msg(alice, "after the ban, still shared")
	f.add(append(evs, before, join, during, ban, hidden)...)
	if _, e := f.read(r.ID, map[string]any{"user_id": bob}); e == nil || e.Status != 403 || e.Message != "User @bob:test not in room !banned:test, and room previews are disabled" {
		t.Fatalf("banned, room not world_readable: %v, want 403", e)
	}
	wr := r.Next("m.room.history_visibility", alice, testenv.S(""), map[string]any{"history_visibility": "world_readable"})
	public := r.Msg(alice, "public")
	f.add(wr, public)
	p := f.mustRead(r.ID, map[string]any{"user_id": bob, "dir": "b", "limit": 10})
	// The ban: his own member event, "most joined" of ban and join.
	same(t, "bob", p.ids, idsOf([]testenv.Event{public, wr, ban, during, join}))
	same(t, "memberships", memberships(p), []string{"ban", "ban", "ban", "join", "join"})
}

// TestLazyLoadMembers_StateAfterTheFirstEventOnly: Synapse takes the
// senders' member events from the state after chunk[0] only: paging
// forwards, a sender who joined after the first event of the chunk has
// no member event there and is left out; the reader's own membership is
// not added when they sent nothing; and with no member event found,
// state is left out of the reply.
func TestLazyLoadMembers_StateAfterTheFirstEventOnly(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("lazyfwd", "test")
	evs := r.Setup(alice)
	first := r.Msg(alice, "first")
	joinBob := r.Join(bob)
	fromBob := r.Msg(bob, "from bob")
	f.add(append(evs, first, joinBob, fromBob)...)
	lazy := map[string]any{"lazy_load_members": true}

	from := f.tokenAt(evs[len(evs)-1])
	m, e := f.read(r.ID, map[string]any{"user_id": alice, "limit": 3, "from": from, "filter": lazy})
	if e != nil {
		t.Fatal(e)
	}
	same(t, "chunk", toPage(m).ids, idsOf([]testenv.Event{first, joinBob, fromBob}))
	same(t, "state", stateKeys(m), []string{alice})

	// alice's own membership is not added to the state of a chunk she
	// sent nothing in.
	m, e = f.read(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 1, "filter": lazy})
	if e != nil {
		t.Fatal(e)
	}
	same(t, "chunk", toPage(m).ids, []string{fromBob.ID()})
	same(t, "state", stateKeys(m), []string{bob})

	// The create event: its sender has no member event yet.
	m, e = f.read(r.ID, map[string]any{"user_id": alice, "limit": 1, "filter": lazy})
	if e != nil {
		t.Fatal(e)
	}
	same(t, "chunk", toPage(m).ids, []string{evs[0].ID()})
	if st, ok := m["state"]; ok {
		t.Fatalf("state = %v, want none (Synapse: `if state_ids:`)", st)
	}
}

// TestLazyLoadMembers_SendersOfTheVisibleEvents: the member events are
// those of the senders of the events that passed visibility
// (filtered_events), not of every row the page read.
func TestLazyLoadMembers_SendersOfTheVisibleEvents(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("lazyvis", "test")
	evs := r.Setup(alice, bob)
	fromBob := r.Msg(bob, "ignored")
	fromAlice := r.Msg(alice, "shown")
	f.add(append(evs, fromBob, fromAlice)...)
	m, e := f.read(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 2, "ignored_users": []any{bob}, "filter": map[string]any{"lazy_load_members": true}})
	if e != nil {
		t.Fatal(e)
	}
	same(t, "chunk", toPage(m).ids, []string{fromAlice.ID()})
	same(t, "state", stateKeys(m), []string{alice})
	// An admin read sees bob's message, and so his member event.
	m, e = f.read(r.ID, map[string]any{"admin": true, "user_id": alice, "dir": "b", "limit": 2, "ignored_users": []any{bob}, "filter": map[string]any{"lazy_load_members": true}})
	if e != nil {
		t.Fatal(e)
	}
	same(t, "admin chunk", toPage(m).ids, []string{fromAlice.ID(), fromBob.ID()})
	same(t, "admin state", stateKeys(m), []string{alice, bob})
}

// stateKeys lists the state keys of a reply's state, sorted.
func stateKeys(m map[string]any) []string {
	var out []string
	state, _ := m["state"].([]any)
	for _, s := range state {
		ev := s.(map[string]any)
		k, _ := ev["state_key"].(string)
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestLazyLoadMembers_AMemberEventBelowAPurge: a purge keeps state
// events (as outliers, SYNAPSE.md 6.4 step 7) and the state after later
// events still names them, so a sender whose member event is below the
// cut-off still has it in state, before and after the janitor's sweep.
func TestLazyLoadMembers_AMemberEventBelowAPurge(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("lazypurge", "test")
	evs := r.Setup(alice, bob)
	var msgs []testenv.Event
	for i := range 5 {
		msgs = append(msgs, r.Msg(bob, fmt.Sprintf("m%d", i)))
	}
	f.add(append(evs, msgs...)...)
	cut := msgs[3]
	f.applyCmd(map[string]any{"id": "purgelazy", "action": "purge_history", "room_id": r.ID, "params": map[string]any{"token": f.tokenAt(cut), "delete_local_events": true}})
	read := func(what string) {
		t.Helper()
		m, e := f.read(r.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 1, "filter": map[string]any{"lazy_load_members": true}})
		if e != nil {
			t.Fatal(e)
		}
		same(t, what+": chunk", toPage(m).ids, []string{msgs[4].ID()})
		same(t, what+": state", stateKeys(m), []string{bob})
	}
	read("before the sweep")
	drainJanitor(t, f.store)
	read("after the sweep")
}

// TestVisibility_DepartedUserPagingForwards: SYNAPSE.md 3.6, a departed
// user is not peeking, so under shared visibility the events after the
// leave pass the lax shortcut; only backwards pages are clamped. Under
// joined visibility they do not (membership leave after them).
func TestVisibility_DepartedUserPagingForwards(t *testing.T) {
	f := newFixture(t)
	for _, tt := range []struct {
		vis       string
		seesAfter bool
	}{{"shared", true}, {"joined", false}} {
		t.Run(tt.vis, func(t *testing.T) {
			r := testenv.NewRoom("fwd"+tt.vis, "test")
			evs := visRoom(r, tt.vis)
			join := r.Join(bob)
			leave := r.Member(bob, bob, "leave")
			after := r.Msg(alice, "after")
			f.add(append(evs, join, leave, after)...)
			p := f.mustRead(r.ID, map[string]any{"user_id": bob, "limit": 3, "from": f.tokenAt(evs[len(evs)-1])})
			want := []testenv.Event{join, leave}
			if tt.seesAfter {
				want = append(want, after)
			}
			same(t, "bob forwards", p.ids, idsOf(want))
		})
	}
}

// TestVisibility_ForgottenUserPeeksAWorldReadableRoom: after a forget,
// check_user_in_room refuses, and a world_readable room lets the user in
// as a peeker: no leave clamp, and shared events hidden unless the user
// was joined at them.
func TestVisibility_ForgottenUserPeeksAWorldReadableRoom(t *testing.T) {
	f := newFixture(t)
	r := testenv.NewRoom("forgotwr", "test")
	evs := visRoom(r, "shared")
	before := r.Msg(alice, "before")
	join := r.Join(bob)
	leave := r.Member(bob, bob, "leave")
	secret := r.Msg(alice, "after the leave, shared")
	wr := r.Next("m.room.history_visibility", alice, testenv.S(""), map[string]any{"history_visibility": "world_readable"})
	public := r.Msg(alice, "public")
	f.add(append(evs, before, join, leave, secret, wr, public)...)
	f.applyCmd(map[string]any{"id": "forgetwr", "action": "forget", "room_id": r.ID, "params": map[string]any{"user_id": bob}})
	p := f.mustRead(r.ID, map[string]any{"user_id": bob, "dir": "b", "limit": 5})
	same(t, "bob", p.ids, idsOf([]testenv.Event{public, wr, leave, join}))
	if p.start == f.tokenAt(leave)+zeros {
		t.Fatal("a peeker's page was clamped to the leave")
	}
}

// TestVisibility_ManyMembershipsOfTheReader: a read keeps the reader's
// membership history in memory when it is short and seeks the state
// index per event when it is not (maxHistory); both give the state after
// each event. Under joined visibility, bob, who joined and left many
// times, sees what was sent while he was joined, his own joins and
// leaves, and nothing sent while he was away.
func TestVisibility_ManyMembershipsOfTheReader(t *testing.T) {
	f := newFixture(t)
	for _, cycles := range []int{3, 140} {
		t.Run(fmt.Sprint(cycles), func(t *testing.T) {
			r := testenv.NewRoom(fmt.Sprintf("many%d", cycles), "test")
			evs := visRoom(r, "joined")
			all := append([]testenv.Event{}, evs...)
			var want []testenv.Event
			var wantMemberships []string
			for i := range cycles {
				join, in := r.Join(bob), r.Msg(alice, fmt.Sprintf("in %d", i))
				leave, out := r.Member(bob, bob, "leave"), r.Msg(alice, fmt.Sprintf("out %d", i))
				all = append(all, join, in, leave, out)
				want = append(want, join, in, leave)
				wantMemberships = append(wantMemberships, "join", "join", "leave")
			}
			join, last := r.Join(bob), r.Msg(alice, "last")
			all = append(all, join, last)
			want = append(want, join, last)
			wantMemberships = append(wantMemberships, "join", "join")
			f.add(all...)
			p := f.mustRead(r.ID, map[string]any{"user_id": bob, "limit": 1000, "from": f.tokenAt(evs[len(evs)-1])})
			same(t, "bob", p.ids, idsOf(want))
			same(t, "memberships", memberships(p), wantMemberships)
		})
	}
}
