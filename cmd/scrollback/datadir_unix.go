//go:build unix

package main

import (
	"errors"
	"os"
	"syscall"
)

// flock takes an exclusive lock of f without waiting (errLocked if
// another open file holds one).
func flock(f *os.File) error {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return errLocked
	}
	return err
}
