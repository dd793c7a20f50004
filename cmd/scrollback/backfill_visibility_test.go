package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/scrollback/scrollback/testenv"
)

// TestBackfill_OnlyPointsOurServerMaySee: Synapse's _maybe_backfill_inner
// (handlers/federation.py) asks about a backward extremity only if
// filter_events_for_server lets our server see one of its successors (the
// events that name it): in the state at the successor (after it, for a
// state event: there is no special case for servers), a history
// visibility other than "joined" and "invited" lets it; under those, only
// a user of ours whose membership is join (or invite, under "invited")
// does. No point kept, no request. scrollback asked about every point.
// Each room has one gap, right before successor; the page is short, so
// the read decides in the foreground, before it answers.
func TestBackfill_OnlyPointsOurServerMaySee(t *testing.T) {
	const remote = "@remote:other.org"
	vis := func(r *testenv.Room, v string) testenv.Event {
		return r.Next("m.room.history_visibility", remote, testenv.S(""), map[string]any{"history_visibility": v})
	}
	cases := []struct {
		name string
		// before are the events between the room's setup and the gap;
		// successor is the first event after it.
		before    func(r *testenv.Room) []testenv.Event
		successor func(r *testenv.Room) testenv.Event
		asked     bool
	}{
		{"joined, no user of ours", func(r *testenv.Room) []testenv.Event {
			return []testenv.Event{vis(r, "joined")}
		}, nil, false},
		{"joined, ours joined", func(r *testenv.Room) []testenv.Event {
			return []testenv.Event{vis(r, "joined"), r.Join(alice)}
		}, nil, true},
		{"joined, ours invited", func(r *testenv.Room) []testenv.Event {
			return []testenv.Event{vis(r, "joined"), r.Member(remote, alice, "invite")}
		}, nil, false},
		{"invited, ours invited", func(r *testenv.Room) []testenv.Event {
			return []testenv.Event{vis(r, "invited"), r.Member(remote, alice, "invite")}
		}, nil, true},
		{"invited, no user of ours", func(r *testenv.Room) []testenv.Event {
			return []testenv.Event{vis(r, "invited")}
		}, nil, false},
		{"joined, ours left before the successor", func(r *testenv.Room) []testenv.Event {
			return []testenv.Event{vis(r, "joined"), r.Join(alice), r.Member(alice, alice, "leave")}
		}, nil, false},
		{"joined, the successor is our user's join", func(r *testenv.Room) []testenv.Event {
			return []testenv.Event{vis(r, "joined")}
		}, func(r *testenv.Room) testenv.Event { return r.Join(alice) }, true},
		{"shared, the successor makes it joined", nil, func(r *testenv.Room) testenv.Event {
			return vis(r, "joined")
		}, false},
		{"shared, no user of ours", func(r *testenv.Room) []testenv.Event {
			return []testenv.Event{vis(r, "shared")}
		}, nil, true},
		{"an unknown value, no user of ours", func(r *testenv.Room) []testenv.Event {
			return []testenv.Event{vis(r, "members_only")}
		}, nil, true},
	}
	m := backfillMain(t, 2*time.Second)
	fed := testenv.NewFederation(t, m.NC, m.publisher().Subjects)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := testenv.NewRoom(fmt.Sprintf("vis%d", i), "test")
			full := r.Setup(remote)
			if c.before != nil {
				full = append(full, c.before(r)...)
			}
			for range 10 {
				full = append(full, r.Msg(remote, "before the gap"))
			}
			missing := full[len(full)-1]
			if c.successor != nil {
				full = append(full, c.successor(r))
			}
			for len(full) < 40 {
				full = append(full, r.Msg(remote, "after the gap"))
			}
			fed.Serve(r.ID, full...)
			var local []testenv.Event
			for _, ev := range full {
				if ev.ID() != missing.ID() {
					local = append(local, ev)
				}
			}
			m.publishApplied(t, r.ID, local...)
			// Fewer local events than the limit: a short page.
			if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 50}); err != nil {
				t.Fatal(err)
			}
			var asked []any
			for _, req := range fed.Requests() {
				if req["room_id"] == r.ID {
					asked = append(asked, req["event_ids"])
				}
			}
			if c.asked && (len(asked) == 0 || fmt.Sprint(asked[0]) != fmt.Sprint([]any{missing.ID()})) {
				t.Fatalf("requests %v, want one about %s", asked, missing.ID())
			}
			if !c.asked && len(asked) != 0 {
				t.Fatalf("requests %v, want none: our server may not see the gap's successor", asked)
			}
		})
	}
}

// TestBackfill_AnInvisiblePointLetsASixthBeAsked: _maybe_backfill_inner
// goes through the sorted points until it keeps 5 visible ones, so a
// point skipped for visibility makes room for the sixth. The room's
// history is "joined" and our user joins at depth 102; forks at depths
// 101 and 103-107 name missing parents. A read at depth 100 has them in
// that order; the one at 101 is from before our user joined.
func TestBackfill_AnInvisiblePointLetsASixthBeAsked(t *testing.T) {
	const remote = "@remote:other.org"
	m := backfillMain(t, 2*time.Second)
	fed := testenv.NewFederation(t, m.NC, m.publisher().Subjects)
	r := testenv.NewRoom("sixth", "test")
	full := r.Setup(remote)
	full = append(full, r.Next("m.room.history_visibility", remote, testenv.S(""), map[string]any{"history_visibility": "joined"}))
	for len(full) < 101 { // full[i] has depth i+1
		full = append(full, r.Msg(remote, fmt.Sprint(len(full))))
	}
	full = append(full, r.Join(alice)) // depth 102
	for len(full) < 120 {
		full = append(full, r.Msg(remote, fmt.Sprint(len(full))))
	}
	fed.Serve(r.ID, full...)
	local := append([]testenv.Event{}, full...)
	var want []any
	for _, d := range []int64{101, 103, 104, 105, 106, 107} {
		missing := fmt.Sprintf("$missing.%d", d)
		if d != 101 {
			want = append(want, missing)
		}
		r.StartAt(d, missing)
		local = append(local, r.Msg(remote, "fork"))
	}
	m.publishApplied(t, r.ID, local...)
	// Depths 100..91: a full page without gaps, so a background backfill.
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 10, "from": "t100-999999999"}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "a backfill request", func() bool { return len(fed.Requests()) > 0 })
	got, _ := fed.Requests()[0]["event_ids"].([]any)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("asked about %v, want %v ($missing.101's fork is from before our user joined)", got, want)
	}
}
