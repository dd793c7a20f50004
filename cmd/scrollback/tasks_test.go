package main

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/testenv"
)

// shutdownCmd publishes a shutdown_and_purge_room command with a chosen
// id (purge off, so that the task's length is the homeserver's).
func shutdownCmd(t *testing.T, m *Main, id, roomID string) {
	t.Helper()
	m.publisher().Command(t, map[string]any{"id": id, "action": commands.ActionShutdownAndPurgeRoom, "room_id": roomID,
		"params": map[string]any{"purge": false}, "ts": time.Now().UnixMilli()})
}

func taskStatusOf(m *Main, id string) string {
	task, _ := m.Store.Task(id)
	if task == nil {
		return ""
	}
	return task.Status
}

// leavesIn counts the sb.hs.leave requests for a room.
func leavesIn(hs *testenv.Homeserver, roomID string) int {
	n := 0
	for _, c := range hs.Calls("leave") {
		if c.Req["room_id"] == roomID {
			n++
		}
	}
	return n
}

// TestTasks_ActiveTaskResumesFirstAfterRestart: with tasks.max_concurrent
// 1, a task that was active when the service stopped resumes after the
// restart (within 10 s, CONTRACT.md section 4), before a task that was
// still waiting for its turn; the waiting one stays scheduled, so that
// there is never more than one active task. Synapse's scheduler relaunches
// the active tasks first, then the scheduled ones oldest first.
func TestTasks_ActiveTaskResumesFirstAfterRestart(t *testing.T) {
	m := startMain(t, func(c *Config) {
		c.Tasks.MaxConcurrent = 1
		c.Homeserver.Timeout = commands.DurationOf(time.Minute)
		c.NATS.Listen = "127.0.0.1:0"
	})
	hs := separateHomeserver(t, m)
	hs.StallLeave("@user0:test") // a member of both rooms: each shutdown hangs on them
	first := shutdownRoom(t, m, hs, "first", 1)
	second := shutdownRoom(t, m, hs, "second", 1)

	// The active task has the greater ID: IDs are random letters, so the
	// order of IDs says nothing of the order of the tasks.
	shutdownCmd(t, m, "zzzzzzzzzzzzzzzz", first.ID)
	testenv.WaitFor(t, 10*time.Second, "the first shutdown to hang on user0's leave", func() bool {
		return taskStatusOf(m, "zzzzzzzzzzzzzzzz") == commands.TaskActive && hs.Acted("leave", "") >= 1 && leavesIn(hs, first.ID) >= 2
	})
	shutdownCmd(t, m, "aaaaaaaaaaaaaaaa", second.ID)
	// Scheduling it wakes the runner (Store.NewTasks); whether the runner
	// ever starts it too soon is read from the log at the end, not from
	// its status after a sleep.
	testenv.WaitFor(t, 10*time.Second, "the second task to be applied", func() bool {
		return taskStatusOf(m, "aaaaaaaaaaaaaaaa") != ""
	})
	if st := taskStatusOf(m, "aaaaaaaaaaaaaaaa"); st != commands.TaskScheduled {
		t.Fatalf("before the restart, the second task is %q; want scheduled (max_concurrent 1)", st)
	}

	addr := m.NATSServer.Addr().String()
	before := leavesIn(hs, first.ID)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	m2 := &Main{Config: m.Config, Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))}
	m2.Config.NATS.Listen = addr
	if err := m2.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	testenv.WaitFor(t, 10*time.Second, "the active task to resume after the restart (CONTRACT.md section 4: within 10 s)", func() bool {
		return leavesIn(hs, first.ID) > before
	})
	if st := taskStatusOf(m2, "aaaaaaaaaaaaaaaa"); st != commands.TaskScheduled {
		t.Fatalf("after the restart, the second task is %q while the first is %q; want it scheduled (max_concurrent 1)",
			st, taskStatusOf(m2, "zzzzzzzzzzzzzzzz"))
	}

	// Let user0's leave answer: the first task completes, then the second
	// runs. The log says in which order the two went: the second's first
	// update (going active) must come after the first's completion, so
	// that it neither ran beside the first before the restart nor took
	// its slot after it.
	hs.ReleaseStalled()
	for _, id := range []string{"zzzzzzzzzzzzzzzz", "aaaaaaaaaaaaaaaa"} {
		testenv.WaitFor(t, 30*time.Second, "task "+id+" to complete", func() bool {
			return taskStatusOf(m2, id) == commands.TaskComplete
		})
	}
	updates := func(roomID, id string) []logMsg {
		var out []logMsg
		for _, u := range logMessages(t, m2.JS, faultSubjects.Room(roomID, commands.KindTask)) {
			if u.m["task_id"] == id {
				out = append(out, u)
			}
		}
		return out
	}
	var firstDone uint64
	for _, u := range updates(first.ID, "zzzzzzzzzzzzzzzz") {
		if u.m["status"] == commands.TaskComplete {
			if firstDone != 0 {
				t.Fatalf("the first task completed twice (seq %d and %d)", firstDone, u.seq)
			}
			firstDone = u.seq
		}
	}
	secondUpdates := updates(second.ID, "aaaaaaaaaaaaaaaa")
	if firstDone == 0 || len(secondUpdates) == 0 {
		t.Fatalf("first task complete at seq %d; second task updates %v", firstDone, secondUpdates)
	}
	if u := secondUpdates[0]; u.m["status"] != commands.TaskActive || u.seq < firstDone {
		t.Fatalf("the second task's first update is %v at seq %d, before the first task completed (seq %d): two tasks active with max_concurrent 1",
			u.m["status"], u.seq, firstDone)
	}
}

// TestTasks_ScheduledTasksStartOldestFirst: tasks waiting for a free
// slot start in the order they were requested (Synapse: scheduled tasks
// ordered by timestamp), not in the order of their random IDs.
func TestTasks_ScheduledTasksStartOldestFirst(t *testing.T) {
	m := startMain(t, func(c *Config) {
		c.Tasks.MaxConcurrent = 1
		c.Homeserver.Timeout = commands.DurationOf(1500 * time.Millisecond)
	})
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	hs.StallLeave("@user0:test") // each shutdown waits for the homeserver timeout
	r1 := shutdownRoom(t, m, hs, "one", 1)
	r2 := shutdownRoom(t, m, hs, "two", 1)
	r3 := shutdownRoom(t, m, hs, "three", 1)
	shutdownCmd(t, m, "mmmmmmmmmmmmmmmm", r1.ID)
	testenv.WaitFor(t, 10*time.Second, "the first task to run", func() bool {
		return taskStatusOf(m, "mmmmmmmmmmmmmmmm") == commands.TaskActive
	})
	shutdownCmd(t, m, "zzzzzzzzzzzzzzzz", r2.ID) // requested first
	shutdownCmd(t, m, "aaaaaaaaaaaaaaaa", r3.ID) // requested second
	var firstStarted string
	testenv.WaitFor(t, 20*time.Second, "a waiting task to start", func() bool {
		for _, id := range []string{"zzzzzzzzzzzzzzzz", "aaaaaaaaaaaaaaaa"} {
			if st := taskStatusOf(m, id); st != commands.TaskScheduled && st != "" {
				firstStarted = id
				return true
			}
		}
		return false
	})
	if firstStarted != "zzzzzzzzzzzzzzzz" {
		t.Fatalf("%s started first; want the older task zzzzzzzzzzzzzzzz", firstStarted)
	}
}

// TestTasks_ShutdownConcurrencyBoundsTheRequests: shutdown.concurrency is
// how many homeserver requests one room shutdown keeps in flight. With
// every member's leave held by the homeserver, the shutdown sends that
// many leaves and waits; once they answer, it kicks everybody.
func TestTasks_ShutdownConcurrencyBoundsTheRequests(t *testing.T) {
	m := startMain(t, func(c *Config) {
		c.Shutdown.Concurrency = 3
		c.Homeserver.Timeout = commands.DurationOf(time.Minute) // the held leaves keep their places
	})
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	room := shutdownRoom(t, m, hs, "bounded", 8)
	members := []string{alice, "@invitee:test", "@knocker:test"}
	for i := range 8 {
		members = append(members, fmt.Sprintf("@user%d:test", i))
	}
	for _, u := range members {
		hs.StallLeave(u)
	}
	const id = "cccccccccccccccc"
	shutdownCmd(t, m, id, room.ID)
	testenv.WaitFor(t, 10*time.Second, "the shutdown's first leaves", func() bool { return len(hs.Calls("leave")) >= 3 })
	held := len(hs.Calls("leave"))
	hs.ReleaseStalled()
	testenv.WaitFor(t, 30*time.Second, "the shutdown to complete", func() bool { return taskStatusOf(m, id) == commands.TaskComplete })
	if held != 3 {
		t.Fatalf("%d leaves in flight at once with shutdown.concurrency 3", held)
	}
	if n := len(hs.Calls("leave")); n != len(members) {
		t.Fatalf("%d leaves in all, want one for each of the %d members", n, len(members))
	}
}

// TestTasks_ShutdownWithLongestIDCompletes: a shutdown_and_purge_room
// command may have any id of 1-64 of [A-Za-z0-9_-] (CONTRACT.md section
// 3), and its purge step is the purge_room command "<id>-purge". With a
// 64-character id that is 70 characters, which the log's command check
// refused as malformed: the shutdown never completed and its runner
// published the purge again and again.
func TestTasks_ShutdownWithLongestIDCompletes(t *testing.T) {
	m := startMain(t)
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	room := shutdownRoom(t, m, hs, "longid", 2)
	id := strings.Repeat("x", commands.MaxCommandIDBytes)
	m.publisher().Command(t, map[string]any{"id": id, "action": commands.ActionShutdownAndPurgeRoom, "room_id": room.ID,
		"params": map[string]any{"force_purge": true}, "ts": time.Now().UnixMilli()})
	testenv.WaitFor(t, 20*time.Second, "the shutdown to finish", func() bool {
		st := taskStatusOf(m, id)
		return st == commands.TaskComplete || st == commands.TaskFailed
	})
	task, _ := m.Store.Task(id)
	if task.Status != commands.TaskComplete {
		t.Fatalf("task = %+v", task)
	}
	p, err := m.messages(t, room.ID, map[string]any{"admin": true})
	if err != nil || len(chunkIDs(p)) != 0 {
		t.Fatalf("after the purge: %v %v", chunkIDs(p), err)
	}
	if dl, _ := m.Store.DeadLetters(10); len(dl) != 0 {
		t.Fatalf("dead letters: %+v", dl)
	}
}

// TestTasks_ExpiredPurgeTaskIsDeleted: with the service's clock 8 days
// past a purge task's completion, the task runner's sweep deletes its
// record and its entry in the room's list, and its status is the 404 of
// an unknown purge ID, as it was while the record stayed; a purge that
// completed 6 days before is kept and still answers.
func TestTasks_ExpiredPurgeTaskIsDeleted(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	m := startMainAt(t, clock.Now)
	room := testenv.NewRoom("expire", "test")
	evs := append(room.Setup(alice), room.Msg(alice, "one"), room.Msg(alice, "two"), room.Msg(alice, "three"))
	seqs := m.publisher().Publish(t, evs...)
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	purge := func(cut testenv.Event) (id, status string) {
		t.Helper()
		st, body := m.do(t, "POST", "/_synapse/admin/v1/purge_history/"+url.PathEscape(room.ID)+"/"+url.PathEscape(cut.ID()), "tok-admin", "")
		if st != 200 {
			t.Fatalf("purge: %d %v", st, body)
		}
		id, _ = body["purge_id"].(string)
		status = "/_synapse/admin/v1/purge_history_status/" + id
		testenv.WaitFor(t, 20*time.Second, "the purge to complete", func() bool {
			st, body := m.do(t, "GET", status, "tok-admin", "")
			return st == 200 && body["status"] == "complete"
		})
		return id, status
	}
	old, oldStatus := purge(evs[len(evs)-2])
	clock.Advance(2 * 24 * time.Hour)
	recent, recentStatus := purge(evs[len(evs)-1])
	clock.Advance(6 * 24 * time.Hour)
	testenv.WaitFor(t, 10*time.Second, "the sweep to delete the expired task", func() bool {
		task, err := m.Store.Task(old)
		return err == nil && task == nil
	})
	tasks, err := m.Store.RoomTasks(room.ID)
	if err != nil || len(tasks) != 1 || tasks[0].ID != recent {
		t.Fatalf("RoomTasks = %v, %v; want %s alone", tasks, err, recent)
	}
	st, body := m.do(t, "GET", oldStatus, "tok-admin", "")
	want := map[string]any{"errcode": "M_NOT_FOUND", "error": "purge id '" + old + "' not found"}
	if st != 404 || !maps.Equal(body, want) {
		t.Fatalf("status of the deleted task: %d %v, want 404 %v", st, body, want)
	}
	if st, body := m.do(t, "GET", recentStatus, "tok-admin", ""); st != 200 || body["status"] != "complete" {
		t.Fatalf("status of the task completed 6 days ago: %d %v", st, body)
	}
}

// TestTasks_AnAdminsTaskGoesBeforeRetentionPurges: with every slot taken,
// a task someone asked for (requested_by) takes the next free slot before
// the service's own purges that were waiting before it (a retention run
// publishes a purge for every room due at once, naming nobody). In
// Synapse retention purges are not scheduler tasks (SYNAPSE.md 9), so a
// room deletion never waits behind them.
func TestTasks_AnAdminsTaskGoesBeforeRetentionPurges(t *testing.T) {
	m := startMain(t, func(c *Config) {
		c.Tasks.MaxConcurrent = 1
		c.Homeserver.Timeout = commands.DurationOf(time.Minute)
	})
	hs := holdTheOneSlot(t, m, "busy", "busybusybusybusy")

	purge := func(id string, room *testenv.Room, cut testenv.Event, by string) {
		cmd := map[string]any{"id": id, "action": commands.ActionPurgeHistory, "room_id": room.ID,
			"params": map[string]any{"token": fmt.Sprintf("t%d-0", cut["depth"]), "delete_local_events": true}, "ts": time.Now().UnixMilli()}
		if by != "" {
			cmd["requested_by"] = by
		}
		m.publisher().Command(t, cmd)
	}
	var retention []string
	rooms := map[string]*testenv.Room{}
	for i := range 3 {
		room, evs := m.remoteRoom(t, fmt.Sprint("retained", i), 5)
		id := fmt.Sprintf("retentionpurge%02d", i)
		purge(id, room, evs[len(evs)-2], "")
		retention = append(retention, id)
		rooms[id] = room
	}
	room, evs := m.remoteRoom(t, "asked", 5)
	purge("adminspurgeadmin", room, evs[len(evs)-2], "@admin:test")
	rooms["adminspurgeadmin"] = room
	testenv.WaitFor(t, 10*time.Second, "the four purges to be applied and waiting", func() bool {
		for id := range rooms {
			if taskStatusOf(m, id) != commands.TaskScheduled {
				return false
			}
		}
		return true
	})

	hs.ReleaseStalled()
	for id := range rooms {
		testenv.WaitFor(t, 30*time.Second, "task "+id+" to complete", func() bool {
			return taskStatusOf(m, id) == commands.TaskComplete
		})
	}
	// The log says which went first: the first update of each purge (it
	// going active) is on its room's task subject.
	started := func(id string) uint64 {
		for _, u := range logMessages(t, m.JS, faultSubjects.Room(rooms[id].ID, commands.KindTask)) {
			if u.m["task_id"] == id && u.m["status"] == commands.TaskActive {
				return u.seq
			}
		}
		t.Fatalf("task %s never went active in the log", id)
		return 0
	}
	admin := started("adminspurgeadmin")
	for _, id := range retention {
		if s := started(id); s < admin {
			t.Errorf("retention purge %s went active at seq %d, before the admin's purge (seq %d)", id, s, admin)
		}
	}
}

// holdTheOneSlot starts a shutdown of a new room that hangs on user0's
// leave, so that it holds a tasks.max_concurrent of 1 until the returned
// homeserver's ReleaseStalled.
func holdTheOneSlot(t *testing.T, m *Main, room, id string) *testenv.Homeserver {
	t.Helper()
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	hs.StallLeave("@user0:test")
	busy := shutdownRoom(t, m, hs, room, 1)
	shutdownCmd(t, m, id, busy.ID)
	testenv.WaitFor(t, 10*time.Second, "the shutdown to hold the one slot", func() bool {
		return taskStatusOf(m, id) == commands.TaskActive && leavesIn(hs, busy.ID) >= 1
	})
	return hs
}
