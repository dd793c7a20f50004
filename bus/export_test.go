package bus

import "context"

// SetCompactStep sets how many erased messages one step of Compact's
// subject purge takes, for a test, and returns the restore.
func SetCompactStep(n int) (restore func()) {
	old := compactStep
	compactStep = n
	return func() { compactStep = old }
}

// SetKeptBatch sets how many kept copies Compact publishes in one atomic
// batch, for a test, and returns the restore.
func SetKeptBatch(n int) (restore func()) {
	old := keptBatch
	keptBatch = n
	return func() { keptBatch = old }
}

// SetSearchLeaf sets how many listed erasures a range of findKept's
// search may hold for it to read the range's headers, for a test, and
// returns the restore.
func SetSearchLeaf(n int) (restore func()) {
	old := searchLeaf
	searchLeaf = n
	return func() { searchLeaf = old }
}

// FindKept runs Compact's search for the messages to keep (findKept).
func (l *Log) FindKept(ctx context.Context, subject string, erase []uint64, after uint64) (keep []uint64, headers int, err error) {
	st, err := l.JS.Stream(ctx, l.Stream)
	if err != nil {
		return nil, 0, err
	}
	return l.findKept(ctx, st, subject, erase, after)
}

// EventMessage is one sequence of EventMessages, with eventMessage's
// ErrEventGone for a message the log no longer holds: the tests of the
// kept-copy search look at one sequence at a time.
func (l *Log) EventMessage(ctx context.Context, roomID string, seq uint64) ([]byte, error) {
	st, err := l.JS.Stream(ctx, l.Stream)
	if err != nil {
		return nil, err
	}
	return l.eventMessage(ctx, st, roomID, seq)
}
