package projections

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
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
	OutcomePassed    = "passed"  // a kept copy where it stands: it took effect at its original sequence
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
	// Finished: this message finished Task (it failed, completed or was
	// cancelled here), which a repeated final update does not.
	Finished bool
	// Replayed: applied to a new file that the projector builds from the
	// log (a new instance, a deleted or torn file), from the part of the
	// log that was there when it started: the message took effect when it
	// was first applied, perhaps long ago.
	Replayed bool
}

// ApplyBatch applies entries of one partition in order, in one bbolt
// transaction that also advances the partition's checkpoint, so each
// message's effects happen exactly once: entries at or below the
// checkpoint are skipped. An error means nothing was written.
func (s *Store) ApplyBatch(part int, entries []commands.LogEntry) ([]Outcome, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	b := prepareBatch(part, entries)
	if _, err := s.applyBatches([]*partBatch{b}); err != nil {
		return nil, err
	}
	return b.out, nil
}

// partBatch is one partition's batch on its way to the writer: its
// entries, what of their apply needs no transaction (prepared before the
// writer is taken, by the partition's own goroutine) and, once committed,
// their outcomes.
type partBatch struct {
	part    int
	entries []commands.LogEntry
	prep    []prepared // by entry; zero for entries other than events
	out     []Outcome
}

// messages counts the entries of batches.
func messages(bs []*partBatch) int {
	n := 0
	for _, b := range bs {
		n += len(b.entries)
	}
	return n
}

// prepared is an event's stored row, built outside the transaction, as
// bbolt has one writer: encoding the content and parsing its relation
// took 2.7 s of the 18.5 s that a catch-up of 1M events spent applying
// them in transactions.
type prepared struct {
	row *Row
	val []byte // row.marshal()
	err error  // newRow's: the event is malformed
}

// prepareBatch builds the rows of a batch's events. It is pure: a batch
// may be prepared once and applied (and retried) any number of times.
func prepareBatch(part int, entries []commands.LogEntry) *partBatch {
	b := &partBatch{part: part, entries: entries, prep: make([]prepared, len(entries))}
	for i := range entries {
		e, p := &entries[i], &b.prep[i]
		if e.Event == nil || e.Err != nil {
			continue
		}
		if p.row, p.err = newRow(e.Event, receivedTS(e)); p.err == nil {
			p.val = p.row.marshal()
		}
	}
	return b
}

// receivedTS is when the event reached the homeserver: as published, or
// else when it reached the log.
func receivedTS(e *commands.LogEntry) int64 {
	if e.Event.ReceivedTS != 0 {
		return e.Event.ReceivedTS
	}
	return e.LogTS
}

// applyBatches applies batches of distinct partitions in one transaction
// (a group commit: the partitions share its page writes and its fsync).
// Each batch reads and advances its own checkpoint, so a batch, or a part
// of one, that was committed before is skipped. An error means nothing
// was written; it names the partition whose batch failed, if one did.
// written is the number of pages its commit wrote (bbolt holds a buffer
// for each until the commit ends: what a group's memory grows with).
func (s *Store) applyBatches(bs []*partBatch) (written int, err error) {
	applied := false
	stop := func() {}
	err = s.update(func(tx *bolt.Tx) error {
		if err := (&applier{tx: tx}).apply(bs); err != nil {
			return err
		}
		applied = true
		// What is left is bbolt's commit: writing the pages, then
		// syncing them.
		stop = s.writeback.start(messages(bs))
		// The commit allocates the pages it writes; its handlers run
		// once that is done.
		tx.OnCommit(func() {
			st := tx.Stats()
			written = int(st.GetPageCount())
		})
		return nil
	})
	stop()
	if err != nil {
		if applied {
			parts := make([]int, len(bs))
			for i, b := range bs {
				parts[i] = b.part
			}
			return written, fmt.Errorf("projections: commit of partitions %v: %w", parts, err)
		}
		// Before the commit: apply's error names its partition and
		// message, and the package where the package made it (a corrupt
		// row), which it would name twice here.
		return written, err
	}
	wakeJanitor, wakeTasks := false, false
	var changed map[string]bool // rooms whose tasks were written
	for _, b := range bs {
		for _, o := range b.out {
			if o.Task == nil {
				continue
			}
			if changed == nil {
				changed = map[string]bool{}
			}
			changed[o.Task.RoomID] = true
			if o.Task.Action == commands.ActionPurgeHistory || o.Task.Action == commands.ActionPurgeRoom {
				wakeJanitor = true
			}
			if o.Task.Status == commands.TaskScheduled || o.Task.Finished() {
				// A new task may start, or one may take a freed slot.
				wakeTasks = true
			}
		}
	}
	if changed != nil {
		s.tasksChanged(changed)
	}
	if wakeJanitor {
		s.WakeJanitor()
	}
	if wakeTasks {
		select {
		case s.newTasks <- struct{}{}:
		default:
		}
	}
	return written, nil
}

// applier applies entries in one write transaction. It remembers the
// room numbers and purge floors it has looked up, which only commands
// change (purge_room renumbers a room, purge_history raises its floor):
// applying a command forgets them.
type applier struct {
	tx       *bolt.Tx
	rooms    map[string]uint64 // room ID -> number
	floors   map[uint64]int64  // room number -> RoomMeta.Floor
	received []received        // for putReceived
	last     chainLink         // the last timeline event applied
}

// chainLink is the last timeline event the applier applied. A room's
// entries are applied one after the other, and nearly every event names
// its room's previous one as its parent, so the next event usually finds
// its parent here: no lookup by ID in the events index (a random key),
// and, while the link's forward-extremity entry is held back (fwd), no
// write of that entry followed by its deletion. Catching up, that was
// two to three of the ten-odd B-tree searches of an event.
type chainLink struct {
	room  uint64
	id    string
	depth int64
	fwd   bool // its forward-extremity entry is not written yet
}

// entryRef is an entry of a group, by batch and index, with the number
// its room had when the group began (0 for a room not yet known).
type entryRef struct {
	batch, i int
	room     uint64
}

// apply applies the batches' entries that are above their partitions'
// checkpoints and advances the checkpoints. Each room's entries are
// applied in log order, and the rooms one after the other, by room number
// (rooms not yet known last): a room's projection does not depend on
// other rooms' messages, whose order between partitions was never fixed
// either. Almost every key an event writes starts with its room's number,
// so a group then goes through each bucket in key order, where bbolt's
// search from the root for every key finds the same pages again, rather
// than jumping between pages at every event: in a catch-up of 1M events,
// this took 15% off the time spent applying them.
// appendFill is the FillPercent of the buckets the applier appends to.
const appendFill = 0.9

func (a *applier) apply(bs []*partBatch) error {
	var refs []entryRef
	cps, lasts := make([]uint64, len(bs)), make([]uint64, len(bs))
	cpb := a.tx.Bucket(bCP)
	// These buckets are appended to: a room's timeline and stream order
	// at the room's end, received at the end. bbolt splits a full leaf
	// at FillPercent (default half), which leaves every appended leaf
	// half empty for good; 0.9 packs them. After a catch-up of 1M events
	// in 10k rooms the file was 0.77x the size (670-696 against 880-884
	// MiB), applying as fast and writing as many bytes.
	for _, name := range [][]byte{bTimeline, bRStream, bReceived} {
		a.tx.Bucket(name).FillPercent = appendFill
	}
	for bi, b := range bs {
		for _, other := range bs[:bi] {
			if other.part == b.part {
				return fmt.Errorf("partition %d: two batches in one group", b.part)
			}
		}
		if v := cpb.Get(partKey(b.part)); v != nil {
			cps[bi] = binary.BigEndian.Uint64(v)
		}
		last := cps[bi]
		b.out = make([]Outcome, len(b.entries))
		for i := range b.entries {
			e := &b.entries[i]
			if e.Seq <= last {
				b.out[i] = Outcome{Seq: e.Seq, RoomID: e.RoomID, Kind: e.Kind, Result: OutcomeSkipped}
				continue
			}
			last = e.Seq
			var room uint64
			if e.Err == nil {
				room = a.roomNum(e.RoomID)
			}
			refs = append(refs, entryRef{batch: bi, i: i, room: room})
		}
		lasts[bi] = last
	}
	slices.SortFunc(refs, func(x, y entryRef) int {
		if x.room != y.room {
			return cmp.Compare(x.room-1, y.room-1) // rooms not yet known last
		}
		if x.room == 0 {
			if c := strings.Compare(bs[x.batch].entries[x.i].RoomID, bs[y.batch].entries[y.i].RoomID); c != 0 {
				return c
			}
		}
		return cmp.Or(cmp.Compare(x.batch, y.batch), cmp.Compare(x.i, y.i)) // a room's entries in log order
	})
	for _, r := range refs {
		b := bs[r.batch]
		e := &b.entries[r.i]
		o, err := a.applyEntry(e, &b.prep[r.i])
		if err != nil {
			return fmt.Errorf("partition %d: apply seq %d: %w", b.part, e.Seq, err)
		}
		if o.Result == OutcomeDead {
			if err := putDeadLetter(a.tx, e, o.Reason); err != nil {
				return fmt.Errorf("partition %d: %w", b.part, err)
			}
		}
		b.out[r.i] = o
	}
	if err := a.releaseLink(chainLink{}); err != nil {
		return err
	}
	for bi, b := range bs {
		if lasts[bi] != cps[bi] {
			if err := cpb.Put(partKey(b.part), u64(lasts[bi])); err != nil {
				return err
			}
		}
	}
	return a.putReceived()
}

// dropPendingReceived forgets the received entry of the room's event at
// stream if this transaction applied the event, and so has not written
// its entry yet (putReceived writes them at its end), and reports whether
// it did. An outlier that leaves the outliers in the transaction that
// applied it (it joins the timeline, or a copy replaces it) has no entry
// in the bucket for dropReceived to delete yet; kept, it would outlive
// the event. Rare, so a walk back from the latest entry.
func (a *applier) dropPendingReceived(room uint64, stream int64) bool {
	if stream <= 0 {
		return false
	}
	for i := len(a.received) - 1; i >= 0; i-- {
		if r := a.received[i]; r.seq == uint64(stream) && r.room == room {
			a.received = slices.Delete(a.received, i, i+1)
			return true
		}
	}
	return false
}

// received is an entry of the received bucket.
type received struct {
	ts, seq, room uint64
}

// putReceived writes the received bucket's entries of the transaction's
// events, in key order. Its keys grow with the log, so in order they are
// appended to the bucket's last page; in the order of the partitions,
// whose batches of a group commit overlap in the log, each would be
// inserted into the middle of that page's node, which bbolt only splits
// at the commit: a copy of the whole node per event, which made group
// commits of 10k messages no faster than a transaction per batch.
func (a *applier) putReceived() error {
	if len(a.received) == 0 {
		return nil
	}
	slices.SortFunc(a.received, func(x, y received) int {
		return cmp.Or(cmp.Compare(x.ts, y.ts), cmp.Compare(x.seq, y.seq))
	})
	b := a.tx.Bucket(bReceived)
	for _, r := range a.received {
		if err := b.Put(binary.BigEndian.AppendUint64(u64(r.ts), r.seq), u64(r.room)); err != nil {
			return err
		}
	}
	return nil
}

// DeadLetterOne records e as a dead letter and advances the checkpoint
// past it: the fallback for an entry whose apply failed in a way that
// would otherwise stop its partition forever.
func (s *Store) DeadLetterOne(part int, e commands.LogEntry, reason string) error {
	return s.update(func(tx *bolt.Tx) error {
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

func (a *applier) applyEntry(e *commands.LogEntry, p *prepared) (Outcome, error) {
	o := Outcome{Seq: e.Seq, RoomID: e.RoomID, Kind: e.Kind, Result: OutcomeApplied}
	if e.Err != nil {
		o.Result, o.Reason = OutcomeDead, e.Err.Error()
		return o, nil
	}
	var err error
	switch {
	case e.Kind == commands.KindKept:
		o.Result = OutcomePassed
	case e.Event != nil:
		err = a.applyEvent(e, p, &o)
	case e.Command != nil:
		if err = a.forgetRooms(); err == nil {
			err = applyCommand(a.tx, e, &o)
		}
	case e.Update != nil:
		if err = a.forgetRooms(); err == nil {
			err = applyUpdate(a.tx, e, &o)
		}
	default:
		o.Result, o.Reason = OutcomeDead, "empty log entry"
	}
	if errors.Is(err, commands.ErrMalformed) || errors.Is(err, commands.ErrDuplicateCommand) {
		o.Result, o.Reason = OutcomeDead, err.Error()
		return o, nil
	}
	return o, err
}

// forgetRooms drops the remembered room numbers and floors, and writes
// the forward extremity held back (commands read them, and purge_room
// renumbers rooms).
func (a *applier) forgetRooms() error {
	a.rooms, a.floors = nil, nil
	return a.releaseLink(chainLink{})
}

// releaseLink writes the held-back forward extremity of the last link,
// if any, and makes next the last link.
func (a *applier) releaseLink(next chainLink) error {
	l := a.last
	a.last = next
	if !l.fwd {
		return nil
	}
	return a.tx.Bucket(bFwd).Put(roomStrKey(l.room, l.id), u64(uint64(l.depth)))
}

// roomNum is roomNum, remembered (0 if the room is unknown).
func (a *applier) roomNum(roomID string) uint64 {
	n, ok := a.rooms[roomID]
	if !ok {
		if n = roomNum(a.tx, roomID); n != 0 {
			a.rememberRoom(roomID, n)
		}
	}
	return n
}

// ensureRoom is ensureRoom, remembered.
func (a *applier) ensureRoom(roomID string) (uint64, error) {
	if n := a.roomNum(roomID); n != 0 {
		return n, nil
	}
	n, err := ensureRoom(a.tx, roomID)
	if err != nil {
		return 0, err
	}
	a.rememberRoom(roomID, n)
	return n, nil
}

func (a *applier) rememberRoom(roomID string, n uint64) {
	if a.rooms == nil {
		a.rooms = map[string]uint64{}
	}
	a.rooms[roomID] = n
}

// floor is the room's RoomMeta.Floor, remembered.
func (a *applier) floor(room uint64) (int64, error) {
	if f, ok := a.floors[room]; ok {
		return f, nil
	}
	meta, err := getRoomMeta(a.tx, room)
	if err != nil {
		return 0, err
	}
	if a.floors == nil {
		a.floors = map[uint64]int64{}
	}
	a.floors[room] = meta.Floor
	return meta.Floor, nil
}

func (a *applier) applyEvent(e *commands.LogEntry, p *prepared, o *Outcome) error {
	tx, ev := a.tx, e.Event
	events := tx.Bucket(bEvents)
	room, err := a.ensureRoom(e.RoomID)
	if err != nil {
		return err
	}
	id := evKey(room, ev.EventID)
	was, known := parseLoc(room, events.Get(id))
	if known && ev.Outlier {
		if known, err = a.outlastsPurge(room, id, was); err != nil {
			return err
		}
	}
	if known && (!was.outlier || ev.Outlier) {
		// Another message of a stored event (published again after
		// JetStream's de-duplication window, or an outlier copy of it):
		// it carries the event too, so a purge that deletes the event
		// erases it as well. Copies of an outlier are recorded too: the
		// outlier may join the timeline and be purged.
		o.Result = OutcomeDuplicate
		if !ev.Outlier {
			// A copy from below the floor of a row the janitor has not
			// made an outlier yet (or never will: a rebuild runs it at
			// the end) ends the row's gap as a dropped copy of the
			// outlier would (below).
			floor, err := a.floor(room)
			if err != nil {
				return err
			}
			if was.depth < floor { // the stored event's depth, whatever the copy claims
				// Unless the purge deletes the stored row: then the copy
				// is erased with it (its extra message), and a rebuild
				// from the erased log never sees it (found by a
				// helper's review).
				meta, err := getRoomMeta(tx, room)
				if err != nil {
					return err
				}
				if !meta.purged(tx, was, rowAt(tx.Bucket, id, was)) {
					if err := endBelowFloor(tx, id, e.Seq); err != nil {
						return err
					}
				}
			}
		}
		return addExtraSeq(tx, room, ev.EventID, e.Seq)
	}
	if !ev.Outlier {
		floor, err := a.floor(room)
		if err != nil {
			return err
		}
		if ev.Depth < floor {
			// An outlier a purge kept stays one.
			o.Result, o.Reason = OutcomeDropped, fmt.Sprintf("depth %d is below the room's purge cut-off %d", ev.Depth, floor)
			// A kept event may name a purged parent from above the
			// floor (a merge names parents at any depth), which makes
			// the parent a backward extremity at the child's depth: a
			// read near the floor asks federation for it once, and what
			// comes back lands here. It is below the floor for good, so
			// it is no backward extremity any more, and no read asks
			// for it again. The dropped message stays in the log, so a
			// rebuild does the same.
			return endBelowFloor(tx, id, e.Seq)
		}
	}
	if p.err != nil {
		// Before any write: the message becomes a dead letter and the
		// transaction goes on.
		return fmt.Errorf("%w: %v", commands.ErrMalformed, p.err)
	}
	if known {
		// An event known only as an outlier joins the timeline when it
		// arrives again without `outlier`. The outlier's message stays an
		// extra one of the event's; its received entry goes, as the
		// timeline row has its own.
		if err := a.dropOutlierReceived(room, id, was); err != nil {
			return err
		}
		if err := tx.Bucket(bOutliers).Delete(id); err != nil {
			return err
		}
		if err := addExtraSeq(tx, room, ev.EventID, logSeq(was.stream)); err != nil {
			return err
		}
		if ev.StateKey != nil && !ev.Rejected && !ev.SoftFailed {
			// Its state entry moves to the timeline row's position
			// (below), unless the timeline copy is no state, or writes
			// no entry of its own: a rejected copy (which Synapse's
			// _update_outliers_txn ignores) or a soft-failed one leaves
			// the state the outlier was part of as it was.
			if err := tx.Bucket(bState).Delete(stateKeyAt(statePrefix(room, ev.Type, *ev.StateKey), was.depth, was.stream)); err != nil {
				return err
			}
		}
	}
	stream := int64(e.Seq)
	if ev.Backfilled {
		stream = -stream
	}
	row, val := p.row, p.val
	loc := evLoc{room: room, depth: ev.Depth, stream: stream, outlier: ev.Outlier}
	if err := events.Put(id, loc.bytes()); err != nil {
		return err
	}
	if !known && !ev.Rejected && ev.StateKey != nil && ev.Type == "m.room.member" {
		// A membership of a user who forgot the room, stored after the
		// forget (a rejoin, a leave, an invite), ends it: Synapse's
		// did_forget is false once the user has a membership row the
		// forget did not mark ("Returns False if they have since
		// re-joined"). Every event stored gets that row
		// (_store_room_members_txn), outliers and soft-failed ones too,
		// rejected ones not; an outlier that joins the timeline later
		// (known) gets none: its row is the outlier's, which a forget
		// after it marked.
		if err := tx.Bucket(bForgot).Delete(roomStrKey(room, *ev.StateKey)); err != nil {
			return err
		}
	}
	if !ev.Backfilled {
		// Outliers too: Synapse's purge_up_to_ts counts every event
		// received at or after ts (SYNAPSE.md 6.1).
		a.received = append(a.received, received{ts: uint64(receivedTS(e)), seq: e.Seq, room: room})
	}
	if ev.Outlier {
		if ev.StateKey != nil && !ev.Rejected && !ev.SoftFailed {
			// State, though off the timeline: a room joined over
			// federation holds the state the join brought (the create,
			// the power levels, the other members) as outliers, and
			// Synapse builds the join's state from them. Its version
			// decides how reads prune, its power levels which
			// redactions apply, its history visibility what a member
			// sees.
			if err := putState(tx, room, ev, row.Summary, stream); err != nil {
				return err
			}
		}
		return tx.Bucket(bOutliers).Put(id, val)
	}
	if err := tx.Bucket(bTimeline).Put(tlKey(room, ev.Depth, stream), val); err != nil {
		return err
	}
	if err := joinRelated(tx, room, ev.EventID, ev.Depth, stream); err != nil {
		return err
	}
	if err := tx.Bucket(bRStream).Put(binary.BigEndian.AppendUint64(u64(room), order(stream)), u64(uint64(ev.Depth))); err != nil {
		return err
	}
	if ev.Rejected {
		// Kept for the DAG and for admin reads, but neither state nor an
		// extremity.
		return nil
	}
	if ev.SoftFailed {
		// Neither state nor a forward extremity, but persisted as any
		// other event in Synapse, whose _update_backward_extremeties
		// leaves out only rejected events: it ends its own gap, and its
		// parents not held begin one.
		return a.extremities(room, ev, false)
	}
	if err := indexEventRelations(tx, room, ev, row, stream); err != nil {
		return err
	}
	if ev.StateKey != nil {
		if err := putState(tx, room, ev, row.Summary, stream); err != nil {
			return err
		}
	}
	if ev.Backfilled {
		// Synapse computes a room's new forward extremities only for
		// events that are not backfilled (persist_events.py
		// _persist_event_batch, `if not backfilled`): a backfilled event
		// neither becomes one nor ends its parents'. It still ends its
		// own gap and begins its parents'.
		return a.extremities(room, ev, false)
	}
	return a.updateExtremities(room, ev)
}

// putState records the state event ev at its position: its summary
// (commands.StateSummary) and ID; a membership's user goes in the
// srvmembers index too.
func putState(tx *bolt.Tx, room uint64, ev *commands.Event, summary string, stream int64) error {
	k := stateKeyAt(statePrefix(room, ev.Type, *ev.StateKey), ev.Depth, stream)
	v := binary.AppendUvarint(nil, uint64(len(summary)))
	v = append(append(v, summary...), ev.EventID...)
	if err := tx.Bucket(bState).Put(k, v); err != nil {
		return err
	}
	if ev.Type == "m.room.member" {
		return indexMember(tx, room, *ev.StateKey)
	}
	return nil
}

// namedByLiveChild reports whether a timeline event that is not
// soft-failed names the event of key (its evKey) among its parents, by
// the edges from its children: a parent the room does not hold always
// gets one (updateExtremities). Without any edge it reports true, as
// before soft-failed events named parents.
func namedByLiveChild(tx *bolt.Tx, room uint64, key []byte) (bool, error) {
	prefix := append(bytes.Clone(key), 0)
	events := tx.Bucket(bEvents)
	c := tx.Bucket(bEdges).Cursor()
	edges := 0
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		edges++
		child := k[len(prefix):]
		loc, ok := parseLoc(room, events.Get(roomStrKey(room, string(child))))
		if !ok || loc.outlier {
			continue
		}
		val := tx.Bucket(bTimeline).Get(tlKey(room, loc.depth, loc.stream))
		if val == nil {
			continue // its row is gone: a purge's janitor on its way
		}
		h, err := readPurgeHead(val)
		if err != nil {
			return false, err
		}
		if h.flags&(flagSoftFailed|flagRejected) == 0 {
			return true, nil
		}
	}
	return edges == 0, nil
}

// endBelowFloor ends the backward extremity of an event whose copy came
// back from below the room's floor (key is its evKey; seq the copy's log
// sequence): its entry goes, and the event is marked ended at seq
// (bEnded), so that no later pass of the janitor (markExtremity,
// settleBackward) makes it one again from a child logged before the copy.
// A child logged after it opens the gap again, live as in a rebuild; and
// if a later purge deletes the event and erases the copy with it (an
// extra message), the janitor drops the mark (takeExtraSeqs), as a
// rebuild from the erased log never sees the copy. Whether the event was
// an outlier, a row the janitor had not reached, or unknown when its copy
// came, live and a rebuild then agree. Found by three helpers' reviews.
func endBelowFloor(tx *bolt.Tx, key []byte, seq uint64) error {
	if err := tx.Bucket(bBack).Delete(key); err != nil {
		return err
	}
	// The edges from its children stay: the mark makes the janitor pass
	// over those logged before seq, and if a later purge deletes the
	// event and erases this copy with it (an extra message), the janitor
	// drops the mark (takeExtraSeqs) and they count again, as in a
	// rebuild from the erased log.
	return tx.Bucket(bEnded).Put(key, u64(seq))
}

// dropOutlierReceived deletes the received entry of the room's outlier
// at was, stored under id, which is leaving the outliers.
func (a *applier) dropOutlierReceived(room uint64, id []byte, was evLoc) error {
	if a.dropPendingReceived(room, was.stream) {
		return nil
	}
	val := a.tx.Bucket(bOutliers).Get(id)
	if val == nil {
		return nil
	}
	h, err := readPurgeHead(val)
	if err != nil {
		return nil // a corrupt row: its entry stays, as the janitor leaves it
	}
	return newPurgeTx(a.tx, room, 0).dropReceived(&h, was.stream)
}

// outlastsPurge reports whether the stored copy of an event (at was)
// that arrives again as an outlier stays: it does unless the room's
// purges delete it (RoomMeta.purged). An outlier copy logged after the
// purge is then stored as a new outlier, as it is once the janitor has
// deleted the stored copy, and as Synapse, its purge done, stores it: a
// timeline row is left to the janitor (which deletes only the index
// entry that points at it), and an outlier the sweep would delete is
// deleted now (deleteOutlier), since the new one takes its keys.
func (a *applier) outlastsPurge(room uint64, id []byte, was evLoc) (bool, error) {
	if floor, err := a.floor(room); err != nil || was.depth >= floor {
		return true, err
	}
	meta, err := getRoomMeta(a.tx, room)
	if err != nil {
		return true, err
	}
	val := rowAt(a.tx.Bucket, id, was)
	if val == nil || !meta.purged(a.tx, was, val) {
		return true, nil
	}
	if !was.outlier {
		return false, nil
	}
	h, err := readPurgeHead(val)
	if err != nil {
		return true, err
	}
	a.dropPendingReceived(room, was.stream)
	j := newPurgeTx(a.tx, room, meta.Floor)
	erase, err := j.deleteOutlier(meta, bytes.Clone(id), was, &h, nil)
	if err != nil {
		return true, err
	}
	if err := j.queueErasures(erase); err != nil {
		return true, err
	}
	return false, putRoomMeta(a.tx, room, meta)
}

// addExtraSeq records seq as a log message of the room's event id other
// than its row's (extraSeqKey), and marks the room as having such
// messages, so that the janitor of a room without any skips the look-up.
func addExtraSeq(tx *bolt.Tx, room uint64, id string, seq uint64) error {
	if err := tx.Bucket(bExtraSeqs).Put(extraSeqKey(room, id, seq), nil); err != nil {
		return err
	}
	return markRoom(tx, room, func(m *RoomMeta) bool { was := m.HasExtraSeqs; m.HasExtraSeqs = true; return !was })
}

// logSeq is the log sequence of the message of a row at stream
// (backfilled rows have negative streams).
func logSeq(stream int64) uint64 {
	if stream < 0 {
		return uint64(-stream)
	}
	return uint64(stream)
}

// updateExtremities keeps forward extremities (events no stored event
// names in prev_events) and backward extremities (prev_events the room
// does not hold) in step with a new timeline event, and the edges a purge
// needs to find the kept children of the events it removes.
//
// A parent one level up from its child (the usual link: depth is one more
// than the deepest parent's) is found by a purge from the kept rows at its
// floor (purgeTx.markExtremity), so no edge is stored for it: only for a
// parent further down, or not (yet) known in the room. That saves a write
// to a bucket whose keys (the parents' IDs) are scattered over the room:
// catching up 1M events in 10k rooms, the edges were 17% of the pages
// the projector wrote.
//
// The new event's own forward-extremity entry is held back (chainLink):
// the next event usually names it as its parent, and then neither the
// entry nor its deletion is written.
func (a *applier) updateExtremities(room uint64, ev *commands.Event) error {
	return a.extremities(room, ev, true)
}

// extremities is updateExtremities; without forward (a soft-failed event,
// which Synapse's _calculate_new_extremities leaves out) it changes only
// the backward extremities and the edges, and leaves the forward ones
// and the chain link alone.
func (a *applier) extremities(room uint64, ev *commands.Event, forward bool) error {
	tx := a.tx
	fwd, back, events, edges := tx.Bucket(bFwd), tx.Bucket(bBack), tx.Bucket(bEvents), tx.Bucket(bEdges)
	for _, p := range ev.PrevEvents {
		pk := roomStrKey(room, p)
		var loc evLoc
		var known bool
		if a.last.room == room && a.last.id == p {
			// The room's previous event, applied in this transaction.
			known, loc.depth = true, a.last.depth
			if !forward {
				// Its forward extremity stays.
			} else if a.last.fwd {
				a.last.fwd = false // held back: nothing to delete
			} else if err := fwd.Delete(pk); err != nil {
				return err
			}
		} else {
			if !forward {
				// Its forward extremity, if any, stays.
			} else if err := fwd.Delete(pk); err != nil {
				return err
			}
			// A parent known only under a room number that purge_room
			// retired is gone from this room's history (and from the
			// log), as in a rebuild: it is a backward extremity, whether
			// or not the janitor has dropped its rows yet. So is a parent
			// held only as an outlier, as Synapse's
			// _update_backward_extremeties keeps every parent not held
			// with outlier = FALSE: the parents of a join over federation
			// arrive as outliers, and the history before the join is
			// reached by a backfill from them.
			loc, known = parseLoc(room, events.Get(pk)) // pk is p's evKey too
			known = known && !loc.outlier
		}
		if !known && back.Get(pk) == nil {
			if err := back.Put(pk, u64(uint64(ev.Depth))); err != nil {
				return err
			}
		}
		if !known || loc.depth != ev.Depth-1 {
			if err := edges.Put(edgeKey(room, p, ev.EventID), u64(uint64(ev.Depth))); err != nil {
				return err
			}
		}
	}
	k := roomStrKey(room, ev.EventID)
	if !forward {
		if back.Get(k) == nil {
			return nil
		}
		return back.Delete(k) // it fills a gap
	}
	link := chainLink{room: room, id: ev.EventID, depth: ev.Depth, fwd: true}
	if back.Get(k) != nil {
		// Some stored event already names this one: it fills a gap and is
		// not a forward extremity, unless only soft-failed events name it
		// (Synapse's _get_events_which_are_prevs leaves them out; a
		// helper's review found a room left with no forward extremity,
		// and a purge above every event passing the guard).
		named, err := namedByLiveChild(tx, room, k)
		if err != nil {
			return err
		}
		link.fwd = !named
		if err := back.Delete(k); err != nil {
			return err
		}
	}
	return a.releaseLink(link)
}

// applyCommand makes a command a task and applies it. A command whose ID
// is a task's is a duplicate (CONTRACT.md section 3), unless that task
// had expired at the command's ts: an expired task is gone
// (commands.Task.ExpiredAt) whether ExpireTasks has deleted its record
// yet or not, and the command becomes a new task in its place. Deciding
// by the command's ts, not by whether the record is still there, makes
// the outcome a function of the log: a rebuild, which replays the log
// without sweeping, applies what the live file did. (The sweep runs on
// the wall clock, so a projector days behind could find deleted a task
// that had not expired at the command's ts; that takes a command reusing
// an ID days after its task ended, which no writer does: IDs are 16
// random letters, JetStream drops a repeated message ID within its
// window, and a task's updates follow its command in the log and end when
// it finishes.) A shutdown's purge step finds its shutdown task by the
// same rule.
func applyCommand(tx *bolt.Tx, e *commands.LogEntry, o *Outcome) error {
	c := e.Command
	ts := c.TS
	if ts == 0 {
		ts = e.LogTS
	}
	existing, err := getTask(tx, c.ID)
	if err != nil {
		return err
	}
	if existing != nil && !existing.ExpiredAt(ts) {
		return fmt.Errorf("%w: %s", commands.ErrDuplicateCommand, c.ID)
	}
	if !commands.ValidCommandID(c.ID) {
		// Longer than a command id: only a shutdown's purge step may be
		// (commands.IsShutdownPurgeID), and only with its shutdown task.
		parent, err := taskAt(tx, strings.TrimSuffix(c.ID, commands.ShutdownPurgeSuffix), ts)
		if err != nil {
			return err
		}
		if parent == nil || parent.Action != commands.ActionShutdownAndPurgeRoom || parent.RoomID != c.RoomID {
			return fmt.Errorf("%w: id: required: 1-64 of [A-Za-z0-9_-]", commands.ErrMalformed)
		}
	}
	if existing != nil {
		if err := deleteTask(tx, existing); err != nil {
			return err
		}
	}
	room, err := ensureRoom(tx, e.RoomID)
	if err != nil {
		return err
	}
	if owner, ok := strings.CutSuffix(c.ID, commands.ShutdownPurgeSuffix); ok && c.Action == commands.ActionPurgeRoom {
		parent, err := taskAt(tx, owner, ts)
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
			v := u64(uint64(max(ts, 0)))
			if openShutdown(tx, room) {
				// A deletion's own forget (its kicks ask the homeserver
				// for it): Synapse's do_not_schedule_purge.
				v = append(v, forgotByShutdown)
			}
			if err := tx.Bucket(bForgot).Put(roomStrKey(room, c.String("user_id")), v); err != nil {
				return err
			}
			t.Status = commands.TaskComplete
		case commands.ActionPurgeHistory:
			if err := applyPurgeHistory(tx, room, c, t, e.Decided); err != nil {
				return err
			}
			// Passed, and no update yet, or refused by the guard
			// (holding).
			if err := markUnconfirmed(tx, t.ID, t.Status == commands.TaskScheduled || t.Error == ErrTextAboveExtremities); err != nil {
				return err
			}
		case commands.ActionPurgeRoom:
			var refused bool
			if room, refused, err = applyPurgeRoom(tx, room, c, t, e.Seq, serverName(tx), e.HistoryErased, e.Decided[t.ID]); err != nil {
				return err
			}
			if err := markUnconfirmed(tx, t.ID, refused); err != nil {
				return err
			}
		case commands.ActionShutdownAndPurgeRoom:
			// One deletion at a time per room: a second one applied while
			// another is open fails (the API refuses it up front; this
			// settles races between requests).
			if busy, err := deletionOpen(tx, room); err != nil {
				return err
			} else if busy {
				t.Status, t.Error = commands.TaskFailed, ErrTextDeletionInProgress+c.RoomID
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
			if err := setBlock(tx, room, c.Bool("block", false), c.RequestedBy); err != nil {
				return err
			}
			t.Status = commands.TaskComplete
		}
	}
	if err := putTask(tx, t); err != nil {
		return err
	}
	if err := tx.Bucket(bRoomTask).Put(roomTaskKey(room, ts, c.ID), nil); err != nil {
		return err
	}
	o.Task, o.Finished = t, t.Finished()
	return nil
}

// markUnconfirmed records a decision for the task runner to confirm in
// the log (Store.Unconfirmed, holding): a purge_room's refusal, or a
// purge_history that passed its check. Any update of the task clears it.
func markUnconfirmed(tx *bolt.Tx, taskID string, mark bool) error {
	if !mark {
		return nil
	}
	return tx.Bucket(bUnconfirm).Put([]byte(taskID), nil)
}

// applyUpdate folds a TaskUpdate into its task. Two kinds change nothing,
// and are applied, not dead letters: an update that repeats a finished
// task's status and error (the task runner confirming a refusal, or a
// final update published again), and a "scheduled" one (the runner
// confirming a purge_history it has not started, perhaps after it
// started it: nothing else moves a task to scheduled). Either is a
// TaskRunner.confirm.
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
	noop := (t.Finished() && u.Status == t.Status && u.Error == t.Error) || u.Status == commands.TaskScheduled
	if !noop {
		if err := t.Apply(u); err != nil {
			return fmt.Errorf("%w: %v", commands.ErrMalformed, err)
		}
		if err := putTask(tx, t); err != nil {
			return err
		}
	}
	o.Task, o.Finished = t, !noop && t.Finished()
	return tx.Bucket(bUnconfirm).Delete([]byte(t.ID))
}

// setBlock blocks or unblocks a room. Blocking a blocked room keeps who
// blocked it first: Synapse's block_room only inserts its blocked_rooms
// row (an upsert with nothing to update, ON CONFLICT DO NOTHING).
func setBlock(tx *bolt.Tx, room uint64, block bool, by string) error {
	m, err := getRoomMeta(tx, room)
	if err != nil {
		return err
	}
	if block && m.Blocked {
		return nil
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
	_, refused, err := applyPurgeRoom(tx, room, c, probe, e.Seq, serverName(tx), e.HistoryErased, e.Decided[parent.ID])
	if err != nil {
		return err
	}
	if err := markUnconfirmed(tx, parent.ID, refused); err != nil {
		return err
	}
	parent.Status, parent.Error, parent.UpdatedTS = probe.Status, probe.Error, ts
	parent.Updates++
	o.Task, o.Finished = parent, parent.Finished()
	return putTask(tx, parent)
}

// ErrTextDeletionInProgress, followed by the room ID, is the error of a
// shutdown_and_purge_room applied while another deletion of its room is
// open (Synapse's text for a refused second deletion).
const ErrTextDeletionInProgress = "Purge already in progress for "

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
