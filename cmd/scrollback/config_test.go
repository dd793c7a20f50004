package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/handlers"
	"github.com/scrollback/scrollback/testenv"
)

const (
	day  = 24 * time.Hour
	year = 365 * day
)

func dur(d time.Duration) commands.Duration { return commands.DurationOf(d) }

// writeConfig writes content to a config file in a fresh temp dir.
func writeConfig(tb testing.TB, content string) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "scrollback.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// wantAll fails unless err's text contains every one of wants.
func wantAll(tb testing.TB, err error, wants ...string) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("error = nil, want one mentioning %q", wants)
	}
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			tb.Errorf("error = %q\nwant it to contain %q", err, w)
		}
	}
}

func TestDefaultConfig_MatchesContract(t *testing.T) {
	want := Config{
		ServerName: "localhost",
		DataDir:    "./data",
		NATS: NATSConfig{
			URL:           "",
			Listen:        "127.0.0.1:4222",
			Stream:        "SCROLLBACK",
			SubjectPrefix: "sb",
			Credentials:   "",
		},
		HTTP:                         HTTPConfig{Listen: "127.0.0.1:8090"},
		Auth:                         AuthConfig{Tokens: nil},
		Backfill:                     BackfillConfig{Timeout: dur(10 * time.Second), Backoff: dur(time.Hour)},
		Homeserver:                   HomeserverConfig{Timeout: dur(5 * time.Second)},
		Tasks:                        TasksConfig{MaxConcurrent: 5},
		Shutdown:                     ShutdownConfig{Concurrency: 16},
		ForgottenRoomRetentionPeriod: nil,
		Retention:                    RetentionConfig{Enabled: false},
		Log:                          LogConfig{Level: "info", Format: "text"},
		Cluster:                      ClusterConfig{Lease: dur(2 * time.Second), Replicas: 1}, // an addition to the contract
	}
	got := DefaultConfig()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("DefaultConfig() = %+v\nwant %+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("DefaultConfig().Validate() = %v, want nil", err)
	}
	loaded, err := LoadConfig("")
	if err != nil || !reflect.DeepEqual(loaded, want) {
		t.Errorf("LoadConfig(\"\") = %+v, %v\nwant %+v, nil", loaded, err, want)
	}
}

func TestLoadConfig(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want func(c *Config) // applied to DefaultConfig()
	}{
		{
			name: "empty file gives the defaults",
			yaml: "",
			want: func(c *Config) {},
		},
		{
			name: "only comments gives the defaults",
			yaml: "# nothing yet\n\n# really\n",
			want: func(c *Config) {},
		},
		{
			name: "null document gives the defaults",
			yaml: "---\n",
			want: func(c *Config) {},
		},
		{
			name: "overlay keeps the keys the file leaves out",
			yaml: "server_name: example.org\nnats:\n  listen: 0.0.0.0:4333\n",
			want: func(c *Config) {
				c.ServerName = "example.org"
				c.NATS.Listen = "0.0.0.0:4333"
			},
		},
		{
			name: "empty strings disable listeners",
			yaml: "nats: {listen: \"\"}\nhttp: {listen: \"\"}\n",
			want: func(c *Config) {
				c.NATS.Listen = ""
				c.HTTP.Listen = ""
			},
		},
		{
			name: "synapse durations",
			yaml: "backfill:\n  timeout: 10s\n  backoff: 1d\nhomeserver:\n  timeout: 500\nforgotten_room_retention_period: 1y\n",
			want: func(c *Config) {
				c.Backfill.Timeout = dur(10 * time.Second)
				c.Backfill.Backoff = dur(day)
				c.Homeserver.Timeout = dur(500 * time.Millisecond)
				c.ForgottenRoomRetentionPeriod = &commands.Duration{Duration: year, Set: true}
			},
		},
		{
			// As homeserver.yaml has them: PyYAML reads each integer
			// spelling as an int, and Synapse takes any length.
			name: "integer spellings and a retention kept for ever",
			yaml: "retention:\n  default_policy: {max_lifetime: 86_400_000, min_lifetime: 0x5265C00}\n  allowed_lifetime_min: +86400000\n  allowed_lifetime_max: 1000y\n",
			want: func(c *Config) {
				c.Retention.DefaultPolicy.MaxLifetime = dur(day)
				c.Retention.DefaultPolicy.MinLifetime = dur(day)
				c.Retention.AllowedLifetimeMin = dur(day)
				c.Retention.AllowedLifetimeMax = dur(commands.MaxDuration)
			},
		},
		{
			name: "quoted integer and go durations",
			yaml: "backfill: {timeout: \"2500\", backoff: 1h30m}\n",
			want: func(c *Config) {
				c.Backfill.Timeout = dur(2500 * time.Millisecond)
				c.Backfill.Backoff = dur(90 * time.Minute)
			},
		},
		{
			name: "null forgotten_room_retention_period is off",
			yaml: "forgotten_room_retention_period: null\n",
			want: func(c *Config) { c.ForgottenRoomRetentionPeriod = nil },
		},
		{
			name: "empty forgotten_room_retention_period is off",
			yaml: "forgotten_room_retention_period:\n",
			want: func(c *Config) { c.ForgottenRoomRetentionPeriod = nil },
		},
		{
			name: "null duration keeps the default",
			yaml: "backfill: {timeout: null, backoff: ~}\n",
			want: func(c *Config) {},
		},
		{
			name: "empty and null sections keep their defaults",
			yaml: "http:\nnats: null\nauth: ~\n",
			want: func(c *Config) {},
		},
		{
			name: "anchors, aliases and merge keys",
			yaml: `backfill:
  timeout: &t 3s
  backoff: *t
homeserver:
  timeout: *t
retention:
  purge_jobs:
    - &job {interval: 12h, shortest_max_lifetime: 1d}
    - <<: *job
      interval: 1d
`,
			want: func(c *Config) {
				c.Backfill = BackfillConfig{Timeout: dur(3 * time.Second), Backoff: dur(3 * time.Second)}
				c.Homeserver.Timeout = dur(3 * time.Second)
				c.Retention.PurgeJobs = []PurgeJobConfig{
					{Interval: dur(12 * time.Hour), ShortestMaxLifetime: dur(day)},
					{Interval: dur(day), ShortestMaxLifetime: dur(day)},
				}
			},
		},
		{
			name: "tokens",
			yaml: "auth:\n  tokens:\n    - {token: s3cret, user_id: \"@admin:localhost\", admin: true}\n    - token: t2\n      user_id: \"@bob:localhost\"\n",
			want: func(c *Config) {
				c.Auth.Tokens = []TokenConfig{
					{Token: "s3cret", UserID: "@admin:localhost", Admin: true},
					{Token: "t2", UserID: "@bob:localhost"},
				}
			},
		},
		{
			name: "contract retention example",
			yaml: `retention:
  enabled: true
  default_policy: {min_lifetime: 1d, max_lifetime: 1y}
  allowed_lifetime_min: 1d
  allowed_lifetime_max: 1y
  purge_jobs: [{longest_max_lifetime: 3d, interval: 12h}, {shortest_max_lifetime: 3d, interval: 1d}]
`,
			want: func(c *Config) {
				c.Retention = RetentionConfig{
					Enabled:            true,
					DefaultPolicy:      RetentionPolicy{MinLifetime: dur(day), MaxLifetime: dur(year)},
					AllowedLifetimeMin: dur(day),
					AllowedLifetimeMax: dur(year),
					PurgeJobs: []PurgeJobConfig{
						{LongestMaxLifetime: dur(3 * day), Interval: dur(12 * time.Hour)},
						{ShortestMaxLifetime: dur(3 * day), Interval: dur(day)},
					},
				}
			},
		},
		{
			name: "retention enabled without purge jobs gets a daily job",
			yaml: "retention:\n  enabled: true\n",
			want: func(c *Config) {
				c.Retention.Enabled = true
				c.Retention.PurgeJobs = []PurgeJobConfig{{Interval: dur(day)}}
			},
		},
		{
			name: "every contract key",
			yaml: `server_name: example.org
data_dir: /var/lib/scrollback
nats:
  url: nats://a:4222,nats://b:4222
  listen: ""
  stream: ROOMS
  subject_prefix: rooms
  credentials: /etc/scrollback/nats.creds
http:
  listen: :8091
auth:
  tokens: []
backfill:
  timeout: 3s
  backoff: 30m
homeserver:
  timeout: 2s
tasks:
  max_concurrent: 2
shutdown:
  concurrency: 4
forgotten_room_retention_period: 7d
retention:
  enabled: false
log:
  level: debug
  format: json
cluster:
  instance: node-1
  lease: 5s
  replicas: 3
`,
			want: func(c *Config) {
				*c = Config{
					ServerName: "example.org",
					DataDir:    "/var/lib/scrollback",
					NATS: NATSConfig{
						URL:           "nats://a:4222,nats://b:4222",
						Stream:        "ROOMS",
						SubjectPrefix: "rooms",
						Credentials:   "/etc/scrollback/nats.creds",
					},
					HTTP:                         HTTPConfig{Listen: ":8091"},
					Auth:                         AuthConfig{Tokens: []TokenConfig{}},
					Backfill:                     BackfillConfig{Timeout: dur(3 * time.Second), Backoff: dur(30 * time.Minute)},
					Homeserver:                   HomeserverConfig{Timeout: dur(2 * time.Second)},
					Tasks:                        TasksConfig{MaxConcurrent: 2},
					Shutdown:                     ShutdownConfig{Concurrency: 4},
					ForgottenRoomRetentionPeriod: &commands.Duration{Duration: 7 * day, Set: true},
					Log:                          LogConfig{Level: "debug", Format: "json"},
					Cluster:                      ClusterConfig{Instance: "node-1", Lease: dur(5 * time.Second), Replicas: 3},
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := LoadConfig(writeConfig(t, tt.yaml))
			if err != nil {
				t.Fatalf("LoadConfig() error = %v", err)
			}
			want := DefaultConfig()
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("LoadConfig() = %+v\nwant %+v", got, want)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("Validate() = %v, want nil", err)
			}
		})
	}
}

func TestLoadConfig_Errors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // substrings of the error
	}{
		{
			name: "unknown top-level key",
			yaml: "sever_name: example.org\n",
			want: []string{"line 1: sever_name: unknown key", "valid keys at the top level:", "server_name"},
		},
		{
			name: "unknown nested key",
			yaml: "http:\n  lisen: :8090\n",
			want: []string{"line 2: http.lisen: unknown key", "valid keys under http: listen"},
		},
		{
			name: "unknown key in a list item",
			yaml: "auth:\n  tokens:\n    - token: x\n      user: \"@a:b\"\n",
			want: []string{"line 4: auth.tokens[0].user: unknown key"},
		},
		{
			name: "unknown key in a purge job",
			yaml: "retention:\n  purge_jobs:\n    - {interval: 1d, longest: 3d}\n",
			want: []string{"retention.purge_jobs[0].longest: unknown key"},
		},
		{
			name: "a fraction where a whole number belongs",
			yaml: "shutdown:\n  concurrency: 0.9\ntasks:\n  max_concurrent: 1.5\n",
			want: []string{"line 2: shutdown.concurrency: want a whole number, got 0.9", "line 4: tasks.max_concurrent: want a whole number, got 1.5"},
		},
		{
			name: "bad duration",
			yaml: "backfill:\n  timeout: 10x\n",
			want: []string{"line 2: backfill.timeout: invalid duration \"10x\""},
		},
		{
			name: "negative duration",
			yaml: "homeserver: {timeout: -5}\n",
			want: []string{"homeserver.timeout: invalid duration \"-5\": durations cannot be negative"},
		},
		{
			name: "float duration",
			yaml: "homeserver: {timeout: 1.5}\n",
			want: []string{"homeserver.timeout: invalid duration \"1.5\""},
		},
		{
			name: "mapping where a duration belongs",
			yaml: "backfill:\n  timeout: {seconds: 10}\n",
			want: []string{"line 2: backfill.timeout: want a duration, got a mapping"},
		},
		{
			name: "text where a number belongs",
			yaml: "tasks:\n  max_concurrent: five\n",
			want: []string{"line 2: tasks.max_concurrent: cannot unmarshal !!str `five` into int"},
		},
		{
			name: "scalar where a section belongs",
			yaml: "nats: nats://localhost:4222\n",
			want: []string{"line 1: nats: want a mapping of keys, got \"nats://localhost:4222\""},
		},
		{
			name: "mapping where a list belongs",
			yaml: "auth:\n  tokens: {token: x}\n",
			want: []string{"line 2: auth.tokens: want a list, got a mapping"},
		},
		{
			name: "top level not a mapping",
			yaml: "- a\n- b\n",
			want: []string{"line 1: top level: want a mapping of keys, got a list"},
		},
		{
			name: "duplicate key",
			yaml: "http: {listen: \":1\"}\nhttp: {listen: \":2\"}\n",
			want: []string{"line 2: http: duplicate key (first at line 1)"},
		},
		{
			name: "two documents",
			yaml: "server_name: a\n---\nserver_name: b\n",
			want: []string{"one YAML document"},
		},
		{
			name: "syntax error",
			yaml: "server_name: [a\n",
			want: []string{"yaml:"},
		},
		{
			name: "every problem at once",
			yaml: "sever_name: x\nhttp: {lisen: \":1\"}\nbackfill: {timeout: soon}\ntasks: {max_concurrent: many}\n",
			want: []string{
				"line 1: sever_name: unknown key",
				"line 2: http.lisen: unknown key",
				"line 3: backfill.timeout: invalid duration \"soon\"",
				"line 4: tasks.max_concurrent: cannot unmarshal",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.yaml)
			_, err := LoadConfig(path)
			wantAll(t, err, append([]string{"config " + path}, tt.want...)...)
		})
	}

	t.Run("missing file", func(t *testing.T) {
		_, err := LoadConfig(filepath.Join(t.TempDir(), "nope.yaml"))
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("LoadConfig(missing) error = %v, want os.ErrNotExist", err)
		}
	})
	t.Run("bad durations wrap the commands sentinel", func(t *testing.T) {
		_, err := LoadConfig(writeConfig(t, "backfill: {timeout: -1s, backoff: 1q}\n"))
		if !errors.Is(err, commands.ErrNegativeDuration) {
			t.Errorf("error = %v, want it to wrap commands.ErrNegativeDuration", err)
		}
	})
}

func TestConfig_Validate_ReportsEveryProblem(t *testing.T) {
	c := DefaultConfig()
	c.ServerName = ""
	c.DataDir = ""
	c.NATS.Stream = "ROOM LOG"
	c.NATS.SubjectPrefix = "sb.x"
	c.NATS.Listen = "4222"
	c.HTTP.Listen = "localhost:http-alt"
	c.Auth.Tokens = []TokenConfig{
		{Token: "", UserID: "@a:localhost"},
		{Token: "tok-twice", UserID: "admin"},
		{Token: "tok-twice", UserID: "@b:localhost"},
		{Token: "has space", UserID: ""},
	}
	c.Backfill.Timeout = dur(0)
	c.Backfill.Backoff = dur(-time.Second)
	c.Homeserver.Timeout = commands.Duration{}
	c.Tasks.MaxConcurrent = 0
	c.Shutdown.Concurrency = -1
	c.ForgottenRoomRetentionPeriod = &commands.Duration{Duration: -time.Hour, Set: true}
	c.Retention = RetentionConfig{
		DefaultPolicy:      RetentionPolicy{MinLifetime: dur(2 * day), MaxLifetime: dur(day)},
		AllowedLifetimeMin: dur(year),
		AllowedLifetimeMax: dur(day),
		PurgeJobs: []PurgeJobConfig{
			{ShortestMaxLifetime: dur(3 * day), LongestMaxLifetime: dur(day)},
			{Interval: dur(0)},
		},
	}
	c.Log = LogConfig{Level: "verbose", Format: "xml"}

	err := c.Validate()
	wants := []string{
		"server_name: must not be empty",
		"data_dir: must not be empty",
		`nats.stream: "ROOM LOG" is not a valid JetStream stream name: it must not contain spaces`,
		`nats.subject_prefix: "sb.x" is not a single NATS subject token: it must not contain '.'`,
		`nats.listen: "4222" is not host:port`,
		`http.listen: "localhost:http-alt": port "http-alt" is not a number`,
		"auth.tokens[0].token: must not be empty",
		`auth.tokens[1].user_id: "admin" is not a Matrix user ID`,
		"auth.tokens[2].token: duplicates auth.tokens[1].token",
		"auth.tokens[3].token: must not contain spaces",
		"auth.tokens[3].user_id: must not be empty",
		"backfill.timeout: must be greater than 0, got 0",
		"backfill.backoff: must be greater than 0, got -1s",
		"homeserver.timeout: must be greater than 0",
		"tasks.max_concurrent: must be at least 1, got 0",
		"shutdown.concurrency: must be at least 1, got -1",
		"forgotten_room_retention_period: must not be negative",
		"retention.default_policy.min_lifetime: 2d can not be greater than max_lifetime 1d",
		"retention.allowed_lifetime_min: 1y can not be greater than allowed_lifetime_max 1d",
		"retention.purge_jobs[0].interval: is required",
		"retention.purge_jobs[0].shortest_max_lifetime: 3d can not be greater than longest_max_lifetime 1d",
		"retention.purge_jobs[1].interval: must be greater than 0",
		`log.level: "verbose" is not one of debug, info, warn, error`,
		`log.format: "xml" is not one of text, json`,
	}
	wantAll(t, err, wants...)
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("Validate() error %T does not come from errors.Join", err)
	}
	if got := len(joined.Unwrap()); got != len(wants) {
		t.Errorf("Validate() reported %d problems, want %d:\n%v", got, len(wants), err)
	}
	if strings.Contains(err.Error(), "tok-twice") || strings.Contains(err.Error(), "has space") {
		t.Errorf("Validate() error leaks a token: %v", err)
	}
}

func TestConfig_Validate(t *testing.T) {
	tests := []struct {
		name    string
		change  func(c *Config)
		wantErr string // "" = valid
	}{
		{"defaults", func(c *Config) {}, ""},
		{"server name with port", func(c *Config) { c.ServerName = "example.org:8448" }, ""},
		{"server name ipv4", func(c *Config) { c.ServerName = "10.0.0.1" }, ""},
		{"server name ipv6", func(c *Config) { c.ServerName = "[::1]:8448" }, ""},
		{"server name with space", func(c *Config) { c.ServerName = "my server" }, "server_name:"},
		{"server name with empty port", func(c *Config) { c.ServerName = "example.org:" }, "server_name:"},
		{"server name with long port", func(c *Config) { c.ServerName = "example.org:123456" }, "server_name:"},
		{"server name bad ipv6", func(c *Config) { c.ServerName = "[zz]" }, "server_name:"},
		{"stream with dot", func(c *Config) { c.NATS.Stream = "A.B" }, "nats.stream:"},
		{"stream with star", func(c *Config) { c.NATS.Stream = "A*" }, "nats.stream:"},
		{"stream with gt", func(c *Config) { c.NATS.Stream = "A>" }, "nats.stream:"},
		{"stream with slash", func(c *Config) { c.NATS.Stream = "a/b" }, "nats.stream:"},
		{"stream with backslash", func(c *Config) { c.NATS.Stream = `a\b` }, "nats.stream:"},
		{"stream with tab", func(c *Config) { c.NATS.Stream = "a\tb" }, "nats.stream:"},
		{"stream empty", func(c *Config) { c.NATS.Stream = "" }, "nats.stream: must not be empty"},
		{"stream with dash", func(c *Config) { c.NATS.Stream = "scrollback-test_1" }, ""},
		{"prefix empty", func(c *Config) { c.NATS.SubjectPrefix = "" }, "nats.subject_prefix: must not be empty"},
		{"prefix wildcard", func(c *Config) { c.NATS.SubjectPrefix = "*" }, "nats.subject_prefix:"},
		{"prefix full wildcard", func(c *Config) { c.NATS.SubjectPrefix = ">" }, "nats.subject_prefix:"},
		{"prefix with space", func(c *Config) { c.NATS.SubjectPrefix = "s b" }, "nats.subject_prefix:"},
		{"instance name", func(c *Config) { c.Cluster.Instance = "node-1_a" }, ""},
		{"instance with dot", func(c *Config) { c.Cluster.Instance = "node.1" }, "cluster.instance:"},
		{"lease too short", func(c *Config) { c.Cluster.Lease = dur(100 * time.Millisecond) }, "cluster.lease:"},
		{"replicas zero", func(c *Config) { c.Cluster.Replicas = 0 }, "cluster.replicas:"},
		{"replicas on the embedded server", func(c *Config) { c.Cluster.Replicas = 3 }, "cluster.replicas: the embedded server"},
		{"replicas on a cluster", func(c *Config) { c.Cluster.Replicas = 3; c.NATS.URL = "nats://a:4222" }, ""},
		{"credentials on the embedded server", func(c *Config) { c.NATS.Credentials = "/etc/sb.creds" }, "nats.credentials: only for an external cluster"},
		{"credentials on a cluster", func(c *Config) { c.NATS.Credentials = "/etc/sb.creds"; c.NATS.URL = "nats://a:4222" }, ""},
		{"listen port zero", func(c *Config) { c.HTTP.Listen = "127.0.0.1:0" }, ""},
		{"listen all interfaces", func(c *Config) { c.HTTP.Listen = ":8090" }, ""},
		{"listen ipv6", func(c *Config) { c.NATS.Listen = "[::1]:4222" }, ""},
		{"listen port too big", func(c *Config) { c.HTTP.Listen = ":70000" }, "http.listen:"},
		{"listen no port", func(c *Config) { c.NATS.Listen = "localhost" }, "nats.listen:"},
		{"user id with port", func(c *Config) {
			c.Auth.Tokens = []TokenConfig{{Token: "t", UserID: "@a:example.org:8448"}}
		}, ""},
		{"user id without localpart", func(c *Config) {
			c.Auth.Tokens = []TokenConfig{{Token: "t", UserID: "@:example.org"}}
		}, "auth.tokens[0].user_id:"},
		{"user id without server", func(c *Config) {
			c.Auth.Tokens = []TokenConfig{{Token: "t", UserID: "@alice"}}
		}, "auth.tokens[0].user_id:"},
		{"user id with sigil of a room", func(c *Config) {
			c.Auth.Tokens = []TokenConfig{{Token: "t", UserID: "!room:example.org"}}
		}, "auth.tokens[0].user_id:"},
		{"retention equal bounds", func(c *Config) {
			c.Retention.DefaultPolicy = RetentionPolicy{MinLifetime: dur(day), MaxLifetime: dur(day)}
			c.Retention.PurgeJobs = []PurgeJobConfig{{Interval: dur(time.Hour), ShortestMaxLifetime: dur(day), LongestMaxLifetime: dur(day)}}
		}, ""},
		{"retention only max lifetime", func(c *Config) {
			c.Retention.DefaultPolicy = RetentionPolicy{MaxLifetime: dur(day)}
		}, ""},
		{"retention min lifetime alone is fine", func(c *Config) {
			c.Retention.DefaultPolicy = RetentionPolicy{MinLifetime: dur(year)}
		}, ""},
		{"retention checked even when disabled", func(c *Config) {
			c.Retention.Enabled = false
			c.Retention.AllowedLifetimeMin = dur(2 * day)
			c.Retention.AllowedLifetimeMax = dur(day)
		}, "retention.allowed_lifetime_min:"},
		// A read answers within 30 s, of which its wait_for may take 10:
		// a longer backfill was cut there (or its page lost to the HTTP
		// bridge's own 30 s), and one of 1000y never ran in the
		// background (its timeout plus 10 s overflowed into the past).
		{"backfill timeout at its longest", func(c *Config) { c.Backfill.Timeout = dur(20 * time.Second) }, ""},
		{"backfill timeout longer than a read", func(c *Config) { c.Backfill.Timeout = dur(21 * time.Second) },
			"backfill.timeout: must be at most 20s (a read answers within 30s, of which its wait_for may take 10s), got 21s"},
		{"backfill timeout for ever", func(c *Config) { c.Backfill.Timeout = dur(commands.MaxDuration) }, "backfill.timeout: must be at most 20s"},
		{"forgotten room retention zero", func(c *Config) {
			c.ForgottenRoomRetentionPeriod = &commands.Duration{Set: true}
		}, ""},
		{"log warn json", func(c *Config) { c.Log = LogConfig{Level: "warn", Format: "json"} }, ""},
		{"log level upper case", func(c *Config) { c.Log.Level = "INFO" }, "log.level:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.change(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("Validate() = %v, want nil", err)
				}
				return
			}
			wantAll(t, err, tt.wantErr)
		})
	}
}

func TestConfig_ApplyDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   Config
		want Config
	}{
		{
			name: "retention enabled without jobs",
			in:   Config{Retention: RetentionConfig{Enabled: true}},
			want: Config{
				Retention: RetentionConfig{Enabled: true, PurgeJobs: []PurgeJobConfig{{Interval: dur(day)}}},
				Log:       LogConfig{Level: "info", Format: "text"},
			},
		},
		{
			name: "retention disabled keeps no jobs",
			in:   Config{},
			want: Config{Log: LogConfig{Level: "info", Format: "text"}},
		},
		{
			name: "given jobs are kept",
			in: Config{
				Retention: RetentionConfig{Enabled: true, PurgeJobs: []PurgeJobConfig{{Interval: dur(time.Hour)}}},
				Log:       LogConfig{Level: "debug", Format: "json"},
			},
			want: Config{
				Retention: RetentionConfig{Enabled: true, PurgeJobs: []PurgeJobConfig{{Interval: dur(time.Hour)}}},
				Log:       LogConfig{Level: "debug", Format: "json"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.in
			got.ApplyDefaults()
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ApplyDefaults() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseServeFlags(t *testing.T) {
	file := writeConfig(t, "server_name: file.org\ndata_dir: /from/file\nhttp: {listen: \"127.0.0.1:9000\"}\nbackfill: {timeout: 2s}\n")
	fromFile := func(c *Config) {
		c.ServerName = "file.org"
		c.DataDir = "/from/file"
		c.HTTP.Listen = "127.0.0.1:9000"
		c.Backfill.Timeout = dur(2 * time.Second)
	}
	tests := []struct {
		name string
		args []string
		want func(c *Config) // applied to DefaultConfig()
	}{
		{"no flags gives the defaults", nil, func(c *Config) {}},
		{"-c", []string{"-c", file}, fromFile},
		{"--config", []string{"--config", file}, fromFile},
		{"-config", []string{"-config", file}, fromFile},
		{"--config=", []string{"--config=" + file}, fromFile},
		{"--c", []string{"--c", file}, fromFile},
		{"flags override the file", []string{"-c", file, "--data", "/from/flag", "--http", ":9100", "--server-name", "flag.org"},
			func(c *Config) {
				fromFile(c)
				c.DataDir = "/from/flag"
				c.HTTP.Listen = ":9100"
				c.ServerName = "flag.org"
			}},
		{"flags before -c still override", []string{"--data=/from/flag", "-c", file},
			func(c *Config) {
				fromFile(c)
				c.DataDir = "/from/flag"
			}},
		{"nats flags", []string{"--nats-url", "nats://n1:4222", "--nats-listen", ""},
			func(c *Config) {
				c.NATS.URL = "nats://n1:4222"
				c.NATS.Listen = ""
			}},
		{"empty flag value disables the bridge", []string{"-c", file, "--http="},
			func(c *Config) {
				fromFile(c)
				c.HTTP.Listen = ""
			}},
		{"log level", []string{"--log-level", "debug"}, func(c *Config) { c.Log.Level = "debug" }},
		{"memory limit", []string{"--memory-limit", "512MiB"}, func(c *Config) { c.MemoryLimit = 512 << 20 }},
		{"instance", []string{"--instance", "node-2"}, func(c *Config) { c.Cluster.Instance = "node-2" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags("serve", tt.args, io.Discard)
			if err != nil {
				t.Fatalf("parseFlags(serve, %q) error = %v", tt.args, err)
			}
			want := DefaultConfig()
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("parseFlags(serve, %q) = %+v\nwant %+v", tt.args, got, want)
			}
		})
	}
}

// TestParseServeFlags_ListsFileProblemsOneALine: the file's problems
// alone print as docs/CONFIG.md shows them, under the heading, one a line.
func TestParseServeFlags_ListsFileProblemsOneALine(t *testing.T) {
	bad := writeConfig(t, "server_name: \"\"\ntasks: {max_concurrent: 0}\n")
	_, err := parseFlags("serve", []string{"-c", bad}, io.Discard)
	want := "invalid configuration (" + bad + " and flags):\n  server_name: must not be empty\n  tasks.max_concurrent: must be at least 1, got 0"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
}

func TestParseServeFlags_Errors(t *testing.T) {
	bad := writeConfig(t, "server_name: \"\"\ntasks: {max_concurrent: 0}\n")
	typo := writeConfig(t, "sever_name: x\n")
	tests := []struct {
		name    string
		args    []string
		wantErr error
		want    []string
	}{
		{"help", []string{"-h"}, flag.ErrHelp, nil},
		{"unknown flag", []string{"--verbose"}, nil, []string{"flag provided but not defined: -verbose"}},
		{"stray argument", []string{"-c", "x.yaml", "extra"}, nil, []string{`unexpected argument "extra"`}},
		{"missing file", []string{"-c", filepath.Join(t.TempDir(), "none.yaml")}, os.ErrNotExist, nil},
		{"unknown key in the file", []string{"-c", typo}, nil, []string{"sever_name: unknown key"}},
		{"every problem after the flags", []string{"-c", bad, "--http", "nope", "--log-level", "loud"}, nil, []string{
			"invalid configuration (" + bad + " and flags):",
			"server_name: must not be empty",
			"tasks.max_concurrent: must be at least 1",
			`http.listen: "nope" is not host:port`,
			`log.level: "loud"`,
		}},
		{"bad memory limit flag, with the file's problems", []string{"-c", bad, "--memory-limit", "lots"}, nil, []string{
			`--memory-limit: invalid size "lots"`, "server_name: must not be empty"}},
		{"memory limit too small", []string{"--memory-limit", "1MiB"}, nil, []string{"memory_limit: 1MiB is below the least that makes sense, 64MiB"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseFlags("serve", tt.args, io.Discard)
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("parseFlags(serve, %q) error = %v, want %v", tt.args, err, tt.wantErr)
			}
			if tt.want != nil {
				wantAll(t, err, tt.want...)
			}
		})
	}

	t.Run("a flag fixes a bad file value", func(t *testing.T) {
		path := writeConfig(t, "server_name: \"\"\n")
		got, err := parseFlags("serve", []string{"-c", path, "--server-name", "fixed.org"}, io.Discard)
		if err != nil || got.ServerName != "fixed.org" {
			t.Errorf("parseFlags(serve) = %q, %v; want fixed.org, nil", got.ServerName, err)
		}
	})
	t.Run("usage names the flags", func(t *testing.T) {
		var out strings.Builder
		_, _ = parseFlags("serve", []string{"-h"}, &out)
		for _, name := range []string{"-c", "-config", "-data", "-server-name", "-nats-url", "-nats-listen", "-http", "-log-level", "-instance", "-memory-limit"} {
			if !strings.Contains(out.String(), name+" ") {
				t.Errorf("usage does not mention %s:\n%s", name, out.String())
			}
		}
	})
}

// TestNewLogger_LevelAndFormat: log.level is the lowest level written,
// log.format the form of the lines.
func TestNewLogger_LevelAndFormat(t *testing.T) {
	var out bytes.Buffer
	l := newLogger(LogConfig{Level: LogLevelWarn, Format: LogFormatJSON}, &out)
	l.Info("below the level")
	l.Warn("at the level", "k", 1)
	var line map[string]any
	if err := json.Unmarshal(out.Bytes(), &line); err != nil {
		t.Fatalf("log.format json wrote %q: %v", out.String(), err)
	}
	if line["msg"] != "at the level" || line["level"] != "WARN" || line["k"] != 1.0 {
		t.Fatalf("log level warn, format json wrote %q", out.String())
	}
	out.Reset()
	l = newLogger(LogConfig{Level: LogLevelDebug, Format: LogFormatText}, &out)
	l.Debug("detail", "k", 1)
	if !strings.Contains(out.String(), "level=DEBUG msg=detail k=1") {
		t.Fatalf("log level debug, format text wrote %q", out.String())
	}
}

// TestMemoryLimit_SizesTheProjector: memory_limit sets Go's soft memory
// limit of the process (0 leaves what GOMEMLIMIT set), and the projector,
// started after it, sizes its buffers from it: the limit / 512 KiB
// messages queued a partition, the limit / 64 KiB dirty pages a write
// transaction (docs/CONFIG.md). 2 GiB: far above what the tests use.
func TestMemoryLimit_SizesTheProjector(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	const limit = 2 << 30
	applyMemoryLimit(Config{MemoryLimit: limit})
	if got := debug.SetMemoryLimit(-1); got != limit {
		t.Fatalf("memory limit %d after applying memory_limit 2GiB", got)
	}
	applyMemoryLimit(Config{})
	if got := debug.SetMemoryLimit(-1); got != limit {
		t.Fatalf("memory_limit 0 changed the limit to %d", got)
	}
	m := startMain(t, func(c *Config) { c.MemoryLimit = limit })
	if q, d := m.Projector.QueueLen, m.Projector.MaxDirty; q != limit/(512<<10) || d != limit/(64<<10) {
		t.Fatalf("projector queue %d, dirty pages %d under 2GiB; want %d, %d", q, d, limit/(512<<10), limit/(64<<10))
	}
}

// TestRetentionConfig_CarriesEveryKey: the retention section reaches the
// reads and the purge jobs whole, a duration given as 0 (a value, as in
// Synapse) told apart from one left out.
func TestRetentionConfig_CarriesEveryKey(t *testing.T) {
	const dayMS, yearMS = int64(day / time.Millisecond), int64(year / time.Millisecond)
	got := retentionConfig(RetentionConfig{
		Enabled:            true,
		DefaultPolicy:      RetentionPolicy{MinLifetime: dur(day), MaxLifetime: dur(year)},
		AllowedLifetimeMin: dur(0),
		AllowedLifetimeMax: dur(2 * year),
		PurgeJobs: []PurgeJobConfig{
			{Interval: dur(12 * time.Hour), LongestMaxLifetime: dur(3 * day)},
			{Interval: dur(day), ShortestMaxLifetime: dur(0)},
		},
	})
	want := handlers.Retention{
		Enabled:    true,
		Default:    commands.RetentionPolicy{MinLifetime: dayMS, MaxLifetime: yearMS, MaxSet: true},
		AllowedMin: 0, HasAllowedMin: true,
		AllowedMax: 2 * yearMS, HasAllowedMax: true,
		Jobs: []handlers.RetentionJob{
			{Interval: 12 * time.Hour, Longest: 3 * dayMS, HasLongest: true},
			{Interval: day, HasShortest: true},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("retentionConfig(every key) = %+v\nwant %+v", got, want)
	}
	got = retentionConfig(RetentionConfig{Enabled: true, PurgeJobs: []PurgeJobConfig{{Interval: dur(day)}}})
	want = handlers.Retention{Enabled: true, Jobs: []handlers.RetentionJob{{Interval: day}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("retentionConfig(keys left out) = %+v\nwant %+v", got, want)
	}
}

func TestTokenConfig_String(t *testing.T) {
	c := DefaultConfig()
	c.Auth.Tokens = []TokenConfig{{Token: "s3cret", UserID: "@admin:localhost", Admin: true}}
	for _, verb := range []string{"%v", "%+v", "%s"} {
		if s := fmt.Sprintf(verb, c); strings.Contains(s, "s3cret") {
			t.Errorf("Sprintf(%s, cfg) leaks the token: %s", verb, s)
		}
	}
	if s := fmt.Sprint(c.Auth.Tokens[0]); !strings.Contains(s, "@admin:localhost") {
		t.Errorf("String() = %s, want the user ID", s)
	}
}

func TestConfig_YAMLRoundTrip(t *testing.T) {
	c := DefaultConfig()
	c.Auth.Tokens = []TokenConfig{{Token: "s3cret", UserID: "@admin:localhost", Admin: true}}
	c.ForgottenRoomRetentionPeriod = &commands.Duration{Duration: 30 * day, Set: true}
	c.Homeserver.Timeout = dur(1500 * time.Millisecond)
	c.MemoryLimit = 1536 << 20
	c.Retention = RetentionConfig{
		Enabled:            true,
		DefaultPolicy:      RetentionPolicy{MaxLifetime: dur(year)},
		AllowedLifetimeMax: dur(2 * year),
		PurgeJobs:          []PurgeJobConfig{{Interval: dur(12 * time.Hour), LongestMaxLifetime: dur(3 * day)}},
	}
	out, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"timeout: 10s", "timeout: 1500", "max_lifetime: 1y", "min_lifetime: null", "forgotten_room_retention_period: 30d", "memory_limit: 1536MiB"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("yaml.Marshal(cfg) does not contain %q:\n%s", want, out)
		}
	}
	got, err := LoadConfig(writeConfig(t, string(out)))
	if err != nil {
		t.Fatalf("LoadConfig(marshalled) error = %v\n%s", err, out)
	}
	if !reflect.DeepEqual(got, c) {
		t.Errorf("round trip = %+v\nwant %+v", got, c)
	}
}

func TestByteSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want ByteSize
		out  string
	}{
		{"", 0, "0B"}, {"0", 0, "0B"}, {"1048576", 1 << 20, "1MiB"}, {"512MiB", 512 << 20, "512MiB"},
		{"2GiB", 2 << 30, "2GiB"}, {" 3KiB ", 3 << 10, "3KiB"}, {"100B", 100, "100B"}, {"1536MiB", 1536 << 20, "1536MiB"},
	} {
		var b ByteSize
		if err := b.UnmarshalText([]byte(tt.in)); err != nil || b != tt.want || b.String() != tt.out {
			t.Errorf("ByteSize(%q) = %d %q, %v; want %d %q", tt.in, b, b.String(), err, tt.want, tt.out)
		}
	}
	for _, in := range []string{"lots", "-1MiB", "+1GiB", "-0", "1.5GiB", "12 MB", "3 KiB", "MiB", "9999999TiB"} {
		var b ByteSize
		if err := b.UnmarshalText([]byte(in)); err == nil || !strings.Contains(err.Error(), "invalid size") {
			t.Errorf("ByteSize(%q) = %d, %v; want an invalid size error", in, b, err)
		}
	}
	path := writeConfig(t, "memory_limit: 768MiB\n")
	c, err := LoadConfig(path)
	if err != nil || c.MemoryLimit != 768<<20 {
		t.Fatalf("memory_limit from the file: %v, %v", c.MemoryLimit, err)
	}
	if _, err := LoadConfig(writeConfig(t, "memory_limit: 1.5G\n")); err == nil || !strings.Contains(err.Error(), "memory_limit") {
		t.Fatalf("a bad memory_limit in the file: %v", err)
	}
}

// TestHelp_ExitsZeroWithTheCommandsName: -h on any command that takes
// the service's flags prints that command's usage, and the process exits
// 0, as for `scrollback help`.
func TestHelp_ExitsZeroWithTheCommandsName(t *testing.T) {
	for _, cmd := range []string{"serve", "bridge", "rebuild", "compact", "verify"} {
		var usage bytes.Buffer
		if _, err := parseFlags(cmd, []string{"-h"}, &usage); !errors.Is(err, flag.ErrHelp) {
			t.Fatalf("%s -h: %v, want flag.ErrHelp", cmd, err)
		}
		if want := "Usage: scrollback " + cmd + " "; !strings.HasPrefix(usage.String(), want) {
			t.Errorf("%s -h printed %q, want it to start with %q", cmd, usage.String(), want)
		}
		var out, errOut bytes.Buffer
		if code := run(context.Background(), []string{cmd, "-h"}, &out, &errOut); code != 0 {
			t.Errorf("scrollback %s -h exited %d (%s), want 0", cmd, code, errOut.String())
		}
	}
}

// TestParseFlags_AMistakeIsReportedOnce: a bad flag is reported once, by
// run ("scrollback: serve: flag provided but not defined: -nope (see
// scrollback serve -h)"); the flag package printed it too, with the
// whole usage, before run printed it again. -h still prints the usage.
func TestParseFlags_AMistakeIsReportedOnce(t *testing.T) {
	var out bytes.Buffer
	_, err := parseFlags("serve", []string{"--nope"}, &out)
	if err == nil || !strings.Contains(err.Error(), "-nope") || !strings.Contains(err.Error(), "scrollback serve -h") {
		t.Fatalf("err = %v; want the unknown flag named, and where to look", err)
	}
	if out.Len() != 0 {
		t.Errorf("parseFlags printed, besides returning the error:\n%s", out.String())
	}
	out.Reset()
	if _, err := parseFlags("serve", []string{"-h"}, &out); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "-nats-listen address") {
		t.Errorf("-h: %v, printed:\n%s", err, out.String())
	}
}

// TestHelp_ListsOnlyTheFlagsTheCommandReads: each command's -h lists
// the flags that command reads, and no other. They all shared serve's
// flag set, so that rebuild -h offered --http, --nats-listen, --instance
// and --log-level, which a rebuild never reads (found by a review).
// Flags a command does not list are refused, not ignored.
func TestHelp_ListsOnlyTheFlagsTheCommandReads(t *testing.T) {
	for cmd, want := range map[string][]string{
		"serve":   {"c", "config", "data", "http", "instance", "log-level", "memory-limit", "nats-listen", "nats-url", "server-name"},
		"bridge":  {"c", "config", "data", "http", "log-level", "memory-limit", "nats-url", "server-name"},
		"rebuild": {"c", "config", "data", "memory-limit", "nats-url", "server-name"},
		"verify":  {"c", "config", "data", "memory-limit", "nats-url", "server-name"},
		"compact": {"c", "config", "data", "nats-url"},
	} {
		var usage bytes.Buffer
		if _, err := parseFlags(cmd, []string{"-h"}, &usage); !errors.Is(err, flag.ErrHelp) {
			t.Fatalf("%s -h: %v, want flag.ErrHelp", cmd, err)
		}
		var listed []string
		for _, line := range strings.Split(usage.String(), "\n") {
			// PrintDefaults: "  -name value" or "  -name", the usage on
			// the next line, indented further.
			if name, ok := strings.CutPrefix(line, "  -"); ok {
				listed = append(listed, strings.Fields(name)[0])
			}
		}
		if !slices.Equal(listed, want) {
			t.Errorf("%s -h lists %v, want %v:\n%s", cmd, listed, want, usage.String())
		}
		if cmd == "serve" {
			continue
		}
		if _, err := parseFlags(cmd, []string{"--nats-listen", "127.0.0.1:4222"}, io.Discard); err == nil || !strings.Contains(err.Error(), "flag provided but not defined: -nats-listen") {
			t.Errorf("%s --nats-listen: %v, want it refused", cmd, err)
		}
	}
}

// FuzzDecodeConfig: any config file is either refused with an error or
// decoded; a decoded config written out as YAML again decodes to the
// same config (so that what an operator reads back, e.g. from a dump of
// the effective config, is what runs), and Validate never panics on it.
func FuzzDecodeConfig(f *testing.F) {
	for _, s := range []string{
		"",
		"# only a comment\n",
		"server_name: example.org\ndata_dir: /var/lib/scrollback\nnats:\n  url: nats://127.0.0.1:4222\n  subject_prefix: sb\n",
		"http:\n  listen: 127.0.0.1:8090\nauth:\n  tokens:\n    - token: secret\n      user_id: '@admin:example.org'\n      admin: true\n",
		"retention:\n  enabled: true\n  default_policy:\n    min_lifetime: 1d\n    max_lifetime: 86_400_000\n  purge_jobs:\n    - interval: 12h\n      shortest_max_lifetime: 0x10\n",
		"backfill:\n  timeout: 5s\n  backoff: null\nforgotten_room_retention_period: 28d\nmemory_limit: 512MiB\n",
		"cluster:\n  instance: a\n  lease: 2000\n  replicas: 3\ntasks:\n  max_concurrent: 4\nshutdown:\n  concurrency: 0.9\n",
		"base: &b\n  timeout: 1s\nbackfill:\n  <<: *b\n",
		"log: {level: debug, format: json}\n---\nlog: {}\n",
		"http:\n  lisen: x\n  listen: y\n  listen: z\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data string) {
		if len(data) > 4096 {
			return
		}
		cfg := DefaultConfig()
		if err := decodeConfig([]byte(data), &cfg); err != nil {
			return
		}
		cfg.ApplyDefaults()
		_ = cfg.Validate()
		out, err := yaml.Marshal(cfg)
		if err != nil {
			t.Fatalf("decoded config does not encode: %v", err)
		}
		again := DefaultConfig()
		if err := decodeConfig(out, &again); err != nil {
			t.Fatalf("config written again is refused: %v\n%s", err, out)
		}
		again.ApplyDefaults()
		// Compared as written: an empty list reads back as a nil one.
		if out2, err := yaml.Marshal(again); err != nil || !bytes.Equal(out, out2) {
			t.Fatalf("config %+v\nwritten as\n%s\nreads %+v\nwritten as\n%s", cfg, out, again, out2)
		}
	})
}

// FuzzByteSize: a size is refused or a non-negative number of bytes that
// String writes in a form UnmarshalText reads back to the same size.
func FuzzByteSize(f *testing.F) {
	for _, s := range []string{"", "0", "512MiB", " 1GiB ", "64KiB", "7B", "1TiB", "8388607TiB", "8388608TiB", "-1", "+5", "1.5GiB", "1 GiB", "0x10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var b ByteSize
		if err := b.UnmarshalText([]byte(s)); err != nil {
			return
		}
		if b < 0 {
			t.Fatalf("%q is %d bytes", s, b)
		}
		var back ByteSize
		if err := back.UnmarshalText([]byte(b.String())); err != nil || back != b {
			t.Fatalf("%q -> %d -> %q -> %d, %v", s, b, b.String(), back, err)
		}
	})
}

// TestBridge_AppliesMemoryLimit: `scrollback bridge` sets the process's
// soft memory limit from memory_limit, and from --memory-limit over it,
// as serve does (it read both and ignored them).
func TestBridge_AppliesMemoryLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	logger := slog.Default()
	t.Cleanup(func() { slog.SetDefault(logger) }) // the bridge makes its logger the default
	n := testenv.NewNATS(t)
	file := writeConfig(t, "memory_limit: 1536MiB\n")
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the bridge starts, then stops at once
	for _, tt := range []struct {
		name string
		args []string
		want int64
	}{
		{"memory_limit", []string{"-c", file}, 1536 << 20},
		{"--memory-limit", []string{"-c", file, "--memory-limit", "2GiB"}, 2 << 30},
	} {
		debug.SetMemoryLimit(math.MaxInt64) // none
		args := append([]string{"bridge", "--nats-url", n.URL, "--http", "127.0.0.1:0", "--data", t.TempDir()}, tt.args...)
		var out, errOut testenv.Buffer
		if code := run(ctx, args, &out, &errOut); code != 0 {
			t.Fatalf("scrollback %q exited %d: %s", args, code, errOut.String())
		}
		if !strings.Contains(errOut.String(), "scrollback bridge started") {
			t.Fatalf("scrollback %q did not start the bridge: %s", args, errOut.String())
		}
		if got := debug.SetMemoryLimit(-1); got != tt.want {
			t.Errorf("bridge with %s: memory limit = %d, want %d", tt.name, got, tt.want)
		}
	}
}

// TestConfig_Validate_HTTPTLSNeedsListen: http.tls with http.listen ""
// (no HTTP bridge) is an error naming both keys; it was ignored, and the
// operator believed the bridge served HTTPS.
func TestConfig_Validate_HTTPTLSNeedsListen(t *testing.T) {
	tls := writeConfig(t, "http:\n  listen: 127.0.0.1:8443\n  tls: {cert: /etc/sb/cert.pem, key: /etc/sb/key.pem}\n")
	tlsNoListen := writeConfig(t, "http:\n  listen: \"\"\n  tls: {cert: /etc/sb/cert.pem, key: /etc/sb/key.pem}\n")
	const want = `http.tls: set while http.listen is "" (no HTTP bridge)`
	tests := []struct {
		name    string
		args    []string
		wantErr string // "" = valid
	}{
		{"tls with listen", []string{"-c", tls}, ""},
		{"no bridge, no tls", []string{"--http="}, ""},
		{"tls without listen in the file", []string{"-c", tlsNoListen}, want},
		{"--http= turns the bridge off under tls", []string{"-c", tls, "--http="}, want},
		{"--http turns it on again", []string{"-c", tlsNoListen, "--http", ":8443"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseFlags("serve", tt.args, io.Discard)
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("parseFlags(serve, %q) error = %v, want nil", tt.args, err)
				}
				return
			}
			wantAll(t, err, tt.wantErr, "set http.listen", "remove http.tls")
		})
	}
}

// TestConfig_Validate_NATSTLSNeedsListen: nats.tls configures the
// embedded server's client listener; with nats.listen "" (in-process
// clients only) and no nats.url there is no listener, and the settings
// were ignored without a word, as http.tls's were without http.listen.
// With nats.url they stay ignored, as documented.
func TestConfig_Validate_NATSTLSNeedsListen(t *testing.T) {
	c := DefaultConfig()
	c.NATS.TLS = TLSConfig{Cert: "/etc/sb/cert.pem", Key: "/etc/sb/key.pem"}
	if err := c.Validate(); err != nil {
		t.Fatalf("nats.tls with nats.listen: %v", err)
	}
	c.NATS.Listen = ""
	wantAll(t, c.Validate(), `nats.tls: set while nats.listen is "" (no client listener)`, "set nats.listen", "remove nats.tls")
	c.NATS.URL = "nats://hub:4222"
	if err := c.Validate(); err != nil {
		t.Errorf("nats.tls with nats.url (ignored, as documented): %v", err)
	}
}

// TestConfig_Validate_ReservedSubjectPrefix: a subject prefix NATS
// reserves ($JS, $SYS, $KV and every other $ subject, the reply inboxes
// _INBOX, the server's reply subjects _R_ and _GR_) is refused at start;
// it was accepted, and the log's subjects shared those of JetStream's API
// or of replies. Names merely like them are fine.
func TestConfig_Validate_ReservedSubjectPrefix(t *testing.T) {
	for _, prefix := range []string{"$JS", "$SYS", "$KV", "$O", "$SRV", "$G", "$", "$sb", "_INBOX", "_INBOX_sb", "_R_", "_GR_"} {
		c := DefaultConfig()
		c.NATS.SubjectPrefix = prefix
		wantAll(t, c.Validate(), fmt.Sprintf("nats.subject_prefix: %q is reserved by NATS", prefix))
	}
	for _, prefix := range []string{"sb", "s$", "inbox", "_inbox", "INBOX", "_R", "GR_", "sb_INBOX"} {
		c := DefaultConfig()
		c.NATS.SubjectPrefix = prefix
		if err := c.Validate(); err != nil {
			t.Errorf("nats.subject_prefix %q: Validate() = %v, want nil", prefix, err)
		}
	}
}

// TestRun_ReservedPrefixOnTheCommandLine: `seed --prefix` and `bench
// --target-prefix` name the service's nats.subject_prefix, and refuse the
// prefixes NATS reserves as the config does, with the same words, as a
// mistake on the command line (exit 2). They took them: seed published
// its rooms under $JS or _INBOX, bench sent its requests there.
func TestRun_ReservedPrefixOnTheCommandLine(t *testing.T) {
	for _, prefix := range []string{"$JS", "$", "_INBOX", "_INBOX_sb", "_R_", "_GR_"} {
		want := fmt.Sprintf("%q is reserved by NATS", prefix)
		// Nothing listens on port 1: a prefix let through fails there, exit 1.
		var out, errOut bytes.Buffer
		args := []string{"seed", "--nats-url", "nats://127.0.0.1:1", "--prefix", prefix}
		if code := run(context.Background(), args, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "--prefix "+want) {
			t.Errorf("scrollback %q exited %d (%s), want 2 and %q", args, code, strings.TrimSpace(errOut.String()), "--prefix "+want)
		}
		// bench is run only through its flag parser: one let through
		// would run the benchmarks.
		_, err := parseBenchFlags([]string{"--target-prefix", prefix}, io.Discard)
		if ue := (*usageError)(nil); !errors.As(err, &ue) || !strings.Contains(err.Error(), "target-prefix: "+want) {
			t.Errorf("bench --target-prefix %q: err = %v, want a usage error saying %q", prefix, err, "target-prefix: "+want)
		}
	}
	if _, err := parseBenchFlags([]string{"--target-prefix", "sb_INBOX"}, io.Discard); err != nil {
		t.Errorf("bench --target-prefix sb_INBOX: %v", err)
	}
}

// TestConfig_Validate_StreamNameForAnExternalNATS: with nats.url the
// service keeps its partitions' leases in the key-value bucket
// <stream>_owners, whose name JetStream takes only of letters, digits,
// '-' and '_'; a stream name with another character passed validation
// and failed at start, after connecting. The embedded server keeps no
// leases, and takes such a name as before.
func TestConfig_Validate_StreamNameForAnExternalNATS(t *testing.T) {
	c := DefaultConfig()
	c.NATS.URL = "nats://127.0.0.1:4222"
	c.NATS.Stream = "SCROLL+BACK"
	wantAll(t, c.Validate(), `nats.stream: "SCROLL+BACK" cannot name the leases bucket SCROLL+BACK_owners`)
	c.NATS.URL = ""
	if err := c.Validate(); err != nil {
		t.Errorf("embedded, nats.stream %q: Validate() = %v, want nil", c.NATS.Stream, err)
	}
	c.NATS.URL, c.NATS.Stream = "nats://127.0.0.1:4222", "Scroll-back_2"
	if err := c.Validate(); err != nil {
		t.Errorf("nats.stream %q: Validate() = %v, want nil", c.NATS.Stream, err)
	}
}

// TestRun_UsageErrorsExitTwo: a mistake on the command line (an unknown
// flag, a flag value that does not parse, or for seed and bench, whose
// flags are all their settings, one out of range; an argument where none
// is taken) exits 2, as Go's flag package does; every other error,
// an invalid configuration (file and flags checked together) included,
// exits 1, and -h exits 0.
func TestRun_UsageErrorsExitTwo(t *testing.T) {
	bad := writeConfig(t, "server_name: \"\"\n")
	tests := []struct {
		args []string
		want int
	}{
		{[]string{"serve", "--verbose"}, 2},
		{[]string{"serve", "-c", bad, "extra"}, 2},
		{[]string{"serve", "--memory-limit", "lots"}, 2},
		{[]string{"serve", "-c", bad, "--memory-limit", "lots"}, 2},
		{[]string{"bridge", "--nope"}, 2},
		{[]string{"rebuild", "--data"}, 2},
		{[]string{"compact", "now"}, 2},
		{[]string{"verify", "-x"}, 2},
		{[]string{"seed", "--rooms", "x"}, 2},
		{[]string{"seed", "--rooms", "0"}, 2},
		{[]string{"seed", "extra"}, 2},
		{[]string{"bench", "--events", "x"}, 2},
		{[]string{"bench", "--scenario", "nope"}, 2},
		{[]string{"bench", "extra"}, 2},

		{[]string{"serve", "-c", filepath.Join(t.TempDir(), "none.yaml")}, 1},
		{[]string{"serve", "-c", bad}, 1},
		{[]string{"serve", "--memory-limit", "1MiB"}, 1},
		{[]string{"verify", "--data", filepath.Join(t.TempDir(), "none")}, 1},

		{[]string{"seed", "-h"}, 0},
		{[]string{"bench", "-h"}, 0},
		{[]string{"serve", "--help"}, 0},
	}
	for _, tt := range tests {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), tt.args, &out, &errOut); code != tt.want {
			t.Errorf("scrollback %q exited %d (%s), want %d", tt.args, code, strings.TrimSpace(errOut.String()), tt.want)
		}
	}
}

// TestConfig_YAML11Booleans: every boolean key reads what Synapse's
// PyYAML (YAML 1.1) reads as a boolean: true, false, yes, no, on, off,
// each in lower case, capitalised or upper case, and any case of them
// under an explicit !!bool, so that a retention: section copied from a
// homeserver.yaml means the same here. What PyYAML reads as a string is
// an error: a quoted "yes", y and n (YAML 1.1's spec has them, PyYAML
// does not). The YAML decoder alone took "yes" and y as true, and
// refused !!bool yes.
func TestConfig_YAML11Booleans(t *testing.T) {
	keys := []struct {
		name, doc string
		get       func(Config) bool
	}{
		{"retention.enabled", "retention:\n  enabled: %s\n", func(c Config) bool { return bool(c.Retention.Enabled) }},
		{"auth.tokens[0].admin", "auth:\n  tokens:\n    - token: a-long-enough-token\n      user_id: \"@a:test\"\n      admin: %s\n",
			func(c Config) bool { return len(c.Auth.Tokens) == 1 && bool(c.Auth.Tokens[0].Admin) }},
	}
	read := map[string]bool{
		"true": true, "True": true, "TRUE": true, "yes": true, "Yes": true, "YES": true, "on": true, "On": true, "ON": true,
		"false": false, "False": false, "FALSE": false, "no": false, "No": false, "NO": false, "off": false, "Off": false, "OFF": false,
		"!!bool yes": true, "!!bool oN": true, "!!bool \"yes\"": true, "!!bool Off": false,
	}
	refused := map[string]string{
		`"yes"`:     `want true or false, got the string "yes": a quoted (or !!str) value is a string`,
		`'on'`:      `want true or false, got the string "on": a quoted (or !!str) value is a string`,
		`"false"`:   `want true or false, got the string "false": a quoted (or !!str) value is a string`,
		`!!str yes`: `want true or false, got the string "yes": a quoted (or !!str) value is a string`,
		"y":         `want true or false (or yes, no, on, off), got "y"`,
		"N":         `want true or false (or yes, no, on, off), got "N"`,
		"yEs":       `want true or false (or yes, no, on, off), got "yEs"`,
		"1":         `want true or false (or yes, no, on, off), got "1"`,
		"!!bool y":  `want true or false (or yes, no, on, off), got "y"`,
	}
	for _, k := range keys {
		for value, want := range read {
			for _, start := range []bool{false, true} { // a value read, not the default kept
				cfg := DefaultConfig()
				cfg.Retention.Enabled = Bool(start)
				if err := decodeConfig([]byte(fmt.Sprintf(k.doc, value)), &cfg); err != nil || k.get(cfg) != want {
					t.Errorf("%s: %s: got %v (%v), want %v", k.name, value, k.get(cfg), err, want)
				}
			}
		}
		for value, want := range refused {
			cfg := DefaultConfig()
			err := decodeConfig([]byte(fmt.Sprintf(k.doc, value)), &cfg)
			if err == nil || !strings.Contains(err.Error(), k.name+": "+want) {
				t.Errorf("%s: %s: err = %v, want one saying %q", k.name, value, err, k.name+": "+want)
			}
		}
	}
}
