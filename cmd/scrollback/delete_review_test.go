package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/testenv"
)

// TestDeleteRoom_NullBoolIsNotABoolean: Synapse reads block, purge and
// force_purge with content.get(key, default) and then checks isinstance
// bool, so an explicit JSON null is "must be a boolean, if given", not the
// default (SYNAPSE.md 7.1).
func TestDeleteRoom_NullBoolIsNotABoolean(t *testing.T) {
	m := startMain(t)
	for _, k := range []string{"block", "purge", "force_purge"} {
		for _, v := range []string{"v1", "v2"} {
			st, body := m.do(t, "DELETE", deletePath(v, "!nulls:test"), "tok-admin", `{"`+k+`": null}`)
			wantErr(t, st, body, 400, "M_BAD_JSON", "Param '"+k+"' must be a boolean, if given")
		}
	}
}

// TestDeleteRoom_LongRoomID: a room ID too long for a NATS subject is
// "not a legal room ID" (after the boolean checks), and the bridge keeps
// answering.
func TestDeleteRoom_LongRoomID(t *testing.T) {
	m := startMain(t)
	long := "!" + strings.Repeat("a", 5000) + ":test"
	for _, v := range []string{"v1", "v2"} {
		st, body := m.do(t, "DELETE", deletePath(v, long), "tok-admin", `{"block": 1}`)
		wantErr(t, st, body, 400, "M_BAD_JSON", "Param 'block' must be a boolean, if given")
		st, body = m.do(t, "DELETE", deletePath(v, long), "tok-admin", `{}`)
		wantErr(t, st, body, 400, "M_UNKNOWN", long+" is not a legal room ID")
	}
	st, body := m.do(t, "GET", "/_synapse/admin/v1/rooms/"+url.PathEscape("!x:test")+"/block", "tok-admin", "")
	if st != 200 || body["block"] != false {
		t.Fatalf("after a long room id: %d %v", st, body)
	}
}

// TestDeleteRoom_FalsyNameAndMessage: Synapse takes a falsy room_name or
// message (false, 0, "", null) for the default (SYNAPSE.md 7.1).
func TestDeleteRoom_FalsyNameAndMessage(t *testing.T) {
	m := startMain(t)
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	room := shutdownRoom(t, m, hs, "falsy", 1)
	st, body := m.do(t, "DELETE", deletePath("v1", room.ID), "tok-admin", `{"new_room_user_id": "@admin:test", "room_name": false, "message": 0, "purge": false}`)
	if st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	c := hs.Calls("create_room")
	if len(c) != 1 || c[0].Req["name"] != "Content Violation Notification" {
		t.Fatalf("create_room: %v", c)
	}
	s := hs.Calls("send")
	if len(s) != 1 || s[0].Req["content"].(map[string]any)["body"] != "Sharing illegal content on this server is not permitted and rooms in violation will be blocked." {
		t.Fatalf("send: %v", s)
	}
}

// TestDeleteRoom_InvalidLocalNewRoomUser: a new_room_user_id that passes
// the "is ours" check but is no user ID ("@:test") must be refused by the
// API, not accepted with 200 and then failed by the command's validation
// without the block that was asked for.
func TestDeleteRoom_InvalidLocalNewRoomUser(t *testing.T) {
	m := startMain(t)
	_ = testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	st, body := m.do(t, "DELETE", deletePath("v2", "!baduser:test"), "tok-admin", `{"new_room_user_id": "@:test", "block": true}`)
	if st == 200 {
		id, _ := body["delete_id"].(string)
		_, task := m.do(t, "GET", "/_synapse/admin/v2/rooms/delete_status/"+id, "tok-admin", "")
		_, blk := m.do(t, "GET", "/_synapse/admin/v1/rooms/"+url.PathEscape("!baduser:test")+"/block", "tok-admin", "")
		t.Fatalf("accepted: task %v, block %v", task, blk)
	}
	if st != 400 {
		t.Fatalf("%d %v", st, body)
	}
}

// TestDeleteRoom_V1WhileV2Runs: v1 has no "in progress" check; a second
// call waits for the first (SYNAPSE.md 7.5) and answers 200, never a 500.
func TestDeleteRoom_V1WhileV2Runs(t *testing.T) {
	m, hs, room, body := startV2Deletion(t, "twice", 10, 100*time.Millisecond)
	first := body["delete_id"].(string)
	st, body := m.do(t, "DELETE", deletePath("v1", room.ID), "tok-admin", `{"purge": false}`)
	if st != 200 {
		t.Fatalf("v1 while a v2 runs: %d %v", st, body)
	}
	_, task := m.do(t, "GET", "/_synapse/admin/v2/rooms/delete_status/"+first, "tok-admin", "")
	if task["status"] != "complete" {
		t.Fatalf("first: %v", task)
	}
	// Nobody was kicked twice.
	for _, u := range []string{"@user1:test", alice} {
		if n := hs.Acted("leave", u); n != 1 {
			t.Fatalf("%s left %d times", u, n)
		}
	}
	// No failed deletion shows up for the room.
	_, st2 := m.do(t, "GET", deletePath("v2", room.ID)+"/delete_status", "tok-admin", "")
	for _, r := range st2["results"].([]any) {
		if r.(map[string]any)["status"] != "complete" {
			t.Fatalf("delete_status: %v", st2)
		}
	}
}

// TestDeleteRoom_StatusByRoomOrder: the room's delete tasks come ordered
// by their timestamp, which for a task that has started is its last
// change (SYNAPSE.md 7.4 and 10), not by when they were asked for.
func TestDeleteRoom_StatusByRoomOrder(t *testing.T) {
	m, _, room, body := startV2Deletion(t, "ordered", 10, 50*time.Millisecond)
	first := body["delete_id"].(string)
	testenv.WaitFor(t, 10*time.Second, "the first deletion to start", func() bool {
		task, _ := m.Store.Task(first)
		return task != nil && task.Status == "active"
	})
	// A worker publishes a second deletion while the first runs: it
	// fails at once, long before the first completes.
	seq := m.publisher().Command(t, map[string]any{"id": "secondDeletion", "action": "shutdown_and_purge_room", "room_id": room.ID,
		"params": map[string]any{"purge": false}, "ts": time.Now().UnixMilli()})
	testenv.WaitApplied(t, m.Projector, seq)
	testenv.WaitFor(t, 30*time.Second, "the first deletion to complete", func() bool {
		task, _ := m.Store.Task(first)
		return task != nil && task.Status == "complete"
	})
	st, body := m.do(t, "GET", deletePath("v2", room.ID)+"/delete_status", "tok-admin", "")
	res, _ := body["results"].([]any)
	if st != 200 || len(res) != 2 {
		t.Fatalf("%d %v", st, body)
	}
	if a, b := res[0].(map[string]any)["delete_id"], res[1].(map[string]any)["delete_id"]; a != "secondDeletion" || b != first {
		t.Fatalf("order: %v, %v; want secondDeletion (failed first), then %s", a, b, first)
	}
}

// TestBlockRoom_FirstBlockerKept: Synapse's block_room is an upsert that
// only inserts (ON CONFLICT DO NOTHING), so blocking a blocked room again,
// by PUT .../block or by a deletion with block, keeps who blocked it
// first; unblocking and blocking again records the new requester.
func TestBlockRoom_FirstBlockerKept(t *testing.T) {
	m := startMain(t, func(c *Config) {
		c.Auth.Tokens = append(c.Auth.Tokens, TokenConfig{Token: "tok-admin2", UserID: "@admin2:test", Admin: true})
	})
	_ = testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	path := "/_synapse/admin/v1/rooms/" + url.PathEscape("!blocked:test") + "/block"
	blockedBy := func() any {
		t.Helper()
		st, body := m.do(t, "GET", path, "tok-admin", "")
		if st != 200 || body["block"] != true {
			t.Fatalf("GET block: %d %v", st, body)
		}
		return body["user_id"]
	}
	if st, body := m.do(t, "PUT", path, "tok-admin", `{"block": true}`); st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	if st, body := m.do(t, "PUT", path, "tok-admin2", `{"block": true}`); st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	if by := blockedBy(); by != "@admin:test" {
		t.Fatalf("blocked by %v after a second block, want @admin:test", by)
	}
	st, body := m.do(t, "DELETE", deletePath("v1", "!blocked:test"), "tok-admin2", `{"block": true}`)
	if st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	if by := blockedBy(); by != "@admin:test" {
		t.Fatalf("blocked by %v after a deletion with block, want @admin:test", by)
	}
	m.do(t, "PUT", path, "tok-admin", `{"block": false}`)
	m.do(t, "PUT", path, "tok-admin2", `{"block": true}`)
	if by := blockedBy(); by != "@admin2:test" {
		t.Fatalf("blocked by %v after unblock and block, want @admin2:test", by)
	}
}

// TestDeleteRoom_V2VisibleByRoomAtOnce: Synapse launches the task as it
// schedules it, so a by-room delete_status right after DELETE v2 lists the
// deletion (active), instead of 404 "No delete task" for up to a poll.
func TestDeleteRoom_V2VisibleByRoomAtOnce(t *testing.T) {
	m, _, room, _ := startV2Deletion(t, "visible", 3, 20*time.Millisecond)
	st, body := m.do(t, "GET", deletePath("v2", room.ID)+"/delete_status", "tok-admin", "")
	if res, _ := body["results"].([]any); st != 200 || len(res) != 1 {
		t.Fatalf("by-room status right after DELETE v2: %d %v", st, body)
	}
}

// TestDeleteRoom_JoinDuringRoomCreation: Synapse lists the members to
// kick after it has created the new room (SYNAPSE.md 7.3 steps 5-6), so a
// local user who joins while the new room is being made is kicked too,
// and the unforced purge succeeds.
func TestDeleteRoom_JoinDuringRoomCreation(t *testing.T) {
	m := startMain(t)
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	room := shutdownRoom(t, m, hs, "latejoin", 2)
	hs.SetDelay(500 * time.Millisecond)
	st, body := m.do(t, "DELETE", deletePath("v2", room.ID), "tok-admin", `{"new_room_user_id": "@admin:test"}`)
	if st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	id := body["delete_id"].(string)
	testenv.WaitFor(t, 10*time.Second, "the create_room request", func() bool { return len(hs.Calls("create_room")) > 0 })
	seq := m.publisher().Publish(t, room.Join("@late:test"))
	testenv.WaitApplied(t, m.Projector, seq[0])
	if len(hs.Calls("leave")) != 0 {
		t.Fatal("the join came too late for this test")
	}
	var task map[string]any
	testenv.WaitFor(t, 30*time.Second, "the deletion to finish", func() bool {
		_, task = m.do(t, "GET", "/_synapse/admin/v2/rooms/delete_status/"+id, "tok-admin", "")
		return task["status"] == "complete" || task["status"] == "failed"
	})
	kicked := strList(task["shutdown_room"].(map[string]any)["kicked_users"])
	if task["status"] != "complete" || !slices.Contains(kicked, "@late:test") {
		t.Fatalf("task %v", task)
	}
}

// TestDeleteRoom_NoIdleProgressUpdates: while the shutdown waits on a
// homeserver that does not answer, nothing changes, and no TaskUpdate
// (each carries the whole result, users_to_kick included, and stays in
// the log) is published every 500 ms for nothing.
func TestDeleteRoom_NoIdleProgressUpdates(t *testing.T) {
	m := startMain(t, func(c *Config) { c.Homeserver.Timeout.Duration = 4 * time.Second })
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	room := shutdownRoom(t, m, hs, "idle", 3)
	hs.StallLeave("@user0:test")
	st, body := m.do(t, "DELETE", deletePath("v2", room.ID), "tok-admin", `{"purge": false}`)
	if st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	id := body["delete_id"].(string)
	testenv.WaitFor(t, 30*time.Second, "the deletion to finish", func() bool {
		task, _ := m.Store.Task(id)
		return task != nil && task.Finished()
	})
	task, _ := m.Store.Task(id)
	// active, users_to_kick, progress after the quick kicks, the failed
	// user, complete: a few, not one every 500 ms of the 4 s wait.
	if task.Status != "complete" || task.Updates > 6 {
		t.Fatalf("%s after %d updates", task.Status, task.Updates)
	}
}

// TestDeleteRoom_ShutdownRoomNullUntilFirstResult: Synapse's task result
// stays null until shutdown_room records one (the new room, or a user
// kicked or not), so delete_status shows "shutdown_room": null for a
// deletion that has started but done nothing yet (SYNAPSE.md 7.4).
func TestDeleteRoom_ShutdownRoomNullUntilFirstResult(t *testing.T) {
	m, hs, _, body := startV2Deletion(t, "nullresult", 0, time.Second)
	id := body["delete_id"].(string)
	testenv.WaitFor(t, 10*time.Second, "the first leave request", func() bool { return len(hs.Calls("leave")) > 0 })
	_, task := m.do(t, "GET", "/_synapse/admin/v2/rooms/delete_status/"+id, "tok-admin", "")
	if task["status"] != "active" || task["shutdown_room"] != nil {
		t.Fatalf("before any result: %v", task)
	}
	testenv.WaitFor(t, 20*time.Second, "completion", func() bool {
		_, task = m.do(t, "GET", "/_synapse/admin/v2/rooms/delete_status/"+id, "tok-admin", "")
		return task["status"] == "complete"
	})
	if r, _ := task["shutdown_room"].(map[string]any); len(strList(r["kicked_users"])) != 3 {
		t.Fatalf("complete: %v", task)
	}
}

// startV2Deletion starts a service and a homeserver worker answering
// after delay, makes a room of members local members, and deletes it
// with DELETE v2 and {"purge": false}; it returns the reply's body.
func startV2Deletion(t *testing.T, name string, members int, delay time.Duration) (*Main, *testenv.Homeserver, *testenv.Room, map[string]any) {
	t.Helper()
	m := startMain(t)
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	room := shutdownRoom(t, m, hs, name, members)
	hs.SetDelay(delay)
	st, body := m.do(t, "DELETE", deletePath("v2", room.ID), "tok-admin", `{"purge": false}`)
	if st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	return m, hs, room, body
}

// apiInFlight is how many requests the scrollback micro service's
// endpoint has received (micro's $SRV.STATS), so that a test knows its
// requests are being handled without sleeping.
func apiInFlight(t *testing.T, nc *nats.Conn, endpoint string) int {
	t.Helper()
	subj, err := micro.ControlSubject(micro.StatsVerb, "scrollback", "")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := nc.Request(subj, nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st micro.Stats
	if err := json.Unmarshal(msg.Data, &st); err != nil {
		t.Fatal(err)
	}
	for _, e := range st.Endpoints {
		if e.Name == endpoint {
			return e.NumRequests
		}
	}
	return 0
}

// stuckDeletion starts a v2 deletion that hangs on user0's leave.
func stuckDeletion(t *testing.T, m *Main, hs *testenv.Homeserver, name string) (*testenv.Room, string) {
	t.Helper()
	hs.StallLeave("@user0:test")
	room := shutdownRoom(t, m, hs, name, 1)
	st, body := m.do(t, "DELETE", deletePath("v2", room.ID), "tok-admin", `{"purge": false}`)
	if st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	id := body["delete_id"].(string)
	testenv.WaitFor(t, 10*time.Second, "the deletion to hang on user0's leave", func() bool {
		return taskStatusOf(m, id) == commands.TaskActive && hs.Acted("leave", "") >= 1 && len(hs.Calls("leave")) >= 2
	})
	return room, id
}

// TestDeleteRoom_CloseWhileV1Waits: a v1 deletion waiting for the room's
// open deletion (or for its own) must not hold the service's stop until
// that deletion ends, nor start a deletion while the service stops: it
// answers that the deletion goes on, and Close returns.
func TestDeleteRoom_CloseWhileV1Waits(t *testing.T) {
	m := startMain(t, func(c *Config) { c.Homeserver.Timeout = commands.DurationOf(20 * time.Second) })
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	room, stuck := stuckDeletion(t, m, hs, "closing")
	subjects := m.publisher().Subjects
	nc := m.NC
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		_, err := api(ctx, nc, subjects.APIRoom(room.ID, "delete"), map[string]any{"wait": true, "purge": false, "requested_by": "@admin:test"})
		done <- err
	}()
	testenv.WaitFor(t, 10*time.Second, "the v1 request to be handled", func() bool { return apiInFlight(t, nc, "delete") >= 2 })
	start := time.Now()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Close took %v while a v1 deletion waited", d)
	}
	var ce *commands.Error
	if err := <-done; !errors.As(err, &ce) || ce.Status != 503 {
		t.Fatalf("the waiting v1 got %v; want a 503", err)
	}
	for _, c := range hs.Calls("") {
		if txn, _ := c.Req["txn_id"].(string); txn != "" && !strings.HasPrefix(txn, stuck+"-") {
			t.Fatalf("a deletion ran while the service stopped: %s %v", c.Subject, c.Req)
		}
	}
}

// TestDeleteRoom_V2NoStartWaitWhenSlotsFull: DELETE v2 waits (up to 1 s)
// for its task to start only when it can start: with every task slot
// taken it stays scheduled anyway, as in Synapse, and the wait only held
// one of the API's shared workers and made a script deleting many rooms
// take a second a room.
func TestDeleteRoom_V2NoStartWaitWhenSlotsFull(t *testing.T) {
	m := startMain(t, func(c *Config) {
		c.Tasks.MaxConcurrent = 1
		c.Homeserver.Timeout = commands.DurationOf(20 * time.Second)
	})
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	stuckDeletion(t, m, hs, "slotholder")
	for i := range 3 {
		start := time.Now()
		st, body := m.do(t, "DELETE", deletePath("v2", "!queued"+string(rune('a'+i))+":test"), "tok-admin", `{"purge": false}`)
		if st != 200 {
			t.Fatalf("%d %v", st, body)
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Fatalf("DELETE v2 with every task slot taken answered after %v", d)
		}
		if s := taskStatusOf(m, body["delete_id"].(string)); s != commands.TaskScheduled {
			t.Fatalf("queued deletion is %q", s)
		}
	}
	hs.ReleaseStalled()
}

// TestDeleteRoom_V1WaitersLeaveWorkersForReads: v1 deletions wait (for
// the room's open deletion, or for their own) for up to DeleteV1Timeout,
// and the bridge keeps them going after the client has gone. Retried v1
// calls on a room whose deletion hangs must not take the API's workers,
// which reads share: they wait detached from them (bus.Detach), every
// one of them, as Synapse's v1 waits, without a 429, and reads go on.
func TestDeleteRoom_V1WaitersLeaveWorkersForReads(t *testing.T) {
	m := startMain(t, func(c *Config) { c.Homeserver.Timeout = commands.DurationOf(20 * time.Second) })
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	room, _ := stuckDeletion(t, m, hs, "retried")
	subjects := m.publisher().Subjects
	inbox := nats.NewInbox()
	answers, err := m.NC.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	const calls = 80 // more than the API's 64 workers
	for range calls {
		msg := nats.NewMsg(subjects.APIRoom(room.ID, "delete"))
		msg.Data, _ = bus.Encode(map[string]any{"wait": true, "purge": false, "requested_by": "@admin:test"})
		msg.Reply = inbox
		if err := m.NC.PublishMsg(msg); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, 10*time.Second, "the v1 calls to be handled", func() bool { return apiInFlight(t, m.NC, "delete") >= calls+1 }) // and stuckDeletion's v2 call
	// A call counts as in flight when a worker takes it, and as detached
	// a moment later; the operator sees every one of them wait.
	testenv.WaitFor(t, 10*time.Second, "every v1 call to wait detached", func() bool { return metric(t, m, "scrollback_requests_detached") == calls })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := api(ctx, m.NC, subjects.APIRoom(room.ID, "messages"), map[string]any{"admin": true, "limit": 1}); err != nil {
		t.Fatalf("a read while v1 deletions wait: %v", err)
	}
	if err := m.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := answers.Pending(); n != 0 {
		msg, _ := answers.NextMsg(time.Second)
		t.Fatalf("%d of %d waiting v1 deletions answered before the deletion they wait for ended, first: %s %s", n, calls, msg.Header.Get("Nats-Service-Error"), msg.Data)
	}
	// Still waiting, and still counted, after the read.
	if v := metric(t, m, "scrollback_requests_detached"); v != calls {
		t.Fatalf("scrollback_requests_detached = %v, want %d", v, calls)
	}
}
