package projections

import (
	"bytes"
	"encoding/binary"
	"slices"
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
// deletes ahead at a time: about 70 bytes of memory each (the event ID
// and the row's position). The larger it is, the narrower the slice of
// the index each transaction covers.
var unindexWindow = 200_000 // a variable for the tests

// unindexFill is the most rows one step of the janitor reads to fill its
// window. Filling and sorting a window of 200,000 rows in one step took
// 234 ms of one core, at the very moment a purge was applied: with reads
// at 62% of the service's capacity, their queue overflowed, NATS dropped
// requests and the reads did not recover until the purge ended
// (BENCHMARKS.md, session 15). A step of 10,000 rows costs a few
// milliseconds, like a row transaction, and the janitor rests after it as
// after any step.
var unindexFill = 10_000 // a variable for the tests

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
// entries still to delete, and how many rows of the job the window covers
// that the row transactions have not removed yet.
//
// It is filled in steps of unindexFill rows (from, while filling), each
// adding a run of entries sorted by ID; the transactions that delete them
// take them from all runs at once in key order (runHeap), so that they
// go as one sorted window would, without a sort of the whole window in
// one step. The IDs are kept end to end in ids, so that the collector
// has no pointers to follow.
type unindexAhead struct {
	room    uint64
	filling bool
	from    []byte // the timeline key the next fill step starts at
	rows    int
	ids     []byte
	runs    [][]unindexEntry
	heads   runHeap
	batch   []unindexEntry // the entries of the transaction under way
}

// unindexEntry is an entry of the window: its ID (ids[off:off+n]) and its
// row's position.
type unindexEntry struct {
	off, n        uint32
	depth, stream int64
}

func (w *unindexAhead) id(e unindexEntry) []byte { return w.ids[e.off : e.off+e.n] }

// empty reports whether the window has no entry left to delete.
func (w *unindexAhead) empty() bool { return len(w.heads) == 0 }

// runHeap orders the window's non-empty runs by their first entry's ID.
type runHeap []int

// startMerge sets heads up once the window is filled.
func (w *unindexAhead) startMerge() {
	w.heads = w.heads[:0]
	for i, r := range w.runs {
		if len(r) > 0 {
			w.heads = append(w.heads, i)
		}
	}
	for i := len(w.heads)/2 - 1; i >= 0; i-- {
		w.down(i)
	}
}

// less compares the heads of the runs at positions i and j of the heap.
func (w *unindexAhead) less(i, j int) bool {
	return bytes.Compare(w.id(w.runs[w.heads[i]][0]), w.id(w.runs[w.heads[j]][0])) < 0
}

func (w *unindexAhead) down(i int) {
	h := w.heads
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		if r := l + 1; r < len(h) && w.less(r, l) {
			l = r
		}
		if !w.less(l, i) {
			return
		}
		h[i], h[l] = h[l], h[i]
		i = l
	}
}

// next takes up to n entries, the lowest IDs of the window, into w.batch.
func (w *unindexAhead) next(n int) []unindexEntry {
	w.batch = w.batch[:0]
	for len(w.batch) < n && len(w.heads) > 0 {
		run := &w.runs[w.heads[0]]
		w.batch = append(w.batch, (*run)[0])
		if *run = (*run)[1:]; len(*run) == 0 {
			last := len(w.heads) - 1
			w.heads[0] = w.heads[last]
			w.heads = w.heads[:last]
		}
		w.down(0)
	}
	return w.batch
}

// unindexStep deletes up to batch index entries of the window of the
// janitor's first job, or takes a step of filling it: a new job's, or
// the next once the row transactions have gone through the previous
// one. It reports whether it did anything; when it did not, the job's row
// transactions come next.
func (s *Store) unindexStep(batch int) (did bool, times janitorTimes, err error) {
	w := &s.ahead
	var found bool
	y := &yielder{}
	err = s.db.View(func(tx *bolt.Tx) error {
		k, v := tx.Bucket(bJanitor).Cursor().First()
		if k == nil {
			return nil
		}
		if string(v) == janitorDrop {
			return nil // no window: dropRoomBatch deletes the entries by prefix
		}
		found = true
		room := binary.BigEndian.Uint64(k)
		// A new job, or the row transactions are through the window.
		if room != w.room || (!w.filling && w.empty() && w.rows <= 0) {
			w.reset(room)
		}
		if w.filling {
			y.start = time.Now()
			did, err = fillUnindex(tx, w, y)
			return err
		}
		return nil
	})
	if err != nil || !found {
		*w = unindexAhead{}
		return false, janitorTimes{}, err
	}
	if did || w.empty() {
		// A fill step: RunJanitor rests for its work, not for the time
		// it yielded, and reports it as no transaction of the writer.
		return did, janitorTimes{offCPU: y.yielded, read: did}, nil
	}
	batchOf := w.next(batch)
	_, times, err = s.janitorUpdate(func(tx *bolt.Tx, y *yielder) error {
		c := tx.Bucket(bEvents).Cursor()
		relAt := tx.Bucket(bRelAt)
		var key []byte
		for _, e := range batchOf {
			if relAt.Get(tlKey(w.room, e.depth, e.stream)) != nil {
				continue // a target of relations since the window was filled
			}
			key = append(binary.BigEndian.AppendUint64(key[:0], w.room), w.id(e)...)
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
		*w = unindexAhead{} // walked again: the rows delete what is left
		return false, janitorTimes{}, err
	}
	return true, times, nil
}

// reset starts a new window for room, keeping the buffers.
func (w *unindexAhead) reset(room uint64) {
	*w = unindexAhead{room: room, filling: true, from: u64(room),
		ids: w.ids[:0], runs: w.runs[:0], heads: w.heads[:0], batch: w.batch[:0]}
}

// fillUnindex takes a step of filling the window: it walks up to
// unindexFill rows of the job's room below its floor, from where the last
// step stopped, and adds a run of the index entries of those the row
// transactions will delete, sorted by ID. The window is full when it
// covers unindexWindow rows or reaches the floor. It yields to other
// goroutines as a janitor transaction does, and reports whether it read
// any row.
func fillUnindex(tx *bolt.Tx, w *unindexAhead, y *yielder) (bool, error) {
	prefix := u64(w.room)
	meta, err := getRoomMeta(tx, w.room)
	if err != nil {
		return false, err
	}
	floor := meta.Floor
	server := serverName(tx)
	relAt := tx.Bucket(bRelAt)
	c := tx.Bucket(bTimeline).Cursor()
	run := make([]unindexEntry, 0, min(unindexFill, unindexWindow-w.rows))
	read := 0
	k, v := c.Seek(w.from)
	for ; k != nil && bytes.HasPrefix(k, prefix) && w.rows < unindexWindow && read < unindexFill; k, v = c.Next() {
		_, depth, stream := parseTLKey(k)
		if depth >= floor {
			break
		}
		w.rows++
		read++
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
		run = append(run, unindexEntry{off: uint32(len(w.ids)), n: uint32(len(h.eventID)), depth: depth, stream: stream})
		w.ids = append(w.ids, h.eventID...)
	}
	slices.SortFunc(run, func(a, b unindexEntry) int { return bytes.Compare(w.id(a), w.id(b)) })
	w.runs = append(w.runs, run)
	full := k == nil || !bytes.HasPrefix(k, prefix) || w.rows >= unindexWindow
	if !full {
		_, depth, _ := parseTLKey(k)
		full = depth >= floor
	}
	if full {
		w.filling, w.from = false, nil
		w.startMerge()
	} else {
		w.from = append(w.from[:0], k...)
	}
	return read > 0, nil
}
