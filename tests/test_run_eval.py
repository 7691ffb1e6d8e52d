"""`python -m benchmarks.run_eval` on prepared datasets, and the shared evaluation module behind it."""

import contextlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate.state import AcceleratorState
from torch.utils.data import DataLoader, Subset

from benchmarks import run_eval
from modeling_stop import STOPModel, STOPProcessor
from training import evaluation, prepare_data
from training.data import VideoTextCollator, VideoTextDataset, load_video_text_dataset

from .conftest import REPO_ROOT
from .test_metrics import load
from .test_prepare_data import _argv, mini_msrvtt, mini_msvd, mini_ucf101

MODEL = str(REPO_ROOT / "checkpoints" / "stop-synthetic")


@pytest.fixture(scope="module")
def stop_synthetic():
    return STOPModel.from_pretrained(MODEL).eval(), STOPProcessor.from_pretrained(MODEL)


def _eval(tmp_path, dataset, *extra):
    AcceleratorState._reset_state(reset_partial_state=True)  # each run is a fresh process for accelerate
    out = tmp_path / "eval.json"
    run_eval.main(["--model_name_or_path", MODEL, "--dataset_name", str(dataset), "--output_json", str(out), *extra])
    return json.loads(out.read_text())


def test_run_eval_on_prepared_msrvtt_matches_the_dense_metric_on_independent_embeddings(
    tmp_path, stop_synthetic, capsys
):
    inputs = mini_msrvtt(tmp_path / "raw")
    out = tmp_path / "msrvtt"
    prepare_data.main(_argv("msrvtt", inputs, out))
    report = _eval(tmp_path, out, "--split", "test")
    metrics = report["metrics"]
    assert (metrics["num_videos"], metrics["num_texts"], metrics["num_failed"]) == (2, 2, 0)
    assert report["num_processes"] == 1 and report["task"] == "retrieval"
    captured = capsys.readouterr()
    assert json.loads(captured.out[captured.out.index("\n{") :])["metrics"] == metrics  # the report is printed
    assert "Embedding videos" in captured.err and "Embedding texts" in captured.err  # progress bars

    # The same numbers from the plain embedding helpers and the dense `evaluate` module.
    model, processor = stop_synthetic
    from modeling_stop import embed_texts, embed_videos

    videos = embed_videos(model, processor, [str(out / "test" / "video3.mp4"), str(out / "test" / "video4.mp4")])
    texts = embed_texts(model, processor, ["a person cooks in a kitchen", "a dog runs on grass"])
    expected = load("video_text_retrieval").compute(predictions=(texts @ videos.t()).numpy(), references=[0, 1])
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key

    # Old flag names are aliases; the batch size does not change the numbers (the paper variant is batch-independent).
    again = _eval(
        tmp_path, out, "--split", "test", "--batch_size", "1", "--max_samples", "2", "--mixed_precision", "no"
    )
    assert {k: again["metrics"][k] for k in expected} == {k: metrics[k] for k in expected}

    # bf16 autocast through the Accelerator (the CPU supports it; fp16 needs a GPU).
    bf16 = _eval(tmp_path, out, "--split", "test", "--mixed_precision", "bf16")
    assert bf16["mixed_precision"] == "bf16" and bf16["metrics"]["num_videos"] == 2
    assert bf16["metrics"]["t2v_R@5"] == 100.0 and 1.0 <= bf16["metrics"]["t2v_MnR"] <= 2.0


def test_run_eval_ranks_every_caption_of_msvd_test_videos(tmp_path):
    out = tmp_path / "msvd"
    prepare_data.main(_argv("msvd", mini_msvd(tmp_path / "raw"), out, "--train_rows", "video"))
    metrics = _eval(tmp_path, out, "--split", "train")["metrics"]
    # 2 train videos with 2 + 1 captions: every caption is a T2V query, V2T ranks each video's best caption.
    assert (metrics["num_videos"], metrics["num_texts"]) == (2, 3)
    assert metrics["t2v_R@5"] == 100.0 and 1.0 <= metrics["t2v_MnR"] <= 2.0


def test_zero_shot_classification_on_prepared_ucf101_uses_prompt_ensembles(tmp_path, stop_synthetic):
    out = tmp_path / "ucf"
    prepare_data.main(_argv("ucf101", mini_ucf101(tmp_path / "raw"), out))
    templates = ["a video of {}.", "a person doing {label}."]
    report = _eval(tmp_path, out, "--split", "test", "--task", "classification", "--label_template", *templates)
    metrics = report["metrics"]
    assert (metrics["num_videos"], metrics["num_classes"], metrics["num_failed"]) == (2, 2, 0)
    assert "top5_accuracy" not in metrics  # only 2 classes

    # By hand: normalise each template's embedding, average per class, renormalise; argmax per video.
    model, processor = stop_synthetic
    from modeling_stop import embed_texts, embed_videos

    names = ["apply eye makeup", "yo yo"]
    per_template = [
        embed_texts(model, processor, [t.replace("{label}", "{}").format(n) for n in names]) for t in templates
    ]
    classes = F.normalize(torch.stack(per_template).mean(0), dim=-1)
    data = load_video_text_dataset(str(out), caption_column=None, label_column="label")["test"]
    videos = embed_videos(model, processor, [row["video"]["path"] for row in data])
    predicted = (videos @ classes.t()).argmax(-1).tolist()
    truth = [names.index(label) for label in data["label"]]
    assert metrics["top1_accuracy"] == pytest.approx(100.0 * np.mean([p == t for p, t in zip(predicted, truth)]))


def test_class_text_embeds_average_normalised_template_embeddings(stop_synthetic):
    model, processor = stop_synthetic
    names = ["moving left", "growing"]
    one = evaluation.class_text_embeds(model, processor, names, ["a video of {}"])
    two = evaluation.class_text_embeds(model, processor, names, ["a video of {label}", "{} happens"])
    a = evaluation.embed_text_list(model, processor, ["a video of moving left", "a video of growing"])
    b = evaluation.embed_text_list(model, processor, ["moving left happens", "growing happens"])
    torch.testing.assert_close(one, a)
    torch.testing.assert_close(two, F.normalize(a + b, dim=-1))
    assert not torch.allclose(two, a)
    with pytest.raises(ValueError, match="at least one template"):
        evaluation.class_text_embeds(model, processor, names, [])


class FakeProcess:
    """What `training.evaluation` asks of an `Accelerator`, for process `index` of `num` (CPU)."""

    def __init__(self, index, num):
        self.process_index, self.num_processes = index, num
        self.device = torch.device("cpu")
        self.is_local_main_process = index == 0

    def autocast(self):
        return contextlib.nullcontext()


def test_sharded_embedding_gathers_every_video_and_text_once_in_dataset_order(tmp_path, stop_synthetic, monkeypatch):
    model, processor = stop_synthetic
    out = tmp_path / "msrvtt"
    prepare_data.main(_argv("msrvtt", mini_msrvtt(tmp_path / "raw"), out))
    split = load_video_text_dataset(str(out))["train"].select(range(5))
    dataset = VideoTextDataset(split, processor.video_processor)
    collate = VideoTextCollator(processor)
    full = evaluation.embed_video_dataset(model, DataLoader(dataset, batch_size=2, collate_fn=collate))

    # Process 1 of 2 embeds rows 1 and 3 plus a repeat of row 0 (a prepared loader evens the last batch).
    shards = {0: Subset(dataset, [0, 2, 4]), 1: Subset(dataset, [1, 3, 0])}
    sent = []
    monkeypatch.setattr(evaluation, "gather_object", lambda obj: sent.append(obj) or list(obj))
    evaluation.embed_video_dataset(model, DataLoader(shards[1], batch_size=2, collate_fn=collate), FakeProcess(1, 2))
    other = sent[-1]
    monkeypatch.setattr(evaluation, "gather_object", lambda obj: [*obj, *other])
    indices, embeds, failed = evaluation.embed_video_dataset(
        model, DataLoader(shards[0], batch_size=2, collate_fn=collate), FakeProcess(0, 2)
    )
    assert indices.tolist() == full[0].tolist() == [0, 1, 2, 3, 4] and failed == []
    torch.testing.assert_close(embeds, full[1], atol=1e-5, rtol=1e-5)

    texts = [f"caption number {i}" for i in range(5)]
    monkeypatch.setattr(evaluation, "gather_object", lambda obj: sent.append(obj) or list(obj))
    evaluation.embed_text_list(model, processor, texts, batch_size=2, accelerator=FakeProcess(1, 2))
    second_half = sent[-1]
    assert second_half[0].shape[0] == 2  # process 1 embedded texts 3 and 4 only
    monkeypatch.setattr(evaluation, "gather_object", lambda obj: [*obj, *second_half])
    gathered = evaluation.embed_text_list(model, processor, texts, batch_size=2, accelerator=FakeProcess(0, 2))
    torch.testing.assert_close(gathered, evaluation.embed_text_list(model, processor, texts), atol=1e-5, rtol=1e-5)


def test_classification_task_needs_a_label_column(tmp_path):
    out = tmp_path / "msrvtt"
    prepare_data.main(_argv("msrvtt", mini_msrvtt(tmp_path / "raw"), out))
    with pytest.raises(ValueError, match="Column 'label' not found in the train split"):
        _eval(tmp_path, out, "--task", "classification")
