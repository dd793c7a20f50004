package projections

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/commands"
)

// Outcome kinds of one applied log message.
const (
	OutcomeApplied   = "applied"
	OutcomeDuplicate = "duplicate"
	OutcomeDead      = "dead_letter"
	OutcomeSkipped   = "skipped" // at or below the checkpoint: applied before
	OutcomeDropped   = "dropped" // below the room's purge cut-off (CONTRACT.md section 7)
)

// MaxDeadLetters bounds the dead-letter bucket; older records are dropped
// (they stay in the log, and in the operator's logs).
const MaxDeadLetters = 10000

// Outcome says what applying one log message did.
type Outcome struct {
	Seq    uint64
	RoomID string
	Kind   string
	Result string
	Reason string // for dead letters
	Task   *commands.Task
}

// ApplyBatch applies entries of one partition in order, in one bbolt
// transaction that also advances the partition's checkpoint, so each
// message's effects happen exactly once: entries at or below the
// checkpoint are skipped. An error means nothing was written.
func (s *Store) ApplyBatch(part int, entries []commands.LogEntry) ([]Outcome, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	var out []Outcome
	err := s.db.Update(func(tx *bolt.Tx) error {
		out = out[:0]
		cpb := tx.Bucket(bCP)
		var cp uint64
		if v := cpb.Get(partKey(part)); v != nil {
			cp = binary.BigEndian.Uint64(v)
		}
		last := cp
		for i := range entries {
			e := &entries[i]
			if e.Seq <= last {
				out = append(out, Outcome{Seq: e.Seq, RoomID: e.RoomID, Kind: e.Kind, Result: OutcomeSkipped})
				continue
			}
			o, err := applyEntry(tx, e)
			if err != nil {
				return fmt.Errorf("apply seq %d: %w", e.Seq, err)
			}
			if o.Result == OutcomeDead {
				if err := putDeadLetter(tx, e, o.Reason); err != nil {
					return err
				}
			}
			out = append(out, o)
			last = e.Seq
		}
		if last == cp {
			return nil
		}
		return cpb.Put(partKey(part), u64(last))
	})
	if err != nil {
		return nil, fmt.Errorf("projections: partition %d: %w", part, err)
	}
	for _, o := range out {
		if o.Task != nil && (o.Task.Action == commands.ActionPurgeHistory || o.Task.Action == commands.ActionPurgeRoom) {
			s.WakeJanitor()
			break
		}
	}
	return out, nil
}

// DeadLetterOne records e as a dead letter and advances the checkpoint
// past it: the fallback for an entry whose apply failed in a way that
// would otherwise stop its partition forever.
func (s *Store) DeadLetterOne(part int, e commands.LogEntry, reason string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		cpb := tx.Bucket(bCP)
		if v := cpb.Get(partKey(part)); v != nil && binary.BigEndian.Uint64(v) >= e.Seq {
			return nil
		}
		if err := putDeadLetter(tx, &e, reason); err != nil {
			return err
		}
		return cpb.Put(partKey(part), u64(e.Seq))
	})
}

func putDeadLetter(tx *bolt.Tx, e *commands.LogEntry, reason string) error {
	b := tx.Bucket(bDead)
	v, err := encodeMsgpack(DeadLetter{Seq: e.Seq, Subject: e.Subject, RoomID: e.RoomID, Reason: reason, LogTS: e.LogTS})
	if err != nil {
		return err
	}
	if err := b.Put(u64(e.Seq), v); err != nil {
		return err
	}
	meta := tx.Bucket(bMeta)
	var n uint64
	if v := meta.Get([]byte("deadcount")); v != nil {
		n = binary.BigEndian.Uint64(v)
	}
	n++
	if n > MaxDeadLetters {
		c := b.Cursor()
		if k, _ := c.First(); k != nil {
			if err := c.Delete(); err != nil {
				return err
			}
			n--
		}
	}
	return meta.Put([]byte("deadcount"), u64(n))
}

func applyEntry(tx *bolt.Tx, e *commands.LogEntry) (Outcome, error) {
	o := Outcome{Seq: e.Seq, RoomID: e.RoomID, Kind: e.Kind, Result: OutcomeApplied}
	if e.Err != nil {
		o.Result, o.Reason = OutcomeDead, e.Err.Error()
		return o, nil
	}
	var err error
	switch {
	case e.Event != nil:
		err = applyEvent(tx, e, &o)
	case e.Command != nil:
		err = applyCommand(tx, e, &o)
	case e.Update != nil:
		err = applyUpdate(tx, e, &o)
	default:
		o.Result, o.Reason = OutcomeDead, "empty log entry"
	}
	if errors.Is(err, commands.ErrMalformed) || errors.Is(err, commands.ErrDuplicateCommand) {
		o.Result, o.Reason = OutcomeDead, err.Error()
		return o, nil
	}
	return o, err
}

func applyEvent(tx *bolt.Tx, e *commands.LogEntry, o *Outcome) error {
	ev := e.Event
	events := tx.Bucket(bEvents)
	id := []byte(ev.EventID)
	if v := events.Get(id); v != nil && sameRoom(tx, v, e.RoomID) {
		loc, _ := parseLoc(v)
		if !loc.outlier || ev.Outlier {
			o.Result = OutcomeDuplicate
			return nil
		}
		// An event known only as an outlier joins the timeline when it
		// arrives again without `outlier`.
		if err := tx.Bucket(bOutliers).Delete(id); err != nil {
			return err
		}
	}
	room, err := ensureRoom(tx, e.RoomID)
	if err != nil {
		return err
	}
	if !ev.Outlier {
		meta, err := getRoomMeta(tx, room)
		if err != nil {
			return err
		}
		if ev.Depth < meta.Floor {
			o.Result, o.Reason = OutcomeDropped, fmt.Sprintf("depth %d is below the room's purge cut-off %d", ev.Depth, meta.Floor)
			return nil
		}
	}
	stream := int64(e.Seq)
	if ev.Backfilled {
		stream = -stream
	}
	received := ev.ReceivedTS
	if received == 0 {
		received = e.LogTS
	}
	row, err := newRow(ev, received)
	if err != nil {
		return fmt.Errorf("%w: %v", commands.ErrMalformed, err)
	}
	val := row.marshal()
	loc := evLoc{room: room, depth: ev.Depth, stream: stream, outlier: ev.Outlier}
	if err := events.Put(id, loc.bytes()); err != nil {
		return err
	}
	if ev.Outlier {
		return tx.Bucket(bOutliers).Put(id, val)
	}
	if err := tx.Bucket(bTimeline).Put(tlKey(room, ev.Depth, stream), val); err != nil {
		return err
	}
	if err := tx.Bucket(bRStream).Put(binary.BigEndian.AppendUint64(u64(room), order(stream)), u64(uint64(ev.Depth))); err != nil {
		return err
	}
	if !ev.Backfilled {
		k := binary.BigEndian.AppendUint64(u64(uint64(received)), e.Seq)
		if err := tx.Bucket(bReceived).Put(k, u64(room)); err != nil {
			return err
		}
	}
	if ev.Rejected || ev.SoftFailed {
		// Kept for the DAG and for admin reads, but neither state nor an
		// extremity.
		return nil
	}
	if err := indexEventRelations(tx, room, ev, row, stream); err != nil {
		return err
	}
	if ev.StateKey != nil {
		k := stateKeyAt(statePrefix(room, ev.Type, *ev.StateKey), ev.Depth, stream)
		v := binary.AppendUvarint(nil, uint64(len(row.Summary)))
		v = append(append(v, row.Summary...), ev.EventID...)
		if err := tx.Bucket(bState).Put(k, v); err != nil {
			return err
		}
	}
	return updateExtremities(tx, room, ev)
}

// updateExtremities keeps forward extremities (events no stored event
// names in prev_events) and backward extremities (prev_events the room
// does not hold) in step with a new timeline event.
func updateExtremities(tx *bolt.Tx, room uint64, ev *commands.Event) error {
	fwd, back, events, edges := tx.Bucket(bFwd), tx.Bucket(bBack), tx.Bucket(bEvents), tx.Bucket(bEdges)
	for _, p := range ev.PrevEvents {
		if err := edges.Put(edgeKey(room, p, ev.EventID), u64(uint64(ev.Depth))); err != nil {
			return err
		}
		pk := roomStrKey(room, p)
		if err := fwd.Delete(pk); err != nil {
			return err
		}
		// A parent known only under a room number that purge_room retired
		// is gone from this room's history (and from the log), as in a
		// rebuild: it is a backward extremity, whether or not the janitor
		// has dropped its rows yet.
		if loc, ok := parseLoc(events.Get([]byte(p))); (!ok || loc.room != room) && back.Get(pk) == nil {
			if err := back.Put(pk, u64(uint64(ev.Depth))); err != nil {
				return err
			}
		}
	}
	k := roomStrKey(room, ev.EventID)
	if back.Get(k) != nil {
		// Some stored event already names this one: it fills a gap and is
		// not a forward extremity.
		return back.Delete(k)
	}
	return fwd.Put(k, u64(uint64(ev.Depth)))
}

func applyCommand(tx *bolt.Tx, e *commands.LogEntry, o *Outcome) error {
	c := e.Command
	existing, err := getTask(tx, c.ID)
	if err != nil {
		return err
	}
	if existing != nil {
		return fmt.Errorf("%w: %s", commands.ErrDuplicateCommand, c.ID)
	}
	room, err := ensureRoom(tx, e.RoomID)
	if err != nil {
		return err
	}
	ts := c.TS
	if ts == 0 {
		ts = e.LogTS
	}
	if owner, ok := strings.CutSuffix(c.ID, "-purge"); ok && c.Action == commands.ActionPurgeRoom {
		parent, err := getTask(tx, owner)
		if err != nil {
			return err
		}
		if parent != nil && parent.Action == commands.ActionShutdownAndPurgeRoom && parent.RoomID == c.RoomID {
			return applyShutdownPurge(tx, room, c, parent, e, ts, o)
		}
	}
	t := &commands.Task{
		ID: c.ID, Action: c.Action, RoomID: c.RoomID, Params: c.Params, RequestedBy: c.RequestedBy,
		Status: commands.TaskScheduled, CreatedTS: ts, UpdatedTS: ts, Seq: e.Seq,
	}
	if err := c.Validate(); err != nil {
		t.Status, t.Error = commands.TaskFailed, err.Error()
	} else {
		switch c.Action {
		case commands.ActionForget:
			if err := tx.Bucket(bForgot).Put(roomStrKey(room, c.String("user_id")), u64(uint64(max(ts, 0)))); err != nil {
				return err
			}
			t.Status = commands.TaskComplete
		case commands.ActionPurgeHistory:
			if err := applyPurgeHistory(tx, room, c, t); err != nil {
				return err
			}
		case commands.ActionPurgeRoom:
			if room, err = applyPurgeRoom(tx, room, c, t, e.Seq, serverName(tx)); err != nil {
				return err
			}
		case commands.ActionShutdownAndPurgeRoom:
			// One deletion at a time per room: a second one applied while
			// another is open fails (the API refuses it up front; this
			// settles races between requests).
			if busy, err := deletionOpen(tx, room); err != nil {
				return err
			} else if busy {
				t.Status, t.Error = commands.TaskFailed, "Purge already in progress for "+c.RoomID
				break
			}
			// Step 1 of a shutdown: block, in the room's order, even for
			// rooms never seen (a pre-emptive block).
			if c.Bool("block", false) {
				if err := setBlock(tx, room, true, c.RequestedBy); err != nil {
					return err
				}
			}
		case commands.ActionBlockRoom:
			m, err := getRoomMeta(tx, room)
			if err != nil {
				return err
			}
			m.Blocked = c.Bool("block", false)
			m.BlockedBy = ""
			if m.Blocked {
				m.BlockedBy = c.RequestedBy
			}
			if err := putRoomMeta(tx, room, m); err != nil {
				return err
			}
			t.Status = commands.TaskComplete
		}
	}
	if err := putTask(tx, t); err != nil {
		return err
	}
	k := binary.BigEndian.AppendUint64(u64(room), uint64(ts))
	if err := tx.Bucket(bRoomTask).Put(append(k, c.ID...), nil); err != nil {
		return err
	}
	o.Task = t
	return nil
}

func applyUpdate(tx *bolt.Tx, e *commands.LogEntry, o *Outcome) error {
	u := e.Update
	t, err := getTask(tx, u.TaskID)
	if err != nil {
		return err
	}
	if t == nil {
		return fmt.Errorf("%w: task_id: unknown task %s", commands.ErrMalformed, u.TaskID)
	}
	if t.RoomID != e.RoomID {
		return fmt.Errorf("%w: task %s belongs to room %s", commands.ErrMalformed, u.TaskID, t.RoomID)
	}
	if u.TS == 0 {
		u.TS = e.LogTS
	}
	if err := t.Apply(u); err != nil {
		return fmt.Errorf("%w: %v", commands.ErrMalformed, err)
	}
	o.Task = t
	return putTask(tx, t)
}

// sameRoom reports whether an events-index entry belongs to the room's
// current number (entries of a room number dropped by purge_room do not).
func sameRoom(tx *bolt.Tx, locb []byte, roomID string) bool {
	loc, ok := parseLoc(locb)
	return ok && loc.room == roomNum(tx, roomID)
}

func setBlock(tx *bolt.Tx, room uint64, block bool, by string) error {
	m, err := getRoomMeta(tx, room)
	if err != nil {
		return err
	}
	m.Blocked, m.BlockedBy = block, ""
	if block {
		m.BlockedBy = by
	}
	return putRoomMeta(tx, room, m)
}

// applyShutdownPurge applies the purge_room that a shutdown publishes
// after its last homeserver reply (id "<delete id>-purge"): its outcome
// completes or fails the shutdown task, and it is not a task of its own
// (CONTRACT.md section 3).
func applyShutdownPurge(tx *bolt.Tx, room uint64, c *commands.Command, parent *commands.Task, e *commands.LogEntry, ts int64, o *Outcome) error {
	if parent.Finished() {
		return fmt.Errorf("%w: %s: its shutdown task is already %s", commands.ErrDuplicateCommand, c.ID, parent.Status)
	}
	probe := &commands.Task{Status: commands.TaskComplete}
	if _, err := applyPurgeRoom(tx, room, c, probe, e.Seq, serverName(tx)); err != nil {
		return err
	}
	parent.Status, parent.Error, parent.UpdatedTS = probe.Status, probe.Error, ts
	parent.Updates++
	o.Task = parent
	return putTask(tx, parent)
}

// deletionOpen reports whether the room has a scheduled or active
// shutdown_and_purge_room or purge_room task.
func deletionOpen(tx *bolt.Tx, room uint64) (bool, error) {
	prefix := u64(room)
	c := tx.Bucket(bRoomTask).Cursor()
	for k, _ := c.Seek(prefix); len(k) > 16 && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		t, err := getTask(tx, string(k[16:]))
		if err != nil {
			return false, err
		}
		if t != nil && !t.Finished() && (t.Action == commands.ActionShutdownAndPurgeRoom || t.Action == commands.ActionPurgeRoom) {
			return true, nil
		}
	}
	return false, nil
}
