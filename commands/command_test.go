package commands_test

import (
	"strings"
	"testing"

	"github.com/scrollback/scrollback/commands"
)

// TestCommand_Validate_Envelope: a command's ts and requested_by of the
// wrong type count as absent, as earlier releases applied them: failing
// them would change what a rebuild makes of a log those releases applied
// (a Python worker's float ts; found by a helper's review). A token of the
// wrong type is told from a missing one.
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
		{"ts a string", func(m map[string]any) { m["ts"] = "now" }, ""},
		{"ts a float", func(m map[string]any) { m["ts"] = 1.5e12 + 0.25 }, ""},
		{"requested_by a number", func(m map[string]any) { m["requested_by"] = int64(5) }, ""},
		{"token a number", func(m map[string]any) {
			m["action"], m["params"] = commands.ActionPurgeHistory, map[string]any{"token": int64(5)}
		}, "purge_history: params.token must be a string (t<depth>-<stream>)"},
		{"token absent", func(m map[string]any) { m["action"] = commands.ActionPurgeHistory }, "purge_history: params.token is required (t<depth>-<stream>)"},
	} {
		m := base()
		tt.edit(m)
		c, err := commands.CommandFromMap(m, "!r:test")
		if err != nil {
			t.Fatalf("%s: CommandFromMap: %v", tt.name, err)
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
