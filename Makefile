# blmilter: build, test, lint, benchmark.
GO ?= go
STATICCHECK ?= $(shell $(GO) env GOPATH)/bin/staticcheck

.PHONY: all build test unit deps vet fmt-check lint bench deb deb-test

all: build

build:
	$(GO) build -o blmilter ./cmd/blmilter

# Everything, as CI runs it: installs what the end-to-end tests need
# (Postfix, Sendmail, rbldnsd, NSD, Knot, dnsperf, rspamd, policyd-weight,
# swaks, Chromium),
# then runs every test with the race detector, the end-to-end ones (-tags e2e)
# included. A missing package is a failure, never a skip; the load and zone
# speed comparisons run one short round, so their whole path is exercised
# (e2e/load.sh and e2e/zoneperf.sh run them at full size for figures).
test: deps
	$(GO) test -race -count=1 -timeout 15m -tags e2e ./...
	$(GO) -C contrib/deb test -count=1 ./...

# The Go tests without the end-to-end ones: nothing to install.
unit:
	$(GO) test -race -count=1 ./...

deps:
	./e2e/deps.sh

vet:
	$(GO) vet ./...
	$(GO) vet -tags e2e ./...
	$(GO) -C contrib/deb vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# staticcheck over every file, the end-to-end tests included; any finding
# fails. .ci/run installs the pinned version.
lint:
	$(STATICCHECK) ./...
	$(STATICCHECK) -tags e2e ./...
	cd contrib/deb && $(STATICCHECK) ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./cache/ ./iplist/ ./dnsbl/ ./policy/ ./milter/ ./policyd/ ./web/ ./store/ ./zone/

# The Debian package, built with nfpm by contrib/deb (a module of its own,
# so nfpm's dependencies stay out of blmilter's): a static binary with the
# version from git (VERSION=v1.2.3 to give one), into dist/.
DIST ?= $(CURDIR)/dist
deb:
	$(GO) -C contrib/deb run . -root $(CURDIR) -out $(DIST) $(if $(VERSION),-version $(VERSION))

# Installs the package with dpkg, checks it, and purges it: root only, and
# it changes the machine (CI runs it).
deb-test:
	contrib/deb/test.sh
