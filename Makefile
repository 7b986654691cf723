# blmilter: build, test, benchmark.
GO ?= go

.PHONY: all build test unit deps vet fmt-check bench

all: build

build:
	$(GO) build -o blmilter ./cmd/blmilter

# Everything: installs what the end-to-end tests need (Postfix, Sendmail,
# rbldnsd, NSD, Knot, dnsperf, swaks, Chromium) when it can, then runs every
# test with the race detector. BLMILTER_E2E=require makes a missing package a
# failure, not a skip; the load and zone speed comparisons run one short
# round, so their whole path is exercised (e2e/load.sh and e2e/zoneperf.sh
# run them at full size for figures).
test: deps
	BLMILTER_E2E=require BLMILTER_LOAD=1 BLMILTER_LOAD_N=300 BLMILTER_LOAD_ROUNDS=1 \
		BLMILTER_ZONEPERF=1 BLMILTER_ZONEPERF_N=10000 BLMILTER_ZONEPERF_SECONDS=2 BLMILTER_ZONEPERF_ROUNDS=1 \
		$(GO) test -race -count=1 -timeout 15m ./...

# The Go tests alone; the end-to-end ones skip and say why when their
# packages are missing.
unit:
	$(GO) test -race -count=1 ./...

deps:
	./e2e/deps.sh

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./cache/ ./iplist/ ./dnsbl/ ./policy/ ./milter/ ./policyd/ ./web/ ./store/ ./zone/
