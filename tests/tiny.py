"""Tiny CLIP / STOP configurations shared by the tests."""

from transformers import CLIPConfig, CLIPModel

from modeling_stop import STOPConfig, STOPModel


def tiny_clip_config(
    image_size=32,
    patch_size=8,
    vision_layers=2,
    text_layers=2,
    width=64,
    text_width=32,
    vocab=100,
    heads=2,
    text_heads=2,
):
    return CLIPConfig(
        text_config=dict(
            hidden_size=text_width,
            intermediate_size=2 * text_width,
            num_hidden_layers=text_layers,
            num_attention_heads=text_heads,
            vocab_size=vocab,
            max_position_embeddings=40,
            bos_token_id=vocab - 2,
            eos_token_id=vocab - 1,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=vision_layers,
            num_attention_heads=heads,
            image_size=image_size,
            patch_size=patch_size,
        ),
        projection_dim=16,
    )


def tiny_clip(seed=0, **kwargs) -> CLIPModel:
    import torch

    torch.manual_seed(seed)
    return CLIPModel(tiny_clip_config(**kwargs)).eval()


def tiny_stop(seed=0, clip_kwargs=None, **stop_kwargs) -> STOPModel:
    import torch

    clip = tiny_clip(seed, **(clip_kwargs or {}))
    torch.manual_seed(seed + 1)
    stop_kwargs.setdefault("num_frames", 4)
    stop_kwargs.setdefault("max_words", 8)
    return STOPModel.from_clip(clip, **stop_kwargs).eval()


def stop_config(**kwargs) -> STOPConfig:
    clip = tiny_clip_config()
    return STOPConfig(text_config=clip.text_config.to_dict(), vision_config=clip.vision_config.to_dict(), **kwargs)
