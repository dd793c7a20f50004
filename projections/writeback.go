package projections

import (
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// writeback makes the kernel start writing a big commit's pages to disk
// while bbolt is still writing the rest of them. bbolt writes every dirty
// page of a commit with its own pwrite and then waits in one fdatasync for
// all of them to reach the disk, so without help the disk sits idle while
// the pages are written and the writer sits idle while they are synced.
// Catching up 1M events in 10k rooms, a group commit wrote about 40 MB;
// its writes took about 50 ms and the fdatasync after them 70 ms.
//
// While a commit of at least writebackMin messages is being written, a
// goroutine asks the kernel every writebackEvery to start writing out the
// file's dirty pages (Linux's sync_file_range with
// SYNC_FILE_RANGE_WRITE, which waits for nothing). It changes no order
// that bbolt's crash safety needs: bbolt still syncs the pages before it
// writes the commit's meta page, and syncs that after; pages only reach
// the disk sooner. Elsewhere than on Linux it does nothing.
//
// The file is opened a second time, read-only, for its descriptor: bbolt
// does not share its own, and the kernel writes back the file's pages
// whichever descriptor asks.
type writeback struct {
	f        *os.File     // nil: off (not Linux, or the file could not be opened)
	requests atomic.Int64 // for the tests
	failures atomic.Int64 // requests the kernel refused, for the tests
	active   atomic.Int32 // goroutines asking, for the tests
}

// writebackMin is the smallest group commit, in messages, that writes
// back early: at about a page a message (a catch-up), 4 MB. Live traffic
// commits a few messages at a time, and its commits gain nothing.
const writebackMin = 1024

// writebackEvery is how often the goroutine asks again, so that pages
// written since the last request go too: bbolt's writes of a 40 MB
// commit took about 50 ms.
const writebackEvery = 2 * time.Millisecond

// earlyWriteback turns writeback on; the benchmarks turn it off to compare.
var earlyWriteback = true

// openWriteback opens path for writeback, or returns an inactive one.
func openWriteback(path string) *writeback {
	if !writebackSupported {
		return &writeback{}
	}
	f, err := os.Open(path)
	if err != nil {
		return &writeback{} // the commits stay correct, only slower
	}
	return &writeback{f: f}
}

// start begins writing back for a commit of n messages; the returned stop
// ends it, and must be called once the commit is over, whatever its
// outcome.
func (w *writeback) start(n int) (stop func()) {
	if w.f == nil || n < writebackMin || !earlyWriteback {
		return func() {}
	}
	// The descriptor is taken now: Close may close the file only after
	// stop, but the goroutine need not read the *os.File meanwhile.
	fd := w.f.Fd()
	quit, done := make(chan struct{}), make(chan struct{})
	w.active.Add(1)
	go func() {
		defer close(done)
		defer w.active.Add(-1)
		t := time.NewTicker(writebackEvery)
		defer t.Stop()
		for {
			// An error (a file system without it) costs the commit
			// nothing: its fdatasync writes every page anyway.
			if startWriteout(fd) != nil {
				w.failures.Add(1)
			}
			w.requests.Add(1)
			select {
			case <-quit:
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(quit)
			<-done
		})
	}
}

// close releases the descriptor.
func (w *writeback) close() error {
	if w.f == nil {
		return nil
	}
	return w.f.Close()
}
