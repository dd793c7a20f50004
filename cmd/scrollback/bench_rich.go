package main

// The rich scenario of `scrollback bench` (issue 3): reads of a room that
// looks like a busy public room rather than a quiet one. The room has
// --members members, all joined at the start, and --events events; its
// messages come from members drawn at random, about every tenth event is a
// thread reply to a recent thread root, and about every tenth an edit
// (m.replace) of a recent message by the message's own sender.
//
// The same read is measured twice, in turns like the reads scenario's
// phases, next to the floor: plain, {user_id, dir: "b", limit, from}, and
// with filter {lazy_load_members: true}. Bundled aggregations are always
// on, so both reads bundle the threads and edits of their page; the lazy
// read also returns the member event of every sender on the page.

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"path/filepath"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/scrollback/scrollback/bus"
)

// Goals of the rich reads. Issue 3: a read with lazy_load_members (and
// bundled aggregations) has a p99 at most twice the plain read's on the
// same room. DESIGN.md ("Benchmark protocol"): plain reads at most 3x the
// floor's p99 (goalP99Ratio), reads with lazy members and bundles 6x.
const (
	goalRichP99Ratio      = 2.0
	goalLazyFloorP99Ratio = 6.0
)

// Shape of the rich room.
const (
	// richEvery: of every richEvery messages one is a thread reply and one
	// an edit.
	richEvery = 10
	// richRecent is how far back (in plain messages) thread roots and
	// edited messages are picked.
	richRecent = 50
)

// richResults are the measurements of the rich scenario.
type richResults struct {
	Events, Members int
	Replies, Edits  int
	// Senders is the average number of distinct senders per --limit
	// consecutive events: the member events a lazy read returns.
	Senders            float64
	Load               loaded
	floor, plain, lazy loadPair
}

// newRichRoom builds the rich room: the set-up with members members, then
// messages up to n events. Every richEvery-th message (from the fourth) is
// a thread reply to one of the last richRecent plain messages, from a
// random member; every richEvery-th (from the eighth) is an edit of one of
// the last richRecent plain messages by its sender; the others are plain
// text messages from a random member. The draw is seeded: every run builds
// the same room. It records the room's shape in res (Replies, Edits,
// Senders).
func newRichRoom(roomID string, n, members int, res *richResults) *benchRoom {
	users := make([]string, members)
	for i := range users {
		users[i] = benchUser(i)
	}
	evs := setupEvents(users)
	rng := mrand.New(mrand.NewPCG(3, 10))
	type recent struct{ id, sender string }
	var plain []recent // the last richRecent plain messages
	for i := len(evs); i < n; i++ {
		j := i - len(users) - 4 // position among the messages
		var ev map[string]any
		switch {
		case j%richEvery == 3 && len(plain) > 0:
			root := plain[rng.IntN(len(plain))]
			ev = textMessage(users[rng.IntN(members)], i)
			ev["content"].(map[string]any)["m.relates_to"] = map[string]any{"rel_type": "m.thread", "event_id": root.id}
			res.Replies++
		case j%richEvery == 7 && len(plain) > 0:
			orig := plain[rng.IntN(len(plain))]
			ev = textMessage(orig.sender, i)
			content := ev["content"].(map[string]any)
			content["m.new_content"] = map[string]any{"msgtype": "m.text", "body": content["body"]}
			content["body"] = "* " + content["body"].(string)
			content["m.relates_to"] = map[string]any{"rel_type": "m.replace", "event_id": orig.id}
			res.Edits++
		default:
			ev = textMessage(users[rng.IntN(members)], i)
			plain = append(plain, recent{benchEventID(roomID, i), ev["sender"].(string)})
			if len(plain) > richRecent {
				plain = plain[1:]
			}
		}
		evs = append(evs, ev)
	}
	res.Senders = distinctSenders(evs[len(users)+4:], 50)
	return encodeRoom(roomID, users, evs)
}

// distinctSenders is the average number of distinct senders in runs of
// per consecutive events.
func distinctSenders(evs []map[string]any, per int) float64 {
	runs, total := 0, 0
	for lo := 0; lo+per <= len(evs); lo += per {
		seen := map[any]bool{}
		for _, ev := range evs[lo : lo+per] {
			seen[ev["sender"]] = true
		}
		runs++
		total += len(seen)
	}
	if runs == 0 {
		return 0
	}
	return float64(total) / float64(runs)
}

// richScenario loads the rich room into a service of its own and measures
// the floor, the plain read and the lazy read in turns (compare).
func (b *bench) richScenario(ctx context.Context) error {
	c := b.cfg
	res := &richResults{Events: c.Events, Members: c.Members}
	b.res.rich = res
	b.printf("\n== rich: a room of %d events, %d members (joined at the start), thread replies and edits; /messages dir=b limit=%d plain and with lazy_load_members, in turns ==\n",
		c.Events, c.Members, c.Limit)
	room := newRichRoom("!rich:"+benchServerName, c.Events, c.Members, res)

	m, err := b.openBenchService(ctx, filepath.Join(b.dir, "rich"))
	if err != nil {
		return err
	}
	closeM := sync.OnceValue(m.Close)
	defer closeM()
	subjects := bus.Subjects{Prefix: m.Config.NATS.SubjectPrefix}
	msgs := room.Msgs(subjects)
	if res.Load, err = loadRoom(ctx, m, room.ID, len(msgs), func(i int) *nats.Msg { return msgs[i] }); err != nil {
		return err
	}
	b.printf("rich room: %d joins, %d thread replies, %d edits, %d other messages; senders uniform over the members, %.1f distinct senders per 50 events on average\n",
		c.Members, res.Replies, res.Edits, c.Events-c.Members-4-res.Replies-res.Edits, res.Senders)
	b.printf("rich room loaded: %s\n", res.Load)

	nc, err := bus.ConnectInProcess(m.NATSServer, "bench-client")
	if err != nil {
		return err
	}
	defer nc.Close()
	t, err := collectTokens(ctx, nc, subjects, room, c.Limit)
	if err != nil {
		return err
	}
	b.printf("start points: %d (the newest page, then every %d events down to %d events from the bottom)\n", len(t.tokens), tokenPage, c.Limit)
	fl, err := openFloor(ctx, filepath.Join(b.dir, "rich-floor.db"), m.NATSServer, room)
	if err != nil {
		return err
	}
	defer fl.Close()

	subject := subjects.APIRoom(room.ID, "messages")
	plainReqs, err := t.requests(room.Reader(), c.Limit, nil)
	if err != nil {
		return err
	}
	lazyReqs, err := t.requests(room.Reader(), c.Limit, map[string]any{"filter": map[string]any{"lazy_load_members": true}})
	if err != nil {
		return err
	}
	if err := b.checkLazy(ctx, nc, subject, lazyReqs); err != nil {
		return err
	}
	lazy := namedTarget{"rich: lazy_load_members", natsTarget(nc, subject, lazyReqs)}
	pairs, err := b.compare(ctx,
		namedTarget{"rich: floor nats scan", natsTarget(nc, floorScanSubject, t.floorRequests(c.Limit))},
		namedTarget{"rich: plain /messages", natsTarget(nc, subject, plainReqs)},
		lazy)
	if err != nil {
		return err
	}
	res.floor, res.plain, res.lazy = pairs[0], pairs[1], pairs[2]
	if err := b.profileRun(ctx, lazy); err != nil {
		return err
	}
	if err := closeM(); err != nil {
		return fmt.Errorf("bench: close service: %w", err)
	}
	return nil
}

// checkLazy reads the pages of the first start points once with
// lazy_load_members and reports how many member events their state holds,
// so that the measured read is known to do the work it is meant to.
func (b *bench) checkLazy(ctx context.Context, nc *nats.Conn, subject string, reqs [][]byte) error {
	req := &bus.Requester{NC: nc, Timeout: benchRequestTimeout}
	pages, members, bundled := 0, 0, 0
	for _, data := range reqs[:min(len(reqs), 20)] {
		reply, err := req.RequestRaw(ctx, subject, data)
		if err != nil {
			return fmt.Errorf("bench: lazy read: %w", err)
		}
		page, err := bus.DecodeMap(reply, bus.DefaultLimits)
		if err != nil {
			return fmt.Errorf("bench: lazy read: %w", err)
		}
		state, _ := page["state"].([]any)
		chunk, _ := page["chunk"].([]any)
		for _, e := range chunk {
			ev, _ := e.(map[string]any)
			unsigned, _ := ev["unsigned"].(map[string]any)
			if _, ok := unsigned["m.relations"]; ok {
				bundled++
			}
		}
		pages++
		members += len(state)
	}
	if members == 0 {
		return fmt.Errorf("bench: reads with lazy_load_members returned no member events")
	}
	b.printf("lazy_load_members pages: %.1f member events in state and %.1f events with bundled aggregations per page (first %d start points)\n",
		float64(members)/float64(pages), float64(bundled)/float64(pages), pages)
	return nil
}

func (b *bench) richSummary(t summaryTable) {
	r := b.res.rich
	t.section(fmt.Sprintf("rich: %d events, %d members, %d thread replies, %d edits; ratio = lazy_load_members / plain, or / floor", r.Events, r.Members, r.Replies, r.Edits),
		"metric", "value", "vs", "ratio", "goal", "result")
	t.latRow("NATS lazy_load_members vs plain p50, 1 client", r.lazy.Lat.Pct(50), r.plain.Lat.Pct(50), 0)
	t.latRow("NATS lazy_load_members vs plain p99, 1 client", r.lazy.Lat.Pct(99), r.plain.Lat.Pct(99), goalRichP99Ratio)
	t.thrRow(fmt.Sprintf("NATS lazy_load_members vs plain throughput, %d clients (req/s)", r.lazy.Thr.Clients), r.lazy.Thr.PerSec(), r.plain.Thr.PerSec(), 0)
	t.latRow("NATS plain vs floor p99, 1 client", r.plain.Lat.Pct(99), r.floor.Lat.Pct(99), goalP99Ratio)
	t.latRow("NATS lazy_load_members vs floor p99, 1 client", r.lazy.Lat.Pct(99), r.floor.Lat.Pct(99), goalLazyFloorP99Ratio)
	t.thrRow(fmt.Sprintf("NATS plain vs floor throughput, %d clients (req/s)", r.plain.Thr.Clients), r.plain.Thr.PerSec(), r.floor.Thr.PerSec(), 0)
	t.thrRow(fmt.Sprintf("NATS lazy_load_members vs floor throughput, %d clients (req/s)", r.lazy.Thr.Clients), r.lazy.Thr.PerSec(), r.floor.Thr.PerSec(), 0)
	t.line("rich reads: {user_id, dir: b, limit: %d, from} with and without filter {lazy_load_members: true}; bundled aggregations always on", b.cfg.Limit)
}
