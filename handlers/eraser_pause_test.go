package handlers_test

import (
	"testing"
	"time"

	"github.com/scrollback/scrollback/handlers"
)

// TestEraserPause: the eraser waits 200 ms when it had nothing to do, and
// twice as long after each failed step in a row, up to 5 s.
func TestEraserPause(t *testing.T) {
	want := []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond, 3200 * time.Millisecond, 5 * time.Second, 5 * time.Second}
	for failures, w := range want {
		if got := handlers.EraserPause(failures); got != w {
			t.Errorf("after %d failures: %v, want %v", failures, got, w)
		}
	}
	if got := handlers.EraserPause(1000); got != 5*time.Second {
		t.Errorf("after 1000 failures: %v, want 5s", got)
	}
}
