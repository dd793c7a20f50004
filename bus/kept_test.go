package bus_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/testenv"
)

// readMsg is one message as Consume delivered it.
type readMsg struct {
	subject, data string
	ts            int64
}

// keptLog is a log holding two rooms' events, interleaved: room a's
// messages are "a<i>", room b's "b<i>", i = 1..n each.
type keptLog struct {
	n    *testenv.NATS
	log  *bus.Log
	st   jetstream.Stream
	seqs map[string]uint64 // data -> sequence
}

func newKeptLog(t *testing.T, n int) *keptLog {
	t.Helper()
	k := &keptLog{n: testenv.NewNATS(t), seqs: map[string]uint64{}}
	s := bus.Subjects{Prefix: "sb"}
	ctx := context.Background()
	st, err := bus.EnsureStream(ctx, k.n.JS, s, "SCROLLBACK")
	if err != nil {
		t.Fatal(err)
	}
	k.st = st
	k.log = &bus.Log{JS: k.n.JS, Stream: "SCROLLBACK", Subjects: s}
	for i := 1; i <= n; i++ {
		for _, room := range []string{"a", "b"} {
			k.append(t, room, fmt.Sprintf("%s%d", room, i))
		}
	}
	return k
}

func (k *keptLog) append(t *testing.T, room, data string) {
	t.Helper()
	seq, err := k.log.Append(context.Background(), k.log.Subjects.Room("!"+room+":x", commands.KindEvent), "", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	k.seqs[data] = seq
}

// read is the whole log through Consume from sequence from.
func (k *keptLog) read(t *testing.T, from uint64) map[uint64]readMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	last, err := k.log.LastSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]readMsg{}
	var prev uint64
	rctx, stop := context.WithCancel(ctx)
	err = k.log.Consume(rctx, from, func(seq uint64, subject string, data []byte, ts int64, _ uint64) {
		if seq <= prev {
			t.Errorf("sequence %d delivered after %d", seq, prev)
		}
		prev = seq
		out[seq] = readMsg{subject, string(data), ts}
		if seq >= last {
			stop()
		}
	})
	if ctx.Err() != nil || (err != nil && !errors.Is(err, context.Canceled)) {
		t.Fatalf("read: %v (ctx %v)", err, ctx.Err())
	}
	return out
}

// copyByHand makes a kept copy of message name, as a compaction does.
func (k *keptLog) copyByHand(t *testing.T, name string) {
	t.Helper()
	ctx := context.Background()
	orig, err := k.st.GetMsg(ctx, k.seqs[name])
	if err != nil {
		t.Fatal(err)
	}
	room := string(name[0])
	copyMsg := &nats.Msg{Subject: k.log.Subjects.Room("!"+room+":x", commands.KindKept), Data: orig.Data, Header: nats.Header{}}
	copyMsg.Header.Set(bus.HeaderKeptSeq, strconv.FormatUint(orig.Sequence, 10))
	copyMsg.Header.Set(bus.HeaderKeptTime, strconv.FormatInt(orig.Time.UnixNano(), 10))
	if _, err := k.n.JS.PublishMsg(ctx, copyMsg); err != nil {
		t.Fatal(err)
	}
}

func (k *keptLog) count(t *testing.T, subject string) uint64 {
	t.Helper()
	info, err := k.st.Info(context.Background(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[subject]
}

// TestCompact_KeptMessagesAreReadInTheirPlaces: room a's events 1-6 are
// erased except 2 and 5, which the purge keeps. One subject purge takes
// them all off the event subject; a reader from the start still gets a2
// and a5, at their sequences, with their data, subject and log time, and
// nothing of the erased ones; room b is untouched.
func TestCompact_KeptMessagesAreReadInTheirPlaces(t *testing.T) {
	k := newKeptLog(t, 8)
	before := k.read(t, 1)
	var erase []uint64
	for _, i := range []int{1, 3, 4, 6} {
		erase = append(erase, k.seqs[fmt.Sprintf("a%d", i)])
	}
	if err := k.log.Compact(context.Background(), "!a:x", erase); err != nil {
		t.Fatal(err)
	}
	eventSubj := k.log.Subjects.Room("!a:x", commands.KindEvent)
	keptSubj := k.log.Subjects.Room("!a:x", commands.KindKept)
	if n := k.count(t, eventSubj); n != 2 { // a7, a8
		t.Errorf("room a's event subject holds %d messages, want 2", n)
	}
	if n := k.count(t, keptSubj); n != 2 { // copies of a2, a5
		t.Errorf("room a's kept subject holds %d messages, want 2", n)
	}
	after := k.read(t, 1)
	for seq, m := range before {
		got, ok := after[seq]
		switch m.data {
		case "a1", "a3", "a4", "a6":
			if ok {
				t.Errorf("erased %s read at %d", m.data, seq)
			}
		default:
			if got != m {
				t.Errorf("at %d: read %+v, want %+v", seq, got, m)
			}
		}
	}
	// The copies themselves pass where they stand, as kept messages.
	var passed int
	for seq, m := range after {
		if _, ok := before[seq]; !ok {
			if m.subject != keptSubj {
				t.Errorf("new message at %d on %s", seq, m.subject)
			}
			passed++
		}
	}
	if passed != 2 {
		t.Errorf("%d kept copies read where they stand, want 2", passed)
	}
	// A reader starting past a2 gets a5 in its place, not a2.
	from := k.seqs["a3"]
	got := k.read(t, from)
	if _, ok := got[k.seqs["a2"]]; ok {
		t.Error("a reader from a3 got a2")
	}
	if got[k.seqs["a5"]].data != "a5" {
		t.Errorf("a reader from a3 got %+v at a5's place", got[k.seqs["a5"]])
	}
}

// TestCompact_InSteps: with steps of two erased messages, the subject
// purge goes in three steps, making way for reads before each (BeforeStep,
// or BeforeDelete when it is unset; never BeforeDelete, which is for
// single messages, when both are set), and the log reads as after one
// purge.
func TestCompact_InSteps(t *testing.T) {
	defer bus.SetCompactStep(2)()
	for _, withStep := range []bool{true, false} {
		t.Run(fmt.Sprint("BeforeStep set ", withStep), func(t *testing.T) {
			compactInSteps(t, withStep)
		})
	}
}

func compactInSteps(t *testing.T, withStep bool) {
	k := newKeptLog(t, 8)
	before := k.read(t, 1)
	var erase []uint64
	for _, i := range []int{1, 3, 4, 6, 7} {
		erase = append(erase, k.seqs[fmt.Sprintf("a%d", i)])
	}
	steps, deletes := 0, 0
	k.log.BeforeDelete = func(context.Context) { deletes++ }
	if withStep {
		k.log.BeforeStep = func(context.Context) { steps++ }
	}
	if err := k.log.Compact(context.Background(), "!a:x", erase); err != nil {
		t.Fatal(err)
	}
	if !withStep {
		steps, deletes = deletes, 0
	}
	if steps < 3 || deletes != 0 {
		t.Errorf("the wait before a step was asked %d times, want one before each of 3 steps at least; BeforeDelete %d times besides, want none", steps, deletes)
	}
	if n := k.count(t, k.log.Subjects.Room("!a:x", commands.KindEvent)); n != 1 { // a8
		t.Errorf("room a's event subject holds %d messages, want 1", n)
	}
	if n := k.count(t, k.log.Subjects.Room("!a:x", commands.KindKept)); n != 2 { // copies of a2, a5
		t.Errorf("room a's kept subject holds %d messages, want 2", n)
	}
	after := k.read(t, 1)
	for seq, m := range before {
		erased := false
		for _, e := range erase {
			erased = erased || e == seq
		}
		got, ok := after[seq]
		switch {
		case erased && ok:
			t.Errorf("erased message %d (%s) still read", seq, m.data)
		case !erased && (!ok || got.data != m.data || got.subject != m.subject):
			t.Errorf("message %d: read %+v (present %v), want %+v", seq, got, ok, m)
		}
	}
}

// TestCompact_ResumesAfterACrash: a compaction that died after copying
// a2 (its copy is in the log, the originals too) is repeated: a2 is not
// copied twice, and a reader meanwhile gets each message once.
func TestCompact_ResumesAfterACrash(t *testing.T) {
	k := newKeptLog(t, 4)
	ctx := context.Background()
	keptSubj := k.log.Subjects.Room("!a:x", commands.KindKept)
	k.copyByHand(t, "a2")
	// Before the repeat: the original and its copy are both there; the
	// reader takes the original once.
	mid := k.read(t, 1)
	var a2 int
	for _, m := range mid {
		if m.data == "a2" && m.subject != keptSubj {
			a2++
		}
	}
	if a2 != 1 {
		t.Fatalf("a2 read %d times with its copy and the original in the log", a2)
	}
	erase := []uint64{k.seqs["a1"], k.seqs["a3"]}
	if err := k.log.Compact(ctx, "!a:x", erase); err != nil {
		t.Fatal(err)
	}
	if n := k.count(t, keptSubj); n != 1 {
		t.Errorf("kept subject holds %d copies, want 1 (a2 once)", n)
	}
	if got := k.read(t, 1)[k.seqs["a2"]]; got.data != "a2" || got.ts != mid[k.seqs["a2"]].ts {
		t.Errorf("a2 after the repeat: %+v", got)
	}
	// A repeat after the purge changes nothing.
	if err := k.log.Compact(ctx, "!a:x", erase); err != nil {
		t.Fatal(err)
	}
	if n := k.count(t, keptSubj); n != 1 {
		t.Errorf("kept subject holds %d copies after a second repeat, want 1", n)
	}
}

// TestCompact_ErasesKeptCopies: a first compaction keeps a2, a4 and a5
// as copies; a later one erases a2 and a4 (a purge that deletes events
// the first one kept, such as local messages with delete_local_events).
// Their copies go too, so nothing of them stays in the log, and a5's
// copy, the originals above and room b are untouched. A repeat changes
// nothing.
func TestCompact_ErasesKeptCopies(t *testing.T) {
	k := newKeptLog(t, 8)
	ctx := context.Background()
	before := k.read(t, 1)
	first := []uint64{k.seqs["a1"], k.seqs["a3"], k.seqs["a6"]}
	if err := k.log.Compact(ctx, "!a:x", first); err != nil {
		t.Fatal(err)
	}
	keptSubj := k.log.Subjects.Room("!a:x", commands.KindKept)
	if n := k.count(t, keptSubj); n != 3 { // copies of a2, a4, a5
		t.Fatalf("kept subject holds %d copies after the first compaction, want 3", n)
	}
	second := []uint64{k.seqs["a2"], k.seqs["a4"]}
	for range 2 {
		if err := k.log.Compact(ctx, "!a:x", second); err != nil {
			t.Fatal(err)
		}
		if n := k.count(t, keptSubj); n != 1 { // a5's copy
			t.Errorf("kept subject holds %d copies after the second compaction, want 1", n)
		}
	}
	got := k.read(t, 1)
	for seq, m := range before {
		erased := slices.Contains(first, seq) || slices.Contains(second, seq)
		r, ok := got[seq]
		switch {
		case erased && ok:
			t.Errorf("erased %s read at %d", m.data, seq)
		case !erased && r != m:
			t.Errorf("at %d: read %+v, want %+v", seq, r, m)
		}
	}
}

// TestCompact_AForeignMessageOnTheKeptSubject: a message on the kept
// subject that is not a valid copy does not stop a compaction (it copies
// again what it cannot tell is copied) nor a reader (each sequence comes
// once, and the foreign message passes where it stands).
func TestCompact_AForeignMessageOnTheKeptSubject(t *testing.T) {
	k := newKeptLog(t, 6)
	ctx := context.Background()
	keptSubj := k.log.Subjects.Room("!a:x", commands.KindKept)
	// A compaction copied a2 and died before its purge; then a foreign
	// message hides that copy from the next attempt, which copies a2
	// again.
	k.copyByHand(t, "a2")
	if _, err := k.n.JS.Publish(ctx, keptSubj, []byte("not a copy")); err != nil {
		t.Fatal(err)
	}
	if err := k.log.Compact(ctx, "!a:x", []uint64{k.seqs["a1"], k.seqs["a3"]}); err != nil {
		t.Fatalf("compaction after a foreign message: %v", err)
	}
	if n := k.count(t, keptSubj); n != 3 {
		t.Fatalf("kept subject holds %d messages, want 3 (a2 twice, the foreign one)", n)
	}
	got := k.read(t, 1) // read fails the test on a sequence delivered twice
	for _, name := range []string{"a2", "a4", "b1", "b6"} {
		if got[k.seqs[name]].data != name {
			t.Errorf("%s: read %+v", name, got[k.seqs[name]])
		}
	}
	for _, name := range []string{"a1", "a3"} {
		if _, ok := got[k.seqs[name]]; ok {
			t.Errorf("erased %s read", name)
		}
	}
}

// BenchmarkCompact: erasing b.N messages of a room (every tenth kept) by
// one compaction, against DeleteMsgs (BenchmarkDeleteMsgs).
func BenchmarkCompact(b *testing.B) {
	n := testenv.NewNATS(b)
	ctx := context.Background()
	if _, err := bus.EnsureStream(ctx, n.JS, bus.Subjects{Prefix: "sb"}, "SCROLLBACK"); err != nil {
		b.Fatal(err)
	}
	log := &bus.Log{JS: n.JS, Stream: "SCROLLBACK", Subjects: bus.Subjects{Prefix: "sb"}}
	seqs := publishN(b, n, log, b.N+b.N/9)
	var erase []uint64
	for i, s := range seqs {
		if i%10 != 9 {
			erase = append(erase, s)
		}
	}
	b.ResetTimer()
	if err := log.Compact(ctx, "!r:x", erase); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(len(erase))/b.Elapsed().Seconds(), "erased/s")
}

func TestParseBatchAck(t *testing.T) {
	if last, err := bus.ParseBatchAck([]byte(`{"stream":"S","seq":42,"batch":"b","count":3}`), 3); err != nil || last != 42 {
		t.Errorf("ok ack: %d %v", last, err)
	}
	for name, data := range map[string]string{
		"error":       `{"error":{"code":400,"err_code":10199,"description":"atomic publish batch contains duplicate message id"}}`,
		"short count": `{"seq":42,"count":2}`,
		"not json":    `nope`,
	} {
		if _, err := bus.ParseBatchAck([]byte(data), 3); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// RoomHistoryBelow finds a room's first event message, and its first kept
// copy by the original's sequence, not the copy's own (copies are made
// after their originals, here after every message of the log).
func TestRoomHistoryBelow(t *testing.T) {
	k := newKeptLog(t, 4) // a1 b1 a2 b2 a3 b3 a4 b4
	ctx := context.Background()
	check := func(what, room string, seq uint64, want bool) {
		t.Helper()
		if got, err := k.log.RoomHistoryBelow(ctx, "!"+room+":x", seq); err != nil || got != want {
			t.Errorf("%s: RoomHistoryBelow(%s, %d) = %v, %v; want %v", what, room, seq, got, err, want)
		}
	}
	check("at room a's first message", "a", k.seqs["a1"], false)
	check("past it", "a", k.seqs["a1"]+1, true)
	check("a room with no messages", "c", 1000, false)

	// Erase a2 and a3 and keep a1 (as a purge_history keeps a state
	// event): a1 is now a copy after b4, and no event message of room a
	// is left below a4.
	if err := k.log.Compact(ctx, "!a:x", []uint64{k.seqs["a2"], k.seqs["a3"]}); err != nil {
		t.Fatal(err)
	}
	check("below a4, a1 kept as a copy", "a", k.seqs["a4"], true)
	check("at a1, kept as a copy", "a", k.seqs["a1"], false)
	// A purge_room at a4 erases the copies and the messages below it.
	for _, kind := range []string{commands.KindKept, commands.KindEvent} {
		if err := k.log.PurgeSubjectBelow(ctx, k.log.Subjects.Room("!a:x", kind), k.seqs["b4"]+100); err != nil {
			t.Fatal(err)
		}
	}
	check("everything erased", "a", k.seqs["b4"]+100, false)
	check("room b untouched", "b", k.seqs["b1"]+1, true)
}

// TestCompact_CopiesInSteps: each atomic batch of kept copies is a step
// of its own, with a wait before it (BeforeStep), as the scans and the
// subject purges are: a purge that keeps most of a room copies nearly all
// of its messages.
func TestCompact_CopiesInSteps(t *testing.T) {
	defer bus.SetKeptBatch(1)()
	k := newKeptLog(t, 8)
	var erase []uint64
	for _, i := range []int{1, 3, 4, 6, 7} {
		erase = append(erase, k.seqs[fmt.Sprintf("a%d", i)])
	}
	kept := k.log.Subjects.Room("!a:x", commands.KindKept)
	var seen []uint64 // the copies made at each wait
	k.log.BeforeStep = func(context.Context) { seen = append(seen, k.count(t, kept)) }
	if err := k.log.Compact(context.Background(), "!a:x", erase); err != nil {
		t.Fatal(err)
	}
	if n := k.count(t, kept); n != 2 { // a2, a5
		t.Fatalf("%d kept copies, want 2", n)
	}
	if !slices.Contains(seen, 1) {
		t.Errorf("the waits before Compact's steps saw %v copies made: want one between the two batches of copies", seen)
	}
}

// TestPurgeSubjectInSteps: a room's subject purge (purge_room's erasure)
// goes in steps of about compactStep messages, waiting before each
// (BeforeStep), and ends as one purge would: the room's messages below the
// bound are gone, the ones from it on and the other room's stay. A
// subject of at most compactStep messages is one purge.
func TestPurgeSubjectInSteps(t *testing.T) {
	defer bus.SetCompactStep(3)()
	k := newKeptLog(t, 12) // a1 b1 a2 b2 ... a12 b12
	subject := k.log.Subjects.Room("!a:x", commands.KindEvent)
	steps := 0
	k.log.BeforeStep = func(context.Context) { steps++ }
	if err := k.log.PurgeSubjectInSteps(context.Background(), subject, k.seqs["a10"]); err != nil {
		t.Fatal(err)
	}
	if steps < 3 {
		t.Errorf("%d waits before the steps, want one before each of 3 steps at least (9 messages, 3 a step)", steps)
	}
	after := k.read(t, 1)
	for data, seq := range k.seqs {
		_, there := after[seq]
		gone := data[0] == 'a' && seq < k.seqs["a10"]
		if there == gone {
			t.Errorf("%s: read %v, want %v", data, there, !gone)
		}
	}
	// What is left, 3 messages, goes in one step; an empty subject is
	// nothing to do.
	steps = 0
	if err := k.log.PurgeSubjectInSteps(context.Background(), subject, k.seqs["b12"]+1); err != nil {
		t.Fatal(err)
	}
	if n := k.count(t, subject); n != 0 || steps != 1 {
		t.Errorf("after purging the rest: %d messages left, %d steps; want 0 and 1", n, steps)
	}
	if err := k.log.PurgeSubjectInSteps(context.Background(), subject, k.seqs["b12"]+1); err != nil {
		t.Fatal(err)
	}
}

// TestEraseLateCopies: after a purge_room at seq, the kept copies at or
// after seq of messages below it go; a copy of a later message (a purge
// of the room's new timeline kept it) and copies below seq (the subject
// purge's) are left alone.
func TestEraseLateCopies(t *testing.T) {
	k := newKeptLog(t, 4)
	ctx := context.Background()
	room := "!a:x"
	kept := k.log.Subjects.Room(room, commands.KindKept)
	copyOf := func(orig uint64) uint64 {
		t.Helper()
		m := nats.NewMsg(kept)
		m.Header.Set(bus.HeaderKeptSeq, strconv.FormatUint(orig, 10))
		m.Header.Set(bus.HeaderKeptTime, "1")
		m.Data = []byte("copy")
		ack, err := k.n.JS.PublishMsg(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	early := copyOf(k.seqs["a1"]) // below the purge_room: its subject purge's
	purgeAt := early + 1
	k.append(t, "a", "a5") // at the purge_room's place, an event after it
	late := copyOf(k.seqs["a2"])
	newer := copyOf(k.seqs["a5"])
	if err := k.log.EraseLateCopies(ctx, room, purgeAt); err != nil {
		t.Fatal(err)
	}
	for seq, want := range map[uint64]bool{early: true, late: false, newer: true} {
		_, err := k.st.GetMsg(ctx, seq)
		if got := err == nil; got != want {
			t.Errorf("copy at %d there: %v, want %v (err %v)", seq, got, want, err)
		}
	}
	// Nothing at or after seq: one look-up, nothing deleted.
	if err := k.log.EraseLateCopies(ctx, room, newer+1); err != nil {
		t.Fatal(err)
	}
	if _, err := k.st.GetMsg(ctx, newer); err != nil {
		t.Errorf("the newer copy went: %v", err)
	}
}

// TestFirstUpdates: the first TaskUpdate of each task after a sequence,
// on the room's task subject only; other messages are passed over.
func TestFirstUpdates(t *testing.T) {
	k := newKeptLog(t, 1)
	ctx := context.Background()
	room := "!a:x"
	subj := k.log.Subjects.Room(room, commands.KindTask)
	update := func(subject, id, status string) uint64 {
		t.Helper()
		data, err := bus.Encode(map[string]any{"task_id": id, "status": status})
		if err != nil {
			t.Fatal(err)
		}
		seq, err := k.log.Append(ctx, subject, "", data)
		if err != nil {
			t.Fatal(err)
		}
		return seq
	}
	first := update(subj, "a", "active")
	update(k.log.Subjects.Room("!b:x", commands.KindTask), "b", "failed") // another room's
	if _, err := k.log.Append(ctx, subj, "", []byte{0xc1}); err != nil {  // not MessagePack
		t.Fatal(err)
	}
	update(subj, "a", "complete")
	update(subj, "b", "active")
	got, err := k.log.FirstUpdates(ctx, room, []string{"a", "b", "c"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["a"].Status != "active" || got["b"].Status != "active" {
		t.Fatalf("from the start: %+v", got)
	}
	if got, err = k.log.FirstUpdates(ctx, room, []string{"a"}, first); err != nil || len(got) != 1 || got["a"].Status != "complete" {
		t.Fatalf("after a's first: %+v %v", got, err)
	}
}
