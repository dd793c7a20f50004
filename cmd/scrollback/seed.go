package main

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"html"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/scrollback/scrollback/bus"
)

// Defaults and bounds of `scrollback seed`.
const (
	seedDefaultNATSURL = "nats://127.0.0.1:4222"
	seedDefaultHTTP    = "127.0.0.1:8090"
	// The generated admin token of `make run`'s data dir.
	seedDefaultTokenFile = "data/admin.token"
	seedDefaultWindow    = 512             // publishes awaiting their ack at once
	seedDefaultTimeout   = 5 * time.Minute // the whole run, acks included
	seedHistorySpan      = 30 * 24 * time.Hour
	seedMaxRooms         = 10_000
	seedMaxMessages      = 100_000
	seedMaxMembers       = 1_000
	seedMaxEvents        = 2_000_000 // rooms × messages: the run keeps every event ID
)

const seedUsage = `Usage: scrollback seed [-c FILE] [flags]

Publishes synthetic rooms (state, members, a conversation with edits, threads,
reactions, an image, a topic change, a leave and rejoin, a redaction) to the
room log of a running scrollback, so that there is history to read at once.
Every run adds new rooms; --seed makes their content reproducible. Given the
service's config file (-c) or data dir (--data), seed connects to that service
and prints reads that work for it; the other flags override what they say.

Flags:
`

// seedOptions configure one seeding run; runSeed fills them from flags.
type seedOptions struct {
	// ServerName is the server of the rooms and users (--server-name).
	ServerName string
	// Rooms is the number of rooms to create (--rooms).
	Rooms int
	// Messages is the number of conversation events per room, after the
	// room's set-up events (--messages).
	Messages int
	// Members is the number of users who join each room, the creator
	// included (--members).
	Members int
	// Seed makes the content of the rooms reproducible (--seed). Event
	// and room IDs stay random so that each run adds new rooms.
	Seed int64
	// Prefix is the subject prefix, nats.subject_prefix (--prefix).
	Prefix string
	// HTTPAddr is the HTTP bridge's address, only used in the printed
	// examples (--http); "" prints none.
	HTTPAddr string
	// HTTPS: the bridge serves HTTPS (http.tls in the config).
	HTTPS bool
	// TokenFile is the admin token's file, only used in the printed curl
	// examples (--token-file).
	TokenFile string
	// Credentials is the NATS credentials file of the service's nats.url,
	// when seed took that URL from the service's config (-c).
	Credentials string
	// TokenInConfig: the service's admin tokens are in its auth.tokens
	// (it writes no admin.token), and the curls read $SCROLLBACK_TOKEN.
	TokenInConfig bool
	// Timeout bounds the whole run (--timeout).
	Timeout time.Duration
	// Window is the number of publishes awaiting their ack at once
	// (0: seedDefaultWindow).
	Window int
	// Now is the end of the synthetic history (zero: time.Now()).
	Now time.Time
}

// seededRoom is what seedRooms reports about one room it published.
type seededRoom struct {
	ID       string
	Name     string
	EventIDs []string // in log order
	Types    []string // the event types, in log order
	LastSeq  uint64   // the log sequence of the room's last event
}

// runSeed is `scrollback seed`: it parses the flags, connects to the
// service's NATS server and publishes the rooms.
func runSeed(ctx context.Context, args []string, stdout io.Writer) error {
	opts, natsURL, err := parseSeedFlags(args, stdout)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	// bus.Connect, as the service's own clients: a user in the URL gets
	// its own inbox prefix, which a nats.auth server requires.
	nc, err := bus.Connect(natsURL, opts.Credentials, "scrollback seed")
	if err != nil {
		return fmt.Errorf("seed: cannot connect to NATS at %s (is `scrollback serve` running? its embedded server listens on nats.listen, %s by default: give seed the service's config with -c, or --nats-url): %w",
			bus.RedactURL(natsURL), strings.TrimPrefix(seedDefaultNATSURL, "nats://"), err)
	}
	defer nc.Close()
	fmt.Fprintf(stdout, "Connected to %s.\n", nc.ConnectedUrlRedacted())
	_, err = seedRooms(ctx, nc, opts, stdout)
	return err
}

// parseSeedFlags parses the flags of `scrollback seed`. With -h it prints
// the usage on stdout and returns flag.ErrHelp; any other error is a
// usage error (usageError: the process exits 2). The flags about the
// service that are not given come from its config file (-c) and data dir
// (--data), or from the defaults without them (seedFromConfig).
func parseSeedFlags(args []string, stdout io.Writer) (seedOptions, string, error) {
	fs := flag.NewFlagSet("seed", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, not printed twice
	opts := seedOptions{Window: seedDefaultWindow}
	var natsURL, path, dataDir string
	fs.StringVar(&path, "c", "", "the service's YAML config `file` (same as --config)")
	fs.StringVar(&path, "config", "", "the service's YAML config `file`: its nats.url or nats.listen, server_name, nats.subject_prefix, http.listen and data_dir are the defaults of the flags below")
	fs.StringVar(&dataDir, "data", "", "the service's data `dir`ectory, overrides data_dir (default ./data): the curl examples read <dir>/admin.token")
	fs.StringVar(&natsURL, "nats-url", "", "NATS `url` of the running service (default: the config's nats.url, else its nats.listen; "+seedDefaultNATSURL+" without -c)")
	fs.StringVar(&opts.ServerName, "server-name", "", "Matrix server `name` of the rooms and users (default: the config's server_name; localhost without -c)")
	fs.IntVar(&opts.Rooms, "rooms", 3, "number of rooms to create")
	fs.IntVar(&opts.Messages, "messages", 200, "conversation events per room, after the room's set-up events")
	fs.IntVar(&opts.Members, "members", 5, "users who join each room, the creator included (@alice, @bob, @carol, ...)")
	fs.Int64Var(&opts.Seed, "seed", 1, "random `seed`: the same seed gives the same rooms (room and event IDs excepted)")
	fs.StringVar(&opts.Prefix, "prefix", "", "subject `prefix` (default: the config's nats.subject_prefix; sb without -c)")
	fs.StringVar(&opts.HTTPAddr, "http", "", "HTTP bridge `address` used in the printed curl examples (default: the config's http.listen; "+seedDefaultHTTP+" without -c); \"\" prints none")
	fs.StringVar(&opts.TokenFile, "token-file", "", "the service's admin token `file`, used in the printed curl examples (default: <data dir>/admin.token; "+seedDefaultTokenFile+" without -c or --data)")
	fs.DurationVar(&opts.Timeout, "timeout", seedDefaultTimeout, "give up if publishing and acks take longer than this")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprint(stdout, seedUsage)
			fs.PrintDefaults()
			return seedOptions{}, "", err
		}
		return seedOptions{}, "", usageErr(fmt.Errorf("seed: %w (see scrollback seed -h)", err))
	}
	if fs.NArg() > 0 {
		return seedOptions{}, "", usageErr(fmt.Errorf("seed: unexpected argument %q (see scrollback seed -h)", fs.Arg(0)))
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		return seedOptions{}, "", fmt.Errorf("seed: %w", err)
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if given["data"] {
		cfg.DataDir = dataDir
	}
	if err := seedFromConfig(cfg, given, &opts, &natsURL); err != nil {
		return seedOptions{}, "", err
	}
	if natsURL == "" {
		return seedOptions{}, "", usageErr(errors.New("seed: --nats-url must not be empty"))
	}
	if err := opts.validate(); err != nil {
		return seedOptions{}, "", usageErr(err)
	}
	return opts, natsURL, nil
}

// seedFromConfig sets the options about the service that no flag gave
// from its configuration: where it listens, its names, the admin token
// in its data dir. The defaults' configuration gives the flags' defaults.
func seedFromConfig(cfg Config, given map[string]bool, opts *seedOptions, natsURL *string) error {
	if !given["nats-url"] {
		switch {
		case cfg.NATS.URL != "":
			*natsURL, opts.Credentials = cfg.NATS.URL, cfg.NATS.Credentials
		case cfg.NATS.Listen != "":
			*natsURL = "nats://" + reachable(cfg.NATS.Listen)
		default:
			return errors.New("seed: the service's embedded NATS takes no clients (nats.listen is \"\"): give --nats-url")
		}
	}
	if !given["server-name"] {
		opts.ServerName = cfg.ServerName
	}
	if !given["prefix"] {
		opts.Prefix = cfg.NATS.SubjectPrefix
	}
	if !given["http"] {
		opts.HTTPAddr = cfg.HTTP.Listen
	}
	opts.HTTPS = cfg.HTTP.TLS.Enabled()
	if !given["token-file"] {
		opts.TokenFile = filepath.Join(cfg.DataDir, "admin.token")
		// serve then writes no admin.token; the token in the config
		// file is not for printing.
		opts.TokenInConfig = slices.ContainsFunc(cfg.Auth.Tokens, func(t TokenConfig) bool { return bool(t.Admin) })
	}
	return nil
}

// reachable is where a client on this machine reaches a listener on
// addr: on loopback when addr is every interface's (":8090", "0.0.0.0",
// "[::]"), which a client cannot dial by that name.
func reachable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	switch ip := net.ParseIP(host); {
	case host == "" || ip != nil && ip.Equal(net.IPv4zero):
		host = "127.0.0.1"
	case ip != nil && ip.IsUnspecified():
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}

// validate reports every option that cannot work, joined, under "seed: ".
func (o seedOptions) validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if o.ServerName == "" || strings.ContainsFunc(o.ServerName, unicode.IsSpace) {
		bad("--server-name %q must be a non-empty server name", o.ServerName)
	} else if id := seedRoomID(seedMaxRooms, "xxxxxx", o.ServerName); len(id) > 255 {
		bad("--server-name %q is too long for a room ID", o.ServerName)
	}
	if o.Rooms < 1 || o.Rooms > seedMaxRooms {
		bad("--rooms %d must be between 1 and %d", o.Rooms, seedMaxRooms)
	}
	if o.Messages < 0 || o.Messages > seedMaxMessages {
		bad("--messages %d must be between 0 and %d", o.Messages, seedMaxMessages)
	}
	if n := int64(o.Rooms) * int64(o.Messages); n > seedMaxEvents {
		bad("--rooms × --messages is %d, more than %d", n, seedMaxEvents)
	}
	if o.Members < 1 || o.Members > seedMaxMembers {
		bad("--members %d must be between 1 and %d", o.Members, seedMaxMembers)
	}
	if why := subjectPrefixProblem(o.Prefix); why != "" {
		bad("--prefix %s", why)
	}
	if o.Timeout <= 0 {
		bad("--timeout %v must be positive", o.Timeout)
	}
	if o.Window < 0 {
		bad("window %d must not be negative", o.Window)
	}
	if len(errs) > 0 {
		return fmt.Errorf("seed: %w", errors.Join(errs...))
	}
	return nil
}

// seedRooms builds opts.Rooms rooms and publishes their events in order to
// the room log over nc, waiting for every ack. It prints a summary of each
// room, with example reads, on out, and returns the rooms.
func seedRooms(ctx context.Context, nc *nats.Conn, opts seedOptions, out io.Writer) ([]seededRoom, error) {
	if opts.Window == 0 {
		opts.Window = seedDefaultWindow
	}
	if opts.TokenFile == "" {
		opts.TokenFile = seedDefaultTokenFile
	}
	if opts.Timeout == 0 {
		opts.Timeout = seedDefaultTimeout
	}
	if err := opts.validate(); err != nil {
		return nil, err
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()

	subjects := bus.Subjects{Prefix: opts.Prefix}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(2*opts.Window))
	if err != nil {
		return nil, fmt.Errorf("seed: jetstream: %w", err)
	}
	run := strings.ToLower(crand.Text()[:6])
	// No look-up of the stream first: a homeserver user of a nats.auth
	// server may not ask JetStream's API, only publish. A publish no
	// stream takes fails at once (no responders), and its ack names the
	// stream.
	fmt.Fprintf(out, "Seeding %d room(s) of %d member(s) and %d conversation events each (seed %d)...\n",
		opts.Rooms, opts.Members, opts.Messages, opts.Seed)
	noStream := func(err error) error {
		return fmt.Errorf("seed: no JetStream stream stores %s (is `scrollback serve` running on this NATS server, with subject prefix %q?): %w",
			subjects.RoomWildcard(), opts.Prefix, err)
	}

	p := &seedPublisher{js: js, window: opts.Window}
	rooms := make([]seededRoom, opts.Rooms)
	for n := 1; n <= opts.Rooms; n++ {
		g := newRoomGen(opts, n, run)
		g.build()
		g.stamp(now)
		r := &rooms[n-1]
		r.ID, r.Name = g.roomID, g.name
		subject := subjects.Room(g.roomID, "event")
		for _, ev := range g.events {
			id := ev["event_id"].(string)
			r.EventIDs = append(r.EventIDs, id)
			r.Types = append(r.Types, ev["type"].(string))
			data, err := bus.Encode(ev)
			if err != nil {
				return nil, fmt.Errorf("seed: encode %s: %w", id, err)
			}
			msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
			msg.Header.Set(jetstream.MsgIDHeader, id)
			if err := p.publish(ctx, msg, func(seq uint64) { r.LastSeq = max(r.LastSeq, seq) }); err != nil {
				if errors.Is(err, jetstream.ErrNoStreamResponse) {
					return nil, noStream(err)
				}
				if errors.Is(err, context.DeadlineExceeded) {
					return nil, fmt.Errorf("seed: room %s: %w (a slow disk? raise --timeout)", g.roomID, err)
				}
				return nil, fmt.Errorf("seed: room %s: %w", g.roomID, err)
			}
		}
	}
	if err := p.wait(ctx, 0); err != nil {
		if errors.Is(err, jetstream.ErrNoStreamResponse) {
			return nil, noStream(err)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("seed: %w (a slow disk? raise --timeout)", err)
		}
		return nil, fmt.Errorf("seed: %w", err)
	}
	fmt.Fprintf(out, "Stored in stream %s.\n", p.stream)
	for _, r := range rooms {
		printSeededRoom(out, r, opts)
	}
	return rooms, nil
}

// seedPublisher publishes asynchronously with at most window publishes
// awaiting their ack.
type seedPublisher struct {
	js      jetstream.JetStream
	window  int
	pending []seedPending
	stream  string // from the acks
}

// seedPending is one publish awaiting its ack.
type seedPending struct {
	fut   jetstream.PubAckFuture
	msgID string
	onAck func(seq uint64)
}

// publish sends msg once fewer than window publishes await their ack;
// onAck gets the sequence when the ack arrives.
func (p *seedPublisher) publish(ctx context.Context, msg *nats.Msg, onAck func(seq uint64)) error {
	if err := p.wait(ctx, p.window-1); err != nil {
		return err
	}
	msgID := msg.Header.Get(jetstream.MsgIDHeader)
	fut, err := p.js.PublishMsgAsync(msg)
	if err != nil {
		return fmt.Errorf("publish %s: %w", msgID, err)
	}
	p.pending = append(p.pending, seedPending{fut: fut, msgID: msgID, onAck: onAck})
	return nil
}

// wait takes acks, oldest first, until at most keep publishes await one.
func (p *seedPublisher) wait(ctx context.Context, keep int) error {
	for len(p.pending) > keep {
		pa := p.pending[0]
		select {
		case ack := <-pa.fut.Ok():
			p.stream = ack.Stream
			pa.onAck(ack.Sequence)
		case err := <-pa.fut.Err():
			return fmt.Errorf("publish %s: %w", pa.msgID, err)
		case <-ctx.Done():
			return fmt.Errorf("waiting for the ack of %s: %w", pa.msgID, context.Cause(ctx))
		}
		p.pending[0] = seedPending{}
		p.pending = p.pending[1:]
	}
	return nil
}

// printSeededRoom prints one room of the summary with example reads.
func printSeededRoom(out io.Writer, r seededRoom, opts seedOptions) {
	subjects := bus.Subjects{Prefix: opts.Prefix}
	fmt.Fprintf(out, "\n%s  %q\n", r.ID, r.Name)
	fmt.Fprintf(out, "  events: %d, last log sequence: %d\n", len(r.EventIDs), r.LastSeq)
	switch {
	case opts.HTTPAddr == "":
	case opts.TokenInConfig:
		fmt.Fprintf(out, "  HTTP:  curl -s -H \"Authorization: Bearer $SCROLLBACK_TOKEN\" '%s'   (SCROLLBACK_TOKEN: an admin token of auth.tokens)\n", seedAdminURL(opts.HTTPAddr, opts.HTTPS, r.ID))
	default:
		fmt.Fprintf(out, "  HTTP:  curl -s -H \"Authorization: Bearer $(cat %s)\" '%s'\n", shellQuote(opts.TokenFile), seedAdminURL(opts.HTTPAddr, opts.HTTPS, r.ID))
	}
	fmt.Fprintf(out, "  NATS:  request %s with the MessagePack map {\"admin\": true, \"dir\": \"b\", \"limit\": 5, \"wait_for\": %d}\n",
		subjects.APIRoom(r.ID, "messages"), r.LastSeq)
}

// seedAdminURL is the admin /messages URL of the room's five latest
// events, on a bridge that listens on httpAddr (over HTTPS if https).
func seedAdminURL(httpAddr string, https bool, roomID string) string {
	scheme := "http://"
	if https {
		scheme = "https://"
	}
	return scheme + reachable(httpAddr) + "/_synapse/admin/v1/rooms/" + url.PathEscape(roomID) + "/messages?dir=b&limit=5"
}

// seedRoomID is room n of a run: "!seed<n>-<run>:<server>".
func seedRoomID(n int, run, server string) string {
	return fmt.Sprintf("!seed%d-%s:%s", n, run, server)
}

// seedEventID is a fresh event ID shaped like a room version 4+ one: "$"
// and 43 characters of unpadded base64url.
func seedEventID() string {
	var b [32]byte
	_, _ = crand.Read(b[:])
	return "$" + base64.RawURLEncoding.EncodeToString(b[:])
}

// seedMember is one user of a synthetic room.
type seedMember struct {
	id, name string
}

// seedPost is a message of the conversation that later events may point at.
type seedPost struct {
	id, sender, body string
	text             bool // m.text: can be edited and redacted
	inThread         bool // a thread reply: never a thread root
}

// seedAction is one kind of conversation event.
type seedAction int

// The kinds of conversation events.
const (
	actText seedAction = iota
	actEmote
	actReply
	actEdit
	actThread
	actReaction
	actImage
	actTopic
	actLeave
	actRejoin
	actRedact
)

// roomGen builds one room's events like a homeserver: each event one deeper
// than the last, with the last as its only parent. Everything but the IDs
// and timestamps comes from rng, seeded by --seed and the room's number.
type roomGen struct {
	rng      *rand.Rand
	opts     seedOptions
	n        int
	roomID   string
	name     string
	creator  seedMember
	members  []seedMember
	joined   map[string]bool
	left     []seedMember // members who left and have not rejoined
	events   []map[string]any
	weights  []float64 // relative time since the previous event
	depth    int64
	prev     string
	posts    []seedPost
	threads  map[string]string // root ID -> latest event of the thread
	roots    []string          // thread roots, in creation order
	reacted  map[string]bool   // target|sender|key
	redacted map[string]bool
	senders  map[string]string // event ID -> sender
}

// newRoomGen prepares room n of a run.
func newRoomGen(opts seedOptions, n int, run string) *roomGen {
	g := &roomGen{
		rng:      rand.New(rand.NewPCG(uint64(opts.Seed), uint64(n))),
		opts:     opts,
		n:        n,
		roomID:   seedRoomID(n, run, opts.ServerName),
		joined:   map[string]bool{},
		threads:  map[string]string{},
		reacted:  map[string]bool{},
		redacted: map[string]bool{},
		senders:  map[string]string{},
	}
	for i := range opts.Members {
		local, name := fmt.Sprintf("user%d", i+1), fmt.Sprintf("User %d", i+1)
		if i < len(seedNames) {
			local, name = strings.ToLower(seedNames[i]), seedNames[i]
		}
		g.members = append(g.members, seedMember{id: "@" + local + ":" + opts.ServerName, name: name})
	}
	g.creator = g.members[0]
	return g
}

// add appends an event; stateKey nil makes a non-state event. weight is
// the time since the previous event, relative to the other events'.
func (g *roomGen) add(typ, sender string, stateKey *string, content map[string]any, weight float64) string {
	g.depth++
	id := seedEventID()
	ev := map[string]any{
		"event_id":         id,
		"room_id":          g.roomID,
		"type":             typ,
		"sender":           sender,
		"origin_server_ts": int64(0), // set by stamp
		"depth":            g.depth,
		"prev_events":      []string{},
		"content":          content,
	}
	if g.prev != "" {
		ev["prev_events"] = []string{g.prev}
	}
	if stateKey != nil {
		ev["state_key"] = *stateKey
	}
	g.prev = id
	g.senders[id] = sender
	g.events = append(g.events, ev)
	g.weights = append(g.weights, weight)
	return id
}

// state appends a state event.
func (g *roomGen) state(typ, sender, stateKey string, content map[string]any, weight float64) string {
	return g.add(typ, sender, &stateKey, content, weight)
}

// join appends the member's own join.
func (g *roomGen) join(m seedMember, weight float64) {
	g.state("m.room.member", m.id, m.id, map[string]any{"membership": "join", "displayname": m.name}, weight)
	g.joined[m.id] = true
}

// pick returns a random element of list.
func pick[T any](rng *rand.Rand, list []T) T { return list[rng.IntN(len(list))] }

// build appends the room's set-up events, then opts.Messages conversation
// events.
func (g *roomGen) build() {
	c := g.creator.id
	// Consecutive rooms get different themes, from an offset of the seed.
	offset := rand.New(rand.NewPCG(uint64(g.opts.Seed), 0)).IntN(len(seedThemes))
	theme := seedThemes[(offset+g.n-1)%len(seedThemes)]
	g.name = theme.name
	if round := (g.n - 1) / len(seedThemes); round > 0 {
		g.name = fmt.Sprintf("%s %d", theme.name, round+1)
	}
	g.state("m.room.create", c, "", map[string]any{"creator": c, "room_version": "10"}, 0)
	g.join(g.creator, 0.001)
	g.state("m.room.power_levels", c, "", map[string]any{
		"users":          map[string]any{c: int64(100)},
		"users_default":  int64(0),
		"events_default": int64(0),
		"state_default":  int64(50),
		"ban":            int64(50),
		"kick":           int64(50),
		"redact":         int64(50),
		"invite":         int64(0),
		"events": map[string]any{
			"m.room.name":               int64(50),
			"m.room.power_levels":       int64(100),
			"m.room.history_visibility": int64(100),
			"m.room.canonical_alias":    int64(50),
			"m.room.avatar":             int64(50),
			"m.room.tombstone":          int64(100),
			"m.room.server_acl":         int64(100),
			"m.room.encryption":         int64(100),
		},
		"notifications": map[string]any{"room": int64(50)},
	}, 0.001)
	g.state("m.room.join_rules", c, "", map[string]any{"join_rule": "public"}, 0.001)
	g.state("m.room.history_visibility", c, "", map[string]any{"history_visibility": "shared"}, 0.001)
	g.state("m.room.name", c, "", map[string]any{"name": g.name}, 0.001)
	g.state("m.room.topic", c, "", map[string]any{"topic": theme.topic}, 0.001)
	for _, m := range g.members[1:] {
		g.join(m, 0.2+g.rng.Float64()/2)
	}

	// One of each special event at a fixed share of the conversation;
	// the rest is random.
	total := g.opts.Messages
	plan := map[int]seedAction{}
	place := func(share float64, a seedAction) {
		for p := int(share * float64(total)); p < total; p++ {
			if _, taken := plan[p]; !taken {
				plan[p] = a
				return
			}
		}
	}
	place(0.5, actTopic)
	place(0.25, actImage)
	if len(g.members) > 1 {
		place(0.6, actLeave)
		place(0.75, actRejoin)
	}
	place(0.85, actRedact)
	place(0.1, actEdit)
	place(0.2, actReaction)
	place(0.3, actReaction)
	place(0.35, actThread)
	place(0.4, actThread)
	for i := range total {
		a, ok := plan[i]
		if !ok {
			a = g.randomAction()
		}
		if !g.do(a, theme) {
			g.do(actText, theme)
		}
	}
}

// randomAction draws the kind of an ordinary conversation event.
func (g *roomGen) randomAction() seedAction {
	switch r := g.rng.Float64(); {
	case r < 0.05:
		return actEdit
	case r < 0.15:
		return actThread
	case r < 0.21:
		return actReaction
	case r < 0.23:
		return actEmote
	case r < 0.27:
		return actReply
	default:
		return actText
	}
}

// gap is the relative time before an ordinary message: mostly a chat's
// pace, sometimes a quiet day.
func (g *roomGen) gap() float64 {
	w := g.rng.ExpFloat64()
	if g.rng.IntN(25) == 0 {
		w *= 30
	}
	return w
}

// speaker picks a joined member, the first members more talkative;
// not is avoided when someone else is there.
func (g *roomGen) speaker(not string) seedMember {
	var cands []seedMember
	var weights []float64
	var sum float64
	others := false
	for _, m := range g.members {
		others = others || (g.joined[m.id] && m.id != not)
	}
	for i, m := range g.members {
		if !g.joined[m.id] || (m.id == not && others) {
			continue
		}
		w := 1 / float64(i+2)
		cands = append(cands, m)
		weights = append(weights, w)
		sum += w
	}
	x := g.rng.Float64() * sum
	for i, w := range weights {
		if x < w {
			return cands[i]
		}
		x -= w
	}
	return cands[len(cands)-1]
}

// joinedMembers lists the members currently in the room.
func (g *roomGen) joinedMembers() []seedMember {
	var out []seedMember
	for _, m := range g.members {
		if g.joined[m.id] {
			out = append(out, m)
		}
	}
	return out
}

// recent returns up to n of the latest posts that match ok, newest first.
func (g *roomGen) recent(n int, ok func(seedPost) bool) []seedPost {
	var out []seedPost
	for i := len(g.posts) - 1; i >= 0 && len(out) < n; i-- {
		if p := g.posts[i]; !g.redacted[p.id] && ok(p) {
			out = append(out, p)
		}
	}
	return out
}

// textContent is an m.text (or other msgtype) content, with an HTML body
// when body has `code`.
func textContent(msgtype, body string) map[string]any {
	c := map[string]any{"msgtype": msgtype, "body": body}
	if strings.Count(body, "`") >= 2 {
		parts := strings.Split(body, "`")
		var b strings.Builder
		for i, p := range parts {
			switch {
			case i%2 == 0:
				b.WriteString(html.EscapeString(p))
			case i == len(parts)-1:
				b.WriteString("`" + html.EscapeString(p))
			default:
				b.WriteString("<code>" + html.EscapeString(p) + "</code>")
			}
		}
		c["format"] = "org.matrix.custom.html"
		c["formatted_body"] = b.String()
	}
	return c
}

// line is a message body: the room's theme or small talk, now and then
// addressed to another member.
func (g *roomGen) line(theme seedTheme, sender string) string {
	var body string
	if g.rng.IntN(3) == 0 {
		body = pick(g.rng, seedSmallTalk)
	} else {
		body = pick(g.rng, theme.lines)
	}
	if g.rng.IntN(6) == 0 {
		if other := g.speaker(sender); other.id != sender {
			body = other.name + ": " + body
		}
	}
	return body
}

// do appends one conversation event of kind a; it reports false when a
// cannot happen now (nothing to edit yet, nobody to rejoin, ...).
func (g *roomGen) do(a seedAction, theme seedTheme) bool {
	switch a {
	case actText:
		s := g.speaker("")
		body := g.line(theme, s.id)
		id := g.add("m.room.message", s.id, nil, textContent("m.text", body), g.gap())
		g.posts = append(g.posts, seedPost{id: id, sender: s.id, body: body, text: true})

	case actEmote:
		s := g.speaker("")
		body := pick(g.rng, seedEmotes)
		id := g.add("m.room.message", s.id, nil, textContent("m.emote", body), g.gap())
		g.posts = append(g.posts, seedPost{id: id, sender: s.id, body: body})

	case actReply:
		targets := g.recent(8, func(p seedPost) bool { return !p.inThread })
		if len(targets) == 0 {
			return false
		}
		t := pick(g.rng, targets)
		s := g.speaker(t.sender)
		body := pick(g.rng, seedReplies)
		content := textContent("m.text", body)
		content["m.relates_to"] = map[string]any{"m.in_reply_to": map[string]any{"event_id": t.id}}
		id := g.add("m.room.message", s.id, nil, content, g.gap()/3)
		g.posts = append(g.posts, seedPost{id: id, sender: s.id, body: body, text: true})

	case actEdit:
		targets := g.recent(6, func(p seedPost) bool { return p.text && g.joined[p.sender] })
		if len(targets) == 0 {
			return false
		}
		t := pick(g.rng, targets)
		body := strings.TrimRight(t.body, ".!?") + pick(g.rng, seedEditSuffixes)
		newContent := textContent("m.text", body)
		content := textContent("m.text", "* "+body)
		content["m.new_content"] = newContent
		content["m.relates_to"] = map[string]any{"rel_type": "m.replace", "event_id": t.id}
		g.add("m.room.message", t.sender, nil, content, 0.05)
		for i := len(g.posts) - 1; i >= 0; i-- {
			if g.posts[i].id == t.id {
				g.posts[i].body = body
				break
			}
		}

	case actThread:
		var root string
		if len(g.roots) > 0 && g.rng.IntN(2) == 0 {
			root = g.roots[len(g.roots)-1-g.rng.IntN(min(3, len(g.roots)))]
		}
		if root == "" || g.redacted[root] {
			cands := g.recent(10, func(p seedPost) bool { return p.text && !p.inThread && g.threads[p.id] == "" })
			if len(cands) == 0 {
				return false
			}
			root = pick(g.rng, cands).id
			g.threads[root] = root
			g.roots = append(g.roots, root)
		}
		latest := g.threads[root]
		s := g.speaker(g.senders[latest])
		body := pick(g.rng, seedThreadLines)
		content := textContent("m.text", body)
		content["m.relates_to"] = map[string]any{
			"rel_type":        "m.thread",
			"event_id":        root,
			"is_falling_back": true,
			"m.in_reply_to":   map[string]any{"event_id": latest},
		}
		id := g.add("m.room.message", s.id, nil, content, g.gap()/2)
		g.threads[root] = id
		g.posts = append(g.posts, seedPost{id: id, sender: s.id, body: body, text: true, inThread: true})

	case actReaction:
		targets := g.recent(8, func(seedPost) bool { return true })
		for range 4 {
			if len(targets) == 0 {
				return false
			}
			t := pick(g.rng, targets)
			s := g.speaker(t.sender)
			key := pick(g.rng, seedReactionKeys)
			if s.id == t.sender || g.reacted[t.id+"|"+s.id+"|"+key] {
				continue
			}
			g.reacted[t.id+"|"+s.id+"|"+key] = true
			g.add("m.reaction", s.id, nil, map[string]any{
				"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": t.id, "key": key},
			}, 0.1)
			return true
		}
		return false

	case actImage:
		s := g.speaker("")
		img := pick(g.rng, seedImages)
		w := int64(640 + 64*g.rng.IntN(20))
		h := w * 9 / 16
		id := g.add("m.room.message", s.id, nil, map[string]any{
			"msgtype": "m.image",
			"body":    img.name,
			"url":     "mxc://" + g.opts.ServerName + "/" + crand.Text(),
			"info": map[string]any{
				"mimetype": img.mimetype,
				"size":     int64(40_000 + g.rng.IntN(900_000)),
				"w":        w,
				"h":        h,
			},
		}, g.gap())
		g.posts = append(g.posts, seedPost{id: id, sender: s.id, body: img.name})

	case actTopic:
		if !g.joined[g.creator.id] {
			return false
		}
		g.state("m.room.topic", g.creator.id, "", map[string]any{"topic": theme.newTopic}, g.gap())

	case actLeave:
		var cands []seedMember
		for _, m := range g.joinedMembers() {
			if m.id != g.creator.id {
				cands = append(cands, m)
			}
		}
		if len(cands) == 0 {
			return false
		}
		m := pick(g.rng, cands)
		g.state("m.room.member", m.id, m.id, map[string]any{"membership": "leave"}, g.gap())
		g.joined[m.id] = false
		g.left = append(g.left, m)

	case actRejoin:
		if len(g.left) == 0 {
			return false
		}
		m := g.left[0]
		g.left = g.left[1:]
		g.join(m, g.gap())

	case actRedact:
		targets := g.recent(len(g.posts), func(p seedPost) bool { return p.text })
		if len(targets) == 0 {
			return false
		}
		t := targets[g.rng.IntN(min(len(targets), 20))]
		sender := t.sender
		if !g.joined[sender] {
			sender = g.creator.id
		}
		content := map[string]any{"redacts": t.id}
		if sender != t.sender {
			content["reason"] = "Removed by a moderator"
		} else if g.rng.IntN(2) == 0 {
			content["reason"] = "Posted in the wrong room"
		}
		g.add("m.room.redaction", sender, nil, content, g.gap()/4)
		g.events[len(g.events)-1]["redacts"] = t.id // room versions before 11
		g.redacted[t.id] = true
	}
	return true
}

// stamp sets origin_server_ts: the history starts seedHistorySpan before
// now and ends by now, each event strictly later than the previous one,
// the gaps in proportion to the events' weights.
func (g *roomGen) stamp(now time.Time) {
	n := int64(len(g.events))
	span := seedHistorySpan.Milliseconds() - n
	start := now.UnixMilli() - seedHistorySpan.Milliseconds()
	var total float64
	for _, w := range g.weights {
		total += w
	}
	if total == 0 {
		total = 1
	}
	var cum float64
	last := start - 1
	for i, ev := range g.events {
		cum += g.weights[i]
		ts := start + int64(cum/total*float64(span))
		if ts <= last {
			ts = last + 1
		}
		ev["origin_server_ts"] = ts
		last = ts
	}
}

// seedTheme is what one synthetic room talks about.
type seedTheme struct {
	name, topic, newTopic string
	lines                 []string
}

// seedNames are the members' display names; their localparts are the
// names in lower case. Members past the list are @user<N>.
var seedNames = []string{
	"Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy",
	"Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter", "Zoe",
}

// seedThemes give each room a name, a topic, a later topic and its own talk.
var seedThemes = []seedTheme{
	{
		name: "Engineering", topic: "Day-to-day engineering chat. Be kind, post logs in threads.",
		newTopic: "Engineering | on call this week: see the pinned rota | logs in threads, please",
		lines: []string{
			"The integration tests are flaky again on the ARM runners.",
			"I pushed a fix for the pagination off-by-one, can someone review?",
			"Does anyone know why `go test -race` takes twice as long since Tuesday?",
			"Deploy to staging is done, smoke tests are green.",
			"We should bump the NATS client, the new version fixes the reconnect storm.",
			"Profiling shows most of the time goes into decoding MessagePack.",
			"I'm going to refactor the token parser, it has grown three special cases.",
			"Reminder: code freeze starts Thursday at noon.",
			"The bbolt file is 2 GB on prod, is that expected?",
			"Who owns the metrics dashboard? Two panels are empty.",
			"Rolled back the last deploy, error rate went up to 3%.",
			"Benchmarks after the change: p99 went from 40ms to 12ms.",
			"Let's pair on the backfill bug after lunch.",
			"CI is red because of a lint rule, fixing it now.",
			"Can we drop support for room version 1 at last?",
			"I wrote up the design for retention jobs, comments welcome.",
		},
	},
	{
		name: "Release Planning", topic: "Planning the 2.0 release: scope, dates, owners.",
		newTopic: "Release 2.0 | RC1 is out, please test | blockers only from now on",
		lines: []string{
			"Here is the draft changelog, please add anything I missed.",
			"Is the migration guide ready for review?",
			"I think we can cut RC1 on Monday if the two blockers land.",
			"The Windows build is still failing, I'm on it.",
			"Release notes need a section on the new config keys.",
			"Do we announce on the blog or only on the mailing list?",
			"Docs are updated for the new flags.",
			"I'd rather slip a week than ship with the purge bug.",
			"Packaging for Debian is done, RPM is next.",
			"Who is doing the release this time?",
			"Let's do a go/no-go call on Friday.",
			"The upgrade test from 1.8 passed on all three platforms.",
			"We need a security review before the final release.",
			"Tagged v2.0.0-rc1, binaries are uploading.",
		},
	},
	{
		name: "Design Review", topic: "Mock-ups, UX questions and design critique.",
		newTopic: "Design Review | Figma links welcome | weekly critique on Wednesdays",
		lines: []string{
			"New mock-ups for the settings page are in Figma.",
			"I find the contrast of the grey labels too low.",
			"Could we try the timeline with bigger avatars?",
			"The empty state needs a friendlier message.",
			"Users keep missing the thread button in the usability tests.",
			"What if the room list grouped rooms by space?",
			"I like the second option, it's calmer.",
			"The icons don't match the rest of the app yet.",
			"Mobile layout breaks below 360px wide.",
			"Let's keep the dark theme in mind from the start this time.",
			"The onboarding flow has one step too many.",
			"Colour tokens are now in the shared library.",
		},
	},
	{
		name: "Support", topic: "Help for users and operators. Search the FAQ first!",
		newTopic: "Support | FAQ: see the docs site | include your version and logs",
		lines: []string{
			"A user reports they can't see messages older than last week.",
			"Which version are you running? Please paste `scrollback version`.",
			"Restarting the service fixed it for them.",
			"The admin token is in data/admin.token after the first start.",
			"Looks like their reverse proxy strips the Authorization header.",
			"I opened an issue for that, it's reproducible.",
			"Did you set server_name to your real domain?",
			"The FAQ now has an entry about purge history.",
			"They were on an old release, upgrading solved it.",
			"Could you share the output of the health endpoint?",
			"That error means the stream exists with different subjects.",
			"Closing this one, the user confirmed it works.",
		},
	},
	{
		name: "Book Club", topic: "This month: The Left Hand of Darkness.",
		newTopic: "Book Club | next month: Piranesi | meetup on the last Friday",
		lines: []string{
			"I'm halfway through, no spoilers please!",
			"The chapter on the ice was incredible.",
			"Who wants to pick the next book?",
			"I found a second-hand copy for two euros.",
			"The audiobook narrator is really good.",
			"Let's meet at the café again, it was nice last time.",
			"I didn't expect that ending at all.",
			"Suggestions so far: Piranesi, Kindred, The Dispossessed.",
			"I'll bring snacks this time.",
			"Finished it last night, still thinking about it.",
		},
	},
}

// seedSmallTalk is talk that fits every room.
var seedSmallTalk = []string{
	"Good morning everyone!",
	"Back from lunch.",
	"Thanks, that helps a lot.",
	"I'll be offline tomorrow afternoon.",
	"Sounds good to me.",
	"Makes sense.",
	"Let me check and get back to you.",
	"Sorry, I missed this earlier.",
	"Has anyone seen the notes from yesterday's meeting?",
	"Coffee break, back in 10.",
	"Great work, everyone!",
	"I'm not sure I follow, can you explain?",
	"+1",
	"Agreed.",
	"Happy Friday!",
	"Let's discuss it in the call.",
}

// seedReplies answer an earlier message.
var seedReplies = []string{
	"Yes, exactly.",
	"I don't think that's right, see the docs.",
	"Good point, I hadn't thought of that.",
	"Can you share a link?",
	"Done!",
	"I can take this one.",
	"Same here.",
	"Not yet, maybe later today.",
}

// seedThreadLines carry on a thread.
var seedThreadLines = []string{
	"Moving this to a thread so the room stays readable.",
	"Here are the logs from this morning.",
	"I tried that, same result.",
	"Found it: the config had a typo.",
	"Could it be the clock skew on that host?",
	"Confirmed, the fix works on my side.",
	"Let's track this in an issue.",
	"Any news on this?",
	"I'll write a test for it.",
	"Closing the loop: it's fixed in main.",
}

// seedEditSuffixes are appended by edits.
var seedEditSuffixes = []string{
	" (edit: fixed the link)",
	", sorry for the typo.",
	" — correction: Thursday, not Tuesday.",
	"!",
	" (see the thread for details)",
}

// seedEmotes are m.emote bodies.
var seedEmotes = []string{"waves", "is going for coffee", "nods", "is back", "cheers"}

// seedReactionKeys are annotation keys.
var seedReactionKeys = []string{"👍", "🎉", "❤️", "👀", "😂", "🚀", "✅"}

// seedImages are the posted images.
var seedImages = []struct{ name, mimetype string }{
	{"screenshot.png", "image/png"},
	{"whiteboard.jpg", "image/jpeg"},
	{"architecture-diagram.png", "image/png"},
	{"IMG_2041.jpg", "image/jpeg"},
}

// shellQuote quotes s for a POSIX shell, unless it needs none.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+:@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
}
