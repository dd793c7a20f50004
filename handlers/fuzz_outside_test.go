package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
)

// fuzzReq answers every request with one fuzzed reply (or error) and
// records what was asked.
type fuzzReq struct {
	reply []byte
	err   error
	asked []fuzzAsked
}

type fuzzAsked struct {
	subject string
	data    []byte
	encErr  error
}

func (f *fuzzReq) Request(_ context.Context, subject string, req any) ([]byte, error) {
	data, err := bus.Encode(req)
	f.asked = append(f.asked, fuzzAsked{subject, data, err})
	if f.err != nil {
		return nil, f.err
	}
	return f.reply, nil
}

// fuzzLog records appends and acks them with increasing sequences.
type fuzzLog struct {
	appended []fuzzAppend
}

type fuzzAppend struct {
	subject, msgID string
	data           []byte
}

func (l *fuzzLog) Append(_ context.Context, subject, msgID string, data []byte) (uint64, error) {
	l.appended = append(l.appended, fuzzAppend{subject, msgID, data})
	return uint64(len(l.appended)), nil
}

func (l *fuzzLog) SubjectLastSeq(_ context.Context, subject string) (uint64, error) {
	for i := len(l.appended) - 1; i >= 0; i-- {
		if l.appended[i].subject == subject {
			return uint64(i + 1), nil
		}
	}
	return 0, nil
}

func (l *fuzzLog) AppendAfter(ctx context.Context, subject, msgID string, data []byte, last uint64) (uint64, error) {
	if at, _ := l.SubjectLastSeq(ctx, subject); at != last {
		return 0, bus.ErrNotLast
	}
	return l.Append(ctx, subject, msgID, data)
}

// refusingWaiter ends fetch before it reads the store's extremities.
type refusingWaiter struct{}

func (refusingWaiter) WaitFor(context.Context, string, uint64) error {
	return errors.New("not waiting")
}
func (refusingWaiter) Watermark(string) uint64 { return 0 }

// sameDecoded compares two decoded values as the log reads them: an
// unsigned integer that fits int64 is that int64 (MessagePack writes both
// the same way), and NaN equals NaN.
func sameDecoded(a, b any) bool {
	norm := func(v any) any {
		if u, ok := v.(uint64); ok && u <= math.MaxInt64 {
			return int64(u)
		}
		return v
	}
	a, b = norm(a), norm(b)
	switch x := a.(type) {
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) || (x == nil) != (y == nil) && len(x) > 0 {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !sameDecoded(v, w) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !sameDecoded(x[i], y[i]) {
				return false
			}
		}
		return true
	case float64:
		y, ok := b.(float64)
		return ok && (x == y || math.IsNaN(x) && math.IsNaN(y))
	}
	return reflect.DeepEqual(a, b) // []byte (MessagePack bin) is not comparable with ==
}

func backfillSeed(events ...map[string]any) []byte {
	list := make([]any, len(events))
	for i, e := range events {
		list[i] = e
	}
	data, _ := bus.Encode(map[string]any{"events": list})
	return data
}

// FuzzBackfillReply: a federation worker's sb.backfill reply, whatever
// its bytes, never panics fetch; every event it appends to the log is
// one the log's own decoder (Subjects.Decode) reads back without error,
// as a backfilled, non-outlier event of the room, under its
// BackfillMsgID, with the fields EventFromMap read from the reply.
func FuzzBackfillReply(f *testing.F) {
	const room = "!r:test"
	ev := func(id string, depth any) map[string]any {
		return map[string]any{"event_id": id, "room_id": room, "type": "m.room.message", "sender": "@a:test",
			"origin_server_ts": int64(1_700_000_000_000), "depth": depth, "prev_events": []any{"$p:test"},
			"content":  map[string]any{"msgtype": "m.text", "body": "hi", "m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": "$root"}},
			"unsigned": map[string]any{"age": 5}, "hashes": map[string]any{"sha256": "x"}, "outlier": true}
	}
	f.Add(backfillSeed(ev("$a:test", int64(3)), ev("$b:test", uint64(2))))
	st := ev("$s:test", int64(1))
	st["state_key"], st["type"] = "@a:test", "m.room.member"
	st["content"] = map[string]any{"membership": "join"}
	st["membership"] = "join"
	f.Add(backfillSeed(st, map[string]any{"event_id": "$c:test"}))
	other := ev("$o:test", int64(9))
	other["room_id"] = "!other:test"
	f.Add(backfillSeed(other, ev("$x\r\n:test", 1.5)))
	f.Add([]byte{0x81, 0xa6, 'e', 'v', 'e', 'n', 't', 's', 0xdd, 0x7f, 0xff, 0xff, 0xff})
	f.Add([]byte{})
	s := bus.Subjects{Prefix: "sb"}
	f.Fuzz(func(t *testing.T, reply []byte) {
		req := &fuzzReq{reply: reply}
		log := &fuzzLog{}
		b := &Backfiller{Req: req, Log: log, Waiter: refusingWaiter{}, Subjects: s, Timeout: time.Second,
			Now: time.Now, Logger: slog.New(slog.DiscardHandler)}
		b.init()
		b.fetch(context.Background(), room, []point{{id: "$gap:test", depth: 5}})
		// What the reply said, read as fetch reads it.
		var want []*commands.Event
		if m, err := bus.DecodeMap(reply, bus.DefaultLimits); err == nil {
			list, _ := m["events"].([]any)
			for _, raw := range list {
				if e, ok := raw.(map[string]any); ok {
					// append marks the event backfilled and no outlier.
					e["backfilled"] = true
					delete(e, "outlier")
					if ev, err := commands.EventFromMap(e, room); err == nil {
						want = append(want, ev)
					}
				}
			}
		}
		if len(log.appended) != len(want) {
			t.Fatalf("appended %d events, the reply has %d valid ones", len(log.appended), len(want))
		}
		for i, a := range log.appended {
			if a.subject != s.Room(room, commands.KindEvent) {
				t.Fatalf("appended to %q", a.subject)
			}
			e := s.Decode(uint64(i+1), a.subject, a.data, 1)
			if e.Err != nil {
				t.Fatalf("the log refuses a backfilled event it was given: %v", e.Err)
			}
			got := e.Event
			if got == nil || !got.Backfilled || got.Outlier || got.RoomID != room {
				t.Fatalf("appended %+v", got)
			}
			if a.msgID != BackfillMsgID(got.EventID) {
				t.Fatalf("message ID %q for event %q", a.msgID, got.EventID)
			}
			w := want[i]
			if got.EventID != w.EventID || got.Type != w.Type || got.Sender != w.Sender || got.Depth != w.Depth ||
				got.OriginServerTS != w.OriginServerTS || (got.StateKey == nil) != (w.StateKey == nil) ||
				got.StateKey != nil && *got.StateKey != *w.StateKey || got.Redacts != w.Redacts ||
				!sameDecoded(got.Content, w.Content) || !sameDecoded(got.Unsigned, w.Unsigned) ||
				!sameDecoded(got.Extra, w.Extra) || strings.Join(got.PrevEvents, "\x00") != strings.Join(w.PrevEvents, "\x00") {
				t.Fatalf("the log reads back %+v\nthe reply held %+v", got, w)
			}
		}
	})
}

var fuzzMethods = []string{http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete}

// FuzzBridge: any HTTP request (method, target, Authorization header,
// body) and any reply of the bus behind the bridge (a MessagePack payload,
// an error reply, no responders) give a JSON answer with a status the
// bridge documents; the bridge's own checks never answer 500 (only a
// reply it cannot read does); an error body is {errcode, error}; and
// every request it sends has a valid subject and a payload the service's
// request decoder accepts.
func FuzzBridge(f *testing.F) {
	reply, _ := bus.Encode(map[string]any{"chunk": []any{}, "start": "s1", "user_id": "@u:test", "admin": true,
		"ignored_users": []any{"@i:test", 5}, "delete_id": "abc", "block": true})
	room := url.PathEscape("!r:test")
	for _, c := range []struct {
		method       uint8
		target, auth string
		body         string
	}{
		{0, "/_matrix/client/v3/rooms/" + room + "/messages?dir=b&limit=10&from=s5&filter=%7B%22types%22%3A%5B%22m.*%22%5D%7D", "Bearer user", ""},
		{0, "/_matrix/client/r0/rooms/" + room + "/messages?access_token=other;dir=f", "", ""},
		{0, "/_synapse/admin/v1/rooms/" + room + "/messages?limit=5&to=t3-4", "Bearer admin", ""},
		{1, "/_synapse/admin/v1/rooms/" + room + "/block", "Bearer admin", `{"block": true}`},
		{0, "/_synapse/admin/v1/rooms/" + room + "/block", "Bearer admin", ""},
		{2, "/_synapse/admin/v1/purge_history/" + room, "Bearer admin", `{"purge_up_to_ts": 1700000000000, "delete_local_events": 1}`},
		{2, "/_synapse/admin/v1/purge_history/" + room + "/$ev:test", "Bearer admin", ``},
		{2, "/_synapse/admin/v1/purge_history/" + room + "/", "Bearer admin", `null`},
		{0, "/_synapse/admin/v1/purge_history_status/abc", "Bearer admin", ""},
		{3, "/_synapse/admin/v2/rooms/" + room, "Bearer admin", `{"block": true, "purge": false, "new_room_user_id": "@a:test", "room_name": "x", "message": ""}`},
		{3, "/_synapse/admin/v1/rooms/" + room, "Bearer admin", `{}`},
		{0, "/_synapse/admin/v2/rooms/delete_status/abc", "Bearer admin", ""},
		{0, "/_synapse/admin/v2/rooms/" + room + "/delete_status", "Bearer other", ""},
		{0, "/_synapse/admin/v2/rooms//delete_status", "Bearer admin", ""},
		{1, "/_synapse/admin/v1/rooms/" + room + "/messages", "Bearer user", ""},
		{0, "/health", "", ""},
	} {
		f.Add(c.method, c.target, c.auth, []byte(c.body), reply, uint8(0))
	}
	f.Add(uint8(0), "/_matrix/client/v3/rooms/"+room+"/messages", "Bearer other", []byte{}, []byte{0x80}, uint8(1))
	// A filter nested as deep as a body may be: the request the bridge
	// made of it was one the service refuses.
	deep := `{"a":` + strings.Repeat("[", maxJSONDepth-1) + "0" + strings.Repeat("]", maxJSONDepth-1) + "}"
	f.Add(uint8(0), "/_matrix/client/v3/rooms/"+room+"/messages?filter="+url.QueryEscape(deep), "Bearer user", []byte{}, reply, uint8(0))
	f.Add(uint8(3), "/_synapse/admin/v2/rooms/"+room, "Bearer admin", []byte(`{"block": 1}`), []byte{0xc1}, uint8(2))
	f.Fuzz(func(t *testing.T, method uint8, target, auth string, body, reply []byte, mode uint8) {
		u, err := url.ParseRequestURI(target)
		if err != nil || !strings.HasPrefix(target, "/") || strings.ContainsAny(target, " \t\r\n") {
			return
		}
		req := &fuzzReq{reply: reply}
		switch mode % 3 {
		case 1:
			req.err = commands.Errorf(404, commands.CodeNotFound, "not here")
		case 2:
			req.err = bus.ErrNoResponders
		}
		s := bus.Subjects{Prefix: "sb"}
		auth0 := &Auth{Static: map[string]Identity{"admin": {UserID: "@admin:test", Admin: true}, "user": {UserID: "@u:test"}},
			Req: req, Subjects: s}
		b := &Bridge{Req: req, Subjects: s, Auth: auth0, Logger: slog.New(slog.DiscardHandler)}
		r := httptest.NewRequest(fuzzMethods[int(method)%len(fuzzMethods)], "/", bytes.NewReader(body))
		r.URL, r.RequestURI, r.Host = u, target, "example.test"
		if auth != "" {
			if strings.ContainsAny(auth, "\r\n\x00") {
				return
			}
			r.Header.Set("Authorization", auth)
		}
		w := httptest.NewRecorder()
		b.Handler().ServeHTTP(w, r)

		status := w.Code
		if status == http.StatusMovedPermanently || status == http.StatusTemporaryRedirect || status == http.StatusPermanentRedirect {
			// http.ServeMux sends an unclean path (/.., //x) to its clean
			// form, where the routes and their checks run.
			if w.Header().Get("Location") == "" {
				t.Fatalf("redirect %d without a Location", status)
			}
			return
		}
		switch status {
		case 200, 400, 401, 403, 404, 405, 413, 414, 429, 503:
		case 500:
			if len(req.asked) == 0 || req.err != nil {
				t.Fatalf("500 without a bus reply to blame: %s", w.Body.Bytes())
			}
		default:
			if req.err == nil || status != 404 {
				t.Fatalf("status %d: %s", status, w.Body.Bytes())
			}
		}
		if u.Path == "/health" && r.Method == http.MethodGet {
			return
		}
		var out any
		if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
			t.Fatalf("status %d with a body that is not JSON (%v): %q", status, err, w.Body.Bytes())
		}
		if status != 200 {
			m, _ := out.(map[string]any)
			if code, _ := m["errcode"].(string); code == "" {
				t.Fatalf("error %d without an errcode: %s", status, w.Body.Bytes())
			}
			if _, ok := m["error"].(string); !ok {
				t.Fatalf("error %d without an error text: %s", status, w.Body.Bytes())
			}
		}
		for _, a := range req.asked {
			if !bus.ValidSubject(a.subject) {
				t.Fatalf("request on an invalid subject %q", a.subject)
			}
			if a.encErr != nil {
				t.Fatalf("request on %s does not encode: %v", a.subject, a.encErr)
			}
			if err := bus.Check(a.data, bus.RequestLimits); err != nil {
				t.Fatalf("request on %s is one the service refuses: %v", a.subject, err)
			}
		}
	})
}

// FuzzShutdownResult: a shutdown task's result as the log holds it (its
// TaskUpdates: written by this service, or an earlier release, read back
// on every resumption and status request) reads into a result that,
// written again and read back through the log's codec, is the same:
// a resumed shutdown neither loses nor invents a user to kick, however
// often it resumes.
func FuzzShutdownResult(f *testing.F) {
	for _, m := range []map[string]any{
		{"kicked_users": []any{"@a:test"}, "failed_to_kick_users": []any{"@b:test"}, "local_aliases": []any{"#x:test"}, "new_room_id": "!n:test",
			todoKey: []any{[]any{"@c:test", "join", int64(2)}, []any{"@a:test", "invite", int64(0)}}, failedKey: []any{[]any{"join", int64(1)}}, nextKey: int64(3)},
		{todoKey: map[string]any{"@a:test": "join", "@b:test": "knock"}, "kicked_users": []any{"@b:test"}},
		{"failed_to_kick_users": []any{"@b:test", "@b:test", 5}, failedKey: []any{[]any{}, []any{"join", uint64(7)}, "x"}, todoKey: []any{}},
	} {
		data, _ := bus.Encode(m)
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := bus.DecodeMap(data, bus.DefaultLimits)
		if err != nil {
			return
		}
		once := resultOf(m).toMap()
		_ = resultOf(m).public()
		logged := func(v map[string]any) map[string]any {
			enc, err := bus.Encode(v)
			if err != nil {
				t.Fatalf("result does not encode: %v", err)
			}
			back, err := bus.DecodeMap(enc, bus.DefaultLimits)
			if err != nil {
				t.Fatalf("result written to the log is refused: %v", err)
			}
			return back
		}
		first := logged(once)
		twice := logged(resultOf(first).toMap())
		if !sameDecoded(first, twice) {
			t.Fatalf("result %v\nread back and written again: %v", first, twice)
		}
	})
}
