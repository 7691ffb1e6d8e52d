"""The converter on checkpoints other than the fixture: other frame counts, batch sizes, the linear generator,
DDP training checkpoints, plain OpenAI CLIP files (state dict and TorchScript)."""

import re

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
            for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
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
                out[official.format(*m.groups()) + name[m.end():]] = value
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


@pytest.mark.parametrize(
    "generator, frames, batch", [("transformer", 3, 1), ("transformer", 6, 4), ("linear", 5, 2)]
)
def test_training_checkpoints_convert_and_reproduce_the_similarity(tmp_path, generator, frames, batch):
    model = tiny_stop(prompt_generator=generator, num_frames=frames)
    for p in model.parameters():  # trained-looking weights, not the initialisation
        if p.requires_grad:
            p.data.add_(0.05 * torch.randn_like(p))
    state = {f"module.{k}": v for k, v in _official_state(model).items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": state, "optimizer": {}, "epoch": 3}, path)
    num_frames = frames if generator == "linear" else None
    main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "out"), "--max_words", "8"]
         + (["--num_frames", str(frames)] if num_frames else []))
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
    model = convert(path, num_frames=4)
    for key, value in reference.clip.state_dict().items():
        torch.testing.assert_close(model.clip.state_dict()[key], value, rtol=0, atol=0)
    assert model.config.num_frames == 4 and model.config.vision_config.patch_size == 8


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth"):
        convert(bad)
