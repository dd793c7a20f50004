package handlers_test

import (
	"net/http"
	"net/http/httptest"
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
