# chatd: `make run` serves https://127.0.0.1:8443, `make test` runs every test.
CARGO ?= cargo
JOBS ?= 2
CONFIG ?= server.conf
SCENARIO ?= all
BENCH_QUICK ?= 0

.PHONY: build run test unit lint fmt certs clean bench

build:
	$(CARGO) build --release -j$(JOBS)

# Certificates and the dev JWT secret are created by chatd itself when missing.
run: build
	./target/release/chatd --config $(CONFIG)

# Formatting, clippy, then unit and end-to-end tests.
test: lint
	$(CARGO) test -j$(JOBS) --workspace --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy -j$(JOBS) --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Benchmarks: chatd against the reference peers (bench/README.md).
# SCENARIO=fanout runs one scenario; BENCH_QUICK=1 uses small, short settings.
bench:
	SCENARIO=$(SCENARIO) BENCH_QUICK=$(BENCH_QUICK) JOBS=$(JOBS) CARGO=$(CARGO) bench/run.sh

# Regenerate the self-signed certificate with openssl instead (ECDSA P-256).
certs:
	mkdir -p certs
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-days 825 -subj "/CN=localhost" \
		-addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
		-keyout certs/key.pem -out certs/cert.pem
	chmod 600 certs/key.pem
	@echo "new certificate in certs/; send SIGHUP to a running chatd to load it"

clean:
	$(CARGO) clean
	rm -f chatd.db chatd.db-wal chatd.db-shm
