package projections

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// TestStore_FreelistPolicy: once more than freelistSyncMax pages are
// free (a big purge), commits leave bbolt's freelist out, so a one-key
// commit writes a few pages instead of the whole list; a copy of the
// file taken then (a crash) opens, rebuilds the list and checks clean;
// Close writes the list again.
func TestStore_FreelistPolicy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	scratch := []byte("scratch")
	val := make([]byte, 1000)
	const keys = 100_000 // about 25k pages, freed below
	for i := 0; i < keys; i += 10_000 {
		if err := s.update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(scratch)
			if err != nil {
				return err
			}
			for j := i; j < i+10_000; j++ {
				if err := b.Put(binary.BigEndian.AppendUint64(nil, uint64(j)), val); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.update(func(tx *bolt.Tx) error { return tx.DeleteBucket(scratch) }); err != nil {
		t.Fatal(err)
	}
	// Two more commits: the first releases the deleted pages to the
	// freelist (bbolt frees them once no transaction can see them).
	written := func() int {
		var n int
		if err := s.update(func(tx *bolt.Tx) error {
			tx.OnCommit(func() {
				st := tx.Stats()
				n = int(st.GetPageCount())
			})
			return tx.Bucket(bMeta).Put([]byte("probe"), []byte("x"))
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	written()
	free := s.db.Stats().FreePageN
	if free <= freelistSyncMax {
		t.Fatalf("only %d free pages after deleting %d values of 1 KB; want more than %d", free, keys, freelistSyncMax)
	}
	// The list of that many pages needs free*8/4096 pages of its own.
	if n := written(); n >= free*8/4096 {
		t.Fatalf("a one-key commit with %d free pages wrote %d pages: the freelist (%d pages) was written", free, n, free*8/4096)
	}

	// A crash now: the file as it stands, without Close.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if metaFreelist(t, data) != noFreelist {
		t.Fatal("the last commit's meta names a freelist page: the list was written")
	}
	crashed := filepath.Join(t.TempDir(), "crashed.db")
	if err := os.WriteFile(crashed, data, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Open(crashed, Options{})
	if err != nil {
		t.Fatalf("open after a crash with the freelist left out: %v", err)
	}
	checkFile(t, c.db)
	if got := c.db.Stats().FreePageN; got < freelistSyncMax {
		t.Errorf("free pages rebuilt after the crash: %d, want about %d", got, free)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	data, err = os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if metaFreelist(t, data) == noFreelist {
		t.Fatal("after Close the meta names no freelist page: the next Open would rebuild it")
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	checkFile(t, db)
	if got := db.Stats().FreePageN; got < freelistSyncMax {
		t.Errorf("free pages read back after Close: %d, want about %d", got, free)
	}
}

// noFreelist is bbolt's freelist page ID for "not written".
const noFreelist = ^uint64(0)

// metaFreelist reads the freelist page ID from the newer of a bbolt
// file's two meta pages (pages 0 and 1). A meta page is a 16-byte page
// header, then magic, version, page size and flags (4 bytes each), the
// root bucket (16), the freelist page ID (8), the high-water page ID (8)
// and the transaction ID (8), in the machine's byte order (little-endian
// here).
func metaFreelist(t *testing.T, file []byte) uint64 {
	t.Helper()
	le := binary.LittleEndian
	pageSize := int(le.Uint32(file[16+8:]))
	if pageSize < 1024 || len(file) < 2*pageSize {
		t.Fatalf("not a bbolt file (page size %d, %d bytes)", pageSize, len(file))
	}
	var freelist, txid uint64
	for i := range 2 {
		m := file[i*pageSize+16:]
		if id := le.Uint64(m[48:]); id >= txid {
			freelist, txid = le.Uint64(m[32:]), id
		}
	}
	return freelist
}

func checkFile(t *testing.T, db *bolt.DB) {
	t.Helper()
	if err := db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	}); err != nil {
		t.Fatalf("bbolt check: %v", err)
	}
}
