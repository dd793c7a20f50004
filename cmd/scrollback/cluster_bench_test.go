package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// Issue 9's benchmarks: several scrollback instances on one machine.
//
//	go test -run '^$' -bench 'Instances|Failover' -benchtime 1x ./cmd/scrollback/
//
// BenchmarkInstances_Reads runs 1, 2 and 3 in-process instances on one
// external nats-server (BenchmarkInstances_ReadsR3: on an in-process
// three-node JetStream cluster with the log replicated three times), and
// measures /messages throughput and ingest with each.
// BenchmarkFailover_Kill9 runs two `scrollback serve` processes and kills
// the owner of a room with SIGKILL in the middle of its shutdown.
// Benchmarks are not run by CI.

const (
	instancesRoomEvents   = 10_000 // the room the reads page through
	instancesIngestEvents = 20_000 // published while every instance applies them (SCROLLBACK_BENCH_INGEST sets it; 0 skips the ingest)
	instancesClients      = 16     // closed-loop clients on one connection (DESIGN.md, "Benchmark protocol")
	instancesLimit        = 50
)

// instancesResult is what one run with n instances measured.
type instancesResult struct {
	reads      loadResult
	readCPU    time.Duration   // CPU time of the whole test process during the reads
	share      []int           // reads answered by each instance
	ingest     time.Duration   // first publish to the last instance applying the last event
	acked      time.Duration   // first publish to the last ack (the log alone)
	applied    []time.Duration // first publish to each instance applying the last event
	ingestCPU  time.Duration
	ingestSize int
}

func (r instancesResult) readsPerSec() float64  { return r.reads.PerSec() }
func (r instancesResult) ingestPerSec() float64 { return float64(r.ingestSize) / r.ingest.Seconds() }

// readCPUPer and ingestCPUPer are the process's CPU time per read and per
// ingested event, in µs.
func (r instancesResult) readCPUPer() float64 {
	return float64(r.readCPU.Microseconds()) / float64(r.reads.Requests)
}
func (r instancesResult) ingestCPUPer() float64 {
	return float64(r.ingestCPU.Microseconds()) / float64(r.ingestSize)
}

// BenchmarkInstances_Reads: one nats-server (its store fsyncs every
// message, as the service's embedded one does), N instances (all apply the
// whole log; reads are shared through the micro service's queue group).
// For each N: a 10k-event room, 16 closed-loop clients on one connection
// reading /messages dir=b limit=50 from random start points for a fixed
// time (after a short warm-up), then 20k events published asynchronously
// (window 1024) until every instance has applied them. Everything runs in
// this process, so the CPU figures are the whole process's.
func BenchmarkInstances_Reads(b *testing.B) { benchInstances(b, false) }

// BenchmarkInstances_ReadsR3 is the same on a three-node JetStream cluster
// in this process, the log and the leases bucket replicated three times.
// The cluster's nodes do not fsync every message (nats-server's default
// for a clustered stream: the replicas are the durability), so its
// figures are not comparable with the single server's, only with each
// other.
func BenchmarkInstances_ReadsR3(b *testing.B) { benchInstances(b, true) }

func benchInstances(b *testing.B, r3 bool) {
	results := map[int]instancesResult{}
	for _, n := range []int{1, 2, 3} {
		b.Run(fmt.Sprintf("instances=%d", n), func(b *testing.B) {
			var r instancesResult
			for b.Loop() {
				r = runInstances(b, n, r3)
			}
			results[n] = r
			b.ReportMetric(r.readsPerSec(), "req/s")
			b.ReportMetric(float64(r.reads.Pct(50).Microseconds()), "p50-us")
			b.ReportMetric(float64(r.reads.Pct(99).Microseconds()), "p99-us")
			b.ReportMetric(r.readCPUPer(), "cpu-us/req")
			if r.ingestSize > 0 {
				b.ReportMetric(r.ingestPerSec(), "ingest-ev/s")
				b.ReportMetric(float64(r.ingestSize)/r.acked.Seconds(), "acked-ev/s")
				b.ReportMetric(r.ingestCPUPer(), "cpu-us/ev")
			}
			if one, ok := results[1]; ok && n > 1 {
				b.ReportMetric(r.readsPerSec()/one.readsPerSec(), "reads-vs-1")
				if r.ingestSize > 0 && one.ingestSize > 0 {
					b.ReportMetric(r.ingestPerSec()/one.ingestPerSec(), "ingest-vs-1")
				}
			}
		})
	}
	one, ok := results[1]
	if !ok {
		return
	}
	for _, n := range []int{2, 3} {
		r, ok := results[n]
		if !ok {
			continue
		}
		b.Logf("%d instances vs 1: reads %.2fx (p99 %v vs %v), CPU per read %.2fx", n,
			r.readsPerSec()/one.readsPerSec(), r.reads.Pct(99), one.reads.Pct(99), r.readCPUPer()/one.readCPUPer())
		if r.ingestSize > 0 && one.ingestSize > 0 {
			b.Logf("%d instances vs 1: ingest %.2fx, CPU per ingested event %.2fx", n,
				r.ingestPerSec()/one.ingestPerSec(), r.ingestCPUPer()/one.ingestCPUPer())
		}
	}
}

// runInstances starts a NATS (one server or a three-node cluster) and n
// instances on it, and measures reads and ingest.
func runInstances(b *testing.B, n int, r3 bool) instancesResult {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var url string
	var js jetstream.JetStream
	if r3 {
		cl := testenv.NewCluster(b, 3)
		url = cl.URL()
		_, js = cl.Connect(b)
	} else {
		srv := testenv.NewNATS(b)
		url, js = srv.URL, srv.JS
	}
	ms := make([]*Main, n)
	for i := range ms {
		// startInstance and waitSplit take a *testing.T; the same
		// settings, with the default lease (2 s).
		ms[i] = startMain(b, func(c *Config) {
			c.NATS.URL = url
			c.Cluster.Instance = fmt.Sprintf("i%d", i)
			if r3 {
				c.Cluster.Replicas = 3
			}
		})
	}
	testenv.WaitFor(b, 30*time.Second, "the partitions to be split among the instances", func() bool {
		owned := 0
		for _, m := range ms {
			if len(m.Owners.Members()) != n {
				return false
			}
			owned += len(m.Owners.Owned())
		}
		return owned == projections.DefaultPartitions
	})
	subjects := bus.Subjects{Prefix: ms[0].Config.NATS.SubjectPrefix}

	// The room, applied by every instance.
	room := newBenchRoom("!instances:"+benchServerName, instancesRoomEvents)
	msgs := room.Msgs(subjects)
	last, err := publishAsync(ctx, js, len(msgs), func(i int) *nats.Msg { return msgs[i] }, publishWindow)
	if err != nil {
		b.Fatal(err)
	}
	for _, m := range ms {
		if err := waitApplied(ctx, m, room.ID, last); err != nil {
			b.Fatal(err)
		}
	}

	// Reads: a client connection of its own, as a homeserver's.
	target := instancesReadTarget(ctx, b, url, subjects, room)
	d := 3 * time.Second
	if testing.Short() {
		d = time.Second
	}
	if _, err := runLoad(ctx, instancesClients, d/10, target); err != nil { // warm-up
		b.Fatal(err)
	}
	before := make([]int, n)
	for i, m := range ms {
		before[i] = natsReads(b, m)
	}
	var r instancesResult
	cpu := processCPU()
	if r.reads, err = runLoad(ctx, instancesClients, d, target); err != nil {
		b.Fatal(err)
	}
	r.readCPU = processCPU() - cpu
	for i, m := range ms {
		r.share = append(r.share, natsReads(b, m)-before[i])
	}

	// Ingest: another room, published asynchronously, until every
	// instance has applied it.
	r.ingestSize = instancesIngestEvents
	if testing.Short() {
		r.ingestSize = 5_000
	}
	if v, err := strconv.Atoi(os.Getenv("SCROLLBACK_BENCH_INGEST")); err == nil && v >= 0 {
		r.ingestSize = v
	}
	if r.ingestSize == 0 {
		b.Logf("%d instances (r3 %v): %d reads in %v = %.0f req/s, p50 %v p99 %v, answered per instance %v, %.0f µs CPU/read",
			n, r3, r.reads.Requests, r.reads.Elapsed.Round(time.Millisecond), r.readsPerSec(), r.reads.Pct(50), r.reads.Pct(99), r.share,
			r.readCPUPer())
		return r
	}
	ingest := newBenchRoom("!ingest:"+benchServerName, r.ingestSize)
	imsgs := ingest.Msgs(subjects)
	cpu = processCPU()
	start := time.Now()
	last, err = publishAsync(ctx, js, len(imsgs), func(i int) *nats.Msg { return imsgs[i] }, publishWindow)
	if err != nil {
		b.Fatal(err)
	}
	r.acked = time.Since(start)
	r.applied = make([]time.Duration, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, m := range ms {
		wg.Go(func() {
			errs[i] = waitApplied(ctx, m, ingest.ID, last)
			r.applied[i] = time.Since(start)
		})
	}
	wg.Wait()
	r.ingest = time.Since(start)
	r.ingestCPU = processCPU() - cpu
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	rounded := make([]time.Duration, n)
	for i, a := range r.applied {
		rounded[i] = a.Round(time.Millisecond)
	}
	b.Logf("%d instances (r3 %v): %d reads in %v = %.0f req/s, p50 %v p99 %v, answered per instance %v, %.0f µs CPU/read; "+
		"ingest of %d events: acked after %v, applied by each instance after %v = %.0f events/s, %.0f µs CPU/event",
		n, r3, r.reads.Requests, r.reads.Elapsed.Round(time.Millisecond), r.readsPerSec(), r.reads.Pct(50), r.reads.Pct(99), r.share,
		r.readCPUPer(), r.ingestSize, r.acked.Round(time.Millisecond), rounded, r.ingestPerSec(), r.ingestCPUPer())
	return r
}

// BenchmarkInstances_ReadsInterleaved measures the reads of
// BenchmarkInstances_Reads in one environment (one nats-server, one room)
// with 3, 2, 1, 1, 2 and 3 instances serving them: an instance leaves by
// closing (it leaves the queue group and hands its partitions over) and a
// new one joins, applying the log before the round starts. Pooling the two
// rounds of each N cancels a linear drift in the machine's load, which on
// a shared machine is larger than the differences measured. It reports
// req/s, p99 and the process's CPU per read for each N, and the ratios to
// one instance.
func BenchmarkInstances_ReadsInterleaved(b *testing.B) {
	d := 2 * time.Second
	if testing.Short() {
		d = 500 * time.Millisecond
	}
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		srv := testenv.NewNATS(b)
		next := 0
		start := func() *Main {
			name := fmt.Sprintf("i%d", next)
			next++
			return startMain(b, func(c *Config) { c.NATS.URL = srv.URL; c.Cluster.Instance = name })
		}
		ms := []*Main{start(), start(), start()}
		subjects := bus.Subjects{Prefix: ms[0].Config.NATS.SubjectPrefix}
		room := newBenchRoom("!interleaved:"+benchServerName, instancesRoomEvents)
		msgs := room.Msgs(subjects)
		last, err := publishAsync(ctx, srv.JS, len(msgs), func(i int) *nats.Msg { return msgs[i] }, publishWindow)
		if err != nil {
			b.Fatal(err)
		}
		for _, m := range ms {
			if err := waitApplied(ctx, m, room.ID, last); err != nil {
				b.Fatal(err)
			}
		}
		target := instancesReadTarget(ctx, b, srv.URL, subjects, room)
		if _, err := runLoad(ctx, instancesClients, d/4, target); err != nil { // warm-up
			b.Fatal(err)
		}
		res := map[int]*loadResult{1: {}, 2: {}, 3: {}}
		cpu := map[int]time.Duration{}
		var order []string
		round := func() {
			c0 := processCPU()
			r, err := runLoad(ctx, instancesClients, d, target)
			if err != nil {
				b.Fatal(err)
			}
			cpu[len(ms)] += processCPU() - c0
			res[len(ms)].add(r)
			order = append(order, fmt.Sprintf("%d:%.0f", len(ms), r.PerSec()))
		}
		for {
			round()
			if len(ms) == 1 {
				break
			}
			if err := ms[len(ms)-1].Close(); err != nil {
				b.Fatal(err)
			}
			ms = ms[:len(ms)-1]
		}
		for {
			round()
			if len(ms) == 3 {
				break
			}
			m := start()
			if err := waitApplied(ctx, m, room.ID, last); err != nil {
				b.Fatal(err)
			}
			ms = append(ms, m)
		}
		for n := 1; n <= 3; n++ {
			r := res[n]
			r.finish()
			b.ReportMetric(r.PerSec(), fmt.Sprintf("req/s-%d", n))
			b.ReportMetric(float64(r.Pct(99).Microseconds()), fmt.Sprintf("p99-us-%d", n))
			b.ReportMetric(float64(cpu[n].Microseconds())/float64(r.Requests), fmt.Sprintf("cpu-us/req-%d", n))
			if n > 1 {
				b.ReportMetric(r.PerSec()/res[1].PerSec(), fmt.Sprintf("reads-%d-vs-1", n))
			}
		}
		b.Logf("rounds (instances:req/s): %s; pooled: 1 %.0f, 2 %.0f (%.2fx), 3 %.0f (%.2fx) req/s", strings.Join(order, " "),
			res[1].PerSec(), res[2].PerSec(), res[2].PerSec()/res[1].PerSec(), res[3].PerSec(), res[3].PerSec()/res[1].PerSec())
	}
}

// natsReads is how many messages requests over NATS an instance has
// answered (its request metrics).
func natsReads(tb testing.TB, m *Main) int {
	tb.Helper()
	fams, err := m.Metrics.Registry.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	n := 0
	for _, f := range fams {
		if f.GetName() != "scrollback_request_duration_seconds" {
			continue
		}
		for _, mt := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range mt.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["endpoint"] == "messages" && labels["transport"] == "nats" {
				n += int(mt.GetHistogram().GetSampleCount())
			}
		}
	}
	return n
}

// processCPU is the user plus system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// failoverMembers are the local users joined to the room whose shutdown
// fails over.
const failoverMembers = 400

// leaseChange is one update of the owners bucket, as a watcher saw it.
type leaseChange struct {
	at     time.Time
	key    string
	put    bool
	holder string
}

// BenchmarkFailover_Kill9: one nats-server in this process, two
// `scrollback serve` processes (a and b, lease 2 s, the default) on it, a
// fake homeserver worker on its own connection answering every request
// after 20 ms. A room with 400 local members (and alice) whose partition
// a owns is shut down (delete v2 over NATS: block, purge); a is killed
// with SIGKILL once half the members have left, by when a has published
// its progress (every 500 ms) at least once. It measures, from the kill,
// when the lease of the room's partition expired, when b's lease on it
// appeared in the bucket (the failover), when b held every partition a
// held, and when the task completed; and checks that every member left
// and forgot the room exactly once, each asked under one txn_id, that
// kicked_users lists each once, and that the task ended once (one purge
// command, no failed, cancelled or repeated ending). Requests b repeats
// for members a was kicking are answered from the homeserver's txn cache;
// the log line counts them. Run it a few times (-benchtime 5x) for the
// mean and the worst.
func BenchmarkFailover_Kill9(b *testing.B) {
	if testing.Short() {
		b.Skip("builds and runs the binary")
	}
	var runs []failover
	for b.Loop() {
		runs = append(runs, runFailover(b))
	}
	// With -benchtime Nx, the mean and the worst of N runs.
	var sum, worst failover
	for _, f := range runs {
		sum.expired += f.expired
		sum.tookOver += f.tookOver
		sum.tookAll += f.tookAll
		sum.done += f.done
		worst.tookOver = max(worst.tookOver, f.tookOver)
		worst.done = max(worst.done, f.done)
	}
	n := time.Duration(len(runs))
	b.ReportMetric((sum.expired / n).Seconds(), "lease-expired-s")
	b.ReportMetric((sum.tookOver / n).Seconds(), "failover-s")
	b.ReportMetric((sum.tookAll / n).Seconds(), "all-partitions-s")
	b.ReportMetric((sum.done / n).Seconds(), "task-done-s")
	b.ReportMetric(worst.tookOver.Seconds(), "max-failover-s")
	b.ReportMetric(worst.done.Seconds(), "max-task-done-s")
}

// failover is what one run measured, from the kill.
type failover struct {
	expired  time.Duration // the lease of the room's partition expired
	tookOver time.Duration // b leased the room's partition
	tookAll  time.Duration // b leased every partition a held
	done     time.Duration // the shutdown completed
}

func runFailover(b *testing.B) failover {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const lease = 2 * time.Second
	srv := testenv.NewNATS(b)
	svcs := map[string]*service{}
	for _, name := range []string{"a", "b"} {
		svcs[name] = startService(b, serviceConfig{natsURL: srv.URL, extra: fmt.Sprintf("cluster: {instance: %s, lease: %v}\n", name, lease)})
	}
	nc, js := connectNATS(b, srv.URL)
	kv, err := js.KeyValue(ctx, bus.OwnersBucket(faultStream))
	if err != nil {
		b.Fatal(err)
	}
	members := map[string]bool{"a": true, "b": true}
	holders := func() map[int]string {
		out := map[int]string{}
		for p := range projections.DefaultPartitions {
			e, err := kv.Get(ctx, fmt.Sprintf("p.%d", p))
			if err != nil {
				continue
			}
			out[p], _, _ = strings.Cut(string(e.Value()), " ")
		}
		return out
	}
	var split map[int]string
	testenv.WaitFor(b, 30*time.Second, "every partition leased by its preferred instance", func() bool {
		split = holders()
		for p := range projections.DefaultPartitions {
			if split[p] != bus.Preferred(p, members) {
				return false
			}
		}
		return true
	})
	var ownedByA []int
	for p, h := range split {
		if h == "a" {
			ownedByA = append(ownedByA, p)
		}
	}
	slices.Sort(ownedByA)
	name, part := "", -1
	for i := range 1000 {
		name = fmt.Sprintf("doomed%d", i)
		if p := projections.PartitionOf(bus.RoomKey("!"+name+":test"), projections.DefaultPartitions); split[p] == "a" {
			part = p
			break
		}
	}
	if part < 0 {
		b.Fatal("a owns no partition")
	}

	// The homeserver worker, on a connection of its own.
	hsNC, hsJS := connectNATS(b, srv.URL)
	hs := testenv.NewHomeserver(b, hsNC, &testenv.Publisher{JS: hsJS, Subjects: faultSubjects}, "test")
	hs.SetDelay(20 * time.Millisecond)
	room := testenv.NewRoom(name, "test")
	hs.Track(room)
	evs := room.Setup(alice, remote)
	local := []string{alice}
	for j := range failoverMembers {
		u := fmt.Sprintf("@user%d:test", j)
		local = append(local, u)
		evs = append(evs, room.Join(u))
	}
	(&testenv.Publisher{JS: js, Subjects: faultSubjects}).Publish(b, evs...)
	// Either instance may take the delete request: wait until both have
	// applied the room.
	for _, s := range svcs {
		testenv.WaitFor(b, 30*time.Second, "the room applied by the process at "+s.httpAddr, func() bool {
			return appliedEvents(b, s.httpAddr) >= len(evs)
		})
	}

	// Watch the leases from before the kill.
	w, err := kv.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop()
	var mu sync.Mutex
	var changes []leaseChange
	go func() {
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			c := leaseChange{at: time.Now(), key: e.Key(), put: e.Operation() == jetstream.KeyValuePut}
			c.holder, _, _ = strings.Cut(string(e.Value()), " ")
			mu.Lock()
			changes = append(changes, c)
			mu.Unlock()
		}
	}()

	reply, err := api(ctx, nc, faultSubjects.APIRoom(room.ID, "delete"), map[string]any{"block": true, "purge": true, "requested_by": "@admin:test"})
	if err != nil {
		b.Fatalf("delete: %v", err)
	}
	id, _ := reply["delete_id"].(string)
	accepted := time.Now()
	testenv.WaitFor(b, 60*time.Second, "half the members to leave", func() bool {
		return hs.Acted("leave", "") >= failoverMembers/2
	})
	svcs["a"].kill9()
	killed := time.Now()
	leftBefore := hs.Acted("leave", "")

	// The failover: b's lease on the room's partition.
	key := fmt.Sprintf("p.%d", part)
	var expired, memberGone, tookOver, tookAll time.Duration
	testenv.WaitFor(b, 30*time.Second, "b to lease every partition a held", func() bool {
		mu.Lock()
		defer mu.Unlock()
		taken := map[string]time.Duration{}
		expired, memberGone, tookOver = 0, 0, 0
		for _, c := range changes {
			if c.at.Before(killed) {
				continue
			}
			since := c.at.Sub(killed)
			if c.key == key && !c.put && expired == 0 {
				expired = since
			}
			if c.key == "m.a" && !c.put && memberGone == 0 {
				memberGone = since
			}
			if c.put && c.holder == "b" {
				if _, ok := taken[c.key]; !ok {
					taken[c.key] = since
				}
			}
		}
		tookOver = taken[key]
		tookAll = 0
		for _, p := range ownedByA {
			t, ok := taken[fmt.Sprintf("p.%d", p)]
			if !ok {
				return false
			}
			tookAll = max(tookAll, t)
		}
		return true
	})
	waitTaskComplete(b, nc, commands.ActionShutdownAndPurgeRoom, id, 60*time.Second)
	done := time.Since(killed)

	// Exactly once: every local member left and was forgotten once, each
	// asked under one txn_id; re-asked requests were answered from the
	// homeserver's txn cache.
	asked, reasked := 0, 0
	for _, u := range local {
		for _, action := range []string{"leave", "forget"} {
			if n := hs.Acted(action, u); n != 1 {
				b.Errorf("the homeserver acted on %s of %s %d times, want 1", action, u, n)
			}
			if txns := txnsOf(hs, action, id, u); len(txns) != 1 {
				b.Errorf("%s of %s asked under txn_ids %v, want one", action, u, txns)
			}
		}
	}
	for _, action := range []string{"leave", "forget"} {
		for _, c := range hs.Calls(action) {
			if txn, _ := c.Req["txn_id"].(string); strings.HasPrefix(txn, id+"-") {
				asked++
			}
		}
	}
	reasked = asked - 2*len(local)
	task, err := api(ctx, nc, faultSubjects.API("delete_status"), map[string]any{"delete_id": id})
	if err != nil {
		b.Fatal(err)
	}
	res, _ := task["shutdown_room"].(map[string]any)
	if kicked := strList(res["kicked_users"]); !slices.Equal(kicked, slices.Sorted(slices.Values(local))) {
		b.Errorf("kicked_users has %d users, want the %d local members once each", len(kicked), len(local))
	}
	purges := commandsWithID(b, js, room.ID, id+"-purge")
	ends := taskEnds(b, js, room.ID, id)
	if len(purges) != 1 || ends[commands.TaskFailed] != 0 || ends[commands.TaskCancelled] != 0 || ends[commands.TaskComplete] > 1 {
		b.Errorf("the log holds %d purge commands %s-purge and task endings %v: want one purge and no other ending twice", len(purges), id, ends)
	}
	b.Logf("lease %v; a held partitions %v, the room's is %d; killed a %v after the delete was accepted, after %d of %d leaves; from the kill: the room's lease expired after %v, a's membership after %v, b leased the room's partition after %v, "+
		"b held all of a's partitions after %v, the shutdown completed after %v. Each of %d members left and was forgotten once (%d requests re-asked after the failover, answered from the txn cache); %d purge command, task endings %v",
		lease, ownedByA, part, killed.Sub(accepted).Round(time.Millisecond), leftBefore, len(local), expired.Round(time.Millisecond), memberGone.Round(time.Millisecond), tookOver.Round(time.Millisecond),
		tookAll.Round(time.Millisecond), done.Round(time.Millisecond), len(local), reasked, len(purges), ends)
	return failover{expired: expired, tookOver: tookOver, tookAll: tookAll, done: done}
}

// appliedEvents scrapes a process's /metrics for how many event messages
// of the log its projector has processed.
func appliedEvents(tb testing.TB, httpAddr string) int {
	tb.Helper()
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	n := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "scrollback_log_messages_total{") || !strings.Contains(line, `kind="event"`) {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err == nil {
			n += int(v)
		}
	}
	return n
}

// instancesReadTarget is the benchmarks' read load: /messages from the
// room's start points on a client connection of its own, as a
// homeserver's; the connection closes with the benchmark.
func instancesReadTarget(ctx context.Context, b *testing.B, url string, subjects bus.Subjects, room *benchRoom) target {
	rnc, err := nats.Connect(url, nats.MaxReconnects(-1))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(rnc.Close)
	t, err := collectTokens(ctx, rnc, subjects, room, instancesLimit)
	if err != nil {
		b.Fatal(err)
	}
	reqs, err := t.requests(room.Reader(), instancesLimit, nil)
	if err != nil {
		b.Fatal(err)
	}
	return natsTarget(rnc, subjects.APIRoom(room.ID, "messages"), reqs)
}
