package loadgen

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPercentile_NearestRank(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one value", ms(7), 99, 7 * time.Millisecond},
		{"median of ten", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 50, 5 * time.Millisecond},
		{"p90 of ten", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 90, 9 * time.Millisecond},
		{"p91 of ten rounds up", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 91, 10 * time.Millisecond},
		{"p100 is the max", ms(1, 2, 3), 100, 3 * time.Millisecond},
		{"tiny p is the min", ms(1, 2, 3), 0.001, time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("Percentile(p%g) = %v, want %v", tt.p, got, tt.want)
			}
		})
	}
	// Float error must not move the rank: 1000 x 99.9 / 100 is 999.0000000000001.
	vals := make([]time.Duration, 1000)
	for i := range vals {
		vals[i] = time.Duration(i + 1)
	}
	if got := Percentile(vals, 99.9); got != 999 {
		t.Errorf("p99.9 of 1..1000 = %v, want 999", got)
	}
}

// TestHist_Percentile compares the histogram's percentiles with exact
// ones of the same values: never below, at most 1/2^bits above.
func TestHist_Percentile(t *testing.T) {
	for _, bits := range []int{DefaultBits, WindowBits} {
		rng := rand.New(rand.NewPCG(1, 2))
		h, h2 := NewHist(bits), NewHist(bits)
		var all []time.Duration
		for i := range 100_000 {
			d := time.Duration(rng.ExpFloat64() * float64(300*time.Microsecond))
			if i%1000 == 0 {
				d *= 1000 // a tail of seconds
			}
			all = append(all, d)
			if i%2 == 0 {
				h.Add(d)
			} else {
				h2.Add(d)
			}
		}
		h.Merge(&h2)
		slices.Sort(all)
		tol := 1 / float64(int(1)<<bits)
		for _, p := range []float64{0.1, 50, 90, 99, 99.9, 100} {
			want := Percentile(all, p)
			got := h.Percentile(p)
			if got < want || float64(got-want) > float64(want)*tol+1 {
				t.Errorf("bits %d: p%g = %v, want %v (within %g above)", bits, p, got, want, tol)
			}
		}
		if h.Max() != all[len(all)-1] || h.Min() != all[0] || h.Count() != uint64(len(all)) {
			t.Errorf("bits %d: max %v min %v n %d, want %v %v %d", bits, h.Max(), h.Min(), h.Count(), all[len(all)-1], all[0], len(all))
		}
	}
}

// TestHist_Buckets checks that every value lands in a bucket whose bounds
// hold it, and that the buckets are contiguous.
func TestHist_Buckets(t *testing.T) {
	for _, bits := range []int{1, WindowBits, DefaultBits} {
		h := NewHist(bits)
		prevHi := time.Duration(-1)
		for i := range (2 + 55) << bits { // up to 2^56 ns
			lo, hi := h.bounds(i)
			if lo != prevHi+1 || hi < lo {
				t.Fatalf("bits %d: bucket %d is [%v, %v], previous ended at %v", bits, i, lo, hi, prevHi)
			}
			prevHi = hi
		}
		for _, d := range []time.Duration{0, 1, 7, 8, 15, 16, 17, 255, 256, 257, 511, 512, time.Millisecond, time.Second, time.Hour} {
			lo, hi := h.bounds(h.bucket(d))
			if d < lo || d > hi {
				t.Errorf("bits %d: %v in bucket [%v, %v]", bits, d, lo, hi)
			}
			if float64(hi-lo) > float64(lo)/float64(int(1)<<bits)+1 {
				t.Errorf("bits %d: bucket of %v is [%v, %v], wider than 1/%d", bits, d, lo, hi, 1<<bits)
			}
		}
	}
}

func TestHist_Bins(t *testing.T) {
	var h Hist
	for range 10 {
		h.Add(150 * time.Microsecond)
	}
	for range 30 {
		h.Add(2 * time.Millisecond)
	}
	bins := h.Bins(10)
	if len(bins) != 20 { // 100µs..1ms..10ms
		t.Fatalf("%d bins, want 20: %v", len(bins), bins)
	}
	var total uint64
	for i, b := range bins {
		total += b.Count
		if i > 0 && b.Lo != bins[i-1].Hi {
			t.Errorf("bin %d starts at %v, the previous ends at %v", i, b.Lo, bins[i-1].Hi)
		}
		for _, d := range []time.Duration{150 * time.Microsecond, 2 * time.Millisecond} {
			if d >= b.Lo && d < b.Hi {
				want := uint64(10)
				if d == 2*time.Millisecond {
					want = 30
				}
				if b.Count != want {
					t.Errorf("bin [%v, %v) holds %d, want %d", b.Lo, b.Hi, b.Count, want)
				}
			}
		}
	}
	if total != 40 {
		t.Errorf("bins hold %d values, want 40", total)
	}
	var empty Hist
	if empty.Bins(10) != nil || empty.Percentile(50) != 0 {
		t.Error("an empty histogram has bins or percentiles")
	}
}

func TestSeries_Windows(t *testing.T) {
	origin := time.Unix(1000, 0)
	s := NewSeries("reads", origin)
	for i := range 30 {
		s.Record(origin.Add(time.Duration(i)*10*time.Millisecond), time.Millisecond) // 0-290ms: 1ms
	}
	s.Record(origin.Add(250*time.Millisecond), 50*time.Millisecond)
	ws := s.Windows()
	if len(ws) != 3 {
		t.Fatalf("%d windows, want 3: %+v", len(ws), ws)
	}
	if ws[2].N != 11 || ws[2].Max != 50*time.Millisecond || ws[0].P99 > time.Millisecond+time.Millisecond/8 {
		t.Errorf("windows = %+v", ws)
	}
	if st := s.Stats(); st.N != 31 || st.Max != 50*time.Millisecond || st.P50 < time.Millisecond {
		t.Errorf("stats = %+v", st)
	}
	if got := len(s.Samples()); got != 31 {
		t.Errorf("%d samples, want 31", got)
	}
	// Between takes the windows that start in the span.
	if st := s.Between(0, 200*time.Millisecond); st.N != 20 || st.Max != time.Millisecond {
		t.Errorf("between 0 and 200ms: %+v, want the 20 requests of 1ms", st)
	}
	if st := s.Between(150*time.Millisecond, time.Second); st.N != 11 || st.Max != 50*time.Millisecond {
		t.Errorf("between 150ms and 1s: %+v, want the last window's 11 requests", st)
	}
	if st := s.Between(time.Second, 2*time.Second); st.N != 0 {
		t.Errorf("between 1s and 2s: %+v, want nothing", st)
	}
	// A long run widens the windows instead of growing without bound.
	s.Record(origin.Add(10*time.Hour), time.Second)
	ws = s.Windows()
	if w := ws[0].End - ws[0].Start; w < 10*time.Hour/MaxWindows {
		t.Errorf("window width %v after a 10 h run, want at least %v", w, 10*time.Hour/MaxWindows)
	}
	if st := s.Stats(); st.N != 32 {
		t.Errorf("n = %d after widening, want 32", st.N)
	}
	var total uint64
	for _, w := range ws {
		total += w.N
	}
	if total != 32 {
		t.Errorf("windows hold %d requests, want 32", total)
	}
}

// TestSeries_Observe: Observe hears every latency recorded, once each,
// after the series has counted it.
func TestSeries_Observe(t *testing.T) {
	origin := time.Now()
	s := NewSeries("reads", origin)
	var heard []time.Duration
	s.Observe = func(lat time.Duration) {
		heard = append(heard, lat)
		if got := s.Count(); got != uint64(len(heard)) {
			t.Errorf("Observe of %v ran with %d requests counted, want %d", lat, got, len(heard))
		}
	}
	for _, lat := range []time.Duration{time.Millisecond, 30 * time.Millisecond, 2 * time.Millisecond} {
		s.Record(origin, lat)
	}
	if want := []time.Duration{time.Millisecond, 30 * time.Millisecond, 2 * time.Millisecond}; !slices.Equal(heard, want) {
		t.Fatalf("heard %v, want %v", heard, want)
	}
}

func TestSeries_Merge(t *testing.T) {
	origin := time.Now()
	a, b := NewSeries("a", origin), NewSeries("b", origin)
	for i := range 3000 {
		a.Record(origin.Add(time.Duration(i)*time.Millisecond), time.Millisecond)
		b.Record(origin.Add(time.Duration(i)*time.Millisecond), 2*time.Millisecond)
	}
	a.Merge(b)
	if st := a.Stats(); st.N != 6000 || st.Max != 2*time.Millisecond {
		t.Errorf("merged stats %+v", st)
	}
	smp := a.Samples()
	if len(smp) != ReservoirSize {
		t.Fatalf("%d samples, want %d", len(smp), ReservoirSize)
	}
	var slow int
	for _, s := range smp {
		if s.Lat == 2*time.Millisecond {
			slow++
		}
	}
	if slow < ReservoirSize/4 || slow > 3*ReservoirSize/4 {
		t.Errorf("%d of %d samples from the second series, want about half", slow, len(smp))
	}
	var n uint64
	for _, w := range a.Windows() {
		n += w.N
	}
	if n != 6000 {
		t.Errorf("windows hold %d, want 6000", n)
	}
}

func TestZipfSizes(t *testing.T) {
	tests := []struct {
		name                  string
		rooms, total, minSize int
		s                     float64
		wantFirst, wantLast   int
		wantErr               error
	}{
		{name: "uniform", rooms: 4, total: 100, minSize: 1, s: 0, wantFirst: 25, wantLast: 25},
		{name: "harmonic", rooms: 3, total: 110, minSize: 1, s: 1, wantFirst: 60, wantLast: 20}, // 60, 30, 20
		{name: "minimum holds", rooms: 1000, total: 20_000, minSize: 10, s: 1.5, wantLast: 10},
		{name: "too few", rooms: 10, total: 50, minSize: 10, s: 1, wantErr: ErrTooFew},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sizes, err := ZipfSizes(tt.rooms, tt.total, tt.minSize, tt.s)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			sum := 0
			for i, n := range sizes {
				sum += n
				if n < tt.minSize {
					t.Errorf("room %d has %d events, below the minimum %d", i, n, tt.minSize)
				}
				if i > 0 && n > sizes[i-1] {
					t.Errorf("room %d has %d events, more than room %d's %d", i, n, i-1, sizes[i-1])
				}
			}
			if sum != tt.total {
				t.Errorf("sizes add up to %d, want %d", sum, tt.total)
			}
			if tt.wantFirst != 0 && sizes[0] != tt.wantFirst {
				t.Errorf("largest = %d, want %d", sizes[0], tt.wantFirst)
			}
			if tt.wantLast != 0 && sizes[len(sizes)-1] != tt.wantLast {
				t.Errorf("smallest = %d, want %d", sizes[len(sizes)-1], tt.wantLast)
			}
		})
	}
	// The shape: with s = 1 the i-th room holds about 1/i of the first.
	sizes, err := ZipfSizes(10_000, 1_000_000, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{1, 9, 99} {
		if r := float64(sizes[0]) / float64(sizes[i]); math.Abs(r-float64(i+1)) > 0.02*float64(i+1)+1 {
			t.Errorf("size[0]/size[%d] = %.2f, want about %d", i, r, i+1)
		}
	}
}

func TestSolveZipfS(t *testing.T) {
	// The scale: 10M events in 100k rooms, the largest 2M.
	s, err := SolveZipfS(100_000, 10_000_000, 10, 2_000_000)
	if err != nil {
		t.Fatal(err)
	}
	sizes, _ := ZipfSizes(100_000, 10_000_000, 10, s)
	if got := sizes[0]; math.Abs(float64(got-2_000_000)) > 20_000 {
		t.Errorf("s = %g gives a largest room of %d, want 2000000 within 1%%", s, got)
	}
	if _, err := SolveZipfS(10, 1000, 10, 999); !errors.Is(err, ErrUnreachable) {
		t.Errorf("an unreachable largest size: err = %v, want ErrUnreachable", err)
	}
}

func TestInterleaver(t *testing.T) {
	sizes := []int{500, 0, 3, 1, 200, 7}
	iv := NewInterleaver(sizes, rand.New(rand.NewPCG(5, 6)))
	got := make([]int, len(sizes))
	firstHalf := make([]int, len(sizes))
	n := 0
	for {
		r, ok := iv.Next()
		if !ok {
			break
		}
		got[r]++
		if n < 355 {
			firstHalf[r]++
		}
		n++
	}
	if !slices.Equal(got, sizes) {
		t.Errorf("drew %v, want %v", got, sizes)
	}
	if iv.Left() != 0 {
		t.Errorf("left %d", iv.Left())
	}
	// Spread, not one room after another: the first half of the draws
	// holds about half of each big room.
	for _, r := range []int{0, 4} {
		if f := float64(firstHalf[r]) / float64(sizes[r]); f < 0.35 || f > 0.65 {
			t.Errorf("room %d: %.2f of its events in the first half of the log, want about 0.5", r, f)
		}
	}
}

func TestParseStatus(t *testing.T) {
	status := "Name:\tscrollback\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nRssAnon:\t   61440 kB\nRssFile:\t   40000 kB\nRssShmem:\t     960 kB\n"
	m, err := ParseStatus(strings.NewReader(status))
	if err != nil {
		t.Fatal(err)
	}
	want := Memory{RssAnon: 61440 << 10, RssFile: 40000 << 10, RssShmem: 960 << 10, VmRSS: 102400 << 10, VmHWM: 204800 << 10}
	if m != want {
		t.Errorf("memory = %+v, want %+v", m, want)
	}
	if m.Resident() != (61440+960)<<10 {
		t.Errorf("resident = %d", m.Resident())
	}
	if _, err := ParseStatus(strings.NewReader("Name: x\n")); err == nil {
		t.Error("a status without Rss lines parsed")
	}
	if self, err := ReadMemory(0); err == nil && self.Resident() <= 0 {
		t.Errorf("this process holds %d bytes", self.Resident())
	}
}

func TestParseIO(t *testing.T) {
	got, err := ParseIO([]byte("rchar: 6976\nwchar: 0\nsyscr: 10\nsyscw: 0\nread_bytes: 4096\nwrite_bytes: 123456789\ncancelled_write_bytes: 0\n"))
	if err != nil || got != (IO{ReadBytes: 4096, WriteBytes: 123456789}) {
		t.Errorf("ParseIO = %+v, %v", got, err)
	}
	if _, err := ParseIO([]byte("rchar: 1\n")); err == nil {
		t.Error("io without read_bytes parsed")
	}
}

func TestParseProcStat(t *testing.T) {
	// A command with a space and a parenthesis; utime 1234, stime 56.
	line := "4242 (scroll back) R 1 4242 4242 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 12 0 300 1000000 2000 18446744073709551615\n"
	got, err := ParseProcStat([]byte(line))
	if err != nil || got != 1290*ClockTick {
		t.Errorf("ParseProcStat = %v, %v; want %v", got, err, 1290*ClockTick)
	}
	if _, err := ParseProcStat([]byte("4242 (x) R 1 2\n")); err == nil {
		t.Error("a short stat line parsed")
	}
	if _, err := ParseProcStat([]byte("4242 x R")); err == nil {
		t.Error("a stat line without a command parsed")
	}
	// This process's own stat parses.
	if _, err := ReadCPU(0); err != nil {
		t.Error(err)
	}
}

func TestParseMachineStat(t *testing.T) {
	text := "cpu  100 5 20 1000 30 1 2 3 7 0\ncpu0 50 2 10 500 15 0 1 1 0 0\n"
	got, err := ParseMachineStat([]byte(text))
	want := MachineCPU{Busy: (100 + 5 + 20 + 1 + 2 + 3) * ClockTick, Total: (100 + 5 + 20 + 1000 + 30 + 1 + 2 + 3) * ClockTick}
	if err != nil || got != want {
		t.Errorf("ParseMachineStat = %+v, %v; want %+v", got, err, want)
	}
	if _, err := ParseMachineStat([]byte("intr 1 2 3\n")); err == nil {
		t.Error("a stat without the cpu line parsed")
	}
	if _, err := ReadMachineCPU(); err != nil {
		t.Error(err)
	}
}

func TestPromValue(t *testing.T) {
	text := []byte("# HELP x\nscrollback_projection_lag_messages 42\nscrollback_projection_lag_messages_total 7\nprocess_resident_memory_bytes 1.234e+08\nfoo{a=\"b\"} 3\n")
	for name, want := range map[string]float64{"scrollback_projection_lag_messages": 42, "process_resident_memory_bytes": 1.234e8} {
		if got, ok := PromValue(text, name); !ok || got != want {
			t.Errorf("%s = %v %v, want %v", name, got, ok, want)
		}
	}
	if _, ok := PromValue(text, "missing"); ok {
		t.Error("found a missing metric")
	}
}

// TestReport_WriteHTML checks that the report is one self-contained page:
// every plot inline, nothing fetched from elsewhere, no script.
func TestReport_WriteHTML(t *testing.T) {
	origin := time.Now()
	s := NewSeries("plain <read>", origin)
	for i := range 500 {
		s.Record(origin.Add(time.Duration(i)*time.Millisecond), time.Duration(100+i)*time.Microsecond)
	}
	var lag TimeSeries
	lag.Name = "lag"
	for i := range 10 {
		lag.Add(time.Duration(i)*time.Second, float64(1000-100*i))
	}
	r := &Report{Title: "bench", Command: "scrollback bench --report x.html", Started: origin, Machine: ReadMachine(),
		Scenarios: []*Scenario{{Name: "reads", Title: "Reads", Notes: []string{"a & b"},
			Tables:  []Table{{Header: []string{"metric", "value", "result"}, Rows: [][]string{{"p99", "1ms", "PASS"}, {"thr", "5", "MISS"}}}},
			Latency: []*Series{s}, Lag: []TimeSeries{lag}, Marks: []Mark{{2 * time.Second, "purge"}},
			Profiles: []Profile{{Kind: "CPU", File: "cpu.pprof", Top: "flat flat%"}}, Log: "phase <1>"}}}
	var buf bytes.Buffer
	if err := r.WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"<svg", "latency over time", "latency histogram", "projection lag", "Goals at a glance",
		`class="pass"`, `class="miss"`, "plain &lt;read&gt;", "phase &lt;1&gt;", "a &amp; b", "cpu.pprof", ">purge<"} {
		if !strings.Contains(out, want) {
			t.Errorf("report has no %q", want)
		}
	}
	for _, bad := range []string{"<script", "src=", "<link", "@import", "http://", "https://"} {
		if strings.Contains(strings.ReplaceAll(out, `xmlns="http://www.w3.org/2000/svg"`, ""), bad) {
			t.Errorf("report contains %q: not self-contained", bad)
		}
	}
}

func TestTicks(t *testing.T) {
	if got := ticks(0, 10, false); !slices.Equal(got, []float64{0, 2, 4, 6, 8, 10}) {
		t.Errorf("linear ticks 0..10 = %v", got)
	}
	if got := ticks(1e-4, 1e-1, true); len(got) != 10 || got[0] != 1e-4 { // 1, 2, 5 per decade for 3 decades + 0.1
		t.Errorf("log ticks = %v", got)
	}
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{{850, "850ns"}, {120 * time.Microsecond, "120µs"}, {1500 * time.Microsecond, "1.5ms"}, {2 * time.Millisecond, "2ms"}, {2300 * time.Millisecond, "2.3s"}} {
		if got := FmtDuration(tt.d); got != tt.want {
			t.Errorf("FmtDuration(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}
