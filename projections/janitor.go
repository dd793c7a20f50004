package projections

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Janitor job kinds (values of the janitor bucket).
const (
	janitorFloor = ""     // remove the rows below the room's floor
	janitorDrop  = "drop" // delete every row of a room number purge_room retired
)

// JanitorBatch is the most rows one janitor transaction handles: small
// enough that the partitions' commits never wait long for the writer.
const JanitorBatch = 2000

// JanitorSlice is the number of rows of one transaction of RunJanitor, the
// janitor that runs next to reads: a few milliseconds of work, so that the
// partitions' commits wait at most that long for the writer, while the
// commit's fixed costs (writing the freelist, the fsync) stay small beside
// the rows' own.
const JanitorSlice = 1000

// The janitor yields its goroutine every janitorYield rows, so that every
// goroutine that became runnable meanwhile (a read, its reply) runs first:
// a read waits for a few dozen rows (tens of microseconds), not for a
// scheduler time slice (10 ms) nor a whole transaction. A transaction
// stops yielding once it has lasted janitorYieldFor, so that reads that
// keep both cores busy slow the janitor down but cannot stop it.
const (
	janitorYield    = 32
	janitorYieldFor = 20 * time.Millisecond
)

// WakeJanitor tells a running janitor that there may be work.
func (s *Store) WakeJanitor() {
	select {
	case s.janitor <- struct{}{}:
	default:
	}
}

// RunJanitor removes purged rows in transactions of JanitorSlice rows
// (up to JanitorBatch, see nextSlice) until ctx ends, waking on
// WakeJanitor and every interval. Each transaction is short, and a crash
// loses at most the one in flight, which the next run redoes. Reads never
// wait for it: it yields to them every janitorYield rows, and after each
// transaction it rests as long as the transaction used the CPU (its time
// less the time it waited for bbolt's writer, the time it yielded, and
// its commit's writes and fsyncs), so that it takes at most half of a
// core; the waits and the commit's disk time are not rested for, since
// reads do not wait for them. Before each transaction it asks
// BeforeJanitor, which holds it back while reads queue.
func (s *Store) RunJanitor(ctx context.Context, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	slice := JanitorSlice
	for {
		for {
			if s.BeforeJanitor != nil {
				s.BeforeJanitor(ctx)
			}
			start := time.Now()
			did, times, err := s.janitorStep(slice)
			if err != nil {
				log.Error("janitor batch failed", "err", err)
				break
			}
			if !did {
				break
			}
			took := time.Since(start)
			// A step of filling the unindex window (times.read) holds
			// no writer: it says nothing of the writer's contention,
			// and is no transaction of the metrics.
			if !times.read {
				slice = nextSlice(slice, times.waited, took-times.waited)
				if s.ObserveJanitor != nil {
					// Reported even when ctx has ended meanwhile: the
					// transaction is committed.
					s.ObserveJanitor(JanitorStats{Rows: times.rows, Waited: times.waited, Held: took - times.waited})
				}
			}
			if ctx.Err() != nil {
				break
			}
			// Rest as long as the transaction used the CPU.
			select {
			case <-ctx.Done():
			case <-time.After(took - times.offCPU):
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

// nextSlice is the number of rows of RunJanitor's next transaction, after
// one of slice rows that waited for bbolt's writer (held by the
// projector's commits) and then held it. Each transaction waits about as
// long whatever its size, so while the wait is a third of its time or
// more (waited > held/2), the janitor doubles its transactions, up to
// JanitorBatch; once the writer is nearly free (waited < held/8), it
// halves them back to JanitorSlice. The projector's commits then wait at
// most one JanitorBatch transaction. In the mixed workload the janitor
// waited about 7.5 ms a transaction, 0.8x the time it held the writer,
// and 2,000-row transactions removed the rows 1.5x as fast as 1,000-row
// ones (BENCHMARKS.md, session 12).
func nextSlice(slice int, waited, held time.Duration) int {
	switch {
	case waited > held/2:
		return min(2*slice, JanitorBatch)
	case waited < held/8:
		return max(slice/2, JanitorSlice)
	}
	return slice
}

// JanitorStep runs one batch of the first pending job; it reports whether
// there was work.
func (s *Store) JanitorStep(batch int) (bool, error) {
	did, _, err := s.janitorStep(batch)
	return did, err
}

// janitorStep is JanitorStep; it also returns where the batch's time went
// (janitorUpdate).
func (s *Store) janitorStep(batch int) (did bool, times janitorTimes, err error) {
	s.jmu.Lock()
	defer s.jmu.Unlock()
	if did, times, err = s.unindexStep(unindexBatch * min(batch, JanitorSlice)); did || err != nil {
		return did, times, err
	}
	y, times, err := s.janitorUpdate(func(tx *bolt.Tx, y *yielder) error {
		k, v := tx.Bucket(bJanitor).Cursor().First()
		if k == nil {
			return nil
		}
		did = true
		room := binary.BigEndian.Uint64(k)
		done := false
		var err error
		if string(v) == janitorDrop {
			done, err = dropRoomBatch(tx, room, batch, y)
		} else {
			done, err = floorBatch(tx, room, batch, y)
		}
		if err != nil || !done {
			return err
		}
		return tx.Bucket(bJanitor).Delete(k)
	})
	s.ahead.rows -= y.rows
	times.rows = y.rows
	return did, times, err
}

// janitorTimes is where a janitor transaction's time went, besides its
// own work: waited is the time it waited for bbolt's writer (which the
// projector's commits hold), offCPU that wait, the time it yielded to
// others, and its commit's writes and fsyncs. RunJanitor rests for the
// rest.
type janitorTimes struct {
	waited, offCPU time.Duration
	rows           int  // timeline rows removed (deleted, or kept as outliers)
	read           bool // a step of filling the unindex window: a read-only transaction
}

// JanitorStats describes one transaction of RunJanitor, for metrics:
// the timeline rows it removed (deleted, or kept as outliers; 0 for the
// unindex window's and the outlier sweep's transactions), how long it
// waited for bbolt's writer, and how long it held it.
type JanitorStats struct {
	Rows         int
	Waited, Held time.Duration
}

// janitorUpdate runs fn in a write transaction, with a yielder that
// starts once the transaction has begun, and reports where its time went.
func (s *Store) janitorUpdate(fn func(*bolt.Tx, *yielder) error) (y *yielder, times janitorTimes, err error) {
	called := time.Now()
	y = &yielder{}
	var wtx *bolt.Tx
	err = s.update(func(tx *bolt.Tx) error {
		wtx = tx
		y.start = time.Now()
		return fn(tx, y)
	})
	if wtx == nil {
		return y, janitorTimes{}, err
	}
	st := wtx.Stats()
	times.waited = y.start.Sub(called)
	times.offCPU = times.waited + y.yielded + st.GetWriteTime()
	return y, times, err
}

// yielder yields the janitor's goroutine every janitorYield steps (rows,
// keys, outliers examined) of a transaction, for janitorYieldFor at most,
// and counts the time it left to others. rows counts the timeline rows
// below a floor the transaction removed (the unindex window counts them
// down; metrics).
type yielder struct {
	start   time.Time
	steps   int
	rows    int
	yielded time.Duration
}

// step is a unit of the transaction's work.
func (y *yielder) step() {
	y.steps++
	if y.steps%janitorYield != 0 {
		return
	}
	now := time.Now()
	if now.Sub(y.start) > janitorYieldFor {
		return
	}
	runtime.Gosched()
	y.yielded += time.Since(now)
}

// floorBatch removes up to batch timeline rows below the room's floor, as
// Synapse's _purge_history_txn does (SYNAPSE.md 6.4): state events, and
// local events unless delete_local_events, survive as outliers; the rest
// are deleted, and their log messages are queued for erasure.
//
// It takes the room's lowest rows, as a resumed purge expects, but deletes
// them walking down from the highest, with one cursor: walking down,
// Cursor.Delete never skips a row, and a node never shifts the rows after
// the one it deletes. The index keys of each row go through one reused
// cursor per bucket, and the row is read in place: a few allocations per
// deleted row, where a Bucket.Delete alone costs a cursor and its stack.
// The erasure keys (sequences, in the room's bucket of erasein) are put in
// ascending order, mostly after those of the batches before (a deleted
// event's extra messages, extraSeqKey, may lie anywhere in the log).
func floorBatch(tx *bolt.Tx, room uint64, batch int, y *yielder) (bool, error) {
	meta, err := getRoomMeta(tx, room)
	if err != nil {
		return false, err
	}
	j := newPurgeTx(tx, room, meta.Floor)
	server := serverName(tx)
	if meta.Sweep {
		if err := j.sweepOutliers(meta, batch, y); err != nil {
			return false, err
		}
		return !meta.Sweep && meta.PurgedTo >= meta.Floor, putRoomMeta(tx, room, meta)
	}
	prefix := u64(room)
	var erase []uint64
	n, err := deleteLowest(tx.Bucket(bTimeline).Cursor(), prefix, batch, y, func(k []byte) bool {
		_, depth, _ := parseTLKey(k)
		return depth < meta.Floor
	}, func(k, v []byte) error {
		_, depth, stream := parseTLKey(k)
		h, err := readPurgeHead(v)
		if err != nil {
			return err
		}
		if err := j.unindex(&h, depth, stream); err != nil {
			return err
		}
		if err := j.waitMark(h.eventID, depth, stream); err != nil {
			return err
		}
		if meta.deletes(depth, h.flags&flagState != 0, isLocalSender(h.sender, server)) {
			// Only the entry of this very row: the event may have come
			// back as an outlier since its entry was deleted ahead
			// (unindex.go).
			// An outlier logged since then is kept, with the messages
			// logged after it (extraBelow).
			extraBelow := uint64(math.MaxUint64)
			ec, ek := j.cur(bEvents).c, j.roomKey(h.eventID)
			if k, v := ec.Seek(ek); k != nil && bytes.Equal(k, ek) {
				if l, ok := parseLoc(room, v); ok && l.isRow(room, depth, stream) {
					if err := ec.Delete(); err != nil {
						return err
					}
				} else if ok && l.outlier {
					extraBelow = logSeq(l.stream)
				}
			}
			if meta.HasRedactions {
				if err := j.dropMarks(&h, stream); err != nil {
					return err
				}
			}
			// And its received entry: Synapse's purge_up_to_ts look-up
			// no longer counts a deleted event. A row kept as an
			// outlier keeps its entry, as Synapse keeps its events row
			// and received_ts; the drop of a purge_room deletes it.
			if err := j.dropReceived(&h, stream); err != nil {
				return err
			}
			erase = append(erase, logSeq(stream))
			if meta.HasExtraSeqs {
				if erase, err = j.takeExtraSeqs(h.eventID, extraBelow, erase); err != nil {
					return err
				}
			}
			meta.Deleted++
		} else {
			// The row as it is, flagged as an outlier (what marshal
			// writes for the decoded row with the flag set).
			row := append([]byte(nil), v...)
			row[1] |= flagOutlier
			if err := j.b(bOutliers).Put(j.roomKey(h.eventID), row); err != nil {
				return err
			}
			loc := evLoc{room: room, depth: depth, stream: stream, outlier: true}
			if err := j.b(bEvents).Put(j.roomKey(h.eventID), loc.bytes()); err != nil {
				return err
			}
			meta.Outliered++
		}
		return j.markExtremity(h.eventID, depth)
	})
	if err != nil {
		return false, err
	}
	y.rows += n
	if err := j.queueErasures(erase); err != nil {
		return false, err
	}
	done := n < batch
	if done {
		if err := j.settleBackward(); err != nil {
			return false, err
		}
		meta.PurgedTo = meta.Floor
	}
	return done, putRoomMeta(tx, room, meta)
}

// deleteOutlier deletes an outlier that the purges delete, at key
// (room|event ID), stored at loc, with head h: its row, its index entry,
// its received entry (a row an earlier purge kept had one), the
// redaction marks it leaves pointing at nothing and its extra messages,
// appending its log sequences to erase. A kept event that names it then
// names an event the room does not hold, as for a deleted row.
func (j *purgeTx) deleteOutlier(meta *RoomMeta, key []byte, loc evLoc, h *purgeHead, erase []uint64) ([]uint64, error) {
	if err := j.dropReceived(h, loc.stream); err != nil {
		return erase, err
	}
	if err := j.cur(bOutliers).del(key); err != nil {
		return erase, err
	}
	if err := j.cur(bEvents).del(key); err != nil {
		return erase, err
	}
	if meta.HasRedactions {
		if err := j.dropMarks(h, loc.stream); err != nil {
			return erase, err
		}
	}
	var err error
	if meta.HasExtraSeqs {
		if erase, err = j.takeExtraSeqs(key[8:], math.MaxUint64, erase); err != nil {
			return erase, err
		}
	}
	meta.Deleted++
	return append(erase, logSeq(loc.stream)), j.markExtremity(key[8:], loc.depth)
}

// dropMarks settles the redaction marks of a deleted row, at stream. A
// mark whose redaction the room no longer holds goes to the first later
// redaction of its target that the room keeps (promoteRedaction), as in a
// rebuild from the erased log, where that one is the first applied; it is
// deleted if there is none, whether or not the room keeps the target, as
// Synapse deletes a purged redaction's row (SYNAPSE.md 6.4) and as a
// rebuild never applies an erased redaction: a kept state event whose
// redactions are all purged shows unredacted again. A later redaction
// that the row is goes from reredacted. A mark whose redaction the room
// keeps stays: a purged event fetched again is still redacted, as in a
// rebuild. Both ends' rows below the floor count as gone when the purges
// delete them (RoomMeta.purged), whichever the janitor reaches first.
func (j *purgeTx) dropMarks(h *purgeHead, stream int64) error {
	marks := j.b(bRedacts)
	own := evKeyAt(nil, j.room, h.eventID)
	if by := marks.Get(own); by != nil && !j.holds(by) {
		if err := j.promoteOrDrop(own, h.eventID); err != nil {
			return err
		}
	}
	if string(h.typ) != "m.room.redaction" {
		return nil
	}
	target := redactionTarget(h)
	if target == nil {
		return nil
	}
	tk := evKeyAt(nil, j.room, target)
	if by := marks.Get(tk); !bytes.Equal(by, h.eventID) {
		return j.cur(bReRedacts).del(reRedactKey(j.room, string(target), logSeq(stream)))
	}
	return j.promoteOrDrop(tk, target)
}

// promoteOrDrop gives target's mark, at key, to its first kept later
// redaction, or deletes it if it has none.
func (j *purgeTx) promoteOrDrop(key, target []byte) error {
	promoted, err := promoteRedaction(j.tx, j.room, target)
	if err != nil || promoted {
		return err
	}
	return j.b(bRedacts).Delete(key)
}

// holds reports whether the room keeps the event id after its purges
// (what a look-up by ID finds: eventAt).
func (j *purgeTx) holds(id []byte) bool {
	_, ok := eventAt(j.tx, j.room, string(id))
	return ok
}

// redactionTarget is the event a stored redaction redacts: its top-level
// redacts, or its content's (room version 11).
func redactionTarget(h *purgeHead) []byte {
	if len(h.redacts) > 0 {
		return h.redacts
	}
	rr := &rowReader{b: h.rest}
	content := rr.span()
	var c struct {
		Redacts string `msgpack:"redacts"`
	}
	if rr.err != nil || decodeMsgpack(content, &c) != nil || c.Redacts == "" {
		return nil
	}
	return []byte(c.Redacts)
}

// queueErasures queues the log sequences of deleted events for erasure,
// in the room's bucket of erasein.
func (j *purgeTx) queueErasures(seqs []uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	slices.Sort(seqs)
	eb, err := j.b(bEraseIn).CreateBucketIfNotExists(u64(j.room))
	if err != nil {
		return err
	}
	for _, seq := range seqs {
		if err := eb.Put(binary.BigEndian.AppendUint64(j.buf[:0], seq), nil); err != nil {
			return err
		}
	}
	return nil
}

// sweepOutliers examines up to batch of the room's outliers, from
// meta.SweepAt on, and deletes those below the floor that its purges
// delete: Synapse's purge selects outliers too (NOT outlier OR
// should_delete, SYNAPSE.md 6.4): remote non-state events that arrived as
// outliers, and local ones that an earlier purge kept, once a later one
// has delete_local_events. Only outliers logged before the latest purge
// are its: one that arrives later is kept, as Synapse's purge, done by
// then, would keep it, and as a rebuild from the log does whenever its
// janitor runs. Every purge starts the sweep again from the first
// outlier (applyPurgeHistory), so that when it ends every outlier logged
// before it was examined against the room's cut-offs. So it also takes
// an outlier logged between two purges that lies between the later
// purge's own cut-off and the room's floor, which Synapse's later purge
// would keep: the floor is the room's (CONTRACT.md section 7). The rows
// the purges keep are only read; the outliers of a room are usually a
// small part of it.
func (j *purgeTx) sweepOutliers(meta *RoomMeta, batch int, y *yielder) error {
	prefix := u64(j.room)
	c := j.b(bOutliers).Cursor()
	var erase []uint64
	k, v := c.Seek(append(u64(j.room), meta.SweepAt...))
	for n := 0; k != nil && bytes.HasPrefix(k, prefix); n++ {
		if n == batch {
			meta.SweepAt = string(k[8:])
			return j.queueErasures(erase)
		}
		y.step()
		loc, ok := parseLoc(j.room, j.b(bEvents).Get(k))
		if !ok || !loc.outlier || !meta.purged(j.tx, loc, v) {
			k, v = c.Next()
			continue
		}
		h, err := readPurgeHead(v)
		if err != nil {
			return err
		}
		key := append(j.prefix[:0], k...)
		j.prefix = key
		if erase, err = j.deleteOutlier(meta, key, loc, &h, erase); err != nil {
			return err
		}
		// Seek past the deleted row: after a deletion in its node, Next
		// would skip the key that moved into the row's place.
		k, v = c.Seek(key)
	}
	meta.Sweep, meta.SweepAt = false, ""
	return j.queueErasures(erase)
}

// takeExtraSeqs deletes the extraseqs entries of a deleted row's event
// logged before below, and appends their log sequences to erase: every
// message that carries the event goes, or a rebuild from the log would
// bring it back. below is the sequence of an outlier of the event logged
// after the purge (a new one, kept: applyEvent's outlastsPurge), whose
// own copies are logged after it and stay with it; otherwise MaxUint64.
func (j *purgeTx) takeExtraSeqs(eventID []byte, below uint64, erase []uint64) ([]uint64, error) {
	ended := j.endedAt(eventID)
	p := extraSeqPrefix(j.buf[:0], j.room, eventID)
	j.buf = p
	c := j.cur(bExtraSeqs).c
	// Seek again after each deletion: a cursor's Next after Delete may
	// skip a key. An event has few extra messages, usually none; they
	// sort by sequence.
	for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Seek(p) {
		if len(k) == len(p)+8 {
			seq := binary.BigEndian.Uint64(k[len(p):])
			if seq >= below {
				break
			}
			erase = append(erase, seq)
			if seq == ended {
				// The copy that ended the event's gap goes with it: a
				// rebuild from the erased log never sees it.
				if err := j.b(bEnded).Delete(j.roomKey(eventID)); err != nil {
					return erase, err
				}
				p = extraSeqPrefix(j.buf[:0], j.room, eventID)
				j.buf = p
			}
		}
		if err := c.Delete(); err != nil {
			return erase, err
		}
	}
	return erase, nil
}

// purgeHead is what the janitor reads of a row, aliasing its bytes.
type purgeHead struct {
	flags                     uint8
	ageTS                     int64
	eventID, typ, sender      []byte
	redacts                   []byte // the top-level redacts (see redactionTarget)
	relType, relTarget, prevs []byte // prevs: the encoded prev_events
	rest                      []byte // what follows prevs (see rowReceived)
}

// readPurgeHead reads a row's flags, IDs, relation and parents in place
// (the layout of Row.marshal).
func readPurgeHead(b []byte) (purgeHead, error) {
	if len(b) < 2 || b[0] != rowVersion {
		return purgeHead{}, errBadRow
	}
	h := purgeHead{flags: b[1]}
	rr := &rowReader{b: b[2:]}
	rr.varint() // origin_server_ts
	h.ageTS = rr.varint()
	h.eventID = rr.span()
	h.typ = rr.span()
	h.sender = rr.span()
	rr.span() // state key
	h.redacts = rr.span()
	rr.span() // summary
	h.relType = rr.span()
	h.relTarget = rr.span()
	nl := rr.uvarint()
	for i := uint64(0); i < nl && rr.err == nil; i++ {
		rr.span()
	}
	start := rr.b
	np := rr.uvarint()
	if np > uint64(len(rr.b)) {
		return purgeHead{}, errBadRow
	}
	for i := uint64(0); i < np && rr.err == nil; i++ {
		rr.span()
	}
	if rr.err != nil {
		return purgeHead{}, rr.err
	}
	h.prevs = start[:len(start)-len(rr.b)]
	h.rest = rr.b
	return h, nil
}

// isLocalSender is commands.IsLocalUser on bytes.
func isLocalSender(user []byte, server string) bool {
	i := bytes.IndexByte(user, ':')
	return i >= 0 && user[0] == '@' && string(user[i+1:]) == server
}

// purgeTx is one janitor batch's buckets, cursors and key buffers, reused
// for every row so that a deletion allocates nothing.
type purgeTx struct {
	tx      *bolt.Tx
	room    uint64
	floor   int64
	buckets map[string]*bolt.Bucket
	cursors map[string]purgeCursor
	buf     []byte // the key being built
	prefix  []byte // a relation prefix
	edges   []byte // a parent's prefix in edges
	lookups int    // events index look-ups left for kept children (keptChildren)
}

// childLookups bounds the look-ups of kept children's log sequences in
// one janitor transaction: as many as the rows of a batch, so that a room
// whose events name the same parents over and over cannot hold the writer
// much longer than a batch does.
const childLookups = JanitorBatch

func newPurgeTx(tx *bolt.Tx, room uint64, floor int64) *purgeTx {
	return &purgeTx{tx: tx, room: room, floor: floor, buckets: map[string]*bolt.Bucket{}, cursors: map[string]purgeCursor{},
		buf: make([]byte, 0, 256), prefix: make([]byte, 0, 256), edges: make([]byte, 0, 256), lookups: childLookups}
}

func (j *purgeTx) b(name []byte) *bolt.Bucket {
	b, ok := j.buckets[string(name)]
	if !ok {
		b = j.tx.Bucket(name)
		j.buckets[string(name)] = b
	}
	return b
}

func (j *purgeTx) cur(name []byte) purgeCursor {
	c, ok := j.cursors[string(name)]
	if !ok {
		c = purgeCursor{j.b(name).Cursor()}
		j.cursors[string(name)] = c
	}
	return c
}

// roomKey builds room|parts... in the key buffer.
func (j *purgeTx) roomKey(parts ...[]byte) []byte {
	k := binary.BigEndian.AppendUint64(j.buf[:0], j.room)
	for _, p := range parts {
		k = append(k, p...)
	}
	j.buf = k
	return k
}

// purgeCursor deletes keys through one cursor.
type purgeCursor struct{ c *bolt.Cursor }

// del deletes k if it is stored (Bucket.Delete without a new cursor).
func (pc purgeCursor) del(k []byte) error {
	if got, _ := pc.c.Seek(k); got != nil && bytes.Equal(got, k) {
		return pc.c.Delete()
	}
	return nil
}

// unindex deletes the keys of the indexes that only timeline events are
// in: stream order, forward extremity, the edges from the row's parents,
// and its relation.
func (j *purgeTx) unindex(h *purgeHead, depth, stream int64) error {
	if err := j.cur(bRStream).del(binary.BigEndian.AppendUint64(j.roomKey(), order(stream))); err != nil {
		return err
	}
	if err := j.cur(bFwd).del(j.roomKey(h.eventID)); err != nil {
		return err
	}
	rr := &rowReader{b: h.prevs}
	np := rr.uvarint()
	for i := uint64(0); i < np && rr.err == nil; i++ {
		p := rr.span()
		if err := j.cur(bEdges).del(j.roomKey(p, []byte{0}, h.eventID)); err != nil {
			return err
		}
	}
	if rr.err != nil {
		return rr.err
	}
	if len(h.relType) == 0 {
		return nil
	}
	// relPrefix: room|len(target)|target|len(relType)|relType.
	p := binary.BigEndian.AppendUint64(j.prefix[:0], j.room)
	p = binary.BigEndian.AppendUint16(p, uint16(len(h.relTarget)))
	p = append(p, h.relTarget...)
	p = binary.BigEndian.AppendUint16(p, uint16(len(h.relType)))
	p = append(p, h.relType...)
	j.prefix = p
	k := binary.BigEndian.AppendUint64(append(j.buf[:0], p...), uint64(depth))
	k = binary.BigEndian.AppendUint64(k, order(stream))
	j.buf = k
	rel := j.cur(bRel)
	if got, _ := rel.c.Seek(k); got == nil || !bytes.Equal(got, k) {
		return nil
	}
	if err := rel.c.Delete(); err != nil {
		return err
	}
	if err := j.decCount(p); err != nil {
		return err
	}
	k = append(append(j.buf[:0], p...), 0xff)
	j.buf = append(k, h.sender...)
	if err := j.decCount(j.buf); err != nil {
		return err
	}
	return unmarkRelated(j.tx, j.room, string(h.relTarget))
}

// receivedWalk is the most received entries dropReceived steps over from
// the AgeTS of a row of an earlier release, which does not hold its age.
const receivedWalk = 64

// dropReceived deletes the received entry (received ts|log sequence ->
// room) of the room's row at stream, whose head is h. Only live rows have
// one: a backfilled row's stream is negative. A row's received time is
// its AgeTS plus the age it stores (rowReceived). A row of an earlier
// release, without it, is looked for from its AgeTS on (the received time
// less the published age, 0 if none): received times do not decrease
// along the log (CONTRACT.md section 3), so the entries in between are
// those of the events received during that age, and the walk ends at the
// first later log sequence, or after receivedWalk entries; an entry it
// misses stays, as every entry did before.
func (j *purgeTx) dropReceived(h *purgeHead, stream int64) error {
	if stream <= 0 {
		return nil
	}
	ts, exact, err := rowReceived(h.ageTS, h.rest)
	if err != nil {
		// Its content or unsigned is corrupt, which no purge reads
		// otherwise: the row goes, its entry stays.
		return nil
	}
	seq := uint64(stream)
	j.buf = binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(j.buf[:0], uint64(ts)), seq)
	c := j.cur(bReceived).c
	k, v := c.Seek(j.buf)
	for i := 0; !exact && i < receivedWalk && len(k) == 16 && binary.BigEndian.Uint64(k[8:]) < seq; i++ {
		k, v = c.Next()
	}
	// The log sequence is the message's alone; the room is checked all
	// the same.
	if len(k) != 16 || binary.BigEndian.Uint64(k[8:]) != seq || len(v) != 8 || binary.BigEndian.Uint64(v) != j.room {
		return nil
	}
	return c.Delete()
}

// waitMark moves the related mark of a row that leaves the timeline, if
// it has one, from relat to relwait (see markRelated).
func (j *purgeTx) waitMark(eventID []byte, depth, stream int64) error {
	k := binary.BigEndian.AppendUint64(j.roomKey(), uint64(depth))
	k = binary.BigEndian.AppendUint64(k, order(stream))
	j.buf = k
	c := j.cur(bRelAt).c
	got, kinds := c.Seek(k)
	if got == nil || !bytes.Equal(got, k) {
		return nil
	}
	kinds = bytes.Clone(kinds)
	if err := c.Delete(); err != nil {
		return err
	}
	return j.b(bRelWait).Put(j.roomKey(eventID), kinds)
}

// decCount lowers a relation count by one, deleting it at zero.
func (j *purgeTx) decCount(k []byte) error {
	c := j.cur(bRelCount)
	got, v := c.c.Seek(k)
	if got == nil || !bytes.Equal(got, k) {
		return nil
	}
	n := int64(binary.BigEndian.Uint64(v)) - 1
	if n <= 0 {
		return c.c.Delete()
	}
	return j.b(bRelCount).Put(k, u64(uint64(n)))
}

// markExtremity makes a purged event at depth that a kept event names a
// backward extremity, with the depth of its first kept child (firstChild).
// Its kept children are those of its edges with a depth at or above the
// floor, and, when it lies just below the floor, the rows at the floor
// that name it (updateExtremities stores no edge to a parent one level
// up). Rejected rows name no parents here, as they have no edges
// (soft-failed ones have, as Synapse's event_edges).
func (j *purgeTx) markExtremity(eventID []byte, depth int64) error {
	first := firstChild{after: j.endedAt(eventID)}
	j.keptChildren(eventID, &first)
	if depth+1 == j.floor {
		at := tlKey(j.room, j.floor, math.MinInt64)
		tl := j.cur(bTimeline).c
		for k, v := tl.Seek(at); k != nil && bytes.HasPrefix(k, at[:16]); k, v = tl.Next() {
			h, err := readPurgeHead(v)
			if err != nil {
				return err
			}
			if h.flags&flagRejected != 0 || !namesParent(h.prevs, eventID) {
				continue
			}
			_, _, stream := parseTLKey(k)
			first.offer(logSeq(stream), j.floor)
		}
	}
	if !first.found {
		return nil
	}
	return j.b(bBack).Put(j.roomKey(eventID), u64(uint64(first.depth)))
}

// settleBackward ends a purge with the room's backward extremities below
// the floor. Each entry holds the depth of the first child that named it
// (updateExtremities, markExtremity); when the purge deleted that child,
// a kept one may name it too, and then it stays a backward extremity,
// with its first kept child's depth, as a rebuild from the log after the
// erasure gives it. Those that no kept event names lead only into purged
// history: nobody backfills there. Entries of gaps above the floor stay:
// Synapse replaces the room's backward extremities with the purge's
// boundary (SYNAPSE.md 6.4 step 4), but a rebuild from the erased log
// cannot tell a purged parent from one never held (README, "Where
// scrollback differs from Synapse on purpose"). The entries are
// few (one per gap in the room's history), and each costs a seek in edges
// and the look-ups of its kept children, bounded by childLookups.
func (j *purgeTx) settleBackward() error {
	back := j.b(bBack)
	prefix := u64(j.room)
	bc := back.Cursor()
	var stale [][]byte
	for k, v := bc.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = bc.Next() {
		if int64(binary.BigEndian.Uint64(v)) < j.floor {
			stale = append(stale, bytes.Clone(k))
		}
	}
	for _, k := range stale {
		first := firstChild{after: j.endedAt(k[len(prefix):])}
		j.keptChildren(k[len(prefix):], &first)
		var err error
		if first.found {
			err = back.Put(k, u64(uint64(first.depth)))
		} else {
			err = back.Delete(k)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// firstChild is the kept child of a parent that names it first in the
// log (lowest log sequence), and that child's depth: the child that, in
// a rebuild from the log after the purge's erasure, would make the parent
// a backward extremity and give the entry its depth (updateExtremities).
type firstChild struct {
	seq   uint64
	depth int64
	found bool
	after uint64 // children logged at or before it do not count (bEnded)
}

func (f *firstChild) offer(seq uint64, depth int64) {
	if seq <= f.after {
		return
	}
	if !f.found || seq < f.seq {
		*f = firstChild{seq: seq, depth: depth, found: true, after: f.after}
	}
}

// endedAt is the log sequence at which a copy from below the floor ended
// the event's gap (endBelowFloor), 0 if none did.
func (j *purgeTx) endedAt(eventID []byte) uint64 {
	if v := j.b(bEnded).Get(j.roomKey(eventID)); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// keptChildren offers first the children of parent that edges holds with
// a depth at or above the floor, each at its log sequence, from the
// events index. Once the transaction's look-ups are spent, the next child
// found (in ID order) stands for them all, if none was found before: the
// parent then still is a backward extremity, at the depth of a kept child,
// though maybe not the first one.
func (j *purgeTx) keptChildren(parent []byte, first *firstChild) {
	ep := append(binary.BigEndian.AppendUint64(j.edges[:0], j.room), parent...)
	ep = append(ep, 0)
	j.edges = ep
	edges := j.cur(bEdges).c
	for k, v := edges.Seek(ep); k != nil && bytes.HasPrefix(k, ep); k, v = edges.Next() {
		depth := int64(binary.BigEndian.Uint64(v))
		if depth < j.floor {
			continue
		}
		if j.lookups <= 0 && first.after == 0 {
			first.offer(math.MaxUint64, depth)
			return
		}
		j.lookups--
		first.offer(j.childSeq(k[len(ep):]), depth)
	}
}

// childSeq is the log sequence of a kept child's row, from its events
// index entry; math.MaxUint64 (last) if the entry is not the row's.
func (j *purgeTx) childSeq(child []byte) uint64 {
	ek := j.roomKey(child)
	ec := j.cur(bEvents).c
	k, v := ec.Seek(ek)
	if k == nil || !bytes.Equal(k, ek) {
		return math.MaxUint64
	}
	l, ok := parseLoc(j.room, v)
	if !ok || l.outlier {
		return math.MaxUint64
	}
	return logSeq(l.stream)
}

// namesParent reports whether encoded prev_events (a row's) hold id.
func namesParent(prevs, id []byte) bool {
	rr := &rowReader{b: prevs}
	n := rr.uvarint()
	for i := uint64(0); i < n && rr.err == nil; i++ {
		if bytes.Equal(rr.span(), id) {
			return true
		}
	}
	return false
}

// deleteLowest deletes the lowest keys with prefix for which in holds, up
// to max of them, calling each with every key and value before deleting
// it, and returns how many it deleted. It counts them walking up, then
// deletes them walking down with one cursor: walking down, Cursor.Delete
// never skips a key, and a node never shifts the keys after the one it
// deletes. It tells y of every key.
func deleteLowest(c *bolt.Cursor, prefix []byte, max int, y *yielder, in func(k []byte) bool, each func(k, v []byte) error) (int, error) {
	inRange := func(k []byte) bool { return k != nil && bytes.HasPrefix(k, prefix) && (in == nil || in(k)) }
	n := 0
	k, _ := c.Seek(prefix)
	for ; inRange(k) && n < max; k, _ = c.Next() {
		n++
	}
	var v []byte
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	for i := range n {
		if i > 0 {
			k, v = c.Prev()
		}
		if !inRange(k) {
			return i, fmt.Errorf("projections: janitor: the cursor left the %d keys to delete after %d", n, i)
		}
		if each != nil {
			if err := each(k, v); err != nil {
				return i, err
			}
		}
		if err := c.Delete(); err != nil {
			return i, err
		}
		y.step()
	}
	return n, nil
}

// dropRoomBatch deletes up to batch keys of a room number that purge_room
// retired, bucket by bucket. received is keyed by time, not by room, so
// the rows' entries there go with the rows (dropRowReceived); the
// outliers' positions are in the events index, which goes after them.
func dropRoomBatch(tx *bolt.Tx, room uint64, batch int, y *yielder) (bool, error) {
	prefix := u64(room)
	j := newPurgeTx(tx, room, 0)
	left := batch
	for _, name := range [][]byte{bTimeline, bOutliers, bEvents, bRedacts, bReRedacts, bState, bFwd, bBack, bForgot, bRel, bRelCount, bRelAt, bRelWait, bEdges, bRStream, bExtraSeqs, bEnded, bByServer} {
		var each func(k, v []byte) error
		switch {
		case bytes.Equal(name, bTimeline):
			each = func(k, v []byte) error {
				_, _, stream := parseTLKey(k)
				return j.dropRowReceived(v, stream)
			}
		case bytes.Equal(name, bOutliers):
			// Every outlier has an entry: rows a purge_history
			// kept as outliers kept theirs, and events published
			// as outliers have one of their own.
			each = func(k, v []byte) error {
				if loc, ok := parseLoc(room, j.b(bEvents).Get(k)); ok && loc.outlier {
					return j.dropRowReceived(v, loc.stream)
				}
				return nil
			}
		}
		n, err := deleteLowest(tx.Bucket(name).Cursor(), prefix, left, y, nil, each)
		if err != nil {
			return false, err
		}
		left -= n
		if left <= 0 {
			return false, nil
		}
	}
	return true, tx.Bucket(bRoomMeta).Delete(prefix)
}

// dropRowReceived deletes the received entry of a row the drop deletes,
// at stream. A row it cannot read is deleted all the same, with its
// entry left: the drop deletes whatever the retired number holds, and a
// corrupt row must not stop it.
func (j *purgeTx) dropRowReceived(row []byte, stream int64) error {
	h, err := readPurgeHead(row)
	if err != nil {
		return nil
	}
	return j.dropReceived(&h, stream)
}
