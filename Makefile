# `make quickstart` = the main job; `make test` = the test suite. Both set themselves up in .venv/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build that this project is tested with; override (e.g. TORCH_SPEC=torch) to keep CUDA.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export GRADIO_ANALYTICS_ENABLED := False
export TOKENIZERS_PARALLELISM := false

.PHONY: setup system-deps test-system-deps test quickstart benchmark demo clean

# System packages through apt when we are root (CI, containers); otherwise a warning and the fallbacks.
APT_INSTALL = if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null); \
	  else echo "warning: $(1) missing and not root: $(2)"; fi

# FFmpeg's shared libraries for torchcodec (PyAV bundles its own and is the fallback).
system-deps:
	@command -v ffmpeg >/dev/null 2>&1 || { $(call APT_INSTALL,ffmpeg,torchcodec disabled - PyAV is used); }

# Chromium for the demo's page test (skipped without it).
test-system-deps: system-deps
	@command -v chromium >/dev/null 2>&1 || { $(call APT_INSTALL,chromium,the demo screenshot test is skipped); }

$(VENV)/.installed: pyproject.toml
	$(MAKE) system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[video,demo,dev]"
	touch $@

.cache/sample_videos/.done:
	$(PY) -m training.fetch_samples --output_dir .cache/sample_videos

setup: $(VENV)/.installed

test: setup test-system-deps .cache/sample_videos/.done
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) .cache
