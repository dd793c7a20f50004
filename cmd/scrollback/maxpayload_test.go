package main

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/scrollback/scrollback/testenv"
)

// TestMessages_RepliesFitAnExternalServersMaxPayload: with an external
// NATS server whose max_payload is below the embedded server's 8 MiB
// (NATS's own default is 1 MiB), a page that would not fit ends at the
// last whole event that does, with its end token (CONTRACT.md 4), as on
// the embedded server; it used to be built up to 8 MiB, and its publish
// failed, so the reader timed out.
func TestMessages_RepliesFitAnExternalServersMaxPayload(t *testing.T) {
	m := startMainOnSmallPayloads(t)
	r := testenv.NewRoom("bigpage", "test")
	evs := r.Setup("@a:test")
	body := strings.Repeat("x", 30<<10)
	for range 60 { // about 1.8 MiB of events
		evs = append(evs, r.Msg("@a:test", body))
	}
	seqs := m.publisher().Publish(t, evs...)
	page, err := m.messages(t, r.ID, map[string]any{"admin": true, "limit": 60, "wait_for": seqs[len(seqs)-1]})
	if err != nil {
		t.Fatalf("a page of 1.8 MiB from a server with max_payload 1 MiB: %v", err)
	}
	n := len(chunkIDs(page))
	if n == 0 || n >= 60 || page["end"] == nil {
		t.Fatalf("page of %d events, end %v: want fewer than 60, the most that fit in 1 MiB, and an end token", n, page["end"])
	}
}

// startMainOnSmallPayloads starts a service on an external NATS server
// whose max_payload is NATS's default, 1 MiB.
func startMainOnSmallPayloads(t *testing.T) *Main {
	t.Helper()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
		StoreDir: t.TempDir(), MaxPayload: 1 << 20, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	return startMain(t, func(c *Config) { c.NATS.URL = srv.ClientURL() })
}
