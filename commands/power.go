package commands

import (
	"math"
	"strconv"
	"strings"
)

// Power levels as the auth rules read them, for the one question the
// service asks of them: whether a redaction applies to its target
// (RedactionApplies).

// Creators are the users a room's m.room.create event makes its creators:
// content.creator before room version 11, the event's sender from v11 on
// (implicit_room_creator), and from v12 on also the users of
// content.additional_creators (MSC4289).
func Creators(roomVersion, createSender string, createContent map[string]any) []string {
	switch roomVersion {
	case "", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10":
		if c, ok := createContent["creator"].(string); ok {
			return []string{c}
		}
		return nil
	}
	creators := []string{createSender}
	if privilegedCreators(roomVersion) {
		extra, _ := createContent["additional_creators"].([]any)
		for _, e := range extra {
			if s, ok := e.(string); ok {
				creators = append(creators, s)
			}
		}
	}
	return creators
}

// privilegedCreators reports whether roomVersion gives its creators a
// power above every level (MSC4289, room version 12).
func privilegedCreators(roomVersion string) bool { return roomVersion == "12" }

// UserLevel is Synapse's get_user_power_level: from room version 12 a
// creator's power is above every level (math.MaxInt64); otherwise, with
// power levels (the content of m.room.power_levels, nil when the room has
// none), users[user], else users_default, else 0; without them a creator
// has 100 and everyone else 0.
func UserLevel(roomVersion, user string, powerLevels map[string]any, creators []string) int64 {
	isCreator := false
	for _, c := range creators {
		if c == user {
			isCreator = true
		}
	}
	if isCreator && privilegedCreators(roomVersion) {
		return math.MaxInt64
	}
	if powerLevels == nil {
		if isCreator {
			return 100
		}
		return 0
	}
	users, _ := powerLevels["users"].(map[string]any)
	if l, ok := users[user]; ok && l != nil {
		return pythonInt(l, 0)
	}
	return NamedLevel(powerLevels, "users_default", 0)
}

// NamedLevel is Synapse's get_named_level: powerLevels[name] as an
// integer, def when it is absent or null, or when the room has no power
// levels (powerLevels nil).
func NamedLevel(powerLevels map[string]any, name string, def int64) int64 {
	l, ok := powerLevels[name]
	if !ok || l == nil {
		return def
	}
	return pythonInt(l, def)
}

// pythonInt is Python's int() of a level, as the auth rules take it
// before room version 10 enforced integers: a float is truncated, a
// bool is 0 or 1, a string is parsed (spaces around it allowed). A value
// int() refuses, with which Synapse's check fails, counts as def.
func pythonInt(v any, def int64) int64 {
	if n, ok := AsInt(v); ok {
		return n
	}
	switch x := v.(type) {
	case bool:
		if x {
			return 1
		}
		return 0
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return def
		}
		return int64(max(min(x, math.MaxInt64), math.MinInt64))
	case float32:
		return pythonInt(float64(x), def)
	case string:
		n, err := strconv.ParseInt(strings.ReplaceAll(strings.TrimSpace(x), "_", ""), 10, 64)
		if err != nil {
			return def
		}
		return n
	}
	return def
}

// RedactionApplies reports whether Synapse applies a redaction to its
// target. Its auth rules (event_auth.check_redaction) accept a redaction
// whose sender's level is below the redact level, from room version 3 on,
// on a condition checked when the events are read (recheck_redaction):
// it then applies only to events sent from its sender's own server, the
// same domain in their user IDs (events_worker._maybe_redact_event_row),
// and the redaction itself is withheld from readers. In versions 1 and 2
// the auth rules decided it already.
func RedactionApplies(roomVersion string, senderLevel, redactLevel int64, redactionSender, targetSender string) bool {
	return senderLevel >= redactLevel || !RedactionNeedsPower(roomVersion, redactionSender, targetSender)
}

// RedactionNeedsPower reports whether a redaction by redactionSender of
// an event of targetSender applies only if its sender had the power to
// redact: from room version 3 on, across servers (see RedactionApplies).
// A reader asks it first, and looks up levels only when it is true.
func RedactionNeedsPower(roomVersion, redactionSender, targetSender string) bool {
	switch roomVersion {
	case "", "1", "2":
		return false
	}
	return domainOf(redactionSender) != domainOf(targetSender)
}

// domainOf is Synapse's get_domain_from_id: what follows the first ':'.
func domainOf(id string) string {
	_, domain, _ := strings.Cut(id, ":")
	return domain
}
