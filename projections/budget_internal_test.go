package projections

import (
	"testing"
	"time"
)

// TestBudget_BoundsAndOversizedTakes: takes wait while the budget is
// drawn, a take larger than the whole budget draws all of it once
// nothing else is drawn, and gives wake the waiters.
func TestBudget_BoundsAndOversizedTakes(t *testing.T) {
	b := newBudget(10)
	a := b.take(6)
	got := make(chan int)
	go func() { got <- b.take(5) }() // 4 free: waits
	select {
	case n := <-got:
		t.Fatalf("took %d with 4 free", n)
	case <-time.After(20 * time.Millisecond):
	}
	b.give(a)
	if n := <-got; n != 5 {
		t.Fatalf("took %d, want 5", n)
	}
	go func() { got <- b.take(100) }() // more than the budget: waits for all
	select {
	case n := <-got:
		t.Fatalf("took %d while 5 were drawn", n)
	case <-time.After(20 * time.Millisecond):
	}
	b.give(5)
	if n := <-got; n != 10 {
		t.Fatalf("an oversized take drew %d, want the whole budget (10)", n)
	}
	b.give(10)
	if b.free != 10 {
		t.Fatalf("free %d after every give", b.free)
	}
}
