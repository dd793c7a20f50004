package projections

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"
	"unsafe"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/scrollback/scrollback/commands"
)

// Row flags.
const (
	flagRejected   = 1 << 0
	flagSoftFailed = 1 << 1
	flagState      = 1 << 2
	flagBackfilled = 1 << 3
	flagOutlier    = 1 << 4
	flagHasURL     = 1 << 5
)

// Row is one stored event: everything a read needs, with content and the
// published unsigned kept as MessagePack bytes so that a read copies them
// into its reply without decoding. Rows are written once at apply time.
type Row struct {
	EventID        string
	Type           string
	Sender         string
	StateKey       string // valid when IsState
	OriginServerTS int64
	AgeTS          int64 // received time minus any published unsigned.age
	Redacts        string
	Summary        string   // commands.StateSummary of state events
	RelType        string   // content["m.relates_to"].rel_type, if any
	RelTarget      string   // content["m.relates_to"].event_id, if any
	Labels         []string // content["org.matrix.labels"]
	PrevEvents     []string // the event's parents (set by newRow; reads use Prevs)
	prevRaw        []byte   // encoded PrevEvents of a stored row, parsed on demand
	Content        []byte   // MessagePack map
	Unsigned       []byte   // MessagePack map pairs of the published unsigned, age removed
	UnsignedN      int      // number of pairs in Unsigned
	Extra          []byte   // MessagePack map pairs of the event's other top-level keys (commands.Event.Extra)
	ExtraN         int      // number of pairs in Extra
	Flags          uint8

	// Position, filled by reads from the key.
	Depth  int64
	Stream int64

	relKnown bool  // MarkRelated looked the row up
	relKinds uint8 // and found these bundled kinds of relation to it
	aged     bool  // the row holds age (rows stored by earlier releases do not)

	age int64 // the published unsigned.age: the received time is AgeTS+age (see marshal)
}

// IsState reports whether the row is a state event.
func (r *Row) IsState() bool { return r.Flags&flagState != 0 }

// Rejected reports whether the event was rejected.
func (r *Row) Rejected() bool { return r.Flags&flagRejected != 0 }

// SoftFailed reports whether the event was soft-failed.
func (r *Row) SoftFailed() bool { return r.Flags&flagSoftFailed != 0 }

// Meta is what filters look at.
func (r *Row) Meta() commands.EventMeta {
	return commands.EventMeta{Type: r.Type, Sender: r.Sender, HasURL: r.Flags&flagHasURL != 0, Labels: r.Labels}
}

// Token is the room token naming this row's position.
func (r *Row) Token() commands.RoomToken {
	return commands.RoomToken{Topological: r.Depth, Stream: r.Stream, IsTopological: true}
}

// encodeBufs are encodeMsgpack's buffers: a catch-up encodes the content
// of every event, and a buffer and an encoder made for each made building
// a row a fifth slower (9 allocations instead of 4).
var encodeBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// encodeMsgpack encodes v with sorted map keys, into a slice of its own.
func encodeMsgpack(v any) ([]byte, error) {
	buf := encodeBufs.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 64<<10 { // a rare big one is not kept
			encodeBufs.Put(buf)
		}
	}()
	buf.Reset()
	enc := msgpack.GetEncoder()
	defer msgpack.PutEncoder(enc)
	enc.Reset(buf)
	enc.SetSortMapKeys(true)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.Clone(buf.Bytes()), nil
}

// computedUnsigned are the unsigned keys the service computes at read
// time, and those Synapse never serves in /messages (the stripped room
// state of invites and knocks, which serialize_event pops, and the
// sender's transaction_id, only ever for the sender's own device, which
// the service cannot tell); published values of them are dropped.
var computedUnsigned = map[string]bool{
	"age": true, "prev_content": true, "prev_sender": true, "replaces_state": true,
	"redacted_because": true, "redacted_by": true, "membership": true, "m.relations": true,
	"invite_room_state": true, "knock_room_state": true, "transaction_id": true,
}

// newRow builds the stored form of an event.
func newRow(e *commands.Event, receivedTS int64) (*Row, error) {
	r := &Row{
		EventID:        e.EventID,
		Type:           e.Type,
		Sender:         e.Sender,
		OriginServerTS: e.OriginServerTS,
		AgeTS:          receivedTS - e.PublishedAge(),
		age:            e.PublishedAge(),
		aged:           true,
		Redacts:        e.Redacts,
		PrevEvents:     e.PrevEvents,
	}
	if rel, ok := commands.RelationOf(e.Content); ok {
		r.RelType, r.RelTarget = rel.RelType, rel.EventID
	}
	meta := e.Meta()
	r.Labels = meta.Labels
	if meta.HasURL {
		r.Flags |= flagHasURL
	}
	if e.StateKey != nil {
		r.Flags |= flagState
		r.StateKey = *e.StateKey
		r.Summary = commands.StateSummary(e.Type, e.Content)
	}
	for _, f := range []struct {
		on   bool
		flag uint8
	}{{e.Rejected, flagRejected}, {e.SoftFailed, flagSoftFailed}, {e.Backfilled, flagBackfilled}, {e.Outlier, flagOutlier}} {
		if f.on {
			r.Flags |= f.flag
		}
	}
	var err error
	if r.Content, err = encodeMsgpack(e.Content); err != nil {
		return nil, fmt.Errorf("encode content: %w", err)
	}
	if r.Unsigned, r.UnsignedN, err = encodePairs(e.Unsigned, computedUnsigned); err != nil {
		return nil, fmt.Errorf("encode unsigned: %w", err)
	}
	if r.Extra, r.ExtraN, err = encodePairs(e.Extra, nil); err != nil {
		return nil, fmt.Errorf("encode top-level keys: %w", err)
	}
	return r, nil
}

// encodePairs encodes the pairs of m whose keys are not in skip as
// MessagePack map pairs, in key order, and counts them; nil and 0 when
// there are none.
func encodePairs(m map[string]any, skip map[string]bool) ([]byte, int, error) {
	if len(m) == 0 {
		return nil, 0, nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		if !skip[k] {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, 0, nil
	}
	sort.Strings(keys)
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.SetSortMapKeys(true)
	for _, k := range keys {
		if err := enc.EncodeString(k); err != nil {
			return nil, 0, err
		}
		if err := enc.Encode(m[k]); err != nil {
			return nil, 0, err
		}
	}
	return buf.Bytes(), len(keys), nil
}

const rowVersion = 1

// marshal writes the row's binary form: a version byte, the flags, then
// varint-prefixed fields. Position is not stored: it is the key.
//
// Then comes the published unsigned.age (a varint), so that the janitor
// can rebuild the key of the row's received entry: its received time is
// AgeTS plus the age (rowReceived). Last, only when the event has any,
// its other top-level keys (Extra: their count, then the length-prefixed
// pairs); rows without them end after the age, as rows of earlier
// releases do. Rows stored by earlier releases end
// after their unsigned; the layout is otherwise the same, and so is the
// version byte, so that those rows read as before. The readers that skip
// ahead (rowHead, readPurgeHead) stop before the unsigned; unmarshal
// reads the age when it is there (a length check for an older row), so
// that a decoded row marshals back to the same bytes.
func (r *Row) marshal() []byte {
	n := 60 + len(r.EventID) + len(r.Type) + len(r.Sender) + len(r.StateKey) + len(r.Redacts) + len(r.Summary) + len(r.RelType) + len(r.RelTarget) + len(r.Content) + len(r.Unsigned) + len(r.Extra)
	for _, l := range r.Labels {
		n += len(l) + 2
	}
	for _, p := range r.PrevEvents {
		n += len(p) + 2
	}
	n += len(r.prevRaw)
	b := make([]byte, 0, n)
	b = append(b, rowVersion, r.Flags)
	b = binary.AppendVarint(b, r.OriginServerTS)
	b = binary.AppendVarint(b, r.AgeTS)
	for _, s := range []string{r.EventID, r.Type, r.Sender, r.StateKey, r.Redacts, r.Summary, r.RelType, r.RelTarget} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = binary.AppendUvarint(b, uint64(len(r.Labels)))
	for _, l := range r.Labels {
		b = binary.AppendUvarint(b, uint64(len(l)))
		b = append(b, l...)
	}
	if r.PrevEvents == nil && r.prevRaw != nil {
		b = append(b, r.prevRaw...)
	} else {
		b = binary.AppendUvarint(b, uint64(len(r.PrevEvents)))
		for _, p := range r.PrevEvents {
			b = binary.AppendUvarint(b, uint64(len(p)))
			b = append(b, p...)
		}
	}
	b = binary.AppendUvarint(b, uint64(len(r.Content)))
	b = append(b, r.Content...)
	b = binary.AppendUvarint(b, uint64(r.UnsignedN))
	b = binary.AppendUvarint(b, uint64(len(r.Unsigned)))
	b = append(b, r.Unsigned...)
	if !r.aged {
		return b
	}
	b = binary.AppendVarint(b, r.age)
	if r.ExtraN == 0 {
		return b
	}
	b = binary.AppendUvarint(b, uint64(r.ExtraN))
	b = binary.AppendUvarint(b, uint64(len(r.Extra)))
	return append(b, r.Extra...)
}

var errBadRow = errors.New("projections: corrupt row")

type rowReader struct {
	b   []byte
	err error
}

func (rr *rowReader) varint() int64 {
	if rr.err != nil {
		return 0
	}
	v, n := binary.Varint(rr.b)
	if n <= 0 {
		rr.err = errBadRow
		return 0
	}
	rr.b = rr.b[n:]
	return v
}

func (rr *rowReader) uvarint() uint64 {
	if rr.err != nil {
		return 0
	}
	v, n := binary.Uvarint(rr.b)
	if n <= 0 {
		rr.err = errBadRow
		return 0
	}
	rr.b = rr.b[n:]
	return v
}

func (rr *rowReader) str() string {
	n := rr.uvarint()
	if rr.err != nil || n > uint64(len(rr.b)) {
		rr.err = errBadRow
		return ""
	}
	s := string(rr.b[:n])
	rr.b = rr.b[n:]
	return s
}

// strs reads consecutive length-prefixed strings into dst, copying them
// in one allocation: they are substrings of one copy of their bytes (the
// length prefixes come along, a byte or so each). With alias they are
// substrings of the row's own bytes instead (see Row.unmarshal).
func (rr *rowReader) strs(alias bool, dst ...*string) {
	start := rr.b
	for range dst {
		rr.span()
	}
	if rr.err != nil {
		return
	}
	raw := start[:len(start)-len(rr.b)]
	var text string
	if alias {
		text = unsafe.String(unsafe.SliceData(raw), len(raw))
	} else {
		text = string(raw)
	}
	pos := 0
	for _, d := range dst {
		n, w := binary.Uvarint(raw[pos:])
		pos += w
		*d = text[pos : pos+int(n)]
		pos += int(n)
	}
}

// span returns the next length-prefixed field without copying it.
func (rr *rowReader) span() []byte {
	n := rr.uvarint()
	if rr.err != nil || n > uint64(len(rr.b)) {
		rr.err = errBadRow
		return nil
	}
	out := rr.b[:n:n]
	rr.b = rr.b[n:]
	return out
}

// Prevs returns the event's prev_events.
func (r *Row) Prevs() []string {
	if r.PrevEvents != nil || r.prevRaw == nil {
		return r.PrevEvents
	}
	rr := &rowReader{b: r.prevRaw}
	n := rr.uvarint()
	for i := uint64(0); i < n && rr.err == nil; i++ {
		r.PrevEvents = append(r.PrevEvents, rr.str())
	}
	return r.PrevEvents
}

// unmarshalRow decodes a row into a Row of its own (see Row.unmarshal).
func unmarshalRow(b []byte) (*Row, error) {
	r := new(Row)
	if err := r.unmarshal(b, false); err != nil {
		return nil, err
	}
	return r, nil
}

// unmarshal decodes a row into r. Content and Unsigned alias b: a Row
// must not be used after its bbolt transaction ends (every read
// serialises its reply inside the transaction). Its strings are copied,
// all eight into one allocation, unless alias: then they alias b too, and
// so must not outlive the transaction either, even where the Row does not
// (as map keys, in errors, in anything kept): bbolt reuses a freed page,
// and rewrites it in place. Only Paginate aliases them, for the
// /messages handler, which keeps nothing of a page: its strings were a
// fifth of the bytes a read allocated, and their copy a tenth of its
// time.
func (r *Row) unmarshal(b []byte, alias bool) error {
	if len(b) < 2 || b[0] != rowVersion {
		return errBadRow
	}
	*r = Row{Flags: b[1]}
	rr := &rowReader{b: b[2:]}
	r.OriginServerTS = rr.varint()
	r.AgeTS = rr.varint()
	rr.strs(alias, &r.EventID, &r.Type, &r.Sender, &r.StateKey, &r.Redacts, &r.Summary, &r.RelType, &r.RelTarget)
	nl := rr.uvarint()
	if nl > uint64(len(rr.b)) {
		return errBadRow
	}
	for i := uint64(0); i < nl && rr.err == nil; i++ {
		r.Labels = append(r.Labels, rr.str())
	}
	// Parents are kept encoded: only purges need them.
	start := rr.b
	np := rr.uvarint()
	if np > uint64(len(rr.b)) {
		return errBadRow
	}
	for i := uint64(0); i < np && rr.err == nil; i++ {
		rr.span()
	}
	if rr.err == nil {
		r.prevRaw = start[:len(start)-len(rr.b)]
	}
	r.Content = rr.span()
	r.UnsignedN = int(rr.uvarint())
	r.Unsigned = rr.span()
	if len(rr.b) > 0 && rr.err == nil {
		r.age, r.aged = rr.varint(), true // not in rows of earlier releases
	}
	if len(rr.b) > 0 && rr.err == nil {
		r.ExtraN = int(rr.uvarint()) // only in rows with other top-level keys
		r.Extra = rr.span()
	}
	return rr.err
}

// rowReceived is the received time of a stored row's event, from its
// AgeTS and what follows its parents (rest): AgeTS plus the age stored
// last (see marshal). exact is false for a row of an earlier release,
// without the age: then it is AgeTS, which is right when no age was
// published, and otherwise early by the age.
func rowReceived(ageTS int64, rest []byte) (ts int64, exact bool, err error) {
	rr := &rowReader{b: rest}
	rr.span()    // content
	rr.uvarint() // unsigned pairs
	rr.span()    // unsigned
	if rr.err != nil || len(rr.b) == 0 {
		return ageTS, false, rr.err
	}
	age := rr.varint()
	return ageTS + age, true, rr.err
}

// rowBlock hands out up to n Rows (a page's limit) from blocks, one
// allocation a block instead of one a row. The blocks double from 16 rows
// and stop at n in all, so a page of a few rows does not pay for its
// whole limit, and a full page for no more than it.
type rowBlock struct {
	rows []Row
	n    int
	made int // rows in the blocks so far
}

func (rb *rowBlock) next() *Row {
	if len(rb.rows) == cap(rb.rows) {
		size := max(1, min(rb.n-rb.made, max(16, rb.made)))
		rb.rows = make([]Row, 0, size)
		rb.made += size
	}
	rb.rows = rb.rows[:len(rb.rows)+1]
	return &rb.rows[len(rb.rows)-1]
}

// head is what a scan reads of a row to decide whether it counts.
type head struct {
	flags           uint8
	id, typ, sender []byte
	labels          []string
}

// rowHead decodes only what a scan needs to decide whether a row counts
// (flags, event ID, type, sender, labels) without copying content.
func rowHead(b []byte) (head, error) {
	var h head
	if len(b) < 2 || b[0] != rowVersion {
		return h, errBadRow
	}
	h.flags = b[1]
	rr := &rowReader{b: b[2:]}
	rr.varint()
	rr.varint()
	skip := func() []byte {
		n := rr.uvarint()
		if rr.err != nil || n > uint64(len(rr.b)) {
			rr.err = errBadRow
			return nil
		}
		s := rr.b[:n]
		rr.b = rr.b[n:]
		return s
	}
	h.id = skip()
	h.typ = skip()
	h.sender = skip()
	skip() // state_key
	skip() // redacts
	skip() // summary
	skip() // rel type
	skip() // rel target
	nl := rr.uvarint()
	for i := uint64(0); i < nl && rr.err == nil; i++ {
		h.labels = append(h.labels, string(skip()))
	}
	return h, rr.err
}

func decodeMsgpack(b []byte, v any) error {
	return msgpack.Unmarshal(b, v)
}
