package testenv

import (
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
)

// PoisonDecoder decodes as subjects.Decode does, except that the command
// whose ID is id gets a room ID too long for a bbolt key: a well-formed
// message whose apply fails for a reason of its own (bbolt's
// ErrKeyTooLarge) every time, as a bug would make it. The projector
// retries it and then makes it a dead letter.
func PoisonDecoder(subjects bus.Subjects, id string) func(seq uint64, subject string, data []byte, ts int64) commands.LogEntry {
	return func(seq uint64, subject string, data []byte, ts int64) commands.LogEntry {
		e := subjects.Decode(seq, subject, data, ts)
		if e.Command != nil && e.Command.ID == id {
			e.RoomID = "!" + strings.Repeat("p", bolt.MaxKeySize) + ":test"
			e.Command.RoomID = e.RoomID
		}
		return e
	}
}
