package main

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/testenv"
)

// TestAPI_ErrorReplyEchoingAHugeIDIsSent (found by a review helper):
// CONTRACT.md section 4 answers every request, a bad one with the error
// headers and a {errcode, error} body. An error text that echoes a
// request's ID ("delete id '<id>' not found", "Could not find event <id>")
// carried the ID twice, in the Nats-Service-Error header and in the body: a
// 5 MiB ID (a request well under max_payload) made a 10 MiB reply that NATS
// refused, and the requester got no answer at all, only its timeout.
func TestAPI_ErrorReplyEchoingAHugeIDIsSent(t *testing.T) {
	m := startMain(t)
	room := testenv.NewRoom("hugeid", "test")
	m.publisher().Publish(t, append(room.Setup(alice), room.Msg(alice, "x"))...)
	s := bus.Subjects{Prefix: m.Config.NATS.SubjectPrefix}
	long := strings.Repeat("a", 5<<20)
	for _, tt := range []struct {
		subject string
		req     map[string]any
		status  string
	}{
		{s.API("delete_status"), map[string]any{"delete_id": long}, "404"},
		{s.API("purge_status"), map[string]any{"purge_id": long}, "404"},
		{s.APIRoom(room.ID, "purge_history"), map[string]any{"event_id": long}, "404"},
	} {
		data, err := msgpack.Marshal(tt.req)
		if err != nil {
			t.Fatal(err)
		}
		msg, err := m.NC.RequestMsg(&nats.Msg{Subject: tt.subject, Data: data}, 5*time.Second)
		if err != nil {
			t.Errorf("%s with a %d-byte ID: no answer (%v), want a %s error reply", tt.subject, len(long), err, tt.status)
			continue
		}
		if got := msg.Header.Get("Nats-Service-Error-Code"); got != tt.status {
			t.Errorf("%s: Nats-Service-Error-Code %q, want %s", tt.subject, got, tt.status)
		}
		var body map[string]any
		if err := msgpack.Unmarshal(msg.Data, &body); err != nil || body["errcode"] != "M_NOT_FOUND" {
			t.Errorf("%s: body %.200v (%v), want errcode M_NOT_FOUND", tt.subject, body, err)
		}
		if h, e := msg.Header.Get("Nats-Service-Error"), body["error"]; h != e {
			t.Errorf("%s: Nats-Service-Error header (%d bytes) differs from the body's error (%d bytes)", tt.subject, len(h), len(e.(string)))
		}
	}
}
