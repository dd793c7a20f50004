package commands

import (
	"math"
	"testing"
)

const (
	visUser     = "@joiner:test"
	visResident = "@resident:test"
	visOther    = "@other:test"
)

// visMsg is a plain m.room.message from sender with the given state after it.
func visMsg(sender, vis, readerMembership string) VisibilityInput {
	return VisibilityInput{Type: "m.room.message", Sender: sender, OriginServerTS: 1000,
		VisibilityAfter: vis, UserMembershipAfter: readerMembership}
}

// visMember is userID's m.room.member event (membership after prev), sent by
// userID, with the given history visibility after it. readerMembership is
// the reader's membership after the event.
func visMember(userID, membership, prev, vis, readerMembership string) VisibilityInput {
	return VisibilityInput{Type: "m.room.member", Sender: userID, IsState: true, StateKey: userID,
		OriginServerTS: 1000, Membership: membership, PrevMembership: prev,
		VisibilityAfter: vis, UserMembershipAfter: readerMembership}
}

// visHV is the room's m.room.history_visibility event changing prev to vis.
func visHV(vis, prev, readerMembership string) VisibilityInput {
	return VisibilityInput{Type: "m.room.history_visibility", Sender: visResident, IsState: true,
		OriginServerTS: 1000, HistoryVisibility: vis, PrevHistoryVisibility: prev,
		VisibilityAfter: vis, UserMembershipAfter: readerMembership}
}

type visCase struct {
	name    string
	ev      VisibilityInput
	r       Reader
	visible bool
	member  string // unsigned.membership when visible
}

func runVisCases(t *testing.T, cases []visCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vis, m := Visible(tc.ev, tc.r)
			if vis != tc.visible || m != tc.member {
				t.Fatalf("Visible(%+v, %+v) = %v, %q; want %v, %q", tc.ev, tc.r, vis, m, tc.visible, tc.member)
			}
		})
	}
}

func TestVisible_Rules(t *testing.T) {
	joiner := Reader{UserID: visUser, Now: 10_000}
	peeker := Reader{UserID: visUser, Now: 10_000, Peeking: true}
	with := func(ev VisibilityInput, f func(*VisibilityInput)) VisibilityInput { f(&ev); return ev }

	runVisCases(t, []visCase{
		// Soft-failed and rejected events are dropped even in world_readable rooms.
		{"soft failed dropped", with(visMsg(visOther, VisWorldReadable, "join"), func(e *VisibilityInput) { e.SoftFailed = true }), joiner, false, ""},
		{"rejected dropped", with(visMsg(visOther, VisWorldReadable, "join"), func(e *VisibilityInput) { e.Rejected = true }), joiner, false, ""},
		{"rejected own member dropped", with(visMember(visUser, "join", "", VisShared, "join"), func(e *VisibilityInput) { e.Rejected = true }), joiner, false, ""},

		// Outliers: only the reader's own m.room.member.
		{"outlier own invite visible", with(visMember(visUser, "invite", "", "", ""), func(e *VisibilityInput) { e.Outlier = true; e.Sender = visOther }), joiner, true, "invite"},
		{"outlier own rejection visible", with(visMember(visUser, "leave", "", "", ""), func(e *VisibilityInput) { e.Outlier = true }), joiner, true, "leave"},
		{"outlier other member dropped", with(visMember(visOther, "join", "", VisWorldReadable, "join"), func(e *VisibilityInput) { e.Outlier = true }), joiner, false, ""},
		{"outlier message dropped", with(visMsg(visOther, VisWorldReadable, "join"), func(e *VisibilityInput) { e.Outlier = true }), joiner, false, ""},
		{"outlier non-state member with reader key dropped", with(visMember(visUser, "join", "", "", ""), func(e *VisibilityInput) { e.Outlier = true; e.IsState = false; e.StateKey = "" }), joiner, false, ""},

		// _check_filter_send_to_client.
		{"dummy event hidden", with(visMsg(visOther, VisWorldReadable, "join"), func(e *VisibilityInput) { e.Type = "org.matrix.dummy_event" }), joiner, false, ""},
		{"aliases hidden", with(visMsg(visOther, VisWorldReadable, "join"), func(e *VisibilityInput) {
			e.Type = "m.room.aliases"
			e.IsState = true
			e.StateKey = "test"
		}), joiner, false, ""},
		{"ignored sender message hidden", visMsg(visOther, VisShared, "join"), Reader{UserID: visUser, Now: 10_000, Ignored: map[string]bool{visOther: true}}, false, ""},
		{"ignored sender state shown", visMember(visOther, "join", "", VisShared, "join"), Reader{UserID: visUser, Now: 10_000, Ignored: map[string]bool{visOther: true}}, true, "join"},
		{"ignore list of someone else", visMsg(visOther, VisShared, "join"), Reader{UserID: visUser, Now: 10_000, Ignored: map[string]bool{visResident: true}}, true, "join"},

		// Call invites in public rooms.
		{"call invite public dropped", with(visMsg(visOther, VisShared, "join"), func(e *VisibilityInput) { e.Type = "m.call.invite"; e.JoinRuleAfter = "public" }), joiner, false, ""},
		{"call invite invite-only shown", with(visMsg(visOther, VisShared, "join"), func(e *VisibilityInput) { e.Type = "m.call.invite"; e.JoinRuleAfter = "invite" }), joiner, true, "join"},
		{"call invite no join rule shown", with(visMsg(visOther, VisShared, "join"), func(e *VisibilityInput) { e.Type = "m.call.invite" }), joiner, true, "join"},
		{"state call invite public shown", with(visMsg(visOther, VisShared, "join"), func(e *VisibilityInput) {
			e.Type = "m.call.invite"
			e.IsState = true
			e.JoinRuleAfter = "public"
		}), joiner, true, "join"},
		{"join rule ignored for other types", with(visMsg(visOther, VisShared, "join"), func(e *VisibilityInput) { e.JoinRuleAfter = "public" }), joiner, true, "join"},

		// Effective visibility: missing/invalid => shared.
		{"missing visibility is shared", visMsg(visOther, "", ""), joiner, true, "leave"},
		{"invalid visibility is shared", visMsg(visOther, "bogus", ""), joiner, true, "leave"},
		{"missing visibility peeking hidden", visMsg(visOther, "", ""), peeker, false, ""},
		{"invalid visibility peeking hidden", visMsg(visOther, "Joined", ""), peeker, false, ""},

		// Lax shortcut.
		{"world_readable peek visible", visMsg(visOther, VisWorldReadable, ""), peeker, true, "leave"},
		{"world_readable non-member visible", visMsg(visOther, VisWorldReadable, ""), joiner, true, "leave"},
		{"shared not peeking visible", visMsg(visOther, VisShared, ""), joiner, true, "leave"},
		{"shared departed visible (quirk 3.6)", visMsg(visOther, VisShared, "leave"), joiner, true, "leave"},
		{"shared peeking hidden", visMsg(visOther, VisShared, ""), peeker, false, ""},
		{"shared peeking joined at event visible", visMsg(visOther, VisShared, "join"), peeker, true, "join"},
		{"shared peeking invited at event hidden", visMsg(visOther, VisShared, "invite"), peeker, false, ""},

		// _check_membership.
		{"joined vis member visible", visMsg(visOther, VisJoined, "join"), joiner, true, "join"},
		{"joined vis invited hidden", visMsg(visOther, VisJoined, "invite"), joiner, false, ""},
		{"joined vis left hidden", visMsg(visOther, VisJoined, "leave"), joiner, false, ""},
		{"joined vis never member hidden", visMsg(visOther, VisJoined, ""), joiner, false, ""},
		{"invited vis invite visible", visMsg(visOther, VisInvited, "invite"), joiner, true, "invite"},
		{"invited vis knock hidden", visMsg(visOther, VisInvited, "knock"), joiner, false, ""},
		{"invited vis ban hidden", visMsg(visOther, VisInvited, "ban"), joiner, false, ""},
		{"invited vis peeking invite visible", visMsg(visOther, VisInvited, "invite"), peeker, true, "invite"},
		{"joined vis peeking joined visible", visMsg(visOther, VisJoined, "join"), peeker, true, "join"},

		// Own member event: most joined of new and prev.
		{"own join visible", visMember(visUser, "join", "invite", VisJoined, "join"), joiner, true, "join"},
		{"own leave after join visible", visMember(visUser, "leave", "join", VisJoined, "leave"), joiner, true, "leave"},
		{"own leave after invite visible", visMember(visUser, "leave", "invite", VisJoined, "leave"), joiner, true, "leave"},
		{"own leave after knock hidden", visMember(visUser, "leave", "knock", VisJoined, "leave"), joiner, false, ""},
		{"own leave after knock invited vis hidden", visMember(visUser, "leave", "knock", VisInvited, "leave"), joiner, false, ""},
		{"own leave after ban hidden", visMember(visUser, "leave", "ban", VisJoined, "leave"), joiner, false, ""},
		{"own leave no prev hidden", visMember(visUser, "leave", "", VisJoined, "leave"), joiner, false, ""},
		{"own ban after join visible (most joined)", visMember(visUser, "ban", "join", VisJoined, "ban"), joiner, true, "ban"},
		{"own ban after invite invited vis visible", visMember(visUser, "ban", "invite", VisInvited, "ban"), joiner, true, "ban"},
		{"own ban after invite joined vis hidden", visMember(visUser, "ban", "invite", VisJoined, "ban"), joiner, false, ""},
		{"own invite invited vis visible", visMember(visUser, "invite", "", VisInvited, "invite"), joiner, true, "invite"},
		{"own invite joined vis hidden", visMember(visUser, "invite", "leave", VisJoined, "invite"), joiner, false, ""},
		{"own knock joined vis hidden", visMember(visUser, "knock", "", VisJoined, "knock"), joiner, false, ""},
		{"own unknown membership after join counts as leave", visMember(visUser, "bogus", "join", VisJoined, "bogus"), joiner, true, "bogus"},
		{"own unknown prev counts as leave", visMember(visUser, "leave", "bogus", VisJoined, "leave"), joiner, false, ""},
		{"own member uses content not state", visMember(visUser, "join", "", VisJoined, ""), joiner, true, "join"},
		{"own member peeking shared join visible", visMember(visUser, "join", "", VisShared, "join"), peeker, true, "join"},
		{"other's member event uses reader state", visMember(visOther, "join", "", VisJoined, "invite"), joiner, false, ""},
		{"other's member event reader joined", visMember(visOther, "leave", "join", VisJoined, "join"), joiner, true, "join"},

		// The history_visibility event itself: less restrictive of new and prev.
		{"hv shared->joined non-member visible", visHV(VisJoined, VisShared, ""), joiner, true, "leave"},
		{"hv world_readable->joined peeking visible", visHV(VisJoined, VisWorldReadable, ""), peeker, true, "leave"},
		{"hv joined->world_readable peeking visible", visHV(VisWorldReadable, VisJoined, ""), peeker, true, "leave"},
		{"hv missing prev is shared", visHV(VisJoined, "", ""), joiner, true, "leave"},
		{"hv invalid prev is shared", visHV(VisJoined, "nonsense", ""), joiner, true, "leave"},
		{"hv missing prev peeking hidden", visHV(VisJoined, "", ""), peeker, false, ""},
		{"hv invited->joined non-member hidden", visHV(VisJoined, VisInvited, ""), joiner, false, ""},
		{"hv joined->invited non-member hidden", visHV(VisInvited, VisJoined, ""), joiner, false, ""},
		{"hv joined->invited invited visible", visHV(VisInvited, VisJoined, "invite"), joiner, true, "invite"},
		// Synapse quirk: _check_membership gets the unadjusted (new) value.
		{"hv invited->joined invited hidden", visHV(VisJoined, VisInvited, "invite"), joiner, false, ""},
		{"hv shared->invited peeking invited visible", visHV(VisInvited, VisShared, "invite"), peeker, true, "invite"},
		{"hv joined->joined joined visible", visHV(VisJoined, VisJoined, "join"), joiner, true, "join"},
		{"prev hv ignored on other types", with(visMsg(visOther, VisJoined, ""), func(e *VisibilityInput) { e.PrevHistoryVisibility = VisWorldReadable }), joiner, false, ""},
		{"hv content ignored, state after wins", with(visHV(VisJoined, VisJoined, ""), func(e *VisibilityInput) { e.HistoryVisibility = VisWorldReadable }), joiner, false, ""},
	})
}

func TestVisible_Retention(t *testing.T) {
	const now, maxLife = 1_000_000, 86_400_000 / 100 // 864000 ms
	r := Reader{UserID: visUser, Now: now, MaxLifetime: maxLife}
	cutoff := int64(now - maxLife)
	at := func(ev VisibilityInput, ts int64) VisibilityInput { ev.OriginServerTS = ts; return ev }

	runVisCases(t, []visCase{
		{"message older than max_lifetime hidden", at(visMsg(visOther, VisShared, "join"), cutoff-1), r, false, ""},
		{"message exactly at now-max_lifetime shown", at(visMsg(visOther, VisShared, "join"), cutoff), r, true, "join"},
		{"message newer shown", at(visMsg(visOther, VisShared, "join"), cutoff+1), r, true, "join"},
		{"world_readable old message hidden", at(visMsg(visOther, VisWorldReadable, ""), 0), r, false, ""},
		{"old state event not hidden", at(visMember(visOther, "join", "", VisShared, "join"), 0), r, true, "join"},
		{"old own member not hidden", at(visMember(visUser, "join", "", VisShared, "join"), 0), r, true, "join"},
		{"cutoff below int64 hides nothing", at(visMsg(visOther, VisShared, "join"), math.MinInt64), Reader{UserID: visUser, Now: -10, MaxLifetime: math.MaxInt64}, true, "join"},
		{"no retention: old message shown", at(visMsg(visOther, VisShared, "join"), 0), Reader{UserID: visUser, Now: now}, true, "join"},
		{"huge max_lifetime keeps old events", at(visMsg(visOther, VisShared, "join"), 0), Reader{UserID: visUser, Now: now, MaxLifetime: math.MaxInt64}, true, "join"},
		{"negative max_lifetime hides even future events", at(visMsg(visOther, VisShared, "join"), now+10), Reader{UserID: visUser, Now: now, MaxLifetime: -100}, false, ""},
		{"cutoff beyond int64 hides all", at(visMsg(visOther, VisShared, "join"), math.MaxInt64), Reader{UserID: visUser, Now: now, MaxLifetime: math.MinInt64}, false, ""},
		{"max_lifetime 0 hides messages sent before now", at(visMsg(visOther, VisShared, "join"), now-1), Reader{UserID: visUser, Now: now, HasMaxLifetime: true}, false, ""},
		{"max_lifetime 0 shows messages sent now", at(visMsg(visOther, VisShared, "join"), now), Reader{UserID: visUser, Now: now, HasMaxLifetime: true}, true, "join"},
	})
}

// visStep is one event of a scripted room history, with the state after it.
type visStep struct {
	name string
	ev   VisibilityInput
}

// filterForClient runs Visible over a history, as the caller would.
func filterForClient(steps []visStep, r Reader) (names, memberships []string) {
	for _, s := range steps {
		if ok, m := Visible(s.ev, r); ok {
			names = append(names, s.name)
			memberships = append(memberships, m)
		}
	}
	return names, memberships
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestVisible_JoinedHistoryVisibility is Synapse's
// FilterEventsForClientTestCase.test_joined_history_visibility: with
// "joined" visibility, a user who joined then left sees exactly the join,
// the message in between and the leave; the resident sees all five.
func TestVisible_JoinedHistoryVisibility(t *testing.T) {
	// The room's history: each event with the joiner's membership in the
	// state after it. The resident is joined throughout; the outsider never
	// has a member event.
	history := []struct {
		name          string
		ev            VisibilityInput
		joinerAfter   string
		residentAfter string
	}{
		{"before", visMsg(visResident, VisJoined, ""), "", "join"},
		{"join", visMember(visUser, "join", "", VisJoined, ""), "join", "join"},
		{"during", visMsg(visResident, VisJoined, ""), "join", "join"},
		{"leave", visMember(visUser, "leave", "join", VisJoined, ""), "leave", "join"},
		{"after", visMsg(visResident, VisJoined, ""), "leave", "join"},
	}
	build := func(reader string) []visStep {
		var steps []visStep
		for _, h := range history {
			ev := h.ev
			switch reader {
			case visUser:
				ev.UserMembershipAfter = h.joinerAfter
			case visResident:
				ev.UserMembershipAfter = h.residentAfter
			}
			steps = append(steps, visStep{h.name, ev})
		}
		return steps
	}
	tests := []struct {
		name        string
		reader      Reader
		names       []string
		memberships []string
	}{
		{"joiner", Reader{UserID: visUser, Now: 10_000}, []string{"join", "during", "leave"}, []string{"join", "join", "leave"}},
		{"resident", Reader{UserID: visResident, Now: 10_000}, []string{"before", "join", "during", "leave", "after"}, []string{"join", "join", "join", "join", "join"}},
		{"outsider", Reader{UserID: visOther, Now: 10_000}, nil, nil},
		{"outsider peeking", Reader{UserID: visOther, Now: 10_000, Peeking: true}, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			names, ms := filterForClient(build(tc.reader.UserID), tc.reader)
			if !equalStrings(names, tc.names) || !equalStrings(ms, tc.memberships) {
				t.Fatalf("got %v %v; want %v %v", names, ms, tc.names, tc.memberships)
			}
		})
	}
}

// TestVisible_InvitedHistoryVisibility: with "invited" visibility a user
// sees the events from their invite on while invited, their own rejection,
// and nothing before the invite or after the rejection.
func TestVisible_InvitedHistoryVisibility(t *testing.T) {
	msg := func(m string) VisibilityInput {
		return VisibilityInput{Type: "m.room.message", Sender: visResident, OriginServerTS: 1000,
			VisibilityAfter: VisInvited, UserMembershipAfter: m}
	}
	invite := visMember(visUser, "invite", "", VisInvited, "invite")
	invite.Sender = visResident
	steps := []visStep{
		{"before", msg("")},
		{"invite", invite},
		{"while invited", msg("invite")},
		{"reject", visMember(visUser, "leave", "invite", VisInvited, "leave")},
		{"after reject", msg("leave")},
		{"reinvite", func() VisibilityInput {
			ev := visMember(visUser, "invite", "leave", VisInvited, "invite")
			ev.Sender = visResident
			return ev
		}()},
		{"join", visMember(visUser, "join", "invite", VisInvited, "join")},
		{"while joined", msg("join")},
		{"kick", func() VisibilityInput {
			ev := visMember(visUser, "leave", "join", VisInvited, "leave")
			ev.Sender = visResident
			return ev
		}()},
		{"after kick", msg("leave")},
	}
	names, ms := filterForClient(steps, Reader{UserID: visUser, Now: 10_000})
	wantNames := []string{"invite", "while invited", "reject", "reinvite", "join", "while joined", "kick"}
	wantMs := []string{"invite", "invite", "leave", "invite", "join", "join", "leave"}
	if !equalStrings(names, wantNames) || !equalStrings(ms, wantMs) {
		t.Fatalf("got %v %v; want %v %v", names, ms, wantNames, wantMs)
	}
}

// TestVisible_WorldReadablePeek: a non-member peeking a world_readable room
// sees everything (except what _check_filter_send_to_client drops), with
// unsigned.membership "leave".
func TestVisible_WorldReadablePeek(t *testing.T) {
	steps := []visStep{
		{"create", VisibilityInput{Type: "m.room.create", Sender: visResident, IsState: true, VisibilityAfter: ""}},
		{"hv", visHV(VisWorldReadable, "", "")},
		{"msg", visMsg(visResident, VisWorldReadable, "")},
		{"other join", visMember(visOther, "join", "", VisWorldReadable, "")},
		{"dummy", VisibilityInput{Type: "org.matrix.dummy_event", Sender: visResident, VisibilityAfter: VisWorldReadable}},
		{"msg2", visMsg(visOther, VisWorldReadable, "")},
	}
	names, ms := filterForClient(steps, Reader{UserID: visUser, Now: 10_000, Peeking: true})
	// "create" precedes the world_readable event: state after it has no
	// history_visibility (shared) and a peeker cannot see it; the hv event
	// itself is visible (world_readable after it).
	wantNames := []string{"hv", "msg", "other join", "msg2"}
	wantMs := []string{"leave", "leave", "leave", "leave"}
	if !equalStrings(names, wantNames) || !equalStrings(ms, wantMs) {
		t.Fatalf("got %v %v; want %v %v", names, ms, wantNames, wantMs)
	}
}

func TestEffectiveRetention(t *testing.T) {
	p := func(n int64) *int64 { return &n }
	def := RetentionPolicy{MinLifetime: 1000, MaxLifetime: 5000}
	tests := []struct {
		name             string
		enabled          bool
		def              RetentionPolicy
		roomMin, roomMax *int64
		want             RetentionPolicy
	}{
		{"disabled ignores room and default", false, def, p(1), p(2), RetentionPolicy{}},
		{"disabled no room", false, def, nil, nil, RetentionPolicy{}},
		{"no room policy uses default", true, def, nil, nil, def},
		{"room both", true, def, p(10), p(20), RetentionPolicy{MinLifetime: 10, MaxLifetime: 20, MaxSet: true}},
		{"room max only fills min", true, def, nil, p(20), RetentionPolicy{MinLifetime: 1000, MaxLifetime: 20, MaxSet: true}},
		{"room min only fills max", true, def, p(10), nil, RetentionPolicy{MinLifetime: 10, MaxLifetime: 5000}},
		{"room max longer than default", true, def, nil, p(1 << 40), RetentionPolicy{MinLifetime: 1000, MaxLifetime: 1 << 40, MaxSet: true}},
		{"room max 0 is a policy", true, def, nil, p(0), RetentionPolicy{MinLifetime: 1000, MaxSet: true}},
		{"no default, room max", true, RetentionPolicy{}, nil, p(20), RetentionPolicy{MaxLifetime: 20, MaxSet: true}},
		{"no default, no room", true, RetentionPolicy{}, nil, nil, RetentionPolicy{}},
		{"default max only", true, RetentionPolicy{MaxLifetime: 7}, p(3), nil, RetentionPolicy{MinLifetime: 3, MaxLifetime: 7}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := EffectiveRetention(tc.enabled, tc.def, tc.roomMin, tc.roomMax); got != tc.want {
				t.Fatalf("EffectiveRetention = %+v; want %+v", got, tc.want)
			}
		})
	}
}

// TestVisible_RetentionFromPolicy ties EffectiveRetention to Visible.
func TestVisible_RetentionFromPolicy(t *testing.T) {
	max := int64(1000)
	pol := EffectiveRetention(true, RetentionPolicy{}, nil, &max)
	r := Reader{UserID: visUser, Now: 5000, MaxLifetime: pol.MaxLifetime}
	if ok, _ := Visible(visMsg(visOther, VisShared, "join"), r); ok { // ts 1000 < 5000-1000
		t.Fatal("old message shown")
	}
	pol = EffectiveRetention(false, RetentionPolicy{MaxLifetime: 1}, nil, &max)
	r.MaxLifetime = pol.MaxLifetime
	if ok, m := Visible(visMsg(visOther, VisShared, "join"), r); !ok || m != "join" {
		t.Fatalf("retention disabled: got %v %q", ok, m)
	}
}

// TestLetsServerSee_Rules: Synapse's event_visible_to_server. Under a
// history visibility other than "joined" and "invited" (none, an unknown
// value) a server sees every event; under those two, only through a user
// of its own joined, or invited under "invited".
func TestLetsServerSee_Rules(t *testing.T) {
	cases := []struct {
		vis, membership string
		want            bool
	}{
		{"", "", true},
		{VisShared, "", true},
		{VisWorldReadable, "leave", true},
		{"members_only", "", true},
		{VisJoined, "join", true},
		{VisJoined, "invite", false},
		{VisJoined, "leave", false},
		{VisJoined, "knock", false},
		{VisJoined, "", false},
		{VisInvited, "join", true},
		{VisInvited, "invite", true},
		{VisInvited, "ban", false},
		{VisInvited, "", false},
	}
	for _, c := range cases {
		got := !RestrictsServers(c.vis) || LetsServerSee(c.vis, c.membership)
		if got != c.want {
			t.Errorf("visibility %q, membership %q: visible=%v, want %v", c.vis, c.membership, got, c.want)
		}
	}
}
