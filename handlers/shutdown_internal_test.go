package handlers

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
)

// A shutdown's list of members keeps its order through the task's result,
// so that each user keeps the <n> of their txn_ids when the task resumes;
// a result of an earlier release (a map) keeps the hashes it numbered
// them with; and a resumed task's relisting appends those who joined
// since.
func TestShutdownResult_ListKeepsEachUsersNumber(t *testing.T) {
	r := &shutdownResult{}
	if !r.list(map[string]string{"@b:t": "join", "@a:t": "invite"}) {
		t.Fatal("a first listing changes the result")
	}
	back := resultOf(r.toMap())
	want := []member{{"@a:t", "invite", 0}, {"@b:t", "join", 1}}
	if !reflect.DeepEqual(back.Todo, want) {
		t.Fatalf("round trip: %v, want %v", back.Todo, want)
	}
	if back.list(map[string]string{"@b:t": "join"}) {
		t.Fatal("nobody new: no change")
	}
	if !back.list(map[string]string{"@0:t": "join", "@b:t": "join"}) {
		t.Fatal("a newcomer changes the list")
	}
	want = append(want, member{"@0:t", "join", 2}) // last, whatever its ID sorts as
	if !reflect.DeepEqual(back.Todo, want) {
		t.Fatalf("relisted: %v, want %v", back.Todo, want)
	}
	// An earlier release's map keeps the numbers it gave: the users' hashes.
	old := resultOf(resultOf(map[string]any{todoKey: map[string]any{"@b:t": "join", "@a:t": "knock"}}).toMap())
	if want := []member{{"@a:t", "knock", int64(legacyTxnN("@a:t"))}, {"@b:t", "join", int64(legacyTxnN("@b:t"))}}; !reflect.DeepEqual(old.Todo, want) {
		t.Fatalf("an earlier release's map: %v, want %v", old.Todo, want)
	}
	empty := resultOf((&shutdownResult{Todo: []member{}}).toMap())
	if empty.Todo == nil {
		t.Fatal("an empty list read back as not listed yet")
	}
	if _, ok := (&shutdownResult{Todo: want}).public()[todoKey]; ok {
		t.Fatal("the public result shows the list")
	}
}

// A deletion's TaskUpdates carry its whole result, and the log refuses a
// message over max_payload (8 MiB): a task whose update does not fit can
// record no progress, and fails the same way each time it resumes. With
// 100k local members of long user IDs the list of members to kick and
// kicked_users each took about 4.5 MB (found by a review helper). The
// list keeps only the members not kicked yet, so the two never hold a
// user twice, at any point of the task.
func TestShutdownResult_ATaskUpdateFits100kMembers(t *testing.T) {
	members := map[string]string{}
	for i := range 100_000 {
		members[fmt.Sprintf("@user%06d:chat.company-name.example.com", i)] = "join"
	}
	r := &shutdownResult{}
	r.list(members)
	// Kicked, failed (the homeserver's worker down: every user failed,
	// and retried when the task resumes), and left to do.
	for _, step := range []struct{ kicked, failed int }{{0, 0}, {50_000, 0}, {100_000, 0}, {0, 100_000}, {30_000, 30_000}} {
		r.Kicked, r.Failed = nil, nil
		for _, p := range r.Todo[:step.kicked] {
			r.Kicked = append(r.Kicked, p.user)
		}
		for _, p := range r.Todo[step.kicked : step.kicked+step.failed] {
			r.Failed = append(r.Failed, p.user)
		}
		data, err := bus.Encode(map[string]any{"task_id": "T", "status": "active", "ts": int64(0), "result": r.toMap()})
		if err != nil {
			t.Fatal(err)
		}
		if len(data) >= bus.MaxPayload {
			t.Errorf("%+v: a TaskUpdate of %d bytes, max_payload %d", step, len(data), bus.MaxPayload)
		}
		back := resultOf(r.toMap())
		want := r.Todo[step.kicked:]
		got := map[string]member{}
		for _, p := range back.Todo {
			got[p.user] = p
		}
		if len(back.Todo) != len(want) {
			t.Errorf("%+v: %d members left to kick read back, want %d", step, len(back.Todo), len(want))
		}
		for _, p := range want {
			if got[p.user] != p {
				t.Fatalf("%+v: %s read back as %+v, want %+v", step, p.user, got[p.user], p)
			}
		}
	}
}

// Kicked users leave the recorded list, but their numbers are not given
// again: a newcomer listed by a resumed task never takes the txn_ids of a
// kicked user, whose homeserver replies are kept.
func TestShutdownResult_NumbersOfKickedUsersAreNotReused(t *testing.T) {
	r := &shutdownResult{}
	r.list(map[string]string{"@a:t": "join", "@b:t": "join"})
	r.Kicked = []string{"@a:t", "@b:t"}
	back := resultOf(r.toMap())
	if len(back.Todo) != 0 || back.Todo == nil {
		t.Fatalf("read back %#v, want an empty list", back.Todo)
	}
	back.list(map[string]string{"@c:t": "join"})
	if got := back.Todo[0].n; got < 2 {
		t.Fatalf("the newcomer's number %d is a kicked user's", got)
	}
}

// A big deletion publishes its progress less often: its updates grow
// with the members, and each stays in the log.
func TestProgressEvery(t *testing.T) {
	for _, tt := range []struct {
		members int
		want    time.Duration
	}{{0, 500 * time.Millisecond}, {5_000, 500 * time.Millisecond}, {10_000, time.Second}, {100_000, 5500 * time.Millisecond}} {
		if got := progressEvery(tt.members); got != tt.want {
			t.Errorf("progressEvery(%d) = %v, want %v", tt.members, got, tt.want)
		}
	}
}
