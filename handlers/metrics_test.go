package handlers_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/testenv"
)

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
