package handlers

import (
	"context"
	"log/slog"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
)

// LogEraser erases messages from the room log.
type LogEraser interface {
	DeleteMsgs(ctx context.Context, seqs []uint64) error
	PurgeSubjectBelow(ctx context.Context, subject string, seq uint64) error
	PurgeSubjectInSteps(ctx context.Context, subject string, seq uint64) error
	EraseLateCopies(ctx context.Context, roomID string, seq uint64) error
	Compact(ctx context.Context, roomID string, seqs []uint64) error
}

// Eraser carries out the erasures purges queue: the event messages whose
// rows a purge deleted are deleted from the log too, so that a rebuild
// from the log does not bring them back and the log's space is reused
// (CONTRACT.md section 7).
type Eraser struct {
	Store    *projections.Store
	Log      LogEraser
	Subjects bus.Subjects
	// Compact erases a room's messages with one subject purge once its
	// purge's rows are all gone (bus.Log.Compact), copying the messages
	// the purge keeps; without it each message is deleted by itself,
	// with a write and an fsync each. Only a log that no other instance
	// reads may be compacted (the embedded server; see bus.Log.Compact).
	// It also lets a purge_room's erasure go in steps (step).
	Compact bool
	Logger  *slog.Logger
}

// Run works in batches until ctx ends.
func (r *Eraser) Run(ctx context.Context) {
	failures := 0
	for {
		did, err := r.step(ctx)
		if err == nil && did {
			failures = 0
			continue
		}
		if err != nil {
			failures++
			if ctx.Err() == nil {
				r.Logger.Warn("erasing purged events from the log failed; retrying", "err", err, "retry_in", eraserPause(failures))
			}
		} else {
			failures = 0
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(eraserPause(failures)):
		}
	}
}

// eraserPause is the eraser's pause before its next step after as many
// failed steps in a row: 200 ms when there was nothing to do, doubling
// with each failure up to 5 s. A step that fails after its log work (the
// projection's file full) does that work again, up to 1,000 deletes or a
// whole compaction, so a persistent failure must not repeat it five
// times a second.
func eraserPause(failures int) time.Duration {
	d := 200 * time.Millisecond
	for range min(failures, 5) {
		d *= 2
	}
	return min(d, 5*time.Second)
}

// step carries out one room's compaction, or one batch of single
// erasures and the queued room purges. It reports whether it did
// anything.
func (r *Eraser) step(ctx context.Context) (bool, error) {
	if r.Compact {
		re, ok, err := r.Store.RoomErasures()
		if err != nil {
			return false, err
		}
		if ok {
			if err := r.Log.Compact(ctx, re.RoomID, re.Seqs); err != nil {
				return false, err
			}
			return true, r.Store.RoomErasureDone(re)
		}
	}
	e, err := r.Store.PendingErasures(1000, !r.Compact)
	if err != nil || (len(e.Seqs) == 0 && len(e.Rooms) == 0) {
		return false, err
	}
	if err := r.Log.DeleteMsgs(ctx, e.Seqs); err != nil {
		return false, err
	}
	for room, seq := range e.Rooms {
		// The room's kept copies (bus.Log.Compact) made before its
		// purge_room go too, and first: a reader takes the room's
		// history for erased only once neither is left below seq
		// (projections.Projector.Erased). Between the two purges it
		// finds the event messages still there, and it has lost none
		// of them yet.
		//
		// With the embedded server (Compact: no other reader) each
		// subject goes in steps, which make way for reads: one purge of
		// a million messages holds a core of the server for a second.
		// With other instances on the log the event subject must go at
		// once: steps from the oldest would let a reader behind them lose
		// the middle of the room's history (its members' leaves) and still
		// find some of it below the purge_room, so that it checks the
		// members on a history with holes and refuses the purge.
		purge := r.Log.PurgeSubjectBelow
		if r.Compact {
			purge = r.Log.PurgeSubjectInSteps
		}
		if err := purge(ctx, r.Subjects.Room(room, commands.KindKept), seq); err != nil {
			return false, err
		}
		// Copies of the room's history that a compaction made after
		// the purge_room (it was applied while one ran) lie above seq.
		if err := r.Log.EraseLateCopies(ctx, room, seq); err != nil {
			return false, err
		}
		if err := purge(ctx, r.Subjects.Room(room, commands.KindEvent), seq); err != nil {
			return false, err
		}
	}
	return true, r.Store.ErasuresDone(e)
}
