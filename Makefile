# gwlbproxy — see README.md.
GO       ?= go
BIN      ?= bin
FUZZTIME ?= 30s
# Flags passed to `make run`: the embedded defaults, no AWS account needed.
# Off EC2 --gwlb-cidrs is required: GENEVE is accepted from loopback only,
# a simulator on this host (gwlbsim).
RUN_FLAGS ?= --geneve-addr 0.0.0.0:6081 --admin-addr 127.0.0.1:8080 --state-dir ./state --access-log - --gwlb-cidrs 127.0.0.0/8

.PHONY: all build test vet bench bench-rig fuzz run demo clean deb rpm

all: build

# Static binaries (no libc needed on the instance), stamped with the git
# version that `gwlbproxy version` prints.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X main.version=$(VERSION)

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/gwlbproxy ./cmd/gwlbproxy
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/gwlbsim ./cmd/gwlbsim

# Packages for the instances, written to $(BIN)/: the static gwlbproxy, its
# systemd unit, a default policy and flags file, the sysctl drop-in for ICMP
# echo (deploy/nfpm.yaml lists them; docs/deploy.md#packages), built with
# nfpm as a library (deploy/mkpkg). GOARCH=arm64 make rpm: for Graviton.
# The version is VERSION as dpkg and rpm accept it: v1.2.3-4-gabc becomes
# 1.2.3.4.gabc, an untagged commit 0.0.0+git.<commit>.
PKG_VERSION ?= $(shell echo '$(VERSION)' | sed -E -e 's/^v([0-9])/\1/' -e '/^[0-9]+\.[0-9]+/!s/^/0.0.0+git./' -e 's/-/./g')

deb rpm: build
	GWLBPROXY_ARCH=$$($(GO) env GOARCH) GWLBPROXY_BIN='$(BIN)' GWLBPROXY_VERSION='$(PKG_VERSION)' \
	  GOOS= GOARCH= $(GO) run ./deploy/mkpkg -config deploy/nfpm.yaml -packager $@ -target $(BIN)

# The whole test suite: formatting, vet, and every test with the race
# detector. Privileged tests run when root and skip (saying why) otherwise;
# with GWLBPROXY_PRIVILEGED_TESTS=1 (.ci/run sets it as root) they fail
# instead of skipping.
# The tests that count allocations or measure memory skip under the race
# detector, which allocates on its own (the files built with !race, and
# raceEnabled); make test runs them once more without it, or CI would
# never run them (TestOneHostRoundTripAllocations went stale so).
NORACE_TESTS = Alloc|TestTCPIdleFlowCost|TestUDPIdleFlowCostNetns|TestHeldEstimateMatchesMemory|TestHeldChargedInDestinationCheck|TestQUICSlowCheckZeroLengthFloodHeldBounded|TestQUICGateFlowMemory|TestAssemblerWaitingMemory|TestErrorsAsNet

test: vet
	@if [ "$$(id -u)" != 0 ]; then \
	  if [ "$${GWLBPROXY_PRIVILEGED_TESTS:-}" = 1 ]; then \
	    echo "test: not root, and GWLBPROXY_PRIVILEGED_TESTS=1: privileged tests (namespaces, TUN, raw return path, port-53 DNS) will FAIL"; \
	  else \
	    echo "test: not root: privileged tests (namespaces, TUN, raw return path, port-53 DNS) will skip; run as root for the whole suite"; \
	  fi; \
	fi
	$(GO) test -race -timeout 25m ./...
	$(GO) test -count=1 -timeout 10m -run '$(NORACE_TESTS)' ./...

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

# Benchmarks: ratios (through the appliance vs. direct, vs. Squid) come from
# one run. BenchmarkVsSquid needs Debian's squid-openssl: installed here when
# root, skipped (saying why) otherwise.
bench:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && ! dpkg -s squid-openssl >/dev/null 2>&1; then \
	  echo "bench: installing squid-openssl for BenchmarkVsSquid"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq squid-openssl >/dev/null; } \
	    || echo "bench: squid-openssl not installed; BenchmarkVsSquid will skip"; \
	  systemctl disable --now squid >/dev/null 2>&1 || true; \
	fi
	$(GO) test -run '^$$' -bench . -benchmem -timeout 30m ./...

# Bulk TCP with real kernels at both ends (root; internal/benchrig): Debian's
# iperf3 in a client namespace, gwlbsim --tun, the appliance in its own
# namespace, an iperf3 server in a third; one flow and 4, each way, and
# kernel routing between the same namespaces in the same run. Prints
# Gbit/s, CPU seconds per GiB, the ratio to kernel routing. Installs iperf3
# (and ethtool, for --napi-threads) when missing. BENCH_RIG_FLAGS: e.g.
# --runs 3 --time 10s.
BENCH_RIG_FLAGS ?=
bench-rig: build
	@if [ "$$(id -u)" != 0 ]; then echo "bench-rig needs root: it creates network namespaces, veth pairs and a TUN device"; exit 1; fi
	@if ! command -v iperf3 >/dev/null 2>&1; then \
	  echo "bench-rig: installing iperf3"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null; \
	  systemctl disable --now iperf3 >/dev/null 2>&1 || true; \
	fi
	@if echo "$(BENCH_RIG_FLAGS)" | grep -q -- '--napi-threads' && ! command -v ethtool >/dev/null 2>&1; then \
	  echo "bench-rig: installing ethtool"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ethtool >/dev/null; \
	fi
	$(GO) run ./internal/benchrig --bin $(BIN) $(BENCH_RIG_FLAGS)

# Runs every fuzz target for FUZZTIME each. Go before 1.27 can end a run
# that found nothing with a bare "context deadline exceeded" as FUZZTIME
# runs out (golang/go#75804, a race in its fuzzing coordinator): such a
# run, with no failing input written, is run once more; a second one, or
# any failing input, fails.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; \
	    for try in 1 2; do \
	      if $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 200x $$pkg >fuzz.out 2>&1; then \
	        tail -n 2 fuzz.out; break; fi; \
	      cat fuzz.out; \
	      if [ $$try = 1 ] && grep -q 'context deadline exceeded' fuzz.out && ! grep -q 'Failing input written' fuzz.out; then \
	        echo "== $$f: the coordinator's deadline race (golang/go#75804), no failing input: once more"; continue; fi; \
	      rm -f fuzz.out; exit 1; \
	    done; \
	  done; done; rm -f fuzz.out

run: build
	$(BIN)/gwlbproxy $(RUN_FLAGS)

# A real curl, dig and ping through the appliance in network namespaces (root).
demo: build
	bash cmd/gwlbsim/demo.sh

clean:
	rm -rf $(BIN)
