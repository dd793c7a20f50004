package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/testenv"
)

func TestPurgeHistory_EndToEnd(t *testing.T) {
	m := startMain(t)
	room := testenv.NewRoom("purgeme", "test")
	evs := room.Setup(alice, "@remote:other.org")
	for i := range 20 {
		sender := "@remote:other.org"
		if i%4 == 0 {
			sender = alice
		}
		evs = append(evs, room.Msg(sender, fmt.Sprint(i)))
	}
	seqs := m.publisher().Publish(t, evs...)
	last := seqs[len(seqs)-1]
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": last}); err != nil {
		t.Fatal(err)
	}
	base := "/_synapse/admin/v1/purge_history/" + url.PathEscape(room.ID)

	errs := []struct {
		name, path, body string
		status           int
		code, text       string
	}{
		{"no cut-off", base, "", 400, "M_BAD_JSON", "must specify purge_up_to_event_id or purge_up_to_ts"},
		// Synapse's pattern, purge_history/(?P<room_id>[^/]*)(/(?P<event_id>[^/]*))?$,
		// takes a trailing slash as an empty event ID: not None, so the
		// body is not read, and get_event("") finds nothing.
		{"trailing slash, no cut-off", base + "/", "", 404, "M_NOT_FOUND", "Could not find event "},
		{"trailing slash, ts not an int", base + "/", `{"purge_up_to_ts": "5"}`, 404, "M_NOT_FOUND", "Could not find event "},
		{"trailing slash, an event in the body", base + "/", fmt.Sprintf(`{"purge_up_to_event_id": %q}`, evs[5].ID()), 404, "M_NOT_FOUND", "Could not find event "},
		// Valid JSON beyond float64: Python's json reads inf, a float.
		{"ts beyond float64", base, `{"purge_up_to_ts": 1e400}`, 400, "M_BAD_JSON", "purge_up_to_ts must be an int"},
		{"ts not an int", base, `{"purge_up_to_ts": "5"}`, 400, "M_BAD_JSON", "purge_up_to_ts must be an int"},
		{"ts is a bool", base, `{"purge_up_to_ts": true}`, 400, "M_BAD_JSON", "purge_up_to_ts must be an int"},
		{"unknown event", base + "/" + url.PathEscape("$nope"), "", 404, "M_NOT_FOUND", "Could not find event $nope"},
		{"wrong room", "/_synapse/admin/v1/purge_history/" + url.PathEscape("!other:test") + "/" + url.PathEscape(evs[5].ID()), "", 400, "M_UNKNOWN", "Event is for wrong room."},
		{"no event in the room before ts", "/_synapse/admin/v1/purge_history/" + url.PathEscape("!empty:test"), `{"purge_up_to_ts": 0}`, 404, "M_NOT_FOUND", "there is no event to be purged"},
		{"not json", base, `{`, 400, "M_NOT_JSON", "Content not JSON."},
		// Python's json raises "Extra data" after the value, a stray
		// closer too.
		{"a stray closer after the object", base, `{"purge_up_to_ts": 0}}`, 400, "M_NOT_JSON", "Content not JSON."},
		{"not an object", base, `[]`, 400, "M_BAD_JSON", "Content must be a JSON object."},
		// Synapse's parse_json_object_from_request(allow_empty_body=True)
		// takes null as an empty body: {}.
		{"null body", base, `null`, 400, "M_BAD_JSON", "must specify purge_up_to_event_id or purge_up_to_ts"},
		// Synapse takes any purge_up_to_event_id but null as the event
		// ID: get_event("") is a 404, and the ts is not looked at.
		{"empty event id in the body", base, `{"purge_up_to_event_id": "", "purge_up_to_ts": 0}`, 404, "M_NOT_FOUND", "Could not find event "},
		// Synapse decodes the body as UTF-8 before parsing it.
		{"body not UTF-8", base, "{\"purge_up_to_event_id\": \"$\xff\"}", 400, "M_NOT_JSON", "Content not JSON."},
	}
	for _, tt := range errs {
		t.Run(tt.name, func(t *testing.T) {
			st, body := m.do(t, "POST", tt.path, "tok-admin", tt.body)
			wantErr(t, st, body, tt.status, tt.code, tt.text)
		})
	}
	// Synapse's test_purge_history: purge_up_to_ts 0 with delete_local_events
	// is accepted (it finds the room's first event: nothing to delete) and
	// completes.
	st, body := m.do(t, "POST", base, "tok-admin", `{"delete_local_events": true, "purge_up_to_ts": 0}`)
	if st != 200 {
		t.Fatalf("purge_up_to_ts 0: %d %v", st, body)
	}
	first := body["purge_id"].(string)
	testenv.WaitFor(t, 20*time.Second, "the ts purge to complete", func() bool {
		st, body := m.do(t, "GET", "/_synapse/admin/v1/purge_history_status/"+first, "tok-admin", "")
		return st == 200 && body["status"] == "complete"
	})
	st, body = m.do(t, "POST", base, "tok-alice", "{}")
	wantErr(t, st, body, 403, "M_FORBIDDEN", "You are not a server admin")
	// A value beyond float64 elsewhere in the body is no reason to refuse
	// it, and one as delete_local_events is true, as inf is in Python.
	for _, b := range []string{`{"purge_up_to_ts": 0, "note": -1e400}`, `{"purge_up_to_ts": 0, "delete_local_events": 1e400}`} {
		if st, body := m.do(t, "POST", base, "tok-admin", b); st != 200 {
			t.Fatalf("%s: %d %v", b, st, body)
		}
	}

	cut := evs[12]
	st, body = m.do(t, "POST", base+"/"+url.PathEscape(cut.ID()), "tok-admin", "")
	if st != 200 {
		t.Fatalf("purge: %d %v", st, body)
	}
	purgeID, _ := body["purge_id"].(string)
	if len(purgeID) != 16 {
		t.Fatalf("purge_id = %q", purgeID)
	}
	// Instant for readers: the reply comes after the command is applied.
	p, err := m.messages(t, room.ID, map[string]any{"admin": true, "limit": 100})
	if err != nil {
		t.Fatal(err)
	}
	got := chunkIDs(p)
	if len(got) != len(evs)-12 || got[0] != cut.ID() {
		t.Fatalf("after purge: %v", got)
	}
	status := "/_synapse/admin/v1/purge_history_status/" + purgeID
	testenv.WaitFor(t, 20*time.Second, "purge to complete", func() bool {
		st, body = m.do(t, "GET", status, "tok-admin", "")
		return st == 200 && body["status"] == "complete"
	})
	// The janitor's progress, an addition to Synapse's reply: once
	// complete, the rows below the cut-off's depth are all gone.
	prog, _ := body["progress"].(map[string]any)
	if prog == nil || prog["floor"] != float64(cut["depth"].(int64)) || prog["purged_below"] != prog["floor"] {
		t.Errorf("progress of the complete purge: %v, want purged_below = floor = %v", body["progress"], cut["depth"])
	}
	st, body = m.do(t, "GET", status, "tok-alice", "")
	wantErr(t, st, body, 403, "M_FORBIDDEN", "You are not a server admin")
	st, body = m.do(t, "GET", "/_synapse/admin/v1/purge_history_status/nopenope", "tok-admin", "")
	wantErr(t, st, body, 404, "M_NOT_FOUND", "purge id 'nopenope' not found")

	// The janitor's metrics count the 12 rows below the cut-off it
	// removed (deleted or kept as outliers), in at least one transaction
	// (it reports a transaction just after its commit, which the task's
	// completion may overtake).
	testenv.WaitFor(t, 5*time.Second, "the janitor's rows in /metrics", func() bool {
		return metric(t, m, "scrollback_janitor_rows_total") == 12
	})
	for _, name := range []string{`scrollback_janitor_transactions_total{kind="rows"}`, "scrollback_janitor_held_seconds_total"} {
		if v := metric(t, m, name); v <= 0 {
			t.Errorf("%s = %v, want > 0", name, v)
		}
	}

	// Nothing of the purges waits in the background once the purge is
	// complete: its rows and its erasure are done.
	for _, stage := range []string{"rows", "erasure"} {
		series := `scrollback_purge_backlog_rooms{stage="` + stage + `"}`
		if v, ok := metricFound(t, m, series); !ok || v != 0 {
			t.Errorf("%s = %v (in /metrics: %v), want 0", series, v, ok)
		}
	}

	// Erased from the log: remote messages below the cut-off are gone,
	// local ones and state stay (kept as outliers). The embedded server's
	// log is compacted: what stays is read in its original place.
	ctx := context.Background()
	stream, err := m.JS.Stream(ctx, "SCROLLBACK")
	if err != nil {
		t.Fatal(err)
	}
	subjects := bus.Subjects{Prefix: "sb"}
	read := logAsRead(t, m.JS, "SCROLLBACK", subjects)
	eventSubj := subjects.Room(room.ID, commands.KindEvent)
	for i, ev := range evs[:12] {
		_, err := stream.GetMsg(ctx, seqs[i])
		remoteMsg := ev["type"] == "m.room.message" && ev["sender"] == "@remote:other.org"
		if remoteMsg && (!errors.Is(err, jetstream.ErrMsgNotFound) || read[seqs[i]] != "") {
			t.Errorf("%s (remote, purged) is still in the log", ev.ID())
		}
		if !remoteMsg && read[seqs[i]] != eventSubj {
			t.Errorf("%s (kept) is not read at %d: %q", ev.ID(), seqs[i], read[seqs[i]])
		}
	}
}

func TestPurge_ForwardExtremityGuardFailsTask(t *testing.T) {
	m := startMain(t)
	room := testenv.NewRoom("guard", "test")
	seqs := m.publisher().Publish(t, room.Setup(alice)...)
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	// A purge_history command from a homeserver with a cut-off above
	// every forward extremity becomes a failed task with Synapse's text.
	m.publisher().Command(t, map[string]any{"id": "guardcmd", "action": "purge_history", "room_id": room.ID, "params": map[string]any{"token": "t100-1"}})
	testenv.WaitFor(t, 10*time.Second, "failed status", func() bool {
		st, body := m.do(t, "GET", "/_synapse/admin/v1/purge_history_status/guardcmd", "tok-admin", "")
		return st == 200 && body["status"] == "failed" && body["error"] == "400: topological_ordering is greater than forward extremities"
	})
}

// TestCommands_EveryFailedCommandHasAStatus: a command from a homeserver
// worker that fails validation is a failed task under its id, visible
// through the status requests (CONTRACT.md sections 3 and 4), whatever
// its action: purge_history's by purge_status, every other by
// delete_status. A block_room, a forget or an unknown action was stored
// as a failed task that neither request answered (found by a helper's
// integration walkthrough).
func TestCommands_EveryFailedCommandHasAStatus(t *testing.T) {
	var logs testenv.Buffer
	m := startMainWith(t, &Main{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	room := testenv.NewRoom("badcmds", "test")
	seqs := m.publisher().Publish(t, room.Setup(alice)...)
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		id, action string
		params     map[string]any
	}{
		{"badblock", "block_room", map[string]any{"block": "true"}},
		{"badforget", "forget", map[string]any{}},
		{"badaction", "explode", map[string]any{}},
	} {
		seq := m.publisher().Command(t, map[string]any{"id": c.id, "action": c.action, "room_id": room.ID, "params": c.params})
		if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seq}); err != nil {
			t.Fatal(err)
		}
		st, body := m.do(t, "GET", "/_synapse/admin/v2/rooms/delete_status/"+c.id, "tok-admin", "")
		errText, _ := body["error"].(string)
		if st != 200 || body["status"] != "failed" || errText == "" || body["delete_id"] != c.id {
			t.Errorf("%s (%s): %d %v, want its failed task with the reason", c.id, c.action, st, body)
		}
		// And the operator's log says so, once, with the reason.
		// (The projector logs after the commit that the read waited for.)
		failedLines := func() []string { return taskLogLines(&logs, "task failed", c.id) }
		testenv.WaitFor(t, 5*time.Second, c.id+"'s failure in the log", func() bool { return len(failedLines()) > 0 })
		if lines := failedLines(); len(lines) != 1 || !strings.Contains(lines[0], fmt.Sprintf("err=%q", errText)) {
			t.Errorf("%s: log lines %q, want one with the reason %q", c.id, lines, errText)
		}
	}
	// A purge_history's is purge_status's alone.
	seq := m.publisher().Command(t, map[string]any{"id": "badpurge", "action": "purge_history", "room_id": room.ID, "params": map[string]any{"token": 5}})
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seq}); err != nil {
		t.Fatal(err)
	}
	if st, body := m.do(t, "GET", "/_synapse/admin/v1/purge_history_status/badpurge", "tok-admin", ""); st != 200 || body["status"] != "failed" {
		t.Errorf("purge_history_status/badpurge: %d %v", st, body)
	}
	st, body := m.do(t, "GET", "/_synapse/admin/v2/rooms/delete_status/badpurge", "tok-admin", "")
	wantErr(t, st, body, 404, "M_NOT_FOUND", "delete id 'badpurge' not found")
}

// TestPurge_RacesNewEvents: events published while a purge is requested
// are each either before it (and purged if below the cut-off) or after it
// (kept if above the cut-off, dropped if below: the cut-off is permanent):
// the room's log order serialises them. Late events below the cut-off
// (a backfill's, say) race the purge too, and are gone either way; and
// the projection is the one a rebuild from the log gives, whichever
// order the race took.
func TestPurge_RacesNewEvents(t *testing.T) {
	m := startMain(t)
	room, evs := m.remoteRoom(t, "race", 50)
	cut := evs[30]
	var more []testenv.Event
	for i := range 100 {
		more = append(more, room.Msg("@remote:other.org", fmt.Sprint("late ", i)))
	}
	room.StartAt(evs[10]["depth"].(int64), evs[9].ID()) // below the cut-off
	var low []testenv.Event
	for i := range 10 {
		low = append(low, room.Msg("@remote:other.org", fmt.Sprint("old ", i)))
	}
	var racing []testenv.Event
	for i, ev := range more {
		racing = append(racing, ev)
		if i%10 == 0 {
			racing = append(racing, low[i/10])
		}
	}
	done := make(chan []uint64)
	go func() { done <- m.publisher().Publish(t, racing...) }()
	st, body := m.do(t, "POST", "/_synapse/admin/v1/purge_history/"+url.PathEscape(room.ID)+"/"+url.PathEscape(cut.ID()), "tok-admin", "")
	if st != 200 {
		t.Fatalf("purge: %d %v", st, body)
	}
	purgeID := body["purge_id"].(string)
	seqs := <-done
	p, err := m.messages(t, room.ID, map[string]any{"admin": true, "limit": 1000, "wait_for": seqs[len(seqs)-1]})
	if err != nil {
		t.Fatal(err)
	}
	want := append(ids(evs[30:]), ids(more)...)
	if got := chunkIDs(p); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after the race:\n got  %v\n want %v", got, want)
	}
	testenv.WaitFor(t, 20*time.Second, "the purge to complete", func() bool {
		st, body := m.do(t, "GET", "/_synapse/admin/v1/purge_history_status/"+purgeID, "tok-admin", "")
		return st == 200 && body["status"] == "complete"
	})
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	var vout bytes.Buffer
	if n, err := verifyProjection(context.Background(), m.Config, &vout); err != nil || n != 0 {
		t.Fatalf("the projection after the race differs from a rebuild from the log: %d differences, %v\n%s", n, err, vout.String())
	}
}

// TestPurge_TaskResumesAfterRestart: a purge whose task has not finished
// when the service stops is finished after the restart, once. The janitor
// is held before its first step, so that the service stops with the
// purge's rows still there.
func TestPurge_TaskResumesAfterRestart(t *testing.T) {
	m := startMainWith(t, &Main{holdJanitor: func(ctx context.Context) { <-ctx.Done() }})
	room := testenv.NewRoom("resume", "test")
	evs := room.Setup(alice)
	for i := range 30 {
		evs = append(evs, room.Msg("@remote:other.org", fmt.Sprint(i)))
	}
	seqs := m.publisher().Publish(t, evs...)
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	cmdSeq := m.publisher().Command(t, map[string]any{"id": "resumeme", "action": "purge_history", "room_id": room.ID,
		"params": map[string]any{"token": fmt.Sprintf("t%d-0", evs[20]["depth"])}})
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": cmdSeq}); err != nil {
		t.Fatal(err)
	}
	if done, err := m.Store.PurgeDone(room.ID); err != nil || done {
		t.Fatalf("the purge's rows before the stop: done=%v (%v), want them still there", done, err)
	}
	// Active before the stop (the runner starts it on its own
	// goroutine), so that the restart resumes it.
	testenv.WaitFor(t, 10*time.Second, "the task to go active", func() bool {
		task, _ := m.Store.Task("resumeme")
		return task != nil && task.Status == "active"
	})
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	m2, logs := openLogged(t, m.Config, slog.LevelDebug)
	testenv.WaitFor(t, 15*time.Second, "the purge task to complete after the restart", func() bool {
		task, _ := m2.Store.Task("resumeme")
		return task != nil && task.Status == "complete"
	})
	task, _ := m2.Store.Task("resumeme")
	if task.Updates > 2 {
		t.Fatalf("task applied %d updates, want active then complete at most once each", task.Updates)
	}
	// The operator's log tells the resumption and the end (at debug
	// level: the command names no requester, as a background job's).
	for _, msg := range []string{"resuming task", "task complete"} {
		testenv.WaitFor(t, 5*time.Second, msg+" in the log", func() bool { return len(taskLogLines(logs, msg, "resumeme")) > 0 })
	}
}

func ids(evs []testenv.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.ID()
	}
	return out
}

// TestPurgeHistory_SeesWhatTheLogHolds: a purge sent right after events
// were acknowledged by the log sees them, as Synapse's purge sees every
// persisted event: the event ID is found (not 404 "Could not find
// event"), and purge_up_to_ts after them cuts at the latest one, although
// the projection may not have applied them when the request arrives (it
// had not, in most rounds, before the purge caught up first).
func TestPurgeHistory_SeesWhatTheLogHolds(t *testing.T) {
	m := startMain(t)
	base := "/_synapse/admin/v1/purge_history/"
	publish := func(name string) (*testenv.Room, []testenv.Event, uint64) {
		room := testenv.NewRoom(name, "test")
		evs := room.Setup(alice)
		for i := range 200 {
			evs = append(evs, room.Msg("@remote:other.org", fmt.Sprint(i)))
		}
		seqs := m.publisher().Publish(t, evs...)
		return room, evs, seqs[len(seqs)-1]
	}
	for round := range 3 {
		room, evs, _ := publish(fmt.Sprint("fresh", round))
		cut := evs[len(evs)-1]
		st, body := m.do(t, "POST", base+url.PathEscape(room.ID)+"/"+url.PathEscape(cut.ID()), "tok-admin", "")
		if st != 200 {
			t.Fatalf("round %d: purge up to an acknowledged event: %d %v", round, st, body)
		}

		room, evs, last := publish(fmt.Sprint("freshts", round))
		ts := time.Now().Add(time.Hour).UnixMilli()
		st, body = m.do(t, "POST", base+url.PathEscape(room.ID), "tok-admin", fmt.Sprintf(`{"purge_up_to_ts": %d}`, ts))
		if st != 200 {
			t.Fatalf("round %d: purge_up_to_ts: %d %v", round, st, body)
		}
		p, err := m.messages(t, room.ID, map[string]any{"admin": true, "limit": 1000, "wait_for": last})
		if err != nil {
			t.Fatal(err)
		}
		// Every event was received before ts: the cut-off is the room's
		// latest event, the only one left.
		if got := chunkIDs(p); len(got) != 1 || got[0] != evs[len(evs)-1].ID() {
			t.Fatalf("round %d: after purging up to a time after every event: %d events left, want only %s", round, len(got), evs[len(evs)-1].ID())
		}
	}
}

// TestPurgeHistory_HugeIntegerTS: Synapse checks only that purge_up_to_ts
// is an int, and Python's ints have no bound; it compares ts with
// received times, so a ts past every one purges up to the room's latest
// event. Over JSON, or as a MessagePack uint64 over NATS, an integer
// beyond int64 is such an int, not "purge_up_to_ts must be an int".
func TestPurgeHistory_HugeIntegerTS(t *testing.T) {
	m := startMain(t)
	room, evs := m.remoteRoom(t, "hugets", 5)
	st, body := m.do(t, "POST", "/_synapse/admin/v1/purge_history/"+url.PathEscape(room.ID), "tok-admin", `{"purge_up_to_ts": 100000000000000000000}`)
	if st != 200 {
		t.Fatalf("purge_up_to_ts 1e20 as an integer: %d %v", st, body)
	}
	p, err := m.messages(t, room.ID, map[string]any{"admin": true, "limit": 100})
	if err != nil {
		t.Fatal(err)
	}
	if got := chunkIDs(p); len(got) != 1 || got[0] != evs[len(evs)-1].ID() {
		t.Fatalf("after the purge: %v, want only %s", got, evs[len(evs)-1].ID())
	}
	// A float with an integral value stays a float, as in Python.
	st, body = m.do(t, "POST", "/_synapse/admin/v1/purge_history/"+url.PathEscape(room.ID), "tok-admin", `{"purge_up_to_ts": 1e20}`)
	wantErr(t, st, body, 400, "M_BAD_JSON", "purge_up_to_ts must be an int")

	r := &bus.Requester{NC: m.NC, Timeout: 15 * time.Second}
	subj := bus.Subjects{Prefix: "sb"}.APIRoom(room.ID, "purge_history")
	if _, err := r.Request(context.Background(), subj, map[string]any{"purge_up_to_ts": uint64(1) << 63}); err != nil {
		t.Fatalf("purge_up_to_ts 2^63 as a MessagePack uint64: %v", err)
	}
}

// remoteRoom publishes a room's set-up (alice's) and n messages of a
// remote user, and waits until they are applied.
func (m *Main) remoteRoom(t *testing.T, name string, n int) (*testenv.Room, []testenv.Event) {
	t.Helper()
	room := testenv.NewRoom(name, "test")
	evs := room.Setup(alice)
	for i := range n {
		evs = append(evs, room.Msg("@remote:other.org", fmt.Sprint(i)))
	}
	seqs := m.publisher().Publish(t, evs...)
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	return room, evs
}

// TestPurgeHistory_LongRoomID: a room ID too long for a NATS subject (no
// event can be in it: Matrix room IDs are at most 255 bytes), once the
// body has passed Synapse's checks (a cut-off, an int purge_up_to_ts),
// finds no event before a time, as in Synapse, and with an event cut-off
// is "not a legal room ID", as the room deletion and block routes answer,
// not a 500; and the bridge keeps answering.
func TestPurgeHistory_LongRoomID(t *testing.T) {
	m := startMain(t)
	long := "!" + strings.Repeat("a", 5000) + ":test"
	base := "/_synapse/admin/v1/purge_history/" + url.PathEscape(long)
	st, body := m.do(t, "POST", base, "tok-admin", `not json`)
	wantErr(t, st, body, 400, "M_NOT_JSON", "Content not JSON.")
	// The body's own checks come first (SYNAPSE.md 6.1): no cut-off, or
	// a purge_up_to_ts that is not an int, whatever the room.
	for _, ts := range []string{`true`, `1.5`, `"1"`, `null`} {
		st, body = m.do(t, "POST", base, "tok-admin", `{"purge_up_to_ts": `+ts+`}`)
		wantErr(t, st, body, 400, "M_BAD_JSON", "purge_up_to_ts must be an int")
	}
	for _, b := range []string{``, `{}`, `{"purge_up_to_event_id": null}`} {
		st, body = m.do(t, "POST", base, "tok-admin", b)
		wantErr(t, st, body, 400, "M_BAD_JSON", "must specify purge_up_to_event_id or purge_up_to_ts")
	}
	// No room has that ID: a time cut-off finds no event, as in Synapse.
	// Whether an event cut-off is in another room only the service knows,
	// and the ID cannot reach it.
	st, body = m.do(t, "POST", base, "tok-admin", `{"purge_up_to_ts": 0}`)
	wantErr(t, st, body, 404, "M_NOT_FOUND", "there is no event to be purged")
	for _, c := range []struct{ path, body string }{
		{base + "/" + url.PathEscape("$ev:test"), ""},
		{base, `{"purge_up_to_event_id": "$ev:test"}`},
	} {
		st, body = m.do(t, "POST", c.path, "tok-admin", c.body)
		wantErr(t, st, body, 400, "M_UNKNOWN", long+" is not a legal room ID")
	}
	st, body = m.do(t, "GET", "/_synapse/admin/v1/purge_history_status/nope", "tok-admin", "")
	wantErr(t, st, body, 404, "M_NOT_FOUND", "purge id 'nope' not found")
}

// TestPurgeHistory_EmptySegments: Synapse's patterns take an empty room ID
// and an empty purge ID, and answer them after the admin check; a
// ServeMux wildcard matches neither.
func TestPurgeHistory_EmptySegments(t *testing.T) {
	m := startMain(t)
	m.remoteRoom(t, "someroom", 2)
	const base = "/_synapse/admin/v1/purge_history/"
	st, body := m.do(t, "POST", base, "tok-alice", `{"purge_up_to_ts": 0}`)
	wantErr(t, st, body, 403, "M_FORBIDDEN", "You are not a server admin")
	st, body = m.do(t, "POST", base, "tok-admin", `{"purge_up_to_ts": 0}`)
	wantErr(t, st, body, 404, "M_NOT_FOUND", "there is no event to be purged")
	st, body = m.do(t, "POST", base, "tok-admin", `{"purge_up_to_ts": 1.5}`)
	wantErr(t, st, body, 400, "M_BAD_JSON", "purge_up_to_ts must be an int")
	st, body = m.do(t, "POST", base, "tok-admin", `{}`)
	wantErr(t, st, body, 400, "M_BAD_JSON", "must specify purge_up_to_event_id or purge_up_to_ts")

	const status = "/_synapse/admin/v1/purge_history_status/"
	st, body = m.do(t, "GET", status, "tok-alice", "")
	wantErr(t, st, body, 403, "M_FORBIDDEN", "You are not a server admin")
	st, body = m.do(t, "GET", status, "tok-admin", "")
	wantErr(t, st, body, 404, "M_NOT_FOUND", "purge id '' not found")
}

// TestCommands_AReplayDoesNotLogOldFailuresAgain: a projection built again
// from the log (a new instance, a deleted or torn file) replays every
// task; a failure from before is not logged as failing now, while one
// after the replay is. From a helper's review.
func TestCommands_AReplayDoesNotLogOldFailuresAgain(t *testing.T) {
	m := startMain(t)
	room := testenv.NewRoom("oldfail", "test")
	seqs := m.publisher().Publish(t, room.Setup(alice)...)
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	seq := m.publisher().Command(t, map[string]any{"id": "oldbad", "action": "block_room", "room_id": room.ID, "params": map[string]any{"block": "yes"}})
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seq}); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(m.Config.DataDir, "scrollback.db")); err != nil {
		t.Fatal(err)
	}
	m2, logs := openLogged(t, m.Config, slog.LevelWarn)
	testenv.WaitFor(t, 10*time.Second, "the new file's build to end", func() bool { return !m2.Store.Building() })
	// A failure after the replay, in the same room (so the same
	// partition, observed in log order): once it is logged, so would
	// the old one have been.
	seq = m2.publisher().Command(t, map[string]any{"id": "newbad", "action": "block_room", "room_id": room.ID, "params": map[string]any{"block": "yes"}})
	if _, err := m2.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seq}); err != nil {
		t.Fatal(err)
	}
	failed := func(id string) bool { return len(taskLogLines(logs, "task failed", id)) > 0 }
	testenv.WaitFor(t, 5*time.Second, "the new failure in the log", func() bool { return failed("newbad") })
	if failed("oldbad") {
		t.Errorf("a task that failed before the new file was built is logged as failing again:\n%s", logs.String())
	}
}

// openLogged opens a service on cfg (a restart on a data dir a test has
// closed) that logs at level into the returned buffer, and closes it when
// the test ends.
func openLogged(t *testing.T, cfg Config, level slog.Level) (*Main, *testenv.Buffer) {
	t.Helper()
	logs := &testenv.Buffer{}
	m := &Main{Config: cfg, Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level}))}
	if err := m.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, logs
}

// taskLogLines are the lines of logs with the message msg about the task
// id.
func taskLogLines(logs *testenv.Buffer, msg, id string) []string {
	var out []string
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, fmt.Sprintf("msg=%q", msg)) && strings.Contains(line, " task="+id+" ") {
			out = append(out, line)
		}
	}
	return out
}
