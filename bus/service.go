package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/scrollback/scrollback/commands"
)

// Handler answers one request: data is the raw request payload (not yet
// checked), subject the request's subject. It returns the MessagePack
// reply, or an error that Respond maps to the contract's error convention.
type Handler func(ctx context.Context, subject string, data []byte) ([]byte, error)

// Endpoint is one micro endpoint.
type Endpoint struct {
	Name    string
	Subject string
	Handler Handler
	// Timeout bounds one request (default 30 s).
	Timeout time.Duration
	// Release, if set, is given each reply of Handler once it has been
	// sent (nats.go copies a message's data when publishing), so that
	// the handler can reuse its buffer.
	Release func([]byte)
}

// ServiceOptions configure Serve.
type ServiceOptions struct {
	Name    string // micro service name: "scrollback"
	Version string
	// Workers bounds the requests answered at once across endpoints. micro
	// runs one handler at a time per endpoint, so requests are handed to
	// this pool; when it is full, the subscription waits (backpressure).
	Workers int
	Logger  *slog.Logger
	// Observe, if set, hears each request's endpoint, duration and status.
	Observe func(endpoint string, d time.Duration, status int)
	// Load, if set, counts the requests the service holds.
	Load *Load
	// MaxDetached bounds the requests that wait detached from a worker
	// at once (Detach; default DefaultMaxDetached).
	MaxDetached int
	// ReplyDeny lists the prefixes of reply subjects the service does
	// not answer on (refused); "$" (JetStream, key-value, system APIs)
	// is always among them. A request with such a reply subject is
	// dropped unhandled.
	ReplyDeny []string
	// ReplyConns, if set, publish the replies in turn instead of the
	// connection the requests come in on. Each must be allowed to
	// publish on any reply subject: a connection answering requests it
	// did not receive is refused by a response permission.
	ReplyConns []*nats.Conn
}

// DefaultMaxDetached is ServiceOptions.MaxDetached's default. A detached
// request costs a goroutine and what its handler holds while it waits,
// not a worker; the bound keeps a flood of them (a client retrying a
// request that waits for minutes) from growing without end.
const DefaultMaxDetached = 1024

// Service is a running micro service.
type Service struct {
	nc  *nats.Conn
	svc micro.Service
	sem chan struct{}
	// detached holds a slot per request waiting detached (Detach).
	detached chan struct{}
	wg       sync.WaitGroup
	opts     ServiceOptions
	ctx      context.Context
	stop     context.CancelFunc
	// Stop sets closed (under mu): micro drains the endpoints'
	// subscriptions, so requests they held are still delivered after
	// Stop began; from then on they are refused instead of handled, and
	// the wait group is never added to after Stop waits. A request
	// handed over before then is served.
	mu     sync.Mutex
	closed bool
	// lastRefused is when a refused request was last logged (UnixNano).
	lastRefused atomic.Int64
	// replies counts the replies sent through ReplyConns.
	replies atomic.Uint64
}

// An endpoint's requests wait in its subscription while every worker is
// busy, up to these limits; past them the client library drops requests
// (their senders time out) instead of buffering a flood without bound.
// nats.go's own defaults are 512k messages and 64 MiB per subscription.
//
// The bytes bound what a flood can make the service hold: 8 MiB an
// endpoint, 1,024 requests of the flood test's 8 KiB. The count lets a
// stall of the workers queue the small requests of ordinary reads (about
// 200 bytes) rather than drop them: a dropped request costs its sender
// its whole timeout. With 1,024, the purge benchmark lost 339 reads of
// another room at 9.6k/s in one run, during a 150 ms stall in the
// erasure; 8,192 holds most of a second of them.
const (
	EndpointPendingMsgs  = 8192
	EndpointPendingBytes = 8 << 20
)

// InboxPrefix is nats.go's default inbox prefix.
const InboxPrefix = "_INBOX."

// refused reports whether the service must not reply on subject r. It
// publishes its replies with its own connection's rights (on the embedded
// server, all of them), so a reply subject of the requester's choosing
// would let any user publish there through it: a client-role user had
// the service answer on $JS.API.STREAM.PURGE.<stream>, and JetStream
// took the MessagePack reply for a request to purge the whole log. Reply
// subjects under ServiceOptions.ReplyDeny (system APIs, the service's own
// subjects) are refused; inboxes of any prefix, and the reply subjects
// NATS rewrites across accounts (_R_.) and gateways (_GR_.), are not.
func (s *Service) refused(r string) bool {
	for _, p := range s.opts.ReplyDeny {
		if strings.HasPrefix(r, p) {
			return true
		}
	}
	return false
}

// Serve registers the endpoints as a nats.go/micro service (queue group
// "q", so several instances share the load).
func Serve(nc *nats.Conn, opts ServiceOptions, endpoints []Endpoint) (*Service, error) {
	if opts.Workers <= 0 {
		opts.Workers = 64
	}
	if opts.MaxDetached <= 0 {
		opts.MaxDetached = DefaultMaxDetached
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	opts.ReplyDeny = append([]string{"$"}, opts.ReplyDeny...)
	if opts.Version == "" {
		opts.Version = "0.1.0"
	}
	s := &Service{nc: nc, sem: make(chan struct{}, opts.Workers), detached: make(chan struct{}, opts.MaxDetached), opts: opts}
	opts.Load.serve(opts.Workers)
	s.ctx, s.stop = context.WithCancel(context.Background())
	svc, err := micro.AddService(nc, micro.Config{Name: opts.Name, Version: opts.Version, Description: "Matrix room history"})
	if err != nil {
		return nil, fmt.Errorf("bus: micro service: %w", err)
	}
	s.svc = svc
	for _, ep := range endpoints {
		if err := svc.AddEndpoint(ep.Name, s.wrap(ep), micro.WithEndpointSubject(ep.Subject),
			micro.WithEndpointPendingLimits(EndpointPendingMsgs, EndpointPendingBytes)); err != nil {
			svc.Stop()
			return nil, fmt.Errorf("bus: endpoint %s: %w", ep.Name, err)
		}
	}
	// The endpoints' subscriptions reach the server asynchronously: one
	// round trip makes sure it has them before Serve returns, so that a
	// request sent on another connection right after finds a responder.
	if err := nc.Flush(); err != nil {
		svc.Stop()
		return nil, fmt.Errorf("bus: register endpoints: %w", err)
	}
	return s, nil
}

func (s *Service) wrap(ep Endpoint) micro.Handler {
	timeout := ep.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	return micro.HandlerFunc(func(req micro.Request) {
		if r := req.Reply(); s.refused(r) {
			if now := time.Now().UnixNano(); now-s.lastRefused.Load() >= int64(10*time.Second) {
				s.lastRefused.Store(now) // one line every 10 s at most: any client can send these
				s.opts.Logger.Warn("request ignored: its reply subject is the service's own or a system API's", "endpoint", ep.Name, "reply", r)
			}
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			s.refuseStopping(req, ep)
			return
		}
		// Counted before it waits for a worker: a request handed over
		// before Stop began is served, and Stop waits for it.
		s.wg.Add(1)
		s.mu.Unlock()
		s.opts.Load.add(1)
		s.sem <- struct{}{}
		go func() {
			w := &worker{s: s}
			defer func() {
				w.finish()
				s.wg.Done()
			}()
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.WithValue(s.ctx, workerKey{}, w), timeout)
			defer cancel()
			status := 200
			reply, err := s.call(ctx, ep, req)
			w.returned()
			if err != nil {
				status = s.respondError(req, ep, err)
			} else {
				if rerr := s.reply(req, &nats.Msg{Data: reply}); rerr != nil {
					s.opts.Logger.Warn("reply failed", "endpoint", ep.Name, "err", rerr)
				}
				if ep.Release != nil {
					ep.Release(reply)
				}
			}
			if s.opts.Observe != nil {
				s.opts.Observe(ep.Name, time.Since(start), status)
			}
		}()
	})
}

// worker is a request's hold on one of the service's workers.
type worker struct {
	s        *Service
	mu       sync.Mutex
	left     bool // the worker is given back
	detached bool // and the request holds a detached slot instead
	done     bool // the handler has returned
}

type workerKey struct{}

// leave gives the worker back and stops counting the request in Load.
// Call it holding mu.
func (w *worker) leave() {
	if !w.left {
		w.left = true
		<-w.s.sem
		w.s.opts.Load.add(-1)
	}
}

// returned records that the handler has returned: Detach does nothing
// from then on.
func (w *worker) returned() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done = true
}

// finish ends the request's holds, once its reply is sent (after
// returned: a late Detach finds done and does nothing).
func (w *worker) finish() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.leave()
	if w.detached {
		<-w.s.detached
		w.s.opts.Load.detach(-1)
	}
}

// Detach, called by a handler with its request's ctx, gives the
// request's worker back to the service for the rest of the request, and
// stops counting it in the service's Load: for a handler about to wait
// a long time for something other than the CPU (a room deletion that
// takes minutes), so that the wait does not take a worker from the
// reads. The handler's reply is sent when it returns, as always, and
// Stop waits for it. Past ServiceOptions.MaxDetached requests waiting
// detached, Detach refuses with a 429 error and the request keeps its
// worker. Outside a Service's handler, called again, or after the
// handler has returned (from a goroutine it left behind), it does
// nothing.
func Detach(ctx context.Context) error {
	w, _ := ctx.Value(workerKey{}).(*worker)
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.left || w.done {
		return nil
	}
	select {
	case w.s.detached <- struct{}{}:
		w.detached = true
		w.leave()
		w.s.opts.Load.detach(1)
		return nil
	default:
		return commands.Errorf(429, commands.CodeRateLimited, "Too many requests waiting; retry shortly")
	}
}

func (s *Service) call(ctx context.Context, ep Endpoint, req micro.Request) (reply []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.opts.Logger.Error("handler panicked", "endpoint", ep.Name, "panic", r)
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return ep.Handler(ctx, req.Subject(), req.Data())
}

// respondError is the one place where errors become the contract's error
// replies: Nats-Service-Error-Code, Nats-Service-Error and a body
// {errcode, error}. Internal errors are logged and answered generically.
func (s *Service) respondError(req micro.Request, ep Endpoint, err error) int {
	var e *commands.Error
	if !errors.As(err, &e) {
		s.opts.Logger.Error("request failed", "endpoint", ep.Name, "subject", req.Subject(), "err", err)
	}
	e = commands.AsError(err)
	text := errorText(e.Message)
	body, _ := Encode(map[string]any{"errcode": e.Code, "error": text})
	h := nats.Header{}
	h.Set(micro.ErrorCodeHeader, strconv.Itoa(e.Status))
	h.Set(micro.ErrorHeader, text)
	if rerr := s.reply(req, &nats.Msg{Header: h, Data: body}); rerr != nil {
		s.opts.Logger.Warn("error reply failed", "endpoint", ep.Name, "err", rerr)
	}
	return e.Status
}

// MaxErrorText bounds an error reply's text. The text goes out twice, in
// the Nats-Service-Error header and in the body, and may echo a request's
// ID ("delete id '<id>' not found"): a 5 MiB ID made a reply past
// max_payload, which NATS refused, and the requester got no answer.
const MaxErrorText = 16 << 10

// errorText is msg cut to MaxErrorText bytes (on a rune boundary, with
// "…" after it), the same in the header and the body.
func errorText(msg string) string {
	if len(msg) <= MaxErrorText {
		return msg
	}
	cut := MaxErrorText
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + "…"
}

// reply answers from the worker goroutine. micro's own Respond and Error
// record state that micro reads when the handler returns, so they must
// not be called after the handler has handed the request to the pool; the
// reply is published to the request's inbox directly instead.
func (s *Service) reply(req micro.Request, msg *nats.Msg) error {
	if req.Reply() == "" {
		return nil
	}
	msg.Subject = req.Reply()
	nc := s.nc
	if n := uint64(len(s.opts.ReplyConns)); n > 0 {
		nc = s.opts.ReplyConns[s.replies.Add(1)%n]
	}
	return nc.PublishMsg(msg)
}

// errStopping answers the requests that arrive while the service stops.
var errStopping = commands.Errorf(503, commands.CodeUnknown, "The service is stopping; try again")

// refuseStopping answers a request that Stop left unhandled with a 503,
// so that its requester need not wait for its timeout (with several
// instances, another one answers a retry).
func (s *Service) refuseStopping(req micro.Request, ep Endpoint) {
	status := s.respondError(req, ep, errStopping)
	if s.opts.Observe != nil {
		s.opts.Observe(ep.Name, 0, status)
	}
}

// Stop stops taking requests and waits for the ones under way, those
// already handed to the service and waiting for a worker included.
// Requests that micro delivers after it began (those its subscriptions
// still held) are answered 503: no handler starts once Stop has
// returned.
func (s *Service) Stop() error {
	err := s.svc.Stop()
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wg.Wait()
	s.stop()
	return err
}
