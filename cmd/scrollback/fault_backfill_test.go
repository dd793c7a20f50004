package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/testenv"
)

// backfillHistory is how many events the federation worker knows of each
// room; the local log holds the newest backfillLocal of them.
const (
	backfillHistory = 400
	backfillLocal   = 100
)

// TestFault_Kill9DuringBackfill kills the service with SIGKILL while a
// read backfills from a slow federation worker (its own NATS client of
// the binary's embedded server): (1) while the request waits for the
// worker's reply, (2) while the service appends the reply's events to
// the log. After the restart, reads backfill the rest, and the room's
// whole history reads exactly once and in order, each backfilled event
// is in the log once, and `scrollback verify` finds no difference.
func TestFault_Kill9DuringBackfill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	svc := startService(t, serviceConfig{extra: "backfill: {timeout: 5s, backoff: 100ms}\n"})
	nc, js := svc.connect()
	fedNC, _ := svc.connect()
	fed := testenv.NewFederation(t, fedNC, faultSubjects)
	points := []string{"awaiting-reply", "appending"}
	var counts faultCounts
	rounds(t, &counts, func(n int, rng *rand.Rand) {
		for i, point := range points {
			start := time.Now()
			killDuringBackfill(t, svc, nc, js, fed, point, fmt.Sprintf("gap%d-%d", n, i), rng, &counts)
			t.Logf("round %d: %s done in %s", n, point, time.Since(start).Round(time.Millisecond))
		}
		svc.verify(soakBudget(t) > 0)
	})
}

func killDuringBackfill(t *testing.T, svc *service, nc *nats.Conn, js jetstream.JetStream, fed *testenv.Federation, point, name string, rng *rand.Rand, counts *faultCounts) {
	t.Helper()
	room := testenv.NewRoom(name, "test")
	full := room.Setup(alice, remote)
	for len(full) < backfillHistory {
		full = append(full, room.Msg(remote, fmt.Sprint(len(full))))
	}
	fed.Serve(room.ID, full...)
	seqs := publishBatches(t, nc, full[len(full)-backfillLocal:])
	readPage(t, nc, room.ID, seqs[len(seqs)-1])
	eventSubj := faultSubjects.Room(room.ID, commands.KindEvent)
	asked := len(requestsFor(fed, room.ID))

	// The worker answers slowly: the kill comes during the wait or
	// during the appends that follow.
	fed.SetDelay(300 * time.Millisecond)
	if soakBudget(t) > 0 {
		fed.SetDelay(time.Duration(50+rng.IntN(500)) * time.Millisecond)
	}
	// The read's reply is lost with the process; it only starts the
	// backfill.
	readCtx, stopRead := context.WithCancel(context.Background())
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		api(readCtx, nc, faultSubjects.APIRoom(room.ID, "messages"), map[string]any{"admin": true, "dir": "b", "limit": backfillLocal + 30})
	}()
	inPhase := false
	switch point {
	case "awaiting-reply":
		testenv.WaitFor(t, 20*time.Second, "the backfill request", func() bool { return len(requestsFor(fed, room.ID)) > asked })
		inPhase = mustSubjectCount(t, js, eventSubj) == backfillLocal
	case "appending":
		want := uint64(backfillLocal + 1)
		if soakBudget(t) > 0 {
			want += uint64(rng.IntN(90))
		}
		testenv.WaitFor(t, 20*time.Second, "backfilled events in the log", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			n, err := subjectCount(ctx, js, eventSubj)
			return err == nil && n >= want
		})
		inPhase = mustSubjectCount(t, js, eventSubj) < backfillLocal+100
	}
	fed.SetDelay(0)
	svc.restart()
	stopRead()
	<-readDone
	counts.killed(point, inPhase)

	// Page backwards until the whole history has been backfilled.
	testenv.WaitFor(t, 60*time.Second, "the whole history to be backfilled", func() bool {
		return pageBack(nc, room.ID) == nil && mustSubjectCount(t, js, eventSubj) >= backfillHistory
	})
	counts.events += wantRoom(t, nc, room.ID, 0, ids(full), point+": the backfilled room")
	seen := map[string]int{}
	for _, ev := range logMessages(t, js, eventSubj) {
		id, _ := ev.m["event_id"].(string)
		if seen[id]++; seen[id] == 2 {
			t.Errorf("%s: %s is in the log twice", point, id)
		}
	}
	if len(seen) != backfillHistory {
		t.Fatalf("%s: the log holds %d distinct events of the room, want %d", point, len(seen), backfillHistory)
	}
}

// requestsFor lists the backfill requests the worker got for a room.
func requestsFor(fed *testenv.Federation, roomID string) []map[string]any {
	var out []map[string]any
	for _, r := range fed.Requests() {
		if r["room_id"] == roomID {
			out = append(out, r)
		}
	}
	return out
}
