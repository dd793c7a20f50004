package handlers

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
)

// FuzzParseMessagesRequest: any payload is either a request or a Matrix
// error (never a panic, never an internal error).
func FuzzParseMessagesRequest(f *testing.F) {
	for _, m := range []map[string]any{
		{"user_id": "@a:x", "dir": "b", "limit": 50, "from": "t5-10_0_0", "filter": map[string]any{"types": []any{"m.*"}}},
		{"admin": true, "wait_for": 10, "ignored_users": []any{"@b:x"}},
		{"user_id": "@a:x", "limit": -1},
	} {
		data, _ := bus.Encode(m)
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := bus.DecodeMap(data, bus.DefaultLimits)
		if err != nil {
			return
		}
		req, err := ParseMessagesRequest(m)
		if err != nil {
			var e *commands.Error
			if !errors.As(err, &e) || e.Status != 400 {
				t.Fatalf("error %v is not a 400", err)
			}
			return
		}
		if req.Limit < 0 || req.Limit > MaxLimit || (!req.Admin && req.UserID == "") {
			t.Fatalf("accepted %+v", req)
		}
	})
}

// FuzzMessagesQuery: any query string becomes a request map or a 400.
func FuzzMessagesQuery(f *testing.F) {
	f.Add("dir=b&limit=10&from=s5&filter=%7B%22types%22%3A%5B%22m.*%22%5D%7D")
	f.Add("limit=-0&filter=[1]")
	f.Add("limit=99999999999999999999999")
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		r := httptest.NewRequest(http.MethodGet, "/x?"+q.Encode(), nil)
		m, err := messagesQuery(r)
		if err != nil {
			var e *commands.Error
			if !errors.As(err, &e) || e.Status != 400 {
				t.Fatalf("error %v is not a 400", err)
			}
			return
		}
		if _, err := bus.Encode(m); err != nil {
			t.Fatalf("request map does not encode: %v", err)
		}
	})
}

// FuzzDecodeJSONBody: any body is an object, which can be written as JSON
// again (no infinities), or Synapse's 400s, or the 400 of a body of more
// values than the service takes.
func FuzzDecodeJSONBody(f *testing.F) {
	f.Add([]byte(`{"block": true}`))
	f.Add([]byte(`[1]`))
	f.Add([]byte(``))
	f.Add([]byte(`{"a": 1e999}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest(http.MethodPut, "/x", bytes.NewReader(body))
		m, err := DecodeJSONBody(r, false)
		if err != nil {
			var e *commands.Error
			if !errors.As(err, &e) || e.Status != 400 || (e.Code != commands.CodeNotJSON && e.Code != commands.CodeBadJSON && e.Code != commands.CodeLimitExceeded) {
				t.Fatalf("error %v", err)
			}
			return
		}
		if m == nil {
			t.Fatal("nil object without error")
		}
		if _, err := json.Marshal(m); err != nil {
			t.Fatalf("decoded body does not encode as JSON: %v", err)
		}
	})
}

func TestParseLimit(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		err  string
	}{
		{"10", 10, ""}, {" 7 ", 7, ""}, {"+3", 3, ""}, {"0", 0, ""}, {"-0", 0, ""},
		{"99999999999999999999", MaxLimit, ""},
		{"-1", 0, "Query parameter limit must be a positive integer."},
		{"ten", 0, "Query parameter limit must be an integer"},
		{"1.5", 0, "Query parameter limit must be an integer"},
		{"", 0, "Query parameter limit must be an integer"},
		{"--1", 0, "Query parameter limit must be an integer"},
		// Python's int() of bytes: underscores between digits, ASCII
		// whitespace only.
		{"1_0", 10, ""}, {"\t5\n", 5, ""},
		{"1__0", 0, "Query parameter limit must be an integer"},
		{"_1", 0, "Query parameter limit must be an integer"},
		{"1_", 0, "Query parameter limit must be an integer"},
		{"\u00a05", 0, "Query parameter limit must be an integer"},
		// Python's int() refuses more than 4300 digits (its default
		// int_max_str_digits), leading zeros and negatives included.
		{strings.Repeat("1", 4300), MaxLimit, ""},
		{strings.Repeat("1", 4301), 0, "Query parameter limit must be an integer"},
		{"-" + strings.Repeat("0", 4301), 0, "Query parameter limit must be an integer"},
	}
	for _, tt := range tests {
		n, err := parseLimit(tt.in)
		if tt.err != "" {
			var e *commands.Error
			if !errors.As(err, &e) || e.Message != tt.err {
				t.Errorf("parseLimit(%q) err=%v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || n != tt.want {
			t.Errorf("parseLimit(%q)=%d %v, want %d", tt.in, n, err, tt.want)
		}
	}
}

// TestPyUnquote follows Python's urllib.parse.unquote.
func TestPyUnquote(t *testing.T) {
	for in, want := range map[string]string{
		"plain":         "plain",
		"%7B%22a%22%7D": `{"a"}`,
		"%7b":           "{",
		"100%":          "100%",
		"%zz%4":         "%zz%4",
		"%C3%A9":        "é",
		"%FF":           "\uFFFD",
		"a%20b%2":       "a b%2",
		"é%20":          "é ",
		"%25%32%30":     "%20", // once only
	} {
		if got := pyUnquote(in); got != want {
			t.Errorf("strings.Clone(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestTwistedQuery follows Twisted's parse_qs(qs, 1), which gives Synapse
// its request.args.
func TestTwistedQuery(t *testing.T) {
	q := twistedQuery("dir=b;limit=1&raw&from=%zz&filter=%7B%7D&to=&a+b=c+d&dir=f")
	for k, want := range map[string][]string{
		"dir": {"b", "f"}, "limit": {"1"}, "from": {"%zz"}, "filter": {"{}"}, "to": {""}, "a b": {"c d"},
	} {
		if got := q[k]; strings.Join(got, "|") != strings.Join(want, "|") || len(got) != len(want) {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if q.Has("raw") {
		t.Error("a pair without '=' is kept")
	}
}

// TestParseJSONParam_PythonDigitLimit: Python's json, like int(), refuses
// an integer of more than 4300 digits (a 400 M_NOT_JSON in Synapse's
// parse_json); shorter ones past int64 are clamped.
func TestParseJSONParam_PythonDigitLimit(t *testing.T) {
	if v, err := parseJSONParam(`{"a": ` + strings.Repeat("9", 4300) + `}`); err != nil || v.(map[string]any)["a"] != int64(math.MaxInt64) {
		t.Errorf("4300 digits: %v, %v; want MaxInt64", v, err)
	}
	for _, n := range []string{strings.Repeat("9", 4301), "-" + strings.Repeat("9", 4301)} {
		if _, err := parseJSONParam(`{"a": ` + n + `}`); err == nil {
			t.Errorf("%d characters: no error", len(n))
		}
	}
}

// TestMessagesQuery_FilterNestingWithinRequestLimits (found by
// FuzzBridge): the filter sits one level down in the request to the
// service, so a filter nested as deep as a body may be (maxJSONDepth)
// made a request the service refused (bus.RequestLimits), a 400 about
// MessagePack for a read Synapse would answer. The bridge bounds the
// filter where the service bounds the request.
func TestMessagesQuery_FilterNestingWithinRequestLimits(t *testing.T) {
	nested := func(depth int) string { // the innermost value at depth
		return `{"a":` + strings.Repeat("[", depth-1) + "0" + strings.Repeat("]", depth-1) + "}"
	}
	query := func(filter string) *http.Request {
		return httptest.NewRequest(http.MethodGet, "/x?filter="+url.QueryEscape(filter), nil)
	}
	m, err := messagesQuery(query(nested(maxJSONDepth - 1)))
	if err != nil {
		t.Fatalf("filter nested %d deep: %v", maxJSONDepth-1, err)
	}
	data, err := bus.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Check(data, bus.RequestLimits); err != nil {
		t.Fatalf("the service refuses the request the bridge made: %v", err)
	}
	_, err = messagesQuery(query(nested(maxJSONDepth)))
	var e *commands.Error
	if !errors.As(err, &e) || e.Status != 400 || e.Code != commands.CodeNotJSON {
		t.Fatalf("filter nested %d deep: %v, want 400 %s", maxJSONDepth, err, commands.CodeNotJSON)
	}
}
