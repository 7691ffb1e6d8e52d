"""The frozen-feature fast path: same loss as the uncached path; a temporal head learns order on cached features."""

import numpy as np
import pytest
import torch

from modeling_stop import STOPProcessor, STOPVideoProcessor
from modeling_stop.modeling_stop import clip_loss
from training.data import (
    VideoTextCollator,
    VideoTextDataset,
    build_dataloader,
    load_video_text_dataset,
    reversed_pair_accuracy,
)
from training.feature_cache import CachedFeatureCollator, CachedFeatureDataset, FrameFeatureCache
from training.synthetic import write_benchmark

from .test_processing import tiny_clip_tokenizer
from .tiny import tiny_stop

FROZEN = dict(use_dgl_prompts=False, use_spatial_prompt=False, use_temporal_prompt=False, temporal_head="seqTransf")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_benchmark(root, seed=0, num_train=24, num_validation=0, num_test=0, num_frames=8, size=32)
    return load_video_text_dataset(str(root))["train"]


@pytest.fixture(scope="module")
def processor():
    return STOPProcessor(STOPVideoProcessor(num_frames=4, size=32), tiny_clip_tokenizer(), max_words=8)


def _model(seed=0):
    return tiny_stop(seed=seed, num_frames=4, clip_kwargs=dict(vocab=len(tiny_clip_tokenizer())), **FROZEN)


def test_cached_features_give_the_same_loss_as_decoding_every_step(data, processor, tmp_path):
    model = _model()
    dataset = VideoTextDataset(data, processor.video_processor, training=True, seed=3)
    cache = FrameFeatureCache.build(model, dataset, batch_size=8, cache_dir=tmp_path, disable_progress=True)
    assert list(tmp_path.glob("frame_features-*.pt")), "cache not written to disk"
    again = FrameFeatureCache.build(model, dataset, batch_size=8, cache_dir=tmp_path, disable_progress=True)
    assert torch.equal(again.features, cache.features)  # read back, not recomputed differently

    plain = build_dataloader(dataset, VideoTextCollator(processor), 6, shuffle=True, seed=3)
    cached = build_dataloader(
        CachedFeatureDataset(dataset, cache), CachedFeatureCollator(processor), 6, shuffle=True, seed=3
    )
    model.train()
    for a, b in zip(plain, cached):
        assert torch.equal(a["indices"], b["indices"]) and torch.equal(a["input_ids"], b["input_ids"])
        loss_a = model(
            input_ids=a["input_ids"], pixel_values=a["pixel_values"], video_mask=a["video_mask"], return_loss=True
        ).loss
        loss_b = model(
            input_ids=b["input_ids"], frame_features=b["frame_features"], video_mask=b["video_mask"], return_loss=True
        ).loss
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)


def test_temporal_head_tells_a_clip_from_its_reversal_after_short_training_on_cached_features(data, processor):
    torch.manual_seed(0)
    model = _model()
    dataset = VideoTextDataset(data, processor.video_processor, training=True)
    cache = FrameFeatureCache.build(model, dataset, batch_size=8, disable_progress=True)
    # Targets that differ between twins (one random direction per label, e.g. "moving left" vs "moving right"):
    # a random tiny text tower would embed twin captions almost identically.
    labels = sorted(set(data["label"]))
    directions = torch.nn.functional.normalize(torch.randn(len(labels), model.config.projection_dim), dim=-1)
    text_embeds = directions[[labels.index(label) for label in data["label"]]]

    def pair_accuracy():
        with torch.no_grad():
            video = torch.nn.functional.normalize(model.pool_frame_features(cache.features, cache.video_mask), dim=-1)
        sim = (video @ text_embeds.t()).numpy()
        return reversed_pair_accuracy(sim, list(data["pair_id"]))["pair_accuracy"]

    before = pair_accuracy()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    scale = model.clip.logit_scale.exp()
    for _ in range(300):  # the whole (tiny) split each step: a few seconds on cached features
        video = torch.nn.functional.normalize(model.pool_frame_features(cache.features, cache.video_mask), dim=-1)
        loss = clip_loss(scale * text_embeds @ video.t())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = pair_accuracy()
    assert before <= 0.6 and after >= 0.75, (before, after)
    assert np.isfinite(loss.item())


def test_random_frame_views_are_reproducible_differ_from_uniform_and_are_the_decoded_random_frames(
    data, processor, tmp_path
):
    model = _model()
    dataset = VideoTextDataset(data, processor.video_processor, training=True, seed=3)
    uniform = FrameFeatureCache.build(model, dataset, batch_size=8, disable_progress=True)
    view = FrameFeatureCache.build(model, dataset, batch_size=8, cache_dir=tmp_path, disable_progress=True, view=1)
    other = FrameFeatureCache.build(model, dataset, batch_size=8, disable_progress=True, view=2)
    again = FrameFeatureCache.build(model, dataset, batch_size=8, disable_progress=True, view=1)
    assert torch.equal(again.features, view.features)  # the same draw every time
    assert len(list(tmp_path.glob("frame_features-*.pt"))) == 1
    assert not torch.allclose(view.features, uniform.features)  # 8 frames, 4 segments: other frames than uniform
    assert not torch.allclose(view.features, other.features)
    # View 1 is the frozen features of what the dataset decodes with random sampling at epoch 1 (its own seed).
    random_frames = VideoTextDataset(
        data, processor.video_processor, caption_column=None, training=True, seed=3, sampling="random"
    )
    random_frames.set_epoch(1)
    item = random_frames[5]
    with torch.no_grad():
        expected = model.get_frame_features(item["pixel_values"][None]).float()[0]
    torch.testing.assert_close(view.features[5], expected, rtol=1e-5, atol=1e-6)
