package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
)

// RetentionJob is one of Synapse's retention purge jobs: every Interval,
// it purges the rooms whose max_lifetime lies in (Shortest, Longest]. A
// bound is open when it is 0 and not Has: Synapse's shortest_max_lifetime
// and longest_max_lifetime of 0 are bounds.
type RetentionJob struct {
	Interval                time.Duration
	Shortest, Longest       int64 // ms
	HasShortest, HasLongest bool
}

// inRange reports whether a room's max_lifetime is one the job handles.
func (j RetentionJob) inRange(maxMS int64) bool {
	if given(j.Shortest, j.HasShortest) && maxMS <= j.Shortest {
		return false
	}
	return !given(j.Longest, j.HasLongest) || maxMS <= j.Longest
}

// given reports whether a duration of the config is set: a value of 0 is
// unset unless has says it was given (Synapse tells 0 from none).
func given(ms int64, has bool) bool { return ms != 0 || has }

// Retention is the server's retention config (SYNAPSE.md 9). Reads use
// Enabled and Default to hide expired events; the RetentionRunner purges
// them.
type Retention struct {
	Enabled bool
	Default commands.RetentionPolicy
	// AllowedMin and AllowedMax clamp a room's max_lifetime when purging;
	// each is unset when it is 0 and not Has.
	AllowedMin, AllowedMax       int64
	HasAllowedMin, HasAllowedMax bool
	Jobs                         []RetentionJob
}

// purgeLifetime is the max_lifetime that a job purges a room with, as
// Synapse's purge_history_for_rooms_in_range computes it: the room's own
// max_lifetime (nil: none) selects the room by the job's range, the
// default policy's when it has none; a max_lifetime of 0 is then replaced
// by the default ("room.max_lifetime or default"), and the result is
// clamped to [allowed_lifetime_min, allowed_lifetime_max]. ok is false
// when the job leaves the room alone.
func (c *Retention) purgeLifetime(job RetentionJob, roomMax *int64) (maxMS int64, ok bool) {
	def, hasDef := c.Default.Max()
	switch {
	case roomMax != nil:
		if !job.inRange(*roomMax) {
			return 0, false
		}
		maxMS = *roomMax
		if maxMS == 0 {
			if !hasDef {
				return 0, false // Synapse fails on None here
			}
			maxMS = def
		}
	case hasDef && job.inRange(def):
		maxMS = def
	default:
		return 0, false
	}
	if given(c.AllowedMin, c.HasAllowedMin) {
		maxMS = max(maxMS, c.AllowedMin)
	}
	if given(c.AllowedMax, c.HasAllowedMax) {
		maxMS = min(maxMS, c.AllowedMax)
	}
	return maxMS, true
}

// olderThan is now - maxMS, saturated at the int64 range (a negative
// max_lifetime puts the cut-off after every event).
func olderThan(now, maxMS int64) int64 {
	ts := now - maxMS
	switch {
	case maxMS < 0 && ts < now:
		return math.MaxInt64
	case maxMS > 0 && ts > now:
		return math.MinInt64
	}
	return ts
}

// RetentionRunner purges history that is older than the rooms' retention
// policies, by publishing purge_history commands to the rooms' logs like
// every other change to history.
type RetentionRunner struct {
	Config Retention
	Store  *projections.Store
	Admin  *Admin
	Now    func() time.Time
	Logger *slog.Logger
	// Owns tells whether this instance acts for a room (nil: every
	// room); with several instances each purges the rooms of its
	// partitions.
	Owns func(roomID string) bool
}

// Run runs every job on its interval (the first run one interval after
// start, as Synapse does) until ctx ends.
func (r *RetentionRunner) Run(ctx context.Context) {
	if !r.Config.Enabled || len(r.Config.Jobs) == 0 {
		return
	}
	done := make(chan struct{})
	for _, job := range r.Config.Jobs {
		go func() {
			defer func() { done <- struct{}{} }()
			every(ctx, job.Interval, func() {
				n, err := r.RunJob(ctx, job)
				if err != nil {
					r.Logger.Warn("retention job failed for some rooms", "interval", job.Interval, "purged", n, "err", err)
				} else if n > 0 {
					r.Logger.Info("retention job purged rooms", "rooms", n, "interval", job.Interval)
				}
			})
		}()
	}
	for range r.Config.Jobs {
		<-done
	}
}

// every calls fn every interval (the first time one interval from now)
// until ctx ends.
func every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

type retentionTarget struct {
	roomID string
	maxMS  int64
}

// RunJob runs one job now and returns how many rooms it purged, and the
// errors of the rooms it could not purge (the others are purged all the
// same). A room is skipped when no local user is joined to it, when it
// has an active room deletion or a purge
// of the service's own still waiting for a slot (leaveAlone), when no
// event is older than its lifetime, or when its purge cut-off is already
// there: a run with nothing to purge costs one pass over the rooms'
// current state.
func (r *RetentionRunner) RunJob(ctx context.Context, job RetentionJob) (int, error) {
	// The rooms and their cut-offs come from the log as it is now, as
	// Synapse's come from every persisted event: a lagging projection
	// would miss a new room, cut a room at its latest applied event, or,
	// with another room behind, past events received before the cut-off
	// time. Events published from now on were received after it.
	if err := r.Admin.catchUp(ctx); err != nil {
		return 0, err
	}
	var targets []retentionTarget
	err := r.Store.ForEachRoom(func(roomID string, v *projections.RoomView) bool {
		if r.Owns != nil && !r.Owns(roomID) {
			return true
		}
		ret, _ := v.CurrentState(typeRetention, "")
		_, roomMax := commands.ParseRetentionSummary(ret.Summary)
		if maxMS, ok := r.Config.purgeLifetime(job, roomMax); ok {
			targets = append(targets, retentionTarget{roomID: roomID, maxMS: maxMS})
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	purged := 0
	var errs []error
	for _, t := range targets {
		if ctx.Err() != nil {
			return purged, ctx.Err()
		}
		// One room's failure does not stop the others (Synapse starts
		// each room's purge on its own): it is reported at the end, and
		// the room is tried again at the next run.
		if err := r.purgeRoom(ctx, t); errors.Is(err, errNothingToPurge) {
			continue
		} else if err != nil {
			errs = append(errs, fmt.Errorf("room %s: %w", t.roomID, err))
			continue
		}
		purged++
	}
	return purged, errors.Join(errs...)
}

var errNothingToPurge = errors.New("nothing to purge")

// purgeRoom publishes the purge of one room's history older than its
// lifetime, or returns errNothingToPurge.
func (r *RetentionRunner) purgeRoom(ctx context.Context, t retentionTarget) error {
	busy, err := r.leaveAlone(t.roomID)
	if err != nil {
		return err
	}
	if busy {
		return errNothingToPurge
	}
	depth, stream, ok, err := r.Store.CutoffByTS(t.roomID, olderThan(r.Now().UnixMilli(), t.maxMS))
	if err != nil {
		return err
	}
	if !ok {
		return errNothingToPurge
	}
	var floor, localBelow int64
	joined := false
	if err := r.Store.View(t.roomID, func(v *projections.RoomView) error {
		floor, localBelow = v.Floor(), v.DeleteLocalBelow()
		// A room the server has left is not purged: Synapse's jobs find
		// rooms through their current state, which it deletes when the
		// last local member leaves. Asked last: it reads our users.
		joined = v.LocalJoined(r.Admin.ServerName)
		return nil
	}); err != nil {
		return err
	}
	if !joined {
		return errNothingToPurge
	}
	if depth <= floor && depth <= localBelow {
		// Nothing older than the lifetime is left: an earlier purge
		// took it, local events included. (Below a purge without
		// delete_local_events, local events are kept as outliers,
		// which retention deletes, as Synapse's does.)
		return errNothingToPurge
	}
	token := fmt.Sprintf("t%d-%d", depth, stream)
	_, err = r.Admin.publish(ctx, t.roomID, commands.ActionPurgeHistory, map[string]any{"token": token, "delete_local_events": true}, "")
	return err
}

// leaveAlone reports whether a job leaves the room alone: it has an
// active deletion task (Synapse skips those), or a purge of the service's
// own (no requested_by) still waiting for a tasks.max_concurrent slot.
// That purge's cut-off already holds for reads; publishing another at
// every run would pile up tasks faster than slots free them, and the run
// after it starts moves the cut-off on.
func (r *RetentionRunner) leaveAlone(roomID string) (bool, error) {
	tasks, err := r.Store.RoomTasks(roomID)
	if err != nil {
		return false, err
	}
	for _, t := range tasks {
		switch {
		case t.Status == commands.TaskActive && (t.Action == commands.ActionPurgeRoom || t.Action == commands.ActionShutdownAndPurgeRoom):
			return true, nil
		case t.Status == commands.TaskScheduled && t.Action == commands.ActionPurgeHistory && t.RequestedBy == "":
			return true, nil
		}
	}
	return false, nil
}

// ForgottenRooms purges rooms that every local member has left and
// forgotten, Period after the last forget (Synapse's
// forgotten_room_retention_period), by publishing purge_room to the
// room's log.
type ForgottenRooms struct {
	Period     time.Duration
	ServerName string
	Store      *projections.Store
	Admin      *Admin
	Now        func() time.Time
	Logger     *slog.Logger
	// Owns tells whether this instance acts for a room (nil: every room).
	Owns func(roomID string) bool
}

// Run checks every min(Period, 1 h) until ctx ends.
func (f *ForgottenRooms) Run(ctx context.Context) {
	if f.Period <= 0 {
		return
	}
	every(ctx, max(min(f.Period, time.Hour), time.Second), func() {
		if n, err := f.RunOnce(ctx); err != nil {
			f.Logger.Warn("forgotten-room purge failed", "err", err)
		} else if n > 0 {
			f.Logger.Info("purged forgotten rooms", "rooms", n)
		}
	})
}

// RunOnce purges the rooms that are due now and returns how many.
func (f *ForgottenRooms) RunOnce(ctx context.Context) (int, error) {
	// From the log as it is now, as RetentionRunner.RunJob does: a new
	// owner whose projection lags after a failover would not see the
	// purge_room the last owner just published, and publish another.
	if err := f.Admin.catchUp(ctx); err != nil {
		return 0, err
	}
	rooms, err := f.Store.ForgottenRooms(f.ServerName, f.Now().UnixMilli(), f.Period.Milliseconds())
	if err != nil {
		return 0, err
	}
	purged := 0
	var errs []error
	for _, room := range rooms {
		if ctx.Err() != nil {
			return purged, ctx.Err()
		}
		if f.Owns != nil && !f.Owns(room) {
			continue
		}
		// One room's failure (its command rejected, say) does not stop
		// the others, as in RetentionRunner.RunOnce: the room is still
		// forgotten, and tried again at the next run.
		if _, err := f.Admin.publish(ctx, room, commands.ActionPurgeRoom, map[string]any{"force": false}, ""); err != nil {
			errs = append(errs, fmt.Errorf("room %s: %w", room, err))
			continue
		}
		purged++
	}
	return purged, errors.Join(errs...)
}
