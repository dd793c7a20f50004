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

// TestRetention_ZeroMaxLifetimeFallsBackToDefaultWhenPurging: Synapse
// purges a room with max_lifetime = room.max_lifetime or default
// (SYNAPSE.md 9), so a room policy with max_lifetime 0 is purged with the
// default lifetime; scrollback skipped the room.
func TestRetention_ZeroMaxLifetimeFallsBackToDefaultWhenPurging(t *testing.T) {
	m := startMain(t, func(c *Config) {
		c.Retention.Enabled = true
		c.Retention.DefaultPolicy.MaxLifetime = commands.DurationOf(3 * 24 * time.Hour)
	})
	agedRoom(t, m, time.UnixMilli(1_900_000_000_000), "zero", []testenv.Event{retentionPolicy(0)}, false)
	n, err := m.Retention.RunJob(context.Background(), handlers.RetentionJob{Interval: time.Hour})
	if err != nil || n != 1 {
		t.Fatalf("RunJob = %d, %v; want the room purged with the default lifetime", n, err)
	}
}

// TestRetention_UnusablePolicyFallsBackToDefault: Synapse stores a room's
// m.room.retention only when at least one key is present and every
// present key is an integer (SYNAPSE.md 9); otherwise the room has the
// default policy, and a job purges it with the default lifetime.
func TestRetention_UnusablePolicyFallsBackToDefault(t *testing.T) {
	for name, content := range map[string]map[string]any{
		"notint": {"max_lifetime": "1d"},
		"empty":  {},
	} {
		t.Run(name, func(t *testing.T) {
			m := startMain(t, func(c *Config) {
				c.Retention.Enabled = true
				c.Retention.DefaultPolicy.MaxLifetime = commands.DurationOf(3 * 24 * time.Hour)
			})
			policy := testenv.Event{"type": "m.room.retention", "content": content}
			room, fresh := agedRoom(t, m, time.UnixMilli(1_900_000_000_000), name, []testenv.Event{policy}, false)
			n, err := m.Retention.RunJob(context.Background(), handlers.RetentionJob{Interval: time.Hour})
			if err != nil || n != 1 {
				t.Fatalf("RunJob = %d, %v; want the room purged with the default lifetime", n, err)
			}
			p, _ := m.messages(t, room.ID, map[string]any{"admin": true, "limit": 100})
			if got := chunkIDs(p); fmt.Sprint(got) != fmt.Sprint([]string{fresh.ID()}) {
				t.Fatalf("after retention: %v, want only %s (the default policy's 3 days)", got, fresh.ID())
			}
		})
	}
}

// TestRetention_JobsRunOnTheirInterval: the service runs each purge job
// on its own interval, by itself (Synapse's looping_call; the other tests
// call RunJob). handlers.TestRetentionRunner_DisabledRunsNothing covers
// retention disabled.
func TestRetention_JobsRunOnTheirInterval(t *testing.T) {
	now := time.UnixMilli(1_900_000_000_000)
	m := startMainAt(t, testenv.NewClock(now).Now, func(c *Config) {
		c.Retention.Enabled = true
		c.Retention.DefaultPolicy.MaxLifetime = commands.DurationOf(3 * 24 * time.Hour)
		c.Retention.PurgeJobs = []PurgeJobConfig{{Interval: commands.DurationOf(100 * time.Millisecond)}}
	})
	room, fresh := publishAgedRoom(t, m, now, "scheduled", nil, false)
	testenv.WaitFor(t, 10*time.Second, "the job to purge the room by itself", func() bool {
		p, err := m.messages(t, room.ID, map[string]any{"admin": true, "limit": 100})
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(chunkIDs(p)) == fmt.Sprint([]string{fresh.ID()})
	})
}

// TestRetention_NegativeMaxLifetimeClampedToAllowedMin: Synapse raises a
// room's max_lifetime to allowed_lifetime_min when purging ("then
// max(allowed_min, ·)", SYNAPSE.md 9), whatever the room asked for; a
// negative max_lifetime (an int, so a valid policy) is raised like any
// other. scrollback skipped such rooms before clamping.
func TestRetention_NegativeMaxLifetimeClampedToAllowedMin(t *testing.T) {
	m := startMain(t, func(c *Config) {
		c.Retention.Enabled = true
		c.Retention.AllowedLifetimeMin = commands.DurationOf(3 * 24 * time.Hour)
	})
	room, fresh := agedRoom(t, m, time.UnixMilli(1_900_000_000_000), "negative", []testenv.Event{retentionPolicy(-5)}, false)
	n, err := m.Retention.RunJob(context.Background(), handlers.RetentionJob{Interval: time.Hour})
	if err != nil || n != 1 {
		t.Fatalf("RunJob = %d, %v; want the room purged with allowed_lifetime_min", n, err)
	}
	p, _ := m.messages(t, room.ID, map[string]any{"admin": true, "limit": 100})
	if got := chunkIDs(p); fmt.Sprint(got) != fmt.Sprint([]string{fresh.ID()}) {
		t.Fatalf("after retention: %v, want only %s", got, fresh.ID())
	}
}

// TestRetention_ExplicitZeroLongestMaxLifetime: a purge job with
// longest_max_lifetime: 0 handles the rooms whose max_lifetime is <= 0
// (Synapse: "max_lifetime <= ?" with 0; include_null is false since
// 0 < default); scrollback took 0 for "no upper bound" and purged every
// room with the default policy.
func TestRetention_ExplicitZeroLongestMaxLifetime(t *testing.T) {
	m := startMain(t, func(c *Config) {
		c.Retention.Enabled = true
		c.Retention.DefaultPolicy.MaxLifetime = commands.DurationOf(3 * 24 * time.Hour)
		c.Retention.PurgeJobs = []PurgeJobConfig{{Interval: commands.DurationOf(time.Hour), LongestMaxLifetime: commands.DurationOf(0)}}
	})
	agedRoom(t, m, time.UnixMilli(1_900_000_000_000), "zerobound", nil, true)
	if n, err := m.Retention.RunJob(context.Background(), m.Retention.Config.Jobs[0]); err != nil || n != 0 {
		t.Fatalf("RunJob = %d, %v; want no room (the default 3d is above longest_max_lifetime 0)", n, err)
	}
}

// TestRetention_ZeroDefaultMaxLifetimeHides: default_policy.max_lifetime
// 0 is a default policy, as in Synapse (parse_duration(0) is 0, not
// None): rooms without a policy hide every message sent before now.
func TestRetention_ZeroDefaultMaxLifetimeHides(t *testing.T) {
	m := startMain(t, func(c *Config) {
		c.Retention.Enabled = true
		c.Retention.DefaultPolicy.MaxLifetime = commands.DurationOf(0)
	})
	room := testenv.NewRoom("zerodefault", "test")
	evs := room.Setup(alice)
	old := room.Msg(alice, "old")
	seqs := m.publisher().Publish(t, append(evs, old)...)
	p, err := m.messages(t, room.ID, map[string]any{"user_id": alice, "limit": 100, "wait_for": seqs[len(seqs)-1]})
	if err != nil {
		t.Fatal(err)
	}
	if got := chunkIDs(p); fmt.Sprint(got) != fmt.Sprint(ids(evs)) {
		t.Fatalf("with a default max_lifetime of 0: %v, want only the state %v", got, ids(evs))
	}
}

// TestRetention_SkipsRoomWithActiveDeletion: a room whose deletion task
// is active is left alone (SYNAPSE.md 9), and purged once it is not.
func TestRetention_SkipsRoomWithActiveDeletion(t *testing.T) {
	m := startMain(t, func(c *Config) {
		c.Retention.Enabled = true
		c.Retention.DefaultPolicy.MaxLifetime = commands.DurationOf(3 * 24 * time.Hour)
		c.Homeserver.Timeout = commands.DurationOf(time.Minute)
	})
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	hs.StallLeave("@user0:test")
	room := shutdownRoom(t, m, hs, "deleting", 1) // received now: ten days before the job's clock
	other := shutdownRoom(t, m, hs, "other", 1)
	m.Retention.Now = func() time.Time { return time.Now().Add(10 * 24 * time.Hour) }
	shutdownCmd(t, m, "deletingroomtask", room.ID)
	testenv.WaitFor(t, 10*time.Second, "the deletion to be active", func() bool {
		return taskStatusOf(m, "deletingroomtask") == commands.TaskActive
	})
	if n, err := m.Retention.RunJob(context.Background(), handlers.RetentionJob{Interval: time.Hour}); err != nil || n != 1 {
		t.Fatalf("RunJob = %d, %v; want the room with an active deletion skipped, the other purged", n, err)
	}
	if tasks, _ := m.Store.RoomTasks(other.ID); len(tasks) != 1 || tasks[0].Action != commands.ActionPurgeHistory {
		t.Fatalf("the other room's tasks: %+v", tasks)
	}
}

// agedRoom publishes a room whose set-up (and the given extra state, if
// any) was received ten days before now, a message five days before
// (unless noOld) and one a day before (fresh), with the retention job's
// clock at now, and waits until they are applied.
func agedRoom(t *testing.T, m *Main, now time.Time, name string, state []testenv.Event, noOld bool) (room *testenv.Room, fresh testenv.Event) {
	t.Helper()
	m.Retention.Now = testenv.NewClock(now).Now
	return publishAgedRoom(t, m, now, name, state, noOld)
}

// publishAgedRoom is agedRoom for a service whose retention clock is
// already at now (its jobs may be running).
func publishAgedRoom(t *testing.T, m *Main, now time.Time, name string, state []testenv.Event, noOld bool) (room *testenv.Room, fresh testenv.Event) {
	t.Helper()
	day := int64(24 * time.Hour / time.Millisecond)
	room = testenv.NewRoom(name, "test")
	evs := room.Setup(alice)
	for _, st := range state {
		evs = append(evs, room.Next(st["type"].(string), alice, testenv.S(""), st["content"].(map[string]any)))
	}
	for _, e := range evs {
		e["received_ts"] = now.UnixMilli() - 10*day
	}
	if !noOld {
		old := room.Msg(alice, "old")
		old["received_ts"] = now.UnixMilli() - 5*day
		evs = append(evs, old)
	}
	fresh = room.Msg(alice, "fresh")
	fresh["received_ts"] = now.UnixMilli() - day
	seqs := m.publisher().Publish(t, append(evs, fresh)...)
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	return room, fresh
}

// retentionPolicy is an m.room.retention state event's type and content,
// for agedRoom.
func retentionPolicy(maxLifetime int64) testenv.Event {
	return testenv.Event{"type": "m.room.retention", "content": map[string]any{"max_lifetime": maxLifetime}}
}

// TestRetention_OneWaitingPurgeARoom: while a room's retention purge waits
// for a slot, later runs leave the room alone instead of adding a purge
// each; once it has run, the next run purges what has aged since.
func TestRetention_OneWaitingPurgeARoom(t *testing.T) {
	m := startMain(t, func(c *Config) {
		c.Retention.Enabled = true
		c.Retention.DefaultPolicy.MaxLifetime = commands.DurationOf(3 * 24 * time.Hour)
		c.Tasks.MaxConcurrent = 1
		c.Homeserver.Timeout = commands.DurationOf(time.Minute)
	})
	hs := holdTheOneSlot(t, m, "slotholder", "slotholdertaskxx")
	room := testenv.NewRoom("aging", "test")
	m.publisher().Publish(t, append(room.Setup(alice), room.Msg(alice, "one"))...)
	later := 10 * 24 * time.Hour
	m.Retention.Now = func() time.Time { return time.Now().Add(later) }
	purges := func() int {
		tasks, err := m.Store.RoomTasks(room.ID)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, task := range tasks {
			if task.Action == commands.ActionPurgeHistory {
				n++
			}
		}
		return n
	}
	run := func() int {
		// The run sees what the log holds (it catches up first).
		n, err := m.Retention.RunJob(context.Background(), handlers.RetentionJob{Interval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := run(); n != 1 || purges() != 1 {
		t.Fatalf("first run purged %d rooms; the room has %d purges", n, purges())
	}
	// More history ages past the lifetime while the purge waits.
	m.publisher().Publish(t, room.Msg(alice, "two"))
	later = 20 * 24 * time.Hour
	if n := run(); n != 0 || purges() != 1 {
		t.Fatalf("a run while the purge waits purged %d rooms; the room has %d purges, want 1", n, purges())
	}
	hs.ReleaseStalled()
	testenv.WaitFor(t, 30*time.Second, "the waiting purge to complete", func() bool {
		tasks, _ := m.Store.RoomTasks(room.ID)
		return len(tasks) == 1 && tasks[0].Status == commands.TaskComplete
	})
	// (The run purges the slot holder's room too, its deletion over.)
	if run(); purges() != 2 {
		t.Fatalf("after the run that follows the purge, the room has %d purges, want 2", purges())
	}
}
