package handlers

import (
	"math"
	"testing"

	"github.com/scrollback/scrollback/commands"
)

// TestRetention_PurgeLifetime is Synapse's purge_history_for_rooms_in_range
// selection and clamp (SYNAPSE.md 9), case by case.
func TestRetention_PurgeLifetime(t *testing.T) {
	p := func(n int64) *int64 { return &n }
	const day = 86_400_000
	def := commands.RetentionPolicy{MaxLifetime: 3 * day}
	tests := []struct {
		name    string
		cfg     Retention
		job     RetentionJob
		roomMax *int64
		want    int64
		ok      bool
	}{
		{"no policy, no default", Retention{}, RetentionJob{}, nil, 0, false},
		{"no policy, default", Retention{Default: def}, RetentionJob{}, nil, 3 * day, true},
		{"room policy, no default", Retention{}, RetentionJob{}, p(day), day, true},
		{"room policy over default", Retention{Default: def}, RetentionJob{}, p(day), day, true},
		{"shortest is exclusive", Retention{}, RetentionJob{Shortest: day}, p(day), 0, false},
		{"above shortest", Retention{}, RetentionJob{Shortest: day}, p(day + 1), day + 1, true},
		{"longest is inclusive", Retention{}, RetentionJob{Longest: day}, p(day), day, true},
		{"above longest", Retention{}, RetentionJob{Longest: day}, p(day + 1), 0, false},
		{"default in range", Retention{Default: def}, RetentionJob{Shortest: day, Longest: 3 * day}, nil, 3 * day, true},
		{"default at shortest", Retention{Default: def}, RetentionJob{Shortest: 3 * day}, nil, 0, false},
		{"default above longest", Retention{Default: def}, RetentionJob{Longest: day}, nil, 0, false},
		{"range on the room's value, not the default", Retention{Default: def}, RetentionJob{Longest: day}, p(day), day, true},
		{"clamp up", Retention{AllowedMin: 2 * day}, RetentionJob{}, p(day), 2 * day, true},
		{"clamp down", Retention{AllowedMax: 2 * day}, RetentionJob{}, p(3 * day), 2 * day, true},
		{"range before clamp", Retention{AllowedMin: 5 * day}, RetentionJob{Longest: day}, p(day), 5 * day, true},
		{"min then max", Retention{AllowedMin: 2 * day, AllowedMax: 2 * day}, RetentionJob{}, p(9 * day), 2 * day, true},
		{"room 0 takes the default", Retention{Default: def}, RetentionJob{}, p(0), 3 * day, true},
		{"room 0 without default", Retention{}, RetentionJob{}, p(0), 0, false},
		{"room 0 selected by its own value", Retention{Default: def}, RetentionJob{Longest: day}, p(0), 3 * day, true},
		{"default 0 is a default", Retention{Default: commands.RetentionPolicy{MaxSet: true}}, RetentionJob{}, nil, 0, true},
		{"negative room value", Retention{}, RetentionJob{}, p(-5), -5, true},
		{"negative raised to allowed min", Retention{AllowedMin: day}, RetentionJob{}, p(-5), day, true},
		{"negative below shortest 0", Retention{}, RetentionJob{HasShortest: true}, p(-5), 0, false},
		{"longest 0 is a bound", Retention{Default: def}, RetentionJob{HasLongest: true}, nil, 0, false},
		{"allowed max 0 is a bound", Retention{Default: def, HasAllowedMax: true}, RetentionJob{}, nil, 0, true},
		{"huge", Retention{}, RetentionJob{}, p(math.MaxInt64), math.MaxInt64, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := tc.cfg.purgeLifetime(tc.job, tc.roomMax)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("purgeLifetime = %d, %v; want %d, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestRetention_OlderThanSaturates(t *testing.T) {
	for _, tc := range []struct{ now, max, want int64 }{
		{1000, 100, 900},
		{1000, -100, 1100},
		{1000, math.MinInt64, math.MaxInt64},
		{-1000, math.MaxInt64, math.MinInt64},
		{1000, math.MaxInt64, 1000 - math.MaxInt64},
	} {
		if got := olderThan(tc.now, tc.max); got != tc.want {
			t.Errorf("olderThan(%d, %d) = %d, want %d", tc.now, tc.max, got, tc.want)
		}
	}
}
