package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/testenv"
)

// hungWorker is a homeserver worker that hangs: it takes requests and
// answers none of them until resume, which hands the held requests to a
// fake homeserver and relays its answers, as a worker that was stuck and
// wakes up would answer what it had received.
type hungWorker struct {
	nc   *nats.Conn
	sub  *nats.Subscription
	mu   sync.Mutex
	held []*nats.Msg
}

func hang(t testing.TB, nc *nats.Conn) *hungWorker {
	t.Helper()
	h := &hungWorker{nc: nc}
	var err error
	h.sub, err = nc.Subscribe(faultSubjects.HS(">"), func(m *nats.Msg) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.held = append(h.held, m)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *hungWorker) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.held)
}

// resume stops holding (the caller has subscribed the real worker) and
// answers the held requests through it.
func (h *hungWorker) resume(t testing.TB) {
	t.Helper()
	if err := h.sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	held := h.held
	h.held = nil
	h.mu.Unlock()
	var wg sync.WaitGroup
	for _, m := range held {
		wg.Go(func() {
			resp, err := h.nc.RequestMsg(&nats.Msg{Subject: m.Subject, Data: m.Data}, 10*time.Second)
			if err == nil {
				m.RespondMsg(&nats.Msg{Header: resp.Header, Data: resp.Data})
			}
		})
	}
	wg.Wait()
}

// TestFault_HungWorkers: homeserver and federation workers that never
// reply, or reply only after a long while, hold up neither other rooms
// nor the truth of a task's status. (1) The homeserver worker takes a
// shutdown's requests and hangs (less than homeserver.timeout): the task
// stays active with nobody reported kicked, other rooms read fast; once
// the worker answers, the task completes with every member kicked once.
// (2) The worker never answers one user's leave: the task stays active
// until homeserver.timeout, then completes with that user under
// failed_to_kick_users, not kicked_users. (3) The federation worker hangs
// while rooms with gaps are read by several clients: those reads return
// their local pages after backfill.timeout, other rooms read fast
// meanwhile, and once the worker answers again the gaps fill, each event
// once. `scrollback verify` then finds no difference. It runs once, also
// in soak mode (it kills nothing).
//
// Covered elsewhere: a silent federation worker gives the local page after
// backfill.timeout and puts the extremities in back-off
// (TestBackfill_NeverHangsAndBacksOff); a homeserver error reply puts the
// user under failed_to_kick_users (TestDeleteRoom_V2ShutdownWithNewRoom).
func TestFault_HungWorkers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	const hsTimeout, fedTimeout = 2 * time.Second, 1500 * time.Millisecond
	svc := startService(t, serviceConfig{extra: fmt.Sprintf("homeserver: {timeout: %dms}\nbackfill: {timeout: %dms, backoff: 100ms}\nshutdown: {concurrency: 4}\n",
		hsTimeout.Milliseconds(), fedTimeout.Milliseconds())})
	nc, js := svc.connect()
	hsNC, hsJS := svc.connect()
	fedNC, _ := svc.connect()
	hsPub := &testenv.Publisher{JS: hsJS, Subjects: faultSubjects}

	// Rooms that nothing is wrong with, read all along.
	var others []*testenv.Room
	var otherEvs []testenv.Event
	for i := range 5 {
		r := testenv.NewRoom(fmt.Sprintf("fine%d", i), "test")
		others = append(others, r)
		otherEvs = append(otherEvs, r.Setup(alice, remote)...)
		for j := range 50 {
			otherEvs = append(otherEvs, r.Msg(remote, fmt.Sprint(j)))
		}
	}
	seqs := publishBatches(t, nc, otherEvs)
	for _, r := range others {
		readPage(t, nc, r.ID, seqs[len(seqs)-1])
	}
	var slowest time.Duration
	readOthers := func() {
		t.Helper()
		for _, r := range others {
			start := time.Now()
			p, err := api(context.Background(), nc, faultSubjects.APIRoom(r.ID, "messages"), map[string]any{"admin": true, "dir": "b", "limit": 20})
			if err != nil || len(chunkIDs(p)) != 20 {
				t.Fatalf("read of %s while a worker hangs: %d events, %v", r.ID, len(chunkIDs(p)), err)
			}
			slowest = max(slowest, time.Since(start))
		}
	}
	members := func(name string, n int) (*testenv.Room, []string) {
		t.Helper()
		r := testenv.NewRoom(name, "test")
		evs := r.Setup(alice, remote)
		local := []string{alice}
		for j := range n {
			u := fmt.Sprintf("@%su%d:test", name, j)
			local = append(local, u)
			evs = append(evs, r.Join(u))
		}
		seqs := publishBatches(t, nc, evs)
		readPage(t, nc, r.ID, seqs[len(seqs)-1])
		return r, local
	}
	deleteRoom := func(r *testenv.Room, force bool) string {
		t.Helper()
		reply, err := api(context.Background(), nc, faultSubjects.APIRoom(r.ID, "delete"), map[string]any{"purge": true, "force_purge": force})
		if err != nil {
			t.Fatalf("delete: %v", err)
		}
		return reply["delete_id"].(string)
	}
	status := func(id string) map[string]any {
		t.Helper()
		task, err := api(context.Background(), nc, faultSubjects.API("delete_status"), map[string]any{"delete_id": id})
		if err != nil {
			t.Fatal(err)
		}
		return task
	}
	kickedOf := func(task map[string]any) []string {
		res, _ := task["shutdown_room"].(map[string]any)
		return strList(res["kicked_users"])
	}

	// 1. The homeserver worker hangs for longer than a leave takes but
	// less than homeserver.timeout, then answers what it holds.
	room, local := members("hangs", 20)
	hung := hang(t, hsNC)
	id := deleteRoom(room, false)
	testenv.WaitFor(t, 10*time.Second, "the shutdown's first requests", func() bool { return hung.count() > 0 })
	until := time.Now().Add(hsTimeout * 2 / 5)
	for time.Now().Before(until) {
		readOthers()
		task := status(id)
		if task["status"] != commands.TaskActive || len(kickedOf(task)) != 0 {
			t.Fatalf("while the homeserver hangs: status %v, kicked %v; want active with nobody kicked", task["status"], kickedOf(task))
		}
	}
	hs := testenv.NewHomeserver(t, hsNC, hsPub, "test")
	hs.Track(room)
	hung.resume(t)
	waitTaskComplete(t, nc, commands.ActionShutdownAndPurgeRoom, id, 30*time.Second)
	if kicked := kickedOf(status(id)); !slices.Equal(kicked, slices.Sorted(slices.Values(local))) {
		t.Fatalf("after the homeserver woke up: kicked %d users, want %d", len(kicked), len(local))
	}
	for _, u := range local {
		if n := hs.Acted("leave", u); n != 1 {
			t.Fatalf("%s left %d times", u, n)
		}
	}
	if n := len(commandsWithID(t, js, room.ID, id+"-purge")); n != 1 {
		t.Fatalf("%d purge commands", n)
	}

	// 2. The worker never answers one user's leave: the task waits for
	// homeserver.timeout, then reports that user as not kicked.
	room, local = members("stalls", 10)
	hs.Track(room)
	stuck := local[3]
	hs.StallLeave(stuck)
	id = deleteRoom(room, true)
	testenv.WaitFor(t, 10*time.Second, "the stalled leave request", func() bool { return len(hs.Calls("leave")) > 0 && calledFor(hs, "leave", stuck) })
	asked := time.Now()
	for time.Since(asked) < hsTimeout*3/4 {
		readOthers()
		if task := status(id); task["status"] != commands.TaskActive || slices.Contains(kickedOf(task), stuck) {
			t.Fatalf("while %s's leave hangs: status %v, kicked %v", stuck, task["status"], kickedOf(task))
		}
	}
	waitTaskComplete(t, nc, commands.ActionShutdownAndPurgeRoom, id, 30*time.Second)
	task := status(id)
	res, _ := task["shutdown_room"].(map[string]any)
	if f := strList(res["failed_to_kick_users"]); len(f) != 1 || f[0] != stuck || slices.Contains(kickedOf(task), stuck) || len(kickedOf(task)) != len(local)-1 {
		t.Fatalf("after a leave that never came back: kicked %v, failed %v", kickedOf(task), f)
	}

	// 3. The federation worker hangs while rooms with gaps are read.
	fed := testenv.NewFederation(t, fedNC, faultSubjects)
	fed.SetSilent(true)
	var gappy []*testenv.Room
	var fulls [][]testenv.Event
	var local3 []testenv.Event
	for i := range 3 {
		r := testenv.NewRoom(fmt.Sprintf("gappy%d", i), "test")
		full := r.Setup(alice, remote)
		for len(full) < 200 {
			full = append(full, r.Msg(remote, "old"))
		}
		fed.Serve(r.ID, full...)
		gappy, fulls = append(gappy, r), append(fulls, full)
		local3 = append(local3, full[150:]...)
	}
	seqs = publishBatches(t, nc, local3)
	for _, r := range gappy {
		readPage(t, nc, r.ID, seqs[len(seqs)-1])
	}
	var wg sync.WaitGroup
	errs := make(chan error, 3*4)
	for _, r := range gappy {
		for range 4 {
			wg.Go(func() {
				p, err := api(context.Background(), nc, faultSubjects.APIRoom(r.ID, "messages"), map[string]any{"admin": true, "dir": "b", "limit": 100})
				if err == nil && len(chunkIDs(p)) != 50 {
					err = fmt.Errorf("%s: %d events, want the 50 local ones", r.ID, len(chunkIDs(p)))
				}
				errs <- err
			})
		}
	}
	testenv.WaitFor(t, 10*time.Second, "the backfill requests", func() bool { return len(fed.Requests()) >= len(gappy) })
	for range 3 {
		readOthers()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a read of a room with a gap while federation hangs: %v", err)
		}
	}
	// The worker answers again: once the back-off passes, reads fill the
	// gaps.
	fed.SetSilent(false)
	for i, r := range gappy {
		testenv.WaitFor(t, 20*time.Second, "the gap of "+r.ID+" to fill", func() bool {
			return pageBack(nc, r.ID) == nil && len(readRoom(t, nc, r.ID, 0)) >= len(fulls[i])
		})
		wantRoom(t, nc, r.ID, 0, ids(fulls[i]), "after federation answered again")
	}
	if limit := time.Second; slowest > limit {
		t.Fatalf("the slowest read of another room took %s while workers hung, want under %s", slowest, limit)
	}
	t.Logf("slowest read of another room while workers hung: %s", slowest)
	svc.verify(false)
}

// calledFor reports whether the homeserver got a request on
// sb.hs.<name> for user.
func calledFor(hs *testenv.Homeserver, name, user string) bool {
	for _, c := range hs.Calls(name) {
		if c.Req["user_id"] == user {
			return true
		}
	}
	return false
}
