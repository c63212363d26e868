# Tollgate: `make serve` runs the gateway on the real Gemma 3 270M; `make test` runs everything
# (JetStream's own server included); `make test-real-llama-cpp` adds llama.cpp's server.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev
REDIS_PORT := 6379
# Real upstream servers, each in an environment of its own (their pins clash with ours).
JETSTREAM_ENV := .venvs/jetstream
LLAMA_CPP_ENV := .venvs/llama-cpp
# The OpenAI Node SDK that the e2e suite drives, as its lock file pins it.
NODE_CLIENTS := tests/e2e/clients/node
STAMP_NODE := $(NODE_CLIENTS)/node_modules/.installed
# llama.cpp for any x86-64 with AVX2: a native build may use AVX-512 or AMX that the CPU
# advertises but its hypervisor has not enabled, and die of SIGILL.
LLAMA_CPP_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_CPP_TESTS := tests/adapters/test_contract.py tests/e2e/test_backend_contract.py \
	tests/adapters/test_llama_cpp.py

.PHONY: serve test lint bench install install-dev redis prometheus clean \
	real-jetstream real-llama-cpp test-real-llama-cpp node-clients

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(STAMP_DEV): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(STAMP_RUN)

install: $(STAMP_RUN)
install-dev: $(STAMP_DEV)

# google-jetstream 0.2.2 and the dependencies of its day, every one pinned (~2 min, 2.6 GB).
$(JETSTREAM_ENV)/.installed: tests/real/jetstream-requirements.txt
	rm -rf $(JETSTREAM_ENV)
	$(PYTHON) -m venv $(JETSTREAM_ENV)
	$(JETSTREAM_ENV)/bin/pip install --quiet --no-deps -r $<
	touch $@

# llama-cpp-python builds llama.cpp from source (16 min of CPU), so not part of `make test`.
$(LLAMA_CPP_ENV)/.installed: tests/real/llama-cpp-requirements.txt
	rm -rf $(LLAMA_CPP_ENV)
	$(PYTHON) -m venv $(LLAMA_CPP_ENV)
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" $(LLAMA_CPP_ENV)/bin/pip install --quiet --no-cache-dir \
	  --no-deps -r $<
	touch $@

# node and npm from Debian only where the machine has no node; `npm ci` installs the lock
# file's exact versions from the npm registry (and wipes node_modules, stamp included, first).
$(STAMP_NODE): $(NODE_CLIENTS)/package.json $(NODE_CLIENTS)/package-lock.json
	@command -v node >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	cd $(NODE_CLIENTS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

node-clients: $(STAMP_NODE)
real-jetstream: $(JETSTREAM_ENV)/.installed
real-llama-cpp: $(LLAMA_CPP_ENV)/.installed

serve: $(STAMP_RUN)
	$(BIN)/tollgate serve

# The tests also start their own servers and a Redis Cluster: redis-server and redis-cli both.
redis:
	@if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools; \
	fi
	@if ! redis-cli -h 127.0.0.1 -p $(REDIS_PORT) ping >/dev/null 2>&1; then \
	  redis-server --daemonize yes --bind 127.0.0.1 --port $(REDIS_PORT) --save "" --appendonly no; \
	  for i in $$(seq 50); do redis-cli -h 127.0.0.1 -p $(REDIS_PORT) ping >/dev/null 2>&1 && break; sleep 0.1; done; \
	fi
	@redis-cli -h 127.0.0.1 -p $(REDIS_PORT) ping

prometheus:
	@command -v prometheus >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; }

test: $(STAMP_DEV) $(JETSTREAM_ENV)/.installed $(STAMP_NODE) redis prometheus
	$(BIN)/python -m pytest

# The contract suites (adapters, and through the gateway) and the server's own quirks, against
# llama-cpp-python's real server.
test-real-llama-cpp: $(STAMP_DEV) $(LLAMA_CPP_ENV)/.installed
	$(BIN)/python -m pytest $(LLAMA_CPP_TESTS) -k llama_cpp_real

lint: $(STAMP_DEV)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP_DEV)
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	$(BIN)/tollgate bench overhead

clean:
	rm -rf $(VENV) .venvs .pytest_cache .mypy_cache .ruff_cache $(NODE_CLIENTS)/node_modules
