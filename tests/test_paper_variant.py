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
    [
        dict(image_size=224, patch_size=32),
        dict(image_size=224, patch_size=16),
        dict(image_size=56, patch_size=14, vision_layers=24),
    ],
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
    assert "spatial_prompter.layers.1.dynamics.weight" in names and "frame_identity.position_embeddings" in names


def test_parameters_do_not_depend_on_the_frame_count():
    counts = {t: {n: p.shape for n, p in tiny_stop(variant="paper", num_frames=t).named_parameters()} for t in (4, 12)}
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
    model = tiny_stop(
        use_dgl_prompts=False, use_spatial_prompt=False, use_temporal_prompt=False, temporal_head="seqTransf"
    )
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


# ------------------------------------------------------------------------------------------------ paper_version=2


def test_saved_configs_keep_their_paper_layout_and_new_configs_get_the_current_one(tmp_path):
    from modeling_stop import STOPConfig

    model = tiny_stop(variant="paper")
    assert model.config.paper_version == 2
    model.config.save_pretrained(tmp_path)
    assert STOPConfig.from_pretrained(tmp_path).paper_version == 2
    old = model.config.to_dict()
    del old["paper_version"]
    assert STOPConfig.from_dict(old).paper_version == 1


def test_every_prompt_layer_reports_its_regions_and_counts_and_the_total_is_bounded():
    model = tiny_stop(variant="paper", max_inserted_tokens=3)
    layers = model.config.paper_layers
    assert layers == [0, 1]  # default: every vision layer
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        out = model(input_ids=_text(), pixel_values=_video(frames=6), video_mask=mask)
    assert out.spatial_mask_per_layer.shape == (2, 2, 6, 4, 4)
    assert (out.spatial_mask_per_layer.flatten(3).sum(-1) == model.config.spatial_top_k).all()
    assert torch.equal(out.spatial_mask, out.spatial_mask_per_layer[:, 0])
    per_layer = out.inserted_tokens_per_layer
    assert per_layer.shape == (2, 2, 5) and torch.equal(out.inserted_tokens, per_layer.sum(1))
    gap_valid = torch.tensor([[1] * 5, [1, 1, 0, 0, 0]]).bool()
    assert per_layer[~gap_valid.unsqueeze(1).expand_as(per_layer)].eq(0).all()
    assert per_layer[gap_valid.unsqueeze(1).expand_as(per_layer)].ge(1).all() and per_layer.le(3).all()
    # relative calibration: the video's least changing gap gets 1 token, its most changing gap the bound
    v = out.frame_variation_per_layer[0]
    low, high = v.amin(-1, keepdim=True), v.amax(-1, keepdim=True)
    expected = torch.ceil(3 * (v - low) / (high - low)).clamp(1, 3).long()
    assert torch.equal(per_layer[0], expected)
    assert out.inserted_tokens.sum(-1).le(3 * len(layers) * 5).all()


def test_prompt_layer_subsets_and_first_layer_regions_are_config_switches():
    sub = tiny_stop(variant="paper", clip_kwargs=dict(vision_layers=3), paper_prompt_layers=[1, 2])
    reuse = tiny_stop(variant="paper", clip_kwargs=dict(vision_layers=3), paper_region_source="first")
    assert len(sub.spatial_prompter.layers) == 2 and len(reuse.spatial_prompter.layers) == 3
    with torch.no_grad():
        a, b = sub(pixel_values=_video()), reuse(pixel_values=_video())
    assert a.inserted_tokens_per_layer.shape == (2, 2, 3) and a.spatial_mask_per_layer.shape[1] == 2
    assert all(torch.equal(b.spatial_mask_per_layer[:, i], b.spatial_mask) for i in range(3))
    with pytest.raises(ValueError, match="paper_prompt_layers"):
        tiny_stop(variant="paper", paper_prompt_layers=[2])


@pytest.mark.parametrize(
    "switch",
    [
        dict(paper_temporal_prompter="frames"),
        dict(paper_neighbour_attention=False),
        dict(paper_frame_identity=False),
        dict(insertion_calibration="absolute"),
        dict(paper_variation_scaling=False),
        dict(paper_region_source="first", clip_kwargs=dict(vision_layers=3)),
        dict(paper_prompt_layers=[0]),
    ],
    ids=["frames-prompter", "no-neighbours", "no-identity", "absolute-counts", "no-scaling", "first-regions", "layer0"],
)
def test_each_new_mechanism_has_a_switch_that_changes_the_computation(switch):
    clip_kwargs = switch.pop("clip_kwargs", None)
    full = tiny_stop(variant="paper", clip_kwargs=clip_kwargs)
    model = tiny_stop(variant="paper", clip_kwargs=clip_kwargs, **switch)
    video = _video(frames=5)
    with torch.no_grad():
        a, b = full(pixel_values=video), model(pixel_values=video)
    assert torch.isfinite(b.video_embeds).all()
    assert (a.video_embeds - b.video_embeds).abs().max() > 1e-6
    if "paper_frame_identity" in switch:
        assert model.frame_identity is None and full.frame_identity is not None
    if "insertion_calibration" in switch:
        expected = torch.ceil(model.config.insertion_scale * b.frame_variation_per_layer).clamp(max=4).long()
        assert torch.equal(b.inserted_tokens_per_layer, expected)


def test_tokens_inserted_after_a_frame_are_seen_by_both_neighbouring_frames_only():
    from modeling_stop.prompting_paper import _Layout, paper_global_local_block

    model = tiny_stop(variant="paper")
    layer, adapter = model.clip.vision_model.encoder.layers[0], model.vision_adapters[0]
    g = torch.Generator().manual_seed(0)
    slots, seq = 2, 1 + 16 + 2 + 4  # [CLS, patches, inserted slots, local prompts]
    inserted = slice(17, 19)
    frames = torch.randn(1, 3, seq, 64, generator=g)
    global_tokens = torch.randn(1, 4, 64, generator=g)
    valid = torch.ones(1, 3, seq, dtype=torch.bool)
    changed = frames.clone()
    changed[:, 0, inserted] += torch.randn(slots, 64, generator=g)  # the tokens inserted after frame 0
    for neighbours in (True, False):
        layout = _Layout(16, slots, neighbours, num_local=4)
        with torch.no_grad():
            _, before, _ = paper_global_local_block(layer, adapter, 0.1, global_tokens, frames, valid, layout)
            _, after, _ = paper_global_local_block(layer, adapter, 0.1, global_tokens, changed, valid, layout)
        diff = (after - before).abs().amax(dim=(0, 2, 3))  # per frame
        assert diff[0] > 1e-3  # frame 0 holds them
        assert (diff[1] > 1e-3) == neighbours  # frame 1 attends to them only with neighbour attention
        assert diff[2] < 1e-6
    # an empty slot (mask False) is seen by nobody
    valid[:, 0, inserted] = False
    layout = _Layout(16, slots, True, num_local=4)
    with torch.no_grad():
        _, before, _ = paper_global_local_block(layer, adapter, 0.1, global_tokens, frames, valid, layout)
        _, after, _ = paper_global_local_block(layer, adapter, 0.1, global_tokens, changed, valid, layout)
    others = torch.cat([(after - before)[:, :, :17], (after - before)[:, :, 19:]], dim=2)
    assert others.abs().max() < 1e-6
    # only the leading `queries` tokens of each frame are computed, and they are the same as in the full block
    with torch.no_grad():
        _, first, _ = paper_global_local_block(
            layer, adapter, 0.1, global_tokens, frames, valid, _Layout(16, slots, True, queries=17)
        )
    assert first.shape == (1, 3, 17, 64)
    torch.testing.assert_close(first, before[:, :, :17], rtol=0, atol=1e-5)


def test_the_official_block_computes_only_the_leading_tokens_asked_for_and_they_match_the_full_block():
    from modeling_stop.modeling_stop import global_local_block

    model = tiny_stop(variant="official")
    layer, adapter = model.clip.vision_model.encoder.layers[0], model.vision_adapters[0]
    g = torch.Generator().manual_seed(0)
    frames, global_tokens = torch.randn(2, 3, 21, 64, generator=g), torch.randn(2, 4, 64, generator=g)
    valid = torch.ones(2, 3, 21, dtype=torch.bool)
    valid[1, 2] = False  # a padded frame
    for mask in (None, valid):
        with torch.no_grad():
            full_g, full = global_local_block(layer, adapter, 0.1, global_tokens, frames, mask)
            part_g, part = global_local_block(layer, adapter, 0.1, global_tokens, frames, mask, queries=17)
        assert full.shape == (2, 3, 21, 64) and part.shape == (2, 3, 17, 64)
        torch.testing.assert_close(part, full[:, :, :17], rtol=0, atol=1e-5)
        torch.testing.assert_close(part_g, full_g, rtol=0, atol=1e-5)  # global tokens still see every frame token


def test_a_model_built_for_8_frames_runs_on_4_and_16_with_interpolated_frame_identity():
    model = tiny_stop(variant="paper", num_frames=8)
    table = model.frame_identity.position_embeddings.detach()
    identity = model.frame_identity(torch.ones(1, 8, dtype=torch.long))[0]
    torch.testing.assert_close(identity, table, rtol=0, atol=1e-7)  # the trained frame count reads its own rows
    fifteen = model.frame_identity(torch.ones(1, 15, dtype=torch.long))[0]
    torch.testing.assert_close(fifteen[::2], table, rtol=0, atol=1e-6)  # twice as many frames: midpoints between
    torch.testing.assert_close(fifteen[1], (table[0] + table[1]) / 2, rtol=0, atol=1e-6)
    padded = model.frame_identity(torch.tensor([[1, 1, 1, 1, 0, 0]]))[0]
    torch.testing.assert_close(padded[:4], model.frame_identity(torch.ones(1, 4, dtype=torch.long))[0], rtol=0, atol=0)
    assert len({tuple(r.tolist()) for r in identity}) == 8  # every frame position has its own identity
    for frames in (4, 16):
        with torch.no_grad():
            out = model(pixel_values=_video(batch=1, frames=frames))
        assert out.video_embeds.shape == (1, 16) and torch.isfinite(out.video_embeds).all()
        assert out.inserted_tokens.shape == (1, frames - 1)
    video = _video(batch=1, frames=4)
    with torch.no_grad():  # frame identity makes the local prompts position-dependent
        plain = tiny_stop(variant="paper", num_frames=8, paper_frame_identity=False)
        plain.load_state_dict(model.state_dict(), strict=False)
        assert (model.get_video_features(video) - plain.get_video_features(video)).abs().max() > 1e-6


def _synthetic_clips(count, offset, frames=8, seed=0):
    import numpy as np

    from training.synthetic import MOTIONS, render_clip, sample_clip_spec

    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(count):
        x = torch.from_numpy(render_clip(sample_clip_spec(rng, MOTIONS[(i + offset) % 5]), size=64, num_frames=frames))
        clips.append((x.permute(0, 3, 1, 2).float() / 255 - mean) / std)
    return torch.stack(clips)


def test_a_hard_cut_gets_more_inserted_tokens_than_the_median_gap_and_ordinary_counts_vary():
    """Clips spliced from two different synthetic clips (frames 0-3 of one, 4-7 of another) through the committed
    synthetic CLIP backbone with freshly initialised paper prompt modules; in the same batch, ordinary clips of the
    five single-subject motion kinds."""
    from transformers import CLIPModel

    from modeling_stop import STOPModel
    from tests.conftest import REPO_ROOT

    torch.manual_seed(0)
    backbone = CLIPModel.from_pretrained(REPO_ROOT / "checkpoints" / "clip-synthetic")
    model = STOPModel.from_clip(backbone, variant="paper", num_frames=8).eval()
    ordinary, others = _synthetic_clips(10, 0, seed=0), _synthetic_clips(10, 2, seed=1)
    spliced = torch.cat([ordinary[:, :4], others[:, 4:]], dim=1)
    with torch.no_grad():
        out = model(pixel_values=torch.cat([spliced, ordinary]))
    counts = out.inserted_tokens
    cut, plain = counts[:10], counts[10:]
    assert (cut[:, 3] > cut.median(-1).values).float().mean() >= 0.8
    assert len(set(plain.flatten().tolist())) >= 3
    assert sum(len(set(row.tolist())) >= 3 for row in plain) >= 8  # counts vary within most ordinary videos
    assert len(set(counts.sum(-1).tolist())) > 1  # variable totals inside one batch
