package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

const remote = "@remote:other.org"

// purgePoint is where in a purge the service is killed.
type purgePoint struct {
	action string // purge_history or purge_room
	phase  string // before-apply, janitor or erasure
	size   int    // messages in the room
}

func (p purgePoint) String() string { return p.action + "/" + p.phase }

// purgeCase is one crash point's room, published before the round's
// kills.
type purgeCase struct {
	point purgePoint
	room  *testenv.Room
	evs   []testenv.Event
	seqs  []uint64
}

// TestFault_Kill9DuringPurge kills the service with SIGKILL in each phase
// of a purge_history and of a purge_room: (a) after the command is
// published and before it is applied, (b) while the janitor removes the
// rows (the task is active and the log erasure has barely started), (c)
// while the purged events are erased from the log. A homeserver keeps
// publishing to the room throughout. After each restart: the task
// completes, with exactly one completing TaskUpdate in the log; reads
// never return a purged event and return every acknowledged event above
// the cut-off once, in order; the log holds exactly the events that must
// stay. After the round, `scrollback verify` (after SIGTERM) finds no
// difference between the projection and a rebuild from the log.
func TestFault_Kill9DuringPurge(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	// Big rooms give the janitor and the eraser time to be caught in the
	// act: the janitor removes about 60k rows/s, the eraser about 2k log
	// messages/s (docs/BENCHMARKS.md), and the task waits for both. The
	// CI pass uses 6,000 events to stay fast; a soak uses 20,000.
	big := 6000
	if soakBudget(t) > 0 {
		big = 20_000
	}
	points := []purgePoint{
		{commands.ActionPurgeHistory, "before-apply", 300},
		{commands.ActionPurgeHistory, "janitor", big},
		{commands.ActionPurgeHistory, "erasure", big},
		{commands.ActionPurgeRoom, "before-apply", 300},
		{commands.ActionPurgeRoom, "janitor", big},
		{commands.ActionPurgeRoom, "erasure", 2000},
	}
	svc := startService(t, serviceConfig{})
	nc, js := svc.connect()
	var counts faultCounts
	rounds(t, &counts, func(n int, rng *rand.Rand) {
		start := time.Now()
		rooms := make([]*purgeCase, len(points))
		var all []testenv.Event
		for i, p := range points {
			r := &purgeCase{point: p, room: testenv.NewRoom(fmt.Sprintf("purge%d-%d", n, i), "test")}
			r.evs = r.room.Setup(alice, remote)
			for j := len(r.evs); j < p.size; j++ {
				// Mostly remote messages (deleted and erased by a purge),
				// some local ones and some state (kept as outliers).
				switch {
				case j%50 == 0:
					r.evs = append(r.evs, r.room.Next("m.room.topic", alice, testenv.S(""), map[string]any{"topic": fmt.Sprint(j)}))
				case j%10 == 0:
					r.evs = append(r.evs, r.room.Msg(alice, fmt.Sprint(j)))
				default:
					r.evs = append(r.evs, r.room.Msg(remote, fmt.Sprint(j)))
				}
			}
			rooms[i] = r
			all = append(all, r.evs...)
		}
		seqs := publishBatches(t, nc, all)
		off := 0
		for _, r := range rooms {
			r.seqs = seqs[off : off+len(r.evs)]
			off += len(r.evs)
			readPage(t, nc, r.room.ID, r.seqs[len(r.seqs)-1])
		}
		t.Logf("round %d: %d events published and applied in %s", n, len(all), time.Since(start).Round(time.Millisecond))
		for _, r := range rooms {
			pstart := time.Now()
			killDuringPurge(t, svc, nc, js, r, rng, n, &counts)
			t.Logf("round %d: %s done in %s", n, r.point, time.Since(pstart).Round(time.Millisecond))
		}
		svc.verify(soakBudget(t) > 0)
	})
}

// roomInPartitionOf makes a room (named from prefix) whose messages the
// projector applies in the same partition as roomID's, in a data dir with
// the default partition count.
func roomInPartitionOf(roomID, prefix string) *testenv.Room {
	want := projections.PartitionOf(bus.RoomKey(roomID), projections.DefaultPartitions)
	for i := 0; ; i++ {
		r := testenv.NewRoom(fmt.Sprintf("%s-%d", prefix, i), "test")
		if projections.PartitionOf(bus.RoomKey(r.ID), projections.DefaultPartitions) == want {
			return r
		}
	}
}

// purgeShape is what a purge must leave: the events reads return, and how
// many of the room's event messages the log keeps.
func purgeShape(r *purgeCase, cut int) (kept []string, inLog int) {
	if r.point.action == commands.ActionPurgeRoom {
		return nil, 0
	}
	inLog = len(r.evs)
	for _, ev := range r.evs[:cut] {
		// Erased: remote non-state events below the cut-off (local ones
		// and state stay as outliers, since delete_local_events is off).
		if _, state := ev["state_key"]; !state && ev["sender"] == remote {
			inLog--
		}
	}
	return ids(r.evs[cut:]), inLog
}

// killDuringPurge purges a room, kills the service in the purge's phase,
// starts it again and checks the outcome.
func killDuringPurge(t *testing.T, svc *service, nc *nats.Conn, js jetstream.JetStream, r *purgeCase, rng *rand.Rand, round int, counts *faultCounts) {
	t.Helper()
	p := r.point
	cut := len(r.evs) * 9 / 10
	if p.size < 1000 {
		cut = len(r.evs) / 2
	}
	kept, inLog := purgeShape(r, cut)
	toErase := uint64(len(r.evs) - inLog) // old event messages the purge erases
	eventSubj := faultSubjects.Room(r.room.ID, commands.KindEvent)
	cmd := map[string]any{"id": fmt.Sprintf("fault%d%s%s", round, p.action[6:], p.phase[:3]), "action": p.action, "room_id": r.room.ID, "ts": time.Now().UnixMilli()}
	if p.action == commands.ActionPurgeHistory {
		cmd["params"] = map[string]any{"token": fmt.Sprintf("t%d-%d", r.evs[cut]["depth"], r.seqs[cut]), "delete_local_events": false}
	} else {
		cmd["params"] = map[string]any{"force": true}
	}
	id := cmd["id"].(string)

	var live *livePublisher
	inPhase := false
	switch p.phase {
	case "before-apply":
		// Keep the room's partition of the projector busy with another
		// room, so the command is still in its queue when the process
		// dies.
		filler := roomInPartitionOf(r.room.ID, fmt.Sprintf("filler%d-%s", round, p.action[6:]))
		burst := filler.Setup(alice)
		size := 4000
		if soakBudget(t) > 0 {
			size = 2000 + rng.IntN(4000)
		}
		for range size {
			burst = append(burst, filler.Msg(remote, "fill"))
		}
		publishBatches(t, nc, burst)
		publishCommand(t, js, cmd)
		status, _, err := taskStatus(nc, p.action, id)
		inPhase = err == nil && status == ""
		svc.kill9()
		live = startLive(t, js, r.room, remote)
		svc.start()
	default:
		if p.action == commands.ActionPurgeHistory {
			// As an admin would: the API publishes the command and
			// replies once it is applied.
			reply, err := api(context.Background(), nc, faultSubjects.APIRoom(r.room.ID, "purge_history"),
				map[string]any{"event_id": r.evs[cut].ID(), "delete_local_events": false})
			if err != nil {
				t.Fatalf("%s: purge_history: %v", p, err)
			}
			id, _ = reply["purge_id"].(string)
		} else {
			publishCommand(t, js, cmd)
		}
		live = startLive(t, js, r.room, remote)
		var erased uint64
		var status string
		if p.action == commands.ActionPurgeHistory {
			erased, status = untilErased(t, nc, js, r, id, toErase, live, rng)
		} else {
			erased, status = untilSubjectPurged(t, nc, js, r, id, p.phase == "janitor", rng)
		}
		switch p.phase {
		case "janitor":
			inPhase = status != commands.TaskComplete && (p.action == commands.ActionPurgeRoom || erased < toErase)
		case "erasure":
			inPhase = status != commands.TaskComplete && erased < toErase
		}
		t.Logf("%s: kill at %d/%d erased, status %s", p, erased, toErase, status)
		svc.restart()
	}
	counts.killed(p.String(), inPhase)
	// The homeserver goes on publishing after the restart.
	before := live.count()
	testenv.WaitFor(t, 30*time.Second, "publishing to resume after the restart", func() bool { return live.count() >= before+3 })
	acked, last := live.finish(t)
	want := append(kept, acked...)
	// Instant for readers, whatever the janitor has done so far.
	counts.events += wantRoom(t, nc, r.room.ID, last, want, p.String()+" right after the restart")
	waitTaskComplete(t, nc, p.action, id, slowWait(t, 30*time.Second))
	counts.events += wantRoom(t, nc, r.room.ID, last, want, p.String()+" once complete")
	if ends := taskEnds(t, js, r.room.ID, id); ends[commands.TaskComplete] != 1 || len(ends) != 1 {
		t.Fatalf("%s: task %s ends in the log: %v, want exactly one complete", p, id, ends)
	}
	if n := len(commandsWithID(t, js, r.room.ID, id)); n != 1 {
		t.Fatalf("%s: the log holds %d commands %s", p, n, id)
	}
	counts.tasks++
	// What the log holds of the room's events: the event subject, and
	// the kept copies of a compaction (bus.Log.Compact).
	keptSubj := faultSubjects.Room(r.room.ID, commands.KindKept)
	if n, want := mustSubjectCount(t, js, eventSubj)+mustSubjectCount(t, js, keptSubj), uint64(inLog+len(acked)); n != want {
		t.Fatalf("%s: the log holds %d of the room's events once the purge is complete, want %d (%d kept of %d, %d published since)", p, n, want, inLog, len(r.evs), len(acked))
	}
}

// untilErased waits until a purge_history's erasure of the room's events
// from the log reaches a threshold, and returns how many are erased and
// the task's status then. For the janitor phase the threshold is the
// first few messages: the janitor has committed its first batch and is
// removing the next ones (2,000 rows take it about 30 ms, the eraser
// deletes about 60 messages meanwhile). For the erasure phase it is a
// good part of them, long after the janitor's end.
func untilErased(t *testing.T, nc *nats.Conn, js jetstream.JetStream, r *purgeCase, id string, toErase uint64, live *livePublisher, rng *rand.Rand) (erased uint64, status string) {
	t.Helper()
	lo, hi := 0.002, 0.02
	if r.point.phase == "erasure" {
		lo, hi = 0.4, 0.95
	}
	threshold := lo + (hi-lo)/4
	if soakBudget(t) > 0 {
		threshold = lo + rng.Float64()*(hi-lo)
	}
	eventSubj := faultSubjects.Room(r.room.ID, commands.KindEvent)
	testenv.WaitFor(t, slowWait(t, 30*time.Second), fmt.Sprintf("%s to reach its crash point", r.point), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		// The live publisher's events are in the count too (give or
		// take the one in flight).
		live := uint64(live.count())
		n, err := subjectCount(ctx, js, eventSubj)
		if err != nil {
			return false
		}
		if st, _, err := taskStatus(nc, r.point.action, id); err == nil {
			status = st
		}
		erased = uint64(len(r.evs)) - min(n-min(live, n), uint64(len(r.evs)))
		return status == commands.TaskComplete || float64(erased) >= threshold*float64(toErase)
	})
	return erased, status
}

// untilSubjectPurged waits until a purge_room is applied and, if
// purged, until its one subject purge has erased the room's old events
// (the janitor then drops their rows), else kills while they are still
// there. It returns how many old events are erased and the task's
// status.
func untilSubjectPurged(t *testing.T, nc *nats.Conn, js jetstream.JetStream, r *purgeCase, id string, purged bool, rng *rand.Rand) (erased uint64, status string) {
	t.Helper()
	eventSubj := faultSubjects.Room(r.room.ID, commands.KindEvent)
	lastOld := r.seqs[len(r.seqs)-1]
	testenv.WaitFor(t, slowWait(t, 30*time.Second), fmt.Sprintf("%s to reach its crash point", r.point), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		first, err := firstSeq(ctx, js, eventSubj)
		if err != nil {
			return false
		}
		if st, _, err := taskStatus(nc, r.point.action, id); err == nil {
			status = st
		}
		erased = 0
		if first == 0 || first > lastOld {
			erased = uint64(len(r.evs))
		}
		if status == "" {
			return false // not applied yet
		}
		return status == commands.TaskComplete || (erased > 0) == purged
	})
	if purged && soakBudget(t) > 0 {
		// Somewhere in the janitor's drop of the rows.
		<-time.After(time.Duration(rng.IntN(300)) * time.Millisecond)
	}
	return erased, status
}
