package projections

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/internal/durable"
)

// A new projection file is built from the log without fsync, until it has
// caught up (Options.Build). Until then its commits stay in the page cache
// and reach the disk when the kernel writes them back (bbolt still syncs
// the file when it grows it, every 16 MiB: larger steps of 256 MiB were
// slower in three runs of the catch-up, 32.2-35.1k against 36.6-37.2k
// events/s, and were not kept). That is safe as long
// as the page cache survives: a crash of the process loses nothing the
// kernel holds, and bbolt's file stays whole. A crash of the machine can
// leave a file whose last meta page points at pages that never reached
// the disk.
//
// So before its first commit the file gets a marker next to it,
// <path>.building, synced, holding the machine's boot ID
// (/proc/sys/kernel/random/boot_id). An Open that finds the marker:
//
//   - with this boot's ID: the machine has not restarted, so the file is
//     whole; the build goes on where it stopped.
//   - with another ID: the machine restarted during the build. The file is
//     deleted and built again from the log, from the start. With Build
//     unset (scrollback verify), Open refuses it instead (ErrUnsynced).
//
// The boot ID does not see the page cache lost any other way while the
// machine runs on: a disk detached and attached again, a forced unmount,
// a snapshot of the disk taken during a build and restored. A snapshot of
// a data dir holding a marker is not to be trusted.
//
// The build ends (Built) once the projection is within builtLag messages
// of the log's end or has applied what the log held when the projector
// first checked (so that an ingest keeping the lag above builtLag does not
// keep a serving file unsynced), or when the store closes: the file is
// synced and the marker removed; from then on every commit is synced as
// usual. If that sync fails, the kernel may already have dropped pages it
// could not write, and a later sync would succeed over them: the marker
// then takes a value no boot has (untrusted), so that the next Open
// builds the file again, and Built does not try again. The same holds
// for any write that fails during the build (Store.update, writeFault):
// the projector retries the batch, the retry may succeed, and the file
// is distrusted all the same. scrollback rebuild
// removes a marker it finds, since its new file is synced; scrollback
// compact refuses a file with one.
//
// The build gives up little if it is lost: it was starting from nothing.
// A file whose build has ended is not written without fsync again,
// however far behind the log it falls. Without a boot ID (not Linux), new
// files are synced from the start. On a new data dir the build lasts until
// the first message is applied, or the service stops.
//
// Catching up 1M events in 10k rooms, fsync was about a quarter of bbolt's
// writer's time (docs/BENCHMARKS.md).

// ErrUnsynced is returned by Open without Build for a file whose build
// without fsync was cut short by a restart of the machine.
var ErrUnsynced = errors.New("projections: the file was being built without fsync when the machine restarted; start scrollback serve to build it again from the log")

// builtLag is how close to the log, in messages, a build must come for the
// file to be synced and written with fsync from then on: under live
// traffic the projection is rarely exactly at the log's end.
const builtLag = 1024

// bootIDPath is where Linux keeps the ID of the current boot (a variable
// for the tests).
var bootIDPath = "/proc/sys/kernel/random/boot_id"

func bootID() ([]byte, error) {
	id, err := os.ReadFile(bootIDPath)
	if err == nil && len(bytes.TrimSpace(id)) == 0 {
		err = fmt.Errorf("empty %s", bootIDPath)
	}
	return bytes.TrimSpace(id), err
}

func markerPath(path string) string { return path + ".building" }

// BuildMarker is the path of the marker of a build without fsync of the
// file at path: a file with one is not whole until its build ends.
func BuildMarker(path string) string { return markerPath(path) }

// wrap prefixes the package's name to a file system error.
func wrap(err error) error {
	if err != nil {
		return fmt.Errorf("projections: %w", err)
	}
	return nil
}

// prepareBuild runs before bolt.Open: it reports whether the file at path
// is (still) to be built without fsync, and deletes a file the machine's
// restart may have torn (restarted). It writes the marker for a new file.
func prepareBuild(path string, build bool) (unsynced, restarted bool, err error) {
	marker := markerPath(path)
	was, err := os.ReadFile(marker)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if !build {
			return false, false, nil
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			return false, false, err // an existing file (or an error): synced as always
		}
		id, err := bootID()
		if err != nil {
			return false, false, nil // no boot ID: synced from the start
		}
		return true, false, wrap(durable.WriteFile(marker, id))
	case err != nil:
		return false, false, fmt.Errorf("projections: %w", err)
	}
	id, err := bootID()
	if err == nil && bytes.Equal(bytes.TrimSpace(was), id) {
		return true, false, nil
	}
	if !build {
		return false, false, ErrUnsynced
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, false, fmt.Errorf("projections: remove a file torn by a restart: %w", err)
	}
	if err != nil || id == nil {
		// The file is gone; without a boot ID the next one is synced.
		return false, true, wrap(durable.Remove(marker))
	}
	return true, true, wrap(durable.WriteFile(marker, id))
}

// Building reports whether the file is still being built without fsync.
func (s *Store) Building() bool { return s.building.Load() }

// Restarted reports whether Open deleted a file whose build a restart of
// the machine cut short (the projection starts again from the log).
func (s *Store) Restarted() bool { return s.restarted }

// Built ends a build without fsync: from now on every commit is synced,
// and once the commits so far are on disk the marker goes. It does nothing
// on a file that is not being built, and may be called from any goroutine.
func (s *Store) Built() error {
	s.buildMu.Lock()
	defer s.buildMu.Unlock()
	if !s.building.Load() || s.failed {
		return nil
	}
	// A write that failed during the build (update) may have cost pages
	// of earlier commits, which no sync reports now. So may a failed
	// flush here: the kernel reports it once, and the commit below
	// would then succeed over the lost pages.
	if err := s.lostWrites(); err != nil {
		return errors.Join(fmt.Errorf("projections: end the build: %w", err), s.distrust())
	}
	// Most of the flush outside bbolt's writer lock, so that commits do
	// not wait for it.
	if err := s.db.Sync(); err != nil {
		return errors.Join(fmt.Errorf("projections: end the build: %w", err), s.distrust())
	}
	// NoSync is read by every commit, under bbolt's writer lock: it is
	// changed under it too. This commit's
	// fdatasync writes every page of the file that is not yet on disk,
	// and its meta page after them.
	err := s.db.Update(func(*bolt.Tx) error {
		s.db.NoSync = false
		return nil
	})
	if err != nil && !writeFault(err) {
		// Nothing was written (the file could not grow): the build
		// goes on, and Close tries to end it again.
		return fmt.Errorf("projections: end the build: %w", err)
	}
	if err != nil {
		// The kernel reports a failed writeback once: a later sync
		// could succeed over pages that were lost. The file can no
		// longer be trusted, whatever happens next: the marker takes a
		// value no boot has, so that the next Open builds it again, and
		// the store stays marked as building (a commit error then
		// means what it means).
		return errors.Join(fmt.Errorf("projections: end the build: %w", err), s.distrust())
	}
	if err := durable.Remove(markerPath(s.db.Path())); err != nil {
		return fmt.Errorf("projections: end the build: %w", err)
	}
	s.building.Store(false)
	return nil
}

// untrusted is the marker of a build whose sync failed: it matches no
// boot's ID.
const untrusted = "sync failed"

// distrust marks the file as one the next Open must build again, and
// stops Built from trying again.
func (s *Store) distrust() error {
	s.failed = true
	return wrap(durable.WriteFile(markerPath(s.db.Path()), []byte(untrusted)))
}
