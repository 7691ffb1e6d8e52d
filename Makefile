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

RUFF := $(VENV)/bin/ruff

.PHONY: setup checkout-path system-deps test-system-deps lint format test quickstart benchmark benchmark-table demo clean sync-checkpoints

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
	$(MAKE) --no-print-directory checkout-path
	touch $@

# The wheel holds `modeling_stop` only (see pyproject.toml); a .pth file puts this checkout on the venv's sys.path
# so that `training`, `benchmarks` and `demo` import from it, whatever the working directory or script path.
checkout-path:
	@echo "$(CURDIR)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/stop_video_checkout.pth"

.cache/sample_videos/.done:
	$(PY) -m training.fetch_samples --output_dir .cache/sample_videos

setup: $(VENV)/.installed

DATA ?= data/synthetic
OUT ?= outputs/stop-synthetic
ACCELERATE := $(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no

$(DATA)/test/metadata.jsonl: | $(VENV)/.installed
	$(PY) -m training.synthetic --output_dir $(DATA)

# The main job: synthetic benchmark -> train STOP from the embedded backbone -> evaluate against frozen CLIP.
quickstart: setup $(DATA)/test/metadata.jsonl
	@test -f $(OUT)/model.safetensors || $(ACCELERATE) training/train.py --dataset_name $(DATA) --output_dir $(OUT)
	@test -f $(OUT)/eval_test.json || $(PY) -m benchmarks.run_eval --model_name_or_path $(OUT) \
	  --dataset_name $(DATA) --split test --output_json $(OUT)/eval_test.json > /dev/null
	@test -f outputs/eval_clip_meanP.json || $(PY) -m benchmarks.run_eval --model_name_or_path checkpoints/clip-synthetic \
	  --baseline meanP --dataset_name $(DATA) --split test --output_json outputs/eval_clip_meanP.json > /dev/null
	@$(PY) -m benchmarks.compare outputs/eval_clip_meanP.json $(OUT)/eval_test.json
	@echo ""
	@echo "Model folder: $(OUT) (AutoModel.from_pretrained('$(OUT)', trust_remote_code=True))"
	@echo "Open the demo on it:  $(PY) demo/app.py --model $(OUT) --gallery checkpoints/stop-synthetic/gallery"

# The results table of README / MODEL_CARD (every row trained with the same recipe and seeds). Resumable per row
# and seed; `ROWS="default default-dgl-only"` restricts it, `make benchmark-table` writes the table of the runs
# finished so far without training anything.
SEEDS ?= 0 1 2
ROWS ?=
benchmark: setup $(DATA)/test/metadata.jsonl
	$(PY) -m benchmarks.run_table --dataset_name $(DATA) --output_dir outputs/table --seeds $(SEEDS) $(if $(ROWS),--rows $(ROWS))

benchmark-table: setup
	$(PY) -m benchmarks.run_table --dataset_name $(DATA) --output_dir outputs/table --seeds $(SEEDS) $(if $(ROWS),--rows $(ROWS)) --finished_only

# The real CLIP BPE vocabulary (from the open_clip_torch wheel on PyPI) for the tokenizer test.
.cache/clip_bpe/bpe_simple_vocab_16e6.txt.gz: | $(VENV)/.installed
	$(PY) -c "from training.tokenizer import fetch_bpe_file; fetch_bpe_file()"

# Lint and format check (ruff, configured in pyproject.toml); `make test` runs them before the suite.
lint: setup
	$(RUFF) check .
	$(RUFF) format --check .

# Rewrite the tree the way `make lint` wants it (import order, safe fixes, formatting).
format: setup
	$(RUFF) check --fix .
	$(RUFF) format .

test: setup lint test-system-deps .cache/sample_videos/.done .cache/clip_bpe/bpe_simple_vocab_16e6.txt.gz
	$(PY) -m pytest tests

# The code inside checkpoints/*/ is a copy of the package: refresh every .py a folder holds from modeling_stop/.
# Code copies inside committed model folders are generated from the package, never edited.
sync-checkpoints:
	$(PYTHON) utils/sync_checkpoints.py

demo: setup
	$(PY) demo/app.py

clean:
	rm -rf $(VENV) .cache
