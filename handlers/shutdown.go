package handlers

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
)

// Synapse's defaults of the Delete Room API (SYNAPSE.md 7.1).
const (
	DefaultNewRoomName = "Content Violation Notification"
	DefaultMessage     = "Sharing illegal content on this server is not permitted and rooms in violation will be blocked."
)

// shutdownResult is Synapse's ShutdownRoomResponse, kept in the task's
// result and updated as each step happens.
type shutdownResult struct {
	Kicked    []string
	Failed    []string
	Aliases   []string
	NewRoomID string
	// Todo is the local members to kick, recorded before the first kick
	// so that a resumed shutdown works on the same list even though the
	// kicked users have left meanwhile; a resumed one adds who has joined
	// since, at the end. Each has the <n> of their txn_ids (member):
	// stable across resumptions, and never one user's and another's (a
	// hash of the user ID was: two users sharing it got one leave between
	// them, the homeserver answering the second with the first's reply).
	// The task's result records each user once, so that a TaskUpdate of
	// 100k members fits max_payload: those kicked in kicked_users, those
	// that failed in failed_to_kick_users (their membership and number
	// in users_failed_n, in the same order: they are tried again when the
	// task resumes), the others in users_to_kick; and Next, the next
	// number to give. Nil until listed. Neither is part of
	// Synapse's response.
	Todo []member
	Next int64
}

// member is a local member a shutdown moves, with their membership and
// the <n> of their txn_ids: the order in which they were listed, or, for
// a list an earlier release recorded (a map), the FNV-1a hash of their ID
// that it numbered their txn_ids with, so that a request it sent is
// repeated under the same txn_id.
type member struct {
	user, membership string
	n                int64
}

func resultOf(m map[string]any) *shutdownResult {
	r := &shutdownResult{}
	list := func(k string) []string {
		var out []string
		l, _ := m[k].([]any)
		for _, v := range l {
			if s, ok := v.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	r.Kicked, r.Failed, r.Aliases = list("kicked_users"), list("failed_to_kick_users"), list("local_aliases")
	r.NewRoomID, _ = m["new_room_id"].(string)
	switch todo := m[todoKey].(type) {
	case []any: // [[user, membership, n], ...]
		r.Todo = make([]member, 0, len(todo))
		for _, p := range todo {
			if e, ok := p.([]any); ok && len(e) == 3 {
				u, _ := e[0].(string)
				mem, _ := e[1].(string)
				if n, ok := commands.AsInt(e[2]); ok {
					r.Todo = append(r.Todo, member{u, mem, n})
				}
			}
		}
		failed, _ := m[failedKey].([]any)
		for i, u := range r.Failed {
			if i == len(failed) {
				break
			}
			if e, ok := failed[i].([]any); ok && len(e) == 2 {
				mem, _ := e[0].(string)
				if n, ok := commands.AsInt(e[1]); ok {
					r.Todo = append(r.Todo, member{u, mem, n})
				}
			}
		}
	case map[string]any: // user -> membership, as earlier releases kept it
		r.Todo = make([]member, 0, len(todo))
		for _, u := range slices.Sorted(maps.Keys(todo)) {
			mem, _ := todo[u].(string)
			r.Todo = append(r.Todo, member{u, mem, int64(legacyTxnN(u))})
		}
	}
	r.Next, _ = commands.AsInt(m[nextKey])
	return r
}

const (
	todoKey   = "users_to_kick"
	failedKey = "users_failed_n"
	nextKey   = "users_to_kick_next"
)

// public is the result as Synapse's ShutdownRoomResponse.
func (r *shutdownResult) public() map[string]any {
	m := r.toMap()
	delete(m, todoKey)
	delete(m, failedKey)
	delete(m, nextKey)
	return m
}

func (r *shutdownResult) toMap() map[string]any {
	strs := func(l []string) []any {
		out := make([]any, len(l))
		for i, s := range l {
			out[i] = s
		}
		return out
	}
	m := map[string]any{"kicked_users": strs(r.Kicked), "failed_to_kick_users": strs(r.Failed), "local_aliases": strs(r.Aliases), "new_room_id": nil}
	if r.NewRoomID != "" {
		m["new_room_id"] = r.NewRoomID
	}
	if r.Todo != nil {
		done := make(map[string]bool, len(r.Kicked)+len(r.Failed))
		for _, u := range r.Kicked {
			done[u] = true
		}
		byUser := make(map[string]member, len(r.Failed))
		for _, u := range r.Failed {
			done[u] = true
			byUser[u] = member{}
		}
		todo := make([]any, 0, len(r.Todo)-min(len(r.Todo), len(done)))
		for _, p := range r.Todo {
			if _, ok := byUser[p.user]; ok {
				byUser[p.user] = p
			}
			if !done[p.user] {
				todo = append(todo, []any{p.user, p.membership, p.n})
			}
		}
		failed := make([]any, len(r.Failed))
		for i, u := range r.Failed {
			if p := byUser[u]; p.user != "" {
				failed[i] = []any{p.membership, p.n}
			} else {
				failed[i] = []any{} // not listed: nothing to try again
			}
		}
		m[todoKey] = todo
		m[failedKey] = failed
		m[nextKey] = r.Next
	}
	return m
}

// list adds the room's local members not on the list yet, in user order,
// and reports whether it changed (a first listing always does).
func (r *shutdownResult) list(members map[string]string) bool {
	changed := r.Todo == nil
	listed := make(map[string]bool, len(r.Todo))
	for _, p := range r.Todo {
		listed[p.user] = true
		r.Next = max(r.Next, p.n+1) // a legacy list's hashes, or a lost Next
	}
	if r.Todo == nil {
		r.Todo = []member{}
	}
	for _, u := range slices.Sorted(maps.Keys(members)) {
		if !listed[u] {
			r.Todo = append(r.Todo, member{u, members[u], r.Next})
			r.Next++
			changed = true
		}
	}
	return changed
}

// legacyTxnN is the <n> an earlier release gave a user's txn_ids.
func legacyTxnN(user string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(user))
	return h.Sum32()
}

// runShutdown carries out shutdown_and_purge_room (SYNAPSE.md 7.3) as a
// resumable task. Every homeserver request carries a txn_id, so a resumed
// task repeats requests safely (the homeserver answers them with its first
// answer), and users recorded as kicked are never asked again.
func (r *TaskRunner) runShutdown(ctx context.Context, task *commands.Task) error {
	p := task.Params
	str := func(k, def string) string {
		if s, _ := p[k].(string); s != "" {
			return s
		}
		return def
	}
	boolOf := func(k string, def bool) bool {
		if b, ok := p[k].(bool); ok {
			return b
		}
		return def
	}
	newUser := str("new_room_user_id", "")
	_, newUserGiven := p["new_room_user_id"].(string) // "" included: v1's, refused below
	roomName := str("new_room_name", DefaultNewRoomName)
	message := str("message", DefaultMessage)
	purge, force := boolOf("purge", true), boolOf("force_purge", false)
	res := resultOf(task.Result)
	n := task.Updates
	next := func(status string, errText string) error {
		return r.update(ctx, task, &n, status, res.toMap(), errText)
	}
	if task.Status == commands.TaskScheduled {
		if err := next(commands.TaskActive, ""); err != nil {
			return err
		}
	}
	// The block was applied with the command. An unknown room ends here.
	known := false
	err := r.Store.View(task.RoomID, func(v *projections.RoomView) error {
		_, _, known = v.MaxPosition()
		return nil
	})
	if err != nil {
		return err
	}
	if !known {
		return next(commands.TaskComplete, "")
	}
	if newUserGiven && !commands.IsLocalUser(newUser, r.ServerName) {
		// Synapse's shutdown_room checks it here, after the block and an
		// unknown room: the room stays blocked, and nobody is kicked.
		return next(commands.TaskFailed, "400: User must be our own: "+newUser)
	}
	if newUser != "" && res.NewRoomID == "" {
		reply, err := r.hs(ctx, "create_room", map[string]any{"txn_id": task.ID + "-create", "creator": newUser, "preset": "public_chat",
			"name": roomName, "power_level_content_override": map[string]any{"users_default": int64(-10)}})
		if err != nil {
			return next(commands.TaskFailed, fmt.Sprintf("Failed to create the new room: %v", err))
		}
		newRoom, _ := reply["room_id"].(string)
		if !commands.LegalRoomID(newRoom) {
			// The members are moved there and the aliases go there: a
			// broken worker's answer fails the deletion before anybody
			// is kicked.
			return next(commands.TaskFailed, "Failed to create the new room: no room ID in the homeserver's reply, got "+commands.Quote(newRoom))
		}
		res.NewRoomID = newRoom
		if err := next(commands.TaskActive, ""); err != nil {
			return err
		}
	}
	// Listed once the new room exists, as Synapse does: a user who
	// joined while it was being made is kicked too. Synapse lists the
	// members each time the task runs (get_local_users_related_to_room),
	// so a resumed task also moves those who joined since it was
	// interrupted; those listed before stay listed, and a user whose
	// leave went through but was not recorded is asked again under the
	// same txn_id.
	members, err := r.localMembers(task.RoomID)
	if err != nil {
		return err
	}
	if err := r.listAndKick(ctx, task, res, members, &n); err != nil {
		return err
	}
	if newUser != "" {
		if _, err := r.hs(ctx, "send", map[string]any{"txn_id": task.ID + "-send", "room_id": res.NewRoomID, "sender": newUser,
			"type": "m.room.message", "content": map[string]any{"msgtype": "m.text", "body": message}}); err != nil {
			return next(commands.TaskFailed, fmt.Sprintf("Failed to send the message to the new room: %v", err))
		}
		reply, err := r.hs(ctx, "move_aliases", map[string]any{"txn_id": task.ID + "-aliases", "from_room_id": task.RoomID,
			"to_room_id": res.NewRoomID, "requested_by": task.RequestedBy})
		if err != nil {
			return next(commands.TaskFailed, fmt.Sprintf("Failed to move the aliases: %v", err))
		}
		res.Aliases = resultOf(map[string]any{"local_aliases": reply["aliases"]}).Aliases
	}
	if !purge {
		return next(commands.TaskComplete, "")
	}
	if err := next(commands.TaskActive, ""); err != nil {
		return err
	}
	// After the last homeserver reply: its outcome completes or fails
	// this task (CONTRACT.md section 3).
	data, err := bus.Encode(map[string]any{"id": task.ID + "-purge", "action": commands.ActionPurgeRoom, "room_id": task.RoomID,
		"params": map[string]any{"force": force}, "requested_by": task.RequestedBy, "ts": r.Now().UnixMilli()})
	if err != nil {
		return err
	}
	seq, err := r.Log.Append(ctx, r.Subjects.Room(task.RoomID, commands.KindCmd), task.ID+"-purge", data)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, WaitForTimeout)
	defer cancel()
	return r.Waiter.WaitFor(wctx, task.RoomID, seq)
}

// listAndKick records the members on the task's list (those not listed
// yet get the next numbers) and moves them all. The list's update must be
// this run's own: if the log already held that update, another instance
// ran the task meanwhile (a failover while this one paused) and may have
// numbered the members otherwise, so this run stops and the task resumes
// from the log (update returns ErrDuplicate).
func (r *TaskRunner) listAndKick(ctx context.Context, task *commands.Task, res *shutdownResult, members map[string]string, n *int) error {
	if res.list(members) {
		if err := r.update(ctx, task, n, commands.TaskActive, res.toMap(), ""); err != nil {
			return err
		}
	}
	return r.kickAll(ctx, task, res, n)
}

// localMembers lists the room's local users who are joined, invited or
// knocking, with their membership.
func (r *TaskRunner) localMembers(roomID string) (map[string]string, error) {
	members := map[string]string{}
	err := r.Store.View(roomID, func(v *projections.RoomView) error {
		v.ServerMembers(r.ServerName, func(user, membership string) bool {
			if membership == "join" || membership == "invite" || membership == "knock" {
				members[user] = membership
			}
			return true
		})
		return nil
	})
	return members, err
}

// progressEvery is how often a deletion moving members publishes its
// progress: every 500 ms, and for more than 10,000 members 500 ms more
// for each 10,000. Each update carries the whole result, which grows
// with the members (about 50 bytes each), stays in the log and is
// rewritten in the projection: for 100k members every 5.5 s, about a
// megabyte a second, where every 500 ms wrote ten. A resumed task asks
// again, under the same txn_ids, for what it had not recorded.
func progressEvery(members int) time.Duration {
	return time.Duration(1+members/10_000) * 500 * time.Millisecond
}

// kickAll makes every local member leave and forget the room, and joins
// the previously joined ones to the new room, at most Concurrency users at
// once, each after BeforeKick. Progress is published every
// progressEvery(members) and at the end; failures are logged by
// kickFailures, a few at Warn.
func (r *TaskRunner) kickAll(ctx context.Context, task *commands.Task, res *shutdownResult, n *int) error {
	kicked := make(map[string]bool, len(res.Kicked))
	for _, u := range res.Kicked {
		kicked[u] = true
	}
	var todo []int // indexes in res.Todo, in user order
	for i, p := range res.Todo {
		if !kicked[p.user] {
			todo = append(todo, i)
		}
	}
	slices.SortFunc(todo, func(x, y int) int { return strings.Compare(res.Todo[x].user, res.Todo[y].user) })
	conc := max(r.Concurrency, 1)
	var mu sync.Mutex // guards res and changes
	changes := 0      // users done since the last snapshot
	snapshot := func() map[string]any {
		mu.Lock()
		defer mu.Unlock()
		if changes == 0 {
			return nil
		}
		changes = 0
		return res.toMap()
	}
	// Progress goes to the log from its own goroutine, so the users'
	// requests never wait for it.
	stopFlush := make(chan struct{})
	flushDone := make(chan error, 1)
	go func() {
		t := time.NewTicker(progressEvery(len(res.Todo)))
		defer t.Stop()
		var err error
		for {
			select {
			case <-stopFlush:
				flushDone <- err
				return
			case <-t.C:
				// Nothing new, nothing to publish: each update carries the
				// whole result and stays in the log.
				snap := snapshot()
				if snap == nil {
					continue
				}
				if uerr := r.update(ctx, task, n, commands.TaskActive, snap, ""); uerr != nil && err == nil {
					err = uerr
				}
			}
		}
	}()
	failures := &kickFailures{log: r.Logger, task: task.ID}
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for _, i := range todo {
		u, membership, txnN := res.Todo[i].user, res.Todo[i].membership, res.Todo[i].n
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		// With its slot taken: a wait while all slots are busy would
		// be no wait at all, and the kick would start whenever a slot
		// frees, queue or no queue.
		if r.BeforeKick != nil && ctx.Err() == nil {
			r.BeforeKick(ctx)
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			ok := r.kick(ctx, task, u, txnN, membership, res.NewRoomID, failures)
			mu.Lock()
			defer mu.Unlock()
			res.Failed = slices.DeleteFunc(res.Failed, func(s string) bool { return s == u })
			changes++
			if ok {
				res.Kicked = append(res.Kicked, u)
			} else {
				res.Failed = append(res.Failed, u)
			}
		}()
	}
	wg.Wait()
	failures.summary()
	close(stopFlush)
	if err := <-flushDone; err != nil {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return r.update(ctx, task, n, commands.TaskActive, res.toMap(), "")
}

// kick is one user's part of a shutdown: leave, forget, and join the new
// room when they were joined. Any failure puts the user in
// failed_to_kick_users, and is told to failures; the shutdown goes on.
func (r *TaskRunner) kick(ctx context.Context, task *commands.Task, user string, n int64, membership, newRoom string, failures *kickFailures) bool {
	suffix := fmt.Sprintf("-%d", n)
	if _, err := r.hs(ctx, "leave", map[string]any{"txn_id": task.ID + "-leave" + suffix, "room_id": task.RoomID, "user_id": user}); err != nil {
		failures.add("leave", user, err)
		return false
	}
	if _, err := r.hs(ctx, "forget", map[string]any{"txn_id": task.ID + "-forget" + suffix, "room_id": task.RoomID, "user_id": user}); err != nil {
		failures.add("forget", user, err)
		return false
	}
	if newRoom != "" && membership == "join" {
		if _, err := r.hs(ctx, "join", map[string]any{"txn_id": task.ID + "-join" + suffix, "room_id": newRoom, "user_id": user}); err != nil {
			failures.add("join to the new room", user, err)
			return false
		}
	}
	return true
}

// warnedKicks is how many failed kicks of a task's run are logged at
// Warn; the others are logged at Debug, and summed up at the end
// (kickFailures.summary).
const warnedKicks = 10

// kickFailures logs the failed kicks of one run of a task's kicks: the
// first warnedKicks at Warn, with the user and the error, the others at
// Debug, so that a room of 5,000 members whose homeserver is down writes
// a dozen Warn lines, not 5,000; the user's result
// (failed_to_kick_users) is the kicks' own.
type kickFailures struct {
	log  *slog.Logger
	task string

	mu    sync.Mutex
	n     int   // kicks failed so far
	first error // the first one's step and error
}

// add logs the failure of user's kick at step (leave, forget, join to
// the new room).
func (f *kickFailures) add(step, user string, err error) {
	if errors.Is(err, context.Canceled) {
		// The task was cancelled or the service is stopping: no failure
		// of the homeserver, and the kick is retried when the task
		// resumes.
		f.log.Debug("shutdown: "+step+" stopped", "task", f.task, "user", user, "err", err)
		return
	}
	f.mu.Lock()
	f.n++
	warn := f.n <= warnedKicks
	if f.first == nil {
		f.first = fmt.Errorf("%s: %w", step, err)
	}
	f.mu.Unlock()
	level := slog.LevelDebug
	if warn {
		level = slog.LevelWarn
	}
	f.log.Log(context.Background(), level, "shutdown: "+step+" failed", "task", f.task, "user", user, "err", err)
}

// summary logs, once the run's kicks have ended, one Warn line with how
// many failed and the first error, when more failed than were logged at
// Warn.
func (f *kickFailures) summary() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n > warnedKicks {
		f.log.Warn("shutdown: kicks failed", "task", f.task, "failed", f.n, "logged_at_warn", warnedKicks, "first_err", f.first)
	}
}

// hs asks the homeserver, bounded by HSTimeout. "No responders" is
// retried within that bound: a homeserver worker that restarts or
// reconnects must not fail every user of a shutdown at once. A request
// whose ctx ends while it retries ends with ctx's error too, as one
// waiting for an answer does.
func (r *TaskRunner) hs(ctx context.Context, name string, req map[string]any) (out map[string]any, err error) {
	if r.ObserveHS != nil {
		start := time.Now()
		defer func() { r.ObserveHS(name, time.Since(start), err) }()
	}
	t := r.HSTimeout
	if t <= 0 {
		t = 5 * time.Second
	}
	hctx, cancel := context.WithTimeout(ctx, t)
	defer cancel()
	for {
		data, err := r.HS.Request(hctx, r.Subjects.HS(name), req)
		if errors.Is(err, bus.ErrNoResponders) {
			select {
			case <-hctx.Done():
				if ctx.Err() != nil {
					// The shutdown ended, not the homeserver's time:
					// the error says so (ObserveHS: cancelled).
					return nil, fmt.Errorf("%w; given up: %w", err, ctx.Err())
				}
				return nil, err
			case <-time.After(100 * time.Millisecond):
				continue
			}
		}
		if err != nil {
			return nil, err
		}
		return bus.DecodeMap(data, bus.DefaultLimits)
	}
}
