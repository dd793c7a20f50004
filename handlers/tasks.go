package handlers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
)

// TaskRunner runs the tasks of purge commands. A task is event-sourced:
// every change of status is a TaskUpdate published to the room's task
// subject and applied by the projector like any log message, so the task
// record survives crashes and a rebuild reproduces it. The runner looks
// for open tasks every PollInterval, so a task that was active when the
// service stopped resumes within that interval of a restart. It also
// deletes the finished tasks that have expired from this instance's
// projection (expire).
type TaskRunner struct {
	Store    *projections.Store
	Log      TaskLog
	Waiter   Waiter
	Subjects bus.Subjects
	Now      func() time.Time
	Logger   *slog.Logger
	// MaxConcurrent bounds the tasks running at once across rooms
	// (default DefaultMaxConcurrent).
	MaxConcurrent int
	// PollInterval is how often open tasks are looked for (default 1 s).
	PollInterval time.Duration
	// ExpireInterval is how often, by Now, expired tasks are deleted
	// (default 1 min, as Synapse's _clean_scheduled_tasks).
	ExpireInterval time.Duration
	// HS asks homeserver workers (sb.hs.*) for a shutdown's side
	// effects, each bounded by HSTimeout; Concurrency bounds the users
	// handled at once in one shutdown.
	HS          Requester
	HSTimeout   time.Duration
	Concurrency int
	// BeforeKick, if set, runs before each user of a shutdown is handed
	// to a worker (MakeWayForKicks).
	BeforeKick func(context.Context)
	// ObserveHS, if set, is told of each request to the homeserver: its
	// name (leave, forget, ...), how long it took, retries included, and
	// its error (Metrics.ObserveHomeserver).
	ObserveHS func(request string, d time.Duration, err error)
	// ObserveOpen, if set, hears on each pass how many open tasks of the
	// rooms this instance runs tasks for are scheduled and active, and
	// how many of them were not updated for StaleTaskAge
	// (Metrics.ObserveOpenTasks).
	ObserveOpen func(scheduled, active, stale int)
	// ServerName decides which members are local.
	ServerName string
	// Owns tells whether this instance runs the tasks of a room (nil:
	// every room). With several instances, each runs the tasks of the
	// partitions it owns; a task whose partition moves away is stopped
	// and resumed by the new owner from its last TaskUpdate. Wake, if
	// set, is signalled when ownership changes, so that a new owner
	// starts at once instead of at the next poll.
	Owns func(roomID string) bool
	Wake <-chan struct{}

	mu         sync.Mutex
	running    map[string]context.CancelFunc
	nextExpire time.Time // when expire deletes again; Run's goroutine only
	nextStale  time.Time // when warnStale looks again; Run's goroutine only
	// purgeChecks counts the purge tasks' looks at their janitor's
	// progress and erasures that found them not done, so that a test can
	// wait for a look rather than for a time (PurgeChecks in
	// export_test.go).
	purgeChecks atomic.Int64
}

func (r *TaskRunner) owns(roomID string) bool { return r.Owns == nil || r.Owns(roomID) }

// CanStart reports whether a task of the room that is scheduled now may
// start soon: the room is another instance's (its runner may have a free
// slot), or this runner has one. With every slot taken a new task waits
// for one to end, as in Synapse.
func (r *TaskRunner) CanStart(roomID string) bool {
	if !r.owns(roomID) {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.running) < r.maxConcurrent()
}

// DefaultMaxConcurrent is MaxConcurrent when unset: Synapse's
// MAX_CONCURRENT_RUNNING_TASKS.
const DefaultMaxConcurrent = 5

// maxConcurrent is MaxConcurrent, or its default. The field is never
// written, since CanStart reads it from the API's goroutines.
func (r *TaskRunner) maxConcurrent() int {
	if r.MaxConcurrent <= 0 {
		return DefaultMaxConcurrent
	}
	return r.MaxConcurrent
}

// handles reports whether the runner runs tasks of this action.
func (r *TaskRunner) handles(action string) bool {
	switch action {
	case commands.ActionPurgeHistory, commands.ActionPurgeRoom:
		return true
	case commands.ActionShutdownAndPurgeRoom:
		return r.HS != nil
	}
	return false
}

// Run starts open tasks until ctx ends, then waits for the ones running.
func (r *TaskRunner) Run(ctx context.Context) {
	if r.PollInterval <= 0 {
		r.PollInterval = time.Second
	}
	if r.ExpireInterval <= 0 {
		r.ExpireInterval = time.Minute
	}
	r.mu.Lock() // CanStart reads it from the API's goroutines
	r.running = map[string]context.CancelFunc{}
	r.mu.Unlock()
	var wg sync.WaitGroup
	defer wg.Wait()
	t := time.NewTicker(r.PollInterval)
	defer t.Stop()
	for {
		tasks, err := r.Store.OpenTasks()
		if err != nil {
			r.Logger.Error("list open tasks", "err", err)
		}
		launchOrder(tasks)
		for _, task := range tasks {
			if !r.handles(task.Action) {
				continue
			}
			owned := r.owns(task.RoomID)
			r.mu.Lock()
			stop, running := r.running[task.ID]
			start := owned && !running && len(r.running) < r.maxConcurrent()
			var tctx context.Context
			if start {
				tctx, stop = context.WithCancel(ctx)
				r.running[task.ID] = stop
			}
			r.mu.Unlock()
			if running && !owned {
				r.Logger.Info("the room's partition moved to another instance: stopping its task there", "task", task.ID, "room_id", task.RoomID)
				stop()
			}
			if !start {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { r.mu.Lock(); delete(r.running, task.ID); r.mu.Unlock(); stop() }()
				if err := r.run(tctx, task); err != nil && tctx.Err() == nil {
					r.Logger.Warn("task interrupted; it resumes on the next pass", "task", task.ID, "err", err)
				}
			}()
		}
		if err == nil {
			r.observeOpen(tasks)
		}
		r.confirm(ctx)
		r.expire()
		r.warnStale(tasks)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.Wake:
		}
	}
}

// confirm publishes a TaskUpdate for each decision to confirm
// (Store.ToConfirm) of a task this runner is not running: one that
// repeats the status and error of a task refused by a purge_room's
// members check (its own, or a shutdown's purge step) or failed by a
// purge_history's forward-extremity guard, at once, and a "scheduled" one
// for a purge_history that passed its check and waits for a slot, once a
// later purge of its room has an erasure queued. That erasure takes the history those
// decisions were made on, and a reader that then finds it erased learns
// how they were decided from the log alone (projections applyPurgeRoom,
// applyPurgeHistory): a rebuild brought a refused purge back as
// scheduled, and it ran, or failed a purge_history that passed. The
// room's erasures wait for these updates (projections holding), and the
// projector applies them without changing the record. A task the runner
// starts has its own updates. The message ID is "<task id>-confirm", so
// that a publish repeated before it is applied (the next pass) is a
// duplicate the log drops. A waiting purge is confirmed only once an
// erasure waits for it, so a retention run's thousands of purges waiting
// for a slot cost no publish; an expired task is not confirmed, as the
// sweep deletes it before its confirmation would be applied (a dead
// letter then).
func (r *TaskRunner) confirm(ctx context.Context) {
	tasks, err := r.Store.ToConfirm(r.Now())
	if err != nil {
		r.Logger.Error("list the decisions to confirm", "err", err)
		return
	}
	for _, t := range tasks {
		r.mu.Lock()
		_, running := r.running[t.ID]
		r.mu.Unlock()
		if running || !r.owns(t.RoomID) {
			continue
		}
		data, err := bus.Encode(map[string]any{"task_id": t.ID, "status": t.Status, "error": t.Error, "ts": r.Now().UnixMilli()})
		if err != nil {
			r.Logger.Error("encode a refusal's confirmation", "task", t.ID, "err", err)
			continue
		}
		actx, cancel := context.WithTimeout(ctx, WaitForTimeout)
		_, err = r.Log.Append(actx, r.Subjects.Room(t.RoomID, commands.KindTask), t.ID+"-confirm", data)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				r.Logger.Warn("cannot confirm a refused purge in the log; trying again on the next pass", "task", t.ID, "err", err)
			}
			return
		}
	}
}

// expire deletes a batch of expired tasks from the projection when one is
// due: every ExpireInterval by Now, and on every pass while batches come
// back full (a backlog, as on the first run over a file from before the
// sweep), so that a pass never waits long for it. Each instance sweeps
// its own file, whichever rooms it owns.
func (r *TaskRunner) expire() {
	now := r.Now()
	if now.Before(r.nextExpire) {
		return
	}
	n, err := r.Store.ExpireTasks(now, projections.ExpireBatch)
	if err != nil {
		r.Logger.Error("delete expired tasks", "err", err)
	} else if n > 0 {
		r.Logger.Debug("deleted expired tasks", "tasks", n)
	}
	if err != nil || n < projections.ExpireBatch {
		// After an error (a full disk) too: the next try waits for the
		// interval rather than failing, and logging, on every pass.
		r.nextExpire = now.Add(r.ExpireInterval)
	}
}

// StaleTaskAge is how long an open task may go without an update before
// the runner warns about it, as Synapse's scheduler does (SYNAPSE.md 10):
// a task stuck on a homeserver that never answers, a purge whose janitor
// makes no progress.
const StaleTaskAge = 24 * time.Hour

// warnStale logs a warning for each open task of this instance's rooms
// not updated for StaleTaskAge, once an ExpireInterval (as Synapse, once
// a minute).
func (r *TaskRunner) warnStale(tasks []*commands.Task) {
	now := r.Now()
	if now.Before(r.nextStale) {
		return
	}
	r.nextStale = now.Add(r.ExpireInterval)
	for _, t := range tasks {
		if age := now.Sub(time.UnixMilli(t.UpdatedTS)); r.handles(t.Action) && r.owns(t.RoomID) && age >= StaleTaskAge {
			r.Logger.Warn("task not updated for 24 hours", "task", t.ID, "action", t.Action, "room_id", t.RoomID, "status", t.Status, "updated", time.UnixMilli(t.UpdatedTS).UTC(), "age", age.Round(time.Minute))
		}
	}
}

// observeOpen counts the open tasks of this instance's rooms for
// ObserveOpen: those it runs, as warnStale looks at them.
func (r *TaskRunner) observeOpen(tasks []*commands.Task) {
	if r.ObserveOpen == nil {
		return
	}
	now := r.Now()
	var scheduled, active, stale int
	for _, t := range tasks {
		if !r.handles(t.Action) || !r.owns(t.RoomID) {
			continue
		}
		if t.Status == commands.TaskActive {
			active++
		} else {
			scheduled++
		}
		if now.Sub(time.UnixMilli(t.UpdatedTS)) >= StaleTaskAge {
			stale++
		}
	}
	r.ObserveOpen(scheduled, active, stale)
}

// launchOrder sorts open tasks in the order they take free slots: the
// active ones first, so that a task that was running when the service
// stopped resumes before any other takes its slot, then the scheduled
// ones oldest first (by the log position of their command; task IDs are
// random letters and say nothing of age), as Synapse's scheduler
// launches them (SYNAPSE.md 10). Among the scheduled ones, those someone
// asked for (requested_by: the admin API's) go before the service's own
// background purges (retention, forgotten rooms), which name nobody:
// Synapse runs retention purges outside its scheduler, so a room
// deletion never waits behind them there, and here a retention run can
// leave thousands of purges waiting for a slot.
func launchOrder(tasks []*commands.Task) {
	rank := func(t *commands.Task) int {
		switch {
		case t.Status == commands.TaskActive:
			return 0
		case t.RequestedBy != "":
			return 1
		}
		return 2
	}
	slices.SortStableFunc(tasks, func(a, b *commands.Task) int {
		if c := cmp.Compare(rank(a), rank(b)); c != 0 {
			return c
		}
		return cmp.Compare(a.Seq, b.Seq)
	})
}

// run drives one task. A purge task goes active, then complete once the
// janitor has removed the purged rows and the log has erased their
// messages.
func (r *TaskRunner) run(ctx context.Context, task *commands.Task) error {
	// After a restart or a failover the projection may still be catching
	// up: the task may have moved on, or finished, in the log already.
	// Resume from the log's present, not from an old copy.
	last, err := r.Log.LastSeq(ctx)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, WaitForTimeout)
	err = r.Waiter.WaitFor(wctx, task.RoomID, last)
	cancel()
	if err != nil {
		return err
	}
	if task, err = r.Store.Task(task.ID); err != nil || task == nil || task.Finished() {
		return err
	}
	if task.Status == commands.TaskActive {
		// Started before a restart, a crash or a failover.
		r.Logger.Info("resuming task", "task", task.ID, "action", task.Action, "room_id", task.RoomID, "updates", task.Updates)
	}
	if task.Action == commands.ActionShutdownAndPurgeRoom {
		return r.runShutdown(ctx, task)
	}
	n := task.Updates
	if task.Status == commands.TaskScheduled {
		if err := r.update(ctx, task, &n, commands.TaskActive, task.Result, ""); err != nil {
			return err
		}
	}
	// The janitor's progress goes into the task record, at most once a
	// PurgeProgressEvery while it moves: a long purge shows how far it
	// has come, a short one adds no update.
	published, below := r.Now(), int64(-1)
	for {
		prog, err := r.Store.PurgeProgress(task.RoomID)
		if err != nil {
			return err
		}
		pending, err := r.Store.ErasuresPendingFor(task.RoomID)
		if err != nil {
			return err
		}
		if prog.Done && !pending {
			return r.update(ctx, task, &n, commands.TaskComplete, withProgress(task.Result, prog), "")
		}
		r.purgeChecks.Add(1)
		if prog.PurgedBelow != below && r.Now().Sub(published) >= PurgeProgressEvery {
			if err := r.update(ctx, task, &n, commands.TaskActive, withProgress(task.Result, prog), ""); err != nil {
				return err
			}
			published, below = r.Now(), prog.PurgedBelow
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// PurgeProgressEvery is how often at most a purge task's record takes
// the janitor's progress (a TaskUpdate with purged_below in its result).
const PurgeProgressEvery = time.Second

// withProgress is a purge task's result with the janitor's progress:
// purged_below, the depth below which the room's timeline rows are gone
// (projections.PurgeProgress; the room's cut-off, floor, once they all
// are).
func withProgress(result map[string]any, p projections.PurgeProgress) map[string]any {
	out := maps.Clone(result)
	if out == nil {
		out = map[string]any{}
	}
	out["purged_below"] = p.PurgedBelow
	return out
}

// update publishes the task's next TaskUpdate, the (*n+1)-th, and waits
// until it is applied. Its message ID is "<task id>-<*n+1>", so that a
// repeated publish after a crash is a duplicate the log drops; *n counts
// the updates the log took, and a run starts it at the task's applied
// Updates. So it moves only once the log has taken the update: a number
// skipped after a failed publish would make the applied count fall
// behind the IDs used, and the next run's updates would reuse IDs that
// the log then drops as duplicates (a task's completion among them).
func (r *TaskRunner) update(ctx context.Context, task *commands.Task, n *int, status string, result map[string]any, errText string) error {
	u := map[string]any{"task_id": task.ID, "status": status, "ts": r.Now().UnixMilli()}
	if result != nil {
		u["result"] = result
	}
	if errText != "" {
		u["error"] = errText
	}
	data, err := bus.Encode(u)
	if err != nil {
		return err
	}
	subject, id := r.Subjects.Room(task.RoomID, commands.KindTask), fmt.Sprintf("%s-%d", task.ID, *n+1)
	var seq uint64
	if l, ok := r.Log.(newAppender); ok {
		// An update the log already held under this number is another
		// instance's (an owner that paused past its lease and the new
		// one): this run's state is not the log's any more, so it stops
		// and the task resumes from the log, rather than acting on,
		// say, a list of members numbered otherwise than the recorded one.
		seq, err = l.AppendNew(ctx, subject, id, data)
		if errors.Is(err, bus.ErrDuplicate) {
			return fmt.Errorf("task %s: update %d was written by another run; resuming from the log: %w", task.ID, *n+1, err)
		}
	} else {
		seq, err = r.Log.Append(ctx, subject, id, data)
	}
	if err != nil {
		return err
	}
	*n++
	wctx, cancel := context.WithTimeout(ctx, WaitForTimeout)
	defer cancel()
	return r.Waiter.WaitFor(wctx, task.RoomID, seq)
}

// newAppender is a log that tells an append of a message ID it already
// held (bus.Log.AppendNew).
type newAppender interface {
	AppendNew(ctx context.Context, subject, msgID string, data []byte) (uint64, error)
}

// TaskLog is the room log as the task runner uses it: it appends
// TaskUpdates and knows where the log ends.
type TaskLog interface {
	Appender
	LastSeq(ctx context.Context) (uint64, error)
}

// MakeWayForReads is the log eraser's wait before each DeleteMsg
// (bus.Log.BeforeDelete; a compaction's steps wait in
// MakeWayForCompaction, through bus.Log.BeforeStep): while the
// API holds more requests than twice the CPUs, that is while reads queue
// for a CPU, it waits, at most LongestWaitForReads, so that a read load
// slows the erasure down but never stops it. Each DeleteMsg costs the
// server a write and an fsync, and the kernel about as much CPU again:
// erasing 2.6k messages a second took half of a 2-core machine, which
// overloaded reads that used 62% of it alone (scrollback bench --scenario
// purge; docs/BENCHMARKS.md). While requests wait for one of the API's
// workers it first backs off as the janitor does (bus.Load.Backoff), but
// for at most LongestWaitForReads too: the hook runs before every single
// DeleteMsg, and a second there would slow an erasure message by message
// (an external NATS) to a message a second.
func MakeWayForReads(load *bus.Load) func(context.Context) {
	return makeWay(load, LongestWaitForReads)
}

// MakeWayForCompaction is MakeWayForReads before each step of a
// compaction (bus.Log.BeforeStep: a count of a range, a batch of its
// reads, a subject purge of up to 10k messages), where the eraser backs off for up to
// LongestBackoff, as the janitor does: with the eraser's 20 ms there, the
// reads' p99 during the erasure of 1M messages was 2.81-2.93x their p99
// without a purge, against 1.52-2.48x (BENCHMARKS.md, session 15).
func MakeWayForCompaction(load *bus.Load) func(context.Context) {
	return makeWay(load, LongestBackoff)
}

func makeWay(load *bus.Load, backoff time.Duration) func(context.Context) {
	limit := 2 * runtime.GOMAXPROCS(0)
	return func(ctx context.Context) {
		load.Backoff(ctx, backoff)
		load.MakeWay(ctx, limit, LongestWaitForReads)
	}
}

// MakeWayForKicks is a shutdown's wait before each user it kicks, with
// the user's slot taken (TaskRunner.BeforeKick): at most
// LongestWaitForReads while reads queue for the API's workers
// (bus.Load.Backoff, as the eraser's first wait), and then at most
// LongestWaitForReads while the process's goroutines queue for a CPU
// (bus.Load.Calm, which needs bus.Load.WatchCPU running; it holds back
// for at most half of any second, bus.CPUHoldShare). Under reads that
// keep the workers busy all the time, a shutdown hands out at most 50
// users a second; with goroutines queued for a CPU all the time too,
// about 33 (the second wait in half of the users): 5,000 in 150 s, and a
// room of about 20,000 members or more would take longer than a v1
// deletion's request waits for its deletion (DeleteV1Timeout; the
// deletion goes on, and its status tells). A CPU queue that never drains
// alone slows it down by half at most. A 5,000-member
// shutdown hands each user's leave, forget and join to the homeserver, 16
// users at a time, and the homeserver publishes each of them to the log,
// where the projector applies it: reads of other rooms, at a tenth of the
// service's capacity, had a p99 4.4-8.9x that without the shutdown, and
// never queued for the workers, so the requests' count never slowed the
// kicks. With the wait for a CPU queue it was 2.2x, and the shutdown took
// as long (docs/BENCHMARKS.md, "A shutdown's kicks make way for reads").
func MakeWayForKicks(load *bus.Load) func(context.Context) {
	return func(ctx context.Context) {
		load.Backoff(ctx, LongestWaitForReads)
		load.Calm(ctx, LongestWaitForReads)
	}
}

// LongestWaitForReads bounds each of MakeWayForReads's two waits: under a
// read load that never lets up the eraser still erases 25 messages a
// second.
const LongestWaitForReads = 20 * time.Millisecond

// BackoffForReads is the janitor's wait before each of its steps
// (projections.Store.BeforeJanitor): while reads queue for the API's
// workers it waits until they have drained, for at most LongestBackoff
// (bus.Load.Backoff); then, while the process's goroutines queue for a
// CPU, for at most LongestWaitForReads (bus.Load.Calm), as a shutdown's
// kicks do. With that second wait, three alternating pairs of the 1M
// purge with reads at half the floor's throughput gave the reads a p99
// of 17.0, 22.3 and 12.3 ms during the purge, against 25.8, 40.9 and
// 21.4 ms without it, at 49.6k, 44.3k and 51.7k rows a second against
// 56.0k, 47.5k and 62.3k; in the mixed workload, 18.4, 18.7 and 14.4 ms
// against 23.2, 30.4 and 28.2 ms, at the same rows a second
// (docs/BENCHMARKS.md, "A shutdown's kicks make way for reads").
func BackoffForReads(load *bus.Load) func(context.Context) {
	return func(ctx context.Context) {
		load.Backoff(ctx, LongestBackoff)
		load.Calm(ctx, LongestWaitForReads)
	}
}

// LongestBackoff bounds one wait of the purges' background work while
// reads queue for the API's workers: reads that keep the workers busy
// for good slow a purge's janitor to a step a second (a row transaction
// of 1,000-2,000 rows, or a step of its unindex window: 170-270 steps
// per 200,000 rows, so at most 740-1,180 rows a second), and do not stop
// it, nor a compaction's steps (MakeWayForCompaction). The eraser backs
// off for less before each single message (MakeWayForReads).
const LongestBackoff = time.Second
