package projections

import (
	"os"

	"golang.org/x/sys/unix"
)

const writebackSupported = true

// startWriteout asks the kernel to start writing f's dirty pages to disk,
// without waiting for them.
func startWriteout(f *os.File) error {
	return unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}
