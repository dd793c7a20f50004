package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/testenv"
)

// buildBinary builds cmd/scrollback once per test run.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "scrollback")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// serveProcess runs `scrollback serve -c cfg` and waits for /health.
func serveProcess(t *testing.T, bin, cfg, httpAddr string, log *bytes.Buffer) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, "serve", "-c", cfg)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 20*time.Second, "/health", func() bool {
		resp, err := http.Get("http://" + httpAddr + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return cmd
}

// TestCrash_Kill9DuringIngest kills the service with SIGKILL while events
// stream in, starts it again, and checks that every acknowledged event is
// readable exactly once and in order, and that the projection equals a
// rebuild from the log (scrollback verify).
func TestCrash_Kill9DuringIngest(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	natsAddr, httpAddr := freePort(t), freePort(t)
	cfg := filepath.Join(dir, "scrollback.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("server_name: test\ndata_dir: %s\nnats: {listen: %q}\nhttp: {listen: %q}\nauth: {tokens: [{token: t-admin, user_id: \"@admin:test\", admin: true}]}\n",
		filepath.Join(dir, "data"), natsAddr, httpAddr)), 0o600)
	var log bytes.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("service output:\n%s", log.String())
		}
	})
	proc := serveProcess(t, bin, cfg, httpAddr, &log)

	nc, err := nats.Connect("nats://"+natsAddr, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	subjects := bus.Subjects{Prefix: "sb"}
	room := testenv.NewRoom("crashy", "test")
	evs := room.Setup(alice)
	for i := range 3000 {
		evs = append(evs, room.Msg(alice, fmt.Sprint(i)))
	}
	// Publish synchronously with retries (a homeserver retries until it
	// gets an ack); kill -9 the service a third of the way through.
	var last uint64
	for i, ev := range evs {
		if i == len(evs)/3 {
			proc.Process.Kill()
			proc.Wait()
			proc = serveProcess(t, bin, cfg, httpAddr, &log)
		}
		data, _ := bus.Encode(map[string]any(ev))
		testenv.WaitFor(t, 20*time.Second, "an ack for "+ev.ID(), func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			msg := &nats.Msg{Subject: subjects.Room(room.ID, "event"), Data: data, Header: nats.Header{}}
			msg.Header.Set(jetstream.MsgIDHeader, ev.ID())
			ack, err := js.PublishMsg(ctx, msg)
			if err != nil {
				return false
			}
			last = max(last, ack.Sequence)
			return true
		})
	}
	r := &bus.Requester{NC: nc, Timeout: 15 * time.Second}
	var got []string
	from := ""
	for {
		req := map[string]any{"admin": true, "dir": "f", "limit": 1000, "wait_for": last}
		if from != "" {
			req["from"] = from
		}
		data, err := r.Request(context.Background(), subjects.APIRoom(room.ID, "messages"), req)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := bus.DecodeMap(data, bus.DefaultLimits)
		got = append(got, chunkIDs(p)...)
		end, ok := p["end"].(string)
		if !ok {
			break
		}
		from = end
	}
	if !same(got, ids(evs)) {
		t.Fatalf("after kill -9: %d events read, want %d, each once and in order", len(got), len(evs))
	}
	proc.Process.Signal(syscall.SIGTERM)
	if err := proc.Wait(); err != nil {
		t.Fatalf("SIGTERM: the service did not stop cleanly: %v", err)
	}
	out, err := exec.Command(bin, "verify", "-c", cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("scrollback verify: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
