package handlers

import (
	"context"
	"errors"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
)

// Metrics are the service's Prometheus metrics, on their own registry.
type Metrics struct {
	Registry *prometheus.Registry

	requests   *prometheus.HistogramVec
	logMsgs    *prometheus.CounterVec
	deadLetter prometheus.Counter
	batch      prometheus.Histogram
	commit     prometheus.Histogram
	commitMsgs prometheus.Counter
	commitPgs  prometheus.Counter
	janTx      *prometheus.CounterVec
	janRows    prometheus.Counter
	janWait    prometheus.Counter
	janHeld    prometheus.Counter
	hsReqs     *prometheus.HistogramVec
	backfills  *prometheus.CounterVec
	tasksDone  *prometheus.CounterVec
	tasksOpen  *prometheus.GaugeVec
	tasksStale prometheus.Gauge
	openOnce   sync.Once
}

// taskActions are the actions the tasks metric names; any other (a
// command the service does not know, failed as such) counts as "other".
var taskActions = []string{commands.ActionPurgeHistory, commands.ActionPurgeRoom, commands.ActionShutdownAndPurgeRoom,
	commands.ActionBlockRoom, commands.ActionForget}

// NewMetrics registers the metrics. lag (nil: no projection here) reports the projection lag in log
// messages (the log's last sequence minus the applied one).
func NewMetrics(lag func() float64) *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	m.requests = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "scrollback_request_duration_seconds",
		Help:    "Time to answer a request, by endpoint and transport (nats or http).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"endpoint", "transport", "status"})
	m.logMsgs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "scrollback_log_messages_total",
		Help: "Room log messages processed, by kind (event, cmd, task, kept, or other for a subject of no kind the log has) and result (applied, duplicate, dead_letter, skipped: applied before; dropped: below the room's purge cut-off; passed: a kept copy, applied at its original sequence).",
	}, []string{"kind", "result"})
	m.deadLetter = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "scrollback_dead_letters_total",
		Help: "Room log messages rejected as malformed and recorded as dead letters.",
	})
	m.batch = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "scrollback_apply_batch_seconds",
		Help:    "Time to decode and commit one batch of log messages.",
		Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16),
	})
	// bbolt has one writer: the sum of the commits' seconds over a span
	// of time is how busy it was, and the bound on how fast the
	// projection catches up.
	m.commit = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "scrollback_commit_seconds",
		Help:    "Time bbolt's one writer spent on one group commit of the projector (applying the partitions' batches, writing, syncing).",
		Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16),
	})
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m.commitMsgs = counter("scrollback_commit_messages_total", "Log messages applied by the projector's group commits.")
	m.commitPgs = counter("scrollback_commit_pages_total", "bbolt pages (4 KiB) written by the projector's group commits.")
	// The purges' janitor: its rows/s, and how much of its time went
	// waiting for bbolt's writer, which the projector's commits hold.
	m.janTx = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "scrollback_janitor_transactions_total",
		Help: "Write transactions of the janitor that removes purged history, by kind: rows (timeline rows below a cut-off) or other (index entries ahead of the rows, the outlier sweep, a purge_room's drop).",
	}, []string{"kind"})
	m.janRows = counter("scrollback_janitor_rows_total", "Timeline rows below a purge cut-off the janitor removed (deleted, or kept as outliers).")
	m.janWait = counter("scrollback_janitor_wait_seconds_total", "Time the janitor's transactions waited for bbolt's one writer.")
	m.janHeld = counter("scrollback_janitor_held_seconds_total", "Time the janitor's transactions held bbolt's one writer (their work, writes and fsyncs).")
	// A shutdown hands each user to the homeserver, a few requests in
	// flight at a time: their round trips bound how long it takes.
	m.hsReqs = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "scrollback_homeserver_request_duration_seconds",
		Help:    "Time the homeserver took to answer a request of a shutdown (sb.hs.leave, forget, join, create_room, send, move_aliases), retries included, by request and outcome (ok, error, or cancelled: the shutdown's context ended, the task cancelled or the service stopping).",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"request", "outcome"})
	m.backfills = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "scrollback_backfill_requests_total",
		Help: "Backfill requests to the federation workers (sb.backfill), by outcome: events (the reply brought events, appended to the log), empty (an answer without events), error (no responder, a timeout, an error reply, or the append to the log failed).",
	}, []string{"outcome"})
	for _, o := range []string{BackfillEvents, BackfillEmpty, BackfillError} {
		m.backfills.WithLabelValues(o) // each at 0 from the start, for rates and alerts
	}
	m.tasksDone = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "scrollback_tasks_finished_total",
		Help: "Tasks that finished as this instance applied the log, by action (purge_history, purge_room, shutdown_and_purge_room, block_room, forget, or other for a command the service does not know) and status (complete, failed, cancelled).",
	}, []string{"action", "status"})
	for _, a := range append(slices.Clone(taskActions), "other") {
		for _, st := range []string{commands.TaskComplete, commands.TaskFailed, commands.TaskCancelled} {
			m.tasksDone.WithLabelValues(a, st) // at 0 from the start, for increase() to see the first
		}
	}
	m.tasksOpen = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "scrollback_tasks_open",
		Help: "Open tasks (purges, room deletions) of the rooms whose tasks this instance runs, by status (scheduled: waiting for one of tasks.max_concurrent slots; active).",
	}, []string{"status"})
	m.tasksStale = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "scrollback_tasks_stale",
		Help: "Open tasks of the rooms whose tasks this instance runs that were not updated for 24 hours: stuck purges or deletions (each is also logged as 'task not updated for 24 hours').",
	})
	m.Registry.MustRegister(m.requests, m.logMsgs, m.deadLetter, m.batch, m.commit, m.commitMsgs, m.commitPgs,
		m.janTx, m.janRows, m.janWait, m.janHeld, m.hsReqs, m.backfills, m.tasksDone,
		// go_sched_latencies_seconds among them: how long goroutines
		// waited, runnable, for a CPU. When reads slow down beside a
		// purge or an ingest, this tells a CPU that is too busy from a
		// wait of another kind.
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.MetricsScheduler)),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if lag != nil { // nil in a process without a projection (scrollback bridge)
		m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "scrollback_projection_lag_messages",
			Help: "Log messages not yet applied to the projection.",
		}, lag))
	}
	return m
}

// CountLoad exports what the API's load counts: the time the purges'
// background work (the janitor, the eraser's compaction steps) waited for
// reads queued for the API's workers (bus.Load.Backoff), so that a purge
// whose rows or log erasure go slowly because reads keep the workers busy
// shows; the time the janitor and a shutdown's kicks waited for
// goroutines queued for a CPU (bus.Load.Calm); and the requests waiting
// detached from the
// workers (v1 room deletions waiting for their deletion, bus.Detach).
func (m *Metrics) CountLoad(load *bus.Load) {
	m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "scrollback_backoff_seconds_total",
		Help: "Time the purges' janitor and log eraser waited because requests were queueing for the API's workers.",
	}, func() float64 { return load.BackedOff().Seconds() }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "scrollback_cpu_queue_waits_seconds_total",
			Help: "Time the purges' janitor and a shutdown's kicks waited because the process's goroutines were queueing for a CPU.",
		}, func() float64 { return load.Calmed().Seconds() }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "scrollback_requests_detached",
			Help: "API requests waiting detached from the workers (v1 room deletions waiting for their deletion).",
		}, func() float64 { return float64(load.Detached()) }))
}

// CountDisk exports the projection file's size and the bytes of its free
// pages, asked at each scrape. A purge's rows free pages that bbolt
// reuses before the file grows, so the file never shrinks by itself: the
// free bytes are what the purges freed and new history has not taken
// back yet, about what `scrollback compact` would give back to the disk
// (USERS.md: operators ask for the bytes a purge freed).
func (m *Metrics) CountDisk(db *bolt.DB) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "scrollback_projection_file_bytes",
		Help: "Size of the projection's bbolt file on disk.",
	}, func() float64 {
		fi, err := os.Stat(db.Path())
		if err != nil {
			return math.NaN()
		}
		return float64(fi.Size())
	}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "scrollback_projection_free_bytes",
			Help: "Bytes of the projection file's free pages (freed by purges, reused before the file grows; scrollback compact gives them back to the disk).",
		}, func() float64 { return float64(db.Stats().FreeAlloc) }))
}

// CountPurgeBacklog exports the purges' background work still waiting,
// asked of the store at each scrape (projections.Store.PurgeBacklog): the
// rooms whose purged rows the janitor has still to delete, and those
// whose purged events the eraser has still to delete from the log. Only
// rates showed before (scrollback_janitor_rows_total), which say nothing
// of how much is left, nor of an eraser that is stuck. It counts rooms,
// not rows: a scrape cannot count a purge's million rows, and the queues
// hold a room each.
func (m *Metrics) CountPurgeBacklog(store *projections.Store) {
	m.Registry.MustRegister(&purgeBacklog{store: store, desc: prometheus.NewDesc("scrollback_purge_backlog_rooms",
		"Rooms with purge work waiting in the background, by stage: rows (purged rows the janitor has still to delete from the projection) or erasure (purged events the eraser has still to delete from the log; the queue of a file from before erasein counts as one). A room whose history a purge_room ended counts twice while that history and its new one both wait.",
		[]string{"stage"}, nil)})
}

// purgeBacklog collects scrollback_purge_backlog_rooms: one read-only
// transaction a scrape for both stages.
type purgeBacklog struct {
	store *projections.Store
	desc  *prometheus.Desc
}

func (c *purgeBacklog) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect reports NaN for both stages when the store cannot be read (it
// is closed as the service stops), as CountDisk does for the file.
func (c *purgeBacklog) Collect(ch chan<- prometheus.Metric) {
	b, err := c.store.PurgeBacklog()
	rows, erasure := float64(b.RowRooms), float64(b.ErasureRooms)
	if err != nil {
		rows, erasure = math.NaN(), math.NaN()
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, rows, "rows")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, erasure, "erasure")
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}

// ObserveRequest records one answered request.
func (m *Metrics) ObserveRequest(transport string) func(endpoint string, d time.Duration, status int) {
	return func(endpoint string, d time.Duration, status int) {
		m.requests.WithLabelValues(endpoint, transport, strconv.Itoa(status)).Observe(d.Seconds())
	}
}

// ObserveHomeserver records one request to the homeserver
// (handlers.TaskRunner.ObserveHS).
func (m *Metrics) ObserveHomeserver(request string, d time.Duration, err error) {
	m.hsReqs.WithLabelValues(request, hsOutcome(err)).Observe(d.Seconds())
}

// hsOutcome is the outcome label of a request to the homeserver that
// ended with err: ok, error, or cancelled when the shutdown's context
// ended (the task cancelled, the service stopping). A stop is no failure
// of the homeserver, and must not raise the error series an operator
// alerts on; a deadline (no answer within homeserver.timeout) is one.
func hsOutcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	}
	return "error"
}

// ObserveBackfill records the outcome of one backfill request
// (handlers.Backfiller.Observe).
func (m *Metrics) ObserveBackfill(outcome string) {
	m.backfills.WithLabelValues(outcome).Inc()
}

// ObserveTaskFinished records a task that finished (failed, complete or
// cancelled) as the log was applied.
func (m *Metrics) ObserveTaskFinished(action, status string) {
	if !slices.Contains(taskActions, action) {
		action = "other"
	}
	m.tasksDone.WithLabelValues(action, status).Inc()
}

// ObserveOpenTasks sets the open tasks' gauges
// (handlers.TaskRunner.ObserveOpen). They are registered by the first
// call: a process that runs no tasks (scrollback bridge) has none.
func (m *Metrics) ObserveOpenTasks(scheduled, active, stale int) {
	m.openOnce.Do(func() { m.Registry.MustRegister(m.tasksOpen, m.tasksStale) })
	m.tasksOpen.WithLabelValues(commands.TaskScheduled).Set(float64(scheduled))
	m.tasksOpen.WithLabelValues(commands.TaskActive).Set(float64(active))
	m.tasksStale.Set(float64(stale))
}

// ObserveCommit records one group commit (projections.Projector.ObserveCommit).
func (m *Metrics) ObserveCommit(c projections.CommitStats) {
	m.commit.Observe(c.Duration.Seconds())
	m.commitMsgs.Add(float64(c.Messages))
	m.commitPgs.Add(float64(c.Pages))
}

// ObserveJanitor records one janitor transaction
// (projections.Store.ObserveJanitor).
func (m *Metrics) ObserveJanitor(j projections.JanitorStats) {
	kind := "other"
	if j.Rows > 0 {
		kind = "rows"
	}
	m.janTx.WithLabelValues(kind).Inc()
	m.janRows.Add(float64(j.Rows))
	m.janWait.Add(j.Waited.Seconds())
	m.janHeld.Add(j.Held.Seconds())
}

// ObserveBatch records one applied batch.
func (m *Metrics) ObserveBatch(outcomes []projections.Outcome, d time.Duration) {
	m.batch.Observe(d.Seconds())
	for _, o := range outcomes {
		kind := o.Kind
		switch kind {
		case commands.KindEvent, commands.KindCmd, commands.KindTask, commands.KindKept:
		default:
			// The stream takes any sb.room.<rk>.<token>: a label
			// value per token would have no bound.
			kind = "other"
		}
		m.logMsgs.WithLabelValues(kind, o.Result).Inc()
		if o.Result == projections.OutcomeDead {
			m.deadLetter.Inc()
		}
	}
}
