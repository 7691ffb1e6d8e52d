"""Convert the authors' STOP/DGL checkpoints (or a plain OpenAI CLIP) into a Hub-ready STOP folder.

    python -m modeling_stop.convert_official --checkpoint PATH --output_dir DIR [--num_frames T]

PATH may be what the authors' training script saves (a raw state dict, or a training checkpoint holding
`state_dict`, keys optionally prefixed `module.`), a `.safetensors` file, or, with `--allow_torchscript`, an
OpenAI CLIP TorchScript `.pt` (which starts a fresh STOP model around that CLIP). Every dimension and the prompt
generator mode are read from keys and shapes; `--num_frames` is needed only where the weights cannot tell (linear
generator, plain CLIP).

Security: the loader is chosen by the file name and the flags, never by the file's contents.
- `*.safetensors`: `safetensors.torch.load_file` (tensors only, no code).
- any other file (`.pth`, `.bin`, `.pt`, ...): `torch.load(weights_only=True)`, which refuses pickled code
  (a reduce payload) and TorchScript archives without running anything from them.
- only with `--allow_torchscript`: `torch.jit.load`. A TorchScript archive is a program (its `__setstate__`
  runs on load, and can write files): pass the flag only for files from a source you trust.
"""

from __future__ import annotations

import argparse
import re
import zipfile
from pathlib import Path

import torch

from .configuration_stop import STOPConfig
from .modeling_stop import STOPModel

# ------------------------------------------------------------------------------------------------ reading


def load_checkpoint(path: str | Path, allow_torchscript: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat float32 state dict (unwrapped, `module.` stripped).

    `.safetensors` files go to safetensors; every other file to `torch.load(weights_only=True)`, or, only when
    `allow_torchscript` is set, to `torch.jit.load` (which runs the archive's code: trusted files only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        state = _load_safetensors(path)
    elif allow_torchscript:
        try:
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as err:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(
                f"{path}: --allow_torchscript was given but this is not a readable TorchScript "
                f"archive ({err}); drop the flag for a state dict / training checkpoint"
            ) from err
    else:
        if _has_torchscript_records(path):
            raise ValueError(
                f"{path} is a TorchScript archive: executable code, not loaded by default. If it comes from a "
                "source you trust (e.g. an OpenAI CLIP .pt), pass --allow_torchscript (torch.jit.load); otherwise "
                "convert from a state dict (.pth/.bin) or a .safetensors file"
            )
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(
                f"{path}: not a readable PyTorch/safetensors checkpoint: torch.load(weights_only=True) refused it "
                f"({err}). Files holding pickled code are never loaded; a trusted TorchScript archive needs "
                "--allow_torchscript"
            ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    elif isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (or a checkpoint with a 'state_dict' entry)")
    out = {}
    for key, value in state.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        out[key] = value.float() if value.is_floating_point() else value
    return out


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - a truncated or corrupt file: re-raised with the file name
        raise ValueError(
            f"{path}: not a readable .safetensors file (truncated or corrupt? {err}); download or save it again"
        ) from err


def _has_torchscript_records(path: Path) -> bool:
    """Whether a zip file holds TorchScript records (read from the zip directory only: nothing is executed).
    Used to refuse such files with a clear message, never to choose a loader."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


# ------------------------------------------------------------------------------------------------ CLIP keys


def _count_blocks(state: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.attn\.in_proj_weight$")
    return len({m.group(1) for k in state if (m := pattern.match(k))})


def clip_configs(state: dict, prefix: str = "") -> dict:
    """CLIP text/vision config dicts read off an OpenAI-format state dict."""
    conv = state[f"{prefix}visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = round((state[f"{prefix}visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state[f"{prefix}ln_final.weight"].shape[0]
    vocab = state[f"{prefix}token_embedding.weight"].shape[0]
    return {
        "vision_config": {
            "hidden_size": width,
            "intermediate_size": state[f"{prefix}visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "num_hidden_layers": _count_blocks(state, f"{prefix}visual.transformer.resblocks."),
            "num_attention_heads": width // 64,
            "image_size": patch * grid,
            "patch_size": patch,
            "projection_dim": state[f"{prefix}visual.proj"].shape[1],
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
        },
        "text_config": {
            "hidden_size": text_width,
            "intermediate_size": state[f"{prefix}transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "num_hidden_layers": _count_blocks(state, f"{prefix}transformer.resblocks."),
            "num_attention_heads": max(1, text_width // 64),
            "vocab_size": vocab,
            "max_position_embeddings": state[f"{prefix}positional_embedding"].shape[0],
            "projection_dim": state[f"{prefix}text_projection"].shape[1],
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            # OpenAI CLIP: start/end of text are the two last ids of the vocabulary.
            "bos_token_id": vocab - 2,
            "eos_token_id": vocab - 1,
        },
        "projection_dim": state[f"{prefix}text_projection"].shape[1],
    }


def _convert_block(state: dict, src: str, dst: str, out: dict):
    q, k, v = state[f"{src}attn.in_proj_weight"].chunk(3)
    qb, kb, vb = state[f"{src}attn.in_proj_bias"].chunk(3)
    out.update(
        {
            f"{dst}self_attn.q_proj.weight": q,
            f"{dst}self_attn.k_proj.weight": k,
            f"{dst}self_attn.v_proj.weight": v,
            f"{dst}self_attn.q_proj.bias": qb,
            f"{dst}self_attn.k_proj.bias": kb,
            f"{dst}self_attn.v_proj.bias": vb,
            f"{dst}self_attn.out_proj.weight": state[f"{src}attn.out_proj.weight"],
            f"{dst}self_attn.out_proj.bias": state[f"{src}attn.out_proj.bias"],
            f"{dst}layer_norm1.weight": state[f"{src}ln_1.weight"],
            f"{dst}layer_norm1.bias": state[f"{src}ln_1.bias"],
            f"{dst}layer_norm2.weight": state[f"{src}ln_2.weight"],
            f"{dst}layer_norm2.bias": state[f"{src}ln_2.bias"],
            f"{dst}mlp.fc1.weight": state[f"{src}mlp.c_fc.weight"],
            f"{dst}mlp.fc1.bias": state[f"{src}mlp.c_fc.bias"],
            f"{dst}mlp.fc2.weight": state[f"{src}mlp.c_proj.weight"],
            f"{dst}mlp.fc2.bias": state[f"{src}mlp.c_proj.bias"],
        }
    )


def openai_clip_to_transformers(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """OpenAI CLIP key names -> transformers `CLIPModel` key names."""
    p = prefix
    out = {
        "vision_model.embeddings.patch_embedding.weight": state[f"{p}visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": state[f"{p}visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state[f"{p}visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state[f"{p}visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state[f"{p}visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state[f"{p}visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state[f"{p}visual.ln_post.bias"],
        "visual_projection.weight": state[f"{p}visual.proj"].t().contiguous(),
        "text_model.embeddings.token_embedding.weight": state[f"{p}token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state[f"{p}positional_embedding"],
        "text_model.final_layer_norm.weight": state[f"{p}ln_final.weight"],
        "text_model.final_layer_norm.bias": state[f"{p}ln_final.bias"],
        "text_projection.weight": state[f"{p}text_projection"].t().contiguous(),
        "logit_scale": state[f"{p}logit_scale"],
    }
    for i in range(_count_blocks(state, f"{p}visual.transformer.resblocks.")):
        _convert_block(state, f"{p}visual.transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}.", out)
    for i in range(_count_blocks(state, f"{p}transformer.resblocks.")):
        _convert_block(state, f"{p}transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}.", out)
    return out


# ------------------------------------------------------------------------------------------------ STOP keys

# Official module name -> ours (the authors' nn.Sequential indices are kept where they are ours too).
_STOP_RENAMES = [
    (r"^visual\.TemporalPrompt\.Conv\.", "spatial_prompter.conv."),
    (r"^visual\.TemporalPrompt\.MLP\.", "spatial_prompter.mlp."),
    (r"^visual\.TemporalPrompt\.Cal_Net\.", "spatial_prompter.region_score."),
    (r"^visual\.TemporalPrompt\.Attention\.", "temporal_prompter.attention."),
    (r"^visual\.TemporalPrompt\.InterConv\.", "temporal_prompter.inter_conv."),
    (r"^visual\.TemporalPrompt\.InterMLP\.", "temporal_prompter.inter_mlp."),
    (r"^visual\.TemporalPrompt\.Cal_Net_Inter\.", "temporal_prompter.frame_weight."),
    (r"^visual\.prompt_embeddings$", "global_prompts"),
    (r"^unified_prompt_embedding\.weight$", "prompt_generator.embedding.weight"),
    (r"^PromptTransformer\.resblocks\.0\.mlp\.c_fc\.", "prompt_generator.block.mlp.fc1."),
    (r"^PromptTransformer\.resblocks\.0\.mlp\.c_proj\.", "prompt_generator.block.mlp.fc2."),
    (r"^PromptTransformer\.resblocks\.0\.", "prompt_generator.block."),
    (r"^unified_prompt_mlp\.c_fc\.", "prompt_generator.text_mlp.fc1."),
    (r"^unified_prompt_mlp\.c_proj\.", "prompt_generator.text_mlp.fc2."),
    (r"^visual_prompt_embedding$", "prompt_generator.visual_prompts"),
    (r"^prefix_text_prompt_proj_layer\.", "prompt_generator.prefix_proj."),
    (r"^postfix_text_prompt_proj_layer\.", "prompt_generator.postfix_proj."),
    (r"^visual\.transformer\.resblocks\.(\d+)\.LoRA\.0\.", r"vision_adapters.\1.fc1."),
    (r"^visual\.transformer\.resblocks\.(\d+)\.LoRA\.1\.", r"vision_adapters.\1.act."),
    (r"^visual\.transformer\.resblocks\.(\d+)\.LoRA\.2\.", r"vision_adapters.\1.fc2."),
    (r"^transformer\.resblocks\.(\d+)\.LoRA\.0\.", r"text_adapters.\1.fc1."),
    (r"^transformer\.resblocks\.(\d+)\.LoRA\.1\.", r"text_adapters.\1.act."),
    (r"^transformer\.resblocks\.(\d+)\.LoRA\.2\.", r"text_adapters.\1.fc2."),
]
# Weights of the frozen CLIP (converted separately) and buffers that carry no information.
_CLIP_KEY = re.compile(
    r"^(visual\.(conv1|class_embedding|positional_embedding|ln_pre|ln_post|proj|transformer\.resblocks\.\d+\.(attn|ln_|mlp))"
    r"|transformer\.resblocks\.\d+\.(attn|ln_|mlp)|token_embedding|positional_embedding|ln_final|text_projection|logit_scale)"
)
_IGNORED = re.compile(r"^(visual\.position_ids|input_resolution|context_length|vocab_size)$")


def official_stop_key(key: str) -> str | None:
    """Our parameter name for an official STOP/DGL key (without its `clip.` prefix); None if it is CLIP's."""
    if _CLIP_KEY.match(key) or _IGNORED.match(key):
        return None
    for pattern, replacement in _STOP_RENAMES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    raise KeyError(f"unknown key in official checkpoint: {key!r}")


def stop_config_from_state(state: dict, num_frames: int | None = None, **overrides) -> STOPConfig:
    """Infer a `variant="official"` STOPConfig from an official STOP/DGL state dict (prefix `clip.`)."""
    dims = clip_configs(state, prefix="clip.")
    width = dims["vision_config"]["hidden_size"]
    kwargs: dict = {"variant": "official"}
    if "clip.unified_prompt_embedding.weight" in state:
        rows, cols = state["clip.unified_prompt_embedding.weight"].shape
        num_text, num_local = overrides.get("num_text_prompts", 8), overrides.get("num_local_prompts", 4)
        inferred = (rows - num_text) // num_local
        if num_frames is not None and num_frames != inferred:
            raise ValueError(
                f"--num_frames {num_frames} contradicts the checkpoint: its prompt table has {rows} rows = "
                f"{num_text} text + {num_local} x {inferred} frames"
            )
        kwargs.update(prompt_generator="transformer", num_frames=inferred, num_prompt_layers=cols // width)
    elif "clip.visual_prompt_embedding" in state:
        if num_frames is None:
            raise ValueError(
                "this checkpoint uses the linear prompt generator, whose weights do not record the frame count: "
                "pass --num_frames (the authors' --max_frames)"
            )
        table = state["clip.visual_prompt_embedding"]
        kwargs.update(
            prompt_generator="linear",
            num_frames=num_frames,
            num_local_prompts=table.shape[1],
            num_text_prompts=2 * table.shape[1],
            num_prompt_layers=table.shape[2] // width,
        )
    else:
        raise ValueError(
            "no prompt generator found (expected clip.unified_prompt_embedding or clip.visual_prompt_embedding)"
        )
    if "clip.visual.prompt_embeddings" in state:
        kwargs["num_global_prompts"] = state["clip.visual.prompt_embeddings"].shape[1]
    has_stop = any(k.startswith("clip.visual.TemporalPrompt.") for k in state)
    kwargs.update(use_spatial_prompt=has_stop, use_temporal_prompt=has_stop)
    if "clip.visual.transformer.resblocks.0.LoRA.0.weight" in state:
        kwargs["adapter_dim"] = state["clip.visual.transformer.resblocks.0.LoRA.0.weight"].shape[0]
    if has_stop:
        kwargs["num_local_prompts"] = state["clip.visual.TemporalPrompt.InterMLP.2.weight"].shape[0]
    kwargs.update(overrides)
    return STOPConfig(**dims, **kwargs)


def convert_official_state(state: dict, num_frames: int | None = None, **overrides) -> STOPModel:
    """Build a STOPModel holding an official STOP/DGL state dict (keys prefixed `clip.`)."""
    config = stop_config_from_state(state, num_frames=num_frames, **overrides)
    model = STOPModel(config)
    ours = {f"clip.{k}": v for k, v in openai_clip_to_transformers(state, prefix="clip.").items()}
    for key, value in state.items():
        if not key.startswith("clip."):
            raise KeyError(f"unknown key in official checkpoint: {key!r} (expected everything under 'clip.')")
        name = official_stop_key(key[len("clip.") :])
        if name is not None:
            ours[name] = value
    expected = model.state_dict()
    # Modules the authors' code does not have (order-aware additions) keep their fresh initialisation.
    fresh = tuple(k for k in expected if k.startswith(("temporal_head.", "temporal_gate", "frame_positions.")))
    ours.update({k: expected[k] for k in fresh})
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the inferred config: missing {missing[:8]}, unexpected {unexpected[:8]}"
        )
    for key, value in ours.items():
        if value.shape != expected[key].shape:
            raise ValueError(
                f"{key}: checkpoint shape {tuple(value.shape)} != model shape {tuple(expected[key].shape)}"
            )
    model.load_state_dict(ours)
    return model


def convert(
    checkpoint: str | Path, num_frames: int | None = None, allow_torchscript: bool = False, **overrides
) -> STOPModel:
    """Read any supported file and return a STOPModel (fresh STOP modules around a plain OpenAI CLIP).

    `allow_torchscript`: read the file with `torch.jit.load` (runs the archive's code: trusted files only)."""
    state = load_checkpoint(checkpoint, allow_torchscript=allow_torchscript)
    if any(k.startswith("clip.") for k in state):
        return convert_official_state(state, num_frames=num_frames, **overrides)
    if "visual.proj" in state:  # a plain OpenAI CLIP (ViT)
        config = STOPConfig(**clip_configs(state), num_frames=num_frames or 12, **overrides)
        model = STOPModel(config)
        model.clip.load_state_dict(openai_clip_to_transformers(state))
        return model
    raise ValueError(
        f"{checkpoint}: neither an official STOP/DGL checkpoint (keys under 'clip.') nor an OpenAI CLIP ViT"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="How files are read: *.safetensors with safetensors; any other file with torch.load(weights_only=True), "
        "which refuses pickled code and TorchScript archives; torch.jit.load only with --allow_torchscript.",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="an official training checkpoint or state dict (.pth/.bin/.pt, read with "
        "torch.load(weights_only=True)), a .safetensors file (read with safetensors), or with "
        "--allow_torchscript an OpenAI CLIP TorchScript .pt",
    )
    parser.add_argument("--output_dir", required=True, help="where to write the Hub-ready folder")
    parser.add_argument(
        "--num_frames", type=int, default=None, help="frames per video (needed for the linear generator)"
    )
    parser.add_argument("--max_words", type=int, default=32, help="text length the model was trained with")
    parser.add_argument(
        "--tokenizer", default=None, help="CLIP tokenizer folder/Hub id to save a processor with the model"
    )
    parser.add_argument(
        "--allow_torchscript",
        action="store_true",
        help="read --checkpoint with torch.jit.load (OpenAI CLIP .pt files). A TorchScript archive runs "
        "its own code when loaded: use only for files from a source you trust",
    )
    args = parser.parse_args(argv)

    try:
        model = convert(
            args.checkpoint,
            num_frames=args.num_frames,
            allow_torchscript=args.allow_torchscript,
            max_words=args.max_words,
        )
    except (ValueError, KeyError, FileNotFoundError) as err:
        parser.exit(1, f"convert_official: error: {err}\n")
    model.save_pretrained(args.output_dir)
    if args.tokenizer:
        from .processing_stop import STOPProcessor

        STOPProcessor.from_model_config(model.config, args.tokenizer).save_pretrained(args.output_dir)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(
        f"wrote {args.output_dir}: {model.config.prompt_generator} generator, {model.config.num_frames} frames, {trainable:,} trainable parameters"
    )


if __name__ == "__main__":
    main()
