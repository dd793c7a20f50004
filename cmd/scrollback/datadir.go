package main

import (
	"errors"
	"fmt"
	"log/slog"
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
//
// A file that is there but cannot be looked at (permission denied: run as
// another user than the service's) is reported as such, not as missing.
func needDataDir(cfg Config, what string, needProjection bool) error {
	fi, err := os.Stat(cfg.DataDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err != nil || !fi.IsDir() {
		return fmt.Errorf("%s: no data dir at %s: check --data (or data_dir in the config)", what, cfg.DataDir)
	}
	if cfg.NATS.URL == "" {
		js := filepath.Join(cfg.DataDir, "jetstream")
		if _, err := os.Stat(js); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: %w", what, err)
		} else if err != nil {
			return fmt.Errorf("%s: %s holds no log (%s is missing): check --data, or give --nats-url for an external NATS", what, cfg.DataDir, js)
		}
	}
	if needProjection {
		db := filepath.Join(cfg.DataDir, "scrollback.db")
		if _, err := os.Stat(db); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: %w", what, err)
		} else if err != nil {
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

// leftovers are the files rebuild, verify and compact write next to the
// projection before they put one in place or delete it. One that is
// there when the data dir's lock is taken was left by a command that was
// killed (kill -9, the OOM killer), and is as big as the work it had
// done: only the next run of the same command removed it, so a service
// started instead kept it for good.
var leftovers = []string{".rebuild", ".verify", ".compact"}

// removeLeftovers deletes the leftovers in dir, logging each, under the
// data dir's lock.
func removeLeftovers(dir string, log *slog.Logger) error {
	for _, ext := range leftovers {
		path := filepath.Join(dir, "scrollback.db"+ext)
		err := os.Remove(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
		log.Warn("removed what a killed maintenance command left", "path", path)
	}
	return nil
}
