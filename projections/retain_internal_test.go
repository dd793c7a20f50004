package projections

import (
	"context"
	"runtime"
	"testing"
	"weak"
)

// TestPartition_LetsGoOfItsLastBatch: a partition that goes quiet after a
// big batch (the end of a catch-up) does not keep that batch's messages:
// it reuses the batch's slice, and a small batch overwrote only its first
// slots.
func TestPartition_LetsGoOfItsLastBatch(t *testing.T) {
	p := &Projector{Store: openTestStore(t), Decode: testSubjects.Decode, QueueLen: 2000}
	if err := p.init(); err != nil {
		t.Fatal(err)
	}
	p.commits = make(chan *commitJob, 1)
	p.preparing = make(chan struct{}, 1)
	committed := make(chan struct{})
	go func() { defer close(committed); p.runCommitter() }()
	pt := p.parts[0]
	msgs := roomLog(t, "!big:test", 1001, 0)
	var data []weak.Pointer[byte]
	for i := range msgs[:1000] {
		msgs[i].data = append([]byte(nil), msgs[i].data...)
		data = append(data, weak.Make(&msgs[i].data[0]))
		pt.queue <- msgs[i]
	}
	done := make(chan struct{})
	go func() { defer close(done); p.runPartition(context.Background(), pt) }()
	ctx := t.Context()
	if err := p.waitUntil(ctx, func() bool { return pt.applied.Load() >= 1000 }); err != nil {
		t.Fatal(err)
	}
	pt.queue <- msgs[1000] // a small batch, as when live
	if err := p.waitUntil(ctx, func() bool { return pt.applied.Load() >= 1001 }); err != nil {
		t.Fatal(err)
	}
	msgs = nil
	runtime.GC()
	runtime.GC()
	kept := 0
	for _, w := range data {
		if w.Value() != nil {
			kept++
		}
	}
	close(pt.queue)
	<-done
	close(p.commits)
	<-committed
	if kept > 1 {
		t.Errorf("a quiet partition keeps %d of its last big batch's 1000 messages", kept)
	}
}
