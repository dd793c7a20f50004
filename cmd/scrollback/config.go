package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"reflect"
	"regexp"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"go.yaml.in/yaml/v3"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
)

// Config is the configuration of `scrollback serve`: one YAML file
// (CONTRACT.md section 1, docs/CONFIG.md) overlaid on DefaultConfig, then
// overridden by command-line flags. Durations are commands.Duration, which
// reads Synapse's syntax ("10s", "1d", an integer of milliseconds).
type Config struct {
	// ServerName is our Matrix server name; it decides which users and
	// events are local.
	ServerName string `yaml:"server_name"`
	// DataDir holds the bbolt file and the embedded JetStream storage.
	DataDir string `yaml:"data_dir"`
	// NATS says where the room log lives.
	NATS NATSConfig `yaml:"nats"`
	// HTTP configures the HTTP bridge.
	HTTP HTTPConfig `yaml:"http"`
	// Auth lists static access tokens.
	Auth AuthConfig `yaml:"auth"`
	// Backfill configures requests to federation workers.
	Backfill BackfillConfig `yaml:"backfill"`
	// Homeserver configures requests to homeserver workers (sb.hs.*).
	Homeserver HomeserverConfig `yaml:"homeserver"`
	// Tasks bounds the purge and shutdown tasks that run at once.
	Tasks TasksConfig `yaml:"tasks"`
	// Shutdown bounds the homeserver requests of one room shutdown.
	Shutdown ShutdownConfig `yaml:"shutdown"`
	// ForgottenRoomRetentionPeriod is Synapse's option of that name: how
	// long a room that every local user has forgotten is kept before it is
	// purged. nil (YAML null, the default) turns it off.
	ForgottenRoomRetentionPeriod *commands.Duration `yaml:"forgotten_room_retention_period"`
	// Retention is Synapse's `retention:` section (SYNAPSE.md section 9).
	Retention RetentionConfig `yaml:"retention"`
	// Log configures the process logger. It is an addition to the
	// contract.
	Log LogConfig `yaml:"log"`
	// MemoryLimit is a soft limit on the memory of the whole process
	// (Go's memory limit, as GOMEMLIMIT sets it; 0 = none, or what
	// GOMEMLIMIT says). The projector sizes its queues and write
	// transactions from it (projections.Projector). It is an addition to
	// the contract.
	MemoryLimit ByteSize `yaml:"memory_limit"`
	// Cluster configures several instances sharing one log on an
	// external NATS cluster. It is an addition to the contract.
	Cluster ClusterConfig `yaml:"cluster"`
}

// ClusterConfig is the `cluster:` section: how instances sharing a log
// on an external NATS cluster (nats.url set) split the tasks. Each
// partition of the rooms has one owner, elected by leases in a JetStream
// key-value bucket; with the embedded server this instance owns them all.
type ClusterConfig struct {
	// Instance names this instance among those sharing the log (letters,
	// digits, - and _); "" means the host name. Two live instances must
	// not share a name.
	Instance string `yaml:"instance"`
	// Lease is how long an owner may miss renewing a partition's lease
	// before another instance takes the partition over (default 2s).
	Lease commands.Duration `yaml:"lease"`
	// Replicas of the log stream and of the leases bucket when the service
	// creates them (default 1; 3 on a three-node cluster). An existing
	// stream keeps the operator's setting.
	Replicas int `yaml:"replicas"`
}

// NATSConfig is the `nats:` section.
type NATSConfig struct {
	// URL of an external NATS cluster; "" starts the embedded server.
	URL string `yaml:"url"`
	// Listen is the embedded server's client listener (host:port);
	// "" keeps it in-process only.
	Listen string `yaml:"listen"`
	// Stream is the JetStream stream that holds the room log.
	Stream string `yaml:"stream"`
	// SubjectPrefix is the first token of every subject (`sb` in the
	// contract).
	SubjectPrefix string `yaml:"subject_prefix"`
	// Credentials is a creds file for an external cluster.
	Credentials string `yaml:"credentials"`
	// TLS, an addition to the contract, makes the embedded server's
	// client listener require TLS.
	TLS TLSConfig `yaml:"tls"`
	// Auth, an addition to the contract, gives the embedded server users
	// with per-role permissions; without it the listener is open (to
	// loopback by default).
	Auth NATSAuthConfig `yaml:"auth"`
}

// NATSAuthConfig is `nats.auth`: the users of the embedded server.
type NATSAuthConfig struct {
	Users []NATSUserConfig `yaml:"users,omitempty"`
}

// NATSUserConfig is one user of the embedded server and its role:
// homeserver, federation or client (see docs/CONFIG.md for what each may
// do on the bus).
type NATSUserConfig struct {
	User     string `yaml:"user"`
	Password string `yaml:"password"`
	Role     string `yaml:"role"`
}

// String hides the password.
func (u NATSUserConfig) String() string {
	return fmt.Sprintf("{user:%s password:<redacted> role:%s}", u.User, u.Role)
}

// HTTPConfig is the `http:` section.
type HTTPConfig struct {
	// Listen is the HTTP bridge's address (host:port); "" disables the
	// bridge.
	Listen string `yaml:"listen"`
	// TLS, an addition to the contract, serves the bridge over HTTPS.
	TLS TLSConfig `yaml:"tls"`
}

// TLSConfig names a PEM certificate (chain) and its key; both empty means
// no TLS.
type TLSConfig struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Enabled reports whether TLS is configured.
func (t TLSConfig) Enabled() bool { return t.Cert != "" || t.Key != "" }

// AuthConfig is the `auth:` section.
type AuthConfig struct {
	// Tokens are static access tokens, checked before sb.hs.whoami.
	Tokens []TokenConfig `yaml:"tokens"`
}

// TokenConfig is one static access token.
type TokenConfig struct {
	// Token is the secret a client sends as its access token.
	Token string `yaml:"token"`
	// UserID is the Matrix user the token authenticates, @local:server.
	UserID string `yaml:"user_id"`
	// Admin grants the admin APIs.
	Admin Bool `yaml:"admin"`
}

// String prints the token entry with the secret redacted, so that logging
// a Config does not leak tokens.
func (t TokenConfig) String() string {
	return fmt.Sprintf("{token:<redacted> user_id:%s admin:%t}", t.UserID, t.Admin)
}

// BackfillConfig is the `backfill:` section.
type BackfillConfig struct {
	// Timeout is how long a foreground /messages waits for federation
	// workers.
	Timeout commands.Duration `yaml:"timeout"`
	// Backoff is the first retry delay of a failed extremity; it doubles
	// up to 2^8 times.
	Backoff commands.Duration `yaml:"backoff"`
}

// HomeserverConfig is the `homeserver:` section.
type HomeserverConfig struct {
	// Timeout is how long the service waits for one sb.hs.* reply.
	Timeout commands.Duration `yaml:"timeout"`
}

// TasksConfig is the `tasks:` section.
type TasksConfig struct {
	// MaxConcurrent is the number of tasks running at once across rooms.
	MaxConcurrent int `yaml:"max_concurrent"`
}

// ShutdownConfig is the `shutdown:` section.
type ShutdownConfig struct {
	// Concurrency is the number of homeserver requests in flight for one
	// room shutdown.
	Concurrency int `yaml:"concurrency"`
}

// RetentionConfig is Synapse's `retention:` section. Optional durations
// have Set false when absent.
type RetentionConfig struct {
	// Enabled turns room retention policies on; when false they are
	// ignored everywhere.
	Enabled Bool `yaml:"enabled"`
	// DefaultPolicy applies to rooms without an m.room.retention state
	// event, and fills the fields such an event leaves out.
	DefaultPolicy RetentionPolicy `yaml:"default_policy"`
	// AllowedLifetimeMin clamps a room's max_lifetime from below when
	// purging (not when hiding).
	AllowedLifetimeMin commands.Duration `yaml:"allowed_lifetime_min"`
	// AllowedLifetimeMax clamps a room's max_lifetime from above when
	// purging (not when hiding).
	AllowedLifetimeMax commands.Duration `yaml:"allowed_lifetime_max"`
	// PurgeJobs are the periodic purge jobs. ApplyDefaults adds one daily
	// job without bounds when retention is enabled and none is given.
	PurgeJobs []PurgeJobConfig `yaml:"purge_jobs"`
}

// RetentionPolicy is a retention policy: Synapse's default_policy.
type RetentionPolicy struct {
	// MinLifetime is stored but unused, as in Synapse.
	MinLifetime commands.Duration `yaml:"min_lifetime"`
	// MaxLifetime is how long events are kept.
	MaxLifetime commands.Duration `yaml:"max_lifetime"`
}

// PurgeJobConfig is one retention purge job: it runs every Interval over the
// rooms whose max_lifetime is in (ShortestMaxLifetime, LongestMaxLifetime];
// an unset bound is open.
type PurgeJobConfig struct {
	// Interval between runs; required. The first run is one Interval
	// after start.
	Interval commands.Duration `yaml:"interval"`
	// ShortestMaxLifetime is the exclusive lower bound of the rooms'
	// max_lifetime.
	ShortestMaxLifetime commands.Duration `yaml:"shortest_max_lifetime"`
	// LongestMaxLifetime is the inclusive upper bound of the rooms'
	// max_lifetime.
	LongestMaxLifetime commands.Duration `yaml:"longest_max_lifetime"`
}

// LogConfig is the `log:` section, an addition to the contract.
type LogConfig struct {
	// Level is the lowest level logged: debug, info, warn or error.
	Level string `yaml:"level"`
	// Format is text (log/slog's TextHandler) or json (JSONHandler).
	Format string `yaml:"format"`
}

// Log levels and formats accepted in LogConfig.
const (
	LogLevelDebug = "debug"
	LogLevelInfo  = "info"
	LogLevelWarn  = "warn"
	LogLevelError = "error"

	LogFormatText = "text"
	LogFormatJSON = "json"
)

// SlogLevel returns Level as a slog.Level; a level Validate would reject
// reads as info.
func (l LogConfig) SlogLevel() slog.Level {
	switch l.Level {
	case LogLevelDebug:
		return slog.LevelDebug
	case LogLevelWarn:
		return slog.LevelWarn
	case LogLevelError:
		return slog.LevelError
	}
	return slog.LevelInfo
}

// MaxBackfillTimeout is the longest backfill.timeout. A read answers
// within 30 s (the messages endpoint's timeout in serve.go, and the HTTP
// bridge's bound on one request), of which its wait_for may take
// handlers.WaitForTimeout: a longer backfill was cut there, its page
// answered as the bridge gave up on it, and one of 1000y made the
// background backfills' timeout overflow into the past, so that they
// never ran.
const MaxBackfillTimeout = 20 * time.Second

// DefaultPurgeJobInterval is the interval of the purge job ApplyDefaults
// adds when retention is enabled without purge_jobs (Synapse's default).
const DefaultPurgeJobInterval = 24 * time.Hour

// DefaultConfig returns the defaults of CONTRACT.md section 1, plus log
// level info and format text.
func DefaultConfig() Config {
	return Config{
		ServerName: "localhost",
		DataDir:    "./data",
		NATS: NATSConfig{
			Listen:        "127.0.0.1:4222",
			Stream:        "SCROLLBACK",
			SubjectPrefix: "sb",
		},
		HTTP: HTTPConfig{Listen: "127.0.0.1:8090"},
		Backfill: BackfillConfig{
			Timeout: commands.DurationOf(10 * time.Second),
			Backoff: commands.DurationOf(time.Hour),
		},
		Homeserver: HomeserverConfig{Timeout: commands.DurationOf(5 * time.Second)},
		Tasks:      TasksConfig{MaxConcurrent: 5},
		Shutdown:   ShutdownConfig{Concurrency: 16},
		Log:        LogConfig{Level: LogLevelInfo, Format: LogFormatText},
		Cluster:    ClusterConfig{Lease: commands.DurationOf(2 * time.Second), Replicas: 1},
	}
}

// LoadConfig returns DefaultConfig overlaid with the YAML file at path, with
// ApplyDefaults applied. An empty path, an empty file and a file of only
// comments give the defaults. Unknown and duplicate keys, values of the
// wrong type and bad durations are errors; all of them are reported at
// once, each with its line and dotted key (for example
// "line 4: http.lisen: unknown key"). LoadConfig does not call Validate,
// so that flags can still fix a value: ParseServeFlags does both.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return Config{}, fmt.Errorf("config: %w", err)
		}
		if err := decodeConfig(data, &cfg); err != nil {
			return Config{}, withHeading("config "+path, err)
		}
	}
	cfg.ApplyDefaults()
	return cfg, nil
}

// decodeConfig overlays the YAML document in data on cfg.
func decodeConfig(data []byte, cfg *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // empty, or only comments
		}
		return err
	}
	var more yaml.Node
	switch err := dec.Decode(&more); {
	case err == nil:
		return fmt.Errorf("line %d: a config file holds one YAML document; found a second one", more.Line)
	case !errors.Is(err, io.EOF):
		return err
	}

	// Check first, to name every problem with its key; then decode.
	var c checker
	c.check(&doc, reflect.TypeFor[Config](), "")
	if len(c.errs) > 0 {
		return errors.Join(c.errs...)
	}
	strict := yaml.NewDecoder(bytes.NewReader(data))
	strict.KnownFields(true)
	if err := strict.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// Bool is a boolean key of the config file, read as Synapse reads its
// homeserver.yaml, with PyYAML (YAML 1.1): true, false, yes, no, on and
// off, each in lower case, capitalised or upper case, and any case of
// them under an explicit !!bool tag, so that a retention: section copied
// from Synapse means the same here. Whatever PyYAML reads as a string is
// an error: a quoted "yes" or "no" (which Synapse would take as true,
// both of them, being strings that are not empty), and y or n, which the
// YAML 1.1 spec counts as booleans but PyYAML does not. The YAML decoder
// alone took "yes", y and n as booleans, and refused !!bool yes.
type Bool bool

// pyYAMLBools are the scalars PyYAML's resolver reads as booleans, as
// they are spelled.
var pyYAMLBools = map[string]bool{
	"true": true, "True": true, "TRUE": true, "false": false, "False": false, "FALSE": false,
	"yes": true, "Yes": true, "YES": true, "no": false, "No": false, "NO": false,
	"on": true, "On": true, "ON": true, "off": false, "Off": false, "OFF": false,
}

// UnmarshalYAML reads n as PyYAML would read a boolean, or says why it
// is none.
func (b *Bool) UnmarshalYAML(n *yaml.Node) error {
	if v, ok := pyYAMLBool(n); ok {
		*b = Bool(v)
		return nil
	}
	if _, spelled := pyYAMLBools[n.Value]; spelled && n.Kind == yaml.ScalarNode {
		return fmt.Errorf("want true or false, got the string %q: a quoted (or !!str) value is a string, in Synapse's homeserver.yaml too; write %s without quotes", n.Value, n.Value)
	}
	return fmt.Errorf("want true or false (or yes, no, on, off), got %s", nodeKind(n))
}

// pyYAMLBool is the boolean PyYAML reads n as, if it reads one: a plain
// scalar spelled as its resolver has them, or any case of those under
// !!bool (its constructor lowers the case). A quoted or block scalar, or
// one tagged otherwise, is not one.
func pyYAMLBool(n *yaml.Node) (value, ok bool) {
	switch {
	case n.Kind != yaml.ScalarNode:
		return false, false
	case n.Style&yaml.TaggedStyle != 0:
		if n.ShortTag() != "!!bool" {
			return false, false
		}
		value, ok = pyYAMLBools[strings.ToLower(n.Value)]
		return value, ok
	case n.Style != 0:
		return false, false
	}
	value, ok = pyYAMLBools[n.Value]
	return value, ok
}

// checker walks a YAML tree alongside the Go type it will be decoded into
// and collects, with line numbers and dotted keys, unknown and duplicate
// keys, mappings or lists where they do not belong, and leaf values that do
// not decode (bad durations, text for a number). Aliases into mappings and
// lists, and merge keys, are left to the strict decoder that runs after it.
type checker struct {
	errs []error
}

func (c *checker) errorf(n *yaml.Node, key, format string, args ...any) {
	if key == "" {
		key = "top level"
	}
	c.errs = append(c.errs, fmt.Errorf("line %d: %s: "+format, append([]any{n.Line, key}, args...)...))
}

var durationType = reflect.TypeFor[commands.Duration]()

func (c *checker) check(n *yaml.Node, t reflect.Type, key string) {
	if n.Kind == yaml.DocumentNode {
		for _, child := range n.Content {
			c.check(child, t, key)
		}
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // null leaves the value (the default) as it is
	}
	switch {
	case t == durationType:
		c.leaf(n, t, key, "a duration")
	case t.Kind() == reflect.Struct:
		c.mapping(n, t, key)
	case t.Kind() == reflect.Slice:
		switch n.Kind {
		case yaml.AliasNode:
		case yaml.SequenceNode:
			for i, item := range n.Content {
				c.check(item, t.Elem(), fmt.Sprintf("%s[%d]", key, i))
			}
		default:
			c.errorf(n, key, "want a list, got %s", nodeKind(n))
		}
	default:
		c.leaf(n, t, key, "a single value")
	}
}

// leaf test-decodes a scalar into a fresh value of type t.
func (c *checker) leaf(n *yaml.Node, t reflect.Type, key, want string) {
	if n.Kind != yaml.ScalarNode && n.Kind != yaml.AliasNode {
		c.errorf(n, key, "want %s, got %s", want, nodeKind(n))
		return
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		// The YAML decoder cuts a fraction to its whole part (0.9 to 0).
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!float" {
			c.errorf(n, key, "want a whole number, got %s", n.Value)
			return
		}
	}
	if err := n.Decode(reflect.New(t).Interface()); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			msgs := make([]string, len(te.Errors))
			for i, m := range te.Errors {
				msgs[i] = lineRE.ReplaceAllString(m, "")
			}
			c.errorf(n, key, "%s", strings.Join(msgs, "; "))
			return
		}
		c.errorf(n, key, "%w", err)
	}
}

var lineRE = regexp.MustCompile(`^line \d+: `)

func (c *checker) mapping(n *yaml.Node, t reflect.Type, key string) {
	switch n.Kind {
	case yaml.AliasNode:
		return
	case yaml.MappingNode:
	default:
		c.errorf(n, key, "want a mapping of keys, got %s", nodeKind(n))
		return
	}
	fields := yamlFields(t)
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			continue
		}
		sub := k.Value
		if key != "" {
			sub = key + "." + k.Value
		}
		if first, dup := seen[k.Value]; dup {
			c.errorf(k, sub, "duplicate key (first at line %d)", first)
			continue
		}
		seen[k.Value] = k.Line
		ft, ok := fields[k.Value]
		if !ok {
			names := make([]string, 0, len(fields))
			for name := range fields {
				names = append(names, name)
			}
			sort.Strings(names)
			where := "at the top level"
			if key != "" {
				where = "under " + key
			}
			c.errorf(k, sub, "unknown key (valid keys %s: %s)", where, strings.Join(names, ", "))
			continue
		}
		c.check(v, ft, sub)
	}
}

// yamlFields maps the YAML keys of struct type t to the field types.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = strings.ToLower(f.Name)
		}
		fields[name] = f.Type
	}
	return fields
}

func nodeKind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	return fmt.Sprintf("%q", n.Value)
}

// ApplyDefaults fills values that depend on other values: when retention
// is enabled without purge_jobs it adds Synapse's default job (interval 1d,
// no bounds), and an empty log level or format becomes info or text.
// LoadConfig and ParseServeFlags call it.
func (c *Config) ApplyDefaults() {
	if c.Retention.Enabled && len(c.Retention.PurgeJobs) == 0 {
		c.Retention.PurgeJobs = []PurgeJobConfig{{Interval: commands.DurationOf(DefaultPurgeJobInterval)}}
	}
	if c.Log.Level == "" {
		c.Log.Level = LogLevelInfo
	}
	if c.Log.Format == "" {
		c.Log.Format = LogFormatText
	}
}

// InstanceName is cluster.instance, or the host name made into an
// instance name when it is empty.
func (c ClusterConfig) InstanceName() string {
	if c.Instance != "" {
		return c.Instance
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		return "scrollback"
	}
	name := []byte(host)
	for i, b := range name {
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '-' || b == '_') {
			name[i] = '_'
		}
	}
	return string(name[:min(len(name), 64)])
}

// Validate reports every problem of the configuration at once, joined with
// errors.Join; each problem starts with its dotted key (for example
// "nats.stream: ..." or "auth.tokens[2].user_id: ...").
func (c *Config) Validate() error {
	var authProblems []error
	seenUsers := map[string]bool{}
	for i, u := range c.NATS.Auth.Users {
		key := fmt.Sprintf("nats.auth.users[%d]", i)
		switch {
		case !bus.ValidInstance(u.User): // the same rule: the name is a subject token of the user's inbox
			authProblems = append(authProblems, fmt.Errorf("%s.user: %q: use 1 to 64 letters, digits, - or _", key, u.User))
		case seenUsers[u.User]:
			authProblems = append(authProblems, fmt.Errorf("%s.user: %q is listed twice", key, u.User))
		case u.User == bus.ServiceUser:
			authProblems = append(authProblems, fmt.Errorf("%s.user: %q is reserved for scrollback itself", key, u.User))
		}
		seenUsers[u.User] = true
		if len(u.Password) < 12 {
			authProblems = append(authProblems, fmt.Errorf("%s.password: must be at least 12 characters", key))
		}
		if !bus.ValidRole(u.Role) {
			authProblems = append(authProblems, fmt.Errorf("%s.role: %q is not one of homeserver, federation, client", key, u.Role))
		}
	}
	for key, t := range map[string]TLSConfig{"http.tls": c.HTTP.TLS, "nats.tls": c.NATS.TLS} {
		if t.Enabled() && (t.Cert == "" || t.Key == "") {
			authProblems = append(authProblems, fmt.Errorf("%s: cert and key go together", key))
		}
	}
	if c.NATS.Credentials != "" && c.NATS.URL == "" {
		// Ignored there, and silently: a typo in nats.url, or a config
		// meant for another deployment.
		authProblems = append(authProblems, errors.New("nats.credentials: only for an external cluster (nats.url); the embedded server's users are nats.auth"))
	}
	if len(c.NATS.Auth.Users) > 0 && c.NATS.URL != "" {
		authProblems = append(authProblems, errors.New("nats.auth: only for the embedded server; an external cluster has its own accounts (use nats.credentials)"))
	}
	var p problems

	if c.ServerName == "" {
		p.add("server_name", "must not be empty")
	} else if !validServerName(c.ServerName) {
		p.add("server_name", "%q is not a Matrix server name (a host name or IP literal, optionally with :port)", c.ServerName)
	}
	if c.DataDir == "" {
		p.add("data_dir", "must not be empty")
	}

	if c.NATS.Stream == "" {
		p.add("nats.stream", "must not be empty")
	} else if bad := badNameChar(c.NATS.Stream, ".*>/\\"); bad != "" {
		p.add("nats.stream", "%q is not a valid JetStream stream name: it must not contain %s", c.NATS.Stream, bad)
	} else if c.NATS.URL != "" && !validBucketName(bus.OwnersBucket(c.NATS.Stream)) {
		// With an external NATS the partitions' leases live in a
		// key-value bucket named after the stream (docs/CLUSTER.md).
		p.add("nats.stream", "%q cannot name the leases bucket %s, which takes only letters, digits, '-' and '_'", c.NATS.Stream, bus.OwnersBucket(c.NATS.Stream))
	}
	if why := subjectPrefixProblem(c.NATS.SubjectPrefix); why != "" {
		p.add("nats.subject_prefix", "%s", why)
	}
	p.listen("nats.listen", c.NATS.Listen)
	p.listen("http.listen", c.HTTP.Listen)
	if c.HTTP.TLS.Enabled() && c.HTTP.Listen == "" {
		// Ignored there, and silently: the operator believes the bridge
		// serves HTTPS.
		p.add("http.tls", `set while http.listen is "" (no HTTP bridge): set http.listen to serve the bridge over HTTPS, or remove http.tls`)
	}
	if c.NATS.TLS.Enabled() && c.NATS.Listen == "" && c.NATS.URL == "" {
		// Likewise for the embedded server's client listener (with
		// nats.url, nats.tls is ignored, as documented).
		p.add("nats.tls", `set while nats.listen is "" (no client listener): set nats.listen to take clients over TLS, or remove nats.tls`)
	}

	seen := map[string]int{}
	for i, t := range c.Auth.Tokens {
		key := fmt.Sprintf("auth.tokens[%d]", i)
		switch {
		case t.Token == "":
			p.add(key+".token", "must not be empty")
		case strings.IndexFunc(t.Token, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
			p.add(key+".token", "must not contain spaces or control characters")
		default:
			if first, dup := seen[t.Token]; dup {
				p.add(key+".token", "duplicates auth.tokens[%d].token", first)
			} else {
				seen[t.Token] = i
			}
		}
		if t.UserID == "" {
			p.add(key+".user_id", "must not be empty")
		} else if !validUserID(t.UserID) {
			p.add(key+".user_id", "%q is not a Matrix user ID (@localpart:server)", t.UserID)
		}
	}

	p.positive("backfill.timeout", c.Backfill.Timeout)
	if c.Backfill.Timeout.Duration > MaxBackfillTimeout {
		p.add("backfill.timeout", "must be at most %v (a read answers within 30s, of which its wait_for may take 10s), got %v",
			commands.DurationOf(MaxBackfillTimeout), c.Backfill.Timeout)
	}
	p.positive("backfill.backoff", c.Backfill.Backoff)
	p.positive("homeserver.timeout", c.Homeserver.Timeout)
	if c.Tasks.MaxConcurrent < 1 {
		p.add("tasks.max_concurrent", "must be at least 1, got %d", c.Tasks.MaxConcurrent)
	}
	if c.Shutdown.Concurrency < 1 {
		p.add("shutdown.concurrency", "must be at least 1, got %d", c.Shutdown.Concurrency)
	}
	if c.Cluster.Instance != "" && !bus.ValidInstance(c.Cluster.Instance) {
		p.add("cluster.instance", "%q: use 1 to 64 letters, digits, - or _", c.Cluster.Instance)
	}
	if c.Cluster.Lease.Duration < 300*time.Millisecond {
		p.add("cluster.lease", "must be at least 300ms, got %v", c.Cluster.Lease)
	}
	switch {
	case c.Cluster.Replicas < 1 || c.Cluster.Replicas > 5:
		p.add("cluster.replicas", "must be between 1 and 5, got %d", c.Cluster.Replicas)
	case c.Cluster.Replicas > 1 && c.NATS.URL == "":
		p.add("cluster.replicas", "the embedded server is a single node: replicas %d needs nats.url", c.Cluster.Replicas)
	}
	if d := c.ForgottenRoomRetentionPeriod; d != nil && d.Duration < 0 {
		p.add("forgotten_room_retention_period", "must not be negative, got %v", d.Duration)
	}

	r := &c.Retention
	p.nonNegative("retention.default_policy.min_lifetime", r.DefaultPolicy.MinLifetime)
	p.nonNegative("retention.default_policy.max_lifetime", r.DefaultPolicy.MaxLifetime)
	if r.DefaultPolicy.MinLifetime.Set && r.DefaultPolicy.MaxLifetime.Set &&
		r.DefaultPolicy.MinLifetime.Duration > r.DefaultPolicy.MaxLifetime.Duration {
		p.add("retention.default_policy.min_lifetime", "%v can not be greater than max_lifetime %v",
			r.DefaultPolicy.MinLifetime, r.DefaultPolicy.MaxLifetime)
	}
	p.nonNegative("retention.allowed_lifetime_min", r.AllowedLifetimeMin)
	p.nonNegative("retention.allowed_lifetime_max", r.AllowedLifetimeMax)
	if r.AllowedLifetimeMin.Set && r.AllowedLifetimeMax.Set && r.AllowedLifetimeMin.Duration > r.AllowedLifetimeMax.Duration {
		p.add("retention.allowed_lifetime_min", "%v can not be greater than allowed_lifetime_max %v",
			r.AllowedLifetimeMin, r.AllowedLifetimeMax)
	}
	for i, j := range r.PurgeJobs {
		key := fmt.Sprintf("retention.purge_jobs[%d]", i)
		if !j.Interval.Set {
			p.add(key+".interval", "is required")
		} else {
			p.positive(key+".interval", j.Interval)
		}
		p.nonNegative(key+".shortest_max_lifetime", j.ShortestMaxLifetime)
		p.nonNegative(key+".longest_max_lifetime", j.LongestMaxLifetime)
		if j.ShortestMaxLifetime.Set && j.LongestMaxLifetime.Set && j.ShortestMaxLifetime.Duration > j.LongestMaxLifetime.Duration {
			p.add(key+".shortest_max_lifetime", "%v can not be greater than longest_max_lifetime %v",
				j.ShortestMaxLifetime, j.LongestMaxLifetime)
		}
	}

	if c.MemoryLimit != 0 && c.MemoryLimit < MinMemoryLimit {
		p.add("memory_limit", "%v is below the least that makes sense, %v (0 means no limit)", c.MemoryLimit, MinMemoryLimit)
	}
	switch c.Log.Level {
	case LogLevelDebug, LogLevelInfo, LogLevelWarn, LogLevelError:
	default:
		p.add("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case LogFormatText, LogFormatJSON:
	default:
		p.add("log.format", "%q is not one of text, json", c.Log.Format)
	}
	p = append(p, authProblems...)
	return errors.Join(p...)
}

// problems collects Validate's findings.
type problems []error

func (p *problems) add(key, format string, args ...any) {
	*p = append(*p, errors.New(key+": "+fmt.Sprintf(format, args...)))
}

func (p *problems) positive(key string, d commands.Duration) {
	if d.Duration <= 0 {
		p.add(key, "must be greater than 0, got %v", d)
	}
}

func (p *problems) nonNegative(key string, d commands.Duration) {
	if d.Duration < 0 {
		p.add(key, "must not be negative, got %v", d.Duration)
	}
}

// listen checks a host:port listen address; "" (disabled) is fine.
func (p *problems) listen(key, addr string) {
	if addr == "" {
		return
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		reason := err.Error()
		var ae *net.AddrError
		if errors.As(err, &ae) {
			reason = ae.Err
		}
		p.add(key, "%q is not host:port (for example 127.0.0.1:8090 or :8090): %s", addr, reason)
		return
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		p.add(key, "%q: port %q is not a number from 0 to 65535", addr, port)
	}
}

// badNameChar describes the first character of s that may not appear in a
// NATS name: whitespace, control characters, or any of forbidden.
func badNameChar(s, forbidden string) string {
	for _, r := range s {
		switch {
		case unicode.IsSpace(r):
			return "spaces"
		case unicode.IsControl(r) || !unicode.IsPrint(r):
			return "control characters"
		case strings.ContainsRune(forbidden, r):
			return fmt.Sprintf("%q", r)
		}
	}
	return ""
}

// subjectPrefixProblem says what is wrong with prefix as a subject prefix
// (nats.subject_prefix, and the flags that name the service's: seed's
// --prefix, bench's --target-prefix), or returns "" if nothing is: it
// must be one subject token, and not one NATS reserves.
func subjectPrefixProblem(prefix string) string {
	if prefix == "" {
		return "must not be empty"
	}
	if bad := badNameChar(prefix, ".*>"); bad != "" {
		return fmt.Sprintf("%q is not a single NATS subject token: it must not contain %s", prefix, bad)
	}
	if why := reservedSubjectToken(prefix); why != "" {
		return fmt.Sprintf("%q is reserved by NATS: %s; choose another, like sb", prefix, why)
	}
	return ""
}

// reservedSubjectToken says why NATS reserves tok as the first token of
// a subject, or returns "" if it does not: subjects starting with $ are
// the server's ($JS for JetStream's API, $KV and $O for its buckets,
// $SYS, $SRV, ...), _INBOX is where clients receive replies, and _R_ and
// _GR_ carry the server's own replies across accounts and gateways.
func reservedSubjectToken(tok string) string {
	switch {
	case strings.HasPrefix(tok, "$"):
		return "subjects starting with $ are the server's ($JS, $KV, $SYS, ...)"
	case strings.HasPrefix(tok, "_INBOX"):
		return "_INBOX subjects carry the replies to requests"
	case tok == "_R_" || tok == "_GR_":
		return "the server sends its own replies on " + tok + " subjects"
	}
	return ""
}

// validServerName reports whether s is a Matrix server name: a DNS name,
// IPv4 address or [IPv6] literal, optionally followed by :port.
func validServerName(s string) bool {
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return false
		}
		host, port = s[:end+1], s[end+1:]
		if port != "" && port[0] != ':' {
			return false
		}
		port = strings.TrimPrefix(port, ":")
		inner := host[1 : len(host)-1]
		if inner == "" || strings.Trim(inner, "0123456789abcdefABCDEF:.") != "" {
			return false
		}
	} else {
		if i := strings.IndexByte(s, ':'); i >= 0 {
			host, port = s[:i], s[i+1:]
			if port == "" {
				return false
			}
		}
		if host == "" || len(host) > 255 {
			return false
		}
		for _, r := range host {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
				return false
			}
		}
	}
	if port != "" && (len(port) > 5 || strings.Trim(port, "0123456789") != "") {
		return false
	}
	return true
}

// validUserID reports whether s has the form @localpart:server_name.
func validUserID(s string) bool {
	rest, ok := strings.CutPrefix(s, "@")
	if !ok || len(s) > 255 {
		return false
	}
	local, server, ok := strings.Cut(rest, ":")
	return ok && local != "" && validServerName(server)
}

// listError prints a heading followed by one problem per line.
type listError struct {
	heading string
	errs    []error
}

func (e *listError) Error() string {
	if len(e.errs) == 1 {
		return e.heading + ": " + e.errs[0].Error()
	}
	var b strings.Builder
	b.WriteString(e.heading + ":")
	for _, err := range e.errs {
		b.WriteString("\n  " + strings.ReplaceAll(err.Error(), "\n", "\n  "))
	}
	return b.String()
}

func (e *listError) Unwrap() []error { return e.errs }

// withHeading puts a heading over err, listing the errors of an
// errors.Join one per line.
func withHeading(heading string, err error) error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return &listError{heading: heading, errs: j.Unwrap()}
	}
	return &listError{heading: heading, errs: []error{err}}
}

// ParseServeFlags parses the arguments of `scrollback serve` (those after
// the word serve) and returns the configuration to run with: DefaultConfig,
// overlaid with the file named by -c/--config if any (LoadConfig), then
// with the flags that were given, then ApplyDefaults and Validate.
//
// Flags (Go's flag package: one or two dashes, "--http=addr" or
// "--http addr"):
//
//	-c, --config FILE     YAML config file
//	--data DIR            data_dir
//	--server-name NAME    server_name
//	--nats-url URL        nats.url ("" = embedded server)
//	--nats-listen ADDR    nats.listen ("" = in-process only)
//	--http ADDR           http.listen ("" = no HTTP bridge)
//	--log-level LEVEL     log.level (debug, info, warn, error)
//	--instance NAME       cluster.instance ("" = the host name)
//	--memory-limit SIZE   memory_limit (512MiB, 2GiB; 0 = none)
//
// A flag given with an empty value sets the key to "". With -h or --help
// it prints the usage on stderr and returns flag.ErrHelp. An unknown flag,
// a flag value that does not parse and an argument after the flags are
// usage errors (usageError: the process exits 2). Every problem of the
// resulting configuration is reported at once.
func ParseServeFlags(args []string) (Config, error) {
	return parseFlags("serve", args, os.Stderr)
}

// commandFlags are the flags each command that takes the service's
// config file reads besides -c/--config and --data: its -h lists these
// alone, and it refuses the others, which it would ignore.
var commandFlags = map[string][]string{
	"serve": {"server-name", "nats-url", "nats-listen", "http", "instance", "memory-limit", "log-level"},
	// server_name: the generated admin token's user.
	"bridge":  {"server-name", "nats-url", "http", "log-level", "memory-limit"},
	"rebuild": {"server-name", "nats-url", "memory-limit"},
	"verify":  {"server-name", "nats-url", "memory-limit"},
	// nats.url: whether the data dir holds the embedded server's log.
	"compact": {"nats-url"},
}

// parseFlags is ParseServeFlags for command cmd (serve, bridge, rebuild,
// compact, verify: they take the same config file, and the flags of
// commandFlags), whose name the usage and the errors show, writing the
// usage to output.
func parseFlags(cmd string, args []string, output io.Writer) (Config, error) {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	var (
		path                                                       string
		dataDir, serverName, natsURL, natsListen, httpAddr, logLvl string
		instance, memLimit                                         string
	)
	fs.StringVar(&path, "c", "", "YAML config `file` (same as --config)")
	fs.StringVar(&path, "config", "", "YAML config `file`; without one, the built-in defaults apply")
	fs.StringVar(&dataDir, "data", "", "data `dir`ectory, overrides data_dir (default ./data)")
	for _, f := range []struct {
		p           *string
		name, usage string
	}{
		{&serverName, "server-name", "Matrix server `name`, overrides server_name (default localhost)"},
		{&natsURL, "nats-url", "external NATS `url`s, overrides nats.url (default \"\": embedded server)"},
		{&natsListen, "nats-listen", "embedded NATS client `address`, overrides nats.listen (default 127.0.0.1:4222; \"\": in-process only)"},
		{&httpAddr, "http", "HTTP bridge `address`, overrides http.listen (default 127.0.0.1:8090; \"\": no bridge)"},
		{&instance, "instance", "this instance's `name` among several sharing a log, overrides cluster.instance (default: the host name)"},
		{&memLimit, "memory-limit", "soft memory `limit` of the process, like 512MiB, overrides memory_limit (default 0: none)"},
		{&logLvl, "log-level", "`level` debug, info, warn or error, overrides log.level (default info)"},
	} {
		if slices.Contains(commandFlags[cmd], f.name) {
			fs.StringVar(f.p, f.name, "", f.usage)
		}
	}
	// A mistake is returned, for run to print once: the flag package
	// would print it too, with the whole usage. -h prints the usage.
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(output)
		fmt.Fprintf(output, "Usage: scrollback %s [-c FILE] [flags]\n\nFlags override the config file (see docs/CONFIG.md):\n", cmd)
		fs.PrintDefaults()
		return Config{}, err
	} else if err != nil {
		return Config{}, usageErr(fmt.Errorf("%s: %w (see scrollback %s -h)", cmd, err, cmd))
	}
	if fs.NArg() > 0 {
		return Config{}, usageErr(fmt.Errorf("%s: unexpected argument %q (flags go before it; see scrollback %s -h)", cmd, fs.Arg(0), cmd))
	}

	cfg, err := LoadConfig(path)
	if err != nil {
		return Config{}, err
	}
	var flagProblems []error
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "memory-limit":
			if err := cfg.MemoryLimit.UnmarshalText([]byte(memLimit)); err != nil {
				flagProblems = append(flagProblems, usageErr(fmt.Errorf("--memory-limit: %w", err)))
			}
		case "data":
			cfg.DataDir = dataDir
		case "server-name":
			cfg.ServerName = serverName
		case "nats-url":
			cfg.NATS.URL = natsURL
		case "nats-listen":
			cfg.NATS.Listen = natsListen
		case "http":
			cfg.HTTP.Listen = httpAddr
		case "log-level":
			cfg.Log.Level = logLvl
		case "instance":
			cfg.Cluster.Instance = instance
		}
	})
	cfg.ApplyDefaults()
	problems := flagProblems
	if err := cfg.Validate(); err != nil {
		// Validate joins its problems: list them with the flags', one a
		// line, not as one entry.
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			problems = append(problems, j.Unwrap()...)
		} else {
			problems = append(problems, err)
		}
	}
	if len(problems) > 0 {
		heading := "invalid configuration"
		if path != "" {
			heading += " (" + path + " and flags)"
		}
		return Config{}, withHeading(heading, errors.Join(problems...))
	}
	return cfg, nil
}

// ByteSize is a number of bytes written as GOMEMLIMIT is: digits with
// an optional unit B, KiB, MiB, GiB or TiB right after them ("512MiB");
// bare digits are bytes.
type ByteSize int64

// validBucketName reports whether JetStream takes name for a key-value
// bucket: letters, digits, '-' and '_'.
func validBucketName(name string) bool {
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return name != ""
}

// MinMemoryLimit is the least memory_limit accepted: below it the
// service would spend its time collecting garbage.
const MinMemoryLimit ByteSize = 64 << 20

var byteUnits = []struct {
	suffix string
	size   int64
}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}

// UnmarshalText parses a size; "" is 0.
func (b *ByteSize) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	if s == "" {
		*b = 0
		return nil
	}
	unit := int64(1)
	for _, u := range byteUnits {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			s, unit = num, u.size
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || strings.TrimLeft(s, "0123456789") != "" || n > math.MaxInt64/unit {
		return fmt.Errorf("invalid size %q: want a whole number of bytes with an optional unit B, KiB, MiB, GiB or TiB, like 512MiB", string(text))
	}
	*b = ByteSize(n * unit)
	return nil
}

// String writes the size in the largest unit that divides it.
func (b ByteSize) String() string {
	for _, u := range byteUnits {
		if int64(b)%u.size == 0 && (b != 0 || u.size == 1) {
			return strconv.FormatInt(int64(b)/u.size, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(b), 10) + "B"
}

// MarshalText writes the size as String does.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

// applyMemoryLimit sets Go's soft memory limit of the process from
// memory_limit; with none it leaves what GOMEMLIMIT set. The projector
// reads the limit when it starts, so this comes first.
func applyMemoryLimit(c Config) {
	if c.MemoryLimit > 0 {
		debug.SetMemoryLimit(int64(c.MemoryLimit))
	}
}
