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
		{"org.matrix.msc3757.10", "@a:x", map[string]any{"creator": "@c:x"}, []string{"@c:x"}},
		{"org.matrix.msc3757.11", "@a:x", map[string]any{"creator": "@c:x", "additional_creators": []any{"@b:y"}}, []string{"@a:x"}},
		{"org.matrix.hydra.11", "@a:x", map[string]any{"additional_creators": []any{"@b:y"}}, []string{"@a:x", "@b:y"}},
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
		{"hydra creator above all", "org.matrix.hydra.11", "@c:x", map[string]any{}, []string{"@c:x"}, math.MaxInt64},
	} {
		if got := UserLevel(tt.version, tt.user, tt.pl, tt.creators); got != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, got, tt.want)
		}
	}
	// Levels past int64 (legal floats before v10, and Python's int() has
	// no bound) saturate: never wrap to a low level.
	for _, v := range []any{1e19, uint64(1) << 63, "99999999999999999999", math.Inf(1)} {
		if got := NamedLevel(map[string]any{"redact": v}, "redact", 50); got != math.MaxInt64 {
			t.Errorf("redact %v: %d, want MaxInt64", v, got)
		}
	}
	if got := NamedLevel(map[string]any{"redact": -1e19}, "redact", 50); got != math.MinInt64 {
		t.Errorf("redact -1e19: %d", got)
	}
	if NamedLevel(nil, "redact", 50) != 50 || NamedLevel(map[string]any{"redact": int64(0)}, "redact", 50) != 0 ||
		NamedLevel(map[string]any{"redact": nil}, "redact", 50) != 50 || NamedLevel(map[string]any{"redact": "100"}, "redact", 50) != 100 {
		t.Error("NamedLevel")
	}
}

// TestRedactionsRechecked: which room versions recheck a redaction by a
// sender below the redact level, and what counts as the same server.
func TestRedactionsRechecked(t *testing.T) {
	for v, want := range map[string]bool{"": false, "1": false, "2": false, "3": true, "10": true, "11": true, "12": true,
		"org.matrix.msc3757.10": true, "org.matrix.hydra.11": true, "org.example.unknown": true} {
		if got := RedactionsRechecked(v); got != want {
			t.Errorf("version %q: %v, want %v", v, got, want)
		}
	}
	for _, tt := range []struct {
		a, b string
		want bool
	}{
		{"@u:b.org", "@v:b.org", true},
		{"@eve:evil.org", "@u:b.org", false},
		{"@eve:b.org:8448", "@u:b.org", false},
		{"@x:b.org:8448", "@y:b.org:8448", true},
	} {
		if got := SameServer(tt.a, tt.b); got != tt.want {
			t.Errorf("SameServer(%s, %s) = %v", tt.a, tt.b, got)
		}
	}
}
