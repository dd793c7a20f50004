//go:build unix

package main

import (
	"errors"
	"fmt"
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

// keepOwner gives the file at path the owner and group of the file it is
// to replace, old, if they differ from this process's: run as root (sudo)
// on a data dir of the service's user, rebuild and compact put in place a
// file of root's, mode 0600, and the service then failed to start
// ("permission denied"). A user who may not give it away is refused here,
// before anything is replaced. Without an old file, nothing is changed.
func keepOwner(path, old string) error {
	fi, err := os.Stat(old)
	if err != nil {
		return nil
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || int(st.Uid) == os.Geteuid() && int(st.Gid) == os.Getegid() {
		return nil
	}
	if err := os.Chown(path, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("%s belongs to uid %d, gid %d, and so must the new file, for the service to open it: run this command as that user (%w)", old, st.Uid, st.Gid, err)
	}
	return nil
}
