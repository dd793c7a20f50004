package bus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/testenv"
)

func TestEnsureStream_CreatesThenAccepts(t *testing.T) {
	n := testenv.NewNATS(t)
	s := bus.Subjects{Prefix: "sb"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := bus.EnsureStream(ctx, n.JS, s, "SCROLLBACK")
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	if cfg.Storage != jetstream.FileStorage || !cfg.AllowAtomicPublish || cfg.Duplicates != 2*time.Minute || cfg.Subjects[0] != "sb.room.>" {
		t.Fatalf("created %+v", cfg)
	}
	if _, err := bus.EnsureStream(ctx, n.JS, s, "SCROLLBACK"); err != nil {
		t.Fatalf("second start: %v", err)
	}
}

func TestEnsureStream_ConflictStopsAndKeepsTheLog(t *testing.T) {
	tests := []struct {
		name string
		cfg  jetstream.StreamConfig
	}{
		{"other subjects", jetstream.StreamConfig{Subjects: []string{"other.>"}, Storage: jetstream.FileStorage}},
		{"memory storage", jetstream.StreamConfig{Subjects: []string{"sb.room.>"}, Storage: jetstream.MemoryStorage}},
		{"deletes denied", jetstream.StreamConfig{Subjects: []string{"sb.room.>"}, Storage: jetstream.FileStorage, DenyDelete: true}},
		{"purges denied", jetstream.StreamConfig{Subjects: []string{"sb.room.>"}, Storage: jetstream.FileStorage, DenyPurge: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := testenv.NewNATS(t)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			tt.cfg.Name = "SCROLLBACK"
			st, err := n.JS.CreateStream(ctx, tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			subj := tt.cfg.Subjects[0][:len(tt.cfg.Subjects[0])-1] + "x"
			if _, err := n.JS.Publish(ctx, subj, []byte("keep me")); err != nil {
				t.Fatal(err)
			}
			_, err = bus.EnsureStream(ctx, n.JS, bus.Subjects{Prefix: "sb"}, "SCROLLBACK")
			if !errors.Is(err, bus.ErrStreamConflict) {
				t.Fatalf("err = %v, want ErrStreamConflict", err)
			}
			info, err := st.Info(ctx)
			if err != nil || info.State.Msgs != 1 {
				t.Fatalf("the log was touched: %+v %v", info, err)
			}
		})
	}
}
