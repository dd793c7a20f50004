package testenv

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
)

// NATS is an embedded nats-server with JetStream and a client connection.
type NATS struct {
	Server *server.Server
	NC     *nats.Conn
	JS     jetstream.JetStream
	URL    string
}

// NewNATS starts nats-server on a random loopback port with its store in
// the test's temp dir; cleanup closes the client and shuts the server
// down, waiting for it.
func NewNATS(tb testing.TB) *NATS {
	tb.Helper()
	return newNATS(tb, bus.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: tb.TempDir()})
}

// NewNATSNoSync is NewNATS without fsync on every write, for benchmarks
// that show what the service's fsync costs.
func NewNATSNoSync(tb testing.TB) *NATS {
	tb.Helper()
	return newNATS(tb, bus.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: tb.TempDir(), NoSync: true})
}

func newNATS(tb testing.TB, opts bus.EmbeddedOptions) *NATS {
	tb.Helper()
	srv, err := bus.StartEmbedded(opts)
	if err != nil {
		tb.Fatalf("start nats-server: %v", err)
	}
	nc, err := nats.Connect(srv.ClientURL(), nats.MaxReconnects(-1))
	if err != nil {
		srv.Shutdown()
		tb.Fatalf("connect: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		nc.Close()
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	return &NATS{Server: srv, NC: nc, JS: js, URL: srv.ClientURL()}
}

// Stream creates the room log stream (as the service would) and returns a
// Log on it.
func (n *NATS) Stream(tb testing.TB, subjects bus.Subjects, name string) *bus.Log {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := bus.EnsureStream(ctx, n.JS, subjects, name); err != nil {
		tb.Fatal(err)
	}
	return &bus.Log{JS: n.JS, Stream: name, Subjects: subjects}
}

// HoldRequests serves an endpoint whose handler waits until release is
// called (or the test ends), with workers workers (0: bus's default) and
// load counting its requests, sends it n requests, and waits until the
// service holds them all: past workers, the rest wait for a worker.
func (n *NATS) HoldRequests(t testing.TB, load *bus.Load, requests, workers int) (release func()) {
	t.Helper()
	gate := make(chan struct{})
	subject := "held." + nats.NewInbox()[len(nats.InboxPrefix):] // unique on a shared connection
	svc, err := bus.Serve(n.NC, bus.ServiceOptions{Name: "held", Version: "0.0.1", Load: load, Workers: workers}, []bus.Endpoint{{
		Name: "hold", Subject: subject,
		Handler: func(ctx context.Context, _ string, _ []byte) ([]byte, error) {
			<-gate
			return []byte{0x80}, nil
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var once sync.Once
	release = func() { once.Do(func() { close(gate); wg.Wait(); _ = svc.Stop() }) }
	// Before the wait, which may fail the test: the held requests must
	// go at its end all the same.
	t.Cleanup(release)
	for range requests {
		wg.Go(func() { _, _ = n.NC.Request(subject, nil, 10*time.Second) })
	}
	WaitFor(t, 5*time.Second, "the service to hold the requests", func() bool { return load.Requests() == requests })
	return release
}
