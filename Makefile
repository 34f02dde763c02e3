# chatd: `make run` serves https://127.0.0.1:8443, `make test` runs every test.
CARGO ?= cargo
JOBS ?= 2
CONFIG ?= server.conf
SCENARIO ?= all
BENCH_QUICK ?= 0

.PHONY: build run test test-postgres unit lint fmt certs clean web-test js-unit e2e e2e-browser \
	e2e-postgres bench attack fuzz soak soak-ci

# Browser tests: Debian's Chromium, driven by playwright-core from tests/e2e.
CHROMIUM ?= /usr/bin/chromium
TARGET_DIR = $(abspath $(or $(CARGO_TARGET_DIR),target))
E2E_DIR = tests/e2e

build:
	$(CARGO) build --release -j$(JOBS)

# Certificates and the dev JWT secret are created by chatd itself when missing.
run: build
	./target/release/chatd --config $(CONFIG)

# Formatting, clippy, then unit and end-to-end tests on SQLite, the end-to-end tests
# again on PostgreSQL, then the web client's tests on each.
test: lint
	CHATD_TEST_DATABASE=sqlite $(CARGO) test -j$(JOBS) --workspace --all-targets
	@$(MAKE) --no-print-directory test-postgres
	@$(MAKE) --no-print-directory web-test

# PostgreSQL runs: every test starts a server of its own from Debian's postgresql
# package (initdb in a temporary directory, a free loopback port or a Unix socket, a
# SCRAM password). Without the package they are skipped, saying so, unless CI=true or
# REQUIRE_ALL_TESTS=1 makes that a failure.
HAVE_POSTGRES = $(wildcard /usr/lib/postgresql/*/bin/postgres)
define postgres_missing
	if [ "$$CI" = true ] || [ "$$REQUIRE_ALL_TESTS" = 1 ]; then \
		echo "PostgreSQL tests FAILED: $(1) need PostgreSQL (Debian package postgresql; CI=true or REQUIRE_ALL_TESTS=1)" >&2; \
		exit 1; \
	fi; \
	echo "PostgreSQL tests SKIPPED: $(1) need PostgreSQL, which is not installed (Debian package postgresql; .ci/run installs it)"
endef

# The integration tests (tests/*.rs) with chatd on PostgreSQL; --workspace selects the
# same packages as the SQLite run, so the test binaries built there are reused.
test-postgres:
ifneq ($(HAVE_POSTGRES),)
	CHATD_TEST_DATABASE=postgres $(CARGO) test -j$(JOBS) --workspace --test '*'
else
	@$(call postgres_missing,the integration tests on PostgreSQL)
endif

# The browser tests need node, npm (to install playwright-core) and Chromium; without
# them they are skipped (the JS unit tests still run if node is there), unless
# E2E_REQUIRED=1 makes that a failure.
web-test:
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 && [ -x "$(CHROMIUM)" ]; then \
		$(MAKE) --no-print-directory e2e && $(MAKE) --no-print-directory e2e-postgres; \
	elif [ "$$E2E_REQUIRED" = 1 ]; then \
		echo "e2e browser tests FAILED: chromium, node or npm not found (E2E_REQUIRED=1)" >&2; \
		exit 1; \
	else \
		if command -v node >/dev/null 2>&1; then $(MAKE) --no-print-directory js-unit; fi; \
		echo "e2e browser tests SKIPPED: chromium, node or npm not found"; \
	fi

# Unit tests of the page's pure logic (public/js), no browser needed. The files are
# named: Node 22 and later no longer take a directory after --test.
js-unit:
	node --test --test-reporter=spec tests/js/*.test.mjs

# Builds chatd (debug), installs playwright-core if needed, runs the browser tests on
# E2E_DATABASE (sqlite, or postgres: a PostgreSQL per test chatd, see e2e-postgres).
# Screenshots go to $(TARGET_DIR)/e2e.
E2E_DATABASE ?= sqlite
e2e: js-unit e2e-browser

e2e-browser:
	$(CARGO) build -j$(JOBS)
	@[ -d $(E2E_DIR)/node_modules ] || (cd $(E2E_DIR) && npm ci --no-audit --no-fund --loglevel=error)
	E2E_DATABASE=$(E2E_DATABASE) E2E_CHATD_BIN=$(TARGET_DIR)/debug/chatd E2E_OUT=$(TARGET_DIR)/e2e \
		CHROMIUM=$(CHROMIUM) node --test --test-reporter=spec --test-concurrency=2 $(E2E_DIR)/*.test.mjs

# The browser tests again with chatd on PostgreSQL.
e2e-postgres:
ifneq ($(HAVE_POSTGRES),)
	@$(MAKE) --no-print-directory e2e-browser E2E_DATABASE=postgres
else
	@$(call postgres_missing,the browser tests on PostgreSQL)
endif

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy -j$(JOBS) --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Benchmarks: chatd against the reference peers (bench/README.md).
# SCENARIO=fanout runs one scenario; BENCH_QUICK=1 uses small, short settings.
bench:
	SCENARIO=$(SCENARIO) BENCH_QUICK=$(BENCH_QUICK) JOBS=$(JOBS) CARGO=$(CARGO) bench/run.sh

# A long run with churn (bench/README.md, soak): SOAK_CLIENTS clients connect, join and
# leave rooms, send, drop and resume for SOAK_SECS seconds, some misbehaving; fails on a
# lost or duplicated message, an unexpected close, an error logged, or memory,
# descriptors or gauges that grow or do not return to idle. soak-ci is a short one.
SOAK_SECS ?= 1800
SOAK_CLIENTS ?= 2000
soak:
	SOAK_SECS=$(SOAK_SECS) SOAK_CLIENTS=$(SOAK_CLIENTS) JOBS=$(JOBS) CARGO=$(CARGO) bench/soak.sh

soak-ci:
	SOAK_SECS=120 SOAK_CLIENTS=300 SOAK_ROOMS=20 SOAK_USERS=100 JOBS=$(JOBS) CARGO=$(CARGO) bench/soak.sh

# Attacks on the real chatd, each check with a PASS/FAIL line (docs/SECURITY.md):
# testssl.sh, slowhttptest, silent connections, WebSockets that stop reading, a full
# disk. Needs the Debian packages testssl.sh and slowhttptest, and root (a tmpfs in a
# mount namespace). ATTACKS="attack_slowloris ..." runs some of the checks only.
attack:
	CARGO=$(CARGO) JOBS=$(JOBS) tests/attack.sh

# Coverage-guided fuzzing (docs/SECURITY.md, Fuzzing): each target for FUZZ_SECS seconds, one at a
# time, one worker; installs the nightly toolchain and cargo-fuzz when missing. Not part
# of `make test`, which replays the committed corpus on stable instead.
FUZZ_SECS ?= 60
fuzz:
	FUZZ_SECS=$(FUZZ_SECS) JOBS=$(JOBS) CARGO=$(CARGO) fuzz/run.sh

# Regenerate the self-signed certificate with openssl instead (ECDSA P-256). The old
# files are removed and openssl runs under umask 077, so the key is 0600 from its first
# byte (openssl would keep the mode of a file it overwrites).
certs:
	mkdir -p certs
	rm -f certs/key.pem certs/cert.pem
	umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-days 397 -subj "/CN=localhost" \
		-addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
		-keyout certs/key.pem -out certs/cert.pem
	chmod 644 certs/cert.pem
	@echo "new certificate in certs/; send SIGHUP to a running chatd to load it"

clean:
	$(CARGO) clean
	rm -f chatd.db chatd.db-wal chatd.db-shm
