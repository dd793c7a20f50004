package handlers

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
)

// Appender appends a message to the room log and returns its sequence.
type Appender interface {
	Append(ctx context.Context, subject, msgID string, data []byte) (uint64, error)
}

// CommandLog is the room log as Admin uses it: Append, and the
// conditional append (bus.Log.AppendAfter) that makes a deletion's check
// for an open one and its publish one step on every instance sharing
// the log.
type CommandLog interface {
	Appender
	SubjectLastSeq(ctx context.Context, subject string) (uint64, error)
	AppendAfter(ctx context.Context, subject, msgID string, data []byte, last uint64) (uint64, error)
}

// Admin answers the admin requests that act through the room log: each
// one publishes a command and replies once the command is processed, so
// that its effect and task are visible to the next request.
type Admin struct {
	Store    *projections.Store
	Waiter   Waiter
	Log      CommandLog
	Subjects bus.Subjects
	Now      func() time.Time
	// NewID makes command IDs (default: 16 random letters, like Synapse's
	// task IDs).
	NewID func() string
	// ServerName decides which users are local.
	ServerName string
	// Audit, if set, gets one line per command the admin API publishes:
	// who asked for what on which room, and the task ID. (The task record
	// keeps the same: requested_by and created_ts.)
	Audit *slog.Logger
	// CatchUp, if set, waits until this instance has applied the whole
	// log as it is now. A status request for an unknown task ID calls it
	// once before answering 404: with several instances, the request may
	// reach one that has not yet applied the command another instance
	// just published. A purge_history calls it before it looks its
	// cut-off up, so that it sees every event the log holds, as
	// Synapse's purge sees every persisted event.
	CatchUp func(ctx context.Context) error
	// Stopping, if set, is closed when the service starts to stop: a v1
	// deletion that waits for a deletion then answers 503 at once. The
	// service's stop waits for the requests under way, and the
	// deletion may take as long as the homeserver does (DeleteV1Timeout).
	Stopping <-chan struct{}
	// CanStart, if set, tells whether a task of the room scheduled now
	// may start soon (TaskRunner.CanStart): DELETE v2 waits for its task
	// to start only then.
	CanStart func(roomID string) bool
}

// errStopping is a v1 deletion's answer when the service stops while it
// waits: the deletion id (if any) goes on, after a restart too.
func errStopping(id string) error {
	if id == "" {
		return commands.Errorf(503, commands.CodeUnknown, "The service is stopping; the room deletion was not started, try again")
	}
	return commands.Errorf(503, commands.CodeUnknown, "The service is stopping; the room deletion %s goes on: follow it with the v2 delete_status API", id)
}

// RandomID returns 16 random ASCII letters.
func RandomID() string {
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	b := make([]byte, 16)
	for i := range b {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(letters))))
		if err != nil {
			panic(err) // crypto/rand does not fail on supported platforms
		}
		b[i] = letters[n.Int64()]
	}
	return string(b)
}

// publish appends a command to the room's log and waits until the
// projection has processed it.
func (a *Admin) publish(ctx context.Context, roomID, action string, params map[string]any, requestedBy string) (string, error) {
	return a.publishAs(ctx, a.newID(), roomID, action, params, requestedBy, nil)
}

// newID is a new task ID.
func (a *Admin) newID() string {
	if a.NewID != nil {
		return a.NewID()
	}
	return RandomID()
}

// publishAs is publish of the command of task id; with after set, only
// while the room's last command is the one at sequence *after, and
// otherwise an error wrapping bus.ErrNotLast.
func (a *Admin) publishAs(ctx context.Context, id, roomID, action string, params map[string]any, requestedBy string, after *uint64) (string, error) {
	cmd := map[string]any{"id": id, "action": action, "room_id": roomID, "params": params, "ts": a.Now().UnixMilli()}
	if requestedBy != "" {
		cmd["requested_by"] = requestedBy
	}
	data, err := bus.Encode(cmd)
	if err != nil {
		return "", err
	}
	subject := a.Subjects.Room(roomID, commands.KindCmd)
	var seq uint64
	if after != nil {
		seq, err = a.Log.AppendAfter(ctx, subject, id, data, *after)
	} else {
		seq, err = a.Log.Append(ctx, subject, id, data)
	}
	if err != nil {
		return "", fmt.Errorf("publish %s command: %w", action, err)
	}
	wctx, cancel := context.WithTimeout(ctx, WaitForTimeout)
	defer cancel()
	if a.Audit != nil {
		by := requestedBy
		if by == "" {
			by = "scrollback" // retention and forgotten-room jobs
		}
		a.Audit.Info("admin action", "action", action, "room_id", roomID, "requested_by", by, "task_id", id, "seq", seq)
	}
	if err := a.Waiter.WaitFor(wctx, roomID, seq); err != nil {
		// The command is in the log and will be applied: name its task,
		// so that the requester can follow it instead of asking again.
		return "", commands.Errorf(504, commands.CodeUnknown, "The %s command was published as task %s (sequence %d) but not processed in time; follow the task by its ID", action, id, seq)
	}
	// Processed is not applied: the projector may have rejected it (a
	// dead letter), and then there is no task to report or wait for.
	d, rejected, err := a.Store.DeadLetterAt(seq)
	if err != nil {
		return "", fmt.Errorf("the %s command of task %s (sequence %d) was processed, but its dead letters cannot be read: %w", action, id, seq, err)
	}
	if rejected && d.Subject == subject {
		if a.Audit != nil {
			a.Audit.Warn("admin action rejected", "action", action, "room_id", roomID, "task_id", id, "seq", seq, "reason", d.Reason)
		}
		return "", commands.Errorf(500, commands.CodeUnknown, "The %s command of task %s (sequence %d) was rejected by the projection: %s", action, id, seq, d.Reason)
	}
	return id, nil
}

// requester is a request's requested_by ("" when absent or null), which
// must be a string: taken for none, a mistyped one named no one in the
// task and the audit.
func requester(m map[string]any) (string, error) {
	v, ok := m["requested_by"]
	if !ok || v == nil {
		return "", nil
	}
	by, isStr := v.(string)
	if !isStr {
		return "", commands.Errorf(400, commands.CodeBadJSON, "Param 'requested_by' must be a string, if given")
	}
	return by, nil
}

// auditOf is the audit record a status reply carries (an addition to
// Synapse's fields): who asked, when, and the last change.
func auditOf(t *commands.Task) map[string]any {
	by := t.RequestedBy
	if by == "" {
		by = "scrollback"
	}
	return map[string]any{"requested_by": by, "requested_ts": t.CreatedTS, "updated_ts": t.UpdatedTS}
}

// roomOf decodes the room of a sb.api.room.<rk>.<endpoint> subject and the
// request map.
func (a *Admin) roomOf(subject string, data []byte) (string, map[string]any, error) {
	roomID, m, err := roomRequest(a.Subjects, subject, data)
	if err != nil {
		return "", nil, err
	}
	if !commands.LegalRoomID(roomID) {
		return "", nil, commands.Errorf(400, commands.CodeUnknown, "%s is not a legal room ID", roomID)
	}
	return roomID, m, nil
}

// Block answers sb.api.room.<rk>.block: {} reads the flag, {block,
// requested_by} sets it through a block_room command (SYNAPSE.md 7.6).
func (a *Admin) Block(ctx context.Context, subject string, data []byte) ([]byte, error) {
	roomID, m, err := a.roomOf(subject, data)
	if err != nil {
		return nil, err
	}
	by, err := requester(m)
	if err != nil {
		return nil, err
	}
	v, set := m["block"]
	if !set {
		blocked, by, err := a.Store.Blocked(roomID)
		if err != nil {
			return nil, err
		}
		if blocked {
			return bus.Encode(map[string]any{"block": true, "user_id": by})
		}
		return bus.Encode(map[string]any{"block": false})
	}
	block, ok := v.(bool)
	if !ok {
		return nil, commands.Errorf(400, commands.CodeBadJSON, "Param 'block' must be a boolean.")
	}
	if _, err := a.publish(ctx, roomID, commands.ActionBlockRoom, map[string]any{"block": block}, by); err != nil {
		return nil, err
	}
	return bus.Encode(map[string]any{"block": block})
}

// PurgeHistory answers sb.api.room.<rk>.purge_history with Synapse's
// validation and cut-off selection (SYNAPSE.md 6.1): an event ID, or
// purge_up_to_ts by received time. It publishes a purge_history command
// and replies {purge_id} once the command is applied.
func (a *Admin) PurgeHistory(ctx context.Context, subject string, data []byte) ([]byte, error) {
	roomID, m, err := roomRequest(a.Subjects, subject, data)
	if err != nil {
		return nil, err
	}
	by, err := requester(m)
	if err != nil {
		return nil, err
	}
	deleteLocal := commands.Truthy(m["delete_local_events"])
	var token string
	// As Synapse: any event_id but null (or absent) is looked up, "" too.
	eventID, isStr := m["event_id"].(string)
	if v, ok := m["event_id"]; ok && v != nil && !isStr {
		return nil, commands.Errorf(400, commands.CodeBadJSON, "event_id must be a string")
	}
	switch {
	case isStr:
		info, ok, err := a.findEvent(ctx, roomID, eventID)
		if err != nil {
			return nil, err
		}
		if !ok || info.Rejected {
			return nil, commands.Errorf(404, commands.CodeNotFound, "Could not find event %s", eventID)
		}
		if info.RoomID != roomID {
			return nil, commands.Errorf(400, commands.CodeUnknown, "Event is for wrong room.")
		}
		token = fmt.Sprintf("t%d-%d", info.Depth, info.Stream)
	case hasKey(m, "purge_up_to_ts"):
		ts, ok := commands.AsInt(m["purge_up_to_ts"])
		if n, big := m["purge_up_to_ts"].(uint64); big && n > math.MaxInt64 {
			// An int to Synapse too, past every received time.
			ts, ok = math.MaxInt64, true
		}
		if !ok {
			return nil, commands.Errorf(400, commands.CodeBadJSON, "purge_up_to_ts must be an int")
		}
		if err := a.catchUp(ctx); err != nil {
			return nil, err
		}
		depth, stream, found, err := a.Store.CutoffByTS(roomID, ts)
		if err != nil {
			return nil, err
		}
		if !found {
			return nil, commands.Errorf(404, commands.CodeNotFound, "there is no event to be purged")
		}
		token = fmt.Sprintf("t%d-%d", depth, stream)
	default:
		return nil, commands.Errorf(400, commands.CodeBadJSON, "must specify purge_up_to_event_id or purge_up_to_ts")
	}
	id, err := a.publish(ctx, roomID, commands.ActionPurgeHistory, map[string]any{"token": token, "delete_local_events": deleteLocal}, by)
	if err != nil {
		return nil, err
	}
	return bus.Encode(map[string]any{"purge_id": id})
}

// PurgeStatus answers sb.api.purge_status {purge_id}: Synapse maps
// complete and failed through and every other status to active, and adds
// the failure reason.
func (a *Admin) PurgeStatus(ctx context.Context, subject string, data []byte) ([]byte, error) {
	id, t, err := a.taskByID(ctx, data, "purge_id")
	if err != nil {
		return nil, err
	}
	if t == nil || t.Action != commands.ActionPurgeHistory || t.ExpiredAt(a.Now().UnixMilli()) {
		return nil, commands.Errorf(404, commands.CodeNotFound, "purge id '%s' not found", id)
	}
	status := commands.TaskActive
	if t.Status == commands.TaskComplete || t.Status == commands.TaskFailed {
		status = t.Status
	}
	out := map[string]any{"status": status, "audit": auditOf(t)}
	if t.Error != "" {
		out["error"] = t.Error
	}
	// How far the janitor has come (TaskRunner.run, withProgress): an
	// addition to Synapse's reply, as audit is.
	if below, ok := t.Result["purged_below"]; ok {
		out["progress"] = map[string]any{"purged_below": below, "floor": t.Result["floor"]}
	}
	return bus.Encode(out)
}

// findEvent is Store.FindEvent, for a purge's cut-off. An event missing
// from the projection may be in the log already, acknowledged to its
// publisher but not yet applied here: then it waits until the log as it
// is now is applied (catchUp) and looks again. A found event needs no
// wait: its position does not change, and the purge, applied in the
// room's log order, still deletes what lies below it. So the usual purge
// costs no round trip to the log.
func (a *Admin) findEvent(ctx context.Context, roomID, eventID string) (projections.EventInfo, bool, error) {
	info, ok, err := a.Store.FindEvent(roomID, eventID)
	if err != nil || ok {
		return info, ok, err
	}
	if err := a.catchUp(ctx); err != nil {
		return info, false, err
	}
	return a.Store.FindEvent(roomID, eventID)
}

// catchUp waits (at most WaitForTimeout) until this instance has applied
// the log as it is now. A purge's cut-off looked up in a projection that
// lags would miss events the log holds: 404 for an event that exists, or,
// by ts, a cut-off past events another room has not applied yet.
func (a *Admin) catchUp(ctx context.Context) error {
	if a.CatchUp == nil {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, WaitForTimeout)
	defer cancel()
	if err := a.CatchUp(cctx); err != nil {
		return commands.Errorf(504, commands.CodeUnknown, "The service has not caught up with the room log yet; try again")
	}
	return nil
}

func hasKey(m map[string]any, k string) bool { _, ok := m[k]; return ok }

// Delete answers sb.api.room.<rk>.delete, the Delete Room API (SYNAPSE.md
// 7.1, 7.2, 7.5), in Synapse's validation order. It publishes a
// shutdown_and_purge_room command and replies {delete_id} once it is
// applied; with wait (v1) it replies with the shutdown result once the
// task has finished.
func (a *Admin) Delete(ctx context.Context, subject string, data []byte) ([]byte, error) {
	roomID, m, err := roomRequest(a.Subjects, subject, data)
	if err != nil {
		return nil, err
	}
	// The NATS request's own fields first: a deletion must not start
	// from a malformed request.
	by, err := requester(m)
	if err != nil {
		return nil, err
	}
	wait, isBool := m["wait"].(bool)
	if v, ok := m["wait"]; ok && v != nil && !isBool {
		return nil, commands.Errorf(400, commands.CodeBadJSON, "Param 'wait' must be a boolean, if given")
	}
	params, err := DeleteBools(m)
	if err != nil {
		return nil, err
	}
	if !commands.LegalRoomID(roomID) {
		return nil, commands.Errorf(400, commands.CodeUnknown, "%s is not a legal room ID", roomID)
	}
	if !wait {
		// Synapse refuses only while one is active; a scheduled one is
		// refused too, so two requests in a row never start two
		// shutdowns (synapse#10797). Checked again right before the
		// publish (below).
		if open, err := a.deletionOpen(roomID); err != nil {
			return nil, err
		} else if open != "" {
			return nil, commands.Errorf(400, commands.CodeUnknown, "Purge already in progress for %s", roomID)
		}
	}
	for _, k := range []string{"new_room_user_id", "room_name", "message"} {
		// Synapse takes a falsy room_name or message for the default
		// (SYNAPSE.md 7.1); any other value must be a string.
		if v, ok := m[k]; ok && commands.Truthy(v) {
			s, isStr := v.(string)
			if !isStr {
				return nil, commands.Errorf(400, commands.CodeBadJSON, "Param '%s' must be a string, if given", k)
			}
			key := k
			if k == "room_name" {
				key = "new_room_name"
			}
			params[key] = s
		}
	}
	if u, ok := m["new_room_user_id"].(string); ok && u == "" {
		// Synapse checks any new_room_user_id but null, and "" is not
		// one of its users: v2 before it schedules anything, v1 in the
		// shutdown, after the block and after an unknown room has ended
		// it (see below).
		if !wait {
			return nil, commands.Errorf(400, commands.CodeUnknown, "User must be our own: ")
		}
		params["new_room_user_id"] = ""
	}
	if u, _ := params["new_room_user_id"].(string); u != "" {
		// v2 checks it before it schedules anything (Synapse's
		// start_shutdown_and_purge_room); v1 leaves it to the shutdown,
		// which checks it after the block and after an unknown room has
		// ended it, as Synapse's shutdown_room does.
		if !wait && !commands.IsLocalUser(u, a.ServerName) {
			return nil, commands.Errorf(400, commands.CodeUnknown, "User must be our own: %s", u)
		}
		// The command would fail its validation, without the block.
		if !commands.ValidUserID(u) {
			return nil, commands.Errorf(400, commands.CodeInvalidParam, "Param 'new_room_user_id' is not a valid user ID: %s", u)
		}
	}
	if wait {
		// v1 answers when the deletion is over, minutes later perhaps:
		// the wait must not hold one of the API's workers, which the
		// reads share (a client retrying v1 on a room whose deletion
		// hangs would take them all).
		if err := bus.Detach(ctx); err != nil {
			return nil, err
		}
	}
	inProgress := projections.ErrTextDeletionInProgress + roomID
	cmdSubject := a.Subjects.Room(roomID, commands.KindCmd)
	var t *commands.Task
	id := "" // this request's task, kept while other commands overtake its publish
	for {
		if wait {
			// Synapse's v1 has no "in progress" check: a second call runs
			// after the deletion under way (SYNAPSE.md 7.5). A room has
			// one open deletion at a time here (the projection fails a
			// second one), so v1 waits for the open one first.
			if err := a.waitNoDeletion(ctx, roomID, id); err != nil {
				return nil, err
			}
		}
		// The check for an open deletion reads the projection with the
		// room's commands applied up to the last one in the log, and the
		// publish happens only if no command came after that one
		// (bus.Log.AppendAfter): whichever instance of the service
		// publishes it, a deletion refused because another is open is
		// answered here, never published, so that it leaves no failed
		// task in the room's delete_status (Synapse refuses it before it
		// schedules any).
		last, err := a.Log.SubjectLastSeq(ctx, cmdSubject)
		if err != nil {
			return nil, err
		}
		if err := a.waitApplied(ctx, roomID, last); err != nil {
			return nil, err
		}
		open, err := a.deletionOpen(roomID)
		if err != nil {
			return nil, err
		}
		// An attempt refused with bus.ErrNotLast may be in the log all
		// the same: its acknowledgement was lost, and the repeat was
		// refused (JetStream checks the expected sequence before the
		// message ID). Its task is then there, open or already
		// finished, and the command is not published again: past the
		// duplicate window the log would take it twice, and the
		// projection dead-letter the second as a duplicate.
		landed := false
		if id != "" {
			mine, err := a.Store.Task(id)
			if err != nil {
				return nil, err
			}
			landed = mine != nil
		}
		if open != "" && !landed {
			if !wait {
				return nil, commands.Errorf(400, commands.CodeUnknown, "%s", inProgress)
			}
			continue
		}
		if id == "" {
			id = a.newID()
		}
		if landed {
			if a.Audit != nil {
				a.Audit.Info("admin action", "action", commands.ActionShutdownAndPurgeRoom, "room_id", roomID, "requested_by", by, "task_id", id, "ack", "lost")
			}
		} else if _, err := a.publishAs(ctx, id, roomID, commands.ActionShutdownAndPurgeRoom, params, by, &last); errors.Is(err, bus.ErrNotLast) {
			continue // another command came first, or this one's acknowledgement was lost: look again
		} else if err != nil {
			return nil, err
		}
		if !wait {
			// Another request's deletion was applied first: refused, as
			// the check above refuses it.
			if t, err := a.Store.Task(id); err == nil && t != nil && t.Status == commands.TaskFailed && t.Error == inProgress {
				return nil, commands.Errorf(400, commands.CodeUnknown, "%s", inProgress)
			}
			if a.CanStart == nil || a.CanStart(roomID) {
				a.waitStarted(ctx, roomID, id)
			}
			return bus.Encode(map[string]any{"delete_id": id})
		}
		if t, err = a.waitTask(ctx, roomID, id); err != nil {
			return nil, err
		}
		if t.Status != commands.TaskFailed || t.Error != inProgress {
			break
		}
		// Another deletion was applied between the wait and ours: wait
		// for that one too, and try again as a new task.
		id = ""
	}
	if t.Status == commands.TaskFailed {
		if msg, ok := strings.CutPrefix(t.Error, "400: "); ok {
			return nil, commands.Errorf(400, commands.CodeUnknown, "%s", msg)
		}
		return nil, commands.Errorf(500, commands.CodeUnknown, "%s", t.Error)
	}
	return bus.Encode(resultOf(t.Result).public())
}

// DeleteBools checks block, purge and force_purge of a Delete Room body
// as Synapse does (content.get(key, default), then isinstance bool): a
// present key, null included, must be a boolean. It returns the ones
// given.
func DeleteBools(m map[string]any) (map[string]any, error) {
	params := map[string]any{}
	for _, k := range []string{"block", "purge", "force_purge"} {
		v, ok := m[k]
		if !ok {
			continue
		}
		b, isBool := v.(bool)
		if !isBool {
			return nil, commands.Errorf(400, commands.CodeBadJSON, "Param '%s' must be a boolean, if given", k)
		}
		params[k] = b
	}
	return params, nil
}

// StartWait bounds how long a v2 deletion waits for its task to start
// before it replies.
const StartWait = time.Second

// waitStarted waits, at most StartWait, until a task of the room is no
// longer scheduled. Synapse launches a task as it schedules it, so the by-room
// delete status, which leaves scheduled tasks out, shows a v2 deletion
// as soon as its delete_id is returned; with every task slot taken the
// task stays scheduled, there as here, and Delete does not wait
// (CanStart).
func (a *Admin) waitStarted(ctx context.Context, roomID, id string) {
	ctx, cancel := context.WithTimeout(ctx, StartWait)
	defer cancel()
	_ = a.waitUntil(ctx, roomID, func() (bool, error) {
		t, err := a.Store.Task(id)
		return err != nil || t == nil || t.Status != commands.TaskScheduled, nil
	})
}

// waitApplied waits, up to WaitForTimeout, until the room's log is
// applied up to sequence seq (0: nothing to wait for).
func (a *Admin) waitApplied(ctx context.Context, roomID string, seq uint64) error {
	if seq == 0 {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, WaitForTimeout)
	defer cancel()
	if err := a.Waiter.WaitFor(wctx, roomID, seq); err != nil {
		return commands.Errorf(504, commands.CodeUnknown, "The room's last command (sequence %d) is not processed yet; try again", seq)
	}
	return nil
}

// deletionOpen is the ID of the room's scheduled or active deletion
// (shutdown_and_purge_room or purge_room), "" when there is none.
func (a *Admin) deletionOpen(roomID string) (string, error) {
	tasks, err := a.Store.RoomTasks(roomID)
	for _, t := range tasks {
		if !t.Finished() && isDeleteAction(t.Action) {
			return t.ID, err
		}
	}
	return "", err
}

// waitNoDeletion waits until the room has no scheduled or active
// deletion (shutdown_and_purge_room or purge_room) but task mine (this
// request's, if any), or ctx ends.
func (a *Admin) waitNoDeletion(ctx context.Context, roomID, mine string) error {
	open := ""
	err := a.waitUntil(ctx, roomID, func() (bool, error) {
		var err error
		open, err = a.deletionOpen(roomID)
		return open == "" || open == mine, err
	})
	return a.waitErr(err, open, "")
}

// waitTask waits until a task of the room has finished, or ctx ends.
func (a *Admin) waitTask(ctx context.Context, roomID, id string) (*commands.Task, error) {
	var t *commands.Task
	err := a.waitUntil(ctx, roomID, func() (bool, error) {
		var err error
		t, err = a.Store.Task(id)
		return t != nil && t.Finished(), err
	})
	return t, a.waitErr(err, id, id)
}

// errAdminStopping ends waitUntil when the service stops.
var errAdminStopping = errors.New("stopping")

// waitUntil calls done until it reports true or an error, ctx ends
// (ctx.Err()) or the service stops (errAdminStopping). done reads the
// room's tasks, which change only when the projector commits a task's
// command or update: it is called again after each such commit of the
// room (projections.Store.TaskChange), not on a timer.
func (a *Admin) waitUntil(ctx context.Context, roomID string, done func() (bool, error)) error {
	for {
		changed, release := a.Store.TaskChange(roomID)
		ok, err := done()
		if !ok && err == nil {
			select {
			case <-ctx.Done():
				err = ctx.Err()
			case <-a.Stopping:
				err = errAdminStopping
			case <-changed:
			}
		}
		release()
		if ok || err != nil {
			return err
		}
	}
}

// waitErr is a v1 deletion's answer to a wait that waitUntil ended:
// waiting names the deletion still running, started the one this request
// started ("" if none).
func (a *Admin) waitErr(err error, waiting, started string) error {
	switch {
	case errors.Is(err, errAdminStopping):
		return errStopping(started)
	case err != nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)):
		return commands.Errorf(504, commands.CodeUnknown, "The room deletion %s is still running; follow it with the v2 delete_status API", waiting)
	}
	return err
}

// deleteTask is Synapse's delete status record, plus the failure reason.
func deleteTask(t *commands.Task) map[string]any {
	out := map[string]any{"delete_id": t.ID, "room_id": t.RoomID, "status": t.Status, "shutdown_room": nil, "audit": auditOf(t)}
	if t.Action == commands.ActionShutdownAndPurgeRoom && t.Result != nil {
		// Synapse's result stays null until shutdown_room records one:
		// the new room, a user kicked or not, or its return value.
		if r := resultOf(t.Result); t.Status == commands.TaskComplete || r.NewRoomID != "" || len(r.Kicked) > 0 || len(r.Failed) > 0 || len(r.Aliases) > 0 {
			out["shutdown_room"] = r.public()
		}
	}
	if t.Error != "" {
		out["error"] = t.Error
	}
	return out
}

func isDeleteAction(a string) bool {
	return a == commands.ActionPurgeRoom || a == commands.ActionShutdownAndPurgeRoom
}

// DeleteStatusByRoom answers sb.api.room.<rk>.delete_status: the room's
// active, complete and failed deletions, oldest first.
func (a *Admin) DeleteStatusByRoom(ctx context.Context, subject string, data []byte) ([]byte, error) {
	roomID, _, err := a.roomOf(subject, data)
	if err != nil {
		return nil, err
	}
	tasks, err := a.Store.RoomTasks(roomID)
	if err != nil {
		return nil, err
	}
	// Synapse orders them by the task's timestamp, which is its last
	// change once it has started (SYNAPSE.md 7.4, 10).
	slices.SortStableFunc(tasks, func(x, y *commands.Task) int { return cmp.Compare(x.UpdatedTS, y.UpdatedTS) })
	var results []any
	for _, t := range tasks {
		if !isDeleteAction(t.Action) || t.ExpiredAt(a.Now().UnixMilli()) {
			continue
		}
		if t.Status == commands.TaskActive || t.Status == commands.TaskComplete || t.Status == commands.TaskFailed {
			results = append(results, deleteTask(t))
		}
	}
	if len(results) == 0 {
		return nil, commands.Errorf(404, commands.CodeNotFound, "No delete task for room_id '%s' found", roomID)
	}
	return bus.Encode(map[string]any{"results": results})
}

// DeleteStatus answers sb.api.delete_status {delete_id}: the task in any
// status, of any command but purge_history (whose status is
// PurgeStatus's). So a block_room, a forget or a command with an unknown
// action that failed validation has a status too, with its reason
// (CONTRACT.md section 4: a command that fails validation is a failed
// task, visible through the status requests).
func (a *Admin) DeleteStatus(ctx context.Context, subject string, data []byte) ([]byte, error) {
	id, t, err := a.taskByID(ctx, data, "delete_id")
	if err != nil {
		return nil, err
	}
	if t == nil || t.Action == commands.ActionPurgeHistory || t.ExpiredAt(a.Now().UnixMilli()) {
		return nil, commands.Errorf(404, commands.CodeNotFound, "delete id '%s' not found", id)
	}
	return bus.Encode(deleteTask(t))
}

// decodeRequest decodes a request payload: a MessagePack map, or 400
// M_BAD_JSON (the empty payload included: it is never taken for {}), and
// within bus.RequestLimits, or 400 M_TOO_LARGE (requestTooLarge).
func decodeRequest(data []byte) (map[string]any, error) {
	m, err := bus.DecodeMap(data, bus.RequestLimits)
	if err != nil {
		if e := requestTooLarge(err); e != nil {
			return nil, e
		}
		return nil, commands.Errorf(400, commands.CodeBadJSON, "Request must be a MessagePack map: %v", err)
	}
	return m, nil
}

// requestTooLarge is the answer to a request past one of
// bus.RequestLimits: a 400 M_TOO_LARGE that names the limit, as the HTTP
// bridge answers a body past it. "Request must be a MessagePack map:
// payload exceeds size limits: ..." told a worker calling the service
// (CONTRACT.md section 4) that its map was not one. It is nil for any
// other error, a length prefix longer than any payload among them (no
// well-formed request has one).
func requestTooLarge(err error) *commands.Error {
	lim := bus.RequestLimits
	switch {
	case errors.Is(err, bus.ErrTooManyValues):
		return commands.Errorf(400, commands.CodeLimitExceeded, "Request has too many values (at most %d)", lim.MaxElements)
	case errors.Is(err, bus.ErrTooDeep):
		return commands.Errorf(400, commands.CodeLimitExceeded, "Request is nested too deeply (at most %d levels)", lim.MaxDepth)
	case errors.Is(err, bus.ErrTooManyBytes):
		return commands.Errorf(400, commands.CodeLimitExceeded, "Request too large (at most %d bytes)", lim.MaxBytes)
	}
	return nil
}

// taskByID decodes a status request {<key>: id} and looks the task up
// (nil when unknown); a missing id is 400 M_MISSING_PARAM. An unknown
// task is looked up again once the projection has caught up with the
// log, for at most 5 s within the request's own deadline.
func (a *Admin) taskByID(ctx context.Context, data []byte, key string) (string, *commands.Task, error) {
	m, err := decodeRequest(data)
	if err != nil {
		return "", nil, err
	}
	id, _ := m[key].(string)
	if id == "" {
		return "", nil, commands.Errorf(400, commands.CodeMissingParam, "Missing params: ['%s']", key)
	}
	if !commands.ValidCommandID(id) {
		return id, nil, nil
	}
	t, err := a.Store.Task(id)
	if t == nil && err == nil && a.CatchUp != nil {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if a.CatchUp(ctx) == nil {
			t, err = a.Store.Task(id)
		}
	}
	return id, t, err
}

// roomRequest reads the room of a sb.api.room.<rk>.<endpoint> subject and
// decodes the request payload.
func roomRequest(subjects bus.Subjects, subject string, data []byte) (string, map[string]any, error) {
	roomID, err := subjects.ParseAPIRoomSubject(subject)
	if err != nil {
		return "", nil, commands.Errorf(400, commands.CodeInvalidParam, "Bad room key in subject")
	}
	m, err := decodeRequest(data)
	if err != nil {
		return "", nil, err
	}
	return roomID, m, nil
}
