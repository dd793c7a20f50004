package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/internal/loadgen"
	"github.com/scrollback/scrollback/testenv"
)

// do sends an HTTP request to the bridge and decodes the JSON object.
func (m *Main) do(tb testing.TB, method, path, token, body string) (int, map[string]any) {
	tb.Helper()
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	return m.doWith(tb, method, path, h, body)
}

// doWith is do with the request's headers as given.
func (m *Main) doWith(tb testing.TB, method, path string, h http.Header, body string) (int, map[string]any) {
	tb.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+m.HTTPAddr+path, rd)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header = h
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil && resp.StatusCode != 200 {
		tb.Fatalf("%s %s: %d with non-JSON body %q", method, path, resp.StatusCode, data)
	}
	return resp.StatusCode, out
}

func wantErr(tb testing.TB, status int, body map[string]any, wantStatus int, code, text string) {
	tb.Helper()
	if status != wantStatus || body["errcode"] != code || (text != "" && body["error"] != text) {
		tb.Fatalf("got %d %v, want %d %s %q", status, body, wantStatus, code, text)
	}
}

// fakeWhoami answers sb.hs.whoami for one token.
func fakeWhoami(tb testing.TB, m *Main, token, userID string, admin bool) {
	tb.Helper()
	sub, err := m.NC.Subscribe(bus.Subjects{Prefix: "sb"}.HS("whoami"), func(msg *nats.Msg) {
		req, _ := bus.DecodeMap(msg.Data, bus.DefaultLimits)
		if req["access_token"] != token {
			body, _ := bus.Encode(map[string]any{"errcode": "M_UNKNOWN_TOKEN", "error": "nope"})
			h := nats.Header{}
			h.Set("Nats-Service-Error-Code", "401")
			h.Set("Nats-Service-Error", "nope")
			msg.RespondMsg(&nats.Msg{Header: h, Data: body})
			return
		}
		data, _ := bus.Encode(map[string]any{"user_id": userID, "admin": admin})
		msg.Respond(data)
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sub.Unsubscribe() })
	// The bridge asks on its own connection: the server must know of
	// this subscription before the test's first request, or the bridge
	// sees no responder and answers 503.
	if err := m.NC.Flush(); err != nil {
		tb.Fatal(err)
	}
}

func TestHTTP_AuthAndErrors(t *testing.T) {
	m := startMain(t)
	room := testenv.NewRoom("web", "test")
	seqs := m.publisher().Publish(t, append(room.Setup(alice, bob), room.Msg(alice, "hi"))...)
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	msgs := "/_matrix/client/v3/rooms/" + url.PathEscape(room.ID) + "/messages"
	admin := "/_synapse/admin/v1/rooms/" + url.PathEscape(room.ID) + "/messages"

	t.Run("missing token", func(t *testing.T) {
		st, body := m.do(t, "GET", msgs, "", "")
		wantErr(t, st, body, 401, "M_MISSING_TOKEN", "")
	})
	t.Run("tokens in the wrong shape", func(t *testing.T) {
		// Synapse's get_access_token_from_request.
		for _, tt := range []struct {
			name, query string
			headers     []string
			text        string
		}{
			{"header and query", "?access_token=tok-alice", []string{"Bearer tok-alice"}, "Mixing Authorization headers and access_token query parameters."},
			{"two headers", "", []string{"Bearer tok-alice", "Bearer tok-admin"}, "Too many Authorization headers."},
			{"two spaces", "", []string{"Bearer  tok-alice"}, "Invalid Authorization header."},
			{"not bearer", "", []string{"Basic dG9rLWFsaWNl"}, "Invalid Authorization header."},
		} {
			h := http.Header{}
			for _, v := range tt.headers {
				h.Add("Authorization", v)
			}
			st, body := m.doWith(t, "GET", msgs+tt.query, h, "")
			if st != 401 || body["errcode"] != "M_MISSING_TOKEN" || body["error"] != tt.text {
				t.Errorf("%s: %d %v, want 401 M_MISSING_TOKEN %q", tt.name, st, body, tt.text)
			}
		}
		// An empty token is a token nobody has, as in Synapse. (Go's
		// server trims "Bearer " to "Bearer", an invalid header.)
		st, body := m.doWith(t, "GET", msgs+"?access_token=", http.Header{}, "")
		wantErr(t, st, body, 401, "M_UNKNOWN_TOKEN", "Unrecognised access token.")
	})
	t.Run("query token", func(t *testing.T) {
		st, body := m.do(t, "GET", msgs+"?access_token=tok-alice", "", "")
		if st != 200 || len(body["chunk"].([]any)) == 0 {
			t.Fatalf("%d %v", st, body)
		}
	})
	t.Run("unknown token without a homeserver is 503", func(t *testing.T) {
		st, body := m.do(t, "GET", msgs, "nope", "")
		wantErr(t, st, body, 503, "M_UNKNOWN", "")
	})
	t.Run("whoami", func(t *testing.T) {
		fakeWhoami(t, m, "hs-token", bob, false)
		st, body := m.do(t, "GET", msgs+"?dir=b&limit=1", "hs-token", "")
		if st != 200 {
			t.Fatalf("%d %v", st, body)
		}
		st, body = m.do(t, "GET", msgs, "other", "")
		wantErr(t, st, body, 401, "M_UNKNOWN_TOKEN", "")
	})
	t.Run("admin endpoints need an admin", func(t *testing.T) {
		st, body := m.do(t, "GET", admin, "tok-alice", "")
		wantErr(t, st, body, 403, "M_FORBIDDEN", "You are not a server admin")
		st, body = m.do(t, "GET", admin+"?dir=b", "tok-admin", "")
		if st != 200 || len(body["chunk"].([]any)) == 0 {
			t.Fatalf("%d %v", st, body)
		}
	})
	tests := []struct {
		name, query string
		status      int
		code, text  string
	}{
		{"bad dir", "dir=x", 400, "M_INVALID_PARAM", "Query parameter 'dir' must be one of ['b', 'f']"},
		{"bad from", "from=zzz", 400, "M_UNKNOWN", "'from' parameter is invalid"},
		{"bad limit", "limit=x", 400, "M_INVALID_PARAM", "Query parameter limit must be an integer"},
		{"negative limit", "limit=-3", 400, "M_INVALID_PARAM", "Query parameter limit must be a positive integer."},
		{"bad filter", "filter=%7Bnope", 400, "M_NOT_JSON", "Query parameter filter must be a valid JSON object"},
		{"non-object filter", "filter=%5B1%5D", 400, "M_NOT_JSON", "Query parameter filter must be a valid JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, body := m.do(t, "GET", msgs+"?"+tt.query, "tok-alice", "")
			wantErr(t, st, body, tt.status, tt.code, tt.text)
		})
	}
	t.Run("not a member", func(t *testing.T) {
		fakeWhoami(t, m, "carol", "@carol:test", false)
		st, body := m.do(t, "GET", msgs, "carol", "")
		wantErr(t, st, body, 403, "M_FORBIDDEN", "User @carol:test not in room !web:test, and room previews are disabled")
	})
	t.Run("filter and every prefix", func(t *testing.T) {
		// Synapse's client_patterns(..., v1=True): r0, v3, api/v1 and
		// unstable.
		for _, prefix := range []string{"r0", "v3", "api/v1", "unstable"} {
			st, body := m.do(t, "GET", "/_matrix/client/"+prefix+"/rooms/"+url.PathEscape(room.ID)+"/messages?dir=b&filter="+url.QueryEscape(`{"types":["m.room.message"]}`), "tok-bob", "")
			if st != 200 || len(body["chunk"].([]any)) != 1 {
				t.Fatalf("%s: %d %v", prefix, st, body)
			}
		}
	})
	t.Run("health and metrics", func(t *testing.T) {
		for _, p := range []string{"/health", "/metrics"} {
			resp, err := http.Get("http://" + m.HTTPAddr + p)
			if err != nil {
				t.Fatal(err)
			}
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("%s: %d", p, resp.StatusCode)
			}
			if p == "/metrics" {
				for _, name := range []string{"scrollback_request_duration_seconds", "scrollback_projection_lag_messages", "scrollback_log_messages_total",
					"scrollback_commit_seconds_count", "scrollback_commit_messages_total", "scrollback_commit_pages_total",
					"scrollback_backoff_seconds_total", "scrollback_requests_detached", "go_sched_latencies_seconds_bucket",
					"scrollback_projection_file_bytes", "scrollback_projection_free_bytes"} {
					if !bytes.Contains(data, []byte(name)) {
						t.Errorf("/metrics lacks %s", name)
					}
				}
				// The room's events were applied by group commits.
				for _, name := range []string{"scrollback_commit_seconds_count", "scrollback_commit_messages_total", "scrollback_commit_pages_total"} {
					if v, ok := loadgen.PromValue(data, name); !ok || v <= 0 {
						t.Errorf("/metrics: %s = %v, want > 0", name, v)
					}
				}
			}
		}
	})
}

// slowHomeserver answers sb.hs.whoami (for bob) and sb.hs.ignored_users
// (none), each hold after the request came, or at once when the test
// ends: later than the short homeserver.timeout a test sets.
func slowHomeserver(tb testing.TB, m *Main, hold time.Duration) {
	tb.Helper()
	done := make(chan struct{})
	tb.Cleanup(func() { close(done) })
	subjects := bus.Subjects{Prefix: m.Config.NATS.SubjectPrefix}
	for _, name := range []string{"whoami", "ignored_users"} {
		sub, err := m.NC.Subscribe(subjects.HS(name), func(msg *nats.Msg) {
			go func() {
				select {
				case <-done:
				case <-time.After(hold):
				}
				data, _ := bus.Encode(map[string]any{"user_id": bob, "admin": false, "ignored_users": []any{}})
				msg.Respond(data)
			}()
		})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { sub.Unsubscribe() })
	}
	if err := m.NC.Flush(); err != nil { // before the bridge asks, on its own connection
		tb.Fatal(err)
	}
}

// TestHTTP_HomeserverTimeoutBoundsTheBridgesRequests: homeserver.timeout
// is how long scrollback waits for one reply of the homeserver workers,
// the HTTP bridge's sb.hs.whoami (a token the config does not know) and
// sb.hs.ignored_users (a client read) included: past it, a token the
// homeserver must check is 503 and a read answers without the ignore list. The bridge asked them under the HTTP
// request's own 30 s deadline, and a requester's timeout applies only to
// a context without one, so the key did nothing there: a homeserver that
// took 29 s to answer held every read that long, and the read succeeded.
func TestHTTP_HomeserverTimeoutBoundsTheBridgesRequests(t *testing.T) {
	m := startMain(t, func(c *Config) { c.Homeserver.Timeout = commands.DurationOf(50 * time.Millisecond) })
	room := testenv.NewRoom("slowhs", "test")
	seqs := m.publisher().Publish(t, append(room.Setup(alice, bob), room.Msg(alice, "hi"))...)
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	// Longer than the HTTP request's own deadline: a read that waited
	// for this answer would end in that deadline's 503.
	slowHomeserver(t, m, time.Minute)
	msgs := "/_matrix/client/v3/rooms/" + url.PathEscape(room.ID) + "/messages"

	st, body := m.do(t, "GET", msgs, "hs-token", "")
	wantErr(t, st, body, 503, "M_UNKNOWN", "Cannot check the access token: no homeserver answers sb.hs.whoami")
	// No ignore list in time: the read answers as if alice ignored
	// nobody (CONTRACT.md section 5).
	st, body = m.do(t, "GET", msgs, "tok-alice", "")
	if chunk, _ := body["chunk"].([]any); st != 200 || len(chunk) == 0 {
		t.Fatalf("alice's read past homeserver.timeout: %d %v", st, body)
	}
}

func TestHTTP_BlockAPI(t *testing.T) {
	m := startMain(t)
	path := "/_synapse/admin/v1/rooms/" + url.PathEscape("!blocked:test") + "/block"
	st, body := m.do(t, "GET", path, "tok-admin", "")
	if st != 200 || body["block"] != false {
		t.Fatalf("initial: %d %v", st, body)
	}
	tests := []struct {
		name, path, body string
		status           int
		code, text       string
	}{
		{"empty body", path, "", 400, "M_NOT_JSON", "Content not JSON."},
		{"not an object", path, "[]", 400, "M_BAD_JSON", "Content must be a JSON object."},
		{"bad room id before missing block", "/_synapse/admin/v1/rooms/nope/block", "{}", 400, "M_UNKNOWN", "nope is not a legal room ID"},
		{"missing block", path, "{}", 400, "M_MISSING_PARAM", "Missing params: ['block']"},
		{"block not bool", path, `{"block": "yes"}`, 400, "M_BAD_JSON", "Param 'block' must be a boolean."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, body := m.do(t, "PUT", tt.path, "tok-admin", tt.body)
			wantErr(t, st, body, tt.status, tt.code, tt.text)
		})
	}
	st, body = m.do(t, "PUT", path, "tok-alice", `{"block": true}`)
	wantErr(t, st, body, 403, "M_FORBIDDEN", "You are not a server admin")
	st, body = m.do(t, "PUT", path, "tok-admin", `{"block": true}`)
	if st != 200 || body["block"] != true {
		t.Fatalf("block: %d %v", st, body)
	}
	// The reply comes after the command is applied: a read sees it at once.
	st, body = m.do(t, "GET", path, "tok-admin", "")
	if st != 200 || body["block"] != true || body["user_id"] != "@admin:test" {
		t.Fatalf("after block: %d %v", st, body)
	}
	st, body = m.do(t, "PUT", path, "tok-admin", `{"block": false}`)
	if st != 200 || body["block"] != false {
		t.Fatalf("unblock: %d %v", st, body)
	}
	st, body = m.do(t, "GET", path, "tok-admin", "")
	if st != 200 || body["block"] != false {
		t.Fatalf("after unblock: %d %v", st, body)
	}
}

func TestMain_GeneratedAdminToken(t *testing.T) {
	m := startMain(t, func(c *Config) { c.Auth.Tokens = nil })
	tok, err := os.ReadFile(filepath.Join(m.Config.DataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(m.Config.DataDir, "admin.token"))
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin.token mode %v, want 0600", fi.Mode().Perm())
	}
	st, body := m.do(t, "GET", "/_synapse/admin/v1/rooms/"+url.PathEscape("!x:test")+"/messages", strings.TrimSpace(string(tok)), "")
	if st != 200 {
		t.Fatalf("admin read with the generated token: %d %v", st, body)
	}
}

// TestMain_GeneratedAdminTokenLogSaysWhereItCameFrom: the log line about
// the generated admin token says whether this start made it (and where it
// wrote it) or read it back from the file an earlier start wrote. It said
// "using a generated one" on every start, so an operator was told of a
// new token that did not exist.
func TestMain_GeneratedAdminTokenLogSaysWhereItCameFrom(t *testing.T) {
	var first testenv.Buffer
	m := startMainWith(t, &Main{Logger: slog.New(slog.NewTextHandler(&first, nil))}, func(c *Config) { c.Auth.Tokens = nil })
	path := filepath.Join(m.Config.DataDir, "admin.token")
	made := fmt.Sprintf("no admin token in auth.tokens: generated one and wrote it to its file\" path=%s", path)
	read := fmt.Sprintf("no admin token in auth.tokens: using the one in its file\" path=%s", path)
	if !strings.Contains(first.String(), made) || strings.Contains(first.String(), read) {
		t.Fatalf("first start's log:\n%s\nwant a line with %q", first.String(), made)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	var again testenv.Buffer
	m2 := &Main{Config: m.Config, Logger: slog.New(slog.NewTextHandler(&again, nil))}
	if err := m2.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m2.Close() })
	if !strings.Contains(again.String(), read) || strings.Contains(again.String(), made) {
		t.Fatalf("second start's log:\n%s\nwant a line with %q", again.String(), read)
	}
	if m2.AdminToken != m.AdminToken {
		t.Fatalf("second start's token %q, want the first's %q", m2.AdminToken, m.AdminToken)
	}
}

// TestAdminToken_FileStates: the generated admin token's file grants a
// server admin's rights, so a token is taken from it only when it is a
// regular file no other user may read or write, and long enough; an
// empty file, whatever its mode, gets a new 0600 file in its place; a
// symbolic link is refused, never followed; a token that was made is read
// back as it was.
func TestAdminToken_FileStates(t *testing.T) {
	write := func(t *testing.T, content string, mode os.FileMode) string {
		dir := t.TempDir()
		path := filepath.Join(dir, "admin.token")
		if err := os.WriteFile(path, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	fresh := func(t *testing.T, dir string) string {
		t.Helper()
		tok, path, made, err := adminToken(dir, "test")
		if err != nil {
			t.Fatal(err)
		}
		info, err := os.Lstat(path)
		if err != nil || !info.Mode().IsRegular() || info.Mode().Perm() != 0o600 || !strings.HasPrefix(tok, "sb_") || !made {
			t.Fatalf("token %q (made %v) in %v (%v), want a new token in a regular 0600 file", tok, made, info.Mode(), err)
		}
		if again, _, made, err := adminToken(dir, "test"); err != nil || again != tok || made {
			t.Fatalf("read back: %q (made %v), %v; want %q, read", again, made, err, tok)
		}
		return tok
	}
	t.Run("none", func(t *testing.T) { fresh(t, t.TempDir()) })
	t.Run("empty, readable by others", func(t *testing.T) { fresh(t, write(t, "", 0o644)) })
	t.Run("an operator's own token", func(t *testing.T) {
		dir := write(t, "an-operator-chose-this-one\n", 0o600)
		if tok, _, made, err := adminToken(dir, "test"); err != nil || tok != "an-operator-chose-this-one" || made {
			t.Fatalf("%q (made %v), %v", tok, made, err)
		}
	})
	for name, tt := range map[string]struct {
		content string
		mode    os.FileMode
		want    string
	}{
		"readable by others": {"sb_long-enough-token-here", 0o644, "chmod 600"},
		"too short":          {"x", 0o600, "shorter than 16"},
	} {
		t.Run(name, func(t *testing.T) {
			if tok, _, _, err := adminToken(write(t, tt.content, tt.mode), "test"); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("token %q, err %v; want an error saying %q", tok, err, tt.want)
			}
		})
	}
	t.Run("a symbolic link", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(t.TempDir(), "elsewhere")
		if err := os.WriteFile(target, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(dir, "admin.token")); err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := adminToken(dir, "test"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("err %v, want the link refused", err)
		}
		if b, _ := os.ReadFile(target); len(b) != 0 {
			t.Fatalf("the link's target was written: %q", b)
		}
	})
}

// TestHTTP_MessagesLongRoomID: the client /messages route refuses a room
// ID longer than Matrix allows before it asks the homeserver for the
// user's ignore list: bad input is a 400 at once, not a round trip (nor a
// 503 when the homeserver is down).
func TestHTTP_MessagesLongRoomID(t *testing.T) {
	m := startMain(t)
	hs := testenv.NewHomeserver(t, m.NC, m.publisher(), "test")
	long := "!" + strings.Repeat("a", 300) + ":test"
	st, body := m.do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(long)+"/messages?dir=b", "tok-bob", "")
	wantErr(t, st, body, 400, "M_INVALID_PARAM", "Invalid room ID")
	if c := hs.Calls("ignored_users"); len(c) != 0 {
		t.Fatalf("the homeserver was asked for the ignore list %d times for an invalid room ID", len(c))
	}
}

// TestHTTP_Unrecognized: a request no route serves is M_UNRECOGNIZED
// "Unrecognized request", answered before any admin check, as Synapse's
// JsonResource answers when no pattern matches: 405 when a route serves
// the path with another method, else 404.
func TestHTTP_Unrecognized(t *testing.T) {
	m := startMain(t)
	room := url.PathEscape("!a:test")
	for _, c := range []struct {
		method, path, token string
		status              int
	}{
		{"GET", "/_synapse/admin/v2/rooms/" + room, "tok-admin", 405},
		{"POST", "/_synapse/admin/v1/rooms/" + room + "/block", "tok-admin", 405},
		{"DELETE", "/_synapse/admin/v2/rooms/" + room + "/delete_status", "tok-admin", 405},
		{"POST", "/_synapse/admin/v2/rooms/delete_status/abc", "tok-admin", 405},
		{"GET", "/_synapse/admin/v1/purge_history/" + room, "tok-admin", 405},
		// The status route's shape, without delete_status in it: no route.
		{"GET", "/_synapse/admin/v2/rooms/" + room + "/nothing", "", 404},
		{"DELETE", "/_synapse/admin/v2/rooms/" + room + "/nothing", "", 404},
		{"GET", "/_synapse/admin/v3/nothing", "", 404},
	} {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			st, body := m.do(t, c.method, c.path, c.token, "")
			wantErr(t, st, body, c.status, "M_UNRECOGNIZED", "Unrecognized request")
		})
	}
}

// TestHTTP_EmptySegments: Synapse's patterns take an empty room ID or
// delete ID ([^/]*) and answer after the admin check; ServeMux wildcards
// match no empty segment, and ServeMux redirected a path with "//".
func TestHTTP_EmptySegments(t *testing.T) {
	m := startMain(t)
	for _, c := range []struct {
		method, path, body string
		status             int
		code, text         string
	}{
		{"DELETE", "/_synapse/admin/v2/rooms/", "{}", 400, "M_UNKNOWN", " is not a legal room ID"},
		{"DELETE", "/_synapse/admin/v1/rooms/", "{}", 400, "M_UNKNOWN", " is not a legal room ID"},
		{"GET", "/_synapse/admin/v1/rooms//block", "", 400, "M_UNKNOWN", " is not a legal room ID"},
		{"PUT", "/_synapse/admin/v1/rooms//block", `{"block": true}`, 400, "M_UNKNOWN", " is not a legal room ID"},
		{"GET", "/_synapse/admin/v2/rooms//delete_status", "", 400, "M_UNKNOWN", " is not a legal room ID"},
		{"GET", "/_synapse/admin/v2/rooms/delete_status/", "", 404, "M_NOT_FOUND", "delete id '' not found"},
		{"GET", "/_synapse/admin/v1/rooms//messages", "", 400, "M_INVALID_PARAM", "Invalid room ID"},
		{"GET", "/_matrix/client/v3/rooms//messages", "", 400, "M_INVALID_PARAM", "Invalid room ID"},
		// Empty segments where no route has a wildcard: no route.
		{"GET", "/_synapse//admin/v1/rooms/!a:test/block", "", 404, "M_UNRECOGNIZED", "Unrecognized request"},
	} {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			st, body := m.do(t, c.method, c.path, "tok-admin", c.body)
			wantErr(t, st, body, c.status, c.code, c.text)
			if c.status != 404 || c.code == "M_NOT_FOUND" {
				st, body = m.do(t, c.method, c.path, "tok-alice", c.body)
				if !strings.Contains(c.path, "/_matrix/client/") {
					wantErr(t, st, body, 403, "M_FORBIDDEN", "You are not a server admin")
				}
			}
		})
	}
}

// TestHTTP_IllegalRoomIDs: the admin room routes refuse what Synapse's
// RoomID.is_valid refuses (a server name of another grammar, a
// room version 12 ID of the wrong length) as "not a legal room ID".
func TestHTTP_IllegalRoomIDs(t *testing.T) {
	m := startMain(t)
	for _, id := range []string{"!something:invalid$_chars.com", "!wronglength"} {
		p := url.PathEscape(id)
		for _, c := range []struct{ method, path, body string }{
			{"DELETE", "/_synapse/admin/v2/rooms/" + p, "{}"},
			{"DELETE", "/_synapse/admin/v1/rooms/" + p, "{}"},
			{"GET", "/_synapse/admin/v1/rooms/" + p + "/block", ""},
			{"PUT", "/_synapse/admin/v1/rooms/" + p + "/block", `{"block": true}`},
			{"GET", "/_synapse/admin/v2/rooms/" + p + "/delete_status", ""},
		} {
			st, body := m.do(t, c.method, c.path, "tok-admin", c.body)
			wantErr(t, st, body, 400, "M_UNKNOWN", id+" is not a legal room ID")
		}
	}
}

// TestHTTP_MessagesRoomsFilter: a filter's rooms and not_rooms apply to
// /messages as in Synapse: its SQL (room_id = ? when rooms is non-empty,
// != ? for not_rooms) finds no row of a room they leave out, the end of
// the timeline; an empty rooms list adds no clause, and the check after
// the limit drops every row.
func TestHTTP_MessagesRoomsFilter(t *testing.T) {
	m := startMain(t)
	room, n := m.twoMessageRoom(t, "rooms")
	msgs := "/_matrix/client/v3/rooms/" + url.PathEscape(room.ID) + "/messages"
	for _, tt := range []struct {
		filter string
		events int
		hasEnd bool
	}{
		{`{"rooms":["!elsewhere:test"]}`, 0, false},
		{`{"not_rooms":["` + room.ID + `"]}`, 0, false},
		{`{"rooms":[]}`, 0, true},
		{`{"rooms":["` + room.ID + `"], "not_rooms":["!elsewhere:test"]}`, n, true},
	} {
		st, body := m.do(t, "GET", msgs+"?dir=b&filter="+url.QueryEscape(tt.filter), "tok-alice", "")
		if st != 200 {
			t.Fatalf("%s: %d %v", tt.filter, st, body)
		}
		_, hasEnd := body["end"]
		if n := len(chunkIDs(body)); n != tt.events || hasEnd != tt.hasEnd {
			t.Errorf("filter %s: %d events, end present %v; want %d events, end present %v", tt.filter, n, hasEnd, tt.events, tt.hasEnd)
		}
	}
}

// TestHTTP_MessagesQueryParsing: /messages reads its parameters as
// Synapse does (SYNAPSE.md 1.1): from and to (ASCII, then a token) before
// limit and filter, so their errors win; the filter as UTF-8, unquoted
// once more, then JSON.
func TestHTTP_MessagesQueryParsing(t *testing.T) {
	m := startMain(t)
	room, _ := m.twoMessageRoom(t, "parsing")
	msgs := "/_matrix/client/v3/rooms/" + url.PathEscape(room.ID) + "/messages"
	admin := "/_synapse/admin/v1/rooms/" + url.PathEscape(room.ID) + "/messages"
	for _, c := range []struct {
		query, code, text string
	}{
		{"from=zzz&limit=x", "M_UNKNOWN", "'from' parameter is invalid"},
		{"to=zzz&limit=-1", "M_UNKNOWN", "'to' parameter is invalid"},
		{"from=zzz&filter=%7Bnope", "M_UNKNOWN", "'from' parameter is invalid"},
		{"from=s%C3%A9", "M_UNKNOWN", "Query parameter 'from' must be ascii"},
		{"to=s%C3%A9&limit=x", "M_UNKNOWN", "Query parameter 'to' must be ascii"},
		{"dir=x&from=zzz", "M_INVALID_PARAM", "Query parameter 'dir' must be one of ['b', 'f']"},
		{"filter=%7B%22not_types%22%3A%5B%22%FF%22%5D%7D", "M_UNKNOWN", "Query parameter 'filter' must be utf-8"},
		// Twisted keeps a malformed escape as it is, and splits on ';'.
		{"dir=%zz", "M_INVALID_PARAM", "Query parameter 'dir' must be one of ['b', 'f']"},
		{"limit=%zz", "M_INVALID_PARAM", "Query parameter limit must be an integer"},
		{"from=%zz", "M_UNKNOWN", "'from' parameter is invalid"},
		{"limit=1;dir=zz", "M_INVALID_PARAM", "Query parameter 'dir' must be one of ['b', 'f']"},
	} {
		for _, p := range []struct{ path, token string }{{msgs, "tok-alice"}, {admin, "tok-admin"}} {
			st, body := m.do(t, "GET", p.path+"?"+c.query, p.token, "")
			wantErr(t, st, body, 400, c.code, c.text)
		}
	}
	// Twisted drops a parameter without '=': a bare dir is the default.
	if st, body := m.do(t, "GET", msgs+"?dir&limit", "tok-alice", ""); st != 200 {
		t.Fatalf("?dir&limit: %d %v", st, body)
	}
	if st, body := m.do(t, "GET", msgs+"?dir=b;limit=1", "tok-alice", ""); st != 200 || len(chunkIDs(body)) != 1 {
		t.Fatalf("?dir=b;limit=1: %d %v, want one event", st, body)
	}
	once := url.QueryEscape(`{"types":["m.room.message"]}`)
	st, body := m.do(t, "GET", msgs+"?dir=b&filter="+url.QueryEscape(once), "tok-alice", "")
	if st != 200 || len(chunkIDs(body)) != 2 {
		t.Fatalf("a filter encoded twice (Synapse unquotes it once more): %d %v, want the 2 messages", st, body)
	}
}

// twoMessageRoom publishes a room of alice and bob with two messages,
// waits until it is applied, and returns it with its number of events.
func (m *Main) twoMessageRoom(t *testing.T, name string) (*testenv.Room, int) {
	t.Helper()
	room := testenv.NewRoom(name, "test")
	seqs := m.publisher().Publish(t, append(room.Setup(alice, bob), room.Msg(alice, "one"), room.Msg(bob, "two"))...)
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	return room, len(seqs)
}

// TestHTTP_AdminMessagesBundlesForTheAdmin: Synapse's RoomMessagesRestServlet calls get_messages with the admin's
// requester, and get_bundled_aggregations(filtered_events, user_id) sets
// current_user_participated from that user (relations.py
// _get_threads_for_events: events_by_id[event_id].sender == user_id).
func TestHTTP_AdminMessagesBundlesForTheAdmin(t *testing.T) {
	m := startMain(t)
	const admin = "@admin:test"
	room := testenv.NewRoom("thr", "test")
	evs := room.Setup(alice, admin, bob)
	root := room.Msg(admin, "root by the admin")
	reply := room.Next("m.room.message", bob, nil, map[string]any{"msgtype": "m.text", "body": "in thread",
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root.ID()}})
	evs = append(evs, root, reply)
	seqs := m.publisher().Publish(t, evs...)
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	thread := func(path, token string) map[string]any {
		st, body := m.do(t, "GET", path+"?dir=b&limit=10", token, "")
		if st != 200 {
			t.Fatalf("%d %v", st, body)
		}
		for _, c := range body["chunk"].([]any) {
			ev := c.(map[string]any)
			if ev["event_id"] == root.ID() {
				un, _ := ev["unsigned"].(map[string]any)
				rel, _ := un["m.relations"].(map[string]any)
				th, _ := rel["m.thread"].(map[string]any)
				return th
			}
		}
		t.Fatalf("root not in chunk: %v", body)
		return nil
	}
	client := thread("/_matrix/client/v3/rooms/"+url.PathEscape(room.ID)+"/messages", "tok-admin")
	adminAPI := thread("/_synapse/admin/v1/rooms/"+url.PathEscape(room.ID)+"/messages", "tok-admin")
	if client["current_user_participated"] != true {
		t.Fatalf("client API: %v", client)
	}
	if adminAPI["current_user_participated"] != true {
		t.Fatalf("admin API: current_user_participated=%v for the admin's own thread root, want true (client API says %v)", adminAPI["current_user_participated"], client["current_user_participated"])
	}
}

// TestHTTP_AdminMessagesMarkSoftFailed: Synapse's admin servlet builds its serializer config with
// requester=admin, so include_admin_metadata is true and serialize.rs
// adds unsigned["io.element.synapse.soft_failed"] = true to the
// soft-failed events the admin API returns.
func TestHTTP_AdminMessagesMarkSoftFailed(t *testing.T) {
	m := startMain(t)
	room := testenv.NewRoom("sf", "test")
	evs := room.Setup(alice, bob)
	soft := room.Msg(bob, "soft")
	soft["soft_failed"] = true
	evs = append(evs, soft)
	seqs := m.publisher().Publish(t, evs...)
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	st, body := m.do(t, "GET", "/_synapse/admin/v1/rooms/"+url.PathEscape(room.ID)+"/messages?dir=b&limit=1", "tok-admin", "")
	if st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	ev := body["chunk"].([]any)[0].(map[string]any)
	if ev["event_id"] != soft.ID() {
		t.Fatalf("chunk=%v", body["chunk"])
	}
	if un, _ := ev["unsigned"].(map[string]any); un["io.element.synapse.soft_failed"] != true {
		t.Fatalf("soft-failed event without io.element.synapse.soft_failed: unsigned=%v", un)
	}
}

// Synapse: filter_json = parse_json(...); event_filter = Filter(...) if
// filter_json else None. A falsy JSON value (null, [], 0, false, "") is
// no filter: 200, on the client route as on the admin one; a truthy
// non-object stays 400.
func TestHTTP_MessagesFalsyFilterIsNoFilter(t *testing.T) {
	m := startMain(t)
	room := testenv.NewRoom("ff", "test")
	seqs := m.publisher().Publish(t, append(room.Setup(alice, "@admin:test"), room.Msg(alice, "hi"))...)
	if _, err := m.messages(t, room.ID, map[string]any{"admin": true, "wait_for": seqs[len(seqs)-1]}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"null", "%5B%5D", "0", "false", "%22%22"} {
		for _, path := range []string{"/_synapse/admin/v1/rooms/", "/_matrix/client/v3/rooms/"} {
			st, body := m.do(t, "GET", path+url.PathEscape(room.ID)+"/messages?filter="+f, "tok-admin", "")
			if st != 200 || len(body["chunk"].([]any)) == 0 {
				t.Errorf("%s filter=%s: %d %v, want 200 (no filter)", path, f, st, body)
			}
		}
	}
	st, body := m.do(t, "GET", "/_synapse/admin/v1/rooms/"+url.PathEscape(room.ID)+"/messages?filter=%5B1%5D", "tok-admin", "")
	wantErr(t, st, body, 400, "M_NOT_JSON", "Query parameter filter must be a valid JSON object")
}

// Synapse's parse_enum -> parse_string decodes as ascii first:
// "Query parameter 'dir' must be ascii", M_UNKNOWN.
func TestHTTP_MessagesNonASCIIDir(t *testing.T) {
	m := startMain(t)
	st, body := m.do(t, "GET", "/_synapse/admin/v1/rooms/"+url.PathEscape("!x:test")+"/messages?dir=%C3%A9", "tok-admin", "")
	wantErr(t, st, body, 400, "M_UNKNOWN", "Query parameter 'dir' must be ascii")
}
