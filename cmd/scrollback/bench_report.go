package main

// What every scenario of `scrollback bench` records besides its own
// numbers, and the HTML report (--report) and profiles (--profile-dir)
// made of it:
//
//   - every request of the read phases, with when it was sent
//     (loadgen.Series, one per target and phase, through the target's
//     recHook), for the plots of latency over time and the histograms;
//   - a sample every --sample of the projection lag, the memory (RssAnon +
//     RssShmem, and RssFile apart; VmRSS alone for an external service
//     without --target-pid) and the disk (the bbolt file and the
//     JetStream store) of the service under test;
//   - the lines it printed, and its summary tables (summaryTable records
//     what it prints);
//   - with --profile-dir, a CPU profile of the whole scenario and the
//     allocations made during it, with their top entries.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/internal/loadgen"
	"github.com/scrollback/scrollback/internal/schedwait"
)

// scenarioRun is what one scenario recorded for the report.
type scenarioRun struct {
	rep    *loadgen.Scenario
	origin time.Time

	mu     sync.Mutex
	log    bytes.Buffer
	series []*loadgen.Series
	hooks  []*recHook // targets whose later requests go to an "after" series

	sampler *sampler
	cpu     *os.File
	allocs0 string // allocation profile at the start
}

// recHook is where a target records its requests: the series of the
// phase that runs it (nil: not recorded).
type recHook struct {
	s atomic.Pointer[loadgen.Series]
}

// set makes the hook record into s (nil: stop recording).
func (h *recHook) set(s *loadgen.Series) {
	if h != nil {
		h.s.Store(s)
	}
}

func (h *recHook) record(sent time.Time, lat time.Duration) {
	if h == nil {
		return
	}
	if s := h.s.Load(); s != nil {
		s.Record(sent, lat)
	}
}

// startScenario begins recording a scenario: the sampler and, with
// --profile-dir, its profiles.
func (b *bench) startScenario(ctx context.Context, name, title string) error {
	// What an earlier scenario (--scenario all) left on the heap would
	// count in this one's memory peak: collect it and give the pages
	// back. Two collections, as sync.Pool (the reply buffers) lets go
	// of its items only at the second (FreeOSMemory runs one).
	runtime.GC()
	debug.FreeOSMemory()
	run := &scenarioRun{rep: &loadgen.Scenario{Name: name, Title: title}, origin: time.Now()}
	b.mu.Lock()
	b.cur = run
	b.runs = append(b.runs, run)
	b.mu.Unlock()
	if b.cfg.Target == "" {
		if m, err := loadgen.ReadMemory(0); err == nil {
			b.printf("\nmemory at the start of %s (this process), after a collection: %s\n", name, memPeak{Resident: float64(m.Resident()), File: float64(m.RssFile)})
		}
	}
	if dir := b.cfg.ProfileDir; dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("bench: profile dir: %w", err)
		}
		run.allocs0 = filepath.Join(dir, name+".allocs-start.pprof")
		if err := writeAllocs(run.allocs0); err != nil {
			return err
		}
		f, err := os.Create(filepath.Join(dir, name+".cpu.pprof"))
		if err != nil {
			return fmt.Errorf("bench: cpu profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return fmt.Errorf("bench: cpu profile: %w", err)
		}
		run.cpu = f
	}
	run.sampler = startSampler(ctx, run.origin, b.cfg.Sample, &b.source)
	if dir := b.cfg.ProfileDir; dir != "" {
		run.sampler.heapPath = filepath.Join(dir, name+".heap-peak.pprof")
	}
	return nil
}

// endScenario stops the sampler and the profiles of the current scenario.
func (b *bench) endScenario() error {
	b.mu.Lock()
	run := b.cur
	b.cur = nil
	b.mu.Unlock()
	if run == nil {
		return nil
	}
	if b.slow != nil {
		b.slow.wait() // its lines go to this scenario's log
	}
	run.sampler.stop()
	rep := run.rep
	rep.Lag, rep.Memory, rep.Disk, rep.IO, rep.CPU, rep.Sched = run.sampler.series()
	var errs []error
	if run.cpu != nil {
		pprof.StopCPUProfile()
		errs = append(errs, run.cpu.Close())
		rep.Profiles = append(rep.Profiles, loadgen.Profile{Kind: "CPU", File: run.cpu.Name(), Top: pprofTop(run.cpu.Name())})
		allocs := filepath.Join(b.cfg.ProfileDir, rep.Name+".allocs.pprof")
		if err := writeAllocs(allocs); err != nil {
			errs = append(errs, err)
		} else {
			rep.Profiles = append(rep.Profiles, loadgen.Profile{Kind: "allocations (alloc_space during the scenario)", File: allocs,
				Top: pprofTop("-sample_index=alloc_space", "-base", run.allocs0, allocs)})
		}
		b.printf("profiles: %s, %s (go tool pprof -http=: FILE; allocations during the scenario: go tool pprof -sample_index=alloc_space -base %s %s)\n",
			run.cpu.Name(), allocs, run.allocs0, allocs)
		if heap := run.sampler.heapPath; fileExists(heap) {
			rep.Profiles = append(rep.Profiles, loadgen.Profile{Kind: "heap in use at the memory peak (inuse_space)", File: heap,
				Top: pprofTop("-sample_index=inuse_space", heap)})
			b.printf("heap at the memory peak: %s (go tool pprof -sample_index=inuse_space %s)\n", heap, heap)
		}
	}
	run.mu.Lock()
	for _, h := range run.hooks {
		h.set(nil)
	}
	for _, s := range run.series {
		if s.Count() > 0 {
			rep.Latency = append(rep.Latency, s)
		}
	}
	run.mu.Unlock()
	return errorsJoin(errs)
}

func errorsJoin(errs []error) error {
	var out []error
	for _, e := range errs {
		if e != nil {
			out = append(out, e)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return fmt.Errorf("bench: profiles: %v", out)
}

func writeAllocs(path string) error {
	runtime.GC() // the profile shows the state as of the last GC
	return writeProfile(path, "allocs")
}

// writeProfile writes the named runtime/pprof profile to path.
func writeProfile(path, name string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("bench: %s profile: %w", name, err)
	}
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		f.Close()
		return fmt.Errorf("bench: %s profile: %w", name, err)
	}
	return f.Close()
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return path != "" && err == nil
}

// pprofTop is `go tool pprof -top` of a profile, or why there is none.
func pprofTop(args ...string) string {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "go tool pprof -top: no go command on the PATH"
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, append([]string{"tool", "pprof", "-top", "-nodecount=30"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Sprintf("go tool pprof -top %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newSeries is a latency series of the current scenario, plotted with the
// other series of its group.
func (b *bench) newSeries(group, name string) *loadgen.Series {
	b.mu.Lock()
	run := b.cur
	b.mu.Unlock()
	if run == nil {
		return loadgen.NewSeries(name, time.Now())
	}
	s := loadgen.NewSeries(name, run.origin)
	s.Group = group
	run.mu.Lock()
	run.series = append(run.series, s)
	run.mu.Unlock()
	return s
}

// readSeries is newSeries for the reads measured against background
// work (the open loops of the mixed and purge scenarios, the catch-up's
// reads): with --trace-slow, such a read slower than its threshold writes
// the execution trace around it. The closed-loop phases keep newSeries:
// they saturate the service on purpose, so their tails are their own
// queues, and they would use up the files before the workload.
func (b *bench) readSeries(group, name string) *loadgen.Series {
	s := b.newSeries(group, name)
	if t := b.slow; t != nil {
		scenario := "bench"
		b.mu.Lock()
		if b.cur != nil {
			scenario = b.cur.rep.Name
		}
		b.mu.Unlock()
		s.Observe = func(lat time.Duration) { t.observe(scenario, s.Name, lat) }
	}
	return s
}

// afterSeries points h at a series for the target's requests after its
// measured phases (the purge scenario's open loop sends them).
func (b *bench) afterSeries(h *recHook, group, name string) {
	if h == nil {
		return
	}
	h.set(b.newSeries(group, name))
	b.mu.Lock()
	run := b.cur
	b.mu.Unlock()
	if run != nil {
		run.mu.Lock()
		run.hooks = append(run.hooks, h)
		run.mu.Unlock()
	}
}

// seriesStats are the statistics of the current or a finished scenario's
// series whose name starts with prefix (the last one that does).
func (b *bench) seriesStats(prefix string) loadgen.Stats {
	b.mu.Lock()
	runs := slices.Clone(b.runs)
	b.mu.Unlock()
	var found *loadgen.Series
	for _, r := range runs {
		r.mu.Lock()
		for _, s := range r.series {
			if strings.HasPrefix(s.Name, prefix) {
				found = s
			}
		}
		r.mu.Unlock()
	}
	if found == nil {
		return loadgen.Stats{}
	}
	return found.Stats()
}

// mark records a moment of the current scenario for the plots.
func (b *bench) mark(label string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cur != nil {
		b.cur.rep.Marks = append(b.cur.rep.Marks, loadgen.Mark{T: time.Since(b.cur.origin), Label: label})
	}
}

// register makes s the service the sampler looks at.
func (b *bench) register(s *sut) { b.source.Store(s) }

// ---- the sampler ----

// sampler samples the service under test every interval until stopped.
type sampler struct {
	cancel context.CancelFunc
	done   chan struct{}
	origin time.Time
	every  time.Duration

	mu                                 sync.Mutex // the sampler's goroutine and peakMemory sample
	lag, anon, file, bolt, js, written loadgen.TimeSeries
	vmRSS                              loadgen.TimeSeries // instead of anon and file when not split (sut.memorySplit)
	freelist                           loadgen.TimeSeries
	cpu, machineCPU                    loadgen.TimeSeries // cores busy since the sample before
	lastCPU                            time.Duration      // the service's CPU time at the last sample
	lastMachine                        loadgen.MachineCPU
	lastAt                             time.Duration
	peak                               memPeak
	written0                           int64 // write_bytes at the start

	// sched is the p99 of the scheduling waits (goroutines runnable,
	// waiting for a CPU) between samples, in seconds, from the
	// cumulative histogram lastSched. An in-process service only: the
	// bench's goroutines count too. With schedWindows set (the scenarios
	// that ask schedBetween), scheds keeps the histogram of every sample
	// (1.3 KB each).
	sched        loadgen.TimeSeries
	lastSched    schedwait.Waits
	haveSched    bool
	schedWindows bool
	scheds       []schedAt

	// heapPath, if set, receives a heap profile each time the memory of
	// an in-process service reaches a new peak (5% above the last
	// profiled one, at most every 2 s): where the peak's bytes are.
	heapPath string
	heapPeak float64
	heapAt   time.Time
	heapErr  error
}

func startSampler(ctx context.Context, origin time.Time, every time.Duration, src *atomic.Pointer[sut]) *sampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &sampler{cancel: cancel, done: make(chan struct{}), origin: origin, every: every}
	s.lag.Name, s.lag.Unit = "projection lag", "msgs"
	s.anon.Name, s.anon.Unit = "RssAnon + RssShmem", "bytes"
	s.file.Name, s.file.Unit = "RssFile", "bytes"
	s.vmRSS.Name, s.vmRSS.Unit = "VmRSS, mapped files included (the external service's /metrics; --target-pid for the split)", "bytes"
	s.bolt.Name, s.bolt.Unit = "bbolt file", "bytes"
	s.js.Name, s.js.Unit = "JetStream store", "bytes"
	s.written.Name, s.written.Unit = "written by the process since the scenario started", "bytes"
	s.freelist.Name, s.freelist.Unit = "bbolt freelist (written with every commit)", "bytes"
	s.cpu.Name, s.cpu.Unit = "the service's process (with the bench's clients when embedded)", "cores"
	s.machineCPU.Name, s.machineCPU.Unit = "the whole machine (other jobs too)", "cores"
	s.sched.Name, s.sched.Unit = "p99 of the waits between samples (the service's and the bench's goroutines)", "seconds"
	s.written0, s.lastCPU = -1, -1
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			s.sample(ctx, src.Load())
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *sampler) sample(ctx context.Context, src *sut) {
	if src == nil {
		return
	}
	lag, lagErr := src.lag(ctx)
	m, memOK := src.memory(ctx)
	bolt, js, diskOK := src.disk()
	io, ioOK := src.io()
	fl, flOK := src.freelist()
	cpu, cpuOK := src.cpu()
	machine, machineErr := loadgen.ReadMachineCPU()
	var sched schedwait.Waits
	if src.m != nil {
		sched = schedwait.Read()
	}
	at := time.Since(s.origin)
	s.mu.Lock()
	defer s.mu.Unlock()
	if src.m != nil {
		if s.haveSched {
			s.sched.Add(at, sched.Since(s.lastSched).Quantile(0.99).Seconds())
		}
		s.lastSched, s.haveSched = sched, true
		if s.schedWindows {
			s.scheds = append(s.scheds, schedAt{at, sched})
		}
	}
	if elapsed := (at - s.lastAt).Seconds(); s.lastAt > 0 && elapsed > 0 {
		if cpuOK && s.lastCPU >= 0 {
			s.cpu.Add(at, (cpu-s.lastCPU).Seconds()/elapsed)
		}
		if d := machine.Total - s.lastMachine.Total; machineErr == nil && d > 0 {
			// Total counts every CPU: busy over total is the busy share.
			s.machineCPU.Add(at, float64(machine.Busy-s.lastMachine.Busy)/float64(d)*float64(runtime.NumCPU()))
		}
	}
	s.lastAt, s.lastMachine, s.lastCPU = at, machine, -1
	if cpuOK {
		s.lastCPU = cpu
	}
	if lagErr == nil {
		s.lag.Add(at, lag)
	}
	switch {
	case memOK && src.memorySplit():
		s.anon.Add(at, float64(m.Resident()))
		s.peak.Resident = max(s.peak.Resident, float64(m.Resident()))
		if s.heapPath != "" && src.m != nil && s.heapErr == nil && float64(m.Resident()) > s.heapPeak*1.05 && time.Since(s.heapAt) >= 2*time.Second {
			s.heapPeak, s.heapAt = float64(m.Resident()), time.Now()
			s.heapErr = writeProfile(s.heapPath, "heap")
		}
		s.file.Add(at, float64(m.RssFile))
		s.peak.File = max(s.peak.File, float64(m.RssFile))
	case memOK:
		s.vmRSS.Add(at, float64(m.VmRSS))
		s.peak.VmRSS = max(s.peak.VmRSS, float64(m.VmRSS))
	}
	if flOK {
		s.freelist.Add(at, float64(fl))
	}
	if ioOK {
		if s.written0 < 0 {
			s.written0 = io.WriteBytes
		}
		s.written.Add(at, float64(io.WriteBytes-s.written0))
	}
	if diskOK {
		s.bolt.Add(at, float64(bolt))
		s.js.Add(at, float64(js))
	}
}

func (s *sampler) stop() {
	s.cancel()
	<-s.done
}

// schedAt is the cumulative histogram of scheduling waits at a sample.
type schedAt struct {
	at    time.Duration
	waits schedwait.Waits
}

// schedBetween is the histogram of the scheduling waits between the first
// sample at or after from and the last at or before to (since the
// origin); ok is false without two such samples.
func (s *sampler) schedBetween(from, to time.Duration) (schedwait.Waits, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	first, last := -1, -1
	for i, p := range s.scheds {
		if p.at >= from && first < 0 {
			first = i
		}
		if p.at <= to {
			last = i
		}
	}
	if first < 0 || last <= first {
		return schedwait.Waits{}, false
	}
	return s.scheds[last].waits.Since(s.scheds[first].waits), true
}

// sinceOrigin is the time since the current scenario's origin (the
// sampler's and the series' clock).
func (b *bench) sinceOrigin() time.Duration {
	b.mu.Lock()
	run := b.cur
	b.mu.Unlock()
	if run == nil {
		return 0
	}
	return time.Since(run.origin)
}

// keepSchedWindows makes the current scenario's sampler keep the
// histograms that schedBetween needs, from its next sample on.
func (b *bench) keepSchedWindows() {
	b.mu.Lock()
	run := b.cur
	b.mu.Unlock()
	if run == nil || run.sampler == nil {
		return
	}
	run.sampler.mu.Lock()
	run.sampler.schedWindows = true
	run.sampler.mu.Unlock()
}

// schedBetween is the current scenario's sampler.schedBetween.
func (b *bench) schedBetween(from, to time.Duration) (schedwait.Waits, bool) {
	b.mu.Lock()
	run := b.cur
	b.mu.Unlock()
	if run == nil || run.sampler == nil {
		return schedwait.Waits{}, false
	}
	return run.sampler.schedBetween(from, to)
}

// schedRows are two summary rows comparing the goroutines' waits for a
// CPU in a phase (w) with a reference (ref): their p99, and their share
// of about 1 ms or more; what says which.
func (t summaryTable) schedRows(what string, w, ref schedwait.Waits) {
	t.latRow("goroutines' waits for a CPU, p99, "+what, w.Quantile(0.99), ref.Quantile(0.99), 0)
	share, from := w.Over(time.Millisecond)
	refShare, _ := ref.Over(time.Millisecond)
	t.row(fmt.Sprintf("goroutines' waits for a CPU of %s or more, share, %s", fmtLat(from), what),
		fmt.Sprintf("%.2f%%", 100*share), fmt.Sprintf("%.2f%%", 100*refShare), "-", "report", "-")
}

// fmtSched gives the p99 of scheduling waits (a bucket's upper bound)
// and the share of about 1 ms or more (from the bucket boundary Over
// used).
func fmtSched(w schedwait.Waits) string {
	share, from := w.Over(time.Millisecond)
	return fmt.Sprintf("p99 %s, %.1f%% of %s or more", fmtLat(w.Quantile(0.99)), 100*share, fmtLat(from))
}

// series are the sampled series that have points.
func (s *sampler) series() (lag, mem, disk, io, cpu, sched []loadgen.TimeSeries) {
	keep := func(ts ...loadgen.TimeSeries) []loadgen.TimeSeries {
		var out []loadgen.TimeSeries
		for _, t := range ts {
			if len(t.Points) > 0 {
				out = append(out, t)
			}
		}
		return out
	}
	return keep(s.lag), keep(s.anon, s.file, s.vmRSS), keep(s.bolt, s.js, s.freelist), keep(s.written), keep(s.cpu, s.machineCPU), keep(s.sched)
}

// cpuBetween is the current scenario's sampler.cpuBetween, with times
// since the scenario's origin.
func (b *bench) cpuBetween(from, to time.Duration) (service, machine float64, ok bool) {
	b.mu.Lock()
	run := b.cur
	b.mu.Unlock()
	if run == nil || run.sampler == nil {
		return 0, 0, false
	}
	return run.sampler.cpuBetween(from, to)
}

// cpuBetween is the mean of the cores the service and the machine used
// in the samples taken in [from, to) since the origin (ok: there were
// samples of both).
func (s *sampler) cpuBetween(from, to time.Duration) (service, machine float64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	mean := func(ts *loadgen.TimeSeries) (float64, bool) {
		sum, n := 0.0, 0
		for _, p := range ts.Points {
			if p.T >= from && p.T < to {
				sum, n = sum+p.V, n+1
			}
		}
		return sum / float64(max(n, 1)), n > 0
	}
	service, ok1 := mean(&s.cpu)
	machine, ok2 := mean(&s.machineCPU)
	return service, machine, ok1 && ok2
}

// resources is one line on what the sampler saw: the largest projection
// lag, the peak memory and the disk use at the end.
func (s *sampler) resources() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var parts []string
	if len(s.lag.Points) > 0 {
		parts = append(parts, fmt.Sprintf("projection lag max %.0f msgs", s.lag.Max()))
	}
	if len(s.anon.Points)+len(s.vmRSS.Points) > 0 {
		parts = append(parts, "memory peak "+s.peak.String())
	}
	if len(s.bolt.Points) > 0 {
		parts = append(parts, fmt.Sprintf("disk at the end: bbolt %s, JetStream %s", fmtMiB(int64(s.bolt.Last())), fmtMiB(int64(s.js.Last()))))
	}
	if len(s.written.Points) > 0 {
		parts = append(parts, fmt.Sprintf("written to storage %s", fmtMiB(int64(s.written.Last()))))
	}
	if len(s.freelist.Points) > 0 {
		parts = append(parts, fmt.Sprintf("bbolt freelist max %s", fmtKiB(s.freelist.Max())))
	}
	if len(parts) == 0 {
		return "no samples"
	}
	return "sampled every " + s.every.String() + ": " + strings.Join(parts, "; ")
}

// applyCost is what applying events cost the projector so far, from its
// metrics (sut.projectorCost), and the bytes the process wrote to
// storage since the scenario started.
type applyCost struct {
	Batches, BatchSecs float64       // partition batches, decoding to commit; 0: not known
	Groups, GroupSecs  float64       // bbolt's writer's group commits; 0: not known
	Pages              float64       // pages the group commits wrote
	Written            int64         // -1: not known
	Span               time.Duration // the time the counts cover (the caller's clock)
}

func (b *bench) applyCost(ctx context.Context, span time.Duration) applyCost {
	c := applyCost{Written: b.written(), Span: span}
	if src := b.source.Load(); src != nil {
		src.projectorCost(ctx, &c)
	}
	return c
}

// janitorCost is what the purges' janitor's metrics say it did so far
// (scrollback_janitor_*; 0 when not served).
type janitorCost struct {
	RowTx, OtherTx, Rows, Wait, Held float64
}

func (b *bench) janitorCost(ctx context.Context) janitorCost {
	var c janitorCost
	if src := b.source.Load(); src != nil {
		src.janitorCost(ctx, &c)
	}
	return c
}

// since says what the janitor did between j0 and j: the size of its row
// transactions, and how long it waited for bbolt's writer against how
// long it held it (projections.nextSlice grows the transactions while
// it waits more than half as long).
func (j janitorCost) since(j0 janitorCost) string {
	rowTx, otherTx, rows := j.RowTx-j0.RowTx, j.OtherTx-j0.OtherTx, j.Rows-j0.Rows
	wait, held := j.Wait-j0.Wait, j.Held-j0.Held
	if rowTx+otherTx <= 0 {
		return "not known"
	}
	return fmt.Sprintf("%.0f row transactions of %.0f rows on average, %.0f others (index entries ahead, sweep, drop); waited for bbolt's writer %.1f s, held it %.1f s (%.2fx)",
		rowTx, rows/max(rowTx, 1), otherTx, wait, held, wait/max(held, 1e-9))
}

// since is c less the projector's counts of an earlier c0 (an external
// service's metrics count from its start, not from the scenario's).
func (c applyCost) since(c0 applyCost) applyCost {
	c.Batches, c.BatchSecs = c.Batches-c0.Batches, c.BatchSecs-c0.BatchSecs
	c.Groups, c.GroupSecs, c.Pages = c.Groups-c0.Groups, c.GroupSecs-c0.GroupSecs, c.Pages-c0.Pages
	return c
}

// writerBusy is the share of Span bbolt's writer spent in group commits.
func (c applyCost) writerBusy() float64 {
	if c.Span <= 0 {
		return 0
	}
	return c.GroupSecs / c.Span.Seconds()
}

// per says it per event.
func (c applyCost) per(events int) string {
	var parts []string
	if c.Batches > 0 {
		parts = append(parts, fmt.Sprintf("%.0f partition batches of %.0f messages on average, %.2f ms each from decoding to the commit, waiting for bbolt's writer included",
			c.Batches, float64(events)/c.Batches, 1000*c.BatchSecs/c.Batches))
	}
	if c.Groups > 0 {
		parts = append(parts, fmt.Sprintf("%.0f group commits of %.0f messages on average, %.1f pages written per message; bbolt's writer busy %.1f s of %.1f s (%.0f%%)",
			c.Groups, float64(events)/c.Groups, c.Pages/float64(events), c.GroupSecs, c.Span.Seconds(), 100*c.writerBusy()))
	}
	if c.Written >= 0 {
		parts = append(parts, fmt.Sprintf("%s written to storage = %.0f bytes per event", fmtMiB(c.Written), float64(c.Written)/float64(events)))
	}
	if len(parts) == 0 {
		return "not known"
	}
	return strings.Join(parts, "; ")
}

// written is what the process wrote to storage since the scenario
// started (-1: not known).
func (b *bench) written() int64 {
	b.mu.Lock()
	run := b.cur
	b.mu.Unlock()
	if run == nil || run.sampler == nil {
		return -1
	}
	s := run.sampler
	s.sample(context.Background(), b.source.Load())
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.written.Points) == 0 {
		return -1
	}
	return int64(s.written.Last())
}

// peakMemory is the highest memory sampled in the current scenario so
// far.
func (b *bench) peakMemory() memPeak {
	b.mu.Lock()
	run := b.cur
	b.mu.Unlock()
	if run == nil || run.sampler == nil {
		return memPeak{}
	}
	s := run.sampler
	s.sample(context.Background(), b.source.Load())
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

// memPeak is the highest memory sampled: RssAnon + RssShmem (Resident)
// and RssFile apart when the service's /proc status is readable (embedded,
// or --target-pid), else VmRSS, mapped files included (an external
// service's /metrics).
type memPeak struct{ Resident, File, VmRSS float64 }

func (p memPeak) String() string {
	if p.VmRSS > 0 {
		return "VmRSS " + fmtMiB(int64(p.VmRSS)) + " (mapped files included; --target-pid for the split)"
	}
	return fmt.Sprintf("RssAnon+RssShmem %s, RssFile %s", fmtMiB(int64(p.Resident)), fmtMiB(int64(p.File)))
}

// memRows are the summary's rows of a memory peak, of whom. goal and
// result are the RssAnon+RssShmem row's ("report" and "-" for none).
// VmRSS gets no verdict: the memory goals leave the page cache out, and
// VmRSS counts bbolt's mapped pages.
func memRows(t summaryTable, p memPeak, who, goal, result string) {
	if p.VmRSS > 0 {
		t.row(fmt.Sprintf("memory VmRSS, mapped files included, peak (%s; --target-pid for the split)", who), fmtMiB(int64(p.VmRSS)), "-", "-", "report", "-")
		return
	}
	t.row(fmt.Sprintf("memory RssAnon+RssShmem, peak (%s)", who), fmtMiB(int64(p.Resident)), "-", "-", goal, result)
	t.row("memory RssFile (bbolt pages), peak", fmtMiB(int64(p.File)), "-", "-", "report", "-")
}

// ---- the report ----

// writeReport writes the HTML report of every scenario that ran.
func (b *bench) writeReport(started time.Time) error {
	rep := &loadgen.Report{
		Title:   "scrollback bench " + version,
		Command: "scrollback bench " + strings.Join(redactArgs(b.args), " "),
		Started: started, Elapsed: time.Since(started), Machine: loadgen.ReadMachine(),
		Notes: []string{
			"Every ratio compares two things measured in this run, on this machine (DESIGN.md, \"Benchmark protocol\"): latency from 1 closed-loop client, throughput from --clients closed-loop clients on one shared connection, interference (\"p99 during X\") at an open-loop rate; the floor is the cheapest way to answer the same read, measured with the same client code.",
			"Latency over time shows each request at the time it was sent (closed loop) or due (open loop); the percentiles of the tables are exact (closed loop) or within 1/128 (open loop, the mixed workload's phases too); those of the plots over time within 1/8, per window.",
			"Open-loop latencies run from when each request was due, not from when the pacer let it leave: a pacer that wakes late (Go's timers oversleep by about half a millisecond on a busy machine) adds its delay, as a client that cannot send on time would see it. Each open-loop line says how late the requests left.",
		},
	}
	if b.cfg.ProfileDir != "" {
		rep.Notes = append(rep.Notes, "Every figure of this run was measured under the CPU profiler (--profile-dir "+b.cfg.ProfileDir+"): it takes CPU from the service and the floor alike, not by the same share, so compare these figures only with other profiled runs.")
	}
	if b.cfg.Target != "" {
		rep.Notes = append(rep.Notes, "Target: the external service at "+bus.RedactURL(b.cfg.Target)+", reached through the contract only (CONTRACT.md).")
	} else {
		rep.Notes = append(rep.Notes, "Target: an embedded service in the bench's own process (its memory includes the bench's clients).")
	}
	for _, r := range b.runs {
		r.mu.Lock()
		r.rep.Log = r.log.String()
		r.mu.Unlock()
		rep.Scenarios = append(rep.Scenarios, r.rep)
	}
	f, err := os.Create(b.cfg.Report)
	if err != nil {
		return fmt.Errorf("bench: report: %w", err)
	}
	if err := rep.WriteHTML(f); err != nil {
		f.Close()
		return fmt.Errorf("bench: report: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("bench: report: %w", err)
	}
	fmt.Fprintf(b.out, "report: %s\n", b.cfg.Report)
	return nil
}

// redactArgs is the command line with the password or token of a NATS
// URL (--target nats://user:password@host) masked, as the run's output
// masks it: the report is a file meant to be shared.
func redactArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if k, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(k, "-") {
			out[i] = k + "=" + bus.RedactURL(v)
		} else {
			out[i] = bus.RedactURL(a)
		}
	}
	return out
}

func fmtKiB(n float64) string { return fmt.Sprintf("%.0f KiB", n/1024) }
