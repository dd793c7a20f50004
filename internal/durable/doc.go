// Package durable makes changes to files and directories survive a crash
// of the machine: a write or a rename is on disk only once the file, and
// for a new name its directory, is synced.
//
// Used by the projection's build without fsync (projections/build.go) and
// by scrollback rebuild and compact, which put a new file in place with a
// rename.
package durable
