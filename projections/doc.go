// Package projections is the room log's bbolt projection: timelines,
// state, extremities, tasks, dead letters and the per-partition
// checkpoints, and the reads that page through them.
//
// # Basics
//
// Projector.Run consumes the log and hands each message to the partition
// of its room (fnv32a of the room key modulo the partition count, fixed
// when the file is created). Each partition takes its messages in log
// order, in batches, decodes them and builds their rows (in parallel,
// GOMAXPROCS-1 partitions at a time, at most MaxDecoded messages decoded
// and not yet committed), and hands the batch to the committer, bbolt's
// one writer. The committer applies every batch that is ready in one
// transaction (a group commit, at most MaxGroup messages), each room's
// messages in log order; the transaction also writes each partition's
// checkpoint (the last log sequence applied), so a message's effects
// happen exactly once: on restart or redelivery everything at or below
// the checkpoint is skipped. A room's messages are never applied out of
// order; the order between rooms is not fixed.
//
// The committer is the projector's bound: when the log is far ahead (a
// catch-up) it is busy nearly all the time (97% catching up 1M events in
// 10k rooms). ObserveCommit reports each group commit, with the pages it
// wrote and the writer's time, so that the service's metrics show it.
// bbolt writes a commit's pages one pwrite at a time and then waits in
// fdatasync for all of them; during a commit of 1,024 messages or more a
// goroutine asks the kernel every 2 ms to start writing the file's dirty
// pages out (sync_file_range, Linux only; writeback.go), so that the disk
// works while bbolt still writes and the sync waits for less (the
// catch-up 1.10-1.31x in three pairs). bbolt's order of syncs, pages
// before the meta page, is unchanged. A new file (Options.Build) commits
// without fsync (bbolt still syncs as the file grows, every 16 MiB) until
// it is within 1,024 messages of the log's end (at once over an empty
// log: Run asks the log, EmptyFrom), guarded by a marker holding the
// machine's boot ID: a restart of the machine meanwhile makes the next
// Open delete the file and build it again (build.go). The outcomes of
// what the log held when a new file started are marked Replayed, so that
// the service does not report old task endings as new.
// Live traffic is the opposite case: a few messages at a time, into as
// many rooms, each commit writing about 8 pages a message and two fsyncs.
// When a group holds fewer than 256 messages, nobody waits for the
// projection (WaitFor, WaitAll), and the last commit ended less than 10 ms
// ago with batches of two partitions or more, the committer waits up to
// Linger (2 ms) for more. Beginning to wait ends a linger under way, so
// that a purge's hiding, a read's wait_for or a backfill waits for no
// linger; an event after a quiet spell, or in a lone room's stream, is
// committed at once.
//
// Reads use bbolt read transactions (snapshots): they never wait for the
// writer and see whole batches only. Store.View gives a RoomView for one
// consistent read. A Row's content aliases the transaction's memory, and
// so do the strings of Paginate's rows: nothing of them may be used after
// the transaction ends (bbolt reuses a freed page and rewrites it).
//
// # Layout
//
// Keys are big-endian. Room IDs are mapped to 8-byte room numbers
// (rooms bucket). Stream orderings are signed (backfilled events are
// negative) and stored as uint64(v) ^ 1<<63 so that they sort.
//
//	timeline   room|depth|order            -> row (see Row)
//	eventindex room|event ID               -> depth|order|outlier
//	outlierrows room|event ID              -> row
//	redacted   room|redacted event ID      -> redaction event ID
//	reredacted room|redacted event ID|0|log sequence -> redaction event ID
//	                                          (the redactions after the mark's)
//	state      room|type|state_key|depth|order -> summary|event ID (the
//	                                          commands.StateSummary; timeline
//	                                          and outlier state events, rejected
//	                                          and soft-failed ones aside)
//	fwdext     room|event ID               -> depth   (a timeline event, not
//	                                          rejected, soft-failed or
//	                                          backfilled, that no such event
//	                                          names: backfilled events leave
//	                                          the forward extremities alone)
//	backext    room|event ID               -> depth   (named by a timeline
//	                                          event, rejected ones aside,
//	                                          and not on the timeline:
//	                                          unknown, or an outlier)
//	edges      room|parent ID|0|child ID   -> child's depth (parents not
//	                                          one level up, or unknown)
//	srvmembers room|len(server)|server|user ID -> {} (users with a
//	                                          member state entry, by the
//	                                          server of their ID)
//	forgotten  room|user ID                -> forget time (ms), then 1 for a room deletion's own forget
//	tasks      task ID                     -> Task
//	roomtasks  room|created|task ID        -> {}
//	opentasks  task ID                     -> {}      (scheduled or active)
//	taskdone   last update|task ID         -> {}      (finished, by the ts
//	                                          of their last update, as order)
//	unconfirmed task ID                    -> {}      (decisions the runner
//	                                          is to confirm: purge_room
//	                                          refusals, passed
//	                                          purge_histories with no
//	                                          update yet)
//	deadletter log sequence                -> DeadLetter (last MaxDeadLetters)
//	received   received ts|log sequence    -> room (live events, outliers too)
//	checkpoint partition                   -> log sequence
//	erasein    room -> bucket: log sequence -> {}    (messages a purge's
//	                                          janitor deleted, to erase)
//	erase      log sequence                -> {}      (the same, queued by
//	                                          files before erasein)
//	eraseroom  room ID                     -> log sequence (purge_room)
//	relations  room|target|rel type|depth|order -> sender|relating event ID
//	relcounts  room|target|rel type        -> count (and ...|0xff|sender)
//	relat      room|depth|order            -> kinds   (timeline events that
//	                                          an indexed relation targets)
//	relwait    room|event ID               -> kinds   (targets of indexed
//	                                          relations off the timeline)
//	extraseqs  room|event ID|0|log sequence -> {}     (a stored event's
//	                                          other messages)
//	ended      room|event ID               -> log sequence (the copy from
//	                                          below the floor that ended
//	                                          its gap: earlier children no
//	                                          longer make it a backward
//	                                          extremity)
//
// An event can reach the log more than once: as an outlier that later
// joins the timeline, and published again after JetStream's
// de-duplication window (applied as a duplicate). Its row holds one log
// sequence; extraseqs holds the others (extraSeqKey), so that a purge that
// deletes the row erases every message of the event: one left in the log
// would bring the event back in a rebuild (CONTRACT.md section 7). Rows a
// purge keeps as outliers keep their entries; RoomMeta.HasExtraSeqs spares
// the janitor the look-up in rooms without any.
//
// A redaction mark (redacted) names the first redaction applied to its
// target; reredacted holds the later ones, keyed by the log sequence they
// were applied at (reRedactKey). When a purge deletes the mark's
// redaction, the first later one it keeps takes its place
// (promoteRedaction), as in a rebuild from the erased log, where that one
// is the first applied; without one the mark goes, and the target, if
// kept, shows unredacted, as in Synapse and in the rebuild. The janitor moves the mark with the row it
// deletes (dropMarks), Redactions gives the new one (or none) from the
// moment the purge is applied, and a redaction applied after the mark's was purged
// marks the target at once. A file written before reredacted has no
// later redactions (a rebuild records them).
//
// relat lets a page of /messages learn which of its events have bundled
// aggregations, and of which kinds (a byte of RelatedReference,
// RelatedReplace, RelatedThread; 0 for a reaction alone), with one seek
// and a walk over its own range (RoomView.MarkRelated), where it looked
// up every kind for every event. Every target of an
// indexed relation has exactly one mark: at its timeline position, or in
// relwait until it joins the timeline (markRelated; checked by
// Store.CheckRelatedMarks). Open gives a file made before the marks its
// marks once, from the relations index (addRelatedMarks; the "relmarks"
// key in meta says it is done).
//
// A finished task expires 7 days after its last update
// (commands.Task.ExpiredAt, CONTRACT.md). A finished task is never
// written again, so putTask indexes it once in taskdone, sorted by the
// ts of that update; ExpireTasks, which the service's task runner calls
// every minute, walks taskdone from its start to the cut-off and deletes
// each task's record, its roomtasks entry and its taskdone entry, a
// bounded batch per write transaction, and costs one read when nothing
// is due. Open indexes the finished tasks of a file written before
// taskdone once (indexFinishedTasks, through fillOnce as addRelatedMarks).
// An expired task may be stored until the sweep runs, and a rebuild
// brings back every one before it sweeps at its end: what must not see
// one asks ExpiredAt itself (the status endpoints, Digest, and a command
// reusing its ID, applyCommand), so that nothing depends on when the
// sweep ran.
//
// A live event's received entry goes with its row: the janitor deletes it
// with every row it deletes, and, for a purge_room, with every row and
// outlier of the retired number. received is keyed by time, so a row
// holds what rebuilds the key: the log sequence is its stream ordering,
// the received time its AgeTS plus the published age stored after its
// unsigned (Row.marshal; the event's other top-level keys, if any,
// follow). A row a purge_history keeps as an outlier keeps its entry:
// Synapse keeps its events row, and counts it in purge_up_to_ts.
// An event published as an outlier has one too, for the same reason; it
// goes when the outlier joins the timeline (the row's replaces it) or
// when a purge's sweep deletes the outlier.
//
// timeline, roomstream and received are appended to (at a room's end, or
// at the end): the applier fills their leaves to 90% before splitting
// (appendFill), where bbolt's default half left each appended leaf half
// empty.
//
// The erasures are queued in a bucket per room so that the eraser can
// take all of a room's at once once its janitor is done (RoomErasures),
// erase them with subject purges (bus.Log.Compact), and drop them by
// deleting the bucket: freeing its pages, where deleting a million keys
// one by one held the writer for 0.6 s. A purge_room deletes the bucket
// of the room number it retires (dropRoomErasures): its own erasure of
// the room's event subject below it covers them all.
//
// The events index (eventindex), the outliers and the redactions are
// keyed by room number, then event ID (evKey): the IDs are hashes, and
// keyed by ID alone every new event of a group commit dirtied a leaf of
// the index of its own. Keyed by room, a room's entries share leaves:
// catching up 1M events in 10k rooms wrote 1.3 pages per message instead
// of 1.5, and ran 1.16x as fast. The same ID in two rooms is two events,
// and a purge_room drops the retired number's entries, outliers and
// redactions by prefix, leaving those of the room's new number alone. The
// only look-up without a room, the admin API's "Event is for wrong
// room.", asks every room (Store.FindEvent). Version 1 files, keyed by ID
// alone (buckets events, outliers and redactions), are migrated by Open
// (migrate.go). Within a room the IDs are still random, so the
// janitor deletes the entries of the next unindexWindow rows of a purge
// ahead of the rows, in key order (unindex.go), so that a transaction
// dirties a narrow slice of the room's entries rather than a leaf per row.
// It fills that window in steps of unindexFill rows, each a sorted run,
// and merges the runs as it deletes, so that no step holds a core for long.
//
// A purge_history is applied at once and physically later. Applying it
// raises RoomMeta.Floor (and DeleteLocalBelow, the highest cut-off of a
// purge with delete_local_events) and queues a janitor job. From then on
// pages stop at the floor, and a look-up by ID (RoomView.Event, Holds,
// FindEvent) skips a timeline row below it that the purges delete
// (RoomMeta.purged, one row head read, only below the floor). The
// janitor's job then sweeps the room's outliers logged before the purge
// (sweepOutliers: Synapse's purge takes outliers too, NOT outlier OR
// should_delete; RoomMeta.Sweep, SweepAt, SweepBelow), then walks the
// timeline rows below the floor (floorBatch). A later purge that raises
// either cut-off starts the sweep again; an outlier logged after a purge
// is kept, as in a rebuild, whenever the janitor runs. Each deleted row
// takes its index entries, its redaction mark, its received entry and
// its extra messages with it, and queues its log sequences for erasure.
//
// A purge finds the kept children of each event it removes through the
// edges, and, for an event just below its floor, among the rows at the
// floor: the usual link, a child one level above its parent, is never
// stored, which spares every event a write to a bucket keyed by scattered
// IDs.
//
// Room state is linearized by (depth, stream ordering): the state after an
// event is, for each (type, state_key), the entry with the greatest
// position at or below the event's. State events held as outliers (the
// state a join over federation brings) have entries too, at their own
// position; one that joins the timeline moves its entry to its row's (a
// rejected or soft-failed timeline copy leaves it where it was). Looking
// it up is one cursor seek.
//
// # Caveats
//
// Memory: a catch-up's peak is the projector's buffers (QueueLen raw
// messages per partition, MaxDecoded decoded ones, the group's dirty
// pages), not the history; the embedded nats-server adds about 1.3 KB per
// room for its subject index. Under a Go memory limit (GOMEMLIMIT, the
// service's memory_limit) the projector sizes QueueLen and MaxDirty from
// it, and the committer bounds each group to the messages that would
// dirty about MaxDirty pages, measured on the group before: less memory,
// but a slower catch-up, since small groups share fewer pages.
//
// A purge_room is applied by every instance that reads the log, and the
// instance that ran it then erases the room's history from the log; a
// reader behind it may have read part of that history and lost the rest
// (the members' leaves). Before applying an unforced purge_room the
// projector therefore asks the log whether any of the room's history is
// left below it, as event messages or as kept copies of them
// (Projector.Erased, one question per purge_room); if none is, the purge
// succeeded elsewhere and is applied without the joined-members check
// (commands.LogEntry.HistoryErased). A partition whose question the log
// cannot answer before Run stops applies nothing more, and its watermark
// does not pass the purge_room.
//
// A later purge_room erases the history of a refused one too, and a later
// purge_history may erase the events that were a room's forward
// extremities when an earlier purge_history passed the guard: a rebuild,
// or a reader behind, would decide those commands on a history that is no
// longer there. So the outcome of such a command is read from the log:
// the task runner confirms each refusal of a purge_room's members check
// with a TaskUpdate that repeats the task's status and error, and a
// purge_history that passed has its task's updates after it: its own once
// it runs, or the runner's "scheduled" confirmation while it waits for a
// slot. Both are marked in the unconfirmed bucket until the task's first
// update after them is applied; a confirmation changes nothing in the
// record. A room's erasures wait while it has a mark that they could hide
// (holding: a refusal, or a passed purge_history followed by a later
// purge), so that the confirmation is in the log before the history that
// decided it leaves. The runner confirms a refusal at once, a waiting
// purge_history only once it holds an erasure (Store.ToConfirm: the rooms
// with erasures queued, each from its task list), and no task that has
// expired; a waiting purge_history that holds nothing stays marked until
// it starts. A file from before the bucket gets its marks
// when it is opened (markOldRefusals). Before applying an unforced purge_room
// (its history erased, in part, or not at all), or any purge_history, the projector asks the
// log for the first TaskUpdate of the task (and of its shutdown
// task, for a shutdown's purge step) after the command
// (Projector.FirstUpdates, commands.LogEntry.Decided): a confirmation
// refuses the purge_room again; any update passes the purge_history.
//
// A group that fails is retried batch by batch, and a message that fails
// to apply in a batch is retried alone; one that fails three times alone
// is recorded as a dead letter so that it never stops its partition. A
// fault of the file or the disk (fileFault: a full disk, an I/O error) is
// not the messages': the batch, or the message, is retried until the
// fault clears, and never becomes a dead letter, which would leave sound
// messages out of the projection for good. Once Run's context ends, such
// a batch is left for the next run, so that stopping the service does not
// wait for the disk. A file whose every commit is synced is safe to
// retry: a commit returns only once its pages are on disk, and one whose
// meta page fails to sync (bbolt then takes it for committed) carries its
// partitions' checkpoints, so that a start after the kernel lost it
// applies its messages from the log again. A file built without fsync is
// not: a failed write there distrusts it (Store.update, build.go). The file never shrinks by itself (bbolt reuses freed
// pages).
//
// Every write transaction goes through Store.update, which leaves bbolt's
// freelist out of the commit while more than freelistSyncMax pages are
// free (after a big purge): bbolt rewrites the whole list at each commit
// otherwise. Close writes it; an Open after a crash in that window
// rebuilds it by reading the file.
package projections
