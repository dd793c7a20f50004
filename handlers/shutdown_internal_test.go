package handlers

import (
	"reflect"
	"testing"
)

// A shutdown's list of members keeps its order through the task's result,
// so that each user keeps the <n> of their txn_ids when the task resumes;
// a result of an earlier release (a map) is numbered in user order; and a
// resumed task's relisting appends those who joined since.
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
