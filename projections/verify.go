package projections

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Digest is a logical dump of a projection: one entry per room aspect
// (timeline, state, extremities, forgotten users, flags, relations,
// redaction marks, members by server) and per task, free of what may
// differ between two files holding the same history (room numbers, page
// layout, the janitor's counters, queued erasures, expired tasks), and of
// what says which log messages carry an event (extraseqs), which
// describes the log rather than the history.
// Two projections of the same log must have equal digests.
type Digest map[string]string

// Digest computes the projection's digest at now. It leaves out the tasks
// that have expired at now (commands.Task.ExpiredAt): whether their
// records are still there depends on when ExpireTasks last ran, and a
// rebuild, which replays every TaskUpdate, has them all. Compare two
// digests taken at the same now.
func (s *Store) Digest(now time.Time) (Digest, error) {
	d := Digest{}
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bRooms).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			roomID, room := string(k), binary.BigEndian.Uint64(v)
			if err := digestRoom(tx, d, roomID, room); err != nil {
				return err
			}
		}
		return tx.Bucket(bTasks).ForEach(func(k, v []byte) error {
			t, err := getTask(tx, string(k))
			if err != nil || t == nil || t.ExpiredAt(now.UnixMilli()) {
				return err
			}
			d["task "+t.ID] = fmt.Sprintf("%s %s %s %s updates=%d result=%v", t.Action, t.RoomID, t.Status, t.Error, t.Updates, t.Result)
			return nil
		})
	})
	return d, err
}

func digestRoom(tx *bolt.Tx, d Digest, roomID string, room uint64) error {
	prefix := u64(room)
	var b strings.Builder
	c := tx.Bucket(bTimeline).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		_, depth, stream := parseTLKey(k)
		r, err := unmarshalRow(v)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %d %d %d %x %x\n", r.EventID, depth, stream, r.Flags, r.Content, r.Extra)
	}
	d["room "+roomID+" timeline"] = b.String()
	meta, err := getRoomMeta(tx, room)
	if err != nil {
		return err
	}
	d["room "+roomID+" meta"] = fmt.Sprintf("blocked=%v by=%s floor=%d purged_to=%d", meta.Blocked, meta.BlockedBy, meta.Floor, meta.PurgedTo)
	lines := func(bucket []byte, val bool) string {
		var out []string
		c := tx.Bucket(bucket).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if val {
				out = append(out, fmt.Sprintf("%q=%x", k[8:], v))
			} else {
				out = append(out, fmt.Sprintf("%q", k[8:]))
			}
		}
		slices.Sort(out)
		return strings.Join(out, "\n")
	}
	d["room "+roomID+" state"] = lines(bState, true)
	d["room "+roomID+" forward extremities"] = lines(bFwd, true)
	d["room "+roomID+" backward extremities"] = lines(bBack, true)
	d["room "+roomID+" ended"] = lines(bEnded, true)
	d["room "+roomID+" forgotten"] = lines(bForgot, false)
	d["room "+roomID+" members by server"] = lines(bByServer, false)
	d["room "+roomID+" relations"] = lines(bRelCount, true)
	d["room "+roomID+" related marks"] = lines(bRelAt, true) + "\n-\n" + lines(bRelWait, true)
	d["room "+roomID+" redactions"] = lines(bRedacts, true) + "\n-\n" + lines(bReRedacts, true)
	return nil
}

// Diff lists what differs between two digests, one line per key; an
// aspect only one of them has names that one: "first" (a) or "second"
// (b), or their names, if given (names[0] and names[1]).
func (a Digest) Diff(b Digest, names ...string) []string {
	first, second := "the first", "the second"
	if len(names) == 2 {
		first, second = names[0], names[1]
	}
	var out []string
	for k, va := range a {
		vb, ok := b[k]
		switch {
		case !ok:
			out = append(out, k+": only in "+first)
		case va != vb:
			out = append(out, k+": differs")
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k+": only in "+second)
		}
	}
	slices.Sort(out)
	return out
}

// CheckRelatedMarks checks the invariant of relat and relwait (see
// markRelated) against the relations index: every target of an indexed
// relation has exactly one mark, at its timeline position or else in
// relwait, holding the bundled kinds of its relations, and there is no
// other mark.
func (s *Store) CheckRelatedMarks() error {
	return s.db.View(func(tx *bolt.Tx) error {
		want := map[string]uint8{} // bucket name + " " + key -> kinds
		c := tx.Bucket(bRel).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			room, target, relType, ok := parseRelKey(k)
			if !ok {
				return fmt.Errorf("relations: bad key %x", k)
			}
			name, mk := markAt(tx, room, target)
			key := string(name) + " " + string(mk)
			want[key] |= relKind(relType)
		}
		var errs []string
		for _, name := range [][]byte{bRelAt, bRelWait} {
			c := tx.Bucket(name).Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				key := string(name) + " " + string(k)
				kinds, ok := want[key]
				switch {
				case !ok:
					errs = append(errs, fmt.Sprintf("%s %x: a mark no relation needs", name, k))
				case len(v) != 1 || v[0] != kinds:
					errs = append(errs, fmt.Sprintf("%s %x: kinds %x, want %d", name, k, v, kinds))
				}
				delete(want, key)
			}
		}
		for key := range want {
			name, k, _ := strings.Cut(key, " ")
			errs = append(errs, fmt.Sprintf("%s %x: missing", name, k))
		}
		if len(errs) > 0 {
			slices.Sort(errs)
			return fmt.Errorf("projections: related marks: %s", strings.Join(errs, "; "))
		}
		return nil
	})
}

// CheckExtraSeqs checks extraseqs against the events index: every entry
// is of an event the room holds (as a row or an outlier), and names a log
// message other than the one of its row. Rooms with janitor work are
// left out: the janitor deletes a purged event's entries with its row,
// after its index entry may have gone ahead (unindex.go), and a room
// number that purge_room retired loses its entries by prefix.
func (s *Store) CheckExtraSeqs() error {
	return s.db.View(func(tx *bolt.Tx) error {
		jb, events := tx.Bucket(bJanitor), tx.Bucket(bEvents)
		var errs []string
		c := tx.Bucket(bExtraSeqs).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if len(k) < 8+1+8 || k[len(k)-9] != 0 {
				errs = append(errs, fmt.Sprintf("%x: bad key", k))
				continue
			}
			room, id, seq := binary.BigEndian.Uint64(k), k[8:len(k)-9], binary.BigEndian.Uint64(k[len(k)-8:])
			if jb.Get(k[:8]) != nil {
				continue
			}
			loc, ok := parseLoc(room, events.Get(k[:len(k)-9]))
			switch {
			case !ok:
				errs = append(errs, fmt.Sprintf("%d %s %d: the room does not hold the event", room, id, seq))
			case loc.stream == int64(seq) || loc.stream == -int64(seq):
				errs = append(errs, fmt.Sprintf("%d %s %d: the sequence of its row", room, id, seq))
			}
		}
		if len(errs) > 0 {
			return fmt.Errorf("projections: extra sequences: %s", strings.Join(errs, "; "))
		}
		return nil
	})
}
