package main

import (
	"net/url"
	"testing"
	"time"

	"github.com/scrollback/scrollback/testenv"
)

// TestDeleteRoom_PortReadAsPythonInt (found by a review helper): Synapse's RoomID.is_valid reads a
// server name's port with Python's int() (parse_server_name), so
// "!a:test:+80" is a legal room ID: the deletion, block and status routes
// take it instead of answering 400 "... is not a legal room ID".
func TestDeleteRoom_PortReadAsPythonInt(t *testing.T) {
	m := startMain(t)
	_ = testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	room := "!a:test:+80"
	st, body := m.do(t, "DELETE", deletePath("v2", room), "tok-admin", `{"block": true}`)
	if st != 200 {
		t.Fatalf("DELETE v2 %s: %d %v; Synapse takes the room ID", room, st, body)
	}
	id, _ := body["delete_id"].(string)
	testenv.WaitFor(t, 15*time.Second, "completion", func() bool {
		st, task := m.do(t, "GET", "/_synapse/admin/v2/rooms/delete_status/"+id, "tok-admin", "")
		return st == 200 && task["status"] == "complete"
	})
	st, body = m.do(t, "GET", deletePath("v2", room)+"/delete_status", "tok-admin", "")
	if st != 200 {
		t.Fatalf("delete_status of %s: %d %v", room, st, body)
	}
	st, body = m.do(t, "GET", "/_synapse/admin/v1/rooms/"+url.PathEscape(room)+"/block", "tok-admin", "")
	if st != 200 || body["block"] != true {
		t.Fatalf("block of %s: %d %v", room, st, body)
	}
}

// TestDeleteRoom_RefusedRaceLeavesNoTask (found by a review helper): of
// v2 deletions of a room sent at once, those refused with "Purge already
// in progress" were never scheduled, as in Synapse (start_shutdown_and_purge_room raises
// before schedule_task): the room's delete_status lists only deletions
// that were accepted.
func TestDeleteRoom_RefusedRaceLeavesNoTask(t *testing.T) {
	m := startMain(t)
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	room := shutdownRoom(t, m, hs, "race", 3)
	hs.SetDelay(50 * time.Millisecond)
	const n = 8
	type reply struct {
		st   int
		body map[string]any
	}
	replies := make(chan reply, n)
	start := make(chan struct{})
	for range n {
		go func() {
			<-start
			st, body := m.do(t, "DELETE", deletePath("v2", room.ID), "tok-admin", `{"purge": false}`)
			replies <- reply{st, body}
		}()
	}
	close(start)
	accepted := map[string]bool{}
	for range n {
		r := <-replies
		if r.st == 200 {
			accepted[r.body["delete_id"].(string)] = true
		} else {
			wantErr(t, r.st, r.body, 400, "M_UNKNOWN", "Purge already in progress for "+room.ID)
		}
	}
	var results []any
	testenv.WaitFor(t, 30*time.Second, "the deletions to end", func() bool {
		_, body := m.do(t, "GET", deletePath("v2", room.ID)+"/delete_status", "tok-admin", "")
		results, _ = body["results"].([]any)
		for _, r := range results {
			if r.(map[string]any)["status"] == "active" {
				return false
			}
		}
		return len(results) > 0
	})
	for _, r := range results {
		task := r.(map[string]any)
		if !accepted[task["delete_id"].(string)] {
			t.Errorf("delete_status lists %v, a deletion the API refused (accepted: %v)", task, accepted)
		}
	}
}
