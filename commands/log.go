package commands

// Kinds of room log messages: the last token of sb.room.<rk>.<kind>.
const (
	KindEvent = "event"
	KindCmd   = "cmd"
	KindTask  = "task"
)

// LogEntry is one decoded message of the room log: exactly one of Event,
// Command and Update is set, or Err says why the message is malformed.
type LogEntry struct {
	Seq     uint64 // the log's sequence number
	Subject string
	RoomID  string // "" only when the subject names no room
	Kind    string
	LogTS   int64 // ms: the time the log stored the message
	Event   *Event
	Command *Command
	Update  *TaskUpdate
	Err     error // wraps ErrMalformed
}
