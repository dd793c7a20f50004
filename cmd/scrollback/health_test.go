package main

import (
	"net/http"
	"testing"
	"time"

	"github.com/scrollback/scrollback/testenv"
)

// healthStatus is GET /health's status code.
func healthStatus(t testing.TB, m *Main) int {
	t.Helper()
	resp, err := http.Get("http://" + m.HTTPAddr + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestHealth_NotReadyWhileNATSIsGone: /health answers 200 "once the
// projector consumes the log and the API answers" (README). With the log
// on an external NATS that goes away, neither holds: every request the
// bridge passes on is a 503 and the projection stops moving, so a load
// balancer or an orchestrator must see the instance as not ready until
// NATS is back. It answered 200 throughout.
func TestHealth_NotReadyWhileNATSIsGone(t *testing.T) {
	ext := startExternalNATS(t)
	m := startMain(t, func(c *Config) { c.NATS.URL = ext.url(); c.Cluster.Instance = "health" })
	testenv.WaitFor(t, 10*time.Second, "/health 200 with NATS up", func() bool { return healthStatus(t, m) == 200 })
	ext.shutdown()
	testenv.WaitFor(t, 10*time.Second, "/health 503 while NATS is gone", func() bool { return healthStatus(t, m) == 503 })
	ext.start()
	testenv.WaitFor(t, 30*time.Second, "/health 200 once NATS is back", func() bool { return healthStatus(t, m) == 200 })
}
