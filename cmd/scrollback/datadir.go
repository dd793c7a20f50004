package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// lockName is the file in the data dir whose lock a process holds while
// it uses the dir (lockDataDir).
const lockName = "scrollback.lock"

// errLocked is flock's answer when another process holds the lock.
var errLocked = errors.New("locked")

// lockDataDir takes the data dir's lock, or fails at once if another
// process holds it. serve, rebuild, verify and compact hold it while they
// run: two of them on one dir would run two embedded NATS servers on one
// JetStream store, or swap the projection file under a running service.
// The lock is the kernel's (flock), so a process that dies releases it.
func lockDataDir(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if err := flock(f); err != nil {
		f.Close()
		if errors.Is(err, errLocked) {
			return nil, fmt.Errorf("data dir %s is in use by another scrollback process (serve, rebuild, verify or compact; %s is locked): stop it first", dir, lockName)
		}
		return nil, fmt.Errorf("data dir: lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil // closing the file releases the lock
}
