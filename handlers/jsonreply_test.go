package handlers

import (
	"bytes"
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/scrollback/scrollback/bus"
)

// oldJSON is what the bridge did before replyJSON: decode into maps, then
// encoding/json.
func oldJSON(t testing.TB, data []byte) ([]byte, bool) {
	m, err := bus.DecodeMap(data, bus.DefaultLimits)
	if err != nil {
		return nil, false
	}
	out, err := json.Marshal(m)
	if err != nil {
		return nil, false
	}
	return out, true
}

// sameJSON compares two JSON texts as values (key order aside).
func sameJSON(t testing.TB, a, b []byte) {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("replyJSON wrote invalid JSON %q: %v", a, err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(va, vb) {
		t.Fatalf("replyJSON:\n%s\nencoding/json:\n%s", a, b)
	}
}

func TestReplyJSON_AsEncodingJSON(t *testing.T) {
	for _, v := range []map[string]any{
		{},
		{"chunk": []any{}, "start": "t1-2"},
		{"chunk": []any{map[string]any{"content": map[string]any{"body": "héllo \"q\" \\ \n\t\x01 \u2028 <&>", "n": int64(-5), "big": uint64(math.MaxUint64),
			"f": 1.5, "tiny": 1e-9, "huge": 1e22, "f32": float32(0.1), "neg": int64(math.MinInt64), "ok": true, "nil": nil,
			"list": []any{int8(-1), int16(300), int32(-70000), "x"}}}}, "start": "s1", "end": "s2"},
	} {
		data, err := bus.Encode(v)
		if err != nil {
			t.Fatal(err)
		}
		got, err := replyJSON(data)
		if err != nil {
			t.Fatal(err)
		}
		want, ok := oldJSON(t, data)
		if !ok {
			t.Fatal("encoding/json refused it")
		}
		sameJSON(t, got, want)
	}
	for _, bad := range [][]byte{{}, {0x81}, {0x81, 0xa1}, {0x91, 0xc4, 0x01, 0x00}, {0x80, 0x80}} {
		if _, err := replyJSON(bad); err == nil {
			t.Errorf("replyJSON(% x) accepted", bad)
		}
	}
}

// FuzzReplyJSON: whatever the checker lets through, replyJSON writes the
// same JSON value as decoding and marshalling, or refuses it as they do.
func FuzzReplyJSON(f *testing.F) {
	for _, v := range []map[string]any{{"chunk": []any{map[string]any{"a": 1.25, "b": "\u00e9\u2029"}}, "start": "s1"}} {
		data, _ := bus.Encode(v)
		f.Add(data)
	}
	f.Add([]byte{0x81, 0xa1, 'a', 0xcb, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := replyJSON(data)
		want, ok := oldJSON(t, data)
		if err != nil {
			// The old path kept only the last of repeated keys, so a NaN
			// or an infinity under a repeated key could vanish there.
			if ok && !strings.Contains(err.Error(), "has no JSON form") {
				t.Fatalf("replyJSON refused % x: %v; encoding/json wrote %s", data, err, want)
			}
			return
		}
		if !ok {
			t.Fatalf("replyJSON wrote %s for % x, which the old path refused", got, data)
		}
		if !equalJSON(got, want) && repeatsKey(got) {
			// Two keys that differ only in bytes that are not UTF-8
			// both become U+FFFD: each path then writes a repeated key,
			// replyJSON in the input's order and encoding/json in the
			// sorted order of the original bytes, and a JSON reader
			// keeps whichever comes last. JSON has no one value for
			// such an object, and Matrix events are UTF-8.
			return
		}
		sameJSON(t, got, want)
	})
}

func equalJSON(a, b []byte) bool {
	var va, vb any
	return json.Unmarshal(a, &va) == nil && json.Unmarshal(b, &vb) == nil && reflect.DeepEqual(va, vb)
}

// repeatsKey reports whether an object of the JSON text names a key twice.
func repeatsKey(data []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct {
		object, wantKey bool
		keys            map[string]bool
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			if top != nil && top.object {
				top.wantKey = true // this value ends, the next token is a key
			}
			stack = append(stack, &frame{object: tok == json.Delim('{'), wantKey: true, keys: map[string]bool{}})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			continue
		}
		if top == nil || !top.object {
			continue
		}
		if top.wantKey {
			k := tok.(string)
			if top.keys[k] {
				return true
			}
			top.keys[k] = true
			top.wantKey = false
		} else {
			top.wantKey = true
		}
	}
}

func TestRepeatsKey(t *testing.T) {
	for in, want := range map[string]bool{
		`{"a":1,"a":2}`:                       true,
		`{"a":{"a":1},"b":[{"a":1},{"a":2}]}`: false,
		`{"x":[1,{"k":1,"k":{"k":3}}]}`:       true,
		`{"a":{"b":1},"c":{"b":2},"d":3}`:     false,
		`[{"a":[],"a":null}]`:                 true,
	} {
		if got := repeatsKey([]byte(in)); got != want {
			t.Errorf("repeatsKey(%s) = %v, want %v", in, got, want)
		}
	}
}
