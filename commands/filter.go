package commands

import (
	"encoding/json"
	"slices"
	"strings"
	"unicode/utf8"
)

// Limits ParseFilter enforces on a filter, against hostile input: PreLimit
// and Check scan the filter's lists for every row a page reads. Exceeding
// one is 400 M_INVALID_PARAM. Synapse has no such limits (the URL length
// bounds its filters); these are far above what clients send.
const (
	// MaxFilterListLen is the most entries one list field may hold
	// (types, not_types, senders, ...), counting entries that are not
	// strings.
	MaxFilterListLen = 1000
	// MaxFilterStringLen is the longest string entry of a list field, in
	// bytes.
	MaxFilterStringLen = 1000
	// MaxFilterBytes is the most bytes all string entries of all list
	// fields may hold together.
	MaxFilterBytes = 8 << 10
)

// EventMeta is what filters look at for one event (no content decoding
// needed).
type EventMeta struct {
	Type   string
	Sender string
	// HasURL reports whether content.url is a string (Synapse's
	// events.contains_url column).
	HasURL bool
	// Labels are the string entries of content["org.matrix.labels"] when
	// it is an array.
	Labels []string
	// RoomID is the event's room. When it is "" the filter's rooms and
	// not_rooms are not checked (every event of one /messages request is
	// in the same room).
	RoomID string
}

// Filter is a RoomEventFilter as /messages uses it (SYNAPSE.md 1.2). Build
// it with ParseFilter, which precompiles the type patterns, and do not
// change its fields afterwards; a hand-built Filter works too (more slowly
// for wildcard types). A nil *Filter accepts every event. PreLimit and
// Check do not modify the Filter, so one Filter may be shared by
// goroutines.
//
// For Types, Senders, Rooms and Labels nil means absent (no constraint)
// and an empty list means "none": PreLimit lets everything through (the
// SQL adds no clause) and Check rejects everything. For the not_ lists nil
// and empty are the same.
type Filter struct {
	Types, NotTypes     []string
	Senders, NotSenders []string
	Rooms, NotRooms     []string
	Labels, NotLabels   []string // org.matrix.labels, org.matrix.not_labels
	// ContainsURL is nil when absent (or not a boolean).
	ContainsURL *bool
	// LazyLoadMembers is lazy_load_members, true when Python would find
	// it truthy.
	LazyLoadMembers bool
	// FederationFormat is event_format == "federation": the caller then
	// answers with raw PDUs, as with ?raw (SYNAPSE.md 1.1 step 4).
	FederationFormat bool
	// RelatedBySenders and RelatedByRelTypes (MSC3440) keep the events
	// that some other event relates to, from one of those senders and
	// with one of those relation types (one relation meeting both; an
	// empty list constrains nothing, as Synapse finds it falsy). Only the
	// store knows an event's relations: PreLimit and Check do not look at
	// them, and a reader asks FiltersRelations.
	RelatedBySenders, RelatedByRelTypes []string
	// relatedByNothing: a related_by_* list of only non-strings, which no
	// relation meets (RelatedByNothing).
	relatedByNothing bool

	// sqlTypes and sqlNotTypes are Types and NotTypes compiled for
	// PreLimit by ParseFilter; compiled is false for a hand-built Filter,
	// which PreLimit then interprets directly.
	sqlTypes, sqlNotTypes []sqlMatcher
	compiled              bool
}

// errFilterNotObject is Synapse's answer to a filter that is not JSON.
func errFilterNotObject() *Error {
	return Errorf(400, CodeNotJSON, "Query parameter filter must be a valid JSON object")
}

// ParseFilter builds a Filter from a decoded JSON or MessagePack value
// (maps with string keys, []any, string, bool, numbers, nil).
//
// A value Python finds falsy (nil, false, 0, "", an empty map or list)
// gives (nil, nil): no filter at all, as in Synapse. Any other value that
// is not a map is 400 M_NOT_JSON "Query parameter filter must be a valid
// JSON object" (Synapse crashes with a 500 there).
//
// Wrongly typed fields are tolerated and never panic: a list field whose
// value is a string lists its characters, as Python iterates it ("types":
// "m.room.message" matches no type, "types": "a*" every type); one that is
// neither a string nor an array is treated as absent; entries of a list that are
// not strings are dropped (they could never match an event; the list
// stays non-nil, so "types": [5] rejects everything like "types": []);
// contains_url is only read when it is a boolean; lazy_load_members uses
// Python truthiness; null is absent everywhere. Unknown fields, limit and
// include_redundant_members are ignored. List sizes are bounded by
// MaxFilterListLen, MaxFilterStringLen and MaxFilterBytes
// (400 M_INVALID_PARAM).
func ParseFilter(v any) (*Filter, error) {
	switch m := v.(type) {
	case map[string]any:
		if len(m) == 0 {
			return nil, nil
		}
		return parseFilterFields(func(k string) any { return m[k] })
	case map[any]any:
		if len(m) == 0 {
			return nil, nil
		}
		return parseFilterFields(func(k string) any { return m[k] })
	}
	if !Truthy(v) {
		return nil, nil
	}
	return nil, errFilterNotObject()
}

func parseFilterFields(get func(string) any) (*Filter, error) {
	f := &Filter{}
	total := 0
	lists := []struct {
		name string
		dst  *[]string
	}{
		{"types", &f.Types},
		{"not_types", &f.NotTypes},
		{"senders", &f.Senders},
		{"not_senders", &f.NotSenders},
		{"rooms", &f.Rooms},
		{"not_rooms", &f.NotRooms},
		{"org.matrix.labels", &f.Labels},
		{"org.matrix.not_labels", &f.NotLabels},
		{"related_by_senders", &f.RelatedBySenders},
		{"related_by_rel_types", &f.RelatedByRelTypes},
	}
	for _, l := range lists {
		v := get(l.name)
		list, err := stringList(l.name, v, &total)
		if err != nil {
			return nil, err
		}
		*l.dst = list
		if raw, isList := v.([]any); isList && len(raw) > 0 && len(list) == 0 && (l.name == "related_by_senders" || l.name == "related_by_rel_types") {
			// [5]: a constraint no relation meets (Synapse's SQL compares
			// with 5), not an empty list, which constrains nothing.
			f.relatedByNothing = true
		}
	}
	if total > MaxFilterBytes {
		return nil, Errorf(400, CodeInvalidParam, "filter is too large: its lists hold more than %d bytes", MaxFilterBytes)
	}
	if b, ok := get("contains_url").(bool); ok {
		f.ContainsURL = &b
	}
	f.LazyLoadMembers = Truthy(get("lazy_load_members"))
	if s, ok := get("event_format").(string); ok && s == "federation" {
		f.FederationFormat = true
	}
	f.sqlTypes = compileSQLTypes(f.Types)
	f.sqlNotTypes = compileSQLTypes(f.NotTypes)
	f.compiled = true
	return f, nil
}

// stringList reads one list field; see ParseFilter for the rules.
func stringList(name string, v any, total *int) ([]string, error) {
	switch l := v.(type) {
	case []any:
		if len(l) > MaxFilterListLen {
			return nil, errListTooLong(name)
		}
		out := make([]string, 0, len(l))
		for _, e := range l {
			s, ok := e.(string)
			if !ok {
				continue
			}
			if len(s) > MaxFilterStringLen {
				return nil, errEntryTooLong(name)
			}
			*total += len(s)
			out = append(out, s)
		}
		return out, nil
	case string:
		// Its characters, each once: repeats change no match.
		chars := []string{}
		seen := map[rune]bool{}
		for _, c := range l {
			if !seen[c] {
				if len(chars) == MaxFilterListLen {
					return nil, errListTooLong(name)
				}
				seen[c] = true
				chars = append(chars, string(c))
			}
		}
		return stringList(name, chars, total)
	case []string:
		if len(l) > MaxFilterListLen {
			return nil, errListTooLong(name)
		}
		for _, s := range l {
			if len(s) > MaxFilterStringLen {
				return nil, errEntryTooLong(name)
			}
			*total += len(s)
		}
		return append(make([]string, 0, len(l)), l...), nil
	}
	return nil, nil
}

func errListTooLong(name string) *Error {
	return Errorf(400, CodeInvalidParam, "filter field '%s' has more than %d entries", name, MaxFilterListLen)
}

func errEntryTooLong(name string) *Error {
	return Errorf(400, CodeInvalidParam, "filter field '%s' has an entry longer than %d bytes", name, MaxFilterStringLen)
}

// Truthy is Python's bool() of a decoded JSON/MessagePack value.
func Truthy(v any) bool {
	switch x := v.(type) {
	case nil:
		return false
	case bool:
		return x
	case string:
		return x != ""
	case int:
		return x != 0
	case int8:
		return x != 0
	case int16:
		return x != 0
	case int32:
		return x != 0
	case int64:
		return x != 0
	case uint:
		return x != 0
	case uint8:
		return x != 0
	case uint16:
		return x != 0
	case uint32:
		return x != 0
	case uint64:
		return x != 0
	case float32:
		return x != 0
	case float64:
		return x != 0
	case json.Number:
		f, err := x.Float64()
		return err != nil || f != 0
	case []any:
		return len(x) != 0
	case []string:
		return len(x) != 0
	case []byte:
		return len(x) != 0
	case map[string]any:
		return len(x) != 0
	case map[any]any:
		return len(x) != 0
	}
	return true
}

// PreLimit is the SQL part of the filter (Synapse's filter_to_clause),
// applied to each row before the limit:
//   - types, when non-empty: the type equals an entry, or, for an entry
//     containing '*', matches it as a SQL LIKE pattern with '*' turned into
//     '%' (so '_' and '%' are wildcards too and '\' escapes, as in
//     PostgreSQL; matching is case-sensitive);
//   - not_types: excluded when the type equals an entry, or LIKE-matches an
//     entry containing '*' (so a '*' anywhere acts as a glob);
//   - senders (when non-empty) / not_senders: exact;
//   - rooms (when non-empty) / not_rooms: exact, when m.RoomID is set;
//   - contains_url: only when true (Synapse adds no clause for false);
//   - org.matrix.labels, when non-empty: one of the event's labels is
//     listed.
//
// org.matrix.not_labels and contains_url false are left to Check.
func (f *Filter) PreLimit(m EventMeta) bool {
	if f == nil {
		return true
	}
	if f.compiled {
		if len(f.sqlTypes) > 0 && !anySQLMatch(f.sqlTypes, m.Type) {
			return false
		}
		if anySQLMatch(f.sqlNotTypes, m.Type) {
			return false
		}
	} else {
		if len(f.Types) > 0 {
			ok := false
			for _, t := range f.Types {
				if sqlTypeMatch(m.Type, t) {
					ok = true
					break
				}
			}
			if !ok {
				return false
			}
		}
		for _, t := range f.NotTypes {
			if sqlTypeMatch(m.Type, t) {
				return false
			}
		}
	}
	if len(f.Senders) > 0 && !contains(f.Senders, m.Sender) {
		return false
	}
	if contains(f.NotSenders, m.Sender) {
		return false
	}
	if m.RoomID != "" {
		if len(f.Rooms) > 0 && !contains(f.Rooms, m.RoomID) {
			return false
		}
		if contains(f.NotRooms, m.RoomID) {
			return false
		}
	}
	if f.ContainsURL != nil && *f.ContainsURL && !m.HasURL {
		return false
	}
	if len(f.Labels) > 0 && !anyContained(m.Labels, f.Labels) {
		return false
	}
	return true
}

// ExcludesRoom is PreLimit's rooms and not_rooms for a page of one room,
// asked once instead of for every row: the filter takes no row of the
// room when its rooms are non-empty and leave the room out, or its
// not_rooms name it (Synapse's SQL clauses). An empty rooms list takes
// rows and Check then keeps none of them.
func (f *Filter) ExcludesRoom(roomID string) bool {
	return f != nil && (len(f.Rooms) > 0 && !contains(f.Rooms, roomID) || contains(f.NotRooms, roomID))
}

// PreLimitAll reports whether PreLimit accepts every event that names no
// room (as a page of one room asks it): the filter has no types,
// not_types, senders, not_senders, labels, and no contains_url true. A
// reader can then skip reading what PreLimit looks at.
func (f *Filter) PreLimitAll() bool {
	return f == nil || len(f.Types) == 0 && len(f.sqlTypes) == 0 && len(f.NotTypes) == 0 && len(f.sqlNotTypes) == 0 &&
		len(f.Senders) == 0 && len(f.NotSenders) == 0 && len(f.Labels) == 0 && (f.ContainsURL == nil || !*f.ContainsURL)
}

// ChecksContent reports whether Check looks at the event's content
// (contains_url, org.matrix.labels, org.matrix.not_labels): a reader
// then gives it the content as shown, a redacted event's pruned.
func (f *Filter) ChecksContent() bool {
	return f != nil && (f.ContainsURL != nil || f.Labels != nil || len(f.NotLabels) > 0)
}

// FiltersRelations reports whether related_by_senders or
// related_by_rel_types constrain events: a reader must then keep only the
// events with a relation that meets them, before the limit (Synapse's SQL
// joins event_relations, and Filter.filter checks the same again).
func (f *Filter) FiltersRelations() bool {
	return f != nil && (len(f.RelatedBySenders) > 0 || len(f.RelatedByRelTypes) > 0 || f.relatedByNothing)
}

// RelatedByNothing reports whether related_by_senders or
// related_by_rel_types is a non-empty list without a string in it
// ([5]): no relation meets it, so the filter keeps no event.
func (f *Filter) RelatedByNothing() bool { return f != nil && f.relatedByNothing }

// Check is Synapse's Filter.filter check (filtering.py _check), applied
// after the limit: an event matching any not_ entry is rejected; a
// non-nil Types, Senders, Rooms (when m.RoomID is set) or Labels that the
// event matches none of rejects it (so "types": [] rejects everything);
// types match with _matches_wildcard (an entry ending in '*' is a prefix,
// anything else must be equal, so a '*' elsewhere never matches);
// contains_url, when set, must equal m.HasURL.
func (f *Filter) Check(m EventMeta) bool {
	if f == nil {
		return true
	}
	if m.RoomID != "" {
		if contains(f.NotRooms, m.RoomID) {
			return false
		}
		if f.Rooms != nil && !contains(f.Rooms, m.RoomID) {
			return false
		}
	}
	if contains(f.NotSenders, m.Sender) {
		return false
	}
	if f.Senders != nil && !contains(f.Senders, m.Sender) {
		return false
	}
	for _, t := range f.NotTypes {
		if matchesWildcard(m.Type, t) {
			return false
		}
	}
	if f.Types != nil {
		ok := false
		for _, t := range f.Types {
			if matchesWildcard(m.Type, t) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if anyContained(m.Labels, f.NotLabels) {
		return false
	}
	if f.Labels != nil && !anyContained(m.Labels, f.Labels) {
		return false
	}
	if f.ContainsURL != nil && *f.ContainsURL != m.HasURL {
		return false
	}
	return true
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// anyContained reports whether one of have is in list.
func anyContained(have, list []string) bool {
	for _, h := range have {
		if contains(list, h) {
			return true
		}
	}
	return false
}

// matchesWildcard is Synapse's _matches_wildcard.
func matchesWildcard(actual, pattern string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(actual, prefix)
	}
	return actual == pattern
}

// sqlTypeMatch is one types/not_types entry as filter_to_clause turns it
// into SQL: "event.type LIKE pattern" (with '*' as '%') when the entry
// has a '*', else "event.type = entry".
func sqlTypeMatch(typ, entry string) bool {
	if strings.IndexByte(entry, '*') < 0 {
		return typ == entry
	}
	return likeMatch(typ, entry)
}

// likeMatch is PostgreSQL's "s LIKE p" with '*' also standing for '%':
// '%' and '*' match any run of characters, '_' any one character, '\'
// makes the next character literal. A trailing lone '\' (an error in
// PostgreSQL) matches a literal backslash. Characters are compared as
// runes (an invalid UTF-8 byte reads as U+FFFD). It does not allocate; the
// greedy scan backtracks only to the last '%', so it is O(len(s)*len(p))
// at worst. It serves hand-built Filters and is the reference for
// likePattern.
func likeMatch(s, p string) bool {
	si, pi := 0, 0
	starP, starS := -1, 0
	for si < len(s) {
		if pi < len(p) {
			switch c := p[pi]; c {
			case '%', '*':
				pi++
				starP, starS = pi, si
				continue
			case '_':
				_, w := utf8.DecodeRuneInString(s[si:])
				si += w
				pi++
				continue
			default:
				lit := pi
				if c == '\\' && pi+1 < len(p) {
					lit = pi + 1
				}
				pr, pw := utf8.DecodeRuneInString(p[lit:])
				sr, sw := utf8.DecodeRuneInString(s[si:])
				if pr == sr {
					si += sw
					pi = lit + pw
					continue
				}
			}
		}
		if starP < 0 {
			return false
		}
		_, w := utf8.DecodeRuneInString(s[starS:])
		starS += w
		si, pi = starS, starP
	}
	for pi < len(p) && (p[pi] == '%' || p[pi] == '*') {
		pi++
	}
	return pi == len(p)
}

// sqlMatcher is one compiled types/not_types entry.
type sqlMatcher struct {
	kind uint8  // sqlExact, sqlPrefix, sqlLike or sqlLikeSlow
	s    string // the value for sqlExact, the prefix for sqlPrefix, the raw entry otherwise
	like *likePattern
}

const (
	sqlExact    = iota // no '*': event.type = s
	sqlPrefix          // one trailing '*' and no other LIKE syntax
	sqlLike            // general LIKE, bit-parallel
	sqlLikeSlow        // general LIKE too long for likePattern
)

func compileSQLTypes(entries []string) []sqlMatcher {
	if len(entries) == 0 {
		return nil
	}
	out := make([]sqlMatcher, len(entries))
	for i, e := range entries {
		star := strings.IndexByte(e, '*')
		switch {
		case star < 0:
			out[i] = sqlMatcher{kind: sqlExact, s: e}
		case star == len(e)-1 && !strings.ContainsAny(e, "%_\\\uFFFD"):
			// (U+FFFD is left to the rune-wise matcher, which also
			// lets it stand for an invalid byte of the type.)
			out[i] = sqlMatcher{kind: sqlPrefix, s: e[:star]}
		default:
			if lp := compileLike(e); lp != nil {
				out[i] = sqlMatcher{kind: sqlLike, s: e, like: lp}
			} else {
				out[i] = sqlMatcher{kind: sqlLikeSlow, s: e}
			}
		}
	}
	return out
}

func anySQLMatch(ms []sqlMatcher, typ string) bool {
	for i := range ms {
		m := &ms[i]
		var ok bool
		switch m.kind {
		case sqlExact:
			ok = typ == m.s
		case sqlPrefix:
			ok = strings.HasPrefix(typ, m.s)
		case sqlLike:
			ok = m.like.match(typ)
		default:
			ok = likeMatch(typ, m.s)
		}
		if ok {
			return true
		}
	}
	return false
}

// maxLikeWords bounds the state vector of a likePattern: 1024 states,
// more than a MaxFilterStringLen pattern can have.
const maxLikeWords = 16

// likePattern is a LIKE pattern compiled to a bit-parallel automaton
// (shift-and with self-loops): state i means "the first i non-'%' tokens
// are matched". Matching costs O(runes of the text * states/64), so a
// hostile pattern cannot make a row cost more than a few microseconds.
type likePattern struct {
	k     int                  // number of tokens ('_' or a literal)
	words int                  // (k+1 + 63) / 64
	any   [maxLikeWords]uint64 // bit i+1: token i is '_'
	loop  [maxLikeWords]uint64 // bit i: a '%' follows token i-1 (state i loops)
	ascii [128]uint8           // index+1 into lits of an ASCII literal, 0 if none
	lits  []likeLit            // literal runes: ASCII first, then the others sorted
	wide  int                  // lits[wide:] are the non-ASCII ones, sorted by r
}

type likeLit struct {
	r    rune
	mask [maxLikeWords]uint64 // bit i+1: token i is the literal r
}

// compileLike compiles a types entry read as a LIKE pattern ('*' as '%'),
// or returns nil when it has too many tokens.
func compileLike(p string) *likePattern {
	lp := &likePattern{}
	setBit := func(m *[maxLikeWords]uint64, i int) { m[i/64] |= 1 << (i % 64) }
	var wide []likeLit
	for i := 0; i < len(p); {
		c := p[i]
		switch c {
		case '%', '*':
			setBit(&lp.loop, lp.k)
			i++
			continue
		}
		if lp.k+1 >= maxLikeWords*64 {
			return nil
		}
		if c == '_' {
			setBit(&lp.any, lp.k+1)
			lp.k++
			i++
			continue
		}
		if c == '\\' && i+1 < len(p) {
			i++
		}
		r, w := utf8.DecodeRuneInString(p[i:])
		i += w
		if r < 128 {
			if lp.ascii[r] == 0 {
				lp.lits = append(lp.lits, likeLit{r: r})
				lp.ascii[r] = uint8(len(lp.lits))
			}
			setBit(&lp.lits[lp.ascii[r]-1].mask, lp.k+1)
		} else {
			j := 0
			for j < len(wide) && wide[j].r != r {
				j++
			}
			if j == len(wide) {
				wide = append(wide, likeLit{r: r})
			}
			setBit(&wide[j].mask, lp.k+1)
		}
		lp.k++
	}
	lp.words = lp.k/64 + 1
	slices.SortFunc(wide, func(a, b likeLit) int { return int(a.r) - int(b.r) })
	lp.wide = len(lp.lits)
	lp.lits = append(lp.lits, wide...)
	return lp
}

// litMask is the mask of the literal tokens equal to r, or nil.
func (lp *likePattern) litMask(r rune) *[maxLikeWords]uint64 {
	if r >= 0 && r < 128 {
		if i := lp.ascii[r]; i != 0 {
			return &lp.lits[i-1].mask
		}
		return nil
	}
	wide := lp.lits[lp.wide:]
	lo, hi := 0, len(wide)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if wide[mid].r < r {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo < len(wide) && wide[lo].r == r {
		return &wide[lo].mask
	}
	return nil
}

// match reports whether s LIKE the pattern; the same answers as likeMatch.
func (lp *likePattern) match(s string) bool {
	var d [maxLikeWords]uint64
	d[0] = 1
	n := lp.words
	for i := 0; i < len(s); {
		r, w := utf8.DecodeRuneInString(s[i:])
		i += w
		lit := lp.litMask(r)
		var carry, alive uint64
		for j := 0; j < n; j++ {
			m := lp.any[j]
			if lit != nil {
				m |= lit[j]
			}
			dj := d[j]
			d[j] = (dj<<1|carry)&m | dj&lp.loop[j]
			carry = dj >> 63
			alive |= d[j]
		}
		if alive == 0 {
			return false
		}
	}
	return d[lp.k/64]>>(lp.k%64)&1 == 1
}
