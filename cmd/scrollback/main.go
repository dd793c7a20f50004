package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage: scrollback <command> [flags]

commands:
  serve   run the service (embedded NATS, projection, NATS API, HTTP bridge)
  bridge  run the HTTP bridge alone, in front of instances on an external NATS
  seed    publish synthetic rooms to a running service
  bench   measure the service against the floor (scenarios, HTML report)
  rebuild replace the projection by one rebuilt from the log (service stopped)
  compact give back the disk space purges freed in the projection (service stopped)
  verify  compare the projection with a rebuild from the log (service stopped)
  version print the version

Run 'scrollback <command> -h' for the flags of a command.
`

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = runServe(ctx, args[1:], stderr)
	case "bridge":
		err = runBridge(ctx, args[1:], stderr)
	case "seed":
		err = runSeed(ctx, args[1:], stdout)
	case "bench":
		err = runBench(ctx, args[1:], stdout)
	case "rebuild":
		err = runRebuild(ctx, args[1:], stdout)
	case "compact":
		err = runCompact(ctx, args[1:], stdout)
	case "verify":
		err = runVerify(ctx, args[1:], stdout)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "scrollback", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "scrollback: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0 // -h: the command printed its usage
	}
	if err != nil {
		fmt.Fprintln(stderr, "scrollback:", err)
		if ue := (*usageError)(nil); errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

// usageError is a mistake on the command line: an unknown flag, a flag
// value that does not parse (or, for seed and bench, whose flags are all
// their settings, one out of range), an argument where none is taken.
// run exits 2 for it, as Go's flag package does, and 1 for every other
// error; an invalid configuration (the file and the flags, checked
// together) is one of those.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usageErr marks err as a usage error. nil and flag.ErrHelp (-h, which
// exits 0) are returned as they are.
func usageErr(err error) error {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return &usageError{err: err}
}
