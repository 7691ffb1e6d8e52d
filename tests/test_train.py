"""training/train.py end to end on a tiny CLIP and a tiny synthetic benchmark, in real subprocesses.

The runs use the paper variant (token-space prompters: cheap on CPU) except the distributed-equivalence run,
which uses the official variant with small convolution kernels and per-video frame weights (the released
batch-wide normalisation makes a video's output depend on its batch, so it cannot match across shardings).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_data import byte_tokenizer
from tests.tiny import tiny_clip_config
from training.synthetic import write_benchmark

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN = REPO_ROOT / "training" / "train.py"
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONPATH": str(REPO_ROOT),
}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A tiny CLIP (32 px, patch 8, 2 + 2 layers) with a byte-level CLIP tokenizer, saved like a Hub checkpoint."""
    from transformers import CLIPModel

    tokenizer = byte_tokenizer()
    config = tiny_clip_config(vocab=len(tokenizer))
    config.text_config.bos_token_id = tokenizer.bos_token_id
    config.text_config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def benchmark(root, num_train, num_validation=0, num_test=0):
    write_benchmark(
        root, seed=1, num_train=num_train, num_validation=num_validation, num_test=num_test, num_frames=4, size=32
    )
    return root


def train_args(backbone, data, output_dir, *extra):
    return [
        str(TRAIN),
        "--model_name_or_path",
        str(backbone),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(output_dir),
        "--num_frames",
        "4",
        "--per_device_eval_batch_size",
        "8",
        "--logging_steps",
        "1",
        *extra,
    ]


def run(args, launcher=(sys.executable,), timeout=300, env=ENV):
    result = subprocess.run(
        [*launcher, *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def train_losses(output_dir):
    records = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if r["split"] == "train"]


def max_weight_difference(a, b):
    a, b = load_file(a), load_file(b)
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# --------------------------------------------------------------------------------------------- in-process units


def test_parameter_groups_exclude_biases_norms_prelu_and_prompt_embeddings_from_weight_decay():
    from tests.tiny import tiny_stop
    from training.recipe import parameter_groups

    model = tiny_stop(variant="paper", frame_position_embeddings=True, temporal_head="seqTransf")
    groups = parameter_groups(model, 1e-3, 0.1)
    assert {g["weight_decay"] for g in groups} == {0.0, 0.1}
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    decay_names = {names[id(p)] for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert "global_prompts" in no_decay_names and "prompt_generator.embedding.weight" in no_decay_names
    assert all(n.endswith(("weight",)) for n in decay_names)
    assert not any("bias" in n or "norm" in n or "ln_" in n or ".act." in n for n in decay_names)
    assert any(".act." in n for n in no_decay_names)  # PReLU slopes
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay_names | no_decay_names == trainable and not any(n.startswith("clip.") for n in trainable)


def test_stop_config_overrides_are_typed_like_the_config_fields():
    from training.arguments import stop_options
    from training.train import parse_args

    args = parse_args(
        [
            "--dataset_name",
            "x",
            "--output_dir",
            "y",
            "--variant",
            "paper",
            "--stop_config_overrides",
            "prompter_dropout=0.0",
            "inter_kernel=3,5,5",
            "use_spatial_prompt=false",
            "num_prompt_layers=4",
            "temporal_head=seqTransf",
        ]
    )
    assert stop_options(args) == {
        "variant": "paper",
        "num_frames": 8,
        "max_words": 32,
        "prompter_dropout": 0.0,
        "inter_kernel": [3, 5, 5],
        "use_spatial_prompt": False,
        "num_prompt_layers": 4,
        "temporal_head": "seqTransf",
        "temporal_head_input": "frozen",
    }
    with pytest.raises(ValueError, match="'bad' is not a STOPConfig field"):
        stop_options(parse_args(["--dataset_name", "x", "--output_dir", "y", "--stop_config_overrides", "bad=1"]))


def test_the_script_finds_the_checkout_through_a_pth_file_alone(tmp_path):
    """`accelerate launch training/train.py` from a venv that `make setup` made: the script has no sys.path code, the
    checkout comes from a .pth file (here: a bare venv whose .pth names the checkout and this venv's packages)."""
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "checkout.pth").write_text(f"{REPO_ROOT}\n{sysconfig.get_path('purelib')}\n")
    env = {key: value for key, value in ENV.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [str(python), str(TRAIN), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--stop_config_overrides" in result.stdout and "--resume_from_checkpoint" in result.stdout


def test_model_card_holds_hub_metadata_and_test_metrics_as_model_index(tmp_path):
    from huggingface_hub import ModelCard

    from tests.tiny import stop_config
    from training.reporting import write_model_card

    (tmp_path / "synthetic").mkdir()  # a local dataset folder is named by its folder name
    write_model_card(
        tmp_path,
        "stop-tiny",
        "openai/clip-vit-base-patch32",
        str(tmp_path / "synthetic"),
        "retrieval",
        {"t2v_R@1": 41.5, "v2t_MdR": 2.0, "num_failed": 0},
        stop_config(),
        {"learning_rate": 1e-3},
    )
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "feature-extraction"
    assert {"stop", "video-text-retrieval", "clip"} <= set(card.data.tags)
    assert card.data.base_model == "openai/clip-vit-base-patch32" and card.data.datasets == ["synthetic"]
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"t2v_R@1": 41.5, "v2t_MdR": 2.0}
    assert all(r.dataset_split == "test" for r in card.data.eval_results)


# --------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_two_processes_give_the_losses_and_weights_of_one_process_with_the_double_batch(backbone, tmp_path):
    data = benchmark(tmp_path / "data", num_train=16)
    common = [
        "--max_train_steps",
        "3",
        "--optimizer",
        "sgd",
        "--learning_rate",
        "0.05",
        "--variant",
        "official",
        "--frame_weight_norm",
        "video",
        "--head_stage_steps",
        "100",
        "--stop_config_overrides",
        "prompter_dropout=0.0",
        "prompter_kernel=3,3,3",
        "region_kernel=3,3,3",
        "inter_kernel=3,3,3",
        "frame_weight_kernel=3,3,3",
    ]
    single, double = tmp_path / "one", tmp_path / "two"
    run(train_args(backbone, data, single, "--per_device_train_batch_size", "8", *common))
    launcher = (
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    )
    run(
        train_args(backbone, data, double, "--per_device_train_batch_size", "4", *common),
        launcher=launcher,
        env={**ENV, "ACCELERATE_USE_CPU": "true"},
    )

    one, two = train_losses(single), train_losses(double)
    assert [s for s, _ in one] == [s for s, _ in two] == [1, 2, 3]
    assert max(abs(a - b) for (_, a), (_, b) in zip(one, two)) < 1e-5
    assert one[0][1] != one[2][1]  # the weights moved
    assert max_weight_difference(single / "model.safetensors", double / "model.safetensors") < 1e-4


@pytest.mark.slow
def test_run_killed_with_sigkill_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(backbone, tmp_path):
    # 3 steps per epoch, 2 epochs, validation after each; dropout on, random frame offsets, decoding in a worker.
    # Killed in the second epoch: the resumed run must skip the right batches of the right epoch order.
    data = benchmark(tmp_path / "data", num_train=12, num_validation=4)
    common = [
        "--per_device_train_batch_size",
        "4",
        "--max_train_steps",
        "6",
        "--variant",
        "paper",
        "--frame_sampling",
        "random",
        "--dataloader_num_workers",
        "1",
        "--checkpointing_steps",
        "1",
    ]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(train_args(backbone, data, straight, *common))

    log = open(tmp_path / "killed.log", "w")
    process = subprocess.Popen(
        [sys.executable, *train_args(backbone, data, killed, *common)], env=ENV, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "step_4" / "training_state.json").exists():  # mid epoch 2
        assert process.poll() is None and time.time() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "checkpoints" / "step_6").exists(), "the run ended before it could be killed"
    run(train_args(backbone, data, killed, *common, "--resume_from_checkpoint", "latest"))

    for weights in ("model.safetensors", "checkpoints/step_6/model.safetensors"):
        assert max_weight_difference(straight / weights, killed / weights) == 0.0, weights
    assert train_losses(killed) == train_losses(straight)  # the log has no duplicated or missing steps
    val = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines() if '"validation"' in line]
    assert [r["epoch"] for r in val] == [0, 1, 2] and "pair_accuracy/slide" in val[0]
    assert not list((killed / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
def test_short_run_beats_the_untrained_model_skips_a_corrupt_video_and_writes_a_hub_ready_folder(backbone, tmp_path):
    # Validation is a copy of the training clips (the run must fit the pairs it trains on). Reversed twins are left
    # out: this short run cannot learn order, and twins that an order-blind model ties would cap R@1 at 50%.
    data = benchmark(tmp_path / "data", num_train=24)
    rows = [json.loads(line) for line in (data / "train" / "metadata.jsonl").read_text().splitlines()]
    rows = [row for row in rows if not row["reversed"]][:11]
    (data / "train" / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    shutil.copytree(data / "train", data / "validation")
    shutil.copytree(data / "train", data / "test")
    (data / "train" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with open(data / "train" / "metadata.jsonl", "a") as f:  # 11 + 1 videos: two full batches of 6 each epoch
        f.write(json.dumps({**rows[0], "file_name": "broken.mp4", "caption": "a broken clip"}) + "\n")
    out = tmp_path / "out"
    epochs = 30
    # No stage 1 (--head_stage_steps 0): epoch 0 is then the untrained model.
    result = run(
        train_args(
            backbone,
            data,
            out,
            "--per_device_train_batch_size",
            "6",
            "--num_train_epochs",
            str(epochs),
            "--variant",
            "paper",
            "--learning_rate",
            "1e-2",
            "--num_warmup_steps",
            "0",
            "--head_stage_steps",
            "0",
        )
    )

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "validation"]
    assert [r["epoch"] for r in val] == list(range(epochs + 1))  # epoch 0: the untrained model
    untrained, best = val[0]["t2v_R@1"], max(r["t2v_R@1"] for r in val[1:])
    assert best >= untrained + 25, [r["t2v_R@1"] for r in val]

    skipped = [r for r in records if r["split"] == "skipped"]
    assert len(skipped) == epochs and all(r["num_skipped"] == 1 and "broken.mp4" in r["skipped"][0] for r in skipped)
    assert "skipped 1 videos that failed to decode" in result.stdout and "broken.mp4" in result.stdout

    results = json.loads((out / "all_results.json").read_text())
    assert results["best_val_t2v_R@1"] == best and results["test_t2v_R@1"] == best  # test = validation clips
    for name in (
        "model.safetensors",
        "config.json",
        "modeling_stop.py",
        "configuration_stop.py",
        "processing_stop.py",
        "processor_config.json",
        "tokenizer.json",
        "README.md",
        "metrics.jsonl",
        "training_curves.png",
    ):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "stop" and config["auto_map"]["AutoModel"] == "modeling_stop.STOPModel"
    readme = (out / "README.md").read_text()
    assert "model-index" in readme and "t2v_R@1" in readme and "library_name: transformers" in readme

    load = f"""
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained({str(out)!r}, trust_remote_code=True)
inputs = processor(text=["a red circle moving left"], videos=[{str(data / "test" / "00000a.mp4")!r}])
print(type(model).__name__, type(processor).__name__, tuple(model(**inputs).logits_per_text.shape))
"""
    loaded = subprocess.run(
        [sys.executable, "-c", load],
        cwd=tmp_path,
        env={**ENV, "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split()[-4:] == ["STOPModel", "STOPProcessor", "(1,", "1)"]


def test_stage2_head_input_prompted_switches_the_stage_1_head_to_the_prompted_frames_and_is_saved(backbone, tmp_path):
    data = benchmark(tmp_path / "data", num_train=8, num_validation=4)
    out = tmp_path / "out"
    result = run(
        train_args(
            backbone,
            data,
            out,
            "--per_device_train_batch_size",
            "4",
            "--num_train_epochs",
            "1",
            "--head_stage_steps",
            "2",
            "--stage2_head_input",
            "prompted",
        )
    )
    assert "stage 2: the temporal head reads the prompted frame features" in result.stdout
    results = json.loads((out / "all_results.json").read_text())
    assert results["head_stage_steps"] == 2 and results["stage2_head_input"] == "prompted"
    config = json.loads((out / "config.json").read_text())
    assert config["temporal_head"] == "seqTransf" and config["temporal_head_input"] == "prompted"


@pytest.mark.slow
def test_classification_evaluates_zero_shot_first_and_a_stop_folder_trains_on(backbone, tmp_path):
    data = benchmark(tmp_path / "data", num_train=8, num_validation=4, num_test=4)
    first, second = tmp_path / "first", tmp_path / "second"
    run(
        train_args(
            backbone,
            data,
            first,
            "--task",
            "classification",
            "--label_template",
            "a shape {label}",
            "--per_device_train_batch_size",
            "4",
            "--num_train_epochs",
            "2",
            "--variant",
            "paper",
        )
    )
    records = [json.loads(line) for line in (first / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "validation"]
    assert [r["epoch"] for r in val] == [0, 1, 2] and 0 <= val[0]["top1_accuracy"] <= 100
    results = json.loads((first / "all_results.json").read_text())
    assert {"test_top1_accuracy", "test_mean_class_accuracy", "best_val_top1_accuracy"} <= set(results)
    assert "pipeline_tag: video-classification" in (first / "README.md").read_text()

    # A STOP checkpoint is trained on as it is: its config (variant, frames), not new-model options.
    run(
        train_args(
            first,
            data,
            second,
            "--task",
            "classification",
            "--per_device_train_batch_size",
            "4",
            "--max_train_steps",
            "1",
            "--num_frames",
            "8",
        )
    )
    config = json.loads((second / "config.json").read_text())
    assert config["variant"] == "paper" and config["num_frames"] == 4


# --------------------------------------------------------------------------------------------- runs that must stop


def run_failing(args, timeout=300):
    result = subprocess.run(
        [sys.executable, *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode != 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def assert_no_model_written(output_dir):
    for name in ("model.safetensors", "config.json", "README.md", "all_results.json", "checkpoints/best"):
        assert not (output_dir / name).exists(), name


@pytest.mark.slow
def test_undecodable_training_videos_beyond_the_bound_stop_the_run_naming_them_and_writing_no_model(backbone, tmp_path):
    data = benchmark(tmp_path / "data", num_train=8, num_validation=4)
    broken = sorted((data / "train").glob("*.mp4"))
    for path in broken:
        path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    out = tmp_path / "out"
    result = run_failing(
        train_args(
            backbone, data, out, "--per_device_train_batch_size", "4", "--max_train_steps", "8", "--variant", "paper"
        )
    )
    # Batch 4 of 8 videos: 4 failures are at the bound (0.5), the 8th failure exceeds it: stopped in the 2nd batch.
    assert "8 of 8 training videos failed to decode, more than --max_bad_video_fraction 0.5" in result.stderr
    assert all(path.name in result.stderr for path in broken)
    assert "Traceback" not in result.stderr
    assert_no_model_written(out)
    log = out / "metrics.jsonl"  # absent when the run stops while the recipe's stage 1 builds its feature cache
    assert not log.exists() or not [r for r in log.read_text().splitlines() if '"train"' in r]


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_naming_the_batch_and_writing_no_model(backbone, tmp_path):
    data = benchmark(tmp_path / "data", num_train=8, num_validation=4)
    out = tmp_path / "out"
    # One SGD step at lr 1e30 without clipping sends the prompt weights to inf: the second loss is NaN.
    result = run_failing(
        train_args(
            backbone,
            data,
            out,
            "--per_device_train_batch_size",
            "4",
            "--max_train_steps",
            "4",
            "--variant",
            "paper",
            "--optimizer",
            "sgd",
            "--learning_rate",
            "1e30",
            "--max_grad_norm",
            "0",
            "--num_warmup_steps",
            "0",
            "--head_stage_steps",  # the recipe's stage 1 would keep a best model of its own before the NaN
            "0",
        )
    )
    assert "step 2: the training loss is nan" in result.stderr
    named = [line.strip() for line in result.stderr.splitlines() if line.strip().endswith(".mp4")]
    assert len(named) == 4 and all((data / "train").as_posix() in name for name in named)
    assert_no_model_written(out)


@pytest.mark.slow
def test_checkpoints_rotate_changed_resume_arguments_are_refused_and_failed_validation_videos_are_named(
    backbone, tmp_path
):
    data = benchmark(tmp_path / "data", num_train=8, num_validation=4)
    (data / "validation" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    row = json.loads((data / "validation" / "metadata.jsonl").read_text().splitlines()[0])
    with open(data / "validation" / "metadata.jsonl", "a") as f:
        f.write(json.dumps({**row, "file_name": "broken.mp4", "caption": "a broken clip"}) + "\n")
    out = tmp_path / "out"
    common = [
        "--per_device_train_batch_size",
        "4",
        "--max_train_steps",
        "4",
        "--variant",
        "paper",
        "--checkpointing_steps",
        "1",
    ]
    result = run(train_args(backbone, data, out, *common))

    # Two newest checkpoints kept (default --checkpoints_total_limit 2), the model folder `best` and stage 1's
    # parameters besides them.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "best",
        "head_stage.safetensors",
        "step_3",
        "step_4",
    ]
    assert "head stage step" in result.stdout
    # A second run from the same stage 1: loaded, not retrained.
    reused = run(train_args(backbone, data, tmp_path / "reused", *common, "--head_stage_from", str(out)))
    assert f"stage 1: loaded from {out / 'checkpoints' / 'head_stage.safetensors'}" in reused.stdout
    assert "head stage step" not in reused.stdout
    # Failed validation videos: named on the console and in metrics.jsonl, each evaluation.
    assert "validation: 1 videos failed to decode and were left out" in result.stdout
    assert "broken.mp4" in result.stdout
    val = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"validation"' in line]
    assert len(val) == 3 and all(r["num_failed"] == 1 and "broken.mp4" in r["failed_videos"][0] for r in val)

    resume = ["--resume_from_checkpoint", str(out / "checkpoints" / "step_3")]
    refused = run_failing(
        train_args(
            backbone, data, out, *common, "--per_device_train_batch_size", "2", "--learning_rate", "2e-3", *resume
        )
    )
    assert "--per_device_train_batch_size: checkpoint 4, now 2" in refused.stderr
    assert "--learning_rate: checkpoint 0.001, now 0.002" in refused.stderr and "--allow_changed_args" in refused.stderr
    allowed = run(train_args(backbone, data, out, *common, "--learning_rate", "2e-3", "--allow_changed_args", *resume))
    assert "resuming from" in allowed.stderr and "--learning_rate: checkpoint 0.001, now 0.002" in allowed.stderr

    model = out / "checkpoints" / "step_4" / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    truncated = run_failing(train_args(backbone, data, out, *common, "--resume_from_checkpoint", "latest"))
    assert f"{model}: not a readable .safetensors file (truncated" in truncated.stderr


def test_rotation_keeps_the_newest_complete_checkpoints_and_ignores_other_folders(tmp_path):
    from training.checkpointing import STATE_FILE, rotate_checkpoints

    for step in (1, 2, 3, 10):
        (tmp_path / f"step_{step}").mkdir()
        (tmp_path / f"step_{step}" / STATE_FILE).write_text(json.dumps({"completed_steps": step}))
    (tmp_path / "best").mkdir()
    (tmp_path / ".tmp-step_11").mkdir()
    deleted = rotate_checkpoints(tmp_path, 2, keep=tmp_path / "step_3")
    assert sorted(p.name for p in deleted) == ["step_1", "step_2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-step_11", "best", "step_10", "step_3"]
    assert rotate_checkpoints(tmp_path, 0) == []
