package bus_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/testenv"
)

// TestServe_ReleaseAfterTheReplyIsSent: an endpoint that builds each
// reply in a reused buffer and gets it back through Release, under many
// concurrent requests, sends every reply intact: Release comes only once
// the reply's bytes are copied out, and then exactly once per reply.
func TestServe_ReleaseAfterTheReplyIsSent(t *testing.T) {
	env := testenv.NewNATS(t)
	var (
		mu       sync.Mutex
		free     [][]byte
		out      = map[*byte]bool{} // buffers handed out and not yet released
		released int
	)
	svc, err := bus.Serve(env.NC, bus.ServiceOptions{Name: "pooled", Version: "0.0.1"}, []bus.Endpoint{{
		Name: "echo", Subject: "pooled.echo",
		Handler: func(ctx context.Context, _ string, data []byte) ([]byte, error) {
			mu.Lock()
			var b []byte
			if n := len(free); n > 0 {
				b, free = free[n-1][:0], free[:n-1]
			} else {
				b = make([]byte, 0, 64<<10)
			}
			out[unsafeFirst(b)] = true
			mu.Unlock()
			for range 1000 {
				b = append(b, data...)
			}
			return b, nil
		},
		Release: func(b []byte) {
			mu.Lock()
			defer mu.Unlock()
			if !out[unsafeFirst(b)] {
				t.Errorf("a buffer released twice, or never handed out")
			}
			delete(out, unsafeFirst(b))
			released++
			// Overwrite it at once: a reply still being sent would show it.
			b = b[:cap(b)]
			for i := range b {
				b[i] = 'X'
			}
			free = append(free, b)
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	const clients, each = 16, 50
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for i := range each {
				req := fmt.Appendf(nil, "<%d.%d>", c, i)
				msg, err := env.NC.Request("pooled.echo", req, 10*time.Second)
				if err != nil {
					t.Error(err)
					return
				}
				if want := bytes.Repeat(req, 1000); !bytes.Equal(msg.Data, want) {
					t.Errorf("reply to %s corrupted (%d bytes, starts %q)", req, len(msg.Data), msg.Data[:min(20, len(msg.Data))])
					return
				}
			}
		})
	}
	wg.Wait()
	testenv.WaitFor(t, 5*time.Second, "every reply released", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return released == clients*each
	})
}

// unsafeFirst identifies a buffer by its backing array.
func unsafeFirst(b []byte) *byte { return &b[:1][0] }

// TestServe_DetachedRequestsLeaveTheirWorker: a handler that detaches
// before a long wait gives its worker back (and leaves the Load count),
// so that a service with one worker still answers other requests while
// it waits; its reply still comes when it returns, and Stop waits for
// it. Past MaxDetached, Detach refuses with 429.
func TestServe_DetachedRequestsLeaveTheirWorker(t *testing.T) {
	env := testenv.NewNATS(t)
	load := &bus.Load{}
	gate, detached := make(chan struct{}), make(chan error, 4)
	var finished atomic.Int32
	svc, err := bus.Serve(env.NC, bus.ServiceOptions{Name: "detach", Version: "0.0.1", Workers: 1, MaxDetached: 2, Load: load}, []bus.Endpoint{
		{Name: "wait", Subject: "detach.wait", Handler: func(ctx context.Context, _ string, _ []byte) ([]byte, error) {
			err := bus.Detach(ctx)
			detached <- err
			if err != nil {
				return nil, err
			}
			<-gate
			defer finished.Add(1)
			return []byte("waited"), nil
		}},
		{Name: "now", Subject: "detach.now", Handler: func(ctx context.Context, _ string, _ []byte) ([]byte, error) {
			return []byte("now"), nil
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	replies := make(chan string, 2)
	for range 2 {
		go func() {
			msg, err := env.NC.Request("detach.wait", nil, 5*time.Second)
			if err != nil {
				replies <- err.Error()
				return
			}
			replies <- string(msg.Data)
		}()
		select {
		case err := <-detached:
			if err != nil {
				t.Fatalf("Detach under MaxDetached: %v", err)
			}
		case r := <-replies:
			t.Fatalf("a second request on the one worker, with the first detached: %s", r)
		}
	}
	if n, d := load.Requests(), load.Detached(); n != 0 || d != 2 {
		t.Fatalf("Load counts %d requests and %d detached with two detached, want 0 and 2", n, d)
	}
	msg, err := env.NC.Request("detach.now", nil, 2*time.Second)
	if err != nil || string(msg.Data) != "now" {
		t.Fatalf("a request while two wait detached on one worker: %v %v", err, msg)
	}
	msg, err = env.NC.Request("detach.wait", nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if <-detached == nil || msg.Header.Get("Nats-Service-Error-Code") != "429" {
		t.Fatalf("a third detached request past MaxDetached 2: %v %q", msg.Header, msg.Data)
	}
	// Stop, with the detached handlers still waiting: it returns only
	// once they have.
	stopped := make(chan int32)
	go func() {
		if err := svc.Stop(); err != nil {
			t.Error(err)
		}
		stopped <- finished.Load()
	}()
	close(gate)
	if n := <-stopped; n != 2 {
		t.Fatalf("Stop returned with %d of 2 detached handlers done", n)
	}
	for range 2 {
		if r := <-replies; r != "waited" {
			t.Fatalf("detached request's reply: %q", r)
		}
	}
	if d := load.Detached(); d != 0 {
		t.Fatalf("Load counts %d detached after they returned", d)
	}
}

// TestServe_DetachAfterTheHandlerReturned: a goroutine a handler left
// behind that calls Detach with the request's ctx after the handler has
// returned changes nothing: the worker was given back once, the Load
// count stays right, and the service goes on serving.
func TestServe_DetachAfterTheHandlerReturned(t *testing.T) {
	env := testenv.NewNATS(t)
	load := &bus.Load{}
	late := make(chan error, 1)
	svc, err := bus.Serve(env.NC, bus.ServiceOptions{Name: "late", Version: "0.0.1", Workers: 1, Load: load}, []bus.Endpoint{{
		Name: "leave", Subject: "late.leave", Handler: func(ctx context.Context, _ string, _ []byte) ([]byte, error) {
			go func() {
				<-ctx.Done() // cancelled once the handler has returned
				late <- bus.Detach(ctx)
			}()
			return []byte("ok"), nil
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	if _, err := env.NC.Request("late.leave", nil, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := <-late; err != nil {
		t.Fatalf("Detach after the handler returned: %v", err)
	}
	// The request leaves the count after its context ends (finish runs
	// after the deferred cancel), so the late Detach may come first.
	testenv.WaitFor(t, 5*time.Second, "Load to count no request", func() bool { return load.Requests() == 0 })
	for range 3 {
		if _, err := env.NC.Request("late.leave", nil, 5*time.Second); err != nil {
			t.Fatalf("the one worker after a late Detach: %v", err)
		}
		<-late
	}
}

// TestServe_RefusesRepliesOnItsOwnOrSystemSubjects: the service answers
// with its own connection's rights, which on the embedded server are all
// of them, so a request whose reply subject is a system API or one of the
// service's own subjects would make it publish there for the requester:
// a client-role user asking for a page with the reply subject
// $JS.API.STREAM.PURGE.<stream> had the service purge the whole log (a
// MessagePack body is no purge filter, so everything went). Such a
// request gets no reply, and its handler does not run. Inboxes of any
// prefix, and other subjects, are answered (accounts and gateways rewrite
// reply subjects to _R_. and _GR_.).
func TestServe_RefusesRepliesOnItsOwnOrSystemSubjects(t *testing.T) {
	env := testenv.NewNATS(t)
	var calls atomic.Int32
	svc, err := bus.Serve(env.NC, bus.ServiceOptions{Name: "inbox", Version: "0.0.1", ReplyDeny: []string{"sb."}}, []bus.Endpoint{{
		Name: "echo", Subject: "inbox.echo",
		Handler: func(ctx context.Context, _ string, data []byte) ([]byte, error) {
			calls.Add(1)
			return data, nil
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()
	for target, answered := range map[string]bool{"$JS.API.STREAM.PURGE.SCROLLBACK": false, "$KV.x.p.1": false, "sb.room.x.event": false,
		"_INBOX_custom.x": true, "_INBOX.x.y": true, "replies.elsewhere": true} {
		sub, err := env.NC.SubscribeSync(target)
		if err != nil {
			t.Fatal(err)
		}
		before := calls.Load()
		if err := env.NC.PublishRequest("inbox.echo", target, []byte("payload")); err != nil {
			t.Fatal(err)
		}
		msg, err := sub.NextMsg(300 * time.Millisecond)
		switch {
		case answered && err != nil:
			t.Errorf("no reply on %s: %v", target, err)
		case !answered && err == nil:
			t.Errorf("the service replied on %s: %q", target, msg.Data)
		case !answered && calls.Load() != before:
			t.Errorf("the handler ran for a request with the reply subject %s", target)
		}
		sub.Unsubscribe()
	}
}

// TestServe_AStallQueuesSmallRequestsInsteadOfDroppingThem: while every
// worker is busy, an endpoint's requests wait in its subscription; a
// stall of the workers as long as the ones a purge's erasure caused
// (150 ms of reads at 9.6k/s, about 1,500 requests) must queue small
// requests, not drop them: a dropped request costs its sender its whole
// timeout (the purge benchmark lost 339 reads so, each after 10 s). Big
// requests stay bounded by bytes (EndpointPendingBytes).
func TestServe_AStallQueuesSmallRequestsInsteadOfDroppingThem(t *testing.T) {
	env := testenv.NewNATS(t)
	release := make(chan struct{})
	var first sync.Once
	started := make(chan struct{})
	svc, err := bus.Serve(env.NC, bus.ServiceOptions{Name: "stalled", Version: "0.0.1", Workers: 1}, []bus.Endpoint{{
		Name: "echo", Subject: "stalled.echo",
		Handler: func(ctx context.Context, _ string, data []byte) ([]byte, error) {
			first.Do(func() { close(started); <-release })
			return data, nil
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	client, err := nats.Connect(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	replies := make(chan struct{}, 4096)
	inbox := client.NewRespInbox()
	sub, err := client.Subscribe(inbox+".*", func(*nats.Msg) { replies <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	sub.SetPendingLimits(-1, -1)
	if err := client.PublishRequest("stalled.echo", inbox+".first", []byte("first")); err != nil {
		t.Fatal(err)
	}
	<-started // the one worker is held from here
	const n = 3000
	for i := range n {
		if err := client.PublishRequest("stalled.echo", fmt.Sprintf("%s.%d", inbox, i), fmt.Appendf(nil, "request %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := client.Flush(); err != nil {
		t.Fatal(err)
	}
	// The service's connection has them all once a round trip on it
	// comes back after them.
	if err := env.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	close(release)
	got := 0
	timeout := time.After(20 * time.Second)
	for got < n+1 {
		select {
		case <-replies:
			got++
		case <-timeout:
			t.Fatalf("%d of %d requests answered after the stall: the rest were dropped", got, n+1)
		}
	}
}

// heldWorker is a service with one worker on <name>.work; a "block"
// request holds the worker until gate is closed.
type heldWorker struct {
	env     *testenv.NATS
	client  *nats.Conn
	svc     *bus.Service
	load    *bus.Load
	subject string
	gate    chan struct{}
}

// holdTheWorker serves <name>.work with one worker, sends a "block"
// request and returns once it holds the worker. handled, if set, runs
// at the start of every handler call.
func holdTheWorker(t *testing.T, name string, handled func()) *heldWorker {
	t.Helper()
	env := testenv.NewNATS(t)
	client, err := nats.Connect(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	h := &heldWorker{env: env, client: client, load: &bus.Load{}, subject: name + ".work", gate: make(chan struct{})}
	first := make(chan struct{})
	h.svc, err = bus.Serve(env.NC, bus.ServiceOptions{Name: name, Version: "0.0.1", Workers: 1, Load: h.load}, []bus.Endpoint{{
		Name: "work", Subject: h.subject,
		Handler: func(ctx context.Context, _ string, data []byte) ([]byte, error) {
			if handled != nil {
				handled()
			}
			if string(data) == "block" {
				close(first)
				<-h.gate
			}
			return []byte("done"), nil
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = client.Request(h.subject, []byte("block"), 30*time.Second) }()
	<-first
	return h
}

// stop stops the service while the worker is held, lets the worker go
// once Stop has unsubscribed the endpoint (a new request finds no
// responder), and returns when Stop does; stopped runs right after it.
func (h *heldWorker) stop(t *testing.T, stopped func()) {
	t.Helper()
	stopDone := make(chan error, 1)
	go func() {
		err := h.svc.Stop()
		stopped()
		stopDone <- err
	}()
	testenv.WaitFor(t, 10*time.Second, "Stop to unsubscribe the endpoint", func() bool {
		_, err := h.client.Request(h.subject, []byte("probe"), 20*time.Millisecond)
		return errors.Is(err, nats.ErrNoResponders)
	})
	close(h.gate)
	if err := <-stopDone; err != nil {
		t.Fatal(err)
	}
}

// TestServe_StopStartsNoHandlerAfterItReturns: requests that the
// endpoint's subscription still held when Stop began (micro drains it:
// they are still delivered after Stop has unsubscribed) are never
// handled once Stop has returned, when the caller goes on to close what
// the handlers use (the projection file, the connections). They are
// answered at once with a 503 instead of waiting for their timeout, so
// that a requester can try another instance.
func TestServe_StopStartsNoHandlerAfterItReturns(t *testing.T) {
	var stopped atomic.Bool
	var late atomic.Int32
	h := holdTheWorker(t, "stopping", func() {
		if stopped.Load() {
			late.Add(1)
		}
	})
	// Requests that queue behind the one worker: one waits for it in
	// the endpoint's handler, the rest in the subscription. All are
	// published, and the server has taken them, before Stop begins: a
	// request sent after Stop unsubscribed rightly finds no responder
	// (one goroutine a request made that race under load).
	const queued = 64
	inbox := nats.NewInbox()
	replies := make(chan *nats.Msg, queued)
	sub, err := h.client.ChanSubscribe(inbox+".*", replies)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	for i := range queued {
		if err := h.client.PublishRequest(h.subject, fmt.Sprintf("%s.%d", inbox, i), []byte("queued")); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.client.Flush(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "the queued requests to reach the service", func() bool { return h.load.Requests() >= 2 })
	if err := h.env.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	h.stop(t, func() { stopped.Store(true) })
	answered, unanswered := 0, 0
	timeout := time.After(3 * time.Second)
	for answered+unanswered < queued {
		select {
		case m := <-replies:
			if m.Header.Get("Status") == "503" && len(m.Data) == 0 { // no responders
				unanswered++
			} else {
				answered++
			}
		case <-timeout:
			unanswered = queued - answered
		}
	}
	if n := late.Load(); n != 0 {
		t.Errorf("%d handlers started after Stop returned", n)
	}
	if unanswered != 0 {
		t.Errorf("%d of %d queued requests got no answer (answered %d): a stopping service leaves its requesters to time out", unanswered, queued, answered)
	}
}

// TestServe_StopServesARequestWaitingForAWorker: a request that micro
// had already handed to the service when Stop began, waiting there for
// a busy worker, is served (Stop waits for it), not refused with a 503:
// only what micro delivers once the service is stopping is refused.
func TestServe_StopServesARequestWaitingForAWorker(t *testing.T) {
	h := holdTheWorker(t, "waiting", nil)
	type result struct {
		msg *nats.Msg
		err error
	}
	waiting := make(chan result, 1)
	go func() {
		msg, err := h.client.Request(h.subject, []byte("second"), 30*time.Second)
		waiting <- result{msg, err}
	}()
	testenv.WaitFor(t, 10*time.Second, "the second request to wait for the worker", func() bool { return h.load.Requests() >= 2 })
	h.stop(t, func() {})
	r := <-waiting
	if r.err != nil {
		t.Fatalf("the waiting request: %v", r.err)
	}
	if code := r.msg.Header.Get("Nats-Service-Error-Code"); code != "" || string(r.msg.Data) != "done" {
		t.Fatalf("the request handed over before Stop was answered %s %q (%q), want it served", code, r.msg.Header.Get("Nats-Service-Error"), r.msg.Data)
	}
}

// TestServe_RepliesGoOutOnTheReplyConnections: with ReplyConns, every
// reply, an error's included, is published by one of them in turn, none
// by the connection the requests came in on, and each reaches its
// requester.
func TestServe_RepliesGoOutOnTheReplyConnections(t *testing.T) {
	env := testenv.NewNATS(t)
	var replyConns []*nats.Conn
	for i := range 2 {
		nc, err := bus.ConnectInProcess(env.Server, fmt.Sprintf("reply-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		replyConns = append(replyConns, nc)
	}
	serving, err := bus.ConnectInProcess(env.Server, "serving")
	if err != nil {
		t.Fatal(err)
	}
	defer serving.Close()
	svc, err := bus.Serve(serving, bus.ServiceOptions{Name: "replies", Version: "0.0.1", ReplyConns: replyConns}, []bus.Endpoint{{
		Name: "echo", Subject: "replies.echo",
		Handler: func(ctx context.Context, _ string, data []byte) ([]byte, error) {
			if string(data) == "fail" {
				return nil, errors.New("failed")
			}
			return data, nil
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()
	servingBefore := serving.Stats().OutMsgs
	for i, data := range []string{"one", "two", "fail", "four"} {
		msg, err := env.NC.Request("replies.echo", []byte(data), 5*time.Second)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if code := msg.Header.Get("Nats-Service-Error-Code"); data == "fail" && code != "500" {
			t.Errorf("request %q: error code %q, want 500", data, code)
		} else if data != "fail" && string(msg.Data) != data {
			t.Errorf("request %q: reply %q", data, msg.Data)
		}
	}
	for i, nc := range replyConns {
		if n := nc.Stats().OutMsgs; n != 2 {
			t.Errorf("reply connection %d published %d replies, want 2 of the 4", i, n)
		}
	}
	if n := serving.Stats().OutMsgs - servingBefore; n != 0 {
		t.Errorf("the serving connection published %d messages, want none", n)
	}
}
