//go:build !unix

package main

import "os"

// flock does nothing where flock(2) does not exist: the data dir is not
// guarded there.
func flock(*os.File) error { return nil }
