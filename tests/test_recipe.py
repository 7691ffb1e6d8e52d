"""The default training recipe: one table of per-variant defaults, per-group learning rates, the gate of the temporal
head at the start of stage 2, and stage 1 on cached frozen frame features."""

import argparse

import pytest
import torch
import torch.nn.functional as F

from modeling_stop import STOPConfig
from tests.tiny import tiny_stop
from training import recipe as R


def _args(**kwargs):
    names = [
        "learning_rate",
        "head_lr_multiplier",
        "prompter_lr_multiplier",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "warmup_ratio",
        "num_train_epochs",
        "head_stage_learning_rate",
        "head_stage_batch_size",
        "temporal_gate_ratio",
        "prompt_feature_loss_weight",
        "num_warmup_steps",
        "head_stage_steps",
    ]
    return argparse.Namespace(**{**dict.fromkeys(names), **kwargs})


def _video(batch=2, frames=4, seed=0):
    return torch.randn(batch, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_every_variant_has_one_recipe_with_the_authors_optimiser():
    variants = STOPConfig()  # the variants the config accepts
    assert set(R.RECIPES) == {"official", "paper"} and variants.variant in R.RECIPES
    for variant, recipe in R.RECIPES.items():
        assert recipe.model_options["variant"] == variant
        assert recipe.model_options["temporal_head"] == "seqTransf"
        assert recipe.adam_betas == (0.9, 0.98) and recipe.adam_epsilon == 1e-6 and recipe.weight_decay == 0.2
        assert recipe.warmup_ratio == 0.1
    with pytest.raises(ValueError, match="No training recipe for variant 'video'"):
        R.recipe_for("video")


def test_resolve_args_fills_only_the_flags_left_unset():
    args = _args(learning_rate=5e-3)
    recipe = R.resolve_args(args, "official")
    assert args.learning_rate == 5e-3  # a given flag wins
    assert args.prompter_lr_multiplier == recipe.prompter_lr_multiplier and args.adam_beta2 == 0.98
    assert R.warmup_steps(args, 185) == 18
    args.num_warmup_steps = 3
    assert R.warmup_steps(args, 185) == 3


def test_head_stage_budget_scales_with_the_train_split_and_is_bounded():
    recipe = R.RECIPES["paper"]
    args = _args(head_stage_batch_size=32)
    assert R.head_stage_steps(args, recipe, 24) == recipe.head_stage_epochs
    assert R.head_stage_steps(args, recipe, 100_000) == recipe.head_stage_max_steps
    assert R.head_stage_steps(args, recipe, 320) == min(recipe.head_stage_max_steps, 10 * recipe.head_stage_epochs)
    assert R.head_stage_steps(_args(head_stage_batch_size=32, head_stage_steps=0), recipe, 320) == 0


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_parameter_groups_carry_the_per_group_learning_rates(variant):
    model = tiny_stop(variant=variant, temporal_head="seqTransf", temporal_head_input="frozen")
    groups = R.parameter_groups(model, 1e-3, 0.2, head_lr_multiplier=3.0, prompter_lr_multiplier=0.1)
    by_param = {id(p): g for g in groups for p in g["params"]}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(by_param) == len(trainable)  # every trainable parameter exactly once
    for name, param in trainable:
        group = by_param[id(param)]
        expected = (
            3e-3
            if name.startswith(("temporal_head.", "temporal_gate"))
            else 1e-4
            if name.startswith(("spatial_prompter.", "temporal_prompter."))
            else 1e-3
        )
        assert group["lr"] == pytest.approx(expected), name
        if name.endswith(".bias") or name in ("global_prompts", "temporal_head.position_embeddings.weight"):
            assert group["weight_decay"] == 0.0, name
        if name == "temporal_head.encoder.layers.0.linear1.weight":
            assert group["weight_decay"] == 0.2
    optimizer = R.build_optimizer(groups, _args(learning_rate=1e-3, adam_beta1=0.9, adam_beta2=0.98, adam_epsilon=1e-6))
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-6


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_head_on_frozen_features_gets_gradient_at_the_first_step_once_the_gate_is_set(variant):
    model = tiny_stop(
        variant=variant, temporal_head="seqTransf", temporal_head_input="frozen", frame_weight_norm="video"
    )
    video = _video()
    batch = {"pixel_values": video, "video_mask": torch.ones(2, 4, dtype=torch.long)}
    with torch.no_grad():
        own = model.get_video_features(video)  # gate 0: STOP's own feature, as without the head
    gate = R.init_temporal_gate(model, batch, ratio=2.0)
    assert gate > 0 and model.temporal_gate.item() == pytest.approx(gate)
    with torch.no_grad():
        head = model.temporal_head(model.get_frame_features(video), batch["video_mask"])
        torch.testing.assert_close(model.get_video_features(video), own + gate * head)  # the head reads frozen frames
        assert (gate * head).norm(dim=-1).mean().item() == pytest.approx(2.0 * own.norm(dim=-1).mean().item(), rel=1e-4)
    model.train()
    model.get_video_features(video).pow(2).sum().backward()
    head_grads = [p.grad for p in model.temporal_head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in head_grads)
    assert sum(g.abs().sum() for g in head_grads) > 0
    assert model.global_prompts.grad is not None and model.global_prompts.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_prompt_video_embeds_are_the_prompted_backbone_without_the_head_and_get_their_own_loss(variant):
    from training.train import retrieval_loss, training_loss

    model = tiny_stop(
        variant=variant, temporal_head="seqTransf", temporal_head_input="frozen", frame_weight_norm="video"
    ).eval()
    video = _video()
    mask = torch.ones(2, 4, dtype=torch.long)
    text = {"input_ids": torch.tensor([[1, 5, 9], [1, 6, 9]]), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    R.init_temporal_gate(model, {"pixel_values": video, "video_mask": mask}, ratio=2.0)
    with torch.no_grad():
        out = model(pixel_values=video, video_mask=mask, **text)
        gate = model.temporal_gate.detach().clone()
        model.temporal_gate.zero_()
        own = model.get_video_features(video, mask)
        model.temporal_gate.copy_(gate)
    torch.testing.assert_close(out.prompt_video_embeds, F.normalize(own, dim=-1))
    assert (out.prompt_video_embeds - out.video_embeds).abs().max() > 1e-3  # the head moved the sum
    batch = {"pixel_values": video, "video_mask": mask, **text}
    scale = model.clip.logit_scale
    with torch.no_grad():
        combined = retrieval_loss(out, scale, 1)
        alone = retrieval_loss(out, scale, 1, video_embeds=out.prompt_video_embeds)
        torch.testing.assert_close(training_loss(model, batch, None, scale, 1), combined)
        torch.testing.assert_close(training_loss(model, batch, None, scale, 1, 0.5), combined + 0.5 * alone)
    without_head = tiny_stop(variant=variant).eval()
    assert without_head(pixel_values=video, video_mask=mask).prompt_video_embeds is None


def test_a_saved_stage_one_loads_into_a_model_with_other_prompts_and_a_mismatch_is_refused(tmp_path):
    source = tiny_stop(seed=1, variant="paper", temporal_head="seqTransf", temporal_head_input="frozen")
    R.save_head_stage(source, tmp_path / R.HEAD_STAGE_FILE)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / R.HEAD_STAGE_FILE).rename(tmp_path / "checkpoints" / R.HEAD_STAGE_FILE)
    target = tiny_stop(
        seed=2, variant="paper", temporal_head="seqTransf", temporal_head_input="frozen", use_spatial_prompt=False
    )
    before = {n: p.clone() for n, p in target.named_parameters() if n.startswith("global_prompts")}
    assert R.load_head_stage(target, tmp_path).endswith(R.HEAD_STAGE_FILE)  # the run's output folder
    stage_one = R.head_stage_state(source)
    assert stage_one and all(torch.equal(v, R.head_stage_state(target)[k]) for k, v in stage_one.items())
    assert all(torch.equal(p, before[n]) for n, p in target.named_parameters() if n in before)  # the rest untouched
    with pytest.raises(ValueError, match="does not fit this model"):
        R.load_head_stage(tiny_stop(variant="paper", temporal_head="seqTransf", adapter_dim=3), tmp_path)
    with pytest.raises(FileNotFoundError, match="stage 1 saves it"):
        R.load_head_stage(target, tmp_path / "nowhere")


def test_head_input_option_is_validated():
    with pytest.raises(ValueError, match="temporal_head_input"):
        STOPConfig(temporal_head_input="pixels")


class _Metric:
    def compute(self, predictions, references):
        ranks = [(row > row[t]).sum() for row, t in zip(predictions, references)]
        return {"t2v_R@1": 100.0 * sum(r == 0 for r in ranks) / len(ranks)}


class _Processor:
    """Captions as token ids (tiny vocabulary, EOT = 99 as in `tiny_clip_config`)."""

    def __call__(self, text, padding="max_length", return_tensors="pt"):
        ids = torch.zeros(len(text), 8, dtype=torch.long)
        for row, caption in enumerate(text):
            tokens = [98] + [1 + (ord(c) % 90) for c in caption][:6] + [99]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return {"input_ids": ids, "attention_mask": (ids > 0).long()}


class _Split:
    """The parts of `VideoTextDataset` that stage 1 reads, over a fixed frame-feature cache."""

    def __init__(self, captions):
        self.caption_column = "caption"
        self.dataset = {"caption": captions}
        self._captions = captions

    def __len__(self):
        return len(self._captions)

    def captions(self):
        return list(self._captions), list(range(len(self._captions)))


def test_head_stage_learns_order_on_cached_features_and_leaves_the_rest_frozen(monkeypatch):
    torch.manual_seed(0)
    model = tiny_stop(variant="paper", temporal_head="seqTransf", temporal_head_input="frozen")
    # Four "videos": two frame sequences and their reversals; the captions say the direction.
    forward = torch.randn(2, 4, 16)
    features = torch.cat([forward, forward.flip(1)])
    captions = ["ab up", "cd up", "ab down", "cd down"]
    from training.feature_cache import FrameFeatureCache

    cache = FrameFeatureCache(features, torch.ones(4, 4, dtype=torch.long), [])
    monkeypatch.setattr(FrameFeatureCache, "build", classmethod(lambda cls, *a, **k: cache))
    monkeypatch.setattr(R, "split_pair_accuracy", lambda *a: {"pair_accuracy": 0.5})
    prompts_before = model.global_prompts.detach().clone()
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    args = _args(
        head_stage_steps=60,
        head_stage_batch_size=4,
        head_stage_text=True,
        seed=0,
        max_grad_norm=1.0,
        logging_steps=10,
        per_device_eval_batch_size=4,
    )
    R.resolve_args(args, "paper")
    args.head_stage_learning_rate = 1e-2
    records = []
    summary = R.train_head_stage(
        model,
        _Processor(),
        _Split(captions),
        _Split(captions),
        args,
        R.Recipe(head_stage_eval_every=30),
        _Metric(),
        "cpu",
        log=lambda *_: None,
        write_record=records.append,
    )
    assert summary["head_stage_steps"] == 60 and summary["head_stage_val_t2v_R@1"] == 100.0
    assert [r["step"] for r in records if r["split"] == "head_stage_validation"] == [30, 60]
    assert torch.equal(model.global_prompts, prompts_before)  # only the head and the text side trained
    assert {n: p.requires_grad for n, p in model.named_parameters()} == requires
    with torch.no_grad():
        video = F.normalize(model.temporal_head(features, torch.ones(4, 4, dtype=torch.long)), dim=-1)
        text = F.normalize(model.get_text_features(**_Processor()(captions)), dim=-1)
    assert torch.equal((text @ video.t()).argmax(-1), torch.arange(4))


def test_hard_negative_batches_pair_reversed_twins_without_twin_labels():
    from training.data import NeighbourPairSampler, neighbour_pair_order
    from training.feature_cache import FrameFeatureCache

    generator = torch.Generator().manual_seed(0)
    forward = torch.randn(10, 6, 16, generator=generator)
    features = torch.cat([forward, forward.flip(1)])  # video i and i + 10 are twins: the same frames reversed
    shuffle = torch.randperm(20, generator=generator)
    features, twin = features[shuffle], (shuffle + 10) % 20
    position = torch.empty(20, dtype=torch.long)
    position[shuffle] = torch.arange(20)
    mask = torch.ones(20, 6, dtype=torch.long)
    mask[3] = 0  # a video that failed to decode: nobody's neighbour
    neighbours = R.cache_neighbours(FrameFeatureCache(features, mask, []), k=4)
    assert neighbours.shape == (20, 4) and not (neighbours == 3).any()
    for row in range(20):
        if row != 3 and position[twin[row]] != 3:
            assert neighbours[row, 0] == position[twin[row]]  # the nearest neighbour is the twin
    valid = [i for i in range(20) if i not in (3, int(position[twin[3]]))]
    order = neighbour_pair_order(neighbours, torch.Generator().manual_seed(1), valid)
    assert sorted(order) == valid  # each valid video once
    assert all(position[twin[order[k]]] == order[k + 1] for k in range(0, len(order), 2))
    sampler = NeighbourPairSampler(neighbours, seed=5)
    first, again = list(sampler), list(sampler)
    sampler.set_epoch(1)
    assert first == again and sorted(first) == list(range(20)) and list(sampler) != first


def test_a_head_trained_in_stage_1_gets_its_own_rate_in_stage_2_and_a_given_flag_wins():
    recipe = R.RECIPES["paper"]
    args = _args()
    R.resolve_args(args, "paper")
    assert R.head_lr_multiplier(args, recipe, head_trained=True) == recipe.trained_head_lr_multiplier == 0.1
    assert R.head_lr_multiplier(args, recipe, head_trained=False) == recipe.head_lr_multiplier == 1.0
    args.head_lr_multiplier = 2.0
    assert R.head_lr_multiplier(args, recipe, head_trained=True) == 2.0
