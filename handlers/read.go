package handlers

import (
	"bytes"
	"sort"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
)

// readContext is one read's view of a room and of the reader: the
// snapshot, the access decision, and values looked up once per request.
type readContext struct {
	h      *Messages
	v      *projections.RoomView
	roomID string
	req    *MessagesRequest
	now    int64

	departed bool // the reader left and did not forget the room
	peeking  bool // a non-member reading a world_readable room
	leave    projections.StateEntry
	reader   commands.Reader

	roomVersion  string
	versionRead  bool
	versionKnown bool // the room's m.room.create is on its timeline

	// The room's creators (hadPower).
	creatorList  []string
	creatorsRead bool

	// In-memory histories of the two state keys every visibility check
	// reads, when they are short (nil: seek per event).
	visHist, memberHist []projections.StateEntry
	histLoaded          bool

	// fed notes the events written, for a page in the federation format.
	fed *fedPage
}

// maxHistory bounds the state entries a read keeps in memory per key.
const maxHistory = 256

// stateAt answers "the state (type, key) after (depth, stream)" from a
// loaded history, or by a seek.
func (rc *readContext) stateAt(hist []projections.StateEntry, typ, key string, depth, stream int64) string {
	if hist == nil {
		e, _ := rc.v.StateAt(typ, key, depth, stream)
		return e.Summary
	}
	// The last entry at or before the position.
	i := sort.Search(len(hist), func(i int) bool {
		e := hist[i]
		return e.Depth > depth || e.Depth == depth && e.Stream > stream
	})
	if i == 0 {
		return ""
	}
	return hist[i-1].Summary
}

func (rc *readContext) loadHistories() {
	rc.histLoaded = true
	if h, ok := rc.v.StateHistory(typeVisibility, "", maxHistory); ok {
		rc.visHist = nonNil(h)
	}
	if h, ok := rc.v.StateHistory(typeMember, rc.req.UserID, maxHistory); ok {
		rc.memberHist = nonNil(h)
	}
}

func nonNil(h []projections.StateEntry) []projections.StateEntry {
	if h == nil {
		return []projections.StateEntry{}
	}
	return h
}

const (
	typeMember      = "m.room.member"
	typeVisibility  = "m.room.history_visibility"
	typeJoinRules   = "m.room.join_rules"
	typeCreate      = "m.room.create"
	typeRedaction   = "m.room.redaction"
	typePowerLevels = "m.room.power_levels"
	typeRetention   = "m.room.retention"
)

// checkAccess is Synapse's check_user_in_room_or_world_readable with
// allow_departed_users (SYNAPSE.md 1.3): a current join, a leave not
// forgotten, or a currently world_readable room; anything else, unknown
// rooms included, is 403.
func (rc *readContext) checkAccess() error {
	user := rc.req.UserID
	cur, _ := rc.v.CurrentState(typeMember, user)
	switch {
	case cur.Summary == "join":
	case cur.Summary == "leave" && !rc.v.Forgotten(user):
		rc.departed, rc.leave = true, cur
	default:
		vis, _ := rc.v.CurrentState(typeVisibility, "")
		if vis.Summary != commands.VisWorldReadable {
			return commands.Errorf(403, commands.CodeForbidden, "User %s not in room %s, and room previews are disabled", user, rc.roomID)
		}
		rc.peeking = true
	}
	rc.reader = commands.Reader{UserID: user, Peeking: rc.peeking, Ignored: rc.ignored(), Now: rc.now}
	if rc.h.Retention.Enabled {
		ret, _ := rc.v.CurrentState(typeRetention, "")
		roomMin, roomMax := commands.ParseRetentionSummary(ret.Summary)
		rc.reader.MaxLifetime, rc.reader.HasMaxLifetime = commands.EffectiveRetention(true, rc.h.Retention.Default, roomMin, roomMax).Max()
	}
	return nil
}

// leaveClamp is step 4 of get_messages: when the reader's leave event is
// deeper in the past than the page's curr_topo (step 3), the page starts
// at the leave event (inclusive backwards, so it is the first event
// returned).
func (rc *readContext) leaveClamp(currTopo int64) (commands.RoomToken, bool) {
	if rc.leave.Depth < currTopo {
		return commands.RoomToken{Topological: rc.leave.Depth, Stream: rc.leave.Stream, IsTopological: true}, true
	}
	return commands.RoomToken{}, false
}

// visible runs the visibility rules for one row (SYNAPSE.md 3) with the
// state after the event looked up by cursor seeks: O(1) seeks per event,
// whatever the size of the room's state.
func (rc *readContext) visible(r *projections.Row) (bool, string) {
	in := commands.VisibilityInput{
		Type: r.Type, Sender: r.Sender, IsState: r.IsState(), StateKey: r.StateKey,
		OriginServerTS: r.OriginServerTS, SoftFailed: r.SoftFailed(), Rejected: r.Rejected(),
	}
	if !rc.histLoaded {
		rc.loadHistories()
	}
	in.VisibilityAfter = rc.stateAt(rc.visHist, typeVisibility, "", r.Depth, r.Stream)
	in.UserMembershipAfter = rc.stateAt(rc.memberHist, typeMember, rc.req.UserID, r.Depth, r.Stream)
	if r.IsState() {
		switch r.Type {
		case typeMember:
			in.Membership = r.Summary
			if prev, ok := rc.v.StateBefore(typeMember, r.StateKey, r.Depth, r.Stream); ok {
				in.PrevMembership = prev.Summary
			}
		case typeVisibility:
			in.HistoryVisibility = r.Summary
			// prev_content: the event this one replaced, at its own
			// state key (whatever the key, Synapse reads the event's
			// content and its prev_content).
			if prev, ok := rc.v.StateBefore(typeVisibility, r.StateKey, r.Depth, r.Stream); ok {
				in.PrevHistoryVisibility = prev.Summary
			}
		}
	} else if r.Type == "m.call.invite" {
		jr, _ := rc.v.StateAt(typeJoinRules, "", r.Depth, r.Stream)
		in.JoinRuleAfter = jr.Summary
	}
	return commands.Visible(in, rc.reader)
}

// ignored is the request's ignored_users as a set.
func (rc *readContext) ignored() map[string]bool {
	ignored := make(map[string]bool, len(rc.req.IgnoredUsers))
	for _, u := range rc.req.IgnoredUsers {
		ignored[u] = true
	}
	return ignored
}

// version is the room version from m.room.create ("1" without one).
func (rc *readContext) version() string {
	if !rc.versionRead {
		rc.versionRead = true
		rc.roomVersion = "1"
		version, ok := rc.v.Version()
		if ok && version != "" {
			rc.roomVersion = version
		}
		rc.versionKnown = ok
	}
	return rc.roomVersion
}

// redaction is the redaction Synapse applies to r (nil if none), an
// m.room.create never being redacted for reads. As
// _maybe_redact_event_row takes them: the first of r's redactions whose
// sender had the power to redact, else the first of the others that is
// of r's sender's server (commands.RedactionsRechecked). A lone
// redaction of r's sender's server applies either way: the power levels
// are read only for one of another server, or to choose among several.
func (rc *readContext) redaction(r *projections.Row) (*projections.Row, error) {
	if r.Type == typeCreate {
		return nil, nil
	}
	var reds []*projections.Row
	var err error
	rc.v.Redactions(r.EventID, func(id string) bool {
		var red *projections.Row
		if red, err = rc.v.Event(id); red != nil {
			reds = append(reds, red)
		}
		return err == nil
	})
	if err != nil || len(reds) == 0 {
		return nil, err
	}
	if !commands.RedactionsRechecked(rc.version()) || len(reds) == 1 && commands.SameServer(reds[0].Sender, r.Sender) {
		return reds[0], nil
	}
	var unconfirmed *projections.Row
	for _, red := range reds {
		power, err := rc.hadPower(red)
		if err != nil || power {
			return red, err
		}
		if unconfirmed == nil && commands.SameServer(red.Sender, r.Sender) {
			unconfirmed = red
		}
	}
	return unconfirmed, nil
}

// hadPower reports whether red's sender had the power to redact, in the
// room's state before red: its level at least the redact level. In room
// versions that recheck nothing (1 and 2) every redaction counts as such.
func (rc *readContext) hadPower(red *projections.Row) (bool, error) {
	version := rc.version()
	if !commands.RedactionsRechecked(version) {
		return true, nil
	}
	levels, err := rc.levelsBefore(red)
	if err != nil {
		return false, err
	}
	var creators []string
	if levels == nil || commands.CreatorsAboveLevels(version) {
		// The creators matter only without power levels, or above them.
		if creators, err = rc.creators(); err != nil {
			return false, err
		}
	}
	return commands.UserLevel(version, red.Sender, levels, creators) >= commands.NamedLevel(levels, "redact", 50), nil
}

// levelsBefore is the content of the room's m.room.power_levels in the
// state before r (nil when there is none), decoded once and kept between
// reads (levelsCache).
func (rc *readContext) levelsBefore(r *projections.Row) (map[string]any, error) {
	st, ok := rc.v.StateBefore(typePowerLevels, "", r.Depth, r.Stream)
	if !ok {
		return nil, nil
	}
	if levels, ok := rc.h.levels.get(rc.roomID, st.EventID, st.Stream); ok {
		return levels, nil
	}
	row, err := rc.v.StateEvent(st)
	if err != nil || row == nil {
		return nil, err
	}
	levels := contentOf(row.Content)
	if levels == nil {
		levels = map[string]any{}
	}
	rc.h.levels.put(rc.roomID, st.EventID, st.Stream, levels, len(row.Content))
	return levels, nil
}

// creators are the room's creators (commands.Creators), read once a read.
func (rc *readContext) creators() ([]string, error) {
	if rc.creatorsRead {
		return rc.creatorList, nil
	}
	if st, ok := rc.v.CurrentState(typeCreate, ""); ok {
		row, err := rc.v.StateEvent(st)
		if err != nil {
			return nil, err
		}
		if row != nil {
			rc.creatorList = commands.Creators(rc.version(), row.Sender, contentOf(row.Content))
		}
	}
	rc.creatorsRead = true
	return rc.creatorList, nil
}

// withholds reports whether Synapse's get_events_as_list withholds the
// redaction event r from readers: when it names no target where the room's
// version keeps it, when the room does not hold its target (unknown,
// purged, rejected, or in another room; shown once the target arrives),
// and when it redacts m.room.create. The target is read as the projection
// read it (indexEventRelations): where the room's version keeps it, or in
// either place while the room's m.room.create is not on its timeline.
func (rc *readContext) withholds(r *projections.Row) (bool, error) {
	version := rc.version()
	target := r.Redacts
	switch {
	case rc.versionKnown && commands.RedactsInContent(version):
		target = contentRedacts(r.Content)
	case !rc.versionKnown && target == "":
		target = contentRedacts(r.Content)
	}
	if target == "" {
		return true, nil
	}
	t, err := rc.v.Event(target)
	if err != nil || t == nil || t.Rejected() || t.Type == typeCreate {
		return err == nil, err
	}
	if commands.SameServer(r.Sender, t.Sender) {
		return false, nil
	}
	power, err := rc.hadPower(r)
	return !power, err
}

// lazyMembers is lazy_load_members (SYNAPSE.md 5): the member events of
// the chunk's senders in the state after chunk[0].
func (rc *readContext) lazyMembers(chunk []*projections.Row) (*clientEncoder, error) {
	first := chunk[0]
	enc := &clientEncoder{rc: rc}
	// From the reply buffers: page gives it back once the state is copied
	// into the reply. Grown from nothing, it made a third of what
	// lazyMembers allocated (1M ingest scenario).
	enc.buf = *bytes.NewBuffer(replyBuf(minReplyBuf))
	seen := map[string]bool{}
	for _, r := range chunk {
		if seen[r.Sender] {
			continue
		}
		seen[r.Sender] = true
		st, ok := rc.v.StateAt(typeMember, r.Sender, first.Depth, first.Stream)
		if !ok {
			continue
		}
		row, err := rc.v.StateEvent(st)
		if err != nil {
			return nil, err
		}
		if row == nil {
			continue
		}
		if err := enc.event(row, eventOpts{}); err != nil {
			return nil, err
		}
		enc.n++
	}
	return enc, nil
}
