"""The README's inference snippet, run verbatim against the embedded trained model, so the documentation cannot rot."""

import os
import re
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT

TRAINED = REPO_ROOT / "checkpoints" / "stop-synthetic"


def _snippet(name: str) -> str:
    text = (REPO_ROOT / "README.md").read_text()
    match = re.search(rf"<!-- snippet:{name} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README has no snippet:{name} block"
    return match.group(1)


def test_inference_snippet_is_at_most_five_lines_and_runs_verbatim(tmp_path):
    if not (TRAINED / "model.safetensors").exists():
        pytest.skip(f"{TRAINED} not present")
    from training.synthetic import write_benchmark

    code = _snippet("inference")
    assert len([line for line in code.splitlines() if line.strip()]) <= 5
    # The snippet reads `clip.mp4` and `checkpoints/stop-synthetic` relative to the working directory.
    data = tmp_path / "data"
    write_benchmark(data, seed=7, num_train=0, num_validation=0, num_test=2, num_frames=16, size=64)
    (tmp_path / "clip.mp4").symlink_to(next((data / "test").glob("*.mp4")))
    (tmp_path / "checkpoints").symlink_to(REPO_ROOT / "checkpoints")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tensor" in out.stdout  # the similarities the snippet prints
