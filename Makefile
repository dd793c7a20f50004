# scrollback: the two commands a newcomer needs are `make run` and `make test`.

GO          ?= go
BIN         := $(CURDIR)/bin
STATICCHECK := $(BIN)/staticcheck
STATICCHECK_VERSION := v0.8.2
FUZZTIME    ?= 20000x
FUZZMIN     ?= 2s
PKGS        := ./...

.PHONY: run test fmt-check vet staticcheck unit fuzz soak boundary bench build seed clean tidy-check

## run: the service on its embedded defaults (NATS on 127.0.0.1:4222, HTTP on 127.0.0.1:8090, data in ./data)
run:
	$(GO) run ./cmd/scrollback serve

## build: bin/scrollback
build:
	$(GO) build -o $(BIN)/scrollback ./cmd/scrollback

## test: everything CI runs: gofmt, a tidy go.mod, go vet, staticcheck, the domain boundary, go test -race, short fuzzing
test: fmt-check tidy-check vet staticcheck boundary unit fuzz

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

$(STATICCHECK):
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

staticcheck: $(STATICCHECK)
	$(STATICCHECK) $(PKGS)

## boundary: the domain package imports no NATS, bbolt or net/http
boundary:
	@bad=$$($(GO) list -deps ./commands | grep -E '^(github.com/nats-io/|go.etcd.io/bbolt|net/http$$)' || true); \
	if [ -n "$$bad" ]; then echo "commands depends on: $$bad"; exit 1; fi

## unit: every test with the race detector, then the cluster tests without
## it (testenv.NewCluster skips under -race: nats-server v2.15.2's clustered
## streams race with themselves, see testenv/cluster.go)
unit:
	$(GO) test -race -count=1 -timeout 15m $(PKGS)
	$(GO) test -count=1 -timeout 5m -run 'Cluster' ./testenv ./cmd/scrollback

## fuzz: every fuzz target for FUZZTIME (20000 inputs each in CI, a few seconds; e.g. make fuzz FUZZTIME=5m for a long run). A count, not a duration: time-limited runs sometimes end with a spurious "context deadline exceeded" on a loaded machine. FUZZMIN bounds the minimising of each new interesting input (Go's default, 60 s, left timed runs fuzzing for a fraction of their time).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
		for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/func //'); do \
			echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
			$(GO) test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=$(FUZZMIN) $$pkg; \
		done; \
	done

## soak: the fault-injection tests (kill -9 during purges, shutdowns, backfill, ingest; NATS restarts; hung workers) looping over their crash points with random timings for SOAK each (e.g. make soak SOAK=10m), the service built with -race
SOAK ?= 10m
soak:
	SCROLLBACK_SOAK=$(SOAK) $(GO) test -race -count=1 -timeout 0 -v -run 'Fault|Crash' ./cmd/scrollback/

## bench: the project's benchmark (ingest, /messages over NATS and HTTP, the floor)
bench:
	$(GO) run ./cmd/scrollback bench

## seed: synthetic rooms into a running service (make run in another shell)
seed:
	$(GO) run ./cmd/scrollback seed

tidy-check:
	$(GO) mod tidy -diff

clean:
	rm -rf $(BIN)
