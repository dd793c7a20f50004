package commands

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// parseJSONFilter decodes s with encoding/json and parses it.
func parseJSONFilter(t *testing.T, s string) (*Filter, error) {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("bad test JSON %q: %v", s, err)
	}
	return ParseFilter(v)
}

func mustFilter(t *testing.T, s string) *Filter {
	t.Helper()
	f, err := parseJSONFilter(t, s)
	if err != nil {
		t.Fatalf("ParseFilter(%s): %v", s, err)
	}
	if f == nil {
		t.Fatalf("ParseFilter(%s) = nil", s)
	}
	return f
}

func TestParseFilter_NoFilter(t *testing.T) {
	tests := []struct{ name, in string }{
		{"null", "null"},
		{"empty object", "{}"},
		{"false", "false"},
		{"zero", "0"},
		{"zero float", "0.0"},
		{"empty string", `""`},
		{"empty array", "[]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parseJSONFilter(t, tc.in)
			if err != nil || f != nil {
				t.Fatalf("ParseFilter(%s) = %+v, %v; want nil, nil", tc.in, f, err)
			}
		})
	}
	if f, err := ParseFilter(nil); f != nil || err != nil {
		t.Fatalf("ParseFilter(nil) = %+v, %v", f, err)
	}
	if f, err := ParseFilter(map[any]any{}); f != nil || err != nil {
		t.Fatalf("ParseFilter(map[any]any{}) = %+v, %v", f, err)
	}
}

func TestParseFilter_NotAnObject(t *testing.T) {
	tests := []struct{ name, in string }{
		{"array", "[1]"},
		{"number", "5"},
		{"string", `"types"`},
		{"true", "true"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseJSONFilter(t, tc.in)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("ParseFilter(%s) error = %v, want *Error", tc.in, err)
			}
			if e.Status != 400 || e.Code != CodeNotJSON || e.Message != "Query parameter filter must be a valid JSON object" {
				t.Errorf("error = %+v", e)
			}
		})
	}
}

func TestParseFilter_Fields(t *testing.T) {
	f := mustFilter(t, `{
		"types": ["m.room.message", "f.*"],
		"not_types": ["m.room.member"],
		"senders": ["@a:hs"],
		"not_senders": ["@b:hs"],
		"rooms": ["!r:hs"],
		"not_rooms": ["!x:hs"],
		"contains_url": true,
		"org.matrix.labels": ["#l1"],
		"org.matrix.not_labels": ["#l2"],
		"related_by_senders": ["@c:hs"],
		"related_by_rel_types": ["m.thread"],
		"lazy_load_members": true,
		"include_redundant_members": true,
		"limit": 3,
		"event_format": "federation",
		"unknown": {"x": 1}
	}`)
	eq := func(name string, got []string, want ...string) {
		t.Helper()
		if strings.Join(got, "|") != strings.Join(want, "|") || got == nil {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	eq("Types", f.Types, "m.room.message", "f.*")
	eq("NotTypes", f.NotTypes, "m.room.member")
	eq("Senders", f.Senders, "@a:hs")
	eq("NotSenders", f.NotSenders, "@b:hs")
	eq("Rooms", f.Rooms, "!r:hs")
	eq("NotRooms", f.NotRooms, "!x:hs")
	eq("Labels", f.Labels, "#l1")
	eq("NotLabels", f.NotLabels, "#l2")
	eq("RelatedBySenders", f.RelatedBySenders, "@c:hs")
	eq("RelatedByRelTypes", f.RelatedByRelTypes, "m.thread")
	if f.ContainsURL == nil || !*f.ContainsURL {
		t.Errorf("ContainsURL = %v", f.ContainsURL)
	}
	if !f.LazyLoadMembers {
		t.Error("LazyLoadMembers = false")
	}
	if !f.FederationFormat {
		t.Error("FederationFormat = false")
	}
}

func TestParseFilter_Leniency(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		check func(t *testing.T, f *Filter)
	}{
		{"absent lists are nil", `{"limit": 5}`, func(t *testing.T, f *Filter) {
			if f.Types != nil || f.Senders != nil || f.Labels != nil || f.Rooms != nil || f.NotTypes != nil || f.ContainsURL != nil {
				t.Errorf("got %+v", f)
			}
		}},
		{"null list is absent", `{"types": null, "not_types": null}`, func(t *testing.T, f *Filter) {
			if f.Types != nil || f.NotTypes != nil {
				t.Errorf("got %+v", f)
			}
		}},
		{"empty types kept non-nil", `{"types": []}`, func(t *testing.T, f *Filter) {
			if f.Types == nil || len(f.Types) != 0 {
				t.Errorf("Types = %#v", f.Types)
			}
		}},
		{"non-string entries dropped, list stays non-nil", `{"types": [5, null, {"a":1}, ["x"], true]}`, func(t *testing.T, f *Filter) {
			if f.Types == nil || len(f.Types) != 0 {
				t.Errorf("Types = %#v", f.Types)
			}
		}},
		{"mixed entries keep strings", `{"senders": ["@a:hs", 3, "@b:hs"]}`, func(t *testing.T, f *Filter) {
			if strings.Join(f.Senders, ",") != "@a:hs,@b:hs" {
				t.Errorf("Senders = %#v", f.Senders)
			}
		}},
		{"neither string nor list is absent", `{"senders": {"@a:hs": 1}, "org.matrix.labels": 7}`, func(t *testing.T, f *Filter) {
			if f.Senders != nil || f.Labels != nil {
				t.Errorf("got %+v", f)
			}
		}},
		// Python iterates a string: its characters are the entries.
		{"string instead of list is its characters", `{"types": "m.r", "not_senders": ""}`, func(t *testing.T, f *Filter) {
			if strings.Join(f.Types, ",") != "m,.,r" || f.NotSenders == nil || len(f.NotSenders) != 0 {
				t.Errorf("got %+v", f)
			}
			if f.PreLimit(EventMeta{Type: "m.room.message"}) || f.Check(EventMeta{Type: "m.room.message"}) {
				t.Error("m.room.message passes types \"m.r\"")
			}
		}},
		{"a string with a star matches every type", `{"types": "a*"}`, func(t *testing.T, f *Filter) {
			if !f.PreLimit(EventMeta{Type: "m.room.message"}) {
				t.Error("types \"a*\" (entries a and *) leaves m.room.message out before the limit")
			}
		}},
		{"contains_url false", `{"contains_url": false}`, func(t *testing.T, f *Filter) {
			if f.ContainsURL == nil || *f.ContainsURL {
				t.Errorf("ContainsURL = %v", f.ContainsURL)
			}
		}},
		{"contains_url not a bool is absent", `{"contains_url": 1, "types": []}`, func(t *testing.T, f *Filter) {
			if f.ContainsURL != nil {
				t.Errorf("ContainsURL = %v", *f.ContainsURL)
			}
		}},
		{"lazy_load_members truthy number", `{"lazy_load_members": 1}`, func(t *testing.T, f *Filter) {
			if !f.LazyLoadMembers {
				t.Error("LazyLoadMembers = false")
			}
		}},
		{"lazy_load_members truthy string", `{"lazy_load_members": "no"}`, func(t *testing.T, f *Filter) {
			if !f.LazyLoadMembers {
				t.Error("LazyLoadMembers = false")
			}
		}},
		{"lazy_load_members falsy", `{"lazy_load_members": 0, "types": null}`, func(t *testing.T, f *Filter) {
			if f.LazyLoadMembers {
				t.Error("LazyLoadMembers = true")
			}
		}},
		{"event_format client", `{"event_format": "client"}`, func(t *testing.T, f *Filter) {
			if f.FederationFormat {
				t.Error("FederationFormat = true")
			}
		}},
		{"event_format not a string", `{"event_format": ["federation"]}`, func(t *testing.T, f *Filter) {
			if f.FederationFormat {
				t.Error("FederationFormat = true")
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.check(t, mustFilter(t, tc.in))
		})
	}
}

func TestParseFilter_OtherDecodedShapes(t *testing.T) {
	// MessagePack decoders may give map[any]any, []string and other
	// integer types.
	f, err := ParseFilter(map[any]any{
		"types":             []string{"m.room.message"},
		"senders":           []any{"@a:hs", int8(1), uint64(2)},
		"lazy_load_members": uint8(1),
		7:                   "ignored",
	})
	if err != nil || f == nil {
		t.Fatalf("ParseFilter = %+v, %v", f, err)
	}
	if len(f.Types) != 1 || len(f.Senders) != 1 || !f.LazyLoadMembers {
		t.Errorf("got %+v", f)
	}
	// A JSON number decoded with UseNumber.
	dec := json.NewDecoder(strings.NewReader(`0`))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	if f, err := ParseFilter(v); f != nil || err != nil {
		t.Errorf("ParseFilter(json.Number 0) = %+v, %v", f, err)
	}
}

func TestParseFilter_Limits(t *testing.T) {
	list := func(n, size int) string {
		entries := make([]string, n)
		for i := range entries {
			entries[i] = `"` + strings.Repeat("a", size) + `"`
		}
		return "[" + strings.Join(entries, ",") + "]"
	}
	tests := []struct {
		name    string
		in      string
		wantErr bool
		msg     string
	}{
		{"max entries ok", `{"types": ` + list(MaxFilterListLen, 1) + `}`, false, ""},
		{"too many entries", `{"types": ` + list(MaxFilterListLen+1, 1) + `}`, true, "filter field 'types' has more than 1000 entries"},
		{"too many non-string entries", `{"not_senders": [` + strings.Repeat("1,", MaxFilterListLen) + `1]}`, true, "filter field 'not_senders' has more than 1000 entries"},
		{"max string ok", `{"senders": ` + list(1, MaxFilterStringLen) + `}`, false, ""},
		{"string too long", `{"org.matrix.labels": ` + list(1, MaxFilterStringLen+1) + `}`, true, "filter field 'org.matrix.labels' has an entry longer than 1000 bytes"},
		{"total too large", `{"types": ` + list(9, 1000) + `}`, true, "filter is too large: its lists hold more than 8192 bytes"},
		{"total spread over lists", `{"types": ` + list(5, 1000) + `, "not_types": ` + list(5, 1000) + `}`, true, "filter is too large: its lists hold more than 8192 bytes"},
		{"a string's characters count once each", `{"types": "` + strings.Repeat("a", 5000) + `"}`, false, ""},
		{"ignored field not limited", `{"limit": ` + list(MaxFilterListLen+1, 1) + `}`, false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parseJSONFilter(t, tc.in)
			if !tc.wantErr {
				if err != nil || f == nil {
					t.Fatalf("ParseFilter = %v, %v", f, err)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error = %v, want *Error", err)
			}
			if e.Status != 400 || e.Code != CodeInvalidParam || e.Message != tc.msg {
				t.Errorf("error = %+v, want 400 %s %q", e, CodeInvalidParam, tc.msg)
			}
		})
	}
}

func TestFilter_Nil(t *testing.T) {
	var f *Filter
	m := EventMeta{Type: "m.room.message", Sender: "@a:hs"}
	if !f.PreLimit(m) || !f.Check(m) {
		t.Fatal("nil filter rejected an event")
	}
}

// filterCase is one event against one filter: want pre (PreLimit) and
// post (Check).
type filterCase struct {
	name   string
	filter string
	ev     EventMeta
	pre    bool
	post   bool
}

func runFilterCases(t *testing.T, tests []filterCase) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := mustFilter(t, tc.filter)
			if got := f.PreLimit(tc.ev); got != tc.pre {
				t.Errorf("PreLimit(%+v) = %v, want %v", tc.ev, got, tc.pre)
			}
			if got := f.Check(tc.ev); got != tc.post {
				t.Errorf("Check(%+v) = %v, want %v", tc.ev, got, tc.post)
			}
		})
	}
}

func ev(typ string) EventMeta { return EventMeta{Type: typ, Sender: "@a:hs"} }

func TestFilter_Types(t *testing.T) {
	runFilterCases(t, []filterCase{
		{"exact match", `{"types": ["m.room.message"]}`, ev("m.room.message"), true, true},
		{"exact mismatch", `{"types": ["m.room.message"]}`, ev("m.room.member"), false, false},
		{"one of several", `{"types": ["m.room.member", "m.room.message"]}`, ev("m.room.message"), true, true},
		{"wildcard test f.message.1", `{"types": ["f.message.*"]}`, ev("f.message.1"), true, true},
		{"wildcard test f.message.2", `{"types": ["f.message.*"]}`, ev("f.message.2"), true, true},
		{"wildcard test not m.room.message", `{"types": ["f.message.*"]}`, ev("m.room.message"), false, false},
		{"trailing star matches the bare prefix", `{"types": ["f.message.*"]}`, ev("f.message."), true, true},
		{"star alone matches all", `{"types": ["*"]}`, ev("anything"), true, true},
		{"middle star: SQL LIKE matches, Python never", `{"types": ["m.*.message"]}`, ev("m.room.message"), true, false},
		{"middle star is literal in Python (exact)", `{"types": ["m.*.message"]}`, ev("m.*.message"), true, true},
		{"underscore is a LIKE wildcard with a star", `{"types": ["m_room.*"]}`, ev("m.room.message"), true, false},
		{"underscore literal still matches", `{"types": ["m_room.*"]}`, ev("m_room.message"), true, true},
		{"underscore without star is exact", `{"types": ["m_room.message"]}`, ev("m.room.message"), false, false},
		{"percent is a LIKE wildcard with a star", `{"types": ["m%.*"]}`, ev("m.room.x"), true, false},
		{"percent without star is exact", `{"types": ["m.%"]}`, ev("m.room"), false, false},
		{"escaped underscore is literal", `{"types": ["m\\_room*"]}`, ev("m.room"), false, false},
		{"escaped underscore matches underscore", `{"types": ["m\\_room*"]}`, ev("m_room"), true, false},
		{"LIKE is case-sensitive", `{"types": ["M.*"]}`, ev("m.room.message"), false, false},
		{"empty types: PreLimit passes, Check rejects", `{"types": []}`, ev("m.room.message"), true, false},
		{"only non-string types: like empty", `{"types": [1]}`, ev("m.room.message"), true, false},
	})
}

func TestFilter_NotTypes(t *testing.T) {
	runFilterCases(t, []filterCase{
		{"exact excluded", `{"not_types": ["m.room.member"]}`, ev("m.room.member"), false, false},
		{"exact others pass", `{"not_types": ["m.room.member"]}`, ev("m.room.message"), true, true},
		{"star excludes all", `{"not_types": ["*"]}`, ev("m.room.message"), false, false},
		{"trailing star excludes prefix", `{"not_types": ["m.room.*"]}`, ev("m.room.topic"), false, false},
		{"trailing star keeps others", `{"not_types": ["m.room.*"]}`, ev("m.reaction"), true, true},
		{"middle star is a glob in SQL", `{"not_types": ["m.*.message"]}`, ev("m.room.message"), false, true},
		{"underscore wildcard with star", `{"not_types": ["m_room.*"]}`, ev("m.room.message"), false, true},
		{"not_types wins over types", `{"types": ["m.*"], "not_types": ["m.room.member"]}`, ev("m.room.member"), false, false},
		{"empty not_types", `{"not_types": []}`, ev("m.room.member"), true, true},
	})
}

func TestFilter_Senders(t *testing.T) {
	a := EventMeta{Type: "m.room.message", Sender: "@a:hs"}
	runFilterCases(t, []filterCase{
		{"sender listed", `{"senders": ["@b:hs", "@a:hs"]}`, a, true, true},
		{"sender not listed", `{"senders": ["@b:hs"]}`, a, false, false},
		{"senders exact, no wildcard", `{"senders": ["@a:*"]}`, a, false, false},
		{"empty senders: PreLimit passes, Check rejects", `{"senders": []}`, a, true, false},
		{"not_senders excludes", `{"not_senders": ["@a:hs"]}`, a, false, false},
		{"not_senders others pass", `{"not_senders": ["@b:hs"]}`, a, true, true},
		{"not_senders star is literal", `{"not_senders": ["*"]}`, a, true, true},
		{"not_senders wins", `{"senders": ["@a:hs"], "not_senders": ["@a:hs"]}`, a, false, false},
	})
}

func TestFilter_Rooms(t *testing.T) {
	in := EventMeta{Type: "m.room.message", Sender: "@a:hs", RoomID: "!r:hs"}
	noRoom := EventMeta{Type: "m.room.message", Sender: "@a:hs"}
	runFilterCases(t, []filterCase{
		{"room listed", `{"rooms": ["!r:hs"]}`, in, true, true},
		{"room not listed", `{"rooms": ["!x:hs"]}`, in, false, false},
		{"empty rooms: PreLimit passes, Check rejects", `{"rooms": []}`, in, true, false},
		{"not_rooms excludes", `{"not_rooms": ["!r:hs"]}`, in, false, false},
		{"not_rooms others pass", `{"not_rooms": ["!x:hs"]}`, in, true, true},
		{"rooms unchecked without RoomID", `{"rooms": ["!x:hs"], "not_rooms": [""]}`, noRoom, true, true},
	})
}

func TestFilter_ContainsURL(t *testing.T) {
	url := EventMeta{Type: "m.room.message", Sender: "@a:hs", HasURL: true}
	plain := EventMeta{Type: "m.room.message", Sender: "@a:hs"}
	runFilterCases(t, []filterCase{
		{"true keeps url", `{"contains_url": true}`, url, true, true},
		{"true drops plain in SQL", `{"contains_url": true}`, plain, false, false},
		{"false keeps plain", `{"contains_url": false}`, plain, true, true},
		{"false drops url only after the limit", `{"contains_url": false}`, url, true, false},
		{"non-bool ignored", `{"contains_url": "yes", "limit": 1}`, plain, true, true},
	})
}

func TestFilter_Labels(t *testing.T) {
	l1 := EventMeta{Type: "m.room.message", Sender: "@a:hs", Labels: []string{"#l1", "#l2"}}
	none := EventMeta{Type: "m.room.message", Sender: "@a:hs"}
	runFilterCases(t, []filterCase{
		{"label listed", `{"org.matrix.labels": ["#l2"]}`, l1, true, true},
		{"one of several", `{"org.matrix.labels": ["#x", "#l1"]}`, l1, true, true},
		{"label not listed", `{"org.matrix.labels": ["#x"]}`, l1, false, false},
		{"unlabelled event", `{"org.matrix.labels": ["#l1"]}`, none, false, false},
		{"labels exact, no substring", `{"org.matrix.labels": ["#l"]}`, l1, false, false},
		{"empty labels: PreLimit passes, Check rejects", `{"org.matrix.labels": []}`, l1, true, false},
		{"not_labels only after the limit", `{"org.matrix.not_labels": ["#l2"]}`, l1, true, false},
		{"not_labels others pass", `{"org.matrix.not_labels": ["#x"]}`, l1, true, true},
		{"not_labels unlabelled passes", `{"org.matrix.not_labels": ["#l1"]}`, none, true, true},
	})
}

func TestFilter_RelatedByLeftToTheStore(t *testing.T) {
	runFilterCases(t, []filterCase{
		{"related_by_* do not filter here", `{"related_by_senders": ["@z:hs"], "related_by_rel_types": ["m.thread"]}`, ev("m.room.message"), true, true},
		{"lazy_load_members does not filter", `{"lazy_load_members": true}`, ev("m.room.message"), true, true},
	})
	for _, tt := range []struct {
		filter string
		want   bool
	}{
		{`{"related_by_senders": ["@z:hs"]}`, true},
		{`{"related_by_rel_types": ["m.thread"]}`, true},
		{`{"related_by_senders": "@z"}`, true},
		{`{"related_by_senders": [], "related_by_rel_types": []}`, false},
		{`{"related_by_senders": [5]}`, true},
		{`{"related_by_senders": null, "types": ["m.room.message"]}`, false},
	} {
		if got := mustFilter(t, tt.filter).FiltersRelations(); got != tt.want {
			t.Errorf("%s: FiltersRelations() = %v, want %v", tt.filter, got, tt.want)
		}
	}
	if (*Filter)(nil).FiltersRelations() {
		t.Error("a nil filter filters relations")
	}
	for filter, want := range map[string]bool{`{"related_by_senders": [5]}`: true, `{"related_by_rel_types": [null, 1]}`: true,
		`{"related_by_senders": true}`: false, `{"related_by_senders": {"a": 1}}`: false,
		`{"related_by_senders": []}`: false, `{"related_by_senders": ["@a:hs"]}`: false} {
		if got := mustFilter(t, filter).RelatedByNothing(); got != want {
			t.Errorf("%s: RelatedByNothing() = %v, want %v", filter, got, want)
		}
	}
}

func TestFilter_HandBuilt(t *testing.T) {
	f := &Filter{Types: []string{"m.room.*"}, NotSenders: []string{"@x:hs"}}
	if !f.PreLimit(ev("m.room.message")) || !f.Check(ev("m.room.message")) {
		t.Error("hand-built filter rejected a matching event")
	}
	if f.Check(EventMeta{Type: "m.room.message", Sender: "@x:hs"}) {
		t.Error("hand-built filter accepted an excluded sender")
	}
}

func TestLikeMatch(t *testing.T) {
	tests := []struct {
		name string
		s, p string
		want bool
	}{
		{"literal", "abc", "abc", true},
		{"literal mismatch", "abc", "abd", false},
		{"shorter text", "ab", "abc", false},
		{"longer text", "abcd", "abc", false},
		{"percent suffix", "abcd", "ab%", true},
		{"star suffix", "abcd", "ab*", true},
		{"percent empty run", "ab", "ab%", true},
		{"percent prefix", "xxab", "%ab", true},
		{"percent middle", "a123b", "a%b", true},
		{"percent middle backtracks", "aXbXb", "a%b", true},
		{"percent middle needs end", "aXbX", "a%b", false},
		{"several percents", "m.room.message", "m%r%m%e", true},
		{"underscore one char", "abc", "a_c", true},
		{"underscore not zero chars", "ac", "a_c", false},
		{"underscore one rune", "aéc", "a_c", true},
		{"underscore then percent", "a", "_%", true},
		{"underscore needs a char", "", "_%", false},
		{"only percents", "", "%%*", true},
		{"empty pattern", "", "", true},
		{"empty pattern nonempty text", "a", "", false},
		{"escaped percent literal", "a%", "a\\%", true},
		{"escaped percent no wildcard", "ab", "a\\%", false},
		{"escaped underscore", "a_", "a\\_", true},
		{"escaped underscore no wildcard", "ab", "a\\_", false},
		{"escaped backslash", "a\\", "a\\\\", true},
		{"escaped letter", "ab", "a\\b", true},
		{"trailing backslash literal", "a\\", "a\\", true},
		{"trailing backslash mismatch", "ab", "a\\", false},
		{"multibyte literal", "été", "é%", true},
		{"pathological", strings.Repeat("a", 200), strings.Repeat("%a", 50) + "b", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := likeMatch(tc.s, tc.p); got != tc.want {
				t.Errorf("likeMatch(%q, %q) = %v, want %v", tc.s, tc.p, got, tc.want)
			}
			lp := compileLike(tc.p)
			if lp == nil {
				t.Fatalf("compileLike(%q) = nil", tc.p)
			}
			if got := lp.match(tc.s); got != tc.want {
				t.Errorf("compiled %q match(%q) = %v, want %v", tc.p, tc.s, got, tc.want)
			}
		})
	}
}

func TestCompileLike_LongPatterns(t *testing.T) {
	// Patterns spanning several state words, and one too long to compile.
	long := strings.Repeat("ab_", 300) // 900 tokens, 15 words
	text := strings.Repeat("abx", 300)
	tests := []struct {
		name string
		s, p string
		want bool
	}{
		{"900 tokens match", text, long, true},
		{"900 tokens with percent", "zz" + text + "zz", "%" + long + "%", true},
		{"900 tokens mismatch at the end", text[:len(text)-2] + "xx", long, false},
		{"word boundary 63/64", strings.Repeat("a", 64), strings.Repeat("a", 63) + "_", true},
		{"word boundary 64/65", strings.Repeat("a", 65), strings.Repeat("a", 64) + "%a", true},
		{"word boundary mismatch", strings.Repeat("a", 64) + "b", strings.Repeat("a", 64) + "%c", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lp := compileLike(tc.p)
			if lp == nil {
				t.Fatalf("compileLike = nil")
			}
			if got := lp.match(tc.s); got != tc.want {
				t.Errorf("match = %v, want %v", got, tc.want)
			}
			if got := likeMatch(tc.s, tc.p); got != tc.want {
				t.Errorf("likeMatch = %v, want %v", got, tc.want)
			}
		})
	}
	if lp := compileLike(strings.Repeat("a", maxLikeWords*64)); lp != nil {
		t.Errorf("compileLike of %d tokens = non-nil", maxLikeWords*64)
	}
	// A parsed filter falls back to likeMatch for such an entry.
	f := &Filter{Types: []string{strings.Repeat("a", maxLikeWords*64) + "_*"}}
	f.sqlTypes, f.compiled = compileSQLTypes(f.Types), true
	if f.sqlTypes[0].kind != sqlLikeSlow {
		t.Fatalf("kind = %d, want sqlLikeSlow", f.sqlTypes[0].kind)
	}
	if !f.PreLimit(ev(strings.Repeat("a", maxLikeWords*64) + "bc")) {
		t.Error("slow LIKE entry did not match")
	}
}

func TestCompileSQLTypes_Kinds(t *testing.T) {
	tests := []struct {
		entry string
		kind  uint8
	}{
		{"m.room.message", sqlExact},
		{"m_room%", sqlExact},
		{"m.room.*", sqlPrefix},
		{"*", sqlPrefix},
		{"m_room.*", sqlLike},
		{"m%.*", sqlLike},
		{"m\\.*", sqlLike},
		{"m.*.x", sqlLike},
		{"m.**", sqlLike},
	}
	for _, tc := range tests {
		t.Run(tc.entry, func(t *testing.T) {
			if got := compileSQLTypes([]string{tc.entry})[0].kind; got != tc.kind {
				t.Errorf("kind = %d, want %d", got, tc.kind)
			}
		})
	}
}

func TestFilter_NoAllocs(t *testing.T) {
	f := mustFilter(t, `{"types": ["m.room.*", "f.*.x", "é_*"], "not_types": ["m.room.mem_er*"], "senders": ["@a:hs"], "not_senders": ["@b:hs"], "contains_url": false, "org.matrix.labels": ["#l"], "org.matrix.not_labels": ["#n"]}`)
	hand := &Filter{Types: f.Types, NotTypes: f.NotTypes, Senders: f.Senders, NotSenders: f.NotSenders,
		ContainsURL: f.ContainsURL, Labels: f.Labels, NotLabels: f.NotLabels}
	for _, m := range []EventMeta{
		{Type: "m.room.message", Sender: "@a:hs", Labels: []string{"#l"}, RoomID: "!r:hs"},
		{Type: "éa.b", Sender: "@a:hs", Labels: []string{"#l"}},
		{Type: "f.q.r", Sender: "@a:hs", Labels: []string{"#l"}},
	} {
		for name, flt := range map[string]*Filter{"parsed": f, "hand-built": hand} {
			n := testing.AllocsPerRun(100, func() {
				flt.PreLimit(m)
				flt.Check(m)
			})
			if n != 0 {
				t.Errorf("%s: PreLimit+Check(%q) allocate %v times per call", name, m.Type, n)
			}
		}
	}
}

// hostileFilter has MaxFilterBytes of LIKE patterns that make a
// backtracking matcher quadratic on hostileType.
func hostileFilter(tb testing.TB) (*Filter, EventMeta) {
	p := "%" + strings.Repeat("a", 126) + "b*"
	var entries []any
	for total := 0; total+len(p) <= MaxFilterBytes; total += len(p) {
		entries = append(entries, p)
	}
	f, err := ParseFilter(map[string]any{"types": entries})
	if err != nil {
		tb.Fatal(err)
	}
	return f, EventMeta{Type: strings.Repeat("a", MaxIDLength)}
}

func TestFilter_HostilePatternsAreCheap(t *testing.T) {
	f, m := hostileFilter(t)
	if f.PreLimit(m) {
		t.Fatal("hostile pattern matched")
	}
	res := testing.Benchmark(func(b *testing.B) {
		for b.Loop() {
			f.PreLimit(m)
		}
	})
	// The backtracking matcher takes ~45ms here; the compiled one well
	// under a millisecond. Allow a lot of slack for slow CI (-race).
	if per := res.NsPerOp(); per > 20_000_000 {
		t.Errorf("hostile PreLimit takes %v ns per row", per)
	}
}

func BenchmarkFilter_Hostile(b *testing.B) {
	f, m := hostileFilter(b)
	b.ReportAllocs()
	for b.Loop() {
		f.PreLimit(m)
	}
}

func BenchmarkFilter(b *testing.B) {
	var v any
	_ = json.Unmarshal([]byte(`{"types": ["m.room.*", "f.*.x"], "not_types": ["m.room.member"], "senders": ["@a:hs", "@c:hs"], "contains_url": false}`), &v)
	f, _ := ParseFilter(v)
	m := EventMeta{Type: "m.room.message", Sender: "@a:hs"}
	b.ReportAllocs()
	for b.Loop() {
		f.PreLimit(m)
		f.Check(m)
	}
}

func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{
		`{}`,
		`null`,
		`[1]`,
		`{"types": ["f.message.*"]}`,
		`{"types": [], "not_types": ["*"], "senders": ["@a:hs"], "contains_url": true}`,
		`{"types": "m.room.message", "contains_url": 1, "lazy_load_members": "x"}`,
		`{"org.matrix.labels": ["#a"], "org.matrix.not_labels": [null, 1, "#b"], "rooms": [{}]}`,
		`{"types": ["m_%\\*_*"], "not_types": ["\\"]}`,
	} {
		f.Add(s, "m.room.message")
	}
	f.Add("{\"types\":[\"\xc4*\"]}", "\xbc") // U+FFFD prefix vs an invalid byte
	f.Fuzz(func(t *testing.T, js, typ string) {
		var v any
		if json.Unmarshal([]byte(js), &v) != nil {
			return
		}
		flt, err := ParseFilter(v)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Status != 400 {
				t.Fatalf("error %v is not a 400 *Error", err)
			}
			return
		}
		m := EventMeta{Type: typ, Sender: typ, HasURL: len(typ)%2 == 0, Labels: []string{typ}, RoomID: typ}
		pre := flt.PreLimit(m)
		flt.Check(m)
		if flt == nil {
			return
		}
		// The compiled matchers agree with the direct interpretation.
		hand := *flt
		hand.compiled, hand.sqlTypes, hand.sqlNotTypes = false, nil, nil
		if got := hand.PreLimit(m); got != pre {
			t.Fatalf("PreLimit(%q): compiled %v, hand-built %v", typ, pre, got)
		}
		// Every Python type match is also a SQL match, except where a '\'
		// escapes in LIKE (Python has no escapes).
		for _, p := range flt.Types {
			if matchesWildcard(typ, p) && !strings.Contains(p, "\\") && !sqlTypeMatch(typ, p) {
				t.Fatalf("type %q matches %q in Python but not in SQL", typ, p)
			}
		}
	})
}

func FuzzLikeMatch(f *testing.F) {
	for _, c := range [][2]string{
		{"m.room.message", "m.*"},
		{"m.room.message", "m_room%"},
		{"a%b", "a\\%*"},
		{"aéc", "a_c"},
		{"aaaaab", "%a%ab"},
		{"x\\", "x\\"},
		{"", "%"},
	} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, s, p string) {
		want := likeMatch(s, p)
		lp := compileLike(p)
		if lp == nil {
			return
		}
		if got := lp.match(s); got != want {
			t.Fatalf("%q LIKE %q: compiled %v, likeMatch %v", s, p, got, want)
		}
	})
}

// TestFilter_PreLimitAll: a filter that says PreLimit accepts everything
// accepts every event here, and every filter that constrains what
// PreLimit looks at says it does not.
func TestFilter_PreLimitAll(t *testing.T) {
	events := []EventMeta{
		{Type: "m.room.message", Sender: "@a:test"},
		{Type: "m.room.member", Sender: "@b:test", HasURL: true, Labels: []string{"#x"}},
		{Type: "", Sender: ""},
	}
	for _, tt := range []struct {
		filter string
		all    bool
	}{
		{`{}`, true},
		{`{"lazy_load_members": true}`, true},
		{`{"types": []}`, true}, // Check rejects everything; PreLimit takes all
		{`{"rooms": ["!r:test"], "not_rooms": ["!s:test"]}`, true},
		{`{"contains_url": false}`, true},
		{`{"org.matrix.not_labels": ["#x"]}`, true},
		{`{"types": ["m.room.message"]}`, false},
		{`{"not_types": ["m.room.member"]}`, false},
		{`{"senders": ["@a:test"]}`, false},
		{`{"not_senders": ["@b:test"]}`, false},
		{`{"contains_url": true}`, false},
		{`{"org.matrix.labels": ["#x"]}`, false},
	} {
		f, err := parseJSONFilter(t, tt.filter)
		if err != nil {
			t.Fatalf("%s: %v", tt.filter, err)
		}
		if got := f.PreLimitAll(); got != tt.all {
			t.Errorf("%s: PreLimitAll() = %v, want %v", tt.filter, got, tt.all)
		}
		if tt.all {
			for _, m := range events {
				if !f.PreLimit(m) {
					t.Errorf("%s: PreLimitAll, but PreLimit(%+v) = false", tt.filter, m)
				}
			}
		}
	}
	var nilFilter *Filter
	if !nilFilter.PreLimitAll() {
		t.Error("nil filter: PreLimitAll() = false")
	}
	hand := &Filter{Types: []string{"m.room.message"}} // not compiled
	if hand.PreLimitAll() {
		t.Error("hand-built filter with types: PreLimitAll() = true")
	}
}
