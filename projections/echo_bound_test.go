package projections_test

import (
	"strings"
	"testing"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// A command's validation error and a dead letter's reason quote what the
// command carried. Quoted in full, a payload well under max_payload made
// a text several times its size (%q writes a control byte as four): the
// failed task's error and the dead-letter record kept it on disk, and a
// status reply that carries the error could no longer be sent.
func TestApplyBatch_EchoedCommandFieldsAreBounded(t *testing.T) {
	const bound = 4 << 10
	s := testenv.NewStore(t)
	r := testenv.NewRoom("echo", "test")
	big := strings.Repeat("\x01", 1<<20) // 1 MiB, 4 MiB once quoted
	cases := []struct {
		name string
		cmd  map[string]any
		dead bool
	}{
		{"room_id", map[string]any{"id": "c1", "action": "purge_room", "room_id": big, "params": map[string]any{}}, true},
		{"token", map[string]any{"id": "c2", "action": "purge_history", "room_id": r.ID, "params": map[string]any{"token": big}}, false},
		{"action", map[string]any{"id": "c3", "action": big, "room_id": r.ID, "params": map[string]any{}}, false},
		{"new_room_user_id", map[string]any{"id": "c4", "action": "shutdown_and_purge_room", "room_id": r.ID, "params": map[string]any{"new_room_user_id": big}}, false},
	}
	for i, c := range cases {
		seq := uint64(i + 1)
		out, err := s.ApplyBatch(0, []commands.LogEntry{entry(t, seq, r.ID, commands.KindCmd, c.cmd)})
		if err != nil {
			t.Fatal(err)
		}
		if c.dead {
			if out[0].Result != projections.OutcomeDead {
				t.Fatalf("%s: Result=%s, want a dead letter", c.name, out[0].Result)
			}
			if len(out[0].Reason) > bound {
				t.Errorf("%s: outcome reason of %d bytes", c.name, len(out[0].Reason))
			}
			d, ok, err := s.DeadLetterAt(seq)
			if err != nil || !ok {
				t.Fatalf("%s: dead letter %v %v", c.name, ok, err)
			}
			if len(d.Reason) > bound {
				t.Errorf("%s: dead-letter reason of %d bytes stored", c.name, len(d.Reason))
			}
			continue
		}
		task, err := s.Task(c.cmd["id"].(string))
		if err != nil || task == nil {
			t.Fatalf("%s: task %v %v", c.name, task, err)
		}
		if task.Status != commands.TaskFailed {
			t.Fatalf("%s: status %s, want failed", c.name, task.Status)
		}
		if len(task.Error) > bound {
			t.Errorf("%s: failed task's error of %d bytes", c.name, len(task.Error))
		}
	}
}
