package main

import (
	"testing"
	"time"

	"github.com/scrollback/scrollback/testenv"
)

// deleteAndWait deletes room with DELETE v2 and body, and returns its
// task once it has ended.
func deleteAndWait(t *testing.T, m *Main, roomID, body string) map[string]any {
	t.Helper()
	st, reply := m.do(t, "DELETE", deletePath("v2", roomID), "tok-admin", body)
	if st != 200 {
		t.Fatalf("%d %v", st, reply)
	}
	id := reply["delete_id"].(string)
	var task map[string]any
	testenv.WaitFor(t, 30*time.Second, "the deletion to end", func() bool {
		_, task = m.do(t, "GET", "/_synapse/admin/v2/rooms/delete_status/"+id, "tok-admin", "")
		return task["status"] == "complete" || task["status"] == "failed"
	})
	return task
}

// TestDeleteRoom_EveryUserLeavesWhateverTheirIDsHash (found by a review
// helper): Synapse's shutdown_room makes every local member leave
// (update_membership, one per user). Here each user's requests carry a txn_id, and the homeserver
// answers a txn_id it has seen with its first answer: two users whose
// txn_ids are the same get one leave between them. @user374198:test and
// @user1702622:test have the same 32-bit FNV-1a hash.
func TestDeleteRoom_EveryUserLeavesWhateverTheirIDsHash(t *testing.T) {
	m := startMain(t)
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	r := testenv.NewRoom("hashes", "test")
	hs.Track(r)
	a, b := "@user374198:test", "@user1702622:test"
	evs := append(r.Setup(alice), r.Join(a), r.Join(b), r.Msg(alice, "hi"))
	seqs := m.publisher().Publish(t, evs...)
	if _, err := m.messages(t, r.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	task := deleteAndWait(t, m, r.ID, `{}`)
	for _, u := range []string{alice, a, b} {
		if n := hs.Acted("leave", u); n != 1 {
			t.Errorf("%s left %d times, want 1", u, n)
		}
		if n := hs.Acted("forget", u); n != 1 {
			t.Errorf("%s forgot the room %d times, want 1", u, n)
		}
	}
	if task["status"] != "complete" {
		t.Fatalf("task = %v", task)
	}
}

// TestDeleteRoom_ResumeListsTheMembersAgain (found by a review helper):
// Synapse's shutdown_room lists the room's local members
// (get_local_users_related_to_room) each time it runs, a resumed task included, so a local user who joined
// while an interrupted deletion was under way is made to leave when it
// resumes, and the unforced purge then succeeds.
func TestDeleteRoom_ResumeListsTheMembersAgain(t *testing.T) {
	m := startMain(t, func(c *Config) { c.Shutdown.Concurrency = 1; c.NATS.Listen = "127.0.0.1:0" })
	hs := separateHomeserver(t, m)
	room := shutdownRoom(t, m, hs, "relist", 3)
	hs.StallLeave("@user0:test")
	st, body := m.do(t, "DELETE", deletePath("v2", room.ID), "tok-admin", `{}`)
	if st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	id := body["delete_id"].(string)
	// One user at a time, in order: alice, the invitee and the knocker
	// are done, user0's leave hangs.
	testenv.WaitFor(t, 20*time.Second, "user0's leave", func() bool { return len(hs.Calls("leave")) >= 4 })
	seq := m.publisher().Publish(t, room.Join("@late:test"))
	testenv.WaitApplied(t, m.Projector, seq[0])
	addr := m.NATSServer.Addr().String()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	cfg := m.Config
	cfg.NATS.Listen = addr
	m2 := openAgain(t, cfg)
	hs.ReleaseStalled()
	testenv.WaitFor(t, 30*time.Second, "the deletion to end after the restart", func() bool {
		task, _ := m2.Store.Task(id)
		return task != nil && (task.Status == "complete" || task.Status == "failed")
	})
	task, _ := m2.Store.Task(id)
	if n := hs.Acted("leave", "@late:test"); n != 1 || task.Status != "complete" {
		t.Fatalf("@late:test left %d times; task %s %q %v", n, task.Status, task.Error, task.Result["kicked_users"])
	}
}
