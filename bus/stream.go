package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrStreamConflict: an existing stream's configuration cannot carry the
// room log. The service never deletes or recreates the log to fix it.
var ErrStreamConflict = errors.New("bus: stream configuration conflicts with the room log")

// StreamConfig is the room log's stream as the service creates it.
func (s Subjects) StreamConfig(name string) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:               name,
		Subjects:           []string{s.RoomWildcard()},
		Storage:            jetstream.FileStorage,
		AllowAtomicPublish: true,
		Duplicates:         2 * time.Minute,
		DenyDelete:         false,
		DenyPurge:          false,
		Retention:          jetstream.LimitsPolicy,
	}
}

// EnsureStream creates the room log if it is missing, or checks an
// existing one: different subjects or storage, denied deletes or purges,
// or a subject transform stop start-up with ErrStreamConflict. Replicas
// and limits are the operator's and are left alone.
func EnsureStream(ctx context.Context, js jetstream.JetStream, s Subjects, name string) (jetstream.Stream, error) {
	return EnsureReplicatedStream(ctx, js, s, name, 1)
}

// EnsureReplicatedStream is EnsureStream creating a missing stream with
// replicas copies (3 on a three-node cluster). An existing stream keeps
// the operator's replicas.
func EnsureReplicatedStream(ctx context.Context, js jetstream.JetStream, s Subjects, name string, replicas int) (jetstream.Stream, error) {
	want := s.StreamConfig(name)
	want.Replicas = max(replicas, 1)
	st, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		st, err = js.CreateStream(ctx, want)
		if err != nil {
			return nil, fmt.Errorf("bus: create stream %s: %w", name, err)
		}
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bus: look up stream %s: %w", name, err)
	}
	got := st.CachedInfo().Config
	var problems []error
	if !slices.Equal(got.Subjects, want.Subjects) {
		problems = append(problems, fmt.Errorf("subjects are %v, want %v", got.Subjects, want.Subjects))
	}
	if got.Storage != jetstream.FileStorage {
		problems = append(problems, fmt.Errorf("storage is %s, want file", got.Storage))
	}
	if got.DenyDelete {
		problems = append(problems, errors.New("deletes are denied (deny_delete), but purges erase events from the log"))
	}
	if got.DenyPurge {
		problems = append(problems, errors.New("purges are denied (deny_purge)"))
	}
	if got.SubjectTransform != nil {
		problems = append(problems, errors.New("the stream has a subject transform; stored subjects must stay sb.room.<rk>.<kind>"))
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%w: stream %s: %w (fix or move the stream by hand; scrollback never deletes the log)", ErrStreamConflict, name, errors.Join(problems...))
	}
	return st, nil
}

// Log reads and appends to the room log.
type Log struct {
	JS       jetstream.JetStream
	Stream   string
	Subjects Subjects
	// BeforeDelete, if set, is called before each DeleteMsg request that
	// DeleteMsgs sends: the eraser waits there while reads queue (see
	// Load.MakeWay).
	BeforeDelete func(ctx context.Context)
	// BeforeStep, if set, is called by Compact before each count of its
	// search for the messages to keep, each batch of the headers it
	// reads, each atomic batch of its kept copies and each of its subject
	// purges, steps of thousands of messages each, where the eraser may
	// wait longer than before a single message (Load.Backoff); unset,
	// Compact calls BeforeDelete.
	BeforeStep func(ctx context.Context)
}

// beforeStep is Compact's wait before each of its steps.
func (l *Log) beforeStep(ctx context.Context) {
	switch {
	case l.BeforeStep != nil:
		l.BeforeStep(ctx)
	case l.BeforeDelete != nil:
		l.BeforeDelete(ctx)
	}
}

// Consume delivers every room log message from sequence from on, in order,
// through an ordered consumer, until ctx ends, with the kept copies of
// compactions at their original sequences (see Compact). The projection
// keeps its own checkpoint, so the consumer needs no acks and no durable
// state.
func (l *Log) Consume(ctx context.Context, from uint64, fn func(seq uint64, subject string, data []byte, ts int64, pending uint64)) error {
	// Kept copies (Compact) go back to their original places: each one
	// comes just before the first message after its original sequence,
	// and not at all if the original is still there.
	kept, err := l.readKept(ctx, from)
	if err != nil {
		return err
	}
	var (
		st        jetstream.Stream
		delivered uint64 // the last sequence handed over
	)
	if len(kept) > 0 {
		if st, err = l.JS.Stream(ctx, l.Stream); err != nil {
			return fmt.Errorf("bus: stream %s: %w", l.Stream, err)
		}
	}
	cons, err := l.JS.OrderedConsumer(ctx, l.Stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{l.Subjects.RoomWildcard()},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    max(from, 1),
	})
	if err != nil {
		return fmt.Errorf("bus: ordered consumer on %s: %w", l.Stream, err)
	}
	// Short pull requests with a heartbeat every second: when the node
	// serving the consumer dies (a cluster losing a node), two missed
	// heartbeats make the ordered consumer recreate itself on a live one
	// within about 2 s, instead of the 30 s of the defaults.
	it, err := cons.Messages(jetstream.PullMaxMessages(4096), jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(time.Second))
	if err != nil {
		return fmt.Errorf("bus: consume %s: %w", l.Stream, err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return fmt.Errorf("bus: consumer of %s closed: %w", l.Stream, err)
			}
			// The ordered consumer recreates itself after gaps and missed
			// heartbeats; anything else is reported and retried.
			continue
		}
		md, err := msg.Metadata()
		if err != nil {
			continue
		}
		seq := md.Sequence.Stream
		for len(kept) > 0 && kept[0].seq <= seq {
			// Copies of the same message (a compaction repeated) go once.
			if k := kept[0]; k.seq < seq && k.seq > delivered {
				delivered = k.seq
				data, ok, err := keptData(ctx, st, k)
				if err != nil {
					return err
				}
				if ok {
					fn(k.seq, k.subject, data, k.ts, md.NumPending+1)
				}
			}
			kept = kept[1:]
		}
		delivered = seq
		fn(seq, msg.Subject(), msg.Data(), md.Timestamp.UnixMilli(), md.NumPending)
	}
}

// LastSeq is the stream's last sequence.
func (l *Log) LastSeq(ctx context.Context) (uint64, error) {
	// Stream looks the stream's info up: one request, not two.
	st, err := l.JS.Stream(ctx, l.Stream)
	if err != nil {
		return 0, err
	}
	return st.CachedInfo().State.LastSeq, nil
}

// EmptyFrom reports whether the log holds no message with a sequence of
// from or more (projections.EmptyFrom).
func (l *Log) EmptyFrom(ctx context.Context, from uint64) (bool, error) {
	st, err := l.JS.Stream(ctx, l.Stream)
	if err != nil {
		return false, err
	}
	state := st.CachedInfo().State
	return state.Msgs == 0 || state.LastSeq < from, nil
}

// appendAttempt bounds one publish of Append: an acknowledgement lost
// while a cluster node dies (or the client reconnects) would otherwise
// hold the caller until its own deadline.
const appendAttempt = 5 * time.Second

// Append publishes one message to a room subject with a message ID (for
// the server's duplicate window) and returns its sequence. With a message
// ID a publish whose acknowledgement does not come within appendAttempt
// is sent again until ctx ends: the duplicate window makes the repeat
// harmless, and its acknowledgement carries the first one's sequence.
func (l *Log) Append(ctx context.Context, subject, msgID string, data []byte) (uint64, error) {
	if !ValidSubject(subject) {
		return 0, fmt.Errorf("%w: %q", ErrBadSubject, subject)
	}
	msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	if msgID != "" {
		msg.Header.Set(jetstream.MsgIDHeader, msgID)
	}
	return l.publish(ctx, msg, msgID != "")
}

// ErrDuplicate is AppendNew's error for a message ID the log already
// held: another writer's message took the ID, and this one was dropped.
var ErrDuplicate = errors.New("bus: the log already holds a message with this ID")

// AppendNew is Append for a message ID that only this call may take: if
// the log already held a message with it before this call (another
// writer's: the duplicate window dropped this one), it returns that
// message's sequence and ErrDuplicate. A repeat of this call's own publish
// after a lost acknowledgement is not reported (it cannot be told from
// another writer's).
func (l *Log) AppendNew(ctx context.Context, subject, msgID string, data []byte) (uint64, error) {
	if !ValidSubject(subject) {
		return 0, fmt.Errorf("%w: %q", ErrBadSubject, subject)
	}
	msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, msgID)
	return l.publishNew(ctx, msg)
}

// ErrNotLast is AppendAfter's error when the subject has a message after
// the one the caller expected to be its last: another writer appended
// in between, or an earlier attempt of this call whose acknowledgement
// was lost.
var ErrNotLast = errors.New("bus: the subject has a message after the expected last one")

// SubjectLastSeq is the sequence of the subject's last message in the log, 0
// when it holds none. With AppendAfter it makes a check and an append
// one step, whichever instance of the service writes.
func (l *Log) SubjectLastSeq(ctx context.Context, subject string) (uint64, error) {
	st, err := l.JS.Stream(ctx, l.Stream)
	if err != nil {
		return 0, fmt.Errorf("bus: stream %s: %w", l.Stream, err)
	}
	m, err := st.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("bus: last message of %s: %w", subject, err)
	}
	return m.Sequence, nil
}

// AppendAfter is Append on condition that the subject's last message is
// still the one at sequence last (0: the subject holds none); otherwise
// it appends nothing and returns ErrNotLast. JetStream checks the
// condition before the message ID, so a retry after a lost
// acknowledgement whose publish did land gets ErrNotLast too: the
// caller, which looks again, finds its own message.
func (l *Log) AppendAfter(ctx context.Context, subject, msgID string, data []byte, last uint64) (uint64, error) {
	if !ValidSubject(subject) {
		return 0, fmt.Errorf("%w: %q", ErrBadSubject, subject)
	}
	msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(last, 10))
	if msgID != "" {
		msg.Header.Set(jetstream.MsgIDHeader, msgID)
	}
	seq, err := l.publish(ctx, msg, msgID != "")
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return 0, fmt.Errorf("%w: %s, expected at %d", ErrNotLast, subject, last)
	}
	return seq, err
}

// publish is Append's publish of a prepared message; with a message ID
// (repeatable) it retries a lost acknowledgement.
func (l *Log) publish(ctx context.Context, msg *nats.Msg, repeatable bool) (uint64, error) {
	seq, _, err := l.publishAck(ctx, msg, repeatable)
	return seq, err
}

// publishNew is AppendNew's publish.
func (l *Log) publishNew(ctx context.Context, msg *nats.Msg) (uint64, error) {
	seq, dup, err := l.publishAck(ctx, msg, true)
	if err == nil && dup {
		err = ErrDuplicate
	}
	return seq, err
}

// publishAck publishes, retrying a lost acknowledgement when repeatable,
// and reports whether the first attempt's acknowledgement said the log
// had the message ID already.
func (l *Log) publishAck(ctx context.Context, msg *nats.Msg, repeatable bool) (uint64, bool, error) {
	subject := msg.Subject
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, appendAttempt)
		ack, err := l.JS.PublishMsg(actx, msg)
		cancel()
		if err == nil {
			return ack.Sequence, ack.Duplicate && attempt == 0, nil
		}
		lost := errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoStreamResponse)
		if !repeatable || !lost || ctx.Err() != nil {
			return 0, false, fmt.Errorf("bus: publish %s: %w", subject, err)
		}
		select {
		case <-ctx.Done():
			return 0, false, fmt.Errorf("bus: publish %s: %w", subject, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// DeleteInFlight is how many DeleteMsg requests DeleteMsgs keeps under
// way at once. With fsync on every write each delete waits for its own
// tombstone's sync, so requests in parallel overlap those waits: 64 gave
// about 1.4-1.7x the rate of one at a time (BenchmarkDeleteMsgs), but in
// the purge benchmark they crowded out the reads served by the same
// server (26k of them timed out during one erasure). A few overlap the
// syncs and leave the server to the reads.
const DeleteInFlight = 4

// DeleteMsgs erases messages from the log by sequence, DeleteInFlight at
// a time; messages already gone are not an error. On failure it returns
// the first error once the requests under way have ended.
func (l *Log) DeleteMsgs(ctx context.Context, seqs []uint64) error {
	st, err := l.JS.Stream(ctx, l.Stream)
	if err != nil {
		return fmt.Errorf("bus: stream %s: %w", l.Stream, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
		slots = make(chan struct{}, DeleteInFlight)
	)
	for _, seq := range seqs {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() == nil && l.BeforeDelete != nil {
			l.BeforeDelete(ctx)
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-slots; wg.Done() }()
			if err := deleteMsg(ctx, st, seq); err != nil {
				once.Do(func() { first = err; cancel() })
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return first
}

func deleteMsg(ctx context.Context, st jetstream.Stream, seq uint64) error {
	err := st.DeleteMsg(ctx, seq)
	if err == nil {
		return nil
	}
	// Deleting a message that is already gone (a retry after a crash,
	// another instance, a subject purge) is done, not an error. nats.go
	// reports the server's answer as text only, so ask whether the
	// message is still there.
	if _, gerr := st.GetMsg(ctx, seq); errors.Is(gerr, jetstream.ErrMsgNotFound) {
		return nil
	}
	return fmt.Errorf("bus: delete message %d: %w", seq, err)
}

// PurgeSubjectBelow erases the messages of one subject with a sequence
// below seq: one purge request, however many messages.
func (l *Log) PurgeSubjectBelow(ctx context.Context, subject string, seq uint64) error {
	st, err := l.JS.Stream(ctx, l.Stream)
	if err != nil {
		return fmt.Errorf("bus: stream %s: %w", l.Stream, err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(subject), jetstream.WithPurgeSequence(seq)); err != nil {
		return fmt.Errorf("bus: purge %s below %d: %w", subject, seq, err)
	}
	return nil
}
