package commands

import (
	"errors"
	"strings"
	"testing"
)

func TestParseRoomToken_Valid(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want RoomToken // multi is checked through String
		str  string    // what String gives back
	}{
		{"live zero", "s0", RoomToken{}, "s0"},
		{"live", "s2633508", RoomToken{Stream: 2633508}, "s2633508"},
		{"live negative (backfilled)", "s-17", RoomToken{Stream: -17}, "s-17"},
		{"live plus sign", "s+5", RoomToken{Stream: 5}, "s5"},
		{"live leading zeros", "s007", RoomToken{Stream: 7}, "s7"},
		{"live minus zero", "s-0", RoomToken{}, "s0"},
		{"live max int64", "s9223372036854775807", RoomToken{Stream: 1<<63 - 1}, "s9223372036854775807"},
		{"live min int64", "s-9223372036854775808", RoomToken{Stream: -1 << 63}, "s-9223372036854775808"},
		{"topological", "t426-2633508", RoomToken{Topological: 426, Stream: 2633508, IsTopological: true}, "t426-2633508"},
		{"topological zero", "t0-0", RoomToken{IsTopological: true}, "t0-0"},
		{"topological negative stream", "t5--17", RoomToken{Topological: 5, Stream: -17, IsTopological: true}, "t5--17"},
		{"topological plus signs", "t+1-+2", RoomToken{Topological: 1, Stream: 2, IsTopological: true}, "t1-2"},
		{"topological of test_topo_token_is_accepted", "t1-0", RoomToken{Topological: 1, IsTopological: true}, "t1-0"},
		{"multi-writer", "m56~2.58~3.59", RoomToken{Stream: 56}, "m56~2.58~3.59"},
		{"multi-writer one writer", "m5~1.6", RoomToken{Stream: 5}, "m5~1.6"},
		{"multi-writer empty part (m5~)", "m5~", RoomToken{Stream: 5}, "s5"},
		{"multi-writer no parts", "m5", RoomToken{Stream: 5}, "s5"},
		{"multi-writer inner empty part", "m5~~1.6~", RoomToken{Stream: 5}, "m5~1.6"},
		{"multi-writer leading zeros", "m05~01.07", RoomToken{Stream: 5}, "m5~1.7"},
		{"multi-writer negative min", "m-3~1.0", RoomToken{Stream: -3}, "m-3~1.0"},
		{"multi-writer repeated id keeps last pos", "m5~1.3~2.9~1.7", RoomToken{Stream: 5}, "m5~1.7~2.9"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRoomToken(tc.in)
			if err != nil {
				t.Fatalf("ParseRoomToken(%q): %v", tc.in, err)
			}
			if got.Topological != tc.want.Topological || got.Stream != tc.want.Stream || got.IsTopological != tc.want.IsTopological {
				t.Errorf("ParseRoomToken(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
			if s := got.String(); s != tc.str {
				t.Errorf("String() = %q, want %q", s, tc.str)
			}
			again, err := ParseRoomToken(got.String())
			if err != nil || again != got {
				t.Errorf("round trip of %q: %+v, %v; want %+v", got.String(), again, err, got)
			}
		})
	}
}

func TestParseRoomToken_Invalid(t *testing.T) {
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"unknown prefix", "x1"},
		{"upper case S", "S1"},
		{"bare digits", "12"},
		{"s without number", "s"},
		{"s sign only", "s-"},
		{"s plus only", "s+"},
		{"s double sign", "s--1"},
		{"s space inside", "s 1"},
		{"s leading space", " s1"},
		{"s trailing space", "s1 "},
		{"s underscore", "s1_000"},
		{"s decimal point", "s1.0"},
		{"s hex", "s0x10"},
		{"s non-ASCII digit", "s\u0661"},
		{"s overflow", "s9223372036854775808"},
		{"s underflow", "s-9223372036854775809"},
		{"t without dash", "t5"},
		{"t negative topological", "t-5-3"},
		{"t empty stream", "t5-"},
		{"t only dash", "t-"},
		{"t bad stream", "t5-x"},
		{"t two dashes in stream", "t1-2-3"},
		{"t space", "t 5-3"},
		{"t topological overflow", "t9223372036854775808-1"},
		{"m empty", "m"},
		{"m no min", "m~1.6"},
		{"m pos equal to min", "m5~1.5"},
		{"m pos below min", "m5~1.4"},
		{"m one pos below min among others", "m56~2.58~3.50"},
		{"m repeated id ending below min", "m5~1.7~1.3"},
		{"m part without dot", "m5~1"},
		{"m part with two dots", "m5~1.6.7"},
		{"m bad instance id", "m5~a.6"},
		{"m empty pos", "m5~1."},
		{"m empty instance id", "m5~.6"},
		{"m bad min", "mx~1.6"},
		{"m pos overflow", "m5~1.9223372036854775808"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRoomToken(tc.in)
			if err == nil {
				t.Fatalf("ParseRoomToken(%q) = %+v, want error", tc.in, got)
			}
			if !errors.Is(err, ErrInvalidToken) {
				t.Errorf("error %v does not wrap ErrInvalidToken", err)
			}
		})
	}
}

func TestParseRoomToken_ErrorQuotesBoundedText(t *testing.T) {
	_, err := ParseRoomToken("x" + strings.Repeat("9", 10000))
	if err == nil || len(err.Error()) > 200 {
		t.Fatalf("error = %v, want a short error", err)
	}
}

func mustRoom(t *testing.T, s string) RoomToken {
	t.Helper()
	r, err := ParseRoomToken(s)
	if err != nil {
		t.Fatalf("ParseRoomToken(%q): %v", s, err)
	}
	return r
}

func TestRoomToken_Less(t *testing.T) {
	tests := []struct {
		name string
		a, b string
		want bool
	}{
		{"live before live", "s1", "s2", true},
		{"live equal", "s2", "s2", false},
		{"live after live", "s3", "s2", false},
		{"negative live before zero", "s-5", "s0", true},
		{"topo by topological first", "t1-100", "t2-5", true},
		{"topo later topological", "t2-5", "t1-100", false},
		{"topo same topological by stream", "t3-4", "t3-5", true},
		{"topo same topological negative stream", "t3--5", "t3--4", true},
		{"topo equal", "t3-5", "t3-5", false},
		{"mixed compares stream only (topo first)", "t100-4", "s5", true},
		{"mixed compares stream only (live first)", "s5", "t1-6", true},
		{"mixed equal streams", "t1-5", "s5", false},
		{"multi-writer uses min pos", "m5~1.9", "s6", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := mustRoom(t, tc.a), mustRoom(t, tc.b)
			if got := a.Less(b); got != tc.want {
				t.Errorf("%s.Less(%s) = %v, want %v", tc.a, tc.b, got, tc.want)
			}
		})
	}
}

func TestRoomToken_IsBeforeOrEq(t *testing.T) {
	tests := []struct {
		name string
		a, b string
		want bool
	}{
		{"equal live", "s5", "s5", true},
		{"earlier live", "s4", "s5", true},
		{"later live", "s6", "s5", false},
		{"ignores topological part", "t9-5", "t1-5", true},
		{"ignores topological part, later stream", "t1-6", "t9-5", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := mustRoom(t, tc.a).IsBeforeOrEq(mustRoom(t, tc.b)); got != tc.want {
				t.Errorf("%s.IsBeforeOrEq(%s) = %v, want %v", tc.a, tc.b, got, tc.want)
			}
		})
	}
}

func TestRoomToken_ZeroValueIsS0(t *testing.T) {
	if s := (RoomToken{}).String(); s != "s0" {
		t.Fatalf("zero RoomToken = %q, want s0", s)
	}
}

func TestParseStreamToken_Valid(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // String() of the result
	}{
		{"start token", "s0_0_0_0_0_0_0_0_0_0_0_0_0", "s0_0_0_0_0_0_0_0_0_0_0_0_0"},
		{"room key only is padded", "s5", "s5_0_0_0_0_0_0_0_0_0_0_0_0"},
		{"ten fields padded (old token)", "s0_0_0_0_0_0_0_0_0_0", "s0_0_0_0_0_0_0_0_0_0_0_0_0"},
		{"twelve fields padded", "s1_2_3_4_5_6_7_8_9_10_11_12", "s1_2_3_4_5_6_7_8_9_10_11_12_0"},
		{"thirteen fields echoed", "s2633508_17_338_6732159_1082514_541479_274711_265584_1_379_4_5_6", "s2633508_17_338_6732159_1082514_541479_274711_265584_1_379_4_5_6"},
		{"topological room key", "t1-0_0_0_0_0_0_0_0_0_0_0_0_0", "t1-0_0_0_0_0_0_0_0_0_0_0_0_0"},
		{"topological negative stream", "t5--17_0_0_0_0_0_0_0_0_0_0_0_0", "t5--17_0_0_0_0_0_0_0_0_0_0_0_0"},
		{"live negative stream", "s-3_1", "s-3_1_0_0_0_0_0_0_0_0_0_0_0"},
		{"multi-writer room key echoed", "m56~2.58~3.59_1", "m56~2.58~3.59_1_0_0_0_0_0_0_0_0_0_0_0"},
		{"multi-writer room key m5~", "m5~_1", "s5_1_0_0_0_0_0_0_0_0_0_0_0"},
		{"multi-writer receipt", "s0_0_0_m5~1.6", "s0_0_0_m5~1.6_0_0_0_0_0_0_0_0_0"},
		{"multi-writer receipt m5~", "s0_0_0_m5~", "s0_0_0_5_0_0_0_0_0_0_0_0_0"},
		{"multi-writer device list", "s0_0_0_0_0_0_0_m7~3.9", "s0_0_0_0_0_0_0_m7~3.9_0_0_0_0_0"},
		{"multi-writer quarantined media", "s0_0_0_0_0_0_0_0_0_0_0_0_m1~2.3", "s0_0_0_0_0_0_0_0_0_0_0_0_m1~2.3"},
		{"leading zeros normalised", "s0_007_0_0012", "s0_7_0_12_0_0_0_0_0_0_0_0_0"},
		{"signed plain field (Python int)", "s0_-1_+2", "s0_-1_2_0_0_0_0_0_0_0_0_0_0"},
		{"max int64 field", "s0_9223372036854775807", "s0_9223372036854775807_0_0_0_0_0_0_0_0_0_0_0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseStreamToken(tc.in)
			if err != nil {
				t.Fatalf("ParseStreamToken(%q): %v", tc.in, err)
			}
			if s := got.String(); s != tc.want {
				t.Errorf("String() = %q, want %q", s, tc.want)
			}
			if n := strings.Count(got.String(), "_") + 1; n != StreamTokenFields {
				t.Errorf("String() has %d fields, want %d", n, StreamTokenFields)
			}
			again, err := ParseStreamToken(got.String())
			if err != nil || again != got {
				t.Errorf("round trip: %+v, %v; want %+v", again, err, got)
			}
		})
	}
}

func TestParseStreamToken_Invalid(t *testing.T) {
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"only separator", "_"},
		{"empty room key", "_0_0"},
		{"fourteen fields", "s0_0_0_0_0_0_0_0_0_0_0_0_0_0"},
		{"many fields", "s0" + strings.Repeat("_0", 1000)},
		{"trailing separator", "s0_"},
		{"empty middle field", "s0__0"},
		{"thirteen fields with empty last", "s0_0_0_0_0_0_0_0_0_0_0_0_"},
		{"bad room key", "x0_0"},
		{"END is not a token", "END"},
		{"non-numeric field", "s0_a"},
		{"space in field", "s0_ 1"},
		{"overflow field", "s0_9223372036854775808"},
		{"multi-writer form in plain field (presence)", "s0_m5~1.6"},
		{"multi-writer form in plain field (groups)", "s0_0_0_0_0_0_0_0_m5~1.6"},
		{"negative receipt", "s0_0_0_-1"},
		{"signed receipt", "s0_0_0_+1"},
		{"negative device list", "s0_0_0_0_0_0_0_-1"},
		{"bad multi-writer receipt", "s0_0_0_m5~1.4"},
		{"multi-writer receipt without min", "s0_0_0_m"},
		{"receipt letters", "s0_0_0_x"},
		{"receipt digit then letters", "s0_0_0_1x"},
		{"topological receipt", "s0_0_0_t1-2"},
		{"live receipt", "s0_0_0_s1"},
		{"bad quarantined media", "s0_0_0_0_0_0_0_0_0_0_0_0_-2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseStreamToken(tc.in)
			if err == nil {
				t.Fatalf("ParseStreamToken(%q) = %v, want error", tc.in, got)
			}
			if !errors.Is(err, ErrInvalidToken) {
				t.Errorf("error %v does not wrap ErrInvalidToken", err)
			}
		})
	}
}

func TestStartToken(t *testing.T) {
	if s := StartToken.String(); s != "s0_0_0_0_0_0_0_0_0_0_0_0_0" {
		t.Fatalf("StartToken = %q", s)
	}
	p, err := ParseStreamToken("s0")
	if err != nil || p != StartToken {
		t.Fatalf("ParseStreamToken(s0) = %+v, %v; want StartToken", p, err)
	}
}

func TestStreamToken_WithRoom(t *testing.T) {
	tok, err := ParseStreamToken("s10_1_2_m3~1.4_5")
	if err != nil {
		t.Fatal(err)
	}
	next := tok.WithRoom(RoomToken{Topological: 7, Stream: 41, IsTopological: true})
	if got, want := next.String(), "t7-41_1_2_m3~1.4_5_0_0_0_0_0_0_0_0"; got != want {
		t.Errorf("WithRoom = %q, want %q", got, want)
	}
	if got, want := tok.String(), "s10_1_2_m3~1.4_5_0_0_0_0_0_0_0_0"; got != want {
		t.Errorf("original changed: %q, want %q", got, want)
	}
}

func TestStreamToken_StringOfHandBuilt(t *testing.T) {
	// Empty Rest fields (a zero StreamToken) serialise as 0.
	if got, want := (StreamToken{}).String(), StartToken.String(); got != want {
		t.Errorf("zero StreamToken = %q, want %q", got, want)
	}
}

func FuzzParseStreamToken(f *testing.F) {
	for _, s := range []string{
		"s0_0_0_0_0_0_0_0_0_0_0_0_0",
		"s5",
		"t5--17_0_0",
		"t426-2633508_17_338_6732159_1082514_541479_274711_265584_1_379",
		"m56~2.58~3.59_1_2_m5~_3_4_5_m7~1.8_0_0_0_0_m1~2.3",
		"m5~",
		"s0_0_0_0_0_0_0_0_0_0_0_0_0_0",
		"s-9223372036854775808_+1_-0",
		"",
		"_",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if r, err := ParseRoomToken(s); err == nil {
			again, err := ParseRoomToken(r.String())
			if err != nil || again != r {
				t.Fatalf("room token %q -> %q -> %+v, %v; want %+v", s, r.String(), again, err, r)
			}
		}
		tok, err := ParseStreamToken(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("error %v does not wrap ErrInvalidToken", err)
			}
			return
		}
		out := tok.String()
		if n := strings.Count(out, "_") + 1; n != StreamTokenFields {
			t.Fatalf("%q -> %q has %d fields", s, out, n)
		}
		again, err := ParseStreamToken(out)
		if err != nil {
			t.Fatalf("%q -> %q does not re-parse: %v", s, out, err)
		}
		if again != tok {
			t.Fatalf("%q -> %q -> %+v, want %+v", s, out, again, tok)
		}
		if again.String() != out {
			t.Fatalf("%q -> %q -> %q", s, out, again.String())
		}
	})
}
