package projections_test

import (
	"fmt"
	"slices"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// serverMembersRoom is a room of 50 members of other.org in which
// @alice:test joins and leaves and @bob:test is invited; at[name] is the
// position of each of those three events.
func serverMembersRoom(r *testenv.Room) (evs []testenv.Event, at map[string]testenv.Event) {
	evs = r.Setup("@remote0:other.org")
	for i := 1; i < 50; i++ {
		evs = append(evs, r.Join(fmt.Sprintf("@remote%d:other.org", i)))
	}
	at = map[string]testenv.Event{}
	at["before"] = r.Msg("@remote0:other.org", "before")
	at["join"] = r.Join("@alice:test")
	at["joined"] = r.Msg("@remote0:other.org", "joined")
	at["leave"] = r.Member("@alice:test", "@alice:test", "leave")
	at["invite"] = r.Member("@remote0:other.org", "@bob:test", "invite")
	at["invited"] = r.Msg("@remote0:other.org", "invited")
	for _, k := range []string{"before", "join", "joined", "leave", "invite", "invited"} {
		evs = append(evs, at[k])
	}
	return evs, at
}

// checkServerMember checks RoomView.ServerMember for the room of
// serverMembersRoom: in the state after each event, whether a user of
// "test" is joined, and whether one is invited.
func checkServerMember(t *testing.T, s *projections.Store, roomID string, at map[string]testenv.Event, evs []testenv.Event) {
	t.Helper()
	seqs := map[string]uint64{} // the log sequence of each of at's events: evs were applied from 1
	for i, ev := range evs {
		for k, e := range at {
			if e.ID() == ev.ID() {
				seqs[k] = uint64(i + 1)
			}
		}
	}
	is := func(m string) func(string) bool { return func(got string) bool { return got == m } }
	want := []struct {
		event           string
		joined, invited bool
	}{
		{"before", false, false},
		{"join", true, false}, // the state after the join holds it
		{"joined", true, false},
		{"leave", false, false},
		{"invite", false, true},
		{"invited", false, true},
	}
	_ = s.View(roomID, func(v *projections.RoomView) error {
		for _, w := range want {
			depth, stream := at[w.event]["depth"].(int64), int64(seqs[w.event])
			if got := v.ServerMember("test", depth, stream, is("join")); got != w.joined {
				t.Errorf("after %s: a user of ours joined=%v, want %v", w.event, got, w.joined)
			}
			if got := v.ServerMember("test", depth, stream, is("invite")); got != w.invited {
				t.Errorf("after %s: a user of ours invited=%v, want %v", w.event, got, w.invited)
			}
			if !v.ServerMember("other.org", depth, stream, is("join")) {
				t.Errorf("after %s: no user of other.org joined", w.event)
			}
			if v.ServerMember("test.org", depth, stream, is("join")) || v.ServerMember("tes", depth, stream, is("join")) {
				t.Errorf("after %s: a server whose name is like ours has our users", w.event)
			}
		}
		return nil
	})
}

// TestRoomView_ServerMember: whether a server had a user with a given
// membership in the state after an event, read from that server's own
// users in the room (the srvmembers index), as Synapse's
// _event_to_memberships keeps the members whose user ID's server is the
// one asked about.
func TestRoomView_ServerMember(t *testing.T) {
	s := openWithServer(t)
	r := testenv.NewRoom("servers", "test")
	evs, at := serverMembersRoom(r)
	apply(t, s, 1, evs...)
	checkServerMember(t, s, r.ID, at, evs)
}

// TestServerMembers_OlderFile: Open gives a file made before the
// srvmembers index its entries, from the state index, and then
// ServerMember answers as on a new file.
func TestServerMembers_OlderFile(t *testing.T) {
	path := t.TempDir() + "/p.db"
	s, err := projections.Open(path, projections.Options{ServerName: "test"})
	if err != nil {
		t.Fatal(err)
	}
	r := testenv.NewRoom("serversold", "test")
	evs, at := serverMembersRoom(r)
	apply(t, s, 1, evs...)
	err = s.DB().Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket([]byte("meta")).Delete([]byte("srvmembers")); err != nil {
			return err
		}
		if err := tx.DeleteBucket([]byte("srvmembers")); err != nil {
			return err
		}
		_, err := tx.CreateBucket([]byte("srvmembers"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = projections.Open(path, projections.Options{ServerName: "test"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testenv.CheckBolt(t, s.DB()); s.Close() })
	checkServerMember(t, s, r.ID, at, evs)
}

// TestRoomView_Successors: the events that name a parent the room does
// not hold: a rejected child names no parent, and those below a purge's
// cut-off are left out from the moment it is applied, the events the
// purge keeps (a state event here) too, as the janitor deletes their
// edges.
func TestRoomView_Successors(t *testing.T) {
	s := openWithServer(t)
	r := testenv.NewRoom("successors", "test")
	evs := r.Setup("@alice:test", "@remote:other.org")
	names := func(ev testenv.Event) testenv.Event {
		ev["prev_events"] = append(ev["prev_events"].([]string), "$gone")
		return ev
	}
	deleted := names(r.Msg("@remote:other.org", "deleted"))
	kept := names(r.Next("m.room.topic", "@remote:other.org", testenv.S(""), map[string]any{"topic": "kept"}))
	evs = append(evs, deleted, kept)
	evs = append(evs, remoteMsgs(r, 10)...)
	cut := evs[len(evs)-3]
	above := names(r.Msg("@remote:other.org", "above"))
	rejected := names(r.Msg("@remote:other.org", "rejected"))
	rejected["rejected"] = true
	evs = append(evs, above, rejected, r.Msg("@remote:other.org", "tail"))
	next := apply(t, s, 1, evs...)
	check := func(what string, want ...testenv.Event) {
		t.Helper()
		var got []string
		_ = s.View(r.ID, func(v *projections.RoomView) error {
			for _, sc := range v.Successors("$gone") {
				got = append(got, fmt.Sprintf("%s %d", sc.EventID, sc.Depth))
			}
			return nil
		})
		var wantDesc []string
		for _, ev := range want {
			wantDesc = append(wantDesc, fmt.Sprintf("%s %d", ev.ID(), ev["depth"]))
		}
		slices.Sort(got)
		slices.Sort(wantDesc)
		if !slices.Equal(got, wantDesc) {
			t.Fatalf("%s: successors %v, want %v", what, got, wantDesc)
		}
	}
	check("before the purge", deleted, kept, above)
	applyCmd(t, s, next, r.ID, "p", commands.ActionPurgeHistory, purgeAt(cut))
	check("purged", above)
	drainJanitor(t, s)
	check("after the janitor", above)
}

// TestRoomView_LocalJoined: whether a user of ours is joined now, read
// through the srvmembers index: not while ours is only invited or has
// left, however many members of other servers are joined; yes once one
// joins; not for a user ID whose part after the first colon is not our
// name exactly; and not after a purge_room, whose later events start a
// new timeline.
func TestRoomView_LocalJoined(t *testing.T) {
	s := openWithServer(t)
	r := testenv.NewRoom("localjoined", "test")
	evs, _ := serverMembersRoom(r) // alice of ours joined and left, bob of ours invited
	evs = append(evs, r.Join("@carol:test:8448"))
	next := apply(t, s, 1, evs...)
	localJoined := func() bool {
		var joined bool
		if err := s.View(r.ID, func(v *projections.RoomView) error {
			joined = v.LocalJoined("test")
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return joined
	}
	if localJoined() {
		t.Fatal("joined, with ours left or invited and @carol:test:8448 of another server")
	}
	next = apply(t, s, next, r.Join("@bob:test"))
	if !localJoined() {
		t.Fatal("not joined after @bob:test joined")
	}
	applyCmd(t, s, next, r.ID, "pr", commands.ActionPurgeRoom, map[string]any{"force": true})
	if localJoined() {
		t.Fatal("joined after purge_room")
	}
}

// BenchmarkRoomView_LocalJoined is the question retention asks of every
// room it would purge, and purge_room of its room, for a room our server
// has left with 10,000 members of other servers: a walk of the whole
// membership before the srvmembers index, a seek since.
func BenchmarkRoomView_LocalJoined(b *testing.B) {
	s, err := projections.Open(b.TempDir()+"/p.db", projections.Options{ServerName: "test"})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	r := testenv.NewRoom("left", "test")
	evs := r.Setup("@alice:test")
	for i := range 10_000 {
		evs = append(evs, r.Join(fmt.Sprintf("@u%d:other.org", i)))
	}
	evs = append(evs, r.Member("@alice:test", "@alice:test", "leave"))
	apply(b, s, 1, evs...)
	for b.Loop() {
		if err := s.View(r.ID, func(v *projections.RoomView) error {
			if v.LocalJoined("test") {
				b.Fatal("joined")
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
}
