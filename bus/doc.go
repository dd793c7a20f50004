// Package bus is scrollback's NATS adapter: subject names and room keys,
// the bounded MessagePack codec, the embedded nats-server, the room log's
// JetStream stream, the ordered consumer that feeds the projector, the
// nats.go/micro service that answers requests, and outbound requests.
//
// # Ordering
//
// The room log is one JetStream stream over sb.room.>. Log.Consume
// delivers it in stream order through an ordered consumer without acks:
// the projection keeps its own checkpoint, so a restart resumes from it
// and redelivery is harmless.
//
// # Kept copies
//
// Log.Compact erases most of a room's event messages with subject purges
// (one for every 10k erased messages, each followed by a rest three times
// as long as it took, so that the embedded server's work comes in short
// bursts): the messages it must keep (a purge's outliers, and anything
// else not being erased below that point) are first copied to
// sb.room.<rk>.kept in atomic batches, each copy carrying its original
// sequence and log time in headers. Consume reads the copies' headers
// when it starts (about 50 bytes held for each) and hands each one over,
// its data read then, at its original sequence, on the event subject,
// before the first message after it; where a copy itself stands
// it is delivered as a message of kind kept, which the projector passes
// over. So a reader of the log, and a rebuild, sees the same messages at
// the same sequences as before, minus the erased ones. A later compaction
// that erases a message an earlier one copied (an event a later purge
// deletes) deletes the copy as well. Only a log no
// other instance reads while it is compacted may be compacted: Consume
// reads copies once, when it starts.
//
// To find the messages to keep, Compact counts before it reads
// (findKept): the server counts a subject's messages from a sequence on
// without sending them (a consumer's NumPending), so a range holding as
// many messages as erasures listed in it holds nothing to keep. The
// search counts up to 32 ranges first, in an order that makes each count
// load only the blocks since the one before (a count loads the blocks
// whose subject index the server has dropped), resting after each; then
// it halves the ranges that hold more messages than erasures, and reads
// those that hold fewer and the small ones. It searches only when the
// first count shows few messages to keep (about 30 in a million); with
// more, or in a purge of fewer than 32,768 messages that keeps any, it
// reads every header, as it did before. This trusts that nothing but
// subject purges, which take every message below a point, deletes an
// event subject's messages: a message deleted by hand (nats stream rmm)
// among the erasures could hide a message to keep in the same range.
//
// # Input limits
//
// msgpack v5.4.1 allocates what a length prefix claims before reading it
// (vmihailenco/msgpack issue 401). Every payload from the bus goes through
// Check first, which walks the bytes without allocating and refuses
// lengths the input cannot back, nesting past Limits, binary and extension
// types, and non-string map keys. DecodeMap = Check + a small decoder of
// its own that trusts what Check accepted (msgpack's reflective decoding
// cost a fifth of the projector's CPU); FuzzDecodeMap holds it to exactly
// what msgpack's loose decoding gives.
//
// # Requests
//
// Serve registers micro endpoints. micro runs one handler at a time per
// endpoint, so each request is handed to a bounded worker pool
// (ServiceOptions.Workers); when the pool is full the subscription waits,
// which is the backpressure. Errors become the contract's error replies in
// one place (Nats-Service-Error-Code, Nats-Service-Error and a
// {errcode, error} body); errors that are not *commands.Error are logged
// and answered as a generic 500. A handler that waits long for something
// other than the CPU (a v1 room deletion waits minutes for the deletion)
// calls Detach: its request gives the worker back and leaves the Load
// count until it returns (at most ServiceOptions.MaxDetached at once).
// Replies go out on the serving connection, or in turn on
// ServiceOptions.ReplyConns: one connection sends one write at a time
// (nats.go writes holding its mutex), and near capacity the workers
// queued for it; connections that answer by a response permission may
// reply only to requests they received, so those are for the service's
// own user on the embedded server.
//
// A Load counts the requests a service holds, so that background work can
// make way for reads: MakeWay while the requests outnumber a limit its
// caller gives (twice the CPUs for the eraser's pacing: reads queue for a
// CPU), Backoff while they outnumber the
// workers (reads queue in the subscriptions, where NATS drops them past
// EndpointPendingMsgs; the purges' janitor and the eraser's compaction
// steps wait until half the workers are free). Log.BeforeDelete and
// Log.BeforeStep are where the eraser waits. WatchCPU samples Go's
// scheduling waits every 20 ms, and Calm waits while goroutines queue for
// a CPU (the purges' janitor, a shutdown's kicks): a read's tail comes from
// short CPU queues that the count of requests does not show. That gate
// holds work back for at most half of any second (CPUHoldShare), so that
// a host that keeps the queue up all the time slows a shutdown or a purge
// down by half at most, rather than to a step every 20 ms.
//
// # Partition owners
//
// With several instances on one log, Owners elects an owner per partition
// through leases in a JetStream key-value bucket (Create takes, Update
// with the last revision renews, expiry frees). One long-lived watcher
// keeps the view of the bucket and is restarted when it goes silent (our
// own renewals guarantee traffic), so a NATS node dying under it cannot
// freeze the election. See docs/CLUSTER.md.
package bus
