package commands

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrInvalidToken is wrapped by every error of ParseRoomToken and
// ParseStreamToken. Callers map it to 400 M_UNKNOWN "'from' parameter is
// invalid" (or "'to' ...") as Synapse does (SYNAPSE.md 1.1, 2.1, 2.2).
var ErrInvalidToken = errors.New("invalid stream token")

// StreamTokenFields is the number of "_"-separated fields of a Synapse
// StreamToken (SYNAPSE.md 2.2).
const StreamTokenFields = 13

// Indexes into StreamToken.Rest of the multi-writer fields, which accept the
// "m..." form besides a non-negative integer. They are the fields 3, 7 and
// 12 of the full 13-field token (the room key is field 0).
const (
	RestReceipt          = 2  // receipt_key
	RestDeviceList       = 6  // device_list_key
	RestQuarantinedMedia = 11 // quarantined_media_key
)

// maxTokenInError bounds how much of a hostile token is quoted in an error.
const maxTokenInError = 64

func invalidToken(what, s string) error {
	if len(s) > maxTokenInError {
		s = s[:maxTokenInError] + "..."
	}
	return fmt.Errorf("%w: %s %q", ErrInvalidToken, what, s)
}

// RoomToken is a position between events in a room's timeline
// (SYNAPSE.md 2.1). The zero value is the live token "s0".
//
// RoomToken is comparable: two tokens parsed from texts that Synapse would
// serialise identically are ==.
type RoomToken struct {
	Topological   int64 // depth; meaningful only when IsTopological
	Stream        int64 // stream ordering; may be negative (backfilled events)
	IsTopological bool  // "t<topo>-<stream>" form; else live "s<stream>"

	// multi is the canonical text of a multi-writer "m..." token that
	// still names at least one writer ahead of Stream, so that String
	// gives back what Synapse would; "" otherwise.
	multi string
}

// ParseRoomToken parses a room stream token: "s<stream>",
// "t<topological>-<stream>" (split at the first '-' after the 't', so
// "t5--17" is topological 5, stream -17) or the multi-writer form
// "m<min_pos>~<instance_id>.<pos>~...". Integers are decimal with an
// optional sign and must fit in an int64; spaces, underscores and other
// characters are rejected.
//
// A multi-writer token is read as the live token s<min_pos> (scrollback is
// a single writer) but remembers its writers so that String gives the same
// text Synapse would send back. Every listed pos must be greater than
// min_pos; empty parts ("m5~") are skipped. Errors wrap ErrInvalidToken.
func ParseRoomToken(s string) (RoomToken, error) {
	if s == "" {
		return RoomToken{}, invalidToken("room key", s)
	}
	switch s[0] {
	case 's':
		n, ok := parseInt(s[1:])
		if !ok {
			return RoomToken{}, invalidToken("room key", s)
		}
		return RoomToken{Stream: n}, nil
	case 't':
		rest := s[1:]
		i := strings.IndexByte(rest, '-')
		if i < 0 {
			return RoomToken{}, invalidToken("room key", s)
		}
		topo, ok1 := parseInt(rest[:i])
		stream, ok2 := parseInt(rest[i+1:])
		if !ok1 || !ok2 {
			return RoomToken{}, invalidToken("room key", s)
		}
		return RoomToken{Topological: topo, Stream: stream, IsTopological: true}, nil
	case 'm':
		minPos, entries, ok := parseMulti(s[1:])
		if !ok {
			return RoomToken{}, invalidToken("room key", s)
		}
		t := RoomToken{Stream: minPos}
		if entries != "" {
			t.multi = "m" + strconv.FormatInt(minPos, 10) + "~" + entries
		}
		return t, nil
	}
	return RoomToken{}, invalidToken("room key", s)
}

// String serialises the token as Synapse does: "t%d-%d" when topological,
// the multi-writer "m..." text when it was parsed from one that names a
// writer ahead of its minimum, else "s%d".
func (t RoomToken) String() string {
	if t.IsTopological {
		b := make([]byte, 0, 42)
		b = append(b, 't')
		b = strconv.AppendInt(b, t.Topological, 10)
		b = append(b, '-')
		b = strconv.AppendInt(b, t.Stream, 10)
		return string(b)
	}
	if t.multi != "" {
		return t.multi
	}
	return "s" + strconv.FormatInt(t.Stream, 10)
}

// Less reports whether t sorts strictly before o as a position: when both
// tokens are topological it compares (Topological, Stream)
// lexicographically, which is the order of /messages pages; otherwise
// (a live token is involved) it compares Stream only, as Synapse's
// pagination bounds do for live tokens (SYNAPSE.md 2.3).
func (t RoomToken) Less(o RoomToken) bool {
	if t.IsTopological && o.IsTopological {
		if t.Topological != o.Topological {
			return t.Topological < o.Topological
		}
	}
	return t.Stream < o.Stream
}

// IsBeforeOrEq is Synapse's RoomStreamToken.is_before_or_eq for a single
// writer: t.Stream <= o.Stream, ignoring the topological parts. It is the
// test of the early bail of /messages (SYNAPSE.md 2.4).
func (t RoomToken) IsBeforeOrEq(o RoomToken) bool {
	return t.Stream <= o.Stream
}

// StreamToken is Synapse's 13-field "_"-joined token (SYNAPSE.md 2.2).
// Room is field 0; Rest holds the 12 others as text, in the form Synapse
// would serialise them (so that a parsed token's String is what Synapse
// would send back). StreamToken is comparable.
type StreamToken struct {
	Room RoomToken
	Rest [StreamTokenFields - 1]string
}

// StartToken is Synapse's StreamToken.START: room key s0 and twelve zeros,
// "s0_0_0_0_0_0_0_0_0_0_0_0_0". Treat it as a constant.
var StartToken = StreamToken{Rest: [StreamTokenFields - 1]string{"0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0"}}

// ParseStreamToken parses a full stream token. The text is split on '_';
// fewer than 13 fields are padded with "0", more than 13 are invalid, the
// empty token is invalid. Field 0 is parsed by ParseRoomToken. The plain
// integer fields accept what Python's int() accepts without whitespace or
// underscores (an optional sign and decimal digits, within int64); the
// multi-writer fields (RestReceipt, RestDeviceList, RestQuarantinedMedia)
// accept a non-negative decimal integer or the "m<min>~<id>.<pos>~..."
// form. Every field is kept in the form Synapse serialises it to ("007"
// becomes "7", "m5~" becomes "5"). Errors wrap ErrInvalidToken.
func ParseStreamToken(s string) (StreamToken, error) {
	if s == "" {
		return StreamToken{}, invalidToken("token", s)
	}
	if strings.Count(s, "_") >= StreamTokenFields {
		return StreamToken{}, invalidToken("token with more than 13 fields", s)
	}
	var t StreamToken
	room, rest, more := strings.Cut(s, "_")
	r, err := ParseRoomToken(room)
	if err != nil {
		return StreamToken{}, err
	}
	t.Room = r
	i := 0
	for ; more; i++ {
		var f string
		f, rest, more = strings.Cut(rest, "_")
		v, ok := parseRestField(i, f)
		if !ok {
			return StreamToken{}, invalidToken("field "+strconv.Itoa(i+1)+" of", s)
		}
		t.Rest[i] = v
	}
	for ; i < len(t.Rest); i++ {
		t.Rest[i] = "0"
	}
	return t, nil
}

// String serialises the token with all 13 fields.
func (t StreamToken) String() string {
	var b strings.Builder
	room := t.Room.String()
	n := len(room)
	for _, f := range t.Rest {
		n += 1 + len(f)
	}
	b.Grow(n)
	b.WriteString(room)
	for _, f := range t.Rest {
		b.WriteByte('_')
		if f == "" {
			// Only a hand-built token has an empty field; Synapse
			// would have 0 there.
			b.WriteByte('0')
			continue
		}
		b.WriteString(f)
	}
	return b.String()
}

// WithRoom returns a copy of t with its room key replaced by r (Synapse's
// copy_and_replace(ROOM, r)); the other twelve fields are kept.
func (t StreamToken) WithRoom(r RoomToken) StreamToken {
	t.Room = r
	return t
}

func isMultiWriterRest(i int) bool {
	return i == RestReceipt || i == RestDeviceList || i == RestQuarantinedMedia
}

// parseRestField validates field i (0-based within Rest) and returns its
// canonical text.
func parseRestField(i int, f string) (string, bool) {
	if isMultiWriterRest(i) {
		// MultiWriterStreamToken.parse: a leading digit means a plain
		// integer, 'm' the multi-writer form, anything else is invalid.
		if f == "" {
			return "", false
		}
		if f[0] >= '0' && f[0] <= '9' {
			n, ok := parseInt(f)
			if !ok {
				return "", false
			}
			return strconv.FormatInt(n, 10), true
		}
		if f[0] != 'm' {
			return "", false
		}
		minPos, entries, ok := parseMulti(f[1:])
		if !ok {
			return "", false
		}
		if entries == "" {
			return strconv.FormatInt(minPos, 10), true
		}
		return "m" + strconv.FormatInt(minPos, 10) + "~" + entries, true
	}
	n, ok := parseInt(f)
	if !ok {
		return "", false
	}
	return strconv.FormatInt(n, 10), true
}

// parseInt parses an optionally signed decimal int64: what Python's int()
// accepts, minus whitespace, underscores and non-ASCII digits.
func parseInt(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	digits := s
	if digits[0] == '+' || digits[0] == '-' {
		digits = digits[1:]
	}
	if digits == "" {
		return 0, false
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, false
	}
	return n, true
}

// maxMultiEntries bounds the writers of one multi-writer token (Synapse
// deployments have a handful of event persisters).
const maxMultiEntries = 64

// parseMulti parses the part of a multi-writer token after the 'm':
// "<min>~<id>.<pos>~<id>.<pos>...". As in Synapse, a repeated instance id
// keeps its first place and its last position, every resulting position
// must be greater than min, and empty parts are skipped. It returns min and
// the canonical "<id>.<pos>~..." entries ("" when there are none).
func parseMulti(s string) (minPos int64, entries string, ok bool) {
	head, rest, _ := strings.Cut(s, "~")
	minPos, ok = parseInt(head)
	if !ok {
		return 0, "", false
	}
	type entry struct{ id, pos int64 }
	var list []entry
	for rest != "" {
		var part string
		part, rest, _ = strings.Cut(rest, "~")
		if part == "" {
			continue
		}
		k, v, found := strings.Cut(part, ".")
		if !found || strings.IndexByte(v, '.') >= 0 {
			return 0, "", false
		}
		id, ok1 := parseInt(k)
		pos, ok2 := parseInt(v)
		if !ok1 || !ok2 {
			return 0, "", false
		}
		dup := false
		for j := range list {
			if list[j].id == id {
				list[j].pos = pos
				dup = true
				break
			}
		}
		if !dup {
			if len(list) >= maxMultiEntries {
				return 0, "", false
			}
			list = append(list, entry{id, pos})
		}
	}
	if len(list) == 0 {
		return minPos, "", true
	}
	var b []byte
	for j, e := range list {
		if e.pos <= minPos {
			return 0, "", false
		}
		if j > 0 {
			b = append(b, '~')
		}
		b = strconv.AppendInt(b, e.id, 10)
		b = append(b, '.')
		b = strconv.AppendInt(b, e.pos, 10)
	}
	return minPos, string(b), true
}
