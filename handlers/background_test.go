package handlers_test

import (
	"context"
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

// TestRetentionRunner_DisabledRunsNothing: with retention disabled, Run
// schedules no job and returns at once, jobs configured or not.
func TestRetentionRunner_DisabledRunsNothing(t *testing.T) {
	r := &handlers.RetentionRunner{Config: handlers.Retention{Enabled: false, Jobs: []handlers.RetentionJob{{Interval: time.Millisecond}}}}
	done := make(chan struct{})
	go func() { r.Run(context.Background()); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run with retention disabled did not return: it runs its jobs")
	}
}
