package main

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/scrollback/scrollback/internal/loadgen"
	"github.com/scrollback/scrollback/testenv"
)

func deletePath(v, roomID string) string {
	return "/_synapse/admin/" + v + "/rooms/" + url.PathEscape(roomID)
}

func strList(v any) []string {
	var out []string
	l, _ := v.([]any)
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// shutdownRoom publishes a room with local members (joined, invited,
// knocking) and a remote one, tracked by the fake homeserver.
func shutdownRoom(t *testing.T, m *Main, hs *testenv.Homeserver, name string, joined int) *testenv.Room {
	t.Helper()
	r := testenv.NewRoom(name, "test")
	hs.Track(r)
	evs := r.Setup(alice, "@remote:other.org")
	for i := range joined {
		evs = append(evs, r.Join(fmt.Sprintf("@user%d:test", i)))
	}
	evs = append(evs, r.Member(alice, "@invitee:test", "invite"), r.Member("@knocker:test", "@knocker:test", "knock"), r.Msg(alice, "bye"))
	seqs := m.publisher().Publish(t, evs...)
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestDeleteRoom_Validation(t *testing.T) {
	m := startMain(t)
	room := "!some:test"
	tests := []struct {
		name, method, path, body string
		status                   int
		code, text               string
	}{
		{"not admin", "DELETE", deletePath("v2", room), "{}", 403, "M_FORBIDDEN", "You are not a server admin"},
		{"empty body", "DELETE", deletePath("v2", room), "", 400, "M_NOT_JSON", "Content not JSON."},
		{"v1 empty body", "DELETE", deletePath("v1", room), "", 400, "M_NOT_JSON", "Content not JSON."},
		{"not an object", "DELETE", deletePath("v2", room), "[]", 400, "M_BAD_JSON", "Content must be a JSON object."},
		{"block not bool", "DELETE", deletePath("v2", room), `{"block": "yes"}`, 400, "M_BAD_JSON", "Param 'block' must be a boolean, if given"},
		{"purge not bool", "DELETE", deletePath("v2", room), `{"purge": 1}`, 400, "M_BAD_JSON", "Param 'purge' must be a boolean, if given"},
		{"force_purge not bool", "DELETE", deletePath("v2", room), `{"force_purge": null, "block": true, "purge": "x"}`, 400, "M_BAD_JSON", "Param 'purge' must be a boolean, if given"},
		{"bools before room id", "DELETE", deletePath("v2", "bad"), `{"block": 1}`, 400, "M_BAD_JSON", "Param 'block' must be a boolean, if given"},
		{"invalid room id", "DELETE", deletePath("v2", "bad"), "{}", 400, "M_UNKNOWN", "bad is not a legal room ID"},
		{"remote new_room_user_id", "DELETE", deletePath("v2", room), `{"new_room_user_id": "@x:other.org"}`, 400, "M_UNKNOWN", "User must be our own: @x:other.org"},
		// Synapse checks any new_room_user_id but null: "" is not its own.
		{"empty new_room_user_id", "DELETE", deletePath("v2", room), `{"new_room_user_id": ""}`, 400, "M_UNKNOWN", "User must be our own: "},
		{"status of unknown id", "GET", "/_synapse/admin/v2/rooms/delete_status/nope", "", 404, "M_NOT_FOUND", "delete id 'nope' not found"},
		{"status of room without deletes", "GET", deletePath("v2", room) + "/delete_status", "", 404, "M_NOT_FOUND", "No delete task for room_id '!some:test' found"},
		{"status of invalid room", "GET", deletePath("v2", "bad") + "/delete_status", "", 400, "M_UNKNOWN", "bad is not a legal room ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := "tok-admin"
			if tt.status == 403 {
				tok = "tok-alice"
			}
			st, body := m.do(t, tt.method, tt.path, tok, tt.body)
			wantErr(t, st, body, tt.status, tt.code, tt.text)
		})
	}
}

func TestDeleteRoom_V2UnknownRoomBlocks(t *testing.T) {
	m := startMain(t)
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	_ = hs
	st, body := m.do(t, "DELETE", deletePath("v2", "!unknown:test"), "tok-admin", `{"block": true}`)
	if st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	id := body["delete_id"].(string)
	var task map[string]any
	testenv.WaitFor(t, 15*time.Second, "completion", func() bool {
		var st int
		st, task = m.do(t, "GET", "/_synapse/admin/v2/rooms/delete_status/"+id, "tok-admin", "")
		return st == 200 && task["status"] == "complete"
	})
	// The audit record: who deleted the room, and when.
	if audit, _ := task["audit"].(map[string]any); audit["requested_by"] != "@admin:test" || audit["requested_ts"].(float64) <= 0 {
		t.Fatalf("delete status without its audit record: %v", task)
	}
	st, body = m.do(t, "GET", "/_synapse/admin/v1/rooms/"+url.PathEscape("!unknown:test")+"/block", "tok-admin", "")
	if body["block"] != true || body["user_id"] != "@admin:test" {
		t.Fatalf("block after deleting an unknown room: %d %v", st, body)
	}
	// A deletion's ID is no purge's: Synapse's purge status looks up
	// purge_history tasks only.
	st, body = m.do(t, "GET", "/_synapse/admin/v1/purge_history_status/"+id, "tok-admin", "")
	wantErr(t, st, body, 404, "M_NOT_FOUND", "purge id '"+id+"' not found")
}

func TestDeleteRoom_V2ShutdownWithNewRoom(t *testing.T) {
	m := startMain(t)
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	hs.SetAliases("#old:test")
	room := shutdownRoom(t, m, hs, "doomed", 20)
	hs.FailLeave("@user3:test")
	st, body := m.do(t, "DELETE", deletePath("v2", room.ID), "tok-admin", `{"new_room_user_id": "@admin:test", "block": true, "purge": true, "force_purge": true}`)
	if st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	id := body["delete_id"].(string)
	// A second v2 delete while the first is scheduled or running is
	// refused.
	st2, body2 := m.do(t, "DELETE", deletePath("v2", room.ID), "tok-admin", `{}`)
	wantErr(t, st2, body2, 400, "M_UNKNOWN", "Purge already in progress for "+room.ID)
	var task map[string]any
	testenv.WaitFor(t, 30*time.Second, "the shutdown to finish", func() bool {
		_, task = m.do(t, "GET", "/_synapse/admin/v2/rooms/delete_status/"+id, "tok-admin", "")
		return task["status"] == "complete" || task["status"] == "failed"
	})
	if task["status"] != "complete" {
		t.Fatalf("task = %v", task)
	}
	res := task["shutdown_room"].(map[string]any)
	kicked := strList(res["kicked_users"])
	if len(kicked) != 22 { // alice, 19 users, the invitee, the knocker (user3 failed)
		t.Fatalf("kicked_users = %d %v", len(kicked), kicked)
	}
	if f := strList(res["failed_to_kick_users"]); len(f) != 1 || f[0] != "@user3:test" {
		t.Fatalf("failed_to_kick_users = %v", f)
	}
	if a := strList(res["local_aliases"]); len(a) != 1 || a[0] != "#old:test" {
		t.Fatalf("local_aliases = %v", a)
	}
	newRoom, _ := res["new_room_id"].(string)
	if newRoom == "" {
		t.Fatalf("no new_room_id: %v", res)
	}
	// Invited and knocking users left but were not moved; joined ones were.
	joins := map[string]bool{}
	for _, c := range hs.Calls("join") {
		joins[c.Req["user_id"].(string)] = true
	}
	if joins["@invitee:test"] || joins["@knocker:test"] || !joins["@user5:test"] {
		t.Fatalf("joins to the new room: %v", joins)
	}
	// Every homeserver request carried a txn_id; nobody was kicked twice.
	for _, c := range hs.Calls("") {
		if c.Subject != "sb.hs.whoami" && c.Subject != "sb.hs.ignored_users" && c.Req["txn_id"] == nil {
			t.Fatalf("request without txn_id: %+v", c)
		}
	}
	if n := hs.Acted("leave", "@user5:test"); n != 1 {
		t.Fatalf("user5 left %d times", n)
	}
	// Each request to the homeserver is timed, by outcome: what bounds a
	// shutdown of thousands of users is their round trips.
	const count = "scrollback_homeserver_request_duration_seconds_count"
	for series, want := range map[string]float64{
		count + `{outcome="ok",request="create_room"}`: 1,
		count + `{outcome="ok",request="leave"}`:       22,
		count + `{outcome="error",request="leave"}`:    1, // user3
		count + `{outcome="ok",request="forget"}`:      22,
		count + `{outcome="ok",request="join"}`:        float64(len(joins)),
	} {
		if got := metric(t, m, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	// Purged (forced): the old room reads empty; by room, the task shows.
	p, err := m.messages(t, room.ID, map[string]any{"admin": true})
	if err != nil || len(chunkIDs(p)) != 0 {
		t.Fatalf("after purge: %v %v", chunkIDs(p), err)
	}
	st, body = m.do(t, "GET", deletePath("v2", room.ID)+"/delete_status", "tok-admin", "")
	if st != 200 || len(body["results"].([]any)) != 1 {
		t.Fatalf("delete_status by room: %d %v", st, body)
	}
}

// TestDeleteRoom_FailedKicksLogAFewWarnings: a shutdown whose homeserver
// fails the users' leaves logs the first 10 failures at Warn, with the
// user and the error, the others at Debug, and at the end one Warn line
// with the task, how many kicks failed and the first error: each failure
// was a Warn line, 5,000 of them for a room of 5,000 members while the
// homeserver was down. The result names every user that failed, as
// before.
func TestDeleteRoom_FailedKicksLogAFewWarnings(t *testing.T) {
	var logs testenv.Buffer
	m := startMainWith(t, &Main{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	room := shutdownRoom(t, m, hs, "hsdown", 25)
	var failing []string
	for i := range 15 {
		u := fmt.Sprintf("@user%d:test", i)
		hs.FailLeave(u)
		failing = append(failing, u)
	}
	sort.Strings(failing)
	task := deleteAndWait(t, m, room.ID, `{"block": true, "purge": false}`)
	id := task["delete_id"].(string)
	res := task["shutdown_room"].(map[string]any)
	if f := strList(res["failed_to_kick_users"]); task["status"] != "complete" || !slices.Equal(f, failing) {
		t.Fatalf("task %v, failed_to_kick_users %v; want complete, and %v", task["status"], f, failing)
	}
	if kicked := strList(res["kicked_users"]); len(kicked) != 13 { // alice, 10 users, the invitee, the knocker
		t.Fatalf("kicked_users = %d %v", len(kicked), kicked)
	}
	user := regexp.MustCompile(` user=(\S+)`)
	var warned, debugged, summaries []string
	logged := map[string]int{}
	for line := range strings.Lines(logs.String()) {
		switch {
		case strings.Contains(line, `level=WARN msg="shutdown: leave failed"`):
			warned = append(warned, line)
		case strings.Contains(line, `level=DEBUG msg="shutdown: leave failed"`):
			debugged = append(debugged, line)
		case strings.Contains(line, `msg="shutdown: kicks failed"`):
			summaries = append(summaries, line)
			continue
		default:
			continue
		}
		if u := user.FindStringSubmatch(line); u != nil && strings.Contains(line, " task="+id+" ") && strings.Contains(line, " err=") {
			logged[u[1]]++
		} else {
			t.Errorf("a failure logged without its task, user or error: %s", line)
		}
	}
	if len(warned) != 10 || len(debugged) != 5 {
		t.Errorf("%d failures logged at Warn and %d at Debug, want 10 and 5:\n%s", len(warned), len(debugged), strings.Join(append(warned, debugged...), ""))
	}
	for _, u := range failing {
		if logged[u] != 1 {
			t.Errorf("%s's failure logged %d times, want once", u, logged[u])
		}
	}
	if len(summaries) != 1 || !strings.Contains(summaries[0], "level=WARN") || !strings.Contains(summaries[0], " task="+id+" ") ||
		!strings.Contains(summaries[0], " failed=15 ") || !strings.Contains(summaries[0], " first_err=") {
		t.Errorf("summaries of the failed kicks: %q, want one Warn line with the task, failed=15 and the first error", summaries)
	}
}

func TestDeleteRoom_V1WaitsAndUnforcedPurgeFails(t *testing.T) {
	m := startMain(t)
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	room := shutdownRoom(t, m, hs, "v1room", 3)
	hs.FailLeave("@user1:test")
	// user1 stays joined, so the unforced purge is refused and the
	// shutdown fails with Synapse's text.
	st, body := m.do(t, "DELETE", deletePath("v1", room.ID), "tok-admin", `{}`)
	wantErr(t, st, body, 400, "M_UNKNOWN", "Users are still joined to this room")
	room2 := shutdownRoom(t, m, hs, "v1room2", 3)
	// user1's leave still fails (the fake fails it in every room).
	st, body = m.do(t, "DELETE", deletePath("v1", room2.ID), "tok-admin", `{"purge": false}`)
	if st != 200 || len(strList(body["kicked_users"])) != 5 || len(strList(body["failed_to_kick_users"])) != 1 || body["new_room_id"] != nil {
		t.Fatalf("v1 without purge: %d %v", st, body)
	}
}

// TestDeleteRoom_ResumesAfterRestart stops the service in the middle of
// kicking users and starts it again: the shutdown finishes, nobody is
// kicked twice and no second new room is made.
func TestDeleteRoom_ResumesAfterRestart(t *testing.T) {
	// The homeserver is a process of its own: it talks to scrollback's
	// embedded NATS over TCP and reconnects when scrollback restarts.
	m := startMain(t, func(c *Config) { c.Shutdown.Concurrency = 2; c.NATS.Listen = "127.0.0.1:0" })
	hs := separateHomeserver(t, m)
	room := shutdownRoom(t, m, hs, "resumed", 30)
	hs.SetDelay(20 * time.Millisecond)
	st, body := m.do(t, "DELETE", deletePath("v2", room.ID), "tok-admin", `{"new_room_user_id": "@admin:test", "purge": false}`)
	if st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	id := body["delete_id"].(string)
	testenv.WaitFor(t, 20*time.Second, "some users kicked", func() bool { return hs.Acted("leave", "") >= 6 })
	addr := m.NATSServer.Addr().String()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	m2 := &Main{Config: m.Config, Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))}
	m2.Config.NATS.Listen = addr
	if err := m2.Open(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	hs2 := hs
	testenv.WaitFor(t, 30*time.Second, "the shutdown to complete after the restart", func() bool {
		task, _ := m2.Store.Task(id)
		return task != nil && task.Status == "complete"
	})
	task, _ := m2.Store.Task(id)
	kicked := task.Result["kicked_users"].([]any)
	if len(kicked) != 33 {
		t.Fatalf("kicked %d users, want 33", len(kicked))
	}
	seen := map[any]bool{}
	for _, u := range kicked {
		if seen[u] {
			t.Fatalf("%v kicked twice in the result", u)
		}
		seen[u] = true
	}
	for i := range 30 {
		u := fmt.Sprintf("@user%d:test", i)
		if n := hs2.Acted("leave", u); n != 1 {
			t.Fatalf("%s left %d times", u, n)
		}
	}
	if n := hs2.Acted("create_room", ""); n != 1 {
		t.Fatalf("%d new rooms created", n)
	}
}

// TestDeleteRoom_KicksMakeWayForACPUQueue: while the process's goroutines
// queue for a CPU, a shutdown waits for the queue before each user it
// kicks (handlers.MakeWayForKicks, bus.Load.Calm), at most briefly each
// time, so that it still completes; the operator sees the waits in
// scrollback_cpu_queue_waits_seconds_total. The gate closes for at most
// half of each second (bus.CPUHoldShare), and may have spent that half on
// the test's own start: one user at a time, each request a little slow,
// the shutdown lasts more than a second (bus.CPUHoldSpan), so that some of
// its users start while the gate is closed.
func TestDeleteRoom_KicksMakeWayForACPUQueue(t *testing.T) {
	m := startMain(t, func(c *Config) { c.Shutdown.Concurrency = 1 })
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	room := shutdownRoom(t, m, hs, "crowded", 10)
	hs.SetDelay(40 * time.Millisecond) // 13 users, three requests each: 1.5 s at least
	before := metric(t, m, "scrollback_cpu_queue_waits_seconds_total")
	stop := testenv.QueueForCPU(t)
	st, body := m.do(t, "DELETE", deletePath("v2", room.ID), "tok-admin", `{"block": true, "purge": false}`)
	if st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	id := body["delete_id"].(string)
	var task map[string]any
	testenv.WaitFor(t, 30*time.Second, "the shutdown to finish", func() bool {
		_, task = m.do(t, "GET", "/_synapse/admin/v2/rooms/delete_status/"+id, "tok-admin", "")
		return task["status"] == "complete" || task["status"] == "failed"
	})
	stop()
	if task["status"] != "complete" {
		t.Fatalf("task = %v", task)
	}
	if kicked := strList(task["shutdown_room"].(map[string]any)["kicked_users"]); len(kicked) != 13 { // alice, 10 users, the invitee and the knocker
		t.Fatalf("kicked_users = %d %v", len(kicked), kicked)
	}
	if after := metric(t, m, "scrollback_cpu_queue_waits_seconds_total"); after <= before {
		t.Fatalf("scrollback_cpu_queue_waits_seconds_total = %v after the shutdown, %v before: the kicks never waited for the CPU queue", after, before)
	}
}

// metric is the value of one series in the service's /metrics, by its
// name and labels as the exposition writes them (0 if absent).
func metric(t *testing.T, m *Main, series string) float64 {
	t.Helper()
	v, _ := metricFound(t, m, series)
	return v
}

// metricFound is metric, and whether the series is there.
func metricFound(t *testing.T, m *Main, series string) (float64, bool) {
	t.Helper()
	resp, err := http.Get("http://" + m.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return loadgen.PromValue(data, series)
}

// TestDeleteRoom_V1ChecksTheNewRoomUserInTheShutdown: v1 has no check of
// its own; Synapse's shutdown_room blocks the room, ends there for an
// unknown room, and only then refuses someone else's new_room_user_id
// (v2 refuses it before scheduling anything).
func TestDeleteRoom_V1ChecksTheNewRoomUserInTheShutdown(t *testing.T) {
	m := startMain(t)
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	body := `{"new_room_user_id": "@x:other.org", "block": true}`
	st, reply := m.do(t, "DELETE", deletePath("v1", "!nowhere:test"), "tok-admin", body)
	if st != 200 || reply["new_room_id"] != nil || len(strList(reply["kicked_users"])) != 0 {
		t.Fatalf("v1 on an unknown room: %d %v; want 200 and the empty result", st, reply)
	}
	room := shutdownRoom(t, m, hs, "remoteuser", 1)
	st, reply = m.do(t, "DELETE", deletePath("v1", room.ID), "tok-admin", body)
	wantErr(t, st, reply, 400, "M_UNKNOWN", "User must be our own: @x:other.org")
	st, reply = m.do(t, "GET", "/_synapse/admin/v1/rooms/"+url.PathEscape(room.ID)+"/block", "tok-admin", "")
	if st != 200 || reply["block"] != true {
		t.Fatalf("block after the refused v1 deletion: %d %v; want blocked", st, reply)
	}
	if n := leavesIn(hs, room.ID); n != 0 {
		t.Fatalf("%d members were asked to leave", n)
	}
}

// TestDeleteRoom_V1EmptyNewRoomUserIsCheckedInTheShutdown: v1 has no
// check of its own, so "" reaches Synapse's shutdown_room, which blocks
// the room, ends there for an unknown room (200), and only then refuses
// a new_room_user_id that is not one of its users.
func TestDeleteRoom_V1EmptyNewRoomUserIsCheckedInTheShutdown(t *testing.T) {
	m := startMain(t)
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	body := `{"new_room_user_id": "", "block": true}`
	room := shutdownRoom(t, m, hs, "emptyuser", 1)
	st, reply := m.do(t, "DELETE", deletePath("v1", room.ID), "tok-admin", body)
	wantErr(t, st, reply, 400, "M_UNKNOWN", "User must be our own: ")
	st, reply = m.do(t, "GET", "/_synapse/admin/v1/rooms/"+url.PathEscape(room.ID)+"/block", "tok-admin", "")
	if st != 200 || reply["block"] != true {
		t.Fatalf("block after the refused v1 deletion: %d %v; Synapse blocked it first", st, reply)
	}
	st, reply = m.do(t, "DELETE", deletePath("v1", "!nowhere:test"), "tok-admin", body)
	if st != 200 || len(strList(reply["kicked_users"])) != 0 {
		t.Fatalf("v1 on an unknown room: %d %v; want 200 and the empty result", st, reply)
	}
}

// separateHomeserver is a homeserver in a process of its own: it talks to
// m's embedded NATS over TCP (m must listen: NATS.Listen) and reconnects
// when m restarts.
func separateHomeserver(t *testing.T, m *Main) *testenv.Homeserver {
	t.Helper()
	nc, js := connectNATS(t, m.NATSServer.ClientURL())
	return testenv.NewHomeserver(t, nc, &testenv.Publisher{JS: js, Subjects: m.publisher().Subjects}, "test")
}

// TestDeleteRoom_NewRoomIDFromTheHomeserverIsChecked: the room ID in the
// homeserver's create_room reply names the room every member is moved
// to and the aliases go to, and is shown in the deletion's status. One
// that is no room ID (a broken worker) fails the deletion before anybody
// is kicked, with a short reason, instead of sending leaves and joins to
// a room that cannot exist.
func TestDeleteRoom_NewRoomIDFromTheHomeserverIsChecked(t *testing.T) {
	for _, c := range []struct {
		name string
		id   any
	}{
		{"not a room ID", "not-a-room"},
		{"no local part", "!:test"},
		{"huge", "!" + strings.Repeat("x", 1<<20) + ":test"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := startMain(t)
			hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
			room := shutdownRoom(t, m, hs, "badnew", 3)
			hs.AnswerCreateRoom(c.id)
			st, body := m.do(t, "DELETE", deletePath("v2", room.ID), "tok-admin", `{"new_room_user_id": "@admin:test"}`)
			if st != 200 {
				t.Fatalf("%d %v", st, body)
			}
			id := body["delete_id"].(string)
			var task map[string]any
			testenv.WaitFor(t, 30*time.Second, "the deletion to end", func() bool {
				_, task = m.do(t, "GET", "/_synapse/admin/v2/rooms/delete_status/"+id, "tok-admin", "")
				return task["status"] == "complete" || task["status"] == "failed"
			})
			if task["status"] != "failed" {
				t.Fatalf("deletion with a create_room reply of %.40q: %v", c.id, task["status"])
			}
			if e, _ := task["error"].(string); !strings.HasPrefix(e, "Failed to create the new room") || len(e) > 1024 {
				t.Fatalf("error = %.200q (%d bytes)", e, len(e))
			}
			if n := len(hs.Calls("leave")) + len(hs.Calls("join")); n != 0 {
				t.Fatalf("%d leaves and joins sent for a room that cannot exist", n)
			}
		})
	}
}
