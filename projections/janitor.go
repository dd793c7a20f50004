package projections

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/commands"
)

// Janitor job kinds (values of the janitor bucket).
const (
	janitorFloor = ""     // remove the rows below the room's floor
	janitorDrop  = "drop" // delete every row of a room number purge_room retired
)

// JanitorBatch is the number of rows one janitor transaction handles: small
// enough that the partitions' commits never wait long for the writer.
const JanitorBatch = 2000

// WakeJanitor tells a running janitor that there may be work.
func (s *Store) WakeJanitor() {
	select {
	case s.janitor <- struct{}{}:
	default:
	}
}

// RunJanitor removes purged rows in batches of JanitorBatch until ctx ends,
// waking on WakeJanitor and every interval, resting after each batch as
// long as it took. Each batch is one short
// transaction; reads never wait for it, and a crash loses at most the
// batch in flight, which the next run redoes.
func (s *Store) RunJanitor(ctx context.Context, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for {
			start := time.Now()
			did, err := s.JanitorStep(JanitorBatch)
			if err != nil {
				log.Error("janitor batch failed", "err", err)
				break
			}
			if !did || ctx.Err() != nil {
				break
			}
			// Pace: rest as long as the batch took, so the janitor uses at
			// most about half of a core and reads keep the rest.
			select {
			case <-ctx.Done():
			case <-time.After(time.Since(start)):
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-s.janitor:
		case <-t.C:
		}
	}
}

// JanitorStep runs one batch of the first pending job; it reports whether
// there was work.
func (s *Store) JanitorStep(batch int) (bool, error) {
	did := false
	err := s.db.Update(func(tx *bolt.Tx) error {
		k, v := tx.Bucket(bJanitor).Cursor().First()
		if k == nil {
			return nil
		}
		did = true
		room := binary.BigEndian.Uint64(k)
		done := false
		var err error
		if string(v) == janitorDrop {
			done, err = dropRoomBatch(tx, room, batch)
		} else {
			done, err = floorBatch(tx, room, batch)
		}
		if err != nil || !done {
			return err
		}
		return tx.Bucket(bJanitor).Delete(k)
	})
	return did, err
}

// floorBatch removes up to batch timeline rows below the room's floor, as
// Synapse's _purge_history_txn does (SYNAPSE.md 6.4): state events, and
// local events unless delete_local_events, survive as outliers; the rest
// are deleted, and their log messages are queued for erasure.
func floorBatch(tx *bolt.Tx, room uint64, batch int) (bool, error) {
	meta, err := getRoomMeta(tx, room)
	if err != nil {
		return false, err
	}
	server := serverName(tx)
	tl := tx.Bucket(bTimeline)
	c := tl.Cursor()
	prefix := u64(room)
	type sel struct {
		key   []byte
		row   *Row
		depth int64
		strm  int64
	}
	var picked []sel
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(picked) < batch; k, v = c.Next() {
		_, depth, stream := parseTLKey(k)
		if depth >= meta.Floor {
			break
		}
		r, err := unmarshalRow(v)
		if err != nil {
			return false, err
		}
		picked = append(picked, sel{append([]byte{}, k...), r, depth, stream})
	}
	for _, p := range picked {
		r := p.row
		deleteIt := !r.IsState() && (meta.DeleteLocal || !commands.IsLocalUser(r.Sender, server))
		if err := removeFromTimeline(tx, room, p.key, r, p.depth, p.strm); err != nil {
			return false, err
		}
		if deleteIt {
			if err := tx.Bucket(bEvents).Delete([]byte(r.EventID)); err != nil {
				return false, err
			}
			seq := p.strm
			if seq < 0 {
				seq = -seq
			}
			if err := tx.Bucket(bErase).Put(u64(uint64(seq)), nil); err != nil {
				return false, err
			}
			meta.Deleted++
		} else {
			r.Flags |= flagOutlier
			if err := tx.Bucket(bOutliers).Put([]byte(r.EventID), r.marshal()); err != nil {
				return false, err
			}
			loc := evLoc{room: room, depth: p.depth, stream: p.strm, outlier: true}
			if err := tx.Bucket(bEvents).Put([]byte(r.EventID), loc.bytes()); err != nil {
				return false, err
			}
			meta.Outliered++
		}
		// A purged event that a kept event names becomes a backward
		// extremity.
		edges := tx.Bucket(bEdges).Cursor()
		ep := append(roomStrKey(room, r.EventID), 0)
		for k, v := edges.Seek(ep); k != nil && bytes.HasPrefix(k, ep); k, v = edges.Next() {
			if int64(binary.BigEndian.Uint64(v)) >= meta.Floor {
				if err := tx.Bucket(bBack).Put(roomStrKey(room, r.EventID), v); err != nil {
					return false, err
				}
				break
			}
		}
	}
	done := len(picked) < batch
	if done {
		// Backward extremities below the floor lead only into purged
		// history: nobody backfills there.
		back := tx.Bucket(bBack)
		bc := back.Cursor()
		var stale [][]byte
		for k, v := bc.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = bc.Next() {
			if int64(binary.BigEndian.Uint64(v)) < meta.Floor {
				stale = append(stale, append([]byte{}, k...))
			}
		}
		for _, k := range stale {
			if err := back.Delete(k); err != nil {
				return false, err
			}
		}
		meta.PurgedTo = meta.Floor
	}
	return done, putRoomMeta(tx, room, meta)
}

// removeFromTimeline takes a row out of the timeline and of the indexes
// that only timeline events are in.
func removeFromTimeline(tx *bolt.Tx, room uint64, key []byte, r *Row, depth, stream int64) error {
	if err := tx.Bucket(bTimeline).Delete(key); err != nil {
		return err
	}
	if err := tx.Bucket(bRStream).Delete(binary.BigEndian.AppendUint64(u64(room), order(stream))); err != nil {
		return err
	}
	if err := tx.Bucket(bFwd).Delete(roomStrKey(room, r.EventID)); err != nil {
		return err
	}
	for _, p := range r.Prevs() {
		if err := tx.Bucket(bEdges).Delete(edgeKey(room, p, r.EventID)); err != nil {
			return err
		}
	}
	if r.RelType != "" {
		return unindexRelation(tx, room, r, depth, stream)
	}
	return nil
}

// dropRoomBatch deletes up to batch keys of a room number that purge_room
// retired, bucket by bucket.
func dropRoomBatch(tx *bolt.Tx, room uint64, batch int) (bool, error) {
	prefix := u64(room)
	left := batch
	// Timeline rows first: their event IDs key the events index.
	tl := tx.Bucket(bTimeline)
	c := tl.Cursor()
	var keys [][]byte
	var ids []string
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(keys) < left; k, v = c.Next() {
		keys = append(keys, append([]byte{}, k...))
		if r, err := unmarshalRow(v); err == nil {
			ids = append(ids, r.EventID)
		}
	}
	for _, k := range keys {
		if err := tl.Delete(k); err != nil {
			return false, err
		}
	}
	events := tx.Bucket(bEvents)
	for _, id := range ids {
		if loc, ok := parseLoc(events.Get([]byte(id))); ok && loc.room == room {
			if err := events.Delete([]byte(id)); err != nil {
				return false, err
			}
		}
		if err := tx.Bucket(bRedacts).Delete([]byte(id)); err != nil {
			return false, err
		}
	}
	left -= len(keys)
	if left <= 0 {
		return false, nil
	}
	for _, name := range [][]byte{bState, bFwd, bBack, bForgot, bRel, bRelCount, bEdges, bRStream} {
		b := tx.Bucket(name)
		c := b.Cursor()
		var ks [][]byte
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(ks) < left; k, _ = c.Next() {
			ks = append(ks, append([]byte{}, k...))
		}
		for _, k := range ks {
			if err := b.Delete(k); err != nil {
				return false, err
			}
		}
		left -= len(ks)
		if left <= 0 {
			return false, nil
		}
	}
	return true, tx.Bucket(bRoomMeta).Delete(prefix)
}
