package projections

import (
	"bytes"
	"encoding/binary"

	bolt "go.etcd.io/bbolt"
)

// The buckets of version 1 that version 2 replaced, keyed by event ID
// alone: the events index (its values start with the room number:
// room|depth|order|outlier), the outliers and the redactions.
var (
	legacyEvents     = []byte("events")
	legacyOutliers   = []byte("outliers")
	legacyRedactions = []byte("redactions")
)

// migrateEventIndex moves a version 1 file's events index, outliers and
// redactions to their version 2 buckets, keyed room|event ID (evKey), in
// transactions of up to migrateBatch entries, then drops the old buckets
// and sets the version.
//
// It starts by emptying the new buckets, and the old ones are only read
// until the last transaction, so a crash in between starts over and ends
// the same, even if version 1 ran in between.
//
// What version 1 could not reach is dropped rather than moved: an outlier
// row without an outlier entry in the index, an entry it could not read,
// a redaction whose target and redaction event are both unknown. So is
// what a purge_room left behind once its janitor was done (version 1 kept
// a retired room number's outliers and their entries): the janitor
// deletes a retired number's RoomMeta last, and entries of a room number
// without one are not moved.
func (s *Store) migrateEventIndex() error {
	steps := []struct {
		from []byte
		move func(tx *bolt.Tx, k, v []byte) error
	}{
		{legacyEvents, moveEventEntry},
		{legacyRedactions, moveRedaction},
	}
	step := -1 // -1: empty the new buckets
	var after []byte
	for {
		done := false
		err := s.db.Update(func(tx *bolt.Tx) error {
			meta := tx.Bucket(bMeta)
			if binary.BigEndian.Uint64(meta.Get([]byte("version"))) == formatVersion {
				done = true
				return nil
			}
			if step < 0 {
				for _, name := range [][]byte{bEvents, bOutliers, bRedacts} {
					if err := tx.DeleteBucket(name); err != nil {
						return err
					}
					if _, err := tx.CreateBucket(name); err != nil {
						return err
					}
				}
				step = 0
				return nil
			}
			for ; step < len(steps); step, after = step+1, nil {
				b := tx.Bucket(steps[step].from)
				if b == nil {
					continue
				}
				c := b.Cursor()
				k, v := firstAfter(c, after)
				for n := 0; k != nil; k, v = c.Next() {
					if n == migrateBatch {
						return nil
					}
					n++
					after = append(after[:0], k...)
					if err := steps[step].move(tx, k, v); err != nil {
						return err
					}
				}
			}
			for _, name := range [][]byte{legacyEvents, legacyOutliers, legacyRedactions} {
				if tx.Bucket(name) != nil {
					if err := tx.DeleteBucket(name); err != nil {
						return err
					}
				}
			}
			done = true
			return meta.Put([]byte("version"), u64(formatVersion))
		})
		if err != nil || done {
			return err
		}
	}
}

// migrateBatch bounds the entries migrateEventIndex moves per transaction
// (a variable for the tests).
var migrateBatch = 100_000

// legacyRoom is the room number of a version 1 index entry, if it is
// readable and the room number still has its RoomMeta.
func legacyRoom(tx *bolt.Tx, v []byte) (uint64, bool) {
	if len(v) != 25 {
		return 0, false
	}
	room := binary.BigEndian.Uint64(v)
	return room, tx.Bucket(bRoomMeta).Get(u64(room)) != nil
}

// moveEventEntry moves a version 1 index entry, and its outlier row if it
// is an outlier's.
func moveEventEntry(tx *bolt.Tx, id, v []byte) error {
	room, ok := legacyRoom(tx, v)
	if !ok {
		return nil
	}
	key := evKeyAt(nil, room, id)
	if err := tx.Bucket(bEvents).Put(key, bytes.Clone(v[8:])); err != nil {
		return err
	}
	if v[24] != 1 {
		return nil
	}
	if old := tx.Bucket(legacyOutliers); old != nil {
		if row := old.Get(id); row != nil {
			return tx.Bucket(bOutliers).Put(key, bytes.Clone(row))
		}
	}
	return nil
}

// moveRedaction moves a version 1 redaction to the room of its target, or
// of the redaction event when the target is unknown (a redaction may
// arrive first).
func moveRedaction(tx *bolt.Tx, target, redaction []byte) error {
	old := tx.Bucket(legacyEvents)
	if old == nil {
		return nil
	}
	room, ok := legacyRoom(tx, old.Get(target))
	if !ok {
		if room, ok = legacyRoom(tx, old.Get(redaction)); !ok {
			return nil
		}
	}
	return tx.Bucket(bRedacts).Put(evKeyAt(nil, room, target), bytes.Clone(redaction))
}
