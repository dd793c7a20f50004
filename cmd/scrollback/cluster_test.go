package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// publishAcked publishes events the way a homeserver worker does on a
// cluster (publishOne: each until the log acknowledges it) and returns
// the highest acknowledged sequence.
func publishAcked(t *testing.T, js jetstream.JetStream, evs ...testenv.Event) uint64 {
	t.Helper()
	var last uint64
	for _, ev := range evs {
		roomID, _ := ev["room_id"].(string)
		last = max(last, publishOne(t, js, faultSubjects.Room(roomID, "event"), ev.ID(), encodeEvent(t, ev)))
	}
	return last
}

// TestCluster_SurvivesInstanceAndNodeLoss runs three instances on a
// three-node JetStream cluster with the log replicated three times, and
// loses a NATS node during ingest, and an instance (plus another NATS node)
// during a room shutdown and during a purge. Reads keep being answered,
// the surviving instance finishes both tasks, nothing acknowledged is
// lost or applied twice, the homeserver acts once per member, and a new
// instance rebuilding from the log ends with the same projection.
func TestCluster_SurvivesInstanceAndNodeLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-node cluster and three instances")
	}
	start := time.Now()
	cl := testenv.NewCluster(t, 3)
	r3 := func(c *Config) { c.Cluster.Replicas = 3 }
	a := startInstance(t, cl.URL(), "a", r3)
	b := startInstance(t, cl.URL(), "b", r3)
	c := startInstance(t, cl.URL(), "c", r3)
	waitSplit(t, a, b, c)
	nc, js := cl.Connect(t)
	t.Logf("%v: cluster and instances up", time.Since(start).Round(time.Millisecond))

	// A reader on its own connection reads one room all along; it counts
	// failures and the longest time without an answer.
	steady := testenv.NewRoom("steady", "test")
	publishAcked(t, js, append(steady.Setup(alice), steady.Msg(alice, "hi"))...)
	var reads, failed atomic.Int64
	var gapMu sync.Mutex
	var longestGap time.Duration
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		r := &bus.Requester{NC: nc, Timeout: 5 * time.Second}
		subj := bus.Subjects{Prefix: "sb"}.APIRoom(steady.ID, "messages")
		lastOK := time.Now()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := r.Request(context.Background(), subj, map[string]any{"user_id": alice, "dir": "b", "limit": 10}); err != nil {
				failed.Add(1)
				continue
			}
			reads.Add(1)
			gapMu.Lock()
			longestGap = max(longestGap, time.Since(lastOK))
			gapMu.Unlock()
			lastOK = time.Now()
		}
	})

	// 1. Ingest into four rooms; the log's leader node dies a third of
	// the way through and comes back at two thirds.
	rooms := make([]*testenv.Room, 4)
	want := make([][]string, 4)
	var evs []testenv.Event
	for i := range rooms {
		name := fmt.Sprintf("busy%d", i)
		if i == 0 {
			name = roomOwnedBy(t, b, "busyb") // purged below, while b runs it
		}
		rooms[i] = testenv.NewRoom(name, "test")
		setup := rooms[i].Setup(alice)
		evs = append(evs, setup...)
		want[i] = append(want[i], ids(setup)...)
	}
	for j := range 150 {
		for i, r := range rooms {
			ev := r.Msg(alice, fmt.Sprint(j))
			evs = append(evs, ev)
			want[i] = append(want[i], ev.ID())
		}
	}
	third := len(evs) / 3
	publishAcked(t, js, evs[:third]...)
	leader := cl.StreamLeader("SCROLLBACK")
	if leader < 0 {
		t.Fatal("the log has no leader")
	}
	cl.Kill(leader)
	t.Logf("%v: killed node %d, the log's leader", time.Since(start).Round(time.Millisecond), leader)
	publishAcked(t, js, evs[third:2*third]...)
	cl.Restart(leader)
	t.Logf("%v: node %d back", time.Since(start).Round(time.Millisecond), leader)
	last := publishAcked(t, js, evs[2*third:]...)
	t.Logf("%v: all published", time.Since(start).Round(time.Millisecond))
	for i, r := range rooms {
		for _, m := range []*Main{a, b, c} {
			if got := readRoom(t, m.NC, r.ID, last); !slices.Equal(got, want[i]) {
				t.Fatalf("%s after a node loss during ingest: %d events of %s, want %d, each once and in order",
					m.Config.Cluster.Instance, len(got), r.ID, len(want[i]))
			}
		}
	}

	// Leases may have moved while the node was down: wait for the
	// preferred owners again.
	waitSplit(t, a, b, c)

	// 2. A shutdown run by a: a dies halfway, and so does a NATS node.
	hs := testenv.NewHomeserver(t, nc, &testenv.Publisher{JS: js, Subjects: bus.Subjects{Prefix: "sb"}}, "test")
	hs.SetDelay(10 * time.Millisecond)
	doomed := shutdownRoom(t, c, hs, roomOwnedBy(t, a, "doomed"), 60)
	st, body := c.do(t, "DELETE", deletePath("v2", doomed.ID), "tok-admin", `{"block": true, "purge": true}`)
	if st != 200 {
		t.Fatalf("delete: %d %v", st, body)
	}
	deleteID := body["delete_id"].(string)
	t.Logf("%v: delete accepted", time.Since(start).Round(time.Millisecond))
	testenv.WaitFor(t, 20*time.Second, "a halfway through the kicks", func() bool { return hs.Acted("leave", "") >= 20 })
	crash(a)
	cl.Kill(1)
	t.Logf("%v: instance a and node 1 dead", time.Since(start).Round(time.Millisecond))

	// 3. A purge run by b: b dies as soon as the purge is accepted.
	purged := rooms[0]
	// c's connection may be moving off the dead node (503), or its log
	// consumer (504: the command was published but not applied in time):
	// like an admin, the test retries either. A purge published twice
	// with the same cut-off deletes nothing the second time.
	testenv.WaitFor(t, 40*time.Second, "the purge to be accepted", func() bool {
		st, body = c.do(t, "POST", "/_synapse/admin/v1/purge_history/"+purged.ID, "tok-admin", fmt.Sprintf(`{"purge_up_to_event_id": %q}`, want[0][len(want[0])-10]))
		if st != 200 && st != 503 && st != 504 {
			t.Fatalf("purge: %d %v", st, body)
		}
		return st == 200
	})
	t.Logf("%v: purge accepted", time.Since(start).Round(time.Millisecond))
	purgeID := body["purge_id"].(string)
	crash(b)
	failedOver := time.Now()

	lastState := ""
	testenv.WaitFor(t, 60*time.Second, "c to finish the shutdown and the purge", func() bool {
		_, d := c.do(t, "GET", "/_synapse/admin/v2/rooms/delete_status/"+deleteID, "tok-admin", "")
		_, p := c.do(t, "GET", "/_synapse/admin/v1/purge_history_status/"+purgeID, "tok-admin", "")
		if state := fmt.Sprint(d["status"], p["status"]); state != lastState {
			t.Logf("%v: delete %v, purge %v; c owns %v, applied %d of %d", time.Since(start).Round(time.Millisecond), d, p, c.Owners.Owned(), c.Projector.Applied(), c.Projector.LogLast())
			lastState = state
		}
		if d["status"] == "failed" || p["status"] == "failed" {
			t.Fatalf("a task failed: delete %v, purge %v", d, p)
		}
		return d["status"] == "complete" && p["status"] == "complete"
	})
	t.Logf("both tasks finished %v after the second instance died", time.Since(failedOver).Round(10*time.Millisecond))
	cl.Restart(1)
	close(stop)
	wg.Wait()
	gapMu.Lock()
	t.Logf("reads during the run: %d answered, %d failed, longest gap %v", reads.Load(), failed.Load(), longestGap.Round(time.Millisecond))
	gapMu.Unlock()
	if reads.Load() == 0 {
		t.Fatal("no read was answered")
	}
	for i := range 60 {
		if n := hs.Acted("leave", fmt.Sprintf("@user%d:test", i)); n != 1 {
			t.Errorf("@user%d:test left %d times", i, n)
		}
	}
	// A consumer may read from a replica still catching up: wait until
	// the log shows the completion the projection already applied.
	var got map[string]int
	testenv.WaitFor(t, 20*time.Second, "the purge's completion in the log", func() bool {
		got = taskUpdates(t, js, purged.ID, purgeID)
		return got["complete"] > 0
	})
	if got["complete"] != 1 || got["active"] != 1 {
		t.Errorf("purge task updates on the log: %v, want one active and one complete", got)
	}

	// A new instance rebuilds its projection from the log: the same as
	// the survivor's.
	d := startInstance(t, cl.URL(), "d", r3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lastSeq, err := (&bus.Log{JS: js, Stream: "SCROLLBACK"}).LastSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*Main{c, d} {
		if err := m.Projector.WaitAll(ctx, lastSeq); err != nil {
			t.Fatal(err)
		}
	}
	// d's janitor needs a moment to remove what the purges hid.
	var diff []string
	var dc, dd projections.Digest
	for deadline := time.Now().Add(20 * time.Second); ; {
		var err1, err2 error
		now := time.Now()
		dc, err1 = c.Store.Digest(now)
		dd, err2 = d.Store.Digest(now)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if diff = dc.Diff(dd); len(diff) == 0 || time.Now().After(deadline) {
			break
		}
		<-time.After(100 * time.Millisecond)
	}
	if len(diff) > 0 {
		for _, k := range slices.Sorted(maps.Keys(dc)) {
			if dc[k] != dd[k] {
				t.Logf("%s:\n c: %.600s\n d: %.600s", k, dc[k], dd[k])
			}
		}
		t.Fatalf("the survivor's projection differs from a rebuild from the log: %v", diff)
	}
}
