package projections

import (
	"golang.org/x/sys/unix"
)

const writebackSupported = true

// startWriteout asks the kernel to start writing the dirty pages of the file open as fd to disk,
// without waiting for them.
func startWriteout(fd uintptr) error {
	return unix.SyncFileRange(int(fd), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}
