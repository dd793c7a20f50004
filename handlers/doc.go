// Package handlers holds scrollback's request logic: Messages (Synapse's
// get_messages over the projection), Admin (requests that act through the
// room log, such as blocking a room), Auth, the HTTP bridge and the
// Prometheus metrics.
//
// Handlers return errors; exactly one place per transport turns them into
// replies: bus.Service for NATS, writeError for HTTP. A *commands.Error is
// sent as is; anything else is logged and answered as a generic 500.
//
// Background work runs here too: the TaskRunner (purge and shutdown
// tasks), the retention and forgotten-room jobs, and the Eraser, which
// erases from the log the event messages whose rows a purge deleted. On
// the embedded server the Eraser compacts a room's event subject with one
// subject purge (bus.Log.Compact); on a shared NATS, where other instances
// read the log, it deletes message by message. The TaskRunner also
// deletes the finished tasks that have expired (7 days), every minute.
// While a purge's rows go, it puts the janitor's progress in the task
// record (purged_below, at most once PurgeProgressEvery), and numbers a
// task's updates by those the log took, so that a run after a refused
// publish never reuses a message ID (update). A purge task completes once
// its own room's rows are gone (those of a number a purge_room retired
// too) and its own room's messages are erased; other rooms' erasures do
// not hold it. It confirms in the log each purge_room that the projection
// refused while local users were joined, and each purge_history that
// passed and waits for a slot (confirm), so that a rebuild after a later
// purge erased the history they were decided on decides them the same;
// the Eraser leaves such a room's history in the log until then
// (projections Store.PendingErasures).
//
// Look-ups that pick a purge's cut-off from what the room holds (a purge
// by event ID that finds nothing, a purge by time, a retention job) first
// wait until this instance has applied the log as it is now
// (Admin.CatchUp): the projection applies the log a little after the log
// acknowledges it, and Synapse's look-ups see every persisted event.
//
// Admin requests that wait for a task (a v1 room deletion for the room's
// open deletion and then its own, a v2 deletion for its task to start)
// wake on each commit that writes a task of the room
// (projections.Store.TaskChange) instead of polling; a v1 deletion waits
// detached from the API's workers (bus.Detach), as long as its deletion
// takes.
//
// Reads that reach a backward extremity call the Backfiller (Synapse's
// maybe_backfill): in the foreground when the page is short or gappy,
// else in the background (at most four at once, owned by the Backfiller,
// whose Close ends them and waits). A room has one backfill under way at a time:
// a read that finds one waits for it, then decides for its own depth
// (Synapse's _room_backfill linearizer). Every read near a gap may call
// it, so its lock guards only the in-flight calls and the back-off,
// never a bbolt read: a convoy behind such a lock held up the reads under
// load. A backfill waits for the greatest sequence it appended: a reply
// repeats events the log holds, and JetStream acks a repeat with its
// first sequence. A page
// of a room without backward extremities (RoomView.HasGaps, asked in the
// page's own transaction) does not call it at all.
//
// A page's rows alias the read transaction's memory, strings included
// (projections.PageResult): the /messages handler serialises the reply
// inside the transaction and keeps nothing of a row after it, not even
// a string (a map key, an error's text, a goroutine's argument).
//
// A page in the federation format (?raw, or a filter's event_format) is
// built in the client format in its transaction, with each event's log
// sequence noted (fedPage, with copied IDs), and turned after it: each
// event's message is read from the log (bus.Log.EventMessages, which
// finds a compacted room's kept copies too), since the projection does
// not keep the PDU fields the client format drops.
//
// The HTTP bridge is a thin translation: every endpoint becomes a NATS
// request of CONTRACT.md section 4, so it can run in its own process.
package handlers
