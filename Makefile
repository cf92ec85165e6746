# The two commands of the README: `make run` (set up + whole pipeline) and `make test`
# (set up + test suite). EXTRA=gpu installs the GPU builds of ONNX Runtime and FAISS.
PYTHON ?= python3
VENV ?= .venv
EXTRA ?= cpu
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
# The builds of the other extra: both provide the same modules, so only one may be installed.
OTHER_BUILDS_cpu := onnxruntime-gpu faiss-gpu
OTHER_BUILDS_gpu := onnxruntime faiss-cpu

.PHONY: run test setup

setup: $(VENV)/.installed-$(EXTRA)

$(VENV)/.installed-$(EXTRA): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip uninstall --disable-pip-version-check -q -y $(OTHER_BUILDS_$(EXTRA)) 2>/dev/null || true
	$(BIN)/pip install --disable-pip-version-check -q -e '.[$(EXTRA),test]'
	rm -f $(VENV)/.installed-*
	touch $@

run: setup
	dvc repro
	facekd results

test: setup
	python -m pytest -q
