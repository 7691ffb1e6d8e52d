"""Embed many videos and texts with a STOP model and rank them, in a few lines.

```python
>>> from transformers import AutoModel, AutoProcessor
>>> model = AutoModel.from_pretrained(folder, trust_remote_code=True)
>>> processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
>>> video_embeds = embed_videos(model, processor, ["a.mp4", "b.mp4", "c.mp4"])
>>> text_embeds = embed_texts(model, processor, ["a dog runs", "a car drives"])
>>> scores, indices = rank(text_embeds, video_embeds, top_k=2)  # text -> video; swap the arguments for video -> text
```

Embeddings are L2-normalised float32 on the CPU, so a gallery can be stored (`torch.save`) and ranked later;
`rank` scores are cosine similarities. Everything runs under `torch.inference_mode()`.

Note: the official variant normalises its frame weights over the whole batch by default
(`config.frame_weight_norm="batch"`, as the released code), so a video's embedding then depends on the videos
batched with it; `batch_size=1` (or a model with `frame_weight_norm="video"`) makes it independent of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F


def _stop_model(model):
    return getattr(model, "stop", model)  # a STOPForVideoClassification holds its STOPModel


def _as_list(items, one) -> list:
    """`items` as a list; `one(items)` says when it is a single item (a text, a video path, one video array)."""
    if one(items):
        return [items]
    return list(items)


def _one_text(texts) -> bool:
    return isinstance(texts, str)


def _one_video(videos) -> bool:
    # A path, the bytes of a file, a [T, H, W, 3] array or a decoder are one video; a 5-D array is a batch.
    return (
        isinstance(videos, (str, bytes, os.PathLike))
        or getattr(videos, "ndim", None) == 4
        or not isinstance(videos, Iterable)
    )


def _device(model) -> torch.device:
    return next(model.parameters()).device


def embed_videos(model, processor, videos: Sequence, batch_size: int = 8, sampling: str = "uniform") -> torch.Tensor:
    """
    Normalised video embeddings `[len(videos), projection_dim]`.

    Args:
        model: a `STOPModel` (or `STOPForVideoClassification`).
        processor: its `STOPProcessor`.
        videos: anything the processor reads (paths, bytes, uint8 arrays `[T, H, W, 3]`, torchcodec decoders), or
            one of them (embedded as a batch of one).
        batch_size: videos decoded and encoded at a time.
        sampling: frame sampling of the processor, `"uniform"` (reproducible) or `"random"`.
    """
    model = _stop_model(model)
    videos = _as_list(videos, _one_video)
    device, dtype = _device(model), next(model.parameters()).dtype
    embeds = []
    with torch.inference_mode():
        for start in range(0, len(videos), batch_size):
            inputs = processor(videos=list(videos[start : start + batch_size]), return_tensors="pt", sampling=sampling)
            video_mask = inputs.get("video_mask")
            features = model.get_video_features(
                inputs["pixel_values"].to(device, dtype), None if video_mask is None else video_mask.to(device)
            )
            embeds.append(F.normalize(features.float(), dim=-1).cpu())
    return torch.cat(embeds) if embeds else torch.empty(0, model.config.projection_dim)


def embed_texts(model, processor, texts: Sequence[str] | str, batch_size: int = 64) -> torch.Tensor:
    """Normalised text embeddings `[len(texts), projection_dim]` (model and processor as in `embed_videos`); one
    string gives `[1, projection_dim]`."""
    model = _stop_model(model)
    texts = _as_list(texts, _one_text)
    device = _device(model)
    embeds = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            inputs = processor(text=list(texts[start : start + batch_size]), return_tensors="pt", padding=True)
            features = model.get_text_features(inputs["input_ids"].to(device))
            embeds.append(F.normalize(features.float(), dim=-1).cpu())
    return torch.cat(embeds) if embeds else torch.empty(0, model.config.projection_dim)


def rank(query_embeds: torch.Tensor, gallery_embeds: torch.Tensor, top_k: int = 10, chunk_size: int = 1024):
    """
    The `top_k` gallery items of every query by cosine similarity, best first.

    Args:
        query_embeds: `[Q, E]` normalised embeddings (texts for text -> video retrieval).
        gallery_embeds: `[G, E]` normalised embeddings (videos for text -> video retrieval).
        top_k: items per query (capped at `G`).
        chunk_size: queries scored at a time (bounds memory to `chunk_size x G` scores).

    Returns:
        `(scores, indices)`, both `[Q, min(top_k, G)]`: `indices[q]` are rows of `gallery_embeds`.
    """
    if query_embeds.shape[-1] != gallery_embeds.shape[-1]:
        raise ValueError(
            f"rank: query and gallery embeddings differ in size ({query_embeds.shape[-1]} vs "
            f"{gallery_embeds.shape[-1]}); embed both with the same model"
        )
    k = min(top_k, gallery_embeds.shape[0])
    scores, indices = [], []
    with torch.inference_mode():
        gallery = gallery_embeds.float()
        for start in range(0, query_embeds.shape[0], chunk_size):
            top = (query_embeds[start : start + chunk_size].float() @ gallery.t()).topk(k, dim=-1)
            scores.append(top.values)
            indices.append(top.indices)
    if not scores:
        return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
    return torch.cat(scores), torch.cat(indices)


__all__ = ["embed_videos", "embed_texts", "rank"]
