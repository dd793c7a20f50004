// Command scrollback is the Matrix room-history service: `scrollback
// serve` runs it, `scrollback seed` fills a running one with synthetic
// rooms, `scrollback bench` measures it, and `bridge`, `rebuild`,
// `compact` and `verify` serve and maintain it (README.md).
//
// # Layout
//
//   - main.go: the commands. Every command that runs or opens the
//     service (serve, bridge, rebuild, compact, verify) parses the same
//     config file, and those of serve's flags it reads (config.go,
//     parseFlags, commandFlags); -h prints the command's flags and exits
//     0; every problem of a configuration is reported at once, one a line.
//   - serve.go: Main, the wiring. Open brings the parts up in the order
//     that lets each rely on the one before: NATS (the embedded server
//     unless nats.url) and the log's stream, the projection file, the
//     projector, the background loops (janitor, eraser, tasks,
//     retention), the micro service, then the HTTP bridge. Close
//     stops them in reverse, so that nothing still running loses what it
//     depends on; the projector commits what it was given before the
//     file closes.
//   - rebuild.go: the offline commands. Like serve, they hold the data
//     dir's lock (datadir.go: flock of scrollback.lock) while they run,
//     and refuse to start while another process holds it, so that a
//     rebuild never starts a second embedded NATS server on the store of
//     a running service, nor swaps the projection file under it.
//   - bench*.go: the load generator (docs/BENCHMARKS.md). It speaks only
//     the contract to the service, in process or (--target) external,
//     and measures the floor in the same run. bench_trace.go is
//     --trace-slow: a flight recorder of the process's execution trace,
//     written out around reads slower than a threshold.
//
// # Tests
//
// main_test.go and most *_test.go run a whole Main on a real embedded
// nats-server and bbolt file. The fault tests (fault_*_test.go,
// crash_test.go) build the binary and kill it with SIGKILL at chosen
// points; `make soak` loops them with random timings. The cluster tests
// (cluster_test.go) run three embedded nats-servers; they skip under the
// race detector, because nats-server v2.15.2 races with itself in
// clustered mode (testenv.NewCluster), and `make unit` runs them without it.
package main
