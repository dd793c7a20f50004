package bus

import (
	"fmt"

	"github.com/scrollback/scrollback/commands"
)

// Decode turns a room log message into a commands.LogEntry. It never panics
// and bounds every allocation by the payload's size; a malformed message
// comes back with Err set (and RoomID when the subject names one).
func (s Subjects) Decode(seq uint64, subject string, data []byte, ts int64) commands.LogEntry {
	e := commands.LogEntry{Seq: seq, Subject: subject, LogTS: ts}
	roomID, kind, err := s.ParseRoomSubject(subject)
	if err != nil {
		e.Err = fmt.Errorf("%w: %v", commands.ErrMalformed, err)
		return e
	}
	e.RoomID, e.Kind = roomID, kind
	if kind == commands.KindKept {
		// Consume delivered it at its original sequence already.
		return e
	}
	fields, err := DecodeMap(data, DefaultLimits)
	if err != nil {
		e.Err = fmt.Errorf("%w: %v", commands.ErrMalformed, err)
		return e
	}
	switch kind {
	case commands.KindEvent:
		e.Event, e.Err = commands.EventFromMap(fields, roomID)
	case commands.KindCmd:
		e.Command, e.Err = commands.CommandFromMap(fields, roomID)
	case commands.KindTask:
		e.Update, e.Err = commands.TaskUpdateFromMap(fields)
	default:
		e.Err = fmt.Errorf("%w: unknown message kind %q", commands.ErrMalformed, kind)
	}
	return e
}
