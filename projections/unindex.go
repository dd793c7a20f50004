package projections

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The events index is keyed by room and event ID (evKey), and the IDs are
// hashes, so the entries of the rows a janitor transaction removes are
// scattered over the room's part of the index: deleting them row by row
// dirtied about one page of it per row. With IDs shaped like a
// homeserver's, a purge of 1M events removed 17k rows a second, writing
// 4.9x the bytes of the rows themselves (BENCHMARKS.md, "Realistic event
// IDs"; then the index was keyed by ID alone, which changes nothing for a
// purge of a room that holds nearly the whole index). So the janitor
// deletes the index entries of the next unindexWindow rows of its job
// first, in key order, in transactions of the usual size: each of them
// then covers a narrow slice of the index. The row transactions that
// follow find those entries gone. The same purge then removed 57-61k rows
// a second, writing half the bytes (two runs). It helps as long as the
// window's entries are dense in the room's part of the index: for a room
// many times the window, each transaction's entries still fall on leaves
// of their own, and only a sweep of the room's entries in key order would
// help (BENCHMARKS.md). A room number that purge_room retired needs no
// window: its entries are deleted by prefix (dropRoomBatch).
//
// Targets of relations are left to their rows: removing a relation's
// marks looks its target's entry up (markAt). A row that became a target
// after the window was filled is checked again when its entry's turn
// comes.
//
// The row transactions still delete (or, for the rows a purge keeps,
// rewrite) each row's entry as before, so a window lost to a crash or to
// a change of job is simply walked again. An entry is deleted ahead only
// if it still points at the very row (depth, stream, not an outlier), and
// a row deletes its entry only on the same condition. The events of those
// rows are below the room's floor: pages never show them. A lookup by ID
// of such an event (an admin's purge by event ID, a read of one event)
// finds nothing from the moment its entry goes ahead, not from its row
// transaction on; an event that arrives again in between is applied as it
// would be after the janitor (dropped below the floor, or kept as an
// outlier). With nothing applied meanwhile, every bucket ends byte for
// byte as without the window (TestJanitor_BatchSizesAgree).

// unindexWindow is the number of rows whose index entries the janitor
// deletes ahead at a time: about 90 bytes of memory each (the event ID
// and the row's position). The larger it is, the narrower the slice of
// the index each transaction covers.
var unindexWindow = 200_000 // a variable for the tests

// unindexBatch is how many index entries a transaction of the window
// deletes, in rows of the janitor's batch (at most JanitorSlice): entries
// in key order are cheap beside rows, and a transaction of as many
// entries as a row transaction has rows spent much of its time on its
// commit. With 4, BenchmarkJanitor (batch=1000, the janitor's usual
// transaction) removed rows 1.12x as fast (three alternating runs,
// BENCHMARKS.md, session 13): a quarter of the window's commits, each of
// its transactions still shorter than a row transaction (estimated from
// the benchmark's totals).
const unindexBatch = 4

// unindexAhead is the janitor's window: the job it belongs to, the
// entries still to delete in key order, and how many rows of the job the
// window covers that the row transactions have not removed yet.
type unindexAhead struct {
	room    uint64
	entries []unindexEntry
	rows    int
}

type unindexEntry struct {
	id            string
	depth, stream int64
}

// unindexStep deletes up to batch index entries of the window of the
// janitor's first job, filling the window first when the row
// transactions have gone through the previous one. It reports whether it
// did anything; when it did not, the job's row transactions come next.
func (s *Store) unindexStep(batch int) (did bool, times janitorTimes, err error) {
	w := &s.ahead
	var job unindexAhead
	var found, fill bool
	err = s.db.View(func(tx *bolt.Tx) error {
		k, v := tx.Bucket(bJanitor).Cursor().First()
		if k == nil {
			return nil
		}
		if string(v) == janitorDrop {
			return nil // no window: dropRoomBatch deletes the entries by prefix
		}
		found = true
		job.room = binary.BigEndian.Uint64(k)
		// A new job, or the row transactions are through the window.
		if fill = job.room != w.room || (len(w.entries) == 0 && w.rows <= 0); fill {
			return fillUnindex(tx, &job, &yielder{start: time.Now()})
		}
		return nil
	})
	if err != nil || !found {
		*w = unindexAhead{}
		return false, janitorTimes{}, err
	}
	if fill {
		slices.SortFunc(job.entries, func(a, b unindexEntry) int { return strings.Compare(a.id, b.id) })
		*w = job
	}
	if len(w.entries) == 0 {
		return false, janitorTimes{}, nil
	}
	n := min(batch, len(w.entries))
	_, times, err = s.janitorUpdate(func(tx *bolt.Tx, y *yielder) error {
		c := tx.Bucket(bEvents).Cursor()
		relAt := tx.Bucket(bRelAt)
		var key []byte
		for _, e := range w.entries[:n] {
			if relAt.Get(tlKey(w.room, e.depth, e.stream)) != nil {
				continue // a target of relations since the window was filled
			}
			key = append(binary.BigEndian.AppendUint64(key[:0], w.room), e.id...)
			k, v := c.Seek(key)
			if k == nil || !bytes.Equal(k, key) {
				continue
			}
			if loc, ok := parseLoc(w.room, v); !ok || !loc.isRow(w.room, e.depth, e.stream) {
				continue
			}
			if err := c.Delete(); err != nil {
				return err
			}
			y.step()
		}
		return nil
	})
	if err != nil {
		return false, janitorTimes{}, err
	}
	w.entries = w.entries[n:]
	return true, times, nil
}

// fillUnindex walks the lowest unindexWindow rows of the job's room below
// its floor and collects the index entries of those the row transactions
// will delete. It yields to other goroutines as a janitor transaction
// does.
func fillUnindex(tx *bolt.Tx, job *unindexAhead, y *yielder) error {
	prefix := u64(job.room)
	meta, err := getRoomMeta(tx, job.room)
	if err != nil {
		return err
	}
	floor := meta.Floor
	server := serverName(tx)
	relAt := tx.Bucket(bRelAt)
	c := tx.Bucket(bTimeline).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && job.rows < unindexWindow; k, v = c.Next() {
		_, depth, stream := parseTLKey(k)
		if depth >= floor {
			break
		}
		job.rows++
		y.step()
		h, err := readPurgeHead(v)
		if err != nil {
			continue // the row transaction reports it
		}
		if !meta.deletes(depth, h.flags&flagState != 0, isLocalSender(h.sender, server)) {
			continue // kept as an outlier
		}
		if relAt.Get(k) != nil {
			// A target of relations: removing their marks looks its
			// entry up (markAt), so it goes with its row.
			continue
		}
		job.entries = append(job.entries, unindexEntry{id: string(h.eventID), depth: depth, stream: stream})
	}
	return nil
}
