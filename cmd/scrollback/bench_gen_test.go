package main

import (
	"context"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/internal/loadgen"
)

// TestGenLog_RoomsRebuild checks the property the floor of the reads by
// room size relies on: a room rebuilt alone from the seed (genRoomEvents)
// holds the very events the interleaved log published for it (the same
// maps and sizes; MessagePack map keys come in Go's map order), whatever
// the other rooms did.
func TestGenLog_RoomsRebuild(t *testing.T) {
	sizes, _, err := genSizes(20, 2_000, 1.2, 0)
	if err != nil {
		t.Fatal(err)
	}
	subjects := bus.Subjects{Prefix: "sb"}
	g := newGenLog(7, "t", sizes, subjects)
	got := make([][][]byte, len(sizes))
	for {
		i, m := g.Next()
		if m == nil {
			break
		}
		if want := subjects.Room(g.Rooms[i].ID, "event"); m.Subject != want {
			t.Fatalf("subject %s, want %s", m.Subject, want)
		}
		got[i] = append(got[i], m.Data)
	}
	for i, n := range sizes {
		if len(got[i]) != n {
			t.Fatalf("room %d: %d events published, want %d", i, len(got[i]), n)
		}
		j := 0
		for data := range genRoomEvents(7, "t", i, n) {
			a, errA := bus.DecodeMap(data, bus.DefaultLimits)
			b, errB := bus.DecodeMap(got[i][j], bus.DefaultLimits)
			if errA != nil || errB != nil || len(data) != len(got[i][j]) || !reflect.DeepEqual(a, b) {
				t.Fatalf("room %d event %d: rebuilt alone it differs from the published one: %v\n%v", i, j, a, b)
			}
			j++
		}
		if j != n {
			t.Fatalf("room %d: rebuilt %d events, want %d", i, j, n)
		}
	}
}

// TestGenRoom_Shapes checks that a generated room is a valid room log:
// every kind of event occurs, relations point at earlier events of the
// room, membership stays consistent and the reader never leaves.
func TestGenRoom_Shapes(t *testing.T) {
	r := newSynthRoom(3, "s", 0, 5_000)
	seen := map[genKind]int{}
	ids := map[string]bool{}
	joined := map[string]bool{}
	for i := range 5_000 {
		kind, data := r.Next()
		seen[kind]++
		ev, err := bus.DecodeMap(data, bus.DefaultLimits)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := ev["event_id"].(string)
		if ev["room_id"] != r.ID {
			t.Fatalf("event %d: room %v", i, ev["room_id"])
		}
		if depth, ok := commands.AsInt(ev["depth"]); !ok || depth != int64(i+1) {
			t.Fatalf("event %d: depth %v", i, ev["depth"])
		}
		content, _ := ev["content"].(map[string]any)
		if rel, ok := content["m.relates_to"].(map[string]any); ok {
			target, _ := rel["event_id"].(string)
			if reply, ok := rel["m.in_reply_to"].(map[string]any); ok && target == "" {
				target, _ = reply["event_id"].(string)
			}
			if !ids[target] {
				t.Fatalf("event %d (%v) relates to %q, not an earlier event of the room", i, kind, target)
			}
		}
		if ev["type"] == "m.room.member" {
			key, _ := ev["state_key"].(string)
			joined[key] = content["membership"] == "join"
		} else if sender, _ := ev["sender"].(string); i >= genSetup && !joined[sender] {
			t.Fatalf("event %d (%v) sent by %s, who is not joined", i, kind, sender)
		}
		ids[id] = true
	}
	for k := range genKinds {
		if seen[k] == 0 {
			t.Errorf("no %s events in 5000", genKindNames[k])
		}
	}
	if !joined[r.Reader()] || !joined[genUser(0)] {
		t.Errorf("the reader or the creator left")
	}
}

// TestPublisher publishes through both modes to a real embedded server
// and checks the acknowledgements: every message once, in log order,
// groups contiguous.
func TestPublisher(t *testing.T) {
	subjects, connect := publisherLog(t)
	var next uint64 = 1
	for _, tc := range []struct {
		mode       string
		size, n    int
		wantGroups int
	}{
		{publishModeBatch, 1000, 2_500, 3},
		{publishModeBatch, 7, 50, 8},
		{publishModeAsync, 100, 450, 5},
	} {
		var acks []pubAck
		p, closeP, err := newPublisher(connect, "pub", tc.mode, tc.size, 4, func(a pubAck) { acks = append(acks, a) })
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		n, err := p.run(context.Background(), func() *nats.Msg {
			if k == tc.n {
				return nil
			}
			k++
			return &nats.Msg{Subject: subjects.Room("!r:x", "event"), Data: []byte{0x80}}
		})
		closeP()
		if err != nil || n != tc.n {
			t.Fatalf("%s/%d: published %d, %v; want %d", tc.mode, tc.size, n, err, tc.n)
		}
		if len(acks) != tc.wantGroups {
			t.Errorf("%s/%d: %d groups acknowledged, want %d", tc.mode, tc.size, len(acks), tc.wantGroups)
		}
		total := 0
		for _, a := range acks {
			if a.First != next || a.Last != a.First+uint64(a.N)-1 || a.Acked.Before(a.Sent) {
				t.Fatalf("%s/%d: ack %+v, want the group to start at %d", tc.mode, tc.size, a, next)
			}
			next = a.Last + 1
			total += a.N
		}
		if total != tc.n {
			t.Errorf("%s/%d: acks cover %d messages, want %d", tc.mode, tc.size, total, tc.n)
		}
	}
}

// TestSummaryTable_Records checks that the summary's sections become the
// report's tables, rows and notes included.
func TestSummaryTable_Records(t *testing.T) {
	sc := &loadgen.Scenario{Name: "x"}
	tw := tabwriter.NewWriter(io.Discard, 0, 0, 2, ' ', 0)
	tab := summaryTable{tw: tw, rec: &summaryRec{scenario: sc}}
	tab.section("first", "metric", "value", "vs", "ratio", "goal", "result")
	tab.latRow("p99", 2*time.Millisecond, time.Millisecond, 3)
	tab.line("a note")
	tab.section("second", "metric", "value")
	tab.thrRow("throughput", 10, 20, 0.6)
	tw.Flush()
	if len(sc.Tables) != 2 {
		t.Fatalf("%d tables, want 2", len(sc.Tables))
	}
	first, second := sc.Tables[0], sc.Tables[1]
	if first.Title != "first" || len(first.Rows) != 1 || !slices.Equal(first.Rows[0], []string{"p99", "2.00ms", "1.00ms", "2.00x", "<= 3x", "PASS"}) || !slices.Equal(first.Notes, []string{"a note"}) {
		t.Errorf("first table = %+v", first)
	}
	if second.Title != "second" || len(second.Rows) != 1 || second.Rows[0][5] != "MISS" {
		t.Errorf("second table = %+v", second)
	}
	var out strings.Builder
	if err := (&loadgen.Report{Scenarios: []*loadgen.Scenario{sc}}).WriteHTML(&out); err != nil || !strings.Contains(out.String(), "a note") {
		t.Errorf("report: %v", err)
	}
}

// Bench event IDs look like a homeserver's (room version 4 and later: "$"
// and 43 characters of unpadded URL-safe base64), so that they scatter
// over the events index as real ones do; each event of each room has
// its own, and the same one in every run.
func TestBenchEventID_ShapedLikeMatrix(t *testing.T) {
	seen := map[string]bool{}
	for _, room := range []string{"!a:bench.example", "!b:bench.example"} {
		for i := range 1000 {
			id := benchEventID(room, i)
			if len(id) != 44 || id[0] != '$' || strings.Trim(id[1:], "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
				t.Fatalf("event %d of %s: %q is not shaped like a Matrix event ID", i, room, id)
			}
			if seen[id] {
				t.Fatalf("event %d of %s: %q given twice", i, room, id)
			}
			seen[id] = true
			if again := benchEventID(room, i); again != id {
				t.Fatalf("event %d of %s: %q, then %q", i, room, id, again)
			}
		}
	}
}

// TestCPUBudget: the catch-up goal of 50k events/s leaves each event 40
// µs of CPU on 2 cores, 20 µs on one; the measured cost is spread over
// the events.
func TestCPUBudget(t *testing.T) {
	for cores, want := range map[int]float64{1: 20, 2: 40, 4: 80} {
		if got := cpuBudget(cores); got != want {
			t.Errorf("cpuBudget(%d) = %v µs, want %v", cores, got, want)
		}
	}
	if got := cpuPerEvent(30*time.Second, 1_000_000); got != 30 {
		t.Errorf("30 s over 1M events = %v µs, want 30", got)
	}
	if got := cpuPerEvent(time.Second, 0); got != 0 {
		t.Errorf("over no events = %v, want 0", got)
	}
}

// TestPublisher_SentWhenPublished: a batch's Sent is when it is handed to
// the client, so publish-to-ack (and the ingest's freshness, timed from
// Sent) is the log's latency, not the time the batch took to be made: a
// paced ingest makes one message every 1/rate, and Sent was taken when
// the first one was made, before the rest were and before a slot was
// free.
func TestPublisher_SentWhenPublished(t *testing.T) {
	subjects, connect := publisherLog(t)
	const size, batches = 3, 2
	var acks []pubAck
	p, closeP, err := newPublisher(connect, "pub", publishModeBatch, size, 1, func(a pubAck) { acks = append(acks, a) })
	if err != nil {
		t.Fatal(err)
	}
	defer closeP()
	var made []time.Time
	if _, err := p.run(context.Background(), func() *nats.Msg {
		if len(made) == size*batches {
			return nil
		}
		made = append(made, time.Now()) // the clock moves between two messages made
		return &nats.Msg{Subject: subjects.Room("!r:x", "event"), Data: []byte{0x80}}
	}); err != nil {
		t.Fatal(err)
	}
	if len(acks) != batches {
		t.Fatalf("%d acks, want %d", len(acks), batches)
	}
	for i, a := range acks { // in log order, one a batch
		if last := made[(i+1)*size-1]; a.Sent.Before(last) {
			t.Errorf("batch %d: Sent %v before its last message was made, so publish to ack counts the making", i, last.Sub(a.Sent))
		}
	}
}

// publisherLog is an embedded server with the log's stream, and how a
// publisher connects to it.
func publisherLog(t *testing.T) (bus.Subjects, func(string) (*nats.Conn, error)) {
	t.Helper()
	subjects := bus.Subjects{Prefix: "sb"}
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{StoreDir: t.TempDir(), Subjects: subjects})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	connect := func(name string) (*nats.Conn, error) { return bus.ConnectInProcess(srv, name) }
	nc, err := connect("setup")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstreamOf(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.EnsureStream(context.Background(), js, subjects, "SCROLLBACK"); err != nil {
		t.Fatal(err)
	}
	return subjects, connect
}
