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

// applyRedaction records that redactionID, a timeline event at stream,
// redacts target, and takes a redacted relation out of the aggregations.
// The first redaction marks the target; a later one is recorded in
// reredacted (addReRedaction). A redaction that arrives before its
// target is recorded all the same: the target is then never indexed as a
// relation, and reads prune it.
func applyRedaction(tx *bolt.Tx, room uint64, target, redactionID string, stream int64) error {
	b, key := tx.Bucket(bRedacts), evKey(room, target)
	if by := b.Get(key); by != nil {
		return addReRedaction(tx, room, target, by, redactionID, stream)
	}
	if err := b.Put(key, []byte(redactionID)); err != nil {
		return err
	}
	if err := markRoom(tx, room, func(m *RoomMeta) bool { was := m.HasRedactions; m.HasRedactions = true; return !was }); err != nil {
		return err
	}
	loc, ok := lookupEvent(tx.Bucket(bEvents), room, target)
	if !ok || loc.outlier {
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

// addReRedaction records a redaction of a target that the redaction by
// already marks, at its log sequence (reRedactKey): when a purge deletes
// the mark's redaction, the first later one it keeps takes its place
// (promoteRedaction), as in a rebuild from the erased log, where that one
// is the first redaction applied. Each redaction is applied once (another
// message of a stored event is a duplicate, never applied again). The
// mark's redaction may be purged already: then the first kept later one,
// or else this one, marks the target now, as in a rebuild.
func addReRedaction(tx *bolt.Tx, room uint64, target string, by []byte, redactionID string, stream int64) error {
	if _, held := eventAt(tx, room, string(by)); !held {
		promoted, err := promoteRedaction(tx, room, []byte(target))
		if err != nil {
			return err
		}
		if !promoted {
			return tx.Bucket(bRedacts).Put(evKey(room, target), []byte(redactionID))
		}
	}
	return tx.Bucket(bReRedacts).Put(reRedactKey(room, target, logSeq(stream)), []byte(redactionID))
}

// promoteRedaction makes the first later redaction of target (in the
// order they were applied) that the room holds after its purges (eventAt)
// the target's mark, in place of a purged one, and deletes it and the
// later ones before it, purged too, from reredacted. It reports whether
// it found one; the mark is left as it was otherwise.
func promoteRedaction(tx *bolt.Tx, room uint64, target []byte) (bool, error) {
	p := reRedactPrefix(nil, room, target)
	c := tx.Bucket(bReRedacts).Cursor()
	// Seek again after each deletion: a cursor's Next after Delete may
	// skip a key.
	for k, id := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, id = c.Seek(p) {
		_, held := eventAt(tx, room, string(id))
		id = bytes.Clone(id)
		if err := c.Delete(); err != nil {
			return false, err
		}
		if held {
			return true, tx.Bucket(bRedacts).Put(evKeyAt(nil, room, target), id)
		}
	}
	return false, nil
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
	return markRelated(tx, room, r.RelTarget, relKind(r.RelType))
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
// seek into relations per event and a probe per kind for each event with
// any relation: in the 1M ingest scenario's profile, bundle fell from 30%
// to 16% of a page's CPU. Every change to relations
// (indexRelation, unindexRelation, the janitor's unindex) and every
// timeline row that comes or goes (applyEvent, floorBatch, dropRoomBatch)
// keeps them in step, so a rebuild from the log gives the same marks.
//
// A mark's value is one byte: the bundled kinds of relation the target
// has (RelatedReference, RelatedReplace, RelatedThread; 0 when it has
// only others, such as reactions), so that a read looks up only those.

// Bundled kinds of relation, the bits of a related mark.
const (
	RelatedReference = 1 << iota
	RelatedReplace
	RelatedThread

	relatedBundled = RelatedReference | RelatedReplace | RelatedThread
)

// relKind is the bit of a relation type (0 for the kinds not bundled).
func relKind(relType string) uint8 {
	switch relType {
	case commands.RelReference:
		return RelatedReference
	case commands.RelReplace:
		return RelatedReplace
	case commands.RelThread:
		return RelatedThread
	}
	return 0
}

// markAt is where target's mark is, or goes, by bucket name and key: its
// position in relat when it is a timeline event of the room, else
// relwait.
func markAt(tx *bolt.Tx, room uint64, target string) (bucket, key []byte) {
	loc, ok := lookupEvent(tx.Bucket(bEvents), room, target)
	if ok && !loc.outlier {
		return bRelAt, tlKey(room, loc.depth, loc.stream)
	}
	return bRelWait, roomStrKey(room, target)
}

// markRelated records that target has an indexed relation of kind.
func markRelated(tx *bolt.Tx, room uint64, target string, kind uint8) error {
	name, k := markAt(tx, room, target)
	b := tx.Bucket(name)
	if v := b.Get(k); len(v) == 1 {
		if v[0]|kind == v[0] {
			return nil
		}
		kind |= v[0]
	}
	return b.Put(k, []byte{kind})
}

// unmarkRelated updates target's mark after a relation to it left the
// index: gone with the last one, else the kinds that are left.
func unmarkRelated(tx *bolt.Tx, room uint64, target string) error {
	name, k := markAt(tx, room, target)
	b := tx.Bucket(name)
	if !hasRelations(tx.Bucket(bRel), room, target) {
		return b.Delete(k)
	}
	var kinds uint8
	counts := tx.Bucket(bRelCount)
	for _, t := range []string{commands.RelReference, commands.RelReplace, commands.RelThread} {
		if counts.Get(relPrefix(room, target, t)) != nil {
			kinds |= relKind(t)
		}
	}
	return b.Put(k, []byte{kinds})
}

// joinRelated moves the mark of an event that has just joined the room's
// timeline at (depth, stream) from relwait to relat, if it has one.
func joinRelated(tx *bolt.Tx, room uint64, eventID string, depth, stream int64) error {
	wait := tx.Bucket(bRelWait)
	k := roomStrKey(room, eventID)
	v := wait.Get(k)
	if v == nil {
		return nil
	}
	v = bytes.Clone(v)
	if err := wait.Delete(k); err != nil {
		return err
	}
	return tx.Bucket(bRelAt).Put(tlKey(room, depth, stream), v)
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
		target := commands.RedactionTarget(ev.Redacts, ev.Content)
		version, known, err := roomVersion(tx, room)
		if err != nil {
			return err
		}
		if known {
			target = commands.RedactionTargetIn(version, ev.Redacts, ev.Content)
		}
		if target != "" {
			if err := applyRedaction(tx, room, target, ev.EventID, stream); err != nil {
				return err
			}
		}
	}
	if r.RelType == "" || tx.Bucket(bRedacts).Get(evKey(room, ev.EventID)) != nil {
		return nil
	}
	return indexRelation(tx, room, r, ev.Depth, stream)
}

// roomVersion is the room version of the room's current m.room.create
// state event ("" for one without content.room_version, version 1), and
// false while the room has none on its timeline (history joined over
// federation may not reach it): a redaction's target is then read from
// either place (commands.RedactionTarget).
func roomVersion(tx *bolt.Tx, room uint64) (string, bool, error) {
	meta, err := getRoomMeta(tx, room)
	if err != nil {
		return "", false, err
	}
	v, ok := (&RoomView{tx: tx, room: room, meta: meta}).Version()
	return v, ok, nil
}

// Version is the room's version: the StateSummary of its current
// m.room.create state event ("" for one without content.room_version,
// version 1; the create of a room joined over federation is state held
// as an outlier); false when it holds none.
func (v *RoomView) Version() (string, bool) {
	e, ok := v.CurrentState("m.room.create", "")
	return e.Summary, ok
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

// Redactions calls fn with the IDs of the redactions of eventID, in the
// order they were applied (the mark's, then reredacted's), until it
// returns false. While the room's janitor has purged rows to delete, the
// redactions the purges delete are skipped: a mark's redaction the purges
// delete gives its place to the first later redaction the room keeps
// (promoteRedaction), or goes without one, as a rebuild from the erased
// log has it. A reader chooses among them as Synapse's
// _maybe_redact_event_row does (see commands.RedactionsRechecked).
func (v *RoomView) Redactions(eventID string, fn func(redactionID string) bool) {
	if !v.meta.HasRedactions {
		return
	}
	by := v.bucket(bRedacts).Get(evKey(v.room, eventID))
	if by == nil {
		return
	}
	purging := v.Purging()
	if (!purging || v.Holds(string(by))) && !fn(string(by)) {
		return
	}
	p := reRedactPrefix(nil, v.room, []byte(eventID))
	c := v.bucket(bReRedacts).Cursor()
	for k, id := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, id = c.Next() {
		if (!purging || v.Holds(string(id))) && !fn(string(id)) {
			return
		}
	}
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
	return hasRelations(v.bucket(bRel), v.room, target)
}

// hasRelations reports whether relations holds a key of target: one seek.
func hasRelations(rel *bolt.Bucket, room uint64, target string) bool {
	k := make([]byte, 8, 10+len(target))
	binary.BigEndian.PutUint64(k, room)
	k = binary.BigEndian.AppendUint16(k, uint16(len(target)))
	k = append(k, target...)
	got, _ := rel.Cursor().Seek(k)
	return got != nil && bytes.HasPrefix(got, k)
}

// MarkRelated finds out which of rows, timeline rows of one page of the
// room (from Paginate, in either direction), have indexed relations of
// which bundled kinds, for Related: one seek into relat and a walk over
// the page's range of it. A walk that would pass many more marks than the
// page has rows (a filter that skipped most of the room) stops, and the
// rows it did not reach are left to Related's seek.
func (v *RoomView) MarkRelated(rows []*Row) {
	if v.room == 0 || len(rows) == 0 {
		return
	}
	if !v.meta.HasRelations {
		for _, r := range rows {
			r.relKnown, r.relKinds = true, 0
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
	k, val := c.Seek(tlKeyAt(want[:0], v.room, byKey[0].Depth, byKey[0].Stream))
	for _, r := range byKey {
		key := tlKeyAt(want[:0], v.room, r.Depth, r.Stream)
		for k != nil && bytes.Compare(k, key) < 0 {
			if budget--; budget < 0 {
				return
			}
			k, val = c.Next()
		}
		r.relKnown, r.relKinds = true, 0
		if k != nil && bytes.Equal(k, key) && len(val) == 1 {
			r.relKinds = val[0]
		}
	}
}

// Related is the bundled kinds of relation (RelatedReference, ...) that
// indexed events may have to r: from MarkRelated when it looked r up,
// else all of them if HasRelations finds any relation.
func (v *RoomView) Related(r *Row) uint8 {
	if r.relKnown {
		return r.relKinds
	}
	if v.HasRelations(r.EventID) {
		return relatedBundled
	}
	return 0
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

// Holds reports whether the room holds an event (timeline or outlier),
// one that a purge deletes not included.
func (v *RoomView) Holds(eventID string) bool {
	loc, ok := lookupEvent(v.bucket(bEvents), v.room, eventID)
	if !ok || loc.depth >= v.meta.Floor {
		return ok
	}
	return !v.meta.purged(v.tx, loc, rowAt(v.bucket, evKey(v.room, eventID), loc))
}

// HoldsInTimeline reports whether the room holds an event on its
// timeline (Holds, outliers left out): what a child's parent must be for
// the child not to follow a gap, as a parent held only as an outlier is a
// backward extremity (Synapse's _update_backward_extremeties).
func (v *RoomView) HoldsInTimeline(eventID string) bool {
	loc, ok := lookupEvent(v.bucket(bEvents), v.room, eventID)
	return ok && !loc.outlier && v.Holds(eventID)
}

// relatedByQuery is a filter's related_by_senders and related_by_rel_types
// for one page, prepared once: the senders as a set, for walks over the
// senders of a relation type.
type relatedByQuery struct {
	nothing  bool // no relation meets the filter (commands.Filter.RelatedByNothing)
	senders  []string
	senderIn map[string]bool // nil: any sender
	typeIn   map[string]bool // nil: any relation type
}

func newRelatedByQuery(f *commands.Filter) *relatedByQuery {
	q := &relatedByQuery{nothing: f.RelatedByNothing(), senders: f.RelatedBySenders, senderIn: setOf(f.RelatedBySenders), typeIn: setOf(f.RelatedByRelTypes)}
	return q
}

// setOf is list as a set, nil when it is empty.
func setOf(list []string) map[string]bool {
	if len(list) == 0 {
		return nil
	}
	set := make(map[string]bool, len(list))
	for _, s := range list {
		set[s] = true
	}
	return set
}

// relatedBy reports whether an event of the room relates to target with a
// relation from one of q's senders and of one of its relation types (an
// empty list: any), as Synapse's events_have_relations asks
// event_relations. A redacted relation is no longer indexed
// (applyRedaction), as Synapse deletes its row.
//
// The counts answer it without walking the relations: one seek finds the
// target's relation types (most events have none), each a listed one is
// looked up; for senders, a look-up a listed sender, or a walk over the
// type's senders when they are fewer. So a filter's long lists cost a
// page little more than short ones. While the room's janitor has purged
// rows to delete, the counts still include relations from purged events:
// a relation they find is then confirmed in the index, by an event the
// room still holds.
func (v *RoomView) relatedBy(target string, q *relatedByQuery) bool {
	if v.room == 0 || !v.meta.HasRelations || q.nothing {
		return false
	}
	counts := v.bucket(bRelCount)
	p := relPrefix(v.room, target, "")
	targetPrefix := p[:len(p)-2] // room|target, the start of each of its types' keys
	c := counts.Cursor()
	k, _ := c.Seek(targetPrefix)
	for k != nil && bytes.HasPrefix(k, targetPrefix) && len(k) >= len(targetPrefix)+2 {
		end := len(targetPrefix) + 2 + int(binary.BigEndian.Uint16(k[len(targetPrefix):]))
		if len(k) < end {
			return false
		}
		typePrefix := bytes.Clone(k[:end])
		if (q.typeIn == nil || q.typeIn[string(typePrefix[len(targetPrefix)+2:])]) && v.relatedByType(counts, typePrefix, q) {
			return true
		}
		next := prefixEnd(typePrefix)
		if next == nil {
			return false
		}
		k, _ = c.Seek(next)
	}
	return false
}

// relatedByType is relatedBy for one relation type, prefix being its
// relPrefix.
func (v *RoomView) relatedByType(counts *bolt.Bucket, prefix []byte, q *relatedByQuery) bool {
	total := counts.Get(prefix)
	if total == nil {
		return false
	}
	if len(q.senders) == 0 {
		return v.heldRelation(prefix, nil)
	}
	found := false
	if uint64(len(q.senders)) <= binary.BigEndian.Uint64(total) {
		for _, s := range q.senders {
			if found = counts.Get(relSenderKey(prefix, s)) != nil; found {
				break
			}
		}
	} else {
		// Fewer relations of the type than senders listed: walk its senders.
		sp := relSenderKey(prefix, "")
		c := counts.Cursor()
		for k, _ := c.Seek(sp); k != nil && bytes.HasPrefix(k, sp) && !found; k, _ = c.Next() {
			found = q.senderIn[string(k[len(sp):])]
		}
	}
	return found && v.heldRelation(prefix, q.senderIn)
}

// heldRelation confirms that the counts' relations at prefix (from one
// of senders, when not nil) include one from an event the room still
// holds: always so unless the janitor has purged rows to delete.
func (v *RoomView) heldRelation(prefix []byte, senders map[string]bool) bool {
	if !v.Purging() {
		return true
	}
	c := v.bucket(bRel).Cursor()
	for k, val := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+16; k, val = c.Next() {
		n, w := binary.Uvarint(val)
		if w <= 0 || uint64(len(val)-w) < n {
			continue
		}
		if (senders == nil || senders[string(val[w:w+int(n)])]) && v.Holds(string(val[w+int(n):])) {
			return true
		}
	}
	return false
}

// prefixEnd is the first key after every key that starts with p.
func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil // p is all 0xff: no key comes after it
}
