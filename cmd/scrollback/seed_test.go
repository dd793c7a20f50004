package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
)

// seedTestOptions are small rooms for the tests.
func seedTestOptions(seed int64) seedOptions {
	return seedOptions{ServerName: "test", Rooms: 2, Messages: 40, Members: 4, Seed: seed, Prefix: "sb", Window: 8, Timeout: time.Minute}
}

// checkInt64Only fails if v holds an integer that is not an int64.
func checkInt64Only(t *testing.T, path string, v any) {
	t.Helper()
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			checkInt64Only(t, path+"."+k, e)
		}
	case []any:
		for i, e := range x {
			checkInt64Only(t, fmt.Sprintf("%s[%d]", path, i), e)
		}
	case []string, string, bool, int64, nil:
	default:
		t.Errorf("%s: %T value %v", path, v, v)
	}
}

// genRoom builds room n without publishing it.
func genRoom(opts seedOptions, n int, now time.Time) *roomGen {
	g := newRoomGen(opts, n, "abcdef")
	g.build()
	g.stamp(now)
	return g
}

func TestSeed_GeneratedEventsAreValid(t *testing.T) {
	opts := seedTestOptions(1)
	opts.Messages = 300
	opts.Members = 5
	now := time.Now()
	g := genRoom(opts, 1, now)
	if want := 7 + 4 + 300; len(g.events) != want {
		t.Fatalf("%d events, want %d", len(g.events), want)
	}
	if g.roomID != "!seed1-abcdef:test" {
		t.Fatalf("room ID %q", g.roomID)
	}
	ids := map[string]bool{}
	var lastTS int64
	prev := ""
	seen := map[string]int{}
	for i, ev := range g.events {
		checkInt64Only(t, ev["event_id"].(string), map[string]any(ev))
		data, err := bus.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		m, err := bus.DecodeMap(data, bus.DefaultLimits)
		if err != nil {
			t.Fatal(err)
		}
		e, err := commands.EventFromMap(m, g.roomID)
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if ids[e.EventID] || !strings.HasPrefix(e.EventID, "$") {
			t.Fatalf("event %d: bad or repeated ID %q", i, e.EventID)
		}
		ids[e.EventID] = true
		if e.Depth != int64(i+1) {
			t.Fatalf("event %d: depth %d", i, e.Depth)
		}
		if want := []string{prev}; prev == "" && len(e.PrevEvents) != 0 || prev != "" && !slices.Equal(e.PrevEvents, want) {
			t.Fatalf("event %d: prev_events %v, want %v", i, e.PrevEvents, want)
		}
		prev = e.EventID
		if e.OriginServerTS <= lastTS || e.OriginServerTS > now.UnixMilli() || e.OriginServerTS < now.Add(-seedHistorySpan).UnixMilli() {
			t.Fatalf("event %d: origin_server_ts %d after %d (now %d)", i, e.OriginServerTS, lastTS, now.UnixMilli())
		}
		lastTS = e.OriginServerTS
		isState := strings.HasPrefix(e.Type, "m.room.") && e.Type != "m.room.message" && e.Type != "m.room.redaction"
		if e.IsState() != isState {
			t.Fatalf("event %d (%s): state key %v", i, e.Type, e.StateKey)
		}
		kind := e.Type
		if mt, _ := e.Content["msgtype"].(string); mt != "" {
			kind = mt
		}
		if rel, _ := e.Content["m.relates_to"].(map[string]any); rel != nil {
			relType, _ := rel["rel_type"].(string)
			target, _ := rel["event_id"].(string)
			if relType != "" && !ids[target] {
				t.Fatalf("event %d: %s relation to unknown %q", i, relType, target)
			}
			if relType != "" {
				kind = relType
			}
		}
		if e.Type == "m.room.redaction" {
			r, _ := e.Content["redacts"].(string)
			if !ids[r] || e.Redacts != r {
				t.Fatalf("event %d: redacts %q / %q", i, r, e.Redacts)
			}
		}
		if e.Type == "m.room.member" {
			kind += "/" + e.Membership()
		}
		seen[kind]++
	}
	if first := g.events[0]["origin_server_ts"].(int64); first > now.Add(-seedHistorySpan+time.Hour).UnixMilli() {
		t.Errorf("history starts at %d, not about 30 days ago", first)
	}
	for _, kind := range []string{
		"m.room.create", "m.room.power_levels", "m.room.join_rules", "m.room.history_visibility",
		"m.room.name", "m.text", "m.image", "m.replace", "m.thread", "m.annotation",
		"m.room.member/leave", "m.room.redaction",
	} {
		if seen[kind] == 0 {
			t.Errorf("no %s event: %v", kind, seen)
		}
	}
	if seen["m.room.topic"] != 2 || seen["m.room.member/join"] != 6 {
		t.Errorf("want 2 topics and 6 joins (5 members and a rejoin): %v", seen)
	}
	t.Logf("kinds: %v", seen)
}

func TestSeed_Reproducible(t *testing.T) {
	now := time.Now()
	types := func(g *roomGen) (out []string) {
		for _, ev := range g.events {
			c, _ := ev["content"].(map[string]any)
			body, _ := c["body"].(string)
			out = append(out, ev["type"].(string)+" "+ev["sender"].(string)+" "+body)
		}
		return out
	}
	a, b := genRoom(seedTestOptions(7), 1, now), genRoom(seedTestOptions(7), 1, now)
	if !reflect.DeepEqual(types(a), types(b)) {
		t.Fatalf("same seed, different rooms:\n%v\n%v", types(a), types(b))
	}
	if a.events[0]["event_id"] == b.events[0]["event_id"] {
		t.Fatal("event IDs repeat across runs")
	}
	if c := genRoom(seedTestOptions(8), 1, now); reflect.DeepEqual(types(a), types(c)) {
		t.Fatal("seeds 7 and 8 give the same room")
	}
	if c := genRoom(seedTestOptions(7), 2, now); reflect.DeepEqual(types(a), types(c)) || a.name == c.name {
		t.Fatal("rooms 1 and 2 are the same")
	}
	// Tiny rooms still work: specials that cannot happen become messages.
	for _, msgs := range []int{0, 1, 2, 5} {
		for _, members := range []int{1, 2} {
			o := seedTestOptions(1)
			o.Messages, o.Members = msgs, members
			if g := genRoom(o, 1, now); len(g.events) != 7+members-1+msgs {
				t.Errorf("messages %d members %d: %d events", msgs, members, len(g.events))
			}
		}
	}
}

func TestSeed_IntoService(t *testing.T) {
	m := startMain(t)
	ctx := context.Background()
	opts := seedTestOptions(3)
	opts.HTTPAddr = m.HTTPAddr
	// The printed curl reads the service's own token file, wherever its
	// data dir is (it named data/admin.token whatever --data was).
	opts.TokenFile = filepath.Join(m.Config.DataDir, "my data", "admin.token")
	var out bytes.Buffer
	rooms, err := seedRooms(ctx, m.NC, opts, &out)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("output:\n%s", out.String())
	if len(rooms) != 2 || rooms[0].ID == rooms[1].ID {
		t.Fatalf("rooms %v", rooms)
	}
	for _, r := range rooms {
		if !strings.HasPrefix(r.ID, "!seed") || !strings.HasSuffix(r.ID, ":test") || !strings.Contains(out.String(), r.ID) {
			t.Fatalf("room %q not in the output or badly named", r.ID)
		}
		if !strings.Contains(out.String(), bus.Subjects{Prefix: "sb"}.APIRoom(r.ID, "messages")) {
			t.Errorf("no NATS example for %s", r.ID)
		}
		page, err := m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 1000, "wait_for": r.LastSeq})
		if err != nil {
			t.Fatal(err)
		}
		got := chunkIDs(page)
		want := slices.Clone(r.EventIDs)
		slices.Reverse(want)
		if !slices.Equal(got, want) {
			t.Fatalf("room %s: read back %d events, want %d in reverse order:\n%v\n%v", r.ID, len(got), len(want), got, want)
		}

		// The image is there for contains_url filters.
		page, err = m.messages(t, r.ID, map[string]any{"admin": true, "dir": "b", "filter": map[string]any{"contains_url": true}})
		if err != nil {
			t.Fatal(err)
		}
		chunk, _ := page["chunk"].([]any)
		if len(chunk) == 0 {
			t.Fatalf("room %s: no event with a URL", r.ID)
		}
		for _, c := range chunk {
			content, _ := c.(map[string]any)["content"].(map[string]any)
			if u, _ := content["url"].(string); !strings.HasPrefix(u, "mxc://test/") {
				t.Errorf("url %q", u)
			}
		}

		// The printed curl URL works with an admin token.
		u := seedAdminURL(m.HTTPAddr, false, r.ID)
		if !strings.Contains(out.String(), "'"+u+"'") {
			t.Errorf("output lacks %s", u)
		}
		if tok := "$(cat '" + opts.TokenFile + "')"; !strings.Contains(out.String(), tok) {
			t.Errorf("output lacks %s", tok)
		}
		req, _ := http.NewRequest("GET", u, nil)
		req.Header.Set("Authorization", "Bearer tok-admin")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var hp struct {
			Chunk []struct {
				EventID string `json:"event_id"`
			} `json:"chunk"`
		}
		if err := json.Unmarshal(body, &hp); resp.StatusCode != 200 || err != nil || len(hp.Chunk) != 5 || hp.Chunk[0].EventID != want[0] {
			t.Fatalf("GET %s: %d %s", u, resp.StatusCode, body)
		}
	}

	// The same seed again: new rooms, same event types.
	again, err := seedRooms(ctx, m.NC, opts, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for i := range rooms {
		if again[i].ID == rooms[i].ID || again[i].EventIDs[0] == rooms[i].EventIDs[0] {
			t.Errorf("room %d: a second run reuses IDs", i)
		}
		if !slices.Equal(again[i].Types, rooms[i].Types) {
			t.Errorf("room %d: same seed, different types:\n%v\n%v", i, again[i].Types, rooms[i].Types)
		}
		if again[i].LastSeq <= rooms[len(rooms)-1].LastSeq {
			t.Errorf("room %d: last sequence %d not after the first run's", i, again[i].LastSeq)
		}
	}
}

func TestSeed_NoStream(t *testing.T) {
	m := startMain(t)
	opts := seedTestOptions(1)
	opts.Prefix = "elsewhere"
	_, err := seedRooms(context.Background(), m.NC, opts, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "is `scrollback serve` running") {
		t.Fatalf("err = %v", err)
	}
}

func TestSeed_Flags(t *testing.T) {
	var out bytes.Buffer
	opts, u, err := parseSeedFlags(nil, &out)
	if err != nil {
		t.Fatal(err)
	}
	want := seedOptions{ServerName: "localhost", Rooms: 3, Messages: 200, Members: 5, Seed: 1, Prefix: "sb",
		HTTPAddr: "127.0.0.1:8090", TokenFile: "data/admin.token", Timeout: seedDefaultTimeout, Window: seedDefaultWindow}
	if u != "nats://127.0.0.1:4222" || !reflect.DeepEqual(opts, want) {
		t.Fatalf("defaults %q %+v", u, opts)
	}
	opts, u, err = parseSeedFlags([]string{"--nats-url", "nats://h:1", "--server-name=example.org", "--rooms", "1",
		"--messages", "0", "--members", "2", "--seed", "-9", "--prefix", "x", "--http", ":1", "--token-file", "/srv/sb/admin.token", "--timeout", "3s"}, &out)
	want = seedOptions{ServerName: "example.org", Rooms: 1, Messages: 0, Members: 2, Seed: -9, Prefix: "x",
		HTTPAddr: ":1", TokenFile: "/srv/sb/admin.token", Timeout: 3 * time.Second, Window: seedDefaultWindow}
	if err != nil || u != "nats://h:1" || !reflect.DeepEqual(opts, want) {
		t.Fatalf("%v %q %+v", err, u, opts)
	}
	for _, args := range [][]string{
		{"--rooms", "0"}, {"--messages", "-1"}, {"--members", "0"}, {"--prefix", "a.b"}, {"--server-name", ""},
		{"--timeout", "0s"}, {"--rooms", "x"}, {"--nope"}, {"extra"}, {"--nats-url", ""},
		{"--rooms", "1000", "--messages", "100000"},
	} {
		if _, _, err := parseSeedFlags(args, &out); err == nil || errors.Is(err, flag.ErrHelp) || !strings.HasPrefix(err.Error(), "seed: ") {
			t.Errorf("%v: err = %v", args, err)
		}
	}
	_, _, err = parseSeedFlags([]string{"--rooms", "0", "--members", "0"}, &out)
	if err == nil || !strings.Contains(err.Error(), "--rooms 0") || !strings.Contains(err.Error(), "--members 0") {
		t.Errorf("every problem at once: err = %v", err)
	}
	if out.Len() != 0 {
		t.Errorf("errors printed: %s", out.String())
	}
	if err := runSeed(context.Background(), []string{"-h"}, &out); err != nil || !strings.Contains(out.String(), "--messages") && !strings.Contains(out.String(), "-messages") {
		t.Fatalf("help: %v %s", err, out.String())
	}
}

// TestSeed_HintsFollowTheServicesConfig: given the service's config file
// (-c) or data dir (--data), seed connects where that service listens and
// prints hints that work for it: the curl reads the bridge on its
// http.listen and the admin token in its data dir. Its hints assumed the
// defaults (127.0.0.1:8090, data/admin.token), whatever the service was
// configured with (found by a review).
func TestSeed_HintsFollowTheServicesConfig(t *testing.T) {
	m := startMain(t, func(c *Config) {
		c.NATS.Listen = "127.0.0.1:0"
		c.NATS.SubjectPrefix = "hist"
		c.Auth.Tokens = nil // the service writes <data dir>/admin.token
	})
	u, err := url.Parse(m.NATSServer.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	path := writeConfig(t, fmt.Sprintf("server_name: test\ndata_dir: %q\nnats:\n  listen: %q\n  subject_prefix: hist\nhttp:\n  listen: %q\n",
		m.Config.DataDir, u.Host, m.HTTPAddr))
	var out bytes.Buffer
	if err := runSeed(context.Background(), []string{"-c", path, "--rooms", "1", "--messages", "10"}, &out); err != nil {
		t.Fatalf("seed -c %s: %v\n%s", path, err, out.String())
	}
	t.Logf("output:\n%s", out.String())
	// Once the projection has applied what seed published: the curl, run
	// as soon as seed ends, reads what the service has applied by then.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	last, err := (&bus.Log{JS: m.JS, Stream: m.Config.NATS.Stream}).LastSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Projector.WaitAll(ctx, last); err != nil {
		t.Fatal(err)
	}
	// The printed curl, run as printed: the token from the file it names,
	// the URL it names.
	var tokenFile, pageURL string
	for _, line := range strings.Split(out.String(), "\n") {
		if _, rest, ok := strings.Cut(line, `curl -s -H "Authorization: Bearer $(cat `); ok {
			tokenFile, rest, _ = strings.Cut(rest, `)" '`)
			tokenFile = strings.Trim(tokenFile, "'") // shellQuote's quotes, if any
			pageURL, _, _ = strings.Cut(rest, "'")
		}
	}
	if want := filepath.Join(m.Config.DataDir, "admin.token"); tokenFile != want {
		t.Fatalf("the curl reads the token of %q, want the service's %q", tokenFile, want)
	}
	if want := "http://" + m.HTTPAddr + "/"; !strings.HasPrefix(pageURL, want) {
		t.Fatalf("the curl reads %q, want the service's bridge %s", pageURL, want)
	}
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", pageURL, nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var page struct {
		Chunk []json.RawMessage `json:"chunk"`
	}
	if err := json.Unmarshal(body, &page); resp.StatusCode != 200 || err != nil || len(page.Chunk) != 5 {
		t.Fatalf("the printed curl: GET %s: %d %s", pageURL, resp.StatusCode, body)
	}
	if !strings.Contains(out.String(), "request hist.api.room.") {
		t.Errorf("the NATS hint does not use the subject prefix hist:\n%s", out.String())
	}

	// The credentials of the service's nats.url come with it (seed
	// connected without them, and an external NATS refused it).
	withCreds := writeConfig(t, "nats:\n  url: nats://hub:4222\n  credentials: /etc/scrollback/hs.creds\n")
	if opts, natsURL, err := parseSeedFlags([]string{"-c", withCreds}, io.Discard); err != nil || natsURL != "nats://hub:4222" || opts.Credentials != "/etc/scrollback/hs.creds" {
		t.Errorf("seed -c with nats.credentials: %s, credentials %q, %v; want nats://hub:4222 with /etc/scrollback/hs.creds", natsURL, opts.Credentials, err)
	}
	if opts, _, err := parseSeedFlags([]string{"-c", withCreds, "--nats-url", "nats://other:4222"}, io.Discard); err != nil || opts.Credentials != "" {
		t.Errorf("seed --nats-url over the file's: credentials %q, %v; want none (they are the file's server's)", opts.Credentials, err)
	}

	// Addresses on every interface are reached on loopback; a bridge with
	// TLS over https; --data and flags override the file; no bridge, no
	// curl.
	tls := writeConfig(t, "data_dir: /srv/sb\nnats:\n  listen: 0.0.0.0:4333\nhttp:\n  listen: \":8443\"\n  tls: {cert: c.pem, key: k.pem}\n")
	for _, tt := range []struct {
		args               []string
		wantNATS, wantCurl string
	}{
		{[]string{"-c", tls}, "nats://127.0.0.1:4333", `$(cat /srv/sb/admin.token)" 'https://127.0.0.1:8443/_synapse/`},
		{[]string{"--config", tls, "--data", "/var/lib/sb", "--http", "[::]:9000"}, "nats://127.0.0.1:4333", `$(cat /var/lib/sb/admin.token)" 'https://[::1]:9000/_synapse/`},
		{[]string{"--data", "/var/lib/sb"}, "nats://127.0.0.1:4222", `$(cat /var/lib/sb/admin.token)" 'http://127.0.0.1:8090/_synapse/`},
		{[]string{"-c", writeConfig(t, "nats:\n  url: nats://hub:4222\nhttp:\n  listen: \"\"\n")}, "nats://hub:4222", ""},
		// An admin token in auth.tokens: the service writes no
		// admin.token, and the curl must not name one.
		{[]string{"-c", writeConfig(t, "data_dir: /srv/sb\nauth:\n  tokens:\n    - {token: sekrit-admin-token-0123456789, user_id: \"@root:localhost\", admin: true}\n")},
			"nats://127.0.0.1:4222", `"Authorization: Bearer $SCROLLBACK_TOKEN" 'http://127.0.0.1:8090/_synapse/`},
	} {
		opts, natsURL, err := parseSeedFlags(tt.args, io.Discard)
		if err != nil {
			t.Fatalf("%q: %v", tt.args, err)
		}
		var hint bytes.Buffer
		printSeededRoom(&hint, seededRoom{ID: "!r:localhost"}, opts)
		curl := strings.Contains(hint.String(), "curl")
		if strings.Contains(hint.String(), "sekrit") {
			t.Errorf("%q: the hint shows the configured token:\n%s", tt.args, hint.String())
		}
		if natsURL != tt.wantNATS || tt.wantCurl != "" && !strings.Contains(hint.String(), tt.wantCurl) || tt.wantCurl == "" && curl {
			t.Errorf("%q: NATS %s, hint:\n%s\nwant NATS %s and the curl %q", tt.args, natsURL, hint.String(), tt.wantNATS, tt.wantCurl)
		}
	}
}

func TestSeed_CannotConnect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	err = runSeed(context.Background(), []string{"--nats-url", "nats://" + addr}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "is `scrollback serve` running?") {
		t.Fatalf("err = %v", err)
	}
}
