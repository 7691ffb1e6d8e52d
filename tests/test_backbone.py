import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

from training.pretrain_clip import (
    brightness_caption,
    evaluate_zero_shot,
    hard_negative_variant,
    main,
    parse_args,
    pixel_values,
    render_still_with_brightness,
    sample_training_stills,
    training_batch,
)
from training.synthetic import DEFAULT_CLIP, STILL_TEMPLATES, render_still, sample_still, still_caption
from training.tokenizer import BPE_FILE_NAME, DEFAULT_CACHE, build_clip_tokenizer

# openai/clip-vit-base-patch32's ids.
KNOWN_IDS = {
    "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
    "a small red circle in the top left corner": [49406, 320, 2442, 736, 7117, 530, 518, 1253, 1823, 5253, 49407],
}


@pytest.fixture(scope="module")
def backbone():
    if not (DEFAULT_CLIP / "model.safetensors").exists():
        pytest.fail(f"no backbone at {DEFAULT_CLIP}: run python training/pretrain_clip.py")
    return CLIPModel.from_pretrained(DEFAULT_CLIP), CLIPTokenizer.from_pretrained(DEFAULT_CLIP)


def test_saved_tokenizer_matches_openai_clip_ids(backbone):
    tokenizer = backbone[1]
    for text, ids in KNOWN_IDS.items():
        assert tokenizer(text).input_ids == ids
    assert len(tokenizer) == 49408 and tokenizer.pad_token_id == 49407


def test_tokenizer_built_from_the_bpe_file_matches_openai_clip_ids(backbone):
    if not (DEFAULT_CACHE / BPE_FILE_NAME).exists():
        pytest.skip(f"{BPE_FILE_NAME} not cached in {DEFAULT_CACHE} (python -m training.tokenizer fetches it)")
    tokenizer = build_clip_tokenizer(DEFAULT_CACHE / BPE_FILE_NAME)
    for text, ids in KNOWN_IDS.items():
        assert tokenizer(text).input_ids == ids
    assert tokenizer.get_vocab() == backbone[1].get_vocab()


def test_committed_backbone_is_small_and_fits_stop(backbone):
    model, _ = backbone
    config = model.config
    assert config.vision_config.image_size == 64 and config.vision_config.patch_size == 8
    assert config.text_config.max_position_embeddings == 77  # STOP reads 32 words, then inserts prompts
    assert config.text_config.vocab_size == 49408
    assert model.dtype == torch.float32  # stored in float16, computed in float32
    assert sum(f.stat().st_size for f in DEFAULT_CLIP.iterdir()) < 40e6
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "README.md"} <= {
        f.name for f in DEFAULT_CLIP.iterdir()
    }


def test_saved_image_processor_matches_training_preprocessing():
    processor = CLIPProcessor.from_pretrained(DEFAULT_CLIP)
    images = [render_still(sample_still(np.random.default_rng(i)), 64) for i in range(2)]
    expected = pixel_values(np.stack(images))
    got = processor(images=images, return_tensors="pt").pixel_values
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_backbone_retrieves_held_out_stills_zero_shot(backbone):
    # Fresh stills from a seed that neither training nor the model card's evaluation uses.
    results = evaluate_zero_shot(*backbone, num_stills=100, seed=20251125)
    # Measured on these 100 stills: colour, size, position 1.00, shape 0.99 (0.97 on the half-faint stills),
    # brightness 1.00, image->text R@1 0.99 (chance 1/720), text->image R@5 1.00. The targets of the backbone: at
    # least 0.85 for colour, size and brightness, 0.8 for shape and position.
    assert results["colour_accuracy"] >= 0.9
    assert results["size_accuracy"] >= 0.9
    assert results["position_accuracy"] >= 0.9 and results["position_given_rest_accuracy"] >= 0.9
    assert results["shape_accuracy"] >= 0.85 and results["mixed_shape_accuracy"] >= 0.8  # chance 0.2
    assert results["brightness_accuracy"] >= 0.9 and results["brightness_given_rest_accuracy"] >= 0.9  # chance 0.5
    assert results["image_to_text_R@1"] >= 0.85  # chance 0.0014
    assert results["text_to_image_R@5"] >= 0.9


TINY = [
    "--max_train_steps",
    "2",
    "--per_device_train_batch_size",
    "16",
    "--hidden_size",
    "32",
    "--num_hidden_layers",
    "1",
    "--projection_dim",
    "16",
    "--num_warmup_steps",
    "1",
    "--num_eval_stills",
    "20",
    "--tokenizer_name",
    str(DEFAULT_CLIP),
    "--eval_steps",
    "0",
    "--teacher_steps",  # the default recipe's 600-step CNN teacher; the tests that need one ask for a short one
    "0",
]


def _same_weights(a, b):
    a, b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pretraining_is_deterministic_for_a_seed(tmp_path):
    first = main(["--output_dir", str(tmp_path / "a"), "--checkpoint_dir", str(tmp_path / "sa"), *TINY])
    second = main(["--output_dir", str(tmp_path / "b"), "--checkpoint_dir", str(tmp_path / "sb"), *TINY])
    assert first == second
    assert _same_weights(tmp_path / "a", tmp_path / "b")
    assert json.loads((tmp_path / "a" / "config.json").read_text())["projection_dim"] == 16
    assert CLIPModel.from_pretrained(tmp_path / "a").config.text_config.hidden_size == 32


@pytest.mark.parametrize(
    "teacher",
    [
        [],
        [
            "--teacher_steps",
            "2",
            "--num_hidden_layers",
            "2",
            "--distill_pooled_weight",
            "0.5",
            "--shape_loss_weight",
            "0.5",
            "--mimetic_init",
            "1",
        ],
    ],
    ids=["", "teacher"],
)
def test_resumed_pretraining_is_bit_exact(tmp_path, teacher):
    state = ["--checkpoint_dir", str(tmp_path / "state")]
    args = [*TINY, *teacher, "--max_train_steps", "4", "--checkpointing_steps", "2", *state]
    straight = main(["--output_dir", str(tmp_path / "straight"), *args])  # leaves the state of step 2 behind
    resumed = main(["--output_dir", str(tmp_path / "resumed"), *args, "--resume"])
    assert straight == resumed
    assert _same_weights(tmp_path / "straight", tmp_path / "resumed")
    with pytest.raises(ValueError, match="learning_rate"):
        main(["--output_dir", str(tmp_path / "other"), *args, "--resume", "--learning_rate", "0.01"])
    with pytest.raises(FileNotFoundError, match="no training state"):
        main(["--output_dir", str(tmp_path / "none"), *TINY, "--checkpoint_dir", str(tmp_path / "nowhere"), "--resume"])


def test_distillation_trains_the_vision_tower_toward_the_teacher(tmp_path, capsys):
    from training.pretrain_clip import PatchTeacher, train_teacher

    args = parse_args([*TINY, "--teacher_steps", "3", "--distill_layer", "1", "--output_dir", str(tmp_path)])
    teacher = train_teacher(args)
    assert not any(p.requires_grad for p in teacher.parameters())
    pixels = training_batch(0, args, CLIPTokenizer.from_pretrained(DEFAULT_CLIP))[0]
    targets = teacher.targets(pixels, 8)
    assert targets.shape == (16, 64, 64) and torch.isfinite(targets).all()
    assert abs(targets.mean().item()) < 0.5  # standardised per channel on a training batch
    assert not torch.equal(teacher.state_dict()["mean"], PatchTeacher().state_dict()["mean"])
    pooled = teacher.pooled_targets(pixels)
    assert pooled.shape == (16, 64) and torch.isfinite(pooled).all() and abs(pooled.mean().item()) < 0.5
    run = [
        "--teacher_steps",
        "2",
        "--distill_layer",
        "1",
        "--logging_steps",
        "1",
        "--distill_pooled_weight",
        "0.5",
        "--shape_loss_weight",
        "2",
        "--mimetic_init",
        "1",
        "--checkpoint_dir",
        str(tmp_path / "s"),
    ]
    main([*TINY, *run, "--output_dir", str(tmp_path / "m")])
    log = capsys.readouterr().out
    assert "teacher step 2/2" in log and " distill " in log and " distill_pooled " in log and " shape_ce " in log
    card = (tmp_path / "m" / "README.md").read_text()
    assert "Dense distillation" in card and "2 steps" in card and "global max-pooled feature, with weight 0.5" in card
    assert "added once more, with weight 2.0" in card and "starts mimetically" in card
    # Only a stock CLIP is saved: no teacher or distillation weights.
    assert not any("distill" in k or "teacher" in k for k in load_file(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ValueError, match="distill_layer"):
        parse_args([*TINY, "--teacher_steps", "2", "--distill_layer", "2"])  # TINY has one layer


def test_mimetic_init_sets_the_attention_products_and_leaves_the_default_stream_alone():
    from training.pretrain_clip import build_config, mimetic_init_

    args = parse_args([*TINY, "--hidden_size", "64", "--num_attention_heads", "4"])
    tokenizer = CLIPTokenizer.from_pretrained(DEFAULT_CLIP)
    torch.manual_seed(0)
    model = CLIPModel(build_config(args, tokenizer))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.random.get_rng_state()
    mimetic_init_(model.vision_model, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())  # its own generator: later draws are unchanged
    for layer in model.vision_model.encoder.layers:
        attention = layer.self_attn
        query_key = attention.q_proj.weight.T @ attention.k_proj.weight
        value_out = attention.v_proj.weight.T @ attention.out_proj.weight.T
        assert abs(query_key.diagonal().mean().item() - 0.7) < 0.15
        assert abs(value_out.diagonal().mean().item() + 0.4) < 0.1
        off = ~torch.eye(64, dtype=torch.bool)
        assert query_key[off].abs().mean() < 0.2
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("vision_model" in k and "self_attn" in k and k.endswith("weight") for k in changed)
    again = CLIPModel(build_config(args, tokenizer))
    mimetic_init_(again.vision_model, seed=0)
    assert torch.equal(
        again.vision_model.encoder.layers[0].self_attn.q_proj.weight,
        model.vision_model.encoder.layers[0].self_attn.q_proj.weight,
    )


def test_brightness_captions_and_renders_extend_the_solid_ones():
    for i in range(8):
        spec = sample_still(np.random.default_rng(i), second_prob=0.5)
        for template in range(STILL_TEMPLATES):
            assert brightness_caption(spec, "solid", template) == still_caption(spec, template)
        assert np.array_equal(render_still_with_brightness(spec, 1.0), render_still(spec))
        faint = render_still_with_brightness(spec, 0.4).astype(int)
        assert not np.array_equal(faint, render_still(spec))
    spec = sample_still(np.random.default_rng(0))
    caption = brightness_caption(spec, "faint")
    assert caption == f"a {spec.size} faint {spec.colour} {spec.shape} " + caption.split(f"{spec.shape} ", 1)[1]
    assert brightness_caption(spec, "faint", 3).startswith(f"a faint {spec.colour} {spec.shape}, {spec.size},")
    with pytest.raises(ValueError, match="brightness"):
        brightness_caption(spec, "dim")


def test_hard_negative_groups_differ_from_their_first_still_in_one_attribute():
    args = parse_args(["--per_device_train_batch_size", "32", "--hard_negative_share", "0.5"])
    stills = sample_training_stills(np.random.default_rng(0), args)
    assert len(stills) == 32
    for g in range(0, 16, 4):
        (anchor, brightness, _), *variants = stills[g : g + 4]
        for spec, b, _ in variants:
            assert spec.background == anchor.background
            diff = [a for a in ("colour", "shape", "size", "position") if getattr(spec, a) != getattr(anchor, a)]
            assert len(diff) + (b != brightness) == 1
    spec = sample_still(np.random.default_rng(3))
    moved, _, _ = hard_negative_variant(np.random.default_rng(0), spec, "solid", 1.0, "position")
    assert moved.position != spec.position and moved.shape == spec.shape and moved.radius == spec.radius
    with pytest.raises(ValueError, match="attribute"):
        hard_negative_variant(np.random.default_rng(0), spec, "solid", 1.0, "texture")


def test_the_trained_default_carries_its_own_frozen_clip():
    # checkpoints/stop-synthetic stores every CLIP weight itself, so a new backbone here changes nothing for it.
    stop = DEFAULT_CLIP.parent / "stop-synthetic"
    if not (stop / "model.safetensors").exists():
        pytest.fail(f"no trained default at {stop}")
    stop_keys = {k[len("clip.") :] for k in load_file(stop / "model.safetensors") if k.startswith("clip.")}
    assert stop_keys == set(load_file(DEFAULT_CLIP / "model.safetensors"))
    assert "clip-synthetic" not in (stop / "config.json").read_text()


def test_solid_batches_without_hard_negatives_are_the_first_recipe_batches(backbone):
    tokenizer = backbone[1]
    args = parse_args(["--per_device_train_batch_size", "8", "--faint_prob", "0", "--hard_negative_share", "0"])
    pixels, text, same, labels = training_batch(3, args, tokenizer)
    rng = np.random.default_rng([args.seed, 3])
    specs = [sample_still(rng, args.second_object_prob) for _ in range(8)]
    captions = [still_caption(spec, int(rng.integers(STILL_TEMPLATES))) for spec in specs]
    expected = tokenizer(captions, padding=True, truncation=True, max_length=32, return_tensors="pt")
    assert torch.equal(text.input_ids, expected.input_ids)
    assert torch.equal(pixels, pixel_values(np.stack([render_still(spec) for spec in specs])))
    assert labels.shape == (8, 5) and (labels[:, 4] == 0).all()  # every still solid
    assert torch.equal(same.diagonal(), torch.ones(8))


def test_committed_model_card_is_what_the_default_command_writes(tmp_path):
    # The card is generated from the arguments, so this pins the script's defaults to the committed weights' recipe.
    import shlex

    from training.pretrain_clip import PRETRAIN_COMMAND, write_model_card

    results = json.loads((DEFAULT_CLIP / "eval_results.json").read_text())
    info = {k: results[k] for k in ("train_seconds", "num_parameters", "num_parameters_without_token_embedding")}
    args = parse_args(shlex.split(PRETRAIN_COMMAND)[2:])
    assert (args.max_train_steps, args.teacher_steps, args.shape_loss_weight, args.mimetic_init) == (2000, 600, 3.0, 1)
    write_model_card(tmp_path, args, results, info)
    assert (tmp_path / "README.md").read_text() == (DEFAULT_CLIP / "README.md").read_text()
