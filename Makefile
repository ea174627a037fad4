# tollgate: `make run` starts the demo, `make test` runs everything CI runs.
# Both install the system packages the build needs when they are missing
# (Debian/Ubuntu; as root or through sudo).

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# command:package pairs the build and tests need; pingora's zlib-ng needs cmake,
# the JWT tests generate keys with openssl, the monitoring tests run Prometheus,
# the deploy tests check the unit and the cloud-init file with their own tools, the
# full-disk tests mount a small tmpfs in a mount namespace of their own, the
# basic-auth tests write their users file with Apache's htpasswd, the ACME
# tests run Pebble and pebble-challtestsrv (one package), the cluster tests Redis,
# the discovery tests dnsmasq, the status page test headless Chromium, the PROXY
# protocol tests HAProxy (the real sender of PROXY headers in front of tollgate),
# the Debian package tests Debian's own tools: dpkg-shlibdeps (dpkg-dev) for
# the package's dependencies, lintian, logrotate (the package's rule run for
# real), man (the installed page) and zsh (its completions).
BUILD_NEEDS := cmake:cmake cc:build-essential c++:g++ pkg-config:pkg-config python3:python3 openssl:openssl \
  promtool:prometheus systemd-analyze:systemd cloud-init:cloud-init unshare:util-linux mount:mount \
  htpasswd:apache2-utils pebble:pebble redis-server:redis-server dnsmasq:dnsmasq-base \
  chromium:chromium haproxy:haproxy dpkg-shlibdeps:dpkg-dev lintian:lintian logrotate:logrotate \
  man:man-db zsh:zsh

# cargo-deb (crates.io) packs the .deb of `make deb`; installed when missing.
CARGO_DEB_VERSION := 3.8.0

# Backend frameworks the tests run for real (Flask, Starlette on uvicorn), from
# PyPI into a virtualenv of their own; Debian's python3 needs python3-venv for it.
PYTHON_ENV := target/python
PY_REQUIREMENTS := tests/python/requirements.txt

.PHONY: all deps deb-tools pydeps build run run-gateway test lint deb dist bench path-table clean

all: build

deps:
	@missing=""; for need in $(BUILD_NEEDS); do \
	  command -v "$${need%%:*}" >/dev/null 2>&1 || missing="$$missing $${need##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@command -v $(CARGO) >/dev/null 2>&1 || { \
	  echo "cargo is missing: install the Rust toolchain (rustup, stable channel) and run make again"; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

deb-tools: deps
	@$(CARGO) deb --version >/dev/null 2>&1 || { \
	  echo "installing: cargo-deb $(CARGO_DEB_VERSION)"; \
	  $(CARGO) install --locked --quiet cargo-deb --version $(CARGO_DEB_VERSION); }

pydeps: $(PYTHON_ENV)/installed

$(PYTHON_ENV)/installed: $(PY_REQUIREMENTS)
	@python3 -m venv $(PYTHON_ENV) 2>/dev/null || { \
	  echo "installing: python3-venv"; rm -rf $(PYTHON_ENV); \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && \
	  python3 -m venv $(PYTHON_ENV); }
	$(PYTHON_ENV)/bin/pip install --quiet --disable-pip-version-check -r $(PY_REQUIREMENTS)
	touch $@

build: deps
	$(CARGO) build --release --bins --examples

run: build
	@bash examples/run_demo.sh tollgate

run-gateway: build pydeps
	@bash examples/run_demo.sh gateway

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# The tests run the demo backend, an example: built first, where they find it.
# tests/debian_package.rs packs the binary under test with cargo-deb.
test: lint pydeps deb-tools
	$(CARGO) build --examples
	$(CARGO) test --all-targets

# Criterion micro-benchmarks, then tollgate side by side with nginx and HAProxy
# (bench/run.py installs nginx, haproxy and wrk when missing), and in (a) and (e)
# with the floor, a bare pingora proxy (examples/pingora_floor.rs, built by
# `build` with the other examples); the table is printed and kept in
# bench/results/latest.txt, with latest.json and latest.svg. Scenario (m) runs
# the tests' Python gRPC server, from the virtualenv of `pydeps`, and h2load.
# Last, the PROXY protocol A/B: instructions per request under callgrind,
# proxy_protocol v2 against off, on keep-alive connections
# (bench/proxy_protocol.py), and the same for request IDs and tracing at 1%
# and 100% sampling against both off (bench/tracing.py). Then HTTP/3 against
# HTTP/2 on the same route:
# requests/s and tollgate's CPU per request, h2load against the tests' aioquic
# client (bench/http3.py, bench/results/http3.txt).
BENCH_ARGS ?=
bench: build pydeps
	$(CARGO) bench --bench hot_path
	mkdir -p bench/results
	bash -o pipefail -c 'python3 bench/run.py --tollgate target/release/tollgate $(BENCH_ARGS) | tee bench/results/latest.txt'
	python3 bench/proxy_protocol.py --tollgate target/release/tollgate
	python3 bench/tracing.py --tollgate target/release/tollgate
	python3 bench/http3.py --tollgate target/release/tollgate

# The README's request-path table: tollgate and nginx in front of Flask and Starlette.
path-table: build pydeps
	@command -v nginx >/dev/null 2>&1 || command -v /usr/sbin/nginx >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx; }
	$(PYTHON_ENV)/bin/python3 tests/python/compare_nginx.py

# The Debian package target/debian/tollgate_VERSION_ARCH.deb (deploy/debian/):
# the binary in /usr/bin, the systemd unit, /etc/tollgate/tollgate.yaml, the
# tollgate user and its directories, logrotate, the man page, completions.
deb: build deb-tools
	sh deploy/debian/build.sh target/release/tollgate target/debian

# A release in dist/: the .deb, a tarball (binary, systemd unit, EC2,
# Prometheus, Grafana files), their .sha256 files and RELEASE-NOTES.md.
dist: build deb-tools
	sh deploy/dist.sh target/release/tollgate dist

clean:
	$(CARGO) clean
