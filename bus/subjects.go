package bus

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxSubjectLength bounds every subject the service builds or accepts:
// nats-server drops connections that send subjects of about 4 KB.
const MaxSubjectLength = 1024

// ErrBadSubject is returned for subjects the service cannot use.
var ErrBadSubject = errors.New("invalid subject")

// RoomKey returns the <rk> of a room: its ID's UTF-8 bytes in unpadded
// base64url (CONTRACT.md section 2).
func RoomKey(roomID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(roomID))
}

// RoomIDFromKey reverses RoomKey; it fails for keys that are not canonical
// unpadded base64url of a non-empty UTF-8 string.
func RoomIDFromKey(rk string) (string, error) {
	b, err := base64.RawURLEncoding.Strict().DecodeString(rk)
	// The decoder skips '\r' and '\n' even when strict: a key is the one
	// spelling RoomKey gives, or two subjects would name one room.
	if err != nil || len(b) == 0 || !utf8.Valid(b) || base64.RawURLEncoding.EncodeToString(b) != rk {
		return "", fmt.Errorf("%w: room key %q is not base64url of a room ID", ErrBadSubject, rk)
	}
	return string(b), nil
}

// Subjects builds the service's subject names under one prefix
// (nats.subject_prefix, "sb" by default).
type Subjects struct{ Prefix string }

// Room is sb.room.<rk>.<kind>.
func (s Subjects) Room(roomID, kind string) string {
	return s.Prefix + ".room." + RoomKey(roomID) + "." + kind
}

// RoomWildcard is sb.room.>, the stream's subjects.
func (s Subjects) RoomWildcard() string { return s.Prefix + ".room.>" }

// API is sb.api.<name> (e.g. "purge_status").
func (s Subjects) API(name string) string { return s.Prefix + ".api." + name }

// APIRoom is sb.api.room.<rk>.<endpoint>.
func (s Subjects) APIRoom(roomID, endpoint string) string {
	return s.Prefix + ".api.room." + RoomKey(roomID) + "." + endpoint
}

// APIRoomWildcard is sb.api.room.*.<endpoint>, the micro endpoint subject.
func (s Subjects) APIRoomWildcard(endpoint string) string {
	return s.Prefix + ".api.room.*." + endpoint
}

// Backfill is sb.backfill.
func (s Subjects) Backfill() string { return s.Prefix + ".backfill" }

// HS is sb.hs.<name>, answered by homeserver workers.
func (s Subjects) HS(name string) string { return s.Prefix + ".hs." + name }

// DeadLetter is sb.deadletter.<kind>: where the service announces log
// messages it rejected (core NATS, not stored in the log's stream).
func (s Subjects) DeadLetter(kind string) string { return s.Prefix + ".deadletter." + kind }

// ParseRoomSubject splits sb.room.<rk>.<kind> into the room ID and kind.
func (s Subjects) ParseRoomSubject(subject string) (roomID, kind string, err error) {
	rest, ok := strings.CutPrefix(subject, s.Prefix+".room.")
	if !ok {
		return "", "", fmt.Errorf("%w: %q is not under %s.room", ErrBadSubject, subject, s.Prefix)
	}
	rk, kind, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(kind, ".") {
		return "", "", fmt.Errorf("%w: %q is not %s.room.<rk>.<kind>", ErrBadSubject, subject, s.Prefix)
	}
	roomID, err = RoomIDFromKey(rk)
	if err != nil {
		return "", "", err
	}
	return roomID, kind, nil
}

// ParseAPIRoomSubject returns the room ID of sb.api.room.<rk>.<endpoint>.
func (s Subjects) ParseAPIRoomSubject(subject string) (string, error) {
	rest, ok := strings.CutPrefix(subject, s.Prefix+".api.room.")
	if !ok {
		return "", fmt.Errorf("%w: %q", ErrBadSubject, subject)
	}
	rk, _, _ := strings.Cut(rest, ".")
	return RoomIDFromKey(rk)
}

// ValidSubject reports whether subject can be published: non-empty tokens,
// no wildcards or white space, within MaxSubjectLength.
func ValidSubject(subject string) bool {
	if subject == "" || len(subject) > MaxSubjectLength {
		return false
	}
	for _, tok := range strings.Split(subject, ".") {
		if tok == "" || tok == "*" || tok == ">" || strings.ContainsAny(tok, " \t\r\n") {
			return false
		}
	}
	return true
}
