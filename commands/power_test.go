package commands

import (
	"math"
	"slices"
	"testing"
)

func TestCreators(t *testing.T) {
	for _, tt := range []struct {
		version, sender string
		content         map[string]any
		want            []string
	}{
		{"10", "@a:x", map[string]any{"creator": "@c:x"}, []string{"@c:x"}},
		{"1", "@a:x", map[string]any{}, nil},
		{"11", "@a:x", map[string]any{"creator": "@c:x"}, []string{"@a:x"}},
		{"11", "@a:x", map[string]any{"additional_creators": []any{"@b:y"}}, []string{"@a:x"}},
		{"12", "@a:x", map[string]any{"additional_creators": []any{"@b:y", 5}}, []string{"@a:x", "@b:y"}},
	} {
		if got := Creators(tt.version, tt.sender, tt.content); !slices.Equal(got, tt.want) {
			t.Errorf("v%s %v: %v, want %v", tt.version, tt.content, got, tt.want)
		}
	}
}

func TestUserLevel(t *testing.T) {
	pl := map[string]any{"users": map[string]any{"@a:x": int64(100), "@f:x": 50.9, "@s:x": " 42 ", "@bad:x": "x", "@null:x": nil}, "users_default": int64(10)}
	for _, tt := range []struct {
		name, version, user string
		pl                  map[string]any
		creators            []string
		want                int64
	}{
		{"listed", "10", "@a:x", pl, nil, 100},
		{"float truncated", "10", "@f:x", pl, nil, 50},
		{"string parsed", "10", "@s:x", pl, nil, 42},
		{"unparsable", "10", "@bad:x", pl, nil, 0},
		{"null is absent", "10", "@null:x", pl, nil, 10},
		{"users_default", "10", "@z:x", pl, nil, 10},
		{"no users_default", "10", "@z:x", map[string]any{}, nil, 0},
		{"no power levels, creator", "10", "@c:x", nil, []string{"@c:x"}, 100},
		{"no power levels, others", "10", "@z:x", nil, []string{"@c:x"}, 0},
		{"v11 creator listed lower", "11", "@c:x", map[string]any{"users": map[string]any{"@c:x": int64(5)}}, []string{"@c:x"}, 5},
		{"v12 creator above all", "12", "@c:x", map[string]any{"users": map[string]any{"@c:x": int64(5)}}, []string{"@c:x"}, math.MaxInt64},
	} {
		if got := UserLevel(tt.version, tt.user, tt.pl, tt.creators); got != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, got, tt.want)
		}
	}
	if NamedLevel(nil, "redact", 50) != 50 || NamedLevel(map[string]any{"redact": int64(0)}, "redact", 50) != 0 ||
		NamedLevel(map[string]any{"redact": nil}, "redact", 50) != 50 || NamedLevel(map[string]any{"redact": "100"}, "redact", 50) != 100 {
		t.Error("NamedLevel")
	}
}

// TestRedactionApplies: Synapse's check_redaction and
// _maybe_redact_event_row together.
func TestRedactionApplies(t *testing.T) {
	for _, tt := range []struct {
		name, version, by, of string
		level                 int64
		want                  bool
	}{
		{"a moderator, any server", "10", "@mod:a.org", "@u:b.org", 50, true},
		{"below the level, same server", "10", "@u:b.org", "@v:b.org", 0, true},
		{"below the level, another server", "10", "@eve:evil.org", "@u:b.org", 0, false},
		{"domain after the first colon", "10", "@eve:b.org:8448", "@u:b.org", 0, false},
		{"v11 the same", "11", "@eve:evil.org", "@u:b.org", 49, false},
		{"v1 and v2: the auth rules decided", "1", "@eve:evil.org", "@u:b.org", 0, true},
		{"v2", "2", "@eve:evil.org", "@u:b.org", 0, true},
	} {
		if got := RedactionApplies(tt.version, tt.level, 50, tt.by, tt.of); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}
