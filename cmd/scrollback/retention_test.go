package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
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

// TestRetention_DeletesLocalEventsBelowAnEarlierFloor: an admin purge
// without delete_local_events keeps the room's local messages as
// outliers below its cut-off. A retention job whose cut-off is below that
// floor must still delete the local messages older than the room's
// lifetime: Synapse's retention purge runs purge_history with
// delete_local_events=True (SYNAPSE.md 9), which deletes local non-state
// TestRetention_SeesWhatTheLogHolds: a job run right after events were
// acknowledged, before this instance applied them, purges as if it had:
// every event older than the lifetime goes, up to the room's latest. It
// looked its cut-off up in the projection as it stood, so a job found a
// room's latest applied event, or, with another room lagging, a cut-off
// past events received before the lifetime's start.
func TestRetention_SeesWhatTheLogHolds(t *testing.T) {
	m := startMain(t, func(c *Config) {
		c.Retention.Enabled = true
		c.Retention.DefaultPolicy.MaxLifetime = commands.DurationOf(time.Hour)
	})
	m.Retention.Now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	for round := range 3 {
		room := testenv.NewRoom(fmt.Sprint("lagging", round), "test")
		evs := room.Setup(alice)
		for i := range 200 {
			evs = append(evs, room.Msg("@remote:other.org", fmt.Sprint(i)))
		}
		seqs := m.publisher().Publish(t, evs...)
		if _, err := m.Retention.RunJob(context.Background(), handlers.RetentionJob{Interval: time.Hour}); err != nil {
			t.Fatal(err)
		}
		p, err := m.messages(t, room.ID, map[string]any{"admin": true, "limit": 1000, "wait_for": seqs[len(seqs)-1]})
		if err != nil {
			t.Fatal(err)
		}
		if got := chunkIDs(p); len(got) != 1 || got[0] != evs[len(evs)-1].ID() {
			t.Fatalf("round %d: %d events left after the job, want only the latest", round, len(got))
		}
	}
}

// events below its cut-off whether or not they are outliers (6.4 step 2).
func TestRetention_DeletesLocalEventsBelowAnEarlierFloor(t *testing.T) {
	m, now, day := retentionAt(t, 4)

	room := testenv.NewRoom("floored", "test")
	evs := room.Setup(alice, "@remote:other.org")
	for _, e := range evs {
		e["received_ts"] = now.UnixMilli() - 10*day
	}
	var local, remote []testenv.Event
	for i := range 3 {
		e := room.Msg(alice, fmt.Sprint("local ", i))
		e["received_ts"] = now.UnixMilli() - 6*day + int64(i)
		local = append(local, e)
	}
	for i := range 6 {
		e := room.Msg("@remote:other.org", fmt.Sprint("remote ", i))
		e["received_ts"] = now.UnixMilli() - 3*day + int64(i)
		remote = append(remote, e)
	}
	all := append(append(append([]testenv.Event{}, evs...), local...), remote...)
	seqs := m.publisher().Publish(t, all...)
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	// The admin purges up to remote 3, keeping local events.
	st, body := m.do(t, "POST", "/_synapse/admin/v1/purge_history/"+url.PathEscape(room.ID)+"/"+url.PathEscape(remote[3].ID()), "tok-admin", "")
	if st != 200 {
		t.Fatalf("purge: %d %v", st, body)
	}
	testenv.WaitFor(t, 20*time.Second, "the admin purge to complete", func() bool {
		st, b := m.do(t, "GET", "/_synapse/admin/v1/purge_history_status/"+body["purge_id"].(string), "tok-admin", "")
		return st == 200 && b["status"] == "complete"
	})
	if _, ok, _ := m.Store.FindEvent(room.ID, local[0].ID()); !ok {
		t.Fatal("the admin purge deleted a local message (delete_local_events was false)")
	}
	// The retention cut-off (4 days: remote 0) is below the admin's floor
	// (remote 3), but the local messages before it are older than the
	// room's lifetime.
	if _, err := m.Retention.RunJob(context.Background(), handlers.RetentionJob{Interval: time.Hour}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 20*time.Second, "retention to delete the local messages older than 4 days", func() bool {
		for _, e := range local {
			if _, ok, _ := m.Store.FindEvent(room.ID, e.ID()); ok {
				return false
			}
		}
		return true
	})
}

// failingAppender fails every append to one room's subjects and passes
// the others to the log.
type failingAppender struct {
	handlers.CommandLog
	prefix string
}

func (a failingAppender) Append(ctx context.Context, subject, msgID string, data []byte) (uint64, error) {
	if strings.HasPrefix(subject, a.prefix) {
		return 0, errors.New("injected: the room's log refuses appends")
	}
	return a.CommandLog.Append(ctx, subject, msgID, data)
}

// TestRetention_OneFailingRoomDoesNotStopTheJob: a room whose purge
// cannot be published (or is not applied in time) must not keep the
// job from purging the rooms after it. Synapse starts each room's purge
// in the background; a run that stopped at the first failure left every
// later room unpurged until the next interval (a day by default), and
// for ever while the failure lasted.
func TestRetention_OneFailingRoomDoesNotStopTheJob(t *testing.T) {
	m, now, day := retentionAt(t, 3)
	var all, fresh []testenv.Event // received time grows along the log
	rooms := []*testenv.Room{testenv.NewRoom("aaa", "test"), testenv.NewRoom("bbb", "test")}
	for _, room := range rooms {
		evs := append(room.Setup(alice), room.Msg(alice, "old"))
		for _, e := range evs {
			e["received_ts"] = now.UnixMilli() - 10*day
		}
		all = append(all, evs...)
		f := room.Msg(alice, "fresh")
		f["received_ts"] = now.UnixMilli() - day
		fresh = append(fresh, f)
	}
	all = append(all, fresh...)
	seqs := m.publisher().Publish(t, all...)
	for _, room := range rooms {
		if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
			t.Fatal(err)
		}
	}
	admin := *m.Retention.Admin
	admin.Log = failingAppender{CommandLog: admin.Log, prefix: strings.TrimSuffix(bus.Subjects{Prefix: "sb"}.Room(rooms[0].ID, commands.KindCmd), "cmd")}
	m.Retention.Admin = &admin
	n, err := m.Retention.RunJob(context.Background(), handlers.RetentionJob{Interval: time.Hour})
	if err == nil {
		t.Error("RunJob reported no error for the room it could not purge")
	}
	if n != 1 {
		t.Fatalf("RunJob purged %d rooms (err %v); want the second room purged despite the first", n, err)
	}
}

// TestRetention_LeavesRoomsTheServerLeft: Synapse's purge jobs find rooms
// through their current state, which Synapse deletes when the last local
// member leaves, so a room the server left is never purged by retention,
// with the default policy or its own.
func TestRetention_LeavesRoomsTheServerLeft(t *testing.T) {
	for _, policy := range []bool{false, true} {
		m, now, day := retentionAt(t, 3)
		room := testenv.NewRoom("left", "test")
		evs := room.Setup(alice, "@remote:other.org")
		if policy {
			evs = append(evs, room.Next("m.room.retention", alice, testenv.S(""), map[string]any{"max_lifetime": 3 * day}))
		}
		for _, e := range evs {
			e["received_ts"] = now.UnixMilli() - 10*day
		}
		old := room.Msg("@remote:other.org", "old")
		old["received_ts"] = now.UnixMilli() - 5*day
		leave := room.Member(alice, alice, "leave") // the last local member
		leave["received_ts"] = now.UnixMilli() - day
		seqs := m.publisher().Publish(t, append(evs, old, leave)...)
		if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
			t.Fatal(err)
		}
		n, err := m.Retention.RunJob(context.Background(), handlers.RetentionJob{Interval: time.Hour})
		if tasks, _ := m.Store.RoomTasks(room.ID); err != nil || n != 0 || len(tasks) != 0 {
			t.Errorf("policy=%v: RunJob = %d, %v, %d tasks; Synapse's job never sees a room the server left", policy, n, err, len(tasks))
		}
	}
}

// retentionAt starts a service with retention on, a default policy of
// maxDays days, and the jobs' clock stopped at a fixed now; it returns the
// service, that now, and a day in milliseconds.
func retentionAt(t *testing.T, maxDays int) (*Main, time.Time, int64) {
	t.Helper()
	m := startMain(t, func(c *Config) {
		c.Retention.Enabled = true
		c.Retention.DefaultPolicy.MaxLifetime = commands.DurationOf(time.Duration(maxDays) * 24 * time.Hour)
	})
	now := time.UnixMilli(1_900_000_000_000)
	m.Retention.Now = testenv.NewClock(now).Now
	return m, now, int64(24 * time.Hour / time.Millisecond)
}
