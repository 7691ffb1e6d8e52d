"""Text-to-video and video-to-text retrieval metrics (R@1/5/10, median and mean rank) as an `evaluate` module.

Load it by path, offline: `evaluate.load("<repo>/benchmarks/metrics/video_text_retrieval")`. This file is
loaded standalone, so it imports nothing from the project; `retrieval_ranks` / `retrieval_metrics` are plain
numpy functions other code can reach through the loaded module (`sys.modules[type(metric).__module__]`).

Rank rule (one rule for both directions, for ties too): the rank of a query is
`1 + number of WRONG candidates scoring >= the best correct candidate`. Ties are resolved pessimistically
(a wrong candidate tied with the correct one counts as ranked above it), nothing is counted twice, and the
result does not depend on candidate order.
"""

import datasets
import evaluate
import numpy as np

_CITATION = """\
@article{luo2021clip4clip,
  title={CLIP4Clip: An Empirical Study of CLIP for End to End Video Clip Retrieval},
  author={Luo, Huaishao and Ji, Lei and Zhong, Ming and Chen, Yang and Lei, Wen and Duan, Nan and Li, Tianrui},
  journal={arXiv preprint arXiv:2104.08860},
  year={2021}
}
@article{cheng2021camoe,
  title={Improving Video-Text Retrieval by Multi-Stream Corpus Alignment and Dual Softmax Loss},
  author={Cheng, Xing and Lin, Hezheng and Wu, Xiangyu and Yang, Fan and Shen, Dong},
  journal={arXiv preprint arXiv:2109.04290},
  year={2021}
}
"""

_DESCRIPTION = """\
Recall at 1/5/10 (in percent, 0-100), median rank (MdR) and mean rank (MnR) of text-to-video (T2V) and
video-to-text (V2T) retrieval, from a text-to-video similarity matrix. Ranks are 1-based. The rank of a query
is 1 + the number of wrong candidates scoring >= its best correct candidate (ties count against the query).
T2V: each text has one correct video. V2T: all texts ranked for each video; a video's correct texts are all
its captions and its rank is the rank of its best-ranked caption (its other captions never count against it).
Videos without any caption are left out of V2T.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): the similarity matrix `sim`, one row per text (caption) and
        one column per video: `sim[t, v]` scores text `t` against video `v`, higher is better.
    references (`list` of `int`): for each text, the index of its video (column of `sim`). Several texts may
        share a video. For one caption per video pass `list(range(num_texts))`.
    dsl (`bool`, defaults to `False`): apply dual-softmax inference (DSL) before ranking: T2V ranks
        `sim * softmax(dsl_temperature * sim, axis=0)` (a prior over texts for each video), V2T ranks
        `sim * softmax(dsl_temperature * sim, axis=1)` (a prior over videos for each text). It looks at the
        whole test set at once, so report it as a separate, labelled number.
    dsl_temperature (`float`, defaults to 100.0): the softmax multiplier for cosine similarities (CLIP's logit
        scale); pass 1.0 if `sim` already holds logits multiplied by the logit scale.
Returns:
    `t2v_R@1`, `t2v_R@5`, `t2v_R@10` (`float`, percent), `t2v_MdR`, `t2v_MnR` (`float`, 1-based ranks) and
    the same five for `v2t_`.
Examples:
    >>> metric = evaluate.load("benchmarks/metrics/video_text_retrieval")
    >>> sim = [[0.9, 0.1, 0.3], [0.2, 0.8, 0.7], [0.5, 0.6, 0.4]]
    >>> results = metric.compute(predictions=sim, references=[0, 1, 2])
    >>> results["t2v_R@1"], results["t2v_MdR"], results["v2t_R@1"]
    (66.66666666666666, 1.0, 66.66666666666666)
"""

RECALL_KS = (1, 5, 10)


def rank_metrics(ranks, prefix):
    """R@1/5/10 (percent), median and mean rank of 1-based `ranks`, keys prefixed `"{prefix}_"`."""
    ranks = np.asarray(ranks, dtype=np.float64)
    metrics = {f"{prefix}_R@{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_KS}
    metrics[f"{prefix}_MdR"] = float(np.median(ranks))
    metrics[f"{prefix}_MnR"] = float(np.mean(ranks))
    return metrics


def _check_inputs(sim, text_to_video):
    try:
        sim = np.asarray(sim, dtype=np.float64)
    except ValueError as error:
        raise ValueError(f"sim must be a rectangular [num_texts, num_videos] matrix of numbers: {error}") from None
    if sim.ndim != 2 or sim.shape[0] == 0 or sim.shape[1] == 0:
        raise ValueError(f"sim must be a non-empty [num_texts, num_videos] matrix, got shape {sim.shape}")
    bad_rows = np.flatnonzero(~np.isfinite(sim).all(axis=1))
    if bad_rows.size:
        raise ValueError(
            f"sim contains NaN or inf in {bad_rows.size} of {sim.shape[0]} rows (first: row {bad_rows[0]}); "
            "check the embeddings that produced these texts' rows"
        )
    num_texts, num_videos = sim.shape
    if text_to_video is None:
        if num_texts != num_videos:
            raise ValueError(
                f"sim is {num_texts} texts x {num_videos} videos: pass text_to_video (the video index of each "
                "text); it defaults to one caption per video only for a square matrix"
            )
        return sim, np.arange(num_texts)
    text_to_video = np.asarray(text_to_video)
    if text_to_video.shape != (num_texts,):
        raise ValueError(
            f"text_to_video must hold one video index per text ({num_texts}), got shape {text_to_video.shape}"
        )
    if text_to_video.dtype.kind not in "iu":
        raise ValueError(f"text_to_video must hold integer video indices, got dtype {text_to_video.dtype}")
    out_of_range = np.flatnonzero((text_to_video < 0) | (text_to_video >= num_videos))
    if out_of_range.size:
        first = out_of_range[0]
        raise ValueError(
            f"text_to_video[{first}] = {text_to_video[first]} is not a video index of sim "
            f"(0 to {num_videos - 1}); {out_of_range.size} texts are out of range"
        )
    return sim, text_to_video.astype(np.int64)


def _t2v_ranks(sim, text_to_video):
    target = sim[np.arange(sim.shape[0]), text_to_video]
    # The target itself is the only correct candidate and always counts once: rank = 1 + #wrong >= target.
    return (sim >= target[:, None]).sum(axis=1)


def _v2t_ranks(sim, text_to_video):
    num_videos = sim.shape[1]
    target = sim[np.arange(sim.shape[0]), text_to_video]
    best = np.full(num_videos, -np.inf)
    np.maximum.at(best, text_to_video, target)
    at_least_best = (sim >= best[None, :]).sum(axis=0)
    # Captions of the video itself that reach its best score (at least that best caption) are not wrong.
    own_at_best = np.bincount(text_to_video, weights=target >= best[text_to_video], minlength=num_videos)
    has_caption = np.bincount(text_to_video, minlength=num_videos) > 0
    return (1 + at_least_best - own_at_best.astype(np.int64))[has_caption]


def _softmax(x, axis):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def retrieval_ranks(sim, text_to_video=None, dsl=False, dsl_temperature=100.0):
    """1-based ranks: `(t2v_ranks [num_texts], v2t_ranks [num videos with a caption])`.

    `sim` is [num_texts, num_videos] (higher = better); `text_to_video[t]` is the video of text `t`
    (defaults to the identity for a square `sim`). See the module docstring for the rank rule.
    """
    sim, text_to_video = _check_inputs(sim, text_to_video)
    t2v_scores, v2t_scores = sim, sim
    if dsl:
        t2v_scores = sim * _softmax(dsl_temperature * sim, axis=0)
        v2t_scores = sim * _softmax(dsl_temperature * sim, axis=1)
    return _t2v_ranks(t2v_scores, text_to_video), _v2t_ranks(v2t_scores, text_to_video)


def retrieval_metrics(sim, text_to_video=None, dsl=False, dsl_temperature=100.0):
    """`{"t2v_R@1", ..., "t2v_MnR", "v2t_R@1", ..., "v2t_MnR"}` of a [num_texts, num_videos] similarity matrix."""
    t2v_ranks, v2t_ranks = retrieval_ranks(sim, text_to_video, dsl=dsl, dsl_temperature=dsl_temperature)
    return {**rank_metrics(t2v_ranks, "t2v"), **rank_metrics(v2t_ranks, "v2t")}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VideoTextRetrieval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    # float64 keeps float32 and float64 similarities exact (float32 storage could create ties).
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2104.08860", "https://arxiv.org/abs/2109.04290"],
        )

    def _compute(self, predictions, references, dsl=False, dsl_temperature=100.0):
        return retrieval_metrics(predictions, references, dsl=dsl, dsl_temperature=dsl_temperature)
