package projections

import (
	"encoding/base64"
	"encoding/binary"
	"math"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/commands"
)

// Bucket names. The layout is documented in doc.go.
var (
	bMeta      = []byte("meta")        // format version, partition count
	bCP        = []byte("checkpoint")  // partition (uint16) -> last applied log sequence
	bRooms     = []byte("rooms")       // room ID -> room number (uint64)
	bRoomMeta  = []byte("roommeta")    // room number -> RoomMeta (msgpack)
	bTimeline  = []byte("timeline")    // room|depth|order -> row
	bEvents    = []byte("eventindex")  // room|event ID -> depth|order|outlier (see evKey)
	bOutliers  = []byte("outlierrows") // room|event ID -> row
	bState     = []byte("state")       // room|type|state_key|depth|order -> membership|event ID
	bFwd       = []byte("fwdext")      // room|event ID -> depth
	bBack      = []byte("backext")     // room|event ID -> depth of the successor that named it
	bForgot    = []byte("forgotten")   // room|user ID -> forget time (ms), then forgotByShutdown for a deletion's own forget
	bTasks     = []byte("tasks")       // task ID -> Task (msgpack)
	bRoomTask  = []byte("roomtasks")   // room|created ts|task ID -> empty
	bDead      = []byte("deadletter")  // log sequence -> DeadLetter (msgpack)
	bReceived  = []byte("received")    // received ts|log sequence -> room number (live events only, outliers included)
	bRedacts   = []byte("redacted")    // room|redacted event ID -> redaction event ID
	bReRedacts = []byte("reredacted")  // room|redacted event ID|0|log sequence -> redaction event ID (the redactions after the mark's; see reRedactKey)
	bRel       = []byte("relations")   // room|target|rel type|depth|order -> relating event ID
	bRelCount  = []byte("relcounts")   // room|target|rel type -> count; ...|0xff|sender -> count
	bRelAt     = []byte("relat")       // room|depth|order -> bundled kinds (timeline events some indexed relation targets; see markRelated)
	bRelWait   = []byte("relwait")     // room|event ID -> bundled kinds (targets of indexed relations that are not on the room's timeline)
	bEdges     = []byte("edges")       // room|prev event ID|0|event ID -> depth of the event (parents not one level up; see updateExtremities)
	bRStream   = []byte("roomstream")  // room|order -> depth (timeline events by stream ordering)
	bJanitor   = []byte("janitor")     // room -> {} (rooms with purged rows still stored)
	bErase     = []byte("erase")       // log sequence -> {} (event messages to erase from the log)
	bEraseRoom = []byte("eraseroom")   // room ID -> log sequence (purge the room's event subject below it)
	bEraseIn   = []byte("erasein")     // room -> bucket: log sequence -> {} (event messages to erase, by room; see RoomErasures)
	bOpenTasks = []byte("opentasks")   // task ID -> {} (scheduled or active)
	bExtraSeqs = []byte("extraseqs")   // room|event ID|0|log sequence -> {} (a stored event's other log messages; see extraSeqKey)
	bEnded     = []byte("ended")       // room|event ID -> log sequence of the copy from below the floor that ended its gap (endBelowFloor)
	bByServer  = []byte("srvmembers")  // room|len(server)|server|user ID -> {} (users with a member state entry, by server; see indexMember)
	bTaskDone  = []byte("taskdone")    // last update ts (as order)|task ID -> {} (finished tasks, to expire; see ExpireTasks)
	bUnconfirm = []byte("unconfirmed") // task ID -> {} (purge_room refusals the task runner is to confirm in the log; see applyPurgeRoom)

	allBuckets = [][]byte{bMeta, bCP, bRooms, bRoomMeta, bTimeline, bEvents, bOutliers, bState, bFwd, bBack, bForgot, bTasks, bRoomTask, bDead, bReceived, bRedacts, bReRedacts, bRel, bRelCount, bRelAt, bRelWait, bEdges, bRStream, bJanitor, bErase, bEraseRoom, bEraseIn, bOpenTasks, bExtraSeqs, bTaskDone, bUnconfirm, bEnded, bByServer}
)

// order maps a signed stream ordering to an unsigned key component that
// sorts the same way (negative backfilled orderings first).
func order(stream int64) uint64 { return uint64(stream) ^ 1<<63 }

func unorder(u uint64) int64 { return int64(u ^ 1<<63) }

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

// roomTaskKey is a task's roomtasks key: room|created ts|task ID.
func roomTaskKey(room uint64, created int64, id string) []byte {
	k := binary.BigEndian.AppendUint64(u64(room), uint64(created))
	return append(k, id...)
}

// taskDoneKey is a finished task's taskdone key: the ts of its last
// update, signed as stream orderings are (order), then its ID.
func taskDoneKey(t *commands.Task) []byte {
	return append(u64(order(t.UpdatedTS)), t.ID...)
}

// tlKey is room|depth|order. Depth is >= 1, so it sorts as unsigned.
func tlKey(room uint64, depth, stream int64) []byte {
	return tlKeyAt(make([]byte, 0, 24), room, depth, stream)
}

// tlKeyAt appends tlKey to dst.
func tlKeyAt(dst []byte, room uint64, depth, stream int64) []byte {
	dst = binary.BigEndian.AppendUint64(dst, room)
	dst = binary.BigEndian.AppendUint64(dst, uint64(depth))
	return binary.BigEndian.AppendUint64(dst, order(stream))
}

func parseTLKey(k []byte) (room uint64, depth, stream int64) {
	return binary.BigEndian.Uint64(k), int64(binary.BigEndian.Uint64(k[8:])), unorder(binary.BigEndian.Uint64(k[16:]))
}

// roomEnd is the first key after every timeline key of room.
func roomEnd(room uint64) []byte {
	k := make([]byte, 24)
	binary.BigEndian.PutUint64(k, room)
	binary.BigEndian.PutUint64(k[8:], math.MaxUint64)
	binary.BigEndian.PutUint64(k[16:], math.MaxUint64)
	return k
}

// roomStrKey is room|s, for per-room sets keyed by a string.
func roomStrKey(room uint64, s string) []byte {
	k := make([]byte, 8, 8+len(s))
	binary.BigEndian.PutUint64(k, room)
	return append(k, s...)
}

// statePrefix is room|len(type)|type|len(key)|key.
func statePrefix(room uint64, typ, stateKey string) []byte {
	return appendStatePrefix(make([]byte, 0, 8+4+len(typ)+len(stateKey)+16), room, typ, stateKey)
}

// appendStatePrefix appends statePrefix to dst.
func appendStatePrefix(dst []byte, room uint64, typ, stateKey string) []byte {
	dst = binary.BigEndian.AppendUint64(dst, room)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(typ)))
	dst = append(dst, typ...)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(stateKey)))
	return append(dst, stateKey...)
}

func stateKeyAt(prefix []byte, depth, stream int64) []byte {
	k := make([]byte, len(prefix), len(prefix)+16)
	copy(k, prefix)
	k = binary.BigEndian.AppendUint64(k, uint64(depth))
	return binary.BigEndian.AppendUint64(k, order(stream))
}

// evKey is the key of an event in the events index and in outliers:
// room|event ID. The room comes first so that a room's entries are
// together: the IDs are hashes, and keyed by ID alone every insert of a
// group dirtied a leaf of its own (1.5 pages written per message catching
// up 1M events in 10k rooms, where 0.8 with the room first).
func evKey(room uint64, id string) []byte { return roomStrKey(room, id) }

// evKeyAt appends the evKey of an ID held as bytes to dst.
func evKeyAt(dst []byte, room uint64, id []byte) []byte {
	return append(binary.BigEndian.AppendUint64(dst, room), id...)
}

// evLoc is an entry of the events index; room is its key's.
type evLoc struct {
	room    uint64
	depth   int64
	stream  int64
	outlier bool
}

// isRow reports whether the entry points at the timeline row of room at
// (depth, stream).
func (l evLoc) isRow(room uint64, depth, stream int64) bool {
	return l.room == room && !l.outlier && l.depth == depth && l.stream == stream
}

// bytes is the entry's value: depth|order|outlier.
func (l evLoc) bytes() []byte {
	b := make([]byte, 17)
	binary.BigEndian.PutUint64(b, uint64(l.depth))
	binary.BigEndian.PutUint64(b[8:], order(l.stream))
	if l.outlier {
		b[16] = 1
	}
	return b
}

// parseLoc reads the value of room's entry; ok is false for nil (no
// entry) or a malformed value.
func parseLoc(room uint64, b []byte) (evLoc, bool) {
	if len(b) != 17 {
		return evLoc{}, false
	}
	return evLoc{
		room:    room,
		depth:   int64(binary.BigEndian.Uint64(b)),
		stream:  unorder(binary.BigEndian.Uint64(b[8:])),
		outlier: b[16] == 1,
	}, true
}

// lookupEvent is the room's entry for id in the events index b.
func lookupEvent(b *bolt.Bucket, room uint64, id string) (evLoc, bool) {
	return parseLoc(room, b.Get(evKey(room, id)))
}

// roomKey is the room's <rk> (unpadded base64url of its ID), which decides
// its partition.
func roomKey(roomID string) string { return base64.RawURLEncoding.EncodeToString([]byte(roomID)) }

// relPrefix is room|len(target)|target|len(relType)|relType.
func relPrefix(room uint64, target, relType string) []byte {
	k := make([]byte, 8, 8+4+len(target)+len(relType)+16)
	binary.BigEndian.PutUint64(k, room)
	k = binary.BigEndian.AppendUint16(k, uint16(len(target)))
	k = append(k, target...)
	k = binary.BigEndian.AppendUint16(k, uint16(len(relType)))
	return append(k, relType...)
}

// parseRelKey reads the room, target and relation type of a relations
// key (relPrefix, then depth and order).
func parseRelKey(k []byte) (room uint64, target, relType string, ok bool) {
	return parseTwoStrings(k)
}

// parseStateKey reads the room, type and state key of a state key
// (statePrefix, then depth and order).
func parseStateKey(k []byte) (room uint64, typ, stateKey string, ok bool) {
	return parseTwoStrings(k)
}

// parseTwoStrings reads a key that starts room|len(a)|a|len(b)|b.
func parseTwoStrings(k []byte) (room uint64, a, b string, ok bool) {
	if len(k) < 10 {
		return 0, "", "", false
	}
	n := 10 + int(binary.BigEndian.Uint16(k[8:]))
	if len(k) < n+2 {
		return 0, "", "", false
	}
	m := n + 2 + int(binary.BigEndian.Uint16(k[n:]))
	if len(k) < m {
		return 0, "", "", false
	}
	return binary.BigEndian.Uint64(k), string(k[10:n]), string(k[n+2 : m]), true
}

// relSenderKey is relPrefix|0xff|sender: the per-sender count, which sorts
// after the positions of the same prefix in relcounts' own bucket.
func relSenderKey(prefix []byte, sender string) []byte {
	k := make([]byte, len(prefix), len(prefix)+1+len(sender))
	copy(k, prefix)
	k = append(k, 0xff)
	return append(k, sender...)
}

// extraSeqPrefix is room|event ID|0, the prefix of the event's keys in
// extraseqs: the 0 ends the ID (as in edgeKey), so that an ID that is
// the start of another does not find the other's keys.
func extraSeqPrefix(dst []byte, room uint64, id []byte) []byte {
	return append(evKeyAt(dst, room, id), 0)
}

// extraSeqKey is extraSeqPrefix|log sequence: a log message that carries
// the event besides the one of its row (or outlier row), which a purge
// that deletes the row erases too. An event reaches the log more than
// once as an outlier that later joins the timeline (the outlier's
// message), and when it is published again after JetStream's
// de-duplication window (a duplicate).
func extraSeqKey(room uint64, id string, seq uint64) []byte {
	k := extraSeqPrefix(make([]byte, 0, 8+len(id)+1+8), room, []byte(id))
	return binary.BigEndian.AppendUint64(k, seq)
}

// reRedactPrefix is room|target|0, the prefix of target's keys in
// reredacted (extraSeqPrefix's shape: the 0 ends the ID).
func reRedactPrefix(dst []byte, room uint64, target []byte) []byte {
	return extraSeqPrefix(dst, room, target)
}

// reRedactKey is reRedactPrefix|log sequence: a redaction of target
// applied (as a timeline event, at seq) while another already marked it.
// The keys sort in the order the redactions were applied, so that the
// first one a purge keeps can take the place of a purged mark's
// (promoteRedaction).
func reRedactKey(room uint64, target string, seq uint64) []byte {
	k := reRedactPrefix(make([]byte, 0, 8+len(target)+1+8), room, []byte(target))
	return binary.BigEndian.AppendUint64(k, seq)
}

// edgeKey is room|prev|0|child: the reverse of prev_events.
func edgeKey(room uint64, prev, child string) []byte {
	k := roomStrKey(room, prev)
	k = append(k, 0)
	return append(k, child...)
}
