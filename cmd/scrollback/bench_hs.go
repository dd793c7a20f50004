package main

// benchHS is the bench's homeserver worker: it answers the sb.hs.*
// requests of CONTRACT.md section 5 as a homeserver would, so that a
// shutdown can run (mixed) and the HTTP reads' tokens are checked, and
// their readers' ignored users asked, as in production (reads).
// testenv.Homeserver does the same for tests, but it needs a testing.TB;
// this one is the bench's own.
//
// Like a homeserver, it authors the events its actions create and
// publishes them to the room log before it answers: a leave as the user's
// own leave event, a forget as a forget command, a new room's create, join
// and name, a join, a message. A txn_id it has answered is answered again
// with the first answer, without acting again. It waits --hs-delay before
// each answer but whoami and ignored_users.

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/internal/loadgen"
)

// benchHS is a running fake homeserver; Close stops it and waits for the
// answers under way.
type benchHS struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	subjects bus.Subjects
	delay    time.Duration
	subs     []*nats.Subscription
	wg       sync.WaitGroup

	mu       sync.Mutex
	rooms    map[string]*hsRoom
	answered map[string]*nats.Msg     // subject|txn_id -> first answer
	tokens   map[string]string        // access token -> user ID
	counts   map[string]int           // requests by name
	failures int                      // answers that were errors
	took     map[string]*loadgen.Hist // time to answer, by request name (first answers only)
}

// hsRoom is a room the homeserver authors events in: the depth of its
// last event so far (its events are benchEvent's: the event at depth d has
// the ID benchEventID(room, d-1) and the one before as its prev_event).
type hsRoom struct {
	depth int
}

var hsNames = []string{"whoami", "ignored_users", "create_room", "leave", "forget", "join", "send", "move_aliases"}

// startBenchHS subscribes the fake homeserver on a connection of its own
// to the service s.
func startBenchHS(s *sut, delay time.Duration) (*benchHS, error) {
	nc, err := s.connect("bench-homeserver")
	if err != nil {
		return nil, err
	}
	js, err := jetstreamOf(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	h := &benchHS{nc: nc, js: js, subjects: s.subjects, delay: delay, rooms: map[string]*hsRoom{},
		answered: map[string]*nats.Msg{}, tokens: map[string]string{}, counts: map[string]int{}, took: map[string]*loadgen.Hist{}}
	for _, name := range hsNames {
		sub, err := nc.Subscribe(s.subjects.HS(name), func(m *nats.Msg) {
			h.wg.Add(1)
			go func() {
				defer h.wg.Done()
				h.handle(name, m)
			}()
		})
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("bench: homeserver: %w", err)
		}
		h.subs = append(h.subs, sub)
	}
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		h.Close()
		return nil, fmt.Errorf("bench: homeserver: %w", err)
	}
	return h, nil
}

// Close stops answering and waits for the answers under way.
func (h *benchHS) Close() {
	for _, s := range h.subs {
		_ = s.Unsubscribe()
	}
	h.wg.Wait()
	h.nc.Close()
}

// Track makes the homeserver author events in a room of benchEvent's
// events whose last event so far is at depth.
func (h *benchHS) Track(roomID string, depth int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rooms[roomID] = &hsRoom{depth: depth}
}

// SetToken makes whoami know a token.
func (h *benchHS) SetToken(token, userID string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.tokens[token] = userID
}

// Counts is the requests received by name, and how many were answered
// with an error.
func (h *benchHS) Counts() (map[string]int, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]int{}
	for k, v := range h.counts {
		out[k] = v
	}
	return out, h.failures
}

// hsError is an error answer: status, Matrix code, text.
type hsError struct {
	status int
	code   string
	text   string
}

func (h *benchHS) handle(name string, m *nats.Msg) {
	start := time.Now()
	req, err := bus.DecodeMap(m.Data, bus.DefaultLimits)
	if err != nil {
		h.respond(m, nil, &hsError{400, "M_BAD_JSON", err.Error()})
		return
	}
	txn, _ := req["txn_id"].(string)
	key := m.Subject + "|" + txn
	h.mu.Lock()
	h.counts[name]++
	first, seen := h.answered[key]
	h.mu.Unlock()
	if seen && txn != "" {
		_ = m.RespondMsg(&nats.Msg{Header: first.Header, Data: first.Data})
		return
	}
	if name != "whoami" && name != "ignored_users" && h.delay > 0 {
		time.Sleep(h.delay)
	}
	out, herr := h.act(name, req)
	resp := h.respond(m, out, herr)
	took := time.Since(start)
	h.mu.Lock()
	defer h.mu.Unlock()
	if txn != "" {
		h.answered[key] = resp
	}
	if h.took[name] == nil {
		h.took[name] = &loadgen.Hist{}
	}
	h.took[name].Add(took)
}

// Took is how long the homeserver took to answer each request, by name:
// from its arrival to the answer, --hs-delay and the ack of what it
// published to the log included.
func (h *benchHS) Took() map[string]loadgen.Hist {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]loadgen.Hist, len(h.took))
	for k, v := range h.took {
		out[k] = v.Clone()
	}
	return out
}

func str(v any) string { s, _ := v.(string); return s }

// act does what the request asks and returns the answer.
func (h *benchHS) act(name string, req map[string]any) (map[string]any, *hsError) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fail := func(err error) *hsError { return &hsError{500, "M_UNKNOWN", err.Error()} }
	user, roomID := str(req["user_id"]), str(req["room_id"])
	switch name {
	case "whoami":
		h.mu.Lock()
		id, ok := h.tokens[str(req["access_token"])]
		h.mu.Unlock()
		if !ok {
			return nil, &hsError{401, "M_UNKNOWN_TOKEN", "Unknown token"}
		}
		return map[string]any{"user_id": id, "admin": false}, nil
	case "ignored_users":
		return map[string]any{"ignored_users": []any{}}, nil
	case "create_room":
		creator := str(req["creator"])
		id := "!new-" + strings.ToLower(rand.Text()[:10]) + ":" + benchServerName
		h.Track(id, 0)
		for _, ev := range []map[string]any{
			{"type": "m.room.create", "sender": creator, "state_key": "", "content": map[string]any{"creator": creator, "room_version": "10"}},
			{"type": "m.room.member", "sender": creator, "state_key": creator, "content": map[string]any{"membership": "join"}},
			{"type": "m.room.name", "sender": creator, "state_key": "", "content": map[string]any{"name": str(req["name"])}},
		} {
			if _, err := h.publish(ctx, id, ev); err != nil {
				return nil, fail(err)
			}
		}
		return map[string]any{"room_id": id}, nil
	case "leave", "join":
		membership := name
		if _, err := h.publish(ctx, roomID, map[string]any{"type": "m.room.member", "sender": user, "state_key": user, "content": map[string]any{"membership": membership}}); err != nil {
			return nil, fail(err)
		}
		return map[string]any{}, nil
	case "forget":
		id := "forget-" + strings.ToLower(rand.Text()[:16])
		data, err := bus.Encode(map[string]any{"id": id, "action": "forget", "room_id": roomID, "params": map[string]any{"user_id": user}, "ts": time.Now().UnixMilli()})
		if err == nil {
			_, err = h.js.PublishMsg(ctx, &nats.Msg{Subject: h.subjects.Room(roomID, "cmd"), Data: data, Header: nats.Header{jetstream.MsgIDHeader: []string{id}}})
		}
		if err != nil {
			return nil, fail(err)
		}
		return map[string]any{}, nil
	case "send":
		content, _ := req["content"].(map[string]any)
		id, err := h.publish(ctx, roomID, map[string]any{"type": str(req["type"]), "sender": str(req["sender"]), "content": content})
		if err != nil {
			return nil, fail(err)
		}
		return map[string]any{"event_id": id}, nil
	case "move_aliases":
		return map[string]any{"aliases": []any{}}, nil
	}
	return nil, &hsError{404, "M_UNRECOGNIZED", "unknown request " + name}
}

// publish authors ev as the next event of a tracked room and publishes
// it, waiting for the ack.
func (h *benchHS) publish(ctx context.Context, roomID string, ev map[string]any) (string, error) {
	h.mu.Lock()
	r, ok := h.rooms[roomID]
	if !ok {
		h.mu.Unlock()
		return "", fmt.Errorf("room %s is not one of the homeserver's", roomID)
	}
	i := r.depth // benchEvent's index: depth - 1
	r.depth++
	h.mu.Unlock()
	id, data := benchEvent(roomID, i, ev)
	_, err := h.js.PublishMsg(ctx, &nats.Msg{Subject: h.subjects.Room(roomID, "event"), Data: data, Header: nats.Header{jetstream.MsgIDHeader: []string{id}}})
	if err != nil {
		return "", fmt.Errorf("publish: %w", err)
	}
	return id, nil
}

// respond answers with out, or with the contract's error convention.
func (h *benchHS) respond(m *nats.Msg, out map[string]any, herr *hsError) *nats.Msg {
	resp := &nats.Msg{Header: nats.Header{}}
	if herr != nil {
		h.mu.Lock()
		h.failures++
		h.mu.Unlock()
		resp.Header.Set("Nats-Service-Error-Code", fmt.Sprint(herr.status))
		resp.Header.Set("Nats-Service-Error", herr.text)
		resp.Data, _ = bus.Encode(map[string]any{"errcode": herr.code, "error": herr.text})
	} else {
		if out == nil {
			out = map[string]any{}
		}
		resp.Data, _ = bus.Encode(out)
	}
	_ = m.RespondMsg(resp)
	return resp
}
