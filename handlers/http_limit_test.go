package handlers_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/testenv"
)

// TestBridge_BoundsRequestsInFlight: with MaxInFlight requests waiting on
// a slow service, one more is answered 429 M_LIMIT_EXCEEDED at once, and
// the bridge serves again once they finish.
func TestBridge_BoundsRequestsInFlight(t *testing.T) {
	n := testenv.NewNATS(t)
	subjects := bus.Subjects{Prefix: "sb"}
	release := make(chan struct{})
	held := make(chan struct{}, 10)
	sub, err := n.NC.Subscribe(subjects.APIRoomWildcard("messages"), func(m *nats.Msg) {
		go func() { // a service answering concurrently, slowly
			held <- struct{}{}
			<-release
			data, _ := bus.Encode(map[string]any{"chunk": []any{}, "start": "s1"})
			m.Respond(data)
		}()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	b := &handlers.Bridge{
		Req:         &bus.Requester{NC: n.NC, Timeout: 10 * time.Second},
		Subjects:    subjects,
		Auth:        &handlers.Auth{Static: map[string]handlers.Identity{"tok": {UserID: "@alice:test"}}, Subjects: subjects, Req: &bus.Requester{NC: n.NC, Timeout: time.Second}},
		MaxInFlight: 2,
	}
	srv := httptest.NewServer(b.Handler())
	defer srv.Close()
	get := func() *http.Response {
		req, _ := http.NewRequest("GET", srv.URL+"/_matrix/client/v3/rooms/!r:test/messages?dir=b", nil)
		req.Header.Set("Authorization", "Bearer tok")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return nil
		}
		resp.Body.Close()
		return resp
	}
	statuses := make(chan int, 2)
	for range 2 {
		go func() {
			if resp := get(); resp != nil {
				statuses <- resp.StatusCode
			}
		}()
	}
	<-held
	<-held
	resp := get()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a third request with two in flight: %d, want 429 with Retry-After", resp.StatusCode)
	}
	close(release)
	for range 2 {
		if st := <-statuses; st != 200 {
			t.Fatalf("a request in flight ended %d", st)
		}
	}
	if resp := get(); resp.StatusCode != 200 {
		t.Fatalf("after the flood: %d", resp.StatusCode)
	}
}

// TestBridge_V1DeletionsHaveSlotsOfTheirOwn: a v1 room deletion waits as
// long as the deletion (up to DeleteV1Timeout, and on after its client
// has gone), so v1 deletions must not take the slots every other request
// needs: with MaxInFlight v1 deletions waiting, a read is still served,
// and past MaxDeleteV1 of them a v1 deletion is answered 429 at once.
func TestBridge_V1DeletionsHaveSlotsOfTheirOwn(t *testing.T) {
	n := testenv.NewNATS(t)
	subjects := bus.Subjects{Prefix: "sb"}
	release := make(chan struct{})
	held := make(chan struct{}, 10)
	answer := func(reply map[string]any) nats.MsgHandler {
		return func(m *nats.Msg) {
			go func() {
				out := reply
				if out == nil { // the v1 deletion: answers when it is over
					held <- struct{}{}
					<-release
					out = map[string]any{"kicked_users": []any{}}
				}
				data, _ := bus.Encode(out)
				m.Respond(data)
			}()
		}
	}
	for subj, reply := range map[string]map[string]any{
		subjects.APIRoomWildcard("delete"):   nil,
		subjects.APIRoomWildcard("messages"): {"chunk": []any{}, "start": "s1"},
	} {
		sub, err := n.NC.Subscribe(subj, answer(reply))
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
	}
	admin := handlers.Identity{UserID: "@admin:test", Admin: true}
	b := &handlers.Bridge{
		Req:         &bus.Requester{NC: n.NC, Timeout: 10 * time.Second},
		Subjects:    subjects,
		Auth:        &handlers.Auth{Static: map[string]handlers.Identity{"tok": admin}, Subjects: subjects, Req: &bus.Requester{NC: n.NC, Timeout: time.Second}},
		MaxInFlight: 2,
		MaxDeleteV1: 3,
	}
	srv := httptest.NewServer(b.Handler())
	defer srv.Close()
	var once sync.Once
	releaseAll := func() { once.Do(func() { close(release) }) }
	defer releaseAll()                               // before srv.Close, which waits for the requests
	client := &http.Client{Timeout: 5 * time.Second} // a deletion let in past the bound would wait for good
	do := func(method, path string) int {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(`{}`))
		req.Header.Set("Authorization", "Bearer tok")
		resp, err := client.Do(req)
		if err != nil {
			t.Error(err)
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	statuses := make(chan int, 3)
	for i := range 3 {
		go func() { statuses <- do("DELETE", "/_synapse/admin/v1/rooms/!r"+strconv.Itoa(i)+":test") }()
	}
	for range 3 {
		select {
		case <-held:
		case st := <-statuses:
			t.Fatalf("a v1 deletion answered %d before its deletion was over, with MaxInFlight 2 and MaxDeleteV1 3", st)
		}
	}
	if st := do("GET", "/_matrix/client/v3/rooms/!r:test/messages?dir=b"); st != 200 {
		t.Fatalf("a read with three v1 deletions waiting and MaxInFlight 2: %d, want 200", st)
	}
	if st := do("DELETE", "/_synapse/admin/v1/rooms/!r9:test"); st != 429 {
		t.Fatalf("a fourth v1 deletion with MaxDeleteV1 3: %d, want 429", st)
	}
	releaseAll()
	for range 3 {
		if st := <-statuses; st != 200 {
			t.Fatalf("a waiting v1 deletion ended %d", st)
		}
	}
}

// deadlineRecorder sends requests with its Requester and records the
// deadline of each request's context.
type deadlineRecorder struct {
	handlers.Requester
	mu       sync.Mutex
	deadline time.Time
}

func (d *deadlineRecorder) Request(ctx context.Context, subject string, req any) ([]byte, error) {
	d.mu.Lock()
	d.deadline, _ = ctx.Deadline()
	d.mu.Unlock()
	return d.Requester.Request(ctx, subject, req)
}

// TestBridge_V1DeletionOutwaitsTheService: the service gives a v1
// deletion DeleteV1Timeout from when a worker takes it and then answers
// 504 with the deletion's ID; the bridge must wait longer than that, or
// the admin gets its own 503 "scrollback did not answer" instead.
func TestBridge_V1DeletionOutwaitsTheService(t *testing.T) {
	n := testenv.NewNATS(t)
	subjects := bus.Subjects{Prefix: "sb"}
	sub, err := n.NC.Subscribe(subjects.APIRoomWildcard("delete"), func(m *nats.Msg) {
		data, _ := bus.Encode(map[string]any{"kicked_users": []any{}})
		m.Respond(data)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	admin := handlers.Identity{UserID: "@admin:test", Admin: true}
	rec := &deadlineRecorder{Requester: &bus.Requester{NC: n.NC, Timeout: 10 * time.Second}}
	b := &handlers.Bridge{
		Req:       &bus.Requester{NC: n.NC, Timeout: 10 * time.Second},
		DeleteReq: rec,
		Subjects:  subjects,
		Auth:      &handlers.Auth{Static: map[string]handlers.Identity{"tok": admin}, Subjects: subjects, Req: &bus.Requester{NC: n.NC, Timeout: time.Second}},
	}
	srv := httptest.NewServer(b.Handler())
	defer srv.Close()
	req, _ := http.NewRequest("DELETE", srv.URL+"/_synapse/admin/v1/rooms/!r:test", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer tok")
	sent := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("v1 deletion: %d", resp.StatusCode)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if wait := rec.deadline.Sub(sent); wait < handlers.DeleteV1Timeout+10*time.Second {
		t.Fatalf("the bridge waits %v for a v1 deletion; the service may answer up to DeleteV1Timeout (%v) after it takes the request", wait, handlers.DeleteV1Timeout)
	}
}
