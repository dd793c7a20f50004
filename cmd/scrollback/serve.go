package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/internal/durable"
	"github.com/scrollback/scrollback/projections"
)

func runServe(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, err := ParseServeFlags(args)
	if err != nil {
		return err
	}
	applyMemoryLimit(cfg)
	m := &Main{Config: cfg, Logger: newLogger(cfg.Log, stderr)}
	slog.SetDefault(m.Logger) // for what libraries report without a logger of ours
	if err := m.Open(ctx); err != nil {
		m.Close()
		return err
	}
	<-ctx.Done()
	m.Logger.Info("shutting down")
	return m.Close()
}

func newLogger(c LogConfig, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.SlogLevel()}
	if c.Format == LogFormatJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// Main is one running scrollback: Open starts every part, Close stops them
// in reverse order. Tests run it in-process.
type Main struct {
	Config Config
	Logger *slog.Logger
	// Now is the clock of every part of the service (nil: time.Now);
	// tests set a fake one before Open.
	Now func() time.Time

	// Set by Open.
	NATSServer *server.Server // nil with an external cluster
	NC         *nats.Conn
	JS         jetstream.JetStream
	Store      *projections.Store
	Projector  *projections.Projector
	Metrics    *handlers.Metrics
	Retention  *handlers.RetentionRunner
	Forgotten  *handlers.ForgottenRooms // nil unless forgotten_room_retention_period is set
	backfill   *handlers.Backfiller     // the reads' backfills, whose background runs Close ends
	Owners     *bus.Owners              // partition leases; nil with the embedded server (this instance owns all)
	HTTPAddr   string                   // where the bridge listens ("" if off)
	AdminToken string                   // the generated admin token, if any

	svc      *bus.Service
	unlock   func()       // releases the data dir's lock (lockDataDir)
	extraNC  []*nats.Conn // the API's and the in-process bridge's connections
	natsPass string       // the service user's password on an embedded server with users
	httpSrv  *http.Server
	cancel   context.CancelFunc
	projDone chan error
	bg       sync.WaitGroup
	httpDone chan error
	stopping chan struct{} // closed when Close starts

	// holdJanitor, if set before Open, runs before each of the janitor's
	// steps (after its own waits): the tests hold a purge's rows there to
	// stop the service in the middle of it.
	holdJanitor func(context.Context)
}

// Open starts the service: NATS (embedded or external), the stream, the
// projection file, the projector, the micro service and the HTTP bridge.
// Listeners are bound before Open returns.
func (m *Main) Open(ctx context.Context) error {
	if m.Logger == nil {
		m.Logger = slog.New(slog.DiscardHandler)
	}
	c := m.Config
	subjects := bus.Subjects{Prefix: c.NATS.SubjectPrefix}
	now := m.Now
	if now == nil {
		now = time.Now
	}
	unlock, err := lockDataDir(c.DataDir)
	if err != nil {
		return err
	}
	m.unlock = unlock
	if err := removeLeftovers(c.DataDir, m.Logger); err != nil {
		return err
	}
	if err := m.openLog(ctx); err != nil {
		return err
	}
	// A new projection file is built without fsync until it catches up
	// with the log (projections/build.go).
	if m.Store, err = projections.Open(filepath.Join(c.DataDir, "scrollback.db"), projections.Options{ServerName: c.ServerName, Build: true}); err != nil {
		return err
	}
	if m.Store.Restarted() {
		m.Logger.Warn("the projection was being built without fsync when the machine restarted: building it again from the log")
	}
	if m.Store.Building() {
		m.Logger.Info("a new projection: building it from the log without fsync until it has caught up", "path", m.Store.DB().Path())
	}
	logLog := &bus.Log{JS: m.JS, Stream: c.NATS.Stream, Subjects: subjects}
	m.Projector = &projections.Projector{
		Store:     m.Store,
		Source:    logLog,
		Decode:    subjects.Decode,
		RoomKeyOf: roomKeyToken(c.NATS.SubjectPrefix),
		Erased:    logErased(logLog),
		// How a purge was decided, where a later purge erased the
		// history that decided it.
		FirstUpdates: logLog.FirstUpdates,
		Logger:       m.Logger.With("component", "projector"),
	}
	m.Metrics = handlers.NewMetrics(projectionLag(m.Projector, logLog))
	m.Projector.Observe = m.observeBatch(subjects)
	m.Projector.ObserveCommit = m.Metrics.ObserveCommit
	m.Metrics.CountDisk(m.Store.DB())
	m.Metrics.CountPurgeBacklog(m.Store)
	if err := m.Projector.Init(); err != nil {
		return err
	}
	runCtx, runCancel := context.WithCancel(context.WithoutCancel(ctx))
	m.cancel = runCancel
	m.projDone = make(chan error, 1)
	go func() {
		err := m.Projector.Run(runCtx)
		if err != nil {
			m.Logger.Error("the projector stopped: reads go stale until a restart", "err", err)
		}
		m.projDone <- err
	}()

	owns, wake, err := m.openOwners(ctx, runCtx)
	if err != nil {
		return err
	}
	// The janitor, the eraser and a shutdown's kicks make way for the
	// API's requests (handlers.BackoffForReads, handlers.MakeWayForReads,
	// handlers.MakeWayForKicks); the janitor and the kicks also for
	// goroutines queued for a CPU.
	apiLoad := &bus.Load{}
	m.Metrics.CountLoad(apiLoad)
	m.background(runCtx, "cpu-watch", apiLoad.WatchCPU)
	m.Store.ObserveJanitor = m.Metrics.ObserveJanitor
	m.Store.BeforeJanitor = handlers.BackoffForReads(apiLoad)
	if hold, before := m.holdJanitor, m.Store.BeforeJanitor; hold != nil {
		m.Store.BeforeJanitor = func(ctx context.Context) { before(ctx); hold(ctx) }
	}
	m.background(runCtx, "janitor", func(ctx context.Context) {
		m.Store.RunJanitor(ctx, 10*time.Second, m.Logger.With("component", "janitor"))
	})
	eraseLog := *logLog
	eraseLog.BeforeDelete = handlers.MakeWayForReads(apiLoad)
	eraseLog.BeforeStep = handlers.MakeWayForCompaction(apiLoad)
	// With the embedded server this instance is the log's only reader,
	// so it may compact rooms' event subjects (bus.Log.Compact).
	eraser := &handlers.Eraser{Store: m.Store, Log: &eraseLog, Subjects: subjects, Compact: m.Owners == nil,
		Logger: m.Logger.With("component", "eraser")}
	m.background(runCtx, "eraser", eraser.Run)
	// The runner wakes when ownership changes and when a task is
	// scheduled, so that a new deletion goes active at once, as in
	// Synapse, and shows in the by-room delete status.
	taskWake := make(chan struct{}, 1)
	m.background(runCtx, "task-wake", func(ctx context.Context) {
		for {
			select {
			case <-ctx.Done():
				return
			case <-wake:
			case <-m.Store.NewTasks():
			}
			select {
			case taskWake <- struct{}{}:
			default:
			}
		}
	})
	runner := &handlers.TaskRunner{Store: m.Store, Log: logLog, Waiter: m.Projector, Subjects: subjects, Now: now,
		Logger: m.Logger.With("component", "tasks"), MaxConcurrent: c.Tasks.MaxConcurrent,
		HS: &bus.Requester{NC: m.NC, Timeout: c.Homeserver.Timeout.Duration}, HSTimeout: c.Homeserver.Timeout.Duration,
		Concurrency: c.Shutdown.Concurrency, BeforeKick: handlers.MakeWayForKicks(apiLoad), ObserveHS: m.Metrics.ObserveHomeserver, ObserveOpen: m.Metrics.ObserveOpenTasks, ServerName: c.ServerName, Owns: owns, Wake: taskWake}
	m.background(runCtx, "tasks", runner.Run)
	m.backfill = &handlers.Backfiller{Req: &bus.Requester{NC: m.NC, Timeout: c.Backfill.Timeout.Duration}, Log: logLog,
		Waiter: m.Projector, Store: m.Store, Subjects: subjects, ServerName: c.ServerName, Timeout: c.Backfill.Timeout.Duration,
		Backoff: c.Backfill.Backoff.Duration, Now: now, Logger: m.Logger.With("component", "backfill"),
		Observe: m.Metrics.ObserveBackfill}
	msgs := &handlers.Messages{Store: m.Store, Waiter: m.Projector, Subjects: subjects, Now: now,
		Retention: retentionConfig(c.Retention), Backfill: m.backfill, Events: logLog}
	m.stopping = make(chan struct{})
	admin := &handlers.Admin{Store: m.Store, Waiter: m.Projector, Log: logLog, Subjects: subjects, Now: now, ServerName: c.ServerName,
		Audit: m.Logger.With("component", "audit"), Stopping: m.stopping, CanStart: runner.CanStart}
	// With one instance too: the projection applies the log a little
	// after the log acknowledges it.
	admin.CatchUp = func(ctx context.Context) error {
		last, err := logLog.LastSeq(ctx)
		if err != nil {
			return err
		}
		return m.Projector.WaitAll(ctx, last)
	}
	m.Retention = &handlers.RetentionRunner{Config: retentionConfig(c.Retention), Store: m.Store, Admin: admin, Now: now,
		Logger: m.Logger.With("component", "retention"), Owns: owns}
	m.background(runCtx, "retention", m.Retention.Run)
	if c.ForgottenRoomRetentionPeriod != nil {
		m.Forgotten = &handlers.ForgottenRooms{Period: c.ForgottenRoomRetentionPeriod.Duration, ServerName: c.ServerName,
			Store: m.Store, Admin: admin, Now: now, Logger: m.Logger.With("component", "forgotten-rooms"), Owns: owns}
		m.background(runCtx, "forgotten-rooms", m.Forgotten.Run)
	}
	// The API answers on a connection of its own: its replies (pages of
	// up to megabytes, thousands a second) would otherwise queue in the
	// same write buffer as the log's appends and consumer pulls, and an
	// admin request's command publish would wait behind them.
	apiNC, err := m.dial("scrollback-api")
	if err != nil {
		return err
	}
	// A page ends before it outgrows what the server takes: 8 MiB on the
	// embedded server, often NATS's default of 1 MiB on an external one,
	// and whatever the node the connection is on now says.
	msgs.MaxReply = func() int { return int(min(apiNC.MaxPayload(), bus.MaxPayload)) }
	// On the embedded server the replies go out over connections of
	// their own, in turn (bus.ServiceOptions.ReplyConns). One connection
	// carries them one at a time: nats.go writes its buffer holding the
	// connection's mutex, an in-process connection takes a write only as
	// fast as the server's one reading goroutine for it reads, and near
	// capacity the workers queued on that mutex in a convoy. Not with an
	// external server: credentials that answer by a response permission
	// may reply only on the connection a request came in on.
	var replyNCs []*nats.Conn
	if m.NATSServer != nil {
		if replyNCs, err = dialReplyConns(m.dial, "scrollback-api", apiReplyConns); err != nil {
			return err // those it opened are m.extraNC's: Close closes them
		}
	}
	m.svc, err = bus.Serve(apiNC, bus.ServiceOptions{
		Name: bus.ServiceName, Version: version, Logger: m.Logger.With("component", "api"),
		Observe: m.Metrics.ObserveRequest("nats"), Load: apiLoad, ReplyDeny: []string{subjects.Prefix + "."}, ReplyConns: replyNCs,
	}, []bus.Endpoint{
		{Name: "messages", Subject: subjects.APIRoomWildcard("messages"), Handler: msgs.Handle, Timeout: handlers.WaitForTimeout + 20*time.Second,
			Release: handlers.ReleaseReply},
		{Name: "block", Subject: subjects.APIRoomWildcard("block"), Handler: admin.Block, Timeout: handlers.WaitForTimeout + 20*time.Second},
		{Name: "purge_history", Subject: subjects.APIRoomWildcard("purge_history"), Handler: admin.PurgeHistory, Timeout: handlers.WaitForTimeout + 20*time.Second},
		{Name: "purge_status", Subject: subjects.API("purge_status"), Handler: admin.PurgeStatus},
		// An addition to the contract: the HTTP bridge in a process of
		// its own asks it for /health (micro's own $SRV.PING answers on
		// any reply subject, so no role may send it).
		{Name: "ping", Subject: subjects.API("ping"), Handler: func(context.Context, string, []byte) ([]byte, error) { return bus.Encode(map[string]any{}) }},
		{Name: "delete", Subject: subjects.APIRoomWildcard("delete"), Handler: admin.Delete, Timeout: handlers.DeleteV1Timeout},
		{Name: "delete_status_room", Subject: subjects.APIRoomWildcard("delete_status"), Handler: admin.DeleteStatusByRoom},
		{Name: "delete_status", Subject: subjects.API("delete_status"), Handler: admin.DeleteStatus},
	})
	if err != nil {
		return err
	}
	if c.HTTP.Listen != "" {
		bridgeNC, err := m.dial("scrollback-bridge")
		if err != nil {
			return err
		}
		// Ready while the projector consumes the log and the API can
		// answer: with the log on an external NATS that went away,
		// neither holds, and every request would be a 503.
		healthy := func() bool {
			return m.Projector.Started() && m.NC.IsConnected() && apiNC.IsConnected()
		}
		if err := m.openHTTP(bridgeNC, subjects, healthy); err != nil {
			return err
		}
	}
	m.Logger.Info("scrollback started", "server_name", c.ServerName, "data_dir", c.DataDir, "http", m.HTTPAddr, "stream", c.NATS.Stream)
	return nil
}

// projectionLag is the gauge of the log messages not yet applied: the
// log's last sequence, asked of the stream at each scrape, minus the
// applied one. The projector's own idea of the log's end comes from the
// messages it was delivered, so it knows nothing of a burst published
// since its last delivery (while its partitions' queues are full, or
// before its first delivery): alone, it reported no lag for a log that
// held unapplied messages, and `scrollback bench --target` took a room
// for loaded before it was. (JetStream keeps a stream's last sequence
// when that message is deleted: one deleted before the projector was
// delivered it would count as 1 until the next publish. Nothing here
// deletes a message before it is applied.) A scrape while NATS is away
// waits a second and falls back to the projector's idea.
func projectionLag(p *projections.Projector, log *bus.Log) func() float64 {
	return func() float64 {
		last := p.LogLast()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if seq, err := log.LastSeq(ctx); err == nil {
			last = max(last, seq)
		}
		return float64(last - min(p.Applied(), last))
	}
}

// retentionConfig translates the retention section. A duration given
// as 0 is a value, as in Synapse, not an unset key.
func retentionConfig(r RetentionConfig) handlers.Retention {
	out := handlers.Retention{
		Enabled: bool(r.Enabled),
		Default: commands.RetentionPolicy{MinLifetime: r.DefaultPolicy.MinLifetime.Milliseconds(),
			MaxLifetime: r.DefaultPolicy.MaxLifetime.Milliseconds(), MaxSet: r.DefaultPolicy.MaxLifetime.Set},
		AllowedMin: r.AllowedLifetimeMin.Milliseconds(), HasAllowedMin: r.AllowedLifetimeMin.Set,
		AllowedMax: r.AllowedLifetimeMax.Milliseconds(), HasAllowedMax: r.AllowedLifetimeMax.Set,
	}
	for _, j := range r.PurgeJobs {
		out.Jobs = append(out.Jobs, handlers.RetentionJob{Interval: j.Interval.Duration,
			Shortest: j.ShortestMaxLifetime.Milliseconds(), HasShortest: j.ShortestMaxLifetime.Set,
			Longest: j.LongestMaxLifetime.Milliseconds(), HasLongest: j.LongestMaxLifetime.Set})
	}
	return out
}

// openLog starts or connects to NATS and creates or checks the stream.
func (m *Main) openLog(ctx context.Context) error {
	c := m.Config
	if m.Logger == nil {
		m.Logger = slog.New(slog.DiscardHandler)
	}
	subjects := bus.Subjects{Prefix: c.NATS.SubjectPrefix}
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	var err error
	if c.NATS.URL == "" {
		eo := bus.EmbeddedOptions{Listen: c.NATS.Listen, StoreDir: filepath.Join(c.DataDir, "jetstream"), Subjects: subjects,
			TLSCert: c.NATS.TLS.Cert, TLSKey: c.NATS.TLS.Key}
		for _, u := range c.NATS.Auth.Users {
			eo.Users = append(eo.Users, bus.User{Name: u.User, Password: u.Password, Role: u.Role})
		}
		if len(eo.Users) > 0 {
			// The service's own password lives only in this process.
			eo.ServicePassword = rand.Text()
		}
		m.natsPass = eo.ServicePassword
		m.NATSServer, err = bus.StartEmbedded(eo)
		if err != nil {
			return err
		}
		if m.NC, err = m.dial("scrollback"); err != nil {
			return err
		}
		if c.NATS.Listen != "" {
			m.Logger.Info("embedded NATS listening", "url", m.NATSServer.ClientURL())
		}
	} else if m.NC, err = m.dial("scrollback"); err != nil {
		return err
	}
	if m.JS, err = jetstream.New(m.NC); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = bus.EnsureReplicatedStream(sctx, m.JS, subjects, c.NATS.Stream, c.Cluster.Replicas)
	return err
}

// dial opens a connection as the service: in-process to the embedded
// server, or to nats.url with the configured credentials. Connections
// after the first (m.NC, which carries the log) are closed by Close.
func (m *Main) dial(name string) (*nats.Conn, error) {
	var nc *nats.Conn
	var err error
	if m.NATSServer != nil {
		nc, err = bus.ConnectInProcessAs(m.NATSServer, name, m.natsPass)
	} else {
		nc, err = bus.Connect(m.Config.NATS.URL, m.Config.NATS.Credentials, name)
	}
	if err == nil && m.NC != nil {
		m.extraNC = append(m.extraNC, nc)
	}
	return nc, err
}

// openOwners takes part in the election of partition owners when the log
// is on an external NATS (several instances may share it), and returns
// who owns a room and a channel signalled when that changes. With the
// embedded server this instance is alone and owns every room (nil, nil).
// The first round runs before Open returns, so a lone instance starts its
// tasks at once.
func (m *Main) openOwners(ctx, runCtx context.Context) (func(roomID string) bool, <-chan struct{}, error) {
	c := m.Config
	if c.NATS.URL == "" {
		return nil, nil, nil
	}
	var err error
	m.Owners, err = bus.OpenOwners(ctx, m.JS, c.NATS.Stream, c.Cluster.Replicas, c.Cluster.InstanceName(), m.Store.Partitions(),
		c.Cluster.Lease.Duration, m.Logger.With("component", "owners"))
	if err != nil {
		return nil, nil, err
	}
	if err := m.Owners.Step(ctx); err != nil {
		m.Logger.Warn("partition leases: first round failed; retrying", "err", err)
	}
	m.background(runCtx, "owners", m.Owners.Run)
	parts, owners := m.Store.Partitions(), m.Owners
	owns := func(roomID string) bool {
		return owners.Owns(projections.PartitionOf(bus.RoomKey(roomID), parts))
	}
	m.Logger.Info("sharing the log with other instances", "instance", c.Cluster.InstanceName(), "owned_partitions", len(owners.Owned()), "lease", c.Cluster.Lease)
	return owns, owners.Changed(), nil
}

// deadLetterNote is what sb.deadletter.<kind> carries (README,
// "Publishing"): the dead letter's record without the fields an
// announcement does not know.
type deadLetterNote struct {
	Seq    uint64 `msgpack:"seq"`
	RoomID string `msgpack:"room_id,omitempty"`
	Reason string `msgpack:"reason"`
}

func (m *Main) observeBatch(subjects bus.Subjects) projections.Observer {
	log := m.Logger.With("component", "projector")
	return func(part int, outcomes []projections.Outcome, d time.Duration) {
		m.Metrics.ObserveBatch(outcomes, d)
		for _, o := range outcomes {
			if o.Finished && !o.Replayed {
				logFinished(log, o.Task)
				m.Metrics.ObserveTaskFinished(o.Task.Action, o.Task.Status)
			}
			if o.Result != projections.OutcomeDead {
				continue
			}
			kind := o.Kind
			if kind == "" {
				kind = "unknown" // a subject that names no kind: as announced
			}
			log.Warn("dead letter: log message not applied", "seq", o.Seq, "room_id", o.RoomID, "kind", kind, "reason", o.Reason)
			data, err := bus.Encode(deadLetterNote{Seq: o.Seq, RoomID: o.RoomID, Reason: o.Reason})
			if err == nil {
				_ = m.NC.Publish(subjects.DeadLetter(kind), data)
			}
		}
	}
}

// logFinished logs a task as it finishes, with its error if it failed:
// a status poll is otherwise the only way to learn that a deletion failed
// and why (USERS.md B1.4). A new file's replay of the log does not log
// the tasks it finishes again (Outcome.Replayed). The background jobs' many purges (no
// requested_by) log their completion at debug level only: their jobs
// log each run.
func logFinished(log *slog.Logger, t *commands.Task) {
	args := []any{"task", t.ID, "action", t.Action, "room_id", t.RoomID, "requested_by", t.RequestedBy}
	switch {
	case t.Status == commands.TaskFailed:
		log.Warn("task failed", append(args, "err", t.Error)...)
	case t.RequestedBy == "":
		log.Debug("task "+t.Status, args...)
	default:
		log.Info("task "+t.Status, args...)
	}
}

// openHTTP starts the HTTP bridge, a client of the API on nc; healthy
// decides /health.
func (m *Main) openHTTP(nc *nats.Conn, subjects bus.Subjects, healthy func() bool) error {
	c := m.Config
	static := map[string]handlers.Identity{}
	hasAdmin := false
	for _, t := range c.Auth.Tokens {
		static[t.Token] = handlers.Identity{UserID: t.UserID, Admin: bool(t.Admin)}
		hasAdmin = hasAdmin || bool(t.Admin)
	}
	if !hasAdmin {
		tok, path, made, err := adminToken(c.DataDir, c.ServerName)
		if err != nil {
			return err
		}
		m.AdminToken = tok
		static[tok] = handlers.Identity{UserID: "@admin:" + c.ServerName, Admin: true}
		// Whether there is a new token to fetch, or the one already known.
		msg := "no admin token in auth.tokens: using the one in its file"
		if made {
			msg = "no admin token in auth.tokens: generated one and wrote it to its file"
		}
		m.Logger.Info(msg, "path", path, "user_id", "@admin:"+c.ServerName)
	}
	req := &bus.Requester{NC: nc, Timeout: c.Homeserver.Timeout.Duration}
	bridge := &handlers.Bridge{
		Req:       &bus.Requester{NC: nc, Timeout: handlers.WaitForTimeout + 20*time.Second},
		DeleteReq: &bus.Requester{NC: nc, Timeout: handlers.DeleteV1Timeout},
		Subjects:  subjects,
		Auth:      &handlers.Auth{Static: static, Req: req, Subjects: subjects, Timeout: c.Homeserver.Timeout.Duration},
		Logger:    m.Logger.With("component", "http"),
		// The bridge's own connection too: without it no request
		// reaches the service.
		Healthy: func() bool { return nc.IsConnected() && healthy() },
		Metrics: m.Metrics.Handler(),
		Observe: m.Metrics.ObserveRequest("http"),
	}
	// The certificate first: Close waits for the server once it is set.
	var tlsConfig *tls.Config
	if c.HTTP.TLS.Enabled() {
		cert, err := tls.LoadX509KeyPair(c.HTTP.TLS.Cert, c.HTTP.TLS.Key)
		if err != nil {
			return fmt.Errorf("http TLS: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	ln, err := net.Listen("tcp", c.HTTP.Listen)
	if err != nil {
		return fmt.Errorf("http listen %s: %w", c.HTTP.Listen, err)
	}
	m.HTTPAddr = ln.Addr().String()
	m.httpSrv = &http.Server{
		Handler:           bridge.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(m.Logger.Handler(), slog.LevelWarn),
		TLSConfig:         tlsConfig,
	}
	m.httpDone = make(chan error, 1)
	if tlsConfig != nil {
		go func() { m.httpDone <- m.httpSrv.ServeTLS(ln, "", "") }()
		return nil
	}
	go func() { m.httpDone <- m.httpSrv.Serve(ln) }()
	return nil
}

// background runs fn until ctx ends; Close waits for it.
func (m *Main) background(ctx context.Context, name string, fn func(ctx context.Context)) {
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		fn(ctx)
		m.Logger.Debug("stopped", "component", name)
	}()
}

// adminToken returns the generated admin token of <data_dir>/admin.token,
// made (16 random bytes, base32) and written to a new file of mode 0600
// when the file is not there or empty. The file grants a server admin's
// rights: a symbolic link in its place is refused, and a token is taken
// from a file that no other user may read or write, and only if it is at
// least minAdminToken characters long. made says whether this call made
// the token, or read one an earlier start (or the operator) wrote.
func adminToken(dataDir, serverName string) (token, path string, made bool, err error) {
	path = filepath.Join(dataDir, "admin.token")
	info, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return "", "", false, fmt.Errorf("admin token: %w", err)
	case !info.Mode().IsRegular():
		return "", "", false, fmt.Errorf("admin token: %s is not a regular file (%s): remove it", path, info.Mode().Type())
	default:
		b, err := os.ReadFile(path)
		if err != nil {
			return "", "", false, fmt.Errorf("admin token: %w", err)
		}
		if tok := strings.TrimSpace(string(b)); tok != "" {
			if info.Mode().Perm()&0o077 != 0 {
				return "", "", false, fmt.Errorf("admin token: %s may be read or written by other users (mode %04o): chmod 600 it, or remove it for a new token", path, info.Mode().Perm())
			}
			if len(tok) < minAdminToken {
				return "", "", false, fmt.Errorf("admin token: the token in %s is shorter than %d characters: remove the file for a new one", path, minAdminToken)
			}
			return tok, path, false, nil
		}
	}
	token = "sb_" + rand.Text()
	// A file of its own, renamed into place: its mode is 0600 whatever
	// was there, and a symbolic link there is replaced, not followed.
	f, err := os.CreateTemp(dataDir, ".admin.token-*")
	if err == nil {
		_, err = f.WriteString(token + "\n")
		err = errors.Join(err, f.Sync(), f.Close())
		if err == nil {
			err = os.Rename(f.Name(), path)
		}
		if err != nil {
			os.Remove(f.Name())
		}
	}
	if err == nil {
		err = durable.SyncDir(dataDir)
	}
	if err != nil {
		return "", "", false, fmt.Errorf("write admin token: %w", err)
	}
	return token, path, true, nil
}

// minAdminToken is the shortest admin token adminToken takes from its
// file.
const minAdminToken = 16

// apiReplyConns is how many connections publish the API's replies on the
// embedded server. BenchmarkAPI_MessagesOpenLoop (docs/BENCHMARKS.md,
// session 36), alternating runs: offered 25k reads a second, one
// connection answered 18.1-21.2k of them in time (15-28% lost), four all
// but 0.9% at most; at 20k both kept up, and the p99 was 32, 244 and
// 336 ms against 39, 20 and 23 ms. Two did about half as well as four,
// eight no better.
const apiReplyConns = 4

// dialReplyConns opens n connections with dial, named <name>-reply-<i>,
// for bus.ServiceOptions.ReplyConns. After a failure it returns those it
// opened with the error, for the caller to close.
func dialReplyConns(dial func(name string) (*nats.Conn, error), name string, n int) ([]*nats.Conn, error) {
	var ncs []*nats.Conn
	for i := range n {
		nc, err := dial(fmt.Sprintf("%s-reply-%d", name, i))
		if err != nil {
			return ncs, err
		}
		ncs = append(ncs, nc)
	}
	return ncs, nil
}

// roomKeyToken returns the <rk> token of a room subject <prefix>.room.<rk>.<kind>.
func roomKeyToken(prefix string) func(string) string {
	skip := len(prefix) + len(".room.")
	return func(subject string) string {
		if len(subject) <= skip {
			return ""
		}
		rk, _, _ := strings.Cut(subject[skip:], ".")
		return rk
	}
}

// logErased tells the projector whether a room's history below a
// purge_room is gone from the log (projections.Projector.Erased).
func logErased(log *bus.Log) func(context.Context, string, uint64) (bool, error) {
	return func(ctx context.Context, roomID string, seq uint64) (bool, error) {
		left, err := log.RoomHistoryBelow(ctx, roomID, seq)
		return !left && err == nil, err
	}
}

// httpStopWait bounds how long stopHTTP waits for the requests.
const httpStopWait = 10 * time.Second

// stopHTTP shuts srv down: it waits for the requests under way, and for
// connections that have not sent a request yet until they are 5 s old
// (as net/http has it: an HTTP client may dial a connection and never
// use it), at most httpStopWait; then it closes what is left, and
// reports it cut.
func stopHTTP(srv *http.Server) (cut bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), httpStopWait)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		return false, err
	}
	return true, srv.Close()
}

// Close stops everything in reverse order and waits for it: the HTTP
// bridge, the micro service, the projector (which commits what it was
// given), the file, the NATS connection and the embedded server.
func (m *Main) Close() error {
	var errs []error
	// v1 deletions waiting for a task answer now instead of holding the
	// stop for as long as the deletion lasts.
	if m.stopping != nil {
		close(m.stopping)
		m.stopping = nil
	}
	if m.httpSrv != nil {
		cut, err := stopHTTP(m.httpSrv)
		if cut {
			m.Logger.Warn("HTTP requests still running at the stop were cut", "waited", httpStopWait)
		}
		errs = append(errs, err)
		if err := <-m.httpDone; err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs = append(errs, err)
		}
		m.httpSrv = nil
	}
	if m.svc != nil {
		errs = append(errs, m.svc.Stop())
		m.svc = nil
	}
	if m.backfill != nil {
		// No read starts one now; those under way end before the store
		// and the connections close.
		m.backfill.Close()
		m.backfill = nil
	}
	if m.cancel != nil {
		m.cancel()
		errs = append(errs, <-m.projDone)
		m.bg.Wait()
		m.cancel = nil
	}
	if m.Store != nil {
		errs = append(errs, m.Store.Close())
		m.Store = nil
	}
	// Replies sent during the stop (a waiting v1 deletion's 503) reach
	// the server before the connections close, and an in-process
	// requester's before its own does: a flush of the API's connections,
	// then of the service's, orders them (each PONG comes after what the
	// server had queued for that connection). CI once saw the 503 lost.
	for _, nc := range append(slices.Clone(m.extraNC), m.NC) {
		if nc != nil && !nc.IsClosed() {
			_ = nc.FlushTimeout(time.Second)
		}
	}
	for _, nc := range m.extraNC {
		nc.Close()
	}
	m.extraNC = nil
	if m.NC != nil {
		m.NC.Close()
		m.NC = nil
	}
	if m.NATSServer != nil {
		m.NATSServer.Shutdown()
		m.NATSServer.WaitForShutdown()
		m.NATSServer = nil
	}
	if m.unlock != nil {
		m.unlock()
		m.unlock = nil
	}
	return errors.Join(errs...)
}
