package handlers

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
)

// Synapse's limits for /messages (SYNAPSE.md 1.1).
const (
	DefaultLimit = 10
	MaxLimit     = 1000
	// WaitForTimeout bounds a read's wait_for (CONTRACT.md section 4).
	WaitForTimeout = 10 * time.Second
	// replyMargin keeps a reply under the server's max_payload with room
	// for the headers and the tokens.
	replyMargin = 64 << 10
)

// Waiter is the projector as reads need it.
type Waiter interface {
	// WaitFor blocks until the room's partition has applied seq.
	WaitFor(ctx context.Context, roomID string, seq uint64) error
	// Watermark is the sequence up to which the room's partition is applied.
	Watermark(roomID string) uint64
}

// Messages answers sb.api.room.<rk>.messages: Synapse's get_messages
// (SYNAPSE.md 1.4) over the projection.
type Messages struct {
	Store    *projections.Store
	Waiter   Waiter
	Subjects bus.Subjects
	Now      func() time.Time
	// MaxReply bounds a reply's size; it is asked on every page, so that
	// a reconnect to a server with a smaller max_payload is followed
	// (default: bus.MaxPayload).
	MaxReply func() int
	// Retention is the server's retention config: when enabled, non-state
	// events older than the room's max_lifetime are hidden from users.
	Retention Retention
	// Backfill, if set, fills gaps from federation workers on backwards
	// reads (SYNAPSE.md 1.4 step 6).
	Backfill *Backfiller
	// Events reads events' messages from the log for pages in the
	// federation format (fedevent.go); without it such a page is 501.
	Events EventLog

	levels levelsCache // decoded power levels, between reads
}

// backfillNeed is what a backwards page found about gaps.
type backfillNeed struct {
	depth      int64 // the depth the read is at
	foreground bool  // the page is too gappy or short to answer without trying
}

// MessagesRequest is the decoded request (CONTRACT.md section 4).
type MessagesRequest struct {
	UserID       string
	Admin        bool
	From, To     *commands.StreamToken
	Backwards    bool
	Limit        int
	Filter       *commands.Filter
	WaitFor      uint64
	IgnoredUsers []string
	// Federation: the events in the federation format, asked by
	// event_format or by the filter's event_format (SYNAPSE.md 1.1
	// step 4).
	Federation bool
}

// ParseMessagesRequest validates a request map in Synapse's order: dir,
// from, to, limit, filter; then the requester.
func ParseMessagesRequest(m map[string]any) (*MessagesRequest, error) {
	r := &MessagesRequest{Limit: DefaultLimit}
	if v, ok := m["dir"]; ok && v != nil {
		switch v {
		case "b":
			r.Backwards = true
		case "f":
		default:
			return nil, commands.Errorf(400, commands.CodeInvalidParam, "Query parameter 'dir' must be one of ['b', 'f']")
		}
	}
	for _, f := range []struct {
		key string
		dst **commands.StreamToken
	}{{"from", &r.From}, {"to", &r.To}} {
		t, err := parseTokenParam(f.key, m[f.key])
		if err != nil {
			return nil, err
		}
		*f.dst = t
	}
	if v, ok := m["limit"]; ok && v != nil {
		n, ok := commands.AsInt(v)
		if !ok {
			if u, isU := v.(uint64); isU && u > 1<<63-1 {
				n, ok = MaxLimit, true
			}
		}
		if !ok {
			return nil, commands.Errorf(400, commands.CodeInvalidParam, "Query parameter limit must be an integer")
		}
		if n < 0 {
			return nil, commands.Errorf(400, commands.CodeInvalidParam, "Query parameter limit must be a positive integer.")
		}
		r.Limit = int(min(n, MaxLimit))
	}
	if v, ok := m["filter"]; ok && v != nil {
		f, err := commands.ParseFilter(v)
		if err != nil {
			return nil, err
		}
		r.Filter = f // nil for a falsy filter ({}): no filter, as in Synapse
		r.Federation = f != nil && f.FederationFormat
	}
	if v, ok := m["event_format"]; ok && v != nil {
		switch v {
		case "federation":
			r.Federation = true
		case "client":
		default:
			return nil, commands.Errorf(400, commands.CodeBadJSON, "Param 'event_format' must be 'client' or 'federation'")
		}
	}
	if v, ok := m["admin"]; ok && v != nil {
		b, ok := v.(bool)
		if !ok {
			return nil, commands.Errorf(400, commands.CodeBadJSON, "Param 'admin' must be a boolean")
		}
		r.Admin = b
	}
	if v, ok := m["user_id"]; ok && v != nil {
		s, ok := v.(string)
		if !ok {
			return nil, commands.Errorf(400, commands.CodeBadJSON, "Param 'user_id' must be a string")
		}
		r.UserID = s
	}
	if !r.Admin && r.UserID == "" {
		return nil, commands.Errorf(400, commands.CodeMissingParam, "Missing params: ['user_id']")
	}
	if v, ok := m["wait_for"]; ok && v != nil {
		n, ok := commands.AsInt(v)
		if u, isU := v.(uint64); isU {
			n, ok = int64(min(u, 1<<63-1)), true
		}
		if !ok || n < 0 {
			return nil, commands.Errorf(400, commands.CodeBadJSON, "Param 'wait_for' must be a log sequence number")
		}
		r.WaitFor = uint64(n)
	}
	if v, ok := m["ignored_users"]; ok && v != nil {
		list, ok := v.([]any)
		if !ok {
			return nil, commands.Errorf(400, commands.CodeBadJSON, "Param 'ignored_users' must be an array of user IDs")
		}
		for _, u := range list {
			s, ok := u.(string)
			if !ok {
				return nil, commands.Errorf(400, commands.CodeBadJSON, "Param 'ignored_users' must be an array of user IDs")
			}
			r.IgnoredUsers = append(r.IgnoredUsers, s)
		}
	}
	return r, nil
}

// Handle is the bus.Handler of the messages endpoint.
func (h *Messages) Handle(ctx context.Context, subject string, data []byte) ([]byte, error) {
	roomID, m, err := roomRequest(h.Subjects, subject, data)
	if err != nil {
		return nil, err
	}
	req, err := ParseMessagesRequest(m)
	if err != nil {
		return nil, err
	}
	return h.Read(ctx, roomID, req)
}

// Read answers a parsed request with the MessagePack reply
// {chunk, start, end?, state?}.
func (h *Messages) Read(ctx context.Context, roomID string, req *MessagesRequest) ([]byte, error) {
	if req.WaitFor > 0 {
		wctx, cancel := context.WithTimeout(ctx, WaitForTimeout)
		err := h.Waiter.WaitFor(wctx, roomID, req.WaitFor)
		cancel()
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return nil, commands.Errorf(504, commands.CodeUnknown, "Timed out waiting for the room log to reach sequence %d", req.WaitFor)
			}
			return nil, err
		}
	}
	reply, need, err := h.readOnce(ctx, roomID, req)
	if err != nil || need == nil || h.Backfill == nil {
		return reply, err
	}
	if !need.foreground {
		h.Backfill.Background(roomID, need.depth, req.Limit)
		return reply, nil
	}
	if !h.Backfill.Maybe(ctx, roomID, need.depth, req.Limit) {
		return reply, nil // nothing came: the local page, at once
	}
	reply, _, err = h.readOnce(ctx, roomID, req)
	return reply, err
}

func (h *Messages) readOnce(ctx context.Context, roomID string, req *MessagesRequest) ([]byte, *backfillNeed, error) {
	now := h.Now().UnixMilli()
	if req.Federation && h.Events == nil {
		return nil, nil, commands.Errorf(501, commands.CodeUnknown, "The federation event format is not available here")
	}
	var reply []byte
	var need *backfillNeed
	var fed *fedPage
	err := h.Store.View(roomID, func(v *projections.RoomView) error {
		var err error
		reply, need, fed, err = h.page(v, roomID, req, now)
		return err
	})
	if err != nil || fed == nil {
		return reply, need, err
	}
	reply, err = fed.turn(ctx, h.Events, roomID, reply)
	return reply, need, err
}

// backfillDecision is Synapse's (SYNAPSE.md 1.4 step 6): backfill in the
// foreground when the page has a depth gap larger than 2, more than 3
// single-event gaps, or fewer events than the limit; otherwise in the
// background.
func backfillDecision(rows []*projections.Row, limit int, depth int64) *backfillNeed {
	need := &backfillNeed{depth: depth, foreground: len(rows) < limit}
	gaps := 0
	for i := 1; i < len(rows); i++ {
		d := rows[i-1].Depth - rows[i].Depth
		if d < 0 {
			d = -d
		}
		if d > 2 {
			need.foreground = true
		}
		if d > 1 {
			gaps++
		}
	}
	if gaps > 3 {
		need.foreground = true
	}
	return need
}

// page reads one page in the client format; for a request in the
// federation format it also returns what the page's turn into it needs
// (fedPage), which happens outside the read transaction.
func (h *Messages) page(v *projections.RoomView, roomID string, req *MessagesRequest, now int64) ([]byte, *backfillNeed, *fedPage, error) {
	// Step 1: the from token.
	var from commands.StreamToken
	fromGiven := req.From != nil
	switch {
	case fromGiven:
		from = *req.From
	case req.Backwards:
		depth, stream, _ := v.MaxPosition()
		stream = max(stream, int64(h.Waiter.Watermark(roomID)))
		from = commands.StartToken.WithRoom(commands.RoomToken{Topological: depth, Stream: stream, IsTopological: true})
	default:
		from = commands.StartToken
	}
	// Step 3: Synapse's curr_topo for a backwards page, the token's depth,
	// or, for a stream token (or depth 0), the least depth at or after
	// its position; taken before the clamp of step 4, and given to the
	// backfill of step 6. Computed when one of them needs it.
	currTopo, topoRead, token := int64(0), false, from.Room
	topo := func() int64 {
		if !topoRead {
			topoRead = true
			currTopo = token.Topological
			if !token.IsTopological || currTopo == 0 {
				currTopo = v.TopologicalAt(token.Stream)
			}
		}
		return currTopo
	}
	// Step 2: access (SYNAPSE.md 1.3).
	rc := &readContext{v: v, roomID: roomID, req: req, now: now, h: h}
	if req.Admin {
		// No access check nor visibility; the admin's own user ID and
		// ignore list still shape the bundles (current_user_participated,
		// ignored references and replies), as Synapse's admin API passes
		// its requester to get_bundled_aggregations.
		rc.reader = commands.Reader{UserID: req.UserID, Ignored: rc.ignored(), Now: now}
	} else {
		if err := rc.checkAccess(); err != nil {
			return nil, nil, nil, err
		}
		// Step 4: a departed user paging backwards is clamped to their
		// leave event; start shows the clamped token.
		if req.Backwards && rc.departed {
			if clamped, ok := rc.leaveClamp(topo()); ok {
				from = from.WithRoom(clamped)
				fromGiven = true
			}
		}
	}
	// Step 5: the timeline, with Synapse's early bail.
	var to *commands.RoomToken
	if req.To != nil {
		to = &req.To.Room
	}
	res := &projections.PageResult{}
	bail := to != nil && (!req.Backwards && to.Stream <= from.Room.Stream || req.Backwards && from.Room.Stream <= to.Stream)
	if !bail {
		q := projections.PageQuery{RoomID: roomID, Backwards: req.Backwards, To: to, Limit: req.Limit, Filter: req.Filter}
		if fromGiven || req.Backwards {
			q.From = &from.Room
		}
		var err error
		if res, err = v.Paginate(q); err != nil {
			return nil, nil, nil, err
		}
	}
	// Rejected events never leave the store, nor do the redactions
	// Synapse withholds (get_events_as_list).
	rows := res.Rows[:0:0]
	for _, r := range res.Rows {
		if r.Rejected() {
			continue
		}
		if r.Type == typeRedaction {
			withheld, err := rc.withholds(r)
			if err != nil {
				return nil, nil, nil, err
			}
			if withheld {
				continue
			}
		}
		rows = append(rows, r)
	}
	// Step 6: decide about backfill (the caller runs it outside this
	// read transaction), on the events get_events_as_list gives, the
	// rejected and withheld ones left out, and with the curr_topo of
	// before the clamp, as Synapse's get_messages passes to maybe_backfill.
	// Synapse's maybe_backfill returns at once in a room without
	// backward extremities: asking here, in this transaction, spares the
	// backfill's own read (a twentieth of the CPU of reads of a room
	// without gaps). A limit of 0 is no short page (0 < 0): Synapse
	// backfills in the background with limit 0.
	var need *backfillNeed
	if req.Backwards && v.HasGaps() {
		need = backfillDecision(rows, req.Limit, topo())
	}
	// Step 7: next_key.
	next := from.Room
	switch {
	case res.Next != nil:
		next = *res.Next
	case to != nil:
		next = *to
	}
	end := from.WithRoom(next)
	// Step 8: the end of the timeline.
	if !res.Limited && len(rows) == 0 {
		var enc clientEncoder
		reply, err := finishReply(&enc, startReply(&enc), from.String(), "", nil, nil)
		return reply, need, nil, err
	}
	// Step 9: the filter's after-limit part, then visibility.
	visible := rows[:0:0]
	var memberships []string
	for _, r := range rows {
		if req.Filter != nil {
			meta := r.Meta()
			meta.RoomID = roomID // for rooms: [], which takes rows but keeps none
			if req.Filter.ChecksContent() && (meta.HasURL || len(meta.Labels) > 0) {
				// Synapse's Filter.filter sees the event as
				// get_events_as_list gives it: a redacted one pruned, with
				// no url and no labels left (the SQL part saw them).
				red, err := rc.redaction(r)
				if err != nil {
					return nil, nil, nil, err
				}
				if red != nil {
					meta.HasURL, meta.Labels = false, nil
				}
			}
			if !req.Filter.Check(meta) {
				continue
			}
		}
		if req.Admin {
			visible = append(visible, r)
			continue
		}
		ok, membership := rc.visible(r)
		if ok {
			visible = append(visible, r)
			memberships = append(memberships, membership)
		}
	}
	// Steps 10-12: serialise with redactions, prev_content, bundled
	// aggregations and lazy-loaded members.
	// The events are written straight into the reply after its head
	// (see startReply), so the reply is built in one buffer, not copied.
	rc.v.MarkRelated(visible)
	if req.Federation {
		rc.fed = &fedPage{events: map[string]fedSource{}}
	}
	enc := clientEncoder{rc: rc}
	enc.buf = *bytes.NewBuffer(replyBuf(len(visible)*512 + 256))
	chunkAt := startReply(&enc)
	maxReply := bus.MaxPayload
	if h.MaxReply != nil {
		maxReply = h.MaxReply()
	}
	for i, r := range visible {
		mark := enc.buf.Len()
		opts := eventOpts{bundle: true}
		if !req.Admin {
			opts.membership = memberships[i]
		}
		if err := enc.event(r, opts); err != nil {
			return nil, nil, nil, err
		}
		if enc.buf.Len() > maxReply-replyMargin && i > 0 {
			// The reply would pass max_payload: end at the last whole
			// event, with end just after it.
			enc.buf.Truncate(mark)
			visible = visible[:i]
			last := visible[i-1]
			end = from.WithRoom(projections.NextToken(last.Depth, last.Stream, req.Backwards))
			break
		}
		enc.n++
	}
	var state *clientEncoder
	if req.Filter != nil && req.Filter.LazyLoadMembers && len(visible) > 0 {
		var err error
		if state, err = rc.lazyMembers(visible); err != nil {
			return nil, nil, nil, err
		}
	}
	reply, err := finishReply(&enc, chunkAt, from.String(), end.String(), state, gaps(v, visible, from, req.Backwards))
	if state != nil {
		ReleaseReply(state.buf.Bytes()) // copied into the reply
	}
	if f := rc.fed; f != nil {
		f.version, f.from, f.backwards, f.maxReply = strings.Clone(rc.version()), from, req.Backwards, maxReply
		for _, r := range visible {
			f.chunk = append(f.chunk, rowPos{r.Depth, r.Stream})
		}
	}
	return reply, need, rc.fed, err
}

// gapsKey is MSC3871's unstable field.
const gapsKey = "org.matrix.msc3871.gaps"

// gaps lists the events of the chunk whose parents the room does not hold
// (MSC3871): after any backfill, the holes a client may try to fill, with
// the tokens on either side of the event in pagination order. Events at or
// below a purge cut-off are not gaps: that history is gone on purpose.
func gaps(v *projections.RoomView, rows []*projections.Row, from commands.StreamToken, backwards bool) []any {
	if !v.HasGaps() && !v.Purging() {
		// While a purge's janitor runs, a kept event may name a purged
		// one that is not a backward extremity yet: look at the rows.
		return nil
	}
	var out []any
	for _, r := range rows {
		if r.Depth <= v.Floor() {
			continue
		}
		missing := false
		for _, p := range r.Prevs() {
			if !v.HoldsInTimeline(p) {
				missing = true
				break
			}
		}
		if !missing {
			continue
		}
		before := from.WithRoom(commands.RoomToken{Topological: r.Depth, Stream: r.Stream - 1, IsTopological: true}).String()
		after := from.WithRoom(commands.RoomToken{Topological: r.Depth, Stream: r.Stream, IsTopological: true}).String()
		prev, next := before, after
		if backwards {
			prev, next = after, before
		}
		out = append(out, map[string]any{"event_id": r.EventID, "prev_pagination_token": prev, "next_pagination_token": next})
	}
	return out
}

// startReply writes the head of a reply into the chunk's encoder: a
// one-byte map header (fixmap, patched by finishReply once the number of
// keys is known), the "chunk" key and a five-byte array32 header (patched
// with the number of events). It returns where the array header is.
func startReply(c *clientEncoder) int {
	e := c.init()
	c.buf.WriteByte(0x80)
	_ = e.EncodeString("chunk")
	at := c.buf.Len()
	c.buf.Write([]byte{0xdd, 0, 0, 0, 0})
	return at
}

// finishReply completes the reply startReply began, after c's events:
// {chunk, start, end?, state?, gaps?}; end "" is left out, and so are
// empty state and gaps.
func finishReply(c *clientEncoder, chunkAt int, start, end string, state *clientEncoder, gaps []any) ([]byte, error) {
	e := c.init()
	n := 2
	_ = e.EncodeString("start")
	_ = e.EncodeString(start)
	if end != "" {
		n++
		_ = e.EncodeString("end")
		_ = e.EncodeString(end)
	}
	if state != nil && state.n > 0 {
		n++
		_ = e.EncodeString("state")
		_ = e.EncodeArrayLen(state.n)
		c.buf.Write(state.buf.Bytes())
	}
	if len(gaps) > 0 {
		n++
		_ = e.EncodeString(gapsKey)
		if err := e.Encode(gaps); err != nil {
			return nil, err
		}
	}
	out := c.buf.Bytes()
	out[0] = 0x80 | byte(n) // at most 5 keys: a fixmap
	binary.BigEndian.PutUint32(out[chunkAt+1:], uint32(c.n))
	return out, nil
}

// replyBufs keeps the buffers replies were built in, for the next pages:
// a page of 50 events is built in one buffer of about 26 KB, half the
// bytes a read allocated (BenchmarkMessages_Plain), and at thousands of
// reads a second the garbage collector ran every 30 ms.
var replyBufs sync.Pool

// Bounds of the buffers replyBufs keeps: smaller ones would only be
// grown again, bigger ones would hold memory for a rare big page.
const (
	minReplyBuf = 4 << 10
	maxReplyBuf = 1 << 20
)

// replyBuf is an empty buffer of at least n bytes' capacity, reused if
// one is free.
func replyBuf(n int) []byte {
	if b, ok := replyBufs.Get().(*[]byte); ok {
		if cap(*b) >= n {
			return (*b)[:0]
		}
	}
	return make([]byte, 0, n)
}

// ReleaseReply gives back a reply of Messages.Handle once it has been
// sent (bus.Endpoint.Release: the NATS client has copied it by then). The
// caller must not touch the reply afterwards: it becomes the next page.
func ReleaseReply(b []byte) {
	if cap(b) < minReplyBuf || cap(b) > maxReplyBuf {
		return
	}
	b = b[:0]
	replyBufs.Put(&b)
}

// parseTokenParam reads a from or to parameter: nil when absent, null,
// empty, or (from) "END", Synapse's old spelling of "no from"; 400
// M_UNKNOWN "'<key>' parameter is invalid" when it is no stream token.
func parseTokenParam(key string, v any) (*commands.StreamToken, error) {
	if v == nil {
		return nil, nil
	}
	s, ok := v.(string)
	if !ok {
		return nil, commands.Errorf(400, commands.CodeUnknown, "'%s' parameter is invalid", key)
	}
	if s == "" || (key == "from" && s == "END") {
		return nil, nil
	}
	t, err := commands.ParseStreamToken(s)
	if err != nil {
		return nil, commands.Errorf(400, commands.CodeUnknown, "'%s' parameter is invalid", key)
	}
	return &t, nil
}
