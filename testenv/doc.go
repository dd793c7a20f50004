// Package testenv gives tests real infrastructure, each piece tied to the
// test's lifetime: an embedded nats-server with JetStream in its own
// temporary directory, a bbolt projection file that is checked for
// consistency at cleanup, a fake clock, a room builder that makes event
// DAGs like a homeserver would, a publisher, waits on conditions with
// deadlines (never sleeps), a Buffer that goroutines write logs or a
// child process's output to while the test reads it, and PoisonDecoder,
// whose command fails to apply in bbolt every time, as a bug's would.
//
// Nothing here mocks NATS or bbolt: tests run against the real server and
// the real file.
package testenv
