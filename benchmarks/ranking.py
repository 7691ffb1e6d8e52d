"""Retrieval ranks for galleries too big for a dense similarity matrix.

`rank_of_targets` gives the same numbers as the `video_text_retrieval` metric module on
`text_embeds @ video_embeds.T` (cosine similarity), but only ever holds `chunk_size` rows of it: texts are
scored in chunks with a float32 matmul on `device`. Rank rule (the module's): the rank of a query is
`1 + number of wrong candidates scoring >= its best correct candidate`, so ties count against the query; a
video's correct texts are all its captions (V2T rank = rank of its best caption among all texts, its other
captions never counting against it) and videos without a caption are left out of V2T.
"""

import numpy as np
import torch
import torch.nn.functional as F


RECALL_KS = (1, 5, 10)
# Counts are summed as float32 0./1. values: exact up to 2**24.
_EXACT_FLOAT32_COUNT = 2**24


def rank_metrics(ranks, prefix):
    """R@1/5/10 (percent), median and mean rank of 1-based `ranks`, keys prefixed `"{prefix}_"`."""
    ranks = np.asarray(ranks, dtype=np.float64)
    metrics = {f"{prefix}_R@{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_KS}
    metrics[f"{prefix}_MdR"] = float(np.median(ranks))
    metrics[f"{prefix}_MnR"] = float(np.mean(ranks))
    return metrics


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
