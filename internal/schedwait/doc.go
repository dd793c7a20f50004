// Package schedwait reads the Go runtime's histogram of scheduling waits
// (/sched/latencies:seconds: how long goroutines waited, runnable, before
// they ran) and answers questions about an interval of it: how many waits,
// which quantile, what share lasted a given time or more.
//
// The service uses it to see goroutines queue for a CPU (bus.Load.WatchCPU,
// which makes a shutdown's kicks wait), and `scrollback bench` to report
// the waits of each phase. The runtime samples the waits (about one
// goroutine transition in eight) and its buckets are powers of two, so
// the answers are bucket bounds, not exact figures. Standard library only.
//
// A Waits is a value: safe to share once read, not to modify.
package schedwait
