package bus_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/testenv"
)

func openOwners(t *testing.T, n *testenv.NATS, name string, lease time.Duration) *bus.Owners {
	t.Helper()
	o, err := bus.OpenOwners(context.Background(), n.JS, "SB", 1, name, 16, lease, nil)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// steps runs rounds of every instance in turn.
func steps(t *testing.T, rounds int, os ...*bus.Owners) {
	t.Helper()
	for range rounds {
		for _, o := range os {
			if err := o.Step(context.Background()); err != nil {
				t.Fatalf("%s: %v", o.Instance, err)
			}
		}
	}
}

// owners maps each partition to the instances that believe they own it.
func owners(os ...*bus.Owners) map[int][]string {
	out := map[int][]string{}
	for _, o := range os {
		for _, p := range o.Owned() {
			out[p] = append(out[p], o.Instance)
		}
	}
	return out
}

func TestOwners_OneOwnerPerPartitionSpreadByPreference(t *testing.T) {
	n := testenv.NewNATS(t)
	a := openOwners(t, n, "a", 10*time.Second)
	steps(t, 1, a)
	if got := len(a.Owned()); got != 16 {
		t.Fatalf("a single instance owns %d of 16 partitions", got)
	}
	b := openOwners(t, n, "b", 10*time.Second)
	c := openOwners(t, n, "c", 10*time.Second)
	// b and c join; a hands over what they are preferred for; they take it.
	steps(t, 4, b, c, a)
	got := owners(a, b, c)
	members := map[string]bool{"a": true, "b": true, "c": true}
	for p := range 16 {
		if len(got[p]) != 1 || got[p][0] != bus.Preferred(p, members) {
			t.Fatalf("partition %d owned by %v, want exactly %s", p, got[p], bus.Preferred(p, members))
		}
	}
	for _, o := range []*bus.Owners{a, b, c} {
		if len(o.Owned()) == 0 {
			t.Errorf("%s owns no partition: the spread is uneven", o.Instance)
		}
		if m := o.Members(); len(m) != 3 {
			t.Fatalf("%s sees members %v", o.Instance, m)
		}
	}
}

func TestOwners_TakesOverAfterTheLeaseExpires(t *testing.T) {
	n := testenv.NewNATS(t)
	lease := 600 * time.Millisecond
	a := openOwners(t, n, "a", lease)
	b := openOwners(t, n, "b", lease)
	steps(t, 3, a, b)
	aHad := a.Owned()
	if len(aHad) == 0 || len(aHad)+len(b.Owned()) != 16 {
		t.Fatalf("a owns %v, b owns %v", aHad, b.Owned())
	}
	// a dies without releasing: b takes a's partitions once the leases
	// expire on the server, and a's own view times out meanwhile.
	start := time.Now()
	testenv.WaitFor(t, 10*time.Second, "b owns every partition", func() bool {
		steps(t, 1, b)
		return len(b.Owned()) == 16
	})
	t.Logf("takeover after %v (lease %v)", time.Since(start).Round(time.Millisecond), lease)
	if len(a.Owned()) != 0 {
		t.Fatalf("a still believes it owns %v after its lease lapsed", a.Owned())
	}
	// a comes back with the same name: a new process waits for nothing
	// but gets its preferred partitions back by hand-over.
	a2 := openOwners(t, n, "a", lease)
	steps(t, 4, a2, b)
	slices.Sort(aHad)
	if got := a2.Owned(); !slices.Equal(got, aHad) {
		t.Fatalf("a restarted owns %v, want its preferred %v", got, aHad)
	}
}

func TestOwners_ReleaseOnStop(t *testing.T) {
	n := testenv.NewNATS(t)
	a := openOwners(t, n, "a", 30*time.Second)
	b := openOwners(t, n, "b", 30*time.Second)
	steps(t, 3, a, b)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	cancel()
	<-done
	// With a 30 s lease, b only gets everything this fast because a
	// released its leases and its membership on the way out.
	steps(t, 4, b)
	if got := len(b.Owned()); got != 16 {
		t.Fatalf("after a stopped, b owns %d partitions", got)
	}
}

func TestOwners_RejectsBadNames(t *testing.T) {
	n := testenv.NewNATS(t)
	for _, name := range []string{"", "a.b", "a b", "a*"} {
		if _, err := bus.OpenOwners(context.Background(), n.JS, "SB", 1, name, 16, time.Second, nil); err == nil {
			t.Errorf("instance name %q accepted", name)
		}
	}
}
