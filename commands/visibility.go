package commands

// History visibility (SYNAPSE.md section 3): Synapse's
// filter_and_transform_events_for_client decision for one event, with
// everything it needs already looked up by the caller. Nothing here knows
// about storage: the caller seeks the state after the event (the room's
// m.room.history_visibility, the reader's m.room.member and, for
// m.call.invite, m.room.join_rules) and fills VisibilityInput.
//
// Not modelled: erased senders (deactivation with erase:true). Synapse
// skips the lax shortcut for an erased sender and returns the event pruned
// when the reader was not joined at it; scrollback has no erasure list, so
// every sender is treated as not erased. Also not modelled: the admin-only
// opt-in to soft-failed events and always_include_ids.

// HistoryVisibility values, in Synapse's restrictiveness order (least
// restrictive first, VISIBILITY_PRIORITY).
const (
	VisWorldReadable = "world_readable"
	VisShared        = "shared"
	VisInvited       = "invited"
	VisJoined        = "joined"
)

// Event types the rules look at.
const (
	visTypeMember            = "m.room.member"
	visTypeHistoryVisibility = "m.room.history_visibility"
	visTypeDummy             = "org.matrix.dummy_event"
	visTypeAliases           = "m.room.aliases"
	visTypeCallInvite        = "m.call.invite"
)

// Membership values.
const (
	visMembershipJoin   = "join"
	visMembershipInvite = "invite"
	visMembershipKnock  = "knock"
	visMembershipLeave  = "leave"
	visMembershipBan    = "ban"
)

// visibilityPriority is VISIBILITY_PRIORITY: index = restrictiveness.
var visibilityPriority = map[string]int{VisWorldReadable: 0, VisShared: 1, VisInvited: 2, VisJoined: 3}

// membershipPriority is MEMBERSHIP_PRIORITY: index 0 is "most joined".
var membershipPriority = map[string]int{visMembershipJoin: 0, visMembershipInvite: 1, visMembershipKnock: 2, visMembershipLeave: 3, visMembershipBan: 4}

// VisibilityInput is what the rules need about one event and the reader.
type VisibilityInput struct {
	Type, Sender   string
	IsState        bool
	StateKey       string // when IsState
	OriginServerTS int64
	Outlier        bool
	SoftFailed     bool
	Rejected       bool

	// Content fields the rules read.
	Membership     string // content.membership for m.room.member
	PrevMembership string // prev_content.membership for m.room.member ("" if none)
	// HistoryVisibility is content.history_visibility of an
	// m.room.history_visibility event. The rules do not read it: like
	// Synapse they take the "new" value from the state after the event,
	// which for the room's history_visibility event is the event itself, so
	// VisibilityAfter must already hold it.
	HistoryVisibility     string
	PrevHistoryVisibility string // prev_content.history_visibility ("" if none)

	// State after the event (ignored for outliers, which have none).
	VisibilityAfter     string // history_visibility after the event ("" = missing => shared; invalid => shared)
	UserMembershipAfter string // the reader's membership after the event ("" = no member event)
	JoinRuleAfter       string // join_rule after the event (only read for m.call.invite)
}

// Reader is who reads and what applies to them.
type Reader struct {
	UserID string
	// Peeking: a non-member reading a world_readable room (SYNAPSE.md 1.4:
	// member_event_id is None). A departed user is not peeking.
	Peeking bool
	Ignored map[string]bool // ignored user IDs (m.ignored_user_list)
	Now     int64           // ms
	// MaxLifetime is the room's effective retention max_lifetime in ms
	// (EffectiveRetention); 0 = no retention hiding, unless
	// HasMaxLifetime says that the room's lifetime is 0.
	MaxLifetime int64
	// HasMaxLifetime makes a MaxLifetime of 0 a lifetime (Synapse hides
	// every event sent before now) rather than no policy.
	HasMaxLifetime bool
}

// Visible reports whether the event is shown to the reader, and the
// reader's membership after the event for unsigned.membership (MSC4115:
// the reader's own member event => its content.membership; else
// UserMembershipAfter; no member event => "leave"). membership is "" when
// visible is false.
func Visible(ev VisibilityInput, r Reader) (visible bool, membership string) {
	if !visAllowed(&ev, &r) {
		return false, ""
	}
	if visOwnMember(&ev, r.UserID) {
		membership = ev.Membership
	} else {
		membership = ev.UserMembershipAfter
	}
	if membership == "" {
		membership = visMembershipLeave
	}
	return true, membership
}

// visAllowed is the decision, in the order of Synapse's
// _check_client_allowed_to_see_event (which runs _check_filter_send_to_client
// before the outlier rule; the other order gives the same answers, since no
// filter rule can deny a state m.room.member event). Every rule before the
// lax shortcut only drops, so where the call-invite rule sits among them
// does not change any answer.
func visAllowed(ev *VisibilityInput, r *Reader) bool {
	// Soft-failed events are never relayed to clients; rejected events are
	// never even fetched for them.
	if ev.SoftFailed || ev.Rejected {
		return false
	}
	// _check_filter_send_to_client.
	if !checkFilterSendToClient(ev, r) {
		return false
	}
	// Outliers have no state: only the reader's own out-of-band membership
	// (an invite, or the rejection of one) is shown.
	if ev.Outlier {
		return visOwnMember(ev, r.UserID)
	}
	// Call invites in public rooms would ring everybody.
	if !ev.IsState && ev.Type == visTypeCallInvite && ev.JoinRuleAfter == "public" {
		return false
	}
	vis := visNorm(ev.VisibilityAfter)
	if checkHistoryVisibility(ev, vis, r.Peeking) {
		return true
	}
	// Synapse passes the unadjusted visibility to _check_membership: the
	// less-restrictive rule for the history_visibility event only feeds the
	// lax shortcut above.
	return checkMembership(ev, r.UserID, vis, r.Peeking)
}

// checkFilterSendToClient is _check_filter_send_to_client: false = DENIED.
func checkFilterSendToClient(ev *VisibilityInput, r *Reader) bool {
	if ev.Type == visTypeDummy {
		return false
	}
	if !ev.IsState && r.Ignored[ev.Sender] {
		return false
	}
	// Until MSC2261, alias events cannot be redacted: Synapse hides them all.
	if ev.Type == visTypeAliases {
		return false
	}
	// MSC1763: retention applies to non-state events only.
	if !ev.IsState && (r.MaxLifetime != 0 || r.HasMaxLifetime) && visOlderThan(ev.OriginServerTS, r.Now, r.MaxLifetime) {
		return false
	}
	return true
}

// checkHistoryVisibility is _check_history_visibility: true = ALLOWED
// without looking at membership.
func checkHistoryVisibility(ev *VisibilityInput, vis string, peeking bool) bool {
	// History visibility events on a boundary are shown to both sides: the
	// less restrictive of new and previous applies.
	if ev.Type == visTypeHistoryVisibility {
		prev := visNorm(ev.PrevHistoryVisibility)
		if visibilityPriority[prev] < visibilityPriority[vis] {
			vis = prev
		}
	}
	return vis == VisWorldReadable || (vis == VisShared && !peeking)
}

// checkMembership is _check_membership (the "allowed" half).
func checkMembership(ev *VisibilityInput, userID, vis string, peeking bool) bool {
	var membership string
	if visOwnMember(ev, userID) {
		// The reader's own member event: the "most joined" of new and
		// previous membership, unknown values counting as leave.
		membership = ev.Membership
		if _, ok := membershipPriority[membership]; !ok {
			membership = visMembershipLeave
		}
		prev := ev.PrevMembership
		if _, ok := membershipPriority[prev]; !ok {
			prev = visMembershipLeave
		}
		// Always show the reader their own leave after a join or an invite,
		// so that a rejected invite or a departure is seen.
		if membership == visMembershipLeave && (prev == visMembershipJoin || prev == visMembershipInvite) {
			return true
		}
		if membershipPriority[prev] < membershipPriority[membership] {
			membership = prev
		}
	} else {
		membership = ev.UserMembershipAfter
	}
	if membership == visMembershipJoin {
		return true
	}
	switch {
	case vis == VisJoined:
		return false
	case vis == VisInvited:
		return membership == visMembershipInvite
	case vis == VisShared && peeking:
		return false
	}
	// shared and not peeking, or world_readable.
	return true
}

// visOwnMember reports whether ev is userID's own m.room.member event.
func visOwnMember(ev *VisibilityInput, userID string) bool {
	return ev.IsState && ev.Type == visTypeMember && ev.StateKey == userID
}

// visNorm maps a missing or invalid history_visibility to shared.
func visNorm(v string) string {
	if _, ok := visibilityPriority[v]; ok {
		return v
	}
	return VisShared
}

// RestrictsServers reports whether history visibility vis (in the state
// at an event; "" when there is none, or it is no string) hides the event
// from a server none of whose users is in the room then: "joined" and
// "invited" do, and any other value does, unknown ones included, as in
// Synapse's event_visible_to_server (rust/src/events/filter.rs), which
// compares with those two only. Unlike the rules for clients there is no
// special case for the history_visibility event itself: its own value
// applies.
func RestrictsServers(vis string) bool {
	return vis == VisJoined || vis == VisInvited
}

// LetsServerSee reports whether a user's membership in the state at an
// event whose history visibility vis RestrictsServers lets the user's
// server see the event: "join" does, and "invite" under "invited".
func LetsServerSee(vis, membership string) bool {
	return membership == visMembershipJoin || (vis == VisInvited && membership == visMembershipInvite)
}

// visOlderThan reports ts < now - maxLifetime exactly, as Python's
// unbounded integers compute it, even where now - maxLifetime overflows.
func visOlderThan(ts, now, maxLifetime int64) bool {
	cutoff := now - maxLifetime
	switch {
	case maxLifetime < 0 && cutoff < now: // cutoff > MaxInt64 >= ts
		return true
	case maxLifetime > 0 && cutoff > now: // cutoff < MinInt64 <= ts
		return false
	}
	return ts < cutoff
}

// RetentionPolicy is a room's effective policy; see SYNAPSE.md 9.
type RetentionPolicy struct {
	MinLifetime, MaxLifetime int64 // ms, 0 = unset unless MaxSet
	// MaxSet says that MaxLifetime is given even though it is 0: Synapse
	// tells a max_lifetime of 0 (hide everything sent before now) from
	// none.
	MaxSet bool
}

// Max returns the policy's max_lifetime and whether it has one.
func (p RetentionPolicy) Max() (int64, bool) { return p.MaxLifetime, p.MaxLifetime != 0 || p.MaxSet }

// EffectiveRetention fills a room's m.room.retention values from the server
// default when retention is enabled; disabled => zero policy (no hiding, no
// purging). roomMin and roomMax are the current-state m.room.retention
// values, nil when the key is absent; an event with neither key, or with a
// non-int value, means the room has no policy of its own, and the caller
// passes nil for both. Each nil field is taken from def.
func EffectiveRetention(enabled bool, def RetentionPolicy, roomMin, roomMax *int64) RetentionPolicy {
	if !enabled {
		return RetentionPolicy{}
	}
	p := def
	if roomMin != nil {
		p.MinLifetime = *roomMin
	}
	if roomMax != nil {
		p.MaxLifetime, p.MaxSet = *roomMax, true
	}
	return p
}
