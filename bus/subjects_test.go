package bus

import (
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/scrollback/scrollback/commands"
)

func TestRoomKey_ContractExample(t *testing.T) {
	if got := RoomKey("!abc:example.org"); got != "IWFiYzpleGFtcGxlLm9yZw" {
		t.Fatalf("RoomKey=%q", got)
	}
	id, err := RoomIDFromKey("IWFiYzpleGFtcGxlLm9yZw")
	if err != nil || id != "!abc:example.org" {
		t.Fatalf("RoomIDFromKey=%q %v", id, err)
	}
}

func TestSubjects_ParseRoomSubject(t *testing.T) {
	s := Subjects{Prefix: "sb"}
	tests := []struct {
		subject, room, kind string
		ok                  bool
	}{
		{s.Room("!r:x", "event"), "!r:x", "event", true},
		{s.Room("!r:x", "cmd"), "!r:x", "cmd", true},
		{"sb.room.IXI6eA==.event", "", "", false}, // padded
		{"sb.room..event", "", "", false},
		{"sb.room.IXI6eA.event.extra", "", "", false},
		{"other.room.IXI6eA.event", "", "", false},
		{"sb.room.!!!.event", "", "", false},
	}
	for _, tt := range tests {
		room, kind, err := s.ParseRoomSubject(tt.subject)
		if (err == nil) != tt.ok || room != tt.room || kind != tt.kind {
			t.Errorf("ParseRoomSubject(%q) = %q %q %v", tt.subject, room, kind, err)
		}
		if err != nil && !errors.Is(err, ErrBadSubject) {
			t.Errorf("error %v does not wrap ErrBadSubject", err)
		}
	}
}

func TestValidSubject(t *testing.T) {
	for subj, want := range map[string]bool{
		"sb.room.a.event":         true,
		"":                        false,
		"sb..x":                   false,
		"sb.*.x":                  false,
		"sb.>":                    false,
		"sb.a b":                  false,
		strings.Repeat("a", 2000): false,
	} {
		if got := ValidSubject(subj); got != want {
			t.Errorf("ValidSubject(%.20q)=%v, want %v", subj, got, want)
		}
	}
}

// FuzzDecodeLogMessage: any subject and payload become a LogEntry; a
// malformed one carries an error wrapping ErrMalformed; nothing panics.
func FuzzDecodeLogMessage(f *testing.F) {
	s := Subjects{Prefix: "sb"}
	ev, _ := Encode(map[string]any{"event_id": "$a", "room_id": "!r:x", "type": "m.room.message", "sender": "@a:x",
		"origin_server_ts": 1, "depth": 1, "prev_events": []any{}, "content": map[string]any{}})
	cmd, _ := Encode(map[string]any{"id": "abc", "action": "purge_room", "room_id": "!r:x", "params": map[string]any{"force": true}})
	upd, _ := Encode(map[string]any{"task_id": "abc", "status": "active"})
	f.Add(s.Room("!r:x", "event"), ev)
	f.Add(s.Room("!r:x", "cmd"), cmd)
	f.Add(s.Room("!r:x", "task"), upd)
	f.Add("sb.room.x.event", []byte{0xdf, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		e := s.Decode(1, subject, data, 0)
		set := 0
		for _, p := range []bool{e.Event != nil, e.Command != nil, e.Update != nil} {
			if p {
				set++
			}
		}
		if e.Err != nil {
			if !errors.Is(e.Err, commands.ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", e.Err)
			}
			return
		}
		if set != 1 {
			t.Fatalf("entry without error has %d payloads", set)
		}
		if e.Event != nil && (e.Event.Depth < 1 || e.Event.RoomID != e.RoomID) {
			t.Fatalf("accepted a bad event: %+v", e.Event)
		}
	})
}

// FuzzDecodeLogCommand: a command or task update from the log, whatever
// its payload, is decoded and validated without a panic; a validation
// error, which becomes the failed task's error and a status reply, stays
// short whatever the message carried; and a command or update written
// again as the service publishes them (Admin.publish, the task runner's
// updates) decodes to the same one, with the same verdict of Validate.
func FuzzDecodeLogCommand(f *testing.F) {
	s := Subjects{Prefix: "sb"}
	for _, m := range []map[string]any{
		{"id": "abc", "action": "purge_history", "room_id": "!r:x", "params": map[string]any{"token": "t5-10", "delete_local_events": true}, "ts": 5, "requested_by": "@a:x"},
		{"id": "abc", "action": "shutdown_and_purge_room", "room_id": "!r:x", "params": map[string]any{"block": true, "new_room_user_id": "@a:x", "message": "m"}},
		{"id": "abc-purge", "action": "purge_room", "room_id": "!r:x", "params": map[string]any{"force": true}},
		{"id": "abc", "action": "block_room", "room_id": "!r:x", "params": map[string]any{"block": false}},
		{"id": "abc", "action": "forget", "room_id": "!r:x", "params": map[string]any{"user_id": "@a:x"}},
		{"id": "abc", "action": "nope", "room_id": "!r:x", "params": []any{1}, "ts": 1.5},
		{"task_id": "abc", "status": "complete", "result": map[string]any{"purged_below": 5}, "ts": 9},
		{"task_id": "abc", "status": "failed", "error": "why"},
	} {
		data, _ := Encode(m)
		kind := "cmd"
		if _, ok := m["task_id"]; ok {
			kind = "task"
		}
		f.Add(kind == "task", data)
	}
	f.Fuzz(func(t *testing.T, task bool, data []byte) {
		kind := commands.KindCmd
		if task {
			kind = commands.KindTask
		}
		subject := s.Room("!r:x", kind)
		e := s.Decode(1, subject, data, 0)
		if e.Err != nil {
			if !errors.Is(e.Err, commands.ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", e.Err)
			}
			if n := len(e.Err.Error()); n > 2048 {
				t.Fatalf("dead-letter reason of %d bytes", n)
			}
			return
		}
		if u := e.Update; u != nil {
			m := map[string]any{"task_id": u.TaskID, "status": u.Status, "ts": u.TS}
			if u.Result != nil {
				m["result"] = u.Result
			}
			if u.Error != "" {
				m["error"] = u.Error
			}
			again, err := Encode(m)
			if err != nil {
				t.Fatalf("update does not encode: %v", err)
			}
			back := s.Decode(2, subject, again, 0)
			if back.Err != nil || back.Update == nil || back.Update.TaskID != u.TaskID || back.Update.Status != u.Status ||
				back.Update.Error != u.Error || back.Update.TS != u.TS || !sameValue(normInts(back.Update.Result), normInts(u.Result)) {
				t.Fatalf("update %+v written again reads %+v (%v)", u, back.Update, back.Err)
			}
			return
		}
		c := e.Command
		verr := c.Validate()
		if verr != nil && len(verr.Error()) > 2048 {
			t.Fatalf("validation error of %d bytes", len(verr.Error()))
		}
		if verr != nil {
			return
		}
		m := map[string]any{"id": c.ID, "action": c.Action, "room_id": c.RoomID, "params": c.Params, "ts": c.TS}
		if c.RequestedBy != "" {
			m["requested_by"] = c.RequestedBy
		}
		again, err := Encode(m)
		if err != nil {
			t.Fatalf("command does not encode: %v", err)
		}
		back := s.Decode(2, subject, again, 0)
		if back.Err != nil || back.Command == nil {
			t.Fatalf("command %+v written again is refused: %v", c, back.Err)
		}
		b := back.Command
		if b.ID != c.ID || b.Action != c.Action || b.RoomID != c.RoomID || b.RequestedBy != c.RequestedBy || b.TS != c.TS ||
			!sameValue(normInts(b.Params), normInts(c.Params)) {
			t.Fatalf("command %+v written again reads %+v", c, b)
		}
		if err := b.Validate(); err != nil {
			t.Fatalf("command valid once fails validation written again: %v", err)
		}
	})
}

// normInts makes an unsigned integer that fits int64 that int64, as
// MessagePack writes both the same way.
func normInts(v any) any {
	switch x := v.(type) {
	case uint64:
		if x <= 1<<63-1 {
			return int64(x)
		}
	case map[string]any:
		if x == nil {
			return x
		}
		out := make(map[string]any, len(x))
		for k, c := range x {
			out[k] = normInts(c)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, c := range x {
			out[i] = normInts(c)
		}
		return out
	}
	return v
}

// FuzzRoomSubject: a room log or API subject is refused with
// ErrBadSubject or names a room whose own subject is exactly the one
// given (one room, one key: two spellings of a key would split a room's
// log, or let a request reach a room under another name); a kept copy's
// headers are read or refused, never half read.
func FuzzRoomSubject(f *testing.F) {
	s := Subjects{Prefix: "sb"}
	f.Add(s.Room("!r:x", "event"), "12", "1700000000000000000")
	f.Add(s.Room("!r:x", "kept"), "0", "x")
	f.Add(s.APIRoom("!é:x", "messages"), "", "")
	f.Add("sb.room.IXI6eA==.event", "18446744073709551615", "-1")
	f.Add("sb.room.IXI6eB.event", "+5", "9223372036854775807")
	f.Add("sb.api.room.IXI6eA", "1", "1")
	f.Fuzz(func(t *testing.T, subject, keptSeq, keptTime string) {
		if roomID, kind, err := s.ParseRoomSubject(subject); err != nil {
			if !errors.Is(err, ErrBadSubject) {
				t.Fatalf("error %v does not wrap ErrBadSubject", err)
			}
		} else if again := s.Room(roomID, kind); again != subject {
			t.Fatalf("%q names room %q, whose %s subject is %q", subject, roomID, kind, again)
		}
		if roomID, err := s.ParseAPIRoomSubject(subject); err == nil {
			rest := strings.TrimPrefix(subject, "sb.api.room.")
			rk, _, _ := strings.Cut(rest, ".")
			if RoomKey(roomID) != rk {
				t.Fatalf("%q names room %q, whose key is %q", subject, roomID, RoomKey(roomID))
			}
		}
		h := nats.Header{}
		h.Set(HeaderKeptSeq, keptSeq)
		h.Set(HeaderKeptTime, keptTime)
		if c, err := s.parseKept(subject, h); err == nil {
			roomID, kind, perr := s.ParseRoomSubject(subject)
			if perr != nil || kind != commands.KindKept || c.subject != s.Room(roomID, commands.KindEvent) || c.seq == 0 {
				t.Fatalf("kept copy %+v read from %q", c, subject)
			}
		}
	})
}

// FuzzReplyError: an error reply of a responder (homeserver workers,
// federation workers, another instance), whatever its
// Nats-Service-Error-Code header and body, becomes a Matrix error with
// an error status (4xx or 5xx) and an errcode, which the bridge can
// answer with.
func FuzzReplyError(f *testing.F) {
	body, _ := Encode(map[string]any{"errcode": "M_NOT_FOUND", "error": "no such room"})
	f.Add("404", "no such room", body)
	f.Add("700", "", []byte{0x81, 0xa7, 'e', 'r', 'r', 'c', 'o', 'd', 'e', 0xc0})
	f.Add("-1", "x", []byte{})
	f.Add("4e2", "x", body)
	f.Add("200", "x", body)
	f.Fuzz(func(t *testing.T, code, text string, data []byte) {
		h := nats.Header{}
		h.Set("Nats-Service-Error-Code", code)
		h.Set("Nats-Service-Error", text)
		e := replyError(code, &nats.Msg{Header: h, Data: data})
		if e == nil || e.Status < 400 || e.Status > 599 || e.Code == "" {
			t.Fatalf("error reply %q %q % x became %+v", code, text, data, e)
		}
	})
}

// TestReplyError_NonErrorStatusIs500 (found by FuzzReplyError): an error
// reply whose Nats-Service-Error-Code is no error status (200, 103) made a
// *commands.Error of that status, which the bridge answered as a success
// with an error body, or as an informational response.
func TestReplyError_NonErrorStatusIs500(t *testing.T) {
	body, _ := Encode(map[string]any{"errcode": "M_UNKNOWN", "error": "bad"})
	for code, want := range map[string]int{"200": 500, "103": 500, "399": 500, "400": 400, "599": 599, "600": 500, "x": 500} {
		if e := replyError(code, &nats.Msg{Data: body}); e.Status != want || e.Message != "bad" {
			t.Errorf("code %q: %+v, want status %d", code, e, want)
		}
	}
}
