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
	want := []member{{"@a:t", "invite"}, {"@b:t", "join"}}
	if !reflect.DeepEqual(back.Todo, want) {
		t.Fatalf("round trip: %v, want %v", back.Todo, want)
	}
	if back.list(map[string]string{"@b:t": "join"}) {
		t.Fatal("nobody new: no change")
	}
	if !back.list(map[string]string{"@0:t": "join", "@b:t": "join"}) {
		t.Fatal("a newcomer changes the list")
	}
	want = append(want, member{"@0:t", "join"}) // last, whatever its ID sorts as
	if !reflect.DeepEqual(back.Todo, want) {
		t.Fatalf("relisted: %v, want %v", back.Todo, want)
	}
	old := resultOf(map[string]any{todoKey: map[string]any{"@b:t": "join", "@a:t": "knock"}})
	if want := []member{{"@a:t", "knock"}, {"@b:t", "join"}}; !reflect.DeepEqual(old.Todo, want) {
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
