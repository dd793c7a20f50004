package projections

import (
	"bytes"
	"encoding/binary"

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
	return addCount(counts, relSenderKey(prefix, r.Sender), 1)
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
	return addCount(counts, relSenderKey(prefix, r.Sender), -1)
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
