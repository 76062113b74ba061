# Set-up and checks. Works from a fresh clone, as root on Debian (as CI runs it) or as a user with sudo.
#   make serve   the API on :8080 with the embedded SQLite database under var/
#   make test    lint + type check + the whole test suite
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8080
BIND ?= 0.0.0.0:$(PORT)

# Debian packages beyond Python, installed when missing: what the test suite needs (PostgreSQL 15
# server binaries: the tests start a throwaway cluster of their own, see benchmarks/harness/pg.py), and what the
# benchmark uses (wrk; it falls back to a Python client).
# qemu-system-x86 and binutils: tests/benchmarks/test_measure.py builds a tiny guest and boots it under QEMU.
# openssl: tests/integration/test_hostile_clients.py makes a self-signed certificate for TLS.
# libvirt-daemon, libvirt-daemon-driver-qemu and libvirt-clients: tests/benchmarks/test_measure_libvirt.py
# starts it through a private libvirtd and virtlogd (these packages enable or start no service).
TEST_SYSTEM_PACKAGES ?= postgresql-15 qemu-system-x86 binutils openssl libvirt-daemon libvirt-daemon-driver-qemu \
	libvirt-clients
# What benchmarks/measure/build-virtqemud.sh needs to build virtqemud from Debian's libvirt source
# package: the tools, and the -dev packages of the libraries Debian's libvirt.so.0 links.
LIBVIRT_BUILD_PACKAGES ?= dpkg-dev meson ninja-build gcc pkg-config perl python3 libxml2-utils xsltproc \
	rpcsvc-proto libglib2.0-dev libxml2-dev libacl1-dev libattr1-dev libaudit-dev libcap-ng-dev \
	libgnutls28-dev libnl-3-dev libnl-route-3-dev libnuma-dev libselinux1-dev libapparmor-dev \
	libyajl-dev libssh2-1-dev libssh-dev libsasl2-dev libtirpc-dev libcurl4-gnutls-dev systemtap-sdt-dev
# A deb-src twin of the Debian sources apt already uses (for apt-get source libvirt).
DEB_SRC_LIST ?= /etc/apt/sources.list.d/overhead-service-deb-src.sources
BENCH_SYSTEM_PACKAGES ?= wrk
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# $(call apt-install-missing,PACKAGES): apt-get install those of PACKAGES that dpkg does not know.
define apt-install-missing
missing="$$(for p in $(1); do dpkg -s "$$p" >/dev/null 2>&1 || echo "$$p"; done)"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:" $$missing; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

.PHONY: help serve test lint bench bench-ingest init-db venv install install-test system-deps bench-deps clean
.PHONY: libvirt-build-deps libvirt-virtqemud measure-libvirt

help:
	@echo "make serve   run overhead-service on $(BIND) (SQLite under var/)"
	@echo "make test    install test dependencies, then ruff, mypy and pytest"
	@echo "make lint    ruff check, ruff format --check, mypy, lint-imports (no system packages)"
	@echo "make test-fast  the tests that need no PostgreSQL, gunicorn or QEMU"
	@echo "make bench   run python -m benchmarks.bench_overhead"
	@echo "make bench-ingest  run python -m benchmarks.bench_ingest (SQLite and a throwaway PostgreSQL)"
	@echo "make bench-load    run python -m benchmarks.bench_load (/v1/overhead vs /healthz at 1..64 connections)"
	@echo "make bench-admission  run python -m benchmarks.bench_admission (the VMI webhook over HTTPS at 1 and 8 connections)"
	@echo "make init-db create or upgrade the database schema (DATABASE_URL; serve does it too)"
	@echo "make image   build the container image with docker or podman (IMAGE=...; not run in CI)"
	@echo "make measure boot QEMU guests and measure them (MEASURE_CONFIG, MEASURE_ARGS; see benchmarks/measure)"
	@echo "make libvirt-virtqemud  build virtqemud from Debian's libvirt source package (cached)"
	@echo "make measure-libvirt    measure QEMU, virtqemud and virtlogd as KubeVirt runs them (LIBVIRT_CONFIG)"

# --- environments -----------------------------------------------------------------------------

$(BIN)/python:
	@# Debian's own python3 needs python3-venv for ensurepip; other Pythons (pyenv, images) have it.
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV) && \
		$(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends python3-venv && \
		$(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python

# Stamps: reinstall only when the project's metadata changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test system-deps

system-deps:
	@$(call apt-install-missing,$(TEST_SYSTEM_PACKAGES))

bench-deps:
	-@$(call apt-install-missing,$(BENCH_SYSTEM_PACKAGES))

# --- tasks ------------------------------------------------------------------------------------

# The default SQLite database lives in var/; the service never creates directories by itself.
# BIND (default 0.0.0.0:$(PORT), every interface) or PORT choose where it listens:
#   make serve BIND=127.0.0.1:9090
serve: install
	mkdir -p var
	$(BIN)/overhead-service serve --bind $(BIND)

# Lint needs only the Python tools, no system packages.
lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint system-deps
	$(BIN)/pytest

# The inner loop: everything but the tests that start PostgreSQL, gunicorn or QEMU (see pytest markers).
.PHONY: test-fast
test-fast: $(VENV)/.installed-test
	$(BIN)/pytest -q -m "not postgresql and not gunicorn and not qemu"

bench: install bench-deps
	$(BIN)/python -m benchmarks.bench_overhead

bench-ingest: install-test
	$(BIN)/python -m benchmarks.bench_ingest

# Load at rising concurrency (wrk when installed, else a built-in client); bounded by --max-seconds.
.PHONY: bench-load
bench-load: install bench-deps
	$(BIN)/python -m benchmarks.bench_load $(BENCH_LOAD_ARGS)

# The admission webhook's latency over HTTPS at 1 and 8 connections, next to /healthz (needs the
# test extras: cryptography for the throwaway CA, jsonpatch for the in-process comparison).
.PHONY: bench-admission
bench-admission: install-test
	$(BIN)/python -m benchmarks.bench_admission $(BENCH_ADMISSION_ARGS)

# Real QEMU/KVM measurements (benchmarks/measure): e.g.
#   make measure MEASURE_CONFIG=benchmarks/measure/grid-small.yaml MEASURE_ARGS='--url http://svc:8080 --token T'
MEASURE_CONFIG ?= benchmarks/measure/smoke.yaml
MEASURE_ARGS ?= --out var/measure-$(basename $(notdir $(MEASURE_CONFIG))).jsonl
.PHONY: measure
measure: install system-deps
	mkdir -p var
	$(BIN)/python -m benchmarks.measure --config $(MEASURE_CONFIG) $(MEASURE_ARGS)

# The libvirt path (benchmarks/measure/README.md): virtqemud built from Debian's source package,
# cached under ~/.cache/overhead-service/libvirt-<version>/ and reused; about 2 minutes on 2 CPUs.
libvirt-build-deps:
	@if ! apt-get source --print-uris libvirt >/dev/null 2>&1; then \
		echo "adding $(DEB_SRC_LIST) (deb-src for the Debian mirror apt uses)"; \
		if [ -f /etc/apt/sources.list.d/debian.sources ]; then \
			sed -e 's/^Types: deb$$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources | \
				$(SUDO) tee $(DEB_SRC_LIST) >/dev/null; \
		else \
			grep -h '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' | \
				$(SUDO) tee $(DEB_SRC_LIST:.sources=.list) >/dev/null; \
		fi; \
		$(SUDO) apt-get update -qq; \
	fi
	@$(call apt-install-missing,$(LIBVIRT_BUILD_PACKAGES) libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)

libvirt-virtqemud: libvirt-build-deps
	bash benchmarks/measure/build-virtqemud.sh

LIBVIRT_CONFIG ?= benchmarks/measure/libvirt-smoke.yaml
LIBVIRT_ARGS ?= --out var/measure-$(basename $(notdir $(LIBVIRT_CONFIG))).jsonl
measure-libvirt: install system-deps libvirt-virtqemud
	$(BIN)/python -m benchmarks.measure libvirt --config $(LIBVIRT_CONFIG) --daemon virtqemud $(LIBVIRT_ARGS)

init-db: install
	mkdir -p var
	$(BIN)/overhead-service init-db

# The container image (Dockerfile; docs/operations.md). Needs docker or podman, which CI does not
# have: tests/integration/test_image.py checks the Dockerfile statically and runs the service as the image would.
CONTAINER_ENGINE ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null || echo docker)
IMAGE ?= overhead-service:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
.PHONY: image
image:
	$(CONTAINER_ENGINE) build -t $(IMAGE) .

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
