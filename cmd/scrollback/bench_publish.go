package main

// Publishers of the generated logs: atomic batches (ADR-50: one batch of
// up to 1000 messages, committed together, one acknowledgement; DESIGN.md
// recommends them for durability with throughput on one node), or one
// asynchronous publish per message like a simple homeserver worker.
// Measured on this machine with the service's SyncAlways (a separate
// program, 100k messages of 330 bytes, nothing else running): batches of
// 1000 reach 93-119k msgs/s, batches of 250 about 60k msgs/s, against
// about 4k msgs/s for single asynchronous publishes: a batch costs one
// fsync, not one per message.

import (
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
)

// Publishing modes of --publish-mode.
const (
	publishModeBatch = "batch" // atomic batch publishes
	publishModeAsync = "async" // one async publish per message
)

// maxAtomicBatch is nats-server's default limit on the messages of one
// atomic batch.
const maxAtomicBatch = 1000

// pubAck is one acknowledged group of messages: a batch, or --batch
// consecutive async publishes.
type pubAck struct {
	First, Last uint64    // log sequences
	N           int       // messages
	Sent        time.Time // the first message was handed to the client
	Acked       time.Time
}

// publisher publishes a stream of messages; next returns nil at the end.
// onAck is called once per acknowledged group, in log order, from one
// goroutine at a time; it must be quick.
type publisher struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	mode   string
	size   int // messages per batch (or per ack group in async mode)
	window int // batches (or messages, async) awaiting their ack
	onAck  func(pubAck)
}

// run publishes until next returns nil and every message is acknowledged,
// and returns the number of messages.
func (p *publisher) run(ctx context.Context, next func() *nats.Msg) (int, error) {
	if p.mode == publishModeAsync {
		return p.runAsync(ctx, next)
	}
	return p.runBatches(ctx, next)
}

// batchAckTimeout bounds the wait for one batch's acknowledgement.
const batchAckTimeout = 60 * time.Second

func (p *publisher) runBatches(ctx context.Context, next func() *nats.Msg) (int, error) {
	size := min(max(p.size, 1), maxAtomicBatch)
	window := max(p.window, 1)
	prefix := nats.NewInbox() + "."
	idPrefix := "b" + strings.ToLower(rand.Text()[:12]) + "-"

	type pending struct {
		sent time.Time
		n    int
	}
	var (
		mu       sync.Mutex
		inflight = map[string]pending{}
		firstErr error
	)
	slots := make(chan struct{}, window)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	sub, err := p.nc.Subscribe(prefix+"*", func(m *nats.Msg) {
		token := m.Subject[len(prefix):]
		mu.Lock()
		pd, ok := inflight[token]
		delete(inflight, token)
		mu.Unlock()
		if !ok {
			return
		}
		defer func() { <-slots }()
		last, err := bus.ParseBatchAck(m.Data, pd.n)
		if err != nil {
			fail(fmt.Errorf("bench: %w", err))
			return
		}
		if p.onAck != nil {
			p.onAck(pubAck{First: last - uint64(pd.n) + 1, Last: last, N: pd.n, Sent: pd.sent, Acked: time.Now()})
		}
	})
	if err != nil {
		return 0, fmt.Errorf("bench: batch acks: %w", err)
	}
	defer sub.Unsubscribe()
	acquire := func() error {
		select {
		case slots <- struct{}{}:
			return nil
		case <-time.After(batchAckTimeout):
			return fmt.Errorf("bench: no batch acknowledgement in %v", batchAckTimeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	total := 0
	batch := make([]*nats.Msg, 0, size)
	for n := 0; ; n++ {
		batch = batch[:0]
		for len(batch) < size {
			m := next()
			if m == nil {
				break
			}
			batch = append(batch, m)
		}
		if len(batch) == 0 {
			break
		}
		mu.Lock()
		err := firstErr
		mu.Unlock()
		if err != nil {
			return total, err
		}
		if err := acquire(); err != nil {
			return total, err
		}
		// Sent is when the batch is handed to the client (pubAck): not
		// when its first message was made, which would count the making
		// of the rest (paced, in the mixed workload: the whole interval
		// between them) and the wait for a slot as the log's latency.
		sent := time.Now()
		token := strconv.Itoa(n)
		mu.Lock()
		inflight[token] = pending{sent: sent, n: len(batch)}
		mu.Unlock()
		bus.MarkBatch(batch, idPrefix+token)
		batch[len(batch)-1].Reply = prefix + token
		for _, m := range batch {
			if err := p.nc.PublishMsg(m); err != nil {
				return total, fmt.Errorf("bench: batch publish: %w", err)
			}
		}
		total += len(batch)
		if len(batch) < size {
			break
		}
	}
	// Wait for the last acks: take every slot.
	for range window {
		if err := acquire(); err != nil {
			return total, err
		}
	}
	mu.Lock()
	defer mu.Unlock()
	return total, firstErr
}

func (p *publisher) runAsync(ctx context.Context, next func() *nats.Msg) (int, error) {
	window := max(p.window, 1)
	group := max(p.size, 1)
	type sent struct {
		f  jetstream.PubAckFuture
		at time.Time
	}
	ring := make([]sent, window)
	var cur pubAck
	await := func(s sent) error {
		select {
		case ack := <-s.f.Ok():
			if cur.N == 0 {
				cur = pubAck{First: ack.Sequence, Sent: s.at}
			}
			cur.N++
			cur.Last = max(cur.Last, ack.Sequence)
			if cur.N >= group {
				cur.Acked = time.Now()
				if p.onAck != nil {
					p.onAck(cur)
				}
				cur = pubAck{}
			}
			return nil
		case err := <-s.f.Err():
			return fmt.Errorf("bench: publish to %s: %w", s.f.Msg().Subject, err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	n := 0
	for ; ; n++ {
		m := next()
		if m == nil {
			break
		}
		if n >= window {
			if err := await(ring[n%window]); err != nil {
				return n, err
			}
		}
		at := time.Now()
		f, err := p.js.PublishMsgAsync(m)
		if err != nil {
			return n, fmt.Errorf("bench: publish to %s: %w", m.Subject, err)
		}
		ring[n%window] = sent{f, at}
	}
	for i := max(n-window, 0); i < n; i++ {
		if err := await(ring[i%window]); err != nil {
			return n, err
		}
	}
	if cur.N > 0 && p.onAck != nil {
		cur.Acked = time.Now()
		p.onAck(cur)
	}
	return n, nil
}

// newPublisher makes a publisher on a connection of its own (a homeserver
// worker's).
func newPublisher(connect func(name string) (*nats.Conn, error), name, mode string, size, window int, onAck func(pubAck)) (*publisher, func(), error) {
	nc, err := connect(name)
	if err != nil {
		return nil, nil, err
	}
	p := &publisher{nc: nc, mode: mode, size: size, window: window, onAck: onAck}
	if mode == publishModeAsync {
		if p.js, err = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(2*window), jetstream.WithPublishAsyncTimeout(30*time.Second)); err != nil {
			nc.Close()
			return nil, nil, fmt.Errorf("bench: jetstream: %w", err)
		}
	}
	return p, nc.Close, nil
}
