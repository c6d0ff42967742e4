# Each target does its own set-up on a fresh Debian machine: apt packages for a virtual
# screen (Xvfb + Mesa, napari needs real OpenGL), a venv, torch pinned to the CPU wheel, the package.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
APT_PACKAGES := xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libxkbcommon-x11-0 \
	libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
	libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libdbus-1-3 libfontconfig1 \
	libturbojpeg0
STAMP := $(VENV)/.installed
# Keep BLAS/torch from oversubscribing 2 cores when pytest and Qt share them.
export OMP_NUM_THREADS ?= 2

.PHONY: test mutate demo demo-headless lock bench bench-gpu bench-dfa-gpu bench-dfa-quick setup system-deps clean

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		echo "Installing system packages:$$missing"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The lock: the exact version of every package the two commands install (Python 3.11, Linux
# x86-64), used as pip constraints so that no upstream release changes a fresh machine's install.
LOCK := requirements/lock.txt
PIP_VERSION := 26.3
PIP_TOOLS := pip-tools==7.7.0

$(STAMP): pyproject.toml $(LOCK)
	@$(or $(PYTHON),python3) -c "import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 'The lock ($(LOCK)) is for Python 3.11; this python3 is ' + sys.version.split()[0] + ': make PYTHON=python3.11 ...')"
	test -x $(PY) || $(or $(PYTHON),python3) -m venv $(VENV)
	$(PIP) install -q pip==$(PIP_VERSION)
	$(PIP) install -q -c $(LOCK) torch==2.13.0
	$(PIP) install -q -c $(LOCK) -e ".[test]"
	touch $(STAMP)

setup: system-deps $(STAMP)

# Re-resolves every package to the newest versions pyproject.toml allows, with pip's own resolver
# and configuration (pip-compile), so the lock keeps the CPU torch wheel this machine's pip finds.
# tests/project/test_lock.py fails when pyproject.toml and the lock disagree.
lock:
	test -x $(PY) || $(or $(PYTHON),python3) -m venv $(VENV)
	$(PIP) install -q pip==$(PIP_VERSION) $(PIP_TOOLS)
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --upgrade --extra test --strip-extras --no-emit-index-url \
		--no-emit-find-links --output-file $(LOCK) pyproject.toml
	$(PY) tools/tidy_lock.py $(LOCK)

test: setup
	xvfb-run -a -s "-screen 0 1600x1200x24" $(PY) -m pytest -q $(PYTEST_ARGS)

# Mutation testing of the modules that hold the README's promises (docs/testing.md; 19 min on 2
# cores): mutmut, configured in pyproject.toml, driven and scored by tools/mutate.py. Fails when a
# mutant survives that is not listed as equivalent in tools/equivalent_mutants.txt. One promise:
# make mutate MUTATE_ARGS="--only guard".
mutate: setup
	$(PIP) install -q --no-deps -r requirements/mutate.txt
	$(PY) tools/mutate.py --markdown runs/mutate.md $(MUTATE_ARGS)

# Opens napari on the bundled sample slide with the demo model; headless machines get the headless path.
demo: setup
	@if [ -n "$$DISPLAY" ] || [ -n "$$WAYLAND_DISPLAY" ]; then \
		$(VENV)/bin/napari-dfa demo; \
	else \
		echo "No display found (DISPLAY is unset): running the headless demo instead."; \
		echo "On a desktop, 'make demo' opens napari; here, 'napari-dfa demo --headless' segments the sample."; \
		$(VENV)/bin/napari-dfa demo --headless --out out/demo --overwrite; \
	fi

bench: setup
	$(PY) benchmarks/run_all.py

# Inference on one GPU (benchmarks/bench_gpu.py, < 5 min): model alone vs pipeline, peak GPU memory,
# JPEG decoding on the host's cores, fine-tune steps/s; Markdown table + JSON in BENCH_GPU_DIR ($OUT
# when set). Needs no venv: `make bench-gpu PY=python3` runs it with any Python that has torch. All
# cores (the 2-thread cap above is for the shared CPU of the test machine).
BENCH_GPU_DIR ?= $(or $(OUT),runs/bench-gpu)
bench-gpu:
	OMP_NUM_THREADS=$$(nproc) PYTHONPATH=src $(PY) benchmarks/bench_gpu.py --out $(BENCH_GPU_DIR)

# Does the learned class bias help? 10 paired seeds x none/dfa/dfa-out/difficulty/logit_adjust,
# sized for one GPU (~10 min on an H200; training/gpu_bench.toml says how). Stops at once without CUDA.
BENCH_GPU_OUT ?= runs/bench-dfa-gpu
bench-dfa-gpu: setup
	@$(PY) -c "import sys, torch; ok = torch.cuda.is_available(); print('CUDA:', torch.cuda.get_device_name(0) if ok else 'NOT AVAILABLE (torch ' + torch.__version__ + ')'); sys.exit(0 if ok else 1)" \
		|| { echo "bench-dfa-gpu needs a CUDA GPU and a CUDA build of torch; on a CPU run 'make bench-dfa-quick'" >&2; exit 1; }
	$(VENV)/bin/napari-dfa bench --config training/gpu_bench.toml --device cuda --out $(BENCH_GPU_OUT) \
		--markdown $(BENCH_GPU_OUT).md

# The same comparison as a CPU smoke run (tiny model, 64 px, 2 epochs, 2 seeds): checks the path, not the answer.
bench-dfa-quick: setup
	$(VENV)/bin/napari-dfa bench --quick --device cpu --out runs/bench-dfa-quick --markdown runs/bench-dfa-quick.md

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache

# napari-dfa beside MONAI and TIAToolbox on the same model, slide and region (benchmarks/bench_anchor.py).
# TIAToolbox pins torch and pulls torchvision (no CPU-only wheels on PyPI), so it gets its own venv
# (~6.5 GB, created once). Run it on a quiet machine; `BENCH_ANCHOR_ARGS=--check` checks agreement only.
TIA_VENV ?= .venv-tia
$(TIA_VENV)/.installed:
	test -x $(TIA_VENV)/bin/python || python3 -m venv $(TIA_VENV)
	$(TIA_VENV)/bin/pip install -q --upgrade pip
	$(TIA_VENV)/bin/pip install -q torch==2.12.1 torchvision==0.27.1 tiatoolbox safetensors psutil
	touch $@

.PHONY: bench-anchor
# MONAI comes with `setup` (the test extra includes the bench extra).
bench-anchor: setup $(TIA_VENV)/.installed
	BENCH_TIA_VENV=$(TIA_VENV) $(PY) benchmarks/bench_anchor.py $(BENCH_ANCHOR_ARGS)
