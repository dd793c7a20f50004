package loadgen

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Memory is a process's resident memory from /proc/<pid>/status, in bytes.
type Memory struct {
	RssAnon, RssFile, RssShmem int64
	// VmRSS is every resident page, the sum of the three: mapped files
	// (bbolt's pages, which the page cache may drop) included.
	VmRSS int64
	VmHWM int64 // peak resident set size
}

// Resident is the memory the process holds itself: RssAnon + RssShmem
// (DESIGN.md, "Benchmark protocol"); RssFile, the mapped files (bbolt's
// pages), is reported separately.
func (m Memory) Resident() int64 { return m.RssAnon + m.RssShmem }

// ReadMemory reads /proc/<pid>/status (pid 0: this process).
func ReadMemory(pid int) (Memory, error) {
	path := "/proc/self/status"
	if pid > 0 {
		path = fmt.Sprintf("/proc/%d/status", pid)
	}
	f, err := os.Open(path)
	if err != nil {
		return Memory{}, fmt.Errorf("loadgen: memory: %w", err)
	}
	defer f.Close()
	return ParseStatus(f)
}

// ParseStatus reads the Rss*, VmRSS and VmHWM lines of a /proc/<pid>/status
// file.
func ParseStatus(r io.Reader) (Memory, error) {
	var m Memory
	found := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *int64
		switch key {
		case "RssAnon":
			dst = &m.RssAnon
		case "RssFile":
			dst = &m.RssFile
		case "RssShmem":
			dst = &m.RssShmem
		case "VmRSS":
			dst = &m.VmRSS
		case "VmHWM":
			dst = &m.VmHWM
		default:
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return m, fmt.Errorf("loadgen: status line %q", sc.Text())
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("loadgen: status line %q: %w", sc.Text(), err)
		}
		if len(f) > 1 && strings.EqualFold(f[1], "kB") {
			v *= 1024
		}
		*dst = v
		found++
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	if found == 0 {
		return m, fmt.Errorf("loadgen: no Rss lines in status (not Linux?)")
	}
	return m, nil
}

// ClockTick is the unit of the CPU times in /proc/<pid>/stat and
// /proc/stat: USER_HZ, 100 on every Linux architecture Go supports.
const ClockTick = 10 * time.Millisecond

// ReadCPU is the CPU time (user and system) a process used so far, from
// /proc/<pid>/stat (pid 0: this process), to ClockTick.
func ReadCPU(pid int) (time.Duration, error) {
	path := "/proc/self/stat"
	if pid > 0 {
		path = fmt.Sprintf("/proc/%d/stat", pid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("loadgen: cpu: %w", err)
	}
	return ParseProcStat(b)
}

// ParseProcStat reads utime and stime, the 14th and 15th fields, of a
// /proc/<pid>/stat line. The second field, the command in parentheses,
// may hold spaces and parentheses: fields count from the last ')'.
func ParseProcStat(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("loadgen: stat %q: no command", b)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is the 3rd field (state); utime and stime are the 14th and 15th.
	if len(f) < 13 {
		return 0, fmt.Errorf("loadgen: stat: %d fields after the command, want at least 13", len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("loadgen: stat: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * ClockTick, nil
}

// MachineCPU is the machine's CPU time so far, summed over its CPUs, from
// the first line of /proc/stat.
type MachineCPU struct {
	Busy, Total time.Duration // Total - Busy is idle and waiting for I/O
}

// ReadMachineCPU reads /proc/stat.
func ReadMachineCPU() (MachineCPU, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return MachineCPU{}, fmt.Errorf("loadgen: machine cpu: %w", err)
	}
	return ParseMachineStat(b)
}

// ParseMachineStat reads the "cpu" line of /proc/stat: user, nice,
// system, idle, iowait, irq, softirq, steal (guest time is counted in
// user already).
func ParseMachineStat(b []byte) (MachineCPU, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return MachineCPU{}, fmt.Errorf("loadgen: /proc/stat starts %q, want the cpu line", line)
	}
	var m MachineCPU
	for i, s := range f[1:min(len(f), 9)] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return MachineCPU{}, fmt.Errorf("loadgen: /proc/stat: %w", err)
		}
		d := time.Duration(n) * ClockTick
		m.Total += d
		if i != 3 && i != 4 { // idle, iowait
			m.Busy += d
		}
	}
	return m, nil
}

// IO is a process's I/O counters from /proc/<pid>/io, in bytes: what it
// asked the storage layer to read and write (page cache write-backs
// included, reads served from the cache not).
type IO struct {
	ReadBytes, WriteBytes int64
}

// ReadIO reads /proc/<pid>/io (pid 0: this process).
func ReadIO(pid int) (IO, error) {
	path := "/proc/self/io"
	if pid > 0 {
		path = fmt.Sprintf("/proc/%d/io", pid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return IO{}, fmt.Errorf("loadgen: io: %w", err)
	}
	return ParseIO(b)
}

// ParseIO reads the read_bytes and write_bytes lines of a /proc/<pid>/io
// file.
func ParseIO(b []byte) (IO, error) {
	var io IO
	found := 0
	for line := range bytes.Lines(b) {
		k, v, ok := strings.Cut(strings.TrimSpace(string(line)), ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "read_bytes":
			io.ReadBytes = n
			found++
		case "write_bytes":
			io.WriteBytes = n
			found++
		}
	}
	if found < 2 {
		return io, fmt.Errorf("loadgen: no read_bytes and write_bytes in io")
	}
	return io, nil
}

// DirSize is the total apparent size of the regular files under path (du
// --apparent-size); a missing path is 0.
func DirSize(path string) (int64, error) {
	var n int64
	err := filepath.WalkDir(path, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				if os.IsNotExist(err) { // deleted while walking (a compacted block)
					return nil
				}
				return err
			}
			n += info.Size()
		}
		return nil
	})
	return n, err
}

// Machine describes where a run happened.
type Machine struct {
	CPU        string // model name
	Cores      int    // runtime.NumCPU
	GOMAXPROCS int
	Go         string
	OS, Arch   string
	Kernel     string
	MemTotal   int64 // bytes
}

// ReadMachine reads the machine's description from the runtime and /proc;
// what cannot be read stays empty.
func ReadMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		m.CPU = cpuModel(b)
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		m.MemTotal = memTotal(b)
	}
	return m
}

func cpuModel(cpuinfo []byte) string {
	for line := range bytes.Lines(cpuinfo) {
		k, v, ok := strings.Cut(string(line), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func memTotal(meminfo []byte) int64 {
	for line := range bytes.Lines(meminfo) {
		if rest, ok := strings.CutPrefix(string(line), "MemTotal:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				v, _ := strconv.ParseInt(f[0], 10, 64)
				return v * 1024
			}
		}
	}
	return 0
}

// String is one line: "AMD EPYC, 2 cores, GOMAXPROCS 2, 23.4 GiB, go1.26 linux/amd64, kernel 6.1".
func (m Machine) String() string {
	cpu := m.CPU
	if cpu == "" {
		cpu = "CPU unknown"
	}
	return fmt.Sprintf("%s, %d cores, GOMAXPROCS %d, %.1f GiB, %s %s/%s, kernel %s",
		cpu, m.Cores, m.GOMAXPROCS, float64(m.MemTotal)/(1<<30), m.Go, m.OS, m.Arch, m.Kernel)
}

// PromValue finds an unlabelled sample of the metric name in Prometheus
// text exposition format (GET /metrics).
func PromValue(text []byte, name string) (float64, bool) {
	for line := range bytes.Lines(text) {
		s := strings.TrimSpace(string(line))
		rest, ok := strings.CutPrefix(s, name)
		if !ok || len(rest) == 0 || (rest[0] != ' ' && rest[0] != '\t') {
			continue
		}
		f := strings.Fields(rest)
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		return v, true
	}
	return 0, false
}
