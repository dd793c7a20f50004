package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/testenv"
)

// jsonOfValues is a JSON object of the scalar fields and key, an array of
// zeros, holding total values in all as the service counts a request's
// (bus.RequestLimits): every value, every object key.
func jsonOfValues(tb testing.TB, fields map[string]any, key string, total int) string {
	tb.Helper()
	obj := map[string]any{key: make([]int, total-1-2*len(fields)-2)}
	for k, v := range fields {
		obj[k] = v
	}
	data, err := json.Marshal(obj)
	if err != nil {
		tb.Fatal(err)
	}
	return string(data)
}

// TestHTTP_BodyOfTooManyValues: a body under MaxBodyBytes may hold more
// values than the service takes in a request (bus.RequestLimits). The
// bridge passed it on: where the values were in a field it forwards, the
// admin got the service's 400 M_BAD_JSON "Request must be a MessagePack
// map: payload exceeds size limits: ...", about an encoding the admin
// never sent; where they were in a field it drops, the request went
// through (a room blocked, deleted). The bridge now counts a body's values
// as it reads them and refuses one of more than the service takes, on
// every route with a body, before anything is done.
func TestHTTP_BodyOfTooManyValues(t *testing.T) {
	m := startMain(t)
	room := testenv.NewRoom("manyvalues", "test")
	msg := room.Msg(alice, "kept")
	m.publisher().Publish(t, append(room.Setup(alice), msg)...)
	limit := bus.RequestLimits.MaxElements
	tooMany := fmt.Sprintf("Request body has too many values (at most %d)", limit)
	purge := "/_synapse/admin/v1/purge_history/" + url.PathEscape(room.ID)
	block := "/_synapse/admin/v1/rooms/" + url.PathEscape(room.ID) + "/block"
	for _, tt := range []struct {
		name, method, path string
		fields             map[string]any
		key                string
	}{
		{"purge, the values in the event cut-off", "POST", purge, nil, "purge_up_to_event_id"},
		{"purge, the values in a field it ignores", "POST", purge, map[string]any{"purge_up_to_ts": 1 << 60}, "x"},
		{"purge with the event in the URL", "POST", purge + "/" + url.PathEscape(msg.ID()), nil, "x"},
		{"block, the values in block", "PUT", block, nil, "block"},
		{"block, the values in a field it ignores", "PUT", block, map[string]any{"block": true}, "x"},
		{"v2 deletion, the values in room_name", "DELETE", deletePath("v2", room.ID), nil, "room_name"},
		{"v2 deletion, the values in a field it ignores", "DELETE", deletePath("v2", room.ID), map[string]any{"block": true}, "x"},
		{"v1 deletion, the values in message", "DELETE", deletePath("v1", room.ID), nil, "message"},
		{"v1 deletion, the values in a field it ignores", "DELETE", deletePath("v1", room.ID), map[string]any{"block": true}, "x"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := jsonOfValues(t, tt.fields, tt.key, limit+1)
			st, reply := m.do(t, tt.method, tt.path, "tok-admin", body)
			wantErr(t, st, reply, 400, "M_TOO_LARGE", tooMany)
		})
	}
	// Nothing was done: no purge, no block, no deletion.
	st, reply := m.do(t, "GET", "/_synapse/admin/v1/rooms/"+url.PathEscape(room.ID)+"/messages?dir=b", "tok-admin", "")
	if st != 200 || len(chunkIDs(reply)) != len(room.Setup(alice))+1 {
		t.Fatalf("the room after the refused requests: %d %v", st, reply)
	}
	if st, reply := m.do(t, "GET", block, "tok-admin", ""); st != 200 || reply["block"] != false {
		t.Fatalf("block after the refused requests: %d %v", st, reply)
	}
	st, reply = m.do(t, "GET", deletePath("v2", room.ID)+"/delete_status", "tok-admin", "")
	wantErr(t, st, reply, 404, "M_NOT_FOUND", "No delete task for room_id '"+room.ID+"' found")

	// A filter cannot hold that many: a request line that long is past
	// the HTTP server's bound on a request's header (64 KiB), refused
	// before the bridge sees it.
	filter := strings.ReplaceAll(url.QueryEscape(jsonOfValues(t, nil, "types", limit+1)), "%2C", ",")
	for _, path := range []string{
		"/_matrix/client/v3/rooms/" + url.PathEscape(room.ID) + "/messages?filter=",
		"/_synapse/admin/v1/rooms/" + url.PathEscape(room.ID) + "/messages?filter=",
	} {
		resp, err := http.Get("http://" + m.HTTPAddr + path + filter + "&access_token=tok-admin")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("%s<a filter of %d values>: %d, want 431", path, limit+1, resp.StatusCode)
		}
	}
}

// TestHTTP_BodyOfAsManyValuesAsTheServiceTakes: the bound is the
// service's own (bus.RequestLimits), not a lower one: a body of that many
// values, with them in a field the route does not forward, is answered as
// before. With them in a field it forwards, the request the bridge makes
// of it holds the bridge's own fields as well (requested_by, wait), a few
// values past the limit: the service refuses it, in the same terms.
func TestHTTP_BodyOfAsManyValuesAsTheServiceTakes(t *testing.T) {
	m := startMain(t)
	limit := bus.RequestLimits.MaxElements
	room := testenv.NewRoom("asmany", "test")
	m.publisher().Publish(t, append(room.Setup(alice), room.Msg(alice, "one"))...)
	block := "/_synapse/admin/v1/rooms/" + url.PathEscape(room.ID) + "/block"
	st, reply := m.do(t, "PUT", block, "tok-admin", jsonOfValues(t, map[string]any{"block": true}, "x", limit))
	if st != 200 || reply["block"] != true {
		t.Fatalf("block with %d values: %d %v", limit, st, reply)
	}
	st, reply = m.do(t, "POST", "/_synapse/admin/v1/purge_history/"+url.PathEscape(room.ID), "tok-admin",
		jsonOfValues(t, map[string]any{"purge_up_to_ts": 1}, "x", limit))
	if id, _ := reply["purge_id"].(string); st != 200 || id == "" {
		t.Fatalf("purge with %d values: %d %v", limit, st, reply)
	}
	st, reply = m.do(t, "DELETE", deletePath("v2", "!asmany2:test"), "tok-admin", jsonOfValues(t, map[string]any{"purge": false}, "x", limit))
	if id, _ := reply["delete_id"].(string); st != 200 || id == "" {
		t.Fatalf("v2 deletion with %d values: %d %v", limit, st, reply)
	}
	st, reply = m.do(t, "DELETE", deletePath("v2", "!asmany3:test"), "tok-admin", jsonOfValues(t, nil, "room_name", limit))
	wantErr(t, st, reply, 400, "M_TOO_LARGE", fmt.Sprintf("Request has too many values (at most %d)", limit))
}

// TestAPI_RequestOfTooManyValues: a worker calling the service over NATS
// (CONTRACT.md section 4) with a request of more values than the service
// takes got 400 M_BAD_JSON "Request must be a MessagePack map: payload
// exceeds size limits: more than 262144 values", for a request that is a
// MessagePack map. Every endpoint now answers 400 M_TOO_LARGE with the
// limit, in the header and in the body.
func TestAPI_RequestOfTooManyValues(t *testing.T) {
	m := startMain(t)
	s := bus.Subjects{Prefix: m.Config.NATS.SubjectPrefix}
	limit := bus.RequestLimits.MaxElements
	want := fmt.Sprintf("Request has too many values (at most %d)", limit)
	// {"x": [nil, ...]}: the map, the key, the array and its elements.
	data, err := bus.Encode(map[string]any{"x": make([]any, limit+1-3)})
	if err != nil {
		t.Fatal(err)
	}
	for _, subject := range []string{
		s.APIRoom("!r:test", "messages"), s.APIRoom("!r:test", "purge_history"), s.APIRoom("!r:test", "delete"),
		s.APIRoom("!r:test", "delete_status"), s.APIRoom("!r:test", "block"), s.API("purge_status"), s.API("delete_status"),
	} {
		msg, err := m.NC.RequestMsg(&nats.Msg{Subject: subject, Data: data}, 10*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", subject, err)
		}
		body, _ := bus.DecodeMap(msg.Data, bus.DefaultLimits)
		if code, text := msg.Header.Get("Nats-Service-Error-Code"), msg.Header.Get("Nats-Service-Error"); code != "400" || text != want || body["errcode"] != "M_TOO_LARGE" || body["error"] != want {
			t.Errorf("%s: %s %q %v, want 400 M_TOO_LARGE %q", subject, code, text, body, want)
		}
	}
}
