package projections

import (
	"bytes"
	"encoding/binary"
	"math"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/commands"
)

// Purges are logical first, physical later (DESIGN.md). Applying a
// purge_history command raises the room's floor and applying purge_room
// sets its reset position, in the room's ordered transaction: from that
// commit on, no read returns a purged event. The janitor then removes the
// rows in bounded batches, off the ordered path, and records the log
// messages of deleted events for erasure.

// Synapse's texts for purges that cannot run (SYNAPSE.md appendix A).
const (
	ErrTextAboveExtremities = "400: topological_ordering is greater than forward extremities"
	ErrTextUsersJoined      = "400: Users are still joined to this room"
)

func serverName(tx *bolt.Tx) string {
	return string(tx.Bucket(bMeta).Get([]byte("server_name")))
}

// applyPurgeHistory checks the forward-extremity guard and raises the
// floor. The task stays scheduled; the task runner completes it once the
// janitor and the log erasure are done.
//
// The guard reads the room's forward extremities, which a later purge
// may erase from the log: a rebuild, or a reader behind that purge's
// erasure, would find the room's newest events gone and fail a purge
// that passed where it was first applied, and a later purge_room erases
// every event, so that no forward extremity is left to fail one. A
// TaskUpdate of the task later in the log (decided,
// Projector.FirstUpdates) says how it was decided: the task runner's
// confirmation of a guard failure fails it again; any other update says
// that it passed.
func applyPurgeHistory(tx *bolt.Tx, room uint64, c *commands.Command, t *commands.Task, decided map[string]*commands.TaskUpdate) error {
	tok, err := commands.ParseRoomToken(c.String("token"))
	if err != nil {
		t.Status, t.Error = commands.TaskFailed, err.Error()
		return nil
	}
	meta, err := getRoomMeta(tx, room)
	if err != nil {
		return err
	}
	if staleToken(tok, meta) {
		t.Status = commands.TaskComplete
		t.Result = map[string]any{"floor": meta.Floor, "delete_local_events": c.Bool("delete_local_events", false)}
		return nil
	}
	d := decided[t.ID]
	// The guard's failure confirmed in the log (TaskRunner.confirm): a
	// later purge_room may have erased every event of the time, and with
	// no forward extremity left the guard would pass it.
	refused := d != nil && d.Status == commands.TaskFailed && d.Error == ErrTextAboveExtremities
	if refused || (d == nil && aboveExtremities(tx, room, tok.Topological)) {
		t.Status, t.Error = commands.TaskFailed, ErrTextAboveExtremities
		return nil
	}
	if c.Bool("delete_local_events", false) && tok.Topological > meta.DeleteLocalBelow {
		meta.DeleteLocalBelow = tok.Topological
	}
	if tok.Topological > meta.Floor {
		meta.Floor = tok.Topological
	}
	// The outliers logged before this purge are examined against the
	// room's cut-offs, raised or not: ones logged since the last purge
	// may be below them.
	meta.Sweep, meta.SweepAt, meta.SweepBelow = true, "", t.Seq
	if err := putRoomMeta(tx, room, meta); err != nil {
		return err
	}
	if err := tx.Bucket(bJanitor).Put(u64(room), nil); err != nil {
		return err
	}
	t.Result = map[string]any{"floor": meta.Floor, "delete_local_events": c.Bool("delete_local_events", false)}
	return nil
}

// staleToken reports whether a purge_history's token names a position
// logged before the room's last purge_room (RoomMeta.ResetSeq): its
// cut-off belongs to a history that is gone, and there is nothing left to
// purge, as the events of the new timeline all come after it. Its depth
// is the old history's, which says nothing of the new timeline's: taken
// as the floor, it dropped new events below it for good. A retention job
// computes its cut-off before it publishes, so a purge_room can land in
// between. A token's stream position is the event's log sequence
// (negative for a backfilled event); one of 0 names no position.
func staleToken(tok commands.RoomToken, meta *RoomMeta) bool {
	pos := tok.Stream
	if pos < 0 {
		pos = -pos
	}
	return meta.ResetSeq > 0 && pos != 0 && uint64(pos) < meta.ResetSeq
}

// aboveExtremities is the forward-extremity guard of a purge_history:
// whether depth lies above every forward extremity of the room (none:
// no).
func aboveExtremities(tx *bolt.Tx, room uint64, depth int64) bool {
	maxFwd, found := int64(0), false
	prefix := u64(room)
	cur := tx.Bucket(bFwd).Cursor()
	for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
		found = true
		maxFwd = max(maxFwd, int64(binary.BigEndian.Uint64(v)))
	}
	return found && maxFwd < depth
}

// applyPurgeRoom refuses while local users are joined (unless forced),
// else ends the room's history at this log position: the room ID gets a
// new room number, so every read and every later event sees an empty room
// at once, with the block flag and the task list carried over; the old
// number's rows are the janitor's to delete, and the room's event
// messages before seq are to be purged from the log. It returns the
// room's number from now on.
//
// A purge whose history the log no longer holds (erased: see
// commands.LogEntry.HistoryErased) is not refused: a purge_room that
// succeeded is erased, and what this reader saw of the room may lack the
// members' leaves, erased before it read them. But a later purge_room
// erases the history of one that was refused too, so a refusal is
// confirmed in the log (refused: the caller marks the task, and the task
// runner publishes the confirmation, TaskRunner.confirm), and a
// confirmation after the command (confirmed, from
// commands.LogEntry.Decided) refuses it again with the same error,
// whether the history is erased or not: an erasure stopped between its
// steps (bus.Log.PurgeSubjectInSteps) leaves the later part of it, which
// may lack a member's join.
func applyPurgeRoom(tx *bolt.Tx, room uint64, c *commands.Command, t *commands.Task, seq uint64, server string, erased bool, confirmed *commands.TaskUpdate) (n uint64, refused bool, err error) {
	if !c.Bool("force", false) && server != "" {
		switch {
		case confirmed != nil && confirmed.Status == commands.TaskFailed:
			// Confirmed refused, whatever is left of the history: an
			// erasure stopped between its steps leaves a part of it
			// (Projector.markErased).
			t.Status, t.Error = commands.TaskFailed, confirmed.Error
			return room, false, nil
		case !erased:
			joined, err := localJoined(tx, room, server)
			if err != nil {
				return room, false, err
			}
			if joined {
				t.Status, t.Error = commands.TaskFailed, ErrTextUsersJoined
				return room, true, nil
			}
		}
	}
	old, err := getRoomMeta(tx, room)
	if err != nil {
		return room, false, err
	}
	rooms := tx.Bucket(bRooms)
	n, err = rooms.NextSequence()
	if err != nil {
		return room, false, err
	}
	if err := rooms.Put([]byte(old.RoomID), u64(n)); err != nil {
		return room, false, err
	}
	fresh := &RoomMeta{RoomID: old.RoomID, Blocked: old.Blocked, BlockedBy: old.BlockedBy, ResetSeq: seq, ResetDone: seq}
	if err := putRoomMeta(tx, n, fresh); err != nil {
		return room, false, err
	}
	// The task list stays with the room.
	rt := tx.Bucket(bRoomTask)
	prefix := u64(room)
	var keys [][]byte
	c2 := rt.Cursor()
	for k, _ := c2.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c2.Next() {
		keys = append(keys, append([]byte{}, k...))
	}
	for _, k := range keys {
		if err := rt.Put(append(u64(n), k[8:]...), nil); err != nil {
			return room, false, err
		}
		if err := rt.Delete(k); err != nil {
			return room, false, err
		}
	}
	if err := tx.Bucket(bJanitor).Put(u64(room), []byte(janitorDrop)); err != nil {
		return room, false, err
	}
	if err := tx.Bucket(bEraseRoom).Put([]byte(old.RoomID), u64(seq)); err != nil {
		return room, false, err
	}
	if err := dropRoomErasures(tx, room); err != nil {
		return room, false, err
	}
	t.Result = map[string]any{"reset_seq": seq}
	return n, false, nil
}

// dropRoomErasures deletes the erasures that earlier purges queued under a
// room number purge_room retires (erasein). They are all of the room's
// event messages below the purge_room, which its own erasure (eraseroom)
// purges from the room's event subject; kept, they would be offered once
// the janitor has dropped the number's RoomMeta, under no room ID
// (RoomErasures). A purge_history task waiting for them waits for the
// room's erasure instead (ErasuresPending).
func dropRoomErasures(tx *bolt.Tx, room uint64) error {
	ib := tx.Bucket(bEraseIn)
	if ib.Bucket(u64(room)) == nil {
		return nil
	}
	return ib.DeleteBucket(u64(room))
}

// localJoined reports whether a local user's current membership is join.
func localJoined(tx *bolt.Tx, room uint64, server string) (bool, error) {
	meta, err := getRoomMeta(tx, room)
	if err != nil {
		return false, err
	}
	return (&RoomView{tx: tx, room: room, meta: meta}).LocalJoined(server), nil
}

// PurgeDone reports whether a room's purged rows are physically gone.
func (s *Store) PurgeDone(roomID string) (bool, error) {
	p, err := s.PurgeProgress(roomID)
	return p.Done, err
}

// PurgeProgress is how far the janitor has come with a room's purges.
type PurgeProgress struct {
	// Floor is the room's cut-off depth (RoomMeta.Floor): no event below
	// it is ever returned. 0 when the room was never purged.
	Floor int64
	// PurgedBelow is the depth below which the room's timeline rows are
	// gone: the janitor deletes them from the lowest up, so it rises
	// from the room's lowest depth to Floor as the rows go. It is Floor,
	// or above, once they are all gone.
	PurgedBelow int64
	// Done is PurgeDone: nothing is left for the janitor, under the
	// room's number or under one that a purge_room retired.
	Done bool
}

// PurgeProgress reads how far the purges of roomID have come: one
// look-up of the room's lowest timeline row.
func (s *Store) PurgeProgress(roomID string) (PurgeProgress, error) {
	p := PurgeProgress{Done: true}
	err := s.db.View(func(tx *bolt.Tx) error {
		n := roomNum(tx, roomID)
		if n == 0 {
			return nil
		}
		meta, err := getRoomMeta(tx, n)
		if err != nil {
			return err
		}
		p.Floor, p.Done, p.PurgedBelow = meta.Floor, !meta.needsJanitor(), meta.Floor
		if k, _ := tx.Bucket(bTimeline).Cursor().Seek(u64(n)); len(k) == 24 {
			if room, depth, _ := parseTLKey(k); room == n && depth < p.PurgedBelow {
				p.PurgedBelow = depth
			}
		}
		if p.Done {
			p.Done, err = noRetiredRows(tx, roomID, n)
		}
		return err
	})
	return p, err
}

// noRetiredRows reports whether the janitor has dropped the rows of every
// number that a purge_room retired from roomID (current is the room's
// number now). Its queue holds the rooms it has work in: few.
func noRetiredRows(tx *bolt.Tx, roomID string, current uint64) (bool, error) {
	c := tx.Bucket(bJanitor).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 8 || string(v) != janitorDrop || binary.BigEndian.Uint64(k) == current {
			continue
		}
		meta, err := getRoomMeta(tx, binary.BigEndian.Uint64(k))
		if err != nil {
			return false, err
		}
		if meta.RoomID == roomID {
			return false, nil
		}
	}
	return true, nil
}

// EventInfo is where an event is stored.
type EventInfo struct {
	RoomID   string
	Depth    int64
	Stream   int64
	Outlier  bool
	Rejected bool
}

// FindEvent looks an event up by ID: in roomID's history, and if it is
// not there, in every other room's; ok is false if no room holds it.
//
// The events index is keyed by room (evKey), so the second look-up is
// one per room: the admin API needs it only to answer "Event is for wrong
// room." (35 ms over 100k rooms with an empty index, measured once;
// deeper indexes cost more per room).
func (s *Store) FindEvent(roomID, eventID string) (info EventInfo, ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		if room := roomNum(tx, roomID); room != 0 {
			if info, ok = eventAt(tx, room, eventID); ok {
				info.RoomID = roomID
				return nil
			}
		}
		c := tx.Bucket(bRooms).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if len(v) != 8 || string(k) == roomID {
				continue
			}
			if info, ok = eventAt(tx, binary.BigEndian.Uint64(v), eventID); ok {
				info.RoomID = string(k)
				return nil
			}
		}
		return nil
	})
	return info, ok, err
}

// eventAt is where room (a current room number) stores eventID, without
// the room's ID.
func eventAt(tx *bolt.Tx, room uint64, eventID string) (EventInfo, bool) {
	loc, found := lookupEvent(tx.Bucket(bEvents), room, eventID)
	if !found {
		return EventInfo{}, false
	}
	val := rowAt(tx.Bucket, evKey(room, eventID), loc)
	if len(val) < 2 {
		return EventInfo{}, false
	}
	meta, err := getRoomMeta(tx, room)
	if err != nil || meta.purged(tx, loc, val) {
		return EventInfo{}, false
	}
	return EventInfo{Depth: loc.depth, Stream: loc.stream, Outlier: loc.outlier, Rejected: val[1]&flagRejected != 0}, true
}

// rowAt is the stored row of an event at loc, key being its events-index
// key (room|event ID): its outlier row, or its timeline row. bucket opens
// a bucket (tx.Bucket, or a view's cached one).
func rowAt(bucket func(name []byte) *bolt.Bucket, key []byte, loc evLoc) []byte {
	if loc.outlier {
		return bucket(bOutliers).Get(key)
	}
	return bucket(bTimeline).Get(tlKey(loc.room, loc.depth, loc.stream))
}

// purged reports whether the row val, stored at loc, is one the room's
// purges delete: from the moment a purge is applied no read returns it,
// by position (reads stop at the floor) or by ID (this), though the
// janitor deletes it later (CONTRACT.md section 7). A timeline row that a
// purge keeps is an outlier to be, and stays readable by ID; an outlier
// is the sweep's (sweepOutliers) if it was logged before the latest
// purge.
func (m *RoomMeta) purged(tx *bolt.Tx, loc evLoc, val []byte) bool {
	if loc.depth >= m.Floor || loc.outlier && logSeq(loc.stream) >= m.SweepBelow {
		return false
	}
	h, err := readPurgeHead(val)
	if err != nil {
		return false // the janitor reports it
	}
	return m.deletes(loc.depth, h.flags&flagState != 0, isLocalSender(h.sender, serverName(tx)))
}

// purgedEntries returns a test of whether a received entry (room, live
// stream ordering) is of an event the purges delete, whose entry the
// janitor has not deleted yet: a row below its room's floor that the
// purges delete (RoomMeta.purged), or any row of a room number a
// purge_room retired. Synapse's events table no longer holds them, and
// the look-up must not depend on when the janitor runs. It remembers
// each room's record for the walk.
func purgedEntries(tx *bolt.Tx) func(room uint64, stream int64) bool {
	type roomState struct {
		meta    *RoomMeta
		retired bool
		swept   map[int64]bool // outliers the pending sweep deletes, by stream
	}
	rooms := map[uint64]*roomState{}
	rs, tl := tx.Bucket(bRStream), tx.Bucket(bTimeline)
	return func(room uint64, stream int64) bool {
		st, ok := rooms[room]
		if !ok {
			meta, err := getRoomMeta(tx, room)
			if err != nil {
				meta = &RoomMeta{}
			}
			st = &roomState{meta: meta, retired: string(tx.Bucket(bJanitor).Get(u64(room))) == janitorDrop}
			rooms[room] = st
		}
		if st.retired {
			return true
		}
		if st.meta.Floor == 0 {
			return false
		}
		d := rs.Get(binary.BigEndian.AppendUint64(u64(room), order(stream)))
		if len(d) != 8 {
			// Kept as an outlier by a purge: it counts, as in Synapse,
			// unless the pending sweep deletes it.
			if !st.meta.Sweep {
				return false
			}
			if st.swept == nil {
				st.swept = sweptOutliers(tx, room, st.meta)
			}
			return st.swept[stream]
		}
		loc := evLoc{room: room, depth: int64(binary.BigEndian.Uint64(d)), stream: stream}
		return st.meta.purged(tx, loc, tl.Get(tlKey(room, loc.depth, stream)))
	}
}

// sweptOutliers is the streams of the room's outliers that its pending
// sweep deletes (sweepOutliers): a room's outliers are few beside its
// timeline.
func sweptOutliers(tx *bolt.Tx, room uint64, meta *RoomMeta) map[int64]bool {
	swept := map[int64]bool{}
	prefix := u64(room)
	events := tx.Bucket(bEvents)
	c := tx.Bucket(bOutliers).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if loc, ok := parseLoc(room, events.Get(k)); ok && loc.outlier && meta.purged(tx, loc, v) {
			swept[loc.stream] = true
		}
	}
	return swept
}

// CutoffByTS is Synapse's purge_up_to_ts look-up (SYNAPSE.md 6.1): X is
// the lowest live log sequence, of any room, received at or after ts
// (backfilled events and events the purges delete do not count; the walk
// over the latter is as long as the purged events received after ts whose
// rows the janitor has not deleted yet); the cut-off is the room's latest
// timeline event, not rejected, with a stream ordering <= X.
func (s *Store) CutoffByTS(roomID string, ts int64) (depth, stream int64, ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		room := roomNum(tx, roomID)
		if room == 0 {
			return nil
		}
		x := int64(math.MaxInt64)
		gone := purgedEntries(tx)
		rc := tx.Bucket(bReceived).Cursor()
		for k, v := rc.Seek(binary.BigEndian.AppendUint64(u64(uint64(max(ts, 0))), 0)); k != nil; k, v = rc.Next() {
			if seq := int64(binary.BigEndian.Uint64(k[8:])); len(v) != 8 || !gone(binary.BigEndian.Uint64(v), seq) {
				x = seq
				break
			}
		}
		meta, err := getRoomMeta(tx, room)
		if err != nil {
			return err
		}
		prefix := u64(room)
		seek := binary.BigEndian.AppendUint64(u64(room), order(x))
		c := tx.Bucket(bRStream).Cursor()
		k, v := c.Seek(seek)
		if k == nil || !bytes.Equal(k, seek) {
			k, v = c.Prev()
		}
		tl := tx.Bucket(bTimeline)
		for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Prev() {
			d := int64(binary.BigEndian.Uint64(v))
			st := unorder(binary.BigEndian.Uint64(k[8:]))
			if d < meta.Floor {
				continue
			}
			val := tl.Get(tlKey(room, d, st))
			if len(val) < 2 || val[1]&flagRejected != 0 {
				continue
			}
			depth, stream, ok = d, st, true
			return nil
		}
		return nil
	})
	return depth, stream, ok, err
}

// forgotByShutdown follows the forget time in a forgotten entry applied
// while a deletion of the room was open: the deletion's own forget, which
// Synapse makes with do_not_schedule_purge.
const forgotByShutdown = 1

// openShutdown reports whether the room has a deletion task that is
// scheduled or active.
func openShutdown(tx *bolt.Tx, room uint64) bool {
	c := tx.Bucket(bRoomTask).Cursor()
	prefix := u64(room)
	for k, _ := c.Seek(prefix); len(k) > 16 && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		t, err := getTask(tx, string(k[16:]))
		if err == nil && t != nil && t.Action == commands.ActionShutdownAndPurgeRoom && (t.Status == commands.TaskScheduled || t.Status == commands.TaskActive) {
			return true
		}
	}
	return false
}

// ForgottenRooms lists the rooms whose local members have all left and
// forgotten them, the last forget at least period before now (Synapse's
// forgotten_room_retention_period). Synapse schedules that purge at the
// forget that leaves the room forgotten, unless a room deletion made it
// (do_not_schedule_purge): a room whose last forget was a deletion's is
// never listed, so a deletion with purge: false keeps its history. Rooms
// with a deletion task that is open, or that was requested at or after
// the last forget and has not expired, and rooms that never had a local
// member, are left out too.
func (s *Store) ForgottenRooms(server string, now, period int64) ([]string, error) {
	var out []string
	err := s.ForEachRoom(func(roomID string, v *RoomView) bool {
		// A room none of whose users forgot it is not due, whatever its
		// members: one seek instead of reading them all (a room joined
		// over federation has every member of the join's state).
		prefix := u64(v.room)
		if k, _ := v.bucket(bForgot).Cursor().Seek(prefix); !bytes.HasPrefix(k, prefix) {
			return true
		}
		local, eligible, byShutdown := 0, true, false
		var last int64
		v.ServerMembers(server, func(user, membership string) bool {
			local++
			ts := v.bucket(bForgot).Get(roomStrKey(v.room, user))
			if membership == "join" || membership == "invite" || membership == "knock" || ts == nil {
				eligible = false
				return false
			}
			if len(ts) >= 8 {
				if at := int64(binary.BigEndian.Uint64(ts)); at >= last {
					last, byShutdown = at, len(ts) > 8 && ts[8] == forgotByShutdown
				}
			}
			return true
		})
		if local == 0 || !eligible || byShutdown || last+period > now {
			return true
		}
		c := v.bucket(bRoomTask).Cursor()
		for k, _ := c.Seek(prefix); len(k) > 16 && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			t, err := getTask(v.tx, string(k[16:]))
			if err != nil || t == nil || t.ExpiredAt(now) || (t.Action != commands.ActionPurgeRoom && t.Action != commands.ActionShutdownAndPurgeRoom) {
				continue
			}
			// A deletion still open, or one that came after the last
			// forget, holds the room. One that ended before it does not:
			// Synapse schedules a purge at every forget that leaves the
			// room forgotten, whatever purges came before (a room purged
			// here, whose new timeline a local user joined, left and
			// forgot again, is due one period after that forget).
			if !t.Finished() || t.CreatedTS >= last {
				return true
			}
		}
		out = append(out, roomID)
		return true
	})
	return out, err
}
