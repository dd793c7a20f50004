package handlers_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/internal/loadgen"
	"github.com/scrollback/scrollback/testenv"
)

// scrape is the value of series (a name, and its labels as the
// exposition format writes them, sorted) in m's /metrics as served; the
// test fails if it is not there.
func scrape(t *testing.T, m *handlers.Metrics, series string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	v, ok := loadgen.PromValue(rec.Body.Bytes(), series)
	if !ok {
		t.Fatalf("%s is not in /metrics:\n%s", series, rec.Body.String())
	}
	return v
}

// TestMetrics_DiskGauges: the projection file's size, and the bytes of
// its free pages, which grow by what a purge's rows took once the janitor
// has removed them (the file itself does not shrink).
func TestMetrics_DiskGauges(t *testing.T) {
	r := testenv.NewRoom("big", "test")
	evs := r.Setup("@alice:test")
	body := strings.Repeat("x", 1000)
	for range 3000 {
		evs = append(evs, r.Msg("@remote:other.org", body))
	}
	cut := r.Msg("@alice:test", "cut")
	evs = append(evs, cut)
	a, store := rejectingAdmin(t, func() string { return "purge1" }, evs...)
	m := handlers.NewMetrics(nil)
	m.CountDisk(store.DB())
	gauge := func(name string) float64 {
		t.Helper()
		families, err := m.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if f.GetName() == name && len(f.GetMetric()) == 1 {
				return f.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatalf("%s not gathered", name)
		return 0
	}
	fi, err := os.Stat(store.DB().Path())
	if err != nil {
		t.Fatal(err)
	}
	if got := gauge("scrollback_projection_file_bytes"); got != float64(fi.Size()) || got < 3e6 {
		t.Fatalf("file bytes %v, the file has %d (3,000 messages of 1 KB)", got, fi.Size())
	}
	before := gauge("scrollback_projection_free_bytes")
	if _, err := a.PurgeHistory(context.Background(), subjects.APIRoom(r.ID, "purge_history"), mustEncode(t, map[string]any{"event_id": cut.ID()})); err != nil {
		t.Fatal(err)
	}
	drainJanitor(t, store)
	if after := gauge("scrollback_projection_free_bytes"); after < before+2e6 {
		t.Fatalf("free bytes %v before the purge and %v after it: 3 MB of rows went", before, after)
	}
}

// TestMetrics_PurgeBacklog: the purges' background work still waiting,
// in rooms, by stage: a purge's rows until the janitor has deleted them,
// then its erasure until the eraser has deleted its messages from the
// log. Asked of the store at each scrape.
func TestMetrics_PurgeBacklog(t *testing.T) {
	r := testenv.NewRoom("backlog", "test")
	evs := r.Setup("@alice:test")
	for i := range 30 {
		evs = append(evs, r.Msg("@remote:other.org", fmt.Sprint(i)))
	}
	cut := r.Msg("@alice:test", "cut")
	evs = append(evs, cut)
	a, store := rejectingAdmin(t, func() string { return "purge1" }, evs...)
	m := handlers.NewMetrics(nil)
	m.CountPurgeBacklog(store)
	backlog := func() (rows, erasure float64) {
		t.Helper()
		return scrape(t, m, `scrollback_purge_backlog_rooms{stage="rows"}`), scrape(t, m, `scrollback_purge_backlog_rooms{stage="erasure"}`)
	}
	if rows, erasure := backlog(); rows != 0 || erasure != 0 {
		t.Fatalf("before any purge: rows %v, erasure %v; want 0 and 0", rows, erasure)
	}
	if _, err := a.PurgeHistory(context.Background(), subjects.APIRoom(r.ID, "purge_history"), mustEncode(t, map[string]any{"event_id": cut.ID()})); err != nil {
		t.Fatal(err)
	}
	// No janitor runs here: the rows wait, and the janitor queues the
	// erasure as it deletes them.
	if rows, erasure := backlog(); rows != 1 || erasure != 0 {
		t.Fatalf("once the purge is applied: rows %v, erasure %v; want 1 and 0", rows, erasure)
	}
	drainJanitor(t, store)
	if rows, erasure := backlog(); rows != 0 || erasure != 1 {
		t.Fatalf("once the janitor is done: rows %v, erasure %v; want 0 and 1", rows, erasure)
	}
	eraser := &handlers.Eraser{Store: store, Log: a.Log.(noMsgID).log, Subjects: subjects, Compact: true, Logger: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { eraser.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	testenv.WaitFor(t, 10*time.Second, "the eraser to erase the purge's messages", func() bool {
		rows, erasure := backlog()
		return rows == 0 && erasure == 0
	})
}

// TestMetrics_HomeserverOutcomes: a request to the homeserver that its
// shutdown's context ended (the task cancelled, the service stopping) is
// labelled cancelled, not error: a stop must not look like a homeserver
// failing. One the homeserver did not answer in time is an error.
func TestMetrics_HomeserverOutcomes(t *testing.T) {
	m := handlers.NewMetrics(nil)
	for _, err := range []error{
		nil,
		errors.New("500: homeserver error"),
		fmt.Errorf("bus: request sb.hs.leave: %w", context.DeadlineExceeded),
		context.Canceled,
		fmt.Errorf("bus: request sb.hs.leave: %w", context.Canceled),
	} {
		m.ObserveHomeserver("leave", time.Millisecond, err)
	}
	const count = "scrollback_homeserver_request_duration_seconds_count"
	for outcome, want := range map[string]float64{"ok": 1, "error": 2, "cancelled": 2} {
		if got := scrape(t, m, count+`{outcome="`+outcome+`",request="leave"}`); got != want {
			t.Errorf("outcome %s: %v requests, want %v", outcome, got, want)
		}
	}
}
