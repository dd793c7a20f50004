package handlers_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// This file is a property test of /messages pagination over random
// rooms (USERS.md B3 item 15). The expected pages come from a model
// built from what the test generated and from the specs alone:
// CONTRACT.md section 3 for which events are on the timeline and their
// stream orderings, SYNAPSE.md 1.4 and 2.3-2.6 for bounds, limits and
// end tokens. It never asks the code under test what to expect.

// pgSeeds is how many random rooms to try: a few in CI, more with
// SCROLLBACK_PAGINATE_SEEDS=N when hunting locally. Seeds are fixed, so a
// failure names a seed that reproduces it (-run 'PaginationProperties/seed=7').
func pgSeeds(t *testing.T) int {
	if v := os.Getenv("SCROLLBACK_PAGINATE_SEEDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("SCROLLBACK_PAGINATE_SEEDS=%q, want a positive integer", v)
		}
		return n
	}
	return 6
}

// TestMessages_PaginationProperties: in rooms of forks, repeated depths,
// backfilled history, outliers (some joining the timeline later),
// rejected and soft-failed events, duplicates, state and redactions,
// every walk in either direction, from the default start or from a token
// met on the way, with or without a filter, as an admin or as a joined
// member, gives exactly the model's pages, and so every event the
// timeline shows once, in order, ending with a page without end.
func TestMessages_PaginationProperties(t *testing.T) {
	for seed := uint64(1); seed <= uint64(pgSeeds(t)); seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 0x5c011bac))
			f := newFixture(t)
			m := generateRoom(f, rng, fmt.Sprintf("prop%d", seed))
			readers := []pgReader{{admin: true}, {user: alice}}
			for _, rd := range readers {
				filters := pgFilters
				if !rd.admin {
					// A member sees what an admin sees but soft-failed
					// events: two filters are enough to show it.
					filters = []pgFilter{pgFilters[0], pgFilters[1+rng.IntN(len(pgFilters)-1)]}
				}
				for _, fl := range filters {
					c := &pgCase{f: f, m: m, rng: rng, rd: rd, fl: fl}
					c.check(t)
				}
			}
		})
	}
}

// pgEvent is a generated event as the model knows it.
type pgEvent struct {
	id, typ, sender string
	depth           int64
	stream          int64 // once on the timeline: its log sequence, negated if backfilled
	timeline        bool  // arrived without outlier (perhaps after arriving as one)
	rejected, soft  bool
	redacts         string // for a redaction, its target
}

// key is the event's place in the timeline, as a token at the event.
func (e *pgEvent) key() pgToken { return pgToken{e.depth, e.stream} }

// pgToken is a topological room token t<depth>-<stream>: a position
// compared as the tuple (depth, stream).
type pgToken struct{ depth, stream int64 }

func (k pgToken) String() string { return fmt.Sprintf("t%d-%d", k.depth, k.stream) }

func (k pgToken) less(o pgToken) bool {
	return k.depth < o.depth || k.depth == o.depth && k.stream < o.stream
}

// pgModel is the room as generated: every event by first arrival.
type pgModel struct {
	roomID string
	events []*pgEvent
	byID   map[string]*pgEvent
	logSeq uint64     // the log's last sequence when the reads run
	rows   []*pgEvent // sortRows, once generated
	table  []string
}

// sortRows lists the timeline's events in ascending (depth, stream)
// order: what a page may take, rejected and soft-failed ones included,
// as Synapse's SQL takes them before get_events_as_list and visibility
// drop them (SYNAPSE.md 2.4).
func (m *pgModel) sortRows() []*pgEvent {
	var out []*pgEvent
	for _, e := range m.events {
		if e.timeline {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b *pgEvent) int {
		switch {
		case a.key().less(b.key()):
			return -1
		case b.key().less(a.key()):
			return 1
		}
		return 0
	})
	return out
}

// defaultStart is a backwards read's start without from: the timeline's
// deepest depth and the log's last sequence (CONTRACT.md section 4;
// README: outliers do not count, unlike Synapse).
func (m *pgModel) defaultStart() pgToken {
	var depth int64
	for _, e := range m.events {
		if e.timeline {
			depth = max(depth, e.depth)
		}
	}
	return pgToken{depth, int64(m.logSeq)}
}

// loads says whether Synapse's get_events_as_list gives the timeline
// event e: not when it is rejected, nor when it is a redaction of an
// event the room does not hold (yet) or holds rejected, which it
// withholds (its get_unredacted_events_from_cache_or_db leaves rejected
// events out; CHANGELOG "Redaction events that Synapse withholds").
// Redactions across servers, which it may withhold too, are not
// generated.
func (m *pgModel) loads(e *pgEvent) bool {
	if e.rejected {
		return false
	}
	if e.redacts == "" {
		return true
	}
	target := m.byID[e.redacts]
	return target != nil && !target.rejected
}

// dump is the generated log, for failure messages.
func (m *pgModel) dump() string { return strings.Join(m.table, "\n") }

// pgGen generates a room's log and applies it through the fixture.
type pgGen struct {
	f        *fixture
	rng      *rand.Rand
	r        *testenv.Room
	m        *pgModel
	sent     []testenv.Event // every copy published, for exact duplicates
	outliers []testenv.Event // copies of events still known only as outliers
	late     []pgLate        // targets of redactions, to arrive after them
	lateN    int             // late targets named so far
	maxDepth int64           // the timeline's deepest depth so far
}

// pgLate is an event a redaction named before it arrived.
type pgLate struct{ id, sender string }

var pgSenders = []string{alice, bob, "@carol:test", "@dave:test", "@zed:other.org"}

// generateRoom publishes a setup and 50-80 random events.
func generateRoom(f *fixture, rng *rand.Rand, name string) *pgModel {
	g := &pgGen{f: f, rng: rng, r: testenv.NewRoom(name, "test")}
	g.m = &pgModel{roomID: g.r.ID, byID: map[string]*pgEvent{}}
	// The room starts at depth 10, so that backfilled history can lie
	// below its creation as well as among its events.
	g.r.StartAt(10)
	for _, ev := range g.r.Setup(alice, bob, "@carol:test", "@dave:test") {
		g.publish(ev)
	}
	for range 50 + rng.IntN(31) {
		g.step()
	}
	g.m.logSeq = f.seq
	g.m.rows = g.m.sortRows()
	return g.m
}

// step publishes one random event: mostly new live events, some of them
// forks at a depth already held, and backfilled, outlier, rejoining,
// rejected, soft-failed, duplicate and redaction events.
func (g *pgGen) step() {
	switch n := g.rng.IntN(100); {
	case n < 45:
		g.publish(g.flagged(g.newEvent(g.liveDepth())))
	case n < 60:
		ev := g.flagged(g.newEvent(g.backfillDepth()))
		ev["backfilled"] = true
		g.publish(ev)
	case n < 68:
		ev := g.newEvent(1 + g.rng.Int64N(g.maxDepth+3))
		ev["outlier"] = true
		g.outliers = append(g.outliers, ev)
		g.publish(ev)
	case n < 76 && len(g.outliers) > 0:
		g.publish(g.rejoin())
	case n < 90:
		g.publish(g.duplicate())
	default:
		g.publish(g.redaction())
	}
}

// liveDepth is one past the deepest, or now and then the depth of an
// event already held: a fork, two events at one depth.
func (g *pgGen) liveDepth() int64 {
	if g.rng.IntN(4) == 0 {
		return g.m.events[g.rng.IntN(len(g.m.events))].depth
	}
	return g.maxDepth + 1
}

// backfillDepth is history: often below the room's creation, else
// anywhere among the timeline's depths.
func (g *pgGen) backfillDepth() int64 {
	if g.rng.IntN(2) == 0 {
		return 1 + g.rng.Int64N(12)
	}
	return 1 + g.rng.Int64N(g.maxDepth)
}

// newEvent is a message or state event from a random sender at depth,
// its parents one or two known events above it in the DAG (lower depth).
func (g *pgGen) newEvent(depth int64) testenv.Event {
	sender := pgSenders[g.rng.IntN(len(pgSenders))]
	var ev testenv.Event
	switch g.rng.IntN(6) {
	case 0:
		ev = g.r.Next("m.room.topic", sender, testenv.S(""), map[string]any{"topic": fmt.Sprint(g.rng.IntN(100))})
	case 1:
		ev = g.r.Next("x.state", sender, testenv.S(fmt.Sprint(g.rng.IntN(3))), map[string]any{"v": int64(g.rng.IntN(100))})
	case 2, 3:
		ev = g.r.Next(fmt.Sprintf("x.custom.%d", g.rng.IntN(2)), sender, nil, map[string]any{"n": int64(g.rng.IntN(100))})
	default:
		ev = g.r.Msg(sender, fmt.Sprint(g.rng.IntN(1000)))
	}
	if len(g.late) > 0 && g.rng.IntN(3) == 0 {
		ev["event_id"], ev["sender"] = g.late[0].id, g.late[0].sender
		g.late = g.late[1:]
	}
	ev["depth"] = depth
	ev["prev_events"] = g.parents(depth)
	return ev
}

// parents picks up to two known events shallower than depth.
func (g *pgGen) parents(depth int64) []string {
	var above []string
	for _, e := range g.m.events {
		if e.depth < depth {
			above = append(above, e.id)
		}
	}
	g.rng.Shuffle(len(above), func(i, j int) { above[i], above[j] = above[j], above[i] })
	return above[:min(len(above), 1+g.rng.IntN(2))]
}

// flagged marks a new timeline event rejected or soft-failed now and then.
func (g *pgGen) flagged(ev testenv.Event) testenv.Event {
	switch g.rng.IntN(12) {
	case 0:
		ev["rejected"] = true
	case 1:
		ev["soft_failed"] = true
	}
	return ev
}

// rejoin is an outlier arriving again without outlier, live or
// backfilled, perhaps rejected or soft-failed: it joins the timeline
// with this copy's flags.
func (g *pgGen) rejoin() testenv.Event {
	i := g.rng.IntN(len(g.outliers))
	ev := maps.Clone(g.outliers[i])
	g.outliers = slices.Delete(g.outliers, i, i+1)
	delete(ev, "outlier")
	if g.rng.IntN(2) == 0 {
		ev["backfilled"] = true
	}
	return g.flagged(ev)
}

// duplicate is a copy of an event already published, exactly or marked
// backfilled (history fetched again): its ID is known, so it is ignored,
// even when the first copy was rejected or the original an outlier.
func (g *pgGen) duplicate() testenv.Event {
	ev := maps.Clone(g.sent[g.rng.IntN(len(g.sent))])
	if ev["outlier"] != true && g.rng.IntN(3) == 0 {
		ev["backfilled"] = true
	}
	return ev
}

// redactable are the events a redaction may name: messages and state
// other than the setup's.
func (g *pgGen) redactable() []*pgEvent {
	var out []*pgEvent
	for _, e := range g.m.events {
		if strings.HasPrefix(e.typ, "x.") || e.typ == "m.room.message" || e.typ == "m.room.topic" {
			out = append(out, e)
		}
	}
	return out
}

// redaction is a live redaction of a random earlier message or state
// event (held, an outlier, or rejected), or of one that arrives later
// if at all: it changes what an event shows, never where it sorts. Its
// sender is of its target's server, so that whether it is shown never
// depends on power levels (see loads).
func (g *pgGen) redaction() testenv.Event {
	sender := pgSenders[g.rng.IntN(len(pgSenders))]
	var target string
	if targets := g.redactable(); len(targets) > 0 && g.rng.IntN(4) > 0 {
		t := targets[g.rng.IntN(len(targets))]
		target = t.id
		if !strings.HasSuffix(t.sender, ":test") {
			sender = t.sender
		} else if !strings.HasSuffix(sender, ":test") {
			sender = alice
		}
	} else {
		local, _, _ := strings.Cut(strings.TrimPrefix(g.r.ID, "!"), ":")
		g.lateN++
		target = fmt.Sprintf("$%s.late%d", local, g.lateN)
		g.late = append(g.late, pgLate{target, sender})
	}
	ev := g.r.Next("m.room.redaction", sender, nil, map[string]any{"redacts": target})
	depth := g.liveDepth()
	ev["depth"] = depth
	ev["prev_events"] = g.parents(depth)
	return g.flagged(ev)
}

// publish applies ev as the next log message and checks that the
// projection applied it or ignored it as CONTRACT.md section 3 says: a
// known ID is a duplicate, except an event known only as an outlier
// arriving without outlier, which joins the timeline at this sequence.
func (g *pgGen) publish(ev testenv.Event) {
	g.f.t.Helper()
	seq := g.f.seq + 1
	stream := int64(seq)
	if ev["backfilled"] == true {
		stream = -stream
	}
	onTimeline := ev["outlier"] != true
	e := g.m.byID[ev.ID()]
	want := projections.OutcomeApplied
	switch {
	case e == nil:
		e = &pgEvent{id: ev.ID(), typ: ev["type"].(string), sender: ev["sender"].(string), depth: ev["depth"].(int64)}
		e.redacts, _ = ev["redacts"].(string)
		g.m.events = append(g.m.events, e)
		g.m.byID[e.id] = e
	case e.timeline || !onTimeline:
		want = projections.OutcomeDuplicate
	}
	if want == projections.OutcomeApplied && onTimeline {
		e.timeline, e.stream = true, stream
		e.rejected, e.soft = ev["rejected"] == true, ev["soft_failed"] == true
		g.maxDepth = max(g.maxDepth, e.depth)
	}
	g.sent = append(g.sent, ev)
	var flags []string
	for _, k := range []string{"backfilled", "outlier", "rejected", "soft_failed"} {
		if ev[k] == true {
			flags = append(flags, k)
		}
	}
	if target, ok := ev["redacts"].(string); ok {
		flags = append(flags, "redacts "+target)
	}
	g.m.table = append(g.m.table, fmt.Sprintf("  seq %3d %-14s depth %3d %-19s %-14s %v -> %s", seq, ev.ID(), ev["depth"], ev["type"], ev["sender"], flags, want))
	if got := g.f.applyOutcome(ev).Result; got != want {
		g.f.t.Fatalf("applying %s (seq %d, %v): %s, want %s\nlog:\n%s", ev.ID(), seq, flags, got, want, g.m.dump())
	}
}

// pgFilter is a RoomEventFilter of types, not_types and senders. A nil
// list is absent; an empty one is sent as [].
type pgFilter struct {
	types, notTypes, senders []string
}

// pgFilters are the filters tried: none first, then prefix and exact
// types, exclusions, senders, the empty lists that keep nothing, and
// types entries whose SQL LIKE and Python checks disagree (SYNAPSE.md
// 1.2).
var pgFilters = []pgFilter{
	{},
	{types: []string{"x.custom.*"}},
	{types: []string{"m.room.message", "m.room.topic"}},
	{notTypes: []string{"m.room.message", "x.state"}},
	{senders: []string{bob, "@zed:other.org"}},
	{senders: []string{"@carol:test"}, notTypes: []string{"x.custom.*"}},
	{types: []string{}},
	{senders: []string{}, types: []string{"m.room.message"}},
	{types: []string{"x_custom*", "m.room.*age"}, senders: []string{alice, "@dave:test"}}, // LIKE takes, the check drops
	{notTypes: []string{"x.*.1", "m.room.t_pic"}},                                         // a middle * excludes; _ without * is literal
}

// asRequest is the filter as a request's value; nil for no filter.
func (fl pgFilter) asRequest() map[string]any {
	out := map[string]any{}
	for k, list := range map[string][]string{"types": fl.types, "not_types": fl.notTypes, "senders": fl.senders} {
		if list != nil {
			vals := make([]any, len(list))
			for i, s := range list {
				vals[i] = s
			}
			out[k] = vals
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func (fl pgFilter) String() string {
	return fmt.Sprintf("types=%q not_types=%q senders=%q", fl.types, fl.notTypes, fl.senders)
}

// pgMatchType is Synapse's _matches_wildcard: a trailing * matches a
// prefix, anything else the exact type.
func pgMatchType(typ string, patterns []string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool {
		if prefix, ok := strings.CutSuffix(p, "*"); ok {
			return strings.HasPrefix(typ, prefix)
		}
		return typ == p
	})
}

// pgSQLType is the SQL part's type clause: an entry with a '*' is a LIKE
// pattern with '*' as '%' ('_' is a wildcard too), any other entry the
// exact type.
func pgSQLType(typ string, entries []string) bool {
	return slices.ContainsFunc(entries, func(entry string) bool {
		if !strings.Contains(entry, "*") {
			return typ == entry
		}
		return pgLike(entry).MatchString(typ)
	})
}

var pgLikes sync.Map // entry -> *regexp.Regexp

// pgLike is the LIKE pattern entry as a regular expression.
func pgLike(entry string) *regexp.Regexp {
	if re, ok := pgLikes.Load(entry); ok {
		return re.(*regexp.Regexp)
	}
	var b strings.Builder
	for _, r := range entry {
		switch r {
		case '*', '%':
			b.WriteString(".*")
		case '_':
			b.WriteString(".")
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	re := regexp.MustCompile("^" + b.String() + "$")
	pgLikes.Store(entry, re)
	return re
}

// before is the SQL part, applied before the limit: an empty list adds
// no clause.
func (fl pgFilter) before(e *pgEvent) bool {
	return !pgSQLType(e.typ, fl.notTypes) &&
		(len(fl.types) == 0 || pgSQLType(e.typ, fl.types)) &&
		(len(fl.senders) == 0 || slices.Contains(fl.senders, e.sender))
}

// after is Filter.filter, applied after the limit: a list that is
// present and empty keeps nothing.
func (fl pgFilter) after(e *pgEvent) bool {
	return !pgMatchType(e.typ, fl.notTypes) &&
		(fl.types == nil || pgMatchType(e.typ, fl.types)) &&
		(fl.senders == nil || slices.Contains(fl.senders, e.sender))
}

// pgReader reads as an admin (no visibility rules) or as a joined member.
type pgReader struct {
	admin bool
	user  string
}

// shows says whether a page that took e shows it to the reader: what
// get_events_as_list gives (loads), a soft-failed event to admins only
// (CONTRACT.md section 3; SYNAPSE.md section 8). Visibility drops
// nothing else here: the room's history is shared and the member stays
// joined.
func (rd pgReader) shows(m *pgModel, e *pgEvent) bool {
	return m.loads(e) && (!e.soft || rd.admin)
}

// pgCase is one reader and one filter over one generated room.
type pgCase struct {
	f   *fixture
	m   *pgModel
	rng *rand.Rand
	rd  pgReader
	fl  pgFilter
}

// pgFrom is where a read starts: a token, or no from (the default
// start: for dir=b tok, the model's defaultStart; for dir=f before
// everything).
type pgFrom struct {
	tok   pgToken
	given bool
	live  bool // a live token s<tok.stream>, as /sync hands out
}

// admits says whether a page from here may take e (SYNAPSE.md 2.3): dir=b
// takes what is at or before from, dir=f what is after it; a topological
// token compares (depth, stream), a live one stream alone; dir=f without
// from takes everything, backfilled events included (CONTRACT.md
// section 7).
func (f pgFrom) admits(back bool, e *pgEvent) bool {
	switch {
	case f.live && back:
		return e.stream <= f.tok.stream
	case f.live:
		return e.stream > f.tok.stream
	case back:
		return !f.tok.less(e.key())
	}
	return !f.given || f.tok.less(e.key())
}

// pgWant is the page the model expects.
type pgWant struct {
	ids    []string
	start  string
	end    string
	hasEnd bool
	next   pgFrom // where the walk goes on: end's position
}

// expect is the page of limit rows from `from`, bounded by to if not nil
// (SYNAPSE.md 1.4 steps 5-10, 2.3, 2.4, 2.6): backwards the rows at or
// before from and after to, newest first; forwards the rows after from
// and at or before to, oldest first; rows that pass the filter's SQL
// part count toward the limit whether or not they are then shown. end
// follows the last row taken (dir=b just before it, dir=f at it); with no
// row it is to, else from, when the page was limited (limit 0). There is
// no end when the page was not limited and get_events_as_list gave no
// event: its rows, if any, were all rejected or withheld redactions
// (step 8, where Synapse's events are those get_events_as_list gave);
// nor when to is not past from by stream orderings alone (2.4's early
// bail).
func (c *pgCase) expect(back bool, from pgFrom, to *pgToken, limit int) pgWant {
	w := pgWant{start: from.token(back) + zeros, next: from}
	if to != nil && from.bails(back, *to) {
		return w
	}
	var cands []*pgEvent
	for _, e := range c.m.rows {
		if c.fl.before(e) && from.admits(back, e) && (to == nil || back == to.less(e.key())) {
			cands = append(cands, e)
		}
	}
	if back {
		slices.Reverse(cands)
	}
	taken := cands[:min(limit, len(cands))]
	limited := limit == 0 || len(cands) > limit
	loaded := slices.ContainsFunc(taken, func(e *pgEvent) bool { return c.m.loads(e) })
	switch {
	case !limited && !loaded:
		// The end of the timeline.
	case len(taken) > 0:
		last := taken[len(taken)-1].key()
		if back {
			last.stream--
		}
		w.end, w.hasEnd, w.next = last.String()+zeros, true, pgFrom{tok: last, given: true}
	case to != nil:
		w.end, w.hasEnd = to.String()+zeros, true
	default:
		w.end, w.hasEnd = w.start, true
	}
	for _, e := range taken {
		if c.rd.shows(c.m, e) && c.fl.after(e) {
			w.ids = append(w.ids, e.id)
		}
	}
	return w
}

// visible is every event a whole walk from `from` should give, in walk
// order: the shown events past from that pass both parts of the filter.
func (c *pgCase) visible(back bool, from pgFrom) []string {
	var out []string
	for _, e := range c.m.rows {
		if !c.rd.shows(c.m, e) || !c.fl.before(e) || !c.fl.after(e) {
			continue
		}
		if from.admits(back, e) {
			out = append(out, e.id)
		}
	}
	if back {
		slices.Reverse(out)
	}
	return out
}

// check walks both ways from the default starts; then both ways from a
// token met on each of those walks, which must split the timeline there,
// the older part backwards and the newer forwards, nothing twice or
// missed (SYNAPSE.md 2.5); then both ways from a live token, and both
// ways between two tokens met, with to.
func (c *pgCase) check(t *testing.T) {
	t.Helper()
	all := c.visible(false, pgFrom{})
	_, backTokens := c.walk(t, true, pgFrom{tok: c.m.defaultStart()}, nil)
	_, fwdTokens := c.walk(t, false, pgFrom{}, nil)
	for _, tokens := range [][]pgToken{backTokens, fwdTokens} {
		if len(tokens) == 0 {
			continue
		}
		from := pgFrom{tok: tokens[c.rng.IntN(len(tokens))], given: true}
		older, _ := c.walk(t, true, from, nil)
		newer, _ := c.walk(t, false, from, nil)
		if split := append(rev(older), newer...); !slices.Equal(split, all) {
			t.Fatalf("%s: split at %v:\n older %v\n newer %v\n want  %v in all", c.name(), from, older, newer, all)
		}
	}
	live := pgFrom{tok: pgToken{stream: c.rng.Int64N(int64(c.m.logSeq) + 1)}, given: true, live: true}
	c.walk(t, true, live, nil)
	c.walk(t, false, live, nil)
	if tokens := slices.Concat(backTokens, fwdTokens); len(tokens) > 0 {
		lo, hi := tokens[c.rng.IntN(len(tokens))], tokens[c.rng.IntN(len(tokens))]
		if hi.less(lo) {
			lo, hi = hi, lo
		}
		c.walk(t, true, pgFrom{tok: hi, given: true}, &lo)
		c.walk(t, false, pgFrom{tok: lo, given: true}, &hi)
	}
}

// walk pages from first, up to to if not nil, with random limits until
// a reply has no end, checking every page against expect, and the whole
// walk against visible (from a live token, whose first page alone
// compares stream orderings, or up to to, where a page may bail out
// early, only that it gives no event twice). One request in a walk may
// ask limit 0, which must answer an empty page whose end is its start
// (or to); the walk goes on from its from, not from that end: without
// from, dir=f's end is s0, which as an explicit token compares stream
// orderings and so leaves backfilled events out (CONTRACT.md section 7).
// It returns the events the walk gave and the positions of the ends it
// met.
func (c *pgCase) walk(t *testing.T, back bool, first pgFrom, to *pgToken) ([]string, []pgToken) {
	t.Helper()
	dir := map[bool]string{true: "b", false: "f"}[back]
	// Every page with an end takes at least one row, so a walk has at
	// most a page a row, the limit 0 page and the last page.
	bound := len(c.m.rows) + 2
	zeroAsked := false
	from := first
	var got []string
	var tokens []pgToken
	for pages := 0; ; pages++ {
		if pages == bound {
			t.Fatalf("%s: dir=%s from %v: no page without end after %d pages\nlog:\n%s", c.name(), dir, first, pages, c.m.dump())
		}
		limit := 1 + c.rng.IntN(7)
		if !zeroAsked && c.rng.IntN(8) == 0 {
			limit, zeroAsked = 0, true
		}
		req := c.request(dir, from, to, limit)
		p := c.f.mustRead(c.m.roomID, req)
		want := c.expect(back, from, to, limit)
		if !slices.Equal(p.ids, want.ids) || p.start != want.start || p.hasEnd != want.hasEnd || p.end != want.end {
			t.Fatalf("%s: page %d of a walk from %v, request %v:\n got  chunk %v start %q end %q (%v)\n want chunk %v start %q end %q (%v)\nlog:\n%s",
				c.name(), pages, first, req, p.ids, p.start, p.end, p.hasEnd, want.ids, want.start, want.end, want.hasEnd, c.m.dump())
		}
		got = append(got, p.ids...)
		if !p.hasEnd {
			break
		}
		from = want.next
		if from.given {
			tokens = append(tokens, from.tok)
		}
	}
	if first.live || to != nil {
		if sorted := slices.Sorted(slices.Values(got)); len(slices.Compact(sorted)) != len(got) {
			t.Fatalf("%s: walk dir=%s from %v gave an event twice: %v\nlog:\n%s", c.name(), dir, first, got, c.m.dump())
		}
	} else if want := c.visible(back, first); !slices.Equal(got, want) {
		t.Fatalf("%s: walk dir=%s from %v:\n got  %v\n want %v\nlog:\n%s", c.name(), dir, first, got, want, c.m.dump())
	}
	return got, tokens
}

// request is a read's request map.
func (c *pgCase) request(dir string, from pgFrom, to *pgToken, limit int) map[string]any {
	req := map[string]any{"dir": dir, "limit": limit}
	if c.rd.admin {
		req["admin"] = true
	} else {
		req["user_id"] = c.rd.user
	}
	if from.given {
		req["from"] = from.token(dir == "b")
	}
	if to != nil {
		req["to"] = to.String()
	}
	if fl := c.fl.asRequest(); fl != nil {
		req["filter"] = fl
	}
	return req
}

// bails is 2.4's early bail: is_before_or_eq compares the stream parts
// of from (its default included) and to alone, not their depths.
func (f pgFrom) bails(back bool, to pgToken) bool {
	stream := f.tok.stream // the default dir=b start's stream is the log's
	if !f.given && !back {
		stream = 0 // s0
	}
	if back {
		return stream <= to.stream
	}
	return to.stream <= stream
}

// token is the room token a read from here sends as from, or answers as
// start without one.
func (f pgFrom) token(back bool) string {
	if f.live || !f.given && !back {
		return fmt.Sprintf("s%d", f.tok.stream)
	}
	return f.tok.String()
}

func (f pgFrom) String() string {
	if !f.given {
		return "the default start"
	}
	return f.token(true)
}

// name names the case in failure messages.
func (c *pgCase) name() string {
	who := "admin"
	if !c.rd.admin {
		who = c.rd.user
	}
	return fmt.Sprintf("%s, filter %v", who, c.fl)
}
