package main

import (
	"net/url"
	"strings"
	"testing"
)

// TestDeleteRoom_NullBoolIsNotABoolean: Synapse reads block, purge and
// force_purge with content.get(key, default) and then checks isinstance
// bool, so an explicit JSON null is "must be a boolean, if given", not the
// default (SYNAPSE.md 7.1).
func TestDeleteRoom_NullBoolIsNotABoolean(t *testing.T) {
	m := startMain(t)
	for _, k := range []string{"block", "purge", "force_purge"} {
		for _, v := range []string{"v1", "v2"} {
			st, body := m.do(t, "DELETE", deletePath(v, "!nulls:test"), "tok-admin", `{"`+k+`": null}`)
			wantErr(t, st, body, 400, "M_BAD_JSON", "Param '"+k+"' must be a boolean, if given")
		}
	}
}

// TestDeleteRoom_LongRoomID: a room ID too long for a NATS subject is
// "not a legal room ID" (after the boolean checks), and the bridge keeps
// answering.
func TestDeleteRoom_LongRoomID(t *testing.T) {
	m := startMain(t)
	long := "!" + strings.Repeat("a", 5000) + ":test"
	for _, v := range []string{"v1", "v2"} {
		st, body := m.do(t, "DELETE", deletePath(v, long), "tok-admin", `{"block": 1}`)
		wantErr(t, st, body, 400, "M_BAD_JSON", "Param 'block' must be a boolean, if given")
		st, body = m.do(t, "DELETE", deletePath(v, long), "tok-admin", `{}`)
		wantErr(t, st, body, 400, "M_UNKNOWN", long+" is not a legal room ID")
	}
	st, body := m.do(t, "GET", "/_synapse/admin/v1/rooms/"+url.PathEscape("!x:test")+"/block", "tok-admin", "")
	if st != 200 || body["block"] != false {
		t.Fatalf("after a long room id: %d %v", st, body)
	}
}
