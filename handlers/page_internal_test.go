package handlers

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// watermark is a Waiter that has everything applied up to its value.
type watermark uint64

func (watermark) WaitFor(context.Context, string, uint64) error { return nil }
func (w watermark) Watermark(string) uint64                     { return uint64(w) }

// needOf applies evs to a new store one by one and returns the backfill
// that page decides on for req.
func needOf(t *testing.T, r *testenv.Room, evs []testenv.Event, req *MessagesRequest) *backfillNeed {
	s, store := bus.Subjects{Prefix: "sb"}, testenv.NewStore(t)
	for i, ev := range evs {
		data, _ := bus.Encode(map[string]any(ev))
		e := s.Decode(uint64(i+1), s.Room(r.ID, commands.KindEvent), data, 1_800_000_000_000)
		if _, err := store.ApplyBatch(projections.PartitionOf(bus.RoomKey(r.ID), store.Partitions()), []commands.LogEntry{e}); err != nil {
			t.Fatal(err)
		}
	}
	h := &Messages{Store: store, Subjects: s, Now: time.Now, Waiter: watermark(len(evs))}
	var need *backfillNeed
	_ = store.View(r.ID, func(v *projections.RoomView) (err error) { _, need, _, err = h.page(v, r.ID, req, 0); return })
	return need
}

// gapRoom is a room with a backward extremity at depth 20, then n
// messages.
func gapRoom(name string, n int) (*testenv.Room, []testenv.Event) {
	r := testenv.NewRoom(name, "test")
	evs := r.Setup("@alice:test", "@bob:test")
	r.StartAt(20, "$missing:test") // a backward extremity at depth 20
	for i := range n {
		evs = append(evs, r.Msg("@alice:test", fmt.Sprint(i)))
	}
	return r, evs
}

// TestMessages_BackfillFromTheUnclampedCurrTopo: Synapse's get_messages
// passes maybe_backfill the curr_topo of before the departed user's
// clamp.
func TestMessages_BackfillFromTheUnclampedCurrTopo(t *testing.T) {
	r, evs := gapRoom("bfclamp", 2)
	evs = append(evs, r.Member("@bob:test", "@bob:test", "leave")) // depth 22
	for range 40 {
		evs = append(evs, r.Msg("@alice:test", "x")) // up to depth 62
	}
	need := needOf(t, r, evs, &MessagesRequest{UserID: "@bob:test", Backwards: true, Limit: 10})
	if need == nil || need.depth != 62 {
		t.Fatalf("need=%+v, want Synapse's curr_topo 62 (unclamped)", need)
	}
}

// TestMessages_BackfillDecisionWithoutRejected: the events Synapse
// counts against the limit come from get_events_as_list, which leaves
// rejected ones out.
func TestMessages_BackfillDecisionWithoutRejected(t *testing.T) {
	r, evs := gapRoom("bfrej", 20)
	evs[len(evs)-3]["rejected"] = true
	need := needOf(t, r, evs, &MessagesRequest{UserID: "@alice:test", Backwards: true, Limit: 5})
	if need == nil || !need.foreground {
		t.Fatalf("need=%+v: 4 events for limit 5 is a foreground backfill", need)
	}
}

// TestMessagesQuery_BothASCIIChecksBeforeTheTokens: from_request runs
// parse_string for from and to before parsing either token.
func TestMessagesQuery_BothASCIIChecksBeforeTheTokens(t *testing.T) {
	_, err := messagesQuery(httptest.NewRequest("GET", "/x?from=bogus&to=%C3%A9", nil))
	if e := (*commands.Error)(nil); !errors.As(err, &e) || e.Message != "Query parameter 'to' must be ascii" {
		t.Fatalf("got %v", err)
	}
}

// TestMessagesQuery_RepeatedParamsAreEachChecked: Synapse's parse_string
// decodes and checks every value of a repeated parameter, then takes the
// first.
func TestMessagesQuery_RepeatedParamsAreEachChecked(t *testing.T) {
	for _, tc := range []struct{ query, code, msg string }{
		{"dir=b&dir=x", "M_INVALID_PARAM", "Query parameter 'dir' must be one of ['b', 'f']"},
		{"dir=b&dir=%C3%A9", "M_UNKNOWN", "Query parameter 'dir' must be ascii"},
		{"from=END&from=%C3%A9", "M_UNKNOWN", "Query parameter 'from' must be ascii"},
		{"to=s1&to=%C3%A9", "M_UNKNOWN", "Query parameter 'to' must be ascii"},
		{"filter=%7B%7D&filter=%FF", "M_UNKNOWN", "Query parameter 'filter' must be utf-8"},
	} {
		_, err := messagesQuery(httptest.NewRequest("GET", "/x?"+tc.query, nil))
		if e := (*commands.Error)(nil); !errors.As(err, &e) || e.Status != 400 || e.Code != tc.code || e.Message != tc.msg {
			t.Errorf("%s: got %v, want 400 %s %q", tc.query, err, tc.code, tc.msg)
		}
	}
}

// TestMessagesQuery_FilterWithTrailingCloser: Synapse's parse_json_from_args
// decodes the filter with json.JSONDecoder.decode, which raises "Extra
// data" for anything after the first value, a stray ']' or '}' included:
// 400 M_NOT_JSON "Query parameter filter must be a valid JSON object".
// Found by a review helper.
func TestMessagesQuery_FilterWithTrailingCloser(t *testing.T) {
	for _, f := range []string{`{"types":["m.room.message"]}}`, `{"types":[]}]`, `{}}`, `null]`, `[]]`} {
		_, err := messagesQuery(httptest.NewRequest("GET", "/x?filter="+url.QueryEscape(f), nil))
		if e := (*commands.Error)(nil); !errors.As(err, &e) || e.Status != 400 || e.Code != commands.CodeNotJSON || e.Message != "Query parameter filter must be a valid JSON object" {
			t.Errorf("filter %s: got %v, want 400 M_NOT_JSON", f, err)
		}
	}
}
