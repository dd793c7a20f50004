package main

// The floor of `scrollback bench` (DESIGN.md, "Benchmark protocol"): the
// cheapest way to answer a /messages-sized read on this machine, measured
// in the same run with the same client code as the service, so that the
// service's numbers can be read as a ratio to it rather than against
// figures from another day or another machine.
//
//   - scan over NATS: a micro endpoint served by bus.Serve, the same
//     arrangement as the service's (micro hands each request to a bounded
//     worker pool goroutine), on its own connection to the service's NATS
//     server (in-process when embedded, and then replying over
//     apiReplyConns connections of its own, as serve does there: on one
//     connection its workers queued near capacity where the service's do
//     not). The handler does one bbolt read
//     transaction with a reverse cursor scan of `limit` values (a forward
//     one for dir=f) and replies with the raw bytes concatenated, in a
//     buffer it takes back once the reply is sent (Endpoint.Release), as
//     the service does with its pages.
//   - scan over HTTP: the same scan behind a bare net/http handler on
//     loopback.
//   - echo: a plain core NATS subscription that replies with the request.
//
// The floor's bbolt file holds the very bytes the benchmark published: the
// MessagePack events of the room, keyed by their big-endian position
// (1 = oldest). It has no per-room prefix, no membership, no tokens and no
// re-encoding: everything scrollback does beyond that is what the ratio
// measures.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	bolt "go.etcd.io/bbolt"

	"github.com/scrollback/scrollback/bus"
)

// Subjects of the floor's NATS endpoints (outside the service's prefix).
const (
	floorScanSubject = "bench.floor.scan"
	floorEchoSubject = "bench.floor.echo"
)

var floorBucket = []byte("events")

// floor is the running floor: the bbolt file, the NATS scan endpoint and
// echo, and the HTTP scan server.
type floor struct {
	db       *bolt.DB
	nc       *nats.Conn
	replyNCs []*nats.Conn
	svc      *bus.Service
	echo     *nats.Subscription
	httpSrv  *http.Server
	httpDone chan error
	httpAddr string
}

// openFloor writes the room's events to a new bbolt file at path and
// starts the floor's endpoints on srv (in-process, with apiReplyConns
// reply connections, as serve on its embedded server) and on a loopback
// HTTP port. Close stops everything it started, also after a failure.
func openFloor(ctx context.Context, path string, srv *server.Server, room *benchRoom) (f *floor, err error) {
	return openFloorFrom(ctx, path, func(name string) (*nats.Conn, error) { return bus.ConnectInProcess(srv, name) }, apiReplyConns, slices.Values(room.raw))
}

// openFloorFrom is openFloor for any NATS server (connect), with
// replyConns connections of its own for the scan's replies (none: on the
// connection the requests come in on), and any sequence of events, oldest
// first, which need not fit in memory.
func openFloorFrom(ctx context.Context, path string, connect func(name string) (*nats.Conn, error), replyConns int, events iter.Seq[[]byte]) (f *floor, err error) {
	f = &floor{}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	// The same mmap setting as the projection, so that reads of both files
	// cost the same; the file is written once and only read afterwards, so
	// its load skips fsync.
	if f.db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, InitialMmapSize: 1 << 30, NoSync: true}); err != nil {
		return f, fmt.Errorf("bench: floor file: %w", err)
	}
	if err := f.load(ctx, events); err != nil {
		return f, err
	}
	if f.nc, err = connect("bench-floor"); err != nil {
		return f, err
	}
	if f.replyNCs, err = dialReplyConns(connect, "bench-floor", replyConns); err != nil {
		return f, err
	}
	f.svc, err = bus.Serve(f.nc, bus.ServiceOptions{Name: "scrollback-floor", Version: version, ReplyConns: f.replyNCs}, []bus.Endpoint{
		{Name: "scan", Subject: floorScanSubject, Handler: f.handleScan, Release: releaseFloorBuf},
	})
	if err != nil {
		return f, err
	}
	if f.echo, err = f.nc.Subscribe(floorEchoSubject, func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		return f, fmt.Errorf("bench: floor echo: %w", err)
	}
	// Make sure the server has the subscriptions before the first request.
	if err := f.nc.FlushTimeout(5 * time.Second); err != nil {
		return f, fmt.Errorf("bench: floor flush: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return f, fmt.Errorf("bench: floor http: %w", err)
	}
	f.httpAddr = ln.Addr().String()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /scan", f.serveScan)
	f.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	f.httpDone = make(chan error, 1)
	go func() { f.httpDone <- f.httpSrv.Serve(ln) }()
	return f, nil
}

// load stores the events in transactions of 10,000.
func (f *floor) load(ctx context.Context, events iter.Seq[[]byte]) error {
	const batch = 10_000
	next, stop := iter.Pull(events)
	defer stop()
	pos := 0
	for done := false; !done; {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := f.db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(floorBucket)
			if err != nil {
				return err
			}
			b.FillPercent = 0.9 // append-only keys
			for range batch {
				v, ok := next()
				if !ok {
					done = true
					return nil
				}
				pos++
				if err := b.Put(floorKey(pos), v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("bench: load floor file: %w", err)
		}
	}
	return nil
}

func floorKey(pos int) []byte { return binary.BigEndian.AppendUint64(nil, uint64(pos)) }

// floorRequest is the floor's NATS request: the position to scan down from
// and the limit, 8 + 4 bytes big-endian.
func floorRequest(from, limit int) []byte {
	return binary.BigEndian.AppendUint32(floorKey(from), uint32(limit))
}

// floorForward is the request of a forward scan: the position to scan up
// from and the limit, then 'f'.
func floorForward(from, limit int) []byte { return append(floorRequest(from, limit), 'f') }

// URL is the floor's HTTP request for the same scan.
func (f *floor) URL(from, limit int) string {
	return fmt.Sprintf("http://%s/scan?from=%d&limit=%d", f.httpAddr, from, limit)
}

// scan appends the values at positions from, from-1, ... (at most limit
// of them) to dst, in one read transaction.
func (f *floor) scan(dst []byte, from uint64, limit int) ([]byte, error) {
	err := f.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(floorBucket)
		if b == nil {
			return errors.New("floor bucket missing")
		}
		key := binary.BigEndian.AppendUint64(make([]byte, 0, 8), from)
		c := b.Cursor()
		k, v := c.Seek(key)
		switch {
		case k == nil:
			k, v = c.Last()
		case bytes.Compare(k, key) > 0:
			k, v = c.Prev()
		}
		for n := 0; k != nil && n < limit; n++ {
			dst = append(dst, v...)
			k, v = c.Prev()
		}
		return nil
	})
	return dst, err
}

// scanForward appends the values at positions from, from+1, ... (at most
// limit of them) to dst, in one read transaction: the floor of dir=f.
func (f *floor) scanForward(dst []byte, from uint64, limit int) ([]byte, error) {
	err := f.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(floorBucket)
		if b == nil {
			return errors.New("floor bucket missing")
		}
		c := b.Cursor()
		k, v := c.Seek(binary.BigEndian.AppendUint64(make([]byte, 0, 8), from))
		for n := 0; k != nil && n < limit; n++ {
			dst = append(dst, v...)
			k, v = c.Next()
		}
		return nil
	})
	return dst, err
}

// floorBufs keeps the buffers the floor's replies were built in, as the
// service keeps its pages' (handlers.ReleaseReply): the floor is the
// cheapest way to answer, so it must not allocate a page per read where
// the service reuses one. The bounds are the service's.
var floorBufs sync.Pool

const (
	minFloorBuf = 4 << 10
	maxFloorBuf = 1 << 20
)

// floorBuf is an empty buffer, reused if one is free.
func floorBuf() []byte {
	if b, ok := floorBufs.Get().(*[]byte); ok {
		return (*b)[:0]
	}
	return make([]byte, 0, minFloorBuf)
}

// releaseFloorBuf gives back a reply once it has been sent.
func releaseFloorBuf(b []byte) {
	if cap(b) < minFloorBuf || cap(b) > maxFloorBuf {
		return
	}
	b = b[:0]
	floorBufs.Put(&b)
}

// handleScan is the NATS endpoint's handler; its reply goes back to
// floorBufs once sent (releaseFloorBuf).
func (f *floor) handleScan(ctx context.Context, subject string, data []byte) ([]byte, error) {
	forward := len(data) == 13 && data[12] == 'f'
	if len(data) != 12 && !forward {
		return nil, fmt.Errorf("floor scan request of %d bytes, want 12 (or 13 for a forward scan)", len(data))
	}
	from, limit := binary.BigEndian.Uint64(data), int(binary.BigEndian.Uint32(data[8:12]))
	if forward {
		return f.scanForward(floorBuf(), from, limit)
	}
	return f.scan(floorBuf(), from, limit)
}

// serveScan is the HTTP handler: GET /scan?from=N&limit=N.
func (f *floor) serveScan(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	from, err1 := strconv.ParseUint(q.Get("from"), 10, 64)
	limit, err2 := strconv.Atoi(q.Get("limit"))
	if err := errors.Join(err1, err2); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	body, err := f.scan(floorBuf(), from, limit)
	defer releaseFloorBuf(body) // Write has copied it or sent it
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body)
}

// Close stops the endpoints and closes the file.
func (f *floor) Close() error {
	var errs []error
	if f.httpSrv != nil {
		_, err := stopHTTP(f.httpSrv)
		errs = append(errs, err)
		if err := <-f.httpDone; !errors.Is(err, http.ErrServerClosed) {
			errs = append(errs, err)
		}
		f.httpSrv = nil
	}
	if f.echo != nil {
		errs = append(errs, f.echo.Unsubscribe())
		f.echo = nil
	}
	if f.svc != nil {
		errs = append(errs, f.svc.Stop())
		f.svc = nil
	}
	for _, nc := range f.replyNCs {
		nc.Close() // after Stop: the replies it waited for are sent
	}
	f.replyNCs = nil
	if f.nc != nil {
		f.nc.Close()
		f.nc = nil
	}
	if f.db != nil {
		errs = append(errs, f.db.Close())
		f.db = nil
	}
	return errors.Join(errs...)
}
