package projections

import (
	"cmp"
	"context"
	"math"
	"runtime/debug"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
)

// TestApplyBatches_CountsPagesWritten: in a file that holds rooms
// already, a group's count of written pages follows the leaves its
// messages touch: an event in each of 1000 rooms writes many times the
// pages of 1000 events of one room.
func TestApplyBatches_CountsPagesWritten(t *testing.T) {
	const rooms = 1000
	written := func(spread bool) int {
		s := openTestStore(t)
		logs := interleave(t, rooms, 9) // rounds of one event per room
		var preload, last []rawMsg
		for _, l := range logs {
			preload, last = append(preload, l[:8]...), append(last, l[8])
		}
		slices.SortFunc(preload, func(a, b rawMsg) int { return cmp.Compare(a.seq, b.seq) })
		if _, err := s.applyBatches([]*partBatch{prepareBatch(0, decodeAll(preload))}); err != nil {
			t.Fatal(err)
		}
		if !spread {
			last = roomLog(t, "!solo:test", rooms, logs[rooms-1][8].seq)
		}
		slices.SortFunc(last, func(a, b rawMsg) int { return cmp.Compare(a.seq, b.seq) })
		n, err := s.applyBatches([]*partBatch{prepareBatch(0, decodeAll(last))})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	one, many := written(false), written(true)
	t.Logf("pages written by 1000 events: %d in one room, %d in 1000 rooms", one, many)
	if one <= 0 || many < 3*one {
		t.Fatalf("1000 events wrote %d pages in one room and %d in 1000 rooms: want at least 3 times as many in many rooms", one, many)
	}
}

// roomLog is the log of a room's first n events, with sequences after seq.
func roomLog(t *testing.T, roomID string, n int, seq uint64) []rawMsg {
	t.Helper()
	var out []rawMsg
	for _, ev := range roomEvents(roomID, n) {
		data, err := bus.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		seq++
		out = append(out, rawMsg{seq: seq, subject: testSubjects.Room(roomID, commands.KindEvent), data: data, ts: 1_700_000_000_000 + int64(seq)})
	}
	return out
}

// TestCommitter_BoundsGroupsByPagesWritten: the committer fills a group
// up to the current limit (a batch that would overfill it starts the
// next group), then sets the next limit from the pages the group wrote
// per message, within [minGroup, MaxGroup].
func TestCommitter_BoundsGroupsByPagesWritten(t *testing.T) {
	const rooms, perRoom, batches = 256, 2, 8 // batches of 512 messages, one per partition
	p := &Projector{Store: openTestStore(t), Decode: testSubjects.Decode, MaxDirty: 16}
	if err := p.init(); err != nil {
		t.Fatal(err)
	}
	if got := p.groupLimit.Load(); got != minGroup {
		t.Fatalf("first limit %d with MaxDirty 16, want minGroup (%d) until a group is measured", got, minGroup)
	}
	p.groupLimit.Store(1100) // two batches of 512 fit, three do not
	logs := interleave(t, rooms*batches, perRoom)
	var wg sync.WaitGroup
	p.commits = make(chan *commitJob, batches)
	p.preparing = make(chan struct{}, batches)
	groups := make([]int, batches)
	for b := range batches {
		var msgs []rawMsg
		for _, l := range logs[b*rooms : (b+1)*rooms] {
			msgs = append(msgs, l...)
		}
		slices.SortFunc(msgs, func(x, y rawMsg) int { return cmp.Compare(x.seq, y.seq) })
		wg.Go(func() {
			pt := p.parts[b]
			p.applyBatch(context.Background(), pt, msgs)
			groups[b] = pt.job.group
		})
	}
	commitWhenHandedOver(t, p, batches, &wg)

	// The first group takes two batches (1024 <= 1100) and writes far
	// more than 16 pages, so the limit falls to minGroup: every later
	// group is one batch.
	sizes := map[int]int{}
	for _, g := range groups {
		sizes[g]++
	}
	if sizes[2] != 2 || sizes[1] != batches-2 {
		t.Errorf("groups of each batch %v: want two batches in a group of 2, the others alone", groups)
	}
	if got := p.groupLimit.Load(); got != minGroup {
		t.Errorf("limit after the groups %d, want minGroup (%d)", got, minGroup)
	}
	for b := range batches {
		if got, want := p.parts[b].applied.Load(), slices.Max(seqsOf(logs[b*rooms:(b+1)*rooms])); got != want {
			t.Errorf("partition %d applied up to %d, want %d", b, got, want)
		}
	}
}

// TestPartition_CutsBatchesAtGroupLimit: a partition that is behind takes
// at most the group limit's messages into a batch.
func TestPartition_CutsBatchesAtGroupLimit(t *testing.T) {
	var mu sync.Mutex
	var sizes []int
	p := &Projector{Store: openTestStore(t), Decode: testSubjects.Decode, QueueLen: 1000,
		Observe: func(_ int, out []Outcome, _ time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			sizes = append(sizes, len(out))
		}}
	if err := p.init(); err != nil {
		t.Fatal(err)
	}
	p.groupLimit.Store(300) // MaxDirty 0: the committer leaves it alone
	p.commits = make(chan *commitJob, 1)
	p.preparing = make(chan struct{}, 1)
	committed := make(chan struct{})
	go func() {
		defer close(committed)
		p.runCommitter()
	}()
	pt := p.parts[0]
	for _, m := range roomLog(t, "!behind:test", 1000, 0) {
		pt.queue <- m
	}
	close(pt.queue)
	p.runPartition(context.Background(), pt)
	close(p.commits)
	<-committed
	total := 0
	for _, n := range sizes {
		total += n
		if n > 300 {
			t.Errorf("a batch of %d messages with a group limit of 300", n)
		}
	}
	if total != 1000 || pt.applied.Load() != 1000 {
		t.Fatalf("batches %v (%d messages), applied up to %d; want 1000", sizes, total, pt.applied.Load())
	}
}

func seqsOf(logs [][]rawMsg) []uint64 {
	var out []uint64
	for _, l := range logs {
		for _, m := range l {
			out = append(out, m.seq)
		}
	}
	return out
}

// TestProjector_SizesFromMemoryLimit: under a Go memory limit the queues
// and the dirty-node bound follow it unless set; without one the queue
// keeps its default and groups are bounded by MaxGroup alone.
func TestProjector_SizesFromMemoryLimit(t *testing.T) {
	if q, d := sizeFor(512 << 20); q != 1024 || d != 8192 {
		t.Fatalf("sizeFor(512 MiB) = %d, %d; want 1024, 8192", q, d)
	}
	if q, d := sizeFor(64 << 20); q != 256 || d != 1024 {
		t.Fatalf("sizeFor(64 MiB) = %d, %d; want the floors 256, 1024", q, d)
	}
	if q, _ := sizeFor(16 << 30); q != defaultQueueLen {
		t.Fatalf("sizeFor(16 GiB) queue %d, want the cap %d", q, defaultQueueLen)
	}
	prev := debug.SetMemoryLimit(512 << 20)
	defer debug.SetMemoryLimit(prev)
	p := &Projector{Store: openTestStore(t), Decode: testSubjects.Decode, QueueLen: 77}
	if err := p.init(); err != nil {
		t.Fatal(err)
	}
	if p.QueueLen != 77 || p.MaxDirty != 8192 || p.groupLimit.Load() != 2048 {
		t.Fatalf("under 512 MiB: QueueLen %d (set: 77), MaxDirty %d (want 8192), first group limit %d (want 2048)", p.QueueLen, p.MaxDirty, p.groupLimit.Load())
	}
	debug.SetMemoryLimit(math.MaxInt64)
	p = &Projector{Store: openTestStore(t), Decode: testSubjects.Decode}
	if err := p.init(); err != nil {
		t.Fatal(err)
	}
	if p.QueueLen != defaultQueueLen || p.MaxDirty != 0 || p.groupLimit.Load() != int64(p.MaxGroup) {
		t.Fatalf("without a limit: QueueLen %d, MaxDirty %d, group limit %d; want %d, 0, MaxGroup", p.QueueLen, p.MaxDirty, p.groupLimit.Load(), defaultQueueLen)
	}
}
