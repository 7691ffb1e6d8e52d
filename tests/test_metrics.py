import json
import subprocess
import sys
import time

import evaluate
import numpy as np
import pytest
import torch

from benchmarks.ranking import rank_of_targets, target_ranks

from .conftest import REPO_ROOT

METRICS_DIR = REPO_ROOT / "benchmarks" / "metrics"


def load(name):
    # In memory: an on-disk instance whose `_compute` raised keeps its cache file locked, and every later
    # instance then waits 1 s for that lock.
    return evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)


@pytest.fixture(scope="module")
def retrieval():
    return load("video_text_retrieval")


@pytest.fixture(scope="module")
def classification():
    return load("video_classification")


def module_of(metric):
    """The standalone metric file as loaded by `evaluate`, for its plain numpy functions."""
    return sys.modules[type(metric).__module__]


# Identity mapping. Ties count against the query: rank = 1 + #wrong candidates scoring >= the correct one.
TIED_SIM = [
    [0.9, 0.1, 0.2, 0.3],  # text 0 -> video 0: nothing above                      -> rank 1
    [0.5, 0.5, 0.1, 0.0],  # text 1 -> video 1: ties with video 0                   -> rank 2
    [0.3, 0.4, 0.2, 0.2],  # text 2 -> video 2: 0.3, 0.4 above, ties with video 3   -> rank 4
    [0.1, 0.2, 0.3, 0.6],  # text 3 -> video 3: nothing above                      -> rank 1
]
# V2T, column by column: video 0 -> text 0 rank 1; video 1 -> text 1 rank 1 (0.5 beats 0.4, 0.2, 0.1);
# video 2 -> text 2 (0.2): text 3 (0.3) above, text 0 (0.2) tied -> rank 3; video 3 -> text 3 rank 1.


def test_retrieval_ranks_count_ties_against_the_query(retrieval):
    t2v, v2t = module_of(retrieval).retrieval_ranks(TIED_SIM)
    assert t2v.tolist() == [1, 2, 4, 1]
    assert v2t.tolist() == [1, 1, 3, 1]

    results = retrieval.compute(predictions=TIED_SIM, references=[0, 1, 2, 3])
    assert results == {
        "t2v_R@1": 50.0,
        "t2v_R@5": 100.0,
        "t2v_R@10": 100.0,
        "t2v_MdR": 1.5,
        "t2v_MnR": 2.0,
        "v2t_R@1": 75.0,
        "v2t_R@5": 100.0,
        "v2t_R@10": 100.0,
        "v2t_MdR": 1.0,
        "v2t_MnR": 1.5,
    }


def test_retrieval_ranks_do_not_depend_on_candidate_order(retrieval):
    ranks = module_of(retrieval).retrieval_ranks
    permutation = [2, 0, 3, 1]
    sim = np.asarray(TIED_SIM)[:, permutation]
    text_to_video = [permutation.index(v) for v in range(4)]
    t2v, v2t = ranks(sim, text_to_video)
    assert t2v.tolist() == [1, 2, 4, 1]
    assert sorted(v2t.tolist()) == [1, 1, 1, 3]


# Five captions of three videos, plus video 3 that no text describes (a distractor).
MULTI_CAPTION_SIM = [
    #  v0    v1    v2    v3
    [0.2, 0.6, 0.1, 0.0],  # text 0 -> video 0: 0.6 above                          -> rank 2
    [0.7, 0.3, 0.1, 0.7],  # text 1 -> video 0: ties with video 3                  -> rank 2
    [0.1, 0.4, 0.5, 0.3],  # text 2 -> video 1: 0.5 above                          -> rank 2
    [0.3, 0.45, 0.8, 0.1],  # text 3 -> video 2: nothing above                     -> rank 1
    [0.0, 0.9, 0.8, 0.2],  # text 4 -> video 2: 0.9 above                          -> rank 2
]
MULTI_CAPTION_TEXT_TO_VIDEO = [0, 0, 1, 2, 2]
# V2T ranks all five texts for each captioned video; its rank is that of its best caption:
# video 0: best caption text 1 (0.7), no other video's text reaches 0.7      -> rank 1 (text 0 alone: 4)
# video 1: text 2 (0.4) below text 0 (0.6), text 3 (0.45), text 4 (0.9)        -> rank 4
# video 2: texts 3 and 4 tie at 0.8; a video's own captions never count against it -> rank 1
# video 3: no caption, left out of V2T.


def test_multi_caption_t2v_and_v2t_use_every_caption(retrieval):
    t2v, v2t = module_of(retrieval).retrieval_ranks(MULTI_CAPTION_SIM, MULTI_CAPTION_TEXT_TO_VIDEO)
    assert t2v.tolist() == [2, 2, 2, 1, 2]
    assert v2t.tolist() == [1, 4, 1]

    results = retrieval.compute(predictions=MULTI_CAPTION_SIM, references=MULTI_CAPTION_TEXT_TO_VIDEO)
    assert results["t2v_R@1"] == 20.0 and results["t2v_MdR"] == 2.0 and results["t2v_MnR"] == pytest.approx(1.8)
    assert results["v2t_R@1"] == pytest.approx(200 / 3) and results["v2t_R@5"] == 100.0
    assert results["v2t_MdR"] == 1.0 and results["v2t_MnR"] == 2.0


def test_dual_softmax_reranks_a_text_that_another_text_matches_better(retrieval):
    # Text 0 prefers video 1 (0.6 > 0.5) but text 1 matches video 1 far better (0.9): the prior over texts of
    # video 1 all but removes text 0's score for it, so text 0 then retrieves video 0.
    sim = [[0.5, 0.6], [0.1, 0.9]]
    plain = retrieval.compute(predictions=sim, references=[0, 1])
    dsl = retrieval.compute(predictions=sim, references=[0, 1], dsl=True)
    assert plain["t2v_R@1"] == 50.0 and dsl["t2v_R@1"] == 100.0
    assert plain["v2t_R@1"] == dsl["v2t_R@1"] == 100.0

    rng = np.random.default_rng(0)
    sim = rng.uniform(-1, 1, size=(12, 9))
    text_to_video = rng.integers(0, 9, size=12)
    prior_over_texts = np.exp(100 * sim) / np.exp(100 * sim).sum(axis=0, keepdims=True)
    prior_over_videos = np.exp(100 * sim) / np.exp(100 * sim).sum(axis=1, keepdims=True)
    ranks = module_of(retrieval).retrieval_ranks
    t2v, v2t = ranks(sim, text_to_video, dsl=True)
    assert np.array_equal(t2v, ranks(sim * prior_over_texts, text_to_video)[0])
    assert np.array_equal(v2t, ranks(sim * prior_over_videos, text_to_video)[1])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_similarities_are_rejected_with_their_rows(retrieval, bad):
    sim = np.random.default_rng(0).normal(size=(6, 6))
    sim[2, 4] = bad
    sim[5, 0] = bad
    with pytest.raises(ValueError, match=r"NaN or inf in 2 of 6 rows \(first: row 2\)"):
        module_of(retrieval).retrieval_metrics(sim)
    with pytest.raises(ValueError, match=r"NaN or inf in 2 of 6 rows \(first: row 2\)"):
        load("video_text_retrieval").compute(predictions=sim, references=list(range(6)))


def test_mismatched_shapes_are_rejected(retrieval):
    metrics = module_of(retrieval).retrieval_metrics
    with pytest.raises(ValueError, match="pass text_to_video"):
        metrics(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"one video index per text \(3\)"):
        metrics(np.zeros((3, 4)), [0, 1])
    with pytest.raises(ValueError, match=r"text_to_video\[1\] = 4 is not a video index of sim \(0 to 3\)"):
        metrics(np.zeros((3, 4)), [0, 4, 1])
    with pytest.raises(ValueError, match="non-empty"):
        metrics(np.zeros(4))
    with pytest.raises(ValueError, match="rectangular"):
        load("video_text_retrieval").compute(predictions=[[0.1, 0.2], [0.3]], references=[0, 1])


def test_retrieval_module_matches_plain_function_on_a_1000_gallery(retrieval):
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(1000, 1000)).astype(np.float32)
    start = time.perf_counter()
    results = retrieval.compute(predictions=sim, references=np.arange(1000))
    assert time.perf_counter() - start < 10
    assert results == module_of(retrieval).retrieval_metrics(sim)


def quantised_embeddings(rng, num, dim):
    """Rows with four +-1 entries: normalised to exact +-0.5 entries, so every dot product is exact and tied often."""
    embeds = np.zeros((num, dim), dtype=np.float32)
    for row in embeds:
        row[rng.choice(dim, size=4, replace=False)] = rng.choice([-1.0, 1.0], size=4)
    return embeds


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64])
def test_chunked_ranks_equal_dense_module_with_ties_and_multi_captions(retrieval, chunk_size):
    rng = np.random.default_rng(chunk_size)
    texts, videos = quantised_embeddings(rng, 40, 8), quantised_embeddings(rng, 25, 8)
    text_to_video = rng.integers(0, 22, size=40)  # several captions per video; some videos have none
    sim = (texts / 2.0).astype(np.float64) @ (videos / 2.0).T.astype(np.float64)
    assert len(np.unique(sim)) <= 9  # multiples of 0.25 in [-1, 1]: plenty of ties

    dense_t2v, dense_v2t = module_of(retrieval).retrieval_ranks(sim, text_to_video)
    t2v, v2t = target_ranks(torch.from_numpy(texts), torch.from_numpy(videos), text_to_video, chunk_size)
    assert np.array_equal(t2v, dense_t2v) and np.array_equal(v2t, dense_v2t)
    assert rank_of_targets(texts, videos, text_to_video, chunk_size) == retrieval.compute(
        predictions=sim, references=text_to_video
    )


def test_chunked_ranks_equal_dense_module_on_float_embeddings(retrieval):
    rng = np.random.default_rng(0)
    texts, videos = rng.normal(size=(300, 32)), rng.normal(size=(120, 32))
    text_to_video = np.concatenate([np.arange(120), rng.integers(0, 120, size=180)])
    normalised = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in (texts, videos)]
    sim = normalised[0] @ normalised[1].T
    expected = retrieval.compute(predictions=sim, references=text_to_video)
    assert rank_of_targets(texts, videos, text_to_video, chunk_size=64, device="cpu") == expected


def test_chunked_ranks_reject_bad_inputs():
    texts = torch.randn(5, 8)
    with pytest.raises(ValueError, match=r"video_embeds contains NaN or inf in 1 of 4 rows \(first: row 3\)"):
        rank_of_targets(texts, torch.randn(4, 8).index_fill_(0, torch.tensor([3]), float("nan")), [0, 1, 2, 3, 0])
    with pytest.raises(ValueError, match="pass text_to_video"):
        rank_of_targets(texts, torch.randn(4, 8))
    with pytest.raises(ValueError, match="dim 8 but video_embeds have dim 6"):
        rank_of_targets(texts, torch.randn(5, 6))


_LARGE_GALLERY_SCRIPT = """
import json, resource, sys, time
import torch
from benchmarks.ranking import rank_of_targets

torch.manual_seed(0)
texts, videos = torch.randn(10_000, 32), torch.randn(10_000, 32)
rank_of_targets(texts[:64], videos[:64])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
metrics = rank_of_targets(texts, videos, torch.arange(10_000), chunk_size=2048)
seconds = time.perf_counter() - start
peak_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"seconds": seconds, "peak_growth_mib": peak_growth_mib, "metrics": metrics}))
"""


def test_chunked_ranks_on_a_10k_gallery_are_fast_and_never_hold_the_dense_matrix():
    run = subprocess.run(
        [sys.executable, "-c", _LARGE_GALLERY_SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["seconds"] < 10
    # A dense float32 10k x 10k matrix is 381 MiB (float64: 763 MiB); one 2048-text block of scores is 78 MiB.
    assert report["peak_growth_mib"] < 160
    # Random 32-dim embeddings: the true video is a random draw among 10k.
    assert report["metrics"]["t2v_MdR"] == pytest.approx(5000, rel=0.1)


# Six classes. rank = 1 + number of other classes scoring >= the true class.
CLASS_SCORES = [
    [0.1, 0.7, 0.2, 0.0, 0.0, 0.0],  # true 1: top                         -> rank 1
    [0.5, 0.5, 0.0, 0.0, 0.0, 0.0],  # true 0: tied with class 1           -> rank 2
    [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # true 5: last                        -> rank 6
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # true 2: 0.4, 0.5, 0.6 above         -> rank 4
    [0.0, 0.0, 1.0, 0.0, 0.0, 0.0],  # true 2: top                         -> rank 1
]
CLASS_LABELS = [1, 0, 5, 2, 2]


def test_classification_top_k_and_per_class_accuracy_by_hand(classification):
    results = classification.compute(predictions=CLASS_SCORES, references=CLASS_LABELS)
    assert results == {
        "top1_accuracy": 40.0,  # ranks 1 and 1 of 5
        "top5_accuracy": 80.0,  # all but rank 6
        "per_class_accuracy": {0: 0.0, 1: 100.0, 2: 50.0, 5: 0.0},
        "mean_class_accuracy": 37.5,  # classes 3 and 4 have no video and are not averaged
    }
    ranks_2 = classification.compute(predictions=CLASS_SCORES, references=CLASS_LABELS, top_k=(2, 4, 7))
    assert ranks_2["top2_accuracy"] == 60.0 and ranks_2["top4_accuracy"] == 80.0
    assert "top7_accuracy" not in ranks_2  # more than the six classes


def test_classification_from_predicted_labels(classification):
    results = classification.compute(predictions=[1, 1, 0, 2, 2], references=CLASS_LABELS)
    assert results == {
        "top1_accuracy": 60.0,
        "per_class_accuracy": {0: 0.0, 1: 100.0, 2: 100.0, 5: 0.0},
        "mean_class_accuracy": 50.0,
    }


def test_classification_rejects_non_finite_scores_and_unknown_labels():
    scores = np.asarray(CLASS_SCORES)
    scores[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf in 1 of 5 rows \(first: row 3\)"):
        load("video_classification").compute(predictions=scores, references=CLASS_LABELS)
    with pytest.raises(ValueError, match=r"references\[2\] = 6 is not a class index \(0 to 5\)"):
        load("video_classification").compute(predictions=CLASS_SCORES, references=[1, 0, 6, 2, 2])
    with pytest.raises(ValueError, match=r"predictions\[0\] = 3 is not a class index \(0 to 2\)"):
        load("video_classification").compute(predictions=[3, 0], references=[1, 0], num_classes=3)
