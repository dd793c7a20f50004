package projections

import (
	"os"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// SetRelMarksBatch sets relMarksBatch for a test, and back at its end.
func SetRelMarksBatch(tb interface{ Cleanup(func()) }, n int) {
	was := relMarksBatch
	relMarksBatch = n
	tb.Cleanup(func() { relMarksBatch = was })
}

// SetLingerBusy sets lingerIdle and lingerParts for a test, and back at
// its end. Projectors take them in Init.
func SetLingerBusy(tb interface{ Cleanup(func()) }, idle time.Duration, parts int) {
	was, wasParts := lingerIdle, lingerParts
	lingerIdle, lingerParts = idle, parts
	tb.Cleanup(func() { lingerIdle, lingerParts = was, wasParts })
}

// Lingering is the number of messages of the group the committer waits
// with for more (Linger), 0 when it does not wait.
func (p *Projector) Lingering() int { return int(p.lingering.Load()) }

// Waiting is the number of callers waiting for the projection to move
// (WaitFor, WaitAll).
func (p *Projector) Waiting() int { return int(p.notify.waiters.Load()) }

// SetUnindexWindow sets unindexWindow for a test, and back at its end.
func SetUnindexWindow(tb interface{ Cleanup(func()) }, n int) {
	was := unindexWindow
	unindexWindow = n
	tb.Cleanup(func() { unindexWindow = was })
}

// SetUnindexFill sets unindexFill for a test, and back at its end.
func SetUnindexFill(tb interface{ Cleanup(func()) }, n int) {
	was := unindexFill
	unindexFill = n
	tb.Cleanup(func() { unindexFill = was })
}

// SetMigrateBatch sets migrateBatch for a test, and back at its end.
func SetMigrateBatch(tb interface{ Cleanup(func()) }, n int) {
	was := migrateBatch
	migrateBatch = n
	tb.Cleanup(func() { migrateBatch = was })
}

// StripRowAges rewrites every stored row (timeline and outliers) as
// earlier releases stored it, without the published age that follows its
// unsigned (Row.marshal).
func StripRowAges(t *testing.T, s *Store) {
	t.Helper()
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bTimeline, bOutliers} {
			b := tx.Bucket(name)
			rows := map[string][]byte{}
			if err := b.ForEach(func(k, v []byte) error {
				r, err := unmarshalRow(v)
				if err != nil {
					return err
				}
				r.aged = false
				rows[string(k)] = r.marshal()
				return nil
			}); err != nil {
				return err
			}
			for k, v := range rows {
				if err := b.Put([]byte(k), v); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// SetTaskDoneBatch sets taskDoneBatch for a test, and back at its end.
func SetTaskDoneBatch(tb interface{ Cleanup(func()) }, n int) {
	was := taskDoneBatch
	taskDoneBatch = n
	tb.Cleanup(func() { taskDoneBatch = was })
}

// TaskWaiting is how many rooms have a channel of TaskChange.
func TaskWaiting(s *Store) int {
	s.taskMu.Lock()
	defer s.taskMu.Unlock()
	return len(s.taskCh)
}

// WritebackMin is writebackMin: the smallest commit that writes back early.
const WritebackMin = writebackMin

// WritebackRequests counts the store's requests to the kernel to start
// writing its dirty pages (writeback.go).
func (s *Store) WritebackRequests() int64 { return s.writeback.requests.Load() }

// WritebackFailures counts the requests for writeback the kernel refused.
func (s *Store) WritebackFailures() int64 { return s.writeback.failures.Load() }

// WritebackActive counts the store's goroutines asking for writeback.
func (s *Store) WritebackActive() int { return int(s.writeback.active.Load()) }

// SetEarlyWriteback turns early writeback on or off for a benchmark, and
// back at its end.
func SetEarlyWriteback(tb interface{ Cleanup(func()) }, on bool) {
	was := earlyWriteback
	earlyWriteback = on
	tb.Cleanup(func() { earlyWriteback = was })
}

// SetBootID makes the store's idea of this boot's ID the contents of a
// file the test writes, and back at its end.
func SetBootID(tb interface {
	Cleanup(func())
	TempDir() string
	Fatal(...any)
}, id string) {
	path := tb.TempDir() + "/boot_id"
	if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	was := bootIDPath
	bootIDPath = path
	tb.Cleanup(func() { bootIDPath = was })
}

// BuiltLag is builtLag.
const BuiltLag = builtLag

// ConfirmAll empties the unconfirmed bucket, as the task runner's
// confirmations of every decision, once applied, would: for tests of
// erasures whose subject is not the wait for them (holding).
func ConfirmAll(t *testing.T, s *Store) {
	t.Helper()
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bUnconfirm); err != nil {
			return err
		}
		_, err := tx.CreateBucket(bUnconfirm)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// RedactedBy, for tests, returns the ID of the redaction that redacts eventID ("" if
// none): the first of Redactions. While the room's janitor has purged
// rows to delete, a mark's redaction may be one the purges delete, whose
// place the janitor gives to the first later redaction the room keeps
// (promoteRedaction), or which it deletes without one: the read gives
// that one, or none, already, as a rebuild from the erased log does.
func (v *RoomView) RedactedBy(eventID string) string {
	by := ""
	v.Redactions(eventID, func(id string) bool { by = id; return false })
	return by
}
