package projections_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
)

// legacyBuckets creates, or opens, version 1's buckets events, outliers
// and redactions.
func legacyBuckets(tx *bolt.Tx) (events, outliers, redactions *bolt.Bucket, err error) {
	var bs [3]*bolt.Bucket
	for i, name := range []string{"events", "outliers", "redactions"} {
		if bs[i], err = tx.CreateBucketIfNotExists([]byte(name)); err != nil {
			return nil, nil, nil, err
		}
	}
	return bs[0], bs[1], bs[2], nil
}

// downgrade rewrites a version 2 file's events index, outliers and
// redactions in version 1's layout: buckets events (event ID ->
// room|depth|order|outlier), outliers (event ID -> row) and redactions
// (event ID -> redaction ID). It leaves the first keep entries of each
// version 2 bucket in place, as a migration that crashed after some of its
// transactions would, and adds what version 1 left that the migration
// drops: a purge_room's leftovers under a room number whose drop is done
// (no roommeta), an outlier row the index did not point at, and an entry
// of a new bucket that version 1, run after the crash, would not know.
func downgrade(t *testing.T, path string, keep int) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		events, outliers, redactions, err := legacyBuckets(tx)
		if err != nil {
			return err
		}
		for _, m := range []struct {
			name []byte
			put  func(room, id, v []byte) error
		}{
			{[]byte("eventindex"), func(room, id, v []byte) error {
				return events.Put(id, append(bytes.Clone(room), v...))
			}},
			{[]byte("outlierrows"), func(_, id, v []byte) error { return outliers.Put(id, bytes.Clone(v)) }},
			{[]byte("redacted"), func(_, id, v []byte) error { return redactions.Put(id, bytes.Clone(v)) }},
		} {
			c := tx.Bucket(m.name).Cursor()
			n := 0
			for k, v := c.First(); k != nil; n++ {
				if err := m.put(k[:8], k[8:], v); err != nil {
					return err
				}
				if n < keep {
					k, v = c.Next()
					continue
				}
				at := bytes.Clone(k)
				if err := c.Delete(); err != nil {
					return err
				}
				k, v = c.Seek(at)
			}
		}
		gone := binary.BigEndian.AppendUint64(nil, 999) // no roommeta
		gone = binary.BigEndian.AppendUint64(gone, 5)
		gone = append(binary.BigEndian.AppendUint64(gone, 5^1<<63), 1)
		for _, kv := range []struct {
			b    *bolt.Bucket
			k, v string
		}{
			{outliers, "$orphan", "\x01\x00"},
			{events, "$gone", string(gone)},
			{outliers, "$gone", "\x01\x00"},
			{redactions, "$gone", "$goneredaction"},
			{redactions, "$unknown", "$unknownredaction"},
			{tx.Bucket([]byte("eventindex")), "\x00\x00\x00\x00\x00\x00\x00\x01$stale", string(gone[8:])},
		} {
			if err := kv.b.Put([]byte(kv.k), []byte(kv.v)); err != nil {
				return err
			}
		}
		return tx.Bucket([]byte("meta")).Put([]byte("version"), binary.BigEndian.AppendUint64(nil, 1))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestOpen_MigratesVersion1 applies a log rich in outliers, purges and a
// purge_room, rewrites the file in version 1's layout (with and without
// part of a crashed migration's work left behind), and opens it again in
// transactions of a few entries: every bucket ends byte for byte as the
// version 2 file was, and the reads agree.
func TestOpen_MigratesVersion1(t *testing.T) {
	projections.SetMigrateBatch(t, 7)
	log := richPurgeLog(t)
	for _, keep := range []int{0, 50} {
		path := t.TempDir() + "/p.db"
		s, err := projections.Open(path, projections.Options{ServerName: "test"})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range log {
			if _, err := s.ApplyBatch(0, []commands.LogEntry{e}); err != nil {
				t.Fatal(err)
			}
		}
		drainJanitor(t, s)
		want := dumpBuckets(t, s)
		if !strings.Contains(want, "outlierrows ") || !strings.Contains(want, "redacted ") {
			t.Fatal("the log left no outlier or no redaction")
		}
		wantIDs := timelineIDs(t, s, "!rich:test")
		s.Close()
		want = withoutUnplaced(t, want)

		downgrade(t, path, keep)
		s, err = projections.Open(path, projections.Options{ServerName: "test"})
		if err != nil {
			t.Fatal(err)
		}
		if got := dumpBuckets(t, s); got != want {
			a, b := strings.Split(want, "\n"), strings.Split(got, "\n")
			for j := range min(len(a), len(b)) {
				if a[j] != b[j] {
					t.Fatalf("keep %d: line %d after the migration:\n%s\nwant\n%s", keep, j, b[j], a[j])
				}
			}
			t.Fatalf("keep %d: %d lines after the migration, want %d", keep, len(b), len(a))
		}
		sameStrings(t, "timeline", timelineIDs(t, s, "!rich:test"), wantIDs)
		s.Close()
	}
}

// withoutUnplaced is a dump without the redactions a migration cannot
// place: version 1 keyed them by target alone, and when neither the
// target nor the redaction is in the index (both purged), no room is
// known. Nothing reads them.
func withoutUnplaced(t *testing.T, dump string) string {
	t.Helper()
	lines := strings.Split(dump, "\n")
	indexed := map[string]bool{}
	for _, l := range lines {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "eventindex" {
			indexed[f[1]] = true
		}
	}
	var out []string
	dropped := 0
	for _, l := range lines {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "redacted" {
			redaction, err := hex.DecodeString(f[2])
			if err != nil {
				t.Fatal(err)
			}
			if !indexed[f[1]] && !indexed[f[1][:16]+hex.EncodeToString(redaction)] {
				dropped++
				continue
			}
		}
		out = append(out, l)
	}
	t.Logf("%d redactions of purged events cannot be placed", dropped)
	return strings.Join(out, "\n")
}

// TestOpen_RefusesOtherVersions: a file of an unknown layout is refused
// with ErrFormat and left as it was.
func TestOpen_RefusesOtherVersions(t *testing.T) {
	path := t.TempDir() + "/p.db"
	s, err := projections.Open(path, projections.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = s.DB().Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("version"), binary.BigEndian.AppendUint64(nil, 3))
	})
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := projections.Open(path, projections.Options{}); err == nil || !strings.Contains(err.Error(), "version 3, want 2") {
		t.Fatalf("Open of version 3: %v", err)
	}
}

// BenchmarkMigrateEventIndex opens a version 1 file whose events index
// holds b.N entries with hashed IDs in 1,000 rooms (one in 20 an outlier):
// ns/op is the migration's time per entry.
func BenchmarkMigrateEventIndex(b *testing.B) {
	path := b.TempDir() + "/p.db"
	s, err := projections.Open(path, projections.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	s.Close()
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	for start := 0; start < b.N; start += 100_000 {
		err = db.Update(func(tx *bolt.Tx) error {
			events, outliers, _, err := legacyBuckets(tx)
			if err != nil {
				return err
			}
			for i := start; i < min(start+100_000, b.N); i++ {
				sum := sha256.Sum256(binary.BigEndian.AppendUint64(nil, uint64(i)))
				id := []byte("$" + base64.RawURLEncoding.EncodeToString(sum[:]))
				v := binary.BigEndian.AppendUint64(nil, uint64(i%1000+1))
				v = binary.BigEndian.AppendUint64(v, uint64(i))
				v = binary.BigEndian.AppendUint64(v, uint64(i)^1<<63)
				if i%20 == 0 {
					if err := outliers.Put(id, make([]byte, 300)); err != nil {
						return err
					}
					v = append(v, 1)
				} else {
					v = append(v, 0)
				}
				if err := events.Put(id, v); err != nil {
					return err
				}
			}
			for room := uint64(1); room <= 1000; room++ {
				if err := tx.Bucket([]byte("roommeta")).Put(binary.BigEndian.AppendUint64(nil, room), []byte{0x80}); err != nil {
					return err
				}
			}
			return tx.Bucket([]byte("meta")).Put([]byte("version"), binary.BigEndian.AppendUint64(nil, 1))
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	db.Close()
	b.ResetTimer()
	s, err = projections.Open(path, projections.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	n := 0
	err = s.DB().View(func(tx *bolt.Tx) error {
		n = tx.Bucket([]byte("eventindex")).Stats().KeyN
		return nil
	})
	if err != nil || n != b.N {
		b.Fatalf("%d entries moved of %d: %v", n, b.N, err)
	}
	s.Close()
}
