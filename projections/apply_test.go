package projections_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

var subjects = bus.Subjects{Prefix: "sb"}

// entry decodes v as the log message seq on the room's subject of kind.
func entry(tb testing.TB, seq uint64, roomID, kind string, v map[string]any) commands.LogEntry {
	tb.Helper()
	data, err := bus.Encode(v)
	if err != nil {
		tb.Fatal(err)
	}
	return subjects.Decode(seq, subjects.Room(roomID, kind), data, int64(1_700_000_000_000+seq))
}

// apply applies events as consecutive log messages from seq on.
func apply(tb testing.TB, s *projections.Store, seq uint64, evs ...testenv.Event) uint64 {
	tb.Helper()
	for _, ev := range evs {
		e := entry(tb, seq, ev["room_id"].(string), commands.KindEvent, ev)
		out, err := s.ApplyBatch(0, []commands.LogEntry{e})
		if err != nil {
			tb.Fatal(err)
		}
		if out[0].Result == projections.OutcomeDead {
			tb.Fatalf("seq %d dead-lettered: %s", seq, out[0].Reason)
		}
		seq++
	}
	return seq
}

func timelineIDs(tb testing.TB, s *projections.Store, roomID string) []string {
	tb.Helper()
	var ids []string
	err := s.View(roomID, func(v *projections.RoomView) error {
		res, err := v.Paginate(projections.PageQuery{RoomID: roomID, Limit: 100000})
		if err != nil {
			return err
		}
		for _, r := range res.Rows {
			ids = append(ids, strings.Clone(r.EventID)) // a page's strings live as long as its transaction
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return ids
}

func sameStrings(tb testing.TB, what string, got, want []string) {
	tb.Helper()
	if len(got) != len(want) {
		tb.Fatalf("%s: got %v, want %v", what, got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			tb.Fatalf("%s: got %v, want %v", what, got, want)
		}
	}
}

func ids(evs ...testenv.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.ID()
	}
	return out
}

func TestApplyBatch_DuplicatesAndRedeliveryChangeNothing(t *testing.T) {
	s := testenv.NewStore(t)
	r := testenv.NewRoom("dup", "test")
	evs := append(r.Setup("@a:test"), r.Msg("@a:test", "hi"))
	next := apply(t, s, 1, evs...)
	// The same event again under a new sequence: ignored by event_id.
	out, err := s.ApplyBatch(0, []commands.LogEntry{entry(t, next, r.ID, commands.KindEvent, evs[2])})
	if err != nil {
		t.Fatal(err)
	}
	if out[0].Result != projections.OutcomeDuplicate {
		t.Fatalf("Result=%s, want duplicate", out[0].Result)
	}
	// A redelivered sequence at or below the checkpoint is skipped.
	out, err = s.ApplyBatch(0, []commands.LogEntry{entry(t, 2, r.ID, commands.KindEvent, r.Msg("@a:test", "late"))})
	if err != nil {
		t.Fatal(err)
	}
	if out[0].Result != projections.OutcomeSkipped {
		t.Fatalf("Result=%s, want skipped", out[0].Result)
	}
	sameStrings(t, "timeline", timelineIDs(t, s, r.ID), ids(evs...))
	cps, _ := s.Checkpoints()
	if cps[0] != next {
		t.Fatalf("checkpoint=%d, want %d", cps[0], next)
	}
}

func TestApplyBatch_OrderIsDepthThenStream(t *testing.T) {
	s := testenv.NewStore(t)
	r := testenv.NewRoom("order", "test")
	create, join := r.Create("@a:test"), r.Join("@a:test")
	m1 := r.Msg("@a:test", "1")
	r.StartAt(3, join.ID()) // a sibling of m1 at the same depth
	m1b := r.Msg("@a:test", "1b")
	// Live arrival order: create, join, m1b, m1; backfilled events sort
	// before live ones at the same depth.
	next := apply(t, s, 1, create, join, m1b, m1)
	bf := r.Msg("@a:test", "old")
	bf["depth"] = int64(3)
	bf["backfilled"] = true
	apply(t, s, next, bf)
	sameStrings(t, "timeline", timelineIDs(t, s, r.ID), ids(create, join, bf, m1b, m1))
}

func TestApplyBatch_MalformedIsDeadLetteredAndRoomGoesOn(t *testing.T) {
	s := testenv.NewStore(t)
	r := testenv.NewRoom("bad", "test")
	good := r.Create("@a:test")
	noDepth := r.Msg("@a:test", "x")
	delete(noDepth, "depth")
	wrongRoom := r.Msg("@a:test", "y")
	wrongRoom["room_id"] = "!other:test"
	badData := subjects.Decode(3, subjects.Room(r.ID, commands.KindEvent), []byte{0xdf, 0xff, 0xff, 0xff, 0xff}, 0)
	// A top-level key of the event's own (shown in the client format)
	// nested deeper than content may be.
	deep := r.Msg("@a:test", "deep")
	var nested any = "bottom"
	for range commands.MaxContentDepth + 1 {
		nested = []any{nested}
	}
	deep["org.example.deep"] = nested
	after := r.Msg("@a:test", "after")
	batch := []commands.LogEntry{
		entry(t, 1, r.ID, commands.KindEvent, good),
		entry(t, 2, r.ID, commands.KindEvent, noDepth),
		badData,
		entry(t, 4, r.ID, commands.KindEvent, wrongRoom),
		entry(t, 5, r.ID, commands.KindEvent, deep),
		entry(t, 6, r.ID, commands.KindEvent, after),
	}
	out, err := s.ApplyBatch(0, batch)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{projections.OutcomeApplied, projections.OutcomeDead, projections.OutcomeDead, projections.OutcomeDead, projections.OutcomeDead, projections.OutcomeApplied}
	for i, o := range out {
		if o.Result != want[i] {
			t.Errorf("seq %d: Result=%s (%s), want %s", o.Seq, o.Result, o.Reason, want[i])
		}
	}
	dead, err := s.DeadLetters(10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 4 || dead[0].Seq != 5 || dead[3].Seq != 2 || !strings.Contains(dead[0].Reason, "top-level keys: nested deeper") {
		t.Fatalf("dead letters = %+v", dead)
	}
	for _, d := range dead {
		if d.Reason == "" || d.Subject == "" {
			t.Errorf("dead letter without reason or subject: %+v", d)
		}
	}
	sameStrings(t, "timeline", timelineIDs(t, s, r.ID), ids(good, after))
}

func TestApplyBatch_Extremities(t *testing.T) {
	s := testenv.NewStore(t)
	r := testenv.NewRoom("ext", "test")
	create := r.Create("@a:test")
	r.StartAt(10, "$missing9") // a gap: $missing9 is not held
	late := r.Msg("@a:test", "after gap")
	next := apply(t, s, 1, create, late)
	check := func(what string, wantFwd, wantBack []string) {
		t.Helper()
		_ = s.View(r.ID, func(v *projections.RoomView) error {
			fwd, back := v.Extremities(false), v.Extremities(true)
			if len(fwd) != len(wantFwd) || len(back) != len(wantBack) {
				t.Fatalf("%s: fwd=%v back=%v, want %v %v", what, fwd, back, wantFwd, wantBack)
			}
			for _, id := range wantFwd {
				if _, ok := fwd[id]; !ok {
					t.Fatalf("%s: fwd=%v, want %v", what, fwd, wantFwd)
				}
			}
			for _, id := range wantBack {
				if _, ok := back[id]; !ok {
					t.Fatalf("%s: back=%v, want %v", what, back, wantBack)
				}
			}
			if got := v.HasGaps(); got != (len(wantBack) > 0) {
				t.Fatalf("%s: HasGaps() = %v with back=%v", what, got, back)
			}
			return nil
		})
	}
	check("after the gap", []string{create.ID(), late.ID()}, []string{"$missing9"})
	// The missing event arrives (backfilled): it closes the gap. As in
	// Synapse, a backfilled event leaves the forward extremities alone
	// (persist_events.py, `if not backfilled`): create stays one.
	missing := testenv.Event{"event_id": "$missing9", "room_id": r.ID, "type": "m.room.message", "sender": "@a:test",
		"origin_server_ts": int64(5), "depth": int64(9), "prev_events": []string{create.ID()}, "content": map[string]any{}, "backfilled": true}
	apply(t, s, next, missing)
	check("gap filled", []string{create.ID(), late.ID()}, nil)
}

// TestApplyBatch_OutlierParentIsABackwardExtremity: a parent held only as
// an outlier is a backward extremity, as Synapse's
// _update_backward_extremeties keeps every parent not held with outlier =
// FALSE: a room joined over federation holds the join's parents as
// outliers, and its history before the join is reached only by a
// backfill from there. The outlier joining the timeline (backfilled)
// closes the gap. Found by a helper's integration walkthrough.
func TestApplyBatch_OutlierParentIsABackwardExtremity(t *testing.T) {
	s := testenv.NewStore(t)
	r := testenv.NewRoom("outparent", "test")
	create := r.Create("@a:test")
	parent := testenv.Event{"event_id": "$parent9", "room_id": r.ID, "type": "m.room.message", "sender": "@a:other.org",
		"origin_server_ts": int64(5), "depth": int64(9), "prev_events": []string{"$older8"}, "content": map[string]any{}, "outlier": true}
	r.StartAt(10, "$parent9")
	child := r.Msg("@a:test", "after the outlier")
	next := apply(t, s, 1, create, parent, child)
	back := func() map[string]int64 {
		var out map[string]int64
		_ = s.View(r.ID, func(v *projections.RoomView) error { out = v.Extremities(true); return nil })
		return out
	}
	if got := back(); len(got) != 1 || got["$parent9"] != 10 {
		t.Fatalf("backward extremities %v, want $parent9 (an outlier) at its child's depth 10", got)
	}
	joined := testenv.Event{}
	for k, v := range parent {
		joined[k] = v
	}
	delete(joined, "outlier")
	joined["backfilled"] = true
	apply(t, s, next, joined)
	if got := back(); len(got) != 1 || got["$older8"] != 9 {
		t.Fatalf("after the outlier joined the timeline: backward extremities %v, want only its own parent $older8", got)
	}
}

func TestApplyBatch_Commands(t *testing.T) {
	s := testenv.NewStore(t)
	room := "!cmd:test"
	cmd := func(seq uint64, id, action string, params map[string]any) projections.Outcome {
		t.Helper()
		out, err := s.ApplyBatch(0, []commands.LogEntry{entry(t, seq, room, commands.KindCmd, map[string]any{
			"id": id, "action": action, "room_id": room, "params": params, "requested_by": "@admin:test", "ts": int64(1000 + seq)})})
		if err != nil {
			t.Fatal(err)
		}
		return out[0]
	}
	tests := []struct {
		name, id, action string
		params           map[string]any
		wantStatus       string
		wantErr          string
	}{
		{"block", "c1", commands.ActionBlockRoom, map[string]any{"block": true}, commands.TaskComplete, ""},
		{"forget", "c2", commands.ActionForget, map[string]any{"user_id": "@bob:test"}, commands.TaskComplete, ""},
		{"purge history scheduled", "c3", commands.ActionPurgeHistory, map[string]any{"token": "t5-10"}, commands.TaskScheduled, ""},
		{"purge history bad token", "c4", commands.ActionPurgeHistory, map[string]any{"token": "s10"}, commands.TaskFailed, `purge_history: params.token "s10" is not a t<depth>-<stream> token`},
		{"shutdown scheduled", "c5", commands.ActionShutdownAndPurgeRoom, map[string]any{"purge": true}, commands.TaskScheduled, ""},
		{"shutdown bad bool", "c6", commands.ActionShutdownAndPurgeRoom, map[string]any{"purge": "yes"}, commands.TaskFailed, "params.purge must be a boolean"},
		{"unknown action", "c7", "explode", nil, commands.TaskFailed, `unknown action "explode"`},
		{"purge history without a token", "c8", commands.ActionPurgeHistory, map[string]any{}, commands.TaskFailed, "purge_history: params.token is required (t<depth>-<stream>)"},
		{"purge history bad delete_local_events", "c9", commands.ActionPurgeHistory, map[string]any{"token": "t5-10", "delete_local_events": 1}, commands.TaskFailed, "params.delete_local_events must be a boolean"},
		{"purge room bad force", "c10", commands.ActionPurgeRoom, map[string]any{"force": "yes"}, commands.TaskFailed, "params.force must be a boolean"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := cmd(uint64(i+1), tt.id, tt.action, tt.params)
			if o.Result != projections.OutcomeApplied {
				t.Fatalf("Result=%s (%s)", o.Result, o.Reason)
			}
			task, err := s.Task(tt.id)
			if err != nil || task == nil {
				t.Fatalf("task %s: %v", tt.id, err)
			}
			if task.Status != tt.wantStatus || task.Error != tt.wantErr {
				t.Fatalf("task = %s %q, want %s %q", task.Status, task.Error, tt.wantStatus, tt.wantErr)
			}
		})
	}
	if blocked, by, _ := s.Blocked(room); !blocked || by != "@admin:test" {
		t.Fatalf("Blocked=%v by %q", blocked, by)
	}
	_ = s.View(room, func(v *projections.RoomView) error {
		if !v.Forgotten("@bob:test") || v.Forgotten("@alice:test") {
			t.Error("forget not applied")
		}
		return nil
	})
	// A command id that is already a task is dead-lettered.
	if o := cmd(100, "c1", commands.ActionBlockRoom, map[string]any{"block": false}); o.Result != projections.OutcomeDead {
		t.Fatalf("duplicate id: Result=%s", o.Result)
	}
	if blocked, _, _ := s.Blocked(room); !blocked {
		t.Fatal("a duplicate command changed the room")
	}
	tasks, _ := s.RoomTasks(room)
	if len(tasks) != len(tests) {
		t.Fatalf("RoomTasks=%d, want %d", len(tasks), len(tests))
	}
}

func TestApplyBatch_TaskUpdates(t *testing.T) {
	s := testenv.NewStore(t)
	room := "!tu:test"
	apply1 := func(seq uint64, kind string, v map[string]any) projections.Outcome {
		out, err := s.ApplyBatch(0, []commands.LogEntry{entry(t, seq, room, kind, v)})
		if err != nil {
			t.Fatal(err)
		}
		return out[0]
	}
	apply1(1, commands.KindCmd, map[string]any{"id": "p1", "action": "purge_room", "room_id": room, "params": map[string]any{}})
	if o := apply1(2, commands.KindTask, map[string]any{"task_id": "p1", "status": "active", "ts": int64(5)}); o.Result != projections.OutcomeApplied {
		t.Fatalf("update: %s %s", o.Result, o.Reason)
	}
	apply1(3, commands.KindTask, map[string]any{"task_id": "p1", "status": "complete", "result": map[string]any{"n": int64(3)}})
	task, _ := s.Task("p1")
	if task.Status != commands.TaskComplete || task.Updates != 2 {
		t.Fatalf("task=%+v", task)
	}
	// A task ends once; an unknown task is a dead letter.
	if o := apply1(4, commands.KindTask, map[string]any{"task_id": "p1", "status": "failed"}); o.Result != projections.OutcomeDead {
		t.Fatalf("update after the end: %s", o.Result)
	}
	if o := apply1(5, commands.KindTask, map[string]any{"task_id": "nope", "status": "active"}); o.Result != projections.OutcomeDead {
		t.Fatalf("unknown task: %s", o.Result)
	}
}

func TestApplyBatch_OutlierJoinsTimelineWhenSentAgain(t *testing.T) {
	s := testenv.NewStore(t)
	r := testenv.NewRoom("out", "test")
	create := r.Create("@a:test")
	m := r.Msg("@a:test", "x")
	outlier := testenv.Event{}
	for k, v := range m {
		outlier[k] = v
	}
	outlier["outlier"] = true
	next := apply(t, s, 1, create, outlier)
	sameStrings(t, "with outlier", timelineIDs(t, s, r.ID), ids(create))
	next = apply(t, s, next, outlier) // again as outlier: a duplicate
	apply(t, s, next, m)
	sameStrings(t, "after re-send", timelineIDs(t, s, r.ID), ids(create, m))
}

func TestStore_ReopenKeepsPartitions(t *testing.T) {
	path := t.TempDir() + "/x.db"
	s, err := projections.Open(path, projections.Options{Partitions: 4})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = projections.Open(path, projections.Options{Partitions: 32})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Partitions() != 4 {
		t.Fatalf("Partitions=%d, want 4 (fixed at creation)", s.Partitions())
	}
}

// TestApplyBatch_OneBatchAppliesAsOneByOne applies a log of interleaved
// rooms, with commands that change what later events of their room do (a
// purge_history raises the floor, a purge_room renumbers the room, a
// block), once as one batch and once message by message: a batch applies
// its rooms one after the other and remembers room numbers and floors,
// yet the outcomes and the projections must be the same.
func TestApplyBatch_OneBatchAppliesAsOneByOne(t *testing.T) {
	a, b, c := testenv.NewRoom("a", "test"), testenv.NewRoom("b", "test"), testenv.NewRoom("c", "test")
	var log []commands.LogEntry
	add := func(kind, roomID string, v map[string]any) int {
		log = append(log, entry(t, uint64(len(log)+1), roomID, kind, v))
		return len(log) - 1
	}
	ev := func(evs ...testenv.Event) {
		for _, e := range evs {
			add(commands.KindEvent, e["room_id"].(string), e)
		}
	}
	cmd := func(roomID, id, action string, params map[string]any) {
		add(commands.KindCmd, roomID, map[string]any{"id": id, "action": action, "room_id": roomID, "params": params})
	}
	as, bs := a.Setup("@alice:test", "@remote:other.org"), b.Setup("@bob:test")
	for i := range max(len(as), len(bs)) {
		if i < len(as) {
			ev(as[i])
		}
		if i < len(bs) {
			ev(bs[i])
		}
	}
	var am, bm []testenv.Event
	for i := range 6 {
		am = append(am, a.Msg("@remote:other.org", fmt.Sprint("a", i)))
		bm = append(bm, b.Msg("@bob:test", fmt.Sprint("b", i)))
		ev(am[i], bm[i])
	}
	ev(a.Next("m.reaction", "@alice:test", nil, map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": am[1].ID(), "key": "x"}}),
		b.Next("m.room.redaction", "@bob:test", nil, map[string]any{"redacts": bm[2].ID()}))
	cmd(a.ID, "purge-a", commands.ActionPurgeHistory, map[string]any{"token": fmt.Sprintf("t%d-0", am[3]["depth"])})
	late := add(commands.KindEvent, a.ID, testenv.Event{"event_id": "$late", "room_id": a.ID, "type": "m.room.message", "sender": "@remote:other.org",
		"origin_server_ts": int64(1), "depth": int64(2), "prev_events": []any{}, "content": map[string]any{}, "backfilled": true})
	ev(a.Msg("@alice:test", "after the purge"))
	cmd(b.ID, "purge-b", commands.ActionPurgeRoom, map[string]any{"force": true})
	b2 := testenv.NewRoom("b", "test")
	reborn := []testenv.Event{b2.Create("@carol:test"), b2.Msg("@carol:test", "new history")}
	ev(reborn...)
	ev(c.Setup("@carol:test")...)
	cmd(c.ID, "block-c", commands.ActionBlockRoom, map[string]any{"block": true})
	dup := add(commands.KindEvent, a.ID, am[4])
	ev(c.Msg("@carol:test", "blocked but stored"))
	// Room d's graph is not a chain, where the applier's shortcut for an
	// event whose parent is the one it applied just before (chainLink)
	// must not apply: siblings, a merge, a rejected event between a
	// parent and its child, a gap and the event that fills it, two
	// parents in either order.
	d := testenv.NewRoom("d", "test")
	ds := d.Setup("@dave:test")
	ev(ds...)
	base := ds[len(ds)-1]
	x1 := d.Msg("@dave:test", "x1")
	d.StartAt(x1["depth"].(int64), base.ID())
	x2 := d.Msg("@dave:test", "x2, x1's sibling")
	d.StartAt(x2["depth"].(int64)+1, x1.ID(), x2.ID())
	merge := d.Msg("@dave:test", "merges x1 and x2")
	rejected := d.Msg("@dave:test", "rejected")
	rejected["rejected"] = true
	d.StartAt(rejected["depth"].(int64), merge.ID())
	afterRejected := d.Msg("@dave:test", "after the rejected one")
	d.StartAt(afterRejected["depth"].(int64)+2, "$dgap")
	overGap := d.Msg("@dave:test", "over a gap")
	filler := testenv.Event{"event_id": "$dgap", "room_id": d.ID, "type": "m.room.message", "sender": "@dave:test",
		"origin_server_ts": int64(7), "depth": afterRejected["depth"].(int64) + 1, "prev_events": []any{afterRejected.ID()}, "content": map[string]any{}}
	d.StartAt(overGap["depth"].(int64)+1, filler.ID(), overGap.ID())
	both := d.Msg("@dave:test", "names the filler first")
	ev(x1, x2, merge, rejected, afterRejected, overGap, filler, both)

	whole, alone := openWithServer(t), openWithServer(t)
	got, err := whole.ApplyBatch(0, log)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range log {
		want, err := alone.ApplyBatch(0, []commands.LogEntry{e})
		if err != nil {
			t.Fatal(err)
		}
		if g, w := got[i], want[0]; g.Seq != w.Seq || g.Result != w.Result || g.Reason != w.Reason {
			t.Errorf("seq %d: one batch %s %q, one by one %s %q", e.Seq, g.Result, g.Reason, w.Result, w.Reason)
		}
	}
	if got[late].Result != projections.OutcomeDropped || got[dup].Result != projections.OutcomeDuplicate {
		t.Errorf("late event %s, duplicate %s", got[late].Result, got[dup].Result)
	}
	sameStrings(t, "room b after purge_room", timelineIDs(t, whole, b.ID), ids(reborn...))
	if err := whole.View(d.ID, func(v *projections.RoomView) error {
		fwd, back := v.Extremities(false), v.Extremities(true)
		if _, ok := fwd[both.ID()]; len(fwd) != 1 || !ok || len(back) != 0 {
			t.Errorf("room d: forward extremities %v, backward %v; want only %s forward", fwd, back, both.ID())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sameProjection(t, "one batch and one by one", whole, alone)
}

// sameProjection fails the test if the two stores' digests differ.
func sameProjection(t *testing.T, what string, a, b *projections.Store) {
	t.Helper()
	sameProjectionAt(t, what, time.Now(), a, b)
}

// sameProjectionAt fails the test if the two stores' digests at now
// differ.
func sameProjectionAt(t *testing.T, what string, now time.Time, a, b *projections.Store) {
	t.Helper()
	da, err := a.Digest(now)
	if err != nil {
		t.Fatal(err)
	}
	db, err := b.Digest(now)
	if err != nil {
		t.Fatal(err)
	}
	if diff := da.Diff(db); len(diff) != 0 {
		t.Fatalf("%s differ: %v", what, diff)
	}
}

// TestApply_OneIDInTwoRooms: event IDs are hashes over the room's ID, so
// one ID in two rooms is a forgery or a bug upstream; each room keeps its
// own event under it, and its own redaction of it (the events index and
// the redactions are keyed by room), and a purge of one room leaves the
// other's alone.
func TestApply_OneIDInTwoRooms(t *testing.T) {
	s := openWithServer(t)
	a, b := testenv.NewRoom("a", "test"), testenv.NewRoom("b", "test")
	evA := append(a.Setup("@alice:test"), a.Msg("@alice:test", "in a"))
	same := evA[len(evA)-1].ID()
	inB := b.Msg("@bob:test", "in b")
	inB["event_id"] = same
	evB := append(b.Setup("@bob:test"), inB)
	redaction := b.Next("m.room.redaction", "@bob:test", nil, map[string]any{"redacts": same})
	evB = append(evB, redaction)
	next := apply(t, s, 1, append(evA, evB...)...)
	for _, c := range []struct {
		room, body, redactedBy string
	}{{a.ID, "in a", ""}, {b.ID, "in b", redaction.ID()}} {
		err := s.View(c.room, func(v *projections.RoomView) error {
			r, err := v.Event(same)
			if err != nil || r == nil {
				t.Fatalf("%s: Event = %v, %v", c.room, r, err)
			}
			if !strings.Contains(string(r.Content), c.body) {
				t.Errorf("%s: Event gave %s", c.room, r.Content)
			}
			if got := v.RedactedBy(same); got != c.redactedBy {
				t.Errorf("%s: RedactedBy = %q, want %q", c.room, got, c.redactedBy)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	applyCmd(t, s, next, b.ID, "pr", commands.ActionPurgeRoom, map[string]any{"force": true})
	drainJanitor(t, s)
	sameStrings(t, "room a after b's purge_room", timelineIDs(t, s, a.ID), ids(evA...))
	if info, ok, err := s.FindEvent(b.ID, same); err != nil || !ok || info.RoomID != a.ID {
		t.Fatalf("FindEvent in the purged room = %+v, %v, %v; want it in %s", info, ok, err, a.ID)
	}
}

// TestApplyBatch_LongPurgeStepID: a shutdown's purge step is
// "<shutdown id>-purge", 70 bytes for a 64-byte shutdown id. It is
// applied for its shutdown; a purge_room that long without one, or
// any other command over 64 bytes, is a dead letter.
func TestApplyBatch_LongPurgeStepID(t *testing.T) {
	s := testenv.NewStore(t)
	room := "!long:test"
	apply1 := func(seq uint64, v map[string]any) projections.Outcome {
		out, err := s.ApplyBatch(0, []commands.LogEntry{entry(t, seq, room, commands.KindCmd, v)})
		if err != nil {
			t.Fatal(err)
		}
		return out[0]
	}
	id := strings.Repeat("s", commands.MaxCommandIDBytes)
	orphan := strings.Repeat("o", commands.MaxCommandIDBytes) + commands.ShutdownPurgeSuffix
	if o := apply1(1, map[string]any{"id": orphan, "action": "purge_room", "room_id": room}); o.Result != projections.OutcomeDead {
		t.Fatalf("a 70-byte purge_room without its shutdown: %s", o.Result)
	}
	if o := apply1(2, map[string]any{"id": id + commands.ShutdownPurgeSuffix, "action": "block_room", "room_id": room, "params": map[string]any{"block": true}}); o.Result != projections.OutcomeDead {
		t.Fatalf("a 70-byte block_room: %s", o.Result)
	}
	apply1(3, map[string]any{"id": id, "action": "shutdown_and_purge_room", "room_id": room, "params": map[string]any{}})
	if o := apply1(4, map[string]any{"id": id + commands.ShutdownPurgeSuffix, "action": "purge_room", "room_id": room, "params": map[string]any{"force": true}}); o.Result != projections.OutcomeApplied {
		t.Fatalf("the shutdown's purge step: %s %s", o.Result, o.Reason)
	}
	if task, _ := s.Task(id); task.Status != commands.TaskComplete {
		t.Fatalf("shutdown task = %+v", task)
	}
	if task, _ := s.Task(orphan); task != nil {
		t.Fatalf("the orphan purge became a task: %+v", task)
	}
}

// TestStore_TaskChangeClosesOnTaskCommits: the channel of TaskChange for
// a room is closed by the next commit that writes a task of that room (a
// command, an update), and not by one that writes none or only another
// room's, so that a waiter that takes it, reads the task, then waits on
// it, never misses a change and is not woken for other rooms. Once every
// waiter has released it, nothing of the room stays.
func TestStore_TaskChangeClosesOnTaskCommits(t *testing.T) {
	s := testenv.NewStore(t)
	r, other := testenv.NewRoom("tc", "test"), testenv.NewRoom("tc2", "test")
	room := r.ID
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	applyOne := func(seq uint64, roomID, kind string, v map[string]any) {
		t.Helper()
		if _, err := s.ApplyBatch(0, []commands.LogEntry{entry(t, seq, roomID, kind, v)}); err != nil {
			t.Fatal(err)
		}
	}
	ch, release := s.TaskChange(room)
	ch2, release2 := s.TaskChange(room) // a second waiter on the room
	next := apply(t, s, 1, r.Setup("@a:test")...)
	if closed(ch) {
		t.Fatal("an event closed the task channel")
	}
	applyOne(next, other.ID, commands.KindCmd, map[string]any{"id": "o1", "action": "purge_room", "room_id": other.ID, "params": map[string]any{}})
	if closed(ch) {
		t.Fatal("another room's task closed the room's task channel")
	}
	release() // the first waiter leaves: the second still waits
	applyOne(next+1, room, commands.KindCmd, map[string]any{"id": "p1", "action": "purge_room", "room_id": room, "params": map[string]any{}})
	if !closed(ch2) {
		t.Fatal("a command's task did not close the task channel")
	}
	release2()
	ch, release = s.TaskChange(room)
	if closed(ch) {
		t.Fatal("a new task channel is closed before any change")
	}
	applyOne(next+2, room, commands.KindTask, map[string]any{"task_id": "p1", "status": "active"})
	if !closed(ch) {
		t.Fatal("a task update did not close the task channel")
	}
	release()
	// A waiter that takes the channel, finds its task done and leaves
	// without a change keeps nothing either.
	_, release = s.TaskChange(room)
	release()
	if n := projections.TaskWaiting(s); n != 0 {
		t.Fatalf("%d rooms keep a task channel with no waiter", n)
	}
}

// TestTopologicalAt: Synapse's get_current_topological_token, the least
// depth at or after a stream position, or the room's last event's past
// its end, and 0 in a room without events.
func TestTopologicalAt(t *testing.T) {
	s := openWithServer(t)
	r := testenv.NewRoom("topo", "test")
	evs := r.Setup("@alice:test")
	evs = append(evs, r.Msg("@alice:test", "a"), r.Msg("@alice:test", "b"))
	apply(t, s, 10, evs...) // log sequences 10 on: stream orderings
	last := evs[len(evs)-1]["depth"].(int64)
	for stream, want := range map[int64]int64{
		0:   evs[0]["depth"].(int64),
		10:  evs[0]["depth"].(int64),
		12:  evs[2]["depth"].(int64),
		999: last,
	} {
		var got int64
		if err := s.View(r.ID, func(v *projections.RoomView) error { got = v.TopologicalAt(stream); return nil }); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("TopologicalAt(%d) = %d, want %d", stream, got, want)
		}
	}
	if err := s.View("!empty:test", func(v *projections.RoomView) error {
		if got := v.TopologicalAt(5); got != 0 {
			t.Errorf("empty room: %d", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestApplyBatch_SoftFailedEventsUpdateBackwardExtremities: Synapse
// persists a soft-failed event as any other non-rejected one
// (_store_rejected_events_txn leaves out only rejected events before
// _update_backward_extremeties): a soft-failed event that arrives for a
// backward extremity ends it, and its parents not held become backward
// extremities; it is no forward extremity. scrollback left the gap (every
// read near it asked federation again, backed off). From a helper's
// review.
func TestApplyBatch_SoftFailedEventsUpdateBackwardExtremities(t *testing.T) {
	s := testenv.NewStore(t)
	r := testenv.NewRoom("softgap", "test")
	create := r.Create("@a:test")
	r.StartAt(10, "$parent9")
	child := r.Msg("@a:test", "after the gap")
	next := apply(t, s, 1, create, child)
	parent := testenv.Event{"event_id": "$parent9", "room_id": r.ID, "type": "m.room.message", "sender": "@a:other.org",
		"origin_server_ts": int64(5), "depth": int64(9), "prev_events": []string{"$older8"}, "content": map[string]any{},
		"backfilled": true, "soft_failed": true}
	apply(t, s, next, parent)
	var back, fwd map[string]int64
	_ = s.View(r.ID, func(v *projections.RoomView) error { back, fwd = v.Extremities(true), v.Extremities(false); return nil })
	if _, ok := back["$parent9"]; ok || back["$older8"] != 9 || len(back) != 1 {
		t.Errorf("backward extremities %v after the soft-failed $parent9 came: want only $older8 (Synapse's _update_backward_extremeties)", back)
	}
	if _, ok := fwd["$parent9"]; ok {
		t.Errorf("forward extremities %v: a soft-failed event is none", fwd)
	}
}

// TestApply_OutlierRedactionAppliesOnceOnTheTimeline: a redaction held
// only as an outlier redacts nothing (README, "Where scrollback differs
// from Synapse on purpose"); the same redaction sent again on the
// timeline redacts its target.
func TestApply_OutlierRedactionAppliesOnceOnTheTimeline(t *testing.T) {
	s := testenv.NewStore(t)
	r := testenv.NewRoom("outred", "test")
	evs := r.Setup("@alice:test")
	target := r.Msg("@alice:test", "to redact")
	redaction := r.Next("m.room.redaction", "@alice:test", nil, map[string]any{"redacts": target.ID()})
	outlier := testenv.Event{}
	for k, v := range redaction {
		outlier[k] = v
	}
	outlier["outlier"] = true
	next := apply(t, s, 1, append(evs, target, outlier)...)
	redactedBy := func() string {
		var by string
		if err := s.View(r.ID, func(v *projections.RoomView) error { by = v.RedactedBy(target.ID()); return nil }); err != nil {
			t.Fatal(err)
		}
		return by
	}
	if by := redactedBy(); by != "" {
		t.Fatalf("RedactedBy with the redaction an outlier = %q, want none", by)
	}
	apply(t, s, next, redaction)
	if by := redactedBy(); by != redaction.ID() {
		t.Fatalf("RedactedBy once the redaction joined the timeline = %q, want %q", by, redaction.ID())
	}
}
