// Package testenv gives tests real infrastructure, each piece tied to the
// test's lifetime: an embedded nats-server with JetStream in its own
// temporary directory, a bbolt projection file that is checked for
// consistency at cleanup, a fake clock, a room builder that makes event
// DAGs like a homeserver would, a publisher, and waits on conditions with
// deadlines (never sleeps).
//
// Nothing here mocks NATS or bbolt: tests run against the real server and
// the real file.
package testenv
