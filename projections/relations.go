package projections

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/commands"
)

// Relations and redactions are indexed when events are applied, so that
// bundled aggregations and redacted events cost a few seeks per page,
// never a scan of the room.

// applyRedaction records that redactionID redacts target (the first
// redaction wins) and takes a redacted relation out of the aggregations.
// A redaction that arrives before its target is recorded all the same:
// the target is then never indexed as a relation, and reads prune it.
func applyRedaction(tx *bolt.Tx, room uint64, target, redactionID string) error {
	b := tx.Bucket(bRedacts)
	if b.Get([]byte(target)) != nil {
		return nil
	}
	if err := b.Put([]byte(target), []byte(redactionID)); err != nil {
		return err
	}
	if err := markRoom(tx, room, func(m *RoomMeta) bool { was := m.HasRedactions; m.HasRedactions = true; return !was }); err != nil {
		return err
	}
	locb := tx.Bucket(bEvents).Get([]byte(target))
	loc, ok := parseLoc(locb)
	if !ok || loc.room != room || loc.outlier {
		return nil
	}
	val := tx.Bucket(bTimeline).Get(tlKey(room, loc.depth, loc.stream))
	if val == nil {
		return nil
	}
	r, err := unmarshalRow(val)
	if err != nil || r.RelType == "" {
		return err
	}
	return unindexRelation(tx, room, r, loc.depth, loc.stream)
}

func indexRelation(tx *bolt.Tx, room uint64, r *Row, depth, stream int64) error {
	prefix := relPrefix(room, r.RelTarget, r.RelType)
	k := binary.BigEndian.AppendUint64(append([]byte{}, prefix...), uint64(depth))
	k = binary.BigEndian.AppendUint64(k, order(stream))
	v := binary.AppendUvarint(nil, uint64(len(r.Sender)))
	v = append(append(v, r.Sender...), r.EventID...)
	if err := tx.Bucket(bRel).Put(k, v); err != nil {
		return err
	}
	if err := markRoom(tx, room, func(m *RoomMeta) bool { was := m.HasRelations; m.HasRelations = true; return !was }); err != nil {
		return err
	}
	counts := tx.Bucket(bRelCount)
	if err := addCount(counts, prefix, 1); err != nil {
		return err
	}
	if err := addCount(counts, relSenderKey(prefix, r.Sender), 1); err != nil {
		return err
	}
	return markRelated(tx, room, r.RelTarget)
}

func unindexRelation(tx *bolt.Tx, room uint64, r *Row, depth, stream int64) error {
	prefix := relPrefix(room, r.RelTarget, r.RelType)
	k := binary.BigEndian.AppendUint64(append([]byte{}, prefix...), uint64(depth))
	k = binary.BigEndian.AppendUint64(k, order(stream))
	rel := tx.Bucket(bRel)
	if rel.Get(k) == nil {
		return nil
	}
	if err := rel.Delete(k); err != nil {
		return err
	}
	counts := tx.Bucket(bRelCount)
	if err := addCount(counts, prefix, -1); err != nil {
		return err
	}
	if err := addCount(counts, relSenderKey(prefix, r.Sender), -1); err != nil {
		return err
	}
	return unmarkRelated(tx, room, r.RelTarget)
}

// The related marks keep one fact for every target of an indexed
// relation: where the target is a timeline event of the room, a key at
// its position in relat; otherwise (not received, an outlier, purged) its
// ID in relwait, until it joins the timeline. A page of /messages then
// learns which of its events have bundled aggregations from one seek and
// a walk over its own range of relat (RoomView.MarkRelated), instead of a
// seek into relations per event, which at 10M events was most of what a
// read with bundles did more than a plain one. Every change to relations
// (indexRelation, unindexRelation, the janitor's unindex) and every
// timeline row that comes or goes (applyEvent, floorBatch, dropRoomBatch)
// keeps them in step, so a rebuild from the log gives the same marks.

// markRelated records that target has an indexed relation.
func markRelated(tx *bolt.Tx, room uint64, target string) error {
	loc, ok := parseLoc(tx.Bucket(bEvents).Get([]byte(target)))
	if ok && loc.room == room && !loc.outlier {
		return tx.Bucket(bRelAt).Put(tlKey(room, loc.depth, loc.stream), nil)
	}
	return tx.Bucket(bRelWait).Put(roomStrKey(room, target), nil)
}

// unmarkRelated drops target's mark once no relation to it is indexed.
func unmarkRelated(tx *bolt.Tx, room uint64, target string) error {
	k := make([]byte, 8, 10+len(target))
	binary.BigEndian.PutUint64(k, room)
	k = binary.BigEndian.AppendUint16(k, uint16(len(target)))
	k = append(k, target...)
	if got, _ := tx.Bucket(bRel).Cursor().Seek(k); got != nil && bytes.HasPrefix(got, k) {
		return nil
	}
	loc, ok := parseLoc(tx.Bucket(bEvents).Get([]byte(target)))
	if ok && loc.room == room && !loc.outlier {
		if err := tx.Bucket(bRelAt).Delete(tlKey(room, loc.depth, loc.stream)); err != nil {
			return err
		}
	}
	return tx.Bucket(bRelWait).Delete(roomStrKey(room, target))
}

// joinRelated moves the mark of an event that has just joined the room's
// timeline at (depth, stream) from relwait to relat, if it has one.
func joinRelated(tx *bolt.Tx, room uint64, eventID string, depth, stream int64) error {
	wait := tx.Bucket(bRelWait)
	k := roomStrKey(room, eventID)
	if wait.Get(k) == nil {
		return nil
	}
	if err := wait.Delete(k); err != nil {
		return err
	}
	return tx.Bucket(bRelAt).Put(tlKey(room, depth, stream), nil)
}

func addCount(b *bolt.Bucket, k []byte, delta int64) error {
	var n int64
	if v := b.Get(k); v != nil {
		n = int64(binary.BigEndian.Uint64(v))
	}
	n += delta
	if n <= 0 {
		return b.Delete(k)
	}
	return b.Put(k, u64(uint64(n)))
}

// indexEventRelations runs for every new timeline event: a redaction is
// recorded, and a relation is indexed unless the event was already
// redacted.
func indexEventRelations(tx *bolt.Tx, room uint64, ev *commands.Event, r *Row, stream int64) error {
	if ev.Type == "m.room.redaction" {
		if target := commands.RedactionTarget(ev.Redacts, ev.Content); target != "" {
			if err := applyRedaction(tx, room, target, ev.EventID); err != nil {
				return err
			}
		}
	}
	if r.RelType == "" || tx.Bucket(bRedacts).Get([]byte(ev.EventID)) != nil {
		return nil
	}
	return indexRelation(tx, room, r, ev.Depth, stream)
}

// markRoom updates the room's meta when change reports a change.
func markRoom(tx *bolt.Tx, room uint64, change func(*RoomMeta) bool) error {
	m, err := getRoomMeta(tx, room)
	if err != nil {
		return err
	}
	if !change(m) {
		return nil
	}
	return putRoomMeta(tx, room, m)
}

// RedactedBy returns the ID of the redaction that redacts eventID ("" if
// none).
func (v *RoomView) RedactedBy(eventID string) string {
	if !v.meta.HasRedactions {
		return ""
	}
	return string(v.bucket(bRedacts).Get([]byte(eventID)))
}

// RelationCount is how many events relate to target with relType; with a
// sender, only that sender's.
func (v *RoomView) RelationCount(target, relType, sender string) int64 {
	prefix := relPrefix(v.room, target, relType)
	k := prefix
	if sender != "" {
		k = relSenderKey(prefix, sender)
	}
	if val := v.bucket(bRelCount).Get(k); val != nil {
		return int64(binary.BigEndian.Uint64(val))
	}
	return 0
}

// Relations calls fn with the events relating to target with relType
// (their IDs and senders), ordered by (depth, stream ordering), newest
// first when newestFirst; fn returns false to stop.
func (v *RoomView) Relations(target, relType string, newestFirst bool, fn func(eventID, sender string) bool) {
	if v.room == 0 {
		return
	}
	prefix := relPrefix(v.room, target, relType)
	c := v.bucket(bRel).Cursor()
	var k, val []byte
	if newestFirst {
		end := append(append([]byte{}, prefix...), bytes.Repeat([]byte{0xff}, 16)...)
		c.Seek(end)
		k, val = c.Prev()
	} else {
		k, val = c.Seek(prefix)
	}
	for ; k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+16; k, val = step(c, newestFirst) {
		n, w := binary.Uvarint(val)
		if w <= 0 || uint64(len(val)-w) < n {
			continue
		}
		if !fn(string(val[w+int(n):]), string(val[w:w+int(n)])) {
			return
		}
	}
}

func step(c *bolt.Cursor, back bool) ([]byte, []byte) {
	if back {
		return c.Prev()
	}
	return c.Next()
}

// HasRelations reports whether any indexed event relates to target: one
// seek that spares the per-type look-ups for the many events nobody
// relates to.
func (v *RoomView) HasRelations(target string) bool {
	if v.room == 0 || !v.meta.HasRelations {
		return false
	}
	k := make([]byte, 8, 10+len(target))
	binary.BigEndian.PutUint64(k, v.room)
	k = binary.BigEndian.AppendUint16(k, uint16(len(target)))
	k = append(k, target...)
	got, _ := v.bucket(bRel).Cursor().Seek(k)
	return got != nil && bytes.HasPrefix(got, k)
}

// MarkRelated finds out which of rows, timeline rows of one page of the
// room (from Paginate, in either direction), have indexed relations, for
// Related: one seek into relat and a walk over the page's range of it. A
// walk that would pass many more marks than the page has rows (a filter
// that skipped most of the room) stops, and the rows it did not reach
// are left to Related's seek.
func (v *RoomView) MarkRelated(rows []*Row) {
	if v.room == 0 || len(rows) == 0 {
		return
	}
	if !v.meta.HasRelations {
		for _, r := range rows {
			r.related = 1
		}
		return
	}
	byKey := make([]*Row, len(rows))
	copy(byKey, rows)
	slices.SortFunc(byKey, func(a, b *Row) int {
		return cmp.Or(cmp.Compare(a.Depth, b.Depth), cmp.Compare(order(a.Stream), order(b.Stream)))
	})
	c := v.bucket(bRelAt).Cursor()
	budget := 2*len(rows) + 16
	var want [24]byte
	k, _ := c.Seek(tlKeyAt(want[:0], v.room, byKey[0].Depth, byKey[0].Stream))
	for _, r := range byKey {
		key := tlKeyAt(want[:0], v.room, r.Depth, r.Stream)
		for k != nil && bytes.Compare(k, key) < 0 {
			if budget--; budget < 0 {
				return
			}
			k, _ = c.Next()
		}
		r.related = 1
		if k != nil && bytes.Equal(k, key) {
			r.related = 2
		}
	}
}

// Related reports whether any indexed event relates to r: from
// MarkRelated when it looked r up, else by HasRelations.
func (v *RoomView) Related(r *Row) bool {
	if r.related != 0 {
		return r.related == 2
	}
	return v.HasRelations(r.EventID)
}

// HasGaps reports whether the room has backward extremities (events it
// names but does not hold): one seek.
func (v *RoomView) HasGaps() bool {
	if v.room == 0 {
		return false
	}
	prefix := u64(v.room)
	k, _ := v.bucket(bBack).Cursor().Seek(prefix)
	return k != nil && bytes.HasPrefix(k, prefix)
}

// Holds reports whether the room holds an event (timeline or outlier).
func (v *RoomView) Holds(eventID string) bool {
	loc, ok := parseLoc(v.bucket(bEvents).Get([]byte(eventID)))
	return ok && loc.room == v.room
}
