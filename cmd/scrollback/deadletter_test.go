package main

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/testenv"
)

// TestDeadLetter_Announced: a malformed message is announced on
// sb.deadletter.<kind>, the kind being its subject's last token, as
// {seq, room_id, reason} (README, "Publishing").
func TestDeadLetter_Announced(t *testing.T) {
	m := startMain(t)
	subjects := bus.Subjects{Prefix: m.Config.NATS.SubjectPrefix}
	got := make(chan *nats.Msg, 1)
	sub, err := m.NC.ChanSubscribe(subjects.DeadLetter(">"), got)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := m.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	r := testenv.NewRoom("deadletter", "test")
	ev := r.Msg("@a:test", "no depth")
	delete(ev, "depth")
	seq := m.publisher().Publish(t, ev)[0]
	select {
	case msg := <-got:
		if msg.Subject != subjects.DeadLetter("event") {
			t.Errorf("announced on %s, want %s", msg.Subject, subjects.DeadLetter("event"))
		}
		d, err := bus.DecodeMap(msg.Data, bus.DefaultLimits)
		if err != nil {
			t.Fatal(err)
		}
		keys := slices.Sorted(maps.Keys(d))
		if n, _ := commands.AsInt(d["seq"]); fmt.Sprint(keys) != "[reason room_id seq]" || n != int64(seq) || d["room_id"] != r.ID || !strings.Contains(fmt.Sprint(d["reason"]), "depth") {
			t.Errorf("announcement %v, want {seq: %d, room_id: %s, reason: about the depth}", d, seq, r.ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no dead-letter announcement")
	}
}

// TestDeadLetter_AnUnknownKindIsLoggedAsAnnounced: a message whose
// subject names no kind is announced on sb.deadletter.unknown, and its
// log line says kind=unknown too (it said kind="", noticed by a helper's
// README walkthrough).
func TestDeadLetter_AnUnknownKindIsLoggedAsAnnounced(t *testing.T) {
	var logs testenv.Buffer
	m := startMainWith(t, &Main{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	subjects := bus.Subjects{Prefix: m.Config.NATS.SubjectPrefix}
	got := make(chan *nats.Msg, 1)
	sub, err := m.NC.ChanSubscribe(subjects.DeadLetter("unknown"), got)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := m.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.JS.Publish(context.Background(), m.Config.NATS.SubjectPrefix+".room.nokind", []byte{0x80}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no dead-letter announcement on " + subjects.DeadLetter("unknown"))
	}
	testenv.WaitFor(t, 10*time.Second, "the dead letter's log line", func() bool { return strings.Contains(logs.String(), "dead letter") })
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "dead letter") && !strings.Contains(line, "kind=unknown") {
			t.Errorf("log line %q, want kind=unknown as announced", line)
		}
	}
}
