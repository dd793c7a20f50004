package projections_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// checkRelated fails the test unless the related marks agree with the
// relations index (CheckRelatedMarks), and a page of the room's whole
// timeline learns from MarkRelated exactly which bundled kinds of
// relation each row has. It returns the IDs of the rows with relations
// of any kind (HasRelations).
func checkRelated(t *testing.T, s *projections.Store, roomID, what string) []string {
	t.Helper()
	if err := s.CheckRelatedMarks(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	var related []string
	err := s.View(roomID, func(v *projections.RoomView) error {
		for _, backwards := range []bool{false, true} {
			res, err := v.Paginate(projections.PageQuery{RoomID: roomID, Backwards: backwards, Limit: 5000})
			if err != nil {
				return err
			}
			v.MarkRelated(res.Rows)
			var got []string
			for _, r := range res.Rows {
				var kinds uint8
				for kind, relType := range map[uint8]string{projections.RelatedReference: commands.RelReference,
					projections.RelatedReplace: commands.RelReplace, projections.RelatedThread: commands.RelThread} {
					if v.RelationCount(r.EventID, relType, "") > 0 {
						kinds |= kind
					}
				}
				if k := v.Related(r); k != kinds {
					t.Errorf("%s: %s: marked with kinds %b, has %b", what, r.EventID, k, kinds)
				}
				if v.HasRelations(r.EventID) {
					got = append(got, strings.Clone(r.EventID)) // a page's strings live as long as its transaction
				}
			}
			slices.Sort(got)
			if backwards && !slices.Equal(got, related) {
				t.Errorf("%s: pages in both directions disagree: %v, %v", what, related, got)
			}
			related = got
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return related
}

func relatesTo(r *testenv.Room, sender, relType, target string) testenv.Event {
	return r.Next("m.room.message", sender, nil, map[string]any{"body": relType, "m.relates_to": map[string]any{"rel_type": relType, "event_id": target}})
}

// TestRelatedMarks_StayInStep applies a rich log (threads, edits,
// redactions, two purge_history and a purge_room) one message at a time,
// draining the janitor after each command: after every message, the
// marks agree with the relations index.
func TestRelatedMarks_StayInStep(t *testing.T) {
	s := openWithServer(t)
	s.DB().NoSync = true // a test of contents, not of durability
	marked := 0
	for _, e := range richPurgeLog(t) {
		if _, err := s.ApplyBatch(0, []commands.LogEntry{e}); err != nil {
			t.Fatal(err)
		}
		if e.Kind == commands.KindCmd {
			drainJanitor(t, s)
		}
		if err := s.CheckRelatedMarks(); err != nil {
			t.Fatalf("after seq %d (%s): %v", e.Seq, e.Kind, err)
		}
		if e.Seq%50 == 0 {
			marked = max(marked, len(checkRelated(t, s, e.RoomID, fmt.Sprint("seq ", e.Seq))))
		}
	}
	if marked == 0 {
		t.Fatal("no page ever had an event with relations: the test shows nothing")
	}
	checkRelated(t, s, "!rich:test", "the end")
}

// TestRelatedMarks_TargetsOffTheTimeline: a relation to an event not yet
// received, or known only as an outlier, marks the target once it joins
// the timeline; a redaction of its only relation takes the mark away.
func TestRelatedMarks_TargetsOffTheTimeline(t *testing.T) {
	s := openWithServer(t)
	r := testenv.NewRoom("marks", "test")
	seq := apply(t, s, 1, r.Setup("@alice:test")...)
	root := r.Msg("@alice:test", "root")
	early := relatesTo(r, "@alice:test", commands.RelThread, "$late")
	seq = apply(t, s, seq, root, early, relatesTo(r, "@alice:test", commands.RelReference, root.ID()))
	if got := checkRelated(t, s, r.ID, "target not received"); !slices.Equal(got, []string{root.ID()}) {
		t.Fatalf("related %v, want the root only", got)
	}

	late := r.Msg("@alice:test", "late")
	late["event_id"] = "$late"
	out := r.Msg("@alice:test", "an outlier first")
	outlier := testenv.Event{}
	for k, v := range out {
		outlier[k] = v
	}
	outlier["outlier"] = true
	seq = apply(t, s, seq, late, outlier, relatesTo(r, "@alice:test", commands.RelReplace, out.ID()))
	want := []string{"$late", root.ID()}
	slices.Sort(want)
	if got := checkRelated(t, s, r.ID, "target received, outlier related"); !slices.Equal(got, want) {
		t.Fatalf("related %v, want %v", got, want)
	}

	seq = apply(t, s, seq, out) // the outlier joins the timeline
	want = append(want, out.ID())
	slices.Sort(want)
	if got := checkRelated(t, s, r.ID, "outlier joined"); !slices.Equal(got, want) {
		t.Fatalf("related %v, want %v", got, want)
	}

	apply(t, s, seq, r.Next("m.room.redaction", "@alice:test", nil, map[string]any{"redacts": early.ID()}))
	want = slices.DeleteFunc(want, func(id string) bool { return id == "$late" })
	if got := checkRelated(t, s, r.ID, "only relation redacted"); !slices.Equal(got, want) {
		t.Fatalf("related %v, want %v", got, want)
	}
}

// TestRelatedMarks_Kinds: a mark holds the bundled kinds of relation its
// target has; a reaction alone marks it with none, so a read looks
// nothing up for it.
func TestRelatedMarks_Kinds(t *testing.T) {
	s := openWithServer(t)
	r := testenv.NewRoom("kinds", "test")
	seq := apply(t, s, 1, r.Setup("@alice:test")...)
	msg := r.Msg("@alice:test", "hello")
	react := r.Next("m.reaction", "@alice:test", nil, map[string]any{"m.relates_to": map[string]any{"rel_type": commands.RelAnnotation, "event_id": msg.ID(), "key": "x"}})
	seq = apply(t, s, seq, msg, react)
	kinds := func(what string, want uint8) {
		t.Helper()
		if got := checkRelated(t, s, r.ID, what); !slices.Equal(got, []string{msg.ID()}) {
			t.Fatalf("%s: related %v, want the message", what, got)
		}
		_ = s.View(r.ID, func(v *projections.RoomView) error {
			res, err := v.Paginate(projections.PageQuery{RoomID: r.ID, Backwards: true, Limit: 10})
			if err != nil {
				t.Fatal(err)
			}
			v.MarkRelated(res.Rows)
			for _, row := range res.Rows {
				if row.EventID == msg.ID() && v.Related(row) != want {
					t.Errorf("%s: kinds %b, want %b", what, v.Related(row), want)
				}
			}
			return nil
		})
	}
	kinds("a reaction", 0)
	edit := relatesTo(r, "@alice:test", commands.RelReplace, msg.ID())
	seq = apply(t, s, seq, edit, relatesTo(r, "@alice:test", commands.RelThread, msg.ID()))
	kinds("an edit and a thread reply", projections.RelatedReplace|projections.RelatedThread)
	apply(t, s, seq, r.Next("m.room.redaction", "@alice:test", nil, map[string]any{"redacts": edit.ID()}))
	kinds("the edit redacted", projections.RelatedThread)
}

// TestRelatedMarks_FarApartRows: rows far apart in the room (a filtered
// page) stop MarkRelated's walk before the marks between them run out
// the page's budget; the rows it did not reach are looked up by seek.
func TestRelatedMarks_FarApartRows(t *testing.T) {
	s := openWithServer(t)
	r := testenv.NewRoom("apart", "test")
	evs := r.Setup("@alice:test")
	for i := range 60 {
		m := r.Msg("@alice:test", fmt.Sprint(i))
		evs = append(evs, m, relatesTo(r, "@alice:test", commands.RelReplace, m.ID()))
	}
	last := r.Msg("@alice:test", "last")
	evs = append(evs, last, relatesTo(r, "@alice:test", commands.RelThread, last.ID()))
	apply(t, s, 1, evs...)
	_ = s.View(r.ID, func(v *projections.RoomView) error {
		res, err := v.Paginate(projections.PageQuery{RoomID: r.ID, Limit: 500})
		if err != nil {
			t.Fatal(err)
		}
		first, end := res.Rows[0], res.Rows[len(res.Rows)-2]
		if end.EventID != last.ID() {
			t.Fatalf("row %s, want the last message", end.EventID)
		}
		v.MarkRelated([]*projections.Row{end, first})
		if got := v.Related(first); got != 0 {
			t.Errorf("the create event: kinds %b", got)
		}
		if got := v.Related(end); got&projections.RelatedThread == 0 {
			t.Errorf("the last message: kinds %b, want at least the thread", got)
		}
		return nil
	})
}

// TestRelatedMarks_PurgedTargetAsInARebuild: a kept relation whose target
// the purge erases leaves the projection with the marks of a rebuild from
// the log after the erasure, where the target never came.
func TestRelatedMarks_PurgedTargetAsInARebuild(t *testing.T) {
	r := testenv.NewRoom("purged", "test")
	setup := r.Setup("@alice:test", "@remote:other.org")
	target := r.Msg("@remote:other.org", "target")
	var msgs []testenv.Event
	for i := range 5 {
		msgs = append(msgs, r.Msg("@remote:other.org", fmt.Sprint(i)))
	}
	rel := relatesTo(r, "@remote:other.org", commands.RelThread, target.ID())
	all := append(append(append(append([]testenv.Event{}, setup...), target), msgs...), rel)
	params := map[string]any{"token": fmt.Sprintf("t%d-0", msgs[2]["depth"])}

	live := openWithServer(t)
	next := apply(t, live, 1, all...)
	if got := checkRelated(t, live, r.ID, "before the purge"); !slices.Equal(got, []string{target.ID()}) {
		t.Fatalf("related %v, want the target", got)
	}
	applyCmd(t, live, next, r.ID, "p", commands.ActionPurgeHistory, params)
	drainJanitor(t, live)
	if got := checkRelated(t, live, r.ID, "after the purge"); len(got) != 0 {
		t.Fatalf("related %v after the target was purged", got)
	}

	erased := append([]testenv.Event{target}, msgs[:2]...)
	rebuilt := rebuildPurged(t, all, func(ev testenv.Event) bool {
		return !slices.ContainsFunc(erased, func(m testenv.Event) bool { return m.ID() == ev.ID() })
	}, next, r.ID, params)
	sameProjection(t, "live and rebuilt projections", live, rebuilt)
}

// TestRelatedMarks_OlderFile: Open gives a file made before the marks
// existed its marks, resuming between transactions of 3 targets here, and
// reads find the same relations as before.
func TestRelatedMarks_OlderFile(t *testing.T) {
	path := t.TempDir() + "/p.db"
	s, err := projections.Open(path, projections.Options{ServerName: "test"})
	if err != nil {
		t.Fatal(err)
	}
	r := testenv.NewRoom("older", "test")
	evs := r.Setup("@alice:test")
	var roots []string
	projections.SetRelMarksBatch(t, 3)
	for i := range 10 {
		root := r.Msg("@alice:test", fmt.Sprint("root ", i))
		roots = append(roots, root.ID())
		evs = append(evs, root, relatesTo(r, "@alice:test", commands.RelThread, root.ID()), relatesTo(r, "@alice:test", commands.RelReplace, root.ID()))
	}
	evs = append(evs, relatesTo(r, "@alice:test", commands.RelThread, "$never"))
	apply(t, s, 1, evs...)
	err = s.DB().Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket([]byte("meta")).Delete([]byte("relmarks")); err != nil {
			return err
		}
		for _, name := range []string{"relat", "relwait"} {
			if err := tx.DeleteBucket([]byte(name)); err != nil {
				return err
			}
			if _, err := tx.CreateBucket([]byte(name)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.CheckRelatedMarks() == nil {
		t.Fatal("the marks check passes on a file without marks")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = projections.Open(path, projections.Options{ServerName: "test"}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	slices.Sort(roots)
	if got := checkRelated(t, s, r.ID, "older file"); !slices.Equal(got, roots) {
		t.Fatalf("related: %d events, want the %d roots", len(got), len(roots))
	}
}

// BenchmarkAddRelatedMarks: the first Open of a file made before the
// related marks, 100k events in 100 rooms of which a fifth are relations;
// reports the relations marked per second.
func BenchmarkAddRelatedMarks(b *testing.B) {
	path := b.TempDir() + "/p.db"
	s, err := projections.Open(path, projections.Options{ServerName: "test"})
	if err != nil {
		b.Fatal(err)
	}
	s.DB().NoSync = true // a fast load
	var batch []commands.LogEntry
	seq, relations := uint64(1), 0
	for room := range 100 {
		r := testenv.NewRoom(fmt.Sprint("room", room), "test")
		evs := r.Setup("@alice:test")
		var recent []string
		for i := range 1000 {
			if i%5 == 4 {
				relType := []string{commands.RelAnnotation, commands.RelReplace, commands.RelThread, commands.RelReference}[i/5%4]
				evs = append(evs, relatesTo(r, "@alice:test", relType, recent[len(recent)-1-i%len(recent)]))
				relations++
				continue
			}
			m := r.Msg("@alice:test", fmt.Sprint(i))
			recent = append(recent, m.ID())
			evs = append(evs, m)
		}
		for _, ev := range evs {
			batch = append(batch, entry(b, seq, r.ID, commands.KindEvent, ev))
			seq++
		}
		if _, err := s.ApplyBatch(0, batch); err != nil {
			b.Fatal(err)
		}
		batch = batch[:0]
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	var took time.Duration
	for b.Loop() {
		b.StopTimer()
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			b.Fatal(err)
		}
		err = db.Update(func(tx *bolt.Tx) error {
			if err := tx.Bucket([]byte("meta")).Delete([]byte("relmarks")); err != nil {
				return err
			}
			for _, name := range []string{"relat", "relwait"} {
				if err := tx.DeleteBucket([]byte(name)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		if err := db.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		s, err := projections.Open(path, projections.Options{ServerName: "test"})
		if err != nil {
			b.Fatal(err)
		}
		took += time.Since(start)
		b.StopTimer()
		if err := s.CheckRelatedMarks(); err != nil {
			b.Fatal(err)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(relations)*float64(b.N)/took.Seconds(), "relations/s")
}

// TestRelatedBy_PurgedRelations: a filter's related_by_senders and
// related_by_rel_types no longer count a relation from a purged event,
// from the moment the purge is applied: before the janitor has deleted
// the relating row, whose counts still include it, and after.
func TestRelatedBy_PurgedRelations(t *testing.T) {
	const remote, other = "@remote:other.org", "@other:other.org"
	r := testenv.NewRoom("relby", "test")
	setup := r.Setup("@alice:test", remote, other)
	msgs := remoteMsgs(r, 5)
	target := r.Msg(remote, "target")
	// A relation from an event deeper in the past than its target (one
	// that came in through a fork), below the purge's cut-off.
	r.StartAt(msgs[1]["depth"].(int64), msgs[0].ID())
	purged := r.Next("m.reaction", remote, nil, map[string]any{"m.relates_to": map[string]any{"rel_type": commands.RelAnnotation, "event_id": target.ID(), "key": "x"}})
	r.StartAt(target["depth"].(int64)+1, target.ID())
	kept := r.Next("m.reaction", other, nil, map[string]any{"m.relates_to": map[string]any{"rel_type": commands.RelAnnotation, "event_id": target.ID(), "key": "y"}})

	s := openWithServer(t)
	next := apply(t, s, 1, append(append(append([]testenv.Event{}, setup...), msgs...), target, purged, kept)...)
	page := func(filter map[string]any) []string {
		t.Helper()
		f, err := commands.ParseFilter(filter)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		err = s.View(r.ID, func(v *projections.RoomView) error {
			res, err := v.Paginate(projections.PageQuery{RoomID: r.ID, Backwards: true, Limit: 100, Filter: f})
			for _, row := range res.Rows {
				ids = append(ids, strings.Clone(row.EventID))
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	check := func(when string) {
		t.Helper()
		for _, tt := range []struct {
			filter map[string]any
			want   []string
		}{
			{map[string]any{"related_by_senders": []any{remote}}, nil},
			{map[string]any{"related_by_senders": []any{other}}, []string{target.ID()}},
			{map[string]any{"related_by_senders": []any{remote, other, "@a:x", "@b:x"}}, []string{target.ID()}},
			{map[string]any{"related_by_rel_types": []any{commands.RelAnnotation}}, []string{target.ID()}},
			{map[string]any{"related_by_rel_types": []any{commands.RelAnnotation}, "related_by_senders": []any{remote}}, nil},
		} {
			if got := page(tt.filter); !slices.Equal(got, tt.want) {
				t.Errorf("%s: %v: %v, want %v", when, tt.filter, got, tt.want)
			}
		}
	}
	if got := page(map[string]any{"related_by_senders": []any{remote}}); !slices.Equal(got, []string{target.ID()}) {
		t.Fatalf("before the purge: %v, want the target", got)
	}
	applyCmd(t, s, next, r.ID, "p", commands.ActionPurgeHistory, purgeAt(msgs[3]))
	check("before the janitor")
	drainJanitor(t, s)
	check("after the janitor")
}
