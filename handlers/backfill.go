package handlers

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
)

// Synapse's backfill constants (SYNAPSE.md 11).
const (
	backfillLimit      = 100 // events asked for, and how far above the requested depth a point may be
	backfillMaxPoints  = 5
	backfillCandidates = 50 // the deepest points get_backfill_points_in_room returns
	backfillMaxBackoff = 8  // the back-off doubles up to 2^8 times
	// maxBackoffWait bounds a failed backfill point's back-off.
	maxBackoffWait     = 100 * 365 * 24 * time.Hour
	backgroundBackfill = 4 // background backfills at once
)

// Outcomes of one backfill request (Backfiller.Observe).
const (
	BackfillEvents = "events" // the reply brought events, appended to the log
	BackfillEmpty  = "empty"  // an answer without any event to append
	BackfillError  = "error"  // no responder, a timeout, an error reply, or the append failed
)

// Backfiller asks federation workers for history the room is missing
// (sb.backfill) and appends what they return to the room's log as
// backfilled events, so it reaches the timeline like every other event.
// It never fails or hangs a read: no responder, an error or a timeout
// leave the page as it is and put the extremities in exponential
// back-off. Concurrent reads of a room share one request.
type Backfiller struct {
	Req      Requester
	Log      Appender
	Waiter   Waiter
	Store    *projections.Store
	Subjects bus.Subjects
	// ServerName is ours (server_name): a point is asked about only if
	// our server may see one of the events that name it (visible).
	ServerName string
	// Timeout bounds a request and the wait for its events (backfill.timeout).
	Timeout time.Duration
	// Backoff is the first retry delay of a failed extremity (backfill.backoff).
	Backoff time.Duration
	Now     func() time.Time
	Logger  *slog.Logger
	// Observe, if set, hears the outcome of each request to the
	// federation workers: BackfillEvents, BackfillEmpty or BackfillError.
	Observe func(outcome string)

	once     sync.Once
	mu       sync.Mutex // inflight and failures
	inflight map[string]*backfillCall
	// failures is the back-off of the backward extremities that failed,
	// by room, then event ID; points forgets those the room no longer
	// has, so that it holds no more than the rooms' extremities.
	failures map[string]map[string]backoffState
	bg       chan struct{}
	// Background runs are owned here: Close cancels life and waits for
	// them (wg), and none starts once closed is set.
	life    context.Context
	endLife context.CancelFunc
	closed  bool // under mu
	wg      sync.WaitGroup
}

type backfillCall struct {
	done chan struct{}
	did  bool
}

type backoffState struct {
	attempts int
	until    time.Time
}

// point is a backward extremity with its approximate depth (the depth of
// the known event that names it).
type point struct {
	id    string
	depth int64
}

func (b *Backfiller) init() {
	b.once.Do(func() {
		b.inflight = map[string]*backfillCall{}
		b.failures = map[string]map[string]backoffState{}
		b.bg = make(chan struct{}, backgroundBackfill)
		b.life, b.endLife = context.WithCancel(context.Background())
	})
}

// Close stops the background backfills and waits for them to end; no
// background backfill starts after it. Reads that call Maybe themselves
// are their own callers' to stop.
func (b *Backfiller) Close() {
	b.init()
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.endLife()
	b.wg.Wait()
}

// Background starts Maybe in the background unless too many are running.
// Every read near a backward extremity calls it: it takes a lock only
// when it starts one.
func (b *Backfiller) Background(roomID string, depth int64, limit int) {
	b.init()
	select {
	case b.bg <- struct{}{}:
	default:
		return // busy: a later read will ask again
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		<-b.bg
		return
	}
	b.wg.Add(1)
	b.mu.Unlock()
	go func() {
		defer func() {
			<-b.bg
			b.wg.Done()
		}()
		ctx, cancel := context.WithTimeout(b.life, b.timeout()+WaitForTimeout)
		defer cancel()
		b.Maybe(ctx, roomID, depth, limit)
	}()
}

func (b *Backfiller) timeout() time.Duration {
	if b.Timeout <= 0 {
		return 10 * time.Second
	}
	return b.Timeout
}

// Maybe is Synapse's maybe_backfill: it picks up to 5 backfill points near
// depth whose history our server may see (visible), asks the federation
// workers for it, appends it to the log and waits until it is applied. It
// reports whether any event came; with no point to ask about, false at
// once.
func (b *Backfiller) Maybe(ctx context.Context, roomID string, depth int64, limit int) bool {
	b.init()
	// One backfill of a room at a time, each for its own depth, as
	// Synapse's _room_backfill linearizer runs them: a read that finds
	// one under way waits for it, then decides for its own depth (what
	// the other filled is no longer a gap; points it tried are backed
	// off). It reports whether any backfill it waited for or ran brought
	// events, so that its caller reads its page again.
	came := false
	for {
		if c := b.call(roomID); c != nil {
			came = c.wait(ctx) || came
			if ctx.Err() != nil {
				return came
			}
			continue
		}
		// The room's extremities are read without the lock: a backfill
		// holding it through a bbolt read made every read near a gap
		// queue behind it (a runtime trace of the mixed benchmark). A
		// call that ends between this read and the lock may be asked
		// again with points it already filled: harmless, its events
		// come back as duplicates.
		all, err := b.extremities(roomID)
		if err != nil {
			return came
		}
		b.mu.Lock()
		if _, ok := b.inflight[roomID]; ok {
			b.mu.Unlock()
			continue
		}
		points := b.points(all, roomID, depth, limit)
		if len(points) == 0 {
			b.mu.Unlock()
			return came
		}
		c := &backfillCall{done: make(chan struct{})}
		b.inflight[roomID] = c
		b.mu.Unlock()
		if points = b.visible(roomID, points); len(points) > 0 {
			c.did = b.fetch(ctx, roomID, points)
		}
		b.mu.Lock()
		delete(b.inflight, roomID)
		b.mu.Unlock()
		close(c.done)
		return c.did || came
	}
}

// call is the room's backfill under way, if any.
func (b *Backfiller) call(roomID string) *backfillCall {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.inflight[roomID]
}

// wait waits for the call to end and reports whether any event came.
func (c *backfillCall) wait(ctx context.Context) bool {
	select {
	case <-c.done:
		return c.did
	case <-ctx.Done():
		return false
	}
}

// extremities are the room's backward extremities above its purge floor,
// each once per depth of an event that names it: Synapse's
// get_backfill_points_in_room joins an extremity with every successor
// (event_edges) and gives a row per successor, at its depth.
func (b *Backfiller) extremities(roomID string) ([]point, error) {
	var all []point
	err := b.Store.View(roomID, func(v *projections.RoomView) error {
		floor := v.Floor()
		for id, d := range v.Extremities(true) {
			if d <= floor {
				continue // never backfill into purged history
			}
			all = append(all, point{id, d})
			for _, sd := range v.SuccessorDepths(id) {
				if sd > floor && sd != d {
					all = append(all, point{id, sd})
				}
			}
		}
		return nil
	})
	return all, err
}

// points chooses the candidates to ask about among all, the room's
// backward extremities (b.mu held): those near depth and not in back-off,
// of the backfillCandidates deepest, in the order Synapse tries them,
// each extremity once; visible then keeps the first 5 our server may see.
// It forgets the back-off of those the room no longer has: their events
// came (Synapse clears a failed pull's attempts when the event is
// persisted), or a purge took them. Only once that back-off has run out:
// all was read before b.mu was taken, and a backfill that ended in
// between may have backed off an extremity all does not hold yet.
func (b *Backfiller) points(all []point, roomID string, depth int64, limit int) []point {
	now := b.Now()
	failed := b.failures[roomID]
	if len(failed) > 0 {
		there := make(map[string]bool, len(all))
		for _, p := range all {
			there[p.id] = true
		}
		for id, st := range failed {
			if !there[id] && !now.Before(st.until) {
				delete(failed, id)
			}
		}
		if len(failed) == 0 {
			delete(b.failures, roomID)
		}
	}
	var near []point
	for _, p := range all {
		// p.depth-backfillLimit cannot overflow (depths are >= 1);
		// depth+backfillLimit did for a read within 100 of 2^63-1.
		if p.depth-backfillLimit > depth {
			continue
		}
		if st, ok := failed[p.id]; ok && now.Before(st.until) {
			continue
		}
		near = append(near, p)
	}
	if len(near) == 0 {
		return nil
	}
	// Synapse's query keeps the backfillCandidates deepest rows (ORDER BY
	// depth DESC, event_id DESC LIMIT 50), then sorts them closest to the
	// requested depth first, then the older one.
	slices.SortFunc(near, func(x, y point) int {
		if x.depth != y.depth {
			return cmp.Compare(y.depth, x.depth)
		}
		return strings.Compare(y.id, x.id)
	})
	near = near[:min(len(near), backfillCandidates)]
	slices.SortStableFunc(near, func(x, y point) int {
		dx, dy := abs(depth-x.depth), abs(depth-y.depth)
		if dx != dy {
			return cmp.Compare(dx, dy)
		}
		return cmp.Compare(x.depth, y.depth)
	})
	if depth-2*int64(limit) > near[0].depth {
		return nil // not close enough yet
	}
	// An extremity named from several depths is asked about once (and
	// checked once: Synapse checks each of its rows against the same
	// successors).
	var out []point
	for _, p := range near {
		if !slices.ContainsFunc(out, func(o point) bool { return o.id == p.id }) {
			out = append(out, p)
		}
	}
	return out
}

// visible keeps the first backfillMaxPoints of the candidates whose
// history our server may see, as _maybe_backfill_inner does with
// filter_events_for_server on each point's successors: for regular
// backward extremities the extremity itself is not held, so the events
// that name it stand for it. A point whose successors are all hidden from
// us is skipped, and the next candidate may take its place; none kept (or
// the store unreadable) means no request. Synapse does not back such a
// point off, and neither does this: a read near it checks it again.
//
// The cost, in its own read transaction, per candidate until 5 are kept:
// a seek in the edges index and a look-up of each successor's position,
// a state seek for the history visibility at each, and under "joined" or
// "invited" one state seek per user of ours that was ever a member of the
// room (RoomView.ServerMember), not a walk of the room's membership.
func (b *Backfiller) visible(roomID string, candidates []point) []point {
	var out []point
	err := b.Store.View(roomID, func(v *projections.RoomView) error {
		for _, p := range candidates {
			if len(out) == backfillMaxPoints {
				break
			}
			if b.seesASuccessor(v, p.id) {
				out = append(out, p)
			}
		}
		return nil
	})
	if err != nil {
		return nil
	}
	return out
}

// seesASuccessor reports whether filter_events_for_server lets our server
// see any of the events that name the extremity id (called, as Synapse
// calls it, without redaction and without the erased-sender and
// partial-state filters): in the state after the event, a history
// visibility that does not restrict servers lets us see it, and "joined"
// or "invited" does through a user of ours joined, or invited under
// "invited" (commands.RestrictsServers, LetsServerSee).
func (b *Backfiller) seesASuccessor(v *projections.RoomView, id string) bool {
	for _, s := range v.Successors(id) {
		vis, _ := v.StateAt("m.room.history_visibility", "", s.Depth, s.Stream)
		if !commands.RestrictsServers(vis.Summary) {
			return true
		}
		lets := func(membership string) bool { return commands.LetsServerSee(vis.Summary, membership) }
		if v.ServerMember(b.ServerName, s.Depth, s.Stream, lets) {
			return true
		}
	}
	return false
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// fetch asks sb.backfill and appends the reply's events.
func (b *Backfiller) fetch(ctx context.Context, roomID string, points []point) bool {
	ctx, cancel := context.WithTimeout(ctx, b.timeout())
	defer cancel()
	ids := make([]any, len(points))
	for i, p := range points {
		ids[i] = p.id
	}
	data, err := b.Req.Request(ctx, b.Subjects.Backfill(), map[string]any{"room_id": roomID, "event_ids": ids, "limit": int64(backfillLimit)})
	var events []any
	if err == nil {
		var m map[string]any
		if m, err = bus.DecodeMap(data, bus.DefaultLimits); err == nil {
			events, _ = m["events"].([]any)
		}
	}
	appended, last, aerr := b.append(ctx, roomID, events)
	if err == nil {
		err = aerr
	}
	if b.Observe != nil && !errors.Is(err, context.Canceled) {
		switch {
		case err != nil:
			b.Observe(BackfillError)
		case appended == 0:
			b.Observe(BackfillEmpty)
		default:
			b.Observe(BackfillEvents)
		}
	}
	if err != nil || appended == 0 {
		b.failed(roomID, points)
		if err != nil && !errors.Is(err, context.Canceled) {
			b.Logger.Debug("backfill gave nothing", "room_id", roomID, "err", err)
		}
		if appended == 0 {
			return false
		}
	}
	if err := b.Waiter.WaitFor(ctx, roomID, last); err != nil {
		return false
	}
	b.unfilled(roomID, points, events)
	return true
}

// unfilled backs off the points whose own event came back in the reply
// and that are still backward extremities once it was applied: dropped as
// a duplicate, or from below a purge cut-off (a kept event may name a
// purged parent from far above the floor, and its depth is not known
// until it comes back). Without this, every read near such a point asked
// for it again. A point the reply did not reach (its limit ran out on
// the way down) is not backed off: the next read near it asks again.
func (b *Backfiller) unfilled(roomID string, points []point, events []any) {
	came := map[string]bool{}
	for _, raw := range events {
		if ev, ok := raw.(map[string]any); ok {
			if id, ok := ev["event_id"].(string); ok {
				came[id] = true
			}
		}
	}
	left, err := b.extremities(roomID)
	if err != nil {
		return
	}
	var still []point
	for _, p := range points {
		if came[p.id] && slices.ContainsFunc(left, func(l point) bool { return l.id == p.id }) {
			still = append(still, p)
		}
	}
	if len(still) > 0 {
		b.failed(roomID, still)
	}
}

// append publishes the reply's events to the room's log as backfilled
// events. Events of another room or that fail validation are skipped; the
// projection drops duplicates and events below a purge cut-off.
func (b *Backfiller) append(ctx context.Context, roomID string, events []any) (int, uint64, error) {
	n := 0
	var last uint64
	for _, raw := range events {
		ev, ok := raw.(map[string]any)
		if !ok {
			continue
		}
		ev["backfilled"] = true
		delete(ev, "outlier")
		if _, err := commands.EventFromMap(ev, roomID); err != nil {
			continue
		}
		data, err := bus.Encode(ev)
		if err != nil {
			continue
		}
		// Its own message ID: a homeserver publishes an event with its
		// event ID as Nats-Msg-Id (CONTRACT.md section 3), and within
		// JetStream's duplicate window the log would take the backfilled
		// copy of an event held as an outlier (a join's parents) for that
		// publish and drop it. Copies of events the timeline holds are
		// the projection's to drop.
		id, _ := ev["event_id"].(string)
		seq, err := b.Log.Append(ctx, b.Subjects.Room(roomID, commands.KindEvent), BackfillMsgID(id), data)
		if err != nil {
			return n, last, fmt.Errorf("append backfilled event: %w", err)
		}
		n++
		// The greatest: an event the log already holds (one the reply
		// repeats, within JetStream's duplicate window) acks with its
		// first sequence, far below the new ones; waiting for the last
		// ack read the page again before the new events were applied.
		last = max(last, seq)
	}
	return n, last, nil
}

// BackfillMsgID is the Nats-Msg-Id of a backfilled event the service
// appends to the log: two backfills that bring the same event within
// JetStream's duplicate window append it once, and no homeserver publish
// of it is taken for it.
//
// An ID with a byte outside printable ASCII goes as backfill~ and its
// unpadded base64url: a header value is trimmed of white space, and its
// CR and LF become spaces, so "$a:x" and "$a:x " had one message ID, and
// JetStream dropped the second event as a duplicate of the first.
func BackfillMsgID(eventID string) string {
	for i := 0; i < len(eventID); i++ {
		if c := eventID[i]; c < 0x21 || c > 0x7e {
			return "backfill~" + base64.RawURLEncoding.EncodeToString([]byte(eventID))
		}
	}
	return "backfill:" + eventID
}

// failed puts the points in exponential back-off: Backoff, doubling up
// to 2^8 times.
func (b *Backfiller) failed(roomID string, points []point) {
	b.mu.Lock()
	defer b.mu.Unlock()
	base := b.Backoff
	if base <= 0 {
		base = time.Hour
	}
	now := b.Now()
	failed := b.failures[roomID]
	if failed == nil {
		failed = map[string]backoffState{}
		b.failures[roomID] = failed
	}
	for _, p := range points {
		st := failed[p.id]
		st.attempts++
		mult := math.Pow(2, float64(min(st.attempts-1, backfillMaxBackoff)))
		// At most maxBackoffWait: a base of years times 2^8 would
		// overflow a Duration into the past.
		st.until = now.Add(time.Duration(min(float64(base)*mult, float64(maxBackoffWait))))
		failed[p.id] = st
	}
}
