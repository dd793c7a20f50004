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
// and reach the disk when the kernel writes them back. That is safe as
// long as the machine keeps running: a crash of the process loses nothing
// the kernel holds, and bbolt's file stays whole. Only a crash of the
// machine can leave a file whose last meta page points at pages that never
// reached the disk.
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
// Once the projection is within builtLag messages of the log (the
// projector calls Built), or when the store closes, the file is synced and
// the marker removed; from then on every commit is synced as usual.
//
// The build gives up little if it is lost: it was starting from nothing.
// A file that has once been built is never written without fsync again,
// however far behind the log it falls. Without a boot ID (not Linux), new
// files are synced from the start.
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
	if !s.building.Load() {
		return nil
	}
	// NoSync is read by every commit, under bbolt's writer lock: it is
	// changed under it too. This commit's fdatasync writes every page of
	// the file that is not yet on disk, and its meta page after them.
	err := s.db.Update(func(*bolt.Tx) error {
		s.db.NoSync = false
		return nil
	})
	if err != nil {
		return fmt.Errorf("projections: end the build: %w", err)
	}
	if err := durable.Remove(markerPath(s.db.Path())); err != nil {
		return fmt.Errorf("projections: end the build: %w", err)
	}
	s.building.Store(false)
	return nil
}
