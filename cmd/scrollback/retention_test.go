package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/testenv"
)

// TestRetention_JobPurgesByReceivedTime runs a retention job with a fake
// clock: events received more than max_lifetime ago are purged (local ones
// too: retention deletes local events), the newest stays, state stays, and
// a second run with nothing new to purge publishes nothing.
func TestRetention_JobPurgesByReceivedTime(t *testing.T) {
	m := startMain(t, func(c *Config) {
		c.Retention.Enabled = true
		c.Retention.DefaultPolicy.MaxLifetime = commands.DurationOf(3 * 24 * time.Hour)
	})
	now := time.UnixMilli(1_900_000_000_000)
	clock := testenv.NewClock(now)
	m.Retention.Now = clock.Now
	day := int64(24 * time.Hour / time.Millisecond)

	room := testenv.NewRoom("retained", "test")
	evs := room.Setup(alice)
	for _, e := range evs {
		e["received_ts"] = now.UnixMilli() - 10*day
	}
	var old, fresh []testenv.Event
	for i := range 5 {
		e := room.Msg(alice, fmt.Sprint("old ", i))
		e["received_ts"] = now.UnixMilli() - 5*day + int64(i)
		old = append(old, e)
	}
	for i := range 3 {
		e := room.Msg(alice, fmt.Sprint("fresh ", i))
		e["received_ts"] = now.UnixMilli() - day + int64(i)
		fresh = append(fresh, e)
	}
	// A room with its own, longer policy is left alone.
	long := testenv.NewRoom("longlived", "test")
	levs := append(long.Setup(alice), long.Next("m.room.retention", alice, testenv.S(""), map[string]any{"max_lifetime": 30 * day}), long.Msg(alice, "kept"))
	for _, e := range levs {
		e["received_ts"] = now.UnixMilli() - 10*day
	}
	all := append(append(append(append([]testenv.Event{}, evs...), old...), fresh...), levs...)
	seqs := m.publisher().Publish(t, all...)
	for _, id := range []string{room.ID, long.ID} {
		if _, err := m.messages(t, id, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := m.Retention.RunJob(context.Background(), handlers.RetentionJob{Interval: time.Hour})
	if err != nil || n != 1 {
		t.Fatalf("RunJob = %d, %v; want 1 room purged", n, err)
	}
	p, err := m.messages(t, room.ID, map[string]any{"admin": true, "limit": 100})
	if err != nil {
		t.Fatal(err)
	}
	// Synapse's cut-off is the room's latest event at or before the first
	// log position received at or after now - max_lifetime: the first
	// fresh message, which is kept; everything older goes.
	want := ids(fresh)
	if got := chunkIDs(p); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after retention: %v, want %v", got, want)
	}
	lp, _ := m.messages(t, long.ID, map[string]any{"admin": true, "limit": 100})
	if len(chunkIDs(lp)) != len(levs) {
		t.Fatalf("the long-lived room lost events: %v", chunkIDs(lp))
	}
	if n, err := m.Retention.RunJob(context.Background(), handlers.RetentionJob{Interval: time.Hour}); err != nil || n != 0 {
		t.Fatalf("second run = %d, %v; want nothing to do", n, err)
	}
	// A job whose range excludes 3 days does nothing.
	clock.Advance(10 * 24 * time.Hour)
	if n, _ := m.Retention.RunJob(context.Background(), handlers.RetentionJob{Interval: time.Hour, Longest: day}); n != 0 {
		t.Fatalf("out-of-range job purged %d rooms", n)
	}
}
