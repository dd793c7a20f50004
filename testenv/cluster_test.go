package testenv_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/testenv"
)

func TestNewCluster_Healthy(t *testing.T) {
	start := time.Now()
	c := testenv.NewCluster(t, 3)
	t.Logf("3 nodes started and healthy in %s", time.Since(start))

	for _, u := range strings.Split(c.URL(), ",") {
		if !strings.HasPrefix(u, "nats://127.0.0.1:") {
			t.Errorf("client URL %q, want nats://127.0.0.1:<port>", u)
		}
	}
	// "Current" (caught up with the meta leader) can drop for a moment
	// after NewCluster saw it, while the meta group snapshots or applies
	// an entry; a node must be current again within seconds.
	for i := range 3 {
		srv := c.Server(i)
		if !srv.JetStreamIsClustered() {
			t.Errorf("node %s is not clustered", srv.Name())
		}
		testenv.WaitFor(t, 5*time.Second, "node "+srv.Name()+" to be current with the meta leader", srv.JetStreamIsCurrent)
	}
	_, js := c.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.AccountInfo(ctx); err != nil {
		t.Fatalf("JetStream through the cluster: %v", err)
	}
}

func TestCluster_KillStreamLeader_KeepsEveryAckedMessageOnce(t *testing.T) {
	const (
		stream     = "SCROLLBACK"
		beforeKill = 1000 // acknowledged before the kill
		afterKill  = 1000 // acknowledged after it
		workers    = 4    // publishers in flight at the kill
	)
	start := time.Now()
	c := testenv.NewCluster(t, 3)
	t.Logf("3 nodes started and healthy in %s", time.Since(start))
	nc, js := c.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// The operator creates the R3 log (EnsureStream leaves replicas to
	// the operator); the service's start-up check then accepts it.
	subjects := bus.Subjects{Prefix: "sb"}
	cfg := subjects.StreamConfig(stream)
	cfg.Replicas = 3
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		t.Fatalf("create R3 stream: %v", err)
	}
	st, err := bus.EnsureStream(ctx, js, subjects, stream)
	if err != nil {
		t.Fatalf("EnsureStream on the R3 stream: %v", err)
	}
	if got := st.CachedInfo().Config.Replicas; got != 3 {
		t.Fatalf("Replicas = %d, want 3", got)
	}
	log := &bus.Log{JS: js, Stream: stream, Subjects: subjects}

	// Publishers append until told to stop, each message retried with the
	// same ID until acknowledged, as a homeserver worker would.
	var (
		mu      sync.Mutex
		acked   = map[string]uint64{} // message ID -> acknowledged sequence
		ackedAt []time.Time
		retries int // failed attempts
		dups    int // acks of a retry that found the first attempt stored
		errKind = map[string]int{}
	)
	ackedCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	var next atomic.Int64
	stop := make(chan struct{})
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := next.Add(1)
				id := fmt.Sprintf("$ev%06d", n)
				subject := subjects.Room(fmt.Sprintf("!room%d:example.org", n%7), "event")
				ack, tries, err := appendUntilAck(ctx, js, subject, id)
				mu.Lock()
				retries += len(tries)
				for _, e := range tries {
					errKind[e]++
				}
				if err == nil {
					acked[id] = ack.Sequence
					ackedAt = append(ackedAt, time.Now())
					if ack.Duplicate {
						dups++
					}
				}
				mu.Unlock()
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	stopped := false
	stopPublishers := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer func() {
		cancel() // on failure, publishers stop retrying
		stopPublishers()
	}()

	testenv.WaitFor(t, 30*time.Second, "acks before the kill", func() bool { return ackedCount() >= beforeKill })
	leader := c.StreamLeader(stream)
	if leader < 0 {
		t.Fatal("the stream has no leader")
	}
	killedAt := time.Now()
	atKill := ackedCount()
	clientOn := nc.ConnectedServerName()
	c.Kill(leader)
	killTook := time.Since(killedAt)
	testenv.WaitFor(t, 30*time.Second, "a new stream leader", func() bool { return c.StreamLeader(stream) >= 0 })
	elected := time.Since(killedAt)
	newLeader := c.StreamLeader(stream)
	c.WaitHealthy(t) // healthy without the killed node
	healthyWithout := time.Since(killedAt)
	testenv.WaitFor(t, 30*time.Second, "acks after the kill", func() bool { return ackedCount() >= atKill+afterKill })
	stopPublishers()
	close(errs)
	for err := range errs {
		t.Fatalf("publisher: %v", err)
	}
	t.Logf("killed stream leader %s (client on %s) with %d acks: Kill took %s, new leader %s after %s, two nodes healthy after %s",
		c.Server(leader).Name(), clientOn, atKill, killTook, c.Server(newLeader).Name(), elected, healthyWithout)
	t.Logf("longest wait between two acks: %s; %d failed attempts %v; %d acks were duplicates", longestGap(ackedAt), retries, errKind, dups)

	// Every acknowledged message is in the log exactly once, at the
	// sequence its ack gave, and nothing else is.
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != uint64(len(acked)) || info.State.FirstSeq != 1 || info.State.LastSeq != info.State.Msgs {
		t.Fatalf("stream state %+v, want %d messages at sequences 1..%d", info.State, len(acked), len(acked))
	}
	seen := readLog(ctx, t, log, info.State.LastSeq)
	if len(seen) != len(acked) {
		t.Fatalf("log holds %d distinct message IDs, want %d", len(seen), len(acked))
	}
	for id, seq := range acked {
		if seen[id] != seq {
			t.Fatalf("message %s: in the log at %d, acknowledged at %d", id, seen[id], seq)
		}
	}

	// The killed node comes back as the same peer and catches up.
	restartedAt := time.Now()
	c.Restart(leader)
	healthy := time.Since(restartedAt)
	srv := c.Server(leader)
	testenv.WaitFor(t, 30*time.Second, "the restarted node to catch up", func() bool {
		state, ok := localStreamState(srv, stream)
		return ok && state.Msgs == info.State.Msgs && state.LastSeq == info.State.LastSeq &&
			srv.JetStreamIsStreamCurrent(server.DEFAULT_GLOBAL_ACCOUNT, stream)
	})
	t.Logf("restarted %s: healthy after %s, caught up with %d messages after %s",
		srv.Name(), healthy, info.State.Msgs, time.Since(restartedAt))
	c.WaitHealthy(t)
}

// appendUntilAck publishes one message, retrying with the same message
// ID until it is acknowledged or ctx ends; the stream's duplicate window
// keeps a single copy of a message whose first ack was lost (the ack then
// says Duplicate). tries holds the error of each failed attempt.
func appendUntilAck(ctx context.Context, js jetstream.JetStream, subject, id string) (ack *jetstream.PubAck, tries []string, err error) {
	for {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		ack, err := js.Publish(actx, subject, []byte(id), jetstream.WithMsgID(id))
		cancel()
		if err == nil {
			return ack, tries, nil
		}
		tries = append(tries, errorKind(err))
		if ctx.Err() != nil {
			return nil, tries, fmt.Errorf("publish %s: %w (last error: %v)", id, ctx.Err(), err)
		}
		// Back off a little between attempts, as a client would, rather
		// than spin while the stream has no leader.
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// errorKind names a publish error for the test log.
func errorKind(err error) string {
	var apiErr *jetstream.APIError
	switch {
	case errors.As(err, &apiErr):
		return fmt.Sprintf("api %d", apiErr.ErrorCode)
	case errors.Is(err, jetstream.ErrNoStreamResponse):
		return "no responders"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	default:
		return err.Error()
	}
}

// readLog reads the log from sequence 1 to last and returns each message
// ID's sequence, failing on any ID seen twice.
func readLog(ctx context.Context, t *testing.T, log *bus.Log, last uint64) map[string]uint64 {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	seen := make(map[string]uint64, last)
	var dup error
	err := log.Consume(ctx, 1, func(seq uint64, _ string, data []byte, _ int64, _ uint64) {
		id := string(data)
		if prev, ok := seen[id]; ok && dup == nil {
			dup = fmt.Errorf("message %s at sequences %d and %d", id, prev, seq)
		}
		seen[id] = seq
		if seq >= last {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("read the log: %v", err)
	}
	if dup != nil {
		t.Fatal(dup)
	}
	return seen
}

// localStreamState is a node's own replica of the stream.
func localStreamState(srv *server.Server, stream string) (server.StreamState, bool) {
	jsi, err := srv.Jsz(&server.JSzOptions{Accounts: true, Streams: true})
	if err != nil {
		return server.StreamState{}, false
	}
	for _, acc := range jsi.AccountDetails {
		for _, sd := range acc.Streams {
			if sd.Name == stream {
				return sd.State, true
			}
		}
	}
	return server.StreamState{}, false
}

// longestGap is the longest time between two consecutive acks.
func longestGap(at []time.Time) time.Duration {
	at = slices.Clone(at)
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	var gap time.Duration
	for i := 1; i < len(at); i++ {
		gap = max(gap, at[i].Sub(at[i-1]))
	}
	return gap
}
