package handlers

import (
	"context"

	"github.com/scrollback/scrollback/commands"
)

// Update is update, for the tests: it publishes the task's next
// TaskUpdate, the (*n+1)-th, and waits until it is applied.
func (r *TaskRunner) Update(ctx context.Context, task *commands.Task, n *int, status string) error {
	return r.update(ctx, task, n, status, task.Result, "")
}

// EraserPause is eraserPause.
var EraserPause = eraserPause
