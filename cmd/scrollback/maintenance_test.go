package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// TestRebuild_RefusesAnotherServerName: a data dir's projection was made
// for one server_name; rebuild, verify and serve given another (the
// config file forgotten, --data alone) refuse, naming both, and leave the
// projection as it was. A rebuild with the default name "localhost"
// decided the purges again with other local users: it deleted the local
// messages a purge had kept, and the service then erased them from the
// log, for good (found by a helper's operator walkthrough).
func TestRebuild_RefusesAnotherServerName(t *testing.T) {
	m := startMain(t)
	r := testenv.NewRoom("named", "test")
	evs := r.Setup(alice, "@remote:other.org")
	for i := range 10 {
		evs = append(evs, r.Msg(alice, fmt.Sprint("local ", i)), r.Msg("@remote:other.org", fmt.Sprint("remote ", i)))
	}
	m.publishApplied(t, r.ID, evs...)
	kept := evs[len(evs)-10].ID() // alice's, below the cut-off: kept as an outlier
	m.purgeHistory(t, r.ID, evs[len(evs)-2].ID(), "")
	cfg := m.Config
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(cfg.DataDir, "scrollback.db")
	wrong := cfg
	wrong.ServerName = "localhost"
	refused := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), `"test", not "localhost"`) {
			t.Errorf("%s with another server_name: %v, want a refusal naming both", what, err)
		}
	}
	var out bytes.Buffer
	refused("rebuild", rebuildProjection(context.Background(), wrong, &out))
	_, err := verifyProjection(context.Background(), wrong, &out)
	refused("verify", err)
	other := &Main{Config: wrong}
	err = other.Open(context.Background())
	other.Close()
	refused("serve", err)
	if !errors.Is(err, projections.ErrServerName) {
		t.Errorf("serve: %v, want ErrServerName", err)
	}
	if _, err := os.Stat(dbPath + ".prev"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the projection was replaced: %v", err)
	}

	m2 := openAgain(t, cfg)
	if _, ok, err := m2.Store.FindEvent(r.ID, kept); err != nil || !ok {
		t.Fatalf("the local message the purge kept: found %v, %v", ok, err)
	}
}

// setLayoutVersion writes layout version v into the projection file at
// path, as a release of another layout would have left it.
func setLayoutVersion(tb testing.TB, path string, v uint64) {
	tb.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		tb.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("version"), binary.BigEndian.AppendUint64(nil, v))
	})
	if err := errors.Join(err, db.Close()); err != nil {
		tb.Fatal(err)
	}
}

// TestVerify_RefusesTheLiveFileBeforeBuilding: what verify refuses
// about the live projection (a build without fsync that a restart of the
// machine cut short, a file of a format this release cannot read, a file
// made for another server_name) it refuses before it builds anything from
// the log, with the error it gave after: it applied the whole log first,
// minutes on a big one, for an error it could give at once (found by a
// review). The live file is left as it was.
func TestVerify_RefusesTheLiveFileBeforeBuilding(t *testing.T) {
	cfg, dbPath := stoppedWithRoom(t, "refused", 20)
	var batches atomic.Int64 // batches a build from the log applied
	buildBatch = func() { batches.Add(1) }
	t.Cleanup(func() { buildBatch = nil })
	wrongName := cfg
	wrongName.ServerName = "localhost"
	for _, tt := range []struct {
		name       string
		cfg        Config
		spoil, fix func()
		wantErr    error
		wantPrefix string
	}{
		{"a build a restart cut short", cfg,
			func() {
				if err := os.WriteFile(projections.BuildMarker(dbPath), []byte("another boot"), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			func() {
				if err := os.Remove(projections.BuildMarker(dbPath)); err != nil {
					t.Fatal(err)
				}
			},
			projections.ErrUnsynced, "verify: the live projection: "},
		{"another format", cfg, func() { setLayoutVersion(t, dbPath, 99) }, func() { setLayoutVersion(t, dbPath, 2) },
			projections.ErrFormat, "verify: the live projection: "},
		{"another server_name", wrongName, func() {}, func() {},
			projections.ErrServerName, "verify: " + dbPath + ": "},
	} {
		tt.spoil()
		before, err := os.ReadFile(dbPath)
		if err != nil {
			t.Fatal(err)
		}
		batches.Store(0)
		_, err = verifyProjection(context.Background(), tt.cfg, &bytes.Buffer{})
		if !errors.Is(err, tt.wantErr) || !strings.HasPrefix(err.Error(), tt.wantPrefix) {
			t.Errorf("verify of a live file with %s: %v, want %q, starting %q", tt.name, err, tt.wantErr, tt.wantPrefix)
		}
		if n := batches.Load(); n != 0 {
			t.Errorf("verify of a live file with %s applied %d batches of the log before it refused it", tt.name, n)
		}
		if after, err := os.ReadFile(dbPath); err != nil || !bytes.Equal(before, after) {
			t.Errorf("verify of a live file with %s changed it (%v)", tt.name, err)
		}
		tt.fix()
	}
	// The same file, left as it was, is verified: by a build from the log.
	batches.Store(0)
	if n, err := verifyProjection(context.Background(), cfg, &bytes.Buffer{}); err != nil || n != 0 {
		t.Fatalf("verify of the file made whole again: %d differences, %v", n, err)
	}
	if batches.Load() == 0 {
		t.Fatal("verify applied no batch of the log: the test sees no build")
	}
}

// TestServe_ErrorsNameTheProjectionsPackageOnce: the errors of the
// projection file that reach the operator (serve, rebuild and verify on a
// file made for another server_name, or of another format) name the
// projections package once. Open wrapped its own errors again with its
// name: "scrollback: projections: init .../scrollback.db: projections:
// the file was made for another server_name" (found by a review).
func TestServe_ErrorsNameTheProjectionsPackageOnce(t *testing.T) {
	m := startMain(t)
	cfg := m.Config
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(cfg.DataDir, "scrollback.db")
	// serve makes its logger, on the buffer below, slog's default, and
	// so the log package's output: both are put back for the next tests.
	wasSlog, wasLog, wasFlags := slog.Default(), log.Writer(), log.Flags()
	t.Cleanup(func() { slog.SetDefault(wasSlog); log.SetOutput(wasLog); log.SetFlags(wasFlags) })
	flags := []string{"--data", cfg.DataDir, "--server-name", cfg.ServerName}
	once := func(what string, args []string, want error) {
		t.Helper()
		var stderr bytes.Buffer
		// serve's own listeners off: the embedded NATS in-process only,
		// no HTTP bridge (they are serve's alone).
		if args[0] == "serve" {
			args = append(args, "--nats-listen", "", "--http", "")
		}
		if code := run(context.Background(), args, io.Discard, &stderr); code != 1 {
			t.Fatalf("%s: exit %d, want 1 (%s)", what, code, stderr.String())
		}
		msg := strings.TrimSpace(stderr.String())
		t.Logf("%s: %s", what, msg)
		if n := strings.Count(msg, "projections:"); n != 1 || !strings.Contains(msg, strings.TrimPrefix(want.Error(), "projections: ")) {
			t.Errorf("%s: %q names the projections package %d times, want once, with %q", what, msg, n, want)
		}
	}
	for _, cmd := range []string{"serve", "rebuild", "verify"} {
		once(cmd+" with another server_name", []string{cmd, "--data", cfg.DataDir, "--server-name", "localhost"}, projections.ErrServerName)
	}
	setLayoutVersion(t, dbPath, 99)
	for _, cmd := range []string{"serve", "verify"} {
		once(cmd+" of another format", append([]string{cmd}, flags...), projections.ErrFormat)
	}
}

// TestVerify_SaysTheLiveProjectionIsBehind: a service killed before it
// applied the log's last messages leaves a projection behind the log;
// verify said only "N differences", and an operator who checks a data dir
// after a crash rebuilt a projection that a start of the service would
// have caught up (found by a helper's operator walkthrough). It now says
// that the live projection is behind and what to do; once the service
// has caught up, verify finds no difference.
func TestVerify_SaysTheLiveProjectionIsBehind(t *testing.T) {
	m := startMain(t)
	r := testenv.NewRoom("behind", "test")
	m.publishApplied(t, r.ID, r.Setup(alice)...)
	cfg := m.Config
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	// Messages the projection never saw, as if the service had been
	// killed before applying them.
	logOnly := &Main{Config: cfg}
	if err := logOnly.openLog(context.Background()); err != nil {
		t.Fatal(err)
	}
	last := (&testenv.Publisher{JS: logOnly.JS, Subjects: logOnly.publisher().Subjects}).Publish(t, r.Msg(alice, "unseen"))
	logOnly.Close()

	var out bytes.Buffer
	n, err := verifyProjection(context.Background(), cfg, &out)
	if err == nil || !strings.Contains(err.Error(), "has not applied the end of the log") || !strings.Contains(err.Error(), "start scrollback serve") {
		t.Fatalf("verify of a projection behind the log: %d differences, %v, want it said behind\n%s", n, err, out.String())
	}

	m2 := openAgain(t, cfg)
	if _, err := m2.messages(t, r.ID, map[string]any{"admin": true, "wait_for": last[0]}); err != nil {
		t.Fatal(err)
	}
	if err := m2.Close(); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if n, err := verifyProjection(context.Background(), cfg, &out); err != nil || n != 0 {
		t.Fatalf("verify once caught up: %d differences, %v\n%s", n, err, out.String())
	}
}

// TestRebuild_Interrupted: a rebuild or a verify stopped in the middle
// (Ctrl-C, SIGTERM) says it was interrupted and that the projection is
// unchanged, and leaves no partial file. It said "rebuild: context
// canceled" (verify too), and rebuild left scrollback.db.rebuild, as big
// as the work done: on a full disk, where an operator stops a rebuild
// that retries, the disk stayed full (found by a helper's operator
// walkthrough).
func TestRebuild_Interrupted(t *testing.T) {
	cfg, dbPath := stoppedWithRoom(t, "stopped", 50)
	before, err := os.ReadFile(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { buildBatch = nil })
	for what, run := range map[string]func(context.Context) error{
		"rebuild": func(ctx context.Context) error { return rebuildProjection(ctx, cfg, &bytes.Buffer{}) },
		"verify": func(ctx context.Context) error {
			_, err := verifyProjection(ctx, cfg, &bytes.Buffer{})
			return err
		},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		buildBatch = cancel // the signal comes once the first batch is in
		err := run(ctx)
		cancel()
		if err == nil || !strings.HasPrefix(err.Error(), what+": interrupted") {
			t.Errorf("%s stopped in the middle: %v, want it said interrupted", what, err)
		}
		if what == "rebuild" && (err == nil || !strings.Contains(err.Error(), dbPath+" is unchanged")) {
			t.Errorf("rebuild stopped in the middle: %v, want the projection said unchanged", err)
		}
		for _, tmp := range []string{".rebuild", ".verify", ".prev"} {
			if _, err := os.Stat(dbPath + tmp); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s stopped in the middle left %s: %v", what, filepath.Base(dbPath+tmp), err)
			}
		}
		if after, err := os.ReadFile(dbPath); err != nil || !bytes.Equal(before, after) {
			t.Fatalf("%s stopped in the middle changed the projection (%v)", what, err)
		}
	}
}

// TestCompact_SaysTheSizeOnDisk: a compacted file ends where its pages
// end. bbolt grows a file ahead of its pages, so that compact reported a
// file packed into 22 MB of pages as grown from 34 to 39 MB, and ls
// showed as much (found by a helper's operator walkthrough). A compaction
// stopped in the middle leaves the projection as it was and no copy.
func TestCompact_SaysTheSizeOnDisk(t *testing.T) {
	m := startMain(t)
	r := testenv.NewRoom("packed", "test")
	evs := r.Setup(alice)
	for i := range 300 {
		evs = append(evs, r.Msg(alice, strings.Repeat("x", 100)+fmt.Sprint(i)))
	}
	m.publishApplied(t, r.ID, evs...)
	before := m.allPages(t, r.ID)
	cfg := m.Config
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(cfg.DataDir, "scrollback.db")
	orig, err := os.ReadFile(dbPath)
	if err != nil {
		t.Fatal(err)
	}

	stopped, stop := context.WithCancel(context.Background())
	stop()
	err = runCompact(stopped, []string{"--data", cfg.DataDir}, &bytes.Buffer{})
	if err == nil || !strings.HasPrefix(err.Error(), "compact: interrupted") {
		t.Errorf("compact stopped: %v, want it said interrupted", err)
	}
	if _, err := os.Stat(dbPath + ".compact"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("compact stopped: the copy is left behind: %v", err)
	}
	if now, err := os.ReadFile(dbPath); err != nil || !bytes.Equal(orig, now) {
		t.Fatalf("compact stopped: the projection changed (%v)", err)
	}

	var out bytes.Buffer
	if err := runCompact(context.Background(), []string{"--data", cfg.DataDir}, &out); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(dbPath, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var pages int64
	db.View(func(tx *bolt.Tx) error { pages = tx.Size(); return nil })
	db.Close()
	if fi.Size() != pages || !strings.HasSuffix(strings.TrimSpace(out.String()), fmt.Sprintf("-> %d bytes", pages)) {
		t.Fatalf("compacted file: %d bytes, its pages end at %d; compact said %q", fi.Size(), pages, out.String())
	}
	m2 := openAgain(t, cfg)
	if after := m2.allPages(t, r.ID); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("reads differ after compact:\nbefore %v\nafter  %v", before, after)
	}
}

// TestRebuild_KeepsTheFilesOwner: run as root (sudo) on a data dir of the
// service's user, rebuild and compact give the file they put in place
// the owner of the one it replaces. The new file was root's, mode 0600,
// and the service, started again as its user, failed with "permission
// denied" (found by a helper's operator walkthrough). Root only: it gives
// the file to another user.
func TestRebuild_KeepsTheFilesOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to give a file to another user")
	}
	const uid, gid = 65534, 65534 // nobody, nogroup
	m := startMain(t)
	cfg := m.Config
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(cfg.DataDir, "scrollback.db")
	if err := os.Chown(dbPath, uid, gid); err != nil {
		t.Fatal(err)
	}
	owned := func(what string) {
		t.Helper()
		fi, err := os.Stat(dbPath)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != uid || st.Gid != gid {
			t.Errorf("after %s the projection belongs to %d:%d, want the service's user %d:%d", what, st.Uid, st.Gid, uid, gid)
		}
	}
	if err := rebuildProjection(context.Background(), cfg, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	owned("rebuild")
	if err := runCompact(context.Background(), []string{"--data", cfg.DataDir}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	owned("compact")
}

// stoppedWithRoom runs the service until a room named name with n
// messages is applied, stops it, and returns its config and projection
// file, for the maintenance commands to work on.
func stoppedWithRoom(t *testing.T, name string, n int) (Config, string) {
	t.Helper()
	m := startMain(t)
	r := testenv.NewRoom(name, "test")
	evs := r.Setup(alice)
	for i := range n {
		evs = append(evs, r.Msg(alice, fmt.Sprint(i)))
	}
	m.publishApplied(t, r.ID, evs...)
	cfg := m.Config
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	return cfg, filepath.Join(cfg.DataDir, "scrollback.db")
}
