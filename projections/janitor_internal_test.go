package projections

import (
	"bytes"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/commands"
)

// The janitor reads rows in place and makes an outlier by setting the flag
// on a copy of the stored bytes: both must agree with the decoded row.
func TestReadPurgeHead_AgreesWithUnmarshalRow(t *testing.T) {
	sk := "@a:x"
	events := []*commands.Event{
		{EventID: "$state", Type: "m.room.member", Sender: "@a:x", StateKey: &sk, OriginServerTS: 42, Depth: 3,
			Content:  map[string]any{"membership": "join", "url": "mxc://x/y", "org.matrix.labels": []any{"#a", "#b"}},
			Unsigned: map[string]any{"age": int64(10), "transaction_id": "t"}, PrevEvents: []string{"$p1", "$p2"}, SoftFailed: true},
		{EventID: "$reply", Type: "m.room.message", Sender: "@remote:other.org", Depth: 9, PrevEvents: []string{"$p3"},
			Content: map[string]any{"body": "r", "m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": "$root"}}},
		{EventID: "$bare", Type: "m.room.message", Sender: "x", Depth: 1, Content: map[string]any{}, Backfilled: true},
	}
	for _, ev := range events {
		r, err := newRow(ev, 1000)
		if err != nil {
			t.Fatal(err)
		}
		stored := r.marshal()
		h, err := readPurgeHead(stored)
		if err != nil {
			t.Fatalf("%s: %v", ev.EventID, err)
		}
		got, err := unmarshalRow(stored)
		if err != nil {
			t.Fatal(err)
		}
		if string(h.eventID) != got.EventID || string(h.sender) != got.Sender || h.flags != got.Flags ||
			string(h.relType) != got.RelType || string(h.relTarget) != got.RelTarget || !bytes.Equal(h.prevs, got.prevRaw) {
			t.Fatalf("%s: head %+v, row %+v", ev.EventID, h, got)
		}
		got.Flags |= flagOutlier
		outlier := append([]byte(nil), stored...)
		outlier[1] |= flagOutlier
		if !bytes.Equal(outlier, got.marshal()) {
			t.Fatalf("%s: flagged copy %x, marshal of the flagged row %x", ev.EventID, outlier, got.marshal())
		}
		// The received time comes back exactly from the age stored
		// last; a row stored before it gives its AgeTS, not exact.
		if h.ageTS != got.AgeTS {
			t.Fatalf("%s: head's AgeTS %d, row's %d", ev.EventID, h.ageTS, got.AgeTS)
		}
		if ts, exact, err := rowReceived(h.ageTS, h.rest); ts != 1000 || !exact || err != nil {
			t.Fatalf("%s: received %d %v %v, want 1000, exact", ev.EventID, ts, exact, err)
		}
		got.aged = false
		old := got.marshal()
		if !bytes.Equal(old, outlier[:len(old)]) || len(old) >= len(outlier) {
			t.Fatalf("%s: the older layout %x is not the row %x without its age", ev.EventID, old, outlier)
		}
		back, err := unmarshalRow(old)
		if err != nil || back.aged || !bytes.Equal(back.marshal(), old) {
			t.Fatalf("%s: a row of the older layout reads back as %+v, %v", ev.EventID, back, err)
		}
		oh, err := readPurgeHead(old)
		if err != nil {
			t.Fatal(err)
		}
		if ts, exact, err := rowReceived(oh.ageTS, oh.rest); ts != got.AgeTS || exact || err != nil {
			t.Fatalf("%s: received of the older layout %d %v %v, want AgeTS %d, not exact", ev.EventID, ts, exact, err, got.AgeTS)
		}
	}
}

func TestIsLocalSender(t *testing.T) {
	for _, u := range []string{"@a:test", "@a:test:1", "@a:other", "a:test", "@a", "", "@:test", ":test", "@a:"} {
		if got, want := isLocalSender([]byte(u), "test"), commands.IsLocalUser(u, "test"); got != want {
			t.Errorf("isLocalSender(%q) = %v, want %v", u, got, want)
		}
	}
}

func FuzzReadPurgeHead(f *testing.F) {
	ev := &commands.Event{EventID: "$e", Type: "t", Sender: "@a:x", Content: map[string]any{"b": "x"}, PrevEvents: []string{"$p"}}
	r, _ := newRow(ev, 1)
	f.Add(r.marshal())
	f.Add([]byte{rowVersion, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = readPurgeHead(b)
		_ = isLocalSender(b, "x")
	})
}

// TestNextSlice: the janitor's transactions grow while it waits for the
// writer more than half as long as it holds it, up to JanitorBatch, and
// shrink back to JanitorSlice once it hardly waits.
func TestNextSlice(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		slice        int
		waited, held time.Duration
		want         int
	}{
		{JanitorSlice, 8 * ms, 10 * ms, 2 * JanitorSlice},
		{JanitorBatch, 8 * ms, 10 * ms, JanitorBatch},
		{JanitorBatch, 2 * ms, 10 * ms, JanitorBatch},
		{JanitorSlice, 2 * ms, 10 * ms, JanitorSlice},
		{JanitorBatch, 1 * ms, 10 * ms, JanitorBatch / 2},
		{JanitorSlice, 0, 10 * ms, JanitorSlice},
	} {
		if got := nextSlice(c.slice, c.waited, c.held); got != c.want {
			t.Errorf("nextSlice(%d, %v, %v) = %d, want %d", c.slice, c.waited, c.held, got, c.want)
		}
	}
	if JanitorBatch/2 < JanitorSlice {
		t.Fatal("JanitorBatch/2 is below JanitorSlice: the halving would skip sizes")
	}
}

// TestGetRoomMeta_OldDeleteLocal: a file written before DeleteLocalBelow
// holds the latest purge's delete_local_events as a flag, which the
// janitor applied to every row below the floor: it reads as
// DeleteLocalBelow = Floor.
func TestGetRoomMeta_OldDeleteLocal(t *testing.T) {
	db, err := bolt.Open(t.TempDir()+"/m.db", 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucket(bRoomMeta); err != nil {
			return err
		}
		old, err := encodeMsgpack(map[string]any{"room_id": "!r:x", "floor": 10, "delete_local": true})
		if err != nil {
			return err
		}
		if err := tx.Bucket(bRoomMeta).Put(u64(1), old); err != nil {
			return err
		}
		m, err := getRoomMeta(tx, 1)
		if err != nil {
			return err
		}
		if m.DeleteLocalBelow != 10 || m.DeleteLocal || !m.deletes(9, false, true) || m.deletes(10, false, true) {
			t.Errorf("old meta read as %+v", m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
