package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/testenv"
)

// TestFlood_RequestsStayBounded runs the built service and offers its
// read endpoint far more requests, each with a filter near its size
// limit, than its workers can answer, without waiting for replies. The
// service process's memory must stay bounded (requests wait in a bounded
// subscription buffer and the excess is dropped), it must answer an
// ordinary read once the flood is through, and a flood of malformed log
// messages must neither block the room nor loop.
func TestFlood_RequestsStayBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and floods the binary")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	natsAddr, httpAddr := freePort(t), freePort(t)
	cfg := filepath.Join(dir, "scrollback.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("server_name: test\ndata_dir: %s\nnats: {listen: %q}\nhttp: {listen: %q}\n",
		filepath.Join(dir, "data"), natsAddr, httpAddr)), 0o600)
	var log bytes.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("service output:\n%s", log.String())
		}
	})
	proc := serveProcess(t, bin, cfg, httpAddr, &log)
	defer func() { proc.Process.Signal(syscall.SIGTERM); proc.Wait() }()

	nc, err := nats.Connect("nats://"+natsAddr, nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	pub := &testenv.Publisher{JS: js, Subjects: bus.Subjects{Prefix: "sb"}}
	room := testenv.NewRoom("flooded", "test")
	evs := room.Setup(alice)
	for i := range 200 {
		evs = append(evs, room.Msg(alice, fmt.Sprint(i)))
	}
	seqs := pub.Publish(t, evs...)
	r := &bus.Requester{NC: nc, Timeout: 15 * time.Second}
	subj := bus.Subjects{Prefix: "sb"}.APIRoom(room.ID, "messages")
	read := func(req map[string]any) (map[string]any, error) {
		data, err := r.Request(context.Background(), subj, req)
		if err != nil {
			return nil, err
		}
		return bus.DecodeMap(data, bus.DefaultLimits)
	}
	if _, err := read(map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	base := procRSS(t, proc.Process.Pid)

	// The flood comes from a connection of its own, as an attacker's would.
	flood, err := nats.Connect("nats://" + natsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()
	senders := make([]any, 0, 100)
	for i := range cap(senders) {
		senders = append(senders, fmt.Sprintf("@%s%d:test", strings.Repeat("s", 70), i))
	}
	payload, err := bus.Encode(map[string]any{"user_id": alice, "dir": "b", "limit": 50,
		"filter": map[string]any{"not_senders": senders}})
	if err != nil {
		t.Fatal(err)
	}
	const n = 60_000
	var peak atomic.Int64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			peak.Store(max(peak.Load(), procRSS(t, proc.Process.Pid)))
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	inbox := nats.NewInbox()
	for range n {
		if err := flood.PublishRequest(subj, inbox, payload); err != nil {
			t.Fatal(err)
		}
	}
	if err := flood.Flush(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	testenv.WaitFor(t, 60*time.Second, "an ordinary read to be answered", func() bool {
		_, err := read(map[string]any{"user_id": alice, "dir": "b", "limit": 10})
		return err == nil
	})
	answered := time.Since(start)
	close(stop)
	<-done
	offered := int64(n * len(payload))
	t.Logf("offered %d requests of %d bytes (%d MiB); service RSS %d MiB before, peak %d MiB; an ordinary read sent after the flood was answered in %v",
		n, len(payload), offered>>20, base>>20, peak.Load()>>20, answered.Round(time.Millisecond))
	if grew := peak.Load() - base; grew > 256<<20 {
		t.Fatalf("the service grew by %d MiB under a flood of %d MiB: it buffers without bound", grew>>20, offered>>20)
	}

	// Malformed log messages: each is dead-lettered once, and the room
	// goes on.
	for i := range 2000 {
		pub.PublishRaw(t, bus.Subjects{Prefix: "sb"}.Room(room.ID, "event"), []byte{0xc1, byte(i)})
	}
	after := room.Msg(alice, "after the poison")
	last := pub.Publish(t, after)
	p, err := read(map[string]any{"user_id": alice, "dir": "b", "limit": 1, "wait_for": last[0]})
	if err != nil {
		t.Fatal(err)
	}
	if ids := chunkIDs(p); len(ids) != 1 || ids[0] != after.ID() {
		t.Fatalf("after 2000 poison messages the room reads %v", ids)
	}
}

// procRSS is a process's resident memory (VmRSS) in bytes.
func procRSS(t *testing.T, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0 // the process is gone; the checks after the flood say so
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
