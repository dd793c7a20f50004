// Package commands is scrollback's domain: the records of the room log
// (Event, Command, TaskUpdate and their validation), pagination tokens,
// RoomEventFilter, tasks, durations, and the one user-visible error type,
// Error, which carries Synapse's status, errcode and text.
//
// It imports only the standard library: no NATS, bbolt or net/http (a
// Makefile target checks it with go list -deps). Everything here is pure
// and safe for concurrent use; values are plain data.
//
// Validation is strict about types and bounded in size: an Event or
// Command that fails it is never applied, and the error wraps
// ErrMalformed and names the field.
package commands
