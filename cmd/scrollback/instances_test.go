package main

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// startInstance runs a scrollback instance on an external NATS (several
// instances share its log).
func startInstance(t *testing.T, url, name string, edit ...func(*Config)) *Main {
	t.Helper()
	return startMain(t, append([]func(*Config){func(c *Config) {
		c.NATS.URL = url
		c.Cluster.Instance = name
		c.Cluster.Lease = commands.DurationOf(time.Second)
	}}, edit...)...)
}

// crash stops an in-process instance the closest way to kill -9: its
// NATS connections go first, so it neither releases its leases nor
// finishes anything it was doing.
func crash(m *Main) {
	for _, nc := range m.extraNC { // the API's and the bridge's, as a dead process's
		nc.Close()
	}
	m.NC.Close()
	m.Close()
}

// crashOn is crash for an instance whose connections are all on n's one
// server, and waits until that server has dropped them. Until the server
// notices that a connection closed, it still routes requests to the
// connection's queue subscriptions, and one sent then is lost: its sender
// waits its whole timeout (the bridge's is 30 s). After crash alone, a
// probe lost 76 of 200 requests sent at once.
func crashOn(t *testing.T, n *testenv.NATS, m *Main) {
	t.Helper()
	var ids []uint64
	for _, nc := range append(slices.Clone(m.extraNC), m.NC) {
		id, err := nc.GetClientID()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	crash(m)
	testenv.WaitFor(t, 10*time.Second, "the server to drop the crashed instance's connections", func() bool {
		for _, id := range ids {
			c, err := n.Server.Connz(&server.ConnzOptions{CID: id, State: server.ConnOpen})
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Conns) > 0 {
				return false
			}
		}
		return true
	})
}

// waitSplit waits until every partition is owned by exactly one of the
// instances, the one preferred for it, and each sees all the others.
func waitSplit(t *testing.T, ms ...*Main) {
	t.Helper()
	members := map[string]bool{}
	for _, m := range ms {
		members[m.Config.Cluster.Instance] = true
	}
	testenv.WaitFor(t, 15*time.Second, "every partition to have exactly its preferred owner", func() bool {
		owners := map[int][]string{}
		for _, m := range ms {
			if len(m.Owners.Members()) != len(ms) {
				return false
			}
			for _, p := range m.Owners.Owned() {
				owners[p] = append(owners[p], m.Config.Cluster.Instance)
			}
		}
		for p := range projections.DefaultPartitions {
			if len(owners[p]) != 1 || owners[p][0] != bus.Preferred(p, members) {
				return false
			}
		}
		return true
	})
}

// roomOwnedBy returns a room ID whose partition m owns.
func roomOwnedBy(t *testing.T, m *Main, prefix string) string {
	t.Helper()
	for i := range 1000 {
		id := fmt.Sprintf("!%s%d:test", prefix, i)
		if m.Owners.Owns(projections.PartitionOf(bus.RoomKey(id), m.Store.Partitions())) {
			return fmt.Sprintf("%s%d", prefix, i)
		}
	}
	t.Fatalf("%s owns no partition", m.Config.Cluster.Instance)
	return ""
}

// taskUpdates counts the TaskUpdates with each status the log holds for
// a task.
func taskUpdates(t *testing.T, js jetstream.JetStream, roomID, taskID string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, u := range logRecords(t, js, roomID, commands.KindTask) {
		if u["task_id"] == taskID {
			out[u["status"].(string)]++
		}
	}
	return out
}

// logRecords decodes every message of one kind of a room the log holds.
func logRecords(t *testing.T, js jetstream.JetStream, roomID, kind string) []map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	subjects := bus.Subjects{Prefix: "sb"}
	c, err := js.OrderedConsumer(ctx, "SCROLLBACK", jetstream.OrderedConsumerConfig{FilterSubjects: []string{subjects.Room(roomID, kind)}})
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for {
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumPending == 0 {
			return out
		}
		msgs, err := c.Fetch(100, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for msg := range msgs.Messages() {
			u, err := bus.DecodeMap(msg.Data(), bus.DefaultLimits)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, u)
		}
	}
}

func TestInstances_ShareReadsAndSplitPartitions(t *testing.T) {
	n := testenv.NewNATS(t)
	a := startInstance(t, n.URL, "a")
	b := startInstance(t, n.URL, "b")
	waitSplit(t, a, b)
	if len(a.Owners.Owned()) == 0 || len(b.Owners.Owned()) == 0 {
		t.Fatalf("uneven split: a %v, b %v", a.Owners.Owned(), b.Owners.Owned())
	}
	room := testenv.NewRoom("shared", "test")
	evs := room.Setup(alice, bob)
	for i := range 50 {
		evs = append(evs, room.Msg(alice, fmt.Sprint(i)))
	}
	seqs := a.publisher().Publish(t, evs...)
	last := seqs[len(seqs)-1]
	// Both instances apply everything; a read sent to the shared queue
	// group is answered by either with the same page.
	for _, m := range []*Main{a, b} {
		if err := m.Projector.WaitFor(context.Background(), room.ID, last); err != nil {
			t.Fatal(err)
		}
	}
	want := ids(evs)
	slices.Reverse(want)
	for range 10 {
		p, err := b.messages(t, room.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 1000})
		if err != nil {
			t.Fatal(err)
		}
		if got := chunkIDs(p); !slices.Equal(got, want) {
			t.Fatalf("read %d events, want %d", len(got), len(want))
		}
	}
	// A purge requested through one instance is visible by ID through
	// the other at once (CatchUp), and run by the room's owner.
	st, body := a.do(t, "POST", "/_synapse/admin/v1/purge_history/"+room.ID, "tok-admin", fmt.Sprintf(`{"purge_up_to_event_id": %q}`, evs[20].ID()))
	if st != 200 {
		t.Fatalf("purge: %d %v", st, body)
	}
	id := body["purge_id"].(string)
	testenv.WaitFor(t, 20*time.Second, "the purge to complete, seen from b", func() bool {
		st, body := b.do(t, "GET", "/_synapse/admin/v1/purge_history_status/"+id, "tok-admin", "")
		if st != 200 {
			t.Fatalf("status from b: %d %v", st, body)
		}
		if audit, _ := body["audit"].(map[string]any); audit["requested_by"] != "@admin:test" {
			t.Fatalf("purge status without its audit record: %v", body)
		}
		return body["status"] == "complete"
	})
	if got := taskUpdates(t, a.JS, room.ID, id); got["complete"] != 1 || got["active"] != 1 {
		t.Fatalf("task updates on the log: %v, want one active and one complete", got)
	}
}

// TestInstances_ShutdownFailsOver crashes the instance running a room
// shutdown halfway: the other instance takes the partition over when the
// lease expires and finishes the task from its last update, and the
// homeserver acts on each member once.
func TestInstances_ShutdownFailsOver(t *testing.T) {
	n := testenv.NewNATS(t)
	a := startInstance(t, n.URL, "a")
	b := startInstance(t, n.URL, "b")
	waitSplit(t, a, b)
	hs := testenv.NewHomeserver(t, n.NC, &testenv.Publisher{JS: n.JS, Subjects: bus.Subjects{Prefix: "sb"}}, "test")
	hs.SetDelay(20 * time.Millisecond)
	room := shutdownRoom(t, b, hs, roomOwnedBy(t, a, "doomed"), 80)
	st, body := b.do(t, "DELETE", deletePath("v2", room.ID), "tok-admin", `{"block": true, "purge": true}`)
	if st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	id := body["delete_id"].(string)
	testenv.WaitFor(t, 20*time.Second, "a to be halfway through the kicks", func() bool {
		return hs.Acted("leave", "") >= 20
	})
	crashOn(t, n, a)
	crashed := time.Now()
	var task map[string]any
	// A rare failure under load (about 1 in 40 runs with -race next to
	// other packages' tests) left b without finishing: say where it was.
	var seen []string // each change of the answer, with its time after the crash
	defer func() {
		if t.Failed() {
			t.Logf("b's answers after the crash %q; b owns partitions %v; b applied %d of %d log messages; the homeserver saw %d leaves",
				seen, b.Owners.Owned(), b.Projector.Applied(), b.Projector.LogLast(), hs.Acted("leave", ""))
		}
	}()
	testenv.WaitFor(t, 30*time.Second, "b to finish the shutdown", func() bool {
		var st int
		st, task = b.do(t, "GET", "/_synapse/admin/v2/rooms/delete_status/"+id, "tok-admin", "")
		answer := fmt.Sprintf("%d %v/%v", st, task["status"], task["error"])
		if len(seen) == 0 || !strings.HasSuffix(seen[len(seen)-1], " "+answer) {
			seen = append(seen, fmt.Sprintf("%v %s", time.Since(crashed).Round(time.Millisecond), answer))
		}
		return task["status"] == "complete" || task["status"] == "failed"
	})
	t.Logf("finished %v after the crash (lease %v)", time.Since(crashed).Round(10*time.Millisecond), b.Config.Cluster.Lease)
	if task["status"] != "complete" {
		t.Fatalf("task %v", task)
	}
	for i := range 80 {
		user := fmt.Sprintf("@user%d:test", i)
		if got := hs.Acted("leave", user); got != 1 {
			t.Errorf("%s left %d times", user, got)
		}
	}
	// The shutdown ends with its purge_room command (CONTRACT.md section
	// 3): exactly one, whoever ran which part.
	purges := 0
	for _, c := range logRecords(t, b.JS, room.ID, commands.KindCmd) {
		if c["id"] == id+"-purge" {
			purges++
		}
	}
	if got := taskUpdates(t, b.JS, room.ID, id); purges != 1 || got["failed"] != 0 || got["complete"] > 1 {
		t.Fatalf("the log holds %d purge commands and task updates %v for the delete", purges, got)
	}
}

// TestBridge_OwnProcess runs the HTTP bridge without a projection in
// front of an instance on an external NATS.
func TestBridge_OwnProcess(t *testing.T) {
	n := testenv.NewNATS(t)
	bridge := &Main{Config: DefaultConfig()}
	bridge.Config.NATS.URL = n.URL
	bridge.Config.DataDir = t.TempDir()
	bridge.Config.HTTP.Listen = "127.0.0.1:0"
	bridge.Config.Auth.Tokens = []TokenConfig{{Token: "tok-alice", UserID: alice}, {Token: "tok-admin", UserID: "@admin:test", Admin: true}}
	if err := bridge.OpenBridge(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bridge.Close() })
	health := func() int {
		resp, err := http.Get("http://" + bridge.HTTPAddr + "/health")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := health(); st != 503 {
		t.Fatalf("/health with no instance behind the bridge: %d, want 503", st)
	}
	a := startInstance(t, n.URL, "a")
	testenv.WaitFor(t, 10*time.Second, "/health 200", func() bool { return health() == 200 })
	room := testenv.NewRoom("bridged", "test")
	evs := append(room.Setup(alice), room.Msg(alice, "hello"))
	seqs := a.publisher().Publish(t, evs...)
	if err := a.Projector.WaitFor(context.Background(), room.ID, seqs[len(seqs)-1]); err != nil {
		t.Fatal(err)
	}
	st, body := bridge.do(t, "GET", "/_matrix/client/v3/rooms/"+room.ID+"/messages?dir=b&limit=1", "tok-alice", "")
	if st != 200 || len(body["chunk"].([]any)) != 1 {
		t.Fatalf("read through the bridge: %d %v", st, body)
	}
	if err := (&Main{Config: Config{HTTP: HTTPConfig{Listen: ":0"}}}).OpenBridge(); err == nil {
		t.Fatal("a bridge without nats.url started")
	}
}
