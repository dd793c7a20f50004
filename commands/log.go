package commands

// Kinds of room log messages: the last token of sb.room.<rk>.<kind>.
const (
	KindEvent = "event"
	KindCmd   = "cmd"
	KindTask  = "task"
	// KindKept is a kept copy of an event message that a compaction of
	// the room's event subject moved (bus.Log.Compact; CONTRACT.md
	// section 3). Readers of the log take it at its original sequence
	// (bus.Log.Consume); where it stands it has no effect.
	KindKept = "kept"
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
	// HistoryErased is set by the projector on a purge_room command whose
	// room's event messages below it the log no longer holds: another
	// instance applied the purge and erased them, perhaps while this
	// reader was reading them (projections.Projector.Erased).
	HistoryErased bool
	// Decided is set by the projector on a purge command whose outcome
	// depends on history that a later purge may have erased from the log
	// (projections.Projector.FirstUpdates): by task ID, the first
	// TaskUpdate after the command of its task, and of its shutdown task
	// for a shutdown's purge step. It tells how the command was decided
	// where it was first applied.
	Decided map[string]*TaskUpdate
}
