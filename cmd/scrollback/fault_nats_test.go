package main

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/scrollback/scrollback/testenv"
)

// TestFault_ExternalNATSRestart runs the service on an external
// nats-server (nats.url) while homeserver-like publishers write to two
// rooms without pause, and shuts the NATS server down and starts it again
// on the same port and store dir: (1) the service rides it out and
// reconnects; (2) the service is also killed with SIGKILL while NATS is
// down and started once NATS is back, so it resumes from its checkpoints.
// The publishers retry until acknowledged. Afterwards every acknowledged
// event reads exactly once and in order, and `scrollback verify` finds
// no difference.
func TestFault_ExternalNATSRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	ext := startExternalNATS(t)
	svc := startService(t, serviceConfig{natsURL: ext.url()})
	nc, js := connectNATS(t, ext.url())
	points := []string{"nats-restart", "nats-restart+kill9"}
	var counts faultCounts
	rounds(t, &counts, func(n int, rng *rand.Rand) {
		for i, point := range points {
			start := time.Now()
			rooms := []*testenv.Room{testenv.NewRoom(fmt.Sprintf("ext%d-%da", n, i), "test"), testenv.NewRoom(fmt.Sprintf("ext%d-%db", n, i), "test")}
			var setup [][]string
			var lives []*livePublisher
			for _, r := range rooms {
				evs := r.Setup(alice, remote)
				publishBatches(t, nc, evs)
				setup = append(setup, ids(evs))
				lives = append(lives, startLive(t, js, r, remote))
			}
			// Under load: each publisher has had some events acknowledged.
			before, after := 100, 100
			if soakBudget(t) > 0 {
				before, after = 1+rng.IntN(300), 1+rng.IntN(300)
			}
			testenv.WaitFor(t, 30*time.Second, "events to flow", func() bool {
				return lives[0].count() >= before && lives[1].count() >= before
			})
			ext.shutdown()
			kill := strings.HasSuffix(point, "kill9")
			if kill {
				svc.kill9()
			}
			if soakBudget(t) > 0 {
				// An outage of random length; publishers keep retrying.
				<-time.After(time.Duration(rng.IntN(3000)) * time.Millisecond)
			}
			ext.start()
			if kill {
				svc.start()
			}
			counts.killed(point, true)
			n0, n1 := lives[0].count(), lives[1].count()
			testenv.WaitFor(t, 60*time.Second, "events to flow again", func() bool {
				return lives[0].count() >= n0+after && lives[1].count() >= n1+after
			})
			for j, r := range rooms {
				acked, last := lives[j].finish(t)
				counts.events += wantRoom(t, nc, r.ID, last, append(setup[j], acked...), point)
			}
			t.Logf("round %d: %s done in %s", n, point, time.Since(start).Round(time.Millisecond))
		}
		svc.verify(soakBudget(t) > 0)
	})
}
