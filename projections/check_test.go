package projections_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/projections"
)

// setVersion writes layout version v into the file at path, as a release
// of another layout would have left it.
func setVersion(t *testing.T, path string, v uint64) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("version"), binary.BigEndian.AppendUint64(nil, v))
	})
	if err := errors.Join(err, db.Close()); err != nil {
		t.Fatal(err)
	}
}

// TestOpen_ErrorsNameThePackageOnce: Open's refusals of a file (another
// server_name, another layout) name the package once, and the file.
// Open wrapped its own errors again with the package's name:
// "projections: init p.db: projections: the file was made for another
// server_name" (found by a review).
func TestOpen_ErrorsNameThePackageOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.db")
	s, err := projections.Open(path, projections.Options{ServerName: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	once := func(what string, err, want error) {
		t.Helper()
		if !errors.Is(err, want) || strings.Count(err.Error(), "projections:") != 1 || !strings.HasPrefix(err.Error(), path+": ") {
			t.Errorf("Open of a file of %s: %v, want %v, naming the file and the package once", what, err, want)
		}
	}
	_, err = projections.Open(path, projections.Options{ServerName: "localhost"})
	once("another server_name", err, projections.ErrServerName)
	setVersion(t, path, 99)
	_, err = projections.Open(path, projections.Options{ServerName: "test"})
	once("another layout", err, projections.ErrFormat)
}

// TestCheck_RefusesWhatOpenRefusesWithoutWriting: Check refuses a file
// whose build a restart of the machine cut short, and one of another
// layout, with Open's error, and writes nothing to it (Open writes even
// to a file it refuses); a file whose build goes on in this boot, a
// whole file and no file pass. scrollback verify checks the live file so
// before it builds anything from the log.
func TestCheck_RefusesWhatOpenRefusesWithoutWriting(t *testing.T) {
	projections.SetBootID(t, "boot-1")
	path := filepath.Join(t.TempDir(), "p.db")
	if err := projections.Check(path); err != nil {
		t.Fatalf("no file: %v, want it passed (Open says what is wrong)", err)
	}
	s := openBuild(t, path)
	crash(t, s) // its build goes on at the next Open of this boot
	unchanged := func(what string, check func()) {
		t.Helper()
		before, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		check()
		if after, err := os.ReadFile(path); err != nil || !bytes.Equal(before, after) {
			t.Errorf("Check of %s wrote to it (%v)", what, err)
		}
	}
	unchanged("a build of this boot", func() {
		if err := projections.Check(path); err != nil {
			t.Errorf("a build of this boot: %v, want it passed (Open goes on with it)", err)
		}
	})
	projections.SetBootID(t, "boot-2")
	unchanged("a build a restart cut short", func() {
		_, want := projections.Open(path, projections.Options{})
		if err := projections.Check(path); !errors.Is(err, projections.ErrUnsynced) || err.Error() != want.Error() {
			t.Errorf("a build a restart cut short: %v, want Open's %v", err, want)
		}
	})
	if err := os.Remove(path + ".building"); err != nil {
		t.Fatal(err)
	}
	if err := projections.Check(path); err != nil {
		t.Fatalf("a whole file: %v", err)
	}
	setVersion(t, path, 99)
	// Open writes to the file before it refuses it: its error first.
	_, want := projections.Open(path, projections.Options{})
	unchanged("another layout", func() {
		if err := projections.Check(path); !errors.Is(err, projections.ErrFormat) || err.Error() != want.Error() {
			t.Errorf("another layout: %v, want Open's %v", err, want)
		}
	})
}
