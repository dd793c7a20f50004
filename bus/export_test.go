package bus

// SetCompactStep sets how many erased messages one step of Compact's
// subject purge takes, for a test, and returns the restore.
func SetCompactStep(n int) (restore func()) {
	old := compactStep
	compactStep = n
	return func() { compactStep = old }
}
