package bus

// SetCompactStep sets how many erased messages one step of Compact's
// subject purge takes, for a test, and returns the restore.
func SetCompactStep(n int) (restore func()) {
	old := compactStep
	compactStep = n
	return func() { compactStep = old }
}

// SetKeptBatch sets how many kept copies Compact publishes in one atomic
// batch, for a test, and returns the restore.
func SetKeptBatch(n int) (restore func()) {
	old := keptBatch
	keptBatch = n
	return func() { keptBatch = old }
}
