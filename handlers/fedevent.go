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
// published them (bus.Log.EventMessages); one the log no longer holds is
// absent from the map.
type EventLog interface {
	EventMessages(ctx context.Context, roomID string, seqs []uint64) (map[uint64][]byte, error)
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
	msgs      map[uint64][]byte // the events' messages, read by turn
	version   string
	from      commands.StreamToken
	backwards bool
	chunk     []rowPos // the chunk's events, in order, for end if the page must shrink
	maxReply  int
}

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
// that fits, as in the client format.
func (f *fedPage) turn(ctx context.Context, log EventLog, roomID string, reply []byte) ([]byte, error) {
	m, err := bus.DecodeMap(reply, replyLimits(len(reply)))
	if err != nil {
		return nil, fmt.Errorf("federation format: decoding the page: %w", err)
	}
	seqs := make([]uint64, 0, len(f.events))
	for _, src := range f.events {
		seqs = append(seqs, src.seq)
	}
	if f.msgs, err = log.EventMessages(ctx, roomID, seqs); err != nil {
		return nil, fmt.Errorf("federation format: %w", err)
	}
	chunk, _ := m["chunk"].([]any)
	kept := chunk[:0]
	var keptPos []rowPos
	sizes := 0
	for i, v := range chunk {
		ev, ok, err := f.event(v)
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
		if sizes+len(b) > f.maxReply-replyMargin && len(kept) > 0 {
			last := keptPos[len(keptPos)-1]
			m["end"] = f.from.WithRoom(projections.NextToken(last.depth, last.stream, f.backwards)).String()
			break
		}
		sizes += len(b)
		kept = append(kept, ev)
		keptPos = append(keptPos, f.chunk[i])
	}
	m["chunk"] = kept
	if state, ok := m["state"].([]any); ok {
		out := state[:0]
		for _, v := range state {
			ev, ok, err := f.event(v)
			if err != nil {
				return nil, err
			}
			if ok {
				out = append(out, ev)
			}
		}
		m["state"] = out
	}
	if gaps, ok := m[gapsKey].([]any); ok {
		m[gapsKey] = keepGaps(gaps, kept)
	}
	return bus.Encode(m)
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
func (f *fedPage) event(v any) (map[string]any, bool, error) {
	ev, _ := v.(map[string]any)
	id, _ := ev["event_id"].(string)
	src, ok := f.events[id]
	if !ok {
		return nil, false, fmt.Errorf("federation format: event %q of the page was not noted", id)
	}
	data, ok := f.msgs[src.seq]
	if !ok {
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
	if err := f.nested(un, "redacted_because"); err != nil {
		return nil, false, err
	}
	if rel, ok := un["m.relations"].(map[string]any); ok {
		if err := f.nested(rel, commands.RelReplace); err != nil {
			return nil, false, err
		}
		if th, ok := rel[commands.RelThread].(map[string]any); ok {
			if err := f.nested(th, "latest_event"); err != nil {
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
func (f *fedPage) nested(m map[string]any, key string) error {
	v, ok := m[key]
	if !ok {
		return nil
	}
	ev, ok, err := f.event(v)
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
