package commands

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode"
)

// Limits on what one event may carry. They bound memory per message; the
// transport's max_payload (8 MiB) bounds the whole message.
const (
	MaxIDLength       = 255 // event IDs, room IDs, user IDs, types, state keys (Matrix's own limit)
	MaxPrevEvents     = 100 // prev_events per event
	MaxContentDepth   = 64  // nesting of maps and arrays in content and unsigned
	MaxDepthValue     = 1<<63 - 1
	MaxCommandIDBytes = 64
)

// Event is one room event as it travels on the room log (CONTRACT.md
// section 3). Content and Unsigned are JSON-equivalent values: maps with
// string keys, []any, string, bool, int64, uint64, float64 and nil.
type Event struct {
	EventID        string
	RoomID         string
	Type           string
	Sender         string
	StateKey       *string // non-nil if and only if this is a state event
	OriginServerTS int64
	Depth          int64
	PrevEvents     []string
	Content        map[string]any
	Unsigned       map[string]any
	Redacts        string // top-level redacts of old room versions
	ReceivedTS     int64  // 0: use the log message's timestamp
	Backfilled     bool
	Outlier        bool
	Rejected       bool
	SoftFailed     bool
	// Extra holds the event's other top-level keys that Synapse's client
	// format shows (ClientKeys): a legacy top-level membership, a
	// server's own additions. Nil when there are none.
	Extra map[string]any
}

// ownKeys are the top-level keys an Event reads into its fields, or that
// the client format computes (user_id, age and the copies from
// unsigned), or that Synapse's client format drops (V2_DROP_KEYS in its
// rust/src/events/serialize.rs): auth_events, prev_events, hashes,
// signatures, depth, origin, prev_state. Every other key is Extra.
var ownKeys = map[string]bool{
	"event_id": true, "room_id": true, "type": true, "sender": true, "state_key": true,
	"origin_server_ts": true, "depth": true, "prev_events": true, "content": true,
	"unsigned": true, "redacts": true, "received_ts": true, "backfilled": true,
	"outlier": true, "rejected": true, "soft_failed": true,
	"auth_events": true, "hashes": true, "signatures": true, "origin": true, "prev_state": true,
	"user_id": true, "age": true, "redacted_because": true, "replaces_state": true,
	"prev_content": true, "invite_room_state": true, "knock_room_state": true,
}

// IsState reports whether the event is a state event.
func (e *Event) IsState() bool { return e.StateKey != nil }

// Membership is content.membership of an m.room.member event ("" otherwise).
func (e *Event) Membership() string {
	if e.Type != "m.room.member" {
		return ""
	}
	m, _ := e.Content["membership"].(string)
	return m
}

// Meta is what filters look at.
func (e *Event) Meta() EventMeta {
	m := EventMeta{Type: e.Type, Sender: e.Sender}
	_, m.HasURL = e.Content["url"].(string)
	if ls, ok := e.Content["org.matrix.labels"].([]any); ok {
		for _, l := range ls {
			if s, ok := l.(string); ok {
				m.Labels = append(m.Labels, s)
			}
		}
	}
	return m
}

// PublishedAge is unsigned.age as published (ms), 0 if absent.
func (e *Event) PublishedAge() int64 {
	n, _ := AsInt(e.Unsigned["age"])
	return n
}

// Field errors name the offending field so that dead-letter records say
// exactly what was wrong.
func fieldErr(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrMalformed, field, fmt.Sprintf(format, args...))
}

// EventFromMap validates a decoded log message and builds the Event. It
// checks every required field and its type (CONTRACT.md section 3); the
// error wraps ErrMalformed and names the field. roomID is the room the
// message's subject names.
func EventFromMap(m map[string]any, roomID string) (*Event, error) {
	e := &Event{}
	var err error
	if e.EventID, err = reqString(m, "event_id"); err != nil {
		return nil, err
	}
	if e.RoomID, err = reqString(m, "room_id"); err != nil {
		return nil, err
	}
	if e.RoomID != roomID {
		return nil, fieldErr("room_id", "%s does not match the subject's room %s", Quote(e.RoomID), Quote(roomID))
	}
	if e.Type, err = reqString(m, "type"); err != nil {
		return nil, err
	}
	if e.Sender, err = reqString(m, "sender"); err != nil {
		return nil, err
	}
	if v, ok := m["state_key"]; ok && v != nil {
		s, ok := v.(string)
		if !ok {
			return nil, fieldErr("state_key", "must be a string")
		}
		if len(s) > MaxIDLength {
			return nil, fieldErr("state_key", "longer than %d bytes", MaxIDLength)
		}
		e.StateKey = &s
	}
	if e.OriginServerTS, err = reqInt(m, "origin_server_ts"); err != nil {
		return nil, err
	}
	if e.Depth, err = reqInt(m, "depth"); err != nil {
		return nil, err
	}
	if e.Depth < 1 {
		return nil, fieldErr("depth", "must be >= 1, got %d", e.Depth)
	}
	if v, ok := m["prev_events"]; ok && v != nil {
		list, ok := v.([]any)
		if !ok {
			return nil, fieldErr("prev_events", "must be an array of strings")
		}
		if len(list) > MaxPrevEvents {
			return nil, fieldErr("prev_events", "more than %d entries", MaxPrevEvents)
		}
		e.PrevEvents = make([]string, 0, len(list))
		for _, p := range list {
			s, ok := p.(string)
			if !ok || s == "" || len(s) > MaxIDLength {
				return nil, fieldErr("prev_events", "entries must be event IDs")
			}
			e.PrevEvents = append(e.PrevEvents, s)
		}
	}
	c, ok := m["content"]
	if !ok {
		return nil, fieldErr("content", "required")
	}
	if e.Content, ok = c.(map[string]any); !ok {
		return nil, fieldErr("content", "must be a map")
	}
	if err := checkDepth(e.Content, 1); err != nil {
		return nil, fieldErr("content", "%v", err)
	}
	if v, ok := m["unsigned"]; ok && v != nil {
		if e.Unsigned, ok = v.(map[string]any); !ok {
			return nil, fieldErr("unsigned", "must be a map")
		}
		if err := checkDepth(e.Unsigned, 1); err != nil {
			return nil, fieldErr("unsigned", "%v", err)
		}
		if a, present := e.Unsigned["age"]; present {
			if _, ok := AsInt(a); !ok {
				return nil, fieldErr("unsigned.age", "must be an integer")
			}
		}
	}
	if v, ok := m["redacts"]; ok && v != nil {
		if e.Redacts, ok = v.(string); !ok {
			return nil, fieldErr("redacts", "must be a string")
		}
	}
	if v, ok := m["received_ts"]; ok && v != nil {
		n, ok := AsInt(v)
		if !ok || n < 0 {
			return nil, fieldErr("received_ts", "must be a non-negative integer")
		}
		e.ReceivedTS = n
	}
	for _, f := range []struct {
		name string
		dst  *bool
	}{{"backfilled", &e.Backfilled}, {"outlier", &e.Outlier}, {"rejected", &e.Rejected}, {"soft_failed", &e.SoftFailed}} {
		if v, ok := m[f.name]; ok && v != nil {
			b, ok := v.(bool)
			if !ok {
				return nil, fieldErr(f.name, "must be a boolean")
			}
			*f.dst = b
		}
	}
	for k, v := range m {
		if ownKeys[k] {
			continue
		}
		if e.Extra == nil {
			e.Extra = map[string]any{}
		}
		e.Extra[k] = v
	}
	if err := checkDepth(e.Extra, 1); err != nil {
		return nil, fieldErr("top-level keys", "%v", err)
	}
	return e, nil
}

func reqString(m map[string]any, key string) (string, error) {
	v, ok := m[key]
	if !ok || v == nil {
		return "", fieldErr(key, "required")
	}
	s, ok := v.(string)
	if !ok {
		return "", fieldErr(key, "must be a string")
	}
	if s == "" {
		return "", fieldErr(key, "must not be empty")
	}
	if len(s) > MaxIDLength {
		return "", fieldErr(key, "longer than %d bytes", MaxIDLength)
	}
	return s, nil
}

func reqInt(m map[string]any, key string) (int64, error) {
	v, ok := m[key]
	if !ok || v == nil {
		return 0, fieldErr(key, "required")
	}
	n, ok := AsInt(v)
	if !ok {
		return 0, fieldErr(key, "must be an integer")
	}
	return n, nil
}

// AsInt converts the integer types a decoder produces to int64. Floats with
// an integral value are not accepted: the contract sends integers as
// integers.
func AsInt(v any) (int64, bool) {
	switch n := v.(type) {
	case int64:
		return n, true
	case int:
		return int64(n), true
	case int8:
		return int64(n), true
	case int16:
		return int64(n), true
	case int32:
		return int64(n), true
	case uint8:
		return int64(n), true
	case uint16:
		return int64(n), true
	case uint32:
		return int64(n), true
	case uint64:
		if n > 1<<63-1 {
			return 0, false
		}
		return int64(n), true
	}
	return 0, false
}

func checkDepth(v any, depth int) error {
	if depth > MaxContentDepth {
		return fmt.Errorf("nested deeper than %d levels", MaxContentDepth)
	}
	switch x := v.(type) {
	case map[string]any:
		for _, c := range x {
			if err := checkDepth(c, depth+1); err != nil {
				return err
			}
		}
	case []any:
		for _, c := range x {
			if err := checkDepth(c, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// IsLocalUser reports whether userID (@local:server) belongs to serverName.
func IsLocalUser(userID, serverName string) bool {
	_, server, ok := strings.Cut(userID, ":")
	return ok && strings.HasPrefix(userID, "@") && server == serverName
}

// ValidRoomID reports whether s looks like a Matrix room ID (!opaque:server,
// or !opaque for room version 12).
func ValidRoomID(s string) bool {
	if len(s) < 2 || len(s) > MaxIDLength || s[0] != '!' {
		return false
	}
	// Room version 12 IDs carry no server part; older ones are !opaque:server.
	local, server, hasServer := strings.Cut(s[1:], ":")
	return local != "" && (!hasServer || server != "")
}

// LegalRoomID reports whether s is a room ID that Synapse's admin room
// APIs take (RoomID.is_valid: "<id> is not a legal room ID" otherwise),
// within ValidRoomID: !opaque:server with a server name of Synapse's
// grammar (parse_and_validate_server_name: a DNS name of letters, digits
// and hyphens in dot-separated labels, or an IPv6 literal in brackets,
// then an optional :port), or, for room version 12, ! and a 43-character
// unpadded URL-safe base64 hash.
func LegalRoomID(s string) bool {
	if !ValidRoomID(s) {
		return false
	}
	local, server, hasServer := strings.Cut(s[1:], ":")
	if !hasServer {
		// ROOM_ID_PATTERN_DOMAINLESS ends with Python's "$", which also
		// matches before a final newline.
		local = strings.TrimSuffix(local, "\n")
		return len(local) == 43 && strings.Trim(local, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") == ""
	}
	return ValidServerName(server)
}

// pyInt reports whether Python's int() takes s: surrounding whitespace,
// an optional sign, then decimal digits (any Unicode ones) with single
// underscores between them. Synapse's parse_server_name reads a port so.
func pyInt(s string) bool {
	s = strings.TrimFunc(s, unicode.IsSpace)
	if s != "" && (s[0] == '+' || s[0] == '-') {
		s = s[1:]
	}
	digit := false // the previous rune was a digit
	for _, r := range s {
		switch {
		case unicode.IsDigit(r):
			digit = true
		case r == '_' && digit:
			digit = false
		default:
			return false
		}
	}
	return digit
}

// ValidServerName reports whether s is a server name as Synapse's
// parse_and_validate_server_name takes it: host[:port], the host an IPv6
// literal in brackets or dot-separated labels of letters, digits and
// hyphens, the port digits.
func ValidServerName(s string) bool {
	host := s
	if !strings.HasSuffix(s, "]") {
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			host = s[:i]
			if !pyInt(s[i+1:]) {
				return false
			}
		}
	}
	if strings.HasPrefix(host, "[") {
		addr, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
		return strings.HasSuffix(host, "]") && err == nil && addr.Is6()
	}
	for _, label := range strings.Split(host, ".") {
		if label == "" || strings.Trim(label, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-") != "" {
			return false
		}
	}
	return true
}

// ValidUserID reports whether s looks like a Matrix user ID (@local:server).
func ValidUserID(s string) bool {
	if len(s) < 4 || len(s) > MaxIDLength || s[0] != '@' {
		return false
	}
	local, server, ok := strings.Cut(s[1:], ":")
	return ok && local != "" && server != ""
}
