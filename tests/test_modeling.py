"""STOPModel: interface, Hub round trip, any CLIP geometry, frozen backbone."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from modeling_stop import STOPConfig, STOPModel

from .tiny import stop_config, tiny_clip, tiny_stop


def _video(batch=2, frames=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 3, size, size, generator=g)


def _text(n=3, length=8, vocab=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab - 2, (n, length), generator=g)
    ids[:, 0] = vocab - 2
    ids[:, -1] = vocab - 1
    return ids


def test_forward_returns_documented_shapes_and_normalised_embeddings():
    model = tiny_stop()
    out = model(input_ids=_text(), pixel_values=_video())
    assert out.logits_per_text.shape == (3, 2) and out.logits_per_video.shape == (2, 3)
    assert torch.allclose(out.logits_per_video, out.logits_per_text.t())
    assert torch.allclose(out.text_embeds.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert out.loss is None
    with pytest.raises(ValueError, match="3 texts for 2 videos"):
        model(input_ids=_text(), pixel_values=_video(), return_loss=True)
    out = model(input_ids=_text(n=2), pixel_values=_video(), return_loss=True)
    assert torch.allclose(out.video_embeds.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert out.spatial_mask.shape == (2, 4, 4, 4) and out.spatial_mask.dtype == torch.bool
    assert (out.spatial_mask.flatten(2).sum(-1) <= model.config.spatial_top_k).all()
    assert out.frame_weights.shape == (2, 4)
    assert torch.isfinite(out.loss)


def test_towers_are_independent_and_features_are_unnormalised():
    model = tiny_stop()
    video, text = _video(), _text()
    with torch.no_grad():
        out = model(input_ids=text, pixel_values=video)
        v = model.get_video_features(video)
        t = model.get_text_features(text)
    assert v.shape == (2, 16) and t.shape == (3, 16)
    torch.testing.assert_close(torch.nn.functional.normalize(v, dim=-1), out.video_embeds)
    torch.testing.assert_close(torch.nn.functional.normalize(t, dim=-1), out.text_embeds)
    scale = model.clip.logit_scale.exp()
    torch.testing.assert_close(out.logits_per_text, scale * out.text_embeds @ out.video_embeds.t())


def test_from_clip_folder_freezes_clip_and_trains_only_prompt_modules(tmp_path):
    clip = tiny_clip()
    clip.save_pretrained(tmp_path / "clip")
    model = STOPModel.from_clip(str(tmp_path / "clip"), num_frames=4)
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith("clip.")), name
    for key, value in clip.state_dict().items():
        torch.testing.assert_close(model.clip.state_dict()[key], value, rtol=0, atol=0)


def test_clip_weights_receive_no_optimizer_updates():
    model = tiny_stop().train()
    clip_before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    stop_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        model(input_ids=_text(n=2), pixel_values=_video(), return_loss=True).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(p.grad is None for p in model.clip.parameters())
    for key, value in model.clip.state_dict().items():
        assert torch.equal(value, clip_before[key]), key
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, stop_before[n])]
    assert "global_prompts" in changed and any(n.startswith("prompt_generator.") for n in changed)


@pytest.mark.parametrize(
    "clip_kwargs, frames, grid, prompt_layers",
    [
        (dict(image_size=224, patch_size=16), 2, 14, 2),  # ViT-B/16 geometry
        (dict(image_size=224, patch_size=14, vision_layers=24, text_layers=12), 2, 16, 24),  # ViT-L/14 depth
        (dict(image_size=336, patch_size=14), 2, 24, 2),  # ViT-L/14@336 geometry
    ],
    ids=["B16", "L14", "L14-336"],
)
def test_other_clip_geometries_run_with_correct_shapes(clip_kwargs, frames, grid, prompt_layers):
    model = tiny_stop(clip_kwargs=clip_kwargs, num_frames=frames)
    assert model.config.grid_size == grid and model.config.prompt_layers == prompt_layers
    size = clip_kwargs["image_size"]
    with torch.no_grad():
        out = model(input_ids=_text(n=2), pixel_values=_video(batch=1, frames=frames, size=size))
    assert out.logits_per_text.shape == (2, 1)
    assert out.spatial_mask.shape == (1, frames, grid, grid)
    assert out.spatial_mask.flatten(2).sum(-1).le(model.config.spatial_top_k).all()
    assert torch.isfinite(out.video_embeds).all()


def test_linear_generator_runs_any_frame_count_and_transformer_rejects_a_wrong_one():
    linear = tiny_stop(prompt_generator="linear", num_frames=4)
    with torch.no_grad():
        assert linear.get_video_features(_video(frames=6)).shape == (2, 16)
    with pytest.raises(ValueError, match="num_frames=4"):
        tiny_stop().get_video_features(_video(frames=6))


def test_patch_mask_layout_selects_whole_patches():
    from modeling_stop.modeling_stop import grid_to_pixels, pool_to_grid

    cells = torch.zeros(1, 1, 4, 4)
    cells[0, 0, 1, 2] = 1.0
    patch = grid_to_pixels(cells, 8, "patch")[0, 0]
    assert patch[8:16, 16:24].all() and patch.sum() == 64
    lattice = grid_to_pixels(cells, 8, "official")[0, 0]
    assert lattice[1::4, 2::4].all() and lattice.sum() == 64  # the released layout: a period-4 lattice
    torch.testing.assert_close(pool_to_grid(patch[None, None], 4, "patch"), cells)
    torch.testing.assert_close(pool_to_grid(lattice[None, None], 4, "official"), cells)


def test_video_frame_weight_normalisation_makes_a_video_independent_of_its_batch():
    model = tiny_stop(frame_weight_norm="video")
    video = _video(batch=3)
    with torch.no_grad():
        together = model.get_video_features(video)
        alone = model.get_video_features(video[:1])
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=0)


def test_frozen_clip_baseline_has_no_trainable_parameters_and_mean_pools_valid_frames():
    model = tiny_stop(use_dgl_prompts=False, use_spatial_prompt=False, use_temporal_prompt=False)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 0
    video = _video(batch=1)
    mask = torch.tensor([[1, 1, 0, 0]])
    with torch.no_grad():
        pooled = model.get_video_features(video, mask)
        frames = model.clip.get_image_features(pixel_values=video[0, :2]).pooler_output
    torch.testing.assert_close(pooled[0], torch.nn.functional.normalize(frames, dim=-1).mean(0))


def test_config_rejects_bad_values_with_the_field_name():
    with pytest.raises(ValueError, match="variant"):
        stop_config(variant="nope")
    with pytest.raises(ValueError, match="spatial_top_k"):
        stop_config(spatial_top_k=16)
    with pytest.raises(ValueError, match="use_dgl_prompts"):
        stop_config(use_dgl_prompts=False)


def test_save_then_fresh_process_automodel_gives_identical_outputs(tmp_path):
    model = tiny_stop()
    video, text = _video(), _text()
    with torch.no_grad():
        expected = model(input_ids=text, pixel_values=video).logits_per_text
    model.save_pretrained(tmp_path / "stop")
    config = json.loads((tmp_path / "stop" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"].endswith("modeling_stop.STOPModel")
    assert (tmp_path / "stop" / "modeling_stop.py").exists() and (tmp_path / "stop" / "model.safetensors").exists()
    torch.save({"video": video, "text": text}, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "stop")!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            out = model(input_ids=inputs["text"], pixel_values=inputs["video"]).logits_per_text
        torch.save(out, {str(tmp_path / "out.pt")!r})
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    # Run from an empty folder so the package is found only through the saved folder's code.
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=0, atol=0)


def test_stop_config_round_trips_through_json(tmp_path):
    config = stop_config(num_frames=6, prompt_generator="linear", mask_layout="patch")
    config.save_pretrained(tmp_path)
    loaded = STOPConfig.from_pretrained(tmp_path)
    assert loaded.num_frames == 6 and loaded.prompt_generator == "linear" and loaded.mask_layout == "patch"
    assert loaded.vision_config.patch_size == 8 and loaded.prompter_kernel == [3, 11, 11]


def test_fft_conv3d_equals_the_direct_convolution_values_and_gradients():
    from modeling_stop.modeling_stop import FFTConv3d

    torch.manual_seed(0)
    fft = FFTConv3d(2, 3, (3, 5, 7), padding=(1, 2, 3))
    direct = torch.nn.Conv3d(2, 3, (3, 5, 7), padding=(1, 2, 3))
    direct.load_state_dict(fft.state_dict())
    x = torch.randn(2, 2, 4, 9, 11, requires_grad=True)
    y_fft, y = fft(x), direct(x)
    torch.testing.assert_close(y_fft, y, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    grads_fft = torch.autograd.grad(y_fft, (x, fft.weight, fft.bias), g)
    grads = torch.autograd.grad(y, (x, direct.weight, direct.bias), g)
    for a, b in zip(grads_fft, grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- frozen after loading, explicit inputs, bad inputs


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_clip_stays_frozen_after_from_pretrained_of_both_model_classes(tmp_path):
    from transformers import AutoModel

    from modeling_stop import STOPForVideoClassification

    model = tiny_stop()
    fresh = _trainable(model)
    assert 0 < fresh < sum(p.numel() for p in model.parameters())
    model.save_pretrained(tmp_path / "stop")
    for loaded in (
        STOPModel.from_pretrained(tmp_path / "stop"),
        STOPModel.from_pretrained(tmp_path / "stop", output_loading_info=True)[0],
        AutoModel.from_pretrained(tmp_path / "stop", trust_remote_code=True),
    ):
        assert not any(p.requires_grad for p in loaded.clip.parameters())
        assert _trainable(loaded) == fresh
    classifier = STOPForVideoClassification(model.config)
    classifier.save_pretrained(tmp_path / "classifier")
    loaded = STOPForVideoClassification.from_pretrained(tmp_path / "classifier")
    assert not any(p.requires_grad for p in loaded.stop.clip.parameters())
    assert _trainable(loaded) == _trainable(classifier) == fresh


def test_forward_rejects_unknown_arguments():
    model = tiny_stop()
    with pytest.raises(TypeError, match="pixel_value"):
        model(pixel_value=_video())
    with pytest.raises(TypeError, match="input_id"):
        model(input_id=_text(), pixel_values=_video())


def test_clip_loss_is_symmetric_and_contrastive_loss_is_one_direction():
    from modeling_stop import clip_loss, contrastive_loss

    logits = torch.tensor([[2.0, 0.0, 1.0], [0.5, 1.0, 0.0], [3.0, 0.0, 0.0]])
    target = torch.arange(3)

    def ce(x):
        return -(x.log_softmax(-1)[target, target]).mean()

    torch.testing.assert_close(contrastive_loss(logits), ce(logits))
    torch.testing.assert_close(clip_loss(logits), (ce(logits) + ce(logits.t())) / 2)
    assert not torch.allclose(contrastive_loss(logits), clip_loss(logits))
    model = tiny_stop()
    with torch.no_grad():
        out = model(input_ids=_text(n=2), pixel_values=_video(), return_loss=True)
    torch.testing.assert_close(out.loss, clip_loss(out.logits_per_text))


VARIANTS = {
    "official": {},
    "paper": {"variant": "paper", "temporal_head": "seqTransf"},
    "paper-no-head": {"variant": "paper", "temporal_head": "none"},
    "baseline": {"use_dgl_prompts": False, "use_spatial_prompt": False, "use_temporal_prompt": False},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_all_padding_masks_and_non_finite_pixels_raise_naming_the_video(variant):
    model = tiny_stop(**VARIANTS[variant])
    video = _video(batch=3)
    with pytest.raises(ValueError, match=r"every frame of video 1 \(index"):
        model.get_video_features(video, torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match=r"video_mask must be \[batch, frames\] = \(3, 4\)"):
        model.get_video_features(video, torch.ones(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="1 \\(real frame\\) or 0"):
        model.get_video_features(video, torch.full((3, 4), 2))
    for bad in (float("nan"), float("inf")):
        poisoned = video.clone()
        poisoned[2, 3, 0, 5, 5] = bad
        with pytest.raises(ValueError, match=r"pixel_values of video 2 \(index in the batch\) contain NaN"):
            model(input_ids=_text(n=3), pixel_values=poisoned)
    with torch.no_grad():
        assert torch.isfinite(model.get_video_features(video, torch.tensor([[1, 0, 0, 0]] * 3))).all()


def test_official_variant_validates_the_mask_but_ignores_padding_as_released():
    model = tiny_stop()
    video = _video()
    with torch.no_grad():
        unmasked = model.get_video_features(video)
        masked = model.get_video_features(video, torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]]))
    torch.testing.assert_close(masked, unmasked, rtol=0, atol=0)


def test_frame_features_are_validated_like_pixel_values():
    model = tiny_stop(**VARIANTS["baseline"])
    features = torch.randn(2, 4, 16)
    features[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="frame_features of video 1"):
        model(frame_features=features)
    with pytest.raises(ValueError, match="every frame of video 0"):
        model(frame_features=torch.randn(2, 4, 16), video_mask=torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0]]))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_frames", 0, "num_frames must be an integer >= 1"),
        ("num_global_prompts", 0, "num_global_prompts must be an integer >= 1"),
        ("num_local_prompts", -2, "num_local_prompts must be an integer >= 1"),
        ("num_text_prompts", 0, "num_text_prompts must be an integer >= 2"),
        ("num_text_prompts", -4, "num_text_prompts must be an integer >= 2"),
        ("max_inserted_tokens", 0, "max_inserted_tokens must be an integer >= 1"),
        ("max_words", 41, r"max_words \(41\) exceeds .*max_position_embeddings = 40\): set max_words <= 40"),
        ("max_frames", 2, r"num_frames \(4\) exceeds max_frames \(2\): set max_frames >= 4"),
    ],
)
def test_config_rejects_values_that_cannot_work_naming_the_field_and_the_fix(field, value, message):
    with pytest.raises(ValueError, match=message):
        stop_config(**{"num_frames": 4, "max_words": 8, field: value})


def test_more_frames_than_max_frames_raises_before_the_position_tables_do():
    model = tiny_stop(variant="paper", temporal_head="seqTransf", max_frames=4)
    with pytest.raises(ValueError, match=r"5 frames per video but STOPConfig.max_frames is 4.*processor num_frames"):
        model.get_video_features(_video(frames=5))
    with torch.no_grad():
        assert model.get_video_features(_video(frames=3)).shape == (2, 16)  # fewer frames than the tables still run
