package main

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/testenv"
)

// TestCrash_Kill9DuringIngest kills the service with SIGKILL while events
// stream in, starts it again, and checks that every acknowledged event is
// readable exactly once and in order, and that the projection equals a
// rebuild from the log (scrollback verify). The machinery, and the soak
// mode (a random kill point each round), are in fault_helpers_test.go.
func TestCrash_Kill9DuringIngest(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	svc := startService(t, serviceConfig{})
	_, js := svc.connect()
	nc, _ := svc.connect()
	var counts faultCounts
	rounds(t, &counts, func(n int, rng *rand.Rand) {
		room := testenv.NewRoom(fmt.Sprintf("crashy%d", n), "test")
		evs := room.Setup(alice)
		for i := range 3000 {
			evs = append(evs, room.Msg(alice, fmt.Sprint(i)))
		}
		// Publish synchronously with retries (a homeserver retries until
		// it gets an ack); kill -9 the service a third of the way through.
		kill := len(evs) / 3
		if soakBudget(t) > 0 {
			kill = 1 + rng.IntN(len(evs)-1)
		}
		var last uint64
		for i, ev := range evs {
			if i == kill {
				svc.restart()
				counts.killed("ingest", true)
			}
			last = max(last, publishOne(t, js, faultSubjects.Room(room.ID, commands.KindEvent), ev.ID(), encodeEvent(t, ev)))
		}
		counts.events += wantRoom(t, nc, room.ID, last, ids(evs), "after kill -9")
		svc.verify(soakBudget(t) > 0)
	})
}

// TestServe_NewProjectionIsBuiltWithoutSync: on a new data dir the
// service builds its projection without fsync (projections/build.go),
// marked as such on disk, until it has caught up with the log; then the
// file is synced and stays synced across restarts.
func TestServe_NewProjectionIsBuiltWithoutSync(t *testing.T) {
	if _, err := os.Stat("/proc/sys/kernel/random/boot_id"); err != nil {
		t.Skip("no boot ID here: new projections are synced from the start")
	}
	// The build starts as the file is opened, and ends once the file has
	// caught up with the log: at once on this empty log (it used to wait
	// for a first message), so it is seen in the log lines.
	var logs testenv.Buffer
	m := startMainWith(t, &Main{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	marker := filepath.Join(m.Config.DataDir, "scrollback.db.building")
	if !strings.Contains(logs.String(), "a new projection: building it from the log without fsync") {
		t.Fatalf("a new data dir's projection is built with fsync:\n%s", logs.String())
	}
	testenv.WaitFor(t, 10*time.Second, "the build over the empty log to end", func() bool {
		return strings.Contains(logs.String(), "the new file has caught up with the log") && !m.Store.Building()
	})
	r := testenv.NewRoom("built", "test")
	seqs := m.publisher().Publish(t, r.Setup(alice)...)
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "the build to end", func() bool { return !m.Store.Building() })
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("marker after the build: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	m2 := openAgain(t, m.Config)
	if m2.Store.Building() {
		t.Fatal("a built projection is written without fsync again after a restart")
	}
}
