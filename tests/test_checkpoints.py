"""The embedded checkpoints: their code is the package's, their cards tell the truth, loading keeps CLIP frozen."""

import json
import re

import pytest
import torch
from safetensors import safe_open

from .conftest import REPO_ROOT

CHECKPOINTS = REPO_ROOT / "checkpoints"
PACKAGE = REPO_ROOT / "modeling_stop"
TRAINED = CHECKPOINTS / "stop-synthetic"


def _code_copies():
    return sorted(p for p in CHECKPOINTS.glob("*/*.py") if (PACKAGE / p.name).is_file())


def test_code_in_checkpoint_folders_is_the_package_code():
    copies = _code_copies()
    assert copies, "no checkpoint folder holds a copy of the package code"
    stale = [str(p.relative_to(REPO_ROOT)) for p in copies if p.read_bytes() != (PACKAGE / p.name).read_bytes()]
    assert not stale, f"out of date with modeling_stop/ (run `make sync-checkpoints`): {stale}"


def test_checkpoint_folders_hold_every_module_their_code_imports_relatively():
    missing = []
    for copy in _code_copies():
        for name in re.findall(r"^\s*from \.(\w+) import", copy.read_text(), flags=re.M):
            if not (copy.parent / f"{name}.py").is_file():
                missing.append(f"{copy.relative_to(REPO_ROOT)} imports .{name}")
    assert not missing, f"copy the module into the folder, then `make sync-checkpoints`: {missing}"


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_loading_the_trained_checkpoint_keeps_clip_frozen():
    if not (TRAINED / "model.safetensors").exists():
        pytest.skip(f"{TRAINED} not present")
    from transformers import AutoModel

    from modeling_stop import STOPConfig, STOPModel

    fresh = _trainable(STOPModel(STOPConfig.from_pretrained(TRAINED)))
    for model in (STOPModel.from_pretrained(TRAINED), AutoModel.from_pretrained(TRAINED, trust_remote_code=True)):
        assert _trainable(model) == fresh
        assert not any(p.requires_grad for p in model.clip.parameters())


def _card(folder):
    text = (folder / "README.md").read_text()
    return text, re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)


def test_trained_checkpoint_card_names_the_folder_and_only_paths_that_exist():
    text, snippet = _card(TRAINED)
    assert re.search(r"^# stop-synthetic$", text, re.MULTILINE)
    assert re.search(r"^- name: stop-synthetic$", text, re.MULTILINE)  # model-index
    loads = re.findall(r'from_pretrained\("([^"]+)"', snippet)
    assert loads and all((REPO_ROOT / path / "config.json").is_file() for path in loads), loads
    cited = re.findall(r"`((?:checkpoints|outputs|data)/[^`]+)`", text)
    assert cited and all((REPO_ROOT / path).exists() for path in cited), cited


def _weights_dtype(folder) -> str:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
    assert len(dtypes) == 1, dtypes
    return {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}[dtypes.pop()]


def test_dtype_statements_match_the_weights_file_and_the_config():
    stored, loaded = _weights_dtype(TRAINED), json.loads((TRAINED / "config.json").read_text())["dtype"]
    for document in (REPO_ROOT / "README.md", TRAINED / "README.md"):
        text = re.sub(r"\s+", " ", document.read_text())
        assert re.findall(r"stored in (\w+)", text) == [stored], document
        assert re.findall(r"load(?:s|ed)? in (\w+)", text) == [loaded], document
    from modeling_stop import STOPModel

    assert STOPModel.from_pretrained(TRAINED).dtype == getattr(torch, loaded)


def test_model_card_snippet_loads_the_folder_it_was_written_for(tmp_path):
    from tests.tiny import stop_config
    from training.reporting import write_model_card

    output_dir = tmp_path / "runs" / "stop-tiny"
    output_dir.mkdir(parents=True)
    write_model_card(
        output_dir,
        "stop-tiny",
        "openai/clip-vit-base-patch32",
        "synthetic",
        "retrieval",
        {},
        stop_config(),
        model_path=str(output_dir),
    )
    _, snippet = _card(output_dir)
    assert re.findall(r'from_pretrained\("([^"]+)"', snippet) == [str(output_dir)] * 2


def _spliced_counts(model, clips: torch.Tensor) -> torch.Tensor:
    """Inserted-token counts of clips spliced from two different clips: frames 0-3 of clip i, 4-7 of clip i + 1."""
    spliced = torch.cat([clips[:, :4], clips.roll(1, dims=0)[:, 4:]], dim=1)
    with torch.no_grad():
        return model(pixel_values=spliced).inserted_tokens


def test_trained_checkpoint_puts_more_prompt_tokens_at_a_hard_cut():
    """The committed default's dynamic insertion on spliced clips of both synthetic worlds (the held-out world's
    clips were never seen in training): the cut's gap gets more tokens than the median gap in >= 80% of them."""
    import numpy as np
    import torch.nn.functional as F

    from benchmarks.heldout_world import MOTIONS as HELDOUT_MOTIONS
    from benchmarks.heldout_world import sample_clip
    from modeling_stop import STOPModel
    from tests.test_paper_variant import _synthetic_clips

    model = STOPModel.from_pretrained(TRAINED).eval()
    assert model.config.variant == "paper" and model.config.paper_version == 2
    assert model.config.use_spatial_prompt and model.config.use_temporal_prompt
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    rng = np.random.default_rng(7)
    heldout = []
    for i in range(12):
        frames = torch.from_numpy(sample_clip(rng, HELDOUT_MOTIONS[i % len(HELDOUT_MOTIONS)], 80, 8)[0])
        x = F.interpolate(frames.permute(0, 3, 1, 2).float() / 255, size=64, mode="bilinear", antialias=True)
        heldout.append((x - mean) / std)
    for clips in (_synthetic_clips(12, 1, seed=3), torch.stack(heldout)):
        counts = _spliced_counts(model, clips)
        assert counts.shape == (12, 7)
        assert (counts[:, 3] > counts.median(-1).values).float().mean() >= 0.8, counts.tolist()


def test_publish_checkpoint_stores_a_run_in_float16_without_its_resume_state_and_keeps_the_gallery(tmp_path):
    """`utils/publish_checkpoint.py RUN DEST`: how `checkpoints/stop-synthetic` is made from a training run."""
    import sys

    from modeling_stop import STOPModel
    from tests.tiny import tiny_stop
    from training.reporting import write_model_card

    sys.path.insert(0, str(REPO_ROOT / "utils"))
    from publish_checkpoint import publish

    run = tmp_path / "outputs" / "model"
    model = tiny_stop()
    model.save_pretrained(run)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "head_stage.safetensors").write_bytes(b"state")
    write_model_card(
        run, "model", "base", "synthetic", "retrieval", {"t2v_R@1": 1.0}, model.config, model_path=str(run)
    )
    (run / "modeling_stop.py").write_text("# edited by hand\n")
    dest = tmp_path / "stop-demo"
    (dest / "gallery").mkdir(parents=True)
    (dest / "gallery" / "README.md").write_text("kept")

    publish(run, dest)
    assert not (dest / "checkpoints").exists() and (dest / "gallery" / "README.md").read_text() == "kept"
    assert _weights_dtype(dest) == "float16"
    assert json.loads((dest / "config.json").read_text())["dtype"] == "float32"
    assert (dest / "modeling_stop.py").read_bytes() == (PACKAGE / "modeling_stop.py").read_bytes()
    text, snippet = _card(dest)
    assert re.search(r"^# stop-demo$", text, re.M) and re.search(r"^- name: stop-demo$", text, re.M)
    assert set(re.findall(r'from_pretrained\("([^"]+)"', snippet)) == {str(dest)}
    assert re.findall(r"stored in (\w+)", text) == ["float16"]
    loaded = STOPModel.from_pretrained(dest)
    assert loaded.dtype == torch.float32
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor.half().float(), rtol=0, atol=0)
