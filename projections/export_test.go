package projections

// SetRelMarksBatch sets relMarksBatch for a test, and back at its end.
func SetRelMarksBatch(tb interface{ Cleanup(func()) }, n int) {
	was := relMarksBatch
	relMarksBatch = n
	tb.Cleanup(func() { relMarksBatch = was })
}

// SetUnindexWindow sets unindexWindow for a test, and back at its end.
func SetUnindexWindow(tb interface{ Cleanup(func()) }, n int) {
	was := unindexWindow
	unindexWindow = n
	tb.Cleanup(func() { unindexWindow = was })
}

// SetMigrateBatch sets migrateBatch for a test, and back at its end.
func SetMigrateBatch(tb interface{ Cleanup(func()) }, n int) {
	was := migrateBatch
	migrateBatch = n
	tb.Cleanup(func() { migrateBatch = was })
}
