package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// allPages reads a room both ways with every page's tokens.
func (m *Main) allPages(tb testing.TB, roomID string) []any {
	tb.Helper()
	var out []any
	for _, dir := range []string{"b", "f"} {
		from := ""
		for i := 0; i < 1000; i++ {
			req := map[string]any{"admin": true, "dir": dir, "limit": 7}
			if from != "" {
				req["from"] = from
			}
			p, err := m.messages(tb, roomID, req)
			if err != nil {
				tb.Fatal(err)
			}
			for _, ev := range p["chunk"].([]any) {
				e := ev.(map[string]any)
				delete(e, "age")
				delete(e["unsigned"].(map[string]any), "age")
			}
			out = append(out, p["chunk"], p["end"])
			end, ok := p["end"].(string)
			if !ok {
				break
			}
			from = end
		}
	}
	return out
}

// TestRebuild_AfterPurgesGivesIdenticalReads: purge history in one room
// and purge another room entirely, let the purges finish (rows deleted,
// log messages erased), then rebuild the projection from the log: every
// page and token is the same.
func TestRebuild_AfterPurgesGivesIdenticalReads(t *testing.T) {
	m := startMain(t)
	a, b := testenv.NewRoom("keep", "test"), testenv.NewRoom("drop", "test")
	evs := append(a.Setup(alice, "@remote:other.org"), b.Setup("@remote:other.org")...)
	for i := range 30 {
		sender := "@remote:other.org"
		if i%3 == 0 {
			sender = alice
		}
		evs = append(evs, a.Msg(sender, fmt.Sprint(i)), b.Msg("@remote:other.org", fmt.Sprint(i)))
	}
	seqs := m.publisher().Publish(t, evs...)
	if _, err := m.messages(t, a.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	cut := evs[len(evs)-20]
	st, body := m.do(t, "POST", "/_synapse/admin/v1/purge_history/"+url.PathEscape(a.ID)+"/"+url.PathEscape(cut.ID()), "tok-admin", "")
	if st != 200 {
		t.Fatalf("purge: %d %v", st, body)
	}
	purgeID := body["purge_id"].(string)
	m.publisher().Command(t, map[string]any{"id": "droproom", "action": "purge_room", "room_id": b.ID, "params": map[string]any{"force": true}})
	testenv.WaitFor(t, 20*time.Second, "purges to finish", func() bool {
		pa, _ := m.Store.Task(purgeID)
		pb, _ := m.Store.Task("droproom")
		return pa != nil && pb != nil && pa.Status == "complete" && pb.Status == "complete"
	})
	before := [][]any{m.allPages(t, a.ID), m.allPages(t, b.ID)}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	// The live projection equals a rebuild from the log.
	var vout bytes.Buffer
	if n, err := verifyProjection(context.Background(), m.Config, &vout); err != nil || n != 0 {
		t.Fatalf("verify: %d differences, %v\n%s", n, err, vout.String())
	}
	// A marker left from a build that a restart of the machine cut short
	// does not outlive the rebuild.
	marker := projections.BuildMarker(filepath.Join(m.Config.DataDir, "scrollback.db"))
	if err := os.WriteFile(marker, []byte("another boot"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := rebuildProjection(context.Background(), m.Config, &out); err != nil {
		t.Fatal(err)
	}
	t.Log(out.String())
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the build marker outlived the rebuild: %v", err)
	}
	m2 := openAgain(t, m.Config)
	after := [][]any{m2.allPages(t, a.ID), m2.allPages(t, b.ID)}
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("reads differ after rebuild:\nbefore %v\nafter  %v", before, after)
	}
	for _, id := range []string{purgeID, "droproom"} {
		task, _ := m2.Store.Task(id)
		if task == nil || task.Status != "complete" {
			t.Fatalf("task %s after rebuild: %+v", id, task)
		}
	}
}

// TestCompact_KeepsReadsAndShrinks: after a purge of most of a room,
// `scrollback compact` gives the freed pages back to the file system, and
// the compacted file, synced and put in place, reads the same.
func TestCompact_KeepsReadsAndShrinks(t *testing.T) {
	m := startMain(t)
	r := testenv.NewRoom("big", "test")
	evs := r.Setup("@remote:other.org")
	for i := range 2000 {
		evs = append(evs, r.Msg("@remote:other.org", strings.Repeat("x", 200)+fmt.Sprint(i)))
	}
	seqs := m.publisher().Publish(t, evs...)
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	cut := evs[len(evs)-10]
	st, body := m.do(t, "POST", "/_synapse/admin/v1/purge_history/"+url.PathEscape(r.ID)+"/"+url.PathEscape(cut.ID()), "tok-admin", "")
	if st != 200 {
		t.Fatalf("purge: %d %v", st, body)
	}
	purgeID := body["purge_id"].(string)
	testenv.WaitFor(t, 20*time.Second, "the purge to finish", func() bool {
		task, _ := m.Store.Task(purgeID)
		return task != nil && task.Status == "complete"
	})
	before := m.allPages(t, r.ID)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(m.Config.DataDir, "scrollback.db")
	big, err := os.Stat(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	// A file still being built is not compacted.
	marker := projections.BuildMarker(dbPath)
	if err := os.WriteFile(marker, []byte("another boot"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := runCompact(context.Background(), []string{"--data", m.Config.DataDir}, &out); err == nil || !strings.Contains(err.Error(), "still being built") {
		t.Fatalf("compact of a file being built: %v", err)
	}
	if err := os.Remove(marker); err != nil {
		t.Fatal(err)
	}
	if err := runCompact(context.Background(), []string{"--data", m.Config.DataDir}, &out); err != nil {
		t.Fatal(err)
	}
	t.Log(out.String())
	small, err := os.Stat(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if small.Size() >= big.Size() {
		t.Fatalf("compact: %d -> %d bytes, want smaller", big.Size(), small.Size())
	}
	if _, err := os.Stat(dbPath + ".compact"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the temporary copy is left behind: %v", err)
	}
	m2 := openAgain(t, m.Config)
	if after := m2.allPages(t, r.ID); !reflect.DeepEqual(before, after) {
		t.Fatalf("reads differ after compact:\nbefore %v\nafter  %v", before, after)
	}
}

// TestVerify_FindsADifference: a projection changed behind the log's back
// (here: a block flag written straight into the file) fails verify.
func TestVerify_FindsADifference(t *testing.T) {
	m := startMain(t)
	r := testenv.NewRoom("tampered", "test")
	seqs := m.publisher().Publish(t, r.Setup(alice)...)
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	cfg := m.Config
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := projections.Open(filepath.Join(cfg.DataDir, "scrollback.db"), projections.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// A ts of now: a task of 1970 would have expired, and the digest
	// leaves expired tasks out.
	data, _ := bus.Encode(map[string]any{"id": "sneaky", "action": "block_room", "room_id": r.ID, "params": map[string]any{"block": true},
		"ts": time.Now().UnixMilli()})
	e := bus.Subjects{Prefix: "sb"}.Decode(1<<40, bus.Subjects{Prefix: "sb"}.Room(r.ID, "cmd"), data, 0)
	if _, err := s.ApplyBatch(projections.PartitionOf(bus.RoomKey(r.ID), s.Partitions()), []commands.LogEntry{e}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	var out bytes.Buffer
	n, err := verifyProjection(context.Background(), cfg, &out)
	if err != nil || n == 0 {
		t.Fatalf("verify found %d differences (%v):\n%s", n, err, out.String())
	}
	if !strings.Contains(out.String(), "task sneaky: only in the live projection") {
		t.Fatalf("report:\n%s", out.String())
	}
}

// TestRebuild_LeavesOutExpiredTasks: a rebuild replays every task, and
// then deletes the expired ones, as the live sweep does; verify compares
// a live file whose sweep has not deleted one yet with it and finds no
// difference. A task that has not expired is in both.
func TestRebuild_LeavesOutExpiredTasks(t *testing.T) {
	m := startMain(t)
	r := testenv.NewRoom("expired", "test")
	m.publisher().Publish(t, r.Setup(alice)...)
	week := time.Duration(commands.TaskExpiryMS) * time.Millisecond
	for id, ts := range map[string]time.Time{"oldblock": time.Now().Add(-week - time.Hour), "newblock": time.Now()} {
		seq := m.publisher().Command(t, map[string]any{"id": id, "action": "block_room", "room_id": r.ID,
			"params": map[string]any{"block": true}, "ts": ts.UnixMilli()})
		if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seq}); err != nil {
			t.Fatal(err)
		}
	}
	// The runner swept when it started, before the commands; its next
	// sweep is a minute away.
	if task, err := m.Store.Task("oldblock"); err != nil || task == nil {
		t.Fatalf("the live file's expired task before its sweep: %+v, %v", task, err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if n, err := verifyProjection(context.Background(), m.Config, &out); err != nil || n != 0 {
		t.Fatalf("verify: %d differences, %v\n%s", n, err, out.String())
	}
	if err := rebuildProjection(context.Background(), m.Config, &out); err != nil {
		t.Fatal(err)
	}
	s := testenv.OpenStore(t, filepath.Join(m.Config.DataDir, "scrollback.db"))
	for id, kept := range map[string]bool{"oldblock": false, "newblock": true} {
		if task, err := s.Task(id); err != nil || (task != nil) != kept {
			t.Errorf("rebuilt file: task %s = %+v, %v; want kept %v", id, task, err, kept)
		}
	}
}

// purgeHistory purges a room's history below event cut over HTTP, with
// the given body, and waits until the purge is complete and its erasure
// from the log (a compaction on the embedded server) is done.
func (m *Main) purgeHistory(t *testing.T, roomID, cut, body string) {
	t.Helper()
	st, reply := m.do(t, "POST", "/_synapse/admin/v1/purge_history/"+url.PathEscape(roomID)+"/"+url.PathEscape(cut), "tok-admin", body)
	if st != 200 {
		t.Fatalf("purge: %d %v", st, reply)
	}
	purgeID := reply["purge_id"].(string)
	testenv.WaitFor(t, 20*time.Second, "the history purge and its erasure", func() bool {
		task, _ := m.Store.Task(purgeID)
		pending, _ := m.Store.ErasuresPending()
		return task != nil && task.Status == commands.TaskComplete && !pending
	})
}

// TestPurgeHistory_ErasesTheCopiesOfAnEarlierPurge: a first purge keeps
// a local user's messages as outliers, and the compaction of the
// embedded server's log copies them to the room's kept subject. A second
// purge with delete_local_events deletes them: their copies leave the log
// too, the state events' copies stay, and the projection still equals a
// rebuild from the log.
func TestPurgeHistory_ErasesTheCopiesOfAnEarlierPurge(t *testing.T) {
	m := startMain(t)
	r := testenv.NewRoom("recopied", "test")
	evs := r.Setup(alice, "@remote:other.org")
	setup := len(evs)
	var local []int // indexes in evs of alice's messages below the cut-off
	for i := range 20 {
		sender := "@remote:other.org"
		if i%4 == 0 {
			sender = alice
			if i < 16 {
				local = append(local, len(evs))
			}
		}
		evs = append(evs, r.Msg(sender, fmt.Sprint(i)))
	}
	seqs := m.publisher().Publish(t, evs...)
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	keptSubj := faultSubjects.Room(r.ID, commands.KindKept)
	cut := evs[len(evs)-4].ID() // alice's 16th: the last message below it is a remote one
	m.purgeHistory(t, r.ID, cut, "")
	if n, want := mustSubjectCount(t, m.JS, keptSubj), uint64(setup+len(local)); n != want {
		t.Fatalf("the first purge left %d kept copies, want %d (the set-up and the local messages)", n, want)
	}
	m.purgeHistory(t, r.ID, cut, `{"delete_local_events": true}`)
	if n := mustSubjectCount(t, m.JS, keptSubj); n != uint64(setup) {
		t.Errorf("the second purge left %d kept copies, want %d (the set-up's)", n, setup)
	}
	read := logAsRead(t, m.JS, "SCROLLBACK", faultSubjects)
	for _, i := range local {
		if subj, ok := read[seqs[i]]; ok {
			t.Errorf("deleted local message %d still read from the log, on %s", i, subj)
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	var vout bytes.Buffer
	if n, err := verifyProjection(context.Background(), m.Config, &vout); err != nil || n != 0 {
		t.Fatalf("verify: %d differences, %v\n%s", n, err, vout.String())
	}
}

// TestPurgeRoom_ErasesTheKeptCopies: a purge_history on the embedded
// server moves the messages it keeps to the room's kept subject (the set-up's
// state events here); a later purge_room of the room erases them with
// its events, and the projection still equals a rebuild from the log.
func TestPurgeRoom_ErasesTheKeptCopies(t *testing.T) {
	m := startMain(t)
	r := testenv.NewRoom("copied", "test")
	evs := r.Setup("@remote:other.org")
	for i := range 20 {
		evs = append(evs, r.Msg("@remote:other.org", fmt.Sprint(i)))
	}
	seqs := m.publisher().Publish(t, evs...)
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	eventSubj, keptSubj := faultSubjects.Room(r.ID, commands.KindEvent), faultSubjects.Room(r.ID, commands.KindKept)
	count := func(subject string) uint64 { return mustSubjectCount(t, m.JS, subject) }
	m.purgeHistory(t, r.ID, evs[len(evs)-5].ID(), "")
	if n := count(keptSubj); n == 0 {
		t.Fatal("the history purge kept no copy: the set-up's state events should be there")
	}
	m.publisher().Command(t, map[string]any{"id": "dropcopied", "action": "purge_room", "room_id": r.ID, "params": map[string]any{"force": true}})
	testenv.WaitFor(t, 20*time.Second, "the room purge's erasure", func() bool {
		task, _ := m.Store.Task("dropcopied")
		pending, _ := m.Store.ErasuresPending()
		return task != nil && task.Status == commands.TaskComplete && !pending
	})
	if n := count(keptSubj); n != 0 {
		t.Errorf("%d kept copies left after purge_room", n)
	}
	if n := count(eventSubj); n != 0 {
		t.Errorf("%d events left after purge_room", n)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	var vout bytes.Buffer
	if n, err := verifyProjection(context.Background(), m.Config, &vout); err != nil || n != 0 {
		t.Fatalf("verify: %d differences, %v\n%s", n, err, vout.String())
	}
}

// TestRebuild_KeepsARefusedPurgeRoomRefused: an unforced purge_room
// refused while a local user is joined, then a forced one that erases the
// room's history: a rebuild, which finds no history below the first,
// refuses it too, because the task runner confirmed the refusal in the
// log (found by a helper's review: it came back scheduled, and ran).
func TestRebuild_KeepsARefusedPurgeRoomRefused(t *testing.T) {
	m := startMain(t)
	r := refusedPurgeRoom(t, m, "refused")
	m.publisher().Command(t, map[string]any{"id": "forced", "action": "purge_room", "room_id": r.ID,
		"params": map[string]any{"force": true}})
	testenv.WaitFor(t, 20*time.Second, "the forced purge and its erasure", func() bool {
		task, _ := m.Store.Task("forced")
		pending, _ := m.Store.ErasuresPending()
		return task != nil && task.Status == "complete" && !pending
	})
	testenv.WaitFor(t, 10*time.Second, "the refusal confirmed in the log", func() bool {
		tasks, err := m.Store.Unconfirmed()
		return err == nil && len(tasks) == 0
	})
	live, _ := m.Store.RoomTasks(r.ID)
	rebuildKeepsTasks(t, m, live)
}

// refusedPurgeRoom publishes a room where alice (local) is joined, and an
// unforced purge_room of it, "refused", which the members check refuses.
func refusedPurgeRoom(t *testing.T, m *Main, name string) *testenv.Room {
	t.Helper()
	r := testenv.NewRoom(name, "test")
	evs := r.Setup(alice)
	for i := range 5 {
		evs = append(evs, r.Msg(alice, fmt.Sprint(i)))
	}
	m.publisher().Publish(t, evs...)
	seq := m.publisher().Command(t, map[string]any{"id": "refused", "action": "purge_room", "room_id": r.ID,
		"params": map[string]any{"force": false}})
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seq}); err != nil {
		t.Fatal(err)
	}
	if task, _ := m.Store.Task("refused"); task == nil || task.Status != "failed" {
		t.Fatalf("unforced purge_room with alice joined: %+v, want failed", task)
	}
	return r
}

// The forward-extremity guard of a purge_history (SYNAPSE.md 6.4 step 1)
// is checked against what the room holds at the command's position in the
// log. A later purge erases events that were the room's forward
// extremities when the earlier purge was applied: a rebuild from the
// erased log then finds only the kept state events below the first
// purge, whose depth is below its cut-off, and fails the purge that
// completed live.
// TestRebuild_KeepsAnEarlierPurgeComplete: a purge_history that passed the
// forward-extremity guard, then a later one that erases the events that
// were the room's forward extremities then: a rebuild passes the first
// too, because its task's updates follow it in the log (found by a
// helper's review: the rebuild failed it).
func TestRebuild_KeepsAnEarlierPurgeComplete(t *testing.T) {
	m := startMain(t)
	r := testenv.NewRoom("twice", "test")
	evs := r.Setup(alice)
	for len(evs) < 50 { // depths 5..50, remote
		evs = append(evs, r.Msg("@remote:other.org", fmt.Sprint(len(evs))))
	}
	m.publisher().Publish(t, evs...)
	m.purgeHistory(t, r.ID, evs[39].ID(), "") // cut-off depth 40; tip at 50
	first, _ := m.Store.RoomTasks(r.ID)
	if len(first) != 1 || first[0].Status != "complete" {
		t.Fatalf("first purge: %+v", first)
	}
	more := []testenv.Event{}
	for range 50 { // depths 51..100, remote
		more = append(more, r.Msg("@remote:other.org", "more"))
	}
	m.publisher().Publish(t, more...)
	m.purgeHistory(t, r.ID, more[39].ID(), "") // cut-off depth 90
	live, _ := m.Store.RoomTasks(r.ID)
	rebuildKeepsTasks(t, m, live)
}

// TestRebuild_KeepsARefusedShutdownRefused: a shutdown whose purge step
// is refused (a member's leave failed, so a local user is still joined),
// then a forced purge_room that erases the room's history: a rebuild
// fails the shutdown as the live file did, by the runner's confirmation
// of the step's refusal.
func TestRebuild_KeepsARefusedShutdownRefused(t *testing.T) {
	m := startMain(t)
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	room := shutdownRoom(t, m, hs, "refusedstep", 3)
	hs.FailLeave("@user1:test")
	st, body := m.do(t, "DELETE", deletePath("v1", room.ID), "tok-admin", `{}`)
	wantErr(t, st, body, 400, "M_UNKNOWN", "Users are still joined to this room")
	m.publisher().Command(t, map[string]any{"id": "forced", "action": "purge_room", "room_id": room.ID,
		"params": map[string]any{"force": true}})
	testenv.WaitFor(t, 20*time.Second, "the forced purge, its erasure and the refusal's confirmation", func() bool {
		task, _ := m.Store.Task("forced")
		pending, _ := m.Store.ErasuresPending()
		unconfirmed, _ := m.Store.Unconfirmed()
		return task != nil && task.Status == commands.TaskComplete && !pending && len(unconfirmed) == 0
	})
	live, err := m.Store.RoomTasks(room.ID)
	if err != nil {
		t.Fatal(err)
	}
	rebuildKeepsTasks(t, m, live)
}

// rebuildKeepsTasks stops m, checks that `scrollback verify` finds no
// difference, rebuilds the projection from the log and checks that each
// of the live tasks has its live status and error there.
func rebuildKeepsTasks(t *testing.T, m *Main, live []*commands.Task) {
	t.Helper()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if n, err := verifyProjection(context.Background(), m.Config, &out); n != 0 || err != nil {
		t.Fatalf("verify: %d differences, %v\n%s", n, err, out.String())
	}
	if err := rebuildProjection(context.Background(), m.Config, &out); err != nil {
		t.Fatal(err)
	}
	s := testenv.OpenStore(t, filepath.Join(m.Config.DataDir, "scrollback.db"))
	for _, lt := range live {
		rt, err := s.Task(lt.ID)
		if err != nil {
			t.Fatal(err)
		}
		if rt == nil || rt.Status != lt.Status || rt.Error != lt.Error {
			t.Errorf("task %s (%s): live %s %q, rebuilt %+v", lt.ID, lt.Action, lt.Status, lt.Error, rt)
		}
	}
}

// TestRebuild_KeepsAnEarlierPurgeCompleteAfterOtherTraffic: as
// TestRebuild_KeepsAnEarlierPurgeComplete, with another room's events
// first in the same partition, so that in the rebuild the room's events
// and its first purge share a batch that the committed file knows
// nothing of (found by a helper's review: the rebuild failed the purge).
func TestRebuild_KeepsAnEarlierPurgeCompleteAfterOtherTraffic(t *testing.T) {
	m := startMain(t)
	var other *testenv.Room
	for i := 0; ; i++ {
		other = testenv.NewRoom(fmt.Sprintf("other%d", i), "test")
		if projections.PartitionOf(bus.RoomKey(other.ID), projections.DefaultPartitions) ==
			projections.PartitionOf(bus.RoomKey("!twice:test"), projections.DefaultPartitions) {
			break
		}
	}
	oevs := other.Setup(alice)
	for len(oevs) < 300 {
		oevs = append(oevs, other.Msg(alice, "traffic"))
	}
	m.publisher().Publish(t, oevs...)
	r := testenv.NewRoom("twice", "test")
	evs := r.Setup(alice)
	for len(evs) < 50 {
		evs = append(evs, r.Msg("@remote:other.org", fmt.Sprint(len(evs))))
	}
	m.publisher().Publish(t, evs...)
	m.purgeHistory(t, r.ID, evs[39].ID(), "") // cut-off depth 40; tip at 50
	more := []testenv.Event{}
	for range 50 {
		more = append(more, r.Msg("@remote:other.org", "more"))
	}
	m.publisher().Publish(t, more...)
	m.purgeHistory(t, r.ID, more[39].ID(), "") // cut-off depth 90
	live, _ := m.Store.RoomTasks(r.ID)
	rebuildKeepsTasks(t, m, live)
}

// TestRebuild_KeepsAnEarlierPurgeThatWaitsForASlot: as
// TestRebuild_KeepsAnEarlierPurgeComplete, with both purges waiting for
// the one task slot (a deletion stalled on a member's leave holds it), so
// that the first has no update of its own when the second's erasure
// would hide how it was decided: the task runner confirms it ("scheduled")
// and the erasure waits for that, so a rebuild passes it too.
func TestRebuild_KeepsAnEarlierPurgeThatWaitsForASlot(t *testing.T) {
	m := startMain(t, func(c *Config) {
		c.Tasks.MaxConcurrent = 1
		c.Homeserver.Timeout = commands.DurationOf(time.Hour) // the stalled leave holds the slot to the end
	})
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	busy := shutdownRoom(t, m, hs, "busy", 1)
	hs.StallLeave("@user0:test")
	defer hs.ReleaseStalled()
	if st, body := m.do(t, "DELETE", deletePath("v2", busy.ID), "tok-admin", `{}`); st != 200 {
		t.Fatalf("delete: %d %s", st, body)
	}
	testenv.WaitFor(t, 10*time.Second, "the deletion holding the slot", func() bool {
		tasks, _ := m.Store.RoomTasks(busy.ID)
		return len(tasks) == 1 && tasks[0].Status == commands.TaskActive
	})
	r := testenv.NewRoom("waiting", "test")
	evs := r.Setup(alice)
	for len(evs) < 50 { // depths 5..50, remote
		evs = append(evs, r.Msg("@remote:other.org", fmt.Sprint(len(evs))))
	}
	pub := m.publisher()
	pub.Publish(t, evs...)
	pub.Command(t, map[string]any{"id": "first", "action": "purge_history", "room_id": r.ID,
		"params": map[string]any{"token": fmt.Sprintf("t%d-0", evs[39]["depth"])}}) // cut-off 40; tip at 50
	var more []testenv.Event
	for range 50 { // depths 51..100, remote
		more = append(more, r.Msg("@remote:other.org", "more"))
	}
	pub.Publish(t, more...)
	second := pub.Command(t, map[string]any{"id": "second", "action": "purge_history", "room_id": r.ID,
		"params": map[string]any{"token": fmt.Sprintf("t%d-0", more[39]["depth"])}}) // cut-off 90
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": second}); err != nil {
		t.Fatal(err)
	}
	// The second holds no erasure (its own keeps what decided it), so it
	// is not confirmed: it stays marked until it starts.
	testenv.WaitFor(t, 20*time.Second, "the rows' removal, the first's confirmation and the erasures", func() bool {
		prog, err := m.Store.PurgeProgress(r.ID)
		pending, _ := m.Store.ErasuresPendingFor(r.ID)
		unconfirmed, _ := m.Store.Unconfirmed()
		return err == nil && prog.Done && !pending && len(unconfirmed) == 1 && unconfirmed[0].ID == "second"
	})
	live, _ := m.Store.RoomTasks(r.ID)
	for _, task := range live {
		if task.Status != commands.TaskScheduled {
			t.Fatalf("%s: %s, want scheduled (waiting for the slot)", task.ID, task.Status)
		}
	}
	rebuildKeepsTasks(t, m, live)
}

// TestRebuild_KeepsAGuardedPurgeHistoryFailed: a purge_history whose
// cut-off is above every forward extremity fails live; a later forced
// purge_room erases the room's history. A rebuild finds no event at the
// first purge's position, so no forward extremity, and its guard would
// pass: the task runner confirms the failure in the log, the erasure
// waits for that, and the rebuild fails it too (found by a helper's
// review: it came back scheduled, for the rebuilt instance to run).
func TestRebuild_KeepsAGuardedPurgeHistoryFailed(t *testing.T) {
	m := startMain(t)
	r := testenv.NewRoom("abovetip", "test")
	evs := r.Setup(alice)
	for len(evs) < 20 {
		evs = append(evs, r.Msg("@remote:other.org", fmt.Sprint(len(evs))))
	}
	pub := m.publisher()
	pub.Publish(t, evs...)
	seq := pub.Command(t, map[string]any{"id": "above", "action": "purge_history", "room_id": r.ID,
		"params": map[string]any{"token": "t1000-0"}})
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seq}); err != nil {
		t.Fatal(err)
	}
	if task, _ := m.Store.Task("above"); task == nil || task.Status != commands.TaskFailed || task.Error != projections.ErrTextAboveExtremities {
		t.Fatalf("purge_history above the tip: %+v, want failed", task)
	}
	pub.Command(t, map[string]any{"id": "forced", "action": "purge_room", "room_id": r.ID,
		"params": map[string]any{"force": true}})
	testenv.WaitFor(t, 20*time.Second, "the forced purge and its erasure", func() bool {
		task, _ := m.Store.Task("forced")
		pending, _ := m.Store.ErasuresPending()
		return task != nil && task.Status == commands.TaskComplete && !pending
	})
	live, _ := m.Store.RoomTasks(r.ID)
	rebuildKeepsTasks(t, m, live)
}
