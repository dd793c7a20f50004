package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/handlers"
)

// runBridge runs the HTTP bridge alone, in front of scrollback instances
// reached over an external NATS (`scrollback bridge -c FILE`): it reads
// the same config file as serve and uses nats.url, nats.credentials,
// nats.subject_prefix, http.*, auth.*, homeserver.timeout, log.* and
// memory_limit. Reads and admin requests go to whichever instance the
// NATS queue group picks.
func runBridge(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, err := parseFlags("bridge", args, os.Stderr)
	if err != nil {
		return err
	}
	applyMemoryLimit(cfg)
	m := &Main{Config: cfg, Logger: newLogger(cfg.Log, stderr)}
	slog.SetDefault(m.Logger) // for what libraries report without a logger of ours
	if err := m.OpenBridge(); err != nil {
		m.Close()
		return err
	}
	<-ctx.Done()
	m.Logger.Info("shutting down")
	return m.Close()
}

// OpenBridge connects to the external NATS and starts the HTTP bridge
// only. /health answers 200 while a scrollback instance answers the micro
// service's ping.
func (m *Main) OpenBridge() error {
	c := m.Config
	if m.Logger == nil {
		m.Logger = slog.New(slog.DiscardHandler)
	}
	if c.NATS.URL == "" {
		return errors.New("bridge: needs nats.url (or --nats-url): the NATS where the scrollback instances run")
	}
	if c.HTTP.Listen == "" {
		return errors.New("bridge: needs http.listen (or --http)")
	}
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil { // the generated admin token lives there
		return fmt.Errorf("data dir: %w", err)
	}
	var err error
	if m.NC, err = bus.Connect(c.NATS.URL, c.NATS.Credentials, "scrollback-bridge"); err != nil {
		return err
	}
	m.Metrics = handlers.NewMetrics(nil)
	healthy := func() bool {
		_, err := m.NC.Request(bus.Subjects{Prefix: c.NATS.SubjectPrefix}.API("ping"), nil, time.Second)
		return err == nil
	}
	if err := m.openHTTP(m.NC, bus.Subjects{Prefix: c.NATS.SubjectPrefix}, healthy); err != nil {
		return err
	}
	m.Logger.Info("scrollback bridge started", "http", m.HTTPAddr, "nats", bus.RedactURL(c.NATS.URL))
	return nil
}
