package commands

import "fmt"

// Task statuses, as Synapse's task scheduler names them.
const (
	TaskScheduled = "scheduled"
	TaskActive    = "active"
	TaskComplete  = "complete"
	TaskFailed    = "failed"
	TaskCancelled = "cancelled"
)

// TaskExpiryMS is how long finished tasks are kept after their last
// update (Synapse's KEEP_TASKS_FOR_MS).
const TaskExpiryMS = 7 * 24 * 3600 * 1000

// Task is a command folded with its TaskUpdates: the durable record behind
// the status APIs.
type Task struct {
	ID          string         `msgpack:"id"`
	Action      string         `msgpack:"action"`
	RoomID      string         `msgpack:"room_id"`
	Params      map[string]any `msgpack:"params,omitempty"`
	RequestedBy string         `msgpack:"requested_by,omitempty"`
	Status      string         `msgpack:"status"`
	Result      map[string]any `msgpack:"result,omitempty"`
	Error       string         `msgpack:"error,omitempty"`
	CreatedTS   int64          `msgpack:"created_ts"`
	UpdatedTS   int64          `msgpack:"updated_ts"`
	Seq         uint64         `msgpack:"seq"`     // log sequence of the command
	Updates     int            `msgpack:"updates"` // TaskUpdates folded in
}

// Finished reports whether the task reached a final status.
func (t *Task) Finished() bool {
	return t.Status == TaskComplete || t.Status == TaskFailed || t.Status == TaskCancelled
}

// ExpiredAt reports whether the task is finished and its last update is
// more than TaskExpiryMS before ms (Unix milliseconds): the task is gone
// then (CONTRACT.md, TaskUpdate), whether or not its record is deleted
// yet. Synapse never deletes cancelled tasks; the contract expires every
// finished one.
func (t *Task) ExpiredAt(ms int64) bool {
	return t.Finished() && t.UpdatedTS < ms-TaskExpiryMS
}

// TaskUpdate is one progress record of a task on sb.room.<rk>.task.
type TaskUpdate struct {
	TaskID string
	Status string
	Result map[string]any
	Error  string
	TS     int64
}

// ValidStatus reports whether s is one of the five task statuses.
func ValidStatus(s string) bool {
	switch s {
	case TaskScheduled, TaskActive, TaskComplete, TaskFailed, TaskCancelled:
		return true
	}
	return false
}

// TaskUpdateFromMap validates a decoded TaskUpdate.
func TaskUpdateFromMap(m map[string]any) (*TaskUpdate, error) {
	u := &TaskUpdate{}
	var ok bool
	if u.TaskID, ok = m["task_id"].(string); !ok || !ValidCommandID(u.TaskID) {
		return nil, fieldErr("task_id", "required: a task id")
	}
	if u.Status, ok = m["status"].(string); !ok || !ValidStatus(u.Status) {
		return nil, fieldErr("status", "must be one of scheduled, active, complete, failed, cancelled")
	}
	if r, present := m["result"]; present && r != nil {
		if u.Result, ok = r.(map[string]any); !ok {
			return nil, fieldErr("result", "must be a map")
		}
	}
	if e, present := m["error"]; present && e != nil {
		if u.Error, ok = e.(string); !ok {
			return nil, fieldErr("error", "must be a string")
		}
	}
	u.TS, _ = AsInt(m["ts"])
	return u, nil
}

// Apply folds an update into the task. Updates to a finished task are
// refused: a task ends exactly once.
func (t *Task) Apply(u *TaskUpdate) error {
	if t.Finished() {
		return fmt.Errorf("task %s is already %s", t.ID, t.Status)
	}
	t.Status = u.Status
	if u.Result != nil {
		t.Result = u.Result
	}
	t.Error = u.Error
	if u.TS > 0 {
		t.UpdatedTS = u.TS
	}
	t.Updates++
	return nil
}
