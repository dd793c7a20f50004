package bus

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/scrollback/scrollback/commands"
)

func TestCheck_RejectsLyingLengths(t *testing.T) {
	tests := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrNotMap},
		{"array", []byte{0x90}, ErrNotMap},
		{"nil", []byte{0xc0}, ErrNotMap},
		{"json text", []byte(`{"a":1}`), ErrNotMap},
		// The 8-byte kind of input that made msgpack v5.4.1 allocate
		// gigabytes: a map32 claiming 4 billion entries.
		{"map32 bomb", []byte{0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'a', 0x01}, ErrTooLarge},
		{"map claims more than it holds", []byte{0xde, 0x10, 0x00, 0xa1, 'a', 0x01}, ErrBadMsgpack},
		{"array32 inside", []byte{0x81, 0xa1, 'a', 0xdd, 0x7f, 0xff, 0xff, 0xff, 0x01}, ErrBadMsgpack},
		{"str32 longer than input", []byte{0x81, 0xa1, 'a', 0xdb, 0x00, 0x10, 0x00, 0x00, 'x'}, ErrBadMsgpack},
		{"non-string key", []byte{0x81, 0x01, 0x01}, ErrBadMsgpack},
		{"binary value", []byte{0x81, 0xa1, 'a', 0xc4, 0x01, 0x00}, ErrBadMsgpack},
		{"extension value", []byte{0x81, 0xa1, 'a', 0xd4, 0x01, 0x00}, ErrBadMsgpack},
		{"trailing bytes", []byte{0x80, 0x00}, ErrBadMsgpack},
		{"truncated", []byte{0x81, 0xa1, 'a'}, ErrBadMsgpack},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Check(tt.data, DefaultLimits)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Check(%x) = %v, want %v", tt.data, err, tt.want)
			}
			if _, err := DecodeMap(tt.data, DefaultLimits); err == nil {
				t.Fatal("DecodeMap accepted it")
			}
		})
	}
}

func TestCheck_Limits(t *testing.T) {
	deep := map[string]any{}
	cur := deep
	for range 150 {
		next := map[string]any{}
		cur["x"] = next
		cur = next
	}
	data, _ := Encode(deep)
	if err := Check(data, DefaultLimits); !errors.Is(err, ErrTooDeep) || !errors.Is(err, ErrTooLarge) {
		t.Fatalf("deep nesting: %v", err)
	}
	many := make([]any, 2000)
	data, _ = Encode(map[string]any{"a": many})
	if err := Check(data, Limits{MaxBytes: 1 << 20, MaxDepth: 10, MaxElements: 1000}); !errors.Is(err, ErrTooManyValues) || !errors.Is(err, ErrTooLarge) {
		t.Fatalf("element count: %v", err)
	}
	// Each map key is a value: {"a": [2000 nils]} is 2003 of them.
	if err := Check(data, Limits{MaxBytes: 1 << 20, MaxDepth: 10, MaxElements: 2003}); err != nil {
		t.Fatalf("2003 values within a limit of 2003: %v", err)
	}
	if err := Check(data, Limits{MaxBytes: 1 << 20, MaxDepth: 10, MaxElements: 2002}); !errors.Is(err, ErrTooManyValues) {
		t.Fatalf("2003 values within a limit of 2002: %v", err)
	}
	big := bytes.Repeat([]byte{'x'}, 100)
	data, _ = Encode(map[string]any{"a": string(big)})
	if err := Check(data, Limits{MaxBytes: 50, MaxDepth: 10, MaxElements: 10}); !errors.Is(err, ErrTooManyBytes) || !errors.Is(err, ErrTooLarge) {
		t.Fatalf("byte size: %v", err)
	}
}

func TestDecodeMap_JSONEquivalentValues(t *testing.T) {
	in := map[string]any{"i": int64(-5), "u": uint64(7), "f": 1.5, "s": "x", "b": true, "n": nil, "l": []any{int64(1), "a"}, "m": map[string]any{"k": "v"}}
	data, err := Encode(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeMap(data, DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	if out["i"] != int64(-5) || out["f"] != 1.5 || out["s"] != "x" || out["b"] != true || out["n"] != nil {
		t.Fatalf("decoded %#v", out)
	}
	if n, ok := commands.AsInt(out["u"]); !ok || n != 7 {
		t.Fatalf("small unsigned decoded as %T %v", out["u"], out["u"])
	}
}

// referenceDecode is what DecodeMap did before its own decoder: msgpack's
// loose interface decoding, after Check.
func referenceDecode(data []byte) (map[string]any, error) {
	if err := Check(data, DefaultLimits); err != nil {
		return nil, err
	}
	dec := msgpack.NewDecoder(bytes.NewReader(data))
	dec.UseLooseInterfaceDecoding(true)
	var m map[string]any
	err := dec.Decode(&m)
	return m, err
}

// sameValue is reflect.DeepEqual with NaN equal to itself.
func sameValue(a, b any) bool {
	switch x := a.(type) {
	case float64:
		y, ok := b.(float64)
		return ok && (x == y || math.IsNaN(x) && math.IsNaN(y))
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) || (x == nil) != (y == nil) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !sameValue(v, w) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) || (x == nil) != (y == nil) {
			return false
		}
		for i := range x {
			if !sameValue(x[i], y[i]) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a, b)
}

func TestDecodeMap_EveryFormat(t *testing.T) {
	// One value of every format Check accepts, each written out by hand.
	in := []byte{0xde, 0x00, 23, // map16 of 23 entries
		0xda, 0x00, 0x01, 'p', 0xcd, 0x01, 0x00, // str16 key, uint16 256
		0xdb, 0x00, 0x00, 0x00, 0x01, 'q', 0xce, 0x00, 0x01, 0x00, 0x00, // str32 key, uint32 65536
		0xa1, 'r', 0xd0, 0x80, // int8 -128
		0xa1, 's', 0xd2, 0xff, 0xff, 0xff, 0xfe, // int32 -2
		0xa1, 't', 0xda, 0x00, 0x02, 'a', 'b', // str16
		0xa1, 'u', 0xdb, 0x00, 0x00, 0x00, 0x01, 'c', // str32
		0xa1, 'v', 0xdd, 0x00, 0x00, 0x00, 0x01, 0xc3, // array32 of one
		0xa1, 'w', 0xdf, 0x00, 0x00, 0x00, 0x01, 0xa1, 'y', 0x01, // map32 of one
		0xa1, 'a', 0x05, // positive fixint
		0xa1, 'b', 0xf0, // negative fixint
		0xa1, 'c', 0xcc, 0xff, // uint8
		0xa1, 'd', 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // uint64
		0xa1, 'e', 0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0, // int64
		0xa1, 'f', 0xca, 0x3f, 0xc0, 0, 0, // float32 1.5
		0xa1, 'g', 0xcb, 0x40, 0x04, 0, 0, 0, 0, 0, 0, // float64 2.5
		0xa1, 'h', 0xd9, 0x02, 'h', 'i', // str8
		0xa1, 'i', 0xdc, 0x00, 0x00, // array16, empty
		0xa1, 'j', 0x90, // fixarray, empty
		0xa1, 'k', 0xde, 0x00, 0x01, 0xd9, 0x01, 'x', 0xc0, // map16 with a str8 key
		0xa1, 'l', 0xc2,
		0xa1, 'm', 0xc3,
		0xa1, 'n', 0xd1, 0xff, 0x00, // int16 -256
		0xa1, 'o', 0x80, // empty map
	}
	got, err := DecodeMap(in, DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"a": int64(5), "b": int64(-16), "c": uint64(255), "d": uint64(math.MaxUint64), "e": int64(math.MinInt64),
		"f": 1.5, "g": 2.5, "h": "hi", "i": []any{}, "j": []any{}, "k": map[string]any{"x": nil}, "l": false, "m": true,
		"n": int64(-256), "o": map[string]any{},
		"p": uint64(256), "q": uint64(65536), "r": int64(-128), "s": int64(-2), "t": "ab", "u": "c",
		"v": []any{true}, "w": map[string]any{"y": int64(1)}}
	if !sameValue(got, want) {
		t.Fatalf("decoded %#v\nwant    %#v", got, want)
	}
	ref, err := referenceDecode(in)
	if err != nil || !sameValue(got, ref) {
		t.Fatalf("msgpack decodes %#v (%v)", ref, err)
	}
}

// FuzzDecodeMap: any bytes are either rejected or decoded into exactly
// what msgpack's loose decoding gives (the decoder DecodeMap replaced),
// which re-encodes and decodes to the same value; nothing panics, and
// the decoder never sees a length the input cannot back.
func FuzzDecodeMap(f *testing.F) {
	seed, _ := Encode(map[string]any{"event_id": "$a", "content": map[string]any{"body": "x", "n": []any{1, 2.5, nil, true}}})
	f.Add(seed)
	f.Add([]byte{0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'a', 0x01})
	f.Add([]byte{0x81, 0xa1, 'a', 0xdd, 0x7f, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeMap(data, DefaultLimits)
		if err != nil {
			return
		}
		ref, err := referenceDecode(data)
		if err != nil {
			t.Fatalf("msgpack rejects what DecodeMap decoded: %v", err)
		}
		if !sameValue(m, ref) {
			t.Fatalf("DecodeMap gives %#v, msgpack %#v", m, ref)
		}
		again, err := msgpack.Marshal(m)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		back, err := DecodeMap(again, DefaultLimits)
		if err != nil {
			t.Fatalf("re-encoded map rejected: %v", err)
		}
		if !sameValue(back, m) {
			t.Fatalf("re-encoded map decodes to %#v, not %#v", back, m)
		}
	})
}

// BenchmarkDecodeMap decodes a federation-shaped message event (hashes,
// signatures, a reply relation) with DecodeMap and with msgpack's loose
// decoding, which DecodeMap used before its own decoder.
func BenchmarkDecodeMap(b *testing.B) {
	data, err := Encode(map[string]any{
		"event_id": "$Nm5Qm1l0aGlzaXNhbmV2ZW50aWQ", "room_id": "!bench0042:bench.example", "type": "m.room.message",
		"sender": "@user17:bench.example", "origin_server_ts": int64(1_700_000_123_456), "depth": int64(123457),
		"prev_events": []string{"$Pm5Qm1l0aGlzaXNhbmV2ZW50aWQ"},
		"content": map[string]any{"msgtype": "m.text", "body": "a message of about the length people write in a chat room",
			"m.relates_to": map[string]any{"m.in_reply_to": map[string]any{"event_id": "$Qm5Qm1l0aGlzaXNhbmV2ZW50aWQ"}}},
		"unsigned":   map[string]any{"age": int64(1234)},
		"hashes":     map[string]any{"sha256": "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"},
		"signatures": map[string]any{"bench.example": map[string]any{"ed25519:a": "c2lnc2lnc2lnc2lnc2lnc2lnc2lnc2lnc2lnc2ln"}},
	})
	if err != nil {
		b.Fatal(err)
	}
	for _, d := range []struct {
		name   string
		decode func([]byte) (map[string]any, error)
	}{
		{"decoder", func(data []byte) (map[string]any, error) { return DecodeMap(data, DefaultLimits) }},
		{"msgpack", referenceDecode},
	} {
		b.Run(d.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := d.decode(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
