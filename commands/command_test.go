package commands_test

import (
	"strings"
	"testing"

	"github.com/scrollback/scrollback/commands"
)

// TestCommand_Validate_Envelope: a command's envelope fields of the wrong
// type (CONTRACT.md section 3: ts an int of ms, requested_by a user ID
// string) fail its validation with the field named, as its params do.
// They were taken for absent: ts "now" became the log's time and a number
// for requested_by became no requester (found by a helper's integration
// walkthrough). A token of the wrong type is told from a missing one.
func TestCommand_Validate_Envelope(t *testing.T) {
	base := func() map[string]any {
		return map[string]any{"id": "c1", "room_id": "!r:test", "action": commands.ActionPurgeRoom, "params": map[string]any{}}
	}
	for _, tt := range []struct {
		name string
		edit func(m map[string]any)
		want string // "" = valid
	}{
		{"well-formed", func(m map[string]any) { m["ts"], m["requested_by"] = int64(1000), "@admin:test" }, ""},
		{"absent ts and requester", func(m map[string]any) {}, ""},
		{"null ts and requester", func(m map[string]any) { m["ts"], m["requested_by"] = nil, nil }, ""},
		{"ts a string", func(m map[string]any) { m["ts"] = "now" }, "ts must be an integer (ms)"},
		{"ts a float", func(m map[string]any) { m["ts"] = 1.5 }, "ts must be an integer (ms)"},
		{"requested_by a number", func(m map[string]any) { m["requested_by"] = int64(5) }, "requested_by must be a string"},
		{"token a number", func(m map[string]any) {
			m["action"], m["params"] = commands.ActionPurgeHistory, map[string]any{"token": int64(5)}
		}, "purge_history: params.token must be a string (t<depth>-<stream>)"},
		{"token absent", func(m map[string]any) { m["action"] = commands.ActionPurgeHistory }, "purge_history: params.token is required (t<depth>-<stream>)"},
	} {
		m := base()
		tt.edit(m)
		c, err := commands.CommandFromMap(m, "!r:test")
		if err != nil {
			t.Fatalf("%s: commands.CommandFromMap: %v", tt.name, err)
		}
		err = c.Validate()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: Validate = %v, want nil", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: Validate = %v, want %q", tt.name, err, tt.want)
		}
	}
}
