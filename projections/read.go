package projections

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/commands"
)

// MaxScan bounds the rows one page may look at: a filter that matches
// nothing in a huge room ends the page early (limited, with an end token
// at the last row scanned) instead of walking the whole room.
const MaxScan = 20000

// PageQuery is one pagination request against a room's timeline.
type PageQuery struct {
	RoomID    string
	Backwards bool
	// From is the position to start at (inclusive for backwards, exclusive
	// forwards); nil means the start of the timeline forwards (backfilled
	// events included) or the end backwards.
	From *commands.RoomToken
	To   *commands.RoomToken // optional bound (exclusive backwards, inclusive forwards)
	// Limit is the number of rows to return; rows must pass Filter.PreLimit.
	Limit  int
	Filter *commands.Filter
}

// PageResult is what the timeline holds for a PageQuery.
type PageResult struct {
	// Rows are the page's rows. Their strings, as their content, are
	// the transaction's memory (Row.unmarshal): nothing of them may be
	// kept after it ends, not even a string.
	Rows    []*Row
	Limited bool // more rows may follow
	// Next is the room token after the last row taken (or after the last
	// row scanned when MaxScan ended the page); nil when no row was taken.
	Next *commands.RoomToken
}

// NextToken is Synapse's next_key for a row: just before it backwards,
// just after it forwards.
func NextToken(depth, stream int64, backwards bool) commands.RoomToken {
	if backwards {
		return commands.RoomToken{Topological: depth, Stream: stream - 1, IsTopological: true}
	}
	return commands.RoomToken{Topological: depth, Stream: stream, IsTopological: true}
}

// RoomView is a consistent snapshot of one room for a read: every method
// reads the same bbolt transaction. Use Store.View.
type RoomView struct {
	tx      *bolt.Tx
	room    uint64
	meta    *RoomMeta
	buckets map[*byte]*bolt.Bucket
	// stateSeek's cursor and key buffer, reused.
	stateCur *bolt.Cursor
	stateKey []byte
}

// bucket returns a top-level bucket, opened once per view: bbolt does not
// cache buckets in read-only transactions, and a page looks at them
// several times per event.
func (v *RoomView) bucket(name []byte) *bolt.Bucket {
	if b, ok := v.buckets[&name[0]]; ok {
		return b
	}
	if v.buckets == nil {
		v.buckets = make(map[*byte]*bolt.Bucket, 8)
	}
	b := v.tx.Bucket(name)
	v.buckets[&name[0]] = b
	return b
}

// View runs fn with a snapshot of roomID. The view must not escape fn.
func (s *Store) View(roomID string, fn func(v *RoomView) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		v := &RoomView{tx: tx, room: roomNum(tx, roomID), meta: &RoomMeta{}}
		if v.room != 0 {
			var err error
			if v.meta, err = getRoomMeta(tx, v.room); err != nil {
				return err
			}
		}
		return fn(v)
	})
}

// Purging reports whether the janitor has purged rows or outliers of the
// room still to delete: until it has, the backward extremities that the
// purged events leave (kept events naming them) are not recorded yet.
func (v *RoomView) Purging() bool { return v.meta.needsJanitor() }

// Floor is the room's purge cut-off depth (0 if never purged): reads stop
// there and never ask federation for history below it.
func (v *RoomView) Floor() int64 { return v.meta.Floor }

// DeleteLocalBelow is the highest cut-off depth of the room's purges with
// delete_local_events (0 if none): local events below it are deleted,
// local events between it and Floor are kept as outliers.
func (v *RoomView) DeleteLocalBelow() int64 { return v.meta.DeleteLocalBelow }

// preReset reports whether a stream ordering is from before the room's
// last purge_room.
func (v *RoomView) preReset(stream int64) bool {
	if v.meta.ResetSeq == 0 {
		return false
	}
	if stream < 0 {
		stream = -stream
	}
	return uint64(stream) < v.meta.ResetSeq
}

// Known reports whether the room has ever been seen on the log.
func (v *RoomView) Known() bool { return v.room != 0 }

// MaxPosition is the (depth, stream) of the room's last timeline event;
// ok is false for an empty timeline.
func (v *RoomView) MaxPosition() (depth, stream int64, ok bool) {
	if v.room == 0 {
		return 0, 0, false
	}
	c := v.bucket(bTimeline).Cursor()
	c.Seek(roomEnd(v.room))
	for k, _ := c.Prev(); k != nil && binary.BigEndian.Uint64(k) == v.room; k, _ = c.Prev() {
		_, depth, stream = parseTLKey(k)
		if !v.meta.purgedAway(depth, stream) {
			return depth, stream, true
		}
		if depth < v.meta.Floor {
			break
		}
	}
	return 0, 0, false
}

// topologicalScan bounds the events TopologicalAt looks at: past it, the
// least depth seen stands for the rest (depths grow with the log but for
// forks and late events, so the events next to the position decide).
const topologicalScan = 10_000

// TopologicalAt is Synapse's get_current_topological_token, the depth a
// read from a stream token stands at: the least depth of the room's
// timeline events at or after stream ordering stream, or of its last one
// when stream is past the room's end; 0 in an empty room (COALESCE(MIN(
// topological_ordering), 0) over stream_ordering >= LEAST(stream, the
// room's greatest)). It looks at most topologicalScan events on.
func (v *RoomView) TopologicalAt(stream int64) int64 {
	if v.room == 0 {
		return 0
	}
	prefix := u64(v.room)
	c := v.bucket(bRStream).Cursor()
	k, val := c.Seek(binary.BigEndian.AppendUint64(u64(v.room), order(stream)))
	if k == nil || !bytes.HasPrefix(k, prefix) {
		c.Seek(roomEnd(v.room))
		k, val = c.Prev() // the room's greatest stream ordering
	}
	least, found := int64(math.MaxInt64), false
	for n := 0; k != nil && bytes.HasPrefix(k, prefix) && n < topologicalScan; k, val = c.Next() {
		n++
		if len(val) < 8 {
			continue
		}
		depth := int64(binary.BigEndian.Uint64(val))
		if v.meta.purgedAway(depth, unorder(binary.BigEndian.Uint64(k[8:]))) {
			continue
		}
		least, found = min(least, depth), true
	}
	if !found {
		return 0
	}
	return least
}

// MaxDepth is the largest depth in the room's timeline (0 if empty).
func (v *RoomView) MaxDepth() int64 {
	if v.room == 0 {
		return 0
	}
	// The timeline is ordered by depth first, so the last key has it.
	d, _, _ := v.MaxPosition()
	return d
}

// StateEntry is one state event in the state index.
type StateEntry struct {
	EventID string
	Summary string // commands.StateSummary: membership, visibility, join rule...
	Depth   int64
	Stream  int64
}

// CurrentState returns the room's current state event (type, stateKey):
// state is linearized by (depth, stream ordering), so it is the one with
// the greatest position.
func (v *RoomView) CurrentState(typ, stateKey string) (StateEntry, bool) {
	return v.stateSeek(typ, stateKey, math.MaxInt64, math.MaxInt64, true)
}

// StateAt returns the state event (type, stateKey) in the state after the
// event at (depth, stream): the entry with the greatest position at or
// before it. One cursor seek.
func (v *RoomView) StateAt(typ, stateKey string, depth, stream int64) (StateEntry, bool) {
	return v.stateSeek(typ, stateKey, depth, stream, true)
}

// StateBefore is StateAt strictly before (depth, stream): the state event
// that one at that position replaced.
func (v *RoomView) StateBefore(typ, stateKey string, depth, stream int64) (StateEntry, bool) {
	return v.stateSeek(typ, stateKey, depth, stream, false)
}

func (v *RoomView) stateSeek(typ, stateKey string, depth, stream int64, inclusive bool) (StateEntry, bool) {
	if v.room == 0 {
		return StateEntry{}, false
	}
	// One key buffer and one cursor for the view's state look-ups (a
	// read with lazy members does several per sender): a new cursor per
	// look-up grows a new search stack each time, and bbolt's searches
	// were a fifth of what reads allocated in the 1M ingest scenario.
	seek := appendStatePrefix(v.stateKey[:0], v.room, typ, stateKey)
	prefix := seek[:len(seek):len(seek)]
	seek = binary.BigEndian.AppendUint64(seek, uint64(depth))
	seek = binary.BigEndian.AppendUint64(seek, order(stream))
	v.stateKey = seek
	if v.stateCur == nil {
		v.stateCur = v.bucket(bState).Cursor()
	}
	c := v.stateCur
	k, val := c.Seek(seek)
	if !inclusive || k == nil || !bytes.Equal(k, seek) {
		k, val = c.Prev()
	}
	for k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+16 && v.preReset(unorder(binary.BigEndian.Uint64(k[len(prefix)+8:]))) {
		k, val = c.Prev() // state from before a purge_room is gone
	}
	if k == nil || !bytes.HasPrefix(k, prefix) || len(k) != len(prefix)+16 {
		return StateEntry{}, false
	}
	id, summary, ok := parseStateVal(val)
	if !ok {
		return StateEntry{}, false
	}
	pos := k[len(prefix):]
	return StateEntry{EventID: id, Summary: summary, Depth: int64(binary.BigEndian.Uint64(pos)), Stream: unorder(binary.BigEndian.Uint64(pos[8:]))}, true
}

func parseStateVal(val []byte) (eventID, summary string, ok bool) {
	n, w := binary.Uvarint(val)
	if w <= 0 || uint64(len(val)-w) < n {
		return "", "", false
	}
	return string(val[w+int(n):]), string(val[w : w+int(n)]), true
}

// Membership is the user's current membership ("" if none).
func (v *RoomView) Membership(userID string) string {
	e, _ := v.CurrentState("m.room.member", userID)
	return e.Summary
}

// StateEvent is the state event of st, read at st's position: one seek
// instead of Event's two, the first into the events index, a bucket with
// a key for every event of every room. An event no longer at its position
// (a purge kept it as an outlier) is read by Event.
func (v *RoomView) StateEvent(st StateEntry) (*Row, error) {
	if val := v.bucket(bTimeline).Get(tlKey(v.room, st.Depth, st.Stream)); val != nil {
		r, err := unmarshalRow(val)
		if err != nil {
			return nil, fmt.Errorf("event %s: %w", st.EventID, err)
		}
		if r.EventID == st.EventID {
			r.Depth, r.Stream = st.Depth, st.Stream
			return r, nil
		}
	}
	return v.Event(st.EventID)
}

// Event returns a stored event of this room by ID (timeline or outlier),
// nil if unknown.
func (v *RoomView) Event(eventID string) (*Row, error) {
	loc, ok := lookupEvent(v.bucket(bEvents), v.room, eventID)
	if !ok || v.preReset(loc.stream) {
		return nil, nil
	}
	val := rowAt(v.bucket, evKey(v.room, eventID), loc)
	if val == nil || v.meta.purged(v.tx, loc, val) {
		return nil, nil
	}
	r, err := unmarshalRow(val)
	if err != nil {
		return nil, fmt.Errorf("event %s: %w", eventID, err)
	}
	r.Depth, r.Stream = loc.depth, loc.stream
	return r, nil
}

// Forgotten reports whether userID forgot the room.
func (v *RoomView) Forgotten(userID string) bool {
	return v.room != 0 && v.bucket(bForgot).Get(roomStrKey(v.room, userID)) != nil
}

// Extremities lists the room's forward or backward extremities with their
// depths.
func (v *RoomView) Extremities(backward bool) map[string]int64 {
	out := map[string]int64{}
	if v.room == 0 {
		return out
	}
	b := v.bucket(bFwd)
	if backward {
		b = v.bucket(bBack)
	}
	prefix := u64(v.room)
	c := b.Cursor()
	for k, val := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, val = c.Next() {
		out[string(k[8:])] = int64(binary.BigEndian.Uint64(val))
	}
	return out
}

// SuccessorDepths lists the depths of the room's events that name eventID
// among their parents (the edges index: every parent the room does not
// hold gets an entry per child), as Synapse's get_backfill_points_in_room
// joins a backward extremity with each of its successors.
func (v *RoomView) SuccessorDepths(eventID string) []int64 {
	var out []int64
	v.edges(eventID, func(_ []byte, depth int64) {
		out = append(out, depth)
	})
	return out
}

// edges calls fn with the ID and depth of each child that the edges index
// holds for the parent eventID. child is the transaction's memory.
func (v *RoomView) edges(eventID string, fn func(child []byte, depth int64)) {
	if v.room == 0 {
		return
	}
	prefix := append(roomStrKey(v.room, eventID), 0)
	c := v.bucket(bEdges).Cursor()
	for k, val := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, val = c.Next() {
		if len(val) == 8 {
			fn(k[len(prefix):], int64(binary.BigEndian.Uint64(val)))
		}
	}
}

// Successor is a timeline event that names another among its parents.
type Successor struct {
	EventID       string
	Depth, Stream int64
}

// Successors are the room's events that name eventID among their parents,
// for an event the room does not hold on its timeline (a backward
// extremity), as Synapse's get_successor_events and get_events_as_list
// give them: every timeline child but rejected ones has an edge to a
// parent not held (updateExtremities), and no other event has one.
// Synapse's also hold the outliers that name it (it stores every event's
// edges), which filter_events_for_server lets any server see; outliers
// have no edges here (README, where scrollback differs). Those
// below the room's floor are left out from the moment the purge is
// applied, as the janitor then deletes their edges (unindex): Synapse
// deletes the purged ones' and keeps those of the events it keeps as
// outliers, with no state, which would count as visible (a backfill
// point has a successor above the floor, which decides for it here).
// It costs a seek in the edges index and a look-up in the events index
// per child.
func (v *RoomView) Successors(eventID string) []Successor {
	var out []Successor
	events := v.bucket(bEvents)
	v.edges(eventID, func(child []byte, _ int64) {
		loc, ok := parseLoc(v.room, events.Get(roomStrKey(v.room, string(child))))
		if !ok || loc.outlier || v.meta.purgedAway(loc.depth, loc.stream) {
			return
		}
		out = append(out, Successor{EventID: string(child), Depth: loc.depth, Stream: loc.stream})
	})
	return out
}

// Paginate walks the room's timeline as Synapse's
// paginate_room_events_by_topological_ordering does: ordered by (depth,
// stream ordering), bounded by From and To (compared as tuples for
// topological tokens, by stream ordering only for live ones), taking up to
// Limit rows that pass the filter's pre-limit part.
func (v *RoomView) Paginate(q PageQuery) (*PageResult, error) {
	res := &PageResult{}
	if q.Limit <= 0 {
		// SQL LIMIT 0: no rows, and Synapse counts it as limited.
		res.Limited = true
		return res, nil
	}
	if v.room == 0 || q.Filter.ExcludesRoom(q.RoomID) {
		// A filter whose rooms leave this one out, or whose not_rooms
		// name it, takes no row: Synapse's SQL (room_id = ? / != ?)
		// returns none.
		return res, nil
	}
	c := v.bucket(bTimeline).Cursor()
	prefix := u64(v.room)
	var k, val []byte
	from := q.From
	// Position the cursor on the first candidate.
	switch {
	case q.Backwards && from != nil && from.IsTopological:
		seek := tlKey(v.room, from.Topological, from.Stream)
		k, val = c.Seek(seek)
		if k == nil || !bytes.Equal(k, seek) {
			k, val = c.Prev()
		}
	case q.Backwards:
		c.Seek(roomEnd(v.room))
		k, val = c.Prev()
	case from != nil && from.IsTopological && from.Topological >= v.meta.Floor:
		seek := tlKey(v.room, from.Topological, from.Stream)
		k, val = c.Seek(seek)
		if k != nil && bytes.Equal(k, seek) {
			k, val = c.Next()
		}
	default:
		// Forwards from the start: from the floor, if the room was purged.
		k, val = c.Seek(tlKey(v.room, max(v.meta.Floor, 0), math.MinInt64))
	}
	step := c.Next
	if q.Backwards {
		step = c.Prev
	}
	rows := rowBlock{n: q.Limit}
	var related *relatedByQuery // related_by_*: asked of the store, row by row
	if q.Filter.FiltersRelations() {
		related = newRelatedByQuery(q.Filter)
	}
	readHead := related != nil || !q.Filter.PreLimitAll()
	scanned := 0
	cut := false // MaxScan ended the page
	var lastDepth, lastStream int64
	for ; k != nil && bytes.HasPrefix(k, prefix); k, val = step() {
		_, depth, stream := parseTLKey(k)
		if depth < v.meta.Floor {
			if q.Backwards {
				break // everything further back is purged
			}
			continue
		}
		if v.preReset(stream) {
			continue
		}
		if !beforeTo(q, depth, stream) {
			if q.To.IsTopological {
				break // ordered by (depth, stream): nothing further is in bounds
			}
			continue
		}
		if !afterLiveFrom(q, stream) {
			continue
		}
		if scanned == MaxScan {
			cut = true
			break
		}
		scanned++
		lastDepth, lastStream = depth, stream
		if readHead {
			// Only a filter looks at the head: reading it for every row
			// took a quarter of an unfiltered page's time in Paginate.
			h, err := rowHead(val)
			if err != nil {
				return nil, fmt.Errorf("timeline row %x: %w", k, err)
			}
			if !q.Filter.PreLimit(commands.EventMeta{Type: string(h.typ), Sender: string(h.sender), HasURL: h.flags&flagHasURL != 0, Labels: h.labels}) {
				continue
			}
			if related != nil && !v.relatedBy(string(h.id), related) {
				continue
			}
		}
		if len(res.Rows) == q.Limit {
			res.Limited = true
			break
		}
		r := rows.next()
		if err := r.unmarshal(val, true); err != nil {
			return nil, fmt.Errorf("timeline row %x: %w", k, err)
		}
		r.Depth, r.Stream = depth, stream
		res.Rows = append(res.Rows, r)
	}
	switch {
	case cut:
		// Continue after the last row scanned, not the last one taken.
		res.Limited = true
		t := NextToken(lastDepth, lastStream, q.Backwards)
		res.Next = &t
	case len(res.Rows) > 0:
		last := res.Rows[len(res.Rows)-1]
		t := NextToken(last.Depth, last.Stream, q.Backwards)
		res.Next = &t
	}
	return res, nil
}

// afterLiveFrom applies a live (s) From token, which compares stream
// orderings only; topological ones positioned the cursor.
func afterLiveFrom(q PageQuery, stream int64) bool {
	f := q.From
	if f == nil || f.IsTopological {
		return true
	}
	if q.Backwards {
		return stream <= f.Stream
	}
	return stream > f.Stream
}

// beforeTo applies To: exclusive backwards, inclusive forwards.
func beforeTo(q PageQuery, depth, stream int64) bool {
	t := q.To
	if t == nil {
		return true
	}
	if t.IsTopological {
		if q.Backwards {
			return depth > t.Topological || depth == t.Topological && stream > t.Stream
		}
		return depth < t.Topological || depth == t.Topological && stream <= t.Stream
	}
	if q.Backwards {
		return stream > t.Stream
	}
	return stream <= t.Stream
}

// StateHistory returns every entry of one state key in position order,
// when there are at most max of them (ok false otherwise). A read loads
// the few entries of the keys it asks about for every event (the
// visibility, the reader's membership) once, and answers "state after
// this event" in memory.
func (v *RoomView) StateHistory(typ, stateKey string, max int) ([]StateEntry, bool) {
	if v.room == 0 {
		return nil, true
	}
	prefix := statePrefix(v.room, typ, stateKey)
	c := v.bucket(bState).Cursor()
	var out []StateEntry
	for k, val := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, val = c.Next() {
		if len(k) != len(prefix)+16 {
			continue // a longer state key with this one as prefix
		}
		stream := unorder(binary.BigEndian.Uint64(k[len(prefix)+8:]))
		if v.preReset(stream) {
			continue
		}
		if len(out) == max {
			return nil, false
		}
		id, summary, ok := parseStateVal(val)
		if !ok {
			continue
		}
		out = append(out, StateEntry{EventID: id, Summary: summary, Depth: int64(binary.BigEndian.Uint64(k[len(prefix):])), Stream: stream})
	}
	return out, true
}

// ForEachRoom calls fn with a view of every room, in one read
// transaction, until fn returns false.
func (s *Store) ForEachRoom(fn func(roomID string, v *RoomView) bool) error {
	return s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bRooms).Cursor()
		for k, val := c.First(); k != nil; k, val = c.Next() {
			v := &RoomView{tx: tx, room: binary.BigEndian.Uint64(val)}
			var err error
			if v.meta, err = getRoomMeta(tx, v.room); err != nil {
				return err
			}
			if !fn(string(k), v) {
				return nil
			}
		}
		return nil
	})
}
