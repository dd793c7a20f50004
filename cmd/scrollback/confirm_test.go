package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// TestRebuild_KeepsARefusalThatExpiredBeforeTheForcedPurge: a purge_room
// refused by the members check, and a forced purge_room of the room more
// than a week later (the refused task has expired and been swept by
// then). The forced purge erases the room's history, on which the
// refusal was decided; a rebuild from that log must not bring the refused
// purge back as one that passed. The task runner confirms the refusal at
// once, so the log says how it was decided (found by session 28's
// review: the runner confirmed it only once an erasure waited for it, by
// then never).
func TestRebuild_KeepsARefusalThatExpiredBeforeTheForcedPurge(t *testing.T) {
	var off atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(off.Load())) }
	m := startMainAt(t, now)
	r := refusedPurgeRoom(t, m, "refusedlong")
	testenv.WaitFor(t, 10*time.Second, "the refusal's confirmation", func() bool {
		marked, err := m.Store.Unconfirmed()
		return err == nil && len(marked) == 0
	})
	// Eight days on: the refused task expires, and the runner's sweep
	// deletes it (and its mark).
	off.Store(int64(8 * 24 * time.Hour))
	testenv.WaitFor(t, 20*time.Second, "the sweep of the expired refusal", func() bool {
		task, _ := m.Store.Task("refused")
		return task == nil
	})
	m.publisher().Command(t, map[string]any{"id": "forced", "action": "purge_room", "room_id": r.ID,
		"params": map[string]any{"force": true}, "ts": now().UnixMilli()})
	testenv.WaitFor(t, 30*time.Second, "the forced purge and its erasure", func() bool {
		task, _ := m.Store.Task("forced")
		pending, _ := m.Store.ErasuresPending()
		return task != nil && task.Status == "complete" && !pending
	})
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := rebuildProjection(context.Background(), m.Config, &out); err != nil {
		t.Fatal(err)
	}
	// The log's last sequence, which the erasure's gaps make more than
	// its messages.
	if !strings.Contains(out.String(), "from the log up to sequence ") {
		t.Errorf("rebuild says: %s", out.String())
	}
	s := testenv.OpenStore(t, filepath.Join(m.Config.DataDir, "scrollback.db"))
	rt, err := s.Task("refused")
	if err != nil {
		t.Fatal(err)
	}
	if rt != nil && (rt.Status != commands.TaskFailed || rt.Error != projections.ErrTextUsersJoined) {
		t.Errorf("rebuilt file: the purge_room refused live is %s %q (result %v); want it refused (or expired)", rt.Status, rt.Error, rt.Result)
	}
}
