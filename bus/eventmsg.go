package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/commands"
)

// ErrEventGone is eventMessage's answer for a sequence whose event
// message the log no longer holds, on the room's event subject or as a
// kept copy.
var ErrEventGone = errors.New("bus: the event's message is not in the log")

// EventMessages are the data of the room's event messages published at
// seqs: the events as the homeserver published them, every PDU field
// included (the projection keeps only what reads in the client format
// need). A sequence whose message the log no longer holds is absent from
// the map. The requests go eventMessagesAtOnce at a time: one after the
// other, a page of 1,000 events took 170 ms here, the stream's look-up
// included each time.
//
// A compaction (Compact) may have moved a message to the room's kept
// subject, where it is found by its original sequence: copies go there in
// order of it, so a binary search over the subject finds it in about 2
// log2(n) requests for n copies.
func (l *Log) EventMessages(ctx context.Context, roomID string, seqs []uint64) (map[uint64][]byte, error) {
	st, err := l.JS.Stream(ctx, l.Stream)
	if err != nil {
		return nil, fmt.Errorf("bus: stream %s: %w", l.Stream, err)
	}
	out := make(map[uint64][]byte, len(seqs))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
	)
	sem := make(chan struct{}, eventMessagesAtOnce)
	for _, seq := range seqs {
		sem <- struct{}{}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			data, err := l.eventMessage(ctx, st, roomID, seq)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				out[seq] = data
			case errors.Is(err, ErrEventGone):
			case first == nil:
				first = err
				cancel()
			}
		})
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return out, first
}

// eventMessagesAtOnce bounds the requests EventMessages has under way.
const eventMessagesAtOnce = 16

// eventMessage is one message of EventMessages.
func (l *Log) eventMessage(ctx context.Context, st jetstream.Stream, roomID string, seq uint64) ([]byte, error) {
	m, err := st.GetMsg(ctx, seq)
	switch {
	case err == nil && m.Subject == l.Subjects.Room(roomID, commands.KindEvent):
		return m.Data, nil
	case err == nil, errors.Is(err, jetstream.ErrMsgNotFound):
	default:
		return nil, fmt.Errorf("bus: message %d: %w", seq, err)
	}
	return l.keptCopyOf(ctx, st, roomID, seq)
}

// keptCopyOf finds the kept copy of the room's event message seq.
func (l *Log) keptCopyOf(ctx context.Context, st jetstream.Stream, roomID string, seq uint64) ([]byte, error) {
	subj := l.Subjects.Room(roomID, commands.KindKept)
	// next is the subject's first copy at or after stream sequence at.
	next := func(at uint64) (*jetstream.RawStreamMsg, error) {
		m, err := st.GetMsg(ctx, at, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("bus: next message of %s from %d: %w", subj, at, err)
		}
		return m, nil
	}
	last, err := st.GetLastMsgForSubject(ctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("%w: %d", ErrEventGone, seq)
	}
	if err != nil {
		return nil, fmt.Errorf("bus: last message of %s: %w", subj, err)
	}
	if orig, ok := keptSeq(last.Header); !ok || orig < seq {
		return nil, fmt.Errorf("%w: %d", ErrEventGone, seq)
	}
	// found is the earliest copy known whose original sequence is >= seq;
	// an earlier one can only be in [lo, end).
	found, lo, end := last, uint64(1), last.Sequence
	for lo < end {
		mid := lo + (end-lo)/2
		m, err := next(mid)
		if err != nil {
			return nil, err
		}
		if m == nil { // erased meanwhile
			end = mid
			continue
		}
		orig, ok := keptSeq(m.Header)
		switch {
		case m.Sequence >= end:
			end = mid // no copy in [mid, end)
		case !ok || orig < seq:
			// (A copy without a valid header is not one the service
			// made: passed over.)
			lo = m.Sequence + 1
		default:
			found, end = m, m.Sequence
		}
	}
	if orig, ok := keptSeq(found.Header); ok && orig == seq {
		return found.Data, nil
	}
	return nil, fmt.Errorf("%w: %d", ErrEventGone, seq)
}
