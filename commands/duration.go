package commands

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Duration parsing errors. Every error returned by ParseDuration and by the
// Duration decoders wraps ErrInvalidDuration; negative values also wrap
// ErrNegativeDuration.
var (
	// ErrInvalidDuration is wrapped by every duration parsing error.
	ErrInvalidDuration = errors.New("invalid duration")
	// ErrNegativeDuration is wrapped when a duration has a sign: durations
	// in the configuration are never negative.
	ErrNegativeDuration = errors.New("durations cannot be negative")
)

// MaxDuration is the longest duration in Synapse's syntax that a
// time.Duration holds: 9223372036854 milliseconds, about 292 years. Longer
// ones, which Synapse takes as they are ("1000y" for "keep for ever"), are
// read as MaxDuration, which is for ever in practice.
const MaxDuration = time.Duration(math.MaxInt64/int64(time.Millisecond)) * time.Millisecond

// Units of Synapse's duration syntax, largest first (FormatDuration relies
// on the order). A year is 365 days, as in Synapse.
var synapseUnits = [...]struct {
	suffix byte
	size   time.Duration
}{
	{'y', 365 * 24 * time.Hour},
	{'w', 7 * 24 * time.Hour},
	{'d', 24 * time.Hour},
	{'h', time.Hour},
	{'m', time.Minute},
	{'s', time.Second},
}

// ParseDuration parses a duration in Synapse's syntax, falling back to Go's.
//
// Synapse's syntax (synapse/config/_base.py parse_duration) is tried first:
// a string of decimal digits is a number of milliseconds ("500"), and digits
// followed by one of the suffixes s, m, h, d, w or y scale it to seconds,
// minutes, hours, days, weeks or 365-day years ("10s", "12h", "1d", "1y").
// Anything else is handed to time.ParseDuration, so "1h30m", "1.5s" and
// "250ms" work too; the two syntaxes agree wherever both accept a string
// ("10s", "5m", "2h"). Surrounding spaces are ignored.
//
// Unlike Synapse, ParseDuration rejects signs (ErrNegativeDuration for "-",
// plain ErrInvalidDuration for "+"), underscores and inner spaces, and it
// reads values in Synapse's syntax longer than MaxDuration as MaxDuration.
// Every error wraps ErrInvalidDuration and quotes the input.
func ParseDuration(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	switch {
	case t == "":
		return 0, fmt.Errorf("%w %q: empty", ErrInvalidDuration, s)
	case t[0] == '-':
		return 0, fmt.Errorf("%w %q: %w", ErrInvalidDuration, s, ErrNegativeDuration)
	}
	if d, ok := parseSynapseDuration(t); ok {
		return d, nil
	}
	if t[0] != '+' {
		if d, err := time.ParseDuration(t); err == nil && d >= 0 {
			return d, nil
		}
	}
	return 0, fmt.Errorf("%w %q: want an integer number of milliseconds (\"500\"), "+
		"an integer with one of the units s, m, h, d, w, y (\"10s\", \"1d\"), "+
		"or a Go duration (\"1h30m\", \"1.5s\")", ErrInvalidDuration, s)
}

// parseSynapseDuration parses digits with an optional unit suffix, up to
// MaxDuration. ok is false when s is not of that form.
func parseSynapseDuration(s string) (d time.Duration, ok bool) {
	size := time.Millisecond
	digits := s
	for _, u := range synapseUnits {
		if s[len(s)-1] == u.suffix {
			size, digits = u.size, s[:len(s)-1]
			break
		}
	}
	if digits == "" {
		return 0, false
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	if err != nil || n > uint64(MaxDuration/size) {
		// Only digits, so the only possible failure is the range.
		return MaxDuration, true
	}
	return time.Duration(n) * size, true
}

// FormatDuration writes d in the syntax ParseDuration reads, choosing the
// shortest exact Synapse form: "0", "10s", "90m", "1d", "2w", "1y", or a bare
// number of milliseconds ("1500"). Durations that are not a whole number of
// milliseconds, and negative ones, use Go's syntax (time.Duration.String);
// ParseDuration reads the former back exactly and rejects the latter.
func FormatDuration(d time.Duration) string {
	if d < 0 || d%time.Millisecond != 0 {
		return d.String()
	}
	if d == 0 {
		return "0"
	}
	for _, u := range synapseUnits {
		if d%u.size == 0 {
			return strconv.FormatInt(int64(d/u.size), 10) + string(u.suffix)
		}
	}
	return strconv.FormatInt(int64(d/time.Millisecond), 10)
}

// Duration is a time.Duration read from configuration: a YAML or JSON
// integer is a number of milliseconds and a string is parsed with
// ParseDuration ("10s", "1d", "500", "1h30m"). Set records that a value was
// given, so that an absent optional duration (a retention policy without
// max_lifetime, say) can be told apart from zero.
//
// A null leaves the Duration unchanged: a zero Duration stays zero with
// Set false, and a default stays in place. (A YAML null on a *Duration
// makes the pointer nil; that is how "null = off" options are spelled.)
//
// Duration implements go.yaml.in/yaml/v3's unmarshaling (UnmarshalYAML),
// which reads a YAML integer in any spelling, encoding.TextUnmarshaler,
// json.Unmarshaler, and the matching marshalers.
type Duration struct {
	time.Duration
	// Set is true once a value was decoded or given to DurationOf.
	Set bool
}

// DurationOf returns d as a Duration with Set true.
func DurationOf(d time.Duration) Duration { return Duration{Duration: d, Set: true} }

// String formats the duration with FormatDuration.
func (d Duration) String() string { return FormatDuration(d.Duration) }

// MarshalText formats the duration with FormatDuration.
func (d Duration) MarshalText() ([]byte, error) { return []byte(FormatDuration(d.Duration)), nil }

// UnmarshalText parses text with ParseDuration and sets Set. A YAML integer
// scalar arrives here as its digits, which ParseDuration reads as
// milliseconds, as Synapse does.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := ParseDuration(string(text))
	if err != nil {
		return err
	}
	*d = DurationOf(v)
	return nil
}

// MarshalJSON writes null for an unset zero Duration and a FormatDuration
// string otherwise.
func (d Duration) MarshalJSON() ([]byte, error) {
	if !d.Set && d.Duration == 0 {
		return []byte("null"), nil
	}
	return json.Marshal(FormatDuration(d.Duration))
}

// UnmarshalJSON reads a JSON integer as milliseconds and a JSON string with
// ParseDuration; null leaves d unchanged. Fractional and exponent numbers,
// booleans, arrays and objects are errors.
func (d *Duration) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	switch {
	case string(data) == "null":
		return nil
	case len(data) > 0 && data[0] == '"':
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidDuration, err)
		}
		return d.UnmarshalText([]byte(s))
	case len(data) > 0 && data[0] == '-':
		return fmt.Errorf("%w %s: %w", ErrInvalidDuration, data, ErrNegativeDuration)
	}
	for _, c := range data {
		if c < '0' || c > '9' {
			return fmt.Errorf("%w %s: want an integer number of milliseconds or a duration string", ErrInvalidDuration, data)
		}
	}
	return d.UnmarshalText(data)
}

// UnmarshalYAML reads a YAML integer, in any of YAML's spellings
// (86400000, 86_400_000, 0x5265C00, +86400000: PyYAML hands each to
// Synapse as an int), as milliseconds, up to MaxDuration, and any other
// scalar's text with UnmarshalText. It is the unmarshal-function form,
// which go.yaml.in/yaml/v3 still calls, so that this package needs no
// YAML import. (The decoder never calls it for a null, which leaves the
// Duration as it is.)
func (d *Duration) UnmarshalYAML(unmarshal func(any) error) error {
	var v any
	if unmarshal(&v) == nil {
		if n, ok := yamlInt(v); ok {
			if n < 0 {
				return fmt.Errorf("%w %q: %w", ErrInvalidDuration, strconv.FormatInt(n, 10), ErrNegativeDuration)
			}
			*d = DurationOf(min(time.Duration(n), MaxDuration/time.Millisecond) * time.Millisecond)
			return nil
		}
	}
	var text string
	if err := unmarshal(&text); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidDuration, err)
	}
	return d.UnmarshalText([]byte(text))
}

// yamlInt is the value of a YAML integer as go.yaml.in/yaml/v3 decodes it
// into an any: an int, an int64 beyond int on 32-bit platforms, a uint64
// beyond int64 (math.MaxInt64 here). ok is false for anything else.
func yamlInt(v any) (n int64, ok bool) {
	switch x := v.(type) {
	case int:
		return int64(x), true
	case int64:
		return x, true
	case uint64:
		return math.MaxInt64, true
	}
	return 0, false
}

// MarshalYAML makes go.yaml.in/yaml/v3 write null for an unset zero
// Duration, an integer when the duration is a bare number of milliseconds,
// and a FormatDuration string otherwise.
func (d Duration) MarshalYAML() (any, error) {
	if !d.Set && d.Duration == 0 {
		return nil, nil
	}
	s := FormatDuration(d.Duration)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, nil
	}
	return s, nil
}
