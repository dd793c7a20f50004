package main

import (
	"context"
	"errors"
	"io"
)

func runSeed(ctx context.Context, args []string, stdout io.Writer) error {
	return errors.New("seed: not built yet")
}
