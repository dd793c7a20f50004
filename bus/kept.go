package bus

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/commands"
)

// Headers of a kept copy (sb.room.<rk>.kept): the original message's
// sequence and its log time in Unix nanoseconds.
const (
	HeaderKeptSeq  = "Sb-Kept-Seq"
	HeaderKeptTime = "Sb-Kept-Time"
)

// keptCopy is a kept copy as readers deliver it: at its original
// sequence, on the event subject, with the original log time. Its data
// stays in the log (at) until it is delivered, so that a rebuild that
// must place many copies holds 50-odd bytes for each, not the events.
type keptCopy struct {
	seq     uint64
	subject string
	ts      int64  // ms
	at      uint64 // the copy's own sequence
}

// Compact erases the given messages of a room's event subject (every one
// below the last of seqs must be listed or kept) with one subject purge,
// where DeleteMsgs needs one write and one fsync per message. The other
// messages of the subject below that point, the ones the purge keeps,
// are first copied to sb.room.<rk>.kept, each with its original sequence
// and time (HeaderKeptSeq, HeaderKeptTime); Consume puts each copy back
// in its original place, so a reader of the log sees what it saw before,
// minus the erased messages.
//
// Only a log whose every reader is past the erased messages may be
// compacted this way: a reader behind them, reading while the purge
// happens, could miss a copy made after it started (Consume reads the
// copies when it starts). The service therefore compacts only a log no
// other instance reads (the embedded server), and `scrollback rebuild`
// and `verify` run with the service stopped.
//
// A repeat after a crash is harmless: copies go in order of sequence, and
// the ones already made (up to the subject's last copy) are not made again.
func (l *Log) Compact(ctx context.Context, roomID string, seqs []uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	eventSubj := l.Subjects.Room(roomID, commands.KindEvent)
	keptSubj := l.Subjects.Room(roomID, commands.KindKept)
	if !slices.IsSorted(seqs) {
		seqs = slices.Sorted(slices.Values(seqs))
	}
	below := seqs[len(seqs)-1] + 1
	st, err := l.JS.Stream(ctx, l.Stream)
	if err != nil {
		return fmt.Errorf("bus: stream %s: %w", l.Stream, err)
	}
	copied, lastCopy, err := lastKept(ctx, st, keptSubj)
	if err != nil {
		return err
	}
	if lastCopy > 0 && (copied == 0 || seqs[0] <= copied) {
		if err := l.eraseCopies(ctx, keptSubj, lastCopy, seqs); err != nil {
			return err
		}
	}
	keep, _, err := l.findKept(ctx, st, eventSubj, seqs, copied)
	if err != nil {
		return err
	}
	// Each batch of copies is a step too: a purge that keeps most of a
	// room (local events, without delete_local_events) copies nearly all
	// of it, a thousand full messages read and written a batch.
	for len(keep) > 0 {
		l.beforeStep(ctx)
		n := min(len(keep), keptBatch)
		if err := l.copyKept(ctx, st, keptSubj, keep[:n]); err != nil {
			return err
		}
		keep = keep[n:]
	}
	// The subject purge goes in steps of compactStep erased messages.
	return l.purgeInSteps(ctx, eventSubj, below, func(i int) uint64 {
		if j := (i + 1) * compactStep; j < len(seqs) {
			return seqs[j]
		}
		return below
	})
}

// purgeInSteps purges subject below below in steps: the i-th (from 0)
// purges below bound(i), until a bound reaches below. Each step waits
// first (beforeStep) and rests after stepRest times as long as it took:
// one purge of a million messages kept a core of the embedded server busy
// for a second, and reads at 63% of the service's capacity, left with one
// core, queued past their endpoint's bound and were shed (3-10k of them;
// scrollback bench --scenario purge --purge-events 1000000). A repeat
// after a crash starts again from the first step; the steps already done
// find nothing.
func (l *Log) purgeInSteps(ctx context.Context, subject string, below uint64, bound func(i int) uint64) error {
	for i := 0; ; i++ {
		l.beforeStep(ctx)
		at := bound(i)
		if at >= below {
			return l.PurgeSubjectBelow(ctx, subject, below)
		}
		start := time.Now()
		if err := l.PurgeSubjectBelow(ctx, subject, at); err != nil {
			return err
		}
		if err := rest(ctx, stepRest*time.Since(start)); err != nil {
			return err
		}
	}
}

// rest waits d, or until ctx ends: the pause after a step of
// purgeInSteps, and after a count of findKept's sweep.
func rest(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// PurgeSubjectInSteps erases the messages of one subject with a sequence
// below below, as PurgeSubjectBelow does, in steps of about compactStep
// messages (purgeInSteps): purge_room's erasure of a room's history. The
// steps split the sequences from the subject's first message to below
// evenly, by the number of messages the subject holds, so they hold
// about as many messages each as the room is spread evenly over the log.
func (l *Log) PurgeSubjectInSteps(ctx context.Context, subject string, below uint64) error {
	st, err := l.JS.Stream(ctx, l.Stream)
	if err != nil {
		return fmt.Errorf("bus: stream %s: %w", l.Stream, err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return fmt.Errorf("bus: stream info of %s: %w", subject, err)
	}
	n := info.State.Subjects[subject] // those from below on too: an upper bound
	if n == 0 {
		return nil
	}
	first, err := st.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subject))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bus: first message of %s: %w", subject, err)
	}
	if first.Sequence >= below {
		return nil
	}
	steps := (n + uint64(compactStep) - 1) / uint64(compactStep)
	span := max((below-first.Sequence+steps-1)/steps, 1)
	return l.purgeInSteps(ctx, subject, below, func(i int) uint64 { return first.Sequence + uint64(i+1)*span })
}

// compactStep is how many of a compaction's erased messages one subject
// purge takes at most (see Compact), and stepRest how many times as long
// as a step took the next one waits. Once findKept no longer read every
// header, the steps were most of a 1M-message erasure, and with steps of
// 100,000 (80-160 ms of a core each) and a rest as long, the reads' p99
// in it was 3.4-5.0x their p99 without a purge; with steps of 10,000
// (10-40 ms) and three times their time as rest, 1.5x and 1.8x, the
// erasure still at 46k messages a second from the purge's reply
// (docs/BENCHMARKS.md, session 18).
var compactStep = 10_000

const stepRest = 3

// keptBatch is how many kept copies go in one atomic batch: nats-server's
// default limit. A batch costs one fsync, where single publishes cost one
// each (about 4k messages a second here). A variable for tests.
var keptBatch = 1000

// keptReads is how many original messages copyKept reads at once.
const keptReads = 8

// copyKept publishes kept copies of messages seqs (ascending) as one
// atomic batch: all of them or none, so a repeat after a crash finds the
// last copy made and carries on after it.
func (l *Log) copyKept(ctx context.Context, st jetstream.Stream, keptSubj string, seqs []uint64) error {
	msgs := make([]*nats.Msg, len(seqs))
	errs := make([]error, len(seqs))
	var wg sync.WaitGroup
	slots := make(chan struct{}, keptReads)
	for i, seq := range seqs {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			m, err := st.GetMsg(ctx, seq)
			if err != nil {
				errs[i] = fmt.Errorf("bus: read message %d to keep it: %w", seq, err)
				return
			}
			msg := &nats.Msg{Subject: keptSubj, Data: m.Data, Header: nats.Header{}}
			msg.Header.Set(HeaderKeptSeq, strconv.FormatUint(seq, 10))
			msg.Header.Set(HeaderKeptTime, strconv.FormatInt(m.Time.UnixNano(), 10))
			msgs[i] = msg
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return l.publishBatch(ctx, msgs)
}

// batchAckWait bounds the wait for an atomic batch's acknowledgement.
const batchAckWait = 10 * time.Second

// publishBatch publishes msgs as one atomic batch (ADR-50): the server
// stores all of them or none, with one fsync.
func (l *Log) publishBatch(ctx context.Context, msgs []*nats.Msg) error {
	nc := l.JS.Conn()
	MarkBatch(msgs, rand.Text())
	last := msgs[len(msgs)-1]
	for _, m := range msgs[:len(msgs)-1] {
		if err := nc.PublishMsg(m); err != nil {
			return fmt.Errorf("bus: batch publish %s: %w", m.Subject, err)
		}
	}
	actx, cancel := context.WithTimeout(ctx, batchAckWait)
	reply, err := nc.RequestMsgWithContext(actx, last)
	cancel()
	if err != nil {
		return fmt.Errorf("bus: batch publish %s: %w", last.Subject, err)
	}
	_, err = ParseBatchAck(reply.Data, len(msgs))
	return err
}

// MarkBatch sets the headers that make msgs one atomic batch with the
// given ID (at most 64 characters): each message's place in it, and the
// commit on the last, whose publisher must ask for the acknowledgement
// (a reply subject).
func MarkBatch(msgs []*nats.Msg, id string) {
	for i, m := range msgs {
		if m.Header == nil {
			m.Header = nats.Header{}
		}
		m.Header.Set("Nats-Batch-Id", id)
		m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
		if i == len(msgs)-1 {
			m.Header.Set("Nats-Batch-Commit", "1")
		}
	}
}

// ParseBatchAck reads an atomic batch's acknowledgement for a batch of n
// messages and returns the sequence of its last message.
func ParseBatchAck(data []byte, n int) (last uint64, err error) {
	var ack struct {
		Seq   uint64 `json:"seq"`
		Count int    `json:"count"`
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(data, &ack); err != nil {
		return 0, fmt.Errorf("bus: batch acknowledgement %q: %w", data, err)
	}
	if ack.Error != nil {
		return 0, fmt.Errorf("bus: batch publish: %s (%d, %d)", ack.Error.Description, ack.Error.Code, ack.Error.ErrCode)
	}
	if ack.Count != n {
		return 0, fmt.Errorf("bus: batch acknowledgement counts %d messages, want %d", ack.Count, n)
	}
	return ack.Seq, nil
}

// lastKept is the original sequence of the subject's last kept copy, 0
// without one, or if the last message there is not a valid copy (not
// one the service made): then every copy is made again, which is
// harmless, since readers take a sequence once. at is the last message's
// own sequence, 0 if the subject has none.
func lastKept(ctx context.Context, st jetstream.Stream, keptSubj string) (seq, at uint64, err error) {
	m, err := st.GetLastMsgForSubject(ctx, keptSubj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("bus: last kept copy on %s: %w", keptSubj, err)
	}
	seq, _ = keptSeq(m.Header)
	return seq, m.Sequence, nil
}

// eraseCopies deletes the kept copies, up to the subject's message at
// last, of erased messages (seqs, ascending): a purge may delete an
// event that an earlier one kept, and so an earlier compaction copied (a
// local message, once a purge has delete_local_events; an outlier the
// sweep deletes). Without this the copy stayed in the log for good,
// though the projection had deleted the event. It reads the copies'
// headers, paced as findKept is (the subject holds what the room's purges
// kept, its state events mostly), and deletes the matches one by one:
// few, as a rule.
func (l *Log) eraseCopies(ctx context.Context, keptSubj string, last uint64, seqs []uint64) error {
	var erase []uint64
	n := 0
	err := readRange(ctx, l.JS, l.Stream, keptSubj, 1, last, true, func(m jetstream.Msg, at uint64) error {
		if n%scanBatch == 0 {
			l.beforeStep(ctx)
		}
		n++
		if orig, ok := keptSeq(m.Headers()); ok {
			if _, found := slices.BinarySearch(seqs, orig); found {
				erase = append(erase, at)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return l.DeleteMsgs(ctx, erase)
}

// EraseLateCopies deletes the kept copies of a room's messages below seq
// that were appended at or after seq: purge_room's erasure purges the
// kept subject below seq by the copies' own sequences, and a compaction
// of an earlier purge_history that was under way when the purge_room was
// applied appends its copies after it (found by a helper's review: the
// purged room's state stayed in the log for good). It costs one request
// when no copy lies at or after seq, as a rule; otherwise it reads those
// copies' headers (the few made since) and deletes the late ones.
func (l *Log) EraseLateCopies(ctx context.Context, roomID string, seq uint64) error {
	keptSubj := l.Subjects.Room(roomID, commands.KindKept)
	st, err := l.JS.Stream(ctx, l.Stream)
	if err != nil {
		return fmt.Errorf("bus: stream %s: %w", l.Stream, err)
	}
	_, last, err := lastKept(ctx, st, keptSubj)
	if err != nil || last < seq {
		return err
	}
	var erase []uint64
	err = readRange(ctx, l.JS, l.Stream, keptSubj, seq, last, true, func(m jetstream.Msg, at uint64) error {
		if orig, ok := keptSeq(m.Headers()); ok && orig < seq {
			erase = append(erase, at)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return l.DeleteMsgs(ctx, erase)
}

// FirstUpdates finds, for each of ids, the first TaskUpdate of that task
// on the room's task subject after sequence after (none: absent from the
// map). It reads the subject's messages one at a time from there, by the
// server's subject index, and stops once every task has one: a room's
// task subject holds a few messages per task. A message that is not a
// sound TaskUpdate is passed over, as the projector drops it.
func (l *Log) FirstUpdates(ctx context.Context, roomID string, ids []string, after uint64) (map[string]*commands.TaskUpdate, error) {
	subj := l.Subjects.Room(roomID, commands.KindTask)
	st, err := l.JS.Stream(ctx, l.Stream)
	if err != nil {
		return nil, fmt.Errorf("bus: stream %s: %w", l.Stream, err)
	}
	out := map[string]*commands.TaskUpdate{}
	for seq := after + 1; len(out) < len(ids); {
		m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("bus: next message of %s from %d: %w", subj, seq, err)
		}
		seq = m.Sequence + 1
		e := l.Subjects.Decode(m.Sequence, m.Subject, m.Data, m.Time.UnixMilli())
		if e.Err != nil || e.Update == nil || !slices.Contains(ids, e.Update.TaskID) {
			continue
		}
		if _, seen := out[e.Update.TaskID]; !seen {
			out[e.Update.TaskID] = e.Update
		}
	}
	return out, nil
}

// RoomHistoryBelow reports whether the log still holds any of a room's
// event messages below seq: on its event subject, or as a kept copy
// (Compact) of one, whose original sequence is what counts (a copy is
// appended after its original, perhaps after seq). Copies go to the
// kept subject in order of original sequence, so its first message holds
// the lowest; a copy without a valid header counts as history left.
// It costs three requests: the stream's info and the first message of
// each subject (the server finds it from its subject index).
func (l *Log) RoomHistoryBelow(ctx context.Context, roomID string, seq uint64) (bool, error) {
	st, err := l.JS.Stream(ctx, l.Stream)
	if err != nil {
		return false, fmt.Errorf("bus: stream %s: %w", l.Stream, err)
	}
	first := func(kind string) (*jetstream.RawStreamMsg, error) {
		subj := l.Subjects.Room(roomID, kind)
		m, err := st.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("bus: first message of %s: %w", subj, err)
		}
		return m, nil
	}
	m, err := first(commands.KindEvent)
	if err != nil || (m != nil && m.Sequence < seq) {
		return m != nil, err
	}
	if m, err = first(commands.KindKept); err != nil || m == nil {
		return false, err
	}
	orig, ok := keptSeq(m.Header)
	return !ok || orig < seq, nil
}

// keptSeq is a kept copy's original sequence (HeaderKeptSeq); ok is false
// without a valid one.
func keptSeq(h nats.Header) (seq uint64, ok bool) {
	seq, err := strconv.ParseUint(h.Get(HeaderKeptSeq), 10, 64)
	return seq, err == nil && seq > 0
}

// parseKept reads a kept copy as readers deliver it: its headers, and the
// event subject of its room.
func (s Subjects) parseKept(subject string, h nats.Header) (keptCopy, error) {
	seq, ok := keptSeq(h)
	if !ok {
		return keptCopy{}, fmt.Errorf("bus: kept copy on %s without a valid %s header", subject, HeaderKeptSeq)
	}
	ns, err := strconv.ParseInt(h.Get(HeaderKeptTime), 10, 64)
	if err != nil {
		return keptCopy{}, fmt.Errorf("bus: kept copy on %s without a valid %s header", subject, HeaderKeptTime)
	}
	roomID, kind, err := s.ParseRoomSubject(subject)
	if err != nil || kind != commands.KindKept {
		return keptCopy{}, fmt.Errorf("bus: %q is not a kept copy's subject", subject)
	}
	return keptCopy{seq: seq, subject: s.Room(roomID, commands.KindEvent), ts: time.Unix(0, ns).UnixMilli()}, nil
}

// scanBatch is how many messages readRange asks the server for at once,
// and how many findKept and eraseCopies read between two calls of their pace: a pause
// stops the server's work too, since it sends only what was asked for.
const scanBatch = 1024

// readRange delivers the messages on filter with a sequence from from to
// to (both included) in order, through an ordered consumer. The caller
// makes sure that a message on filter is at from or after it: with none,
// the read waits for one until ctx ends.
//
// The consumer is deleted when the read ends: the server would keep it
// for readIdle, and a stream holds at most 1,000 consumers by default,
// which a compaction's search (findKept), reading range after range, could
// fill.
func readRange(ctx context.Context, js jetstream.JetStream, stream, filter string, from, to uint64, headersOnly bool, fn func(m jetstream.Msg, seq uint64) error) error {
	if to < from {
		return nil
	}
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{filter},
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       from,
		HeadersOnly:       headersOnly,
		InactiveThreshold: readIdle,
	})
	if err != nil {
		return fmt.Errorf("bus: ordered consumer on %s: %w", filter, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(scanBatch))
	if err != nil {
		return fmt.Errorf("bus: read %s: %w", filter, err)
	}
	defer deleteConsumer(js, stream, cons)
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("bus: read %s: %w", filter, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("bus: read %s: %w", filter, err)
		}
		seq := md.Sequence.Stream
		if seq > to {
			return nil
		}
		if err := fn(m, seq); err != nil {
			return err
		}
		if seq == to || md.NumPending == 0 {
			return nil
		}
	}
}

// readIdle is how long the server keeps a consumer of readRange that
// could not be deleted: longer than the longest wait of the eraser
// between two batches (handlers.LongestBackoff).
const readIdle = 30 * time.Second

// deleteConsumer deletes the server's consumer behind cons, if any. A
// failure leaves it to the server, which deletes it once idle.
func deleteConsumer(js jetstream.JetStream, stream string, cons jetstream.Consumer) {
	info := cons.CachedInfo()
	if info == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), deleteConsumerWait)
	defer cancel()
	_ = js.DeleteConsumer(ctx, stream, info.Name)
}

// deleteConsumerWait bounds a consumer's deletion.
const deleteConsumerWait = 2 * time.Second

// readKept reads the headers of the kept copies made at or after
// sequence from whose original sequence is from or later, ordered by
// original sequence.
func (l *Log) readKept(ctx context.Context, from uint64) ([]keptCopy, error) {
	st, err := l.JS.Stream(ctx, l.Stream)
	if err != nil {
		return nil, fmt.Errorf("bus: stream %s: %w", l.Stream, err)
	}
	filter := l.Subjects.Prefix + ".room.*." + commands.KindKept
	last, err := st.GetLastMsgForSubject(ctx, filter)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bus: last kept copy: %w", err)
	}
	var out []keptCopy
	err = readRange(ctx, l.JS, l.Stream, filter, max(from, 1), last.Sequence, true, func(m jetstream.Msg, at uint64) error {
		// A copy without valid headers is not one the service made; it
		// passes where it stands.
		k, err := l.Subjects.parseKept(m.Subject(), m.Headers())
		if err == nil && k.seq >= from {
			k.at = at
			out = append(out, k)
		}
		return nil
	})
	slices.SortFunc(out, func(a, b keptCopy) int { return cmp.Compare(a.seq, b.seq) })
	return out, err
}

// keptData reads a kept copy's data when it is delivered; ok is false if
// the copy is gone since (a purge_room erased the room's copies with its
// events: the room's history before it is gone either way).
func keptData(ctx context.Context, st jetstream.Stream, k keptCopy) (data []byte, ok bool, err error) {
	m, err := st.GetMsg(ctx, k.at)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("bus: read kept copy %d: %w", k.at, err)
	}
	return m.Data, true, nil
}
