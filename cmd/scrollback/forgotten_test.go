package main

import (
	"context"
	"testing"
	"time"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/testenv"
)

// TestForgottenRooms: a room whose local members all left and forgot it is
// purged once forgotten_room_retention_period has passed since the last
// forget; a room where someone is still joined, or forgot too recently,
// is kept.
func TestForgottenRooms(t *testing.T) {
	day := 24 * time.Hour
	m := startMain(t, func(c *Config) { p := commands.DurationOf(day); c.ForgottenRoomRetentionPeriod = &p })
	now := time.UnixMilli(1_900_000_000_000)
	m.Forgotten.Now = func() time.Time { return now }
	pub := m.publisher()
	mk := func(name string, leave bool, forgetAgo time.Duration) *testenv.Room {
		r := testenv.NewRoom(name, "test")
		evs := append(r.Setup(alice, "@remote:other.org"), r.Msg(alice, "hi"))
		if leave {
			evs = append(evs, r.Member(alice, alice, "leave"))
		}
		pub.Publish(t, evs...)
		if forgetAgo > 0 {
			pub.Command(t, map[string]any{"id": "forget-" + name, "action": "forget", "room_id": r.ID,
				"params": map[string]any{"user_id": alice}, "ts": now.Add(-forgetAgo).UnixMilli()})
		}
		return r
	}
	old := mk("old", true, 2*day)
	recent := mk("recent", true, time.Hour)
	joined := mk("joined", false, 0)
	// Forgotten long ago, then joined and left again without forgetting
	// it: not forgotten any more (Synapse's did_forget).
	back := mk("back", true, 2*day)
	pub.Publish(t, back.Member(alice, alice, "join"), back.Msg(alice, "back again"), back.Member(alice, alice, "leave"))
	seq := pub.Command(t, map[string]any{"id": "sync", "action": "forget", "room_id": joined.ID, "params": map[string]any{"user_id": "@nobody:test"}})
	for _, r := range []*testenv.Room{old, recent, joined, back} {
		if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seq}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := m.Forgotten.RunOnce(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("RunOnce = %d, %v; want the old room only", n, err)
	}
	for _, r := range []*testenv.Room{old, recent, joined, back} {
		p, err := m.messages(t, r.ID, map[string]any{"admin": true})
		if err != nil {
			t.Fatal(err)
		}
		if empty := len(chunkIDs(p)) == 0; empty != (r == old) {
			t.Fatalf("%s: %d events after the run", r.ID, len(chunkIDs(p)))
		}
	}
	// Never twice: the room now has a deletion task.
	if n, _ := m.Forgotten.RunOnce(context.Background()); n != 0 {
		t.Fatalf("second run purged %d rooms", n)
	}
}

// TestForgottenRooms_NotAfterADeletionThatKeptTheHistory: a deletion with
// purge false makes every local member leave and forget the room, and
// Synapse's shutdown forgets with do_not_schedule_purge: the
// forgotten-rooms job never purges the history the admin chose to keep,
// not even once the deletion's task has expired.
func TestForgottenRooms_NotAfterADeletionThatKeptTheHistory(t *testing.T) {
	day := 24 * time.Hour
	m := startMain(t, func(c *Config) { p := commands.DurationOf(day); c.ForgottenRoomRetentionPeriod = &p })
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	room := shutdownRoom(t, m, hs, "evidence", 2)
	st, body := m.do(t, "DELETE", deletePath("v1", room.ID), "tok-admin", `{"block": true, "purge": false}`)
	if st != 200 || len(strList(body["kicked_users"])) != 5 {
		t.Fatalf("v1 with purge false: %d %v", st, body)
	}
	m.Forgotten.Now = func() time.Time { return time.Now().Add(9 * day) }
	n, err := m.Forgotten.RunOnce(context.Background())
	if err != nil || n != 0 {
		t.Fatalf("forgotten-rooms job purged %d rooms (%v); Synapse never purges a room its shutdown forgot", n, err)
	}
	p, err := m.messages(t, room.ID, map[string]any{"admin": true})
	if err != nil || len(chunkIDs(p)) == 0 {
		t.Fatalf("history of the room deleted with purge false: %v %v", chunkIDs(p), err)
	}
}
