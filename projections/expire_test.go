package projections_test

import (
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

const day = int64(24 * time.Hour / time.Millisecond)

// expiryNow is the sweeps' "now" in these tests.
var expiryNow = time.UnixMilli(1_800_000_000_000)

// daysAgo is the Unix time in milliseconds n days before expiryNow.
func daysAgo(n int64) int64 { return expiryNow.UnixMilli() - n*day }

// taskLog is a room's tasks in every state, with their timestamps: the
// ones named expired finished more than 7 days before expiryNow.
var taskLog = []struct {
	kind string
	v    map[string]any
}{
	// Finished when applied: a block, a command that fails validation.
	{commands.KindCmd, map[string]any{"id": "expiredblock", "action": "block_room", "params": map[string]any{"block": true}, "ts": daysAgo(8)}},
	{commands.KindCmd, map[string]any{"id": "expiredfailed", "action": "explode", "ts": daysAgo(9)}},
	// Run and completed 8 days ago.
	{commands.KindCmd, map[string]any{"id": "expiredpurge", "action": "purge_history", "params": map[string]any{"token": "t1-0"}, "ts": daysAgo(20)}},
	{commands.KindTask, map[string]any{"task_id": "expiredpurge", "status": "active", "ts": daysAgo(19)}},
	{commands.KindTask, map[string]any{"task_id": "expiredpurge", "status": "complete", "ts": daysAgo(8)}},
	// Cancelled 8 days ago (Synapse keeps those; the contract does not).
	{commands.KindCmd, map[string]any{"id": "expiredcancel", "action": "purge_history", "params": map[string]any{"token": "t1-0"}, "ts": daysAgo(15)}},
	{commands.KindTask, map[string]any{"task_id": "expiredcancel", "status": "cancelled", "ts": daysAgo(8)}},
	// Created long ago, finished 6 days ago: kept.
	{commands.KindCmd, map[string]any{"id": "recentpurge", "action": "purge_history", "params": map[string]any{"token": "t1-0"}, "ts": daysAgo(30)}},
	{commands.KindTask, map[string]any{"task_id": "recentpurge", "status": "active", "ts": daysAgo(30)}},
	{commands.KindTask, map[string]any{"task_id": "recentpurge", "status": "complete", "ts": daysAgo(6)}},
	// Open for a month: kept, whatever their age.
	{commands.KindCmd, map[string]any{"id": "oldactive", "action": "purge_history", "params": map[string]any{"token": "t1-0"}, "ts": daysAgo(31)}},
	{commands.KindTask, map[string]any{"task_id": "oldactive", "status": "active", "ts": daysAgo(30)}},
	{commands.KindCmd, map[string]any{"id": "oldscheduled", "action": "purge_history", "params": map[string]any{"token": "t1-0"}, "ts": daysAgo(32)}},
}

var (
	expiredTasks = []string{"expiredblock", "expiredcancel", "expiredfailed", "expiredpurge"}
	keptTasks    = []string{"oldscheduled", "oldactive", "recentpurge"} // oldest first
)

const taskRoom = "!tasks:test"

// applyTaskLog applies taskLog from seq on and returns the next sequence.
func applyTaskLog(t *testing.T, s *projections.Store, seq uint64) uint64 {
	t.Helper()
	for _, m := range taskLog {
		v := m.v
		if m.kind == commands.KindCmd {
			v["room_id"] = taskRoom
		}
		out, err := s.ApplyBatch(0, []commands.LogEntry{entry(t, seq, taskRoom, m.kind, v)})
		if err != nil {
			t.Fatal(err)
		}
		if out[0].Result != projections.OutcomeApplied {
			t.Fatalf("seq %d: %s %s", seq, out[0].Result, out[0].Reason)
		}
		seq++
	}
	return seq
}

// bucketKeys counts the keys of the named buckets (-1: no such bucket).
func bucketKeys(t *testing.T, s *projections.Store, names ...string) []int {
	t.Helper()
	var out []int
	err := s.DB().View(func(tx *bolt.Tx) error {
		for _, name := range names {
			n := -1
			if b := tx.Bucket([]byte(name)); b != nil {
				n = b.Stats().KeyN
			}
			out = append(out, n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// roomTaskIDs lists the room's tasks, oldest first.
func roomTaskIDs(t *testing.T, s *projections.Store) []string {
	t.Helper()
	tasks, err := s.RoomTasks(taskRoom)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, task := range tasks {
		out = append(out, task.ID)
	}
	return out
}

// checkExpired fails the test unless s holds the kept tasks only, in
// tasks, roomtasks and (the finished ones) taskdone.
func checkExpired(t *testing.T, s *projections.Store) {
	t.Helper()
	for _, id := range expiredTasks {
		if task, err := s.Task(id); err != nil || task != nil {
			t.Errorf("Task(%s) = %+v, %v after the sweep", id, task, err)
		}
	}
	sameStrings(t, "RoomTasks", roomTaskIDs(t, s), keptTasks)
	if got := bucketKeys(t, s, "tasks", "roomtasks", "taskdone", "opentasks"); !slices.Equal(got, []int{3, 3, 1, 2}) {
		t.Errorf("tasks, roomtasks, taskdone, opentasks = %v keys, want [3 3 1 2]", got)
	}
}

// TestExpireTasks_DeletesFinishedTasksPastTheirExpiry: the sweep deletes
// the tasks finished more than 7 days ago (their records, their room's
// list entries and their index entries), at most max a call, and keeps
// those finished since and the open ones, however old. Nothing left to
// delete, it writes nothing.
func TestExpireTasks_DeletesFinishedTasksPastTheirExpiry(t *testing.T) {
	s := testenv.NewStore(t)
	applyTaskLog(t, s, 1)
	sameStrings(t, "RoomTasks before", roomTaskIDs(t, s),
		[]string{"oldscheduled", "oldactive", "recentpurge", "expiredpurge", "expiredcancel", "expiredfailed", "expiredblock"})
	if got := bucketKeys(t, s, "taskdone"); got[0] != 5 {
		t.Fatalf("taskdone holds %d tasks, want the 5 finished", got[0])
	}
	var deleted []int
	for {
		n, err := s.ExpireTasks(expiryNow, 3)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		deleted = append(deleted, n)
	}
	if !slices.Equal(deleted, []int{3, 1}) {
		t.Fatalf("sweeps of at most 3 deleted %v, want [3 1]", deleted)
	}
	checkExpired(t, s)
	// Nothing due: not even an empty write transaction.
	before := lastTxID(t, s)
	if n, err := s.ExpireTasks(expiryNow.Add(time.Hour), 3); n != 0 || err != nil {
		t.Fatalf("ExpireTasks with nothing due = %d, %v", n, err)
	}
	if after := lastTxID(t, s); after != before {
		t.Fatalf("ExpireTasks with nothing due wrote transaction %d", after)
	}
	// The last finished task goes once its 7 days are over, to the
	// millisecond, as ExpiredAt says.
	if n, err := s.ExpireTasks(time.UnixMilli(daysAgo(6)+commands.TaskExpiryMS), 3); n != 0 || err != nil {
		t.Fatalf("ExpireTasks at exactly 7 days = %d, %v; want none", n, err)
	}
	if n, err := s.ExpireTasks(time.UnixMilli(daysAgo(6)+commands.TaskExpiryMS+1), 3); n != 1 || err != nil {
		t.Fatalf("ExpireTasks a day later = %d, %v; want recentpurge", n, err)
	}
	sameStrings(t, "RoomTasks a day later", roomTaskIDs(t, s), []string{"oldscheduled", "oldactive"})
}

// lastTxID is the ID of the file's last write transaction.
func lastTxID(t *testing.T, s *projections.Store) int {
	t.Helper()
	var id int
	if err := s.DB().View(func(tx *bolt.Tx) error { id = tx.ID(); return nil }); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestExpireTasks_PurgeRoomKeepsItsTasksUntilExpiry: purge_room moves the
// room's task list to the room's new number; the sweep finds the entries
// there.
func TestExpireTasks_PurgeRoomKeepsItsTasksUntilExpiry(t *testing.T) {
	s := openWithServer(t)
	next := applyTaskLog(t, s, 1)
	out, err := s.ApplyBatch(0, []commands.LogEntry{entry(t, next, taskRoom, commands.KindCmd, map[string]any{
		"id": "purgeroom", "action": "purge_room", "room_id": taskRoom, "params": map[string]any{"force": true}, "ts": daysAgo(1)})})
	if err != nil || out[0].Result != projections.OutcomeApplied {
		t.Fatalf("purge_room: %v %+v", err, out)
	}
	if got := roomTaskIDs(t, s); len(got) != 8 {
		t.Fatalf("RoomTasks after purge_room = %v", got)
	}
	if n, err := s.ExpireTasks(expiryNow, 100); n != len(expiredTasks) || err != nil {
		t.Fatalf("ExpireTasks = %d, %v", n, err)
	}
	sameStrings(t, "RoomTasks", roomTaskIDs(t, s), []string{"oldscheduled", "oldactive", "recentpurge", "purgeroom"})
	if blocked, _, _ := s.Blocked(taskRoom); !blocked {
		t.Fatal("the block flag went with the block task")
	}
}

// TestOpen_IndexesFinishedTasksOfAnOlderFile: a file written before the
// taskdone index gets it, for its finished tasks, when it is opened (in
// transactions of 2 tasks here), and the sweep then deletes what it would
// have.
func TestOpen_IndexesFinishedTasksOfAnOlderFile(t *testing.T) {
	path := t.TempDir() + "/p.db"
	s, err := projections.Open(path, projections.Options{})
	if err != nil {
		t.Fatal(err)
	}
	applyTaskLog(t, s, 1)
	want := dumpBuckets(t, s)
	err = s.DB().Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket([]byte("meta")).Delete([]byte("taskdone")); err != nil {
			return err
		}
		return tx.DeleteBucket([]byte("taskdone"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	projections.SetTaskDoneBatch(t, 2)
	s = testenv.OpenStore(t, path)
	if got := dumpBuckets(t, s); got != want {
		t.Fatalf("after the fill:\n%s\nwant\n%s", got, want)
	}
	if n, err := s.ExpireTasks(expiryNow, 100); n != len(expiredTasks) || err != nil {
		t.Fatalf("ExpireTasks = %d, %v", n, err)
	}
	checkExpired(t, s)
}

// TestDigest_LeavesOutExpiredTasks: a store whose sweep deleted the
// expired tasks and one whose sweep has not run have the same digest, and
// it names the kept tasks.
func TestDigest_LeavesOutExpiredTasks(t *testing.T) {
	swept, unswept := testenv.NewStore(t), testenv.NewStore(t)
	applyTaskLog(t, swept, 1)
	applyTaskLog(t, unswept, 1)
	if _, err := swept.ExpireTasks(expiryNow, 100); err != nil {
		t.Fatal(err)
	}
	sameProjectionAt(t, "swept and unswept", expiryNow, swept, unswept)
	d, err := unswept.Digest(expiryNow)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range keptTasks {
		if _, ok := d["task "+id]; !ok {
			t.Errorf("the digest has no task %s", id)
		}
	}
}

// TestApplyCommand_ReusedIDOfAnExpiredTask: a command whose ID names a
// task that had expired when it was issued is applied as a new task,
// whether the sweep has deleted the old one or not (a rebuild replays the
// log without sweeping): the outcome depends on the log only. So is a
// shutdown's purge step whose shutdown task has expired: a purge_room of
// its own. A command reusing the ID of a task that has not expired is
// refused, as before.
func TestApplyCommand_ReusedIDOfAnExpiredTask(t *testing.T) {
	stores := []*projections.Store{openWithServer(t), openWithServer(t)}
	later := []struct {
		v    map[string]any
		want string
	}{
		{map[string]any{"id": "expiredblock", "action": "block_room", "params": map[string]any{"block": false}, "ts": expiryNow.UnixMilli()}, projections.OutcomeApplied},
		{map[string]any{"id": "recentpurge", "action": "block_room", "params": map[string]any{"block": false}, "ts": expiryNow.UnixMilli()}, projections.OutcomeDead},
		{map[string]any{"id": "oldactive", "action": "block_room", "params": map[string]any{"block": false}, "ts": expiryNow.UnixMilli()}, projections.OutcomeDead},
		{map[string]any{"id": "shutdown" + commands.ShutdownPurgeSuffix, "action": "purge_room", "params": map[string]any{"force": true}, "ts": expiryNow.UnixMilli()}, projections.OutcomeApplied},
	}
	for i, s := range stores {
		next := applyTaskLog(t, s, 1)
		shutdown := []struct {
			kind string
			v    map[string]any
		}{
			{commands.KindCmd, map[string]any{"id": "shutdown", "action": "shutdown_and_purge_room", "room_id": taskRoom, "params": map[string]any{"block": true}, "ts": daysAgo(10)}},
			{commands.KindTask, map[string]any{"task_id": "shutdown", "status": "failed", "error": "gave up", "ts": daysAgo(9)}},
		}
		for _, m := range shutdown {
			if out, err := s.ApplyBatch(0, []commands.LogEntry{entry(t, next, taskRoom, m.kind, m.v)}); err != nil || out[0].Result != projections.OutcomeApplied {
				t.Fatalf("seq %d: %v %+v", next, err, out)
			}
			next++
		}
		if i == 0 {
			if _, err := s.ExpireTasks(expiryNow, 100); err != nil {
				t.Fatal(err)
			}
		}
		for _, c := range later {
			c.v["room_id"] = taskRoom
			out, err := s.ApplyBatch(0, []commands.LogEntry{entry(t, next, taskRoom, commands.KindCmd, c.v)})
			if err != nil {
				t.Fatal(err)
			}
			if out[0].Result != c.want {
				t.Fatalf("store %d: %s again: %s %s, want %s", i, c.v["id"], out[0].Result, out[0].Reason, c.want)
			}
			next++
		}
		task, err := s.Task("expiredblock")
		if err != nil || task == nil || task.CreatedTS != expiryNow.UnixMilli() || task.Params["block"] != false {
			t.Fatalf("store %d: the reused ID's task = %+v, %v", i, task, err)
		}
		if blocked, _, _ := s.Blocked(taskRoom); blocked {
			t.Fatalf("store %d: the reused ID's unblock was not applied", i)
		}
		if task, err := s.Task("shutdown" + commands.ShutdownPurgeSuffix); err != nil || task == nil || task.Action != commands.ActionPurgeRoom {
			t.Fatalf("store %d: the late purge step = %+v, %v", i, task, err)
		}
	}
	sameProjectionAt(t, "swept before the reused IDs and not", expiryNow, stores[0], stores[1])
	// Each store holds one record of each ID, and one entry of each in
	// its room's list: 8 days later the open tasks are left (the two old
	// ones and the late purge step, a scheduled purge_room).
	for i, s := range stores {
		if _, err := s.ExpireTasks(expiryNow.Add(8*24*time.Hour), 100); err != nil {
			t.Fatal(err)
		}
		if got := bucketKeys(t, s, "tasks", "roomtasks", "taskdone", "opentasks"); !slices.Equal(got, []int{3, 3, 0, 3}) {
			t.Errorf("store %d: tasks, roomtasks, taskdone, opentasks = %v keys 8 days later, want the 3 open tasks", i, got)
		}
	}
}
