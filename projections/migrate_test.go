package projections_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
)

// downgrade rewrites a version 2 file's events index and outliers in
// version 1's layout: buckets events (event ID -> room|depth|order|outlier)
// and outliers (event ID -> row). It leaves the first keep entries of
// each version 2 bucket in place, as a migration that crashed after some
// of its transactions would.
func downgrade(t *testing.T, path string, keep int) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		events, err := tx.CreateBucket([]byte("events"))
		if err != nil {
			return err
		}
		outliers, err := tx.CreateBucket([]byte("outliers"))
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
		// An outlier row the old index did not point at as an outlier:
		// unreachable in version 1, dropped by the migration.
		if err := outliers.Put([]byte("$orphan"), []byte{1, 0}); err != nil {
			return err
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
		if !strings.Contains(want, "outlierrows ") {
			t.Fatal("the log left no outlier")
		}
		wantIDs := timelineIDs(t, s, "!rich:test")
		s.Close()

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
			events, err := tx.CreateBucketIfNotExists([]byte("events"))
			if err != nil {
				return err
			}
			outliers, err := tx.CreateBucketIfNotExists([]byte("outliers"))
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
	s.Close()
}
