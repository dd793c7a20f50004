package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/internal/durable"
	"github.com/scrollback/scrollback/projections"
)

// runRebuild is `scrollback rebuild`: with the service stopped, replace
// the projection by one rebuilt from the room log. The old file is kept
// as scrollback.db.prev.
func runRebuild(ctx context.Context, args []string, out io.Writer) error {
	cfg, err := parseFlags("rebuild", args, os.Stderr)
	if err != nil {
		return err
	}
	applyMemoryLimit(cfg)
	return rebuildProjection(ctx, cfg, out)
}

// rebuildProjection applies the whole log into a new file, runs the
// janitor to the end (so purged rows are gone as they are in the live
// file) and the task sweep, and swaps the files.
func rebuildProjection(ctx context.Context, cfg Config, out io.Writer) error {
	if err := needDataDir(cfg, "rebuild", false); err != nil {
		return err
	}
	unlock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("rebuild: %w", err)
	}
	defer unlock()
	dbPath := filepath.Join(cfg.DataDir, "scrollback.db")
	tmp := dbPath + ".rebuild"
	start := time.Now()
	last, err := buildFromLog(ctx, cfg, tmp)
	if err == nil {
		err = keepOwner(tmp, dbPath)
	}
	if err != nil {
		// The partial file is as big as the work done, on a disk that
		// may be the full one the build stopped on.
		os.Remove(tmp)
		return fmt.Errorf("rebuild: %w (%s is unchanged)", stopped(ctx, err), dbPath)
	}
	kept := fmt.Sprintf("previous file kept as %s.prev", filepath.Base(dbPath))
	if _, err := os.Stat(dbPath); err == nil {
		if _, err := os.Stat(dbPath + ".prev"); err == nil {
			kept += ", in place of the one an earlier rebuild kept"
		}
		if err := os.Rename(dbPath, dbPath+".prev"); err != nil {
			return err
		}
	} else {
		kept = "there was no previous file"
	}
	if err := os.Rename(tmp, dbPath); err != nil {
		return err
	}
	// The old file's build marker does not hold for the new, synced file.
	if err := durable.Remove(projections.BuildMarker(dbPath)); err != nil {
		return err
	}
	// The log's last sequence, not its count of messages: a purge's
	// erasure leaves gaps (an operator's walkthrough took the count for
	// an erasure that never happened).
	fmt.Fprintf(out, "rebuilt %s from the log up to sequence %d in %s (%s)\n", dbPath, last, time.Since(start).Round(time.Millisecond), kept)
	return nil
}

// runVerify is `scrollback verify`: with the service stopped, rebuild the
// projection from the log into a temporary file and compare it with the
// live one (timelines, state, extremities, forgotten users, relations,
// tasks). It reports the differences and fails if there are any.
func runVerify(ctx context.Context, args []string, out io.Writer) error {
	cfg, err := parseFlags("verify", args, os.Stderr)
	if err != nil {
		return err
	}
	applyMemoryLimit(cfg)
	n, err := verifyProjection(ctx, cfg, out)
	if err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("verify: %d differences between the projection and a rebuild from the log", n)
	}
	return nil
}

func verifyProjection(ctx context.Context, cfg Config, out io.Writer) (int, error) {
	if err := needDataDir(cfg, "verify", true); err != nil {
		return 0, err
	}
	unlock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return 0, fmt.Errorf("verify: %w", err)
	}
	defer unlock()
	dbPath := filepath.Join(cfg.DataDir, "scrollback.db")
	// What it refuses about the live file, verify refuses before it
	// builds from the log, minutes on a big log, and with the same
	// error: another server_name (buildFromLog checks it too, for
	// rebuild), a build a restart cut short, another layout. Read-only.
	if err := projections.CheckServerName(dbPath, cfg.ServerName); err != nil {
		return 0, fmt.Errorf("verify: %w", err)
	}
	if err := projections.Check(dbPath); err != nil {
		return 0, fmt.Errorf("verify: the live projection: %w", err)
	}
	tmp := dbPath + ".verify"
	defer os.Remove(tmp)
	if _, err := buildFromLog(ctx, cfg, tmp); err != nil {
		return 0, fmt.Errorf("verify: %w", stopped(ctx, err))
	}
	now := time.Now() // one now for both: tasks expire with it
	digest := func(path string) (projections.Digest, []uint64, error) {
		s, err := projections.Open(path, projections.Options{})
		if err != nil {
			return nil, nil, err
		}
		defer s.Close()
		cps, err := s.Checkpoints()
		if err != nil {
			return nil, nil, err
		}
		d, err := s.Digest(now)
		return d, cps, err
	}
	live, liveCPs, err := digest(dbPath)
	if err != nil {
		return 0, fmt.Errorf("verify: the live projection: %w", err)
	}
	rebuilt, rebuiltCPs, err := digest(tmp)
	if err != nil {
		return 0, err
	}
	diff := live.Diff(rebuilt, "the live projection", "the rebuild from the log")
	for _, d := range diff {
		fmt.Fprintln(out, d)
	}
	// An aspect is a room's timeline, its state, a task...: one line of
	// the diff each, those of either side.
	fmt.Fprintf(out, "verify: %d aspects in the live projection, %d in the rebuild from the log, %d differences\n", len(live), len(rebuilt), len(diff))
	if n := partitionsBehind(liveCPs, rebuiltCPs); n > 0 {
		are := "are"
		if n == 1 {
			are = "is"
		}
		return len(diff), fmt.Errorf("verify: the live projection has not applied the end of the log yet (%d of its %d partitions %s behind it, as when the service was killed before it caught up): start scrollback serve, let it catch up (scrollback_projection_lag_messages 0), stop it, and verify again", n, len(liveCPs), are)
	}
	return len(diff), nil
}

// partitionsBehind counts the partitions whose checkpoint in the live
// file is below the rebuild's, which applied the whole log: the live
// projection has not applied the log's last messages of those, and
// differs from the rebuild by them without being wrong. A service killed
// during an ingest leaves such a file, and verify reported its lag as
// differences, for an operator to rebuild what a start of the service
// would have caught up.
func partitionsBehind(live, rebuilt []uint64) int {
	if len(live) != len(rebuilt) {
		return 0 // partitioned otherwise: not comparable
	}
	n := 0
	for p := range live {
		if live[p] < rebuilt[p] {
			n++
		}
	}
	return n
}

// stopped says "interrupted" for an error of a build that a signal
// stopped: "context canceled" told an operator who pressed Ctrl-C
// nothing, and verify's said "rebuild".
func stopped(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return errors.New("interrupted")
	}
	return err
}

// buildBatch, if set, runs after each batch a build from the log applies:
// the tests stop a rebuild in the middle with it.
var buildBatch func()

// buildFromLog applies the whole log into a new projection file at path,
// runs the janitor to the end and deletes the expired tasks. It returns
// the log's last sequence.
func buildFromLog(ctx context.Context, cfg Config, tmp string) (uint64, error) {
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	// The log is applied with cfg's server_name, which decides what
	// purges delete: a file made for another name means a mistaken
	// config, not a new name.
	if err := projections.CheckServerName(filepath.Join(cfg.DataDir, "scrollback.db"), cfg.ServerName); err != nil {
		return 0, err
	}
	m := &Main{Config: cfg, Logger: slog.New(slog.DiscardHandler)}
	m.Config.NATS.Listen = "" // nothing else may reach the log meanwhile
	if err := m.openLog(ctx); err != nil {
		m.Close()
		return 0, err
	}
	defer m.Close()
	// Without fsync until the end: the file is put in place only once it
	// is complete and synced, and a crash before leaves a partial file
	// that the next rebuild removes (catching up 1M events in 10k rooms,
	// fsync on every commit cost the writer about a quarter of its time).
	store, err := projections.Open(tmp, projections.Options{ServerName: cfg.ServerName, NoSync: true})
	if err != nil {
		return 0, err
	}
	subjects := bus.Subjects{Prefix: cfg.NATS.SubjectPrefix}
	log := &bus.Log{JS: m.JS, Stream: cfg.NATS.Stream, Subjects: subjects}
	last, err := log.LastSeq(ctx)
	if err != nil {
		store.Close()
		return 0, err
	}
	// The projector's warnings reach the operator: on a full disk it
	// retries until there is room ("the file cannot take it"), which
	// would otherwise look like a hang.
	warn := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p := &projections.Projector{Store: store, Source: log, Decode: subjects.Decode, RoomKeyOf: roomKeyToken(cfg.NATS.SubjectPrefix),
		Erased: logErased(log), FirstUpdates: log.FirstUpdates, Logger: warn}
	if buildBatch != nil {
		p.Observe = func(int, []projections.Outcome, time.Duration) { buildBatch() }
	}
	if err := p.Init(); err != nil {
		store.Close()
		return 0, err
	}
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(pctx) }()
	err = waitAll(ctx, p, last)
	cancel()
	if rerr := <-done; err == nil {
		err = rerr
	}
	for err == nil {
		var did bool
		if did, err = store.JanitorStep(projections.JanitorBatch); err != nil || !did {
			break
		}
		err = ctx.Err()
	}
	if err == nil {
		err = expireAll(store, time.Now())
	}
	if err == nil {
		err = store.Sync()
	}
	if cerr := store.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		// Stopped at the very end, it is stopped all the same: nothing
		// is swapped after the operator asked to stop.
		err = ctx.Err()
	}
	if err != nil {
		return 0, err
	}
	return last, nil
}

// expireAll deletes every task expired at now, as the live sweep does
// (the replay brought back the ones it had deleted), so that a rebuilt
// file does not start with a backlog of them.
func expireAll(store *projections.Store, now time.Time) error {
	for {
		n, err := store.ExpireTasks(now, projections.ExpireBatch)
		if err != nil || n < projections.ExpireBatch {
			return err
		}
	}
}

// waitAll waits until every partition has applied the log up to seq.
func waitAll(ctx context.Context, p *projections.Projector, seq uint64) error {
	for p.Applied() < seq {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// runCompact is `scrollback compact`: with the service stopped, copy the
// projection into a new, tightly packed file and swap them, giving back
// the disk space that purges freed (bbolt reuses freed pages but never
// shrinks its file).
func runCompact(ctx context.Context, args []string, out io.Writer) error {
	cfg, err := parseFlags("compact", args, os.Stderr)
	if err != nil {
		return err
	}
	if err := needDataDir(cfg, "compact", true); err != nil {
		return err
	}
	unlock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	defer unlock()
	dbPath := filepath.Join(cfg.DataDir, "scrollback.db")
	before, err := os.Stat(dbPath)
	if err != nil {
		return err
	}
	if _, err := os.Stat(projections.BuildMarker(dbPath)); err == nil {
		return fmt.Errorf("compact: %s is still being built without fsync (%s): start scrollback serve until it has caught up with the log, or run scrollback rebuild", dbPath, filepath.Base(projections.BuildMarker(dbPath)))
	}
	src, err := bolt.Open(dbPath, 0o600, &bolt.Options{ReadOnly: true, Timeout: 2 * time.Second})
	if err != nil {
		return fmt.Errorf("compact: open %s (is scrollback serve still running?): %w", dbPath, err)
	}
	tmp := dbPath + ".compact"
	os.Remove(tmp)
	// Synced once, at the end: the copy is put in place only then.
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		src.Close()
		return err
	}
	// bolt.Compact cannot be stopped: a Ctrl-C during it takes effect
	// when it returns, and the copy is then thrown away, not put in
	// place (a kill -9 leaves the copy, which the next serve removes).
	err = bolt.Compact(dst, src, 64<<20)
	if err == nil {
		err = ctx.Err()
	}
	src.Close()
	var size int64
	if err == nil {
		err = dst.View(func(tx *bolt.Tx) error { size = tx.Size(); return nil })
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = trimAndSync(tmp, size)
	}
	if err == nil {
		err = keepOwner(tmp, dbPath)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("compact: %w (%s is unchanged)", stopped(ctx, err), dbPath)
	}
	if err := os.Rename(tmp, dbPath); err != nil {
		return err
	}
	if err := durable.SyncDir(cfg.DataDir); err != nil {
		return err
	}
	after, _ := os.Stat(dbPath)
	fmt.Fprintf(out, "compacted %s: %d -> %d bytes\n", dbPath, before.Size(), after.Size())
	return nil
}

// trimAndSync cuts the file at path to size, the end of its pages, and
// syncs it. bbolt grows a file ahead of its pages (to its mapping's size,
// or 16 MiB past them): compact reported a file packed into 22 MB of
// pages as grown from 34 to 39 MB.
func trimAndSync(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}
