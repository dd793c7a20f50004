package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/testenv"
)

const (
	alice = "@alice:test"
	bob   = "@bob:test"
)

// startMain runs a whole scrollback in-process on a temp data dir, with an
// in-process NATS server and the HTTP bridge on a random port.
func startMain(tb testing.TB, edit ...func(*Config)) *Main {
	tb.Helper()
	return startMainAt(tb, nil, edit...)
}

// openAgain opens a service on cfg, the data dir of one the test has
// closed (a restart), and closes it when the test ends.
func openAgain(tb testing.TB, cfg Config) *Main {
	tb.Helper()
	m := &Main{Config: cfg}
	if err := m.Open(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// startMainAt is startMain with the service's clock (nil: time.Now).
func startMainAt(tb testing.TB, now func() time.Time, edit ...func(*Config)) *Main {
	tb.Helper()
	return startMainWith(tb, &Main{Now: now}, edit...)
}

// startMainWith is startMain for a Main whose clock, test hooks or logger
// the test has set.
func startMainWith(tb testing.TB, m *Main, edit ...func(*Config)) *Main {
	tb.Helper()
	cfg := DefaultConfig()
	cfg.ServerName = "test"
	cfg.DataDir = filepath.Join(tb.TempDir(), "data")
	cfg.NATS.Listen = ""
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.Auth.Tokens = []TokenConfig{
		{Token: "tok-alice", UserID: alice},
		{Token: "tok-bob", UserID: bob},
		{Token: "tok-admin", UserID: "@admin:test", Admin: true},
	}
	for _, e := range edit {
		e(&cfg)
	}
	m.Config = cfg
	if m.Logger == nil {
		m.Logger = slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if err := m.Open(context.Background()); err != nil {
		m.Close()
		tb.Fatalf("open: %v", err)
	}
	tb.Cleanup(func() {
		if err := m.Close(); err != nil {
			tb.Errorf("close: %v", err)
		}
	})
	return m
}

func (m *Main) publisher() *testenv.Publisher {
	return &testenv.Publisher{JS: m.JS, Subjects: bus.Subjects{Prefix: m.Config.NATS.SubjectPrefix}}
}

// messages reads a page over NATS.
func (m *Main) messages(tb testing.TB, roomID string, req map[string]any) (map[string]any, error) {
	tb.Helper()
	r := &bus.Requester{NC: m.NC, Timeout: 15 * time.Second}
	subj := bus.Subjects{Prefix: m.Config.NATS.SubjectPrefix}.APIRoom(roomID, "messages")
	data, err := r.Request(context.Background(), subj, req)
	if err != nil {
		return nil, err
	}
	out, err := bus.DecodeMap(data, bus.DefaultLimits)
	if err != nil {
		tb.Fatal(err)
	}
	return out, nil
}

// publishApplied publishes evs, all of roomID, and waits until the
// service has applied them (a read with wait_for, which waits for the
// room's own subjects only).
func (m *Main) publishApplied(tb testing.TB, roomID string, evs ...testenv.Event) []uint64 {
	tb.Helper()
	seqs := m.publisher().Publish(tb, evs...)
	if _, err := m.messages(tb, roomID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		tb.Fatal(err)
	}
	return seqs
}

func chunkIDs(page map[string]any) []string {
	var ids []string
	chunk, _ := page["chunk"].([]any)
	for _, c := range chunk {
		ev, _ := c.(map[string]any)
		id, _ := ev["event_id"].(string)
		ids = append(ids, id)
	}
	return ids
}

func TestMain_IngestAndPaginate(t *testing.T) {
	m := startMain(t)
	room := testenv.NewRoom("r1", "test")
	evs := room.Setup(alice, bob)
	for i := range 25 {
		evs = append(evs, room.Msg(bob, fmt.Sprintf("m%d", i)))
	}
	seqs := m.publisher().Publish(t, evs...)
	last := seqs[len(seqs)-1]

	var all []string
	from := ""
	for i := 0; i < 20; i++ {
		req := map[string]any{"user_id": alice, "dir": "b", "limit": 7, "wait_for": last}
		if from != "" {
			req["from"] = from
		}
		p, err := m.messages(t, room.ID, req)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, chunkIDs(p)...)
		end, ok := p["end"].(string)
		if !ok {
			if len(chunkIDs(p)) != 0 {
				t.Fatalf("page with events and no end: %v", p)
			}
			break
		}
		from = end
	}
	if len(all) != len(evs) {
		t.Fatalf("got %d events, want %d: %v", len(all), len(evs), all)
	}
	for i, id := range all {
		if want := evs[len(evs)-1-i].ID(); id != want {
			t.Fatalf("event %d = %s, want %s", i, id, want)
		}
	}

	// The same over HTTP.
	u := "http://" + m.HTTPAddr + "/_matrix/client/v3/rooms/" + url.PathEscape(room.ID) + "/messages?dir=b&limit=3"
	req, _ := http.NewRequest("GET", u, nil)
	req.Header.Set("Authorization", "Bearer tok-alice")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("http %d: %s", resp.StatusCode, body)
	}
	var page map[string]any
	if err := json.Unmarshal(body, &page); err != nil {
		t.Fatal(err)
	}
	if got := chunkIDs(page); len(got) != 3 || got[0] != evs[len(evs)-1].ID() {
		t.Fatalf("http page %v", got)
	}
	t.Logf("%s", body[:min(len(body), 600)])
}

func TestMain_NonMemberForbidden(t *testing.T) {
	m := startMain(t)
	room := testenv.NewRoom("r2", "test")
	seqs := m.publisher().Publish(t, room.Setup(alice)...)
	_, err := m.messages(t, room.ID, map[string]any{"user_id": bob, "wait_for": seqs[len(seqs)-1]})
	var e *commands.Error
	if !asErr(err, &e) || e.Status != 403 || e.Message != "User @bob:test not in room !r2:test, and room previews are disabled" {
		t.Fatalf("err = %v", err)
	}
}

// TestMain_CloseWithAConnectionThatSentNothing: an HTTP client's
// transport dials connections it may never send a request on (a dial
// raced by a connection that became free). net/http's Shutdown waits
// for such a connection until it is 5 s old; the stop gave it 5 s in
// all and failed with "context deadline exceeded" (TestRunBench_External
// did, under load). Close must return without an error.
func TestMain_CloseWithAConnectionThatSentNothing(t *testing.T) {
	m := startMain(t)
	conn, err := net.Dial("tcp", m.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	testenv.WaitFor(t, 5*time.Second, "the bridge to accept the connection", func() bool {
		_, err := http.Get("http://" + m.HTTPAddr + "/health")
		return err == nil
	})
	if err := m.Close(); err != nil {
		t.Fatalf("Close with a connection that sent nothing: %v", err)
	}
}
