package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// TestDataDir_OneProcessAtATime: while a service runs on a data dir,
// rebuild, verify and compact refuse to start, and so does a second
// service, instead of starting a second embedded NATS server on its
// JetStream store or swapping the projection file under it (rebuild
// renamed the live file to scrollback.db.prev while the service went on
// writing to it). Once the service stops, they run.
func TestDataDir_OneProcessAtATime(t *testing.T) {
	m := startMain(t)
	cfg := m.Config
	dbPath := filepath.Join(cfg.DataDir, "scrollback.db")
	inUse := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "is in use by another scrollback process") {
			t.Errorf("%s while the service runs: err = %v, want the data dir in use", what, err)
		}
	}
	var out bytes.Buffer
	inUse("rebuild", rebuildProjection(context.Background(), cfg, &out))
	_, err := verifyProjection(context.Background(), cfg, &out)
	inUse("verify", err)
	inUse("compact", runCompact(context.Background(), []string{"--data", cfg.DataDir}, &out))
	second := &Main{Config: cfg}
	inUse("a second serve", second.Open(context.Background()))
	second.Close()
	if _, err := os.Stat(dbPath + ".prev"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the live projection was moved aside: %v", err)
	}
	for _, tmp := range []string{".rebuild", ".verify", ".compact"} {
		if _, err := os.Stat(dbPath + tmp); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", tmp, err)
		}
	}

	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := verifyProjection(context.Background(), cfg, &out); err != nil || n != 0 {
		t.Fatalf("verify once the service stopped: %d differences, %v\n%s", n, err, out.String())
	}
	if err := rebuildProjection(context.Background(), cfg, &out); err != nil {
		t.Fatalf("rebuild once the service stopped: %v", err)
	}
	openAgain(t, cfg) // the lock was released
}

// TestDataDir_MaintenanceRefusesAnEmptyDir: rebuild, verify and compact
// on a data dir that holds no log (a typo in --data) refuse, and leave
// nothing behind: verify reported "0 differences" and rebuild "rebuilt
// from 0 log messages", both over a new empty log and projection they had
// made there (found by a helper's operator walkthrough). verify needs the
// live projection too; rebuild does not, as it rebuilds a lost one.
func TestDataDir_MaintenanceRefusesAnEmptyDir(t *testing.T) {
	var out bytes.Buffer
	ctx := context.Background()
	typo := filepath.Join(t.TempDir(), "data-typo")
	for name, run := range map[string]func() error{
		"rebuild": func() error { return runRebuild(ctx, []string{"--data", typo}, &out) },
		"verify":  func() error { return runVerify(ctx, []string{"--data", typo}, &out) },
		"compact": func() error { return runCompact(ctx, []string{"--data", typo}, &out) },
	} {
		if err := run(); err == nil || !strings.Contains(err.Error(), typo) {
			t.Errorf("%s on a data dir that does not exist: %v, want a refusal naming it", name, err)
		}
		if _, err := os.Stat(typo); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s created %s", name, typo)
		}
	}

	// A data dir whose projection file is lost: rebuild makes it again,
	// verify has nothing to compare.
	m := startMain(t)
	cfg := m.Config
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(cfg.DataDir, "scrollback.db")
	if err := os.Remove(dbPath); err != nil {
		t.Fatal(err)
	}
	if _, err := verifyProjection(ctx, cfg, &out); err == nil || !strings.Contains(err.Error(), dbPath) {
		t.Errorf("verify without a projection file: %v, want a refusal naming it", err)
	}
	out.Reset()
	if err := rebuildProjection(ctx, cfg, &out); err != nil || !strings.Contains(out.String(), "there was no previous file") {
		t.Fatalf("rebuild of a lost projection file: %v\n%s", err, out.String())
	}
	// Rebuilds keep one previous file, and say when it replaces one.
	for _, want := range []string{"previous file kept as scrollback.db.prev)", "in place of the one an earlier rebuild kept"} {
		out.Reset()
		if err := rebuildProjection(ctx, cfg, &out); err != nil || !strings.Contains(out.String(), want) {
			t.Fatalf("rebuild: %v\n%s\nwant %q", err, out.String(), want)
		}
	}
}

// TestDataDir_AFreshServiceOnAnEmptyLogEndsItsBuild: a new projection is
// built without fsync until it has caught up with the log; on an empty
// log it has at once. The marker stayed until the first message arrived,
// so a crash of an idle fresh instance left a file compact refused
// (found by a helper's operator walkthrough).
func TestDataDir_AFreshServiceOnAnEmptyLogEndsItsBuild(t *testing.T) {
	m := startMain(t)
	marker := projections.BuildMarker(filepath.Join(m.Config.DataDir, "scrollback.db"))
	testenv.WaitFor(t, 10*time.Second, "the build marker to go", func() bool {
		_, err := os.Stat(marker)
		return errors.Is(err, os.ErrNotExist) && !m.Store.Building()
	})
}

// TestDataDir_ServeRemovesWhatAKilledCommandLeft: a rebuild, verify or
// compact killed in the middle (kill -9, the OOM killer) leaves its
// partial file, as big as the work it had done; only the next run of the
// same command removed it, so a service started instead kept it for good
// (found by a helper's operator walkthrough). The service, which holds
// the data dir's lock, removes them; the projection stays.
func TestDataDir_ServeRemovesWhatAKilledCommandLeft(t *testing.T) {
	m := startMain(t)
	cfg := m.Config
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(cfg.DataDir, "scrollback.db")
	for _, ext := range []string{".rebuild", ".verify", ".compact"} {
		if err := os.WriteFile(dbPath+ext, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	openAgain(t, cfg)
	for _, ext := range []string{".rebuild", ".verify", ".compact"} {
		if _, err := os.Stat(dbPath + ext); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s outlived the service's start: %v", filepath.Base(dbPath+ext), err)
		}
	}
	if _, err := os.Stat(dbPath); err != nil {
		t.Fatal(err)
	}
}

// TestDataDir_ADirItCannotReadIsNotMissing: run as a user who may not
// look into the data dir (not the service's), rebuild, verify and compact
// said that it "holds no log (.../jetstream is missing)" and sent the
// operator looking for a lost log; they say what the system said
// (found by a helper's operator walkthrough). Not as root, who may look
// into any dir.
func TestDataDir_ADirItCannotReadIsNotMissing(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root may look into any dir")
	}
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.MkdirAll(filepath.Join(dir, "jetstream"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o600); err != nil { // no search: what is in it cannot be looked at
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(dir, 0o700) })
	var out bytes.Buffer
	ctx := context.Background()
	for name, run := range map[string]func() error{
		"rebuild": func() error { return runRebuild(ctx, []string{"--data", dir}, &out) },
		"verify":  func() error { return runVerify(ctx, []string{"--data", dir}, &out) },
		"compact": func() error { return runCompact(ctx, []string{"--data", dir}, &out) },
	} {
		if err := run(); err == nil || !errors.Is(err, os.ErrPermission) || strings.Contains(err.Error(), "missing") {
			t.Errorf("%s on a data dir it cannot look into: %v, want permission denied", name, err)
		}
	}
}
