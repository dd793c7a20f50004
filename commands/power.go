package commands

import (
	"errors"
	"math"
	"strconv"
	"strings"
)

// Power levels as the auth rules read them, for the one question the
// service asks of them: whether a redaction's sender had the power to
// redact (RedactionsRechecked).

// Creators are the users a room's m.room.create event makes its creators:
// content.creator before room version 11, the event's sender from v11 on
// (implicit_room_creator), and with MSC4289 (v12) also the users of
// content.additional_creators.
func Creators(roomVersion, createSender string, createContent map[string]any) []string {
	implicit, _ := creatorRules(roomVersion)
	if !implicit {
		if c, ok := createContent["creator"].(string); ok {
			return []string{c}
		}
		return nil
	}
	creators := []string{createSender}
	if CreatorsAboveLevels(roomVersion) {
		extra, _ := createContent["additional_creators"].([]any)
		for _, e := range extra {
			if s, ok := e.(string); ok {
				creators = append(creators, s)
			}
		}
	}
	return creators
}

// creatorRules are a room version's implicit_room_creator (v11 on) and
// msc4289_creator_power_enabled (v12 on, and org.matrix.hydra.11). An
// unstable version is read by the stable version it is based on, the
// number its identifier ends with (org.matrix.msc3757.10 is a v10); an
// identifier without one gets the rules of the newest stable version.
func creatorRules(roomVersion string) (implicit, privileged bool) {
	if roomVersion == "org.matrix.hydra.11" {
		return true, true
	}
	n, ok := versionNumber(roomVersion)
	if !ok {
		return true, true
	}
	return n >= 11, n >= 12
}

// versionNumber is the stable room version roomVersion is or is based on
// ("" is version 1), read from the number its identifier ends with.
func versionNumber(roomVersion string) (int, bool) {
	if roomVersion == "" {
		return 1, true
	}
	n, err := strconv.Atoi(roomVersion[strings.LastIndexByte(roomVersion, '.')+1:])
	return n, err == nil
}

// CreatorsAboveLevels reports whether roomVersion gives its creators a
// power above every level (MSC4289): UserLevel then needs the creators
// even when the room has power levels.
func CreatorsAboveLevels(roomVersion string) bool {
	_, privileged := creatorRules(roomVersion)
	return privileged
}

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
	if isCreator && CreatorsAboveLevels(roomVersion) {
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
	case uint64: // beyond int64 (AsInt took the others)
		return math.MaxInt64
	case bool:
		if x {
			return 1
		}
		return 0
	case float64:
		switch {
		case math.IsNaN(x):
			return def
		case x >= 0x1p63: // Python's int() has no bound: past int64 is above every level
			return math.MaxInt64
		case x < -0x1p63:
			return math.MinInt64
		}
		return int64(x)
	case float32:
		return pythonInt(float64(x), def)
	case string:
		n, err := strconv.ParseInt(strings.ReplaceAll(strings.TrimSpace(x), "_", ""), 10, 64)
		if err != nil && !errors.Is(err, strconv.ErrRange) {
			return def
		}
		return n // saturated when out of range
	}
	return def
}

// RedactionsRechecked reports whether roomVersion's auth rules accept a
// redaction whose sender's level is below the redact level on a condition
// checked when the events are read (event_auth.check_redaction's
// recheck_redaction, from room version 3 on): it then applies only to
// events sent from its sender's own server (SameServer), and the
// redaction itself is withheld from readers
// (events_worker._maybe_redact_event_row and get_events_as_list). A
// redaction whose sender had the power applies to any event. In versions
// 1 and 2 the auth rules decided it already.
func RedactionsRechecked(roomVersion string) bool {
	n, ok := versionNumber(roomVersion)
	return !ok || n >= 3
}

// SameServer reports whether two user IDs are of the same server: the
// same domain, what follows the first ':' (Synapse's get_domain_from_id).
func SameServer(a, b string) bool { return domainOf(a) == domainOf(b) }

// domainOf is Synapse's get_domain_from_id: what follows the first ':'.
func domainOf(id string) string {
	_, domain, _ := strings.Cut(id, ":")
	return domain
}
