package commands

import (
	"encoding/json"
	"errors"
	"math"
	"math/big"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

const (
	day  = 24 * time.Hour
	week = 7 * day
	year = 365 * day
)

func TestParseDuration(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want time.Duration
	}{
		{"bare integer is milliseconds", "500", 500 * time.Millisecond},
		{"zero", "0", 0},
		{"leading zeros", "007", 7 * time.Millisecond},
		{"seconds", "10s", 10 * time.Second},
		{"minutes", "5m", 5 * time.Minute},
		{"hours", "12h", 12 * time.Hour},
		{"days", "1d", day},
		{"weeks", "2w", 2 * week},
		{"year is 365 days", "1y", year},
		{"zero with unit", "0d", 0},
		{"surrounding spaces", "  3d\t", 3 * day},
		{"largest day count", "106751d", 106751 * day},
		{"largest milliseconds", "9223372036854", MaxDuration},
		// Synapse takes any length ("1000y" for "keep for ever"): longer
		// than MaxDuration is MaxDuration.
		{"years beyond the maximum", "293y", MaxDuration},
		{"keep for ever", "1000y", MaxDuration},
		{"days beyond the maximum", "106752d", MaxDuration},
		{"milliseconds beyond int64 nanoseconds", "9223372036855", MaxDuration},
		{"digits beyond uint64", "99999999999999999999999", MaxDuration},
		{"go compound", "1h30m", 90 * time.Minute},
		{"go milliseconds", "250ms", 250 * time.Millisecond},
		{"go fraction", "1.5s", 1500 * time.Millisecond},
		{"go microseconds", "3us", 3 * time.Microsecond},
		{"go nanoseconds", "7ns", 7},
		{"max int64 nanoseconds in go form", "2562047h47m16.854775807s", math.MaxInt64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseDuration(tt.in)
			if err != nil {
				t.Fatalf("ParseDuration(%q) error = %v, want nil", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseDuration(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseDuration_Errors(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr error // besides ErrInvalidDuration, which every case wraps
	}{
		{"empty", "", nil},
		{"only spaces", "   ", nil},
		{"negative milliseconds", "-5", ErrNegativeDuration},
		{"negative with unit", "-1d", ErrNegativeDuration},
		{"negative go form", "-1h30m", ErrNegativeDuration},
		{"plus sign", "+5s", nil},
		{"unit without number", "d", nil},
		{"unknown unit", "5x", nil},
		{"upper-case unit", "5D", nil},
		{"two synapse units", "1d12h", nil},
		{"fraction of a day", "1.5d", nil},
		{"inner space", "5 d", nil},
		{"underscore", "1_000", nil},
		{"hex", "0x10", nil},
		{"garbage", "soon", nil},
		{"float without unit", "1.5", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseDuration(tt.in)
			if err == nil {
				t.Fatalf("ParseDuration(%q) = %v, want an error", tt.in, got)
			}
			if !errors.Is(err, ErrInvalidDuration) {
				t.Errorf("ParseDuration(%q) error = %v, want it to wrap ErrInvalidDuration", tt.in, err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("ParseDuration(%q) error = %v, want it to wrap %v", tt.in, err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), `"`+tt.in+`"`) {
				t.Errorf("ParseDuration(%q) error = %q, want it to quote the input", tt.in, err)
			}
		})
	}
}

func TestFormatDuration(t *testing.T) {
	tests := []struct {
		name string
		in   time.Duration
		want string
	}{
		{"zero", 0, "0"},
		{"milliseconds", 1500 * time.Millisecond, "1500"},
		{"seconds", 10 * time.Second, "10s"},
		{"minutes not hours", 90 * time.Minute, "90m"},
		{"hours", 36 * time.Hour, "36h"},
		{"days", 3 * day, "3d"},
		{"weeks", 2 * week, "2w"},
		{"years", 2 * year, "2y"},
		{"sub-millisecond uses go form", 1500 * time.Microsecond, "1.5ms"},
		{"negative uses go form", -time.Second, "-1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := FormatDuration(tt.in); got != tt.want {
				t.Errorf("FormatDuration(%v) = %q, want %q", int64(tt.in), got, tt.want)
			}
			if tt.in < 0 {
				return
			}
			back, err := ParseDuration(FormatDuration(tt.in))
			if err != nil || back != tt.in {
				t.Errorf("ParseDuration(FormatDuration(%v)) = %v, %v; want %v, nil", int64(tt.in), back, err, tt.in)
			}
		})
	}
}

// durationDoc holds a Duration and a *Duration, as the config does.
type durationDoc struct {
	D Duration  `json:"d" yaml:"d"`
	P *Duration `json:"p" yaml:"p"`
}

type durationCase struct {
	name    string
	in      string
	start   durationDoc
	want    durationDoc
	wantErr error
}

// checkDecode decodes each case's input over its start with unmarshal.
func checkDecode(t *testing.T, unmarshal func([]byte, any) error, tests []durationCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.start
			err := unmarshal([]byte(tt.in), &got)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("decode %s: error = %v, want %v", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("decode %s: error = %v", tt.in, err)
			}
			if got.D != tt.want.D {
				t.Errorf("D = %+v, want %+v", got.D, tt.want.D)
			}
			if (got.P == nil) != (tt.want.P == nil) || got.P != nil && *got.P != *tt.want.P {
				t.Errorf("P = %+v, want %+v", got.P, tt.want.P)
			}
		})
	}
}

func TestDuration_UnmarshalJSON(t *testing.T) {
	type doc = durationDoc
	checkDecode(t, json.Unmarshal, []durationCase{
		{"integer is milliseconds", `{"d": 500}`, doc{}, doc{D: DurationOf(500 * time.Millisecond)}, nil},
		{"synapse string", `{"d": "1d"}`, doc{}, doc{D: DurationOf(day)}, nil},
		{"digits string is milliseconds", `{"d": "500"}`, doc{}, doc{D: DurationOf(500 * time.Millisecond)}, nil},
		{"zero is set", `{"d": 0}`, doc{}, doc{D: DurationOf(0)}, nil},
		{"absent stays unset", `{}`, doc{}, doc{}, nil},
		{"null stays unset", `{"d": null}`, doc{}, doc{}, nil},
		{"null keeps a default", `{"d": null}`, doc{D: DurationOf(time.Hour)}, doc{D: DurationOf(time.Hour)}, nil},
		{"null pointer is nil", `{"p": null}`, doc{P: &Duration{}}, doc{}, nil},
		{"pointer", `{"p": "1y"}`, doc{}, doc{P: &Duration{Duration: year, Set: true}}, nil},
		{"negative integer", `{"d": -1}`, doc{}, doc{}, ErrNegativeDuration},
		{"negative string", `{"d": "-1s"}`, doc{}, doc{}, ErrNegativeDuration},
		{"fraction", `{"d": 1.5}`, doc{}, doc{}, ErrInvalidDuration},
		{"exponent", `{"d": 1e3}`, doc{}, doc{}, ErrInvalidDuration},
		{"bool", `{"d": true}`, doc{}, doc{}, ErrInvalidDuration},
		{"object", `{"d": {}}`, doc{}, doc{}, ErrInvalidDuration},
		{"beyond the maximum", `{"d": "300y"}`, doc{}, doc{D: DurationOf(MaxDuration)}, nil},
		{"integer beyond the maximum", `{"d": 99999999999999999999}`, doc{}, doc{D: DurationOf(MaxDuration)}, nil},
	})
}

func TestDuration_MarshalJSON(t *testing.T) {
	tests := []struct {
		name string
		in   Duration
		want string
	}{
		{"unset is null", Duration{}, `null`},
		{"set zero", DurationOf(0), `"0"`},
		{"days", DurationOf(3 * day), `"3d"`},
		{"milliseconds", DurationOf(1500 * time.Millisecond), `"1500"`},
		{"unset but non-zero is written", Duration{Duration: time.Second}, `"1s"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(tt.in)
			if err != nil || string(b) != tt.want {
				t.Fatalf("Marshal(%+v) = %s, %v; want %s, nil", tt.in, b, err, tt.want)
			}
			var back Duration
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatalf("Unmarshal(%s) error = %v", b, err)
			}
			if back.Duration != tt.in.Duration {
				t.Errorf("round trip = %v, want %v", back.Duration, tt.in.Duration)
			}
		})
	}
}

func TestDuration_MarshalYAML(t *testing.T) {
	tests := []struct {
		name string
		in   Duration
		want any
	}{
		{"unset is null", Duration{}, nil},
		{"milliseconds are an integer", DurationOf(500 * time.Millisecond), int64(500)},
		{"zero is an integer", DurationOf(0), int64(0)},
		{"unit form is a string", DurationOf(time.Hour), "1h"},
		{"go form is a string", DurationOf(time.Microsecond), "1µs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.in.MarshalYAML()
			if err != nil || got != tt.want {
				t.Errorf("MarshalYAML() = %#v, %v; want %#v, nil", got, err, tt.want)
			}
		})
	}
}

func TestDuration_UnmarshalText(t *testing.T) {
	var d Duration
	if err := d.UnmarshalText([]byte("1w")); err != nil || d != DurationOf(week) {
		t.Fatalf("UnmarshalText(1w) = %+v, %v; want %+v, nil", d, err, DurationOf(week))
	}
	if err := d.UnmarshalText([]byte("nope")); !errors.Is(err, ErrInvalidDuration) {
		t.Fatalf("UnmarshalText(nope) error = %v, want ErrInvalidDuration", err)
	}
	if d != DurationOf(week) {
		t.Errorf("after a failed UnmarshalText d = %+v, want it unchanged", d)
	}
	if got := DurationOf(90 * time.Minute).String(); got != "90m" {
		t.Errorf("String() = %q, want 90m", got)
	}
}

// FuzzParseDuration checks that ParseDuration never panics, never returns a
// negative duration, agrees with an independent big-integer reading of
// Synapse's syntax (MaxDuration beyond it) and with time.ParseDuration for
// the rest, and that
// FormatDuration's output parses back to the same value.
func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{
		"", "0", "500", "10s", "5m", "12h", "1d", "2w", "1y", "106751d", "106752d",
		"293y", "-1s", "+1s", "1h30m", "1.5s", "250ms", "1µs", " 3d ", "d", "1d12h",
		"9223372036854", "9223372036855", "99999999999999999999", "0x10", "1_000",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseDuration(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidDuration) {
				t.Fatalf("ParseDuration(%q) error = %v, does not wrap ErrInvalidDuration", s, err)
			}
		} else if got < 0 {
			t.Fatalf("ParseDuration(%q) = %v, want >= 0", s, got)
		}

		if want, ok, overflow := referenceSynapse(strings.TrimSpace(s)); ok {
			switch {
			case overflow && (err != nil || got != MaxDuration):
				t.Fatalf("ParseDuration(%q) = %v, %v; want MaxDuration", s, got, err)
			case !overflow && (err != nil || got != want):
				t.Fatalf("ParseDuration(%q) = %v, %v; want %v, nil", s, got, err, want)
			}
		} else if t0 := strings.TrimSpace(s); t0 != "" && t0[0] != '-' && t0[0] != '+' {
			if want, gerr := time.ParseDuration(t0); gerr == nil && (err != nil || got != want) {
				t.Fatalf("ParseDuration(%q) = %v, %v; time.ParseDuration = %v", s, got, err, want)
			}
		}

		if err == nil {
			text := FormatDuration(got)
			back, err := ParseDuration(text)
			if err != nil || back != got {
				t.Fatalf("ParseDuration(FormatDuration(%v) = %q) = %v, %v", int64(got), text, back, err)
			}
		}
	})
}

// referenceSynapse reads s as Synapse does (digits, optional unit) with
// big integers: ok is false when s is not of that form.
func referenceSynapse(s string) (d time.Duration, ok, overflow bool) {
	if s == "" {
		return 0, false, false
	}
	scale := int64(time.Millisecond)
	units := map[byte]time.Duration{'s': time.Second, 'm': time.Minute, 'h': time.Hour, 'd': day, 'w': week, 'y': year}
	if u, found := units[s[len(s)-1]]; found {
		scale, s = int64(u), s[:len(s)-1]
	}
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, false, false
	}
	n, _ := new(big.Int).SetString(s, 10)
	n.Mul(n, big.NewInt(scale))
	if !n.IsInt64() {
		return 0, true, true
	}
	return time.Duration(n.Int64()), true, false
}

// TestDuration_UnmarshalYAML: a YAML integer is milliseconds in every
// spelling YAML has for one (PyYAML hands Synapse each as an int), and
// other scalars are read as text.
func TestDuration_UnmarshalYAML(t *testing.T) {
	type doc = durationDoc
	checkDecode(t, yaml.Unmarshal, []durationCase{
		{"d: 86400000", "d: 86400000", doc{}, doc{D: DurationOf(day)}, nil},
		{"d: 86_400_000", "d: 86_400_000", doc{}, doc{D: DurationOf(day)}, nil},
		{"d: 0x5265C00", "d: 0x5265C00", doc{}, doc{D: DurationOf(day)}, nil},
		{"d: +86400000", "d: +86400000", doc{}, doc{D: DurationOf(day)}, nil},
		{"d: '86400000'", "d: '86400000'", doc{}, doc{D: DurationOf(day)}, nil},
		{"d: 1d", "d: 1d", doc{}, doc{D: DurationOf(day)}, nil},
		{"d: 0", "d: 0", doc{}, doc{D: DurationOf(0)}, nil},
		{"d: 1000y", "d: 1000y", doc{}, doc{D: DurationOf(MaxDuration)}, nil},
		{"d: 9223372036855", "d: 9223372036855", doc{}, doc{D: DurationOf(MaxDuration)}, nil},
		{"d: 99999999999999999999", "d: 99999999999999999999", doc{}, doc{D: DurationOf(MaxDuration)}, nil},
		{"d: null", "d: null", doc{D: DurationOf(time.Hour)}, doc{D: DurationOf(time.Hour)}, nil},
		{"p: null", "p: null", doc{P: &Duration{}}, doc{}, nil},
		{"p: 10s", "p: 10s", doc{}, doc{P: &Duration{Duration: 10 * time.Second, Set: true}}, nil},
		{"d: -5", "d: -5", doc{}, doc{}, ErrNegativeDuration},
		{"d: -0x10", "d: -0x10", doc{}, doc{}, ErrNegativeDuration},
		{"d: 1.5", "d: 1.5", doc{}, doc{}, ErrInvalidDuration},
		{"d: true", "d: true", doc{}, doc{}, ErrInvalidDuration},
		{"d: soon", "d: soon", doc{}, doc{}, ErrInvalidDuration},
	})
}
