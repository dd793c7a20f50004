package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/testenv"
)

// scrape reads GET /metrics and returns the value of the series, written
// as it appears in the exposition text (name{labels}); ok is false when
// it is not there.
func scrape(t testing.TB, m *Main, series string) (v float64, ok bool) {
	t.Helper()
	resp, err := http.Get("http://" + m.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		name, val, found := strings.Cut(sc.Text(), " ")
		if found && name == series {
			f, err := strconv.ParseFloat(val, 64)
			if err != nil {
				t.Fatalf("%s: %v", sc.Text(), err)
			}
			return f, true
		}
	}
	return 0, false
}

// waitMetric waits until the series reaches at least want.
func waitMetric(t testing.TB, m *Main, series string, want float64) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, series+" >= "+strconv.FormatFloat(want, 'g', -1, 64), func() bool {
		v, ok := scrape(t, m, series)
		return ok && v >= want
	})
}

// TestMetrics_BackfillOutcomes: a backfill that fails (no federation
// worker, an error reply) was logged at debug level only, and nothing on
// /metrics counted backfills at all: an operator whose federation workers
// are down or failing saw nothing but readers' complaints about history
// that never fills (USERS.md A1, B3.15). Each request to sb.backfill is
// now counted by its outcome.
func TestMetrics_BackfillOutcomes(t *testing.T) {
	m := backfillMain(t, 2*time.Second)
	read := func(roomID string) {
		t.Helper()
		if _, err := m.messages(t, roomID, map[string]any{"admin": true, "dir": "b", "limit": 30}); err != nil {
			t.Fatal(err)
		}
	}
	// No federation worker: no responder.
	r1, _ := gappyRoom(t, m, "nofed")
	read(r1.ID)
	waitMetric(t, m, `scrollback_backfill_requests_total{outcome="error"}`, 1)

	fed := testenv.NewFederation(t, m.NC, m.publisher().Subjects)
	// A worker that knows nothing of the room: an answer without events.
	r2, _ := gappyRoom(t, m, "unknown")
	read(r2.ID)
	waitMetric(t, m, `scrollback_backfill_requests_total{outcome="empty"}`, 1)

	// A worker that fills the gap.
	r3, full := gappyRoom(t, m, "filled")
	fed.Serve(r3.ID, full...)
	read(r3.ID)
	waitMetric(t, m, `scrollback_backfill_requests_total{outcome="events"}`, 1)

	// A worker that answers with an error.
	fed.SetFail(true)
	before, _ := scrape(t, m, `scrollback_backfill_requests_total{outcome="error"}`)
	r4, _ := gappyRoom(t, m, "failing")
	read(r4.ID)
	waitMetric(t, m, `scrollback_backfill_requests_total{outcome="error"}`, before+1)
}

// TestMetrics_TaskOutcomes: a purge or a room deletion that failed showed
// only in a log line and in a status poll: nothing on /metrics counted
// tasks, so no alert could fire on failed purges or deletions (USERS.md
// B1.4, "silent failures"). Finished tasks are now counted by action and
// status, with the action of a command the service does not know folded
// into "other", so that a publisher's made-up actions cannot grow the
// label set.
func TestMetrics_TaskOutcomes(t *testing.T) {
	m := startMain(t)
	r := testenv.NewRoom("tasks", "test")
	evs := r.Setup(alice)
	for i := range 5 {
		evs = append(evs, r.Msg(alice, strconv.Itoa(i)))
	}
	seqs := m.publisher().Publish(t, evs...)
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	m.purgeHistory(t, r.ID, evs[len(evs)-2].ID(), "")
	waitMetric(t, m, `scrollback_tasks_finished_total{action="purge_history",status="complete"}`, 1)

	// A command the service does not know fails validation: a failed
	// task, under "other".
	made := "made_up_" + strings.Repeat("x", 40)
	publishCommand(t, m.JS, map[string]any{"id": "madeup1", "action": made, "room_id": r.ID, "params": map[string]any{}, "ts": time.Now().UnixMilli()})
	waitMetric(t, m, `scrollback_tasks_finished_total{action="other",status="failed"}`, 1)
	resp, err := http.Get("http://" + m.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var text strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		text.WriteString(sc.Text() + "\n")
	}
	if strings.Contains(text.String(), made) {
		t.Fatalf("a made-up action became a label value")
	}
	// A failed deletion is there from the start, at 0, for an alert's
	// increase() to see its first one.
	if v, ok := scrape(t, m, `scrollback_tasks_finished_total{action="shutdown_and_purge_room",status="failed"}`); !ok || v != 0 {
		t.Fatalf("failed deletions = %v, %v; want 0, present", v, ok)
	}
}

// TestMetrics_LogMessageKindsAreBounded: the stream takes every subject
// under sb.room.>, and a message on sb.room.<rk>.<anything> is a dead
// letter whose kind is that last token. The kind went into
// scrollback_log_messages_total's label as it was, so a publisher that
// put an ID in that token (or any client, without nats.auth) made a new
// series per message, without bound. Kinds other than the log's own
// (event, cmd, task, kept) now count as "other".
func TestMetrics_LogMessageKindsAreBounded(t *testing.T) {
	m := startMain(t)
	r := testenv.NewRoom("kinds", "test")
	rk := bus.RoomKey(r.ID)
	for i := range 3 {
		if _, err := m.JS.Publish(context.Background(), "sb.room."+rk+".k"+strconv.Itoa(i), []byte{0x80}); err != nil {
			t.Fatal(err)
		}
	}
	waitMetric(t, m, `scrollback_dead_letters_total`, 3)
	for i := range 3 {
		if v, ok := scrape(t, m, `scrollback_log_messages_total{kind="k`+strconv.Itoa(i)+`",result="dead_letter"}`); ok {
			t.Fatalf("kind k%d is a label value (%v)", i, v)
		}
	}
	if v, _ := scrape(t, m, `scrollback_log_messages_total{kind="other",result="dead_letter"}`); v != 3 {
		t.Fatalf("dead letters of other kinds = %v, want 3", v)
	}
}

// TestMetrics_OpenAndStaleTasks: a purge whose janitor has stopped
// moving stays active for ever; the only sign of it was a warning in the
// log after 24 hours (USERS.md: "purging with no progress"). /metrics
// now carries the open tasks by status and the stale ones, the gauges
// that an alert on a stuck purge or deletion needs.
func TestMetrics_OpenAndStaleTasks(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	m := startMainWith(t, &Main{Now: clock.Now, holdJanitor: func(ctx context.Context) { <-ctx.Done() }})
	room := testenv.NewRoom("stuck", "test")
	evs := room.Setup(alice)
	for i := range 10 {
		evs = append(evs, room.Msg("@remote:other.org", strconv.Itoa(i)))
	}
	seqs := m.publisher().Publish(t, evs...)
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	m.publisher().Command(t, map[string]any{"id": "stuckpurge", "action": "purge_history", "room_id": room.ID,
		"params": map[string]any{"token": fmt.Sprintf("t%d-0", evs[8]["depth"])}})
	testenv.WaitFor(t, 10*time.Second, "the stuck purge to show as active and not yet stale", func() bool {
		a, _ := scrape(t, m, `scrollback_tasks_open{status="active"}`)
		s, ok := scrape(t, m, `scrollback_tasks_stale`)
		return a == 1 && ok && s == 0
	})
	// Its first progress update (nothing purged) comes once the clock
	// has moved; after it the task is not updated again.
	testenv.WaitFor(t, 10*time.Second, "the purge's first progress update", func() bool {
		clock.Advance(handlers.PurgeProgressEvery)
		task, _ := m.Store.Task("stuckpurge")
		return task != nil && task.Result["purged_below"] != nil
	})
	clock.Advance(handlers.StaleTaskAge + time.Hour)
	waitMetric(t, m, `scrollback_tasks_stale`, 1)
}
