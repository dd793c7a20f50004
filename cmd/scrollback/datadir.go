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
// needDataDir refuses to run a maintenance command (what) on a data dir
// that holds nothing to work on, before anything is created there: a
// typo in --data made rebuild and verify build an empty log and
// projection in a new dir and report success. The dir must exist and,
// with the embedded server, hold its log; needProjection asks for the
// projection file too (verify and compact: rebuild makes a lost one
// again).
func needDataDir(cfg Config, what string, needProjection bool) error {
	if fi, err := os.Stat(cfg.DataDir); err != nil || !fi.IsDir() {
		return fmt.Errorf("%s: no data dir at %s: check --data (or data_dir in the config)", what, cfg.DataDir)
	}
	if cfg.NATS.URL == "" {
		js := filepath.Join(cfg.DataDir, "jetstream")
		if _, err := os.Stat(js); err != nil {
			return fmt.Errorf("%s: %s holds no log (%s is missing): check --data, or give --nats-url for an external NATS", what, cfg.DataDir, js)
		}
	}
	if needProjection {
		db := filepath.Join(cfg.DataDir, "scrollback.db")
		if _, err := os.Stat(db); err != nil {
			return fmt.Errorf("%s: no projection at %s (scrollback rebuild makes one from the log)", what, db)
		}
	}
	return nil
}

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
