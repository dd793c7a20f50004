package main

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/testenv"
)

// roleConn connects to the embedded server as a user and collects the
// permission violations the server reports.
type roleConn struct {
	nc   *nats.Conn
	mu   sync.Mutex
	errs []string
}

func connectAs(t *testing.T, m *Main, user, password string) *roleConn {
	t.Helper()
	rc := &roleConn{}
	nc, err := nats.Connect(m.NATSServer.ClientURL(), nats.UserInfo(user, password), nats.CustomInboxPrefix(bus.UserInbox(user)),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			rc.mu.Lock()
			rc.errs = append(rc.errs, err.Error())
			rc.mu.Unlock()
		}))
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	rc.nc = nc
	return rc
}

func (rc *roleConn) violation(t *testing.T, what string) {
	t.Helper()
	testenv.WaitFor(t, 5*time.Second, what+" to be refused", func() bool {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		for _, e := range rc.errs {
			if strings.Contains(strings.ToLower(e), "permissions violation") {
				return true
			}
		}
		return false
	})
}

func TestNATSAuth_RolesStayInTheirLane(t *testing.T) {
	const pw = "correct horse battery"
	m := startMain(t, func(c *Config) {
		c.NATS.Listen = "127.0.0.1:0"
		c.NATS.Auth.Users = []NATSUserConfig{
			{User: "hs", Password: pw, Role: "homeserver"},
			{User: "fed", Password: pw, Role: "federation"},
			{User: "tool", Password: pw, Role: "client"},
		}
	})
	subjects := bus.Subjects{Prefix: "sb"}
	room := testenv.NewRoom("locked", "test")

	t.Run("anonymous clients are refused", func(t *testing.T) {
		if nc, err := nats.Connect(m.NATSServer.ClientURL()); err == nil {
			nc.Close()
			t.Fatal("connected without credentials")
		}
	})
	t.Run("homeserver publishes events, not task updates", func(t *testing.T) {
		hs := connectAs(t, m, "hs", pw)
		js, _ := jetstream.New(hs.nc)
		seqs := (&testenv.Publisher{JS: js, Subjects: subjects}).Publish(t, room.Setup(alice)...)
		if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		data, _ := bus.Encode(map[string]any{"task_id": "x", "status": "complete"})
		if _, err := js.Publish(ctx, subjects.Room(room.ID, "task"), data); err == nil {
			t.Fatal("a homeserver published a task update")
		}
		hs.violation(t, "a task update")
		// Nor may it ask the service's API.
		if _, err := hs.nc.Request(subjects.APIRoom(room.ID, "messages"), data, 500*time.Millisecond); err == nil {
			t.Fatal("a homeserver used the API")
		}
	})
	t.Run("federation answers backfill only", func(t *testing.T) {
		fed := connectAs(t, m, "fed", pw)
		sub, err := fed.nc.SubscribeSync(subjects.HS("leave"))
		if err == nil {
			fed.nc.Flush()
			sub.Unsubscribe()
		}
		fed.violation(t, "a subscription to sb.hs.leave")
		if _, err := fed.nc.SubscribeSync(subjects.Backfill()); err != nil {
			t.Fatal(err)
		}
		if err := fed.nc.Publish(subjects.Room(room.ID, "event"), []byte{0x80}); err != nil {
			t.Fatal(err)
		}
		fed.violation(t, "an event published by a federation worker")
	})
	t.Run("client reads through the API, cannot write the log", func(t *testing.T) {
		tool := connectAs(t, m, "tool", pw)
		r := &bus.Requester{NC: tool.nc, Timeout: 5 * time.Second}
		data, err := r.Request(context.Background(), subjects.APIRoom(room.ID, "messages"), map[string]any{"admin": true})
		if err != nil {
			t.Fatalf("client request: %v", err)
		}
		if _, err := bus.DecodeMap(data, bus.DefaultLimits); err != nil {
			t.Fatal(err)
		}
		tool.nc.Publish(subjects.Room(room.ID, "cmd"), []byte{0x80})
		tool.violation(t, "a command published by a client")
	})
	t.Run("client cannot publish through the service's replies", func(t *testing.T) {
		// The service replies with all rights: a reply subject of the
		// requester's choosing made it purge the whole log for a client
		// (JetStream takes a MessagePack body for a purge of everything).
		seqs := m.publisher().Publish(t, testenv.NewRoom("purgeable", "test").Setup(alice)...)
		if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
			t.Fatal(err)
		}
		stream, err := m.JS.Stream(context.Background(), m.Config.NATS.Stream)
		if err != nil {
			t.Fatal(err)
		}
		before, err := stream.Info(context.Background())
		if err != nil || before.State.Msgs == 0 {
			t.Fatalf("the log before: %+v, %v", before, err)
		}
		tool := connectAs(t, m, "tool", pw)
		data, _ := bus.Encode(map[string]any{"admin": true})
		if err := tool.nc.PublishRequest(subjects.APIRoom(room.ID, "messages"), "$JS.API.STREAM.PURGE."+m.Config.NATS.Stream, data); err != nil {
			t.Fatal(err)
		}
		// micro hands an endpoint's requests over one at a time, in
		// order: once a second request is answered, the first was
		// dropped, or (the bug) given to a worker whose reply may still
		// be on its way; a review's 5 runs of the bug all showed it here.
		r := &bus.Requester{NC: tool.nc, Timeout: 5 * time.Second}
		if _, err := r.Request(context.Background(), subjects.APIRoom(room.ID, "messages"), map[string]any{"admin": true}); err != nil {
			t.Fatal(err)
		}
		after, err := stream.Info(context.Background())
		if err != nil || after.State.Msgs != before.State.Msgs {
			t.Fatalf("the log held %d messages, %d after a client's request with the purge API as its reply subject (%v)", before.State.Msgs, after.State.Msgs, err)
		}
	})
	t.Run("no user reads another's inbox", func(t *testing.T) {
		// Replies and the service's own deliveries of the log go to
		// inboxes: a user that could subscribe to _INBOX.> would read
		// every room's history and every other user's pages.
		fed := connectAs(t, m, "fed", pw)
		if sub, err := fed.nc.SubscribeSync("_INBOX.>"); err == nil {
			fed.nc.Flush()
			sub.Unsubscribe()
		}
		fed.violation(t, "a subscription to every inbox")
		tool := connectAs(t, m, "tool", pw)
		if sub, err := tool.nc.SubscribeSync(bus.UserInbox("hs") + ".>"); err == nil {
			tool.nc.Flush()
			sub.Unsubscribe()
		}
		tool.violation(t, "a subscription to another user's inbox")
	})
	t.Run("a client connected by URL reads and pings, and asks no worker", func(t *testing.T) {
		// bus.Connect takes the user's inbox from the URL's user, with
		// or without a scheme.
		for _, scheme := range []string{"nats://", ""} {
			url := strings.Replace(m.NATSServer.ClientURL(), "nats://", scheme+"tool:"+strings.ReplaceAll(pw, " ", "%20")+"@", 1)
			nc, err := bus.Connect(url, "", "bridge")
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			r := &bus.Requester{NC: nc, Timeout: 5 * time.Second}
			if _, err := r.Request(context.Background(), subjects.APIRoom(room.ID, "messages"), map[string]any{"admin": true}); err != nil {
				t.Fatalf("a page from a client connected by %q: %v", url, err)
			}
			if _, err := r.Request(context.Background(), subjects.API("ping"), map[string]any{}); err != nil {
				t.Fatalf("the bridge's /health ping from a client: %v", err)
			}
		}
		// A worker answers on whatever reply subject a request names,
		// and micro's own $SRV endpoints too: a client that could ask
		// them could publish anywhere through them.
		tool := connectAs(t, m, "tool", pw)
		tool.nc.PublishRequest(subjects.HS("whoami"), subjects.Room(room.ID, "task"), []byte{0x80})
		tool.violation(t, "a request to a homeserver worker")
		tool = connectAs(t, m, "tool", pw)
		tool.nc.PublishRequest("$SRV.PING."+bus.ServiceName, subjects.Room(room.ID, "task"), nil)
		tool.violation(t, "a ping of micro's own endpoint")
	})
	t.Run("scrollback seed publishes as a homeserver user", func(t *testing.T) {
		// JetStream's acks come to the publisher's inbox, which a user
		// may only have under its own prefix.
		url := strings.Replace(m.NATSServer.ClientURL(), "nats://", "nats://hs:"+strings.ReplaceAll(pw, " ", "%20")+"@", 1)
		var out strings.Builder
		if err := runSeed(context.Background(), []string{"--nats-url", url, "--rooms", "1", "--messages", "3", "--timeout", "10s"}, &out); err != nil {
			t.Fatalf("seed as a homeserver user: %v\n%s", err, out.String())
		}
	})
	t.Run("config refuses weak or unknown roles", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.NATS.Auth.Users = []NATSUserConfig{{User: "x", Password: "short", Role: "god"}, {User: "scrollback", Password: pw, Role: "client"},
			{User: "hs.1", Password: pw, Role: "homeserver"}} // a name with a dot would be two tokens of its inbox
		err := cfg.Validate()
		for _, want := range []string{"password: must be at least 12", "is not one of homeserver", "reserved for scrollback", `users[2].user: "hs.1": use 1 to 64 letters`} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("Validate() = %v, want it to mention %q", err, want)
			}
		}
	})
}
