package handlers

import (
	"context"
	"fmt"
	"strings"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
)

// EventLog reads events' messages from the room log as the homeserver
// published them (bus.Log.EventMessages): out[i] is the message at
// seqs[i], nil if the log no longer holds it.
type EventLog interface {
	EventMessages(ctx context.Context, roomID string, seqs []uint64) ([][]byte, error)
}

// The federation format (SYNAPSE.md 1.1 step 4: ?raw, or a filter's
// event_format "federation") is Synapse's serialize_event without the
// client format's transform: the PDU as stored (pruned if redacted),
// with event_id, the computed unsigned and the redacts copy, and the
// events inside it (redacted_because, the bundled m.replace and thread's
// latest_event) in the same format.
//
// The projection keeps only what the client format needs: the PDU's
// auth_events, hashes, signatures, origin and prev_state are in the log.
// A page in the federation format is therefore built in the client
// format in its read transaction, and turned into the federation format
// after it, with each event's message read from the log (fedPage.turn):
// network round trips do not hold bbolt's read transaction open, which
// would keep the writer from growing the file. Keeping those fields in
// every row instead would cost each event a few hundred bytes of
// projection for a format few clients ask for.

// fedSource is where the federation format finds an event that the
// client encoder wrote.
type fedSource struct {
	seq      uint64 // its message in the log: the row's stream ordering, without sign
	redacted bool   // shown pruned
}

// fedPage is what a page in the federation format takes out of its read
// transaction.
type fedPage struct {
	events    map[string]fedSource
	version   string
	from      commands.StreamToken
	backwards bool
	chunk     []rowPos // the chunk's events, in order, for end if the page must shrink
	maxReply  int

	// Set by turn: where the messages come from, and those read for the
	// events being turned (a window of fedWindow events of a list, and
	// the events inside them); nil for one the log no longer holds.
	log    EventLog
	roomID string
	msgs   map[uint64][]byte
}

// fedWindow is how many events of a list turn reads the messages of in
// one EventLog.EventMessages (one stream look-up, a few reads at once):
// one read an event, a page of 1000 took 150 ms on the embedded
// server, against 2-8 ms in the client format; all of a page at once,
// it would hold every event's message though the reply bound may keep
// only a few of them.
const fedWindow = 64

// rowPos is a row's position.
type rowPos struct{ depth, stream int64 }

// logOnlyKeys are an event message's keys that are the contract's, not
// the PDU's (CONTRACT.md section 3): never shown.
var logOnlyKeys = map[string]bool{"received_ts": true, "backfilled": true, "outlier": true, "rejected": true, "soft_failed": true}

// note records that the client encoder wrote r. The ID is copied: a
// row's strings alias the read transaction's memory, and the page is
// turned after the transaction (see doc.go).
func (f *fedPage) note(r *projections.Row, redacted bool) {
	seq := r.Stream
	if seq < 0 {
		seq = -seq
	}
	f.events[strings.Clone(r.EventID)] = fedSource{seq: uint64(seq), redacted: redacted}
}

// turn rewrites a reply in the client format (finishReply) into the
// federation format. An event whose message the log no longer holds (a
// purge erased it after the read transaction) is left out of the page.
// A page that grows past the reply bound ends at the last whole event
// that fits, as in the client format; the lazy-loaded members (state)
// count in its size, and are those of the senders of the events it
// keeps (SYNAPSE.md 5), as a page that ended there would have had.
func (f *fedPage) turn(ctx context.Context, log EventLog, roomID string, reply []byte) ([]byte, error) {
	f.log, f.roomID = log, roomID
	m, err := bus.DecodeMap(reply, replyLimits(len(reply)))
	if err != nil {
		return nil, fmt.Errorf("federation format: decoding the page: %w", err)
	}
	// The members first: each one's size counts once the chunk keeps an
	// event of its user.
	state, withState := m["state"].([]any)
	members := map[string]int{}
	if withState {
		state, err = f.list(ctx, state, func(_ int, ev map[string]any, size int) bool {
			if k, ok := ev["state_key"].(string); ok {
				members[k] = size
			}
			return true
		})
		if err != nil {
			return nil, err
		}
	}
	chunk, _ := m["chunk"].([]any)
	senders := map[string]bool{}
	var last *rowPos
	sizes := 0
	kept, err := f.list(ctx, chunk, func(i int, ev map[string]any, size int) bool {
		sender, _ := ev["sender"].(string)
		if !senders[sender] {
			size += members[sender]
		}
		if last != nil && sizes+size > f.maxReply-replyMargin {
			m["end"] = f.from.WithRoom(projections.NextToken(last.depth, last.stream, f.backwards)).String()
			return false
		}
		sizes += size
		senders[sender] = true
		last = &f.chunk[i]
		return true
	})
	if err != nil {
		return nil, err
	}
	m["chunk"] = kept
	if withState {
		out := state[:0]
		for _, v := range state {
			ev, _ := v.(map[string]any)
			if k, _ := ev["state_key"].(string); senders[k] {
				out = append(out, v)
			}
		}
		if len(out) > 0 {
			m["state"] = out
		} else {
			delete(m, "state")
		}
	}
	if gaps, ok := m[gapsKey].([]any); ok {
		m[gapsKey] = keepGaps(gaps, kept)
	}
	return bus.Encode(m)
}

// list turns the client events of list into the federation format, in
// windows of fedWindow, and gives each (with its index in list and its
// encoded size) to keep, until keep refuses one; the events whose
// messages are gone are left out.
func (f *fedPage) list(ctx context.Context, list []any, keep func(i int, ev map[string]any, size int) bool) ([]any, error) {
	out := make([]any, 0, len(list))
	for start := 0; start < len(list); start += fedWindow {
		win := list[start:min(start+fedWindow, len(list))]
		if err := f.read(ctx, win); err != nil {
			return nil, err
		}
		for k, v := range win {
			ev, ok, err := f.event(ctx, v)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
			b, err := bus.Encode(ev)
			if err != nil {
				return nil, err
			}
			if !keep(start+k, ev, len(b)) {
				return out, nil
			}
			out = append(out, ev)
		}
	}
	return out, nil
}

// read reads the messages of the client events of list and of the events
// inside them (as event turns them), in place of the last ones read.
func (f *fedPage) read(ctx context.Context, list []any) error {
	f.msgs = map[uint64][]byte{}
	var seqs []uint64
	seen := map[uint64]bool{}
	for _, v := range list {
		walkEvents(v, func(id string) {
			if src, ok := f.events[id]; ok && !seen[src.seq] {
				seen[src.seq] = true
				seqs = append(seqs, src.seq)
			}
		})
	}
	data, err := f.log.EventMessages(ctx, f.roomID, seqs)
	if err != nil {
		return fmt.Errorf("federation format: %w", err)
	}
	for i, seq := range seqs {
		f.msgs[seq] = data[i]
	}
	return nil
}

// walkEvents calls fn with the ID of the client event v and of each event
// inside it that event turns: redacted_because, the bundled edit, the
// thread's latest event.
func walkEvents(v any, fn func(id string)) {
	ev, _ := v.(map[string]any)
	if ev == nil {
		return
	}
	if id, ok := ev["event_id"].(string); ok {
		fn(id)
	}
	un, _ := ev["unsigned"].(map[string]any)
	walkEvents(un["redacted_because"], fn)
	if rel, ok := un["m.relations"].(map[string]any); ok {
		walkEvents(rel[commands.RelReplace], fn)
		if th, ok := rel[commands.RelThread].(map[string]any); ok {
			walkEvents(th["latest_event"], fn)
		}
	}
}

// keepGaps is the gaps of the events a page kept.
func keepGaps(gaps, chunk []any) []any {
	ids := map[any]bool{}
	for _, v := range chunk {
		if ev, ok := v.(map[string]any); ok {
			ids[ev["event_id"]] = true
		}
	}
	out := gaps[:0]
	for _, g := range gaps {
		if gm, ok := g.(map[string]any); ok && ids[gm["event_id"]] {
			out = append(out, g)
		}
	}
	return out
}

// replyLimits decode one of the service's own replies of n bytes: the
// events in it were bounded when they were published.
func replyLimits(n int) bus.Limits {
	return bus.Limits{MaxBytes: n, MaxDepth: 2 * bus.DefaultLimits.MaxDepth, MaxElements: n}
}

// event turns one client event (a map of the reply) into the federation
// format; ok is false if its message is gone from the log.
func (f *fedPage) event(ctx context.Context, v any) (map[string]any, bool, error) {
	ev, _ := v.(map[string]any)
	id, _ := ev["event_id"].(string)
	src, ok := f.events[id]
	if !ok {
		return nil, false, fmt.Errorf("federation format: event %q of the page was not noted", id)
	}
	data, ok := f.msgs[src.seq]
	if !ok { // not read with its window (read walks as event does)
		all, err := f.log.EventMessages(ctx, f.roomID, []uint64{src.seq})
		if err != nil {
			return nil, false, fmt.Errorf("federation format: %w", err)
		}
		data = all[0]
		f.msgs[src.seq] = data
	}
	if data == nil {
		return nil, false, nil
	}
	msg, err := bus.DecodeMap(data, bus.DefaultLimits)
	if err != nil {
		return nil, false, fmt.Errorf("federation format: event %s: %w", id, err)
	}
	out := make(map[string]any, len(msg)+1)
	for k, val := range msg {
		switch {
		case logOnlyKeys[k], k == "unsigned", k == "content", k == "redacts":
		case src.redacted && !commands.KeepsTopLevelKey(f.version, k):
		default:
			out[k] = val
		}
	}
	out["event_id"] = id
	out["content"] = ev["content"]
	if r, ok := ev["redacts"]; ok {
		out["redacts"] = r // where the client encoder put it: the same rules
	}
	un, _ := ev["unsigned"].(map[string]any)
	if err := f.nested(ctx, un, "redacted_because"); err != nil {
		return nil, false, err
	}
	if rel, ok := un["m.relations"].(map[string]any); ok {
		if err := f.nested(ctx, rel, commands.RelReplace); err != nil {
			return nil, false, err
		}
		if th, ok := rel[commands.RelThread].(map[string]any); ok {
			if err := f.nested(ctx, th, "latest_event"); err != nil {
				return nil, false, err
			}
		}
	}
	if un != nil {
		out["unsigned"] = un
	}
	return out, true, nil
}

// nested turns the event at m[key], if any, into the federation format;
// one whose message is gone is left out.
func (f *fedPage) nested(ctx context.Context, m map[string]any, key string) error {
	v, ok := m[key]
	if !ok {
		return nil
	}
	ev, ok, err := f.event(ctx, v)
	if err != nil {
		return err
	}
	if ok {
		m[key] = ev
	} else {
		delete(m, key)
	}
	return nil
}
