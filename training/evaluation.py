"""Evaluation of STOP models: embedding a dataset through an `Accelerator`, ranks, retrieval and classification
metrics, reversed-pair accuracy. Training validation and `benchmarks/run_eval.py` share this module.

- `embed_video_dataset` / `embed_text_list`: every video / text once, batched on the accelerator's device under
  its autocast (`--mixed_precision`); with several processes each embeds its shard (the prepared DataLoader's
  share of the gallery, a slice of the texts) and the results are gathered, so every process ends with all
  embeddings in dataset order.
- `target_ranks` / `rank_of_targets`: T2V / V2T ranks in text chunks, never holding the dense similarity matrix.
- `class_text_embeds`: prompt ensembling for zero-shot recognition (as CLIP's): each template's text embedding
  is normalised, the templates of a class averaged, the mean renormalised.
- `evaluate_retrieval` / `evaluate_classification`: the metric dictionaries reported by training and evaluation.

Metrics are the `evaluate` modules of `benchmarks/metrics/`, loaded by path (`load_metric`), so this layer
imports nothing from `benchmarks/`.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path

import evaluate
import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from training.data import reversed_pair_accuracy, split_pair_accuracy, twin_pairs
from training.defaults import label_texts

METRICS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "metrics"
RECALL_KS = (1, 5, 10)
# Counts are summed as float32 0./1. values: exact up to 2**24.
_EXACT_FLOAT32_COUNT = 2**24
DSL_MAX_GALLERY = 5000  # the dual softmax needs the dense [texts, videos] matrix
# Class-name templates for zero-shot action recognition (a subset of CLIP's Kinetics-700 prompts).
VIDEO_CLASS_TEMPLATES = (
    "a video of {}.",
    "a video of a person {}.",
    "a video of a person doing {}.",
    "a video of a person performing {}.",
    "a video of a person practicing {}.",
    "a photo of a person {}.",
    "an example of a person {}.",
    "a demonstration of {}.",
)

__all__ = [
    "DSL_MAX_GALLERY",
    "VIDEO_CLASS_TEMPLATES",
    "class_text_embeds",
    "embed_text_list",
    "embed_video_dataset",
    "evaluate_classification",
    "evaluate_retrieval",
    "format_template",
    "load_metric",
    "rank_metrics",
    "rank_of_targets",
    "reversed_pair_accuracy",
    "split_pair_accuracy",
    "target_ranks",
]


def load_metric(name: str):
    """An `evaluate` module of `benchmarks/metrics/` (`video_text_retrieval`, `video_classification`), by path."""
    return evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)


@functools.lru_cache
def _metric_function(name: str, function: str):
    """A plain numpy function of a metric module (fast on large galleries: no Arrow round trip)."""
    return getattr(sys.modules[type(load_metric(name)).__module__], function)


# ----------------------------------------------------------------------------------------------------------------
# Embedding
# ----------------------------------------------------------------------------------------------------------------


def _autocast(accelerator):
    return accelerator.autocast() if accelerator is not None else contextlib.nullcontext()


def _is_main(accelerator) -> bool:
    return accelerator is None or accelerator.is_local_main_process


@torch.no_grad()
def embed_video_dataset(model, dataloader, accelerator=None, progress: bool = False, desc: str = "Embedding videos"):
    """`(indices, normalised video embeddings [N, E] float32 CPU, failure messages)` over a (possibly prepared,
    sharded) DataLoader of `VideoTextCollator` batches, in increasing dataset index.

    Every video is embedded once; with several processes the shards are gathered and deduplicated (a prepared
    loader repeats samples at the end of the last shard to even the batches).
    """
    model.eval()
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    indices, embeds, failed = [], [], []
    for batch in tqdm(dataloader, desc=desc, disable=not (progress and _is_main(accelerator))):
        failed += batch["failed"]
        if len(batch["indices"]) == 0:
            continue
        with _autocast(accelerator):
            features = model.get_video_features(
                pixel_values=batch["pixel_values"].to(device), video_mask=batch["video_mask"].to(device)
            )
        indices.append(batch["indices"].cpu())
        embeds.append(F.normalize(features.float(), dim=-1).cpu())
    shards = [(torch.cat(indices) if indices else torch.empty(0, dtype=torch.long), embeds, failed)]
    if accelerator is not None and accelerator.num_processes > 1:
        shards = gather_object(shards)
    unique, messages = {}, []
    for shard_indices, shard_embeds, shard_failed in shards:
        messages += shard_failed
        rows = torch.cat(shard_embeds) if shard_embeds else torch.empty(0)
        for index, embed in zip(shard_indices.tolist(), rows):
            unique.setdefault(index, embed)
    order = sorted(unique)
    video_embeds = torch.stack([unique[i] for i in order]) if order else torch.empty(0, model.config.projection_dim)
    return np.asarray(order, dtype=np.int64), video_embeds, sorted(set(messages))


@torch.no_grad()
def embed_text_list(
    model,
    processor,
    texts: list[str],
    batch_size: int = 256,
    accelerator=None,
    progress: bool = False,
    desc: str = "Embedding texts",
) -> torch.Tensor:
    """Normalised text embeddings `[len(texts), E]` (float32, CPU), each text once; with several processes each
    embeds a contiguous slice and the slices are gathered."""
    model.eval()
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    per_process = -(-len(texts) // world)
    start, end = rank * per_process, min(len(texts), (rank + 1) * per_process)
    out = []
    steps = range(start, end, batch_size)
    for offset in tqdm(steps, desc=desc, disable=not (progress and _is_main(accelerator))):
        inputs = processor(text=list(texts[offset : min(offset + batch_size, end)]), padding="max_length")
        with _autocast(accelerator):
            features = model.get_text_features(
                input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device)
            )
        out.append(F.normalize(features.float(), dim=-1).cpu())
    embeds = torch.cat(out) if out else torch.empty(0, model.config.projection_dim)
    if world > 1:
        embeds = torch.cat(gather_object([embeds]))  # in process order: the slices in text order
    return embeds


def format_template(template: str, name: str) -> str:
    """A class name in a template: `"a video of {}"` and `"a video of {label}"` both work."""
    return label_texts([name], template)[0]


def class_text_embeds(
    model,
    processor,
    class_names: list[str],
    templates,
    batch_size: int = 256,
    accelerator=None,
    progress: bool = False,
) -> torch.Tensor:
    """`[num_classes, E]` normalised class embeddings by prompt ensembling: every template's text embedding is
    normalised, the templates of a class are averaged, and the mean is renormalised (CLIP's recipe)."""
    templates = [templates] if isinstance(templates, str) else list(templates)
    if not templates:
        raise ValueError("class_text_embeds needs at least one template, e.g. 'a video of {}.'")
    texts = [format_template(template, name) for name in class_names for template in templates]
    embeds = embed_text_list(model, processor, texts, batch_size, accelerator, progress, desc="Embedding classes")
    embeds = embeds.view(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(embeds, dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# Ranks
# ----------------------------------------------------------------------------------------------------------------


def rank_metrics(ranks, prefix):
    """R@1/5/10 (percent), median and mean rank of 1-based `ranks`, keys prefixed `"{prefix}_"` (the retrieval
    metric module's own function, so the script numbers and the `evaluate` module cannot drift)."""
    return _metric_function("video_text_retrieval", "rank_metrics")(ranks, prefix)


def _embeddings(embeds, name, device):
    embeds = torch.as_tensor(embeds).to(device=device, dtype=torch.float32)
    if embeds.ndim != 2 or embeds.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [num, dim] matrix, got shape {tuple(embeds.shape)}")
    bad_rows = torch.nonzero(~torch.isfinite(embeds).all(dim=1)).flatten()
    if bad_rows.numel():
        raise ValueError(
            f"{name} contains NaN or inf in {bad_rows.numel()} of {embeds.shape[0]} rows "
            f"(first: row {bad_rows[0].item()})"
        )
    return F.normalize(embeds, dim=-1)


def _text_to_video(text_to_video, num_texts, num_videos, device):
    if text_to_video is None:
        if num_texts != num_videos:
            raise ValueError(
                f"{num_texts} texts and {num_videos} videos: pass text_to_video (the video index of each text); "
                "it defaults to one caption per video only when the counts match"
            )
        return torch.arange(num_texts, device=device)
    text_to_video = torch.as_tensor(text_to_video)
    if text_to_video.shape != (num_texts,) or text_to_video.is_floating_point() or text_to_video.is_complex():
        raise ValueError(
            f"text_to_video must hold one integer video index per text ({num_texts}), got "
            f"{text_to_video.dtype} of shape {tuple(text_to_video.shape)}"
        )
    out_of_range = torch.nonzero((text_to_video < 0) | (text_to_video >= num_videos)).flatten()
    if out_of_range.numel():
        first = out_of_range[0].item()
        raise ValueError(
            f"text_to_video[{first}] = {text_to_video[first].item()} is not a video index "
            f"(0 to {num_videos - 1}); {out_of_range.numel()} texts are out of range"
        )
    return text_to_video.to(device=device, dtype=torch.long)


@torch.no_grad()
def target_ranks(text_embeds, video_embeds, text_to_video=None, chunk_size=1024, device=None):
    """1-based ranks `(t2v_ranks [num_texts], v2t_ranks [num videos with a caption])` as int64 numpy arrays.

    Rank rule (the `video_text_retrieval` module's): the rank of a query is `1 + number of wrong candidates
    scoring >= its best correct candidate`, so ties count against the query; a video's correct texts are all
    its captions (V2T rank = rank of its best caption among all texts, its other captions never counting
    against it) and videos without a caption are left out of V2T.

    Embeddings ([num_texts, dim], [num_videos, dim]; tensors or arrays) are L2-normalised here. Two passes
    over text chunks: the first ranks each text's video and finds each video's best caption score, the second
    counts, per video, the texts of other videos reaching that score. Besides the embeddings, memory holds one
    float32 [chunk_size, num_videos] block of scores.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of texts, got {chunk_size}")
    device = torch.device(device) if device is not None else torch.as_tensor(text_embeds).device
    texts = _embeddings(text_embeds, "text_embeds", device)
    videos = _embeddings(video_embeds, "video_embeds", device)
    if texts.shape[1] != videos.shape[1]:
        raise ValueError(f"text_embeds have dim {texts.shape[1]} but video_embeds have dim {videos.shape[1]}")
    num_texts, num_videos = texts.shape[0], videos.shape[0]
    if num_videos > _EXACT_FLOAT32_COUNT:
        raise ValueError(f"{num_videos} videos: rank them in galleries of at most {_EXACT_FLOAT32_COUNT}")
    text_to_video = _text_to_video(text_to_video, num_texts, num_videos, device)
    chunks = [(start, min(start + chunk_size, num_texts)) for start in range(0, num_texts, chunk_size)]
    buffer = torch.empty(min(chunk_size, num_texts), num_videos, device=device)

    def scores(start, end):
        # The same chunk gives the same scores in both passes, so `best` is compared consistently.
        return torch.matmul(texts[start:end], videos.T, out=buffer[: end - start])

    t2v_ranks = torch.empty(num_texts, dtype=torch.long, device=device)
    target = torch.empty(num_texts, dtype=torch.float32, device=device)
    for start, end in chunks:
        sim = scores(start, end)
        target[start:end] = sim.gather(1, text_to_video[start:end, None]).squeeze(1)
        # In place, as 0./1. floats: a bool mask would be summed through an int64 copy 2x the chunk's size.
        t2v_ranks[start:end] = sim.ge_(target[start:end, None]).sum(dim=1).long()

    best = torch.full((num_videos,), -torch.inf, device=device)
    best = best.scatter_reduce(0, text_to_video, target, reduce="amax")
    at_least_best = torch.zeros(num_videos, dtype=torch.long, device=device)
    own_at_best = torch.zeros(num_videos, dtype=torch.long, device=device)
    for start, end in chunks:
        sim = scores(start, end)
        chunk_videos = text_to_video[start:end]
        own = sim.gather(1, chunk_videos[:, None]).squeeze(1) >= best[chunk_videos]
        own_at_best.scatter_add_(0, chunk_videos, own.long())
        at_least_best += sim.ge_(best[None, :]).sum(dim=0).long()
    has_caption = torch.bincount(text_to_video, minlength=num_videos) > 0
    v2t_ranks = (1 + at_least_best - own_at_best)[has_caption]
    return t2v_ranks.cpu().numpy(), v2t_ranks.cpu().numpy()


def rank_of_targets(text_embeds, video_embeds, text_to_video=None, chunk_size=1024, device=None):
    """`{"t2v_R@1", ..., "t2v_MnR", "v2t_R@1", ..., "v2t_MnR"}` (recalls in percent) of a text-video gallery.

    Same keys and rank rule as the `video_text_retrieval` metric module; see `target_ranks` for the inputs.
    """
    t2v_ranks, v2t_ranks = target_ranks(text_embeds, video_embeds, text_to_video, chunk_size, device)
    return {**rank_metrics(t2v_ranks, "t2v"), **rank_metrics(v2t_ranks, "v2t")}


# ----------------------------------------------------------------------------------------------------------------
# Metrics of a split
# ----------------------------------------------------------------------------------------------------------------


def evaluate_retrieval(
    model,
    processor,
    dataset,
    dataloader,
    accelerator=None,
    chunk_size: int = 1024,
    text_batch_size: int = 256,
    dsl_max_gallery: int = DSL_MAX_GALLERY,
    progress: bool = False,
    videos=None,
) -> dict:
    """Retrieval metrics of a `VideoTextDataset` split (every caption is a query).

    Returns `num_videos`, `num_texts`, `num_failed` (videos that failed to decode: left out with their captions),
    T2V / V2T R@1/5/10, MdR, MnR (percent, 1-based ranks; computed in chunks on the accelerator's device), and,
    for galleries of at most `dsl_max_gallery` videos, the dual-softmax numbers (`dsl/...`) and the
    reversed-pair accuracy (`pair_accuracy`, when the split has a `pair_id` column). `videos`: the output of
    `embed_video_dataset` when it was computed already (`dataloader` is then not read).
    """
    indices, video_embeds, failed = videos or embed_video_dataset(model, dataloader, accelerator, progress)
    if len(indices) == 0:
        raise ValueError(f"No video of the split could be decoded ({len(failed)} failed; first: {failed[:1]})")
    texts, text_to_video = dataset.captions()
    position = {int(index): i for i, index in enumerate(indices)}
    keep = [t for t, v in enumerate(text_to_video) if v in position]
    text_embeds = embed_text_list(model, processor, [texts[t] for t in keep], text_batch_size, accelerator, progress)
    targets = [position[text_to_video[t]] for t in keep]
    device = accelerator.device if accelerator is not None else None
    results = {"num_videos": len(indices), "num_texts": len(keep), "num_failed": len(failed)}
    results.update(rank_of_targets(text_embeds, video_embeds, targets, chunk_size=chunk_size, device=device))
    if len(indices) <= dsl_max_gallery:
        sim = (text_embeds @ video_embeds.t()).numpy()
        dsl = load_metric("video_text_retrieval").compute(predictions=sim, references=targets, dsl=True)
        results.update({f"dsl/{k}": v for k, v in dsl.items()})
        results.update(split_pair_accuracy(sim, targets, indices, dataset.dataset))
        results.update(twin_cosine(video_embeds, indices, dataset.dataset))
    return results


def twin_cosine(video_embeds, indices, split) -> dict[str, float]:
    """Mean cosine between the embeddings of a clip and its reversed twin (`twin_cosine`; 1.0 = the model cannot
    tell the two orders apart at all). `video_embeds` [videos, E] in the order of `indices` (split rows); pairs are
    the `pair_id` groups of exactly two videos. Empty when the split has no `pair_id` column or no pair."""
    if "pair_id" not in split.column_names:
        return {}
    pairs = twin_pairs(split.select([int(i) for i in indices])["pair_id"])
    if not pairs:
        return {}
    embeds = F.normalize(torch.as_tensor(video_embeds, dtype=torch.float32), dim=-1)
    first, second = torch.tensor(pairs).T
    return {"twin_cosine": float((embeds[first] * embeds[second]).sum(-1).mean())}


def evaluate_classification(
    model,
    processor,
    dataset,
    dataloader,
    class_names: list[str],
    templates,
    accelerator=None,
    text_batch_size: int = 256,
    progress: bool = False,
    videos=None,
) -> dict:
    """Zero-shot recognition of a `VideoTextDataset` split with labels: top-1 / top-5 and mean per-class accuracy
    (percent) of `argmax(video_embeds @ class_embeds.T)`, class embeddings by prompt ensembling over `templates`.
    `videos` as in `evaluate_retrieval`."""
    indices, video_embeds, failed = videos or embed_video_dataset(model, dataloader, accelerator, progress)
    if len(indices) == 0:
        raise ValueError(f"No video of the split could be decoded ({len(failed)} failed; first: {failed[:1]})")
    class_embeds = class_text_embeds(model, processor, class_names, templates, text_batch_size, accelerator, progress)
    labels = dataset.labels()
    scores = (video_embeds @ class_embeds.t()).numpy()
    compute = _metric_function("video_classification", "classification_metrics")
    results = compute(scores, [labels[i] for i in indices])
    results.pop("per_class_accuracy")
    results.update({"num_videos": len(indices), "num_classes": len(class_names), "num_failed": len(failed)})
    return results
