package handlers

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/testenv"
)

var adminEndpoints = []string{"block", "purge_history", "delete", "delete_status", "purge_status", "delete_status_by_room"}

// FuzzAdminRequest: any payload of an admin request (sb.api.room.<rk>.block,
// .purge_history, .delete, .delete_status; sb.api.purge_status,
// sb.api.delete_status), for any room ID, is answered with a reply or a
// Matrix error (never an internal error, never a panic), and every
// command the request publishes is one the log decodes as a command of
// that room and that passes the command's validation: the admin API
// never makes a task that fails for what it let through.
func FuzzAdminRequest(f *testing.F) {
	store := testenv.NewStore(f)
	s := bus.Subjects{Prefix: "sb"}
	for _, m := range []map[string]any{
		{"block": true, "requested_by": "@admin:test"},
		{},
		{"purge_up_to_ts": int64(1_700_000_000_000), "delete_local_events": true},
		{"event_id": "$e:test", "requested_by": "@admin:test"},
		{"block": true, "purge": true, "force_purge": false, "new_room_user_id": "@admin:test", "room_name": "Gone", "message": "bye", "requested_by": "@admin:test"},
		{"wait": true, "new_room_user_id": "", "purge": nil},
		{"delete_id": "abcdefgh"},
		{"purge_id": "abcdefgh"},
	} {
		data, _ := bus.Encode(m)
		for ep := range adminEndpoints {
			f.Add(uint8(ep), "!r:test", data)
		}
	}
	f.Add(uint8(2), "!r:test", []byte{0x81, 0xa7, 'm', 'e', 's', 's', 'a', 'g', 'e', 0xdd, 0x7f, 0xff, 0xff, 0xff})
	f.Add(uint8(0), "", []byte{0x80})
	f.Fuzz(func(t *testing.T, which uint8, roomID string, data []byte) {
		log := &fuzzLog{}
		a := &Admin{Store: store, Waiter: refusingWaiter{}, Log: log, Subjects: s, Now: time.Now,
			NewID: func() string { return "fuzzcommand" }, ServerName: "test"}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var err error
		switch ep := adminEndpoints[int(which)%len(adminEndpoints)]; ep {
		case "block":
			_, err = a.Block(ctx, s.APIRoom(roomID, ep), data)
		case "purge_history":
			_, err = a.PurgeHistory(ctx, s.APIRoom(roomID, ep), data)
		case "delete":
			_, err = a.Delete(ctx, s.APIRoom(roomID, ep), data)
		case "delete_status":
			_, err = a.DeleteStatus(ctx, s.API(ep), data)
		case "purge_status":
			_, err = a.PurgeStatus(ctx, s.API(ep), data)
		case "delete_status_by_room":
			_, err = a.DeleteStatusByRoom(ctx, s.APIRoom(roomID, "delete_status"), data)
		}
		if err != nil {
			var e *commands.Error
			if !errors.As(err, &e) || e.Status >= 500 && e.Status != 504 {
				t.Fatalf("internal error: %v", err)
			}
			if e.Status == 504 && len(log.appended) == 0 {
				t.Fatalf("504 without a publish: %v", err)
			}
		}
		for i, msg := range log.appended {
			e := s.Decode(uint64(i+1), msg.subject, msg.data, 1)
			if e.Err != nil || e.Command == nil {
				t.Fatalf("published a command the log refuses: %v", e.Err)
			}
			if e.Command.RoomID != roomID || e.Command.ID != msg.msgID {
				t.Fatalf("published %+v for room %q under message ID %q", e.Command, roomID, msg.msgID)
			}
			if verr := e.Command.Validate(); verr != nil {
				t.Fatalf("published a command that fails its validation: %v (%+v)", verr, e.Command)
			}
		}
	})
}
