package projections

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/scrollback/scrollback/commands"
)

// Source is the room log as the projector reads it: Consume delivers every
// message with a sequence >= from, in log order, until ctx ends or the
// source fails. fn must not keep data after it returns unless it copies.
type Source interface {
	Consume(ctx context.Context, from uint64, fn func(seq uint64, subject string, data []byte, ts int64, pending uint64)) error
}

// Decoder turns a raw log message into a LogEntry (bus.Subjects.Decode).
type Decoder func(seq uint64, subject string, data []byte, ts int64) commands.LogEntry

// Observer hears about every applied message (metrics, logs, dead-letter
// announcements). It is called from partition goroutines after the
// commit.
type Observer func(part int, outcomes []Outcome, batchDuration time.Duration)

// CommitStats describes one transaction of bbolt's one writer: a group
// commit of the partitions' batches (Projector.ObserveCommit). The sum
// of the Durations over a span of time is how busy the writer was, which
// bounds how fast the projection can catch up.
type CommitStats struct {
	Messages int           // log messages in the transaction
	Batches  int           // partition batches in it
	Pages    int           // pages its commit wrote
	Duration time.Duration // applying, writing and syncing
}

// Projector applies the room log to the Store: one goroutine per
// partition decodes its rooms' messages in log order, in batches, and
// hands each batch to the committer, bbolt's one writer, which commits
// it together with the batches other partitions have ready by then, in
// one transaction that also advances each partition's checkpoint.
type Projector struct {
	Store     *Store
	Source    Source
	Decode    Decoder
	RoomKeyOf func(subject string) string // the <rk> token of a room subject
	Observe   Observer
	// ObserveCommit, if set, hears about every committed transaction that
	// applied batches (metrics); it is called by the writer, so it must
	// be quick, and by several goroutines when a failed group is retried
	// batch by batch.
	ObserveCommit func(CommitStats)
	// Erased, if set, reports whether the log no longer holds any of a
	// room's history below seq: neither an event message nor a kept copy
	// of one (bus.Log.RoomHistoryBelow). The projector asks it for every
	// unforced purge_room before applying it (commands.LogEntry.
	// HistoryErased): with several instances on one log, another may
	// erase the room's history while this one is reading it (CLUSTER.md).
	// Without it, such a reader can refuse a purge the others completed.
	Erased func(ctx context.Context, roomID string, seq uint64) (bool, error)
	// FirstUpdates, if set, finds the first TaskUpdate of each of a
	// room's tasks after a sequence (bus.Log.FirstUpdates). The projector
	// asks it about a purge whose outcome depends on history that a later
	// purge may have erased from the log (commands.LogEntry.Decided): an
	// unforced purge_room, erased or not (an erasure stopped between
	// its steps leaves part of the history), and every purge_history. Without it, a rebuild after such purges
	// can differ from the live file in those tasks' records.
	FirstUpdates func(ctx context.Context, roomID string, ids []string, after uint64) (map[string]*commands.TaskUpdate, error)
	Logger       *slog.Logger
	// MaxBatch bounds the messages of one partition's batch (default
	// 8000). A partition takes what is queued, so batches are this big
	// only when it is behind (a backlog, a catch-up); there, bigger
	// commits share pages and fsyncs: catching up 200k events in 10k
	// rooms, one transaction per batch, went from 14.6k to 28.9k
	// events/s between 1000 and 8000.
	MaxBatch int
	// QueueLen bounds the messages waiting per partition (default
	// defaultQueueLen): the consumer blocks when a partition is that far
	// behind. Each waiting message holds its NATS message (about 600
	// bytes with headers): 8192 a partition held 80-94 MB at the peak of
	// a catch-up.
	QueueLen int
	// MaxDecoded bounds the messages decoded and not yet committed,
	// across partitions (default twice MaxGroup, so that the next group
	// is decoded while one is committed; with a budget of one group the
	// catch-up lost the group commit's gain): a decoded event with its
	// prepared row takes about 2 KB of heap, and without a bound the 16
	// partitions' batches made most of a 1.1 GiB peak during a catch-up
	// in 100k rooms (issue 7's memory goal is 512 MiB in all).
	MaxDecoded int
	// MaxGroup bounds the messages of one group commit (default 16000),
	// and so a transaction's dirty pages and the wait of a batch that
	// comes after it. A group is what the partitions have ready when the
	// previous one is committed: catching up 1M events in 10k rooms on 2
	// cores (scrollback bench --scenario catchup), groups held 7k to 18k
	// messages, and a bound of 16000, 32000 or 64000 gave 38.7k, 42.8k
	// and 41.7k events/s (two runs each). In 100k rooms nearly every
	// message of a group dirties a leaf of its own, and a group of 32000
	// held over 200 MB of bbolt nodes and page buffers: 16000 trades a
	// tenth of the speed for half of that.
	MaxGroup int
	// MaxDirty bounds the pages a group commit should write (dirty
	// pages); 0 (the default without a Go memory limit) bounds groups by
	// MaxGroup alone. bbolt holds a buffer and the keys of each dirty
	// page until the commit ends, about 13 KB of heap a page. How many
	// pages a message dirties depends on how its room shares pages with
	// others (in 100k rooms, 2.6 in groups of 16000 messages and 4.8 in
	// groups of 2000), so the committer measures it on each group and
	// bounds the next group, and the partitions' batches, to the
	// messages that would write about MaxDirty pages, within [minGroup,
	// MaxGroup]; a batch that would take a group past it waits for the
	// next one. Smaller groups share fewer pages and cost more writes
	// per message: a catch-up of 1M events in 100k rooms under a 480
	// MiB memory limit (7680 pages, and a smaller queue) ran 2.2x slower
	// than without a limit, at a third of the memory.
	MaxDirty int
	// Linger is how long the committer waits for more messages when it
	// is busy with live traffic (default 2 ms; negative: never): when a
	// group would hold fewer than lingerBelow messages, nobody waits
	// for the projection (WaitFor, WaitAll), and the last group commit
	// ended less than lingerIdle ago and held batches of at least
	// lingerParts partitions. Live traffic arrives a few messages at a
	// time, and each commit of a few messages into as many rooms writes
	// about 8 pages a message and two fsyncs, so that a commit every few
	// milliseconds competed with the log's own fsyncs and with the reads
	// for the CPU (docs/BENCHMARKS.md, "The committer lingers under live
	// traffic", and "A shutdown's kicks make way for reads" for the
	// homeserver's forget commands, which came every 3 ms).
	//
	// Whoever waits does not wait for the linger: an admin request for
	// its command, a read for its wait_for sequence, a backfill for its
	// events, a task for its update. Beginning to wait ends a linger
	// under way, and no linger starts while anyone waits. Waits are this
	// projector's own: with several instances, the others apply a
	// command that nobody waits for on them up to a linger later (a
	// purge hidden there up to 2 ms after the instance that answered
	// the request), and while any read waits for a wait_for sequence,
	// nothing lingers at all. An event after
	// a quiet spell, and a lone room's stream of messages (a backfill, a
	// homeserver that publishes and reads without wait_for), are
	// committed at once too. Stopping the projector waits for the
	// linger.
	Linger time.Duration

	lingerIdle  time.Duration // lingerIdle, when Init ran
	lingerParts int           // lingerParts, when Init ran
	groupLimit  atomic.Int64  // messages the next group and batches may hold
	parts       []*partition
	dispatched  atomic.Uint64 // highest sequence handed to a partition
	logLast     atomic.Uint64 // highest sequence the log is known to hold
	started     atomic.Bool
	notify      broadcaster
	commits     chan *commitJob // to the committer
	urgent      chan struct{}   // someone began to wait for the projection (see Linger)
	lingering   atomic.Int64    // messages of the group the committer waits with (Linger), for the tests
	ending      atomic.Bool     // Store.Built was called (build.go)
	buildTarget atomic.Uint64   // the log's end when the build was first checked (caughtUp)
	replayUntil atomic.Uint64   // a new file's: the log's end when Run started (Outcome.Replayed)
	// preparing holds a slot per partition decoding a batch: GOMAXPROCS-1
	// of them, so that the committer, which every message waits for,
	// finds a CPU. With all 16 partitions free to decode at once, the
	// same catch-up ran at 38.4k events/s instead of 42.8k.
	preparing chan struct{}
	decoded   *budget // messages decoded and not yet committed
}

// budget is a count of messages that takes may draw on; a take of more
// than the whole budget waits until nothing is drawn, then takes it all.
type budget struct {
	mu   sync.Mutex
	cond sync.Cond
	size int
	free int
}

func newBudget(size int) *budget {
	b := &budget{size: size, free: size}
	b.cond.L = &b.mu
	return b
}

// take waits until n messages (at most the budget's size) are free and
// draws them; it returns what it drew, for give.
func (b *budget) take(n int) int {
	n = min(n, b.size)
	b.mu.Lock()
	for b.free < n {
		b.cond.Wait()
	}
	b.free -= n
	b.mu.Unlock()
	return n
}

func (b *budget) give(n int) {
	b.mu.Lock()
	b.free += n
	b.mu.Unlock()
	b.cond.Broadcast()
}

type partition struct {
	id      int
	queue   chan rawMsg
	pending atomic.Int64  // dispatched but not yet committed
	applied atomic.Uint64 // checkpoint: last sequence committed
	job     commitJob     // the partition's batch at the committer
}

// commitJob is a partition's batch handed to the committer.
type commitJob struct {
	batch *partBatch
	err   error // of the group commit
	group int   // batches in the group
	done  chan struct{}
}

type rawMsg struct {
	seq     uint64
	subject string
	data    []byte
	ts      int64
}

// PartitionOf maps a room key to its partition: fnv32a modulo the count,
// the same hash as nats-server's {{partition()}} mapping.
func PartitionOf(roomKey string, parts int) int {
	h := fnv.New32a()
	h.Write([]byte(roomKey))
	return int(h.Sum32() % uint32(parts))
}

// Init reads the checkpoints and prepares the partitions. Call it before
// serving reads (Run calls it too, for tests that start Run alone).
func (p *Projector) Init() error { return p.init() }

func (p *Projector) init() error {
	if p.parts != nil {
		return nil
	}
	if p.MaxBatch <= 0 {
		p.MaxBatch = 8000
	}
	// Under a Go memory limit (GOMEMLIMIT, or the service's
	// memory_limit), queues and group transactions that are not set
	// explicitly are sized from it (see sizeFor).
	if lim := debug.SetMemoryLimit(-1); lim < math.MaxInt64 {
		queueLen, maxDirty := sizeFor(lim)
		if p.QueueLen <= 0 {
			p.QueueLen = queueLen
		}
		if p.MaxDirty <= 0 {
			p.MaxDirty = maxDirty
		}
	}
	if p.QueueLen <= 0 {
		p.QueueLen = defaultQueueLen
	}
	if p.MaxGroup <= 0 {
		p.MaxGroup = 16000
	}
	p.groupLimit.Store(int64(p.MaxGroup))
	if p.MaxDirty > 0 {
		// Until the first group is measured, assume the worst seen:
		// about 4 pages a message (small groups in 100k rooms).
		p.groupLimit.Store(int64(clampGroup(p.MaxDirty/4, p.MaxGroup)))
	}
	if p.MaxDecoded <= 0 {
		p.MaxDecoded = 2 * p.MaxGroup
	}
	if p.Linger == 0 {
		p.Linger = defaultLinger
	}
	p.lingerIdle, p.lingerParts = lingerIdle, lingerParts
	// Here, not in Run: a request may wait (WaitFor) before Run starts.
	p.urgent = make(chan struct{}, 1)
	p.decoded = newBudget(p.MaxDecoded)
	if p.Logger == nil {
		p.Logger = slog.New(slog.DiscardHandler)
	}
	cps, err := p.Store.Checkpoints()
	if err != nil {
		return err
	}
	p.parts = make([]*partition, len(cps))
	low := ^uint64(0)
	for i, cp := range cps {
		pt := &partition{id: i, queue: make(chan rawMsg, p.QueueLen), job: commitJob{done: make(chan struct{}, 1)}}
		pt.applied.Store(cp)
		p.parts[i] = pt
		low = min(low, cp)
	}
	p.dispatched.Store(low)
	return nil
}

// Run consumes the log until ctx ends, consuming again after source
// failures, and returns once every dispatched message is committed, or,
// in a partition whose batch could not be applied at once after ctx
// ended (an answer from the log it needed did not come: Erased; the file
// could not take it: a full disk), left for the next run: the watermarks
// never count such messages as applied. Run is called once.
func (p *Projector) Run(ctx context.Context) error {
	if err := p.init(); err != nil {
		return err
	}
	from := p.dispatched.Load() + 1
	var wg sync.WaitGroup
	p.commits = make(chan *commitJob, len(p.parts))
	p.preparing = make(chan struct{}, max(1, runtime.GOMAXPROCS(0)-1))
	committed := make(chan struct{})
	go func() {
		defer close(committed)
		p.runCommitter()
	}()
	for _, pt := range p.parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.runPartition(ctx, pt)
		}()
	}
	if src, ok := p.Source.(LastSeq); ok && p.Store.Building() {
		// A new file: what the log holds now is a replay.
		if last, err := src.LastSeq(ctx); err == nil {
			p.replayUntil.Store(last)
		} else {
			p.Logger.Debug("projection: the log's end, for a new file's replay", "err", err)
		}
	}
	p.started.Store(true)
	if src, ok := p.Source.(EmptyFrom); ok && p.Store.Building() {
		go p.endEmptyBuild(ctx, src, from)
	}
	// The source may fail (a lost connection, a consumer the server
	// dropped): consume again from the next undispatched message, with a
	// growing pause, until ctx ends. The checkpoints make any overlap
	// harmless.
	var err error
	for backoff := 100 * time.Millisecond; ; backoff = min(backoff*2, 5*time.Second) {
		err = p.Source.Consume(ctx, from, p.dispatch(ctx))
		if ctx.Err() != nil {
			break
		}
		p.Logger.Warn("log consumer stopped; consuming again", "from", p.dispatched.Load()+1, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		if ctx.Err() != nil {
			break
		}
		from = p.dispatched.Load() + 1
	}
	// Let the partitions finish what was dispatched, then stop them.
	for _, pt := range p.parts {
		close(pt.queue)
	}
	wg.Wait()
	close(p.commits)
	<-committed
	p.started.Store(false)
	return nil // consumption only ends with ctx
}

func (p *Projector) dispatch(ctx context.Context) func(uint64, string, []byte, int64, uint64) {
	return func(seq uint64, subject string, data []byte, ts int64, pending uint64) {
		if seq <= p.dispatched.Load() {
			return // a redelivery after a consumer reset
		}
		pt := p.parts[PartitionOf(p.RoomKeyOf(subject), len(p.parts))]
		pt.pending.Add(1)
		select {
		case pt.queue <- rawMsg{seq: seq, subject: subject, data: data, ts: ts}:
		case <-ctx.Done():
			pt.pending.Add(-1)
			return
		}
		p.dispatched.Store(seq)
		if last := seq + pending; last > p.logLast.Load() {
			p.logLast.Store(last)
		}
		p.notify.broadcast()
	}
}

// runPartition applies the partition's queue until it is closed. stop is
// Run's, which ends when consuming does: from then on, a batch that
// cannot be applied at once is left for the next run (applyBatch).
func (p *Projector) runPartition(stop context.Context, pt *partition) {
	batch := make([]rawMsg, 0, p.MaxBatch)
	for first := range pt.queue {
		batch = append(batch[:0], first)
		limit := min(p.MaxBatch, int(p.groupLimit.Load()))
	fill:
		for len(batch) < limit {
			select {
			case m, ok := <-pt.queue:
				if !ok {
					break fill
				}
				batch = append(batch, m)
			default:
				break fill
			}
		}
		if !p.applyBatch(stop, pt, batch) {
			// Run is stopping, and a batch could not be applied as it
			// must be: so is nothing after it. Its messages and the
			// rest of the queue stay pending, so that the watermark
			// does not pass them; the next run starts from the
			// checkpoint.
			for range pt.queue {
			}
			return
		}
		// The next batch reuses the slice: let go of this one's
		// messages, or a partition that goes quiet after a catch-up
		// keeps up to MaxBatch of them.
		clear(batch)
	}
}

// applyBatch decodes and commits one batch. A batch the file cannot take
// (a full disk: fileFault) is retried whole until it can; a batch that
// fails for a reason of its own is applied message by message, and a
// message that still fails becomes a dead letter (applyOne), so that no
// message stops its partition forever. The batch is decoded and its rows
// are built here, in the partition's goroutine, so that bbolt's single
// writer only reads and writes the file. It reports false when stop ends
// before the batch is applied: before the log answers the batch's
// questions (markErased), or while the file cannot take it. Then its
// messages are left for the next run (those applied one by one so far
// are in their checkpoint).
func (p *Projector) applyBatch(stop context.Context, pt *partition, batch []rawMsg) bool {
	start := time.Now()
	drawn := p.decoded.take(len(batch))
	defer func() { p.decoded.give(drawn) }()
	p.preparing <- struct{}{}
	entries := make([]commands.LogEntry, len(batch))
	for i, m := range batch {
		entries[i] = p.Decode(m.seq, m.subject, m.data, m.ts)
	}
	b := prepareBatch(pt.id, entries)
	<-p.preparing
	if !p.markErased(stop, entries) {
		return false
	}
	group, err := p.commit(pt, b)
	if err != nil && group > 1 {
		// The group failed: this batch may not be the cause.
		p.Logger.Warn("group commit failed; applying the partition's batch alone", "partition", pt.id, "messages", len(entries), "group", group, "err", err)
		_, err = p.applyGroup([]*partBatch{b})
	}
	for backoff := 10 * time.Millisecond; err != nil && fileFault(err); backoff = min(backoff*2, 5*time.Second) {
		// The file cannot take the batch (a full disk): none of its
		// messages is at fault. It is retried whole until the fault
		// clears; one by one, it would take a transaction (and its
		// fsync) a message once the disk has room again.
		p.Logger.Error("cannot apply a batch: the file cannot take it; retrying", "partition", pt.id, "messages", len(entries), "err", err)
		select {
		case <-stop.Done():
			return false
		case <-time.After(backoff):
		}
		_, err = p.applyGroup([]*partBatch{b})
	}
	outcomes := b.out
	if err != nil {
		p.Logger.Warn("batch failed; applying one by one", "partition", pt.id, "messages", len(entries), "err", err)
		outcomes = nil
		for _, e := range entries {
			out, ok := p.applyOne(stop, pt, e)
			if !ok {
				// Run is stopping: the rest is left for the next run,
				// and the watermark stays where it was (the messages
				// applied one by one so far are in their checkpoints).
				if p.Observe != nil {
					p.Observe(pt.id, outcomes, time.Since(start))
				}
				return false
			}
			outcomes = append(outcomes, out...)
		}
	}
	last := batch[len(batch)-1].seq
	pt.applied.Store(last)
	pt.pending.Add(-int64(len(batch)))
	p.notify.broadcast()
	if p.Store.Building() && p.caughtUp() {
		// A new file has caught up: it is synced from now on. Its sync
		// (of everything the kernel has not written yet) does not hold
		// up this partition.
		go p.endBuild()
	}
	if p.Observe != nil {
		// A new file replays the log up to where it ended when the file
		// was made: those messages' outcomes are history.
		until := p.replayUntil.Load()
		for i := range outcomes {
			outcomes[i].Replayed = outcomes[i].Seq <= until
		}
		p.Observe(pt.id, outcomes, time.Since(start))
	}
	return true
}

// endBuild ends a build without fsync, once.
func (p *Projector) endBuild() {
	if !p.ending.CompareAndSwap(false, true) {
		return
	}
	if err := p.Store.Built(); err != nil {
		p.Logger.Warn("projection: the build without fsync did not end; Close ends it", "err", err)
		return
	}
	p.Logger.Info("projection: the new file has caught up with the log; every commit is synced from now on", "applied", p.Applied())
}

// LastSeq is what a Source may also tell: the log's last sequence
// (bus.Log.LastSeq). A new file's outcomes up to it are a replay of the
// log (Outcome.Replayed).
type LastSeq interface {
	LastSeq(ctx context.Context) (uint64, error)
}

// EmptyFrom is what a Source may also tell: whether the log holds no
// message at or after from (bus.Log.EmptyFrom). A new file built from an
// empty log has caught up at once, and no applied batch would say so.
type EmptyFrom interface {
	EmptyFrom(ctx context.Context, from uint64) (bool, error)
}

// endEmptyBuild ends a build without fsync when the log holds nothing
// past what the file has.
func (p *Projector) endEmptyBuild(ctx context.Context, src EmptyFrom, from uint64) {
	empty, err := src.EmptyFrom(ctx, from)
	if err != nil {
		p.Logger.Debug("projection: whether the log is empty", "err", err)
		return
	}
	if empty {
		p.endBuild()
	}
}

// caughtUp reports whether a build without fsync should end (build.go):
// the projection is within builtLag messages of the log's end, or has
// applied what the log held when the build was first checked, so that
// an ingest that keeps the lag above builtLag does not keep a serving
// file unsynced.
func (p *Projector) caughtUp() bool {
	applied, last := p.Applied(), p.LogLast()
	p.buildTarget.CompareAndSwap(0, last)
	return applied+builtLag > last || applied >= p.buildTarget.Load()
}

// markErased asks the log the batch's questions: for each unforced
// purge_room, whether the room's history below it is erased (Erased), and
// for such a purge_room and for a purge_history that fails the
// forward-extremity guard now, how the command was decided where it was
// first applied (FirstUpdates). It asks again until the log answers, or
// reports false when ctx ends first: applying without the answer could
// refuse a purge that other instances completed.
func (p *Projector) markErased(ctx context.Context, entries []commands.LogEntry) bool {
	for i := range entries {
		e := &entries[i]
		c := e.Command
		if c == nil || e.Err != nil {
			continue
		}
		var decide []string
		switch {
		case c.Action == commands.ActionPurgeRoom && !c.Bool("force", false) && p.Erased != nil:
			if !p.ask(ctx, e, "whether a purged room's history is erased", func() (err error) {
				e.HistoryErased, err = p.Erased(ctx, e.RoomID, e.Seq)
				return err
			}) {
				return false
			}
			// Always, erased or not: an erasure stopped between two of
			// its steps (bus.Log.PurgeSubjectInSteps, from the oldest)
			// leaves the room's later history without its earlier part,
			// the members' joins among it, and a members check on that
			// passes a purge that was refused where it was first
			// applied. The refusal's confirmation is in the log before
			// any of the history goes (holding). Live, the question
			// costs one request that finds nothing.
			decide = []string{c.ID}
			if owner, ok := strings.CutSuffix(c.ID, commands.ShutdownPurgeSuffix); ok {
				decide = append(decide, owner) // a shutdown's purge step
			}
		case c.Action == commands.ActionPurgeHistory:
			// Always: the committed file cannot vouch for the guard
			// when the room's events or a purge_room of it are earlier
			// in this batch (a helper's review proved a rebuild failing
			// a purge that way). Live, the question costs one request
			// that finds nothing.
			decide = []string{c.ID}
		}
		if len(decide) == 0 || p.FirstUpdates == nil {
			continue
		}
		if !p.ask(ctx, e, "how a purge was decided", func() (err error) {
			e.Decided, err = p.FirstUpdates(ctx, e.RoomID, decide, e.Seq)
			return err
		}) {
			return false
		}
	}
	return true
}

// ask calls question until it succeeds, or until ctx ends (false).
func (p *Projector) ask(ctx context.Context, e *commands.LogEntry, what string, question func() error) bool {
	for backoff := 10 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		err := question()
		if err == nil {
			return true
		}
		p.Logger.Warn("cannot tell "+what+"; asking again", "room_id", e.RoomID, "seq", e.Seq, "err", err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
	}
}

// commit hands the batch to the committer and waits for its group's
// commit; group is the number of batches the group had.
func (p *Projector) commit(pt *partition, b *partBatch) (group int, err error) {
	pt.job.batch = b
	p.commits <- &pt.job
	<-pt.job.done
	pt.job.batch = nil
	return pt.job.group, pt.job.err
}

// runCommitter is the partitions' one writer (bbolt has one): it commits
// the first batch handed to it together with every other partition's
// batch that is ready by then, up to MaxGroup messages, in one
// transaction (a group commit). A batch that is alone waits for nothing
// more; when partitions are behind, as in a catch-up, they share the
// transaction's page writes and fsync.
func (p *Projector) runCommitter() {
	var group []*commitJob
	var batches []*partBatch
	var carry *commitJob // a batch that would have overfilled the last group
	var last struct {    // the last group commit
		end     time.Time
		batches int
	}
	for {
		first, ok := carry, true
		if carry == nil {
			first, ok = <-p.commits
		}
		carry = nil
		if !ok {
			return
		}
		group = append(group[:0], first)
		n, limit := len(first.batch.entries), int(p.groupLimit.Load())
		// take adds a job to the group, unless it would overfill it and
		// so starts the next group; it reports whether the group may
		// take more.
		take := func(j *commitJob) bool {
			if n+len(j.batch.entries) > limit {
				carry = j
				return false
			}
			group, n = append(group, j), n+len(j.batch.entries)
			return n < limit
		}
		more := n < limit
		for more {
			select {
			case j, ok := <-p.commits:
				more = ok && take(j)
			default:
				more = false
			}
		}
		busy := time.Since(last.end) < p.lingerIdle && last.batches >= p.lingerParts
		// A signal from before this check is stale: the count says
		// whether anyone waits. One from after it ends the linger.
		select {
		case <-p.urgent:
		default:
		}
		if p.Linger > 0 && busy && n < min(limit, lingerBelow) && carry == nil && p.notify.waiters.Load() == 0 {
			// See Linger.
			t := time.NewTimer(p.Linger)
			for more = true; more; {
				p.lingering.Store(int64(n))
				select {
				case j, ok := <-p.commits:
					more = ok && take(j) && n < lingerBelow
				case <-p.urgent:
					more = false
				case <-t.C:
					more = false
				}
			}
			p.lingering.Store(0)
			t.Stop()
		}
		batches = batches[:0]
		for _, j := range group {
			batches = append(batches, j.batch)
		}
		written, err := p.applyGroup(batches)
		last.end, last.batches = time.Now(), len(group)
		if err == nil && p.MaxDirty > 0 && n >= minGroup {
			// The next group holds the messages that would write about
			// MaxDirty pages at this group's rate, and at most twice
			// this limit: a group that wrote little (redelivered
			// messages, one busy room) does not open the gates at once.
			// (Groups of fewer messages share fewer pages, so the
			// estimate errs low and the next measure corrects it.)
			next := min(n*p.MaxDirty/max(written, 1), 2*limit)
			p.groupLimit.Store(int64(clampGroup(next, p.MaxGroup)))
		}
		for _, j := range group {
			j.err, j.group = err, len(group)
			j.done <- struct{}{}
		}
	}
}

// applyGroup applies batches in one transaction and reports it, once
// committed, to ObserveCommit.
func (p *Projector) applyGroup(batches []*partBatch) (written int, err error) {
	start := time.Now()
	written, err = p.Store.applyBatches(batches)
	if err == nil && p.ObserveCommit != nil {
		p.ObserveCommit(CommitStats{Batches: len(batches), Messages: messages(batches), Pages: written, Duration: time.Since(start)})
	}
	return written, err
}

// defaultLinger is Linger's default, and lingerBelow the group size,
// in messages, from which the committer never lingers. In the mixed
// workload (docs/BENCHMARKS.md) groups held 10-14 messages without the
// wait and 23-31 with 2 ms of it.
const (
	defaultLinger = 2 * time.Millisecond
	lingerBelow   = 256
)

// lingerIdle is how recent the committer's last commit must be for it to
// linger, and lingerParts how many partitions' batches that commit must
// have held (see Linger): under the mixed workload's live traffic a group
// commit ended every 7-10 ms. Variables for the tests.
var (
	lingerIdle  = 10 * time.Millisecond
	lingerParts = 2
)

// clampGroup bounds a group limit to [minGroup, maxGroup].
func clampGroup(n, maxGroup int) int { return max(minGroup, min(maxGroup, n)) }

// minGroup is the least MaxDirty may bound a group to, and the least
// group the committer learns from.
const minGroup = 256

// defaultQueueLen is QueueLen without a memory limit. A partition has one
// batch in flight, and takes what is queued as its next one; while its
// batch waits for the writer, its queue fills, and the consumer, which
// feeds every partition in log order, waits for the fullest. So in a
// catch-up the partitions of the busiest rooms set the pace, and the
// longer their queues, the bigger their batches and the more pages a
// group commit shares. Catching up 1M events (hashed IDs) in 10k rooms,
// 16384 wrote 1.0 pages a message where 4096 wrote 1.3, and applied
// 1.16x as many events a second (30.0-32.1k/s in 3 runs, 24.7-28.8k/s
// in 4), at the same memory peak; in 100k rooms 1.19x, at 1.13x the
// memory peak (1,411 MiB against 1,254 MiB; one run each).
const defaultQueueLen = 16384

// sizeFor gives the queue length and the dirty-page bound for a memory
// limit of lim bytes. Measured in a catch-up of 1M events in 100k rooms
// (the worst case: nearly every message dirties leaves of its own), a
// dirty page cost about 13 KB of heap (its buffer and its keys) and a
// queued message about 1 KB, 16 partitions' worth. A limit of 512 MiB
// gives 8192 pages (about a fifth of the limit) and 1024 messages a
// partition (16 MB).
func sizeFor(lim int64) (queueLen, maxDirty int) {
	queueLen = int(min(max(lim/(512<<10), 256), defaultQueueLen))
	maxDirty = int(max(lim/(64<<10), 1024))
	return queueLen, maxDirty
}

// applyOne applies e alone, in a transaction of its own, and retries
// with a growing pause while it fails. A message that fails three times
// for a reason of its own is a poison message: it becomes a dead letter,
// so that it does not stop its partition. A fault of the file or the disk
// (fileFault: a full disk, an I/O error) is not the message's: it is
// retried until it clears, for a dead letter would leave a sound message
// out of the projection for good. ok is false when stop ended first: e
// stays in the log, above the partition's checkpoint, for the next run.
func (p *Projector) applyOne(stop context.Context, pt *partition, e commands.LogEntry) (out []Outcome, ok bool) {
	backoff := 10 * time.Millisecond
	failed := 0 // failures of the message's own
	for {
		out, err := p.Store.ApplyBatch(pt.id, []commands.LogEntry{e})
		if err == nil {
			return out, true
		}
		fault := fileFault(err)
		if !fault {
			failed++
		}
		switch {
		case fault:
			p.Logger.Error("cannot apply a message: the file cannot take it; retrying", "partition", pt.id, "seq", e.Seq, "err", err)
		case failed >= 3:
			reason := fmt.Sprintf("internal error applying message: %v", err)
			derr := p.Store.DeadLetterOne(pt.id, e, reason)
			if derr == nil {
				return []Outcome{{Seq: e.Seq, RoomID: e.RoomID, Kind: e.Kind, Result: OutcomeDead, Reason: reason}}, true
			}
			p.Logger.Error("cannot write a dead letter to the projection; retrying", "partition", pt.id, "seq", e.Seq, "err", derr)
		}
		select {
		case <-stop.Done():
			return nil, false
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// Started reports whether the projector is consuming the log.
func (p *Projector) Started() bool { return p.started.Load() }

// Watermark is the log sequence up to which every message of the room's
// partition is applied.
func (p *Projector) Watermark(roomID string) uint64 {
	pt := p.parts[PartitionOf(roomKey(roomID), len(p.parts))]
	return p.watermark(pt)
}

func (p *Projector) watermark(pt *partition) uint64 {
	// Load dispatched before pending: every message up to d that belongs
	// to pt was counted in pending before d was stored.
	d := p.dispatched.Load()
	if pt.pending.Load() == 0 {
		return max(d, pt.applied.Load())
	}
	return pt.applied.Load()
}

// Applied is the lowest watermark of all partitions: every message up to
// it is applied.
func (p *Projector) Applied() uint64 {
	low := ^uint64(0)
	for _, pt := range p.parts {
		low = min(low, p.watermark(pt))
	}
	if low == ^uint64(0) {
		return 0
	}
	return low
}

// LogLast is the highest sequence the log is known to hold.
func (p *Projector) LogLast() uint64 { return max(p.logLast.Load(), p.dispatched.Load()) }

// WaitFor blocks until every message of the room's partition up to seq is
// applied, or ctx ends.
func (p *Projector) WaitFor(ctx context.Context, roomID string, seq uint64) error {
	pt := p.parts[PartitionOf(roomKey(roomID), len(p.parts))]
	return p.waitUntil(ctx, func() bool { return p.watermark(pt) >= seq })
}

// WaitAll blocks until every message up to seq is applied in every
// partition, or ctx ends.
func (p *Projector) WaitAll(ctx context.Context, seq uint64) error {
	return p.waitUntil(ctx, func() bool { return p.Applied() >= seq })
}

// waitUntil blocks until done holds, checking it whenever the projection
// moves, or until ctx ends.
func (p *Projector) waitUntil(ctx context.Context, done func() bool) error {
	for {
		ch := p.notify.wait()
		if done() {
			p.notify.done()
			return nil
		}
		// Counted as a waiter first, so that the committer either sees
		// the count or finds the signal (see Linger).
		select {
		case p.urgent <- struct{}{}:
		default: // already signalled
		}
		select {
		case <-ch:
			p.notify.done()
		case <-ctx.Done():
			p.notify.done()
			return ctx.Err()
		}
	}
}

// broadcaster wakes every waiter when the projection moves; it costs
// nothing while nobody waits.
type broadcaster struct {
	mu      sync.Mutex
	ch      chan struct{}
	waiters atomic.Int64
}

func (b *broadcaster) wait() <-chan struct{} {
	b.waiters.Add(1)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch == nil {
		b.ch = make(chan struct{})
	}
	return b.ch
}

func (b *broadcaster) done() { b.waiters.Add(-1) }

func (b *broadcaster) broadcast() {
	if b.waiters.Load() == 0 {
		return
	}
	b.mu.Lock()
	if b.ch != nil {
		close(b.ch)
		b.ch = nil
	}
	b.mu.Unlock()
}
