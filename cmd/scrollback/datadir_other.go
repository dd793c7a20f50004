//go:build !unix

package main

import "os"

// flock does nothing where flock(2) does not exist: the data dir is not
// guarded there.
func flock(*os.File) error { return nil }

// keepOwner does nothing where files have no Unix owner.
func keepOwner(path, old string) error { return nil }
