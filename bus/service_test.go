package bus_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/testenv"
)

// TestServe_ReleaseAfterTheReplyIsSent: an endpoint that builds each
// reply in a reused buffer and gets it back through Release, under many
// concurrent requests, sends every reply intact: Release comes only once
// the reply's bytes are copied out, and then exactly once per reply.
func TestServe_ReleaseAfterTheReplyIsSent(t *testing.T) {
	env := testenv.NewNATS(t)
	var (
		mu       sync.Mutex
		free     [][]byte
		out      = map[*byte]bool{} // buffers handed out and not yet released
		released int
	)
	svc, err := bus.Serve(env.NC, bus.ServiceOptions{Name: "pooled", Version: "0.0.1"}, []bus.Endpoint{{
		Name: "echo", Subject: "pooled.echo",
		Handler: func(ctx context.Context, _ string, data []byte) ([]byte, error) {
			mu.Lock()
			var b []byte
			if n := len(free); n > 0 {
				b, free = free[n-1][:0], free[:n-1]
			} else {
				b = make([]byte, 0, 64<<10)
			}
			out[unsafeFirst(b)] = true
			mu.Unlock()
			for range 1000 {
				b = append(b, data...)
			}
			return b, nil
		},
		Release: func(b []byte) {
			mu.Lock()
			defer mu.Unlock()
			if !out[unsafeFirst(b)] {
				t.Errorf("a buffer released twice, or never handed out")
			}
			delete(out, unsafeFirst(b))
			released++
			// Overwrite it at once: a reply still being sent would show it.
			b = b[:cap(b)]
			for i := range b {
				b[i] = 'X'
			}
			free = append(free, b)
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	const clients, each = 16, 50
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for i := range each {
				req := fmt.Appendf(nil, "<%d.%d>", c, i)
				msg, err := env.NC.Request("pooled.echo", req, 10*time.Second)
				if err != nil {
					t.Error(err)
					return
				}
				if want := bytes.Repeat(req, 1000); !bytes.Equal(msg.Data, want) {
					t.Errorf("reply to %s corrupted (%d bytes, starts %q)", req, len(msg.Data), msg.Data[:min(20, len(msg.Data))])
					return
				}
			}
		})
	}
	wg.Wait()
	testenv.WaitFor(t, 5*time.Second, "every reply released", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return released == clients*each
	})
}

// unsafeFirst identifies a buffer by its backing array.
func unsafeFirst(b []byte) *byte { return &b[:1][0] }
