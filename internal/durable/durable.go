package durable

import (
	"errors"
	"os"
	"path/filepath"
)

// SyncDir syncs the directory dir, so that the names created, removed or
// renamed in it are on disk: a crash of the machine after a rename that is
// not synced can bring back the old name.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// WriteFile writes data to the file at path, replacing what it held, and
// syncs the file and its directory.
func WriteFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if err = errors.Join(err, f.Close()); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// Remove removes the file at path, if it is there, and syncs its
// directory.
func Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return SyncDir(filepath.Dir(path))
}
