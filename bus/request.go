package bus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/scrollback/scrollback/commands"
)

// Requester sends MessagePack requests over core NATS and decodes replies,
// turning error replies (section 4 of the contract) into *commands.Error.
type Requester struct {
	NC *nats.Conn
	// Timeout applies when ctx has no deadline (default 5 s).
	Timeout time.Duration
}

// ErrNoResponders: nobody answers the subject.
var ErrNoResponders = errors.New("bus: no responders")

// Request sends req (encoded as MessagePack) and returns the raw reply
// payload. A transport failure (no responders, timeout) is returned as is
// (ErrNoResponders or context.DeadlineExceeded); an error reply becomes a
// *commands.Error.
func (r *Requester) Request(ctx context.Context, subject string, req any) ([]byte, error) {
	data, err := Encode(req)
	if err != nil {
		return nil, fmt.Errorf("bus: encode request for %s: %w", subject, err)
	}
	return r.RequestRaw(ctx, subject, data)
}

// RequestRaw is Request with a pre-encoded payload.
func (r *Requester) RequestRaw(ctx context.Context, subject string, data []byte) ([]byte, error) {
	if !ValidSubject(subject) {
		return nil, fmt.Errorf("%w: %q", ErrBadSubject, subject)
	}
	if _, ok := ctx.Deadline(); !ok {
		t := r.Timeout
		if t <= 0 {
			t = 5 * time.Second
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	msg, err := r.NC.RequestMsgWithContext(ctx, &nats.Msg{Subject: subject, Data: data})
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return nil, fmt.Errorf("%w on %s", ErrNoResponders, subject)
		}
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
			return nil, fmt.Errorf("bus: request %s: %w", subject, context.DeadlineExceeded)
		}
		return nil, fmt.Errorf("bus: request %s: %w", subject, err)
	}
	if code := msg.Header.Get("Nats-Service-Error-Code"); code != "" {
		return nil, replyError(code, msg)
	}
	return msg.Data, nil
}

// replyError reads an error reply. Its status is an error's (4xx or 5xx),
// or 500: the bridge answers with it, and an "error" of 200 or 1xx
// answered the client as a success (or an informational response).
func replyError(code string, msg *nats.Msg) *commands.Error {
	status, err := strconv.Atoi(code)
	if err != nil || status < 400 || status > 599 {
		status = 500
	}
	e := &commands.Error{Status: status, Code: commands.CodeUnknown, Message: msg.Header.Get("Nats-Service-Error")}
	if body, err := DecodeMap(msg.Data, DefaultLimits); err == nil {
		if c, ok := body["errcode"].(string); ok && c != "" {
			e.Code = c
		}
		if m, ok := body["error"].(string); ok {
			e.Message = m
		}
	}
	return e
}
