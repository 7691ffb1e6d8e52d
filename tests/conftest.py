import os
from pathlib import Path

# Tests never reach the Hub: fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"
SAMPLE_VIDEOS = REPO_ROOT / ".cache" / "sample_videos"


@pytest.fixture(scope="session")
def official_fixture_dir():
    path = SHARED_FIXTURES / "official-stop-transformer"
    if not (path / "state.safetensors").exists():
        pytest.skip(f"parity fixture not found at {path} (only present beside the project's CI checkout)")
    return path
