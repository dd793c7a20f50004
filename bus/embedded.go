package bus

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	neturl "net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// MaxPayload is the embedded server's max_payload (CONTRACT.md section 1).
const MaxPayload = 8 << 20

// EmbeddedOptions configure the in-process nats-server.
type EmbeddedOptions struct {
	// Listen is the client listener, host:port; "" serves in-process
	// clients only.
	Listen string
	// StoreDir holds JetStream's files.
	StoreDir string
	// NoSync turns off fsync on every write (benchmarks of the floor
	// only; the service always syncs).
	NoSync bool
	// Users, if any, turn on authentication with per-role permissions;
	// the service then connects as ServiceUser with ServicePassword.
	Users           []User
	ServicePassword string
	Subjects        Subjects
	// TLSCert and TLSKey, if set, make the client listener require TLS
	// (in-process connections do not use the listener).
	TLSCert, TLSKey string
}

// StartEmbedded starts nats-server with JetStream on file storage, fsync
// on every write, and max_payload 8 MiB, and waits until it is ready.
func StartEmbedded(o EmbeddedOptions) (*server.Server, error) {
	if o.StoreDir == "" {
		return nil, errors.New("bus: embedded server needs a store dir")
	}
	opts := &server.Options{
		ServerName:         "scrollback-embedded",
		JetStream:          true,
		StoreDir:           o.StoreDir,
		SyncAlways:         !o.NoSync,
		MaxPayload:         MaxPayload,
		NoLog:              true,
		NoSigs:             true,
		JetStreamMaxMemory: 64 << 20,
	}
	if len(o.Users) > 0 {
		opts.Users = serverUsers(o.Subjects, o.Users, o.ServicePassword)
	}
	if o.TLSCert != "" {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: o.TLSCert, KeyFile: o.TLSKey})
		if err != nil {
			return nil, fmt.Errorf("bus: nats TLS: %w", err)
		}
		opts.TLSConfig, opts.TLS = tc, true
	}
	if o.Listen == "" {
		opts.DontListen = true
	} else {
		host, portStr, err := net.SplitHostPort(o.Listen)
		if err != nil {
			return nil, fmt.Errorf("bus: nats listen %q: %w", o.Listen, err)
		}
		port, err := strconv.Atoi(portStr)
		if err != nil {
			return nil, fmt.Errorf("bus: nats listen %q: bad port", o.Listen)
		}
		if port == 0 {
			port = server.RANDOM_PORT
		}
		opts.Host, opts.Port = host, port
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("bus: embedded nats-server: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("bus: embedded nats-server did not become ready (is %s in use?)", o.Listen)
	}
	// With NoLog a failed JetStream start is silent: check it.
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		return nil, fmt.Errorf("bus: JetStream did not start in %s", o.StoreDir)
	}
	return srv, nil
}

// ConnectInProcess connects a client to an embedded server without TCP.
func ConnectInProcess(srv *server.Server, name string) (*nats.Conn, error) {
	return ConnectInProcessAs(srv, name, "")
}

// ConnectInProcessAs is ConnectInProcess authenticated as ServiceUser
// when password is set (an embedded server with users).
func ConnectInProcessAs(srv *server.Server, name, password string) (*nats.Conn, error) {
	opts := []nats.Option{nats.InProcessServer(srv), nats.Name(name), nats.MaxReconnects(-1), nats.ErrorHandler(quietErrors())}
	if password != "" {
		opts = append(opts, nats.UserInfo(ServiceUser, password))
	}
	nc, err := nats.Connect("", opts...)
	if err != nil {
		return nil, fmt.Errorf("bus: connect in-process: %w", err)
	}
	return nc, nil
}

// Connect connects to an external NATS cluster; credentials is an
// optional creds file.
func Connect(url, credentials, name string) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond), nats.ErrorHandler(quietErrors())}
	if credentials != "" {
		opts = append(opts, nats.UserCredentials(credentials))
	}
	// A URL nats.go cannot parse (a password with '%', '/', '?' or '#'
	// not percent-encoded) would come back in its url.Error whole,
	// password and all.
	for p := range strings.SplitSeq(url, ",") {
		if _, err := parseServer(p); err != nil {
			return nil, fmt.Errorf("bus: connect %s: not a valid URL (percent-encode a password's %%, /, ?, # and @)", RedactURL(url))
		}
	}
	if user := urlUser(url); user != "" {
		// A user of an embedded server may only subscribe to its own
		// inbox (UserInbox).
		opts = append(opts, nats.CustomInboxPrefix(UserInbox(user)))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("bus: connect %s: %w", RedactURL(url), err)
	}
	return nc, nil
}

// RedactURL is a comma-separated list of server URLs fit for a log line:
// a password is replaced by xxxxx, and so is a user without a password,
// which NATS takes for a token.
func RedactURL(servers string) string {
	parts := strings.Split(servers, ",")
	for i, p := range parts {
		u, err := parseServer(p)
		switch {
		case err != nil:
			parts[i] = redactUnparsed(p)
		case u.User != nil:
			if _, has := u.User.Password(); has {
				parts[i] = u.Redacted()
			} else {
				u.User = neturl.User("xxxxx")
				parts[i] = u.String()
			}
		}
	}
	return strings.Join(parts, ",")
}

// redactUnparsed masks what may be credentials in a server URL that does
// not parse: everything between the scheme and the last '@' but the user
// (a password with '/', '?' or '#' ends the URL's authority early, so the
// parser cannot be asked where the password ends).
func redactUnparsed(p string) string {
	start := 0
	if i := strings.Index(p, "://"); i >= 0 {
		start = i + 3
	}
	at := strings.LastIndex(p[start:], "@")
	if at < 0 {
		return p
	}
	user, _, hasPassword := strings.Cut(p[start:start+at], ":")
	if !hasPassword {
		user = "xxxxx" // a token
	} else {
		user += ":xxxxx"
	}
	return p[:start] + user + p[start+at:]
}

// urlUser is the user named, with a password, in the first URL of a
// comma-separated server list that names one ("" if none: a user without
// a password is a token, which must not become a subject).
func urlUser(servers string) string {
	for p := range strings.SplitSeq(servers, ",") {
		if u, err := parseServer(p); err == nil && u.User != nil {
			if _, has := u.User.Password(); has {
				return u.User.Username()
			}
		}
	}
	return ""
}

// parseServer parses one server URL, with nats:// in front when it has no
// scheme, as nats.go takes it ("user:pass@host:4222").
func parseServer(s string) (*neturl.URL, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "://") {
		s = "nats://" + s
	}
	return neturl.Parse(s)
}

// quietErrors reports asynchronous connection errors through slog, at
// most one a subject every 10 s: under a flood the client drops requests
// past an endpoint's pending limits, and nats.go's default handler would
// print a line for every one.
func quietErrors() nats.ErrHandler {
	var mu sync.Mutex
	last := map[string]time.Time{}
	return func(_ *nats.Conn, sub *nats.Subscription, err error) {
		subject := ""
		if sub != nil {
			subject = sub.Subject
		}
		mu.Lock()
		quiet := time.Since(last[subject]) < 10*time.Second
		if !quiet {
			last[subject] = time.Now()
		}
		mu.Unlock()
		if !quiet {
			slog.Warn("nats: asynchronous error (repeats within 10 s are not logged)", "subject", subject, "err", err)
		}
	}
}
