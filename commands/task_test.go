package commands_test

import (
	"testing"

	"github.com/scrollback/scrollback/commands"
)

// TestTask_ExpiredAt: a finished task, cancelled included, is gone once
// its last update is more than TaskExpiryMS old; an open one never is.
func TestTask_ExpiredAt(t *testing.T) {
	const last = 1_700_000_000_000
	tests := []struct {
		name, status string
		at           int64
		want         bool
	}{
		{"complete, exactly 7 days", commands.TaskComplete, last + commands.TaskExpiryMS, false},
		{"complete, 7 days and 1 ms", commands.TaskComplete, last + commands.TaskExpiryMS + 1, true},
		{"failed, 8 days", commands.TaskFailed, last + 8*24*3600*1000, true},
		{"cancelled, 8 days", commands.TaskCancelled, last + 8*24*3600*1000, true},
		{"active, a year", commands.TaskActive, last + 365*24*3600*1000, false},
		{"scheduled, a year", commands.TaskScheduled, last + 365*24*3600*1000, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			task := &commands.Task{Status: tt.status, UpdatedTS: last}
			if got := task.ExpiredAt(tt.at); got != tt.want {
				t.Errorf("ExpiredAt=%v, want %v", got, tt.want)
			}
		})
	}
}
