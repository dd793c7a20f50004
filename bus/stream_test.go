package bus_test

import (
	"context"
	"errors"
	"strings"
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

// publishN appends n small event messages to the room log and returns
// their sequences.
func publishN(tb testing.TB, n *testenv.NATS, log *bus.Log, count int) []uint64 {
	tb.Helper()
	seqs := make([]uint64, 0, count)
	for len(seqs) < count {
		var futs []jetstream.PubAckFuture
		for j := 0; j < 1000 && len(seqs)+len(futs) < count; j++ {
			f, err := n.JS.PublishAsync(log.Subjects.Room("!r:x", "event"), []byte("an event of a purged room"))
			if err != nil {
				tb.Fatal(err)
			}
			futs = append(futs, f)
		}
		for _, f := range futs {
			select {
			case a := <-f.Ok():
				seqs = append(seqs, a.Sequence)
			case err := <-f.Err():
				tb.Fatal(err)
			}
		}
	}
	return seqs
}

func TestDeleteMsgs_ErasesAndToleratesGone(t *testing.T) {
	n := testenv.NewNATS(t)
	log := n.Stream(t, bus.Subjects{Prefix: "sb"}, "SCROLLBACK")
	seqs := publishN(t, n, log, 300)
	ctx := context.Background()
	// The first 100 twice (a retry after a crash), and 50 never
	// published past the end are not there either.
	if err := log.DeleteMsgs(ctx, seqs[:100]); err != nil {
		t.Fatal(err)
	}
	if err := log.DeleteMsgs(ctx, seqs[:200]); err != nil {
		t.Fatalf("deleting messages already gone: %v", err)
	}
	st, err := n.JS.Stream(ctx, "SCROLLBACK")
	if err != nil {
		t.Fatal(err)
	}
	for i, seq := range seqs {
		_, err := st.GetMsg(ctx, seq)
		if gone := errors.Is(err, jetstream.ErrMsgNotFound); gone != (i < 200) {
			t.Fatalf("message %d (sequence %d): gone %v, err %v", i, seq, gone, err)
		}
	}
	// A cancelled context stops the work with its error.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := log.DeleteMsgs(cctx, seqs[200:]); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: err = %v", err)
	}
}

// BenchmarkDeleteMsgs erases b.N messages with fsync on every write (the
// service's setting): one DeleteMsg at a time, against DeleteMsgs's
// requests in parallel; then both without fsync, to show what the
// tombstones' syncs cost.
func BenchmarkDeleteMsgs(b *testing.B) {
	for _, mode := range []string{"one-at-a-time", "DeleteMsgs", "one-at-a-time-nosync", "DeleteMsgs-nosync"} {
		b.Run(mode, func(b *testing.B) {
			newNATS := testenv.NewNATS
			if strings.HasSuffix(mode, "-nosync") {
				newNATS = testenv.NewNATSNoSync
			}
			n := newNATS(b)
			log := n.Stream(b, bus.Subjects{Prefix: "sb"}, "SCROLLBACK")
			seqs := publishN(b, n, log, b.N)
			ctx := context.Background()
			st, err := n.JS.Stream(ctx, "SCROLLBACK")
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			if strings.HasPrefix(mode, "DeleteMsgs") {
				if err := log.DeleteMsgs(ctx, seqs); err != nil {
					b.Fatal(err)
				}
			} else {
				for _, seq := range seqs {
					if err := st.DeleteMsg(ctx, seq); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// TestRedactURL: a NATS URL in a log line or an error shows no password.
func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                            "nats://127.0.0.1:4222",
		"nats://admin:s3cret-pass@h:4222":                  "nats://admin:xxxxx@h:4222",
		"nats://a:p1@h1:4222,nats://h2:4222,tls://b:p2@h3": "nats://a:xxxxx@h1:4222,nats://h2:4222,tls://b:xxxxx@h3",
		"admin:s3cret-pass@h:4222":                         "nats://admin:xxxxx@h:4222",
		"nats://s3cret-token@h:4222":                       "nats://xxxxx@h:4222",
	} {
		if got := bus.RedactURL(in); got != want || strings.Contains(got, "s3cret") {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// AppendNew tells another writer's message under the same ID from its
// own: the second append of an ID within the duplicate window gets the
// first one's sequence and ErrDuplicate; Append takes it for its own.
func TestLog_AppendNewReportsAnotherWritersMessage(t *testing.T) {
	n := testenv.NewNATS(t)
	log := n.Stream(t, bus.Subjects{Prefix: "sb"}, "SCROLLBACK")
	ctx := context.Background()
	subject := log.Subjects.Room("!r:test", "task")
	first, err := log.AppendNew(ctx, subject, "T-1", []byte{0x80})
	if err != nil {
		t.Fatal(err)
	}
	again, err := log.AppendNew(ctx, subject, "T-1", []byte{0x81})
	if !errors.Is(err, bus.ErrDuplicate) || again != first {
		t.Fatalf("a second AppendNew of T-1: sequence %d, %v; want %d and ErrDuplicate", again, err, first)
	}
	if seq, err := log.Append(ctx, subject, "T-1", []byte{0x82}); err != nil || seq != first {
		t.Fatalf("Append of T-1: sequence %d, %v; want %d and no error", seq, err, first)
	}
	if seq, err := log.AppendNew(ctx, subject, "T-2", []byte{0x80}); err != nil || seq <= first {
		t.Fatalf("AppendNew of T-2: sequence %d, %v", seq, err)
	}
}

// TestLog_AppendAfterIsRefusedAfterAnotherWriter: AppendAfter appends
// only while the subject's last message is the one the caller saw, so
// that a check made against the log up to it still holds (two
// instances deleting a room at once); other subjects do not matter.
func TestLog_AppendAfterIsRefusedAfterAnotherWriter(t *testing.T) {
	n := testenv.NewNATS(t)
	log := n.Stream(t, bus.Subjects{Prefix: "sb"}, "SCROLLBACK")
	ctx := context.Background()
	subject := log.Subjects.Room("!r:test", "cmd")
	if last, err := log.SubjectLastSeq(ctx, subject); err != nil || last != 0 {
		t.Fatalf("SubjectLastSeq of an empty subject = %d, %v; want 0", last, err)
	}
	first, err := log.AppendAfter(ctx, subject, "C-1", []byte{0x80}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := log.AppendAfter(ctx, subject, "C-2", []byte{0x80}, 0); !errors.Is(err, bus.ErrNotLast) {
		t.Fatalf("AppendAfter expecting no message, after C-1: %v; want ErrNotLast", err)
	}
	if _, err := log.Append(ctx, log.Subjects.Room("!other:test", "cmd"), "O-1", []byte{0x80}); err != nil {
		t.Fatal(err)
	}
	if last, err := log.SubjectLastSeq(ctx, subject); err != nil || last != first {
		t.Fatalf("SubjectLastSeq = %d, %v; want %d", last, err, first)
	}
	second, err := log.AppendAfter(ctx, subject, "C-2", []byte{0x80}, first)
	if err != nil || second <= first {
		t.Fatalf("AppendAfter C-1's sequence: %d, %v", second, err)
	}
	if _, err := log.AppendAfter(ctx, subject, "C-3", []byte{0x80}, first); !errors.Is(err, bus.ErrNotLast) {
		t.Fatalf("AppendAfter an older sequence: %v; want ErrNotLast", err)
	}
}

// TestRedactURL_PasswordURLCannotParse: a password with a character a URL
// must escape ('%', '/', '?', '#'), written as it is, makes the URL
// unparsable; neither RedactURL nor Connect's error may then show it
// (they printed the whole URL, and nats.go's url.Error once more).
func TestRedactURL_PasswordURLCannotParse(t *testing.T) {
	for _, in := range []string{
		"nats://hs:pa%zz-s3cret@127.0.0.1:4222",
		"nats://hs:pa/s3cret@127.0.0.1:4222",
		"nats://hs:pa?s3cret@127.0.0.1:4222",
		"nats://hs:pa#s3cret@127.0.0.1:4222",
		"hs:pa/s3cret@127.0.0.1:4222",
		"nats://127.0.0.1:4222,nats://hs:pa%zz-s3cret@127.0.0.1:4223",
	} {
		if got := bus.RedactURL(in); strings.Contains(got, "s3cret") {
			t.Errorf("RedactURL(%q) = %q", in, got)
		}
		nc, err := bus.Connect(in, "", "redact-test")
		if err == nil {
			nc.Close()
			t.Errorf("Connect(%q) succeeded", in)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Connect(%q): %v", in, err)
		}
	}
}
