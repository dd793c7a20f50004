package commands

// This file holds the content half of the Matrix redaction algorithm (the
// "Redactions" section of each room version: v1-v5, v6-v8, v9-v10, v11), as
// Synapse implements it in prune_event_dict (synapse/events/utils.py) and
// rust/src/events/utils.rs redact, driven by these RoomVersion flags:
//
//	special_case_aliases_auth  v1-v5   m.room.aliases keeps "aliases"
//	restricted_join_rule       v8+     m.room.join_rules keeps "allow"
//	restricted_join_rule_fix   v9+     m.room.member keeps "join_authorised_via_users_server"
//	updated_redaction_rules    v11+    MSC2176 + MSC3821 (see below)
//
// updated_redaction_rules (v11) makes m.room.create keep its whole content,
// m.room.power_levels also keep "invite", m.room.redaction keep
// content.redacts, and m.room.member keep third_party_invite.signed. It also
// stops protecting the top-level origin, membership and prev_state keys.
// msc3389_relation_redactions (keep m.relates_to) is set only in unstable
// room versions and is not applied here.

// redactionRules are the room-version flags the content rules depend on.
type redactionRules struct {
	aliases         bool // special_case_aliases_auth: v1-v5
	joinRuleAllow   bool // restricted_join_rule: v8+
	authorisingUser bool // restricted_join_rule_fix: v9+
	updated         bool // updated_redaction_rules: v11+
}

// redactionRulesFor maps a room version to its redaction rules. A missing
// room version ("") is version 1, as Synapse assumes for an m.room.create
// event without content.room_version. An unstable identifier is read as
// the stable version it is based on, the number it ends with
// ("org.matrix.msc1767.10" is a v10, as in Synapse's room_versions);
// every string that does not end with a number (malformed ones such as
// "v11" too) gets the v11 rules, the newest stable algorithm (room
// version 12 did not change it).
func redactionRulesFor(roomVersion string) redactionRules {
	n, ok := versionNumber(roomVersion)
	switch {
	case !ok || n >= 11:
		return redactionRules{joinRuleAllow: true, authorisingUser: true, updated: true}
	case n <= 5:
		return redactionRules{aliases: true}
	case n <= 7:
		return redactionRules{}
	case n == 8:
		return redactionRules{joinRuleAllow: true}
	default:
		return redactionRules{joinRuleAllow: true, authorisingUser: true}
	}
}

// RedactContent returns the content that survives redaction of an event of
// type typ in a room of version roomVersion (the m.room.create event's
// content.room_version; "" means version 1, and any version string other
// than "1" to "10" gets the v11 rules).
//
// The kept keys per type are:
//
//	m.room.member              membership; v9+: join_authorised_via_users_server;
//	                           v11+: third_party_invite reduced to its "signed" key
//	                           (an object third_party_invite without "signed"
//	                           becomes {}, as in Synapse; a non-object one is dropped)
//	m.room.create              creator; v11+: every key
//	m.room.join_rules          join_rule; v8+: allow
//	m.room.power_levels        ban, events, events_default, kick, redact,
//	                           state_default, users, users_default; v11+: invite
//	m.room.aliases             aliases in v1-v5 only
//	m.room.history_visibility  history_visibility
//	m.room.redaction           v11+: redacts
//
// Every other type keeps nothing. A key is kept whatever the type of its
// value, as the spec and Synapse do.
//
// RedactContent never modifies content and always returns a new, non-nil
// map (empty when nothing survives), so the caller may add or delete its
// keys freely. The values are not deep-copied: a kept map or slice (for
// example power_levels.users, join_rules.allow or third_party_invite.signed)
// is shared with content and must be treated as read-only by both sides.
// The third_party_invite object of a v11 member event is the one exception:
// it is a new map holding only "signed".
func RedactContent(roomVersion, typ string, content map[string]any) map[string]any {
	rules := redactionRulesFor(roomVersion)
	out := map[string]any{}
	keep := func(keys ...string) {
		for _, k := range keys {
			if v, ok := content[k]; ok {
				out[k] = v
			}
		}
	}
	switch typ {
	case "m.room.member":
		keep("membership")
		if rules.authorisingUser {
			keep("join_authorised_via_users_server")
		}
		if rules.updated {
			if tpi, ok := content["third_party_invite"].(map[string]any); ok {
				kept := map[string]any{}
				if signed, ok := tpi["signed"]; ok {
					kept["signed"] = signed
				}
				out["third_party_invite"] = kept
			}
		}
	case "m.room.create":
		if rules.updated {
			for k, v := range content {
				out[k] = v
			}
		} else {
			keep("creator")
		}
	case "m.room.join_rules":
		keep("join_rule")
		if rules.joinRuleAllow {
			keep("allow")
		}
	case "m.room.power_levels":
		keep("ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default")
		if rules.updated {
			keep("invite")
		}
	case "m.room.aliases":
		if rules.aliases {
			keep("aliases")
		}
	case "m.room.history_visibility":
		keep("history_visibility")
	case "m.room.redaction":
		if rules.updated {
			keep("redacts")
		}
	}
	return out
}

// RedactionTarget returns the ID of the event that a redaction event
// redacts, given the event's top-level "redacts" and its content: the
// top-level value when it is non-empty, else content.redacts when that is a
// string, else "".
//
// Room versions 1-10 carry the target at the top level only; there
// content.redacts is ordinary, unprotected content (Synapse even overwrites
// it with the top-level value when serialising for clients), so the
// top-level value must win. Room version 11 moved the authoritative target
// into content.redacts; a top-level copy, where one exists (Synapse adds it
// when serialising for clients), equals it. Preferring the top-level value
// therefore gives Synapse's answer (EventBase.redacts, which reads the
// version's own place) for every well-formed event without needing the
// room version, and it still finds the target of a redacted v11 redaction,
// whose top-level copy is gone but whose content.redacts survives. The one
// divergence: a v11 event whose top-level redacts disagrees with
// content.redacts resolves to the top-level value here, whereas Synapse
// reads content.redacts only.
func RedactionTarget(topLevelRedacts string, content map[string]any) string {
	if topLevelRedacts != "" {
		return topLevelRedacts
	}
	s, _ := content["redacts"].(string)
	return s
}

// RedactionTargetIn is the event a redaction event redacts in a room of
// roomVersion, read where the version keeps it, as Synapse's
// EventBase.redacts reads it: the top-level "redacts" before v11, and
// content.redacts from v11 on (MSC2176). "" when that place holds no
// string: the event then redacts nothing, wherever else a target is
// written (before v11 content.redacts is ordinary content that anybody
// may send, and the auth rules never checked it).
func RedactionTargetIn(roomVersion, topLevelRedacts string, content map[string]any) string {
	if !redactionRulesFor(roomVersion).updated {
		return topLevelRedacts
	}
	s, _ := content["redacts"].(string)
	return s
}

// RedactsInContent reports whether roomVersion keeps a redaction's
// target in content.redacts (v11 on, MSC2176) rather than at the top
// level.
func RedactsInContent(roomVersion string) bool {
	return redactionRulesFor(roomVersion).updated
}

// KeepsTopLevelRedacts reports whether the redaction algorithm of
// roomVersion keeps a redacted event's top-level "redacts" key. It never
// does: "redacts" is absent from the list of top-level keys that survive
// redaction in every room version, v1 to v11 (Synapse's prune_event_dict
// allowed_keys). Before v11 this made a redacted m.room.redaction event
// lose its target entirely; v11 (MSC2176) fixed that by moving the target
// into content.redacts, which RedactContent keeps.
//
// For the client format, Synapse copies the target into the other place
// when it serialises a redaction event: in v11 a redacted redaction event
// is therefore shown with a top-level "redacts" equal to the kept
// content.redacts (RedactionTarget("", RedactContent(...)) gives it), and
// before v11 it shows neither. The function takes the room version so that
// callers need not change if a future version protects the key.
func KeepsTopLevelRedacts(roomVersion string) bool {
	return false
}

// KeepsTopLevelMembership reports whether the redaction algorithm of
// roomVersion keeps an event's legacy top-level "membership" key: before
// v11 it is among the kept top-level keys (with origin and prev_state,
// which the client format drops anyway); v11 (MSC2176) removed it. No
// other top-level key of an Event's Extra survives redaction (Synapse's
// rust/src/events/utils.rs redact).
func KeepsTopLevelMembership(roomVersion string) bool {
	return !redactionRulesFor(roomVersion).updated
}

// prunedPDUKeys are the top-level keys of an event that survive
// redaction in every room version (Synapse's rust/src/events/utils.rs
// redact, allowed_keys); unsigned is rebuilt apart.
var prunedPDUKeys = map[string]bool{
	"event_id": true, "sender": true, "room_id": true, "hashes": true, "signatures": true,
	"content": true, "type": true, "state_key": true, "depth": true, "prev_events": true,
	"origin_server_ts": true, "auth_events": true,
}

// KeepsTopLevelKey reports whether the redaction algorithm of roomVersion
// keeps the event's top-level key: the keys of prunedPDUKeys, and before
// v11 (MSC2176) also prev_state, membership and origin. The federation
// format shows a redacted event with only these.
func KeepsTopLevelKey(roomVersion, key string) bool {
	if prunedPDUKeys[key] {
		return true
	}
	switch key {
	case "prev_state", "membership", "origin":
		return !redactionRulesFor(roomVersion).updated
	}
	return false
}
