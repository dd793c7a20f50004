package projections

import (
	"bytes"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/commands"
)

// ExpireBatch is the most tasks the service's sweep deletes per write
// transaction (ExpireTasks), which the projector's commits wait for. Task
// IDs are random, so each deleted record dirties a page of tasks and one
// of roomtasks of its own: deleting 200k tasks of 10k rooms, a batch of
// 500 held bbolt's writer 24 ms on average (13 ms without the fsync), one
// of 2,000 64 ms. A backlog goes at one batch per pass of the task runner.
const ExpireBatch = 500

// ExpireTasks deletes finished tasks that are past their expiry at now
// (commands.Task.ExpiredAt; CONTRACT.md: they expire 7 days after their
// last update), oldest last update first, at most max of them in one
// write transaction, and returns how many it deleted: fewer than max once
// none is left. Each takes its record, its entry in its room's task list
// and its taskdone entry with it. taskdone is sorted by the last update,
// so the sweep reads only what it deletes, and costs one read
// transaction when nothing is due.
func (s *Store) ExpireTasks(now time.Time, max int) (int, error) {
	ms := now.UnixMilli()
	cut := u64(order(ms - commands.TaskExpiryMS))
	if due, err := s.tasksDue(cut); err != nil || !due {
		return 0, err
	}
	n := 0
	err := s.update(func(tx *bolt.Tx) error {
		n = 0
		c := tx.Bucket(bTaskDone).Cursor()
		for k, _ := c.First(); k != nil && n < max && bytes.Compare(k, cut) < 0; k, _ = c.First() {
			if err := expireTask(tx, bytes.Clone(k), ms); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, err // rolled back: nothing was deleted
	}
	return n, nil
}

// tasksDue reports whether taskdone's first entry is before cut.
func (s *Store) tasksDue(cut []byte) (bool, error) {
	due := false
	err := s.db.View(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bTaskDone).Cursor().First()
		due = k != nil && bytes.Compare(k, cut) < 0
		return nil
	})
	return due, err
}

// expireTask deletes the task of a taskdone entry and the entry. The
// record goes only if it has expired itself: an index entry alone never
// deletes a task.
func expireTask(tx *bolt.Tx, k []byte, ms int64) error {
	t, err := getTask(tx, string(k[8:]))
	if err != nil {
		return err
	}
	if t != nil && t.ExpiredAt(ms) {
		if err := deleteTask(tx, t); err != nil {
			return err
		}
	}
	return tx.Bucket(bTaskDone).Delete(k)
}

// taskAt looks a task up as a command issued at ts sees it: nil if it
// had expired by then, deleted or not (see applyCommand).
func taskAt(tx *bolt.Tx, id string, ts int64) (*commands.Task, error) {
	t, err := getTask(tx, id)
	if err != nil || t == nil || t.ExpiredAt(ts) {
		return nil, err
	}
	return t, nil
}

// deleteTask deletes a finished task: its record, its entry in its room's
// task list (under the room's current number: purge_room moves the list)
// and its taskdone entry.
func deleteTask(tx *bolt.Tx, t *commands.Task) error {
	keys := []struct{ bucket, key []byte }{
		{bTasks, []byte(t.ID)},
		{bRoomTask, roomTaskKey(roomNum(tx, t.RoomID), t.CreatedTS, t.ID)},
		{bTaskDone, taskDoneKey(t)},
		{bUnconfirm, []byte(t.ID)},
	}
	for _, d := range keys {
		if err := tx.Bucket(d.bucket).Delete(d.key); err != nil {
			return err
		}
	}
	return nil
}

// metaTaskDone is the meta key of a file whose taskdone index is
// complete: new files have it from the start, older ones once
// indexFinishedTasks is done.
var metaTaskDone = []byte("taskdone")

// indexFinishedTasks gives a file written before taskdone an entry for
// each of its finished tasks, once (fillOnce; putting an entry again
// changes nothing, so a crash in between starts over). The sweep deletes
// the expired ones.
func (s *Store) indexFinishedTasks() error {
	return s.fillOnce(metaTaskDone, bTasks, taskDoneBatch, func(tx *bolt.Tx, k, v []byte) error {
		t := &commands.Task{}
		if err := decodeMsgpack(v, t); err != nil {
			return fmt.Errorf("task %s: %w", k, err)
		}
		if !t.Finished() {
			return nil
		}
		return tx.Bucket(bTaskDone).Put(taskDoneKey(t), nil)
	})
}

// metaUnconfirmed is the meta key of a file whose unconfirmed bucket
// names every refusal of its tasks that may need confirming: new files
// have it from the start, older ones once markOldRefusals is done.
var metaUnconfirmed = []byte("unconfirmed")

// markOldRefusals gives a file written before decisions were confirmed
// in the log (TaskRunner.confirm) an unconfirmed mark for each purge_room,
// or shutdown, refused by the members check, and each purge_history that
// passed its check and has no update yet, once (fillOnce). Which of
// them were confirmed it cannot tell, so the runner confirms them all
// again: a confirmation applied twice changes nothing (applyUpdate).
func (s *Store) markOldRefusals() error {
	return s.fillOnce(metaUnconfirmed, bTasks, taskDoneBatch, func(tx *bolt.Tx, k, v []byte) error {
		t := &commands.Task{}
		if err := decodeMsgpack(v, t); err != nil {
			return fmt.Errorf("task %s: %w", k, err)
		}
		refusal := t.Status == commands.TaskFailed && t.Error == ErrTextUsersJoined &&
			(t.Action == commands.ActionPurgeRoom || t.Action == commands.ActionShutdownAndPurgeRoom)
		passed := t.Action == commands.ActionPurgeHistory && t.Status == commands.TaskScheduled && t.Updates == 0
		guarded := t.Action == commands.ActionPurgeHistory && t.Status == commands.TaskFailed && t.Error == ErrTextAboveExtremities
		return markUnconfirmed(tx, t.ID, refusal || passed || guarded)
	})
}

// taskDoneBatch bounds the tasks indexFinishedTasks and markOldRefusals read per
// transaction (a variable for the tests).
var taskDoneBatch = 20000
