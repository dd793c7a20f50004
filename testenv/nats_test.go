package testenv_test

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/scrollback/scrollback/testenv"
)

// failingTB records a helper's failure and its cleanups instead of
// failing the test.
type failingTB struct {
	testing.TB
	mu       sync.Mutex
	failed   string
	cleanups []func()
}

func (f *failingTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.failed = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *failingTB) Fatal(args ...any) { f.Fatalf("%s", fmt.Sprint(args...)) }
func (f *failingTB) FailNow()          { f.Fatalf("FailNow") }

func (f *failingTB) Cleanup(fn func()) {
	f.mu.Lock()
	f.cleanups = append(f.cleanups, fn)
	f.mu.Unlock()
}

// TestHoldRequests_ReleasesWhenItFails: when the service never counts the
// requests (here: no Load) and HoldRequests fails, the requests it holds
// are still released at the test's end: its cleanup is registered before
// the wait that fails, or the handlers would wait on the gate for good.
func TestHoldRequests_ReleasesWhenItFails(t *testing.T) {
	n := testenv.NewNATS(t)
	f := &failingTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.HoldRequests(f, nil, 2, 1)
	}()
	<-done
	if f.failed == "" {
		t.Fatal("HoldRequests did not fail without a Load to count the requests")
	}
	if len(f.cleanups) == 0 {
		t.Fatalf("HoldRequests failed (%s) with no cleanup registered: its requests are held for good", f.failed)
	}
	released := make(chan struct{})
	go func() {
		for _, fn := range f.cleanups {
			fn()
		}
		close(released)
	}()
	select {
	case <-released:
	case <-time.After(15 * time.Second):
		t.Fatal("the cleanup did not release the held requests")
	}
}
