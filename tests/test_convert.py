"""The converter on checkpoints other than the fixture: other frame counts, batch sizes, the linear generator,
DDP training checkpoints, plain OpenAI CLIP files (state dict and TorchScript)."""

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from modeling_stop.convert_official import _STOP_RENAMES, convert, main

from .tiny import tiny_stop as _tiny_stop

# OpenAI CLIP files do not store head counts: the converter uses width / 64, so the tiny towers follow it.
OPENAI_SHAPED = dict(width=128, heads=2, text_width=64, text_heads=1)


def tiny_stop(**kwargs):
    return _tiny_stop(clip_kwargs=OPENAI_SHAPED, **kwargs)


def _inverse_clip(model) -> dict:
    """Our frozen CLIP back to OpenAI key names (the inverse of the converter's mapping)."""
    sd = model.clip.state_dict()
    out = {
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
        "visual.proj": sd["visual_projection.weight"].t(),
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].t(),
        "logit_scale": sd["logit_scale"],
        "visual.position_ids": torch.arange(sd["vision_model.embeddings.position_embedding.weight"].shape[0])[None],
    }
    for tower, src in (("vision_model", "visual.transformer"), ("text_model", "transformer")):
        i = 0
        while f"{tower}.encoder.layers.{i}.self_attn.q_proj.weight" in sd:
            p, q = f"{tower}.encoder.layers.{i}.", f"{src}.resblocks.{i}."
            out[q + "attn.in_proj_weight"] = torch.cat([sd[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
            out[q + "attn.in_proj_bias"] = torch.cat([sd[p + f"self_attn.{x}_proj.bias"] for x in "qkv"])
            for a, b in (
                ("attn.out_proj", "self_attn.out_proj"),
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ):
                out[q + a + ".weight"], out[q + a + ".bias"] = sd[p + b + ".weight"], sd[p + b + ".bias"]
            i += 1
    return out


def _inverse_stop(model) -> dict:
    """Our prompt modules back to the authors' key names."""
    inverse = []
    for pattern, replacement in _STOP_RENAMES:
        official = pattern.strip("^$").replace("\\.", ".").replace("(\\d+)", "{}")
        ours = replacement.replace("\\1", "{}")
        inverse.append((ours, official))
    out = {}
    for name, value in model.state_dict().items():
        if name.startswith("clip."):
            continue
        for ours, official in sorted(inverse, key=lambda x: -len(x[0])):
            regex = "^" + re.escape(ours).replace(re.escape("{}"), r"(\d+)")
            m = re.match(regex, name)
            if m:
                out[official.format(*m.groups()) + name[m.end() :]] = value
                break
        else:
            raise AssertionError(f"no official name for {name}")
    return out


def _official_state(model) -> dict:
    return {f"clip.{k}": v for k, v in {**_inverse_clip(model), **_inverse_stop(model)}.items()}


def _inputs(frames, batch, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 97, (batch, 8), generator=g)
    ids[:, 0], ids[:, -1] = 98, 99
    return dict(input_ids=ids, pixel_values=torch.randn(batch, frames, 3, size, size, generator=g))


@pytest.mark.parametrize("generator, frames, batch", [("transformer", 3, 1), ("transformer", 6, 4), ("linear", 5, 2)])
def test_training_checkpoints_convert_and_reproduce_the_similarity(tmp_path, generator, frames, batch):
    model = tiny_stop(prompt_generator=generator, num_frames=frames)
    for p in model.parameters():  # trained-looking weights, not the initialisation
        if p.requires_grad:
            p.data.add_(0.05 * torch.randn_like(p))
    state = {f"module.{k}": v for k, v in _official_state(model).items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": state, "optimizer": {}, "epoch": 3}, path)
    num_frames = frames if generator == "linear" else None
    main(
        ["--checkpoint", str(path), "--output_dir", str(tmp_path / "out"), "--max_words", "8"]
        + (["--num_frames", str(frames)] if num_frames else [])
    )
    from modeling_stop import STOPModel

    converted = STOPModel.from_pretrained(tmp_path / "out").eval()
    assert converted.config.num_frames == frames and converted.config.prompt_generator == generator
    with torch.no_grad():
        expected = model(**_inputs(frames, batch)).logits_per_text
        got = converted(**_inputs(frames, batch)).logits_per_text
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_linear_generator_without_num_frames_is_a_clear_error(tmp_path):
    model = tiny_stop(prompt_generator="linear", num_frames=4)
    torch.save(_official_state(model), tmp_path / "ckpt.bin")
    with pytest.raises(ValueError, match="--num_frames"):
        convert(tmp_path / "ckpt.bin")


def test_transformer_generator_with_contradicting_num_frames_is_rejected(tmp_path):
    torch.save(_official_state(tiny_stop(num_frames=4)), tmp_path / "ckpt.bin")
    with pytest.raises(ValueError, match="contradicts"):
        convert(tmp_path / "ckpt.bin", num_frames=8)


def _torchscript_archive(state: dict, path):
    """A TorchScript archive whose state_dict has the given keys (as OpenAI's CLIP .pt files)."""
    root = nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, nn.Module())
            module = getattr(module, name)
        if value.is_floating_point():
            module.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
        else:
            module.register_buffer(leaf, value.clone())
    torch.jit.save(torch.jit.script(root), str(path))


@pytest.mark.parametrize("fmt", ["state_dict", "torchscript"])
def test_plain_openai_clip_starts_a_fresh_stop_model(tmp_path, fmt):
    reference = tiny_stop(num_frames=4)
    clip_state = _inverse_clip(reference)
    path = tmp_path / "ViT-tiny.pt"
    if fmt == "torchscript":
        _torchscript_archive(clip_state, path)
    else:
        torch.save(clip_state, path)
    model = convert(path, num_frames=4, allow_torchscript=fmt == "torchscript")
    for key, value in reference.clip.state_dict().items():
        torch.testing.assert_close(model.clip.state_dict()[key], value, rtol=0, atol=0)
    assert model.config.num_frames == 4 and model.config.vision_config.patch_size == 8


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth"):
        convert(bad)


# --------------------------------------------------------------------------------------------- hostile files

REPO_ROOT = Path(__file__).resolve().parents[1]


class _WritesOnLoad(nn.Module):
    """A TorchScript module whose `__setstate__` (run by torch.jit.load) creates the file `target`."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.weight = nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self):
        return (self.target, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]):
        self.target = state[0]
        # torch.from_file(shared=True) creates the file; the result is used so the call is not optimised away.
        self.weight = state[1] + 0 * torch.from_file(self.target, True, 8, dtype=torch.uint8).float().sum()
        self.training = state[2]


class _ReducePayload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def _convert_cli(checkpoint, output_dir, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "modeling_stop.convert_official",
            "--checkpoint",
            str(checkpoint),
            "--output_dir",
            str(output_dir),
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        check=False,
    )


def test_the_hostile_torchscript_archive_really_writes_its_file_when_jit_loaded(tmp_path):
    # The payload of the test below is live: torch.jit.load runs it.
    target = tmp_path / "written"
    torch.jit.save(torch.jit.script(_WritesOnLoad(str(target))), str(tmp_path / "evil.bin"))
    assert not target.exists()
    torch.jit.load(str(tmp_path / "evil.bin"))
    assert target.exists()


def test_a_torchscript_bin_is_refused_without_running_it_and_names_allow_torchscript(tmp_path):
    target = tmp_path / "written"
    torch.jit.save(torch.jit.script(_WritesOnLoad(str(target))), str(tmp_path / "evil.bin"))
    result = _convert_cli(tmp_path / "evil.bin", tmp_path / "out")
    assert result.returncode != 0
    assert "--allow_torchscript" in result.stderr and "evil.bin" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not target.exists(), "the archive's __setstate__ ran"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["torch.save zip", "legacy pickle"])
def test_a_pickle_with_a_reduce_payload_is_refused_without_running_it(tmp_path, fmt):
    target = tmp_path / "written"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"x": _ReducePayload(str(target))}}
    if fmt == "legacy pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    assert not target.exists()
    result = _convert_cli(path, tmp_path / "out")
    assert result.returncode != 0 and "evil.pth" in result.stderr and "weights_only" in result.stderr
    assert not target.exists(), "the pickle's reduce payload ran"
    assert not (tmp_path / "out").exists()


def test_torchscript_is_read_only_behind_the_flag(tmp_path):
    reference = tiny_stop(num_frames=4)
    path = tmp_path / "ViT-tiny.pt"
    _torchscript_archive(_inverse_clip(reference), path)
    with pytest.raises(ValueError, match="--allow_torchscript"):
        convert(path, num_frames=4)
    result = _convert_cli(path, tmp_path / "out", "--num_frames", "4", "--allow_torchscript")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "model.safetensors").exists()
    # With the flag, a file that is not TorchScript is an error, not silently read another way.
    torch.save(_inverse_clip(reference), tmp_path / "state.pt")
    with pytest.raises(ValueError, match="not a readable TorchScript"):
        convert(tmp_path / "state.pt", num_frames=4, allow_torchscript=True)


def test_help_says_how_each_kind_of_file_is_read():
    result = subprocess.run(
        [sys.executable, "-m", "modeling_stop.convert_official", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=300,
        check=False,
    )
    text = " ".join(result.stdout.split())
    assert "torch.load(weights_only=True)" in text and "--allow_torchscript" in text
    assert "torch.jit.load only with --allow_torchscript" in text


def test_a_truncated_safetensors_file_is_an_error_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(64, 64)}, tmp_path / "weights.safetensors")
    data = (tmp_path / "weights.safetensors").read_bytes()
    (tmp_path / "weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="weights.safetensors.*truncated"):
        convert(tmp_path / "weights.safetensors")
