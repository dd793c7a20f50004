package main

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/testenv"
)

// shutdownMembers is how many local users are joined to each room a
// shutdown test deletes.
const shutdownMembers = 300

// hsDelay is how long the fake homeserver takes to answer a request.
const hsDelay = 5 * time.Millisecond

// TestFault_Kill9DuringShutdown deletes rooms of 300 local members (v2,
// new room, block, unforced purge) against a fake homeserver worker that
// is its own NATS client of the binary's embedded server and answers each
// request after a delay, and kills the service with SIGKILL (1) while the
// new room is being created, (2) while members are being kicked, (3) while
// the last request (move_aliases) is with the homeserver, (4) once the
// purge step is in the log while the projection lags behind it (the room
// is busy). After the restart the delete task completes exactly once (one
// <id>-purge command, no TaskUpdate ending it, no TaskUpdate rejected as
// coming after its end), every member is kicked, the homeserver acted on
// every side effect exactly once and was asked each one under a single
// txn_id, the old history is erased from the log and reads return only
// what came after the purge step, and `scrollback verify` finds no
// difference.
//
// TestDeleteRoom_ResumesAfterRestart covers a clean restart in-process;
// this one is a crash of the process.
func TestFault_Kill9DuringShutdown(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	svc := startService(t, serviceConfig{extra: "shutdown: {concurrency: 16}\nhomeserver: {timeout: 10s}\n"})
	nc, js := svc.connect()
	// The homeserver worker has a connection of its own, as a separate
	// process would, and keeps it across the service's restarts.
	hsNC, hsJS := svc.connect()
	hs := testenv.NewHomeserver(t, hsNC, &testenv.Publisher{JS: hsJS, Subjects: faultSubjects}, "test")
	hs.SetAliases("#doomed:test")
	hs.SetDelay(hsDelay)
	points := []string{"create-room", "kicking", "last-request", "purge-published"}
	var counts faultCounts
	rounds(t, &counts, func(n int, rng *rand.Rand) {
		for i, point := range points {
			start := time.Now()
			killDuringShutdown(t, svc, nc, js, hs, point, fmt.Sprintf("doomed%d-%d", n, i), rng, &counts)
			t.Logf("round %d: %s done in %s", n, point, time.Since(start).Round(time.Millisecond))
		}
		svc.verify(soakBudget(t) > 0)
	})
}

// killDuringShutdown deletes a room, kills the service at point, starts
// it again and checks the outcome.
func killDuringShutdown(t *testing.T, svc *service, nc *nats.Conn, js jetstream.JetStream, hs *testenv.Homeserver, point, name string, rng *rand.Rand, counts *faultCounts) {
	t.Helper()
	room := testenv.NewRoom(name, "test")
	hs.Track(room)
	evs := room.Setup(alice, remote)
	var joined []string
	for j := range shutdownMembers {
		u := fmt.Sprintf("@%su%d:test", name, j)
		joined = append(joined, u)
		evs = append(evs, room.Join(u))
	}
	invitee, knocker := fmt.Sprintf("@%sinvitee:test", name), fmt.Sprintf("@%sknocker:test", name)
	evs = append(evs, room.Member(alice, invitee, "invite"), room.Member(knocker, knocker, "knock"), room.Msg(remote, "bye"))
	seqs := publishBatches(t, nc, evs)
	readPage(t, nc, room.ID, seqs[len(seqs)-1])
	joined = append(joined, alice)
	local := append([]string{invitee, knocker}, joined...)

	// What the homeserver did before (alice is in every room).
	acted := map[string]int{}
	for _, name := range []string{"leave", "forget", "join"} {
		for _, u := range local {
			acted[name+" "+u] = hs.Acted(name, u)
		}
	}
	created := hs.Acted("create_room", "")
	sends, moves := hs.Acted("send", ""), hs.Acted("move_aliases", "")
	movesAsked := len(hs.Calls("move_aliases"))
	// The leaves of this shutdown so far (one scan of the homeserver's
	// records: cheap enough to poll).
	leaves0 := hs.Acted("leave", "")
	left := func() int { return hs.Acted("leave", "") - leaves0 }
	reply, err := api(context.Background(), nc, faultSubjects.APIRoom(room.ID, "delete"), map[string]any{
		"new_room_user_id": "@admin:test", "room_name": "Gone", "message": "moved", "block": true, "purge": true, "requested_by": "@admin:test"})
	if err != nil {
		t.Fatalf("delete: %v", err)
	}
	id, _ := reply["delete_id"].(string)

	inPhase := false
	switch point {
	case "create-room":
		// The homeserver got the request and has not acted yet.
		testenv.WaitFor(t, 20*time.Second, "the create_room request", func() bool {
			return len(txnsOf(hs, "create_room", id, "")) > 0
		})
	case "kicking":
		k := shutdownMembers / 3
		if soakBudget(t) > 0 {
			k = 1 + rng.IntN(shutdownMembers-1)
		}
		testenv.WaitFor(t, 30*time.Second, fmt.Sprintf("%d users to leave", k), func() bool {
			return left() >= k
		})
		inPhase = left() < len(local)
	case "last-request":
		// move_aliases, the last request, has reached the homeserver,
		// which has not acted on it yet: the restarted service asks
		// again under the same txn_id while the first is in flight.
		testenv.WaitFor(t, 60*time.Second, "most kicks", func() bool { return left() >= len(local)*9/10 })
		// The homeserver takes its time with the last requests.
		hs.SetDelay(50 * time.Millisecond)
		defer hs.SetDelay(hsDelay)
		deadline := time.Now().Add(30 * time.Second)
		for len(hs.Calls("move_aliases")) == movesAsked {
			if time.Now().After(deadline) {
				t.Fatal("timed out waiting for move_aliases")
			}
			runtime.Gosched()
		}
	case "purge-published":
		// From half-way through the kicks the room gets busy: events
		// come in batches of 1,000 without pause, so the projection is
		// always up to a batch behind the log. The kill comes as soon as
		// the purge step is in the log, most likely behind a batch and
		// not applied yet; after the restart the projection catches up
		// while the task runner looks for open tasks.
		testenv.WaitFor(t, 60*time.Second, "half the kicks", func() bool {
			return left() >= len(local)/2
		})
		stop, done := make(chan struct{}), make(chan struct{})
		var bursts int
		var burstErr error
		go func() {
			defer close(done)
			for ; ; bursts++ {
				select {
				case <-stop:
					return
				default:
				}
				var burst []testenv.Event
				for range 1000 {
					burst = append(burst, room.Msg(remote, "busy"))
				}
				if _, err := tryPublishBatches(nc, burst, 5*time.Second); err != nil {
					burstErr = err
					return
				}
			}
		}()
		var halt sync.Once
		defer func() {
			halt.Do(func() { close(stop) })
			<-done
			t.Logf("%s: %d batches of 1000 events published to the room as it ended (then: %v)", point, bursts, burstErr)
		}()
		cmdSubj := faultSubjects.Room(room.ID, commands.KindCmd)
		testenv.WaitFor(t, 60*time.Second, "the purge step", func() bool {
			last, err := lastOn(js, cmdSubj)
			return err == nil && last.m["id"] == id+"-purge"
		})
		halt.Do(func() { close(stop) })
		status, _, err := taskStatus(nc, commands.ActionShutdownAndPurgeRoom, id)
		inPhase = err == nil && status == commands.TaskActive
	}
	svc.kill9()
	t.Logf("%s: killed after %d of %d leaves", point, left(), len(local))
	svc.start()

	waitTaskComplete(t, nc, commands.ActionShutdownAndPurgeRoom, id, 60*time.Second)
	// Exactly one ending: the purge step's command completes the task;
	// no TaskUpdate ends it.
	purges := commandsWithID(t, js, room.ID, id+"-purge")
	if len(purges) != 1 {
		t.Fatalf("%s: %d purge commands %s-purge in the log, want 1", point, len(purges), id)
	}
	// In the phase if the request in flight at the kill was asked again
	// by the restarted service.
	switch point {
	case "create-room", "last-request":
		name := map[string]string{"create-room": "create_room", "last-request": "move_aliases"}[point]
		n := askedTimes(hs, name, id)
		inPhase = n > 1
		t.Logf("%s: %s asked %d times", point, name, n)
	}
	if ends := taskEnds(t, js, room.ID, id); len(ends) != 0 {
		t.Fatalf("%s: TaskUpdates ending %s: %v, want none (the purge command ends it)", point, id, ends)
	}
	counts.tasks++
	counts.killed(point, inPhase)

	task, err := api(context.Background(), nc, faultSubjects.API("delete_status"), map[string]any{"delete_id": id})
	if err != nil {
		t.Fatal(err)
	}
	res, _ := task["shutdown_room"].(map[string]any)
	kicked := strList(res["kicked_users"])
	if want := slices.Sorted(slices.Values(local)); !slices.Equal(kicked, want) {
		t.Fatalf("%s: kicked_users has %d users, want the %d local members once each", point, len(kicked), len(want))
	}
	if f := strList(res["failed_to_kick_users"]); len(f) != 0 {
		t.Fatalf("%s: failed_to_kick_users = %v", point, f)
	}
	if a := strList(res["local_aliases"]); len(a) != 1 || a[0] != "#doomed:test" {
		t.Fatalf("%s: local_aliases = %v", point, a)
	}
	if res["new_room_id"] == nil {
		t.Fatalf("%s: no new_room_id: %v", point, res)
	}
	// Each side effect acted on once, and asked under one txn_id only.
	for _, u := range local {
		for _, name := range []string{"leave", "forget", "join"} {
			want := 1
			if name == "join" && !slices.Contains(joined, u) {
				want = 0
			}
			if n := hs.Acted(name, u) - acted[name+" "+u]; n != want {
				t.Fatalf("%s: the homeserver acted on %s of %s %d times, want %d", point, name, u, n, want)
			}
			if txns := txnsOf(hs, name, id, u); len(txns) != want {
				t.Fatalf("%s: %s of %s asked under txn_ids %v, want %d", point, name, u, txns, want)
			}
		}
	}
	for name, before := range map[string]int{"create_room": created, "send": sends, "move_aliases": moves} {
		if n := hs.Acted(name, "") - before; n != 1 {
			t.Fatalf("%s: the homeserver acted on %s %d times, want once", point, name, n)
		}
		if txns := txnsOf(hs, name, id, ""); len(txns) != 1 {
			t.Fatalf("%s: %s asked under txn_ids %v, want one", point, name, txns)
		}
	}
	// The old room is purged: its events are erased from the log (the
	// eraser does that after the task completes, so give it time), and
	// reads return the events after the purge step (its new timeline),
	// each once.
	var after []string
	var waitFor uint64
	var stale *logMsg
	defer func() {
		if t.Failed() && stale != nil {
			t.Logf("%s: event %v (sequence %d) is still in the log, before the purge step at %d", point, stale.m["event_id"], stale.seq, purges[0])
		}
	}()
	// Each look reads the room's whole log: every 100 ms.
	testenv.WaitEvery(t, 30*time.Second, 100*time.Millisecond, point+": the old room's events to leave the log after the task completed", func() bool {
		after, waitFor, stale = nil, 0, nil
		for _, m := range logMessages(t, js, faultSubjects.Room(room.ID, commands.KindEvent)) {
			if m.seq < purges[0] {
				stale = &m
				break
			}
			after = append(after, m.m["event_id"].(string))
			waitFor = m.seq
		}
		return stale == nil
	})
	counts.events += len(evs) + wantRoom(t, nc, room.ID, waitFor, after, point+": the deleted room")
	svc.noDeadLetters(point)
}

// txnsOf lists the distinct txn_ids of the task's requests on sb.hs.<name>
// (for user, unless "").
func txnsOf(hs *testenv.Homeserver, name, taskID, user string) []string {
	seen := map[string]bool{}
	for _, c := range hs.Calls(name) {
		txn, _ := c.Req["txn_id"].(string)
		if !strings.HasPrefix(txn, taskID+"-") {
			continue
		}
		if u, _ := c.Req["user_id"].(string); user != "" && u != user {
			continue
		}
		seen[txn] = true
	}
	return slices.Sorted(maps.Keys(seen))
}

// askedTimes is how many requests of the task the homeserver got on
// sb.hs.<name>.
func askedTimes(hs *testenv.Homeserver, name, taskID string) int {
	n := 0
	for _, c := range hs.Calls(name) {
		if txn, _ := c.Req["txn_id"].(string); strings.HasPrefix(txn, taskID+"-") {
			n++
		}
	}
	return n
}
