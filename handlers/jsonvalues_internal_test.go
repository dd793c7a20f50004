package handlers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
)

// TestDecodeJSONBody_ValuesCountedAsTheServiceCounts: the bridge refuses a
// body exactly when the service would refuse the same values in a request
// (bus.Check with bus.RequestLimits): one limit, counted one way (every
// value, every key), for bodies of every shape on either side of it.
func TestDecodeJSONBody_ValuesCountedAsTheServiceCounts(t *testing.T) {
	limit := bus.RequestLimits.MaxElements
	shapes := []struct {
		name  string
		build func(n int) any // about n values
	}{
		{"one long array", func(n int) any { return map[string]any{"x": make([]any, n-3)} }},
		{"many keys", func(n int) any {
			m := make(map[string]any, n/2)
			for i := range (n - 1) / 2 {
				m[strconv.Itoa(i)] = nil
			}
			return m
		}},
		{"maps in an array", func(n int) any {
			a := make([]any, (n-3)/3)
			for i := range a {
				a[i] = map[string]any{"b": false}
			}
			return map[string]any{"a": a}
		}},
	}
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			var accepted, refused bool
			for n := limit - 1; n <= limit+2; n++ {
				v := sh.build(n)
				body, err := json.Marshal(v)
				if err != nil {
					t.Fatal(err)
				}
				data, err := bus.Encode(v)
				if err != nil {
					t.Fatal(err)
				}
				service := bus.Check(data, bus.RequestLimits)
				_, err = DecodeJSONBody(httptest.NewRequest(http.MethodPut, "/x", bytes.NewReader(body)), false)
				var e *commands.Error
				switch {
				case err == nil && service == nil:
					accepted = true
				case errors.As(err, &e) && e.Status == 400 && e.Code == commands.CodeLimitExceeded && errors.Is(service, bus.ErrTooManyValues):
					refused = true
					if want := fmt.Sprintf("Request body has too many values (at most %d)", limit); e.Message != want {
						t.Fatalf("%q, want %q", e.Message, want)
					}
				default:
					t.Fatalf("about %d values: the bridge answers %v, the service %v", n, err, service)
				}
			}
			if !accepted || !refused {
				t.Fatalf("accepted %v, refused %v: the sizes tried do not straddle the limit", accepted, refused)
			}
		})
	}
	// A key given twice holds its last value, as the service gets it.
	body := `{"a": [` + strings.Repeat("0,", limit) + `0], "a": 1}`
	if _, err := DecodeJSONBody(httptest.NewRequest(http.MethodPut, "/x", strings.NewReader(body)), false); err != nil {
		t.Fatalf("a repeated key whose last value is small: %v", err)
	}
}

// TestMessagesQuery_FilterOfTooManyValues: a filter is held to the same
// limit as a body. The HTTP server's bound on a request's header keeps
// one far below it today; the bridge does not rely on that.
func TestMessagesQuery_FilterOfTooManyValues(t *testing.T) {
	limit := bus.RequestLimits.MaxElements
	query := func(values int) *http.Request {
		filter := `{"types":[` + strings.Repeat("0,", values-4) + `0]}`
		return httptest.NewRequest(http.MethodGet, "/x?filter="+url.QueryEscape(filter), nil)
	}
	if _, err := messagesQuery(query(limit)); err != nil {
		t.Fatalf("a filter of %d values: %v", limit, err)
	}
	_, err := messagesQuery(query(limit + 1))
	var e *commands.Error
	want := fmt.Sprintf("Query parameter filter has too many values (at most %d)", limit)
	if !errors.As(err, &e) || e.Status != 400 || e.Code != commands.CodeLimitExceeded || e.Message != want {
		t.Fatalf("a filter of %d values: %v, want 400 %s %q", limit+1, err, commands.CodeLimitExceeded, want)
	}
}
