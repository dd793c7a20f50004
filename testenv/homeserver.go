package testenv

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
)

// Call is one request a fake worker received.
type Call struct {
	Subject string
	Req     map[string]any
}

// Homeserver is a fake homeserver worker answering the sb.hs.* subjects
// of CONTRACT.md section 5 like a real one: it authors the events its
// actions create and publishes them to the room log before it answers
// (a leave as the user's own leave, a forget as a forget command, a new
// room's create and join, joins and messages), and it answers a txn_id it
// has seen with its first answer without acting again (a repeat that comes
// while the first is still being acted on waits for that answer). It can be told to
// fail or stall for chosen users, and records every request.
type Homeserver struct {
	pub    *Publisher
	nc     *nats.Conn
	server string

	mu       sync.Mutex
	calls    []Call
	fail     map[string]bool      // user -> leave answers an error
	stall    map[string]bool      // user -> leave never answers
	release  chan struct{}        // closed by ReleaseStalled: the stalled leaves answer
	delay    time.Duration        // before every leave answer
	answered map[string]*nats.Msg // subject|txn_id -> first answer
	rooms    map[string]*Room     // rooms it authors events for
	acted    map[string]int       // subject|txn_id -> times acted
	aliases  []string
	tokens   map[string]map[string]any
	retired  bool
	newRoom  any // if set, create_room answers this room_id and creates nothing

	inflight map[string]chan struct{} // subject|txn_id -> closed once answered
}

// NewHomeserver subscribes a fake homeserver on nc; events go to the log
// through pub. Cleanup unsubscribes.
func NewHomeserver(tb testing.TB, nc *nats.Conn, pub *Publisher, serverName string) *Homeserver {
	tb.Helper()
	hs := &Homeserver{pub: pub, nc: nc, server: serverName, fail: map[string]bool{}, stall: map[string]bool{},
		release: make(chan struct{}), answered: map[string]*nats.Msg{}, inflight: map[string]chan struct{}{}, rooms: map[string]*Room{}, acted: map[string]int{}, tokens: map[string]map[string]any{}}
	for _, name := range []string{"whoami", "ignored_users", "create_room", "leave", "forget", "join", "send", "move_aliases"} {
		subj := pub.Subjects.HS(name)
		sub, err := nc.Subscribe(subj, func(m *nats.Msg) { go hs.handle(tb, name, m) })
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { sub.Unsubscribe() })
	}
	if err := nc.Flush(); err != nil {
		tb.Fatal(err)
	}
	return hs
}

// Adopt makes hs continue where old left off (a homeserver outliving a
// restart of scrollback): the same rooms, failures, remembered answers
// and counts. old stops answering.
func (hs *Homeserver) Adopt(old *Homeserver) {
	old.mu.Lock()
	defer old.mu.Unlock()
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.rooms, hs.fail, hs.stall, hs.delay = old.rooms, old.fail, old.stall, old.delay
	hs.answered, hs.acted, hs.aliases, hs.calls = old.answered, old.acted, old.aliases, old.calls
	hs.inflight = old.inflight
	old.retired = true
}

// Track makes the homeserver author events in r (leaves, joins, sends).
func (hs *Homeserver) Track(r *Room) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.rooms[r.ID] = r
}

// AnswerCreateRoom makes create_room answer {"room_id": id} and create
// nothing: a homeserver whose reply is not what the contract says.
func (hs *Homeserver) AnswerCreateRoom(id any) { hs.mu.Lock(); hs.newRoom = id; hs.mu.Unlock() }

// FailLeave makes the leave of user answer an error.
func (hs *Homeserver) FailLeave(user string) { hs.mu.Lock(); hs.fail[user] = true; hs.mu.Unlock() }

// StallLeave makes the leave of user never answer (until ReleaseStalled).
func (hs *Homeserver) StallLeave(user string) { hs.mu.Lock(); hs.stall[user] = true; hs.mu.Unlock() }

// ReleaseStalled ends every stall: the leave requests stalled so far act
// and answer now, as if the homeserver had been slow, and later leaves
// answer at once (until StallLeave again). Repeats of a stalled request
// that wait for its first answer get it.
func (hs *Homeserver) ReleaseStalled() {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.stall = map[string]bool{}
	close(hs.release)
	hs.release = make(chan struct{})
}

// SetDelay delays every answer but whoami and ignored_users.
func (hs *Homeserver) SetDelay(d time.Duration) { hs.mu.Lock(); hs.delay = d; hs.mu.Unlock() }

// SetAliases sets the answer of move_aliases.
func (hs *Homeserver) SetAliases(a ...string) { hs.mu.Lock(); hs.aliases = a; hs.mu.Unlock() }

// SetToken makes whoami know a token.
func (hs *Homeserver) SetToken(token, userID string, admin bool) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.tokens[token] = map[string]any{"user_id": userID, "admin": admin}
}

// Calls lists the requests received on sb.hs.<name> ("" = all).
func (hs *Homeserver) Calls(name string) []Call {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	var out []Call
	for _, c := range hs.calls {
		if name == "" || strings.HasSuffix(c.Subject, ".hs."+name) {
			out = append(out, c)
		}
	}
	return out
}

// Acted returns how many times the homeserver acted (not just answered)
// on requests of sb.hs.<name> for user ("" = any).
func (hs *Homeserver) Acted(name, user string) int {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	n := 0
	for k, v := range hs.acted {
		if strings.HasPrefix(k, name+"|") && (user == "" || strings.HasSuffix(k, "|"+user)) {
			n += v
		}
	}
	return n
}

func str(v any) string { s, _ := v.(string); return s }

func (hs *Homeserver) handle(tb testing.TB, name string, m *nats.Msg) {
	req, err := bus.DecodeMap(m.Data, bus.DefaultLimits)
	if err != nil {
		hs.reply(m, nil, 400, "M_BAD_JSON", err.Error())
		return
	}
	hs.mu.Lock()
	if hs.retired {
		hs.mu.Unlock()
		return
	}
	hs.calls = append(hs.calls, Call{Subject: m.Subject, Req: req})
	txn := str(req["txn_id"])
	key := m.Subject + "|" + txn
	if first, ok := hs.answered[key]; ok && txn != "" {
		hs.mu.Unlock()
		m.RespondMsg(&nats.Msg{Header: first.Header, Data: first.Data})
		return
	}
	if wait, ok := hs.inflight[key]; ok && txn != "" {
		// A repeat of a request still being acted on (its first requester
		// may have crashed and restarted): it gets the first answer once
		// there is one, as Synapse's transaction cache does.
		hs.mu.Unlock()
		<-wait
		hs.mu.Lock()
		first := hs.answered[key]
		hs.mu.Unlock()
		m.RespondMsg(&nats.Msg{Header: first.Header, Data: first.Data})
		return
	}
	if txn != "" {
		hs.inflight[key] = make(chan struct{})
	}
	user := str(req["user_id"])
	fail, stall, delay, release := hs.fail[user], hs.stall[user], hs.delay, hs.release
	room := hs.rooms[str(req["room_id"])]
	hs.mu.Unlock()

	var out map[string]any
	status, code, text := 0, "", ""
	if name != "whoami" && name != "ignored_users" {
		time.Sleep(delay)
	}
	switch name {
	case "whoami":
		hs.mu.Lock()
		id, ok := hs.tokens[str(req["access_token"])]
		hs.mu.Unlock()
		if !ok {
			status, code, text = 401, "M_UNKNOWN_TOKEN", "Unknown token"
		}
		out = id
	case "ignored_users":
		out = map[string]any{"ignored_users": []any{}}
	case "create_room":
		hs.mu.Lock()
		answer := hs.newRoom
		hs.mu.Unlock()
		if answer != nil {
			out = map[string]any{"room_id": answer}
			break
		}
		creator := str(req["creator"])
		r := NewRoom(fmt.Sprintf("new%d", time.Now().UnixNano()), hs.server)
		hs.Track(r)
		if err := hs.publish(r.Create(creator), r.Join(creator),
			r.Next("m.room.name", creator, S(""), map[string]any{"name": str(req["name"])})); err != nil {
			status, code, text = 500, "M_UNKNOWN", err.Error()
		}
		out = map[string]any{"room_id": r.ID}
	case "leave":
		if stall {
			<-release // for ever, unless ReleaseStalled
		}
		if fail {
			status, code, text = 500, "M_UNKNOWN", "cannot make "+user+" leave"
			break
		}
		if room != nil {
			if err := hs.publish(room.Member(user, user, "leave")); err != nil {
				status, code, text = 500, "M_UNKNOWN", err.Error()
			}
		}
		out = map[string]any{}
	case "forget":
		if err := hs.publishCmd(map[string]any{"id": fmt.Sprintf("forget%d", time.Now().UnixNano()), "action": "forget",
			"room_id": str(req["room_id"]), "params": map[string]any{"user_id": user}}); err != nil {
			status, code, text = 500, "M_UNKNOWN", err.Error()
		}
		out = map[string]any{}
	case "join":
		if room != nil {
			if err := hs.publish(room.Join(user)); err != nil {
				status, code, text = 500, "M_UNKNOWN", err.Error()
			}
		}
		out = map[string]any{}
	case "send":
		ev := Event{}
		if room != nil {
			content, _ := req["content"].(map[string]any)
			ev = room.Next(str(req["type"]), str(req["sender"]), nil, content)
			if err := hs.publish(ev); err != nil {
				status, code, text = 500, "M_UNKNOWN", err.Error()
			}
		}
		out = map[string]any{"event_id": ev.ID()}
	case "move_aliases":
		hs.mu.Lock()
		a := make([]any, len(hs.aliases))
		for i, s := range hs.aliases {
			a[i] = s
		}
		hs.mu.Unlock()
		out = map[string]any{"aliases": a}
	}
	hs.mu.Lock()
	hs.acted[name+"|"+txn+"|"+user]++
	hs.mu.Unlock()
	resp := hs.reply(m, out, status, code, text)
	if txn != "" {
		hs.mu.Lock()
		hs.answered[key] = resp
		close(hs.inflight[key])
		delete(hs.inflight, key)
		hs.mu.Unlock()
	}
}

// publish appends events like a homeserver: in order, retrying while the
// server restarts (up to 15 s), before the request is answered.
func (hs *Homeserver) publish(evs ...Event) error {
	for _, ev := range evs {
		data, err := bus.Encode(map[string]any(ev))
		if err != nil {
			return err
		}
		roomID, _ := ev["room_id"].(string)
		if err := hs.retry(hs.pub.Subjects.Room(roomID, "event"), ev.ID(), data); err != nil {
			return err
		}
	}
	return nil
}

func (hs *Homeserver) publishCmd(cmd map[string]any) error {
	data, err := bus.Encode(cmd)
	if err != nil {
		return err
	}
	roomID, _ := cmd["room_id"].(string)
	id, _ := cmd["id"].(string)
	return hs.retry(hs.pub.Subjects.Room(roomID, "cmd"), id, data)
}

func (hs *Homeserver) retry(subject, msgID string, data []byte) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgIDHeader, msgID)
		_, err := hs.pub.JS.PublishMsg(ctx, msg)
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// reply answers with a result or the contract's error convention.
func (hs *Homeserver) reply(m *nats.Msg, out map[string]any, status int, code, text string) *nats.Msg {
	resp := &nats.Msg{Header: nats.Header{}}
	if status != 0 {
		resp.Header.Set("Nats-Service-Error-Code", fmt.Sprint(status))
		resp.Header.Set("Nats-Service-Error", text)
		resp.Data, _ = bus.Encode(map[string]any{"errcode": code, "error": text})
	} else {
		if out == nil {
			out = map[string]any{}
		}
		resp.Data, _ = bus.Encode(out)
	}
	m.RespondMsg(resp)
	return resp
}
