"""variant="paper": token-space prompts, dynamic insertion, any geometry / frame count, batch independence;
ablation switches; the order-aware temporal head."""

import pytest
import torch

from .tiny import tiny_stop


def _video(batch=2, frames=4, size=32, seed=0):
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _text(n=2, length=8, vocab=100, seed=0):
    ids = torch.randint(1, vocab - 2, (n, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0], ids[:, -1] = vocab - 2, vocab - 1
    return ids


def test_a_video_embeds_the_same_alone_or_in_any_batch_including_padded_neighbours():
    model = tiny_stop(variant="paper")
    video = _video(batch=3, frames=6)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0], [1] * 6])
    video[1, 3:] = 0  # padded frames, as the processor pads short videos
    with torch.no_grad():
        together = model.get_video_features(video, mask)
        for i in range(3):
            alone = model.get_video_features(video[i : i + 1], mask[i : i + 1])
            torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=0)
        shuffled = model.get_video_features(video[[2, 0, 1]], mask[[2, 0, 1]])
    torch.testing.assert_close(shuffled, together[[2, 0, 1]], atol=1e-5, rtol=0)


def test_padded_frames_do_not_change_a_videos_embedding():
    model = tiny_stop(variant="paper")
    video = _video(batch=1, frames=3)
    padded = torch.cat([video, torch.zeros(1, 2, 3, 32, 32)], dim=1)
    with torch.no_grad():
        short = model.get_video_features(video)
        long = model.get_video_features(padded, torch.tensor([[1, 1, 1, 0, 0]]))
    torch.testing.assert_close(short, long, atol=1e-5, rtol=0)


@pytest.mark.parametrize("frames", [1, 2, 8, 12])
def test_one_model_runs_any_frame_count(frames):
    model = tiny_stop(variant="paper", num_frames=4)
    with torch.no_grad():
        out = model(input_ids=_text(), pixel_values=_video(frames=frames))
    assert out.video_embeds.shape == (2, 16) and torch.isfinite(out.video_embeds).all()
    assert out.spatial_mask.shape == (2, frames, 4, 4)
    assert out.inserted_tokens.shape == (2, frames - 1)


@pytest.mark.parametrize(
    "clip_kwargs",
    [dict(image_size=224, patch_size=32), dict(image_size=224, patch_size=16), dict(image_size=56, patch_size=14, vision_layers=24)],
    ids=["B32-shaped", "B16-shaped", "L14-shaped"],
)
def test_paper_variant_works_for_other_geometries(clip_kwargs):
    model = tiny_stop(variant="paper", clip_kwargs=clip_kwargs, num_frames=3)
    grid = clip_kwargs["image_size"] // clip_kwargs["patch_size"]
    with torch.no_grad():
        out = model(input_ids=_text(), pixel_values=_video(frames=3, size=clip_kwargs["image_size"]))
    assert out.spatial_mask.shape == (2, 3, grid, grid)
    assert torch.isfinite(out.logits_per_text).all()


def test_first_layout_diagnostics_report_selected_patches_and_bounded_insertions():
    model = tiny_stop(variant="paper", paper_version=1, max_inserted_tokens=3, insertion_scale=2.0)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        out = model(input_ids=_text(), pixel_values=_video(), video_mask=mask)
    # exactly spatial_top_k patches per frame
    assert (out.spatial_mask.flatten(2).sum(-1) == model.config.spatial_top_k).all()
    counts = out.inserted_tokens
    assert counts.dtype == torch.long and (counts >= 0).all() and (counts <= 3).all()
    assert counts[1, 1:].eq(0).all()  # no tokens in gaps that touch a padded frame
    expected = torch.ceil(2.0 * out.frame_variation).clamp(max=3).long() * torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert torch.equal(counts, expected)


def test_gradients_reach_every_trainable_module():
    model = tiny_stop(variant="paper").train()
    model(input_ids=_text(), pixel_values=_video(), return_loss=True).loss.backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert dead == []
    names = [n for n, _ in model.named_parameters()]
    assert "spatial_prompter.layers.1.dynamics.weight" in names and "frame_identity.table" in names


def test_parameters_do_not_depend_on_the_frame_count():
    counts = {
        t: {n: p.shape for n, p in tiny_stop(variant="paper", num_frames=t).named_parameters()} for t in (4, 12)
    }
    assert counts[4] == counts[12]


def test_inserted_prompts_depend_on_the_signed_change_so_reversal_changes_the_embedding():
    model = tiny_stop(variant="paper")
    video = _video(batch=1, frames=4)
    with torch.no_grad():
        forward = model.get_video_features(video)
        backward = model.get_video_features(video.flip(1))
    assert (forward - backward).abs().max() > 1e-4


@pytest.mark.parametrize(
    "switches",
    [
        dict(use_spatial_prompt=False),
        dict(use_temporal_prompt=False),
        dict(use_spatial_prompt=False, use_temporal_prompt=False),
        dict(use_dgl_prompts=False, use_spatial_prompt=False, use_temporal_prompt=False),
    ],
    ids=["temporal-only", "spatial-only", "dgl-only", "frozen-meanP"],
)
def test_ablation_switches_are_real_code_paths(switches):
    full = tiny_stop(variant="paper")
    model = tiny_stop(variant="paper", **switches)
    assert (model.spatial_prompter is None) == (not switches.get("use_spatial_prompt", True))
    assert (model.temporal_prompter is None) == (not switches.get("use_temporal_prompt", True))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable < sum(p.numel() for p in full.parameters() if p.requires_grad)
    with torch.no_grad():
        out = model(input_ids=_text(), pixel_values=_video())
    assert out.logits_per_text.shape == (2, 2)
    if not switches.get("use_temporal_prompt", True):
        assert out.inserted_tokens is None


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_untrained_temporal_head_leaves_the_video_feature_unchanged(variant):
    plain = tiny_stop(variant=variant, frame_weight_norm="video")
    headed = tiny_stop(variant=variant, frame_weight_norm="video", temporal_head="seqTransf")
    missing, unexpected = headed.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith(("temporal_head.", "temporal_gate")) for k in missing)
    video = _video()
    with torch.no_grad():
        torch.testing.assert_close(headed.get_video_features(video), plain.get_video_features(video), rtol=0, atol=0)


def test_frozen_clip_with_temporal_head_is_order_aware_and_trains_only_the_head():
    model = tiny_stop(use_dgl_prompts=False, use_spatial_prompt=False, use_temporal_prompt=False, temporal_head="seqTransf")
    assert model.uses_frozen_frame_features
    assert all(n.startswith("temporal_head.") for n, p in model.named_parameters() if p.requires_grad)
    video = _video(batch=1)
    with torch.no_grad():
        frames = model.get_frame_features(video)
        torch.testing.assert_close(model.get_video_features(video), model.pool_frame_features(frames))
        assert (model.pool_frame_features(frames) - model.pool_frame_features(frames.flip(1))).abs().max() > 1e-5


def test_a_paper_folder_saved_by_the_first_layout_loads_with_its_saved_outputs():
    """tests/fixtures/paper-v1: a tiny paper-variant folder (config + weights) saved by the first layout of this
    variant, with fixed inputs and the outputs it gave. Its config has none of the later fields, so it must keep
    computing exactly what it computed then."""
    from pathlib import Path

    from safetensors.torch import load_file

    from modeling_stop import STOPModel

    folder = Path(__file__).parent / "fixtures" / "paper-v1"
    data = load_file(folder / "expected.safetensors")
    model = STOPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        encoding = model.encode_video(data["inputs/pixel_values"], data["inputs/video_mask"])
        text = model.get_text_features(data["inputs/input_ids"])
    torch.testing.assert_close(encoding.video_features, data["outputs/video_features"], atol=1e-5, rtol=0)
    torch.testing.assert_close(text, data["outputs/text_features"], atol=1e-5, rtol=0)
    assert torch.equal(encoding.inserted_tokens, data["outputs/inserted_tokens"])
    assert torch.equal(encoding.spatial_mask, data["outputs/spatial_mask"])
    torch.testing.assert_close(encoding.frame_variation, data["outputs/frame_variation"], atol=1e-5, rtol=0)
