"""Recognition and inference API: STOPForVideoClassification, the shipped pipelines, the retrieval helpers."""

import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from modeling_stop.modeling_stop_classification import STOPForVideoClassification
from modeling_stop.pipelines import (
    STOPVideoClassificationPipeline,
    STOPZeroShotVideoClassificationPipeline,
    register_pipelines,
    save_with_pipelines,
)
from modeling_stop.processing_stop import STOPProcessor
from modeling_stop.retrieval import embed_texts, embed_videos, rank
from tests.conftest import REPO_ROOT
from tests.test_processing import tiny_clip_tokenizer
from tests.tiny import tiny_stop

LABELS = ["cat", "dog", "person"]
TEMPLATE = "a photo of {}"  # words of the tiny tokenizer's vocabulary
TRAINED = REPO_ROOT / "checkpoints" / "stop-synthetic"


def write_clip(path, seed, num_frames=8, size=32):
    """An 8-frame 32x32 H.264 clip of drifting coloured blocks (PyAV's own FFmpeg)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    frames = [np.roll(blocks.repeat(size // 4, 0).repeat(size // 4, 1), 2 * i, axis=1) for i in range(num_frames)]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=8, options={"preset": "ultrafast", "threads": "1"})
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


@pytest.fixture(scope="module")
def stop_and_processor():
    tokenizer = tiny_clip_tokenizer()
    # Every STOP module, with small convolution kernels: the defaults cost seconds even on 32 px frames.
    kernels = {k: (3, 3, 3) for k in ("prompter_kernel", "region_kernel", "inter_kernel", "frame_weight_kernel")}
    model = tiny_stop(clip_kwargs={"vocab": len(tokenizer)}, **kernels)
    return model, STOPProcessor.from_model_config(model.config, tokenizer)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return [write_clip(root / f"clip{i}.mp4", seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def folders(stop_and_processor, tmp_path_factory):
    model, processor = stop_and_processor
    root = tmp_path_factory.mktemp("folders")
    classifier = STOPForVideoClassification.from_stop(model, LABELS, template=TEMPLATE, processor=processor)
    return {
        "stop": save_with_pipelines(model, processor, root / "stop"),
        "classifier": save_with_pipelines(classifier, processor, root / "classifier"),
    }


FRESH_PROCESS_SCRIPT = """
import json, sys
from transformers import AutoModel, AutoModelForVideoClassification, pipeline
stop_dir, classifier_dir, out = sys.argv[1:4]
labels, template, videos = map(json.loads, sys.argv[4:])
result = {}
zero_shot = pipeline("zero-shot-video-classification", model=stop_dir, trust_remote_code=True)
result["zero_shot"] = zero_shot(videos, candidate_labels=labels, hypothesis_template=template)  # one result per video
result["zero_shot_single"] = zero_shot(videos[0], candidate_labels=labels, hypothesis_template=template)
classify = pipeline("video-classification", model=classifier_dir, trust_remote_code=True)
result["classify"] = [classify(v) for v in videos]
result["classify_top2"] = classify(videos[0], top_k=2)
result["classify_logits"] = [classify(v, function_to_apply="none") for v in videos]
zero_shot_on_classifier = pipeline("zero-shot-video-classification", model=classifier_dir, trust_remote_code=True)
result["zero_shot_on_classifier"] = zero_shot_on_classifier(
    videos[0], candidate_labels=labels, hypothesis_template=template
)
result["classes"] = [type(p).__name__ for p in (zero_shot, classify)]
result["classes"] += [type(p.model).__name__ for p in (zero_shot, classify)]
loaded = AutoModelForVideoClassification.from_pretrained(classifier_dir, trust_remote_code=True)
result["loaded_id2label"] = {str(k): v for k, v in loaded.config.id2label.items()}
result["loaded_template"] = loaded.config.label_template
result["loaded_class_embeds"] = loaded.class_embeds.tolist()
result["auto_model_class"] = type(AutoModel.from_pretrained(classifier_dir, trust_remote_code=True)).__name__
json.dump(result, open(out, "w"))
"""


@pytest.fixture(scope="module")
def fresh_process(folders, videos, tmp_path_factory):
    """Everything a user does with the saved folders, run once in a new interpreter with the Hub offline."""
    workdir = tmp_path_factory.mktemp("fresh")
    out = workdir / "result.json"
    args = [str(folders["stop"]), str(folders["classifier"]), str(out)]
    args += [json.dumps(LABELS), json.dumps(TEMPLATE), json.dumps(videos[:2])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", FRESH_PROCESS_SCRIPT, *args], check=True, env=env, cwd=workdir)
    return json.loads(out.read_text())


def reference_logits(model, processor, video, labels=LABELS, template=TEMPLATE):
    texts = [template.format(label) for label in labels]
    inputs = processor(text=texts, videos=[video], padding=True)
    with torch.inference_mode():
        return model(**inputs).logits_per_video[0]


def as_dict(results):
    return {r["label"]: r["score"] for r in results}


# ---------------------------------------------------------------- STOPForVideoClassification


def test_classifier_logits_are_scaled_cosines_with_the_stored_class_embeddings(stop_and_processor, videos):
    model, processor = stop_and_processor
    classifier = STOPForVideoClassification.from_stop(model, LABELS, template=TEMPLATE, processor=processor)
    texts = [TEMPLATE.format(label) for label in LABELS]
    with torch.inference_mode():
        text_embeds = F.normalize(model.get_text_features(processor(text=texts)["input_ids"]), dim=-1)
    torch.testing.assert_close(classifier.class_embeds, text_embeds)
    assert classifier.config.id2label == dict(enumerate(LABELS))
    assert classifier.config.label2id == {"cat": 0, "dog": 1, "person": 2}

    inputs = processor(videos=videos)
    labels = torch.tensor([2, 0, 1])
    with torch.inference_mode():
        out = classifier(**inputs, labels=labels)
        expected = torch.stack([reference_logits(model, processor, v) for v in videos])
    assert out.logits.shape == (3, 3) and out.video_embeds.shape == (3, 16)
    # Frame weights of the official variant are normalised over the batch: compare per video.
    with torch.inference_mode():
        single = torch.cat([classifier(**processor(videos=[v])).logits for v in videos])
    torch.testing.assert_close(single, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    # The loss fine-tunes the prompt modules against the fixed class embeddings.
    classifier.train()
    classifier(**processor(videos=videos[:2]), labels=labels[:2]).loss.backward()
    assert classifier.stop.global_prompts.grad is not None and classifier.class_embeds.grad is None
    assert all(p.grad is None for p in classifier.stop.clip.parameters())


def test_classifier_refuses_duplicate_labels_and_templates_without_a_placeholder(stop_and_processor):
    model, processor = stop_and_processor
    with pytest.raises(ValueError, match="unique"):
        STOPForVideoClassification.from_stop(model, ["cat", "cat"], processor=processor)
    with pytest.raises(ValueError, match="must contain"):
        STOPForVideoClassification.from_stop(model, LABELS, template="a photo", processor=processor)
    with pytest.raises(ValueError, match="processor="):
        STOPForVideoClassification.from_stop(model, LABELS)


def test_classifier_save_load_keeps_labels_template_and_class_embeds(folders, fresh_process):
    folder = folders["classifier"]
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_stop.STOPConfig",
        "AutoModel": "modeling_stop.STOPModel",
        "AutoModelForVideoClassification": "modeling_stop_classification.STOPForVideoClassification",
    }
    assert config["architectures"] == ["STOPForVideoClassification"]
    assert config["label_template"] == TEMPLATE and config["id2label"] == {"0": "cat", "1": "dog", "2": "person"}
    assert set(config["custom_pipelines"]) == {"video-classification", "zero-shot-video-classification"}
    assert {"pipelines.py", "modeling_stop.py", "modeling_stop_classification.py", "processor_config.json"} <= {
        p.name for p in folder.iterdir()
    }
    stored = load_file(folder / "model.safetensors")["class_embeds"]
    assert stored.shape == (3, 16)

    in_process = STOPForVideoClassification.from_pretrained(folder)
    assert torch.equal(in_process.class_embeds, stored) and in_process.config.label_template == TEMPLATE
    # A fresh process loads the folder through the Auto classes (both from the one folder).
    assert fresh_process["loaded_id2label"] == {"0": "cat", "1": "dog", "2": "person"}
    assert fresh_process["loaded_template"] == TEMPLATE
    assert torch.equal(torch.tensor(fresh_process["loaded_class_embeds"]), stored)
    assert fresh_process["auto_model_class"] == "STOPModel"


# ---------------------------------------------------------------- pipelines from saved folders


def test_zero_shot_pipeline_on_a_plain_stop_folder_in_a_fresh_process(
    stop_and_processor, folders, videos, fresh_process
):
    model, processor = stop_and_processor
    assert json.loads((folders["stop"] / "config.json").read_text())["custom_pipelines"] == {
        "zero-shot-video-classification": {
            "impl": "pipelines.STOPZeroShotVideoClassificationPipeline",
            "pt": ["AutoModel"],
        }
    }
    assert fresh_process["classes"][0] == "STOPZeroShotVideoClassificationPipeline"
    assert fresh_process["classes"][2] == "STOPModel"
    for video, results in zip(videos, fresh_process["zero_shot"]):
        scores = [r["score"] for r in results]
        assert scores == sorted(scores, reverse=True) and sorted(as_dict(results)) == sorted(LABELS)
        expected = dict(zip(LABELS, reference_logits(model, processor, video).softmax(-1).tolist()))
        for label, score in as_dict(results).items():
            assert score == pytest.approx(expected[label], abs=1e-6)
    assert len(fresh_process["zero_shot"]) == 2 and fresh_process["zero_shot_single"] == fresh_process["zero_shot"][0]


def test_video_classification_pipeline_returns_top_k_labels_best_first(fresh_process):
    assert fresh_process["classes"][1] == "STOPVideoClassificationPipeline"
    assert fresh_process["classes"][3] == "STOPForVideoClassification"
    assert len(fresh_process["classify"]) == 2
    for results in fresh_process["classify"]:
        assert len(results) == 3  # top_k=5 by default, capped at the number of labels
        scores = [r["score"] for r in results]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-6)
    assert fresh_process["classify_top2"] == fresh_process["classify"][0][:2]


def test_classification_logits_equal_zero_shot_logits_for_the_same_labels_and_template(
    stop_and_processor, videos, fresh_process
):
    model, processor = stop_and_processor
    for video, logits, probs, zero_shot in zip(
        videos, fresh_process["classify_logits"], fresh_process["classify"], fresh_process["zero_shot"]
    ):
        expected = dict(zip(LABELS, reference_logits(model, processor, video).tolist()))
        for label, logit in as_dict(logits).items():  # before softmax: the same scaled cosines
            assert logit == pytest.approx(expected[label], abs=1e-5)
        zero_shot = as_dict(zero_shot)
        for label, prob in as_dict(probs).items():  # after softmax: the same probabilities
            assert prob == pytest.approx(zero_shot[label], abs=1e-6)
    # The zero-shot pipeline also serves a classifier folder (through its STOPModel).
    on_classifier = fresh_process["zero_shot_on_classifier"]
    assert [r["label"] for r in on_classifier] == [r["label"] for r in fresh_process["zero_shot"][0]]
    expected = [r["score"] for r in fresh_process["zero_shot"][0]]
    assert [r["score"] for r in on_classifier] == pytest.approx(expected, abs=1e-6)


def test_pipelines_refuse_missing_labels_and_processor(stop_and_processor, videos):
    model, processor = stop_and_processor
    pipe = STOPZeroShotVideoClassificationPipeline(model=model, processor=processor, device=-1)
    with pytest.raises(ValueError, match="candidate_labels"):
        pipe(videos[0])
    with pytest.raises(ValueError, match="must contain"):
        pipe(videos[0], candidate_labels=LABELS, hypothesis_template="a photo")
    with pytest.raises(ValueError, match="processor"):
        STOPVideoClassificationPipeline(model=model, device=-1)


def test_register_pipelines_needs_the_processor_in_the_folder(stop_and_processor, tmp_path):
    model, processor = stop_and_processor
    model.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="processor.save_pretrained"):
        register_pipelines(tmp_path)
    processor.save_pretrained(tmp_path)
    first = register_pipelines(tmp_path)
    assert register_pipelines(tmp_path) == first  # idempotent
    assert json.loads((tmp_path / "config.json").read_text())["custom_pipelines"] == first
    assert (tmp_path / "pipelines.py").read_bytes() == (REPO_ROOT / "modeling_stop" / "pipelines.py").read_bytes()


SAVE_PRETRAINED_SCRIPT = """
import json, sys
from transformers import pipeline
stop_dir, resaved_dir, classifier_dir, video, labels, out = sys.argv[1:]
labels = json.loads(labels)
result = {}
for name, folder in (("stop", stop_dir), ("resaved", resaved_dir), ("classifier", classifier_dir)):
    pipe = pipeline("zero-shot-video-classification", model=folder, trust_remote_code=True)
    result[name] = pipe(video, candidate_labels=labels, hypothesis_template="a photo of {}")
result["classify"] = pipeline("video-classification", model=classifier_dir, trust_remote_code=True)(video)
json.dump(result, open(out, "w"))
"""


def _referenced_modules(folder):
    config = json.loads((folder / "config.json").read_text())
    names = list(config.get("auto_map", {}).values())
    names += [entry["impl"] for entry in config.get("custom_pipelines", {}).values()]
    return {name.split(".")[0] + ".py" for name in names}


def test_save_pretrained_alone_writes_folders_whose_pipelines_work_in_a_fresh_process(
    stop_and_processor, folders, videos, tmp_path
):
    from transformers.dynamic_module_utils import get_relative_import_files

    from modeling_stop import STOPModel

    model, processor = stop_and_processor
    classifier = STOPForVideoClassification.from_stop(model, LABELS, template=TEMPLATE, processor=processor)
    saved = {"stop": tmp_path / "stop", "resaved": tmp_path / "resaved", "classifier": tmp_path / "classifier"}
    model.save_pretrained(saved["stop"])
    STOPModel.from_pretrained(folders["stop"]).save_pretrained(saved["resaved"])  # a loaded model, saved again
    classifier.save_pretrained(saved["classifier"])
    for folder in saved.values():
        processor.save_pretrained(folder)
        needed = _referenced_modules(folder)
        assert "pipelines.py" in needed
        for name in sorted(needed):  # every referenced file and everything it imports relatively
            assert (folder / name).is_file(), f"{folder} lacks {name}"
            assert all((folder / os.path.basename(f)).is_file() for f in get_relative_import_files(folder / name))
    out = tmp_path / "result.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    args = [
        str(saved["stop"]),
        str(saved["resaved"]),
        str(saved["classifier"]),
        videos[0],
        json.dumps(LABELS),
        str(out),
    ]
    run = subprocess.run(
        [sys.executable, "-c", SAVE_PRETRAINED_SCRIPT, *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    expected = dict(zip(LABELS, reference_logits(model, processor, videos[0]).softmax(-1).tolist()))
    for name in ("stop", "resaved", "classifier"):
        assert as_dict(result[name]) == pytest.approx(expected, abs=1e-6), name
    assert as_dict(result["classify"]) == pytest.approx(expected, abs=1e-6)


def test_forward_takes_everything_the_processor_returns_and_nothing_else(stop_and_processor, videos):
    model, processor = stop_and_processor
    classifier = STOPForVideoClassification.from_stop(model, LABELS, template=TEMPLATE, processor=processor)
    inputs = processor(text=[TEMPLATE.format(LABELS[0])], videos=[videos[0]], return_frame_indices=True)
    assert {"input_ids", "attention_mask", "pixel_values", "video_mask", "frame_indices"} <= set(inputs)
    video_inputs = processor(videos=[videos[0]], return_frame_indices=True)
    with torch.inference_mode():
        assert model(**inputs).logits_per_video.shape == (1, 1)
        assert classifier(**video_inputs).logits.shape == (1, len(LABELS))
        with pytest.raises(TypeError, match="pixel_value"):
            model(pixel_value=inputs["pixel_values"])
        with pytest.raises(TypeError, match="pixel_value"):
            classifier(pixel_values=inputs["pixel_values"], pixel_value=inputs["pixel_values"])


def test_zero_shot_pipeline_splits_comma_separated_labels_and_takes_top_k(stop_and_processor, videos):
    model, processor = stop_and_processor
    pipe = STOPZeroShotVideoClassificationPipeline(model=model, processor=processor, device=-1)
    full = pipe(videos[0], candidate_labels=LABELS, hypothesis_template=TEMPLATE)
    assert pipe(videos[0], candidate_labels=" cat, dog,person ,", hypothesis_template=TEMPLATE) == full
    assert pipe(videos[0], candidate_labels=LABELS, hypothesis_template=TEMPLATE, top_k=2) == full[:2]
    assert len(full) == 3 and full[0]["score"] >= full[1]["score"] >= full[2]["score"]
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            pipe(videos[0], candidate_labels=LABELS, top_k=bad)
    with pytest.raises(ValueError, match="candidate_labels"):
        pipe(videos[0], candidate_labels=" , ")


def test_embed_helpers_take_one_text_or_one_video(stop_and_processor, videos):
    model, processor = stop_and_processor
    text = TEMPLATE.format(LABELS[1])
    one = embed_texts(model, processor, text)
    assert one.shape == (1, model.config.projection_dim)
    torch.testing.assert_close(one, embed_texts(model, processor, [text]))
    video = embed_videos(model, processor, videos[2])
    assert video.shape == (1, model.config.projection_dim)
    torch.testing.assert_close(video, embed_videos(model, processor, [videos[2]]))


# ---------------------------------------------------------------- retrieval


def test_retrieval_helpers_embed_like_the_model_and_rank_the_matching_item_first(stop_and_processor, videos):
    model, processor = stop_and_processor
    video_embeds = embed_videos(model, processor, videos, batch_size=1)
    text_embeds = embed_texts(model, processor, [TEMPLATE.format(label) for label in LABELS], batch_size=2)
    assert video_embeds.shape == (3, 16) and text_embeds.shape == (3, 16)
    torch.testing.assert_close(video_embeds.norm(dim=-1), torch.ones(3))
    with torch.inference_mode():
        single = model(**processor(videos=[videos[1]], text=[TEMPLATE.format(LABELS[2])]))
    torch.testing.assert_close(video_embeds[1], single.video_embeds[0])
    torch.testing.assert_close(text_embeds[2], single.text_embeds[0])

    # Toy case with a known answer: each query is a noisy copy of one gallery video.
    order = torch.tensor([2, 0, 1])
    noise = 0.01 * torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    queries = F.normalize(video_embeds[order] + noise, dim=-1)
    scores, indices = rank(queries, video_embeds, top_k=2)
    assert indices.shape == (3, 2) and torch.equal(indices[:, 0], order)
    assert (scores[:, 0] >= scores[:, 1]).all() and (scores[:, 0] > 0.99).all()
    # Text -> video with hand-made embeddings, and more queries than one chunk.
    gallery = torch.eye(4)
    queries = F.normalize(torch.tensor([[0.1, 0.9, 0.0, 0.2], [0.0, 0.0, 0.3, 1.0], [1.0, 0.5, 0.0, 0.0]]), dim=-1)
    assert rank(queries, gallery, top_k=10, chunk_size=2)[1][:, 0].tolist() == [1, 3, 0]
    assert rank(queries, gallery, top_k=10)[1].shape == (3, 4)


# ---------------------------------------------------------------- the trained default model


def test_trained_synthetic_model_classifies_synthetic_clips_it_was_trained_on(tmp_path):
    """The default model was trained to match clips with their captions ("a red circle moving left"), so its
    classes here are captions of held-out clips (one per motion kind, different objects). Measured: 6 of 6 right
    (chance: 1) for the committed model of the two-stage default recipe (`--seed 0`; 4 of 6 for the previous
    one-stage default). Bare class names such as "moving left" are weaker for it (see README, Results)."""
    if not (TRAINED / "config.json").is_file():
        pytest.skip(f"trained default model not found at {TRAINED} (written by the training script)")
    from transformers import pipeline

    from training.synthetic import MOTIONS, describe_clip, render_clip, sample_clip_spec
    from training.synthetic import write_video as write_synthetic_video

    specs = [sample_clip_spec(np.random.default_rng([2025, i]), motion) for i, motion in enumerate(MOTIONS)]
    captions = [describe_clip(spec)[1][0] for spec in specs]
    classifier = STOPForVideoClassification.from_stop(TRAINED, captions, template="{}")
    save_with_pipelines(classifier, STOPProcessor.from_pretrained(TRAINED), tmp_path / "classifier")
    pipe = pipeline("video-classification", model=str(tmp_path / "classifier"), trust_remote_code=True)

    correct = 0
    for spec, caption in zip(specs, captions):
        path = tmp_path / f"{spec.motion}.mp4"
        write_synthetic_video(path, render_clip(spec))
        correct += pipe(str(path), top_k=1)[0]["label"] == caption
    assert correct >= 5, f"{correct}/{len(specs)} clips classified correctly (chance: 1; measured 6)"
