package testenv

import (
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/projections"
)

// NewStore opens a projection file in the test's temp dir. Cleanup runs
// bbolt's consistency check on it, then closes it.
func NewStore(tb testing.TB) *projections.Store {
	tb.Helper()
	return OpenStore(tb, filepath.Join(tb.TempDir(), "scrollback.db"))
}

// OpenStore opens the projection file at path with the same cleanup.
func OpenStore(tb testing.TB, path string) *projections.Store {
	tb.Helper()
	s, err := projections.Open(path, projections.Options{})
	if err != nil {
		tb.Fatalf("open store: %v", err)
	}
	tb.Cleanup(func() {
		CheckBolt(tb, s.DB())
		s.Close()
	})
	return s
}

// CheckBolt fails the test if the bbolt file is inconsistent.
func CheckBolt(tb testing.TB, db *bolt.DB) {
	tb.Helper()
	err := db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	})
	if err != nil {
		tb.Errorf("bbolt consistency check: %v", err)
	}
}
