package projections_test

import (
	"testing"

	"github.com/scrollback/scrollback/commands"
)

// TestApplyBatch_AFloatTSIsTheLogsTime: a command whose ts is a float (a
// Python worker's time.time() * 1000) is applied with the log's time, as
// earlier releases applied it: failing its validation (as 7d06c09 did for
// a while) changed what a rebuild makes of a log they wrote. From a
// helper's review.
func TestApplyBatch_AFloatTSIsTheLogsTime(t *testing.T) {
	s := openWithServer(t)
	room := "!floatts:test"
	out, err := s.ApplyBatch(0, []commands.LogEntry{entry(t, 1, room, commands.KindCmd, map[string]any{
		"id": "blockit", "action": "block_room", "room_id": room, "params": map[string]any{"block": true},
		"ts": float64(1764403200123.5)})})
	if err != nil {
		t.Fatal(err)
	}
	if task := out[0].Task; task == nil || task.Status != commands.TaskComplete {
		t.Errorf("block_room with a float ts: %+v, want it applied (complete), as the release before did", task)
	}
}
