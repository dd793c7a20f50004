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

// PurgeChecks is how many times the runner's purge tasks have looked at
// their progress and found them not done.
func (r *TaskRunner) PurgeChecks() int64 { return r.purgeChecks.Load() }
