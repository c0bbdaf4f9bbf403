# Developer and CI entry points. Everything runs from .venv, never the system Python.
#   make venv | chromium | test | demo | fleet | bench | bench-decide | bench-proxy | bench-prove | bench-profile | bench-instructions | soak | fuzz | clean
#   make test PYTEST_ARGS='-k decision -x'     make venv PYTHON=python3.12
#   make fleet REPLICAS=3 FLEET_ARGS='--check'  make soak SOAK_MINUTES=30  make soak SOAK_ARGS='--floods off'
#   make bench QUICK=1        make bench-proxy BENCH_ARGS='--targets direct,gateway --concurrency 16'

PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
PYTEST_ARGS ?=
REPLICAS    ?= 2
FLEET_ARGS  ?=
SOAK_MINUTES ?= 10
SOAK_ARGS   ?=
SOAK_OUT    ?= soak.json
BENCH_ARGS  ?=
BENCH_PROVE_ARGS ?=
QUICK       ?=

FUZZ_SECONDS ?= 300

.PHONY: venv chromium test demo fleet bench bench-decide bench-proxy bench-prove bench-profile bench-instructions soak fuzz clean

venv: $(VENV)/.installed

# The stamp makes `make venv` a no-op until pyproject.toml changes; the install is editable, so
# edits under gateway/ never need a reinstall. The version check runs before anything is created.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "error: Python >= 3.11 required; '$(PYTHON)' is: $$($(PYTHON) --version 2>&1)." \
	       "Use e.g. make venv PYTHON=python3.12" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# The tests need a real Redis: scripts/with-redis uses $REDIS_URL if set, otherwise starts a
# private throwaway server (fetching redis-server if needed) and exports REDIS_URL to pytest.
# The console's browser tests (tests/browser/) drive Debian's headless Chromium through Playwright
# (never `playwright install`, which downloads browsers): installed as root with apt-get when
# missing; without it those tests are skipped, saying why.
chromium:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >&2; } \
	  || echo "make: no /usr/bin/chromium (apt-get install chromium as root): the browser tests will be skipped" >&2

test: venv chromium
	VENV=$(CURDIR)/$(VENV) scripts/with-redis $(BIN)/python -m pytest $(PYTEST_ARGS)

demo: venv
	$(BIN)/gateway demo

# The docker-compose topology as local processes (devtools/fleet_local.py): Redis (a private one from
# scripts/with-redis, or $$REDIS_URL), REPLICAS gateway replicas behind nginx (installed from Debian's
# packages as root if missing, else a Python load balancer), the demo upstream, and Prometheus if
# installed. Prints where each listens and curl commands through the load balancer; Ctrl-C stops all.
fleet: venv
	VENV=$(CURDIR)/$(VENV) scripts/with-redis $(BIN)/python -m devtools.fleet_local --replicas $(REPLICAS) $(FLEET_ARGS)

# Benchmarks (bench/README.md). QUICK=1: about a minute each. bench-proxy runs under scripts/with-redis
# (the fleet targets need Redis) and, as root, installs Debian's wrk and nginx when missing; without
# them it falls back to the aiohttp load generator and skips the nginx target, saying so.
bench: bench-decide bench-proxy bench-prove

bench-decide: venv
	$(BIN)/python bench/decide.py $(if $(QUICK),--quick)

bench-proxy: venv
	VENV=$(CURDIR)/$(VENV) scripts/with-redis $(BIN)/python bench/proxy.py $(if $(QUICK),--quick) $(BENCH_ARGS)

# `gateway policy prove` on the shipped bundle (goal 2 s) and on a generated 10^4-org, 10^3-model,
# 50-breakpoint one (goal 60 s): bench/prove.py, a few seconds.
bench-prove: venv
	$(BIN)/python bench/prove.py $(BENCH_PROVE_ARGS)

# Where the gateway's time goes under load (py-spy, installed into the venv on first use).
bench-profile: venv
	$(BIN)/python -c 'import shutil, sys; sys.exit(shutil.which("py-spy", path="$(BIN)") is None)' \
	  || $(BIN)/python -m pip install -q py-spy
	VENV=$(CURDIR)/$(VENV) scripts/with-redis $(BIN)/python bench/hotspots.py $(BENCH_ARGS)

# Instructions per request under valgrind's callgrind (bench/instructions.py): unmoved by the
# machine's speed or load, for comparing two versions of the request path. About a minute.
bench-instructions: venv
	VENV=$(CURDIR)/$(VENV) scripts/with-redis $(BIN)/python bench/instructions.py $(BENCH_ARGS)

# The fleet above for SOAK_MINUTES at steady load (205 req/s on average) while Redis restarts and
# pauses, the upstream stalls and drops connections, the policy reloads every 30 s and, every
# other 20 s, one cheap client floods it (bench/soak.py, bench/soak_floods.py, bench/SOAK.md).
# Issue 12's check is SOAK_MINUTES=30. Prints its figures, writes them to SOAK_OUT and fails if an
# acceptance check fails. It runs a Redis of its own (scripts/with-redis only provides the
# binary), to restart it.
soak: venv
	VENV=$(CURDIR)/$(VENV) scripts/with-redis $(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES) \
	  --out $(SOAK_OUT) $(SOAK_ARGS)

# Coverage-guided fuzzing of the body parser (tests/fuzz/README.md), bounded by FUZZ_SECONDS; not
# part of `make test`. atheris is installed into .venv on first use; the corpus stays in .fuzz-corpus/.
fuzz: venv
	$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/python -m pip install -q atheris
	$(BIN)/python tests/fuzz/atheris_body.py .fuzz-corpus/body -max_total_time=$(FUZZ_SECONDS) \
	  -rss_limit_mb=2048 -timeout=20 -print_final_stats=1

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .fuzz-corpus build dist *.egg-info
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
