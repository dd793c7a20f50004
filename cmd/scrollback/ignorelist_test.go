package main

import (
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/testenv"
)

// failingIgnoreList answers sb.hs.ignored_users with an error reply: a
// homeserver that cannot load the user's account data.
func failingIgnoreList(tb testing.TB, m *Main) {
	tb.Helper()
	sub, err := m.NC.Subscribe(bus.Subjects{Prefix: m.Config.NATS.SubjectPrefix}.HS("ignored_users"), func(msg *nats.Msg) {
		h := nats.Header{}
		h.Set("Nats-Service-Error-Code", "500")
		h.Set("Nats-Service-Error", "database unavailable")
		body, _ := bus.Encode(map[string]any{"errcode": "M_UNKNOWN", "error": "database unavailable"})
		msg.RespondMsg(&nats.Msg{Header: h, Data: body})
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sub.Unsubscribe() })
	if err := m.NC.Flush(); err != nil { // before the bridge asks, on its own connection
		tb.Fatal(err)
	}
}

// readRequests counts the read requests that reach the service
// (sb.api.room.*.messages), seen by a subscriber of its own.
type readRequests struct {
	m   *Main
	sub *nats.Subscription
}

func countReads(tb testing.TB, m *Main) *readRequests {
	tb.Helper()
	sub, err := m.NC.SubscribeSync(m.Config.NATS.SubjectPrefix + ".api.room.*.messages")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sub.Unsubscribe() })
	if err := m.NC.Flush(); err != nil {
		tb.Fatal(err)
	}
	return &readRequests{m: m, sub: sub}
}

// take returns the requests seen since the last call. The server wrote
// each to this connection before the service's reply to it: a flush,
// after the HTTP answer, has them all in.
func (r *readRequests) take(tb testing.TB) []map[string]any {
	tb.Helper()
	if err := r.m.NC.Flush(); err != nil {
		tb.Fatal(err)
	}
	n, _, err := r.sub.Pending()
	if err != nil {
		tb.Fatal(err)
	}
	out := make([]map[string]any, n)
	for i := range out {
		msg, err := r.sub.NextMsg(time.Second)
		if err != nil {
			tb.Fatal(err)
		}
		if out[i], err = bus.DecodeMap(msg.Data, bus.RequestLimits); err != nil {
			tb.Fatal(err)
		}
	}
	return out
}

// TestHTTP_MessagesAnswerWithoutAnIgnoreList: a homeserver that answers
// sb.hs.ignored_users with an error is an expected condition in which a
// read still answers (CONTRACT.md section 5), as if the reader ignored
// nobody; the reader's access is the service's to check, so one who is
// not in the room gets Synapse's 403. The bridge answered both 503,
// before the service was asked anything.
func TestHTTP_MessagesAnswerWithoutAnIgnoreList(t *testing.T) {
	m := startMain(t)
	failingIgnoreList(t, m)
	r := testenv.NewRoom("ignorelist", "test")
	m.publishApplied(t, r.ID, append(r.Setup(alice), r.Msg(alice, "hello"))...)
	reads := countReads(t, m)
	msgs := "/_matrix/client/v3/rooms/" + url.PathEscape(r.ID) + "/messages?dir=b&limit=30"

	st, body := m.do(t, "GET", msgs, "tok-bob", "")
	wantErr(t, st, body, 403, "M_FORBIDDEN", "User @bob:test not in room "+r.ID+", and room previews are disabled")
	st, body = m.do(t, "GET", msgs, "tok-alice", "")
	if chunk, _ := body["chunk"].([]any); st != 200 || len(chunk) == 0 {
		t.Fatalf("alice's read while the homeserver fails: %d %v", st, body)
	}
	if got := reads.take(t); len(got) != 2 {
		t.Errorf("two reads sent %d requests to the service, want 2", len(got))
	}
}
