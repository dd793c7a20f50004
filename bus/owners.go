package bus

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Owners elects, for every partition of the rooms, one owner among the
// scrollback instances sharing a log. Every instance applies every
// partition (full read replicas), but only a partition's owner runs the
// tasks of its rooms and their side effects.
//
// The election is NATS's own: a lease per partition in a JetStream
// key-value bucket whose entries expire after Lease. An instance takes a
// free partition with Create (which fails if the key exists) and keeps it
// by Update with the revision it last wrote (which fails if anybody else
// wrote since). An owner that dies stops renewing, its lease expires on
// the server and another instance takes the partition, so a failover takes
// at most Lease plus one renewal tick. Nothing here is home-made consensus:
// the compare-and-set is the stream's, decided by its Raft group.
//
// Which instance takes a free partition is decided by rendezvous hashing
// over the live instances (each keeps a membership key alive in the same
// bucket), so the partitions spread evenly, and when an instance joins or
// leaves only its share moves. An owner hands a partition over by deleting
// its lease when another live instance is preferred for it.
//
// A lease guards efficiency, not correctness: an instance that wrongly
// believes it still owns a partition (a long pause) can at worst repeat a
// step whose TaskUpdate has the same message ID (dropped by the stream's
// duplicate window) or a side effect with the same txn_id (which the
// homeserver worker answers from its cache).
type Owners struct {
	KV         jetstream.KeyValue
	Instance   string // this instance's name; the same name after a restart keeps its preferences
	Partitions int
	Lease      time.Duration
	Logger     *slog.Logger

	nonce   string          // this process: a restarted instance waits for its old leases to expire
	owned   []atomic.Int64  // per partition: unix nanos of the last renewal, 0 if not owned
	revs    []uint64        // per partition: the revision of our lease (Run's goroutine only)
	free    []int           // per partition: ticks seen free (Run's goroutine only)
	changed chan struct{}   // signalled when the owned set changes
	mu      sync.Mutex      // guards members and view
	members map[string]bool // live instances, as last seen
	view    map[string]string
	// stopWatch ends the current watcher of the bucket; gen numbers the
	// watchers, so that a replaced one changes nothing.
	stopWatch func()
	gen       uint64
	lastEvent atomic.Int64 // unix nanos of the watcher's last update
}

// OwnersBucket is the name of the leases bucket for a stream.
func OwnersBucket(stream string) string { return stream + "_owners" }

var instanceName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidInstance reports whether name can name an instance (it is a key
// token of the bucket).
func ValidInstance(name string) bool { return instanceName.MatchString(name) }

// OpenOwners creates or opens the leases bucket (replicas as the log's)
// and returns an Owners for this instance. Call Run to take part.
func OpenOwners(ctx context.Context, js jetstream.JetStream, stream string, replicas int, instance string, partitions int, lease time.Duration, logger *slog.Logger) (*Owners, error) {
	if !ValidInstance(instance) {
		return nil, fmt.Errorf("bus: instance name %q: use 1 to 64 letters, digits, - or _", instance)
	}
	if lease < 300*time.Millisecond {
		return nil, fmt.Errorf("bus: lease %v is too short (at least 300ms)", lease)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if old, err := js.KeyValue(ctx, OwnersBucket(stream)); err == nil {
		// Each instance sets the bucket's TTL to its own lease: with
		// different leases they hand partitions back and forth.
		if st, err := old.Status(ctx); err == nil && st.TTL() != lease {
			logger.Warn("the leases bucket was set up with another cluster.lease; every instance must use the same",
				"bucket", OwnersBucket(stream), "was", st.TTL(), "now", lease)
		}
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:   OwnersBucket(stream),
		History:  1,
		TTL:      lease,
		Storage:  jetstream.FileStorage,
		Replicas: max(replicas, 1),
		// A lease that expires leaves a marker, so that the watchers
		// of the other instances see it go.
		LimitMarkerTTL: max(lease, time.Second),
	})
	if err != nil {
		return nil, fmt.Errorf("bus: owners bucket %s: %w", OwnersBucket(stream), err)
	}
	o := &Owners{KV: kv, Instance: instance, Partitions: partitions, Lease: lease, Logger: logger,
		nonce: rand.Text()[:8], owned: make([]atomic.Int64, partitions), revs: make([]uint64, partitions),
		free: make([]int, partitions), changed: make(chan struct{}, 1), members: map[string]bool{}}
	if err := o.startWatch(ctx); err != nil {
		return nil, err
	}
	return o, nil
}

// startWatch (re)starts the watcher that keeps the view of every lease
// and membership, so a round costs the writes only, and waits for the
// initial values. Every round renews this instance's membership, so the
// watcher hears something at least every Lease/4: a watcher silent for a
// whole Lease has lost its consumer (a NATS node died under it) and Step
// starts a new one.
func (o *Owners) startWatch(ctx context.Context) error {
	wctx, cancel := context.WithCancel(context.Background())
	w, err := o.KV.WatchAll(wctx)
	if err != nil {
		cancel()
		return fmt.Errorf("bus: watch %s: %w", o.KV.Bucket(), err)
	}
	o.mu.Lock()
	if o.stopWatch != nil {
		o.stopWatch()
	}
	o.gen++
	gen := o.gen
	o.view = map[string]string{}
	o.stopWatch = func() { cancel(); _ = w.Stop() }
	o.mu.Unlock()
	o.lastEvent.Store(time.Now().UnixNano())
	ready := make(chan struct{})
	go o.watch(w, gen, ready)
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("bus: watch %s: %w", o.KV.Bucket(), ctx.Err())
	}
}

// watch applies the bucket's changes to the view while gen is current;
// ready is closed once the initial values are in.
func (o *Owners) watch(w jetstream.KeyWatcher, gen uint64, ready chan struct{}) {
	initial := true
	for e := range w.Updates() {
		o.lastEvent.Store(time.Now().UnixNano())
		if e == nil {
			if initial {
				close(ready)
				initial = false
			}
			continue
		}
		o.mu.Lock()
		if gen == o.gen {
			if e.Operation() == jetstream.KeyValuePut {
				o.view[e.Key()] = string(e.Value())
			} else {
				delete(o.view, e.Key()) // deleted, or expired (a MaxAge marker)
			}
		}
		o.mu.Unlock()
	}
}

// Owns reports whether this instance owns partition p now. A lease not
// renewed for two thirds of Lease counts as lost already, so that the
// owner stops before the server lets another instance take over.
func (o *Owners) Owns(p int) bool {
	if o == nil {
		return true
	}
	last := o.owned[p].Load()
	// Lease/3*2, not Lease*2/3: a lease of centuries ("1000y") would
	// overflow into a negative bound, and nothing would be owned.
	return last != 0 && time.Since(time.Unix(0, last)) < o.Lease/3*2
}

// Owned lists the partitions this instance owns now.
func (o *Owners) Owned() []int {
	var out []int
	for p := range o.Partitions {
		if o.Owns(p) {
			out = append(out, p)
		}
	}
	return out
}

// Changed is signalled (without blocking) whenever a partition is gained
// or lost, so task runners can react at once.
func (o *Owners) Changed() <-chan struct{} { return o.changed }

// Members lists the live instances as last seen.
func (o *Owners) Members() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]string, 0, len(o.members))
	for m := range o.members {
		out = append(out, m)
	}
	return out
}

// Run renews the membership and the leases every Lease/4 until ctx ends,
// then releases the leases it holds so that others take over at once.
func (o *Owners) Run(ctx context.Context) {
	tick := time.NewTicker(o.Lease / 4)
	defer tick.Stop()
	for {
		if err := o.Step(ctx); err != nil && ctx.Err() == nil {
			o.Logger.Warn("partition leases: renewal failed; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			o.release()
			o.Close()
			return
		case <-tick.C:
		}
	}
}

func (o *Owners) memberKey() string { return "m." + o.Instance }
func (o *Owners) myValue() []byte   { return []byte(o.Instance + " " + o.nonce) }
func partitionKey(p int) string     { return "p." + strconv.Itoa(p) }

// Step runs one round: keep this instance's membership alive, renew
// our leases, take free partitions this instance is preferred for
// (others after a grace of two rounds), and hand over partitions another
// live instance is preferred for. Who holds what comes from the watcher's
// view; our own leases are renewed by the revision we last wrote, so a
// view that lags behind our writes never costs a lease.
func (o *Owners) Step(ctx context.Context) error {
	if _, err := o.KV.Put(ctx, o.memberKey(), []byte(o.nonce)); err != nil {
		return fmt.Errorf("membership: %w", err)
	}
	if time.Since(time.Unix(0, o.lastEvent.Load())) > o.Lease {
		o.Logger.Warn("partition leases: the watcher went silent; watching again")
		if err := o.startWatch(ctx); err != nil {
			return err
		}
	}
	o.mu.Lock()
	view := maps.Clone(o.view)
	o.mu.Unlock()
	members := map[string]bool{o.Instance: true}
	for k := range view {
		if name, ok := strings.CutPrefix(k, "m."); ok {
			members[name] = true
		}
	}
	o.mu.Lock()
	o.members = members
	o.mu.Unlock()
	var errs []error
	for p := range o.Partitions {
		key := partitionKey(p)
		holder, held := view[key]
		preferred := Preferred(p, members)
		mine := o.owned[p].Load() != 0
		switch {
		case mine && preferred != o.Instance:
			// Another live instance is preferred: hand the partition over.
			o.lose(p)
			if err := o.KV.Delete(ctx, key, jetstream.LastRevision(o.revs[p])); err != nil {
				errs = append(errs, fmt.Errorf("release %s: %w", key, err))
			}
		case mine:
			rev, err := o.KV.Update(ctx, key, o.myValue(), o.revs[p])
			if err != nil {
				o.lose(p)
				errs = append(errs, fmt.Errorf("renew %s: %w", key, err))
				continue
			}
			o.gain(p, rev)
		case held && holder != string(o.myValue()):
			o.free[p] = 0 // someone else's (or our previous process's, until it expires)
		default:
			o.free[p]++
			if preferred != o.Instance && o.free[p] < 3 {
				continue // give the preferred instance its chance first
			}
			rev, err := o.KV.Create(ctx, key, o.myValue())
			if err != nil {
				if !errors.Is(err, jetstream.ErrKeyExists) {
					errs = append(errs, fmt.Errorf("claim %s: %w", key, err))
				}
				continue
			}
			o.free[p] = 0
			o.gain(p, rev)
		}
	}
	return errors.Join(errs...)
}

func (o *Owners) gain(p int, rev uint64) {
	was := o.owned[p].Swap(time.Now().UnixNano())
	o.revs[p] = rev
	if was == 0 {
		o.Logger.Info("partition owned", "partition", p, "instance", o.Instance)
		o.signal()
	}
}

func (o *Owners) lose(p int) {
	if o.owned[p].Swap(0) != 0 {
		o.Logger.Info("partition handed over or lost", "partition", p, "instance", o.Instance)
		o.signal()
	}
}

func (o *Owners) signal() {
	select {
	case o.changed <- struct{}{}:
	default:
	}
}

// release deletes this instance's leases and membership so that the
// others take over without waiting for the leases to expire.
func (o *Owners) release() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for p := range o.Partitions {
		if o.owned[p].Swap(0) == 0 {
			continue
		}
		key := partitionKey(p)
		if err := o.KV.Delete(ctx, key, jetstream.LastRevision(o.revs[p])); err == nil {
			continue
		}
		// A renewal cut short by the same shutdown may have been stored
		// without our learning its revision: the lease is still ours if
		// it holds our value, and it goes by the revision it has now
		// (else it would stay taken until it expires).
		if e, err := o.KV.Get(ctx, key); err == nil && bytes.Equal(e.Value(), o.myValue()) {
			_ = o.KV.Delete(ctx, key, jetstream.LastRevision(e.Revision()))
		}
	}
	_ = o.KV.Delete(ctx, o.memberKey())
}

// Close stops the watcher (Run releases the leases when its context
// ends; Close is for an Owners whose Run never ran).
func (o *Owners) Close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.stopWatch()
}

// Preferred is the live instance that should own partition p: the
// highest hash of "<instance>/<p>" (rendezvous hashing).
func Preferred(p int, members map[string]bool) string {
	best, bestH := "", uint64(0)
	for m := range members {
		h := fnv.New64a()
		fmt.Fprintf(h, "%s/%d", m, p)
		if v := mix(h.Sum64()); best == "" || v > bestH || v == bestH && m < best {
			best, bestH = m, v
		}
	}
	return best
}

// mix is murmur3's 64-bit finalizer: fnv64a alone barely spreads names
// that differ in one character, so one instance would win everywhere.
func mix(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
