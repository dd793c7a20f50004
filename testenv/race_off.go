//go:build !race

package testenv

// raceDetector is true when the tests run with -race.
const raceDetector = false
