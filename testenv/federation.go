package testenv

import (
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/scrollback/scrollback/bus"
)

// Federation is a fake federation worker answering sb.backfill from a
// room's older history, as a remote server would. It can be slow, fail
// (an error reply) or stay silent, and records every request. A test that
// wants no federation worker at all simply does not start one.
type Federation struct {
	mu       sync.Mutex
	history  map[string][]Event // room -> events, oldest first
	requests []map[string]any
	delay    time.Duration
	fail     bool
	silent   bool
}

// NewFederation subscribes a fake federation worker on nc.
func NewFederation(tb testing.TB, nc *nats.Conn, subjects bus.Subjects) *Federation {
	tb.Helper()
	f := &Federation{history: map[string][]Event{}}
	sub, err := nc.Subscribe(subjects.Backfill(), func(m *nats.Msg) { go f.handle(m) })
	if err != nil {
		tb.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sub.Unsubscribe() })
	return f
}

// Serve sets the history the worker knows for a room (oldest first).
func (f *Federation) Serve(roomID string, evs ...Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.history[roomID] = append([]Event{}, evs...)
}

// SetDelay delays every answer; SetFail makes answers errors; SetSilent
// makes the worker never answer.
func (f *Federation) SetDelay(d time.Duration) { f.mu.Lock(); f.delay = d; f.mu.Unlock() }

// SetFail makes every answer an error reply.
func (f *Federation) SetFail(v bool) { f.mu.Lock(); f.fail = v; f.mu.Unlock() }

// SetSilent makes the worker receive requests and never answer.
func (f *Federation) SetSilent(v bool) { f.mu.Lock(); f.silent = v; f.mu.Unlock() }

// Requests returns the requests received so far.
func (f *Federation) Requests() []map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]map[string]any{}, f.requests...)
}

// handle answers with the events at or below the deepest requested
// extremity, newest first, up to limit: what /backfill returns.
func (f *Federation) handle(m *nats.Msg) {
	req, err := bus.DecodeMap(m.Data, bus.DefaultLimits)
	if err != nil {
		return
	}
	f.mu.Lock()
	f.requests = append(f.requests, req)
	delay, fail, silent := f.delay, f.fail, f.silent
	hist := f.history[str(req["room_id"])]
	f.mu.Unlock()
	if silent {
		return
	}
	time.Sleep(delay)
	if fail {
		h := nats.Header{}
		h.Set("Nats-Service-Error-Code", "502")
		h.Set("Nats-Service-Error", "remote server unreachable")
		data, _ := bus.Encode(map[string]any{"errcode": "M_UNKNOWN", "error": "remote server unreachable"})
		m.RespondMsg(&nats.Msg{Header: h, Data: data})
		return
	}
	want := map[string]bool{}
	ids, _ := req["event_ids"].([]any)
	for _, id := range ids {
		want[str(id)] = true
	}
	var top int64 = -1
	for _, ev := range hist {
		if want[ev.ID()] {
			top = max(top, ev["depth"].(int64))
		}
	}
	limit := 100
	if n, ok := req["limit"].(int64); ok {
		limit = int(n)
	}
	var out []any
	for i := len(hist) - 1; i >= 0 && len(out) < limit; i-- {
		if d := hist[i]["depth"].(int64); d <= top {
			out = append(out, map[string]any(hist[i]))
		}
	}
	data, _ := bus.Encode(map[string]any{"events": out})
	m.Respond(data)
}
