package bus

import (
	"bytes"
	"errors"
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
	if err := Check(data, DefaultLimits); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("deep nesting: %v", err)
	}
	many := make([]any, 2000)
	data, _ = Encode(map[string]any{"a": many})
	if err := Check(data, Limits{MaxBytes: 1 << 20, MaxDepth: 10, MaxElements: 1000}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("element count: %v", err)
	}
	big := bytes.Repeat([]byte{'x'}, 100)
	data, _ = Encode(map[string]any{"a": string(big)})
	if err := Check(data, Limits{MaxBytes: 50, MaxDepth: 10, MaxElements: 10}); !errors.Is(err, ErrTooLarge) {
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

// FuzzDecodeMap: any bytes are either rejected or decoded into a map that
// re-encodes and decodes to the same value; nothing panics, and the
// decoder never sees a length the input cannot back.
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
		again, err := msgpack.Marshal(m)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if _, err := DecodeMap(again, DefaultLimits); err != nil {
			t.Fatalf("re-encoded map rejected: %v", err)
		}
	})
}
