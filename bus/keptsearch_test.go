package bus_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
)

// keptCase is a compaction's erasures in room a of a keptLog, and what it
// must keep.
type keptCase struct {
	erase, keep []uint64
}

// keptCaseOf lists room a's messages 1..n: kept(i) ones are kept, the
// others erased. Messages after the last erased one are neither.
func keptCaseOf(k *keptLog, n int, kept func(i int) bool) keptCase {
	var c keptCase
	for i := 1; i <= n; i++ {
		seq := k.seqs[fmt.Sprintf("a%d", i)]
		if kept(i) {
			c.keep = append(c.keep, seq)
		} else {
			c.erase = append(c.erase, seq)
		}
	}
	below := c.erase[len(c.erase)-1]
	c.keep = slices.DeleteFunc(c.keep, func(s uint64) bool { return s > below })
	return c
}

// searchLog is a keptLog of n messages a room for a test of findKept
// with ranges of at most leaf erasures read, and room a's event subject.
func searchLog(t *testing.T, leaf, n int) (*keptLog, string) {
	t.Helper()
	t.Cleanup(bus.SetSearchLeaf(leaf))
	k := newKeptLog(t, n)
	return k, k.log.Subjects.Room("!a:x", commands.KindEvent)
}

// findKept finds the same messages to keep as reading every header would,
// and reads few headers when few are kept: it counts ranges instead.
func TestFindKept_CountsInsteadOfReading(t *testing.T) {
	const n = 300
	k, subject := searchLog(t, 8, n)
	ctx := context.Background()
	for _, tc := range []struct {
		name        string
		kept        func(i int) bool
		mostHeaders int // read at most, of n
	}{
		{"nothing kept", func(int) bool { return false }, 0},
		{"the first three kept", func(i int) bool { return i <= 3 }, 20},
		{"three scattered kept", func(i int) bool { return i == 50 || i == 201 || i == 299 }, 60},
		{"the last one kept", func(i int) bool { return i == n-1 }, 20},
		{"every third kept", func(i int) bool { return i%3 == 0 }, n},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := keptCaseOf(k, n, tc.kept)
			keep, headers, err := k.log.FindKept(ctx, subject, c.erase, 0)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(keep, c.keep) {
				t.Errorf("kept %v, want %v", keep, c.keep)
			}
			if headers > tc.mostHeaders {
				t.Errorf("read %d headers, want at most %d", headers, tc.mostHeaders)
			}
			t.Logf("%d headers read", headers)
		})
	}
	t.Run("kept copies made before", func(t *testing.T) {
		c := keptCaseOf(k, n, func(i int) bool { return i == 50 || i == 201 || i == 299 })
		keep, _, err := k.log.FindKept(ctx, subject, c.erase, k.seqs["a201"])
		if err != nil {
			t.Fatal(err)
		}
		if want := c.keep[2:]; !slices.Equal(keep, want) {
			t.Errorf("kept %v, want %v (the ones after a201)", keep, want)
		}
	})
}

// Messages published to the subject during the search land after the
// erasures: counted from some bounds of the sweep and not from others,
// they make it count its ranges again, in pairs, and it keeps the same.
func TestFindKept_PublishedDuringTheSearch(t *testing.T) {
	const n = 200
	k, subject := searchLog(t, 8, n)
	c := keptCaseOf(k, n-10, func(i int) bool { return i == 77 })
	published := 0
	k.log.BeforeStep = func(context.Context) {
		published++
		k.append(t, "a", fmt.Sprintf("late%d", published))
	}
	keep, headers, err := k.log.FindKept(context.Background(), subject, c.erase, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(keep, c.keep) {
		t.Errorf("kept %v, want %v", keep, c.keep)
	}
	// The ranges are counted again, in pairs: still a search.
	if headers > 40 {
		t.Errorf("read %d headers, want the counts to find a77", headers)
	}
	if published < 3 {
		t.Errorf("%d messages published during the search, want one before each of its steps", published)
	}
}

// Erasures no longer in the log are left out of the counts: those below
// the subject's first message (an earlier compaction's, or a crash in
// this one's subject purge), and those something else deleted, which
// leave a range with fewer messages than listed erasures: it is read.
func TestFindKept_ErasuresAlreadyGone(t *testing.T) {
	const n = 200
	k, subject := searchLog(t, 8, n)
	ctx := context.Background()
	c := keptCaseOf(k, n, func(i int) bool { return i == 20 || i == 120 })

	// a1..a40 purged: the search starts at a41.
	if err := k.log.PurgeSubjectBelow(ctx, subject, k.seqs["a41"]); err != nil {
		t.Fatal(err)
	}
	want := c.keep[1:] // a120
	keep, headers, err := k.log.FindKept(ctx, subject, c.erase, 0)
	if err != nil || !slices.Equal(keep, want) {
		t.Errorf("after a purge of a1..a40: kept %v, %v; want %v", keep, err, want)
	}
	if headers > 40 {
		t.Errorf("after a purge of a1..a40: read %d headers, want the counts to find a120", headers)
	}

	// a60 and a120 deleted by hand: fewer messages than listed erasures.
	if err := k.log.DeleteMsgs(ctx, []uint64{k.seqs["a60"], k.seqs["a120"]}); err != nil {
		t.Fatal(err)
	}
	keep, headers, err = k.log.FindKept(ctx, subject, c.erase, 0)
	if err != nil || len(keep) != 0 {
		t.Errorf("after a60's and a120's deletion: kept %v, %v; want none", keep, err)
	}
	if headers != n-40-2 {
		t.Errorf("after a60's and a120's deletion: read %d headers, want all %d left", headers, n-40-2)
	}
}

// A search that reads range after range leaves no consumer behind: a
// stream holds at most 1,000 by default, and the projector needs one.
func TestFindKept_LeavesNoConsumers(t *testing.T) {
	const n = 300
	k, subject := searchLog(t, 2, n)
	ctx := context.Background()
	c := keptCaseOf(k, n, func(i int) bool { return i == 3 || i == 150 || i == 250 })
	keep, headers, err := k.log.FindKept(ctx, subject, c.erase, 0)
	if err != nil || !slices.Equal(keep, c.keep) {
		t.Fatalf("kept %v, %v; want %v", keep, err, c.keep)
	}
	info, err := k.st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Consumers != 0 {
		t.Errorf("%d consumers left on the stream after a search that read %d headers, want none", info.State.Consumers, headers)
	}
}

// The subject's last erasures deleted by something else: the ranges read
// stop at the subject's last message instead of waiting for one.
func TestFindKept_TailGone(t *testing.T) {
	const n = 128
	k, subject := searchLog(t, 2, n)
	// More kept than gone just before the tail: the ranges there hold
	// more messages than listed erasures, so they are halved, not read,
	// down to the tail's own, which holds none.
	c := keptCaseOf(k, n, func(i int) bool { return i >= 123 && i <= 126 })
	if err := k.log.DeleteMsgs(context.Background(), c.erase[len(c.erase)-2:]); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	keep, _, err := k.log.FindKept(ctx, subject, c.erase, 0)
	if err != nil || !slices.Equal(keep, c.keep) {
		t.Errorf("kept %v, %v; want %v", keep, err, c.keep)
	}
}
