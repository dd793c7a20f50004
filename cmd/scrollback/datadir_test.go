package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
