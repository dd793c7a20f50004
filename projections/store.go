package projections

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/scrollback/scrollback/commands"
)

// formatVersion is the on-disk layout version. Open migrates a file of
// version 1 (migrateEventIndex) and refuses any other.
const formatVersion = 2

// DefaultPartitions is the number of partitions of a new data directory.
// It is fixed when the file is created: a room's partition must never
// change, since its checkpoint lives there.
const DefaultPartitions = 16

// Errors of the store.
var (
	// ErrFormat: the file was written by an incompatible version.
	ErrFormat = errors.New("projections: unsupported file format")
	// ErrClosed: the store is closed.
	ErrClosed = errors.New("projections: store closed")
	// ErrServerName: the file was made for another server_name. Which
	// users are local decides what purges delete (delete_local_events)
	// and which purge_room are refused, and a Matrix server's name never
	// changes: opened with another name by mistake (a forgotten -c), a
	// rebuild deleted the local events a purge had kept, and the service
	// then erased them from the log.
	ErrServerName = errors.New("projections: the file was made for another server_name")
)

// Options configure Open.
type Options struct {
	// ServerName decides which users are local (purge_room refuses while
	// local users are joined).
	ServerName string
	// Partitions is used only when the file is created; an existing file
	// keeps its own count. 0 means DefaultPartitions.
	Partitions int
	// NoSync skips fsync on commit: for tests and benchmarks, and for a
	// new file that is put in place only once it is complete and synced
	// (scrollback rebuild; see Sync). A crash of the machine can leave
	// such a file's last commits pointing at pages that never reached
	// the disk, so a file that serves must never be opened with it.
	NoSync bool
	// Build builds a new file without fsync until it has caught up with
	// the log (build.go): Open creates it so when it does not exist, and
	// goes on with a build that a crash of the process interrupted.
	// scrollback serve sets it.
	Build bool
}

// Store is the bbolt projection of the room log.
type Store struct {
	db         *bolt.DB
	writeback  *writeback   // of big group commits (writeback.go)
	building   atomic.Bool  // committing without fsync until Built (build.go)
	buildMu    sync.Mutex   // one Built at a time
	restarted  bool         // Open deleted a build a machine restart cut short
	noSync     bool         // opened with Options.NoSync: never synced until Sync
	lost       atomic.Value // error: a write that failed while the file was unsynced (see update)
	failed     bool         // Built could not sync the file (build.go), under buildMu
	parts      int
	serverName string
	janitor    chan struct{} // wakes the janitor when a purge is applied
	newTasks   chan struct{} // wakes a task runner when a task is scheduled or finishes
	taskMu     sync.Mutex
	taskCh     map[string]*taskWaiters // by room: closed by a commit that writes a task of the room
	jmu        sync.Mutex              // one janitor step at a time
	ahead      unindexAhead            // the janitor's window (unindex.go), under jmu

	// ObserveJanitor, if set before RunJanitor starts, hears about every
	// transaction of RunJanitor that did something.
	ObserveJanitor func(JanitorStats)
	// BeforeJanitor, if set before RunJanitor starts, is called before
	// each of its steps, holding nothing: the service waits there while
	// reads queue for the API's workers (bus.Load.Backoff).
	BeforeJanitor func(context.Context)
}

// NewTasks is signalled after a commit that scheduled a task or finished
// one, so that a task runner can start a task at once instead of at its
// next poll (Synapse launches a task when it is scheduled, and the next
// one 100 ms after a task ends).
func (s *Store) NewTasks() <-chan struct{} { return s.newTasks }

// TaskChange returns a channel that the next commit writing a task of
// the room (a command's, an update's) closes, and release, which the
// caller calls once it no longer waits on it. Reads of the tasks made
// after taking it see every change before that commit, so a waiter takes
// it, reads the task, and waits on it only if the task is not yet as it
// wants: no change is missed, nothing polls, and other rooms' tasks do
// not wake it.
func (s *Store) TaskChange(roomID string) (changed <-chan struct{}, release func()) {
	s.taskMu.Lock()
	defer s.taskMu.Unlock()
	if s.taskCh == nil {
		s.taskCh = map[string]*taskWaiters{}
	}
	w := s.taskCh[roomID]
	if w == nil {
		w = &taskWaiters{ch: make(chan struct{})}
		s.taskCh[roomID] = w
	}
	w.n++
	return w.ch, func() {
		s.taskMu.Lock()
		defer s.taskMu.Unlock()
		// The last waiter on a channel no commit closed takes it away:
		// a room deleted and never written again keeps nothing here.
		if w.n--; w.n == 0 && s.taskCh[roomID] == w {
			delete(s.taskCh, roomID)
		}
	}
}

// taskWaiters is a room's channel of TaskChange and how many hold it.
type taskWaiters struct {
	ch chan struct{}
	n  int
}

// tasksChanged closes the channels of TaskChange of rooms.
func (s *Store) tasksChanged(rooms map[string]bool) {
	s.taskMu.Lock()
	defer s.taskMu.Unlock()
	for room := range rooms {
		if w := s.taskCh[room]; w != nil {
			close(w.ch)
			delete(s.taskCh, room)
		}
	}
}

// Open opens or creates the projection file at path.
func Open(path string, opts Options) (*Store, error) {
	var unsynced, restarted bool
	if !opts.NoSync { // a file never synced needs no marker
		var err error
		if unsynced, restarted, err = prepareBuild(path, opts.Build); err != nil {
			return nil, err
		}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:         5 * time.Second,
		InitialMmapSize: 1 << 30, // readers never block the writer on mmap growth below 1 GiB
		FreelistType:    bolt.FreelistMapType,
		NoSync:          opts.NoSync || unsynced,
	})
	if err != nil {
		return nil, fmt.Errorf("projections: open %s: %w", path, err)
	}
	s := &Store{db: db, writeback: openWriteback(path), restarted: restarted, noSync: opts.NoSync, serverName: opts.ServerName, janitor: make(chan struct{}, 1), newTasks: make(chan struct{}, 1)}
	s.building.Store(unsynced)
	var migrate bool // a version 1 file
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bMeta)
		if v := meta.Get([]byte("version")); v != nil {
			got := binary.BigEndian.Uint64(v)
			if err := checkVersion(got); err != nil {
				return err
			}
			migrate = got == 1
		} else {
			if err := meta.Put([]byte("version"), u64(formatVersion)); err != nil {
				return err
			}
			for _, mark := range [][]byte{metaRelMarks, metaTaskDone, metaUnconfirmed, metaServerMembers} {
				if err := meta.Put(mark, nil); err != nil {
					return err
				}
			}
		}
		if opts.ServerName != "" {
			if was := meta.Get([]byte("server_name")); was != nil && string(was) != opts.ServerName {
				return serverNameError(string(was), opts.ServerName)
			}
			if err := meta.Put([]byte("server_name"), []byte(opts.ServerName)); err != nil {
				return err
			}
		}
		if v := meta.Get([]byte("partitions")); v != nil {
			s.parts = int(binary.BigEndian.Uint64(v))
		} else {
			s.parts = opts.Partitions
			if s.parts <= 0 {
				s.parts = DefaultPartitions
			}
			return meta.Put([]byte("partitions"), u64(uint64(s.parts)))
		}
		return nil
	})
	if err == nil && migrate {
		err = s.migrateEventIndex()
	}
	if err == nil {
		err = s.addRelatedMarks()
	}
	if err == nil {
		err = s.indexFinishedTasks()
	}
	if err == nil {
		err = s.markOldRefusals()
	}
	if err == nil {
		err = s.indexServerMembers()
	}
	if err != nil {
		db.Close()
		s.writeback.close()
		if errors.Is(err, ErrFormat) || errors.Is(err, ErrServerName) {
			// The file's refusals, which name the package already.
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return nil, fmt.Errorf("projections: init %s: %w", path, err)
	}
	return s, nil
}

// checkVersion refuses, with ErrFormat, a file of layout version v that
// Open neither reads nor migrates.
func checkVersion(v uint64) error {
	if v != formatVersion && v != 1 {
		return fmt.Errorf("%w: version %d, want %d", ErrFormat, v, formatVersion)
	}
	return nil
}

// serverNameError is ErrServerName for a file made for was, opened for
// name.
func serverNameError(was, name string) error {
	return fmt.Errorf("%w (%q, not %q): give server_name (or --server-name) as the service has it", ErrServerName, was, name)
}

// CheckServerName refuses the file at path, with ErrServerName, if it was
// made for another server than name, without writing to it; a file it
// cannot read (there is none, it is torn) passes. scrollback rebuild and
// verify check the live file before they apply the log with name.
func CheckServerName(path, name string) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return nil
	}
	defer db.Close()
	var was string
	db.View(func(tx *bolt.Tx) error {
		if meta := tx.Bucket(bMeta); meta != nil {
			was = string(meta.Get([]byte("server_name")))
		}
		return nil
	})
	if was != "" && name != "" && was != name {
		return fmt.Errorf("%s: %w", path, serverNameError(was, name))
	}
	return nil
}

// Check refuses, with Open's error, what Open without Build would refuse
// about the file at path before it reads a row: a build without fsync
// that a restart of the machine cut short (ErrUnsynced) and a layout this
// release does not read (ErrFormat). It writes nothing, where Open
// writes even to a file it then refuses, and a file it cannot read
// (there is none, it is torn) passes: Open says what is wrong with it.
// scrollback verify checks the live file so before it spends minutes
// rebuilding a projection from the log to compare with it.
func Check(path string) error {
	if _, _, err := prepareBuild(path, false); err != nil { // without Build, it writes nothing
		return err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return nil
	}
	defer db.Close()
	var v []byte
	db.View(func(tx *bolt.Tx) error {
		if meta := tx.Bucket(bMeta); meta != nil {
			v = bytes.Clone(meta.Get([]byte("version")))
		}
		return nil
	})
	if len(v) != 8 {
		return nil
	}
	if err := checkVersion(binary.BigEndian.Uint64(v)); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// metaRelMarks is the meta key of a file whose relat and relwait buckets
// are complete: new files have it from the start, older ones once
// addRelatedMarks is done.
var metaRelMarks = []byte("relmarks")

// addRelatedMarks gives a file made before the related marks existed its
// marks, from the relations index, once (fillOnce): a crash in between
// starts over, as marks only add kinds.
func (s *Store) addRelatedMarks() error {
	return s.fillOnce(metaRelMarks, bRel, relMarksBatch, func(tx *bolt.Tx, k, _ []byte) error {
		room, target, relType, ok := parseRelKey(k)
		if !ok {
			return fmt.Errorf("relations: bad key %x", k)
		}
		return markRelated(tx, room, target, relKind(relType))
	})
}

// fillOnce gives a file made before an index its entries: it calls add
// for every entry of the bucket from, in transactions of up to batch
// entries, so that a big file does not hold every dirty page at once,
// then puts mark in meta, where a new file has it from the start. A crash
// in between starts over, so add must be idempotent.
func (s *Store) fillOnce(mark, from []byte, batch int, add func(tx *bolt.Tx, k, v []byte) error) error {
	var after []byte // the last key done
	for {
		done := false
		err := s.db.Update(func(tx *bolt.Tx) error {
			meta := tx.Bucket(bMeta)
			if meta.Get(mark) != nil {
				done = true
				return nil
			}
			c := tx.Bucket(from).Cursor()
			k, v := firstAfter(c, after)
			for n := 0; k != nil; k, v = c.Next() {
				if n == batch {
					return nil
				}
				if err := add(tx, k, v); err != nil {
					return err
				}
				after = append(after[:0], k...)
				n++
			}
			done = true
			return meta.Put(mark, nil)
		})
		if err != nil || done {
			return err
		}
	}
}

// firstAfter moves c to the first key after after, or to the first key
// if after is nil: where a migration done in several transactions goes
// on.
func firstAfter(c *bolt.Cursor, after []byte) (k, v []byte) {
	if after == nil {
		return c.First()
	}
	if k, v = c.Seek(after); k != nil && bytes.Equal(k, after) {
		return c.Next()
	}
	return k, v
}

// relMarksBatch bounds the targets addRelatedMarks marks per transaction
// (a variable for the tests).
var relMarksBatch = 20000

// Sync makes every commit so far durable, and every later one synced as
// usual. A file opened with NoSync calls it before it is put in place.
// As in Built, NoSync changes under bbolt's writer lock, and the synced
// commit that follows flushes every page not yet on disk.
//
// It fails if a write failed while the file was unsynced (update): the
// kernel may have dropped pages of earlier commits that a sync now would
// not report, so the file is not to be put in place.
func (s *Store) Sync() error {
	if err := s.lostWrites(); err != nil {
		return fmt.Errorf("projections: %w", err)
	}
	if err := s.db.Update(func(*bolt.Tx) error {
		s.db.NoSync = false
		return nil
	}); err != nil {
		return err
	}
	if err := s.lostWrites(); err != nil {
		return fmt.Errorf("projections: %w", err)
	}
	return nil
}

// lostWrites is the first write fault update saw while the file was
// unsynced, as an error, or nil. Its callers name the package.
func (s *Store) lostWrites() error {
	if err, _ := s.lost.Load().(error); err != nil {
		return fmt.Errorf("a write failed while the file was not synced, so earlier commits may not be on disk: %w", err)
	}
	return nil
}

// Close ends a build without fsync (Built), writes bbolt's freelist, so
// that the next Open reads it instead of rebuilding it (see update), and
// closes the file.
func (s *Store) Close() error {
	if err := s.Built(); err != nil {
		return errors.Join(err, s.db.Close(), s.writeback.close())
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		s.db.NoFreelistSync = false
		return nil
	})
	return errors.Join(err, s.db.Close(), s.writeback.close())
}

// freelistSyncMax is the most free pages for which a commit writes
// bbolt's freelist. bbolt rewrites the whole list, sorted, at every
// commit: after a purge of 1M events it held about 180k pages (1.4 MB),
// and writing it was 46% of the projector's commit time in the mixed
// benchmark and most of its disk writes. Above this many free pages,
// commits leave it out (bbolt's NoFreelistSync); Close writes it, and an
// Open after a crash in the meantime rebuilds it by reading the whole
// file (about 0.4 s per GB from the page cache, 15 s per GB from this
// machine's disk). Normal operation stays below: the 10M-event run's
// list peaked at 83 KiB (about 10k pages).
const freelistSyncMax = 16384

// update is the store's write transaction: db.Update with the freelist
// policy of freelistSyncMax. The policy is set under bbolt's writer lock,
// which is where bbolt reads it.
//
// A write fault (writeFault: a failed write or sync) while the file is
// unsynced (a build, or NoSync) is remembered: the kernel reports a
// failed writeback once, so pages of earlier commits may be lost without
// any later sync saying so. A build's file is then distrusted (the next
// Open builds it again), and Sync refuses a NoSync file.
//
// Whether the file was being built is taken before the transaction: a
// Built that ends the build between this commit's failure and the
// bookkeeping below (its own sync need not see the error this commit got)
// must not leave the file trusted. The fault then writes the distrusting
// marker again, after Built removed it.
//
// A synced file needs none of this: each commit returns only once its
// pages are synced, and a commit whose meta page fails to sync, which
// bbolt then takes for committed, carries its partitions' checkpoints, so
// that if the kernel lost it, the next start applies its messages from
// the log again.
func (s *Store) update(fn func(*bolt.Tx) error) error {
	building := s.building.Load()
	err := s.db.Update(func(tx *bolt.Tx) error {
		s.db.NoFreelistSync = s.db.Stats().FreePageN > freelistSyncMax
		return fn(tx)
	})
	if err != nil && (s.noSync || building) && writeFault(err) {
		s.lost.CompareAndSwap(nil, err)
		if building {
			s.buildMu.Lock()
			defer s.buildMu.Unlock()
			if !s.failed {
				return errors.Join(err, s.distrust())
			}
		}
	}
	return err
}

// fileFault reports whether err, from a write transaction, is a fault of
// the file or the disk rather than of what the transaction wrote: the
// file cannot grow (bbolt's MaxSize; a full disk fails a system call), a
// system call failed (ENOSPC, EIO; bbolt returns some of them wrapped in
// a text, hence the look at its messages), or the file is closed. Such a
// fault says nothing about the messages being applied.
func fileFault(err error) bool {
	if writeFault(err) || errors.Is(err, berrors.ErrMaxSizeReached) || errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return true
	}
	msg := err.Error()
	for _, s := range []string{"mmap allocate error", "mlock/munlock error"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// writeFault reports whether err says that writing to the file, or
// syncing it, failed: a system call's error (ENOSPC, EIO), or the file's
// growth or its sync, which bbolt reports as text. bbolt's own bound on
// the file's size (ErrMaxSizeReached) is not one: it refuses before
// writing anything.
func writeFault(err error) bool {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "file resize error") || strings.Contains(msg, "file sync error")
}

// Partitions is the partition count of this file.
func (s *Store) Partitions() int { return s.parts }

// DB exposes the bbolt handle to benchmarks and verification tools in
// this module's tests; the application never writes through it.
func (s *Store) DB() *bolt.DB { return s.db }

// Checkpoints returns the last applied log sequence of every partition.
func (s *Store) Checkpoints() ([]uint64, error) {
	cps := make([]uint64, s.parts)
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bCP)
		for p := range cps {
			if v := b.Get(partKey(p)); v != nil {
				cps[p] = binary.BigEndian.Uint64(v)
			}
		}
		return nil
	})
	return cps, err
}

func partKey(p int) []byte { return binary.BigEndian.AppendUint16(nil, uint16(p)) }

// RoomMeta is the per-room record.
type RoomMeta struct {
	RoomID    string `msgpack:"room_id"`
	Blocked   bool   `msgpack:"blocked,omitempty"`
	BlockedBy string `msgpack:"blocked_by,omitempty"`
	// Floor is the highest purge_history cut-off depth: no event below it
	// is ever returned, and events below it that reach the log later are
	// dropped (CONTRACT.md section 7).
	Floor int64 `msgpack:"floor,omitempty"`
	// PurgedTo is the depth below which the rows are physically gone
	// (the janitor's progress towards Floor).
	PurgedTo int64 `msgpack:"purged_to,omitempty"`
	// ResetSeq is the log position of the last purge_room: every event
	// logged before it is gone; later events start a new timeline.
	ResetSeq uint64 `msgpack:"reset_seq,omitempty"`
	// ResetDone is ResetSeq once the janitor has removed those rows.
	ResetDone uint64 `msgpack:"reset_done,omitempty"`
	// DeleteLocalBelow is the highest cut-off depth of a purge_history
	// with delete_local_events: local events below it are deleted, local
	// events between it and Floor are kept as outliers (Synapse's purges
	// decide each for their own events; a later purge without the flag
	// does not bring back what an earlier one deleted).
	DeleteLocalBelow int64 `msgpack:"delete_local_below,omitempty"`
	// DeleteLocal is delete_local_events of the latest purge_history, as
	// files written before DeleteLocalBelow hold it: getRoomMeta turns it
	// into DeleteLocalBelow = Floor, what the janitor then did with it.
	DeleteLocal bool `msgpack:"delete_local,omitempty"`
	// Sweep says that the room's outliers logged before SweepBelow (the
	// latest purge_history's sequence) are to be examined against its
	// cut-offs (sweepOutliers), from the outlier SweepAt on.
	Sweep      bool   `msgpack:"sweep,omitempty"`
	SweepAt    string `msgpack:"sweep_at,omitempty"`
	SweepBelow uint64 `msgpack:"sweep_below,omitempty"`
	// HasRedactions and HasRelations say whether any redaction or relation
	// was ever indexed in the room: reads skip the per-event look-ups in
	// rooms without them.
	HasRedactions bool `msgpack:"has_redactions,omitempty"`
	HasRelations  bool `msgpack:"has_relations,omitempty"`
	// HasExtraSeqs says whether any event of the room was ever stored
	// with an extra log message (extraSeqKey): the janitor looks a
	// deleted row's up only in rooms with them.
	HasExtraSeqs bool `msgpack:"has_extra_seqs,omitempty"`
	// Deleted and Outliered count the rows the janitor has purged.
	Deleted   int64 `msgpack:"deleted,omitempty"`
	Outliered int64 `msgpack:"outliered,omitempty"`
}

// purgedAway reports whether an event at (depth, stream) is hidden by the
// room's purges.
func (m *RoomMeta) purgedAway(depth, stream int64) bool {
	if depth < m.Floor {
		return true
	}
	if m.ResetSeq > 0 {
		return logSeq(stream) < m.ResetSeq
	}
	return false
}

// deletes reports whether a purge deletes an event below its floor at
// depth, rather than keeping it as an outlier: state events stay, and
// local events unless a purge with delete_local_events cut above them
// (SYNAPSE.md 6.4, should_delete).
func (m *RoomMeta) deletes(depth int64, state, local bool) bool {
	return !state && (!local || depth < m.DeleteLocalBelow)
}

// needsJanitor reports whether purged rows are still stored.
func (m *RoomMeta) needsJanitor() bool {
	return m.PurgedTo < m.Floor || m.Sweep || m.ResetDone < m.ResetSeq
}

// DeadLetter records a log message that was not applied.
type DeadLetter struct {
	Seq     uint64 `msgpack:"seq"`
	Subject string `msgpack:"subject"`
	RoomID  string `msgpack:"room_id,omitempty"`
	Reason  string `msgpack:"reason"`
	LogTS   int64  `msgpack:"log_ts"`
}

// roomNum returns the room's number, 0 if the room is unknown.
func roomNum(tx *bolt.Tx, roomID string) uint64 {
	if v := tx.Bucket(bRooms).Get([]byte(roomID)); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func ensureRoom(tx *bolt.Tx, roomID string) (uint64, error) {
	if n := roomNum(tx, roomID); n != 0 {
		return n, nil
	}
	rooms := tx.Bucket(bRooms)
	n, err := rooms.NextSequence()
	if err != nil {
		return 0, err
	}
	if err := rooms.Put([]byte(roomID), u64(n)); err != nil {
		return 0, err
	}
	return n, putRoomMeta(tx, n, &RoomMeta{RoomID: roomID})
}

func getRoomMeta(tx *bolt.Tx, n uint64) (*RoomMeta, error) {
	m := &RoomMeta{}
	v := tx.Bucket(bRoomMeta).Get(u64(n))
	if v == nil {
		return m, nil
	}
	if err := decodeMsgpack(v, m); err != nil {
		return nil, err
	}
	if m.DeleteLocal {
		m.DeleteLocalBelow, m.DeleteLocal = max(m.DeleteLocalBelow, m.Floor), false
	}
	return m, nil
}

func putRoomMeta(tx *bolt.Tx, n uint64, m *RoomMeta) error {
	b, err := encodeMsgpack(m)
	if err != nil {
		return err
	}
	return tx.Bucket(bRoomMeta).Put(u64(n), b)
}

// Task returns a task by ID (nil if unknown).
func (s *Store) Task(id string) (*commands.Task, error) {
	var t *commands.Task
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		t, err = getTask(tx, id)
		return err
	})
	return t, err
}

func getTask(tx *bolt.Tx, id string) (*commands.Task, error) {
	v := tx.Bucket(bTasks).Get([]byte(id))
	if v == nil {
		return nil, nil
	}
	t := &commands.Task{}
	if err := decodeMsgpack(v, t); err != nil {
		return nil, fmt.Errorf("projections: task %s: %w", id, err)
	}
	return t, nil
}

// putTask writes a task record, and its entry in opentasks while it is
// open or in taskdone once it is finished. A finished task is never
// written again (Task.Apply and applyShutdownPurge refuse it, and a
// command that reuses the ID of an expired one deletes it first), so its
// taskdone entry never has to move.
func putTask(tx *bolt.Tx, t *commands.Task) error {
	b, err := encodeMsgpack(t)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bTasks).Put([]byte(t.ID), b); err != nil {
		return err
	}
	if t.Finished() {
		if err := tx.Bucket(bTaskDone).Put(taskDoneKey(t), nil); err != nil {
			return err
		}
		return tx.Bucket(bOpenTasks).Delete([]byte(t.ID))
	}
	return tx.Bucket(bOpenTasks).Put([]byte(t.ID), nil)
}

// Unconfirmed lists the tasks whose decision is marked for the task
// runner to confirm in the log (markUnconfirmed): a purge_room refused by
// the members check, a purge_history failed by the forward-extremity
// guard, a purge_history that passed and has no update yet. The runner
// confirms those of them that hold an erasure (ToConfirm).
func (s *Store) Unconfirmed() ([]*commands.Task, error) { return s.tasksIn(bUnconfirm) }

// ToConfirm lists the marked tasks (Unconfirmed) that the task runner is
// to confirm in the log now: every finished one (a refusal, a guard's
// failure: a handful), at once, since a later purge may come any time
// after, even once the task has expired and its record and mark are gone
// (found by session 28's review); a waiting purge_history only once it
// holds a queued erasure of its room (holding), so that a retention
// run's thousands of purges waiting for a slot cost no publish; and
// every mark while the queue of files from before erasein, which names
// no room, has entries (it waits for them all). A task that has expired
// by now is left out: the runner's sweep deletes it, and with it its
// mark, before a confirmation would be applied.
func (s *Store) ToConfirm(now time.Time) ([]*commands.Task, error) {
	ms := now.UnixMilli()
	var out []*commands.Task
	err := s.db.View(func(tx *bolt.Tx) error {
		marks := tx.Bucket(bUnconfirm)
		if k, _ := marks.Cursor().First(); k == nil {
			return nil
		}
		k, _ := tx.Bucket(bErase).Cursor().First()
		legacy := k != nil
		listed := map[string]bool{}
		add := func(t *commands.Task) {
			if !listed[t.ID] && !t.ExpiredAt(ms) {
				listed[t.ID] = true
				out = append(out, t)
			}
		}
		open := tx.Bucket(bOpenTasks)
		err := marks.ForEach(func(k, _ []byte) error {
			if !legacy && open.Get(k) != nil {
				return nil // waiting: below, if it holds an erasure
			}
			t, err := getTask(tx, string(k))
			if t != nil {
				add(t)
			}
			return err
		})
		if err != nil || legacy {
			return err
		}
		rooms, err := erasingRooms(tx)
		if err != nil {
			return err
		}
		for _, room := range rooms {
			tasks, err := holding(tx, room)
			if err != nil {
				return err
			}
			for _, t := range tasks {
				add(t)
			}
		}
		return nil
	})
	return out, err
}

// erasingRooms lists the rooms with erasures queued by room: under a
// room number (erasein) or for a purge_room (eraseroom), each once.
func erasingRooms(tx *bolt.Tx) ([]string, error) {
	var rooms []string
	seen := map[string]bool{}
	add := func(id string) {
		if !seen[id] {
			seen[id] = true
			rooms = append(rooms, id)
		}
	}
	err := tx.Bucket(bEraseIn).ForEach(func(k, _ []byte) error {
		m, err := getRoomMeta(tx, binary.BigEndian.Uint64(k))
		if err == nil {
			add(m.RoomID)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	err = tx.Bucket(bEraseRoom).ForEach(func(k, _ []byte) error {
		add(string(k))
		return nil
	})
	return rooms, err
}

// tasksIn lists the tasks named by the keys of an index bucket.
func (s *Store) tasksIn(index []byte) ([]*commands.Task, error) {
	var out []*commands.Task
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(index).ForEach(func(k, _ []byte) error {
			t, err := getTask(tx, string(k))
			if err != nil || t == nil {
				return err
			}
			out = append(out, t)
			return nil
		})
	})
	return out, err
}

// OpenTasks lists the tasks that are scheduled or active.
func (s *Store) OpenTasks() ([]*commands.Task, error) { return s.tasksIn(bOpenTasks) }

// Erasures are the log messages purges have queued for deletion.
type Erasures struct {
	Seqs  []uint64          // single event messages
	Rooms map[string]uint64 // room ID -> purge the room's event subject below this sequence
	inKey [][2]uint64       // room number and sequence of the erasein entries among Seqs
}

// PendingErasures returns up to max queued single erasures, and the
// queued room purges. With inRooms false it leaves out the erasures
// queued by room (RoomErasures takes those).
//
// A room's erasures wait while it has a decision the log does not
// confirm yet (holding), and the queue of files from before erasein
// while any decision is marked (holds.legacy).
func (s *Store) PendingErasures(max int, inRooms bool) (Erasures, error) {
	e := Erasures{Rooms: map[string]uint64{}}
	err := s.db.View(func(tx *bolt.Tx) error {
		held := newHolds(tx)
		if !held.legacy() {
			c := tx.Bucket(bErase).Cursor()
			for k, _ := c.First(); k != nil && len(e.Seqs) < max; k, _ = c.Next() {
				e.Seqs = append(e.Seqs, binary.BigEndian.Uint64(k))
			}
		}
		if inRooms {
			rc := tx.Bucket(bEraseIn).Cursor()
			for rk, _ := rc.First(); rk != nil && len(e.Seqs) < max; rk, _ = rc.Next() {
				room := binary.BigEndian.Uint64(rk)
				h, err := held.number(room)
				if err != nil {
					return err
				}
				if h {
					continue
				}
				c := tx.Bucket(bEraseIn).Bucket(rk).Cursor()
				for k, _ := c.First(); k != nil && len(e.Seqs) < max; k, _ = c.Next() {
					seq := binary.BigEndian.Uint64(k)
					e.Seqs = append(e.Seqs, seq)
					e.inKey = append(e.inKey, [2]uint64{room, seq})
				}
			}
		}
		return tx.Bucket(bEraseRoom).ForEach(func(k, v []byte) error {
			h, err := held.room(string(k))
			if err == nil && !h {
				e.Rooms[string(k)] = binary.BigEndian.Uint64(v)
			}
			return err
		})
	})
	return e, err
}

// holds answers, within one transaction, whether a room's erasures wait
// for the log to confirm a decision they would hide (holding). It costs
// nothing while no decision is marked, the common case.
type holds struct {
	tx    *bolt.Tx
	none  bool            // no mark at all: no room is held
	rooms map[string]bool // room ID -> held, as asked
}

func newHolds(tx *bolt.Tx) holds {
	if k, _ := tx.Bucket(bUnconfirm).Cursor().First(); k == nil {
		return holds{tx: tx, none: true} // room and number answer before the map
	}
	return holds{tx: tx, rooms: map[string]bool{}}
}

// room reports whether roomID's erasures wait.
func (h holds) room(roomID string) (bool, error) {
	if h.none {
		return false, nil
	}
	if held, ok := h.rooms[roomID]; ok {
		return held, nil
	}
	tasks, err := holding(h.tx, roomID)
	h.rooms[roomID] = len(tasks) > 0
	return len(tasks) > 0, err
}

// number reports whether the erasures queued under a room number (the
// room's, or one a purge_room retired) wait.
func (h holds) number(room uint64) (bool, error) {
	if h.none {
		return false, nil
	}
	m, err := getRoomMeta(h.tx, room)
	if err != nil {
		return false, err
	}
	return h.room(m.RoomID)
}

// legacy reports whether the queue of files from before erasein, which
// names no room, waits: while any decision is marked (ToConfirm then
// confirms them all).
func (h holds) legacy() bool { return !h.none }

// holding lists the decisions of a room that its erasures wait for, the
// marked tasks (Unconfirmed) whose decision was made on history those
// erasures take from the log, so that a reader that finds that history
// gone learns how the command was decided from the log's TaskUpdates
// alone (applyPurgeRoom, applyPurgeHistory):
//   - a purge_room refused by the members check, before a forced one's
//     erasure: erased first, a rebuild, or an instance behind, brought
//     the refused purge back scheduled, and ran it; likewise a
//     purge_history failed by the forward-extremity guard, which a
//     rebuild with no event left passed;
//   - a purge_history that passed the forward-extremity check and has no
//     update yet, before a later purge's erasure of the events that were
//     the room's forward extremities then: erased first, a rebuild
//     failed it. A purge's own erasure does not hide its own decision
//     (it keeps what is above the cut-off), so a room with one such
//     purge and no later one is not held.
//
// It reads the room's task list (a handful of tasks: they expire after
// a week) and decodes it only if one of them is marked.
func holding(tx *bolt.Tx, roomID string) ([]*commands.Task, error) {
	n := roomNum(tx, roomID)
	if n == 0 {
		return nil, nil
	}
	marks := tx.Bucket(bUnconfirm)
	var ids []string
	marked := false
	prefix := u64(n)
	c := tx.Bucket(bRoomTask).Cursor()
	for k, _ := c.Seek(prefix); len(k) > 16 && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		ids = append(ids, string(k[16:]))
		marked = marked || marks.Get(k[16:]) != nil
	}
	if !marked {
		return nil, nil
	}
	tasks := make([]*commands.Task, 0, len(ids))
	for _, id := range ids {
		t, err := getTask(tx, id)
		if err != nil {
			return nil, err
		}
		if t != nil {
			tasks = append(tasks, t)
		}
	}
	var out []*commands.Task
	for _, t := range tasks {
		if marks.Get([]byte(t.ID)) != nil && (t.Finished() || laterPurge(tasks, t)) {
			out = append(out, t)
		}
	}
	return out, nil
}

// laterPurge reports whether the room's tasks have a purge applied after
// t's command, or a deletion still open, whose purge step may come after
// it.
func laterPurge(tasks []*commands.Task, t *commands.Task) bool {
	for _, o := range tasks {
		if o.ID == t.ID {
			continue
		}
		switch o.Action {
		case commands.ActionPurgeHistory, commands.ActionPurgeRoom:
			if o.Seq > t.Seq {
				return true
			}
		case commands.ActionShutdownAndPurgeRoom:
			if o.Seq > t.Seq || !o.Finished() {
				return true
			}
		}
	}
	return false
}

// ErasuresDone removes erasures that the log has carried out.
func (s *Store) ErasuresDone(e Erasures) error {
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bErase)
		for _, seq := range e.Seqs {
			if err := b.Delete(u64(seq)); err != nil {
				return err
			}
		}
		ib := tx.Bucket(bEraseIn)
		for _, k := range e.inKey {
			rb := ib.Bucket(u64(k[0]))
			if rb == nil {
				continue
			}
			if err := rb.Delete(u64(k[1])); err != nil {
				return err
			}
			if first, _ := rb.Cursor().First(); first == nil {
				if err := ib.DeleteBucket(u64(k[0])); err != nil {
					return err
				}
			}
		}
		rb := tx.Bucket(bEraseRoom)
		for room, seq := range e.Rooms {
			if v := rb.Get([]byte(room)); v != nil && binary.BigEndian.Uint64(v) == seq {
				if err := rb.Delete([]byte(room)); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// RoomErasure is every erasure queued for one room.
type RoomErasure struct {
	RoomID string
	Seqs   []uint64 // ascending
	room   uint64
}

// RoomErasures returns the erasures queued for the first room whose
// purge the janitor has finished, so that all of them are known: a
// compaction of the room's event subject (bus.Log.Compact) keeps every
// message below the last of them that is not listed. Held rooms
// (holding) wait.
func (s *Store) RoomErasures() (r RoomErasure, ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		jb := tx.Bucket(bJanitor)
		ib := tx.Bucket(bEraseIn)
		held := newHolds(tx)
		rc := ib.Cursor()
		for rk, _ := rc.First(); rk != nil; rk, _ = rc.Next() {
			if jb.Get(rk) != nil {
				continue
			}
			room := binary.BigEndian.Uint64(rk)
			meta, err := getRoomMeta(tx, room)
			if err != nil {
				return err
			}
			h, err := held.room(meta.RoomID)
			if err != nil {
				return err
			}
			if h {
				continue
			}
			r = RoomErasure{RoomID: meta.RoomID, room: room}
			c := ib.Bucket(rk).Cursor()
			for k, _ := c.First(); k != nil; k, _ = c.Next() {
				r.Seqs = append(r.Seqs, binary.BigEndian.Uint64(k))
			}
			ok = true
			return nil
		}
		return nil
	})
	return r, ok, err
}

// RoomErasureDone removes a room's erasures that the log has carried
// out: the whole bucket, unless the janitor has queued more since.
func (s *Store) RoomErasureDone(r RoomErasure) error {
	return s.update(func(tx *bolt.Tx) error {
		ib := tx.Bucket(bEraseIn)
		b := ib.Bucket(u64(r.room))
		if b == nil {
			return nil
		}
		if b.Stats().KeyN == len(r.Seqs) {
			return ib.DeleteBucket(u64(r.room))
		}
		for _, seq := range r.Seqs {
			if err := b.Delete(u64(seq)); err != nil {
				return err
			}
		}
		return nil
	})
}

// ErasuresPending reports whether any erasure is queued.
func (s *Store) ErasuresPending() (bool, error) {
	pending := false
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bErase, bEraseIn, bEraseRoom} {
			if k, _ := tx.Bucket(b).Cursor().First(); k != nil {
				pending = true
			}
		}
		return nil
	})
	return pending, err
}

// PurgeBacklog is the purges' background work still queued, in rooms
// (room numbers: a room whose history a purge_room ended counts once for
// that history and once for its new one while both wait).
type PurgeBacklog struct {
	// RowRooms have purged rows still stored, which the janitor is to
	// delete (its queue: janitor).
	RowRooms int
	// ErasureRooms have purged events still in the log, which the eraser
	// is to delete: those with erasures queued under their number
	// (erasein) or for their purge_room (eraseroom); and the queue of
	// files from before erasein (erase), which names no room, counts as
	// one.
	ErasureRooms int
}

// PurgeBacklog counts the purges' queued background work, for /metrics
// at each scrape. It reads the keys of the queues, one a room, and never
// what they hold: a purge may leave a million rows to delete and as many
// log messages to erase, and a scrape every few seconds must not read
// them. Its cost is one key per room with work waiting.
func (s *Store) PurgeBacklog() (PurgeBacklog, error) {
	var b PurgeBacklog
	err := s.db.View(func(tx *bolt.Tx) error {
		b.RowRooms = countKeys(tx.Bucket(bJanitor))
		b.ErasureRooms = countKeys(tx.Bucket(bEraseIn)) + countKeys(tx.Bucket(bEraseRoom))
		if k, _ := tx.Bucket(bErase).Cursor().First(); k != nil {
			b.ErasureRooms++
		}
		return nil
	})
	return b, err
}

// countKeys is the number of keys at b's top level; a nested bucket
// (a room's in erasein) is one key, whose own keys are not read.
func countKeys(b *bolt.Bucket) int {
	n := 0
	c := b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		n++
	}
	return n
}

// ErasuresPendingFor reports whether erasures of roomID's messages are
// queued: under its room number (erasein), for its purge_room
// (eraseroom), or in the queue that files written before erasein kept,
// which names no room (erase). A purge task waits for its own room's
// only: one room whose erasure fails must not keep every other room's
// purge open.
func (s *Store) ErasuresPendingFor(roomID string) (bool, error) {
	pending := false
	err := s.db.View(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bErase).Cursor().First()
		n := roomNum(tx, roomID)
		pending = k != nil || tx.Bucket(bEraseRoom).Get([]byte(roomID)) != nil ||
			(n != 0 && tx.Bucket(bEraseIn).Bucket(u64(n)) != nil)
		return nil
	})
	return pending, err
}

// RoomTasks lists a room's tasks, oldest first.
func (s *Store) RoomTasks(roomID string) ([]*commands.Task, error) {
	var out []*commands.Task
	err := s.db.View(func(tx *bolt.Tx) error {
		n := roomNum(tx, roomID)
		if n == 0 {
			return nil
		}
		c := tx.Bucket(bRoomTask).Cursor()
		prefix := u64(n)
		for k, _ := c.Seek(prefix); len(k) > 16 && string(k[:8]) == string(prefix); k, _ = c.Next() {
			t, err := getTask(tx, string(k[16:]))
			if err != nil {
				return err
			}
			if t != nil {
				out = append(out, t)
			}
		}
		return nil
	})
	return out, err
}

// Blocked reports whether a room is blocked and by whom.
func (s *Store) Blocked(roomID string) (blocked bool, by string, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		n := roomNum(tx, roomID)
		if n == 0 {
			return nil
		}
		m, err := getRoomMeta(tx, n)
		if err != nil {
			return err
		}
		blocked, by = m.Blocked, m.BlockedBy
		return nil
	})
	return blocked, by, err
}

// DeadLetterAt is the dead-letter record of the log message at seq, if
// the projector rejected it (ok false if it applied it, or has not got to
// it, or the record was among the oldest dropped past MaxDeadLetters).
func (s *Store) DeadLetterAt(seq uint64) (d DeadLetter, ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bDead).Get(u64(seq))
		if v == nil {
			return nil
		}
		ok = true
		return decodeMsgpack(v, &d)
	})
	return d, ok, err
}

// DeadLetters lists the most recent dead-letter records, newest first.
func (s *Store) DeadLetters(max int) ([]DeadLetter, error) {
	var out []DeadLetter
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bDead).Cursor()
		for k, v := c.Last(); k != nil && len(out) < max; k, v = c.Prev() {
			var d DeadLetter
			if err := decodeMsgpack(v, &d); err != nil {
				return err
			}
			out = append(out, d)
		}
		return nil
	})
	return out, err
}
