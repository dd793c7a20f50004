package bus

import (
	"errors"
	"strings"
	"testing"

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
