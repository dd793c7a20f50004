package commands

import "strconv"

// Relation is an event's m.relates_to: the event it relates to and how.
type Relation struct {
	RelType string
	EventID string
}

// RelationOf reads content["m.relates_to"] ({rel_type, event_id}); ok is
// false when the event has no well-formed relation.
func RelationOf(content map[string]any) (Relation, bool) {
	rt, _ := content["m.relates_to"].(map[string]any)
	if rt == nil {
		return Relation{}, false
	}
	typ, _ := rt["rel_type"].(string)
	id, _ := rt["event_id"].(string)
	if typ == "" || id == "" || len(typ) > MaxIDLength || len(id) > MaxIDLength {
		return Relation{}, false
	}
	return Relation{RelType: typ, EventID: id}, true
}

// Relation types that scrollback aggregates (SYNAPSE.md 4).
const (
	RelReplace    = "m.replace"
	RelThread     = "m.thread"
	RelReference  = "m.reference"
	RelAnnotation = "m.annotation"
)

// StateSummary is the one content field that reads need from a state event
// of type typ, kept beside the state index so that a visibility check
// needs no event fetch: the membership of m.room.member, the value of
// m.room.history_visibility and m.room.join_rules, the room version of
// m.room.create, and the lifetimes of m.room.retention ("min,max" in ms,
// each empty when absent; "" when the event sets no valid lifetime).
func StateSummary(typ string, content map[string]any) string {
	str := func(k string) string { s, _ := content[k].(string); return s }
	switch typ {
	case "m.room.member":
		return str("membership")
	case "m.room.history_visibility":
		return str("history_visibility")
	case "m.room.join_rules":
		return str("join_rule")
	case "m.room.create":
		if v := str("room_version"); v != "" {
			return v
		}
		return "1"
	case "m.room.retention":
		return retentionSummary(content)
	}
	return ""
}

// retentionSummary follows Synapse's storage of room_retention: only when
// at least one key is present and every present key is an integer.
func retentionSummary(content map[string]any) string {
	var parts [2]string
	found := false
	for i, k := range []string{"min_lifetime", "max_lifetime"} {
		v, present := content[k]
		if !present {
			continue
		}
		n, ok := AsInt(v)
		if !ok {
			return ""
		}
		parts[i] = strconv.FormatInt(n, 10)
		found = true
	}
	if !found {
		return ""
	}
	return parts[0] + "," + parts[1]
}

// ParseRetentionSummary reverses the m.room.retention summary; nil
// pointers for absent values.
func ParseRetentionSummary(s string) (minLifetime, maxLifetime *int64) {
	if s == "" {
		return nil, nil
	}
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			return parseOpt(s[:i]), parseOpt(s[i+1:])
		}
	}
	return nil, nil
}

func parseOpt(s string) *int64 {
	if s == "" {
		return nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return nil
	}
	return &n
}
