package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// findKept lists the messages of subject below the last of erase
// (ascending) that are not in erase, after sequence after: the ones a
// compaction must copy. It also returns how many headers it read.
//
// Reading the header of every message of the subject to find them took a
// purge of 1M messages 5-13 s of both cores, the server's and the
// client's, while reads were served beside it, and the reads' endpoint
// dropped requests (docs/BENCHMARKS.md, session 18). The server can count
// instead: a consumer's NumPending is the number of the subject's
// messages from its start sequence on, which the server takes from its
// per-block subject index without sending a message. A range that holds
// as many messages as erasures listed in it holds nothing to keep.
// findKept counts the whole range, halves the ranges that hold more, and
// reads the headers of a range once it lists at most searchLeaf
// erasures. Finding one kept message that way costs two counts for each
// halving and a read of up to searchLeaf headers: tens of thousands of
// headers' worth. So findKept searches only when the first count shows
// few messages to keep (searchMost); a purge that keeps a few (a room of
// remote messages keeps its state events) then reads a few thousand
// headers instead of a million, and one that keeps many (a room's local
// events, a busy room's membership) reads them all, as before.
//
// Two things make a count trustworthy:
//   - It never falls short. The count of [from, to) is the subject's
//     messages from from on less those from to on, counted in that order
//     after each other: messages published in between land after to and
//     only add to the first. So a range whose count equals its listed
//     erasures holds nothing else, as long as the listed messages are
//     there.
//   - The listed messages are there. Erasures below the subject's first
//     message are left out (an earlier compaction purged them, as a kept
//     copy or as an erasure of the same purge before a crash); from it on,
//     the service deletes an event subject's messages only with these
//     subject purges, which take every message below a point, and only in
//     a compaction. A message deleted otherwise from that range (an
//     operator's nats stream rmm, stream limits an operator set) may hide
//     a message to keep in the same range: the count cannot tell one from
//     the other. A range with fewer messages than listed erasures is read.
func (l *Log) findKept(ctx context.Context, st jetstream.Stream, subject string, erase []uint64, after uint64) (keep []uint64, headers int, err error) {
	s := &keptSearch{l: l, stream: l.Stream, subject: subject, after: after}
	err = s.run(ctx, st, erase)
	return s.keep, s.headers, err
}

// run is findKept's search.
func (s *keptSearch) run(ctx context.Context, st jetstream.Stream, erase []uint64) error {
	subject := s.subject
	below := erase[len(erase)-1] + 1
	first, err := st.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subject))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bus: first message of %s: %w", subject, err)
	}
	from := first.Sequence
	if from >= below {
		return nil
	}
	// Reads stop at the subject's last message: one that found none
	// from its start on would wait for one.
	last, err := st.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		return fmt.Errorf("bus: last message of %s: %w", subject, err)
	}
	s.first, s.last = from, last.Sequence
	i, _ := slices.BinarySearch(erase, from)
	erase = erase[i:]
	if len(erase) >= searchLeaf*searchMost {
		return s.sweep(ctx, st, from, below, erase)
	}
	// Too few erasures to search for even one message to keep: a count
	// tells whether there is one, and if so every header is read.
	s.l.beforeStep(ctx)
	n, err := s.count(ctx, from, below)
	if err != nil || n == len(erase) {
		return err
	}
	return s.read(ctx, from, below, erase)
}

// sweep splits [from, below) into up to sweepRanges ranges of as many
// listed erasures each (at least searchLeaf), counts the messages from
// each range's start on, and then: if the whole holds just its erasures,
// nothing is kept; if it holds fewer, or more than one message to keep
// for every searchMost ranges of searchLeaf erasures, every header is
// read; else each range that holds more messages than its erasures is
// searched (halve), one that holds fewer is read.
//
// A count from a sequence walks the subject index of every block on one
// side of it, up to the subject's last block when the sequence's block is
// in the newer half of the stream's blocks, from the subject's first
// block when it is in the older half (nats-server's filestore), and loads
// the blocks whose index the server no longer holds (it drops it 2
// minutes after its last use): after a purge's janitor, most of the
// room's. A count from the middle of the room loaded half of its blocks
// at once: 60-80 ms windows of the reads' p99 at the start of the
// erasure (scrollback bench --scenario purge). So the sweep counts the
// bounds in the newer half of the stream from the newest down, then those
// in the older half from the oldest up: each count loads the blocks
// between it and the one before. It rests stepRest times as long as each
// count took, as the subject purges do.
//
// A range's count is its start's count less its end's. Without messages
// published to the subject meanwhile that is exact, whatever the order
// of the counts. With them (the subject's last message moved) every
// range is counted again, as a pair whose end is counted first (see
// findKept), its blocks loaded by then.
func (s *keptSearch) sweep(ctx context.Context, st jetstream.Stream, from, below uint64, erase []uint64) error {
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("bus: stream %s: %w", s.stream, err)
	}
	mid := info.State.FirstSeq + (info.State.LastSeq-info.State.FirstSeq)/2
	k := min(sweepRanges, len(erase)/searchLeaf)
	at := make([]int, k+1) // erase[at[j]] starts range j
	bound := make([]uint64, k+1)
	for j := range k {
		at[j] = j * len(erase) / k
		bound[j] = erase[at[j]]
	}
	at[k], bound[0], bound[k] = len(erase), from, below
	var newer, older []int // bounds 1..k, in the order they are counted
	for j := k; j >= 1; j-- {
		if bound[j] >= mid {
			newer = append(newer, j)
		} else {
			older = append(older, j)
		}
	}
	slices.Reverse(older)
	pending := make([]uint64, k+1)
	for _, j := range append(newer, older...) {
		s.l.beforeStep(ctx)
		start := time.Now()
		if pending[j], err = s.pendingFrom(ctx, bound[j]); err != nil {
			return err
		}
		if err := rest(ctx, stepRest*time.Since(start)); err != nil {
			return err
		}
	}
	// From the subject's first message (see count), counted last.
	if pending[0], err = s.pendingFrom(ctx, 1); err != nil {
		return err
	}
	last, err := st.GetLastMsgForSubject(ctx, s.subject)
	if err != nil {
		return fmt.Errorf("bus: last message of %s: %w", s.subject, err)
	}
	// Messages published to the subject during the sweep (its last
	// message moved) were counted from some bounds and not from others:
	// each range is then counted again, as a pair.
	published := last.Sequence != s.last
	rangeCount := func(j, l int) (int, error) {
		if !published {
			return int(pending[j]) - int(pending[l]), nil
		}
		s.l.beforeStep(ctx)
		return s.count(ctx, bound[j], bound[l])
	}
	n, err := rangeCount(0, k)
	switch {
	case err != nil:
		return err
	case n == len(erase):
		return nil
	case n < len(erase) || n-len(erase) > len(erase)/(searchLeaf*searchMost):
		return s.read(ctx, from, below, erase)
	}
	for j := range k {
		n, err := rangeCount(j, j+1)
		if err == nil {
			err = s.counted(ctx, bound[j], bound[j+1], erase[at[j]:at[j+1]], n)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// sweepRanges is how many ranges sweep counts at most: 32 counts of the
// blocks of 1/32 of the room each.
const sweepRanges = 32

// searchLeaf is the most erasures a range may list for findKept to read
// its headers rather than count its halves: a count takes about 5 ms of
// the server, as long as reading 2,000 headers. A variable for tests.
var searchLeaf = 4096

// searchMost bounds the messages to keep that findKept searches for: at
// most one for every searchMost ranges of searchLeaf erasures (30 in a
// purge of a million messages). Each costs a pair of counts a halving
// below the sweep's range (3 in a purge of a million) and a read of up to
// searchLeaf headers, and so does each range found short. A purge of
// fewer than searchLeaf x searchMost erasures (32,768) that keeps any
// message reads every header.
const searchMost = 8

// keptSearch is one findKept.
type keptSearch struct {
	l       *Log
	stream  string
	subject string
	after   uint64
	first   uint64 // the subject's first message when the search started
	last    uint64 // and its last
	keep    []uint64
	headers int // read
}

// halve searches the two halves of [from, to), split at the median of
// erase (the erasures listed in it, more than searchLeaf).
func (s *keptSearch) halve(ctx context.Context, from, to uint64, erase []uint64) error {
	mid := len(erase) / 2
	if err := s.walk(ctx, from, erase[mid], erase[:mid]); err != nil {
		return err
	}
	return s.walk(ctx, erase[mid], to, erase[mid:])
}

// walk finds the messages to keep in [from, to), whose listed erasures
// are erase: none if the range holds just those, else by reading its
// headers or searching its halves.
func (s *keptSearch) walk(ctx context.Context, from, to uint64, erase []uint64) error {
	if len(erase) <= searchLeaf {
		return s.read(ctx, from, to, erase)
	}
	s.l.beforeStep(ctx)
	n, err := s.count(ctx, from, to)
	if err != nil {
		return err
	}
	return s.counted(ctx, from, to, erase, n)
}

// counted finds the messages to keep in [from, to), which holds n
// messages and lists erase: none if n is just those; else it reads the
// range if it holds fewer (something else deleted some) or is small,
// and searches its halves if not.
func (s *keptSearch) counted(ctx context.Context, from, to uint64, erase []uint64, n int) error {
	switch {
	case n == len(erase):
		return nil
	case n < len(erase) || len(erase) <= searchLeaf:
		return s.read(ctx, from, to, erase)
	}
	return s.halve(ctx, from, to, erase)
}

// read reads the headers of the subject's messages in [from, to) and
// keeps those after s.after that erase (the erasures listed there) does
// not list.
func (s *keptSearch) read(ctx context.Context, from, to uint64, erase []uint64) error {
	n := 0
	return readRange(ctx, s.l.JS, s.stream, s.subject, from, min(to-1, s.last), true, func(_ jetstream.Msg, seq uint64) error {
		if n%scanBatch == 0 {
			s.l.beforeStep(ctx)
		}
		n++
		s.headers++
		for len(erase) > 0 && erase[0] < seq {
			erase = erase[1:]
		}
		if (len(erase) == 0 || erase[0] != seq) && seq > s.after {
			s.keep = append(s.keep, seq)
		}
		return nil
	})
}

// count is the number of the subject's messages in [from, to), or more
// if messages are published meanwhile (see findKept): those from to on
// are counted first. A range that starts at the subject's first message
// is counted from the stream's first sequence, which holds none of the
// subject's messages before it: from there the server answers with the
// subject's total, where from another sequence it walks the subject
// index of every block on one side of it, and loads the blocks whose
// index it no longer holds.
func (s *keptSearch) count(ctx context.Context, from, to uint64) (int, error) {
	rest, err := s.pendingFrom(ctx, to)
	if err != nil {
		return 0, err
	}
	if from <= s.first {
		from = 1
	}
	all, err := s.pendingFrom(ctx, from)
	if err != nil {
		return 0, err
	}
	if rest > all {
		return 0, fmt.Errorf("bus: %s holds %d messages from %d on but %d from %d on", s.subject, all, from, rest, to)
	}
	return int(all - rest), nil
}

// pendingFrom is the number of the subject's messages from seq on: the
// pending count of a consumer made for it, and deleted at once. Its state
// is kept in memory, so that making it costs no write.
func (s *keptSearch) pendingFrom(ctx context.Context, seq uint64) (uint64, error) {
	c, err := s.l.JS.CreateConsumer(ctx, s.stream, jetstream.ConsumerConfig{
		FilterSubject:     s.subject,
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       seq,
		AckPolicy:         jetstream.AckNonePolicy,
		MemoryStorage:     true,
		InactiveThreshold: countConsumerIdle,
	})
	if err != nil {
		return 0, fmt.Errorf("bus: count %s from %d: %w", s.subject, seq, err)
	}
	deleteConsumer(s.l.JS, s.stream, c)
	return c.CachedInfo().NumPending, nil
}

// countConsumerIdle is how long the server keeps a counting consumer that
// could not be deleted.
const countConsumerIdle = 5 * time.Second
