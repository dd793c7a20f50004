package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/testenv"
)

// fedEvent finds id's event in a page's chunk (or state).
func fedEvent(t *testing.T, page map[string]any, key, id string) map[string]any {
	t.Helper()
	list, _ := page[key].([]any)
	for _, v := range list {
		if ev, _ := v.(map[string]any); ev["event_id"] == id {
			return ev
		}
	}
	t.Fatalf("%s not in %s: %v", id, key, page[key])
	return nil
}

// wantPDU checks that ev is in the federation format: the PDU's own keys
// are there, the client format's additions and the contract's log-only
// keys are not.
func wantPDU(t *testing.T, what string, ev map[string]any) {
	t.Helper()
	for _, k := range []string{"hashes", "signatures", "depth", "prev_events", "event_id", "room_id", "sender", "type", "origin_server_ts", "content"} {
		if _, ok := ev[k]; !ok {
			t.Errorf("%s: no %s in %v", what, k, ev)
		}
	}
	for _, k := range []string{"user_id", "age", "redacted_because", "prev_content", "replaces_state", "outlier", "soft_failed", "backfilled", "rejected", "received_ts"} {
		if _, ok := ev[k]; ok {
			t.Errorf("%s: %s at the top level of %v", what, k, ev)
		}
	}
	if un, _ := ev["unsigned"].(map[string]any); un["age"] == nil {
		t.Errorf("%s: no unsigned.age in %v", what, ev["unsigned"])
	}
}

// TestMessages_FederationFormat: SYNAPSE.md 1.1 step 4. With
// event_format "federation" (the bridge's ?raw=..., or a filter's
// event_format) the events are the PDUs as published: auth_events,
// hashes, signatures, origin and the other top-level keys kept, without
// the client format's user_id and top-level copies, and without the
// contract's own keys. A redacted event is pruned by its room version's
// rules (v10: origin stays, other keys go), and the events inside an
// event (redacted_because, the bundled edit) are in the same format.
func TestMessages_FederationFormat(t *testing.T) {
	m := startMain(t)
	room := testenv.NewRoom("fed", "test")
	evs := room.Setup(alice, bob)
	create := evs[0]
	pdu := func(ev testenv.Event) testenv.Event {
		ev["auth_events"] = []any{create.ID()}
		ev["origin"] = "test"
		ev["org.example.custom"] = "kept"
		ev["outlier"] = false
		ev["soft_failed"] = false
		return ev
	}
	plain := pdu(room.Msg(bob, "hello"))
	secret := pdu(room.Msg(bob, "secret"))
	redaction := pdu(room.Next("m.room.redaction", bob, nil, map[string]any{"redacts": secret.ID()}))
	edit := pdu(room.Next("m.room.message", bob, nil, map[string]any{"msgtype": "m.text", "body": "* hello!",
		"m.new_content": map[string]any{"msgtype": "m.text", "body": "hello!"},
		"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": plain.ID()}}))
	evs = append(evs, plain, secret, redaction, edit)
	seqs := m.publisher().Publish(t, evs...)
	last := seqs[len(seqs)-1]

	read := func(extra map[string]any) map[string]any {
		t.Helper()
		req := map[string]any{"user_id": alice, "dir": "b", "limit": 20, "wait_for": last}
		for k, v := range extra {
			req[k] = v
		}
		page, err := m.messages(t, room.ID, req)
		if err != nil {
			t.Fatal(err)
		}
		return page
	}
	fed := read(map[string]any{"event_format": "federation"})
	if ids, want := chunkIDs(fed), chunkIDs(read(nil)); fmt.Sprint(ids) != fmt.Sprint(want) {
		t.Fatalf("federation page %v, client page %v", ids, want)
	}
	p := fedEvent(t, fed, "chunk", plain.ID())
	wantPDU(t, "plain", p)
	if p["origin"] != "test" || p["org.example.custom"] != "kept" || fmt.Sprint(p["auth_events"]) != fmt.Sprint([]any{create.ID()}) {
		t.Errorf("plain: PDU keys lost: %v", p)
	}
	un, _ := p["unsigned"].(map[string]any)
	rel, _ := un["m.relations"].(map[string]any)
	if e, _ := rel["m.replace"].(map[string]any); e == nil || e["event_id"] != edit.ID() {
		t.Errorf("plain: bundled edit %v", rel)
	} else {
		wantPDU(t, "the bundled edit", e)
	}

	s := fedEvent(t, fed, "chunk", secret.ID())
	wantPDU(t, "redacted", s)
	if len(s["content"].(map[string]any)) != 0 {
		t.Errorf("redacted: content %v", s["content"])
	}
	if s["origin"] != "test" || s["auth_events"] == nil {
		t.Errorf("redacted: a v10 room keeps origin and auth_events: %v", s)
	}
	if _, ok := s["org.example.custom"]; ok {
		t.Errorf("redacted: a key the redaction algorithm drops is shown: %v", s)
	}
	sun, _ := s["unsigned"].(map[string]any)
	if sun["redacted_by"] != redaction.ID() {
		t.Errorf("redacted: unsigned %v", sun)
	}
	if because, _ := sun["redacted_because"].(map[string]any); because == nil {
		t.Errorf("redacted: no redacted_because in %v", sun)
	} else {
		wantPDU(t, "redacted_because", because)
		if because["redacts"] != secret.ID() {
			t.Errorf("redacted_because: redacts %v", because["redacts"])
		}
	}

	// The filter's event_format asks for the same; "client" and no
	// format give the client format.
	byFilter := read(map[string]any{"filter": map[string]any{"event_format": "federation"}})
	wantPDU(t, "by the filter", fedEvent(t, byFilter, "chunk", plain.ID()))
	for _, extra := range []map[string]any{nil, {"event_format": "client"}} {
		c := fedEvent(t, read(extra), "chunk", plain.ID())
		if c["user_id"] != bob || c["hashes"] != nil {
			t.Errorf("%v: not the client format: %v", extra, c)
		}
	}
	_, err := m.messages(t, room.ID, map[string]any{"user_id": alice, "event_format": "raw"})
	var re *commands.Error
	if !errors.As(err, &re) || re.Status != 400 || re.Code != commands.CodeBadJSON {
		t.Errorf("event_format raw: %v", err)
	}

	// The bridge: any raw parameter with a value (Twisted drops a pair
	// without '='), or the filter's event_format, on the client and the
	// admin routes.
	path := "/_matrix/client/v3/rooms/" + url.PathEscape(room.ID) + "/messages?dir=b&limit=20"
	admin := "/_synapse/admin/v1/rooms/" + url.PathEscape(room.ID) + "/messages?dir=b&limit=20"
	filter := "&filter=" + url.QueryEscape(`{"event_format":"federation"}`)
	for _, c := range []struct {
		path, token string
		fed         bool
	}{
		{path + "&raw=1", "tok-alice", true},
		{path + "&raw=", "tok-alice", true},
		{path + filter, "tok-alice", true},
		{path + "&raw", "tok-alice", false},
		{path, "tok-alice", false},
		{admin + "&raw=true", "tok-admin", true},
		{admin, "tok-admin", false},
	} {
		st, body := m.do(t, "GET", c.path, c.token, "")
		if st != 200 {
			t.Fatalf("%s: %d %v", c.path, st, body)
		}
		ev := fedEvent(t, body, "chunk", plain.ID())
		if _, isFed := ev["hashes"]; isFed != c.fed {
			t.Errorf("%s: federation format %v, want %v: %v", c.path, isFed, c.fed, ev)
		}
	}
}

// TestMessages_FederationFormatAfterCompaction: a purge keeps the state
// below its cut-off as outliers, and the compaction of the embedded
// server's log moves their messages to the room's kept subject. A
// lazy-loaded member from there is still shown as its PDU.
func TestMessages_FederationFormatAfterCompaction(t *testing.T) {
	m := startMain(t)
	const remote = "@remote:other.org"
	room := testenv.NewRoom("fedkept", "test")
	evs := room.Setup(alice, remote)
	join := evs[len(evs)-1]
	var msgs []testenv.Event
	for i := range 10 {
		msgs = append(msgs, room.Msg(remote, fmt.Sprint(i)))
	}
	seqs := m.publishApplied(t, room.ID, append(evs, msgs...)...)
	m.purgeHistory(t, room.ID, msgs[8].ID(), `{}`)
	st, err := m.JS.Stream(context.Background(), m.Config.NATS.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetMsg(context.Background(), seqs[len(evs)-1]); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("the member's message is still where it was published (%v): the test does not reach the kept copy", err)
	}
	page, err := m.messages(t, room.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 1,
		"event_format": "federation", "filter": map[string]any{"lazy_load_members": true}})
	if err != nil {
		t.Fatal(err)
	}
	wantPDU(t, "the message", fedEvent(t, page, "chunk", msgs[9].ID()))
	wantPDU(t, "the kept member", fedEvent(t, page, "state", join.ID()))
}

// TestMessages_FederationFormatFitsMaxPayload: the federation format
// shows what the client format drops (here 30 KiB of signatures an
// event), so a page that fits in the client format may not fit in it.
// It ends at the last whole event that fits, with an end token from
// which the next page goes on: every event is read once.
func TestMessages_FederationFormatFitsMaxPayload(t *testing.T) {
	m := startMainOnSmallPayloads(t)
	r := testenv.NewRoom("bigpdus", "test")
	evs := r.Setup("@a:test")
	sig := strings.Repeat("s", 30<<10)
	var want []string
	for i := range 60 { // about 1.8 MiB of signatures
		ev := r.Msg("@a:test", fmt.Sprint(i))
		ev["signatures"] = map[string]any{"test": map[string]any{"ed25519:a": sig}}
		evs = append(evs, ev)
		want = append(want, ev.ID())
	}
	seqs := m.publisher().Publish(t, evs...)
	got := walkPages(t, m, r.ID, map[string]any{"admin": true, "limit": 60, "wait_for": seqs[len(seqs)-1], "event_format": "federation",
		"filter": map[string]any{"types": []any{"m.room.message"}}}, func(pages int, page map[string]any) {
		if n := len(chunkIDs(page)); pages == 0 && n >= 60 {
			t.Fatalf("a first page of %d events of 30 KiB: it cannot fit in 1 MiB", n)
		}
	})
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("read %d events:\n%v\nwant %d:\n%v", len(got), got, len(want), want)
	}
}

// TestMessages_FederationFormatPrunesByRoomVersion: a redacted event in
// the federation format keeps the top-level keys of its room version's
// redaction algorithm (Synapse's rust/src/events/utils.rs redact): the
// PDU's own keys in every version, and before v11 also origin,
// membership and prev_state, which v11 (MSC2176) stopped protecting. A
// v11 redaction keeps its target in content.redacts, and shows it at the
// top level too (serialize_event's copy to the other place).
func TestMessages_FederationFormatPrunesByRoomVersion(t *testing.T) {
	m := startMain(t)
	for _, version := range []string{"10", "11"} {
		room := testenv.NewRoom("prune"+version, "test")
		evs := []testenv.Event{room.Next("m.room.create", alice, testenv.S(""), map[string]any{"creator": alice, "room_version": version})}
		evs = append(evs, room.Join(alice),
			room.Next("m.room.power_levels", alice, testenv.S(""), map[string]any{"users": map[string]any{alice: int64(100)}}),
			room.Next("m.room.join_rules", alice, testenv.S(""), map[string]any{"join_rule": "public"}))
		secret := room.Msg(alice, "secret")
		for k, v := range map[string]any{"auth_events": []any{evs[0].ID()}, "origin": "test", "membership": "join",
			"prev_state": []any{}, "org.example.custom": "gone"} {
			secret[k] = v
		}
		redaction := room.Next("m.room.redaction", alice, nil, map[string]any{"redacts": secret.ID()})
		if version == "11" {
			delete(redaction, "redacts") // v11: the target is content.redacts only
		}
		evs = append(evs, secret, redaction)
		seqs := m.publisher().Publish(t, evs...)
		page, err := m.messages(t, room.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 10,
			"wait_for": seqs[len(seqs)-1], "event_format": "federation"})
		if err != nil {
			t.Fatal(err)
		}
		s := fedEvent(t, page, "chunk", secret.ID())
		wantPDU(t, "v"+version+" redacted", s)
		if s["auth_events"] == nil {
			t.Errorf("v%s: redacted without auth_events: %v", version, s)
		}
		for _, k := range []string{"origin", "membership", "prev_state"} {
			if _, ok := s[k]; ok != (version == "10") {
				t.Errorf("v%s: redacted shows %s: %v, want %v", version, k, ok, version == "10")
			}
		}
		if _, ok := s["org.example.custom"]; ok {
			t.Errorf("v%s: redacted keeps a key no version protects: %v", version, s)
		}
		r := fedEvent(t, page, "chunk", redaction.ID())
		content, _ := r["content"].(map[string]any)
		if r["redacts"] != secret.ID() || content["redacts"] != secret.ID() {
			t.Errorf("v%s: the redaction's redacts %v, content %v", version, r["redacts"], content)
		}
	}
}

// TestMessages_FederationFormatNestedAndMembers: the events inside an
// event and beside the chunk are in the federation format too: a
// thread's latest event with its own bundled edit (Synapse's
// inject_bundled_aggregations serializes both with the page's config),
// and the lazy-loaded members (state), which carry no
// unsigned.membership, while the chunk's events do (serialize_event
// adds it in every format).
func TestMessages_FederationFormatNestedAndMembers(t *testing.T) {
	m := startMain(t)
	room := testenv.NewRoom("fednested", "test")
	evs := room.Setup(alice, bob)
	bobJoin := evs[len(evs)-1]
	root := room.Msg(alice, "root")
	reply := room.Next("m.room.message", bob, nil, map[string]any{"msgtype": "m.text", "body": "in thread",
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root.ID()}})
	edit := room.Next("m.room.message", bob, nil, map[string]any{"msgtype": "m.text", "body": "* in thread!",
		"m.new_content": map[string]any{"msgtype": "m.text", "body": "in thread!"},
		"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": reply.ID()}})
	evs = append(evs, root, reply, edit)
	seqs := m.publisher().Publish(t, evs...)
	page, err := m.messages(t, room.ID, map[string]any{"user_id": alice, "dir": "b", "limit": 10, "wait_for": seqs[len(seqs)-1],
		"event_format": "federation", "filter": map[string]any{"lazy_load_members": true, "types": []any{"m.room.message"}}})
	if err != nil {
		t.Fatal(err)
	}
	r := fedEvent(t, page, "chunk", root.ID())
	wantPDU(t, "the thread root", r)
	un, _ := r["unsigned"].(map[string]any)
	if un["membership"] != "join" {
		t.Errorf("the thread root: unsigned.membership %v", un["membership"])
	}
	rel, _ := un["m.relations"].(map[string]any)
	th, _ := rel["m.thread"].(map[string]any)
	latest, _ := th["latest_event"].(map[string]any)
	if latest == nil || latest["event_id"] != reply.ID() {
		t.Fatalf("the thread's summary: %v", th)
	}
	wantPDU(t, "the thread's latest event", latest)
	lun, _ := latest["unsigned"].(map[string]any)
	lrel, _ := lun["m.relations"].(map[string]any)
	if e, _ := lrel["m.replace"].(map[string]any); e == nil || e["event_id"] != edit.ID() {
		t.Errorf("the latest event's bundled edit: %v", lrel)
	} else {
		wantPDU(t, "the latest event's bundled edit", e)
	}
	for _, join := range []testenv.Event{evs[1], bobJoin} {
		st := fedEvent(t, page, "state", join.ID())
		wantPDU(t, "a lazy-loaded member", st)
		if sun, _ := st["unsigned"].(map[string]any); sun["membership"] != nil {
			t.Errorf("a lazy-loaded member with unsigned.membership: %v", sun)
		}
	}
}

// TestMessages_FederationFormatBackfilled: a backfilled event's stream
// ordering is the negative of its log sequence (CONTRACT.md section 3);
// its message is read at the sequence, and it is in the page as its PDU.
func TestMessages_FederationFormatBackfilled(t *testing.T) {
	m := startMain(t)
	room := testenv.NewRoom("fedbackfilled", "test")
	evs := room.Setup(alice)
	live := room.Msg(alice, "live")
	room.StartAt(1)
	old := room.Msg("@remote:other.org", "from before")
	old["backfilled"] = true
	old["origin"] = "other.org"
	evs = append(evs, live, old)
	seqs := m.publisher().Publish(t, evs...)
	req := map[string]any{"admin": true, "dir": "b", "limit": 10, "wait_for": seqs[len(seqs)-1]}
	client, err := m.messages(t, room.ID, req)
	if err != nil {
		t.Fatal(err)
	}
	req["event_format"] = "federation"
	fed, err := m.messages(t, room.ID, req)
	if err != nil {
		t.Fatal(err)
	}
	if ids, want := chunkIDs(fed), chunkIDs(client); fmt.Sprint(ids) != fmt.Sprint(want) || !slices.Contains(ids, old.ID()) {
		t.Fatalf("federation page %v, client page %v; want both with %s", ids, want, old.ID())
	}
	o := fedEvent(t, fed, "chunk", old.ID())
	wantPDU(t, "the backfilled event", o)
	if o["origin"] != "other.org" {
		t.Errorf("the backfilled event: %v", o)
	}
}

// TestMessages_FederationFormatMembersFitMaxPayload: the lazy-loaded
// members are in the federation format too, where a member event may be
// far bigger than in the client format (here 30 KiB of signatures each):
// they count in the reply's size, so a page of 40 senders ends at the
// last event whose sender's member still fits, and its state holds the
// members of the senders of the events it keeps (in the state after the
// newest, chunk[0] of a backwards page), as Synapse's state of such a
// chunk would. Paging on reads every event once.
func TestMessages_FederationFormatMembersFitMaxPayload(t *testing.T) {
	m := startMainOnSmallPayloads(t)
	r := testenv.NewRoom("bigmembers", "test")
	evs := r.Setup("@a:test")
	sig := map[string]any{"test": map[string]any{"ed25519:a": strings.Repeat("s", 30<<10)}}
	var want []string
	for i := range 40 {
		user := fmt.Sprintf("@u%d:test", i)
		join := r.Join(user)
		join["signatures"] = sig
		msg := r.Msg(user, fmt.Sprint(i))
		evs = append(evs, join, msg)
		want = append([]string{msg.ID()}, want...) // newest first
	}
	seqs := m.publisher().Publish(t, evs...)
	got := walkPages(t, m, r.ID, map[string]any{"admin": true, "dir": "b", "limit": 40, "wait_for": seqs[len(seqs)-1], "event_format": "federation",
		"filter": map[string]any{"types": []any{"m.room.message"}, "lazy_load_members": true}}, func(pages int, page map[string]any) {
		ids := chunkIDs(page)
		if pages == 0 && len(ids) >= 40 {
			t.Fatalf("a first page of %d senders whose members are 30 KiB each: it cannot fit in 1 MiB", len(ids))
		}
		senders := map[any]bool{}
		for _, v := range page["chunk"].([]any) {
			senders[v.(map[string]any)["sender"]] = true
		}
		members := map[any]bool{}
		state, _ := page["state"].([]any)
		for _, v := range state {
			members[v.(map[string]any)["state_key"]] = true
		}
		if len(ids) > 0 && fmt.Sprint(members) != fmt.Sprint(senders) {
			t.Fatalf("page %d: members %v for the chunk's senders %v", pages, members, senders)
		}
	})
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("read %d events:\n%v\nwant %d:\n%v", len(got), got, len(want), want)
	}
}

// walkPages reads pages of req from the start until one has no end (or
// no events), checking each with check, and returns the events' IDs.
func walkPages(t *testing.T, m *Main, roomID string, req map[string]any, check func(pages int, page map[string]any)) []string {
	t.Helper()
	var got []string
	for pages := 0; ; pages++ {
		page, err := m.messages(t, roomID, req)
		if err != nil {
			t.Fatalf("page %d: %v", pages, err)
		}
		check(pages, page)
		ids := chunkIDs(page)
		got = append(got, ids...)
		end, _ := page["end"].(string)
		if end == "" || len(ids) == 0 {
			return got
		}
		req["from"] = end
	}
}
