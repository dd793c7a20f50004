// Package loadgen is the measuring kit of `scrollback bench`: latency
// histograms and percentiles, per-request latency series over time, time
// series of sampled values (projection lag, memory, disk), Zipf-distributed
// sizes and a weighted interleaving of many rooms' events, readers of
// /proc and of Prometheus text, and a self-contained HTML report with
// inline SVG plots.
//
// It knows nothing of scrollback: cmd/scrollback wires it to the service.
//
// # Accuracy
//
// Percentiles of a sorted list (Percentile) are exact, by nearest rank.
// Hist keeps every value within 1/2^bits of itself (bits 7: 0.8%, as
// HdrHistogram with two significant digits) in fixed memory whatever the
// count; a Series keeps one such histogram for the whole run and a coarser
// one (bits 3: 12.5%) per time window for the plots over time.
//
// # Concurrency
//
// Series is safe for concurrent use: closed-loop clients and open-loop
// senders record into one. Its Observe hook runs in the recording
// goroutine, outside the series' lock. Hist, TimeSeries and Interleaver are not: each
// has one owner (a client, the sampler, the publisher).
package loadgen
