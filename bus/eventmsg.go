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

// eventReads is how many messages EventMessages reads at once. A page
// of 1000 events in the federation format, which reads one message an
// event, took 150 ms on the embedded server when each read looked the
// stream up again (a stream info request each), 70 ms with one look-up,
// and 55-60 ms with 4 reads at once; more did not help (the server
// answers its JetStream API requests from one queue, which other
// readers share).
const eventReads = 4

// EventMessages are the data of the room's event messages published at
// seqs: the events as the homeserver published them, every PDU field
// included (the projection keeps only what reads in the client format
// need). A compaction (Compact) may have moved a message to the room's
// kept subject, where it is found by its original sequence: copies go
// there in order of it, so a binary search over the subject finds it in
// about 2 log2(n) requests for n copies. It looks the stream up once and
// reads up to eventReads messages at once: out[i] is the data of seqs[i],
// nil if the log no longer holds it (ErrEventGone).
func (l *Log) EventMessages(ctx context.Context, roomID string, seqs []uint64) ([][]byte, error) {
	if len(seqs) == 0 {
		return nil, nil
	}
	st, err := l.JS.Stream(ctx, l.Stream)
	if err != nil {
		return nil, fmt.Errorf("bus: stream %s: %w", l.Stream, err)
	}
	out := make([][]byte, len(seqs))
	errs := make([]error, len(seqs))
	var wg sync.WaitGroup
	slots := make(chan struct{}, eventReads)
	for i, seq := range seqs {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			data, err := l.eventMessage(ctx, st, roomID, seq)
			if !errors.Is(err, ErrEventGone) {
				out[i], errs[i] = data, err
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

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

// keptCopyOf finds the kept copy of the room's event message seq. A
// message on the kept subject without a valid HeaderKeptSeq is not one
// the service made: the search passes over it, wherever it stands (last
// on the subject, or between the copies of two compactions: one that
// finds it last copies after it).
func (l *Log) keptCopyOf(ctx context.Context, st jetstream.Stream, roomID string, seq uint64) ([]byte, error) {
	subj := l.Subjects.Room(roomID, commands.KindKept)
	// copyIn is the subject's first valid copy in [at, end), with its
	// original sequence; nil if there is none.
	copyIn := func(at, end uint64) (*jetstream.RawStreamMsg, uint64, error) {
		for at < end {
			m, err := st.GetMsg(ctx, at, jetstream.WithGetMsgSubject(subj))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				return nil, 0, nil
			}
			if err != nil {
				return nil, 0, fmt.Errorf("bus: next message of %s from %d: %w", subj, at, err)
			}
			if m.Sequence >= end {
				return nil, 0, nil
			}
			if orig, ok := keptSeq(m.Header); ok {
				return m, orig, nil
			}
			at = m.Sequence + 1
		}
		return nil, 0, nil
	}
	last, err := st.GetLastMsgForSubject(ctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("%w: %d", ErrEventGone, seq)
	}
	if err != nil {
		return nil, fmt.Errorf("bus: last message of %s: %w", subj, err)
	}
	// found is the earliest copy known whose original sequence is >= seq
	// (nil: none known), at end; an earlier one can only be in [lo, end).
	var found *jetstream.RawStreamMsg
	lo, end := uint64(1), last.Sequence
	if orig, ok := keptSeq(last.Header); ok {
		if orig < seq {
			return nil, fmt.Errorf("%w: %d", ErrEventGone, seq)
		}
		found = last
	}
	for lo < end {
		mid := lo + (end-lo)/2
		m, orig, err := copyIn(mid, end)
		switch {
		case err != nil:
			return nil, err
		case m == nil: // none in [mid, end), or erased meanwhile
			end = mid
		case orig < seq:
			lo = m.Sequence + 1
		default:
			found, end = m, m.Sequence
		}
	}
	if found != nil {
		if orig, _ := keptSeq(found.Header); orig == seq {
			return found.Data, nil
		}
	}
	return nil, fmt.Errorf("%w: %d", ErrEventGone, seq)
}
