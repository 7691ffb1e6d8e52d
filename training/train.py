"""Train STOP's prompts over a frozen CLIP with Accelerate: text-video retrieval or video classification.

    accelerate launch training/train.py --dataset_name data/synthetic --output_dir runs/stop-synthetic

Reads top to bottom like the transformers `*_no_trainer.py` examples: arguments, Accelerator, data, model,
optimizer and schedule, `accelerator.prepare`, the training loop, checkpointing, evaluation, `push_to_hub`.

- `--task retrieval`: symmetric InfoNCE over the text-video pairs of the GLOBAL batch (embeddings are gathered
  across processes with their gradient, so 2 processes x batch n compute the loss of 1 process x batch 2n).
- `--task classification`: the class names through `--label_template` are the texts; cross-entropy over
  `logit_scale * video_embeds @ class_text_embeds.T`. The untrained model is evaluated zero-shot first.

The model is selected on the validation split (R@1 text-to-video / top-1 accuracy, each epoch) and evaluated once
on the test split. The best model, its processor, a model card, `all_results.json`, `metrics.jsonl` and
`training_curves.png` end up at the root of `--output_dir`; checkpoints (`save_state`: model, optimizer, scheduler,
RNG, data position) in `--output_dir/checkpoints/{step_N,epoch_N}`. A run killed at any point and resumed with
`--resume_from_checkpoint latest` ends with the same weights as an uninterrupted run. Only the newest
`--checkpoints_total_limit` step/epoch checkpoints are kept. Resuming with different run-shaping arguments (batch
size, learning rate, schedule, data, seed, ...) is an error that lists them; `--allow_changed_args` resumes anyway.

A run stops with a non-zero exit, naming the files, when more than `--max_bad_video_fraction` of an epoch's training
videos fail to decode or when the loss is not finite; it then writes no final or best model.

`--streaming` trains from a streamed train split (a Hub dataset, or local WebDataset `.tar` shards): see
`training/streaming.py`. It needs `--max_train_steps`; resume is exact there too.

Defaults are the two-stage recipe of `training/recipe.py` (one table of per-variant defaults): a new model over the
embedded synthetic backbone (`checkpoints/clip-synthetic`), paper variant with CLIP4Clip's seqTransf temporal head
over the frozen per-frame features, 8 frames. Stage 1 trains the head on cached frozen frame features (100 epochs,
at most 2000 steps of 32 clips); stage 2 trains STOP's prompts end to end (batch 16, 3 epochs) with the head gated
in. AdamW betas (0.9, 0.98), eps 1e-6, weight decay 0.2, lr 1e-3 per parameter group, cosine with 10% warmup.
"""

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

# On a busy shared CPU, OpenMP threads that spin while waiting make a step several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

if __package__ in (None, ""):  # run as a script: accelerate launch training/train.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import transformers  # noqa: E402
from accelerate import Accelerator, DistributedDataParallelKwargs  # noqa: E402
from accelerate.logging import get_logger  # noqa: E402
from accelerate.utils import gather_object, set_seed  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import PretrainedConfig, get_scheduler  # noqa: E402

from modeling_stop import STOPConfig, STOPModel  # noqa: E402
from modeling_stop.modeling_stop import clip_loss  # noqa: E402
from modeling_stop.pipelines import register_pipelines  # noqa: E402
from modeling_stop.processing_stop import STOPProcessor  # noqa: E402
from training import recipe as training_recipe  # noqa: E402
from training.data import (  # noqa: E402
    VideoTextCollator,
    VideoTextDataset,
    build_dataloader,
    class_names,
    load_video_text_dataset,
    split_pair_accuracy,
)
from training.defaults import DEFAULT_CLIP  # noqa: E402
from training.evaluation import embed_text_list, embed_video_dataset, load_metric  # noqa: E402
from training.feature_cache import CachedFeatureCollator, CachedFeatureDataset, FrameFeatureCache  # noqa: E402
from training.recipe import recipe_for  # noqa: E402
from training.streaming import build_streaming_dataloader, load_streaming_dataset  # noqa: E402

logger = get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
# The validation metric each task selects its model on.
SELECTION_METRIC = {"retrieval": "t2v_R@1", "classification": "top1_accuracy"}
STATE_FILE = "training_state.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Data
    parser.add_argument(
        "--dataset_name", required=True, help="a Hub dataset id, or a local videofolder / CSV / JSON folder"
    )
    parser.add_argument("--dataset_config_name", default=None)
    parser.add_argument("--video_column", default="video")
    parser.add_argument("--caption_column", default="caption", help="a string or a list of strings per video")
    parser.add_argument("--label_column", default="label", help="ClassLabel or string labels (classification)")
    parser.add_argument("--max_train_samples", type=int, default=None, help="truncate the train split (debugging)")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="truncate validation and test")
    parser.add_argument(
        "--frame_sampling",
        choices=["uniform", "random"],
        default="uniform",
        help="training frames: segment centres, or a random frame per segment (evaluation: uniform)",
    )
    parser.add_argument(
        "--preprocessing_num_workers",
        type=int,
        default=None,
        help="processes resolving the video paths of CSV / JSON datasets",
    )
    parser.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader processes decoding videos")
    parser.add_argument(
        "--feature_cache",
        choices=["auto", "off"],
        default="auto",
        help="auto: when every trainable module sits after the frozen backbone (frozen CLIP + temporal "
        "head) and frames are sampled uniformly, compute the frozen frame features once and train "
        "on them (same loss, many times faster)",
    )
    parser.add_argument("--feature_cache_dir", default=None, help="also keep the frame-feature cache on disk here")
    parser.add_argument(
        "--max_bad_video_fraction",
        type=float,
        default=0.5,
        help="stop (non-zero exit, files named) when more than this share of an epoch's training videos fail to decode",
    )
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="stream the train split (Hub dataset, or local WebDataset .tar shards); needs --max_train_steps",
    )
    parser.add_argument(
        "--shuffle_buffer_size",
        type=int,
        default=1000,
        help="--streaming: rows of the (deterministic, per-epoch seeded) shuffle buffer; 0: stream order",
    )
    # Task
    parser.add_argument("--task", choices=["retrieval", "classification"], default="retrieval")
    parser.add_argument("--label_template", default="a video of {label}", help="class name -> text (classification)")
    # Model
    parser.add_argument(
        "--model_name_or_path",
        default=str(DEFAULT_CLIP),
        help="a STOP checkpoint, or a CLIP checkpoint to start a new STOP model from "
        "(default: the embedded synthetic backbone)",
    )
    parser.add_argument(
        "--variant",
        choices=["official", "paper"],
        default=None,
        help="new models: STOP variant (default paper: fast on CPU)",
    )
    parser.add_argument("--prompt_generator", choices=["transformer", "linear"], default=None)
    parser.add_argument("--num_frames", type=int, default=None, help="new models: frames per video (default 8)")
    parser.add_argument("--max_words", type=int, default=None, help="new models: tokens per caption (default 32)")
    parser.add_argument("--frame_weight_norm", choices=["batch", "video"], default=None)
    parser.add_argument("--mask_layout", choices=["official", "patch"], default=None)
    parser.add_argument(
        "--stop_config_overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="any STOPConfig field of a new model, e.g. prompter_dropout=0.0 temporal_head=seqTransf",
    )
    # Optimisation
    parser.add_argument("--per_device_train_batch_size", type=int, default=16)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=32)
    parser.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    parser.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help="the prompts' learning rate (default: the variant's recipe, training/recipe.py)",
    )
    parser.add_argument("--head_lr_multiplier", type=float, default=None, help="temporal head lr / --learning_rate")
    parser.add_argument(
        "--prompter_lr_multiplier",
        type=float,
        default=None,
        help="spatial and temporal prompters' lr / --learning_rate",
    )
    parser.add_argument("--weight_decay", type=float, default=None, help="default: the recipe's (0.2, the authors')")
    parser.add_argument("--adam_beta1", type=float, default=None, help="default: the recipe's (0.9)")
    parser.add_argument("--adam_beta2", type=float, default=None, help="default: the recipe's (0.98, the authors')")
    parser.add_argument("--adam_epsilon", type=float, default=None, help="default: the recipe's (1e-6, the authors')")
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="0 disables clipping")
    parser.add_argument(
        "--num_train_epochs", type=int, default=None, help="default: the recipe's (paper 3, official 2)"
    )
    parser.add_argument("--max_train_steps", type=int, default=None, help="overrides --num_train_epochs")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument(
        "--lr_scheduler_type",
        default="cosine",
        choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"],
    )
    parser.add_argument("--gradient_checkpointing", action="store_true", help="recompute vision blocks in backward")
    parser.add_argument("--num_warmup_steps", type=int, default=None, help="default: --warmup_ratio of the steps")
    parser.add_argument("--warmup_ratio", type=float, default=None, help="default: the recipe's (0.1)")
    # Stage 1 of the recipe: the temporal head (and the text side) on cached frozen frame features
    parser.add_argument(
        "--head_stage_steps",
        type=int,
        default=None,
        help="steps of stage 1 for new STOP models with a temporal head on frozen features (default: "
        "the recipe's, scaled to the train split; 0 skips stage 1)",
    )
    parser.add_argument("--head_stage_learning_rate", type=float, default=None)
    parser.add_argument("--head_stage_batch_size", type=int, default=None)
    parser.add_argument(
        "--head_stage_text",
        type=lambda v: v.lower() in ("true", "1"),
        default=None,
        metavar="{true,false}",
        help="also train the prompt generator and text adapters in stage 1",
    )
    parser.add_argument(
        "--hard_negative_batches",
        type=lambda v: v.lower() in ("true", "1"),
        default=None,
        metavar="{true,false}",
        help="batches of nearest-neighbour pairs in frozen mean-pooled frame features, in both stages of the "
        "recipe (default: the recipe's, true)",
    )
    parser.add_argument(
        "--temporal_gate_ratio",
        type=float,
        default=None,
        help="stage 2 starts with ||gate * head|| = ratio * ||STOP's own video feature||",
    )
    parser.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="default: what `accelerate launch` / `accelerate config` set",
    )
    parser.add_argument("--seed", type=int, default=42)
    # Output, checkpoints, logging
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--checkpointing_steps", default=None, help="N (every N optimizer steps) or 'epoch'")
    parser.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    parser.add_argument(
        "--checkpoints_total_limit",
        type=int,
        default=2,
        help="keep only the newest N step/epoch checkpoints (0: keep all)",
    )
    parser.add_argument(
        "--allow_changed_args",
        action="store_true",
        help="resume even when run-shaping arguments differ from the checkpoint's (with a warning; "
        "the data position is converted by samples seen)",
    )
    parser.add_argument("--logging_steps", type=int, default=10, help="write the train loss every N steps")
    parser.add_argument("--with_tracking", action="store_true", help="also log through Accelerate's trackers")
    parser.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, ... or all")
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--hub_token", default=None)
    args = parser.parse_args(argv)

    if args.checkpointing_steps not in (None, "epoch") and not args.checkpointing_steps.isdigit():
        parser.error(f"--checkpointing_steps must be a number of steps or 'epoch', got {args.checkpointing_steps!r}")
    if args.streaming and args.max_train_steps is None:
        parser.error("--streaming needs --max_train_steps (a stream has no known length to derive it from)")
    if not 0 <= args.max_bad_video_fraction <= 1:
        parser.error(f"--max_bad_video_fraction must be in [0, 1], got {args.max_bad_video_fraction}")
    for item in args.stop_config_overrides:
        if "=" not in item:
            parser.error(f"--stop_config_overrides takes KEY=VALUE items, got {item!r}")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Model and processor
# ----------------------------------------------------------------------------------------------------------------


def _parse_override(key: str, text: str):
    """A STOPConfig value from the command line, typed like the field's default."""
    defaults = STOPConfig().to_dict()
    if key not in defaults:
        raise ValueError(f"--stop_config_overrides: {key!r} is not a STOPConfig field")
    default = defaults[key]
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--stop_config_overrides {key}={text}: expected true or false")
        return text.lower() in ("true", "1")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, (list, tuple)):
        return [int(v) for v in text.split(",")]
    if default is None:
        if text.startswith("["):  # a list-valued field with a None default, e.g. paper_prompt_layers=[0,2]
            return [int(v) for v in text.strip("[]").split(",") if v.strip()]
        return None if text.lower() == "none" else int(text) if text.isdigit() else text
    return text


def stop_options(args) -> dict:
    """STOPConfig keyword arguments of a new model: the variant's recipe (`training.recipe.RECIPES`), the flags,
    then the overrides."""
    options = dict(recipe_for(args.variant).model_options)
    for name in ("variant", "prompt_generator", "num_frames", "max_words", "frame_weight_norm", "mask_layout"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    for item in args.stop_config_overrides:
        key, value = item.split("=", 1)
        options[key] = _parse_override(key, value)
    return options


def load_model_and_processor(args):
    """A STOP checkpoint as it is, or a new STOP model over a CLIP checkpoint (frozen) and its processor."""
    if Path(args.model_name_or_path) == DEFAULT_CLIP and not (DEFAULT_CLIP / "config.json").exists():
        raise FileNotFoundError(
            f"The default backbone {DEFAULT_CLIP} is missing: make it with `python training/pretrain_clip.py` or "
            "pass --model_name_or_path (a CLIP or STOP checkpoint: Hub id or folder)"
        )
    if Path(args.model_name_or_path).is_dir():
        check_safetensors_files(Path(args.model_name_or_path))
    config_dict, _ = PretrainedConfig.get_config_dict(args.model_name_or_path)
    if config_dict.get("model_type") == "stop":
        new_options = [
            n
            for n in ("variant", "prompt_generator", "num_frames", "max_words", "frame_weight_norm", "mask_layout")
            if getattr(args, n) is not None
        ] + args.stop_config_overrides
        if new_options:
            logger.warning(f"{args.model_name_or_path} is a STOP checkpoint: ignoring {new_options} (new models only)")
        model = STOPModel.from_pretrained(args.model_name_or_path)
        processor = STOPProcessor.from_pretrained(args.model_name_or_path)
        return model, processor
    options = stop_options(args)
    model = STOPModel.from_clip(args.model_name_or_path, **options)
    processor = STOPProcessor.from_clip(
        args.model_name_or_path, num_frames=model.config.num_frames, max_words=model.config.max_words
    )
    return model, processor


def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: no weight decay on biases, norms, PReLU slopes and prompt embeddings."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_embedding = isinstance(module, nn.Embedding) or "prompt" in name or "position" in name
            if param.ndim < 2 or isinstance(module, (nn.LayerNorm, nn.PReLU)) or is_embedding:
                no_decay.append(param)
            else:
                decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------------


def gather_with_grad(tensor: torch.Tensor, num_processes: int) -> torch.Tensor:
    """All processes' rows (in rank order), differentiable. Batches may differ in size (skipped samples)."""
    if num_processes == 1:
        return tensor
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_nn

    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(num_processes)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = F.pad(tensor, (0, 0, 0, max(sizes) - tensor.shape[0]))
    # Backward sums the gradient of every process's (identical) loss: with DDP's average, the global-batch gradient.
    gathered = dist_nn.all_gather(padded)
    return torch.cat([part[:n] for part, n in zip(gathered, sizes)])


def retrieval_loss(outputs, logit_scale: torch.Tensor, num_processes: int) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch of (caption, video) pairs."""
    text = gather_with_grad(outputs.text_embeds.float(), num_processes)
    video = gather_with_grad(outputs.video_embeds.float(), num_processes)
    return clip_loss(logit_scale.exp() * text @ video.t())


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


def evaluate_retrieval(model, processor, dataset: VideoTextDataset, dataloader, metric, accelerator=None) -> dict:
    """T2V / V2T R@1/5/10, MdR, MnR (percent, ranks) with every caption as a query, plus the reversed-pair accuracy
    (`pair_accuracy`, per `motion` kind too) when the split has a `pair_id` column. Videos that fail to decode are
    left out with their captions (`num_failed`)."""
    indices, video_embeds, failed = embed_video_dataset(model, dataloader, accelerator)
    texts, text_to_video = dataset.captions()
    position = {int(index): i for i, index in enumerate(indices)}
    keep = [t for t, v in enumerate(text_to_video) if v in position]
    text_embeds = embed_text_list(model, processor, [texts[t] for t in keep], accelerator=accelerator)
    targets = [position[text_to_video[t]] for t in keep]
    sim = (text_embeds @ video_embeds.t()).numpy()  # [texts, videos]
    results = metric.compute(predictions=sim, references=targets)
    results.update(split_pair_accuracy(sim, targets, indices, dataset.dataset))
    results["num_failed"], results["failed_videos"] = len(failed), failed
    return results


def evaluate_classification(model, processor, dataset, dataloader, metric, class_texts, accelerator=None) -> dict:
    """Top-1/top-5 and mean per-class accuracy (percent) of `argmax(video_embeds @ class_text_embeds.T)`."""
    indices, video_embeds, failed = embed_video_dataset(model, dataloader, accelerator)
    class_embeds = embed_text_list(model, processor, class_texts, accelerator=accelerator)
    labels = dataset.labels()
    scores = (video_embeds @ class_embeds.t()).numpy()
    results = metric.compute(predictions=scores, references=[labels[i] for i in indices])
    results.pop("per_class_accuracy")
    results["num_failed"], results["failed_videos"] = len(failed), failed
    return results


# ----------------------------------------------------------------------------------------------------------------
# Outputs: metrics log, curves, model card, checkpoints
# ----------------------------------------------------------------------------------------------------------------


class MetricsLog:
    """`metrics.jsonl`: one JSON object per line (train steps, evaluations), written by the main process."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, completed_steps: int, completed_epochs: int):
        """On resume: drop what the interrupted run logged after its checkpoint (train steps after it, epoch records
        of epochs it had not finished, the final test)."""
        if not self.enabled:
            return
        kept = [
            r
            for r in self.records()
            if r["split"].startswith("head_stage")
            or (r["split"] == "train" and r["step"] <= completed_steps)
            or (r["split"] in ("validation", "skipped") and r["epoch"] <= completed_epochs)
        ]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def plot_training_curves(records: list[dict], path: Path, selection_metric: str):
    """`training_curves.png`: train loss per epoch (mean over logged steps) and validation metrics per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "validation"]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = sorted({r["epoch"] for r in train})
    ax_loss.plot(epochs, [np.mean([r["loss"] for r in train if r["epoch"] == e]) for e in epochs], "o-")
    ax_loss.set(xlabel="epoch", ylabel="train loss (mean)", title="training loss")
    keys = [selection_metric] + [
        k
        for k in ("v2t_R@1", "t2v_R@5", "top5_accuracy", "mean_class_accuracy")
        if val and k in val[0] and k != selection_metric
    ]
    for key in keys:
        ax_val.plot([r["epoch"] for r in val], [r[key] for r in val], "o-", label=key)
    if val and "pair_accuracy" in val[0]:
        ax_val.plot([r["epoch"] for r in val], [100 * r["pair_accuracy"] for r in val], "o--", label="pair acc x100")
    ax_val.set(xlabel="epoch (0 = before training)", ylabel="percent", title="validation")
    for ax in (ax_loss, ax_val):
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_val.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_model_card(
    output_dir,
    model_name: str,
    base_model: str | None,
    dataset_name: str,
    task: str,
    test_results: dict | None,
    config: STOPConfig,
    hyperparameters: dict | None = None,
    model_path: str | None = None,
):
    """`README.md` with YAML metadata (library, pipeline tag, tags, datasets, base model) and a `model-index` of the
    test metrics (huggingface_hub `ModelCardData` / `EvalResult`). The snippet loads `model_path` (the Hub id or the
    folder as given; default `model_name`)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    dataset_id = Path(dataset_name).name if Path(dataset_name).exists() else dataset_name
    task_type = "text-to-video" if task == "retrieval" else "video-classification"
    eval_results = [
        EvalResult(
            task_type=task_type,
            dataset_type=dataset_id,
            dataset_name=dataset_id,
            dataset_split="test",
            metric_type=key,
            metric_name=key,
            metric_value=float(value),
        )
        for key, value in (test_results or {}).items()
        if isinstance(value, (int, float)) and key != "num_failed"
    ]
    tags = [
        "stop",
        "video",
        "clip",
        "prompt-tuning",
        "video-text-retrieval" if task == "retrieval" else "video-classification",
    ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="feature-extraction" if task == "retrieval" else "video-classification",
        tags=tags,
        datasets=[dataset_id],
        base_model=base_model if base_model and not Path(base_model).exists() else None,
        license="apache-2.0",
        model_name=model_name,
        eval_results=eval_results or None,
    )
    lines = [f"| {key} | {value:.2f} |" for key, value in (test_results or {}).items() if isinstance(value, float)]
    hparams = "\n".join(f"- {k}: {v}" for k, v in (hyperparameters or {}).items())
    content = f"""---
{card_data.to_yaml()}
---

# {model_name}

STOP (spatial-temporal dynamic prompting, CVPR 2025) over a frozen CLIP (`{base_model}`), trained for
{"text-video retrieval" if task == "retrieval" else "video classification"} on `{dataset_id}`. Only the prompt
modules are trained ({config.variant} variant, {config.num_frames} frames, {config.image_size} px).

```python
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{model_path or model_name}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{model_path or model_name}", trust_remote_code=True)
inputs = processor(text=["a red circle moving left"], videos=["clip.mp4"], padding="max_length")
outputs = model(**inputs)  # outputs.logits_per_text [texts, videos]
```

## Test results

| metric | value |
|---|---|
{chr(10).join(lines)}

## Training hyperparameters

{hparams}
"""
    card = ModelCard(content)
    card.save(Path(output_dir) / "README.md")
    return card


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The complete checkpoint with the most optimizer steps (temporary folders of interrupted saves are ignored)."""
    best, best_step = None, -1
    for folder in checkpoints_dir.glob("*"):
        state = folder / STATE_FILE
        if folder.name.startswith(".") or not state.exists():
            continue
        step = json.loads(state.read_text())["completed_steps"]
        if step >= best_step:
            best, best_step = folder, step
    return best


def save_checkpoint(accelerator, checkpoints_dir: Path, name: str, state: dict, total_limit: int = 0):
    """`accelerator.save_state` into a temporary folder, then an atomic rename: a save that dies half-way never
    touches the last good checkpoint. Then only the newest `total_limit` checkpoints are kept (0: all)."""
    final = checkpoints_dir / name
    tmp = checkpoints_dir / f".tmp-{name}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        if final.exists():  # re-saved after a resume: the old copy goes only once the new one is complete
            old = checkpoints_dir / f".old-{name}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        rotate_checkpoints(checkpoints_dir, total_limit, keep=final)
    accelerator.wait_for_everyone()


def rotate_checkpoints(checkpoints_dir: Path, total_limit: int, keep: Path | None = None) -> list[Path]:
    """Delete all but the `total_limit` complete checkpoints with the most optimizer steps (never `keep`, the one
    just written, nor `best`, which is a model folder); returns the deleted folders."""
    if total_limit <= 0:
        return []
    complete = []
    for folder in checkpoints_dir.glob("*"):
        if not folder.name.startswith(".") and (folder / STATE_FILE).exists():
            complete.append((json.loads((folder / STATE_FILE).read_text())["completed_steps"], folder.name, folder))
    complete.sort(reverse=True)
    deleted = []
    for _, _, folder in complete[total_limit:]:
        if folder != keep:
            old = folder.with_name(f".old-{folder.name}")
            os.replace(folder, old)  # a crash mid-delete leaves a hidden folder, never a half checkpoint
            shutil.rmtree(old)
            deleted.append(folder)
    return deleted


def save_model(model: STOPModel, processor, directory: Path):
    """`save_pretrained` of model and processor into a temporary folder, then swapped in atomically."""
    tmp = directory.with_name(f".tmp-{directory.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    register_pipelines(tmp)  # the zero-shot / video-classification pipelines travel with the folder
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)


# ----------------------------------------------------------------------------------------------------------------
# Run guards: undecodable videos, non-finite loss, resume arguments, truncated files
# ----------------------------------------------------------------------------------------------------------------


class TrainingAborted(RuntimeError):
    """A run that cannot produce a meaningful model: stops with a non-zero exit and writes no model."""


def check_safetensors_files(folder: Path):
    """Every `*.safetensors` file of `folder` must be complete: else a `ValueError` naming it (the loaders' own
    errors do not)."""
    from safetensors import safe_open

    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(file), "pt"):
                pass
        except Exception as err:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(
                f"{file}: not a readable .safetensors file (truncated or corrupt? {err}). Save or "
                "download it again, or resume from another checkpoint"
            ) from err


def check_bad_videos_in_cache(cache, max_fraction: float, num_videos: int):
    """Aborts the run when more than `max_fraction` of the cached training videos failed to decode."""
    guard = BadVideoGuard(max_fraction, num_videos)
    guard.update(num_videos, len(cache.failed))
    if guard.exceeded():
        guard.abort(sorted(cache.failed), 0)


class BadVideoGuard:
    """Counts the training videos of an epoch that fail to decode, over all processes, and aborts the run when
    more than `max_fraction` of them fail. `num_videos` is the split size (map-style: checked at every step), or
    None for a stream (the share of the rows seen, checked once `min_rows` were seen and at the end of the epoch)."""

    def __init__(self, max_fraction: float, num_videos: int | None, min_rows: int = 64):
        self.max_fraction, self.num_videos, self.min_rows = max_fraction, num_videos, min_rows
        self.seen = self.failed = 0

    def start_epoch(self, num_failed: int, num_seen: int):
        self.failed, self.seen = num_failed, num_seen

    def update(self, num_seen: int, num_failed: int):
        self.seen += num_seen
        self.failed += num_failed

    def exceeded(self, end_of_epoch: bool = False) -> bool:
        if self.num_videos is not None:
            return self.failed > self.max_fraction * self.num_videos
        if not end_of_epoch and self.seen < self.min_rows:
            return False
        return self.seen > 0 and self.failed > self.max_fraction * self.seen

    def abort(self, failures: list[str], epoch: int):
        total = self.num_videos if self.num_videos is not None else self.seen
        raise TrainingAborted(
            f"epoch {epoch + 1}: {self.failed} of {total} training videos failed to decode, more than "
            f"--max_bad_video_fraction {self.max_fraction}. Fix or remove these files (or raise the bound):\n  "
            + "\n  ".join(failures)
        )


def all_failures(accelerator, failures: list[str]) -> list[str]:
    """The failure messages of every process (a collective call: every process must make it)."""
    return sorted(set(gather_object(failures))) if accelerator.num_processes > 1 else sorted(set(failures))


def _video_names(dataset, indices) -> list[str]:
    while not hasattr(dataset, "video_name") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return [dataset.video_name(int(i)) for i in indices]


def abort_on_non_finite_loss(accelerator, loss: float, dataset, batch, step: int):
    """Stops the run, naming the batch's videos, when the (process-averaged) loss is NaN or infinite."""
    if math.isfinite(loss):
        return
    names = _video_names(dataset, batch["indices"].tolist())
    names = sorted(set(gather_object(names))) if accelerator.num_processes > 1 else names
    raise TrainingAborted(
        f"step {step + 1}: the training loss is {loss}. Videos of the batch:\n  "
        + "\n  ".join(names)
        + "\nLower --learning_rate, check these videos and the captions, or use --mixed_precision no"
    )


# Arguments that shape the run: a resumed run that changes them would not continue the interrupted one.
RUN_SHAPING_ARGS = (
    "dataset_name",
    "dataset_config_name",
    "video_column",
    "caption_column",
    "label_column",
    "max_train_samples",
    "frame_sampling",
    "task",
    "label_template",
    "model_name_or_path",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "optimizer",
    "learning_rate",
    "weight_decay",
    "max_grad_norm",
    "max_train_steps",
    "lr_scheduler_type",
    "num_warmup_steps",
    "seed",
    "streaming",
    "shuffle_buffer_size",
    "stop_config_overrides",
    "variant",
    "num_frames",
)


def run_shaping_args(args, num_processes: int) -> dict:
    values = {name: getattr(args, name, None) for name in RUN_SHAPING_ARGS}
    values["num_processes"] = num_processes
    return values


def check_resume_args(saved: dict | None, current: dict, state: dict, allow_changed: bool, checkpoint: Path) -> dict:
    """Compares the run-shaping arguments of a checkpoint with this run's: a `ValueError` listing the differences
    (unless `allow_changed`: then a warning, and the epoch's data position converted to this run's global batch).
    Returns the state to resume from."""
    if saved is None:
        logger.warning(f"{checkpoint} records no run arguments (an older checkpoint): they cannot be checked")
        return state
    changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if not changed:
        return state
    listed = "\n  ".join(f"--{k}: checkpoint {old!r}, now {new!r}" for k, (old, new) in changed.items())
    if not allow_changed:
        raise ValueError(
            f"Resuming from {checkpoint} with different run arguments:\n  {listed}\nThe resumed run would not "
            "continue the interrupted one (data position, schedule). Pass the checkpoint's values, start a new "
            "--output_dir, or pass --allow_changed_args to resume anyway"
        )
    old_batch = saved["per_device_train_batch_size"] * saved["num_processes"]
    new_batch = current["per_device_train_batch_size"] * current["num_processes"]
    state = dict(state, batches_in_epoch=state["batches_in_epoch"] * old_batch // new_batch)
    logger.warning(
        f"--allow_changed_args: resuming from {checkpoint} with different run arguments:\n  {listed}\nThe "
        "optimizer, scheduler and RNG states come from the checkpoint (its learning-rate schedule continues); the "
        f"data position is converted by samples seen ({state['batches_in_epoch']} batches of this run into the "
        "epoch). This run will not match an uninterrupted one."
    )
    return state


def report_eval_failures(accelerator, split: str, results: dict) -> dict:
    """Prints the videos of an evaluation that failed to decode; returns the numeric results (for trackers)."""
    failed = results.get("failed_videos") or []
    if failed:
        accelerator.print(
            f"{split}: {len(failed)} videos failed to decode and were left out:\n  " + "\n  ".join(failed)
        )
    return {k: v for k, v in results.items() if k != "failed_videos"}


def resumed_batches(accelerator, train_dataloader, skip: int):
    """The train loader starting after the first `skip` batches of the epoch."""
    if not skip:
        return train_dataloader
    if hasattr(train_dataloader, "skip"):  # a streamed split: the stream is replayed without decoding
        return train_dataloader.skip(skip)
    return accelerator.skip_first_batches(train_dataloader, skip)


def load_splits(args, is_classification: bool):
    """`(streamed train split or None, DatasetDict)`: the map-style splits (with train unless streaming)."""
    columns = {
        "video_column": args.video_column,
        "caption_column": None if is_classification else args.caption_column,
        "label_column": args.label_column if is_classification else None,
    }
    if args.streaming:
        stream, raw = load_streaming_dataset(args.dataset_name, args.dataset_config_name, **columns)
        if args.max_train_samples is not None:
            stream = stream.take(args.max_train_samples)
        if is_classification and not raw:
            raise ValueError(
                "--streaming --task classification reads the class names from the validation / test "
                f"splits, and {args.dataset_name} has neither"
            )
        return stream, raw
    raw = load_video_text_dataset(
        args.dataset_name, args.dataset_config_name, num_proc=args.preprocessing_num_workers, **columns
    )
    if "train" not in raw:
        raise ValueError(f"{args.dataset_name} has no train split (splits: {list(raw)})")
    if args.max_train_samples is not None:
        raw["train"] = raw["train"].select(range(min(args.max_train_samples, len(raw["train"]))))
    return None, raw


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    checkpoints_dir = output_dir / "checkpoints"

    accelerator_kwargs = {"log_with": args.report_to, "project_dir": str(output_dir)} if args.with_tracking else {}
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        # Some prompt weights get no gradient by design (the official region scorer behind a hard top-k).
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        **accelerator_kwargs,
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.is_local_main_process:
        transformers.utils.logging.set_verbosity_warning()
    else:
        transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)
    if accelerator.is_main_process:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    # ------------------------------------------------------------------------------------------------ data
    is_classification = args.task == "classification"
    with accelerator.main_process_first():
        train_stream, raw = load_splits(args, is_classification)
    for split in ("validation", "test"):
        if split in raw and args.max_eval_samples is not None:
            raw[split] = raw[split].select(range(min(args.max_eval_samples, len(raw[split]))))
    labels = class_names(raw, args.label_column) if is_classification else None
    class_texts = [args.label_template.format(label=name) for name in labels] if is_classification else None

    # ------------------------------------------------------------------------------------------------ model
    model, processor = load_model_and_processor(args)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    recipe = training_recipe.resolve_args(args, model.config.variant)
    columns = dict(
        video_column=args.video_column,
        caption_column=None if is_classification else args.caption_column,
        label_column=args.label_column if is_classification else None,
        label_names=labels,
    )
    train_dataset = (
        None
        if args.streaming
        else VideoTextDataset(
            raw["train"],
            processor.video_processor,
            training=True,
            sampling=args.frame_sampling,
            seed=args.seed,
            **columns,
        )
    )
    eval_datasets = {
        split: VideoTextDataset(raw[split], processor.video_processor, **columns)
        for split in ("validation", "test")
        if split in raw
    }
    collator = VideoTextCollator(processor)
    train_collator = collator
    use_cache = (
        args.feature_cache == "auto"
        and model.uses_frozen_frame_features
        and args.frame_sampling == "uniform"
        and not args.streaming
    )
    training_path = "cached frozen frame features" if use_cache else "end to end through the frozen backbone"
    logger.info(f"  Training path = {training_path}")
    if use_cache:
        cache = FrameFeatureCache.build(
            model.to(accelerator.device),
            train_dataset,
            args.per_device_eval_batch_size,
            args.dataloader_num_workers,
            args.feature_cache_dir,
            accelerator.device,
            disable_progress=not accelerator.is_local_main_process,
        )
        check_bad_videos_in_cache(cache, args.max_bad_video_fraction, len(train_dataset))
        train_dataset, train_collator = CachedFeatureDataset(train_dataset, cache), CachedFeatureCollator(processor)
    if args.streaming:
        train_dataset, train_dataloader = build_streaming_dataloader(
            train_stream,
            processor.video_processor,
            train_collator,
            args.per_device_train_batch_size,
            accelerator.num_processes,
            accelerator.process_index,
            seed=args.seed,
            buffer_size=args.shuffle_buffer_size,
            num_workers=args.dataloader_num_workers,
            device=accelerator.device,
            sampling=args.frame_sampling,
            **columns,
        )
    else:
        train_dataloader = build_dataloader(
            train_dataset,
            train_collator,
            args.per_device_train_batch_size,
            shuffle=True,
            drop_last=True,
            seed=args.seed,
            num_workers=args.dataloader_num_workers,
        )
    eval_dataloaders = {
        split: build_dataloader(ds, collator, args.per_device_eval_batch_size, num_workers=args.dataloader_num_workers)
        for split, ds in eval_datasets.items()
    }
    if not args.streaming and len(train_dataloader) < accelerator.num_processes:
        raise ValueError(
            f"The train split ({len(train_dataset)} videos) holds fewer than one batch of "
            f"{args.per_device_train_batch_size} per process: lower --per_device_train_batch_size"
        )

    # ------------------------------------------------------------------------------------ stage 1 of the recipe
    head_stage_records, head_stage_summary, head_stage_caches = [], {}, {}
    if (
        not args.resume_from_checkpoint
        and not is_classification
        and not args.streaming
        and training_recipe.wants_head_stage(model)
        and training_recipe.head_stage_steps(args, recipe, len(train_dataset)) > 0
    ):
        head_stage_summary = training_recipe.train_head_stage(
            model,
            processor,
            train_dataset,
            eval_datasets.get("validation"),
            args,
            recipe,
            load_metric("video_text_retrieval"),
            accelerator.device,
            log=accelerator.print,
            write_record=head_stage_records.append,
            cache_dir=args.feature_cache_dir,
            num_workers=args.dataloader_num_workers,
            disable_progress=not accelerator.is_local_main_process,
            check_cache=lambda cache: check_bad_videos_in_cache(cache, args.max_bad_video_fraction, len(train_dataset)),
            caches=head_stage_caches,
        )
        head_stage_summary["temporal_gate"] = training_recipe.init_temporal_gate(
            model,
            training_recipe.first_batch(train_dataset, collator, args.per_device_eval_batch_size, accelerator.device),
            args.temporal_gate_ratio,
        )
        accelerator.print(f"temporal gate set to {head_stage_summary['temporal_gate']:.4g}")
    if args.hard_negative_batches and not is_classification and not args.streaming:
        train_dataloader = training_recipe.hard_negative_dataloader(
            model,
            train_dataset,
            train_collator,
            args,
            recipe,
            accelerator.device,
            cache if use_cache else head_stage_caches.get("train"),
        )

    # ------------------------------------------------------------------------------------ optimizer and schedule
    groups = training_recipe.parameter_groups(
        model,
        args.learning_rate,
        args.weight_decay,
        training_recipe.head_lr_multiplier(args, recipe, bool(head_stage_summary)),
        args.prompter_lr_multiplier,
    )
    optimizer = training_recipe.build_optimizer(groups, args)
    # As in the examples: the schedule is computed on the sharded loader after `prepare` (below).
    if args.max_train_steps is None:  # (--streaming requires it: a stream has no length)
        num_update_steps_per_epoch = math.ceil(
            len(train_dataloader) / accelerator.num_processes / args.gradient_accumulation_steps
        )
        args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
    num_warmup_steps = training_recipe.warmup_steps(args, args.max_train_steps)
    lr_scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=num_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )

    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, lr_scheduler
    )
    eval_dataloaders = {split: accelerator.prepare(dl) for split, dl in eval_dataloaders.items()}
    if not args.streaming:  # streamed: up to --num_train_epochs passes over the stream, ending at --max_train_steps
        num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
        args.num_train_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)
    unwrapped = accelerator.unwrap_model(model)

    if args.with_tracking:
        accelerator.init_trackers(
            "stop", {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}
        )
    metrics_log = MetricsLog(output_dir / "metrics.jsonl", accelerator.is_main_process)
    metric = load_metric("video_text_retrieval" if args.task == "retrieval" else "video_classification")
    selection_metric = SELECTION_METRIC[args.task]

    def run_evaluation(split: str) -> dict:
        dataset, dataloader = eval_datasets[split], eval_dataloaders[split]
        if is_classification:
            return evaluate_classification(unwrapped, processor, dataset, dataloader, metric, class_texts, accelerator)
        return evaluate_retrieval(unwrapped, processor, dataset, dataloader, metric, accelerator)

    # ------------------------------------------------------------------------------------------------ resume
    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    run_args = run_shaping_args(args, accelerator.num_processes)
    state = {
        "completed_steps": 0,
        "epoch": 0,
        "batches_in_epoch": 0,
        "best_metric": None,
        "best_epoch": None,
        "skipped": {},
        "elapsed": 0.0,
        "run_args": run_args,
    }
    if args.resume_from_checkpoint:
        checkpoint = (
            latest_checkpoint(checkpoints_dir)
            if args.resume_from_checkpoint == "latest"
            else Path(args.resume_from_checkpoint)
        )
        if checkpoint is None:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint in {checkpoints_dir}")
        check_safetensors_files(checkpoint)
        saved = json.loads((checkpoint / STATE_FILE).read_text())
        state = check_resume_args(saved.get("run_args"), run_args, saved, args.allow_changed_args, checkpoint)
        state["run_args"] = run_args
        accelerator.print(f"Resumed from checkpoint: {checkpoint}")
        accelerator.load_state(str(checkpoint))
        metrics_log.truncate(state["completed_steps"], state["epoch"])
    else:  # a fresh run: nothing of an earlier run in this folder counts
        metrics_log.truncate(-1, -1)
        for record in head_stage_records:
            metrics_log.write(record)
        if accelerator.is_main_process and (checkpoints_dir / "best").exists():
            shutil.rmtree(checkpoints_dir / "best")
        accelerator.wait_for_everyone()

    logger.info("***** Running training *****")
    logger.info(f"  Num examples = {'streamed' if args.streaming else len(train_dataset)}")
    logger.info(f"  Num Epochs = {args.num_train_epochs}")
    logger.info(f"  Instantaneous batch size per device = {args.per_device_train_batch_size}")
    logger.info(f"  Total train batch size (w. parallel, distributed & accumulation) = {total_batch_size}")
    logger.info(f"  Gradient Accumulation steps = {args.gradient_accumulation_steps}")
    logger.info(f"  Total optimization steps = {args.max_train_steps}")
    logger.info(f"  Trainable parameters = {sum(p.numel() for p in unwrapped.parameters() if p.requires_grad)}")
    progress_bar = tqdm(range(args.max_train_steps), disable=not accelerator.is_local_main_process)
    progress_bar.update(state["completed_steps"])
    completed_steps = state["completed_steps"]
    start_time = time.time() - state["elapsed"]

    def checkpoint_state(epoch, batches_in_epoch):
        return dict(
            state,
            completed_steps=completed_steps,
            epoch=epoch,
            batches_in_epoch=batches_in_epoch,
            elapsed=time.time() - start_time,
        )

    def validate(epoch: int):
        """Validation metrics of `epoch` (0 = before training); keeps the best model in checkpoints/best."""
        if "validation" not in eval_datasets:
            return
        results = run_evaluation("validation")
        record = {
            "split": "validation",
            "epoch": epoch,
            "step": completed_steps,
            **results,
            "time": round(time.time() - start_time, 2),
        }
        metrics_log.write(record)
        numeric = report_eval_failures(accelerator, "validation", results)
        if args.with_tracking:
            accelerator.log({f"val_{k}": v for k, v in numeric.items()}, step=completed_steps)
        accelerator.print(
            f"epoch {epoch} validation: "
            + ", ".join(f"{k}={v:.4g}" for k, v in results.items() if isinstance(v, float))
        )
        # Epoch 0 competes too when stage 1 of the recipe trained the model before it.
        score = training_recipe.validation_score(results, selection_metric)
        if (epoch > 0 or head_stage_summary) and (state["best_metric"] is None or score > state["best_metric"]):
            state["best_metric"], state["best_epoch"] = score, epoch
            state["best_value"] = results[selection_metric]
            if accelerator.is_main_process:
                save_model(unwrapped, processor, checkpoints_dir / "best")
            accelerator.wait_for_everyone()

    if completed_steps == 0 and state["epoch"] == 0 and state["batches_in_epoch"] == 0:
        validate(epoch=0)  # the untrained model (zero-shot; after stage 1 when it ran): the baseline to beat

    # ------------------------------------------------------------------------------------------------ training
    logit_scale = unwrapped.clip.logit_scale
    if is_classification:
        class_inputs = processor(text=class_texts, padding="max_length").to(accelerator.device)
    bad_videos = BadVideoGuard(args.max_bad_video_fraction, None if args.streaming else len(train_dataset))
    for epoch in range(state["epoch"], args.num_train_epochs):
        model.train()
        # The prepared loader re-seeds the sampler with its own epoch counter on every pass (and a skipping loader
        # inherits it): set it, not only our sampler, or a resumed run would replay epoch 0's order.
        train_dataloader.set_epoch(epoch)
        train_dataset.set_epoch(epoch)
        skip = state["batches_in_epoch"] if epoch == state["epoch"] else 0
        dataloader = resumed_batches(accelerator, train_dataloader, skip)
        skipped = state["skipped"].setdefault(str(epoch), [])
        bad_videos.start_epoch(len(skipped), skip * args.per_device_train_batch_size * accelerator.num_processes)
        losses, step_start = [], 0
        for batch_index, batch in enumerate(dataloader, start=skip):
            if completed_steps >= args.max_train_steps:
                break
            skipped += batch["failed"]
            counts = [len(batch["indices"]), len(batch["failed"])]
            if accelerator.num_processes > 1:
                counts = accelerator.gather(torch.tensor(counts, device=accelerator.device)).tolist()
            sizes = counts[0::2]
            bad_videos.update(sum(counts), sum(counts[1::2]))
            if bad_videos.exceeded():
                bad_videos.abort(all_failures(accelerator, skipped), epoch)
            with accelerator.accumulate(model):
                # All processes skip together when one has nothing to train on (every sample failed to decode).
                if min(sizes) > 0:
                    video = {
                        "pixel_values": batch.get("pixel_values"),
                        "frame_features": batch.get("frame_features"),
                        "video_mask": batch["video_mask"],
                    }
                    if is_classification:
                        outputs = model(**class_inputs, **video)
                        loss = F.cross_entropy(outputs.logits_per_video.float(), batch["labels"])
                    else:
                        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **video)
                        loss = retrieval_loss(outputs, logit_scale, accelerator.num_processes)
                    accelerator.backward(loss)
                    losses.append(accelerator.reduce(loss.detach().float(), reduction="mean").item())
                    abort_on_non_finite_loss(accelerator, losses[-1], train_dataset, batch, completed_steps)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()

            if not accelerator.sync_gradients:
                continue
            completed_steps += 1
            progress_bar.update(1)
            # A step in which no video decoded has no loss: it is not logged (never as NaN).
            step_losses, step_start = losses[step_start:], len(losses)
            step_loss = float(np.mean(step_losses)) if step_losses else None
            progress_bar.set_postfix(loss="n/a" if step_loss is None else f"{step_loss:.4f}", epoch=epoch)
            logging_step = completed_steps % args.logging_steps == 0 or completed_steps == args.max_train_steps
            if step_loss is not None and logging_step:
                record = {
                    "split": "train",
                    "epoch": epoch + 1,
                    "step": completed_steps,
                    "loss": step_loss,
                    "lr": lr_scheduler.get_last_lr()[0],
                    "time": round(time.time() - start_time, 2),
                }
                metrics_log.write(record)
                if args.with_tracking:
                    accelerator.log({"train_loss": step_loss, "lr": record["lr"]}, step=completed_steps)
            if args.checkpointing_steps not in (None, "epoch") and completed_steps % int(args.checkpointing_steps) == 0:
                save_checkpoint(
                    accelerator,
                    checkpoints_dir,
                    f"step_{completed_steps}",
                    checkpoint_state(epoch, batch_index + 1),
                    args.checkpoints_total_limit,
                )

        # Failures of every process, named, once per epoch.
        failures = all_failures(accelerator, skipped)
        state["skipped"][str(epoch)] = failures
        if bad_videos.exceeded(end_of_epoch=True):
            bad_videos.abort(failures, epoch)
        if failures:
            accelerator.print(
                f"epoch {epoch + 1}: skipped {len(failures)} videos that failed to decode:\n  " + "\n  ".join(failures)
            )
            metrics_log.write(
                {
                    "split": "skipped",
                    "epoch": epoch + 1,
                    "step": completed_steps,
                    "num_skipped": len(failures),
                    "skipped": failures,
                }
            )
        validate(epoch + 1)
        state["epoch"], state["batches_in_epoch"] = epoch + 1, 0
        if args.checkpointing_steps == "epoch":
            save_checkpoint(
                accelerator,
                checkpoints_dir,
                f"epoch_{epoch + 1}",
                checkpoint_state(epoch + 1, 0),
                args.checkpoints_total_limit,
            )
        if completed_steps >= args.max_train_steps:
            break

    # ------------------------------------------------------------------------------------------------ final model
    progress_bar.close()
    accelerator.wait_for_everyone()
    best_dir = checkpoints_dir / "best"
    if best_dir.exists():  # model selection on validation
        best = STOPModel.from_pretrained(best_dir)
        unwrapped.load_state_dict(best.state_dict())
    results = {
        "best_epoch": state["best_epoch"],
        f"best_val_{selection_metric}": state.get("best_value", state["best_metric"]),
        "best_val_selection_score": state["best_metric"],
        "train_steps": completed_steps,
        "train_runtime": round(time.time() - start_time, 2),
        "num_skipped_train_videos": sum(len(v) for v in state["skipped"].values()),
        "training_path": training_path,
        **head_stage_summary,
    }
    test_results = None
    if "test" in eval_datasets:
        test_results = run_evaluation("test")
        numeric_test = report_eval_failures(accelerator, "test", test_results)
        metrics_log.write(
            {
                "split": "test",
                "epoch": state["epoch"],
                "step": completed_steps,
                **test_results,
                "time": round(time.time() - start_time, 2),
            }
        )
        results.update({f"test_{k}": v for k, v in test_results.items()})
        accelerator.print("test: " + ", ".join(f"{k}={v:.4g}" for k, v in test_results.items() if isinstance(v, float)))
    if args.with_tracking:
        if test_results:
            accelerator.log({f"test_{k}": v for k, v in numeric_test.items()}, step=completed_steps)
        accelerator.end_training()

    if accelerator.is_main_process:
        save_model(unwrapped, processor, output_dir / ".final")
        for item in (output_dir / ".final").iterdir():
            os.replace(item, output_dir / item.name)
        (output_dir / ".final").rmdir()
        (output_dir / "all_results.json").write_text(json.dumps(results, indent=2))
        model_name = args.hub_model_id or output_dir.resolve().name
        hyperparameters = {
            k: getattr(args, k)
            for k in (
                "task",
                "num_train_epochs",
                "max_train_steps",
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "optimizer",
                "learning_rate",
                "weight_decay",
                "lr_scheduler_type",
                "seed",
            )
        }
        hyperparameters["num_processes"] = accelerator.num_processes
        write_model_card(
            output_dir,
            model_name,
            args.model_name_or_path,
            args.dataset_name,
            args.task,
            test_results,
            unwrapped.config,
            hyperparameters,
            model_path=args.hub_model_id or str(args.output_dir),
        )
        plot_training_curves(metrics_log.records(), output_dir / "training_curves.png", selection_metric)
        if args.push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            repo_id = create_repo(
                args.hub_model_id or output_dir.resolve().name, exist_ok=True, token=args.hub_token
            ).repo_id
            upload_folder(
                repo_id=repo_id,
                folder_path=output_dir,
                commit_message="End of training",
                ignore_patterns=["checkpoints/*", ".*"],
                token=args.hub_token,
            )
    accelerator.wait_for_everyone()
    return results


if __name__ == "__main__":
    try:
        main()
    except TrainingAborted as error:
        sys.exit(f"Training stopped: {error}")
